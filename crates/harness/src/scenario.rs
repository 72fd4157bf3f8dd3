//! An end-to-end scenario on the real broker: the Weiling simulator changes customers and sends real
//! callbacks, the relay verifies, stores, windows, enriches and publishes, and an independent consumer
//! checks that every acknowledged change reached the customers exchange. Used by the demo and the tests.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;
use serde_json::Value;
use tokio::task::JoinHandle;

use relay::app::{Relay, RelayError};
use relay::config::{AmqpSettings, ConfigError, Settings};
use relay::pipeline::extract::{Extracted, Mapping};
use relay::verify::AppKeys;
use weiling_sim::events::{self, CatalogIds, CustomerChange, SimEvent, TagObject};
use weiling_sim::{CallbackDriver, Outcome, RetryPolicy, SimConfig, Simulator};

#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub callbacks: usize,
    pub customers: usize,
    /// Callbacks about ids Weiling does not know: each must come out as a `missing` record.
    pub unknown_ids: usize,
    /// Callbacks of catalog event types that name no customer or contact (26 cover them all).
    pub unmapped: usize,
    pub concurrency: usize,
    /// Every this many callbacks, the simulator invalidates every access token.
    pub expire_tokens_every: Option<usize>,
    /// At this callback, the simulator starts answering the rate-limit code for a while.
    pub rate_limit_at: Option<usize>,
    pub fault_5xx_ratio: f64,
    /// Extra `WEILING_RELAY__…` settings for the relay.
    pub relay_env: Vec<(String, String)>,
    /// Give up waiting for the pipeline to settle after this long.
    pub settle_timeout: Duration,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            callbacks: 1000,
            customers: 300,
            unknown_ids: 10,
            unmapped: 30,
            concurrency: 16,
            expire_tokens_every: None,
            rate_limit_at: None,
            fault_5xx_ratio: 0.0,
            relay_env: Vec::new(),
            settle_timeout: Duration::from_secs(90),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("local port: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Key(#[from] relay::verify::cipher::KeyError),
    /// The demo's PostgreSQL mirror could not be set up (the text never shows a password).
    #[error("{0}")]
    Mirror(String),
}

/// The scenario's measurements.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub callbacks_sent: usize,
    pub acknowledged: usize,
    pub not_acknowledged: usize,
    pub sender_retries: usize,
    pub customers_changed: usize,
    pub latest_state_seen: usize,
    /// Customers whose final state (or `missing` tombstone) never arrived although acknowledged.
    pub lost: Vec<String>,
    /// Records for ids that no callback named.
    pub unexpected: Vec<String>,
    pub unknown_ids_sent: usize,
    pub unknown_ids_missing_seen: usize,
    /// The unknown ids whose callbacks were acknowledged (each must come out as `missing`).
    pub unknown_ids: Vec<String>,
    /// Unknown ids whose callbacks were not acknowledged: a `missing` record for them may or may not
    /// exist.
    pub unknown_ids_unacknowledged: Vec<String>,
    /// Callbacks of a catalog event type, how many types they covered, and how many of them the
    /// relay's mapping sends to enrichment or keeps on the raw stream only.
    pub catalog_sent: usize,
    pub catalog_types: usize,
    pub catalog_enriched: usize,
    pub catalog_raw_only: usize,
    pub batch_calls: usize,
    pub max_ids_per_call: usize,
    pub ids_requested: usize,
    pub token_calls: usize,
    pub calls_answered_error: usize,
    pub records_received: usize,
    pub distinct_records: usize,
    pub ack_latency_ms: Vec<f64>,
    pub lag_ms: Vec<f64>,
    pub inbox_depth_at_end: u32,
    pub settled_in: Duration,
    pub elapsed: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.latest_state_seen == self.customers_changed
            && self.unknown_ids_missing_seen == self.unknown_ids_sent
            && self.inbox_depth_at_end == 0
    }
}

/// What the checking consumer saw, per customer: the record with the latest `fetched_at`.
#[derive(Default)]
struct Seen {
    latest: HashMap<String, (u64, Value)>,
    message_ids: HashSet<String>,
    total: usize,
    lag_ms: Vec<f64>,
}

pub struct Scenario {
    pub sim: Simulator,
    pub relay: Option<Relay>,
    pub settings: Settings,
    pub app: Arc<AppKeys>,
    /// The run's unique prefix of queue and exchange names.
    pub prefix: String,
    sim_server: actix_web::dev::ServerHandle,
    connection: Connection,
    channel: Channel,
    check_queue: String,
    seen: Arc<Mutex<Seen>>,
    checker: JoinHandle<()>,
}

