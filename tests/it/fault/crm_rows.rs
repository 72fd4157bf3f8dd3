//! Rows 27–34: Weiling (the simulator) misbehaves while callbacks keep coming.

use std::time::{Duration, Instant, SystemTime};

use weiling_sim::{BatchCall, NO_ENVELOPE, SimConfig};

use super::edge_rows::{Probe, http, post_retrying, seal_at, unmapped};
use crate::fault::{Dead, FaultOutcome, FaultRig, Load, RigOptions, run_row};
use crate::support::in_process::SHARED_BROKER;
use crate::support::proxy::Mode;

/// The simulator's default rate limit (`SimConfig::default()`), restored after row 28.
const SIM_RATE_LIMIT: u32 = 500;

/// Waits until `after` load callbacks were answered, runs `on`, holds the fault for `hold`, runs
/// `off`; returns when the fault was lifted.
async fn for_a_while(
    rig: &FaultRig,
    after: usize,
    hold: Duration,
    on: impl FnOnce(),
    off: impl FnOnce(),
) -> Instant {
    rig.progress_at_least(after).await;
    on();
    tokio::time::sleep(hold).await;
    off();
    Instant::now()
}

/// Every batch call so far, in arrival order.
fn calls(rig: &FaultRig) -> Vec<BatchCall> {
    let mut calls = rig.sim.batch_calls();
    calls.sort_by_key(|c| c.at);
    calls
}

