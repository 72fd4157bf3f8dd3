//! Stage 7: one confirmed message per customer or contact to the records exchange (`customers_exchange`).

pub mod flush;
pub mod record;

use secrecy::{ExposeSecret, SecretString};

use crate::amqp::Publisher;
use crate::enrich::WeilingClient;

/// Where flushed windows go: the Weiling client that enriches them and the publisher of records.
#[derive(Clone)]
pub struct RecordSink {
    pub client: WeilingClient,
    pub publisher: Publisher,
    pub exchange: String,
    pub sign_key: Option<SecretString>,
}

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
        }
    }
}
