//! Row 40, the soak: steady load for `SOAK_MINUTES` (30 by default) with a random fault every 2–5
//! minutes, judged by the same ledger, plus the relay's memory over time. Opt-in (`scripts/soak`):
//! it is `#[ignore]`d in the normal run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::fault::{FaultOutcome, FaultRig, Load, RigOptions, RoundResult, run_round};
use crate::support::private_broker::PrivateBroker;
use crate::support::proxy::Mode;

const FAULTS: [&str; 9] = [
    "broker restart (stop_app/start_app)",
    "close_all_connections",
    "TCP reset for 5 s",
    "TCP stall for 5 s",
    "memory alarm for 10 s",
    "disk alarm for 10 s",
    "Weiling 5xx for 20 s",
    "Weiling rate limit (code 1009) for 20 s",
    "Weiling slow (2 s latency) for 20 s",
];

fn minutes() -> u64 {
    std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30)
}

/// Seconds between faults, `SOAK_FAULT_EVERY_S=min,max` (120,300 by default; shorter for a trial run).
fn fault_every() -> (u64, u64) {
    std::env::var("SOAK_FAULT_EVERY_S")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .filter(|(a, b)| a <= b)
        .unwrap_or((120, 300))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

async fn inject(rig: &FaultRig, node: &PrivateBroker, which: usize) {
    let proxy = rig
        .broker_proxy
        .as_ref()
        .expect("the soak runs through the proxy");
    match which {
        0 => {
            node.stop_app().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            node.start_app().await;
        }
        1 => node.close_all_connections().await,
        2 | 3 => {
            proxy.set_mode(if which == 2 { Mode::Reset } else { Mode::Stall });
            tokio::time::sleep(Duration::from_secs(5)).await;
            // Reset closes what a stall left open; then new connections pass.
            proxy.set_mode(Mode::Reset);
            proxy.set_mode(Mode::Pass);
        }
        4 => {
            node.set_memory_alarm(true).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            node.set_memory_alarm(false).await;
        }
        5 => {
            node.set_disk_alarm(true).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            node.set_disk_alarm(false).await;
        }
        6 => {
            rig.sim.set_fault_5xx_ratio(1.0);
            tokio::time::sleep(Duration::from_secs(20)).await;
            rig.sim.set_fault_5xx_ratio(0.0);
        }
        7 => {
            rig.sim.set_rate_limit_per_minute(1);
            tokio::time::sleep(Duration::from_secs(20)).await;
            rig.sim.set_rate_limit_per_minute(1_000_000);
        }
        _ => {
            rig.sim.set_latency(Duration::from_secs(2));
            tokio::time::sleep(Duration::from_secs(20)).await;
            rig.sim.set_latency(Duration::ZERO);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 minutes; run with scripts/soak"]
async fn row_40_soak_with_random_faults() {
    let minutes = minutes();
    let per_second = 40;
    let node = Arc::new(PrivateBroker::start().await);
    let mut options = RigOptions::on(&node.amqp_url())
        .set("WEILING_RELAY__AMQP__HEARTBEAT_S", 2)
        .set("WEILING_RELAY__WEILING__REQUEST_TIMEOUT_MS", 1500);
    options.process = true;
    options.broker_proxy = true;
    let load = Load {
        callbacks: usize::try_from(minutes * 60 * per_second).unwrap(),
        customers: 2000,
        ghosts: 50,
        per_second: u32::try_from(per_second).unwrap(),
        ..Load::default()
    };
    let samples: Arc<Mutex<Vec<(Duration, u64, usize)>>> = Arc::default();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let total = load.callbacks;
    let started = Instant::now();
    let result: RoundResult = run_round(
        40,
        "soak with random faults",
        &options,
        &load,
        &{
            let (node, samples, log) = (node.clone(), samples.clone(), log.clone());
            move |rig: Arc<FaultRig>, _round| {
                let (node, samples, log) = (node.clone(), samples.clone(), log.clone());
                async move {
                    let sampler = {
                        let rig = rig.clone();
                        let samples = samples.clone();
                        tokio::spawn(async move {
                            loop {
                                if let Some(pid) = rig.relay_pid().await
                                    && let (Some(rss), Some(fds)) = (rss_kib(pid), open_fds(pid))
                                {
                                    samples.lock().unwrap().push((started.elapsed(), rss, fds));
                                }
                                tokio::time::sleep(Duration::from_secs(10)).await;
                            }
                        })
                    };
                    let mut restored_at = None;
                    let stop_faults_at =
                        total.saturating_sub(usize::try_from(per_second * 60).unwrap());
                    loop {
                        let (min, max) = fault_every();
                        let wait = Duration::from_secs(rand::rng().random_range(min..=max));
                        let deadline = Instant::now() + wait;
                        while Instant::now() < deadline && rig.progress() < stop_faults_at {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        if rig.progress() >= stop_faults_at {
                            break;
                        }
                        let which = rand::rng().random_range(0..FAULTS.len());
                        let at = started.elapsed();
                        inject(&rig, &node, which).await;
                        restored_at = Some(Instant::now());
                        log.lock().unwrap().push(format!(
                            "{:>5.1} min: {}",
                            at.as_secs_f64() / 60.0,
                            FAULTS[which]
                        ));
                    }
                    rig.progress_at_least(total).await;
                    sampler.abort();
                    FaultOutcome {
                        restored_at,
                        note: format!("{} faults", log.lock().unwrap().len()),
                        ..FaultOutcome::default()
                    }
                }
            }
        },
        1,
    )
    .await;

    let samples = samples.lock().unwrap().clone();
    // Warm-up: until the time-bounded caches are full. The replay cache keeps every callback for
    // `security.replay_window_s` (600 s), so memory legitimately grows for the first ten minutes;
    // a third of a shorter run.
    let warm = Duration::from_secs((minutes * 60 / 3).min(600));
    let after_warmup = samples.iter().find(|(t, _, _)| *t >= warm).map(|s| s.1);
    let at_end = samples.last().map(|s| s.1);
    let peak = samples.iter().map(|s| s.1).max();
    let growth = match (after_warmup, at_end) {
        (Some(a), Some(b)) if a > 0 => (b as f64 - a as f64) / a as f64 * 100.0,
        _ => f64::NAN,
    };
    let fds: Vec<usize> = samples.iter().map(|s| s.2).collect();
    let mut report = String::new();
    report.push_str("# Soak: steady load with random faults\n\n");
    report.push_str(&format!(
        "Written by `scripts/soak` (the ignored test `fault::soak::row_40_soak_with_random_faults`) on commit `{}`, {minutes} minutes at {per_second} callbacks/s against a relay process on a private RabbitMQ node reached through a chaos proxy; a random fault every 2–5 minutes, none in the last minute.\n\n",
        std::env::var("SOAK_COMMIT").unwrap_or_else(|_| "unknown".into())
    ));
    report.push_str("| measure | value |\n|---|---|\n");
    for (k, v) in [
        ("callbacks", result.callbacks.to_string()),
        (
            "ok / fail / info",
            format!("{} / {} / {}", result.ok, result.fail, result.info),
        ),
        ("lost", result.lost.to_string()),
        ("unexpected", result.unexpected.to_string()),
        ("duplicates", result.duplicates.to_string()),
        ("records", result.records.to_string()),
        ("inbox at the end", result.inbox_end.to_string()),
        ("dead letters", result.dead_letters.to_string()),
        (
            "RSS after warm-up",
            format!("{} KiB", after_warmup.unwrap_or(0)),
        ),
        ("RSS at the end", format!("{} KiB", at_end.unwrap_or(0))),
        ("RSS peak", format!("{} KiB", peak.unwrap_or(0))),
        ("RSS change, end vs warm-up", format!("{growth:+.1} %")),
        (
            "open descriptors (min / max)",
            format!(
                "{} / {}",
                fds.iter().min().unwrap_or(&0),
                fds.iter().max().unwrap_or(&0)
            ),
        ),
        (
            "result",
            if result.passed && growth.abs() <= 10.0 {
                "pass".into()
            } else {
                "FAIL".into()
            },
        ),
    ] {
        report.push_str(&format!("| {k} | {v} |\n"));
    }
    report.push_str("\n## Faults\n\n");
    for line in log.lock().unwrap().iter() {
        report.push_str(&format!("- {line}\n"));
    }
    report.push_str(&format!(
        "\nWarm-up: the first {:.0} minutes (the replay cache fills for `replay_window_s` = 600 s).\n",
        warm.as_secs_f64() / 60.0
    ));
    report.push_str("\n## Memory (sampled every 10 s, shown every minute)\n\n| minute | RSS KiB | fds |\n|---|---|---|\n");
    for (t, rss, fds) in samples.iter().step_by(6) {
        report.push_str(&format!(
            "| {:.1} | {rss} | {fds} |\n",
            t.as_secs_f64() / 60.0
        ));
    }
    let out = std::env::var("SOAK_REPORT")
        .unwrap_or_else(|_| format!("{}/target/reliability/soak.md", env!("CARGO_MANIFEST_DIR")));
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, &report).unwrap();
    eprintln!("{report}");
    assert!(
        result.passed,
        "the soak lost or misplaced something: {result:?}"
    );
    assert!(
        growth.abs() <= 10.0,
        "RSS at the end is {growth:+.1} % from after warm-up"
    );
}
