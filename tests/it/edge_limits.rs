//! The HTTP edge under senders that never finish: stalled bodies, idle connections. The relay runs as
//! its own process so its memory is its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weiling_sim::events::history_add;
use weiling_sim::{Outcome, RetryPolicy};

use crate::support::in_process::SHARED_BROKER;
use crate::support::process::{ProcessRig, RelayProcess};

/// What a stalled sender saw: how long after its last byte the relay closed the connection, and
/// the status line it was sent first (none when closed without an answer).
pub(crate) struct Stalled {
    pub closed_after: Option<Duration>,
    pub status: Option<String>,
}

impl Stalled {
    /// Told to go away: 408 at the body deadline, or 503 when shed for a newer callback.
    pub fn was_refused(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|line| line.contains(" 408 ") || line.contains(" 503 "))
    }
}

/// Sends a request head announcing `declared` body bytes and `sent` of them, then waits (up to
/// `give_up`) for the relay to answer and close.
pub(crate) async fn stall(
    addr: &str,
    path: &str,
    declared: usize,
    sent: usize,
    give_up: Duration,
) -> Stalled {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return Stalled {
            closed_after: Some(Duration::ZERO),
            status: None,
        };
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    let body = vec![b'x'; sent];
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&body).await.is_err() {
        return Stalled {
            closed_after: Some(Duration::ZERO),
            status: None,
        };
    }
    let stalled_at = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(give_up, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .filter(|line| !line.is_empty())
        .map(str::to_owned);
    Stalled {
        closed_after: closed.ok().map(|()| stalled_at.elapsed()),
        status,
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_stalled_bodies_cannot_lock_out_real_callbacks() {
    const STALLED: usize = 2_000;
    const VALID_PER_S: u32 = 200;
    let _flood = crate::support::gate::flood().await;
    let rig = ProcessRig::start_with("stall", SHARED_BROKER, &[]).await;
    let relay = RelayProcess::start(&rig.env);
    relay_harness::scenario::wait_ready(&rig.base).await;
    let server = &rig.settings.server;
    let (max_body, body_timeout) = (
        server.max_body_bytes,
        Duration::from_millis(server.body_timeout_ms),
    );
    let addr = rig.base.trim_start_matches("http://").to_owned();
    let idle_mb = rss_kb(relay.pid()) as f64 / 1024.0;

    // RSS sampled every 50 ms for the whole attack.
    let peak_rss_kb = Arc::new(AtomicU64::new(0));
    let sampling = tokio::spawn({
        let (peak, pid) = (peak_rss_kb.clone(), relay.pid());
        async move {
            loop {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // 2,000 senders announce a full-size body, send all of it but 4 KiB and stall, opened over
    // about two seconds, while real callbacks arrive at 200/s for eight seconds.
    let started = Instant::now();
    let stallers = futures::stream::iter(0..STALLED)
        .map(|n| {
            let addr = addr.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(n as u64)).await;
                stall(
                    &addr,
                    "/weiling/callback?msg_signature=a&timestamp=1&nonce=n",
                    max_body,
                    max_body - 4096,
                    body_timeout * 5,
                )
                .await
            }
        })
        .buffer_unordered(STALLED)
        .collect::<Vec<Stalled>>();
    let driver = weiling_sim::CallbackDriver::new(
        &rig.base,
        rig.keys(),
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
    );
    let app_id = rig.app_id.clone();
    let valid = futures::stream::iter(0..VALID_PER_S * 8)
        .map(|n| {
            let (driver, app_id) = (&driver, &app_id);
            async move {
                tokio::time::sleep(Duration::from_secs(1) / VALID_PER_S * n).await;
                let event = history_add(&format!("cust-stall-{n}"), 1).to_json(app_id);
                driver.send(&event).await
            }
        })
        .buffer_unordered(1024)
        .collect::<Vec<_>>();
    let (stallers, valid) = tokio::join!(stallers, valid);
    let attack = started.elapsed();
    sampling.abort();
    let peak_mb = peak_rss_kb.load(Ordering::Relaxed) as f64 / 1024.0;

    let answered: Vec<_> = valid.iter().filter(|d| d.outcome == Outcome::Ok).collect();
    let mut refusals = std::collections::BTreeMap::new();
    for delivery in valid.iter().filter(|d| d.outcome != Outcome::Ok) {
        *refusals.entry(delivery.last_status).or_insert(0) += 1;
    }
    let slowest = valid.iter().map(|d| d.latency).max().unwrap_or_default();
    let never_closed = stallers.iter().filter(|s| s.closed_after.is_none()).count();
    let longest_open = stallers
        .iter()
        .filter_map(|s| s.closed_after)
        .max()
        .unwrap_or_default();
    let answered_408 = stallers.iter().filter(|s| s.was_refused()).count();
    eprintln!(
        "{STALLED} stalled senders over {:.1} s: {answered_408} answered 408 or 503, longest open {} ms after stalling, {never_closed} never closed; {} of {} real callbacks answered success (others: {refusals:?}), slowest {} ms; relay peak RSS {peak_mb:.1} MB (idle {idle_mb:.1} MB)",
        attack.as_secs_f64(),
        longest_open.as_millis(),
        answered.len(),
        valid.len(),
        slowest.as_millis(),
    );
    // Cleaned up before judging, so a failed assertion leaves nothing on the shared broker.
    drop(relay);
    rig.cleanup().await;
    assert_eq!(
        answered.len(),
        valid.len(),
        "every real callback answered success (the relay answers 503 past its answer budget)"
    );
    assert_eq!(never_closed, 0, "every stalled connection is closed");
    // The relay closes by the deadline; the margin is this test's own scheduling on a busy machine.
    assert!(
        longest_open <= body_timeout + Duration::from_millis(500),
        "a stalled connection stayed open {longest_open:?}, body deadline {body_timeout:?}"
    );
    assert_eq!(
        answered_408, STALLED,
        "each stalled sender is told 408 or 503"
    );
    assert!(peak_mb < 150.0, "relay RSS reached {peak_mb:.1} MB");
}