impl Scenario {
    /// Starts the simulator, the relay (pipeline on) and the checking consumer, with unique names.
    pub async fn start(
        amqp_url: &str,
        relay_env: &[(String, String)],
    ) -> Result<Scenario, ScenarioError> {
        let run_id = new_run_id();
        let test_app = WeilingApp::generate(&run_id);
        let app_id = test_app.app_id.clone();

        let sim = Simulator::new(SimConfig::default());
        sim.add_app(&app_id, &test_app.app_secret);
        let sim_listener = TcpListener::bind("127.0.0.1:0")?;
        let sim_addr = sim_listener.local_addr()?;
        let sim_server = sim.serve(sim_listener)?;
        let sim_handle = sim_server.handle();
        tokio::spawn(sim_server);

        let prefix = format!("scenario-{run_id}");
        let mut env = self::relay_env(&prefix, amqp_url, &format!("http://{sim_addr}"), &test_app);
        env.extend(relay_env.iter().cloned());
        let settings = Settings::load(None, &env)?;
        let app = Arc::new(test_app.keys()?);

        // The checking consumer subscribes before the first callback, like any downstream consumer.
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        relay::amqp::topology::declare(&connection, &settings.amqp).await?;
        let check_queue = format!("{prefix}.check");
        channel
            .queue_declare(
                check_queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                check_queue.as_str().into(),
                settings.amqp.customers_exchange.as_str().into(),
                "customer.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let checker = tokio::spawn(check(channel.clone(), check_queue.clone(), seen.clone()));

        let relay = Relay::start(settings.clone(), TcpListener::bind("127.0.0.1:0")?)?;
        wait_ready(&format!("http://{}", relay.addr())).await;
        Ok(Scenario {
            sim,
            relay: Some(relay),
            settings,
            app,
            prefix,
            sim_server: sim_handle,
            connection,
            channel,
            check_queue,
            seen,
            checker,
        })
    }

    pub fn relay_url(&self) -> Option<String> {
        self.relay.as_ref().map(|r| format!("http://{}", r.addr()))
    }

    /// Drives `config.callbacks` customer changes through real callbacks and waits for the pipeline to
    /// settle; returns the measurements.
    pub async fn drive(&self, config: &ScenarioConfig) -> Report {
        let started = Instant::now();
        let app_id = self.app.app_id().to_owned();
        let base = self.relay_url().unwrap_or_default();
        let driver = CallbackDriver::new(&base, self.app.clone(), RetryPolicy::default());
        self.sim.set_fault_5xx_ratio(config.fault_5xx_ratio);

        let plan = plan(config);
        let outcomes: Vec<(Step, SimEvent, weiling_sim::Delivery)> =
            futures::stream::iter(plan.into_iter().enumerate())
                .map(|(i, step)| {
                    let driver = driver.clone();
                    let sim = self.sim.clone();
                    let app_id = app_id.clone();
                    async move {
                        if config
                            .expire_tokens_every
                            .is_some_and(|n| n > 0 && i > 0 && i % n == 0)
                        {
                            sim.expire_tokens();
                        }
                        if config.rate_limit_at == Some(i) {
                            sim.set_rate_limit_per_minute(1);
                            let sim = sim.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(1500)).await;
                                sim.set_rate_limit_per_minute(1_000_000);
                            });
                        }
                        let event = step.event(&sim, &app_id);
                        let delivery = driver.send(&event.to_json(&app_id)).await;
                        (step, event, delivery)
                    }
                })
                .buffer_unordered(config.concurrency.max(1))
                .collect()
                .await;

        let mut report = Report {
            callbacks_sent: outcomes.len(),
            ..Report::default()
        };
        let mut changed: HashSet<String> = HashSet::new();
        let mut ghosts: HashSet<String> = HashSet::new();
        let mapping = Mapping::new(&self.settings.events);
        let mut catalog_types: HashSet<&str> = HashSet::new();
        for (step, event, delivery) in &outcomes {
            if events::CATALOG_EVENT_TYPES.contains(&event.event_type.as_str()) {
                report.catalog_sent += 1;
                catalog_types.insert(event.event_type.as_str());
                let message = serde_json::json!({ "event": event.event });
                match mapping.extract(&event.event_type, &message) {
                    Extracted::Ids(..) => report.catalog_enriched += 1,
                    Extracted::Unmapped | Extracted::NoIds => report.catalog_raw_only += 1,
                }
            }
            report.sender_retries += delivery.attempts.saturating_sub(1) as usize;
            if delivery.outcome == Outcome::Ok {
                report.acknowledged += 1;
                report
                    .ack_latency_ms
                    .push(delivery.latency.as_secs_f64() * 1000.0);
                match step {
                    Step::Change { customer, .. } => {
                        changed.insert(customer.clone());
                    }
                    Step::Unknown(id) => {
                        ghosts.insert(id.clone());
                    }
                    Step::Unmapped(_) => {}
                }
            } else {
                report.not_acknowledged += 1;
                if let Step::Unknown(id) = step {
                    report.unknown_ids_unacknowledged.push(id.clone());
                }
            }
        }
        report.catalog_types = catalog_types.len();
        report.customers_changed = changed.len();
        report.unknown_ids_sent = ghosts.len();
        report.unknown_ids = ghosts.iter().cloned().collect();
        report.unknown_ids.sort();

        // Settle: every acknowledged change is visible downstream, or the timeout passed.
        let settle_started = Instant::now();
        loop {
            let (latest_ok, ghosts_ok) = self.compare(&changed, &ghosts);
            if (latest_ok == changed.len() && ghosts_ok == ghosts.len())
                || settle_started.elapsed() > config.settle_timeout
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        report.settled_in = settle_started.elapsed();
        // Late duplicates and the last acks.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        report.inbox_depth_at_end = self.inbox_depth().await;

        let (latest_ok, ghosts_ok) = self.compare(&changed, &ghosts);
        report.latest_state_seen = latest_ok;
        report.unknown_ids_missing_seen = ghosts_ok;
        {
            let seen = lock(&self.seen);
            report.lost = changed
                .iter()
                .chain(ghosts.iter())
                .filter(|id| !seen.latest.contains_key(*id))
                .cloned()
                .collect();
            report.unexpected = seen
                .latest
                .keys()
                .filter(|id| !changed.contains(*id) && !ghosts.contains(*id))
                .cloned()
                .collect();
            report.records_received = seen.total;
            report.distinct_records = seen.message_ids.len();
            report.lag_ms = seen.lag_ms.clone();
        }
        let calls = self.sim.batch_calls();
        report.batch_calls = calls.len();
        report.max_ids_per_call = calls.iter().map(|c| c.ids.len()).max().unwrap_or(0);
        report.ids_requested = calls.iter().map(|c| c.ids.len()).sum();
        report.calls_answered_error = calls.iter().filter(|c| c.code != 0).count();
        report.token_calls = self.sim.token_calls();
        report.elapsed = started.elapsed();
        report
    }

    /// (customers whose latest record equals the simulator's state, ghosts seen as `missing`).
    fn compare(&self, changed: &HashSet<String>, ghosts: &HashSet<String>) -> (usize, usize) {
        let seen = lock(&self.seen);
        let app_id = self.app.app_id();
        let latest_ok = changed
            .iter()
            .filter(|id| {
                let truth = self.sim.customer(app_id, id);
                seen.latest
                    .get(*id)
                    .is_some_and(|(_, record)| Some(record) == truth.as_ref())
            })
            .count();
        let ghosts_ok = ghosts
            .iter()
            .filter(|id| {
                seen.latest
                    .get(*id)
                    .is_some_and(|(_, record)| record.is_null())
            })
            .count();
        (latest_ok, ghosts_ok)
    }

    /// Records the checking consumer has received so far (it keeps consuming until [`Self::finish`]).
    pub fn records_received(&self) -> usize {
        lock(&self.seen).total
    }

    /// Messages in the inbox queues (all partitions); `u32::MAX` when one cannot be read.
    pub async fn inbox_depth(&self) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut depth: u32 = 0;
        for queue in self.settings.amqp.inbox_queues() {
            match self
                .channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(queue) => depth = depth.saturating_add(queue.message_count()),
                Err(_) => return u32::MAX,
            }
        }
        depth
    }

    /// Stops everything and deletes the queues and exchanges the scenario made.
    pub async fn finish(mut self) -> Result<(), ScenarioError> {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await?;
        }
        self.checker.abort();
        self.sim_server.stop(false).await;
        cleanup(&self.channel, &self.settings.amqp, &self.check_queue).await;
        let _ = self.connection.close(200, "scenario done".into()).await;
        Ok(())
    }
}

