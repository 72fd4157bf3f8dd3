//! Broker faults at the edge: down, blocked, nack, unroutable, reset and stalled links. Every one
//! must end in 503 + Retry-After inside the answer budget (never `success` without a confirm), and
//! the relay must recover without a restart. Tests that stop or alarm the broker use a private node.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};

use crate::support::in_process::*;
use crate::support::private_broker::PrivateBroker;
use crate::support::proxy::{ChaosProxy, Mode};

const BUDGET_MS: u64 = 800;

fn assert_unavailable(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 503, "{what}: {}", answer.body);
    assert_eq!(
        answer.retry_after.as_deref(),
        Some("2"),
        "{what}: Retry-After"
    );
    assert!(
        answer.elapsed < Duration::from_millis(BUDGET_MS + 400),
        "{what}: answered after {:?}, past the answer budget",
        answer.elapsed
    );
}

async fn wait_status(app: &InProcessRig, path: &str, status: u16, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while app.get(path).await.status != status {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stop/start of the broker app, a memory alarm, and a nacking queue policy, on one private node.
#[tokio::test]
async fn a_stopped_blocked_or_nacking_broker_gets_503_and_the_relay_recovers_without_restart() {
    let broker = PrivateBroker::start().await;
    let mut app = spawn_with(Spawn {
        amqp_url: broker.amqp_url(),
        inspect_url: broker.amqp_url(),
        ..Spawn::default()
    })
    .await;
    assert_eq!(app.post(&app.callback("before")).await.status, 200);

    // 1. Broker app stopped.
    broker.stop_app().await;
    wait_status(&app, "/readyz", 503, Duration::from_secs(10)).await;
    let down = app.post(&app.callback("while-down")).await;
    assert_unavailable(&down, "broker stopped");
    broker.start_app().await;
    app.wait_ready(Duration::from_secs(30)).await;
    let after = app.post(&app.callback("after-restart")).await;
    assert_eq!(
        (after.status, after.body.as_str()),
        (200, "success"),
        "recovered without a restart"
    );

    // The inspector's connection died with the app; open a new one to read the durable inbox.
    app.connection = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    app.channel = app.connection.create_channel().await.unwrap();
    let stored: Vec<String> = app
        .take_all(app.inbox())
        .await
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(&m.delivery.data).unwrap()["event"]["customer_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stored,
        vec!["before", "after-restart"],
        "what was acknowledged survived; nothing else was stored"
    );

    // 2. Memory alarm: the broker blocks publishers. RabbitMQ says so (connection.blocked) only when
    // the connection next publishes, so the first callback waits out its budget; from then on the
    // relay knows, readiness is off, and callbacks are refused at once.
    broker.set_memory_alarm(true).await;
    let first = app.post(&app.callback("first-while-blocked")).await;
    assert_unavailable(&first, "broker blocked, not yet announced");
    wait_status(&app, "/readyz", 503, Duration::from_secs(10)).await;
    assert!(app.get("/readyz").await.body.contains("blocked"));
    let blocked = app.post(&app.callback("while-blocked")).await;
    assert_unavailable(&blocked, "broker blocked");
    assert!(
        blocked.elapsed < Duration::from_millis(200),
        "refused at once once blocked: {:?}",
        blocked.elapsed
    );
    broker.set_memory_alarm(false).await;
    app.wait_ready(Duration::from_secs(15)).await;
    assert_eq!(app.post(&app.callback("after-alarm")).await.status, 200);

    // 3. The inbox refuses messages: a publisher nack is a 503, never `success`.
    let policy = format!("nack-{}", app.inbox().replace('.', "-"));
    broker
        .rabbitmqctl(&[
            "set_policy",
            &policy,
            &format!("^{}$", app.inbox().replace('.', "\\.")),
            r#"{"max-length":0,"overflow":"reject-publish"}"#,
            "--apply-to",
            "queues",
        ])
        .await;
    let mut nacked = None;
    for _ in 0..50 {
        let answer = app.post(&app.callback("while-nacking")).await;
        if answer.status == 503 {
            nacked = Some(answer);
            break;
        }
        // The policy takes a moment to apply; until then the callback is stored normally.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_unavailable(
        &nacked.expect("the nacking policy took effect"),
        "publish nacked",
    );
    broker.rabbitmqctl(&["clear_policy", &policy]).await;
    let mut accepted = false;
    for _ in 0..50 {
        if app.post(&app.callback("after-nack")).await.status == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted,
        "callbacks are stored again once the broker accepts them"
    );
    assert_eq!(app.get("/readyz").await.status, 200);
    app.teardown().await;
}

#[tokio::test]
async fn a_deleted_inbox_gets_503_and_the_topology_is_declared_again() {
    let app = spawn_app().await;
    app.channel
        .queue_delete(app.inbox().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let returned = app.post(&app.callback("unroutable")).await;
    assert_unavailable(&returned, "unroutable inbox publish");

    let mut stored = false;
    for _ in 0..50 {
        if app.post(&app.callback("routable-again")).await.status == 200 {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the relay re-declared its inbox");
    let messages = app.take_all(app.inbox()).await;
    assert!(!messages.is_empty());
    assert!(
        messages
            .iter()
            .all(|m| !String::from_utf8_lossy(&m.delivery.data).contains("\"unroutable\"")),
        "the refused callback was not stored"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_reset_link_gets_fast_503_and_reconnects() {
    let proxy = ChaosProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let app = spawn_with(Spawn {
        amqp_url: format!("amqp://guest:guest@{}/%2f", proxy.addr()),
        ..Spawn::default()
    })
    .await;
    assert_eq!(app.post(&app.callback("before")).await.status, 200);

    proxy.set_mode(Mode::Reset);
    wait_status(&app, "/readyz", 503, Duration::from_secs(5)).await;
    assert_unavailable(&app.post(&app.callback("during-reset")).await, "link reset");

    proxy.set_mode(Mode::Pass);
    app.wait_ready(Duration::from_secs(15)).await;
    assert_eq!(app.post(&app.callback("after")).await.status, 200);
    assert_eq!(app.take_all(app.inbox()).await.len(), 2);
    app.teardown().await;
}

#[tokio::test]
async fn a_stalled_link_gets_503_at_the_budget_and_extra_callbacks_get_429() {
    let proxy = ChaosProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let app = spawn_with(
        Spawn {
            amqp_url: format!("amqp://guest:guest@{}/%2f", proxy.addr()),
            ..Spawn::default()
        }
        .set("WEILING_RELAY__SERVER__MAX_IN_FLIGHT", 1),
    )
    .await;
    assert_eq!(app.post(&app.callback("before")).await.status, 200);

    proxy.set_mode(Mode::Stall);
    let first = app.callback("stalled");
    let second = app.callback("second");
    let (stalled, extra) = tokio::join!(app.post(&first), async {
        // Let the first callback take the only in-flight permit.
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.post(&second).await
    });
    assert_eq!(extra.status, 429, "over max_in_flight");
    assert_eq!(extra.retry_after.as_deref(), Some("2"));
    assert_unavailable(&stalled, "confirm never arrives");
    assert!(
        stalled.elapsed >= Duration::from_millis(BUDGET_MS - 50),
        "waited for the budget: {:?}",
        stalled.elapsed
    );

    // The stalled connection is abandoned (confirm timeout) and a new one is opened.
    proxy.set_mode(Mode::Pass);
    app.wait_ready(Duration::from_secs(40)).await;
    let mut stored = false;
    for _ in 0..100 {
        if app.post(&app.callback("after")).await.status == 200 {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stored, "callbacks are stored again after the stall");
    app.teardown().await;
}

/// The whole pipeline (consumer, record publisher) through a broker restart: every acknowledged
/// change is published afterwards; callbacks during the outage are refused, never falsely accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_survives_a_broker_restart_without_losing_acknowledged_changes() {
    use std::collections::HashMap;
    use weiling_sim::events::{self, CustomerChange};
    use weiling_sim::{Outcome, revision};

    use crate::support::process::{ProcessRig, RelayProcess};

    let broker = PrivateBroker::start().await;
    let mut rig = ProcessRig::start_on("restart", &broker.amqp_url()).await;
    rig.env.insert(
        "WEILING_RELAY__AMQP__RECONNECT_MAX_DELAY_MS".into(),
        "500".into(),
    );
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let patient = rig.driver();
    // During the outage one attempt each: the sender's retries would only wait out Retry-After.
    let impatient = weiling_sim::CallbackDriver::new(
        &rig.base,
        rig.keys(),
        weiling_sim::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        },
    );
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    let mut refused = 0;
    let send = async |rig: &ProcessRig, i: usize, acknowledged: &mut HashMap<String, u64>| {
        let driver = if (100..110).contains(&i) {
            &impatient
        } else {
            &patient
        };
        let id = format!("cust-restart-{}", i % 30);
        let (record, event) = match rig.sim.customer(&rig.app_id, &id) {
            Some(_) => {
                let record = rig.sim.change_customer(&rig.app_id, &id);
                let event = events::customer_update(&record, CustomerChange::Remark);
                (record, event)
            }
            None => {
                let record = rig.sim.create_customer(&rig.app_id, &id);
                let event = events::add_customer(&record);
                (record, event)
            }
        };
        let delivery = driver.send(&event.to_json(&rig.app_id)).await;
        if delivery.outcome == Outcome::Ok {
            let at = revision(&record).unwrap();
            let known = acknowledged.entry(id).or_default();
            *known = (*known).max(at);
            true
        } else {
            false
        }
    };
    for i in 0..100 {
        assert!(
            send(&rig, i, &mut acknowledged).await,
            "before the restart every callback is stored"
        );
    }
    broker.stop_app().await;
    for i in 100..110 {
        if !send(&rig, i, &mut acknowledged).await {
            refused += 1;
        }
    }
    broker.start_app().await;
    assert!(
        ready_within(&rig.base, Duration::from_secs(30)).await,
        "the relay reconnected"
    );
    let before = acknowledged.clone();
    for i in 110..210 {
        send(&rig, i, &mut acknowledged).await;
    }
    assert_ne!(
        before, acknowledged,
        "changes after the restart were acknowledged"
    );
    rig.reconnect().await;
    let (lost, received) = rig
        .await_records(
            acknowledged.keys().cloned(),
            Duration::from_secs(40),
            |id, record| revision(record) >= acknowledged.get(id).copied(),
        )
        .await;
    eprintln!(
        "broker restart: {} customers acknowledged, {refused} callbacks refused during the outage, {received} records, lost {}",
        acknowledged.len(),
        lost.len()
    );
    assert!(refused > 0, "callbacks during the outage were refused");
    assert!(lost.is_empty(), "lost: {lost:?}");
    drop(relay);
    rig.cleanup().await;
}

async fn ready_within(base: &str, within: Duration) -> bool {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `amqp.url` may list the nodes of a cluster: the relay connects to one that answers, whatever the
/// shuffled order, past a node that refuses and one that accepts TCP but never speaks AMQP.
#[tokio::test]
async fn a_url_listing_dead_nodes_connects_to_the_live_one() {
    let refused = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    // Accepted by the kernel's backlog, never answered: only the connect timeout ends the attempt.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{refused}/%2f, amqp://guest:guest@127.0.0.1:{silent_port}/%2f,{SHARED_BROKER}"
    );
    // Three relays, so the live node is rarely first every time.
    for round in 0..3 {
        let app = spawn_with(
            Spawn {
                amqp_url: url.clone(),
                ..Spawn::default()
            }
            .set("WEILING_RELAY__AMQP__CONNECT_TIMEOUT_MS", 1000),
        )
        .await;
        let callback = app.callback(&format!("cust-list-{round}"));
        let answer = app.post(&callback).await;
        assert_eq!(answer.status, 200, "round {round}: {}", answer.body);
        assert_eq!(answer.body, "success");
        assert_eq!(app.depth(app.inbox()).await, 1, "stored on the live node");
        app.teardown().await;
    }
    drop(silent);
}
