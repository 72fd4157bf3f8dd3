//! The fault suite of reliability.md (b): each row drives at least 1,000 real callbacks through a relay
//! while a fault is injected, lets the system settle, and judges the ledger (lost = 0,
//! unexpected = 0, duplicates counted, inbox empty at the end). Every row runs three rounds; each round
//! writes its figures to `target/reliability/rows/`, from which `scripts/reliability-report` renders
//! `docs/reliability.md`.
//!
//! Row N is the test `row_N_…` (two digits below 10), in the file of its group:
//!
//! | rows | file | group |
//! |---|---|---|
//! | 1–11, 13, 14, 39 | `edge_rows.rs` | bad input at the edge |
//! | 15–26 | `broker_rows.rs` | broker faults |
//! | 27–34 | `crm_rows.rs` | Weiling (enrichment) faults |
//! | 35–37 | `process_rows.rs` | process faults |
//! | 40 | `soak.rs` | the opt-in soak (`scripts/soak`) |
//! | 41–46 | `review_rows.rs` | the review's findings |
//!
//! Rows 12 and 38 do not exist in reliability.md (b).

pub mod ledger;

mod broker_rows;
mod crm_rows;
mod edge_rows;
mod process_rows;
mod review_rows;
mod soak;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rand::Rng;
use relay::app::Relay;
use relay::config::Settings;
use relay::verify::AppKeys;
use relay_harness::scenario::{WeilingApp, relay_env, wait_ready, zipf};
use serde_json::{Value, json};
use weiling_sim::events::{self, CustomerChange};
use weiling_sim::{CallbackDriver, Outcome, RetryPolicy, Simulator, new_customer_id, revision};

use self::ledger::{Entry, Seen, Subject};
use crate::support::in_process::unique;
use crate::support::process::{RelayProcess, free_port};
use crate::support::proxy::ChaosProxy;

pub const ROUNDS: u32 = 3;
/// The start of the connection name of the relay's records publisher.
pub const RECORDS_LINK: &[u8] = b"weiling-relay records";
pub const CALLBACKS: usize = 1000;

/// How a row's relay runs and what it talks to.
#[derive(Clone, Debug)]
pub struct RigOptions {
    /// The broker the relay and the checker use.
    pub amqp_url: String,
    /// Put a chaos proxy between the relay and the broker.
    pub broker_proxy: bool,
    /// Put a chaos proxy between the relay and the simulator.
    pub weiling_proxy: bool,
    /// Run the relay as a child process (killable) instead of inside the test.
    pub process: bool,
    /// Extra `WEILING_RELAY__…` settings.
    pub env: Vec<(String, String)>,
    /// A second app (tenant) served by the same relay and simulator; in-process relays only.
    pub second_app: bool,
    /// The fault floods the relay as fast as it answers: the row runs apart from the judged ones
    /// ([`crate::support::gate`]).
    pub flood: bool,
}

impl RigOptions {
    pub fn on(amqp_url: &str) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            broker_proxy: false,
            weiling_proxy: false,
            process: false,
            env: Vec::new(),
            second_app: false,
            flood: false,
        }
    }

    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }
}

enum RelayHandle {
    InProcess(Relay),
    Process(RelayProcess),
    Stopped,
}

/// One round's world: simulator, relay, checking consumer, unique names.
pub struct FaultRig {
    pub sim: Simulator,
    sim_server: actix_web::dev::ServerHandle,
    pub app: Arc<AppKeys>,
    pub app_id: String,
    pub env: HashMap<String, String>,
    pub settings: Settings,
    pub base: String,
    pub broker_proxy: Option<ChaosProxy>,
    pub weiling_proxy: Option<ChaosProxy>,
    inspect_url: String,
    relay: tokio::sync::Mutex<RelayHandle>,
    check: String,
    seen: Arc<Mutex<Seen>>,
    /// Callbacks answered so far (any outcome), for faults that start at a point of the load.
    progress: AtomicUsize,
    /// Finished answers: when each `ok` came back.
    ok_at: Mutex<Vec<Instant>>,
    /// Records read from the unrouted queue so far.
    unrouted: AtomicUsize,
    /// The second app of [`RigOptions::second_app`].
    pub other_app: Option<WeilingApp>,
}

