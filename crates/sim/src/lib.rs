//! The Weiling stand-in for tests, the demo, the benchmarks and `weiling-relay sim`.
//!
//! [`Simulator`] serves the OpenAPI endpoints the relay calls (token, `customer/batch` and
//! `contact/batch`), behaving
//! as the "what a simulator should assume" table of `weiling-api.md` says, with faults switchable at run
//! time. Its records carry only documented fields ([`records`], [`contacts`]), so the version of a record
//! is read from one of them with [`revision`] / [`contact_revision`]. [`events`] builds decrypted
//! callback events of every catalog type and [`driver::CallbackDriver`] delivers them sealed, retrying
//! like Weiling's sender.
//!
//! Choices the spec leaves open: a method other than GET on the token endpoint (or other than POST on
//! `customer/batch`) is answered HTTP 200 with code 1010; a missing `app_id`/`app_secret` gives 1001; a
//! batch body that is not a JSON object gives 1011, one without `customer_ids` 1000 and one whose ids are
//! not strings 1013; the rate limit is a sliding 60 s window over admitted calls, checked after the token
//! and before the body; HTTP-level faults (5xx, 429, garbage) come before every other check.

mod api;
pub mod cli;
pub mod contacts;
pub mod driver;
pub mod events;
mod quirks;
pub mod records;
mod state;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix_web::{App, HttpServer, web};
use serde_json::Value;

pub use api::{BATCH_PATH, CONTACT_BATCH_PATH, NO_ENVELOPE, TOKEN_PATH};
pub use contacts::{new_contact_id, revision as contact_revision};
pub use driver::{CallbackDriver, Delivery, Outcome, RetryPolicy};
pub use events::{HeaderStyle, SimEvent, event_json, event_json_with};
pub use records::{FOLLOW_USER_FIELDS, RECORD_FIELDS, new_customer_id, revision};

use state::{Person, Shared};

use weiling_proto::entity::Entity;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub token_ttl: Duration,
    /// Off by default: weiling-api.md assumes a new token leaves the old one valid until it expires.
    pub reissue_invalidates_old: bool,
    /// Per app and endpoint, over a sliding 60 s window.
    pub rate_limit_per_minute: u32,
    /// 1009, 接口调用超过频率限制 in Weiling's 全局异常码 table (weiling-events.md §4); 1015 is only
    /// in third-party code, so a test that wants it sets it here.
    pub rate_limit_code: i64,
    pub batch_cap: usize,
    pub auth_error_code: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(7200),
            reissue_invalidates_old: false,
            rate_limit_per_minute: 500,
            rate_limit_code: 1009,
            batch_cap: 100,
            auth_error_code: 403,
        }
    }
}

/// One `customer/batch` or `contact/batch` request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct BatchCall {
    /// Which batch endpoint was called.
    pub entity: Entity,
    /// The app the token was issued to (also for an expired token); `None` for a missing or unknown token.
    pub app_id: Option<String>,
    /// The requested ids in request order; empty when the body did not parse.
    pub ids: Vec<String>,
    /// The envelope's `code`, or [`NO_ENVELOPE`] for a 5xx, a 429 or a garbage answer.
    pub code: i64,
    pub http_status: u16,
    pub user_agent: Option<String>,
    /// When the request arrived (before any injected latency).
    pub at: SystemTime,
    /// When the records were read and the answer left: a call spans `at..=answered_at`.
    pub answered_at: SystemTime,
}

