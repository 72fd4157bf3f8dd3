//! Several relay processes on one inbox, the load they share, and what the broker and the simulator
//! say about them: which relay is the active consumer of which partition, and whether two relays
//! ever fetched one customer at overlapping times.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use weiling_sim::events::{self, CustomerChange};
use weiling_sim::{CallbackDriver, Outcome, RetryPolicy};

use crate::support::process::{ProcessRig, RelayProcess, free_port, listening_on};

/// One relay process of the fleet.
pub struct Member {
    pub name: char,
    pub process: RelayProcess,
    pub base: String,
}

impl Member {
    /// Starts a relay on the rig's environment, on a port of its own, with `extra` settings.
    pub async fn start(rig: &ProcessRig, name: char, extra: &[(&str, &str)]) -> Member {
        let port = free_port();
        let env = listening_on(&rig.env, port, extra);
        let base = format!("http://127.0.0.1:{port}");
        let process = RelayProcess::start(&env);
        relay_harness::scenario::wait_ready(&base).await;
        Member {
            name,
            process,
            base,
        }
    }

    /// What the simulator sees at the end of this relay's User-Agent.
    pub fn agent(&self) -> String {
        format!("({})", self.base.trim_start_matches("http://"))
    }

    /// What this relay's consumer tags contain.
    pub fn tag_mark(&self) -> String {
        tag_mark(self.process.pid())
    }

    /// Its name and tag mark, as [`await_shares`] tells relays apart.
    pub fn id(&self) -> (char, String) {
        (self.name, self.tag_mark())
    }
}

/// What the consumer tags of the relay process `pid` contain.
pub fn tag_mark(pid: u32) -> String {
    format!("-{pid}-")
}

/// Which relay (by name) is the active consumer of each of `queues`, from `list_consumers` output
/// (`queue_name consumer_tag active`, tab-separated). A queue without one is missing from the map.
pub fn active_consumers(
    list_consumers: &str,
    queues: &[String],
    relays: &[(char, String)],
) -> BTreeMap<String, Vec<char>> {
    let mut active: BTreeMap<String, Vec<char>> = BTreeMap::new();
    for line in list_consumers.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [queue, tag, is_active, ..] = fields.as_slice() else {
            continue;
        };
        if *is_active != "true" || !queues.iter().any(|q| q == queue) {
            continue;
        }
        let who = relays
            .iter()
            .find(|(_, mark)| tag.contains(mark.as_str()))
            .map_or('?', |(name, _)| *name);
        active.entry((*queue).to_owned()).or_default().push(who);
    }
    active
}

/// Partitions per relay, when every queue has exactly one active consumer that is a member.
pub fn shares(
    active: &BTreeMap<String, Vec<char>>,
    queues: &[String],
) -> Option<BTreeMap<char, usize>> {
    let mut shares = BTreeMap::new();
    for queue in queues {
        match active.get(queue).map(Vec::as_slice) {
            Some([who]) if *who != '?' => *shares.entry(*who).or_default() += 1,
            _ => return None,
        }
    }
    Some(shares)
}

/// Callbacks sent without pause to whichever relays are up, each after the simulator changed the
/// customer (as Weiling does before it calls back); a callback a relay could not take goes to another.
pub struct Load {
    targets: Arc<Mutex<Vec<(char, CallbackDriver)>>>,
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicUsize>,
    /// When each callback was acknowledged, and by which relay.
    pub successes: Arc<Mutex<Vec<(SystemTime, char)>>>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    /// `pause` between callbacks of each of `concurrency` senders, until stopped or `limit`
    /// callbacks were sent.
    pub fn start(
        rig: &ProcessRig,
        customers: Vec<String>,
        concurrency: usize,
        pause: Duration,
        limit: Option<usize>,
    ) -> Load {
        let targets: Arc<Mutex<Vec<(char, CallbackDriver)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let successes: Arc<Mutex<Vec<(SystemTime, char)>>> = Arc::default();
        let sim = rig.sim.clone();
        let app = rig.app_id.clone();
        let limit = limit.unwrap_or(usize::MAX);
        let (t, s, n, ok) = (
            targets.clone(),
            stop.clone(),
            sent.clone(),
            successes.clone(),
        );
        let task = tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            futures::stream::iter(0..concurrency)
                .map(|_| {
                    let (t, s, n, ok, sim, app, customers, next) =
                        (&t, &s, &n, &ok, &sim, &app, &customers, &next);
                    async move {
                        let mut failures = Vec::new();
                        while !s.load(Ordering::SeqCst) {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= limit {
                                break;
                            }
                            let id = &customers[(i * 7) % customers.len()];
                            let record = sim.change_customer(app, id);
                            let json = events::customer_update(&record, CustomerChange::Remark)
                                .to_json(app);
                            match send_somewhere(t, i, &json).await {
                                Some(by) => ok.lock().unwrap().push((SystemTime::now(), by)),
                                None => failures
                                    .push(format!("callback {i} for {id} taken by no relay")),
                            }
                            n.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(pause).await;
                        }
                        failures
                    }
                })
                .buffer_unordered(concurrency)
                .concat()
                .await
        });
        Load {
            targets,
            stop,
            sent,
            successes,
            task,
        }
    }

    pub fn add(&self, member: &Member, rig: &ProcessRig) {
        let driver = CallbackDriver::new(&member.base, rig.keys(), RetryPolicy::default());
        self.targets.lock().unwrap().push((member.name, driver));
    }

    /// No more callbacks to this relay (it is about to be killed).
    pub fn remove(&self, name: char) {
        self.targets.lock().unwrap().retain(|(n, _)| *n != name);
    }

    /// Stops sending; returns the callbacks no relay acknowledged.
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }

    /// Waits until the `limit` given at start was sent; returns the callbacks no relay acknowledged.
    pub async fn finish(self) -> Vec<String> {
        self.task.await.unwrap()
    }
}

