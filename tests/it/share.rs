//! Relays share the inbox partitions (issue: replicas that share the work): two relays on P = 8
//! become the active consumer of 4 each, a third joining makes it 3/3/2, and when one is killed with
//! SIGKILL the survivors split its partitions. Under load throughout; nothing may be lost and no
//! customer may be fetched by two relays at overlapping times.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::fleet::{self, Load, Member};
use crate::support::in_process::{SHARED_BROKER, depth};
use crate::support::process::ProcessRig;

const PARTITIONS: usize = 8;
const CUSTOMERS: usize = 400;
/// How soon after a join or a death the shares must be fair (the bound).
const BALANCED_WITHIN: Duration = Duration::from_secs(30);

fn even(shares: &std::collections::BTreeMap<char, usize>, relays: usize) -> bool {
    let floor = PARTITIONS / relays;
    let ceil = PARTITIONS.div_ceil(relays);
    shares.len() == relays && shares.values().all(|n| (floor..=ceil).contains(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_split_eight_partitions_fairly_as_they_join_and_die() {
    let rig = ProcessRig::start_with(
        "share",
        SHARED_BROKER,
        &[("WEILING_RELAY__AMQP__INBOX_PARTITIONS", "8")],
    )
    .await;
    // Long enough calls that two fetchers of one customer would show as overlapping spans.
    rig.sim.set_latency(Duration::from_millis(40));
    let queues = rig.settings.amqp.inbox_queues();
    assert_eq!(queues.len(), PARTITIONS);
    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|i| format!("cust-share-{i:03}"))
        .collect();
    for id in &customers {
        rig.sim.create_customer(&rig.app_id, id);
    }
    let load = Load::start(&rig, customers.clone(), 4, Duration::from_millis(20), None);

    let a = Member::start(&rig, 'A', &[]).await;
    load.add(&a, &rig);
    let b = Member::start(&rig, 'B', &[]).await;
    load.add(&b, &rig);
    let (two, shares_two) = fleet::await_shares(
        fleet::list_consumers_shared,
        &queues,
        &[a.id(), b.id()],
        BALANCED_WITHIN,
        |s| even(s, 2),
    )
    .await;

    let c = Member::start(&rig, 'C', &[]).await;
    load.add(&c, &rig);
    let (three, shares_three) = fleet::await_shares(
        fleet::list_consumers_shared,
        &queues,
        &[a.id(), b.id(), c.id()],
        BALANCED_WITHIN,
        |s| even(s, 3),
    )
    .await;

    // Kill the relay holding the most partitions.
    let victim = shares_three
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(name, _)| *name)
        .unwrap();
    let mut members = vec![a, b, c];
    let position = members.iter().position(|m| m.name == victim).unwrap();
    let mut killed = members.remove(position);
    load.remove(victim);
    tokio::time::sleep(Duration::from_millis(300)).await;
    killed.process.kill_9();
    let survivors: Vec<&Member> = members.iter().collect();
    let (after_kill, shares_after) = fleet::await_shares(
        fleet::list_consumers_shared,
        &queues,
        &survivors.iter().map(|m| m.id()).collect::<Vec<_>>(),
        BALANCED_WITHIN,
        |s| even(s, 2),
    )
    .await;
    // A little more load on the survivors, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = load.sent.load(std::sync::atomic::Ordering::SeqCst);
    let unacknowledged = load.stop().await;

    let expected: HashSet<String> = customers.iter().cloned().collect();
    let (lost, received) = rig.await_latest(&expected, Duration::from_secs(90)).await;
    let calls = rig.sim.batch_calls();
    let everyone: Vec<&Member> = members.iter().chain([&killed]).collect();
    let overlapping = fleet::overlapping_fetches(&calls, &everyone);
    let per_relay: Vec<String> = everyone
        .iter()
        .map(|m| {
            let n = calls
                .iter()
                .filter(|c| {
                    c.user_agent
                        .as_deref()
                        .is_some_and(|ua| ua.ends_with(&m.agent()))
                })
                .count();
            format!("{} {n}", m.name)
        })
        .collect();
    eprintln!(
        "share: 2 relays fair after {two:?} {shares_two:?} | 3rd joined, fair after {three:?} {shares_three:?} | \
         {victim} killed, fair after {after_kill:?} {shares_after:?} | callbacks {sent} (unacknowledged {}) | \
         records {received} | batch calls per relay {per_relay:?} | lost {} | overlapping fetches {}",
        unacknowledged.len(),
        lost.len(),
        overlapping.len()
    );
    assert!(unacknowledged.is_empty(), "{unacknowledged:?}");
    assert!(
        lost.is_empty(),
        "customers whose latest state never arrived: {lost:?}"
    );
    assert!(
        overlapping.is_empty(),
        "customers fetched by two relays at overlapping times: {overlapping:?}"
    );
    let mut left = 0;
    for queue in &queues {
        left += depth(&rig.channel, queue).await;
    }
    assert_eq!(left, 0, "inbox partitions empty at the end");
    drop(members);
    rig.cleanup().await;
}
