//! Answers Weiling may give that are not the happy path, on the real broker: none may lose a change or
//! falsely delete a customer. `code` 0 without the list, ids echoed as numbers, whole batches refused
//! for ids Weiling does not have or for one bad id, and records with fields and numbers the relay has
//! never seen, which must reach consumers byte for byte.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicGetOptions;
use relay::entity::Entity;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use weiling_sim::{Outcome, SimEvent, events, new_customer_id};

use crate::support::in_process::header_str;
use crate::support::process::{ProcessRig, RelayProcess};

/// Sends the callbacks with some concurrency; every one must be acknowledged.
async fn send_all(rig: &ProcessRig, callbacks: Vec<Vec<u8>>) {
    let driver = rig.driver();
    let outcomes: Vec<Outcome> = futures::stream::iter(callbacks)
        .map(|json| {
            let driver = &driver;
            async move { driver.send(&json).await.outcome }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Ok),
        "every callback acknowledged: {outcomes:?}"
    );
}

fn add(rig: &ProcessRig, id: &str) -> Vec<u8> {
    let record = rig.sim.create_customer(&rig.app_id, id);
    events::add_customer(&record).to_json(&rig.app_id)
}

/// Every message on the queue now, taken.
async fn drain(rig: &ProcessRig, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut taken = Vec::new();
    while let Some(message) = rig
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        taken.push(message);
    }
    taken
}

