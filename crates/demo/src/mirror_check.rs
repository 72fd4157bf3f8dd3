//! The demo's PostgreSQL mirror: `weiling-relay mirror` run in this process through the same library
//! entry point ([`relay_mirror::run`]), on its own queue and a unique schema, subscribed before the
//! first callback like any downstream consumer. After the run (repair steps included) it is given time
//! to apply everything, then its tables are compared with the simulator's final state row by row.
//! The schema and the queue are removed at the end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::repair::RepairReport;
use super::scenario::{Report, Scenario, ScenarioError, new_run_id};
use relay::entity::Entity;
use relay_mirror::apply::Outcome;
use relay_mirror::db::{Db, Target};
use relay_mirror::stats::{Counts, Stats};
use relay_mirror::{MirrorError, MirrorOptions};
use weiling_sim::Simulator;

/// Where the demo's mirror writes unless `--database-url` / `WEILING_RELAY_DATABASE_URL` say otherwise:
/// the local PostgreSQL that `scripts/ensure-postgres` runs.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long the mirror may take to apply what is queued for it once the run is over.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Differences named in the summary (all of them are counted).
const EXAMPLES: usize = 5;

/// What the mirror did and how its tables compare with the simulator.
#[derive(Debug, Clone, Default)]
pub struct MirrorReport {
    /// `user@host:port/db schema …`: never the password.
    pub database: String,
    pub schema: String,
    pub queue: String,
    pub counts: Counts,
    /// Rows expected: the simulator's customers (and contacts) plus the unknown ids.
    pub compared: usize,
    /// Of those, records the simulator holds.
    pub records_compared: usize,
    /// Of those, unknown ids that must be deleted rows.
    pub deleted_compared: usize,
    /// One line per difference, sorted.
    pub differences: Vec<String>,
    /// From the end of the repair steps until the mirror had applied everything.
    pub caught_up_in: Duration,
    /// The mirror or the comparison could not run.
    pub error: Option<String>,
}

impl MirrorReport {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.differences.is_empty() && self.compared > 0
    }

    /// The summary table's rows.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let total = |outcome| {
            Entity::ALL
                .iter()
                .map(|e| self.counts.get(*e, outcome))
                .sum::<u64>()
        };
        let mut applied = format!(
            "{} / {} / {} / {}",
            total(Outcome::Applied),
            total(Outcome::Deleted),
            total(Outcome::Stale),
            total(Outcome::Duplicate)
        );
        if self.counts.dead_lettered() > 0 {
            applied.push_str(&format!(", {} dead-lettered", self.counts.dead_lettered()));
        }
        applied.push_str(&format!(
            " (caught up {:.1} s after the repair steps)",
            self.caught_up_in.as_secs_f64()
        ));
        let differences = if self.differences.is_empty() {
            "0".to_owned()
        } else {
            let examples: Vec<&str> = self
                .differences
                .iter()
                .take(EXAMPLES)
                .map(String::as_str)
                .collect();
            format!("{} (e.g. {})", self.differences.len(), examples.join("; "))
        };
        let mut rows = vec![
            (
                "mirror (PostgreSQL, own queue): records applied / deleted / stale / duplicate",
                applied,
            ),
            (
                "mirror rows compared with the simulator's final state",
                format!(
                    "{} ({} records equal to the simulator's, {} unknown ids deleted)",
                    self.compared, self.records_compared, self.deleted_compared
                ),
            ),
            ("mirror differences", differences),
        ];
        if let Some(error) = &self.error {
            rows.push(("mirror failed", error.clone()));
        }
        rows
    }
}

/// What the mirror's tables must hold for one app.
#[derive(Debug, Default)]
pub struct Expected {
    pub app_id: String,
    /// (entity, id) → the simulator's record: a row that is not deleted and holds exactly this.
    pub records: HashMap<(Entity, String), Value>,
    /// Ids the simulator does not know that the demo asked about: a deleted row each.
    pub deleted: HashSet<(Entity, String)>,
    /// Unknown ids whose callback was never acknowledged: a deleted row is allowed, not required.
    pub maybe_deleted: HashSet<(Entity, String)>,
}