impl FaultRig {
    pub async fn start(name: &str, options: &RigOptions) -> FaultRig {
        let prefix = unique(&format!("fault-{name}"));
        let test_app = WeilingApp::generate(&prefix.replace('-', ""));
        let app = Arc::new(test_app.keys().unwrap());
        let app_id = test_app.app_id.clone();

        let sim = Simulator::new(Default::default());
        sim.add_app(&app_id, &test_app.app_secret);
        let sim_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sim_addr = sim_listener.local_addr().unwrap();
        let sim_server = sim.serve(sim_listener).unwrap();
        let sim_handle = sim_server.handle();
        tokio::spawn(sim_server);
        let weiling_proxy = if options.weiling_proxy {
            Some(ChaosProxy::start(sim_addr).await)
        } else {
            None
        };
        let weiling_addr = weiling_proxy.as_ref().map_or(sim_addr, ChaosProxy::addr);

        let broker_addr = broker_addr(&options.amqp_url);
        let broker_proxy = if options.broker_proxy {
            // Marked by the records publisher's connection name, so a row can stall that link alone.
            Some(ChaosProxy::start_marking(broker_addr, RECORDS_LINK.to_vec()).await)
        } else {
            None
        };
        let relay_amqp = match &broker_proxy {
            Some(proxy) => format!("amqp://guest:guest@{}/%2f", proxy.addr()),
            None => options.amqp_url.clone(),
        };
        let port = free_port();
        let mut env = relay_env(
            &prefix,
            &relay_amqp,
            &format!("http://{weiling_addr}"),
            &test_app,
        );
        env.insert(
            "WEILING_RELAY__SERVER__LISTEN".into(),
            format!("127.0.0.1:{port}"),
        );
        env.extend(options.env.iter().cloned());
        let mut settings = Settings::load(None, &env).unwrap();
        let other_app = options.second_app.then(|| {
            assert!(
                !options.process,
                "a relay process is configured with one app"
            );
            let other = WeilingApp::generate(&format!("{}b", prefix.replace('-', "")));
            sim.add_app(&other.app_id, &other.app_secret);
            let mut other_env = env.clone();
            other_env.extend(relay_env(
                &prefix,
                &relay_amqp,
                &format!("http://{weiling_addr}"),
                &other,
            ));
            let other_settings = Settings::load(None, &other_env).unwrap();
            settings.apps.extend(other_settings.apps);
            other
        });

        // The checking queue is durable, so it keeps records through broker faults; it is read by
        // polling (`drain_records`), which cannot get stuck on a connection a fault broke.
        let check = format!("{prefix}.check");
        declare_check_queue(&options.amqp_url, &settings, &check).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let base = format!("http://127.0.0.1:{port}");
        let rig = FaultRig {
            sim,
            sim_server: sim_handle,
            app,
            app_id,
            env,
            settings,
            base,
            broker_proxy,
            weiling_proxy,
            inspect_url: options.amqp_url.clone(),
            relay: tokio::sync::Mutex::new(RelayHandle::Stopped),
            check,
            seen,
            progress: AtomicUsize::new(0),
            ok_at: Mutex::new(Vec::new()),
            unrouted: AtomicUsize::new(0),
            other_app,
        };
        rig.start_relay(options.process).await;
        rig
    }

    /// Starts (or restarts) the relay on the rig's port and waits until it is ready.
    pub async fn start_relay(&self, process: bool) {
        let handle = if process {
            RelayHandle::Process(RelayProcess::start(&self.env))
        } else {
            let listener = bind_retrying(&self.base).await;
            RelayHandle::InProcess(Relay::start(self.settings.clone(), listener).unwrap())
        };
        *self.relay.lock().await = handle;
        wait_ready(&self.base).await;
    }

    /// The pid of a process relay.
    pub async fn relay_pid(&self) -> Option<u32> {
        match &*self.relay.lock().await {
            RelayHandle::Process(process) => Some(process.pid()),
            _ => None,
        }
    }

