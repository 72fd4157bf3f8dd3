//! The bench's results: the figures (serialised as `results.json`) and their rendering as
//! `results.md`, with the summary ratios and the targets of the issue at the top.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::ceiling::PublishProbe;
use super::load::Latency;
use super::procfs::{Machine, ProcSample};

/// CPU used while a step ran, in cores (CPU seconds per wall second) and in CPU seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuShare {
    pub seconds: f64,
    /// The server under test (relay or bare handler), a child process.
    pub server_cores: f64,
    pub broker_cores: f64,
    /// This process: generator, simulator and records consumer.
    pub bench_cores: f64,
    /// All cores of the machine, whoever used them.
    pub machine_busy_pct: f64,
    pub server_cpu_s: f64,
    pub broker_cpu_s: f64,
    pub bench_cpu_s: f64,
}

/// One run at a fixed arrival rate.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub rate: f64,
    pub seconds: f64,
    /// Requests the schedule called for.
    pub planned: u64,
    pub sent: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// What the generator really achieved; below the rate means it, not the server, fell behind.
    pub generator_rate: f64,
    pub generator_lag_p99_ms: f64,
    /// Time from the moment a request was due to its `success`.
    pub ack: Latency,
    /// Inbox messages not yet taken by the pipeline when the step ended (relay only).
    pub inbox_backlog: Option<u64>,
    pub cpu: CpuShare,
    /// Weiling batch calls made for this step's callbacks (relay only; counted until the pipeline drained).
    pub batch_calls: Option<u64>,
    pub ids_requested: Option<u64>,
    pub distinct_ids: usize,
    pub records: Option<u64>,
    pub passed: bool,
    pub verdict: String,
}

impl StepReport {
    pub fn error_free(&self) -> bool {
        self.errors.values().all(|n| *n == 0)
    }
}

/// A stepped search for the maximum sustained rate.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    pub rule: String,
    pub steps: Vec<StepReport>,
    /// The highest rate that passed; 0 if none did.
    pub msr: f64,
    /// The lowest rate that failed, if any did.
    pub first_failure: Option<f64>,
    /// Why the first failing rate failed.
    pub limited_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub publish: Vec<PublishProbe>,
    /// The best of the publish probes.
    pub publish_msgs_per_s: f64,
    pub bare_handler: Option<Search>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FractionRun {
    pub fraction_of_msr: f64,
    pub step: StepReport,
}

/// CPU seconds per 1,000 acknowledged callbacks.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPer1000 {
    pub at_rate: f64,
    pub relay_s: f64,
    pub broker_s: f64,
    pub bench_s: f64,
}

/// Coalescing at the highest passing rate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Saturation {
    pub rate: f64,
    pub callbacks: u64,
    pub distinct_ids: usize,
    pub batch_calls: u64,
    pub ids_requested: u64,
    pub calls_per_distinct_id: f64,
    pub ids_per_call: f64,
}

/// CPU per 1,000 callbacks of one server at a fixed rate.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    pub server: String,
    pub rate: f64,
    pub callbacks: u64,
    pub errors: u64,
    pub server_s_per_1000: f64,
    pub broker_s_per_1000: f64,
    pub bench_s_per_1000: f64,
    pub machine_busy_pct: f64,
    pub ack: Latency,
}

impl CostRow {
    pub fn of(server: &str, step: &StepReport) -> CostRow {
        let per = |s: f64| s / step.ok.max(1) as f64 * 1000.0;
        CostRow {
            server: server.to_owned(),
            rate: step.rate,
            callbacks: step.ok,
            errors: step.errors.values().sum(),
            server_s_per_1000: per(step.cpu.server_cpu_s),
            broker_s_per_1000: per(step.cpu.broker_cpu_s),
            bench_s_per_1000: per(step.cpu.bench_cpu_s),
            machine_busy_pct: step.cpu.machine_busy_pct,
            ack: step.ack,
        }
    }
}

/// The steady run's limits (issue figures): RSS after warm-up and growth from there to the end.
const STEADY_RSS_LIMIT_MB: f64 = 150.0;
const STEADY_GROWTH_LIMIT_PCT: f64 = 5.0;

#[derive(Debug, Clone, Serialize)]
pub struct Ingest {
    pub search: Search,
    pub at_fraction: Vec<FractionRun>,
    pub cpu_per_1000: Option<CpuPer1000>,
    pub saturation: Option<Saturation>,
    /// The same rate against the bare handler, an ingest-only relay and the whole relay.
    pub cost: Vec<CostRow>,
}