/// One callback of the plan.
#[derive(Debug, Clone)]
enum Step {
    /// The simulator changes this customer, then sends an event about it.
    Change { customer: String, kind: u8 },
    /// An id Weiling does not know.
    Unknown(String),
    /// The n-th of the catalog's events that name no customer or contact (cycling).
    Unmapped(usize),
}

impl Step {
    fn event(&self, sim: &Simulator, app_id: &str) -> SimEvent {
        match self {
            Step::Change { customer, kind } => {
                if sim.customer(app_id, customer).is_none() {
                    let record = sim.create_customer(app_id, customer);
                    events::add_customer(&record)
                } else {
                    // Every catalog event that names a customer, each change type included.
                    let record = sim.change_customer(app_id, customer);
                    match kind % 6 {
                        0 => events::customer_update(&record, CustomerChange::Remark),
                        1 => events::customer_update(&record, CustomerChange::Company),
                        2 => events::customer_update(&record, CustomerChange::Loss),
                        3 => events::history_add(customer, 201),
                        4 => events::progress_add_customer(customer),
                        _ => events::tag_update(customer, TagObject::Customer),
                    }
                }
            }
            Step::Unknown(id) => events::customer_update_for(id, CustomerChange::Remark),
            // The catalog's events that name no customer or contact, in turn.
            Step::Unmapped(kind) => {
                let ids = CatalogIds::new(
                    &weiling_sim::new_customer_id(),
                    &weiling_sim::new_contact_id(),
                );
                let samples = events::samples_naming_neither(&ids);
                let at = *kind % samples.len().max(1);
                samples
                    .into_iter()
                    .nth(at)
                    .unwrap_or_else(|| events::user_update("staff-1"))
            }
        }
    }
}