    /// SIGKILL of a process relay (no drain, nothing acked).
    pub async fn kill_relay(&self) {
        let mut relay = self.relay.lock().await;
        if let RelayHandle::Process(process) = &mut *relay {
            process.kill_9();
        }
        *relay = RelayHandle::Stopped;
    }

    /// SIGTERM of a process relay; waits for it to exit and returns its exit status and how long it took.
    pub async fn terminate_relay(&self) -> (Option<std::process::ExitStatus>, Duration) {
        let mut relay = self.relay.lock().await;
        let started = Instant::now();
        let status = match &mut *relay {
            RelayHandle::Process(process) => {
                process.terminate();
                process.wait_exit(Duration::from_secs(40)).await
            }
            _ => None,
        };
        *relay = RelayHandle::Stopped;
        (status, started.elapsed())
    }

    /// Callbacks answered so far.
    pub fn progress(&self) -> usize {
        self.progress.load(Ordering::SeqCst)
    }

    /// Waits until `n` callbacks have been answered.
    pub async fn progress_at_least(&self, n: usize) {
        while self.progress.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first `ok` answer after `at`, as a recovery time.
    pub fn first_ok_after(&self, at: Instant) -> Option<Duration> {
        self.ok_at
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t >= at)
            .min()
            .map(|t| t.duration_since(at))
    }

    /// A direct (never proxied) channel to the broker, for counting and policies.
    pub async fn inspect(&self) -> (Connection, lapin::Channel) {
        let connection = connect_retrying(&self.inspect_url).await;
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }

    /// The dead-letter queue's size and the customer ids its letters name (events the relay parked);
    /// the letters are returned to the queue.
    pub async fn dead_letters(&self) -> (u32, std::collections::HashSet<String>) {
        let (connection, channel) = self.inspect().await;
        let queue = self.settings.amqp.dead_letter_queue.as_str();
        let mut ids = std::collections::HashSet::new();
        let mut count = 0;
        while let Ok(Some(message)) = channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
        {
            count += 1;
            if let Ok(body) = serde_json::from_slice::<Value>(&message.delivery.data)
                && let Some(id) = body["event"]["customer_id"].as_str()
            {
                ids.insert(id.to_owned());
            }
        }
        // Closing the channel returns every unacked letter to the queue.
        let _ = connection.close(200, "counted".into()).await;
        (count, ids)
    }

    /// Reads the checking queue into what was seen.
    pub async fn drain_records(&self) {
        self.drain_into_seen(&self.check).await;
    }

    /// Reads the unrouted queue into what was seen; returns how many records it has held in all.
    pub async fn drain_unrouted(&self) -> u32 {
        let count = self
            .drain_into_seen(&self.settings.amqp.unrouted_exchange)
            .await;
        let total = self.unrouted.fetch_add(count, Ordering::SeqCst) + count;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Takes every record a queue holds now and adds it to what was seen; returns how many.
    async fn drain_into_seen(&self, queue: &str) -> usize {
        let (connection, channel) = self.inspect().await;
        let mut count = 0usize;
        while let Ok(Some(message)) = channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
        {
            count += 1;
            let body: Value = serde_json::from_slice(&message.delivery.data).unwrap_or(json!({}));
            let message_id = message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string());
            self.seen.lock().unwrap().add(message_id, &body);
        }
        let _ = connection.close(200, "drained".into()).await;
        count
    }

    /// Stops the relay the way an operator does, so that what it still has in flight (a window
    /// closing, an ack on its way) is finished rather than counted as left behind: an in-process
    /// one drains, a process gets SIGTERM and drains (killed only if it never exits). Either way its
    /// connections close and the broker requeues whatever it still held unacked: that is counted.
    pub async fn stop_relay(&self) {
        let handle = std::mem::replace(&mut *self.relay.lock().await, RelayHandle::Stopped);
        match handle {
            RelayHandle::InProcess(relay) => {
                let _ = relay.shutdown().await;
            }
            RelayHandle::Process(mut process) => {
                process.terminate();
                if process.wait_exit(Duration::from_secs(40)).await.is_none() {
                    process.kill_9();
                }
            }
            RelayHandle::Stopped => {}
        }
    }

