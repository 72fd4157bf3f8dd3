//! A three-node RabbitMQ cluster (issue: outgrow one machine on RabbitMQ itself): quorum queues for
//! the inbox partitions, the records and the dead letters; three relays, each given all three node
//! addresses; 4,000 callbacks over 400 customers; halfway, `kill -9` of the node that leads most
//! queues, restarted later. Nothing may be lost, every relay must come back on a surviving node, and
//! the test reports how long the first `success` and the first record took after the kill.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::fleet::{self, LIST_CONSUMERS, Load, Member};
use crate::support::private_broker::PrivateCluster;
use crate::support::process::ProcessRig;

const CALLBACKS: usize = 4000;
const CUSTOMERS: usize = 400;
const PARTITIONS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_lose_nothing_when_the_node_leading_most_queues_is_killed() {
    let cluster = PrivateCluster::start(3).await;
    let partitions = PARTITIONS.to_string();
    let rig = ProcessRig::start_with(
        "cluster",
        &cluster.urls(),
        &[
            ("WEILING_RELAY__AMQP__INBOX_PARTITIONS", partitions.as_str()),
            ("WEILING_RELAY__AMQP__INBOX_QUEUE_TYPE", "quorum"),
        ],
    )
    .await;
    let queues = rig.settings.amqp.inbox_queues();
    let prefix = rig.check.trim_end_matches(".check").to_owned();
    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|i| format!("cust-cluster-{i:03}"))
        .collect();
    for id in &customers {
        rig.sim.create_customer(&rig.app_id, id);
    }

    let a = Member::start(&rig, 'A', &[]).await;
    let b = Member::start(&rig, 'B', &[]).await;
    let c = Member::start(&rig, 'C', &[]).await;
    let members = [&a, &b, &c];
    let ids = [a.id(), b.id(), c.id()];
    let (balanced_in, shares) = fleet::await_shares(
        || list_consumers(&cluster, 0),
        &queues,
        &ids,
        Duration::from_secs(60),
        |s| s.len() == 3 && s.values().all(|n| *n == PARTITIONS / 3),
    )
    .await;

    // The node that leads most of this test's quorum queues.
    let leaders = cluster.leaders(0, &prefix).await;
    let mut led: BTreeMap<String, usize> = BTreeMap::new();
    for (_, leader) in &leaders {
        *led.entry(leader.clone()).or_default() += 1;
    }
    let (victim_name, victim_leads) = led
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(node, n)| (node.clone(), *n))
        .expect("quorum queues have leaders");
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.node_name() == victim_name)
        .expect("the leader is a node of the cluster");
    let survivor = (victim + 1) % cluster.nodes.len();

    let load = Load::start(
        &rig,
        customers.clone(),
        6,
        Duration::from_millis(5),
        Some(CALLBACKS),
    );
    for member in members {
        load.add(member, &rig);
    }
    while load.sent.load(Ordering::SeqCst) < CALLBACKS / 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kill_at = SystemTime::now();
    cluster.nodes[victim].kill_9().await;

    // Every relay consumes again, through a surviving node.
    let started = Instant::now();
    let reconnected_in = loop {
        let consumers = list_consumers_with_channels(&cluster, survivor).await;
        // A quorum queue keeps the consumers of a dead node listed, inactive, until the node
        // returns; only active consumers count.
        let back = members.iter().all(|m| {
            let active: Vec<&str> = consumers
                .lines()
                .filter(|line| line.contains(&m.tag_mark()) && line.contains("\ttrue"))
                .collect();
            !active.is_empty() && active.iter().all(|line| !line.contains(&victim_name))
        });
        if back {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not every relay consumes through a surviving node 90 s after the kill:\n{consumers}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (after_kill, shares_after) = fleet::await_shares(
        || list_consumers(&cluster, survivor),
        &queues,
        &ids,
        Duration::from_secs(60),
        |s| s.len() == 3,
    )
    .await;

    let acknowledged = load.successes.clone();
    let unacknowledged = load.finish().await;
    cluster.nodes[victim].restart().await;
    let restarted_at = SystemTime::now();

    let mut rig = rig;
    rig.reconnect().await;
    let expected: HashSet<String> = customers.iter().cloned().collect();
    let (lost, received) = rig.await_latest(&expected, Duration::from_secs(120)).await;

    let kill_ms = kill_at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let first_record = rig
        .fetched_at()
        .into_iter()
        .filter(|at| *at > kill_ms)
        .min()
        .map(|at| Duration::from_millis(at - kill_ms));
    let successes: Vec<(Duration, char)> = acknowledged
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(at, by)| Some((at.duration_since(kill_at).ok()?, *by)))
        .collect();
    let first_success = successes.iter().map(|(at, _)| *at).min();
    let per_relay: Vec<String> = members
        .iter()
        .map(|m| {
            let first = successes
                .iter()
                .filter(|(_, by)| *by == m.name)
                .map(|(at, _)| *at)
                .min();
            format!("{} {first:?}", m.name)
        })
        .collect();
    let overlapping = fleet::overlapping_fetches(&rig.sim.batch_calls(), &members);
    eprintln!(
        "cluster: shares {shares:?} after {balanced_in:?} | killed {victim_name} (leader of {victim_leads} of {} quorum queues) \
         after {} callbacks | every relay consuming on a survivor after {reconnected_in:?}, shares {shares_after:?} after {after_kill:?} | \
         first success after the kill {first_success:?} (per relay: {per_relay:?}) | first record fetched after the kill {first_record:?} | \
         node restarted {:?} after the kill | callbacks {CALLBACKS} unacknowledged {} | records {received} | lost {} | overlapping fetches {}",
        leaders.len(),
        CALLBACKS / 2,
        restarted_at.duration_since(kill_at).unwrap_or_default(),
        unacknowledged.len(),
        lost.len(),
        overlapping.len(),
    );
    assert!(unacknowledged.is_empty(), "{unacknowledged:?}");
    assert!(
        lost.is_empty(),
        "customers whose latest state never arrived: {lost:?}"
    );
    assert!(first_record.is_some(), "no record fetched after the kill");
    assert!(
        overlapping.is_empty(),
        "fetched by two relays at once: {overlapping:?}"
    );
    drop((a, b, c));
    rig.cleanup().await;
}

async fn list_consumers(cluster: &PrivateCluster, node: usize) -> String {
    cluster.nodes[node].rabbitmqctl(LIST_CONSUMERS).await
}

async fn list_consumers_with_channels(cluster: &PrivateCluster, node: usize) -> String {
    let mut args = LIST_CONSUMERS.to_vec();
    args.push("channel_pid");
    cluster.nodes[node].rabbitmqctl(&args).await
}