/// A simulated Weiling OpenAPI. Clones share one state, so a test can flip faults while a server runs.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl Simulator {
    pub fn new(config: SimConfig) -> Simulator {
        Simulator {
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// The server runs once the returned future is awaited or spawned; `Server::handle().stop(..)` ends it.
    pub fn serve(&self, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
        let data = web::Data::from(self.shared.clone());
        Ok(
            HttpServer::new(move || App::new().configure(api::routes(data.clone())))
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(listener)?
                .run(),
        )
    }

    pub fn add_app(&self, app_id: &str, app_secret: &str) {
        self.shared
            .lock()
            .apps
            .insert(app_id.to_owned(), app_secret.to_owned());
    }

    /// Creates the customer with a realistic record; an existing customer is returned unchanged.
    pub fn create_customer(&self, app_id: &str, customer_id: &str) -> Value {
        self.create(Entity::Customer, app_id, customer_id)
    }

    /// Edits the customer (creating it first if unknown) and returns the new record, whose [`revision`]
    /// is one more than before.
    pub fn change_customer(&self, app_id: &str, customer_id: &str) -> Value {
        self.change(Entity::Customer, app_id, customer_id)
    }

    pub fn customer(&self, app_id: &str, customer_id: &str) -> Option<Value> {
        self.record(Entity::Customer, app_id, customer_id)
    }

    /// In creation order.
    pub fn customers(&self, app_id: &str) -> Vec<Value> {
        self.records(Entity::Customer, app_id)
    }

    /// Creates a customer or contact with a realistic record; an existing one is returned unchanged.
    pub fn create(&self, entity: Entity, app_id: &str, id: &str) -> Value {
        let mut state = self.shared.lock();
        person_entry(&mut state, entity, app_id, id).record.clone()
    }

    /// Edits a customer or contact (creating it first if unknown) and returns the new record.
    pub fn change(&self, entity: Entity, app_id: &str, id: &str) -> Value {
        let mut state = self.shared.lock();
        let person = person_entry(&mut state, entity, app_id, id);
        person.revision += 1;
        match entity {
            Entity::Customer => records::change(&mut person.record, person.revision, now_ms()),
            Entity::Contact => {
                contacts::change_contact(&mut person.record, now_ms());
            }
        }
        person.record.clone()
    }

    pub fn record(&self, entity: Entity, app_id: &str, id: &str) -> Option<Value> {
        self.shared
            .lock()
            .people
            .get(&(entity, app_id.to_owned()))
            .and_then(|people| people.get(id))
            .map(|p| p.record.clone())
    }

    /// Every record of the entity and app, in creation order.
    pub fn records(&self, entity: Entity, app_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .people
            .get(&(entity, app_id.to_owned()))
            .map(|people| people.values().map(|p| p.record.clone()).collect())
            .unwrap_or_default()
    }

    /// Clamped to 0..=1; each batch call independently gets 500, 502 or 503 with this probability.
    pub fn set_fault_5xx_ratio(&self, ratio: f64) {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.shared.lock().faults.ratio_5xx = ratio;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().faults.latency = latency;
    }

    pub fn set_http_429_retry_after(&self, seconds: Option<u64>) {
        self.shared.lock().faults.http_429_retry_after = seconds;
    }

    pub fn set_token_endpoint_down(&self, down: bool) {
        self.shared.lock().faults.token_endpoint_down = down;
    }

    /// While on, every batch call of `app_id` is answered with the rate-limit code inside HTTP 200, as
    /// Weiling answers an app whose quota is spent; other apps are served as usual.
    pub fn set_app_rate_limited(&self, app_id: &str, on: bool) {
        let apps = &mut self.shared.lock().faults.exhausted_apps;
        if on {
            apps.insert(app_id.to_owned());
        } else {
            apps.remove(app_id);
        }
    }

    pub fn set_garbage(&self, on: bool) {
        self.shared.lock().faults.garbage = on;
    }

    /// Every token issued so far becomes invalid now; tokens fetched afterwards are valid.
    pub fn expire_tokens(&self) {
        self.shared.lock().expire_tokens(Instant::now());
    }

    pub fn set_rate_limit_per_minute(&self, n: u32) {
        self.shared.lock().config.rate_limit_per_minute = n;
    }

    pub fn batch_calls(&self) -> Vec<BatchCall> {
        self.shared.lock().batch_calls.clone()
    }

    /// Every request to the token endpoint, whatever it was answered.
    pub fn token_calls(&self) -> usize {
        self.shared.lock().token_calls
    }

    /// Access tokens issued in the last ten minutes; tests check none of them reaches a log line.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().tokens.keys().cloned().collect()
    }
}

fn person_entry<'a>(
    state: &'a mut state::State,
    entity: Entity,
    app_id: &str,
    id: &str,
) -> &'a mut Person {
    state
        .people
        .entry((entity, app_id.to_owned()))
        .or_default()
        .entry(id.to_owned())
        .or_insert_with(|| Person {
            record: match entity {
                Entity::Customer => records::new_record(app_id, id, now_ms()),
                Entity::Contact => contacts::new_contact_record(app_id, id, now_ms()),
            },
            revision: 0,
        })
}

fn now_ms() -> i64 {
    i64::try_from(weiling_proto::unix_ms(SystemTime::now())).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
