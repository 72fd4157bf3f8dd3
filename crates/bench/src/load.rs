//! The open-loop load generator: requests are due at fixed times (`i / rate`), whether or not earlier
//! ones were answered, so a slow server meets a growing queue instead of a politely waiting client.
//! Each request is sealed live (its own timestamp, nonce, signature, URL and body) inside its own task,
//! so signing spreads over the runtime's threads. Latency runs from the moment a request was due, which
//! keeps generator delays and server queueing in the figure (no coordinated omission).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use tokio_util::task::TaskTracker;

use super::workload::Workload;
use weiling_proto::callback::seal::seal_event_now;

/// How often the scheduler wakes to launch the requests that fell due (tokio's timer resolution).
const TICK: Duration = Duration::from_millis(1);

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Success,
    Status(u16),
    /// HTTP 200 whose body was not `success`.
    NotSuccess,
    Timeout,
    Connect,
    Other,
}

impl Answer {
    fn label(self) -> String {
        match self {
            Self::Success => "success".into(),
            Self::Status(code) => format!("http {code}"),
            Self::NotSuccess => "200 without success".into(),
            Self::Timeout => "timeout".into(),
            Self::Connect => "connect error".into(),
            Self::Other => "transport error".into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// From the moment the request was due to the end of the answer.
    latency_us: u32,
    /// From the moment it was due to the moment its task started (generator and runtime delay).
    lag_us: u32,
    /// When its task started, from the start of the run: gives the rate the generator achieved.
    started_us: u64,
    answer: Answer,
    customer: u32,
}

/// Percentiles of one set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Of already sorted millisecond values (the records consumer's lags).
    pub fn of_ms(sorted_ms: &[u32]) -> Latency {
        Latency::of(sorted_ms.iter().map(|m| m.saturating_mul(1000)).collect())
    }

    fn of(mut micros: Vec<u32>) -> Latency {
        micros.sort_unstable();
        let at = |p: f64| percentile(&micros, p);
        Latency {
            p50_ms: at(50.0),
            p99_ms: at(99.0),
            p999_ms: at(99.9),
            max_ms: micros.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        }
    }
}

/// The cumulative distribution of sorted millisecond values as (ms, fraction within) points: every
/// percent, then the tail at 99.5 and 99.9 %, then the maximum (what the lag chart draws).
pub fn cdf_ms(sorted_ms: &[u32]) -> Vec<(f64, f64)> {
    if sorted_ms.is_empty() {
        return Vec::new();
    }
    let micros: Vec<u32> = sorted_ms.iter().map(|m| m.saturating_mul(1000)).collect();
    let tail = [99.5, 99.9, 100.0];
    (0..100)
        .map(f64::from)
        .chain(tail)
        .map(|p| (percentile(&micros, p.max(1e-6)), p / 100.0))
        .collect()
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // The epsilon keeps 99.9 % of 1000 at rank 999 despite floating-point error.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .map_or(0.0, |v| f64::from(*v) / 1000.0)
}

/// What one run at a fixed rate produced.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub rate: f64,
    /// Requests the schedule called for.
    pub planned: u64,
    /// Requests whose task started.
    pub sent: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Time to `success`, over the successful requests.
    pub latency: Latency,
    /// How late the generator started requests.
    pub lag: Latency,
    /// Requests started per second, over the time from the first to the last start.
    pub generator_rate: f64,
    /// Customer indexes of the successful requests.
    pub acked_customers: Vec<u32>,
}

impl Run {
    /// Every request that did not get `success`, the ones never sent included.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum::<u64>()
    }

    pub fn distinct_acked_customers(&self) -> usize {
        self.acked_customers.iter().collect::<HashSet<_>>().len()
    }
}

/// Sends sealed callbacks to one URL at fixed rates.
pub struct Generator {
    client: reqwest::Client,
    workload: Arc<Workload>,
    request_timeout: Duration,
    max_in_flight: usize,
}

impl Generator {
    pub fn new(
        workload: Arc<Workload>,
        request_timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Generator, reqwest::Error> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            // Below actix's 5 s keep-alive: a connection the server is closing must not be reused,
            // or the request on it fails as a transport error that is the client's doing.
            .pool_idle_timeout(Duration::from_secs(2))
            .timeout(request_timeout)
            .build()?;
        Ok(Generator {
            client,
            workload,
            request_timeout,
            max_in_flight,
        })
    }

    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Sends `rate` requests per second to `url` for `duration`, then waits for the last answers.
    /// `progress` prints a line at that interval (for long runs).
    pub async fn run(
        &self,
        url: &str,
        rate: f64,
        duration: Duration,
        progress: Option<Duration>,
    ) -> Run {
        let rate = rate.max(1.0);
        let planned = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::with_capacity(
            usize::try_from(planned).unwrap_or(0),
        )));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let tracker = TaskTracker::new();
        let url: Arc<str> = Arc::from(url);
        let start = Instant::now();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut next: u64 = 0;
        let mut overflow: u64 = 0;
        let mut last_progress = start;
        while next < planned {
            ticker.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate).floor() as u64 + 1).min(planned);
            while next < due {
                let intended = start + Duration::from_secs_f64(next as f64 / rate);
                next += 1;
                if in_flight.load(Ordering::Relaxed) >= self.max_in_flight {
                    overflow += 1;
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                tracker.spawn(one_request(Request {
                    client: self.client.clone(),
                    workload: self.workload.clone(),
                    url: url.clone(),
                    start,
                    intended,
                    timeout: self.request_timeout,
                    samples: samples.clone(),
                    in_flight: in_flight.clone(),
                }));
            }
            if let Some(every) = progress
                && last_progress.elapsed() >= every
            {
                last_progress = Instant::now();
                let (ok, failed) = tally(&samples);
                println!(
                    "      … {:>4.0} s: {next} sent, {ok} success, {} failed, {} in flight",
                    start.elapsed().as_secs_f64(),
                    failed as u64 + overflow,
                    in_flight.load(Ordering::Relaxed)
                );
            }
        }
        tracker.close();
        // Every request carries its own timeout, so this only guards against a stuck runtime.
        let _ = tokio::time::timeout(self.request_timeout * 2, tracker.wait()).await;
        let samples = std::mem::take(&mut *lock(&samples));
        summarise(rate, planned, overflow, samples)
    }
}