fn plan(config: &ScenarioConfig) -> Vec<Step> {
    let mut rng = rand::rng();
    let customers: Vec<String> = (0..config.customers.max(1))
        .map(|i| format!("cust-{i:05}-{}", weiling_sim::new_customer_id()))
        .collect();
    let mut steps: Vec<Step> = (0..config.callbacks)
        .map(|_| Step::Change {
            customer: customers
                .get(zipf(&mut rng, customers.len()))
                .cloned()
                .unwrap_or_default(),
            kind: rng.random(),
        })
        .collect();
    for i in 0..config.unknown_ids {
        let at = rng.random_range(0..=steps.len());
        steps.insert(
            at,
            Step::Unknown(format!("ghost-{i}-{}", weiling_sim::new_customer_id())),
        );
    }
    // In turn, so that 26 or more cover every catalog event that names no customer or contact.
    for i in 0..config.unmapped {
        let at = rng.random_range(0..=steps.len());
        steps.insert(at, Step::Unmapped(i));
    }
    steps
}

/// A Zipf-like choice (exponent 1): a few customers change often, most rarely.
pub fn zipf(rng: &mut impl Rng, n: usize) -> usize {
    let u: f64 = rng.random_range(0.0..1.0);
    let pick = (n as f64).powf(u).floor() as usize;
    pick.saturating_sub(1).min(n.saturating_sub(1))
}

/// A short lowercase random id that keeps the queue and exchange names of one run apart.
pub fn new_run_id() -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), 8)
        .to_lowercase()
}

/// A freshly generated Weiling app: the simulator gets the id and secret, the relay all four.
#[derive(Debug, Clone)]
pub struct WeilingApp {
    pub app_id: String,
    pub app_secret: String,
    pub token: String,
    pub encoding_aes_key: String,
}

impl WeilingApp {
    pub fn generate(run_id: &str) -> WeilingApp {
        WeilingApp {
            app_id: format!("wloa{run_id}"),
            app_secret: Alphanumeric.sample_string(&mut rand::rng(), 24),
            token: Alphanumeric.sample_string(&mut rand::rng(), 32),
            encoding_aes_key: Alphanumeric.sample_string(&mut rand::rng(), 43),
        }
    }

    /// The sender's keys (what Weiling seals callbacks with).
    pub fn keys(&self) -> Result<AppKeys, relay::verify::cipher::KeyError> {
        AppKeys::new(
            &self.app_id,
            &SecretString::from(self.token.clone()),
            &SecretString::from(self.encoding_aes_key.clone()),
            true,
        )
    }
}

