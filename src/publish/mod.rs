//! Stage 7: one confirmed message per customer or contact to the records exchange (`customers_exchange`).

pub mod flush;
pub mod record;

use moka::sync::Cache;
use secrecy::{ExposeSecret, SecretString};

use crate::amqp::Publisher;
use crate::enrich::WeilingClient;
use crate::entity::Entity;

/// Where flushed windows go: the Weiling client that enriches them and the publisher of records.
#[derive(Clone)]
pub struct RecordSink {
    pub client: WeilingClient,
    pub publisher: Publisher,
    pub exchange: String,
    pub sign_key: Option<SecretString>,
    /// (entity, app, id) → `message_id` of the last confirmed record. A fetch that returns exactly the
    /// state already published (an event about a change an earlier window already captured) is
    /// not published again: it is durable downstream already.
    pub last_published: Cache<(Entity, String, String), String>,
}

/// Customers whose last published state is remembered; beyond this the oldest are forgotten and at
/// worst published once more.
const REMEMBERED_CUSTOMERS: u64 = 200_000;

impl RecordSink {
    pub fn new(
        client: WeilingClient,
        publisher: Publisher,
        exchange: &str,
        sign_key: &SecretString,
    ) -> Self {
        Self {
            client,
            publisher,
            exchange: exchange.to_owned(),
            sign_key: (!sign_key.expose_secret().is_empty()).then(|| sign_key.clone()),
            last_published: Cache::new(REMEMBERED_CUSTOMERS),
        }
    }
}
