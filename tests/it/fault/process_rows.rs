//! Rows 35–37: the relay process itself is killed or terminated under load (a child process,
//! signalled by its pid).

use std::time::{Duration, Instant};

use crate::fault::{FaultOutcome, Load, RigOptions, run_row};
use crate::support::in_process::SHARED_BROKER;

fn process_options() -> RigOptions {
    let mut options = RigOptions::on(SHARED_BROKER);
    options.process = true;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_35_kill_9_during_an_open_window() {
    run_row(
        35,
        "kill -9 of the relay during an open window",
        process_options(),
        Load::default(),
        |rig, _round| async move {
            rig.progress_at_least(400).await;
            rig.kill_relay().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            rig.start_relay(true).await;
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: "SIGKILL mid-load, restart after 0.5 s".into(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_36_kill_9_between_record_confirms_and_inbox_acks() {
    // Short windows keep flushes (confirm, then ack) happening all the time, so a tight loop of
    // kills lands between a record's confirm and its inbox ack again and again.
    let options = process_options()
        .set("WEILING_RELAY__WINDOW__QUIET_MS", 20)
        .set("WEILING_RELAY__WINDOW__MAX_WAIT_MS", 100);
    run_row(
        36,
        "kill -9 loop (4 per round) between record confirms and inbox acks",
        options,
        Load {
            callbacks: 1500,
            per_second: 100,
            ..Load::default()
        },
        |rig, _round| async move {
            let mut restored_at = None;
            for n in 1..=4 {
                rig.progress_at_least(n * 250).await;
                rig.kill_relay().await;
                rig.start_relay(true).await;
                restored_at = Some(Instant::now());
            }
            FaultOutcome {
                restored_at,
                note: "4 × (SIGKILL, immediate restart) with 20 ms windows; duplicates are records republished after a confirm whose ack was lost".into(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_37_sigterm_drain_under_load() {
    run_row(
        37,
        "SIGTERM drain under load, then restart",
        process_options(),
        Load::default(),
        |rig, _round| async move {
            rig.progress_at_least(400).await;
            let (status, took) = rig.terminate_relay().await;
            assert!(
                status.is_some_and(|s| s.success()),
                "the relay exits 0 after SIGTERM: {status:?}"
            );
            assert!(
                took < Duration::from_secs(30),
                "drained inside Kubernetes' default 30 s grace period, took {took:?}"
            );
            rig.start_relay(true).await;
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: format!(
                    "SIGTERM mid-load: exit 0 after {:.1} s; restarted",
                    took.as_secs_f64()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}