/// Tries the relays in turn, starting at a different one per callback, until one answers `success`;
/// returns which.
async fn send_somewhere(
    targets: &Mutex<Vec<(char, CallbackDriver)>>,
    n: usize,
    json: &[u8],
) -> Option<char> {
    for attempt in 0..6 {
        let driver = {
            let targets = targets.lock().unwrap();
            if targets.is_empty() {
                None
            } else {
                Some(targets[(n + attempt) % targets.len()].clone())
            }
        };
        let Some((name, driver)) = driver else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if driver.send(json).await.outcome == Outcome::Ok {
            return Some(name);
        }
    }
    None
}

/// Polls `read` (the broker's `list_consumers`) until every queue has one active consumer among
/// `relays` (name, tag mark) and the shares satisfy `fair`, or `within` passes; returns the time it took and the
/// shares, or panics with the last view.
pub async fn await_shares<F, Fut>(
    mut read: F,
    queues: &[String],
    relays: &[(char, String)],
    within: Duration,
    fair: impl Fn(&BTreeMap<char, usize>) -> bool,
) -> (Duration, BTreeMap<char, usize>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let started = Instant::now();
    let mut last = BTreeMap::new();
    while started.elapsed() < within {
        last = active_consumers(&read().await, queues, relays);
        if let Some(shares) = shares(&last, queues)
            && fair(&shares)
        {
            return (started.elapsed(), shares);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no fair share within {within:?}; active consumers per queue: {last:?}");
}

/// The `rabbitmqctl` arguments that list consumers in the columns [`active_consumers`] reads.
pub const LIST_CONSUMERS: &[&str] = &[
    "-q",
    "--no-table-headers",
    "list_consumers",
    "queue_name",
    "consumer_tag",
    "active",
];

/// `rabbitmqctl list_consumers` of the shared node, in the columns [`active_consumers`] reads.
pub async fn list_consumers_shared() -> String {
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new("rabbitmqctl")
            .args(LIST_CONSUMERS)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Customers that two relays fetched at overlapping times: calls of different relays naming the
/// same customer whose `at..=answered_at` spans intersect.
pub fn overlapping_fetches(calls: &[weiling_sim::BatchCall], members: &[&Member]) -> Vec<String> {
    let who = |call: &weiling_sim::BatchCall| {
        let agent = call.user_agent.as_deref().unwrap_or_default();
        members
            .iter()
            .find(|m| agent.ends_with(&m.agent()))
            .map_or('?', |m| m.name)
    };
    let mut spans: HashMap<&str, Vec<(SystemTime, SystemTime, char)>> = HashMap::new();
    for call in calls {
        let name = who(call);
        for id in &call.ids {
            spans
                .entry(id.as_str())
                .or_default()
                .push((call.at, call.answered_at, name));
        }
    }
    let mut overlapping = Vec::new();
    for (id, mut calls) in spans {
        calls.sort_by_key(|(at, _, _)| *at);
        let mut latest_end: Option<(SystemTime, char)> = None;
        for (at, end, name) in calls {
            if let Some((previous_end, previous)) = latest_end
                && previous != name
                && at < previous_end
            {
                overlapping.push(id.to_owned());
                break;
            }
            if latest_end.is_none_or(|(e, _)| end > e) {
                latest_end = Some((end, name));
            }
        }
    }
    overlapping
}