impl Expected {
    /// The simulator's final state for `app_id`, and the unknown ids of the scenario and the repair.
    pub fn of_run(
        sim: &Simulator,
        app_id: &str,
        report: &Report,
        repair: &RepairReport,
    ) -> Expected {
        let mut records = HashMap::new();
        for entity in Entity::ALL {
            for record in sim.records(entity, app_id) {
                if let Some(id) = record.get(entity.id_field()).and_then(Value::as_str) {
                    records.insert((entity, id.to_owned()), record);
                }
            }
        }
        let customer = |id: &String| (Entity::Customer, id.clone());
        Expected {
            app_id: app_id.to_owned(),
            deleted: report
                .unknown_ids
                .iter()
                .chain(&repair.reconcile_unknown)
                .map(customer)
                .filter(|key| !records.contains_key(key))
                .collect(),
            maybe_deleted: report
                .unknown_ids_unacknowledged
                .iter()
                .map(customer)
                .collect(),
            records,
        }
    }

    pub fn rows(&self) -> usize {
        self.records.len() + self.deleted.len()
    }
}

/// One row of a mirror table, as the comparison needs it.
#[derive(Debug, Clone)]
pub struct Row {
    pub entity: Entity,
    pub app_id: String,
    pub id: String,
    pub record: Option<Value>,
    pub deleted: bool,
}

/// Every way `rows` differ from `expected`, one sorted line each (empty: equal).
pub fn differences(expected: &Expected, rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: HashSet<(Entity, String)> = HashSet::new();
    for row in rows {
        let key = (row.entity, row.id.clone());
        let name = format!("{} {}", row.entity.as_str(), row.id);
        if row.app_id != expected.app_id {
            out.push(format!("{name}: extra row of app {}", row.app_id));
            continue;
        }
        seen.insert(key.clone());
        if let Some(truth) = expected.records.get(&key) {
            if row.deleted {
                out.push(format!("{name}: deleted, the simulator has it"));
            } else if row.record.as_ref() != Some(truth) {
                out.push(format!("{name}: record differs from the simulator's"));
            }
        } else if expected.deleted.contains(&key) || expected.maybe_deleted.contains(&key) {
            if !row.deleted {
                out.push(format!("{name}: unknown id, row not deleted"));
            }
        } else {
            out.push(format!("{name}: extra row, the demo never sent this id"));
        }
    }
    for key in expected.records.keys() {
        if !seen.contains(key) {
            out.push(format!("{} {}: no row", key.0.as_str(), key.1));
        }
    }
    for key in &expected.deleted {
        if !seen.contains(key) {
            out.push(format!(
                "{} {}: unknown id, no deleted row",
                key.0.as_str(),
                key.1
            ));
        }
    }
    out.sort();
    out
}

/// The mirror of one demo run: a unique schema, then its own queue and the running mirror task.
pub struct DemoMirror {
    database_url: SecretString,
    target: Target,
    schema: String,
    /// A connection whose search_path is the schema, for the comparison and the final drop.
    db: Db,
    broker: Option<Broker>,
    running: Option<Running>,
}

struct Broker {
    connection: Connection,
    channel: Channel,
    queue: String,
}

struct Running {
    stop: CancellationToken,
    stats: Arc<Stats>,
    task: JoinHandle<Result<(), MirrorError>>,
}

/// What [`DemoMirror::close`] found.
#[derive(Debug, Default)]
pub struct Closed {
    /// The mirror itself ended with an error (or had to be aborted).
    pub error: Option<String>,
    /// The queue or the schema could not be removed.
    pub warnings: Vec<String>,
}

impl DemoMirror {
    /// Connects to PostgreSQL and creates a unique schema with the mirror's tables (its migrations).
    /// Fails with the database named without its password when PostgreSQL does not answer.
    pub async fn open(database_url: &SecretString) -> Result<DemoMirror, ScenarioError> {
        let schema = format!("demo_mirror_{}", new_run_id());
        let target = Target::new(database_url, Some(&schema))
            .map_err(|e| ScenarioError::Mirror(format!("the mirror's database: {e}")))?;
        let db = target.connect().await.map_err(|e| {
            ScenarioError::Mirror(format!(
                "the mirror's PostgreSQL at {} is not usable: {e} \
                 (scripts/demo starts it with scripts/ensure-postgres; \
                 or pass --database-url / WEILING_RELAY_DATABASE_URL)",
                target.describe()
            ))
        })?;
        Ok(DemoMirror {
            database_url: database_url.clone(),
            target,
            schema,
            db,
            broker: None,
            running: None,
        })
    }

