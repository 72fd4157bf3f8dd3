//! Scale-out on RabbitMQ (design.md §6): two relay processes share one partitioned inbox (P = 4
//! quorum queues behind the consistent-hash exchange, claimed two each), every replica serves
//! callbacks, one is killed with SIGKILL halfway, and the other claims its partitions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use weiling_sim::events::{self, CustomerChange};
use weiling_sim::{CallbackDriver, Outcome, RetryPolicy};

use crate::support::fleet;
use crate::support::in_process::{SHARED_BROKER, depth};
use crate::support::process::{ProcessRig, RelayProcess, free_port};

const CALLBACKS: usize = 2000;
const CUSTOMERS: usize = 200;
const PARTITIONS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_four_quorum_partitions_lose_nothing_when_one_is_killed() {
    let rig = ProcessRig::start_with(
        "scale",
        SHARED_BROKER,
        &[
            ("WEILING_RELAY__AMQP__INBOX_PARTITIONS", "4"),
            ("WEILING_RELAY__AMQP__INBOX_QUEUE_TYPE", "quorum"),
        ],
    )
    .await;
    let queues = rig.settings.amqp.inbox_queues();
    assert_eq!(queues.len(), PARTITIONS);
    for queue in &queues {
        // Panics unless the partition exists.
        depth(&rig.channel, queue).await;
    }

    let a = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let port_b = free_port();
    let mut env_b = rig.env.clone();
    env_b.insert(
        "WEILING_RELAY__SERVER__LISTEN".into(),
        format!("127.0.0.1:{port_b}"),
    );
    let base_b = format!("http://127.0.0.1:{port_b}");
    let b = RelayProcess::start(&env_b);
    relay_harness::scenario::wait_ready(&base_b).await;
    // Until B has its two partitions, A may fetch customers that will be B's: wait for the split.
    fleet::await_shares(
        fleet::list_consumers_shared,
        &queues,
        &[
            ('A', fleet::tag_mark(a.pid())),
            ('B', fleet::tag_mark(b.pid())),
        ],
        Duration::from_secs(30),
        |shares| shares.len() == 2 && shares.values().all(|n| *n == PARTITIONS / 2),
    )
    .await;
    // The simulator tells the processes apart by the instance tag in their User-Agent.
    let agent_a = format!("({})", rig.base.trim_start_matches("http://"));
    let agent_b = format!("({})", base_b.trim_start_matches("http://"));

    let app = rig.app_id.clone();
    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|i| format!("cust-scale-{i:03}"))
        .collect();
    for id in &customers {
        rig.sim.create_customer(&app, id);
    }
    let driver_a = rig.driver();
    let driver_b = CallbackDriver::new(&base_b, rig.keys(), RetryPolicy::default());
    let a_dead = Arc::new(AtomicBool::new(false));

    // Callbacks alternate between the two relays; the change is made in the simulator first, as
    // Weiling does before it calls back. Once half of them are acknowledged, A is killed with SIGKILL
    // while callbacks are still in flight to it; a callback A could not take is sent to B, as
    // Weiling's sender retries.
    let started = Instant::now();
    let a = std::sync::Mutex::new(Some(a));
    let kill_at: std::sync::Mutex<Option<SystemTime>> = std::sync::Mutex::new(None);
    let done = AtomicUsize::new(0);
    let results: Vec<(usize, Outcome, bool)> = futures::stream::iter(0..CALLBACKS)
        .map(|n| {
            let id = customers[(n * 7) % CUSTOMERS].clone();
            let (sim, app) = (&rig.sim, app.as_str());
            let (driver_a, driver_b, a_dead, a, kill_at, done) =
                (&driver_a, &driver_b, &a_dead, &a, &kill_at, &done);
            async move {
                let record = sim.change_customer(app, &id);
                let json = events::customer_update(&record, CustomerChange::Remark).to_json(app);
                let to_a = n % 2 == 0 && !a_dead.load(Ordering::SeqCst);
                let first = if to_a {
                    driver_a.send(&json).await.outcome
                } else {
                    driver_b.send(&json).await.outcome
                };
                let (outcome, resent) = if first == Outcome::Ok {
                    (first, false)
                } else {
                    (driver_b.send(&json).await.outcome, true)
                };
                if done.fetch_add(1, Ordering::SeqCst) + 1 == CALLBACKS / 2 {
                    if let Some(mut process) = a.lock().unwrap().take() {
                        *kill_at.lock().unwrap() = Some(SystemTime::now());
                        process.kill_9();
                    }
                    a_dead.store(true, Ordering::SeqCst);
                }
                (n, outcome, resent)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut acknowledged = 0usize;
    let mut resent_to_b = 0usize;
    for (n, outcome, resent) in results {
        assert_eq!(outcome, Outcome::Ok, "callback {n} acknowledged");
        acknowledged += 1;
        resent_to_b += usize::from(resent);
    }
    let kill_at = kill_at.into_inner().unwrap();
    let kill_at = kill_at.expect("A was killed");
    let sent_in = started.elapsed();

    let expected: HashSet<String> = customers.iter().cloned().collect();
    let (lost, received) = rig.await_latest(&expected, Duration::from_secs(90)).await;

    let calls = rig.sim.batch_calls();
    let by = |agent: &str, c: &weiling_sim::BatchCall| {
        c.user_agent
            .as_deref()
            .is_some_and(|ua| ua.ends_with(agent))
    };
    let calls_a = calls.iter().filter(|c| by(&agent_a, c)).count();
    let calls_b = calls.iter().filter(|c| by(&agent_b, c)).count();
    // Per customer, the processes that fetched it, in call order: A's calls must all come before B's
    // (B only takes A's partitions over after the kill), never interleaved, and before the kill only
    // one process may fetch a customer at all.
    let mut order: HashMap<&str, Vec<(SystemTime, char)>> = HashMap::new();
    for call in &calls {
        let who = if by(&agent_a, call) {
            'A'
        } else if by(&agent_b, call) {
            'B'
        } else {
            '?'
        };
        for id in &call.ids {
            order.entry(id.as_str()).or_default().push((call.at, who));
        }
    }
    let mut interleaved = Vec::new();
    let mut shared_before_kill = Vec::new();
    for (id, mut seq) in order {
        seq.sort_by_key(|(at, _)| *at);
        let whos: Vec<char> = seq.iter().map(|(_, w)| *w).collect();
        if whos.windows(2).any(|w| w == ['B', 'A']) || whos.contains(&'?') {
            interleaved.push(id.to_owned());
        }
        let before: HashSet<char> = seq
            .iter()
            .filter(|(at, _)| *at < kill_at)
            .map(|(_, w)| *w)
            .collect();
        if before.len() > 1 {
            shared_before_kill.push(id.to_owned());
        }
    }
    // Takeover: from the kill to B's first call for a customer A had been fetching.
    let fetched_by_a: HashSet<&String> = calls
        .iter()
        .filter(|c| by(&agent_a, c))
        .flat_map(|c| &c.ids)
        .collect();
    let takeover = calls
        .iter()
        .filter(|c| by(&agent_b, c) && c.at > kill_at)
        .filter(|c| c.ids.iter().any(|id| fetched_by_a.contains(id)))
        .map(|c| c.at.duration_since(kill_at).unwrap_or_default())
        .min();
    let duplicates = rig.duplicate_records();

    eprintln!(
        "scale-out: callbacks {CALLBACKS} acknowledged {acknowledged} (resent to B after the kill {resent_to_b}) in {sent_in:?} | \
         batch calls A {calls_a} B {calls_b} | records {received} duplicates {duplicates} | \
         customers {CUSTOMERS} lost {} | takeover after kill {takeover:?} | interleaved {} shared before kill {}",
        lost.len(),
        interleaved.len(),
        shared_before_kill.len()
    );
    assert!(
        lost.is_empty(),
        "customers whose latest state never arrived: {lost:?}"
    );
    assert!(
        interleaved.is_empty(),
        "customers fetched by A after B: {interleaved:?}"
    );
    assert!(
        shared_before_kill.is_empty(),
        "customers fetched by both relays before the kill: {shared_before_kill:?}"
    );
    assert!(calls_b > 0, "B took over");

    // Every partition drained.
    let mut left = 0;
    for queue in &queues {
        left += depth(&rig.channel, queue).await;
    }
    assert_eq!(left, 0, "inbox partitions empty at the end");

    drop(b);
    rig.cleanup().await;
}