fn tally(samples: &Mutex<Vec<Sample>>) -> (usize, usize) {
    let samples = lock(samples);
    let ok = samples
        .iter()
        .filter(|s| s.answer == Answer::Success)
        .count();
    (ok, samples.len() - ok)
}

fn summarise(rate: f64, planned: u64, overflow: u64, samples: Vec<Sample>) -> Run {
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = Vec::with_capacity(samples.len());
    let mut lags = Vec::with_capacity(samples.len());
    let mut acked_customers = Vec::with_capacity(samples.len());
    let mut last_start_us: u64 = 0;
    for sample in &samples {
        lags.push(sample.lag_us);
        last_start_us = last_start_us.max(sample.started_us);
        if sample.answer == Answer::Success {
            latencies.push(sample.latency_us);
            acked_customers.push(sample.customer);
        } else {
            *errors.entry(sample.answer.label()).or_default() += 1;
        }
    }
    // Requests not sent because the generator already had `max_in_flight` open: the server was too
    // slow to answer, so they count as errors.
    if overflow > 0 {
        errors.insert("not sent: generator at its in-flight cap".into(), overflow);
    }
    let sent = samples.len() as u64;
    // The first request is due at 0, so the achieved rate counts the intervals between starts.
    let generator_rate = if sent > 1 && last_start_us > 0 {
        (sent - 1) as f64 / (last_start_us as f64 / 1e6)
    } else {
        0.0
    };
    Run {
        rate,
        planned,
        sent,
        ok: latencies.len() as u64,
        errors,
        latency: Latency::of(latencies),
        lag: Latency::of(lags),
        generator_rate,
        acked_customers,
    }
}

struct Request {
    client: reqwest::Client,
    workload: Arc<Workload>,
    url: Arc<str>,
    start: Instant,
    intended: Instant,
    timeout: Duration,
    samples: Arc<Mutex<Vec<Sample>>>,
    in_flight: Arc<AtomicUsize>,
}

async fn one_request(r: Request) {
    let started = Instant::now();
    let (customer, event) = r.workload.next_event();
    let sealed = seal_event_now(r.workload.app(), &event);
    let url = format!("{}?{}", r.url, sealed.query.to_query_string());
    let sent = r
        .client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .timeout(r.timeout)
        .body(sealed.body)
        .send()
        .await;
    let answer = match sent {
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(body) if status == StatusCode::OK && body.as_ref() == b"success" => {
                    Answer::Success
                }
                Ok(_) if status == StatusCode::OK => Answer::NotSuccess,
                Ok(_) => Answer::Status(status.as_u16()),
                Err(error) if error.is_timeout() => Answer::Timeout,
                Err(_) => Answer::Other,
            }
        }
        Err(error) if error.is_timeout() => Answer::Timeout,
        Err(error) if error.is_connect() => Answer::Connect,
        Err(_) => Answer::Other,
    };
    let micros = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
    let sample = Sample {
        latency_us: micros(r.intended.elapsed()),
        lag_us: micros(started.saturating_duration_since(r.intended)),
        started_us: u64::try_from(started.duration_since(r.start).as_micros()).unwrap_or(u64::MAX),
        answer,
        customer,
    };
    lock(&r.samples).push(sample);
    r.in_flight.fetch_sub(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u32> = (1..=1000).map(|v| v * 1000).collect();
        assert_eq!(percentile(&sorted, 50.0), 500.0);
        assert_eq!(percentile(&sorted, 99.0), 990.0);
        assert_eq!(percentile(&sorted, 99.9), 999.0);
        assert_eq!(percentile(&sorted, 100.0), 1000.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        assert_eq!(percentile(&[7000], 99.9), 7.0);
    }

    #[test]
    fn a_summary_counts_errors_overflow_and_the_achieved_rate() {
        let sample = |started_us, answer| Sample {
            latency_us: 2000,
            lag_us: 10,
            started_us,
            answer,
            customer: 3,
        };
        let run = summarise(
            3.0,
            4,
            1,
            vec![
                sample(0, Answer::Success),
                sample(500_000, Answer::Status(503)),
                sample(1_000_000, Answer::Success),
            ],
        );
        assert_eq!(run.ok, 2);
        assert_eq!(run.sent, 3);
        assert_eq!(run.error_count(), 2);
        assert_eq!(run.errors.get("http 503"), Some(&1));
        assert!((run.generator_rate - 2.0).abs() < 1e-9);
        assert_eq!(run.latency.p99_ms, 2.0);
        assert_eq!(run.distinct_acked_customers(), 1);
    }
}