impl Ingest {
    /// Whole relay over bare handler, CPU seconds per 1,000 callbacks at the same rate (the cost rows
    /// are in that order: bare, ingest only, whole relay).
    pub fn cpu_ratio(&self) -> Option<f64> {
        let bare = self.cost.first()?.server_s_per_1000;
        let whole = self.cost.last()?.server_s_per_1000;
        (self.cost.len() == 3 && bare > 0.0).then(|| whole / bare)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    pub relay: String,
    pub rate: f64,
    pub step: StepReport,
    /// From callback received (the first in its window) to the record delivered to a consumer queue.
    pub lag: Latency,
    pub lag_samples: usize,
    /// (ms, fraction of records within it), for the lag chart.
    pub lag_cdf: Vec<(f64, f64)>,
    pub batch_calls: u64,
    pub ids_requested: u64,
    pub records: u64,
    pub calls_per_callback: f64,
    pub ids_per_call: f64,
    pub records_per_callback: f64,
    pub customers_changed: usize,
    /// Changed customers whose latest record equals the simulator's final state.
    pub latest_state_seen: usize,
    pub settled: bool,
    pub settle_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NoWindow {
    pub search: Search,
    /// The rate both relays were compared at (the lower of their half-MSRs).
    pub compare_rate: f64,
    pub no_window: Option<EndToEnd>,
    pub windowed: Option<EndToEnd>,
    /// Windowed calls per callback divided by no-window calls per callback.
    pub calls_ratio: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcPoint {
    pub t_s: f64,
    pub rss_kb: u64,
    pub open_fds: u64,
    pub cpu_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    pub rate: f64,
    pub warmup_s: f64,
    pub measured_s: f64,
    pub before_load: Option<ProcSample>,
    pub after_warmup: Option<ProcSample>,
    pub end: Option<ProcSample>,
    pub rss_growth_pct: Option<f64>,
    pub series: Vec<ProcPoint>,
    pub step: StepReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub customers: usize,
    pub answer_budget_ms: u64,
    pub max_ids: usize,
    pub quiet_ms: u64,
    pub max_wait_ms: u64,
    pub inbox_queue_type: String,
    /// `--server-env` settings, `KEY=VALUE`; empty for a run of the defaults.
    pub server_env: Vec<String>,
    pub relay_rate_limit_per_minute: u32,
    pub simulator_rate_limit_per_minute: u32,
    pub step_s: f64,
    pub generator_max_in_flight: usize,
    pub request_timeout_ms: u64,
    pub processes: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None` when not measured, or in a quick run (which judges no speed).
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub schema: &'static str,
    pub mode: &'static str,
    pub command: String,
    pub started_utc: String,
    pub run_seconds: f64,
    pub machine: Machine,
    pub setup: Setup,
    pub ceiling: Option<Ceiling>,
    pub ingest: Option<Ingest>,
    pub end_to_end: Option<EndToEnd>,
    pub no_window: Option<NoWindow>,
    pub steady: Option<Steady>,
    pub targets: Vec<TargetCheck>,
    pub problems: Vec<String>,
    /// SVG files written beside results.md.
    pub charts: Vec<String>,
}

impl Results {
    pub fn quick(&self) -> bool {
        self.mode == "quick"
    }

    fn ceiling_b(&self) -> Option<f64> {
        self.ceiling
            .as_ref()
            .and_then(|c| c.bare_handler.as_ref())
            .map(|s| s.msr)
    }

    fn msr(&self) -> Option<f64> {
        self.ingest.as_ref().map(|i| i.search.msr)
    }

    fn at_fraction(&self, fraction: f64) -> Option<&StepReport> {
        self.ingest.as_ref().and_then(|i| {
            i.at_fraction
                .iter()
                .find(|f| (f.fraction_of_msr - fraction).abs() < 1e-9)
                .map(|f| &f.step)
        })
    }

    /// The targets against this run's figures.
    pub fn judge(&mut self) {
        let quick = self.quick();
        let judged = |met: bool| (!quick).then_some(met);
        let mut targets = Vec::new();
        let ratio = self
            .msr()
            .zip(self.ceiling_b())
            .filter(|(_, c)| *c > 0.0)
            .map(|(m, c)| m / c);
        targets.push(TargetCheck {
            target: "ingest MSR ≥ 60 % of ceiling (b)".into(),
            measured: ratio.map_or("not measured".into(), |r| format!("{:.0} %", r * 100.0)),
            met: ratio.and_then(|r| judged(r >= 0.6)),
        });
        let p99 = self.at_fraction(0.5).map(|s| s.ack.p99_ms);
        targets.push(TargetCheck {
            target: "ack p99 ≤ 50 ms at 50 % of MSR".into(),
            measured: p99.map_or("not measured".into(), ms),
            met: p99.and_then(|p| judged(p <= 50.0)),
        });
        let budget = self.setup.answer_budget_ms as f64;
        let p999 = self.at_fraction(0.9).map(|s| s.ack.p999_ms);
        targets.push(TargetCheck {
            target: format!("ack p99.9 < answer_budget_ms ({budget:.0} ms) at 90 % of MSR"),
            measured: p999.map_or("not measured".into(), ms),
            met: p999.and_then(|p| judged(p < budget)),
        });
        let lag_limit = (self.setup.max_wait_ms + 300) as f64;
        let lag = self.end_to_end.as_ref().map(|e| e.lag.p99_ms);
        targets.push(TargetCheck {
            target: format!(
                "end-to-end lag p99 ≤ max_wait_ms + 300 ms ({lag_limit:.0} ms) at 50 % of MSR"
            ),
            measured: lag.map_or("not measured".into(), ms),
            met: lag.and_then(|l| judged(l <= lag_limit)),
        });
        let saturation = self.ingest.as_ref().and_then(|i| i.saturation);
        targets.push(TargetCheck {
            target: "≤ 1 batch call per 100 distinct ids at saturation".into(),
            measured: saturation.map_or("not measured".into(), |s| {
                format!(
                    "{:.2} calls per 100 distinct ids ({} calls, {} distinct ids, {:.1} ids per call)",
                    s.calls_per_distinct_id * 100.0,
                    s.batch_calls,
                    s.distinct_ids,
                    s.ids_per_call
                )
            }),
            met: saturation.and_then(|s| judged(s.calls_per_distinct_id <= 0.01)),
        });
        let per_callback = self.end_to_end.as_ref().map(|e| e.calls_per_callback);
        targets.push(TargetCheck {
            target: "≤ 0.05 batch calls per callback on the skewed workload".into(),
            measured: per_callback.map_or("not measured".into(), |c| format!("{c:.4}")),
            met: per_callback.and_then(|c| judged(c <= 0.05)),
        });
        let cpu_ratio = self.ingest.as_ref().and_then(Ingest::cpu_ratio);
        targets.push(TargetCheck {
            target: "relay CPU per 1,000 callbacks (pipeline included) ≤ 1.2 × the bare handler's"
                .into(),
            measured: cpu_ratio.map_or("not measured".into(), |r| format!("{r:.2} ×")),
            met: cpu_ratio.and_then(|r| judged(r <= 1.2)),
        });
        let steady = self.steady.as_ref();
        let warm_mb = steady
            .and_then(|s| s.after_warmup)
            .map(|a| a.rss_kb as f64 / 1024.0);
        targets.push(TargetCheck {
            target: format!("steady run: relay RSS after warm-up ≤ {STEADY_RSS_LIMIT_MB:.0} MB"),
            measured: warm_mb.map_or("not measured".into(), |m| format!("{m:.1} MB")),
            met: warm_mb.and_then(|m| judged(m <= STEADY_RSS_LIMIT_MB)),
        });
        let growth = steady.and_then(|s| s.rss_growth_pct);
        targets.push(TargetCheck {
            target: format!(
                "steady run: RSS growth from warm-up to the end ≤ {STEADY_GROWTH_LIMIT_PCT:.0} %"
            ),
            measured: growth.map_or("not measured".into(), |g| format!("{g:+.1} %")),
            met: growth.and_then(|g| judged(g <= STEADY_GROWTH_LIMIT_PCT)),
        });
        let steady_errors = steady.map(|s| s.step.errors.values().sum::<u64>());
        targets.push(TargetCheck {
            target: "steady run: no callback answered with an error".into(),
            measured: steady_errors.map_or("not measured".into(), |e| {
                format!("{e} of {}", steady.map_or(0, |s| s.step.planned))
            }),
            met: steady_errors.and_then(|e| judged(e == 0)),
        });
        self.targets = targets;
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# weiling-relay bench results\n");
        let _ = writeln!(
            md,
            "Written by `{}` ({} run, started {} UTC, {:.0} s). Every figure below comes from this one run on this one machine; only the ratios are meant to be compared across runs.\n",
            self.command, self.mode, self.started_utc, self.run_seconds
        );
        if self.quick() {
            let _ = writeln!(
                md,
                "**Quick run**: every scenario, shortened to about a minute in all. The figures are indicative only; no target is judged.\n"
            );
        }
        self.summary(&mut md);
        self.targets_table(&mut md);
        self.charts_section(&mut md);
        if !self.problems.is_empty() {
            let _ = writeln!(md, "## Problems seen\n");
            for problem in &self.problems {
                let _ = writeln!(md, "- {problem}");
            }
            let _ = writeln!(md);
        }
        self.machine_section(&mut md);
        self.ceiling_section(&mut md);
        self.ingest_section(&mut md);
        self.e2e_section(&mut md);
        self.no_window_section(&mut md);
        self.steady_section(&mut md);
        md
    }

    fn charts_section(&self, md: &mut String) {
        if self.charts.is_empty() {
            return;
        }
        let _ = writeln!(md, "## Charts\n");
        for file in &self.charts {
            let what = match file.as_str() {
                crate::charts::ACK_LATENCY => {
                    "Ack latency (p50, p99, p99.9) at every offered rate of both searches: the bare handler and the relay; a hollow mark is a step that failed."
                }
                crate::charts::STEADY => {
                    "Relay RSS and CPU over the steady run; growth is judged from the end of the warm-up (vertical line)."
                }
                crate::charts::LAG => {
                    "End-to-end lag as a cumulative distribution at 50 % of MSR, with the p99 target."
                }
                _ => "",
            };
            let _ = writeln!(md, "{what}\n\n![{file}]({file})\n");
        }
    }

    fn summary(&self, md: &mut String) {
        let mut rows: Vec<(String, String)> = Vec::new();
        if let Some(c) = &self.ceiling {
            let best = c
                .publish
                .iter()
                .max_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
            rows.push((
                "ceiling (a): persistent confirmed publishes, inbox-sized".into(),
                best.map_or("-".into(), |b| {
                    format!(
                        "{} msg/s ({} in flight)",
                        thousands(b.msgs_per_s),
                        b.in_flight
                    )
                }),
            ));
        }
        if let Some(b) = self.ceiling_b() {
            rows.push((
                "ceiling (b): bare handler (publish + confirm, then 200), MSR".into(),
                format!("{} req/s", thousands(b)),
            ));
        }
        if let Some(m) = self.msr() {
            rows.push((
                "ingest MSR, whole pipeline running".into(),
                format!("{} req/s", thousands(m)),
            ));
        }
        if let (Some(m), Some(b)) = (self.msr(), self.ceiling_b())
            && b > 0.0
        {
            rows.push((
                "**MSR / ceiling (b)**".into(),
                format!("**{:.2}** (target ≥ 0.60)", m / b),
            ));
        }
        if let (Some(m), Some(c)) = (self.msr(), self.ceiling.as_ref())
            && c.publish_msgs_per_s > 0.0
        {
            rows.push((
                "MSR / ceiling (a)".into(),
                format!("{:.2}", m / c.publish_msgs_per_s),
            ));
        }
        if let Some(s) = self.ingest.as_ref().and_then(|i| i.saturation) {
            rows.push((
                "**batch calls per distinct id at saturation**".into(),
                format!(
                    "**{:.4}** ({:.1} ids per call; target ≤ 0.01)",
                    s.calls_per_distinct_id, s.ids_per_call
                ),
            ));
        }
        if let Some(nw) = &self.no_window
            && let (Some(w), Some(n)) = (&nw.windowed, &nw.no_window)
        {
            rows.push((
                format!(
                    "**windowed vs no-window batch calls per callback** (at {} req/s)",
                    thousands(nw.compare_rate)
                ),
                format!(
                    "**{:.4} vs {:.3}**: windowed makes {:.1} % of the calls",
                    w.calls_per_callback,
                    n.calls_per_callback,
                    nw.calls_ratio.unwrap_or(0.0) * 100.0
                ),
            ));
        }
        if let (Some(nw), Some(m)) = (&self.no_window, self.msr())
            && nw.search.msr > 0.0
        {
            rows.push((
                "windowed MSR / no-window MSR".into(),
                format!(
                    "{:.1} ({} vs {} req/s)",
                    m / nw.search.msr,
                    thousands(m),
                    thousands(nw.search.msr)
                ),
            ));
        }
        if let Some(s) = self.at_fraction(0.5) {
            rows.push((
                "**ack p99 at 50 % of MSR**".into(),
                format!("**{}** (target ≤ 50 ms)", ms(s.ack.p99_ms)),
            ));
        }
        if let Some(s) = self.at_fraction(0.9) {
            rows.push((
                "ack p99.9 at 90 % of MSR".into(),
                format!(
                    "{} (target < {} ms)",
                    ms(s.ack.p999_ms),
                    self.setup.answer_budget_ms
                ),
            ));
        }
        if let Some(e) = &self.end_to_end {
            rows.push((
                "end-to-end lag p50 / p99 at 50 % of MSR".into(),
                format!(
                    "{} / {} (target p99 ≤ {} ms)",
                    ms(e.lag.p50_ms),
                    ms(e.lag.p99_ms),
                    self.setup.max_wait_ms + 300
                ),
            ));
            rows.push((
                "batch calls per callback, skewed workload".into(),
                format!("{:.4} (target ≤ 0.05)", e.calls_per_callback),
            ));
        }
        if let Some(c) = self.ingest.as_ref().and_then(|i| i.cpu_per_1000) {
            rows.push((
                "relay CPU per 1,000 callbacks (pipeline included)".into(),
                format!(
                    "{:.3} s (broker {:.3} s, generator {:.3} s)",
                    c.relay_s, c.broker_s, c.bench_s
                ),
            ));
        }
        if let Some(i) = &self.ingest
            && i.cost.len() == 3
        {
            let cell = |f: fn(&CostRow) -> f64| {
                i.cost
                    .iter()
                    .map(|c| format!("{:.3}", f(c)))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            rows.push((
                "CPU s per 1,000 callbacks, bare handler / ingest-only relay / whole relay".into(),
                format!(
                    "server {}; broker {}",
                    cell(|c| c.server_s_per_1000),
                    cell(|c| c.broker_s_per_1000)
                ),
            ));
        }
        if let Some(s) = &self.steady {
            rows.push((
                "steady run: relay RSS after warm-up → end".into(),
                format!(
                    "{} → {} ({})",
                    mb(s.after_warmup.map(|p| p.rss_kb)),
                    mb(s.end.map(|p| p.rss_kb)),
                    s.rss_growth_pct.map_or("-".into(), |g| format!(
                        "{g:+.1} %; target ≤ {STEADY_GROWTH_LIMIT_PCT:.0} %"
                    ))
                ),
            ));
        }
        let _ = writeln!(md, "## Summary\n");
        table(
            md,
            &["figure", "value"],
            rows.into_iter().map(|(a, b)| vec![a, b]),
        );
    }

    fn targets_table(&self, md: &mut String) {
        let _ = writeln!(md, "## Targets\n");
        table(
            md,
            &["target", "measured", "met"],
            self.targets.iter().map(|t| {
                vec![
                    t.target.clone(),
                    t.measured.clone(),
                    match t.met {
                        Some(true) => "yes".into(),
                        Some(false) => "**no**".into(),
                        None if self.quick() => "not judged (quick)".into(),
                        None => "-".into(),
                    },
                ]
            }),
        );
    }

    fn machine_section(&self, md: &mut String) {
        let m = &self.machine;
        let s = &self.setup;
        let _ = writeln!(md, "## Machine and method\n");
        table(
            md,
            &["", ""],
            [
                ("cores", m.cores.to_string()),
                ("CPU", m.cpu_model.clone()),
                ("RAM", format!("{} MB", thousands(m.ram_mb as f64))),
                ("kernel", m.kernel.clone()),
                ("RabbitMQ", m.rabbitmq_version.clone()),
                ("Erlang/OTP", m.erlang_version.clone()),
                ("load average at start", m.load_average_at_start.clone()),
                ("build", m.build.to_owned()),
                ("processes", s.processes.clone()),
                (
                    "workload",
                    format!(
                        "Zipf-like choice among {} customers; each callback changes its customer in the simulator first, then is sealed live (own timestamp, nonce, signature, URL, body)",
                        thousands(s.customers as f64)
                    ),
                ),
                (
                    "generator",
                    format!(
                        "open loop: request i is due at i / rate whatever came back; latency runs from the due time; at most {} in flight, {} ms timeout",
                        s.generator_max_in_flight, s.request_timeout_ms
                    ),
                ),
                (
                    "relay settings",
                    format!(
                        "defaults (answer_budget_ms {}, window max_ids {} / quiet_ms {} / max_wait_ms {}, {} inbox), except the rate limits below{}",
                        s.answer_budget_ms,
                        s.max_ids,
                        s.quiet_ms,
                        s.max_wait_ms,
                        s.inbox_queue_type,
                        if s.server_env.is_empty() {
                            String::new()
                        } else {
                            format!(" and, for every server under test, `{}`", s.server_env.join("`, `"))
                        }
                    ),
                ),
                (
                    "rate limits raised for the bench",
                    format!(
                        "relay `WEILING_RELAY__WEILING__RATE_LIMIT_PER_MINUTE={}`, simulator `set_rate_limit_per_minute({})` (defaults: 500/min each, which would cap enrichment at about 8 calls/s)",
                        s.relay_rate_limit_per_minute, s.simulator_rate_limit_per_minute
                    ),
                ),
                (
                    "step rule",
                    format!(
                        "a rate passes when every request got `success`, p99 of the time to success ≤ {} ms, the generator achieved ≥ 95 % of the rate and (relay) the inbox backlog at the end of the step is at most half a second of arrivals; {:.1} s per step",
                        s.answer_budget_ms, s.step_s
                    ),
                ),
            ]
            .into_iter()
            .map(|(a, b)| vec![a.to_owned(), b]),
        );
    }

    fn ceiling_section(&self, md: &mut String) {
        let Some(c) = &self.ceiling else { return };
        let _ = writeln!(md, "## 1. Ceiling\n");
        let _ = writeln!(
            md,
            "(a) Persistent, mandatory, confirmed publishes of the relay's own inbox message (built by its verifier and persister code) through its own publisher, to a durable queue of the same type, with a fixed number in flight:\n"
        );
        table(
            md,
            &["in flight", "confirmed", "failed", "seconds", "msg/s"],
            c.publish.iter().map(|p| {
                vec![
                    p.in_flight.to_string(),
                    p.confirmed.to_string(),
                    p.failed.to_string(),
                    format!("{:.1}", p.seconds),
                    thousands(p.msgs_per_s),
                ]
            }),
        );
        if let Some(b) = &c.bare_handler {
            let _ = writeln!(
                md,
                "(b) A bare actix-web handler in its own process (same worker count, same publisher, same queue type) that publishes the request body and answers 200 after the confirm; no verification, no window, no pipeline. Same generator, same requests:\n"
            );
            search_section(md, b, false);
        }
    }

    fn ingest_section(&self, md: &mut String) {
        let Some(i) = &self.ingest else { return };
        let _ = writeln!(md, "## 2. Ingest\n");
        let _ = writeln!(
            md,
            "The relay (`weiling-relay serve`, a child process) with its whole pipeline consuming the inbox, enriching against the simulator and publishing records to a consumer queue.\n"
        );
        search_section(md, &i.search, true);
        if !i.at_fraction.is_empty() {
            let _ = writeln!(
                md,
                "Ack latency (time to `success`) at fractions of the MSR:\n"
            );
            steps_table(
                md,
                &i.at_fraction
                    .iter()
                    .map(|f| (format!("{:.0} %", f.fraction_of_msr * 100.0), &f.step))
                    .collect::<Vec<_>>(),
                true,
            );
        }
        if let Some(c) = i.cpu_per_1000 {
            let _ = writeln!(
                md,
                "CPU per 1,000 callbacks at {} req/s: relay process {:.3} s (receive, verify, persist, and the pipeline's share), broker {:.3} s, bench process {:.3} s (generator, simulator, records consumer).\n",
                thousands(c.at_rate),
                c.relay_s,
                c.broker_s,
                c.bench_s
            );
        }
        if !i.cost.is_empty() {
            let _ = writeln!(
                md,
                "Where the CPU goes: the same rate against three servers in turn, CPU seconds per 1,000 callbacks (the differences are what verification with the replay cache, and then the pipeline, cost):\n"
            );
            table(
                md,
                &[
                    "server",
                    "rate",
                    "callbacks",
                    "errors",
                    "server CPU s",
                    "broker CPU s",
                    "bench CPU s",
                    "ack p50 / p99",
                    "machine busy",
                ],
                i.cost.iter().map(|c| {
                    vec![
                        c.server.clone(),
                        thousands(c.rate),
                        c.callbacks.to_string(),
                        c.errors.to_string(),
                        format!("{:.3}", c.server_s_per_1000),
                        format!("{:.3}", c.broker_s_per_1000),
                        format!("{:.3}", c.bench_s_per_1000),
                        format!("{} / {}", ms(c.ack.p50_ms), ms(c.ack.p99_ms)),
                        format!("{:.0} %", c.machine_busy_pct),
                    ]
                }),
            );
        }
        if let Some(s) = i.saturation {
            let _ = writeln!(
                md,
                "Coalescing at the highest passing rate ({} req/s): {} callbacks about {} distinct customers made {} batch calls asking for {} ids: {:.4} calls per distinct id, {:.1} ids per call.\n",
                thousands(s.rate),
                s.callbacks,
                s.distinct_ids,
                s.batch_calls,
                s.ids_requested,
                s.calls_per_distinct_id,
                s.ids_per_call
            );
        }
    }

    fn e2e_section(&self, md: &mut String) {
        let Some(e) = &self.end_to_end else { return };
        let _ = writeln!(md, "## 3. End to end\n");
        e2e_table(md, e);
    }

    fn no_window_section(&self, md: &mut String) {
        let Some(n) = &self.no_window else { return };
        let _ = writeln!(
            md,
            "## 4. No-window baseline (`max_ids = 1`, `quiet_ms = 0`)\n"
        );
        let _ = writeln!(
            md,
            "A second relay process with one Weiling call per id. Its MSR uses the same rule, so the pipeline must keep up with the arrivals:\n"
        );
        search_section(md, &n.search, true);
        let _ = writeln!(
            md,
            "Both relays on the same skewed workload at {} req/s:\n",
            thousands(n.compare_rate)
        );
        if let Some(w) = &n.windowed {
            let _ = writeln!(md, "Windowed:\n");
            e2e_table(md, w);
        }
        if let Some(nw) = &n.no_window {
            let _ = writeln!(md, "No window:\n");
            e2e_table(md, nw);
        }
    }

    fn steady_section(&self, md: &mut String) {
        let Some(s) = &self.steady else { return };
        let _ = writeln!(md, "## 5. Steady\n");
        let _ = writeln!(
            md,
            "A fresh relay process at {} req/s for {:.0} s of warm-up then {:.0} s measured. The warm-up lasts until the replay cache (one entry per callback, bounded by `replay_cache_capacity` and `replay_window_s`) has reached its steady size, between 1 and 10 minutes. RSS and descriptors are the relay process's own (`/proc/<pid>/status`, `/proc/<pid>/fd`).\n",
            thousands(s.rate),
            s.warmup_s,
            s.measured_s
        );
        let point = |p: Option<ProcSample>| {
            p.map_or_else(
                || vec!["-".into(), "-".into(), "-".into()],
                |p| {
                    vec![
                        mb(Some(p.rss_kb)),
                        p.open_fds.to_string(),
                        format!("{:.1}", p.cpu_s),
                    ]
                },
            )
        };
        table(
            md,
            &["when", "RSS", "open fds", "CPU s"],
            [
                ("before load", s.before_load),
                ("after warm-up", s.after_warmup),
                ("end", s.end),
            ]
            .into_iter()
            .map(|(when, p)| {
                let mut row = vec![when.to_owned()];
                row.extend(point(p));
                row
            }),
        );
        let _ = writeln!(
            md,
            "RSS growth after warm-up: {}. Whole run: {} sent, {} success, {} errors; ack p50 / p99 / p99.9 {} / {} / {}.\n",
            s.rss_growth_pct
                .map_or("-".into(), |g| format!("{g:+.1} %")),
            s.step.sent,
            s.step.ok,
            s.step.errors.values().sum::<u64>(),
            ms(s.step.ack.p50_ms),
            ms(s.step.ack.p99_ms),
            ms(s.step.ack.p999_ms)
        );
        if !s.series.is_empty() {
            let _ = writeln!(
                md,
                "<details><summary>RSS and descriptors over time</summary>\n"
            );
            table(
                md,
                &["t (s)", "RSS", "open fds", "CPU s"],
                s.series.iter().map(|p| {
                    vec![
                        format!("{:.0}", p.t_s),
                        mb(Some(p.rss_kb)),
                        p.open_fds.to_string(),
                        format!("{:.1}", p.cpu_s),
                    ]
                }),
            );
            let _ = writeln!(md, "</details>\n");
        }
    }
}

fn search_section(md: &mut String, s: &Search, relay: bool) {
    steps_table(
        md,
        &s.steps
            .iter()
            .map(|step| (thousands(step.rate), step))
            .collect::<Vec<_>>(),
        relay,
    );
    let _ = writeln!(
        md,
        "MSR **{} req/s**; {}.\n",
        thousands(s.msr),
        match s.first_failure {
            Some(f) => format!(
                "the lowest failing rate, {} req/s, failed because: {}",
                thousands(f),
                s.limited_by
            ),
            None => "no rate tried failed, so the MSR is at least this".into(),
        }
    );
}

fn steps_table(md: &mut String, steps: &[(String, &StepReport)], relay: bool) {
    let mut header = vec![
        "rate",
        "sent",
        "success",
        "errors",
        "generator /s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "CPU server / broker / bench (cores)",
        "machine busy",
    ];
    if relay {
        header.extend(["inbox left", "calls", "records"]);
    }
    header.push("verdict");
    table(
        md,
        &header,
        steps.iter().map(|(label, s)| {
            let mut row = vec![
                label.clone(),
                s.sent.to_string(),
                s.ok.to_string(),
                s.errors.values().sum::<u64>().to_string(),
                thousands(s.generator_rate),
                ms(s.ack.p50_ms),
                ms(s.ack.p99_ms),
                ms(s.ack.p999_ms),
                ms(s.ack.max_ms),
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    s.cpu.server_cores, s.cpu.broker_cores, s.cpu.bench_cores
                ),
                format!("{:.0} %", s.cpu.machine_busy_pct),
            ];
            if relay {
                row.push(s.inbox_backlog.map_or("-".into(), |b| b.to_string()));
                row.push(s.batch_calls.map_or("-".into(), |b| b.to_string()));
                row.push(s.records.map_or("-".into(), |b| b.to_string()));
            }
            row.push(if s.passed {
                "pass".into()
            } else {
                format!("fail: {}", s.verdict)
            });
            row
        }),
    );
}

fn e2e_table(md: &mut String, e: &EndToEnd) {
    table(
        md,
        &["figure", "value"],
        [
            ("relay", e.relay.clone()),
            ("rate", format!("{} req/s", thousands(e.rate))),
            (
                "callbacks sent / success / errors",
                format!(
                    "{} / {} / {}",
                    e.step.sent,
                    e.step.ok,
                    e.step.errors.values().sum::<u64>()
                ),
            ),
            (
                "ack p50 / p99",
                format!("{} / {}", ms(e.step.ack.p50_ms), ms(e.step.ack.p99_ms)),
            ),
            (
                "lag callback received → record delivered, p50 / p99 / max",
                format!(
                    "{} / {} / {} ({} records)",
                    ms(e.lag.p50_ms),
                    ms(e.lag.p99_ms),
                    ms(e.lag.max_ms),
                    e.lag_samples
                ),
            ),
            ("Weiling batch calls", e.batch_calls.to_string()),
            (
                "batch calls per callback",
                format!("{:.4}", e.calls_per_callback),
            ),
            ("ids per call", format!("{:.1}", e.ids_per_call)),
            (
                "records per callback",
                format!("{:.3}", e.records_per_callback),
            ),
            (
                "customers changed / latest state delivered",
                format!("{} / {}", e.customers_changed, e.latest_state_seen),
            ),
            (
                "settled",
                format!(
                    "{} after {:.1} s",
                    if e.settled { "yes" } else { "**no**" },
                    e.settle_seconds
                ),
            ),
        ]
        .into_iter()
        .map(|(a, b)| vec![a.to_owned(), b]),
    );
}

fn table(md: &mut String, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(
        md,
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    let _ = writeln!(md);
}

pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or("-".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0))
}

/// `12345.6` → `12,346`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM` (UTC), without a date crate.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(thousands(12345.6), "12,346");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(ms(1.234), "1.2 ms");
        assert_eq!(ms(812.4), "812 ms");
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_772_323_200), "2026-03-01 00:00");
    }
}
