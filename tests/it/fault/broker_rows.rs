//! Rows 15–25: the broker fails under the relay. Each row runs on a private RabbitMQ node of its own
//! (or through a chaos proxy), never on the shared one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;

use crate::fault::{Dead, FaultOutcome, FaultRig, Load, RigOptions, run_row};
use crate::support::private_broker::PrivateBroker;
use crate::support::proxy::Mode;

/// A longer load for rows that inject several faults per round.
fn long_load(callbacks: usize) -> Load {
    Load {
        callbacks,
        per_second: 100,
        ..Load::default()
    }
}

async fn readyz(rig: &FaultRig) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/readyz", rig.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Polls `/readyz` until it answers `status` (or 10 s pass); returns whether it did.
async fn readyz_becomes(rig: &FaultRig, status: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if readyz(rig).await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_15_broker_down_before_traffic() {
    let broker = Arc::new(PrivateBroker::start().await);
    let node = broker.clone();
    run_row(
        15,
        "broker down before traffic",
        RigOptions::on(&broker.amqp_url()),
        Load::default(),
        move |rig, _round| {
            let node = node.clone();
            async move {
                node.stop_app().await;
                let unready = readyz_becomes(&rig, 503).await;
                rig.progress_at_least(50).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                node.start_app().await;
                let restored_at = Instant::now();
                let ready = readyz_becomes(&rig, 200).await;
                assert!(unready && ready, "readiness off while down, on after");
                FaultOutcome {
                    restored_at: Some(restored_at),
                    note: "stop_app before the load (/readyz 503), start_app after 50 answers (/readyz 200, no relay restart)".into(),
                    ..FaultOutcome::default()
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_16_graceful_broker_restart_mid_stream() {
    let broker = Arc::new(PrivateBroker::start().await);
    let node = broker.clone();
    run_row(
        16,
        "graceful broker restart mid-stream (4 per round)",
        RigOptions::on(&broker.amqp_url()),
        long_load(2400),
        move |rig, _round| {
            let node = node.clone();
            async move {
                let mut restored_at = None;
                for n in 1..=4 {
                    rig.progress_at_least(n * 300).await;
                    node.stop_app().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    node.start_app().await;
                    restored_at = Some(Instant::now());
                }
                FaultOutcome {
                    restored_at,
                    note: "4 × (stop_app, 0.5 s, start_app) per round".into(),
                    ..FaultOutcome::default()
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_17_broker_kill_9_mid_stream() {
    let broker = Arc::new(PrivateBroker::start().await);
    let node = broker.clone();
    run_row(
        17,
        "broker kill -9 mid-stream (2 per round)",
        RigOptions::on(&broker.amqp_url()),
        long_load(1600),
        move |rig, _round| {
            let node = node.clone();
            async move {
                let mut restored_at = None;
                for n in 1..=2 {
                    rig.progress_at_least(n * 400).await;
                    node.kill_9().await;
                    node.restart().await;
                    restored_at = Some(Instant::now());
                }
                FaultOutcome {
                    restored_at,
                    note: "2 × (kill -9 of beam.smp, rabbitmq-server -detached on the same data) per round"
                        .into(),
                    ..FaultOutcome::default()
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_18_server_side_close_of_all_connections() {
    let broker = Arc::new(PrivateBroker::start().await);
    let node = broker.clone();
    run_row(
        18,
        "server-side close of all connections (3 per round)",
        RigOptions::on(&broker.amqp_url()),
        long_load(1200),
        move |rig, _round| {
            let node = node.clone();
            async move {
                let mut restored_at = None;
                for n in 1..=3 {
                    rig.progress_at_least(n * 250).await;
                    node.close_all_connections().await;
                    restored_at = Some(Instant::now());
                }
                FaultOutcome {
                    restored_at,
                    note: "3 × rabbitmqctl close_all_connections per round".into(),
                    ..FaultOutcome::default()
                }
            }
        },
    )
    .await;
}

fn proxied(broker: &PrivateBroker) -> RigOptions {
    let mut options = RigOptions::on(&broker.amqp_url());
    options.broker_proxy = true;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_19_tcp_reset_between_relay_and_broker() {
    let broker = PrivateBroker::start().await;
    run_row(
        19,
        "TCP reset for 3 s through the proxy",
        proxied(&broker),
        Load::default(),
        |rig, _round| async move {
            let proxy = rig.broker_proxy.as_ref().expect("proxied");
            rig.progress_at_least(300).await;
            proxy.set_mode(Mode::Reset);
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.set_mode(Mode::Pass);
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: "every relay↔broker connection reset, new ones refused, for 3 s".into(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_20_tcp_stall_between_relay_and_broker() {
    let broker = PrivateBroker::start().await;
    // A 2 s heartbeat finds the half-open link within about 4–6 s (the 10 s default within 20–30 s).
    let options = proxied(&broker).set("WEILING_RELAY__AMQP__HEARTBEAT_S", 2);
    run_row(
        20,
        "TCP stall (half-open link) through the proxy, heartbeat 2 s",
        options,
        long_load(1500),
        |rig, _round| async move {
            let proxy = rig.broker_proxy.as_ref().expect("proxied");
            rig.progress_at_least(300).await;
            proxy.set_mode(Mode::Stall);
            let stalled = Instant::now();
            // The first callback into the stall gets its 503 at the answer budget, not at the
            // stall's end.
            let unready = readyz_becomes(&rig, 503).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            // New connections pass again; the stalled ones stay stalled until the heartbeat
            // gives up on them.
            proxy.set_mode(Mode::Pass);
            let ready = readyz_becomes(&rig, 200).await;
            assert!(unready && ready, "readiness off while stalled, back after");
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: format!(
                    "stalled links; relay ready again {:.1} s after the stall began",
                    stalled.elapsed().as_secs_f64()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[derive(Clone, Copy)]
enum Alarm {
    Memory,
    Disk,
}

/// Rows 21 and 22: a resource alarm blocks every publisher for 3 s, then clears.
async fn alarm_row(row: u32, name: &str, alarm: Alarm, note: &'static str) {
    let broker = Arc::new(PrivateBroker::start().await);
    let node = broker.clone();
    run_row(
        row,
        name,
        RigOptions::on(&broker.amqp_url()),
        long_load(1500),
        move |rig, _round| {
            let node = node.clone();
            async move {
                rig.progress_at_least(200).await;
                let set = |on| {
                    let node = node.clone();
                    async move {
                        match alarm {
                            Alarm::Memory => node.set_memory_alarm(on).await,
                            Alarm::Disk => node.set_disk_alarm(on).await,
                        }
                    }
                };
                set(true).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                set(false).await;
                FaultOutcome {
                    restored_at: Some(Instant::now()),
                    note: note.into(),
                    ..FaultOutcome::default()
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_21_memory_alarm_blocks_publishers() {
    alarm_row(
        21,
        "memory alarm (connection.blocked) for 3 s",
        Alarm::Memory,
        "set_vm_memory_high_watermark 0.000000001 for 3 s, then 0.4",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_22_disk_alarm_blocks_publishers() {
    alarm_row(
        22,
        "disk alarm for 3 s",
        Alarm::Disk,
        "set_disk_free_limit far above the free disk for 3 s, then 50MB",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_23_publisher_nack_from_a_full_inbox() {
    let broker = Arc::new(PrivateBroker::start().await);
    let node = broker.clone();
    run_row(
        23,
        "publisher nack (reject-publish policy) for 3 s",
        RigOptions::on(&broker.amqp_url()),
        Load::default(),
        move |rig, _round| {
            let node = node.clone();
            async move {
                rig.progress_at_least(300).await;
                let pattern = format!("^{}$", regex_escape(&rig.settings.amqp.inbox_queue));
                node.rabbitmqctl(&[
                    "set_policy",
                    "nack",
                    &pattern,
                    r#"{"max-length":0,"overflow":"reject-publish"}"#,
                    "--apply-to",
                    "queues",
                ])
                .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                node.rabbitmqctl(&["clear_policy", "nack"]).await;
                FaultOutcome {
                    restored_at: Some(Instant::now()),
                    note: "inbox max-length 0 with overflow reject-publish for 3 s: every inbox publish nacked"
                        .into(),
                    ..FaultOutcome::default()
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_24_inbox_deleted_while_running() {
    let broker = PrivateBroker::start().await;
    run_row(
        24,
        "inbox queue deleted while running",
        RigOptions::on(&broker.amqp_url()),
        Load::default(),
        |rig, _round| async move {
            rig.progress_at_least(300).await;
            let (connection, channel) = rig.inspect().await;
            channel
                .queue_delete(
                    rig.settings.amqp.inbox_queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
                .expect("inbox deleted");
            let deleted_at = Instant::now();
            let _ = connection.close(200, "deleted".into()).await;
            FaultOutcome {
                restored_at: Some(deleted_at),
                // Deleting a queue destroys what it holds; the row checks that nothing answered
                // after the deletion is lost (no 200 after a basic.return, topology re-declared).
                exempt_before: Some(deleted_at),
                note: "queue.delete of the inbox mid-load; callbacks sent before it are exempt (the operator destroyed what they stored)".into(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_25_records_nobody_is_bound_for_go_to_the_unrouted_queue() {
    let broker = PrivateBroker::start().await;
    run_row(
        25,
        "records exchange with no subscriber for 2 s",
        RigOptions::on(&broker.amqp_url()),
        Load::default(),
        |rig, _round| async move {
            rig.progress_at_least(300).await;
            let (connection, channel) = rig.inspect().await;
            let exchange = rig.settings.amqp.customers_exchange.as_str();
            let check = rig.check_queue();
            channel
                .queue_unbind(
                    check.into(),
                    exchange.into(),
                    "customer.#".into(),
                    FieldTable::default(),
                )
                .await
                .expect("unbound");
            tokio::time::sleep(Duration::from_secs(2)).await;
            channel
                .queue_bind(
                    check.into(),
                    exchange.into(),
                    "customer.#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bound again");
            let _ = connection.close(200, "rebound".into()).await;
            FaultOutcome {
                restored_at: Some(Instant::now()),
                expected_unrouted: Some(1),
                expected_dead: Dead::Exactly(0),
                note: "checking queue unbound for 2 s; the records of that time were read back from the unrouted queue".into(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_26_records_confirms_lost_on_a_stalled_link() {
    let broker = PrivateBroker::start().await;
    let options = proxied(&broker).set("WEILING_RELAY__AMQP__HEARTBEAT_S", 2);
    run_row(
        26,
        "records link stalled (confirms lost) for 3 s",
        options,
        long_load(1500),
        |rig, _round| async move {
            let proxy = rig.broker_proxy.as_ref().expect("proxied");
            rig.progress_at_least(300).await;
            proxy.set_mode(Mode::StallMarked);
            tokio::time::sleep(Duration::from_secs(3)).await;
            // New links pass; the stalled one stays stalled until the heartbeat gives up on it.
            proxy.set_mode(Mode::Pass);
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: "only the records publisher's connection stalled (callbacks and the inbox consumer unaffected); records republished after the heartbeat closed it".into(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

fn regex_escape(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