fn gap(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

/// How long after `lifted` Weiling first answered a batch call with code 0 (polled for up to 30 s).
async fn first_success_after(rig: &FaultRig, lifted: SystemTime) -> Option<Duration> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = calls(rig)
            .into_iter()
            .find(|c| c.at >= lifted && c.http_status == 200 && c.code == 0);
        if let Some(call) = answered {
            return Some(gap(lifted, call.at));
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("never (30 s)".into(), |d| format!("{} ms", d.as_millis()))
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_27_weiling_5xx_burst() {
    run_row(
        27,
        "Weiling 5xx burst",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            rig.progress_at_least(200).await;
            rig.sim.set_fault_5xx_ratio(1.0);
            tokio::time::sleep(Duration::from_secs(5)).await;
            rig.sim.set_fault_5xx_ratio(0.0);
            FaultOutcome {
                restored_at: Some(Instant::now()),
                note: "every batch call answered 500/502/503 for 5 s".into(),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_28_weiling_rate_limit() {
    let load = Load {
        callbacks: 1500,
        ..Load::default()
    };
    let callbacks = load.callbacks;
    run_row(
        28,
        "Weiling rate limit (HTTP 429, code 1009)",
        RigOptions::on(SHARED_BROKER),
        load,
        move |rig, _round| async move {
            let sim = &rig.sim;
            for_a_while(
                &rig,
                150,
                Duration::from_secs(3),
                || sim.set_http_429_retry_after(Some(2)),
                || sim.set_http_429_retry_after(None),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let restored_at = for_a_while(
                &rig,
                0,
                Duration::from_secs(3),
                || sim.set_rate_limit_per_minute(1),
                || sim.set_rate_limit_per_minute(SIM_RATE_LIMIT),
            )
            .await;
            // Judge the calls once the load is over, so the call after the last refusal happened.
            rig.progress_at_least(callbacks).await;
            let calls = calls(&rig);
            let rate_code = SimConfig::default().rate_limit_code;
            let after = |code: &dyn Fn(&BatchCall) -> bool| -> Vec<Duration> {
                calls
                    .windows(2)
                    .filter(|w| code(&w[0]))
                    .map(|w| gap(w[0].at, w[1].at))
                    .collect()
            };
            let after_429 = after(&|c| c.http_status == 429);
            let after_code = after(&|c| c.http_status == 200 && c.code == rate_code);
            assert!(!after_429.is_empty(), "no call was answered 429");
            assert!(
                !after_code.is_empty(),
                "no call was answered code {rate_code}"
            );
            let min_429 = after_429.iter().min().unwrap();
            assert!(
                *min_429 >= Duration::from_secs(2),
                "a call came {min_429:?} after a 429 with Retry-After: 2"
            );
            let min_code = after_code.iter().min().unwrap();
            assert!(
                *min_code >= Duration::from_millis(100),
                "a call came {min_code:?} after a {rate_code} (no backoff)"
            );
            assert!(calls.len() <= 500, "more than 500 calls in under a minute");
            FaultOutcome {
                restored_at: Some(restored_at),
                note: format!(
                    "HTTP 429 + Retry-After: 2 for 3 s, then code {rate_code} in HTTP 200 for 3 s; {} answers 429, next call ≥ {} ms later; {} answers {rate_code}, next call ≥ {} ms later; {} batch calls in all",
                    after_429.len(),
                    min_429.as_millis(),
                    after_code.len(),
                    min_code.as_millis(),
                    calls.len()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_29_weiling_slow() {
    run_row(
        29,
        "Weiling slower than the client timeout",
        RigOptions::on(SHARED_BROKER).set("WEILING_RELAY__WEILING__REQUEST_TIMEOUT_MS", 500),
        Load::default(),
        |rig, _round| async move {
            rig.progress_at_least(200).await;
            let customers = &rig.settings.amqp.customers_exchange;
            let records = Probe::bind_to(&rig, customers, "customer.#").await;
            let slow_started = Instant::now();
            rig.sim.set_latency(Duration::from_millis(1500));
            // Calls that began before stay fast: wait until their records have arrived (the count
            // still for a second) before counting.
            let mut records_before = records.depth().await;
            let settle_deadline = Instant::now() + Duration::from_secs(15);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = records.depth().await;
                if now == records_before || Instant::now() > settle_deadline {
                    break;
                }
                records_before = now;
            }
            // Callbacks about events of their own meanwhile, sent as Weiling does (a 503 retried):
            // the edge keeps answering. How fast is reported, not asserted (a busy machine).
            let http = http();
            let (mut slowest, mut first_try) = (Duration::ZERO, 0);
            let probes = 25;
            for _ in 0..probes {
                let replies =
                    post_retrying(&http, &rig, &seal_at(&rig, &unmapped(&rig, "slow"), 0)).await;
                let last = replies.last().expect("at least one answer");
                assert!(last.success(), "answered {} {}", last.status, last.body);
                first_try += usize::from(replies.len() == 1);
                slowest = replies.iter().map(|r| r.elapsed).fold(slowest, Duration::max);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Every call now takes 1.5 s; a client that waited for them would have published.
            let records_during = records.depth().await - records_before;
            records.close().await;
            rig.sim.set_latency(Duration::ZERO);
            let (lifted, slow_for) = (SystemTime::now(), slow_started.elapsed());
            let restored_at = Some(Instant::now());
            assert_eq!(
                records_during, 0,
                "records were published from 1.5 s answers despite the 500 ms client timeout"
            );
            let back = first_success_after(&rig, lifted).await;
            FaultOutcome {
                restored_at,
                note: format!(
                    "latency 1500 ms for {:.1} s against a 500 ms client timeout: no record from a slow answer; first answered batch call {} after the fault; {probes} callbacks meanwhile, {first_try} answered success at the first try, slowest answer {} ms",
                    slow_for.as_secs_f64(),
                    ms(back),
                    slowest.as_millis()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_30_weiling_connection_reset() {
    let mut options = RigOptions::on(SHARED_BROKER);
    options.weiling_proxy = true;
    run_row(
        30,
        "Weiling connection reset",
        options,
        Load::default(),
        |rig, _round| async move {
            let proxy = rig.weiling_proxy.as_ref().unwrap();
            let restored_at = for_a_while(
                &rig,
                200,
                Duration::from_secs(3),
                || proxy.set_mode(Mode::Reset),
                || proxy.set_mode(Mode::Pass),
            )
            .await;
            let back = first_success_after(&rig, SystemTime::now()).await;
            FaultOutcome {
                restored_at: Some(restored_at),
                note: format!(
                    "every connection to Weiling reset for 3 s; first answered batch call {} after",
                    ms(back)
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_31_token_expires_mid_batch() {
    let load = Load::default();
    let callbacks = load.callbacks;
    run_row(
        31,
        "token expires mid-batch",
        RigOptions::on(SHARED_BROKER),
        load,
        move |rig, _round| async move {
            rig.progress_at_least(100).await;
            let expirations = 8;
            for _ in 0..expirations {
                rig.sim.expire_tokens();
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            let restored_at = Some(Instant::now());
            rig.progress_at_least(callbacks).await;
            let calls = calls(&rig);
            let expired = |c: &BatchCall| c.http_status == 200 && c.code == 403;
            let refused: Vec<usize> = (0..calls.len().saturating_sub(1))
                .filter(|&i| expired(&calls[i]))
                .collect();
            assert!(!refused.is_empty(), "no call met an expired token");
            for &i in &refused {
                // A token refused again right after its refresh (an expiry landed in between) ends
                // the call: its deliveries are requeued and come back in a later window, so the
                // next call may ask for other ids. Every first refusal is retried at once.
                let retry_refused_again =
                    i > 0 && expired(&calls[i - 1]) && sorted(&calls[i - 1].ids) == sorted(&calls[i].ids);
                if retry_refused_again {
                    continue;
                }
                assert_eq!(
                    sorted(&calls[i].ids),
                    sorted(&calls[i + 1].ids),
                    "the refused batch is the next one asked"
                );
            }
            // One refresh per expiry, plus the first token; an expiry landing between a refresh and
            // the retry it serves costs one more, so never more than two per expiry.
            let token_calls = rig.sim.token_calls();
            assert!(
                token_calls <= 2 * expirations + 1,
                "{token_calls} token calls for {expirations} expirations"
            );
            FaultOutcome {
                restored_at,
                note: format!(
                    "tokens expired {expirations} times, 600 ms apart; {} calls answered code 403 in HTTP 200, each retried with the same ids; {token_calls} token calls in all",
                    refused.len()
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_32_token_endpoint_down() {
    run_row(
        32,
        "token endpoint down",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let sim = &rig.sim;
            let mut before = 0;
            let restored_at = for_a_while(
                &rig,
                200,
                Duration::from_secs(3),
                || {
                    sim.set_token_endpoint_down(true);
                    sim.expire_tokens();
                    before = sim.token_calls();
                },
                || sim.set_token_endpoint_down(false),
            )
            .await;
            let during = rig.sim.token_calls() - before;
            assert!(during >= 2, "the relay asked for a token {during} times while it was down");
            let back = first_success_after(&rig, SystemTime::now()).await;
            FaultOutcome {
                restored_at: Some(restored_at),
                note: format!(
                    "tokens expired and the token endpoint answered 500 for 3 s; {during} token calls meanwhile (backing off); first answered batch call {} after",
                    ms(back)
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_33_partial_batch() {
    let load = Load {
        ghosts: 50,
        ..Load::default()
    };
    let (callbacks, ghosts) = (load.callbacks, load.ghosts);
    run_row(
        33,
        "partial batch (ids Weiling omits)",
        RigOptions::on(SHARED_BROKER),
        load,
        move |rig, _round| async move {
            rig.progress_at_least(callbacks).await;
            // Every ghost is asked for in a successful batch call, and left out of its answer.
            let deadline = Instant::now() + Duration::from_secs(30);
            let asked = loop {
                let mut asked: Vec<String> = calls(&rig)
                    .into_iter()
                    .filter(|c| c.code == 0)
                    .flat_map(|c| c.ids)
                    .filter(|id| id.starts_with("ghost-"))
                    .collect();
                asked.sort_unstable();
                asked.dedup();
                if asked.len() >= ghosts || Instant::now() > deadline {
                    break asked.len();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(asked, ghosts, "ghost ids asked of Weiling");
            FaultOutcome {
                note: format!(
                    "{ghosts} ids Weiling does not know, all asked in answered batch calls and left out; the ledger checks a `missing` record for each"
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_34_weiling_garbage() {
    run_row(
        34,
        "Weiling garbage answers",
        RigOptions::on(SHARED_BROKER),
        Load::default(),
        |rig, _round| async move {
            let sim = &rig.sim;
            let restored_at = for_a_while(
                &rig,
                200,
                Duration::from_secs(3),
                || sim.set_garbage(true),
                || sim.set_garbage(false),
            )
            .await;
            let calls = calls(&rig);
            let garbage = |c: &BatchCall| c.http_status == 200 && c.code == NO_ENVELOPE;
            // Bounded retries: the same batch is asked at most 3 times (garbage_retries = 2) in a row.
            let mut longest = 0;
            let mut run = 0;
            let mut last: Option<Vec<String>> = None;
            for call in &calls {
                let ids = sorted(&call.ids);
                run = match (garbage(call), &last) {
                    (true, Some(prev)) if *prev == ids => run + 1,
                    (true, _) => 1,
                    (false, _) => 0,
                };
                longest = longest.max(run);
                last = Some(ids);
            }
            let answered = calls.iter().filter(|c| garbage(c)).count();
            assert!(answered > 0, "no call was answered garbage");
            assert!(longest <= 3, "one batch was asked {longest} times against garbage");
            let back = first_success_after(&rig, SystemTime::now()).await;
            FaultOutcome {
                restored_at: Some(restored_at),
                expected_dead: Dead::AtLeast(1),
                note: format!(
                    "a truncated JSON answer to every batch call for 3 s; {answered} garbage answers, at most {longest} in a row for one batch, then its deliveries were parked; first answered batch call {} after",
                    ms(back)
                ),
                ..FaultOutcome::default()
            }
        },
    )
    .await;
}