    /// The inbox depth once no consumer is left on it (a half-open connection may take a few
    /// heartbeats to be closed by the broker), so messages held unacked are counted too.
    /// Waits (up to the retry delay and 15 s more) until the retry queue holds nothing.
    pub async fn await_retry_queue_empty(&self) {
        let deadline = Instant::now()
            + Duration::from_millis(self.settings.amqp.retry_delay_ms)
            + Duration::from_secs(15);
        let queue = self.settings.amqp.inbox_retry_queue();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        while Instant::now() < deadline {
            let (connection, channel) = self.inspect().await;
            let waiting = channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .map_or(0, |q| q.message_count());
            let _ = connection.close(200, "counted".into()).await;
            if waiting == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn inbox_depth_without_consumers(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (connection, channel) = self.inspect().await;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let mut depth = 0;
            let mut consumers = 0;
            for queue in self.settings.amqp.inbox_queues() {
                if let Ok(q) = channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    depth += q.message_count();
                    consumers += q.consumer_count();
                }
            }
            let _ = connection.close(200, "counted".into()).await;
            if consumers == 0 || Instant::now() > deadline {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The durable queue the checker reads, bound to the records exchange with `customer.#` (and `contact.#`).
    pub fn check_queue(&self) -> &str {
        &self.check
    }

    /// Stops the relay and the simulator, deletes the round's queues and exchanges.
    pub async fn finish(&self) {
        self.stop_relay().await;
        self.sim_server.stop(false).await;
        let (connection, channel) = self.inspect().await;
        relay_harness::scenario::cleanup(&channel, &self.settings.amqp, &self.check).await;
        let _ = connection.close(200, "round done".into()).await;
    }
}

/// The load of one round: `callbacks` changes over `customers` (Zipf-skewed), plus a few ids Weiling
/// does not know, paced at `per_second` so that a fault lands in the middle of the traffic.
#[derive(Clone, Debug)]
pub struct Load {
    pub callbacks: usize,
    pub customers: usize,
    pub ghosts: usize,
    pub concurrency: usize,
    pub per_second: u32,
    pub retry: RetryPolicy,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            callbacks: CALLBACKS,
            customers: 200,
            ghosts: 10,
            concurrency: 16,
            per_second: 150,
            // Weiling's sender retries for minutes; these retries span a broker restart.
            retry: RetryPolicy {
                max_attempts: 8,
                delays: vec![
                    Duration::from_millis(250),
                    Duration::from_millis(500),
                    Duration::from_secs(1),
                    Duration::from_secs(2),
                ],
                request_timeout: Duration::from_secs(5),
            },
        }
    }
}

/// How many dead letters a row expects in the dead-letter queue at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dead {
    Exactly(u32),
    /// Some deliveries are parked on purpose, how many depends on the windows (at least this many).
    AtLeast(u32),
}

impl Default for Dead {
    fn default() -> Self {
        Self::Exactly(0)
    }
}

/// What a fault reports back: when it was lifted (for the recovery time), what else must hold, and
/// a note for the report.
#[derive(Debug, Default)]
pub struct FaultOutcome {
    pub restored_at: Option<Instant>,
    /// Dead letters the row puts there on purpose. Customers named by dead-lettered inbox events
    /// are exempt from "lost" (parked by design, replayable with `dlq replay`).
    pub expected_dead: Dead,
    /// Records the row sends to the unrouted queue on purpose (`None`: exactly 0). Records found
    /// there count as delivered, like the ones the checking queue read.
    pub expected_unrouted: Option<u32>,
    /// The fault destroyed what the broker held (an operator deleted the inbox): `ok` callbacks whose
    /// successful attempt was sent before this moment are exempt from "lost"; every later one counts.
    pub exempt_before: Option<Instant>,
    /// Customers the row itself created and sent callbacks about: their records are expected.
    pub own_ids: Vec<String>,
    pub note: String,
}