/// Waits until `queue` holds `n` messages (or `within` passes) and takes them.
async fn await_letters(
    rig: &ProcessRig,
    queue: &str,
    n: usize,
    within: Duration,
) -> Vec<lapin::message::BasicGetMessage> {
    let deadline = tokio::time::Instant::now() + within;
    let mut taken = Vec::new();
    while taken.len() < n && tokio::time::Instant::now() < deadline {
        taken.extend(drain(rig, queue).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_0_without_a_customer_list_is_retried_then_parked_never_published_missing() {
    let rig = ProcessRig::start("nolist").await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    rig.sim.set_answer_without_list(true);

    let ids: Vec<String> = (0..3).map(|_| new_customer_id()).collect();
    send_all(&rig, ids.iter().map(|id| add(&rig, id)).collect()).await;
    let dead = &rig.settings.amqp.dead_letter_queue;
    let letters = await_letters(&rig, dead, 3, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 3, "each event parked, none dropped");
    let calls = rig.sim.batch_calls();
    assert!(
        calls.len() >= 2,
        "asked again before parking: {}",
        calls.len()
    );
    let records = drain(&rig, &rig.check).await;
    assert!(
        records.is_empty(),
        "no record (and above all no `missing`) from an answer without the list: {}",
        records.len()
    );
    drop(relay);
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_echoed_back_as_a_number_is_the_customer_the_event_named() {
    let rig = ProcessRig::start("numeric").await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    rig.sim.set_numeric_ids(true);

    let ids: Vec<String> = (0..5)
        .map(|i| format!("{}", 7_000_000_001u64 + i))
        .collect();
    send_all(&rig, ids.iter().map(|id| add(&rig, id)).collect()).await;
    let expected: HashSet<String> = ids.iter().cloned().collect();
    let (stale, _) = rig
        .await_records(expected, Duration::from_secs(30), |id, record| {
            record["customer_id"]
                .as_u64()
                .map(|n| n.to_string())
                .as_deref()
                == Some(id)
        })
        .await;
    assert!(
        stale.is_empty(),
        "published as upserts of the named ids: {stale:?}"
    );
    drop(relay);
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_with_3000_is_split_until_the_unknown_ids_stand_alone() {
    let rig = ProcessRig::start("refused3000").await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    rig.sim.set_unknown_ids_refused_with(Some(3000));

    let known: Vec<String> = (0..30).map(|_| new_customer_id()).collect();
    let unknown: Vec<String> = (0..3).map(|_| new_customer_id()).collect();
    let mut callbacks: Vec<Vec<u8>> = known.iter().map(|id| add(&rig, id)).collect();
    callbacks.extend(
        unknown
            .iter()
            .map(|id| events::add_customer(&json!({"customer_id": id})).to_json(&rig.app_id)),
    );
    send_all(&rig, callbacks).await;

    let (stale, _) = rig
        .await_latest(&known.iter().cloned().collect(), Duration::from_secs(30))
        .await;
    assert!(stale.is_empty(), "known customers published: {stale:?}");
    let (not_missing, _) = rig
        .await_records(unknown.clone(), Duration::from_secs(30), |_, record| {
            record.is_null()
        })
        .await;
    assert!(
        not_missing.is_empty(),
        "unknown ids published as missing: {not_missing:?}"
    );
    let refused = rig
        .sim
        .batch_calls()
        .iter()
        .filter(|c| c.code == 3000)
        .count();
    assert!(refused >= 1, "Weiling did refuse batches");
    assert_eq!(
        crate::support::in_process::depth(&rig.channel, &rig.settings.amqp.dead_letter_queue).await,
        0
    );
    drop(relay);
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poisoned_id_among_99_good_ones_parks_only_its_own_event_naming_it() {
    let rig = ProcessRig::start("poisoned").await;
    // One window of all 100 ids: it closes at 100, long before the quiet period.
    let mut env = rig.env.clone();
    env.insert("WEILING_RELAY__WINDOW__QUIET_MS".into(), "5000".into());
    env.insert("WEILING_RELAY__WINDOW__MAX_WAIT_MS".into(), "10000".into());
    let relay = RelayProcess::start(&env);
    relay_harness::scenario::wait_ready(&rig.base).await;

    let good: Vec<String> = (0..99).map(|_| new_customer_id()).collect();
    let poisoned = new_customer_id();
    rig.sim.poison_id(&poisoned, 1001);
    let mut callbacks: Vec<Vec<u8>> = good.iter().map(|id| add(&rig, id)).collect();
    callbacks.insert(57, add(&rig, &poisoned));
    send_all(&rig, callbacks).await;

    let (stale, _) = rig
        .await_latest(&good.iter().cloned().collect(), Duration::from_secs(30))
        .await;
    assert!(stale.is_empty(), "99 upserts: {stale:?}");
    let dead = &rig.settings.amqp.dead_letter_queue;
    let letters = await_letters(&rig, dead, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1, "exactly one dead letter");
    let letter = &letters[0];
    assert_eq!(header_str(letter, "x-reason"), "weiling_refused");
    assert_eq!(header_str(letter, "x-weiling-id"), poisoned);
    assert_eq!(header_str(letter, "event_type"), "add_customer");
    let event: Value = serde_json::from_slice(&letter.delivery.data).unwrap();
    assert_eq!(
        event["event"]["customer_id"],
        poisoned.as_str(),
        "the event itself"
    );

    let calls = rig.sim.batch_calls();
    let extra = calls.len() - 1;
    eprintln!(
        "poisoned: {} batch calls, {extra} beyond the first",
        calls.len()
    );
    assert!(calls[0].ids.len() == 100, "one window of 100 ids");
    assert!(extra <= 13, "at most 2·log2(100) extra calls, made {extra}");
    assert!(
        !calls
            .iter()
            .any(|c| c.ids.len() == 1 && c.ids[0] != poisoned && c.code != 0)
    );
    assert_eq!(rig.sim.batch_calls().len(), calls.len());
    drop(relay);
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_reaches_consumers_as_weilings_exact_bytes() {
    let rig = ProcessRig::start("bytes").await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;

    let id = new_customer_id();
    // A field the relay has never heard of, nested objects, a float with more digits than f64 holds,
    // an integer beyond 2^53 (and beyond u64), keys out of alphabetical order and spacing.
    let text = format!(
        r#"{{"customer_id":"{id}","zz_first":true,"name":"王伟","future_field":{{"nested":{{"deep":[1, 2.50, {{"k":"v"}}]}},"empty":{{}}}},"score":3.14159265358979323846264338327950288,"big":123456789012345678901234567890,"beyond_2_53":9007199254740993,"follow_users":[{{"userid":"zhangsan","remark":"\u738b"}}]}}"#
    );
    rig.sim
        .set_raw_record(Entity::Customer, &rig.app_id, &id, &text);
    let event = SimEvent::new("add_customer", json!({"customer_id": id}));
    send_all(&rig, vec![event.to_json(&rig.app_id)]).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let messages = drain(&rig, &rig.check).await;
        if let Some(message) = messages.into_iter().next() {
            break message.delivery.data;
        }
        assert!(tokio::time::Instant::now() < deadline, "no record arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    #[derive(serde::Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        record: &'a RawValue,
    }
    let message: Message<'_> = serde_json::from_slice(&body).unwrap();
    assert_eq!(message.record.get(), text, "the record is Weiling's bytes");
    drop(relay);
    rig.cleanup().await;
}
