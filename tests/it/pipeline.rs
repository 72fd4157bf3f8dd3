//! The whole pipeline on the real broker: callbacks → inbox → windows → simulator batch calls →
//! customer records, with Weiling faults switched on, and a relay killed with SIGKILL mid-window.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use secrecy::SecretString;
use serde_json::Value;
use weiling_relay::config::Settings;
use weiling_relay::demo::scenario::{Scenario, ScenarioConfig, percentile};
use weiling_relay::simulator::{
    CallbackDriver, Outcome, RetryPolicy, SimConfig, Simulator, events,
};
use weiling_relay::verify::AppKeys;

use crate::helpers::{AES_KEY, SHARED_BROKER, TOKEN, unique};

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

/// The relay binary as a child process, so it can be killed for real.
struct RelayProcess {
    child: Child,
}

impl RelayProcess {
    fn start(env: &HashMap<String, String>) -> RelayProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_weiling-relay"))
            .arg("serve")
            .env_clear()
            .envs(env)
            .env("RUST_LOG", "warn,lapin=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("relay binary starts");
        RelayProcess { child }
    }

    fn kill_9(&mut self) {
        // Child::kill sends SIGKILL on Unix: no drain, no flush, no ack.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_with_ids_in_an_open_window_publishes_them_after_restart() {
    let sim = Simulator::new(SimConfig::default());
    let app_id = format!("wloa{}", unique("kill").replace('-', ""));
    sim.add_app(&app_id, "kill-test-secret");
    let sim_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let sim_addr = sim_listener.local_addr().unwrap();
    let sim_server = sim.serve(sim_listener).unwrap();
    let sim_handle = sim_server.handle();
    tokio::spawn(sim_server);

    let prefix = unique("kill");
    let port = free_port();
    let mut env: HashMap<String, String> = HashMap::from([
        (
            "WEILING_RELAY__SERVER__LISTEN".into(),
            format!("127.0.0.1:{port}"),
        ),
        ("WEILING_RELAY__AMQP__URL".into(), SHARED_BROKER.into()),
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
            format!("http://{sim_addr}"),
        ),
        // Ids sit in the window for seconds: the kill lands while they are there.
        ("WEILING_RELAY__WINDOW__QUIET_MS".into(), "30000".into()),
        ("WEILING_RELAY__WINDOW__MAX_WAIT_MS".into(), "60000".into()),
        ("WEILING_RELAY_APP_ID".into(), app_id.clone()),
        ("WEILING_RELAY_APP_SECRET".into(), "kill-test-secret".into()),
        ("WEILING_RELAY_TOKEN".into(), TOKEN.into()),
        ("WEILING_RELAY_ENCODING_AES_KEY".into(), AES_KEY.into()),
    ]);
    let settings = Settings::load(None, &env).unwrap();
    let connection = Connection::connect(SHARED_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    weiling_relay::amqp::topology::declare(&channel, &settings.amqp)
        .await
        .unwrap();
    let check = format!("{prefix}.check");
    channel
        .queue_declare(
            check.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            check.as_str().into(),
            settings.amqp.customers_exchange.as_str().into(),
            "customer.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut relay = RelayProcess::start(&env);
    let base = format!("http://127.0.0.1:{port}");
    weiling_relay::demo::scenario::wait_ready(&base).await;
    let keys = Arc::new(
        AppKeys::new(
            &app_id,
            &SecretString::from(TOKEN),
            &SecretString::from(AES_KEY),
            true,
        )
        .unwrap(),
    );
    let driver = CallbackDriver::new(&base, keys, RetryPolicy::default());
    let mut acknowledged = HashSet::new();
    for i in 0..60 {
        let customer = format!("cust-kill-{i}");
        let record = sim.create_customer(&app_id, &customer);
        let delivery = driver
            .send(&events::add_customer(&record).to_json(&app_id))
            .await;
        if delivery.outcome == Outcome::Ok {
            acknowledged.insert(customer);
        }
    }
    assert_eq!(acknowledged.len(), 60);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sim.batch_calls().is_empty(),
        "the window is still open: nothing fetched yet"
    );

    relay.kill_9();
    // Some customers change again while the relay is down; the restart must publish their latest state.
    for i in 0..10 {
        sim.change_customer(&app_id, &format!("cust-kill-{i}"));
    }

    env.insert("WEILING_RELAY__WINDOW__QUIET_MS".into(), "200".into());
    env.insert("WEILING_RELAY__WINDOW__MAX_WAIT_MS".into(), "1000".into());
    let _restarted = RelayProcess::start(&env);
    weiling_relay::demo::scenario::wait_ready(&base).await;

    let mut latest: HashMap<String, (u64, Value)> = HashMap::new();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(check.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                received += 1;
                let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
                let id = body["customer_id"].as_str().unwrap().to_owned();
                let at = body["fetched_at"].as_u64().unwrap();
                if latest.get(&id).is_none_or(|(t, _)| at >= *t) {
                    latest.insert(id, (at, body["record"].clone()));
                }
            }
            None => {
                let all = acknowledged.iter().all(|id| {
                    latest
                        .get(id)
                        .is_some_and(|(_, r)| Some(r) == sim.customer(&app_id, id).as_ref())
                });
                if all {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| {
            latest
                .get(*id)
                .is_none_or(|(_, r)| Some(r) != sim.customer(&app_id, id).as_ref())
        })
        .collect();
    eprintln!(
        "kill -9: acknowledged {} | records after restart {received} | lost {}",
        acknowledged.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged changes missing after the restart: {lost:?}"
    );

    drop(_restarted);
    sim_handle.stop(false).await;
    for queue in [
        check.as_str(),
        &settings.amqp.inbox_queue,
        &settings.amqp.dead_letter_queue,
        &settings.amqp.unrouted_exchange,
    ] {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        &settings.amqp.customers_exchange,
        &settings.amqp.events_exchange,
        &settings.amqp.unrouted_exchange,
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