/// One round's figures, as written for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundResult {
    pub row: u32,
    pub name: String,
    pub round: u32,
    pub callbacks: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub duplicates: usize,
    pub recovered: usize,
    pub records: usize,
    pub dead_letters: u32,
    pub unrouted: u32,
    pub inbox_end: u32,
    pub recovery_ms: Option<u64>,
    pub settle_ms: u64,
    pub elapsed_ms: u64,
    pub passed: bool,
    pub note: String,
}

/// Runs `ROUNDS` rounds of a row: fresh rig, load and fault concurrently, settle, judge, record.
/// Panics (fails the test) if any round breaks the pass rule.
pub async fn run_row<F, Fut>(
    row: u32,
    name: &str,
    options: RigOptions,
    load: Load,
    fault: F,
) -> Vec<RoundResult>
where
    F: Fn(Arc<FaultRig>, u32) -> Fut,
    Fut: Future<Output = FaultOutcome>,
{
    let (_flood, _judged) = if options.flood {
        (Some(crate::support::gate::flood().await), None)
    } else {
        (None, Some(crate::support::gate::judged().await))
    };
    let mut results = Vec::new();
    for round in 1..=ROUNDS {
        let result = run_round(row, name, &options, &load, &fault, round).await;
        eprintln!(
            "row {row} {name} round {round}: callbacks {} ok {} fail {} info {} | lost {} unexpected {} duplicates {} recovered {} | records {} dead {} unrouted {} inbox {} | recovery {:?} ms settle {} ms{}",
            result.callbacks,
            result.ok,
            result.fail,
            result.info,
            result.lost,
            result.unexpected,
            result.duplicates,
            result.recovered,
            result.records,
            result.dead_letters,
            result.unrouted,
            result.inbox_end,
            result.recovery_ms,
            result.settle_ms,
            if result.note.is_empty() {
                String::new()
            } else {
                format!(" | {}", result.note)
            }
        );
        write_result(&result);
        assert!(
            result.passed,
            "row {row} ({name}) round {round} failed: {result:?}"
        );
        results.push(result);
    }
    results
}