/// The relay's environment for one run: queue and exchange names under `prefix` (so runs never share
/// a queue), the broker, Weiling at `weiling_base_url`, and the one app. The bench starts relay
/// processes with it as well.
pub fn relay_env(
    prefix: &str,
    amqp_url: &str,
    weiling_base_url: &str,
    app: &WeilingApp,
) -> HashMap<String, String> {
    HashMap::from([
        ("WEILING_RELAY__SERVER__LISTEN".into(), "127.0.0.1:0".into()),
        ("WEILING_RELAY__AMQP__URL".into(), amqp_url.to_owned()),
        (
            "WEILING_RELAY__AMQP__INBOX_QUEUE".into(),
            format!("{prefix}.inbox"),
        ),
        (
            "WEILING_RELAY__AMQP__DEAD_LETTER_QUEUE".into(),
            format!("{prefix}.dead"),
        ),
        (
            "WEILING_RELAY__AMQP__EVENTS_EXCHANGE".into(),
            format!("{prefix}.events"),
        ),
        (
            "WEILING_RELAY__AMQP__CUSTOMERS_EXCHANGE".into(),
            format!("{prefix}.customers"),
        ),
        (
            "WEILING_RELAY__AMQP__UNROUTED_EXCHANGE".into(),
            format!("{prefix}.unrouted"),
        ),
        (
            "WEILING_RELAY__WEILING__BASE_URL".into(),
            weiling_base_url.to_owned(),
        ),
        ("WEILING_RELAY_APP_ID".into(), app.app_id.clone()),
        ("WEILING_RELAY_APP_SECRET".into(), app.app_secret.clone()),
        ("WEILING_RELAY_TOKEN".into(), app.token.clone()),
        (
            "WEILING_RELAY_ENCODING_AES_KEY".into(),
            app.encoding_aes_key.clone(),
        ),
    ])
}

/// Waits (up to 15 s) until the relay's broker link is up, so the first callbacks are not refused.
pub async fn wait_ready(base: &str) {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return;
    };
    for _ in 0..150 {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn check(channel: Channel, queue: String, seen: Arc<Mutex<Seen>>) {
    let Ok(mut consumer) = channel
        .basic_consume(
            queue.as_str().into(),
            "scenario-check".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(delivery)) = consumer.next().await {
        let _ = delivery.ack(BasicAckOptions::default()).await;
        let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
            continue;
        };
        let customer = body
            .pointer("/customer_id")
            .unwrap_or(&Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let fetched_at = body
            .pointer("/fetched_at")
            .unwrap_or(&Value::Null)
            .as_u64()
            .unwrap_or_default();
        let first_event_at = body
            .pointer("/source/first_event_at")
            .unwrap_or(&Value::Null)
            .as_u64()
            .unwrap_or_default();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let mut seen = lock(&seen);
        seen.total += 1;
        seen.message_ids.insert(message_id);
        if first_event_at > 0 {
            seen.lag_ms
                .push(now_ms().saturating_sub(first_event_at) as f64);
        }
        // Last writer by fetched_at wins, as the contract tells consumers to do.
        let newer = seen
            .latest
            .get(&customer)
            .is_none_or(|(at, _)| fetched_at >= *at);
        if newer {
            seen.latest.insert(
                customer,
                (
                    fetched_at,
                    body.pointer("/record").cloned().unwrap_or(Value::Null),
                ),
            );
        }
    }
}

/// Deletes the queues and exchanges a relay with these settings declared, and the checking queue.
pub async fn cleanup(channel: &Channel, amqp: &AmqpSettings, check_queue: &str) {
    let inbox = amqp.inbox_queues();
    let retry = amqp.inbox_retry_queue();
    let roster = relay::amqp::claim::roster_queue(amqp);
    let ask = relay::amqp::claim::ask_queue(amqp);
    for queue in [
        check_queue,
        &amqp.dead_letter_queue,
        &amqp.unrouted_exchange,
        &retry,
        &roster,
        &ask,
    ]
    .into_iter()
    .chain(inbox.iter().map(String::as_str))
    // An empty name means "the last queue declared on this channel" to the broker; never send one.
    .filter(|q| !q.is_empty())
    {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    let hash = amqp.inbox_hash_exchange().unwrap_or_default();
    for exchange in [
        &amqp.customers_exchange,
        &amqp.events_exchange,
        &amqp.unrouted_exchange,
        &hash,
    ]
    .into_iter()
    .filter(|e| !e.is_empty())
    {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The p-th percentile of unsorted values (nearest rank).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round();
    sorted.get(rank as usize).copied()
}
