//! The demo's repair steps, after the scenario: a `reconcile` of known and unknown customer ids, and
//! a key rotation: callbacks under a key the relay does not know yet are dead-lettered, then a
//! `dlq replay` with the new key added brings them back as events whose customers get published.
//! Both run through the library functions the commands use, not a subprocess.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::scenario::Scenario;
use relay::ops::dlq_replay::{self, ReplayOptions, ReplaySummary};
use relay::ops::reconcile::{self, Plan, Summary};
use relay::verify::AppKeys;
use weiling_sim::{CallbackDriver, Outcome, RetryPolicy, events};

/// Known customers the reconcile step re-fetches (plus one id Weiling does not know).
pub const RECONCILE_KNOWN: usize = 5;
/// Callbacks sent under the new key before the relay knows it.
pub const ROTATED: usize = 4;
/// How long records may take to reach the checking queue.
const ARRIVAL_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
pub struct RepairReport {
    /// The id Weiling does not know that the reconcile step asked for (published as `missing`).
    pub reconcile_unknown: Option<String>,
    pub reconcile: Option<Summary>,
    /// Reconciled records (`source.reconcile = true`) the checking queue received, by customer.
    pub reconciled_seen: usize,
    pub rotated_sent: usize,
    /// Of those, answered `success` (they were dead-lettered: the relay could not read them yet).
    pub rotated_acknowledged: usize,
    pub replay: Option<ReplaySummary>,
    /// Rotated customers whose record (equal to the simulator's state) arrived after the replay.
    pub rotated_published: usize,
    /// A step that could not run at all.
    pub error: Option<String>,
}

impl RepairReport {
    /// `wrong_key_letters`: the letters under a key nobody has, which must still fail after the replay.
    pub fn ok(&self, wrong_key_letters: usize) -> bool {
        let reconcile_ok = self.reconcile.as_ref().is_some_and(|s| {
            s.fetched == RECONCILE_KNOWN
                && s.missing == 1
                && s.published == RECONCILE_KNOWN + 1
                && s.ok()
        });
        let replay_ok = self.replay.as_ref().is_some_and(|r| {
            r.replayed_total() == ROTATED
                && r.still_failing_total() == wrong_key_letters
                && r.still_failing.get("decrypt") == Some(&wrong_key_letters)
                && r.error.is_none()
        });
        self.error.is_none()
            && reconcile_ok
            && self.reconciled_seen == RECONCILE_KNOWN + 1
            && self.rotated_acknowledged == ROTATED
            && replay_ok
            && self.rotated_published == ROTATED
    }

    /// The summary table's rows.
    pub fn rows(&self, wrong_key_letters: usize) -> Vec<(&'static str, String)> {
        let reconcile = self.reconcile.as_ref().map_or("-".to_owned(), |s| {
            format!(
                "{} / {} / {} / {}",
                s.fetched, s.missing, s.published, s.failed
            )
        });
        let replay = self.replay.as_ref().map_or("-".to_owned(), |r| {
            format!(
                "{} / {} (expected {ROTATED} / {wrong_key_letters}: the unknown-key letters stay)",
                r.replayed_total(),
                r.still_failing_total()
            )
        });
        let mut rows = vec![
            (
                "reconcile 5 known ids + 1 unknown: fetched / missing / published / failed",
                reconcile,
            ),
            (
                "reconciled records received (source.reconcile = true)",
                format!("{} of {}", self.reconciled_seen, RECONCILE_KNOWN + 1),
            ),
            (
                "key rotation: callbacks under a new key, dead-lettered (relay lacks the key)",
                format!("{} of {}", self.rotated_acknowledged, self.rotated_sent),
            ),
            (
                "dlq replay with the new key added: replayed / still failing",
                replay,
            ),
            (
                "replayed events' customers published",
                format!("{} of {ROTATED}", self.rotated_published),
            ),
        ];
        if let Some(error) = &self.error {
            rows.push(("repair steps failed", error.clone()));
        }
        rows
    }
}

/// Runs both repair steps against the scenario's relay, simulator and broker.
pub async fn run(scenario: &Scenario) -> RepairReport {
    let mut report = RepairReport::default();
    if let Err(error) = steps(scenario, &mut report).await {
        report.error = Some(error);
    }
    report
}