pub async fn run_round<F, Fut>(
    row: u32,
    name: &str,
    options: &RigOptions,
    load: &Load,
    fault: &F,
    round: u32,
) -> RoundResult
where
    F: Fn(Arc<FaultRig>, u32) -> Fut,
    Fut: Future<Output = FaultOutcome>,
{
    let started = Instant::now();
    let rig = Arc::new(FaultRig::start(&format!("r{row}"), options).await);
    let driver = CallbackDriver::new(&rig.base, rig.app.clone(), load.retry.clone());
    let plan = Plan::new(load);
    let interval = Duration::from_secs(1) / load.per_second.max(1);
    let load_started = tokio::time::Instant::now();
    // The load runs for its planned callbacks and, however long the fault takes (a busy machine can
    // make `rabbitmqctl` slow), until TAIL callbacks after the fault was lifted.
    const TAIL: usize = 100;
    let issued = AtomicUsize::new(0);
    let tail_until = AtomicUsize::new(usize::MAX);
    let sending = async {
        futures::stream::iter(0usize..)
            .take_while(|n| {
                let more = *n < load.callbacks || *n < tail_until.load(Ordering::SeqCst);
                futures::future::ready(more)
            })
            .map(|n| {
                issued.fetch_max(n + 1, Ordering::SeqCst);
                let step = plan.step(n);
                let (rig, driver) = (&*rig, &driver);
                let due = load_started + interval * u32::try_from(n).unwrap_or(u32::MAX);
                async move {
                    tokio::time::sleep_until(due).await;
                    let (subject, json) = step.prepare(rig);
                    let delivery = driver.send(&json).await;
                    let outcome = delivery.outcome;
                    let answered_at = Instant::now();
                    let sent_at = answered_at
                        .checked_sub(delivery.latency)
                        .unwrap_or(answered_at);
                    rig.progress.fetch_add(1, Ordering::SeqCst);
                    if outcome == Outcome::Ok {
                        rig.ok_at.lock().unwrap().push(answered_at);
                    }
                    Entry {
                        subject,
                        outcome,
                        answered_at,
                        sent_at,
                    }
                }
            })
            .buffer_unordered(load.concurrency.max(1))
            .collect::<Vec<Entry>>()
            .await
    };
    let faulting = async {
        // A row's own assertion failing inside the fault must still leave the broker clean.
        let outcome = std::panic::AssertUnwindSafe(fault(rig.clone(), round))
            .catch_unwind()
            .await;
        tail_until.store(issued.load(Ordering::SeqCst) + TAIL, Ordering::SeqCst);
        outcome
    };
    let (entries, outcome) = tokio::join!(sending, faulting);
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(panic) => {
            rig.finish().await;
            std::panic::resume_unwind(panic);
        }
    };

    // The fault destroyed what was answered before `exempt_before` (by design, e.g. a deleted queue).
    // A callback whose successful attempt was sent before that moment may have been stored just
    // before the destruction, even if its answer arrived after it.
    let destroyed = |e: &Entry| outcome.exempt_before.is_some_and(|at| e.sent_at < at);

    // Settle: every acknowledged change visible downstream (or parked in the dead-letter queue by
    // design), or give up after two minutes.
    let settle_started = Instant::now();
    let mut polls = 0u32;
    let mut parked = std::collections::HashSet::new();
    loop {
        let exempt = |e: &Entry| destroyed(e) || parked.contains(e.subject.id());
        if settle_started.elapsed() >= Duration::from_secs(120)
            || ledger::settled(&entries, &rig.seen.lock().unwrap(), exempt)
        {
            break;
        }
        polls += 1;
        rig.drain_records().await;
        if polls.is_multiple_of(10) {
            rig.drain_unrouted().await;
            parked = rig.dead_letters().await.1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settle = settle_started.elapsed();
    // Stragglers (duplicates, the last acks) before counting, and deliveries a rate-limited app had
    // moved to the retry queue: they return to the inbox after `retry_delay_ms` and would otherwise
    // be counted as left over although the relay never stopped consuming.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rig.await_retry_queue_empty().await;
    // With the relay stopped, whatever it held unacked is back in the queue and counted.
    rig.stop_relay().await;
    let inbox_end = rig.inbox_depth_without_consumers().await;
    rig.drain_records().await;
    let (dead_letters, parked) = rig.dead_letters().await;
    let unrouted = rig.drain_unrouted().await;
    // Customers named by dead-lettered inbox events were parked by design (replayable).
    let exempt = |e: &Entry| destroyed(e) || parked.contains(e.subject.id());
    let mut verdict = ledger::judge(&entries, &rig.seen.lock().unwrap(), exempt);
    verdict
        .unexpected
        .retain(|id| !outcome.own_ids.contains(id));
    let recovery = outcome.restored_at.and_then(|at| rig.first_ok_after(at));
    // A fault lifted after the last answer tested nothing: the load must outlast it.
    let answered_after_fault = match outcome.restored_at {
        None => true,
        Some(at) => entries.iter().any(|e| e.answered_at > at),
    };
    rig.finish().await;

    let unrouted_ok = match outcome.expected_unrouted {
        None => unrouted == 0,
        Some(n) => unrouted >= n,
    };
    let passed = answered_after_fault
        && verdict.lost.is_empty()
        && verdict.unexpected.is_empty()
        && inbox_end == 0
        && match outcome.expected_dead {
            Dead::Exactly(n) => dead_letters == n,
            Dead::AtLeast(n) => dead_letters >= n,
        }
        && unrouted_ok;
    let mut note = outcome.note;
    if !answered_after_fault {
        note.push_str(" the load ended before the fault was lifted;");
    }
    if !verdict.lost.is_empty() {
        note.push_str(&format!(" lost ids: {:?}", verdict.lost));
    }
    if !verdict.unexpected.is_empty() {
        note.push_str(&format!(" unexpected ids: {:?}", verdict.unexpected));
    }
    RoundResult {
        row,
        name: name.to_owned(),
        round,
        callbacks: verdict.callbacks,
        ok: verdict.ok,
        fail: verdict.fail,
        info: verdict.info,
        lost: verdict.lost.len(),
        unexpected: verdict.unexpected.len(),
        duplicates: verdict.duplicates,
        recovered: verdict.recovered,
        records: verdict.records,
        dead_letters,
        unrouted,
        inbox_end,
        recovery_ms: recovery.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        settle_ms: u64::try_from(settle.as_millis()).unwrap_or(u64::MAX),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        passed,
        note: note.trim().to_owned(),
    }
}

/// One callback of the plan, prepared (the simulator changed) only when it is sent, so the change
/// and the callback are as close as in Weiling.
enum Step {
    Change(String),
    Ghost(String),
}

impl Step {
    fn prepare(&self, rig: &FaultRig) -> (Subject, Vec<u8>) {
        match self {
            Step::Change(customer) => {
                let (record, event) = if rig.sim.customer(&rig.app_id, customer).is_none() {
                    let record = rig.sim.create_customer(&rig.app_id, customer);
                    let event = events::add_customer(&record);
                    (record, event)
                } else {
                    let record = rig.sim.change_customer(&rig.app_id, customer);
                    let event = events::customer_update(&record, CustomerChange::Remark);
                    (record, event)
                };
                let revision = revision(&record).expect("a simulator record has a revision");
                (
                    Subject::Change {
                        customer: customer.clone(),
                        revision,
                    },
                    event.to_json(&rig.app_id),
                )
            }
            Step::Ghost(id) => (
                Subject::Ghost(id.clone()),
                events::customer_update_for(id, CustomerChange::Remark).to_json(&rig.app_id),
            ),
        }
    }
}

/// The callbacks of a round, drawn as they are sent: Zipf-skewed changes over a fixed set of
/// customers, with the ghosts at random places among the planned callbacks.
struct Plan {
    customers: Vec<String>,
    ghosts: HashMap<usize, String>,
}

impl Plan {
    fn new(load: &Load) -> Plan {
        let mut rng = rand::rng();
        let customers = (0..load.customers.max(1))
            .map(|i| format!("cust-{i:04}-{}", new_customer_id()))
            .collect();
        let mut ghosts = HashMap::new();
        while ghosts.len() < load.ghosts.min(load.callbacks) {
            let at = rng.random_range(0..load.callbacks);
            let n = ghosts.len();
            ghosts
                .entry(at)
                .or_insert_with(|| format!("ghost-{n}-{}", new_customer_id()));
        }
        Plan { customers, ghosts }
    }

    fn step(&self, n: usize) -> Step {
        match self.ghosts.get(&n) {
            Some(id) => Step::Ghost(id.clone()),
            None => {
                let pick = zipf(&mut rand::rng(), self.customers.len());
                Step::Change(self.customers[pick].clone())
            }
        }
    }
}

/// Declares the relay's topology and the durable checking queue, bound to the records exchange
/// exactly like a mirror's queue (the load names customers only, so contact bindings stay idle).
async fn declare_check_queue(url: &str, settings: &Settings, queue: &str) {
    let connection = connect_retrying(url).await;
    let channel = connection.create_channel().await.unwrap();
    relay::amqp::topology::declare(&connection, &settings.amqp)
        .await
        .unwrap();
    relay_mirror::consumer::declare_queue(&channel, &settings.amqp, queue)
        .await
        .unwrap();
    let _ = connection.close(200, "declared".into()).await;
}

async fn connect_retrying(url: &str) -> Connection {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Connection::connect(url, ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "broker {url} unreachable: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The relay's port may still be held for a moment by the previous relay of the round.
async fn bind_retrying(base: &str) -> TcpListener {
    let addr = base.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(error) => {
                assert!(Instant::now() < deadline, "bind {addr}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn broker_addr(url: &str) -> std::net::SocketAddr {
    let host_port = url
        .trim_start_matches("amqp://")
        .rsplit('@')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    host_port.parse().unwrap()
}

/// `target/reliability/rows/<row>-<round>.json` (or under `RELIABILITY_OUT`).
fn write_result(result: &RoundResult) {
    let dir = std::env::var_os("RELIABILITY_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/reliability"))
        .join("rows");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{:02}-{}.json", result.row, result.round));
    std::fs::write(file, serde_json::to_vec_pretty(result).unwrap()).unwrap();
}