    /// `user@host:port/db schema …`, without the password.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// Declares the mirror's queue `<prefix>.mirror` on the scenario's customers exchange (so no
    /// record is missed however fast the mirror connects) and starts the mirror as a task.
    pub async fn start(&mut self, scenario: &Scenario) -> Result<(), ScenarioError> {
        let settings = scenario.settings.clone();
        let queue = format!("{}.mirror", scenario.prefix);
        let connection = Connection::connect(
            settings.amqp.url.expose_secret(),
            ConnectionProperties::default(),
        )
        .await?;
        let channel = connection.create_channel().await?;
        let broker = self.broker.insert(Broker {
            connection,
            channel,
            queue: queue.clone(),
        });
        relay_mirror::consumer::declare_queue(&broker.channel, &settings.amqp, &queue).await?;
        let options = MirrorOptions {
            database_url: self.database_url.clone(),
            queue,
            prefetch: 200,
            schema: Some(self.schema.clone()),
        };
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn({
            let stop = stop.clone();
            let stats = stats.clone();
            async move { relay_mirror::run(&options, &settings, stop, stats).await }
        });
        self.running = Some(Running { stop, stats, task });
        Ok(())
    }

    /// Waits (up to [`SETTLE_TIMEOUT`]) until the mirror's queue is empty, it has settled as many
    /// deliveries as the checking consumer received and its tables equal the simulator's final state;
    /// then reports the comparison.
    pub async fn settle_and_compare(
        &self,
        scenario: &Scenario,
        report: &Report,
        repair: &RepairReport,
    ) -> MirrorReport {
        let expected = Expected::of_run(&scenario.sim, scenario.app.app_id(), report, repair);
        let mut out = MirrorReport {
            database: self.describe(),
            schema: self.schema.clone(),
            queue: self
                .broker
                .as_ref()
                .map(|b| b.queue.clone())
                .unwrap_or_default(),
            compared: expected.rows(),
            records_compared: expected.records.len(),
            deleted_compared: expected.deleted.len(),
            ..MirrorReport::default()
        };
        let Some(running) = &self.running else {
            out.error = Some("the mirror was not started".to_owned());
            return out;
        };
        let started = Instant::now();
        loop {
            let stopped = running.task.is_finished();
            let timed_out = started.elapsed() > SETTLE_TIMEOUT;
            let drained = self.queue_depth().await == Some(0)
                && running.stats.snapshot().settled() >= scenario.records_received() as u64;
            if drained || stopped || timed_out {
                match self.rows().await {
                    Ok(rows) => out.differences = differences(&expected, &rows),
                    Err(error) => {
                        out.error = Some(format!("reading the mirror's tables: {error}"));
                        break;
                    }
                }
                if stopped {
                    out.error = Some("the mirror stopped early".to_owned());
                }
                if (drained && out.differences.is_empty()) || stopped || timed_out {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        out.caught_up_in = started.elapsed();
        out.counts = running.stats.snapshot();
        out
    }

    /// Messages ready in the mirror's queue; `None` when it cannot be read.
    async fn queue_depth(&self) -> Option<u32> {
        let broker = self.broker.as_ref()?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        tokio::time::timeout(
            BROKER_TIMEOUT,
            broker.channel.queue_declare(
                broker.queue.as_str().into(),
                passive,
                FieldTable::default(),
            ),
        )
        .await
        .ok()?
        .ok()
        .map(|q| q.message_count())
    }

    /// Every row of both mirror tables in the schema.
    async fn rows(&self) -> Result<Vec<Row>, String> {
        let mut rows = Vec::new();
        for entity in Entity::ALL {
            let table = format!("mirror_{}s", entity.as_str());
            let sql = format!(
                "SELECT app_id, {}, record, deleted FROM {table}",
                entity.id_field()
            );
            let found = self
                .db
                .client
                .query(&sql, &[])
                .await
                .map_err(|e| relay_mirror::db::error_text(&e))?;
            for row in found {
                rows.push(Row {
                    entity,
                    app_id: row.try_get(0).map_err(|e| e.to_string())?,
                    id: row.try_get(1).map_err(|e| e.to_string())?,
                    record: row.try_get(2).map_err(|e| e.to_string())?,
                    deleted: row.try_get(3).map_err(|e| e.to_string())?,
                });
            }
        }
        Ok(rows)
    }

    /// Stops the mirror (after its current batch), deletes its queue and drops the schema.
    pub async fn close(mut self) -> Closed {
        let mut closed = Closed::default();
        if let Some(mut running) = self.running.take() {
            running.stop.cancel();
            match tokio::time::timeout(STOP_TIMEOUT, &mut running.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => closed.error = Some(format!("the mirror failed: {error}")),
                Ok(Err(error)) => closed.error = Some(format!("the mirror task failed: {error}")),
                Err(_) => {
                    running.task.abort();
                    closed.error = Some(format!(
                        "the mirror did not stop within {}s",
                        STOP_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        if let Some(broker) = self.broker.take() {
            let deleted = tokio::time::timeout(
                BROKER_TIMEOUT,
                broker
                    .channel
                    .queue_delete(broker.queue.as_str().into(), QueueDeleteOptions::default()),
            )
            .await;
            if !matches!(deleted, Ok(Ok(_))) {
                closed.warnings.push(format!(
                    "could not delete the mirror's queue {}",
                    broker.queue
                ));
            }
            let _ = tokio::time::timeout(
                BROKER_TIMEOUT,
                broker.connection.close(200, "demo mirror done".into()),
            )
            .await;
        }
        // The name was generated as a plain identifier.
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        if let Err(error) = self.db.client.batch_execute(&drop).await {
            closed.warnings.push(format!(
                "could not drop schema {}: {}",
                self.schema,
                relay_mirror::db::error_text(&error)
            ));
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(id: &str, record: Option<Value>, deleted: bool) -> Row {
        Row {
            entity: Entity::Customer,
            app_id: "wloa1".into(),
            id: id.into(),
            record,
            deleted,
        }
    }

    fn expected() -> Expected {
        let key = |id: &str| (Entity::Customer, id.to_owned());
        Expected {
            app_id: "wloa1".into(),
            records: HashMap::from([
                (key("c1"), json!({"customer_id": "c1", "name": "a"})),
                (key("c2"), json!({"customer_id": "c2", "name": "b"})),
            ]),
            deleted: HashSet::from([key("ghost")]),
            maybe_deleted: HashSet::from([key("unacked")]),
        }
    }

    #[test]
    fn equal_tables_have_no_differences() {
        let rows = [
            row("c1", Some(json!({"name": "a", "customer_id": "c1"})), false),
            row("c2", Some(json!({"customer_id": "c2", "name": "b"})), false),
            row("ghost", None, true),
            row("unacked", None, true),
        ];
        assert_eq!(expected().rows(), 3);
        assert!(differences(&expected(), &rows).is_empty());
        // The unacknowledged unknown id may also be absent.
        assert!(differences(&expected(), &rows[..3]).is_empty());
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let mut other_app = row("c9", Some(json!({})), false);
        other_app.app_id = "wloa2".into();
        let rows = [
            row(
                "c1",
                Some(json!({"customer_id": "c1", "name": "old"})),
                false,
            ),
            row("c2", Some(json!({"customer_id": "c2", "name": "b"})), true),
            row("stray", Some(json!({})), false),
            other_app,
        ];
        assert_eq!(
            differences(&expected(), &rows),
            [
                "customer c1: record differs from the simulator's",
                "customer c2: deleted, the simulator has it",
                "customer c9: extra row of app wloa2",
                "customer ghost: unknown id, no deleted row",
                "customer stray: extra row, the demo never sent this id",
            ]
        );
        let rows = [
            row("c1", Some(json!({"customer_id": "c1", "name": "a"})), false),
            row("ghost", Some(json!({})), false),
        ];
        assert_eq!(
            differences(&expected(), &rows),
            [
                "customer c2: no row",
                "customer ghost: unknown id, row not deleted"
            ]
        );
    }
}