async fn steps(scenario: &Scenario, report: &mut RepairReport) -> Result<(), String> {
    let settings = &scenario.settings;
    let app_id = scenario.app.app_id().to_owned();
    let base = scenario.relay_url().ok_or("the relay is not running")?;
    let watcher = tokio::time::timeout(
        Duration::from_secs(10),
        Watcher::start(
            settings.amqp.url.expose_secret(),
            &settings.amqp.customers_exchange,
        ),
    )
    .await
    .map_err(|_| "checking queue: the broker did not answer in 10 s".to_owned())?
    .map_err(|e| format!("checking queue: {e}"))?;
    let stop = CancellationToken::new();

    // 1. Reconcile: a few customers the scenario changed, and one id Weiling never knew.
    let mut ids: Vec<String> = scenario
        .sim
        .customers(&app_id)
        .iter()
        .filter_map(|r| {
            r.get("customer_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .take(RECONCILE_KNOWN)
        .collect();
    let unknown = format!(
        "reconcile-unknown-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 8)
    );
    report.reconcile_unknown = Some(unknown.clone());
    ids.push(unknown);
    let summary = reconcile::reconcile(
        settings,
        Plan::new(&app_id, ids.clone()),
        &mut |_| {},
        &stop,
        &CancellationToken::new(),
    )
    .await
    .map_err(|e| format!("reconcile: {e}"))?;
    report.reconcile = Some(summary);
    report.reconciled_seen = watcher
        .wait_for(&ids, |record| {
            record.pointer("/source/reconcile") == Some(&Value::Bool(true))
        })
        .await;

    // 2. Rotation: Weiling switches to a new EncodingAESKey before the relay knows it.
    let new_key = Alphanumeric.sample_string(&mut rand::rng(), 43);
    let sender = AppKeys::new(
        &app_id,
        scenario.app.token(),
        &SecretString::from(new_key.clone()),
        true,
    )
    .map_err(|e| e.to_string())?;
    let driver = CallbackDriver::new(&base, Arc::new(sender), RetryPolicy::default());
    let mut rotated = Vec::new();
    for i in 0..ROTATED {
        let customer = format!("rotated-{i}-{}", weiling_sim::new_customer_id());
        let record = scenario.sim.create_customer(&app_id, &customer);
        let delivery = driver
            .send(&events::add_customer(&record).to_json(&app_id))
            .await;
        report.rotated_sent += 1;
        if delivery.outcome == Outcome::Ok {
            report.rotated_acknowledged += 1;
        }
        rotated.push(customer);
    }

    // 3. The operator adds the new key (old one kept for the overlap) and replays the dead letters.
    let mut fixed = settings.clone();
    for app in &mut fixed.apps {
        app.rotate_in_aes_key(SecretString::from(new_key.clone()));
    }
    let replay = dlq_replay::replay(&fixed, ReplayOptions::default(), &stop)
        .await
        .map_err(|e| format!("dlq replay: {e}"))?;
    report.replay = Some(replay);
    report.rotated_published = watcher
        .wait_for(&rotated, |record| {
            let id = record
                .get("customer_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            record.get("record") == scenario.sim.customer(&app_id, id).as_ref()
        })
        .await;
    watcher.close().await;
    Ok(())
}

/// An exclusive queue on the customers exchange that collects every record the steps cause.
struct Watcher {
    connection: Connection,
    records: Arc<std::sync::Mutex<HashMap<String, Vec<Value>>>>,
}

impl Watcher {
    async fn start(url: &str, exchange: &str) -> Result<Watcher, lapin::Error> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "customer.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "demo-repair".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let records: Arc<std::sync::Mutex<HashMap<String, Vec<Value>>>> = Arc::default();
        let sink = records.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                if let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) {
                    let id = body
                        .get("customer_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    lock(&sink).entry(id).or_default().push(body);
                }
            }
        });
        Ok(Watcher {
            connection,
            records,
        })
    }

    /// Waits until every id has a record satisfying `good`; returns how many do.
    async fn wait_for(&self, ids: &[String], good: impl Fn(&Value) -> bool) -> usize {
        let deadline = tokio::time::Instant::now() + ARRIVAL_LIMIT;
        loop {
            let satisfied = {
                let records = lock(&self.records);
                let wanted: HashSet<&String> = ids.iter().collect();
                wanted
                    .iter()
                    .filter(|id| records.get(**id).is_some_and(|r| r.iter().any(&good)))
                    .count()
            };
            if satisfied == ids.len() || tokio::time::Instant::now() >= deadline {
                return satisfied;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.connection.close(200, "demo repair done".into()),
        )
        .await;
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
