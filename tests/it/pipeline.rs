//! The whole pipeline on the real broker: callbacks → inbox → windows → simulator batch calls →
//! customer records, with Weiling faults switched on, and a relay killed with SIGKILL mid-window.

use std::collections::HashSet;
use std::time::Duration;

use relay_harness::scenario::{Scenario, ScenarioConfig, percentile};
use weiling_sim::{Outcome, events};

use crate::support::in_process::SHARED_BROKER;
use crate::support::process::{ProcessRig, RelayProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_callbacks_through_a_faulty_weiling_lose_nothing() {
    let scenario = Scenario::start(SHARED_BROKER, &[]).await.unwrap();
    let config = ScenarioConfig {
        callbacks: 3000,
        customers: 300,
        unknown_ids: 15,
        unmapped: 30,
        concurrency: 16,
        expire_tokens_every: Some(700),
        rate_limit_at: Some(1500),
        fault_5xx_ratio: 0.05,
        settle_timeout: Duration::from_secs(120),
        ..ScenarioConfig::default()
    };
    let report = scenario.drive(&config).await;
    let calls = scenario.sim.batch_calls();
    scenario.finish().await.unwrap();

    eprintln!(
        "e2e: callbacks {} acknowledged {} | batch calls {} (errors {}) max ids/call {} | token fetches {} | records {} duplicates {} | customers {} latest seen {} | missing {}/{} | lag p50 {:?} p99 {:?} ms | ack p50 {:?} p99 {:?} ms | settled {:?}",
        report.callbacks_sent,
        report.acknowledged,
        report.batch_calls,
        report.calls_answered_error,
        report.max_ids_per_call,
        report.token_calls,
        report.records_received,
        report.records_received - report.distinct_records,
        report.customers_changed,
        report.latest_state_seen,
        report.unknown_ids_missing_seen,
        report.unknown_ids_sent,
        percentile(&report.lag_ms, 50.0),
        percentile(&report.lag_ms, 99.0),
        percentile(&report.ack_latency_ms, 50.0),
        percentile(&report.ack_latency_ms, 99.0),
        report.settled_in,
    );
    assert_eq!(
        report.acknowledged, report.callbacks_sent,
        "every callback acknowledged"
    );
    assert!(report.lost.is_empty(), "lost: {:?}", report.lost);
    assert!(
        report.unexpected.is_empty(),
        "unexpected: {:?}",
        report.unexpected
    );
    assert_eq!(
        report.latest_state_seen, report.customers_changed,
        "every final state published"
    );
    assert_eq!(
        report.unknown_ids_missing_seen, report.unknown_ids_sent,
        "every unknown id published as missing"
    );
    assert!(
        calls.iter().all(|c| c.ids.len() <= 100),
        "no call over the batch cap"
    );
    assert!(
        report.calls_answered_error > 0,
        "the faults were really exercised"
    );
    assert!(
        report.batch_calls * 10 < report.callbacks_sent,
        "coalescing: {} batch calls for {} callbacks",
        report.batch_calls,
        report.callbacks_sent
    );
    assert_eq!(report.inbox_depth_at_end, 0, "the inbox drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_with_ids_in_an_open_window_publishes_them_after_restart() {
    let mut rig = ProcessRig::start("kill").await;
    // Ids sit in the window for seconds: the kill lands while they are there.
    rig.env
        .insert("WEILING_RELAY__WINDOW__QUIET_MS".into(), "30000".into());
    rig.env
        .insert("WEILING_RELAY__WINDOW__MAX_WAIT_MS".into(), "60000".into());
    let mut relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let driver = rig.driver();
    let mut acknowledged = HashSet::new();
    for i in 0..60 {
        let customer = format!("cust-kill-{i}");
        let record = rig.sim.create_customer(&rig.app_id, &customer);
        let delivery = driver
            .send(&events::add_customer(&record).to_json(&rig.app_id))
            .await;
        if delivery.outcome == Outcome::Ok {
            acknowledged.insert(customer);
        }
    }
    assert_eq!(acknowledged.len(), 60);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rig.sim.batch_calls().is_empty(),
        "the window is still open: nothing fetched yet"
    );

    relay.kill_9();
    // Some customers change again while the relay is down; the restart must publish their latest state.
    for i in 0..10 {
        rig.sim
            .change_customer(&rig.app_id, &format!("cust-kill-{i}"));
    }
    rig.env
        .insert("WEILING_RELAY__WINDOW__QUIET_MS".into(), "200".into());
    rig.env
        .insert("WEILING_RELAY__WINDOW__MAX_WAIT_MS".into(), "1000".into());
    let restarted = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;

    let (lost, received) = rig
        .await_latest(&acknowledged, Duration::from_secs(30))
        .await;
    eprintln!(
        "kill -9: acknowledged {} | records after restart {received} | lost {}",
        acknowledged.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged changes missing after the restart: {lost:?}"
    );
    drop(restarted);
    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_no_queue_is_bound_for_are_kept_in_the_unrouted_queue() {
    use lapin::options::BasicGetOptions;
    use lapin::types::FieldTable;

    let rig = ProcessRig::start("unrouted").await;
    rig.channel
        .queue_unbind(
            rig.check.as_str().into(),
            rig.settings.amqp.customers_exchange.as_str().into(),
            "customer.#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let record = rig.sim.create_customer(&rig.app_id, "cust-unrouted");
    let delivery = rig
        .driver()
        .send(&events::add_customer(&record).to_json(&rig.app_id))
        .await;
    assert_eq!(delivery.outcome, Outcome::Ok);

    let unrouted = rig.settings.amqp.unrouted_exchange.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut kept = None;
    while kept.is_none() && tokio::time::Instant::now() < deadline {
        kept = rig
            .channel
            .basic_get(unrouted.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = kept.expect("the record reached the unrouted queue");
    let body: serde_json::Value = serde_json::from_slice(&kept.delivery.data).unwrap();
    assert_eq!(body["customer_id"], "cust-unrouted");
    assert_eq!(body["record"], record);
    drop(relay);
    rig.cleanup().await;
}
