//! `weiling-relay bench --scale-out`: enrichment throughput (customer ids delivered as records per
//! second) with 1, 2 and 3 relays sharing one partitioned inbox, while every Weiling call takes
//! [`LATENCY`] and the rate limits allow everything. One relay fetches one app's windows one at a
//! time, so it delivers at most `max_ids` per call latency; several relays split the partitions and
//! fetch in parallel. Writes `scale-out.md` and `scale-out.json` beside the main results.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::child::{self, Server};
use super::report::thousands;
use super::{Bench, BenchError};

/// Each Weiling batch call's latency in this scenario (the figure).
pub const LATENCY: Duration = Duration::from_millis(200);
const PARTITIONS: usize = 6;
const MAX_RELAYS: usize = 3;
/// A backlog this deep (events in the inbox partitions) counts as "the relays are saturated".
const BACKLOG: u64 = 500;
const QUICK_BACKLOG: u64 = 100;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// A run ends once the inbox was empty and no record arrived for this long.
const QUIET: Duration = Duration::from_secs(2);

struct Sample {
    at: Instant,
    backlog: u64,
    records: u64,
}

/// Records delivered while the inbox held at least `threshold` events, and over how long; when it
/// never did, every record from the first to the last that arrived.
fn delivered(samples: &[Sample], threshold: u64) -> (u64, f64, bool) {
    let busy: Vec<&Sample> = samples.iter().filter(|s| s.backlog >= threshold).collect();
    if let (Some(first), Some(last)) = (busy.first(), busy.last())
        && last.at > first.at
    {
        return (
            last.records.saturating_sub(first.records),
            (last.at - first.at).as_secs_f64(),
            true,
        );
    }
    let start = samples.first().map_or(0, |s| s.records);
    let moving: Vec<&Sample> = samples
        .windows(2)
        .filter_map(|pair| match pair {
            [before, after] if after.records > before.records => Some(before),
            _ => None,
        })
        .collect();
    let end = samples.iter().map(|s| s.records).max().unwrap_or(start);
    match (moving.first(), samples.iter().find(|s| s.records == end)) {
        (Some(first), Some(last)) if last.at > first.at => (
            end.saturating_sub(first.records),
            (last.at - first.at).as_secs_f64(),
            false,
        ),
        _ => (0, 0.0, false),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleOut {
    pub weiling_latency_ms: u64,
    pub partitions: usize,
    pub fill_rate: f64,
    pub fill_seconds: f64,
    pub runs: Vec<ScaleRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub relays: usize,
    /// From the last relay's start to every partition held by exactly one relay, fairly.
    pub balanced_s: f64,
    /// Records delivered while the inbox held a backlog, and over how long.
    pub ids_delivered: u64,
    pub backlog_s: f64,
    pub ids_per_s: f64,
    /// Whether the backlog reached the threshold; if not, the figure covers every record delivered
    /// and measures the load offered rather than the relays' capacity.
    pub saturated: bool,
    /// Of 1 relay's figure.
    pub speedup: Option<f64>,
    /// Per relay: partitions held, batch calls made and ids asked for during the run.
    pub per_relay: Vec<RelayWork>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayWork {
    pub relay: String,
    pub partitions: u64,
    pub batch_calls: usize,
    pub ids: usize,
}

impl Bench {
    /// Runs 1, 2 and 3 relays in turn, each on a fresh inbox of [`PARTITIONS`] partitions.
    pub(crate) async fn scale_out(&mut self) -> Result<ScaleOut, BenchError> {
        let (fill_rate, fill) = if self.plan.quick {
            (800.0, Duration::from_secs(3))
        } else {
            (2500.0, Duration::from_secs(12))
        };
        let mut result = ScaleOut {
            weiling_latency_ms: u64::try_from(LATENCY.as_millis()).unwrap_or(0),
            partitions: PARTITIONS,
            fill_rate,
            fill_seconds: fill.as_secs_f64(),
            runs: Vec::new(),
        };
        for relays in 1..=MAX_RELAYS {
            println!(
                "\n[scale-out] {relays} relay(s) on {PARTITIONS} partitions, Weiling answering in {} ms",
                LATENCY.as_millis()
            );
            let run = self.scale_run(relays, fill_rate, fill).await;
            self.sim.set_latency(Duration::ZERO);
            let mut run = run?;
            run.speedup = result
                .runs
                .first()
                .filter(|one| one.ids_per_s > 0.0)
                .map(|one| run.ids_per_s / one.ids_per_s);
            println!(
                "      {} ids/s delivered over {:.1} s of backlog{}; fair after {:.1} s; {}",
                thousands(run.ids_per_s),
                run.backlog_s,
                run.speedup
                    .map(|s| format!(" ({s:.2} × one relay)"))
                    .unwrap_or_default(),
                run.balanced_s,
                run.per_relay
                    .iter()
                    .map(|w| format!("{}: {} partitions, {} ids", w.relay, w.partitions, w.ids))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            result.runs.push(run);
        }
        Ok(result)
    }

    async fn scale_run(
        &mut self,
        relays: usize,
        fill_rate: f64,
        fill: Duration,
    ) -> Result<ScaleRun, BenchError> {
        let partitions = PARTITIONS.to_string();
        let settings = self.settings(
            &format!("scale{relays}"),
            &[("WEILING_RELAY__AMQP__INBOX_PARTITIONS", partitions.as_str())],
        )?;
        let mut servers = vec![self.start_relay("relay 1", &settings).await?];
        let mut started_last = Instant::now();
        for n in 2..=relays {
            let mut env = self.env_of(&settings);
            env.insert(
                "WEILING_RELAY__SERVER__LISTEN".into(),
                child::free_address()?,
            );
            let mut server = Server::relay(&format!("relay {n}"), &env, self.ticks)?;
            started_last = Instant::now();
            server.wait_ready().await?;
            servers.push(server);
        }
        let outcome = self
            .measure(&servers, &settings, started_last, fill_rate, fill)
            .await;
        for server in servers {
            server.stop().await;
        }
        outcome
    }

    async fn measure(
        &mut self,
        servers: &[Server],
        settings: &relay::config::Settings,
        started_last: Instant,
        fill_rate: f64,
        fill: Duration,
    ) -> Result<ScaleRun, BenchError> {
        let relays = servers.len();
        let held = await_fair(servers, PARTITIONS).await?;
        let balanced_s = started_last.elapsed().as_secs_f64();
        self.sim.set_latency(LATENCY);
        let calls_before = self.sim.batch_calls().len();
        // Past `max_unacked_per_app` a relay parks an app's deliveries in the retry queue for
        // `retry_delay_ms`: they are backlog too.
        let mut queues = settings.amqp.inbox_queues();
        queues.push(settings.amqp.inbox_retry_queue());
        let url = servers
            .first()
            .map(Server::callback_url)
            .unwrap_or_default();

        // Fill while sampling the backlog and the records delivered, until the backlog is gone and
        // no record arrived for a while.
        let generator = &self.generator;
        let filling = generator.run(&url, fill_rate, fill, None);
        let threshold = self.backlog_threshold();
        let sampling = async {
            let mut samples: Vec<Sample> = Vec::new();
            let started = Instant::now();
            let deadline = started + fill + Duration::from_secs(180);
            loop {
                let mut backlog = 0u64;
                for queue in &queues {
                    backlog += u64::from(self.ready_count(queue).await?);
                }
                let at = Instant::now();
                samples.push(Sample {
                    at,
                    backlog,
                    records: self.records_total(),
                });
                let quiet = samples
                    .iter()
                    .rev()
                    .take_while(|s| at.duration_since(s.at) <= QUIET)
                    .all(|s| {
                        s.backlog == 0 && Some(s.records) == samples.last().map(|l| l.records)
                    });
                let done = at.duration_since(started) > fill + QUIET && quiet;
                if done || at > deadline {
                    return Ok::<_, BenchError>(samples);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        };
        let (run, samples) = tokio::join!(filling, sampling);
        let samples = samples?;
        if run.error_count() > 0 {
            println!(
                "      note: {} of the filling callbacks were not acknowledged",
                run.error_count()
            );
        }
        let (ids_delivered, backlog_s, saturated) = delivered(&samples, threshold);
        let calls = self.sim.batch_calls();
        let per_relay = servers
            .iter()
            .zip(held)
            .map(|(server, partitions)| {
                let mark = format!("({})", server.listen());
                let own = calls.iter().skip(calls_before).filter(|c| {
                    c.user_agent
                        .as_deref()
                        .is_some_and(|ua| ua.ends_with(&mark))
                });
                let (batch_calls, ids) = own.fold((0, 0), |(n, ids), c| (n + 1, ids + c.ids.len()));
                RelayWork {
                    relay: server.name().to_owned(),
                    partitions,
                    batch_calls,
                    ids,
                }
            })
            .collect();
        Ok(ScaleRun {
            relays,
            balanced_s,
            ids_delivered,
            backlog_s,
            ids_per_s: if backlog_s > 0.0 {
                ids_delivered as f64 / backlog_s
            } else {
                0.0
            },
            saturated,
            speedup: None,
            per_relay,
        })
    }
}

impl Bench {
    fn backlog_threshold(&self) -> u64 {
        if self.plan.quick {
            QUICK_BACKLOG
        } else {
            BACKLOG
        }
    }
}

/// Waits until the relays' `relay_inbox_partitions_held` add up to `partitions`, split ⌊P/R⌋/⌈P/R⌉;
/// returns each relay's count.
async fn await_fair(servers: &[Server], partitions: usize) -> Result<Vec<u64>, BenchError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let relays = servers.len().max(1);
    let (floor, ceil) = (partitions / relays, partitions.div_ceil(relays));
    let started = Instant::now();
    let mut held = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        held.clear();
        for server in servers {
            let text = match http.get(server.metrics_url()).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            held.push(gauge(&text, "relay_inbox_partitions_held").unwrap_or(0.0) as u64);
        }
        let fair = held
            .iter()
            .all(|h| (floor..=ceil).contains(&usize::try_from(*h).unwrap_or(usize::MAX)));
        if fair && held.iter().sum::<u64>() == partitions as u64 {
            return Ok(held);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(BenchError::Child(format!(
        "the relays did not share {partitions} partitions fairly within 60 s: {held:?}"
    )))
}

/// The value of an unlabelled gauge in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

impl ScaleRun {
    fn ids_per_call(&self) -> f64 {
        let calls: usize = self.per_relay.iter().map(|w| w.batch_calls).sum();
        let ids: usize = self.per_relay.iter().map(|w| w.ids).sum();
        if calls == 0 {
            0.0
        } else {
            ids as f64 / calls as f64
        }
    }
}

impl ScaleOut {
    pub fn markdown(&self, command: &str, machine: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# weiling-relay: enrichment with 1, 2 and 3 relays\n");
        let _ = writeln!(
            md,
            "`{command}` on {machine}. Every relay is a child process consuming one inbox of {} partitions \
             (classic queues, the machine's RabbitMQ); the simulated Weiling answers every batch call in {} ms \
             and neither rate limit binds. Callbacks went to relay 1 at {} /s for {:.0} s (the bench's skewed \
             workload over 10,000 customers); a run counts the records delivered while at least {BACKLOG} \
             events ({QUICK_BACKLOG} in a `--quick` run) waited in the inbox partitions and its retry queue, so every relay had work the whole time.\n",
            self.partitions,
            self.weiling_latency_ms,
            thousands(self.fill_rate),
            self.fill_seconds
        );
        let _ = writeln!(
            md,
            "| relays | ids delivered / s | × one relay | measured over | fair split after | ids per batch call | per relay: partitions, batch calls, ids |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for run in &self.runs {
            let work = run
                .per_relay
                .iter()
                .map(|w| {
                    format!(
                        "{}: {}, {}, {}",
                        w.relay,
                        w.partitions,
                        w.batch_calls,
                        thousands(w.ids as f64)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                md,
                "| {} | {}{} | {} | {:.1} s ({} ids) | {:.1} s | {:.0} | {work} |",
                run.relays,
                thousands(run.ids_per_s),
                if run.saturated {
                    ""
                } else {
                    " (not saturated)"
                },
                run.speedup.map_or("-".into(), |s| format!("{s:.2}")),
                run.backlog_s,
                thousands(run.ids_delivered as f64),
                run.balanced_s,
                run.ids_per_call()
            );
        }
        let _ = writeln!(
            md,
            "\nOne relay fetches one app's windows one after another (so `fetched_at` orders a customer's \
             states), which caps it near `max_ids` ids per Weiling latency; each further relay adds its own \
             fetches over its own partitions. With one app, as here, a relay also holds at most \
             `max_unacked_per_app` of its deliveries and parks the rest in the retry queue for \
             `retry_delay_ms`; each relay has its own such share, so more relays also fill their windows \
             better (the ids per call) and send fewer deliveries round the retry queue, which can make the \
             gain more than the number of relays. Figures from one run on a noisy 2-core machine: compare \
             the ratios, not the absolute numbers."
        );
        md
    }
}
