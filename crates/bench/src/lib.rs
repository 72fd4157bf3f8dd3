//! `weiling-relay bench`: measures the relay and, in the same run on the same machine, the ceiling it
//! cannot beat (RabbitMQ's persistent confirmed publish rate, and a bare publish-and-answer handler),
//! then writes `DIR/results.md` and `DIR/results.json`. See `bench/README.md` for how to read them.
//!
//! Layout: this process runs the Weiling simulator, the open-loop generator ([`load`]) and a records
//! consumer ([`records`]); the servers under test are child processes of this same binary ([`child`]),
//! so their memory, descriptors and CPU are read from `/proc` without the generator in them.

mod ceiling;
mod charts;
mod child;
mod load;
mod procfs;
mod records;
mod report;
mod scale_out;
mod workload;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use child::Server;
use load::{Generator, Latency, Run};
use procfs::{Machine, ProcSample};
use records::Records;
use relay::amqp::Publisher;
use relay::config::{ConfigError, Settings};
use relay_harness::scenario::{self, WeilingApp};
use report::{
    Ceiling, CostRow, CpuPer1000, CpuShare, EndToEnd, FractionRun, Ingest, NoWindow, ProcPoint,
    Results, Saturation, Search, Setup, Steady, StepReport, thousands,
};
use weiling_sim::{SimConfig, Simulator};
use workload::Workload;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Directory for results.md and results.json (created if missing).
    #[arg(long, default_value = "bench")]
    pub out: PathBuf,
    /// About a minute: every scenario, shortened, for CI. Judges no speed.
    #[arg(long)]
    pub quick: bool,
    /// Only the scale-out scenario: enrichment with 1, 2 and 3 relays on one partitioned inbox while
    /// Weiling answers in 200 ms; writes scale-out.md and scale-out.json (a few minutes).
    #[arg(long)]
    pub scale_out: bool,
    /// Only the steady run, at this rate (callbacks/s), with a fresh relay: for memory work, where
    /// the searches before it would only delay the answer. Writes steady.json.
    #[arg(long, value_name = "RATE", conflicts_with = "scale_out")]
    pub steady_only: Option<f64>,
    /// Only the CPU comparison at this rate (callbacks/s): the bare handler, an ingest-only relay and
    /// the whole relay in turn, each for the full run's step length; prints the CPU per 1,000
    /// callbacks and the relay's ratio to the bare handler (about two minutes).
    #[arg(long, value_name = "RATE", conflicts_with_all = ["steady_only", "scale_out"])]
    pub cost_only: Option<f64>,
    /// With `--steady-only`: minutes measured after the warm-up (default: the full run's 20).
    #[arg(long, value_name = "MINUTES", requires = "steady_only")]
    pub steady_minutes: Option<f64>,
    /// A setting for every server under test (each relay and the bare handler, which reads the same
    /// settings), as the environment variable that sets it, e.g. `--server-env
    /// WEILING_RELAY__SERVER__HEAP_TRIM_INTERVAL_MS=10000`. Repeatable. For experiments against the
    /// defaults: a scenario's own settings (an ingest-only relay, the no-window relay) still win, and
    /// results.md lists what was set.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub server_env: Vec<(String, String)>,
    /// Internal: serve the bare ceiling handler on this address (the bench starts it as a child).
    #[arg(long, hide = true)]
    pub ceiling_server: Option<String>,
}

fn parse_setting(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {pair:?}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Key(#[from] relay::verify::cipher::KeyError),
    #[error("{0}")]
    Child(String),
    #[error("the broker did not answer within {secs} s ({what})")]
    Timeout { secs: u64, what: &'static str },
    #[error("results: {0}")]
    Json(#[from] serde_json::Error),
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Chart(#[from] charts::ChartError),
}

/// Customers of the skewed workload (the 10,000).
const CUSTOMERS: usize = 10_000;
/// Far above any rate the bench reaches, so neither limiter shapes the figures.
const RELAY_RATE_LIMIT_PER_MINUTE: u32 = 6_000_000;
const SIM_RATE_LIMIT_PER_MINUTE: u32 = 60_000_000;
/// Above the relay's `max_in_flight` (1024), so the relay's own 429s show instead of being hidden.
const GENERATOR_MAX_IN_FLIGHT: usize = 4096;
/// Past the answer budget, so a late answer is measured rather than cut off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const AMQP_TIMEOUT: Duration = Duration::from_secs(30);
/// The steady run's rate is half the MSR, but never below this in a full run.
const STEADY_MIN_RATE: f64 = 1000.0;
const COOL_DOWN: Duration = Duration::from_millis(700);

/// Durations and step counts: the full run and the one-minute `--quick` one.
struct Plan {
    quick: bool,
    step: Duration,
    factor: f64,
    max_steps: usize,
    bisections: usize,
    probe: Duration,
    probe_in_flight: &'static [usize],
    latency_run: Duration,
    e2e_run: Duration,
    settle_limit: Duration,
    drain_limit: Duration,
    /// Pause after a failing step, once the inbox drained.
    recovery: Duration,
    steady_measure: Duration,
    sample_every: Duration,
    progress_every: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                step: Duration::from_secs(1),
                factor: 2.0,
                max_steps: 3,
                bisections: 0,
                probe: Duration::from_millis(800),
                probe_in_flight: &[1, 1024],
                latency_run: Duration::from_secs(1),
                e2e_run: Duration::from_millis(2500),
                settle_limit: Duration::from_secs(30),
                drain_limit: Duration::from_secs(8),
                recovery: Duration::from_secs(2),
                steady_measure: Duration::from_secs(4),
                sample_every: Duration::from_secs(1),
                progress_every: Duration::from_secs(5),
            }
        } else {
            Plan {
                quick,
                step: Duration::from_secs(10),
                factor: 1.5,
                max_steps: 12,
                bisections: 3,
                probe: Duration::from_secs(4),
                probe_in_flight: &[1, 16, 256, 1024, 4096],
                latency_run: Duration::from_secs(20),
                e2e_run: Duration::from_secs(30),
                settle_limit: Duration::from_secs(60),
                drain_limit: Duration::from_secs(90),
                recovery: Duration::from_secs(10),
                steady_measure: Duration::from_secs(1200),
                sample_every: Duration::from_secs(30),
                progress_every: Duration::from_secs(60),
            }
        }
    }

    /// Warm-up of the steady run: until the replay cache holds its steady number of entries (the
    /// smaller of its capacity and the callbacks of one replay window), between 1 and 10 minutes.
    /// Measuring earlier would report the cache filling up as growth.
    fn warmup(&self, settings: &Settings, rate: f64) -> Duration {
        if self.quick {
            return Duration::from_secs(2);
        }
        let window_entries = rate * settings.security.replay_window_s as f64;
        let entries = window_entries.min(settings.security.replay_cache_capacity as f64);
        Duration::from_secs_f64((entries / rate.max(1.0)).clamp(60.0, 600.0))
    }
}

/// Runs the bench (or, with `--ceiling-server`, the bare handler child). `Ok(false)` means it ran but
/// found a problem other than speed (acknowledged changes never delivered, no rate that passed);
/// speed alone never fails it.
pub async fn run(args: BenchArgs) -> Result<bool, BenchError> {
    if let Some(listen) = &args.ceiling_server {
        ceiling::serve(listen).await?;
        return Ok(true);
    }
    let started = Instant::now();
    let plan = Plan::new(args.quick);
    std::fs::create_dir_all(&args.out)?;
    let mut bench = Bench::start(&args, plan).await?;
    if args.scale_out {
        return scale_out_only(&mut bench, &args, started).await;
    }
    if let Some(rate) = args.steady_only {
        return steady_only(&mut bench, &args, rate).await;
    }
    if let Some(rate) = args.cost_only {
        return cost_only(&mut bench, rate).await;
    }
    let outcome = until_interrupted(bench.scenarios()).await;
    if let Err(error) = &outcome {
        bench
            .results
            .problems
            .push(format!("the bench stopped: {error}"));
    }
    bench.results.run_seconds = started.elapsed().as_secs_f64();
    bench.results.judge();
    let written = bench.write();
    bench.finish().await;
    outcome?;
    written?;
    let ok = bench.results.problems.is_empty();
    println!(
        "\nbench finished in {:.0} s: {} and {}",
        started.elapsed().as_secs_f64(),
        args.out.join("results.md").display(),
        args.out.join("results.json").display()
    );
    for target in &bench.results.targets {
        let status = match target.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        println!("  {status:<7} {}: {}", target.target, target.measured);
    }
    for problem in &bench.results.problems {
        println!("  PROBLEM {problem}");
    }
    Ok(ok)
}

/// Runs `scenario` unless Ctrl-C or SIGTERM comes first: the scenario is then dropped, which kills
/// its child servers, and the caller still deletes the queues and exchanges.
async fn until_interrupted<T>(
    scenario: impl std::future::Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    tokio::select! {
        outcome = scenario => outcome,
        () = ceiling::interrupted() => Err(BenchError::Interrupted),
    }
}

/// `bench --steady-only RATE`: the steady run alone, its figures printed and kept in steady.json.
async fn steady_only(bench: &mut Bench, args: &BenchArgs, rate: f64) -> Result<bool, BenchError> {
    if let Some(minutes) = args.steady_minutes {
        bench.plan.steady_measure = Duration::from_secs_f64(minutes.max(0.0) * 60.0);
    }
    let outcome = until_interrupted(bench.steady_at(rate)).await;
    bench.finish().await;
    outcome?;
    let path = args.out.join("steady.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&bench.results.steady)? + "\n",
    )?;
    println!("steady run written to {}", path.display());
    Ok(bench
        .results
        .steady
        .as_ref()
        .is_some_and(|s| s.step.error_free()))
}

/// `bench --cost-only RATE`: where the CPU goes at one rate, printed.
async fn cost_only(bench: &mut Bench, rate: f64) -> Result<bool, BenchError> {
    let outcome = until_interrupted(bench.cost_alone(rate)).await;
    bench.finish().await;
    let rows = outcome?;
    if let (Some(bare), Some(whole)) = (rows.first(), rows.last()) {
        println!(
            "\nrelay CPU per 1,000 callbacks / bare handler's: {:.3} / {:.3} s = {:.2} ×",
            whole.server_s_per_1000,
            bare.server_s_per_1000,
            whole.server_s_per_1000 / bare.server_s_per_1000.max(f64::EPSILON)
        );
    }
    Ok(rows.iter().all(|row| row.errors == 0))
}

/// `bench --scale-out`: the one scenario, its report, and the clean-up.
async fn scale_out_only(
    bench: &mut Bench,
    args: &BenchArgs,
    started: Instant,
) -> Result<bool, BenchError> {
    let outcome = until_interrupted(bench.scale_out()).await;
    bench.finish().await;
    let result = outcome?;
    let m = &bench.results.machine;
    let machine = format!(
        "{} cores ({}), {} MB RAM, RabbitMQ {}, {}",
        m.cores,
        m.cpu_model,
        thousands(m.ram_mb as f64),
        m.rabbitmq_version,
        m.build
    );
    let command = format!(
        "weiling-relay bench --scale-out --out {}{}",
        args.out.display(),
        if args.quick { " --quick" } else { "" }
    );
    std::fs::write(
        args.out.join("scale-out.json"),
        serde_json::to_string_pretty(&result)? + "\n",
    )?;
    std::fs::write(
        args.out.join("scale-out.md"),
        result.markdown(&command, &machine),
    )?;
    println!(
        "\nscale-out finished in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        args.out.join("scale-out.md").display()
    );
    Ok(result.runs.iter().all(|run| run.ids_delivered > 0))
}

/// A server under test and how to tell whether it kept up.
struct Target<'a> {
    server: &'a Server,
    settings: &'a Settings,
    /// The relay has a pipeline to watch; the bare handler's queue is only purged.
    relay: bool,
    name: &'static str,
}

/// CPU counters at one moment.
struct Meter {
    at: Instant,
    server: Option<ProcSample>,
    broker: Option<ProcSample>,
    own: Option<ProcSample>,
    machine: Option<(u64, u64)>,
}

struct Bench {
    plan: Plan,
    out: PathBuf,
    amqp_url: String,
    run_id: String,
    app: WeilingApp,
    sim: Simulator,
    sim_server: actix_web::dev::ServerHandle,
    sim_url: String,
    generator: Generator,
    connection: Connection,
    channel: Channel,
    records_queue: String,
    records: Option<Records>,
    /// Every topology the bench created, to delete at the end.
    declared: Vec<Settings>,
    /// The environment of each relay or bare handler, by inbox queue.
    envs: HashMap<String, HashMap<String, String>>,
    /// The settings of the ceiling's queue, for the bare handler's second run.
    ceiling_settings: Option<Settings>,
    /// `--server-env`: applied to every server under test before a scenario's own settings.
    server_env: Vec<(String, String)>,
    broker_pid: Option<u32>,
    ticks: f64,
    results: Results,
}

impl Bench {
    async fn start(args: &BenchArgs, plan: Plan) -> Result<Bench, BenchError> {
        let amqp_url = std::env::var("WEILING_RELAY__AMQP__URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        println!(
            "weiling-relay bench ({}): reading the machine and the broker …",
            if plan.quick { "quick" } else { "full" }
        );
        for (key, value) in &args.server_env {
            println!("      every server under test with {key}={value}");
        }
        let machine = Machine::read().await;
        let broker_pid = procfs::broker_pid().await;
        let ticks = procfs::ticks_per_second();
        println!(
            "  {} cores, {} MB RAM, RabbitMQ {}, load average {}{}",
            machine.cores,
            thousands(machine.ram_mb as f64),
            machine.rabbitmq_version,
            machine.load_average_at_start,
            if cfg!(debug_assertions) {
                " — DEBUG BUILD: figures are far below release"
            } else {
                ""
            }
        );

        let run_id = scenario::new_run_id();
        let app = WeilingApp::generate(&run_id);
        let keys = Arc::new(app.keys()?);
        let sim = Simulator::new(SimConfig::default());
        sim.add_app(&app.app_id, &app.app_secret);
        sim.set_rate_limit_per_minute(SIM_RATE_LIMIT_PER_MINUTE);
        let sim_listener = TcpListener::bind("127.0.0.1:0")?;
        let sim_url = format!("http://{}", sim_listener.local_addr()?);
        let sim_server = sim.serve(sim_listener)?;
        let sim_handle = sim_server.handle();
        tokio::spawn(sim_server);
        let workload = Arc::new(Workload::new(sim.clone(), keys, CUSTOMERS));
        let generator = Generator::new(workload, REQUEST_TIMEOUT, GENERATOR_MAX_IN_FLIGHT)?;

        let connection = within(
            "connect",
            Connection::connect(&amqp_url, ConnectionProperties::default()),
        )
        .await?;
        let channel = within("channel", connection.create_channel()).await?;
        let records_queue = format!("bench-{run_id}.records");
        within(
            "declare the records queue",
            channel.queue_declare(
                records_queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let records = within("consume", Records::start(&channel, &records_queue)).await?;

        let mut defaults_env = scenario::relay_env("bench-defaults", &amqp_url, &sim_url, &app);
        defaults_env.extend(args.server_env.iter().cloned());
        let defaults = Settings::load(None, &defaults_env)?;
        let command = format!(
            "weiling-relay bench --out {}{}",
            args.out.display(),
            if plan.quick { " --quick" } else { "" }
        );
        let results = Results {
            schema: "weiling-relay.bench.v1",
            mode: if plan.quick { "quick" } else { "full" },
            command,
            started_utc: report::utc(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
            run_seconds: 0.0,
            machine,
            setup: Setup {
                customers: CUSTOMERS,
                answer_budget_ms: defaults.server.answer_budget_ms,
                max_ids: defaults.window.max_ids,
                quiet_ms: defaults.window.quiet_ms,
                max_wait_ms: defaults.window.max_wait_ms,
                inbox_queue_type: defaults.amqp.inbox_queue_type.as_str().to_owned(),
                server_env: args
                    .server_env
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect(),
                relay_rate_limit_per_minute: RELAY_RATE_LIMIT_PER_MINUTE,
                simulator_rate_limit_per_minute: SIM_RATE_LIMIT_PER_MINUTE,
                step_s: plan.step.as_secs_f64(),
                generator_max_in_flight: GENERATOR_MAX_IN_FLIGHT,
                request_timeout_ms: u64::try_from(REQUEST_TIMEOUT.as_millis()).unwrap_or(0),
                processes: "this process: generator, Weiling simulator, records consumer; each server under test (relay, bare handler) is a child process of the same binary, and its RSS, descriptors and CPU are its own; RabbitMQ is the machine's node".into(),
            },
            ceiling: None,
            ingest: None,
            end_to_end: None,
            no_window: None,
            steady: None,
            targets: Vec::new(),
            problems: Vec::new(),
            charts: Vec::new(),
        };
        Ok(Bench {
            plan,
            out: args.out.clone(),
            amqp_url,
            run_id,
            app,
            sim,
            sim_server: sim_handle,
            sim_url,
            generator,
            connection,
            channel,
            records_queue,
            records: Some(records),
            declared: Vec::new(),
            envs: HashMap::new(),
            ceiling_settings: None,
            server_env: args.server_env.clone(),
            broker_pid,
            ticks,
            results,
        })
    }

    async fn scenarios(&mut self) -> Result<(), BenchError> {
        self.ceilings().await?;
        self.write()?;
        let windowed = self.settings("win", &[])?;
        let relay = self.start_relay("relay (windowed)", &windowed).await?;
        let outcome = self.ingest_and_e2e(&relay, &windowed).await;
        self.write()?;
        if let Err(error) = outcome {
            relay.stop().await;
            return Err(error);
        }
        let outcome = self.no_window(&relay, &windowed).await;
        relay.stop().await;
        outcome?;
        self.write()?;
        self.steady().await?;
        Ok(())
    }

    /// The relay's settings under a unique prefix, with the rate limit raised and `extra` applied;
    /// the environment that produced them is kept to start a child with exactly these settings.
    fn settings(&mut self, tag: &str, extra: &[(&str, &str)]) -> Result<Settings, BenchError> {
        let prefix = format!("bench-{}-{tag}", self.run_id);
        let mut env = scenario::relay_env(&prefix, &self.amqp_url, &self.sim_url, &self.app);
        env.insert(
            "WEILING_RELAY__SERVER__LISTEN".into(),
            child::free_address()?,
        );
        env.insert(
            "WEILING_RELAY__WEILING__RATE_LIMIT_PER_MINUTE".into(),
            RELAY_RATE_LIMIT_PER_MINUTE.to_string(),
        );
        env.extend(self.server_env.iter().cloned());
        for (key, value) in extra {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        let settings = Settings::load(None, &env)?;
        self.envs.insert(settings.amqp.inbox_queue.clone(), env);
        self.declared.push(settings.clone());
        Ok(settings)
    }

    fn env_of(&self, settings: &Settings) -> HashMap<String, String> {
        self.envs
            .get(&settings.amqp.inbox_queue)
            .cloned()
            .unwrap_or_default()
    }

    /// Declares the relay's topology, binds the records queue to its customers exchange, starts it.
    async fn start_relay(&mut self, name: &str, settings: &Settings) -> Result<Server, BenchError> {
        self.declare(settings).await?;
        within(
            "bind the records queue",
            self.channel.queue_bind(
                self.records_queue.as_str().into(),
                settings.amqp.customers_exchange.as_str().into(),
                "customer.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let mut server = Server::relay(name, &self.env_of(settings), self.ticks)?;
        server.wait_ready().await?;
        Ok(server)
    }

    async fn declare(&self, settings: &Settings) -> Result<(), BenchError> {
        within(
            "declare the topology",
            relay::amqp::topology::declare(&self.connection, &settings.amqp),
        )
        .await?;
        Ok(())
    }

    // ---------------------------------------------------------------- 1. ceiling

    async fn ceilings(&mut self) -> Result<(), BenchError> {
        println!("\n[1/5] ceiling (a): persistent confirmed publishes of an inbox message");
        let settings = self.settings("ceil", &[])?;
        self.declare(&settings).await?;
        let keys = self.app.keys()?;
        let event = self.generator.workload().next_event().1;
        let template = ceiling::inbox_template(&settings, &keys, &event).ok_or_else(|| {
            BenchError::Child("could not build an inbox message with the relay's code".into())
        })?;
        let abort = CancellationToken::new();
        let (publisher, link) = Publisher::spawn(
            settings.amqp.clone(),
            "weiling-relay bench probe".into(),
            abort.clone(),
        );
        ceiling::wait_link(&publisher).await?;
        let mut probes = Vec::new();
        for &in_flight in self.plan.probe_in_flight {
            let probe = ceiling::probe(&publisher, &template, in_flight, self.plan.probe).await;
            println!(
                "      {in_flight:>5} in flight: {:>7} msg/s ({} confirmed, {} failed; body {} bytes)",
                thousands(probe.msgs_per_s),
                probe.confirmed,
                probe.failed,
                template.body.len()
            );
            probes.push(probe);
            self.purge(&settings.amqp.inbox_queue).await?;
        }
        drop(publisher);
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), link).await;
        let best = probes.iter().map(|p| p.msgs_per_s).fold(0.0, f64::max);
        self.results.ceiling = Some(Ceiling {
            publish: probes,
            publish_msgs_per_s: best,
            bare_handler: None,
        });

        println!("\n[1/5] ceiling (b): bare handler, publish + confirm, then 200 (child process)");
        let mut server = Server::ceiling("bare handler", &self.env_of(&settings), self.ticks)?;
        server.wait_ready().await?;
        let target = Target {
            server: &server,
            settings: &settings,
            relay: false,
            name: "bare",
        };
        let start = if self.plan.quick { 1000.0 } else { 2000.0 };
        let search = self.search(&target, start).await;
        server.stop().await;
        self.ceiling_settings = Some(settings);
        let search = search?;
        if let Some(ceiling) = &mut self.results.ceiling {
            ceiling.bare_handler = Some(search);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- 2. ingest, 3. end to end

    async fn ingest_and_e2e(
        &mut self,
        relay: &Server,
        settings: &Settings,
    ) -> Result<(), BenchError> {
        println!("\n[2/5] ingest: stepped rates against the relay (child process, pipeline on)");
        let target = Target {
            server: relay,
            settings,
            relay: true,
            name: "relay",
        };
        let ceiling_b = self
            .results
            .ceiling
            .as_ref()
            .and_then(|c| c.bare_handler.as_ref())
            .map_or(1000.0, |s| s.msr);
        // From a quarter of the ceiling upwards: an overloaded relay needs a while to recover, so a
        // search that starts too high and steps down measures the hangover, not the rate.
        let search = self.search(&target, round_rate(ceiling_b * 0.25)).await?;
        let msr = search.msr;
        let saturation = search
            .steps
            .iter()
            .filter(|s| s.passed)
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .and_then(|s| {
                let calls = s.batch_calls?;
                let ids = s.ids_requested?;
                Some(Saturation {
                    rate: s.rate,
                    callbacks: s.ok,
                    distinct_ids: s.distinct_ids,
                    batch_calls: calls,
                    ids_requested: ids,
                    calls_per_distinct_id: calls as f64 / s.distinct_ids.max(1) as f64,
                    ids_per_call: ids as f64 / calls.max(1) as f64,
                })
            });
        self.results.ingest = Some(Ingest {
            search,
            at_fraction: Vec::new(),
            cpu_per_1000: None,
            cost: Vec::new(),
            saturation,
        });
        if msr <= 0.0 {
            self.results
                .problems
                .push("no ingest rate passed; the later scenarios were skipped".into());
            return Ok(());
        }
        for fraction in [0.25, 0.5, 0.9] {
            let rate = round_rate(msr * fraction);
            let (step, _) = self
                .step(&target, rate, self.plan.latency_run, None)
                .await?;
            print_step(&format!("{:.0} % of MSR", fraction * 100.0), &step);
            if (fraction - 0.5).abs() < 1e-9 && step.ok > 0 {
                let per = |s: f64| s / step.ok as f64 * 1000.0;
                if let Some(ingest) = &mut self.results.ingest {
                    ingest.cpu_per_1000 = Some(CpuPer1000 {
                        at_rate: rate,
                        relay_s: per(step.cpu.server_cpu_s),
                        broker_s: per(step.cpu.broker_cpu_s),
                        bench_s: per(step.cpu.bench_cpu_s),
                    });
                }
            }
            if let Some(ingest) = &mut self.results.ingest {
                ingest.at_fraction.push(FractionRun {
                    fraction_of_msr: fraction,
                    step,
                });
            }
        }

        println!("\n[3/5] end to end at 50 % of MSR, skewed over {CUSTOMERS} customers");
        let e2e = self
            .e2e(&target, round_rate(msr * 0.5), "windowed (defaults)")
            .await?;
        self.results.end_to_end = Some(e2e);

        let cost = self.cost(&target, round_rate(msr * 0.5)).await?;
        if let Some(ingest) = &mut self.results.ingest {
            ingest.cost = cost;
        }
        Ok(())
    }

    /// The CPU comparison without the searches before it: the bare handler on its own queue, then a
    /// fresh windowed relay.
    async fn cost_alone(&mut self, rate: f64) -> Result<Vec<CostRow>, BenchError> {
        let bare = self.settings("ceil", &[])?;
        self.declare(&bare).await?;
        self.ceiling_settings = Some(bare);
        let windowed = self.settings("win", &[])?;
        let relay = self.start_relay("relay (windowed)", &windowed).await?;
        let target = Target {
            server: &relay,
            settings: &windowed,
            relay: true,
            name: "relay",
        };
        let rows = self.cost(&target, rate).await;
        relay.stop().await;
        rows
    }

    /// The same rate against the bare handler, a relay that only ingests (`consume_inbox = false`)
    /// and the whole relay: the differences are what verification and the pipeline cost.
    async fn cost(&mut self, relay: &Target<'_>, rate: f64) -> Result<Vec<CostRow>, BenchError> {
        println!(
            "\n[3/5] where the CPU goes: {} req/s against the bare handler, an ingest-only relay and the whole relay",
            thousands(rate)
        );
        let mut rows = Vec::new();
        if let Some(bare) = self.ceiling_settings.clone() {
            let mut server = Server::ceiling("bare handler", &self.env_of(&bare), self.ticks)?;
            server.wait_ready().await?;
            let target = Target {
                server: &server,
                settings: &bare,
                relay: false,
                name: "bare",
            };
            let step = self.step(&target, rate, self.plan.latency_run, None).await;
            server.stop().await;
            let (step, _) = step?;
            print_step("bare", &step);
            rows.push(CostRow::of(
                "bare handler (publish + confirm, then 200)",
                &step,
            ));
        }
        let ingest_only =
            self.settings("ingest", &[("WEILING_RELAY__AMQP__CONSUME_INBOX", "false")])?;
        let server = self
            .start_relay("relay (ingest only)", &ingest_only)
            .await?;
        // Nobody consumes this inbox, so it is purged like the bare handler's queue.
        let target = Target {
            server: &server,
            settings: &ingest_only,
            relay: false,
            name: "ingest only",
        };
        let step = self.step(&target, rate, self.plan.latency_run, None).await;
        server.stop().await;
        let (step, _) = step?;
        print_step("ingest only", &step);
        rows.push(CostRow::of(
            "relay, ingest only (consume_inbox = false)",
            &step,
        ));
        let (step, _) = self.step(relay, rate, self.plan.latency_run, None).await?;
        print_step("whole relay", &step);
        rows.push(CostRow::of("relay, whole pipeline", &step));
        Ok(rows)
    }

    async fn e2e(
        &mut self,
        target: &Target<'_>,
        rate: f64,
        relay: &str,
    ) -> Result<EndToEnd, BenchError> {
        self.drain(target).await?;
        if let Some(records) = &self.records {
            records.begin(true);
        }
        let records_before = self.records_total();
        let calls_before = self.sim.batch_calls().len();
        let (step, run) = self
            .step_without_drain(target, rate, self.plan.e2e_run, None)
            .await?;
        print_step("end to end", &step);
        let customers: Vec<&str> = {
            let mut indexes = run.acked_customers.clone();
            indexes.sort_unstable();
            indexes.dedup();
            indexes
                .iter()
                .filter_map(|i| self.generator.workload().customer(*i))
                .collect()
        };
        let settle_started = Instant::now();
        let app_id = self.app.app_id.clone();
        let truth = |id: &str| self.sim.customer(&app_id, id);
        let mut latest = 0;
        loop {
            if let Some(records) = &self.records {
                latest = records.latest_matching(&customers, truth);
            }
            if latest == customers.len() || settle_started.elapsed() > self.plan.settle_limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let settle_seconds = settle_started.elapsed().as_secs_f64();
        let settled = latest == customers.len();
        // Late duplicates and the calls of the last windows.
        tokio::time::sleep(Duration::from_millis(
            target.settings.window.max_wait_ms + 300,
        ))
        .await;
        let calls = self.sim.batch_calls();
        let calls = calls.get(calls_before..).unwrap_or_default();
        let ids: u64 = calls.iter().map(|c| c.ids.len() as u64).sum();
        let records = self.records_total() - records_before;
        let lags = self
            .records
            .as_ref()
            .map(Records::lags_ms)
            .unwrap_or_default();
        if let Some(r) = &self.records {
            r.begin(false);
        }
        let lag_samples = lags.len();
        let lag = Latency::of_ms(&lags);
        let lag_cdf = load::cdf_ms(&lags);
        let acked = step.ok.max(1) as f64;
        let e2e = EndToEnd {
            relay: relay.to_owned(),
            rate,
            lag,
            lag_samples,
            lag_cdf,
            batch_calls: calls.len() as u64,
            ids_requested: ids,
            records,
            calls_per_callback: calls.len() as f64 / acked,
            ids_per_call: ids as f64 / calls.len().max(1) as f64,
            records_per_callback: records as f64 / acked,
            customers_changed: customers.len(),
            latest_state_seen: latest,
            settled,
            settle_seconds,
            step,
        };
        println!(
            "      lag p50 {} p99 {}; {} batch calls ({:.4} per callback, {:.1} ids per call); {:.3} records per callback; latest state of {} of {} customers delivered",
            report::ms(e2e.lag.p50_ms),
            report::ms(e2e.lag.p99_ms),
            e2e.batch_calls,
            e2e.calls_per_callback,
            e2e.ids_per_call,
            e2e.records_per_callback,
            e2e.latest_state_seen,
            e2e.customers_changed
        );
        if !settled && e2e.step.error_free() {
            self.results.problems.push(format!(
                "{relay}: {} of {} acknowledged customer changes were not delivered within {:.0} s",
                customers.len() - latest,
                customers.len(),
                self.plan.settle_limit.as_secs_f64()
            ));
        }
        Ok(e2e)
    }

    // ---------------------------------------------------------------- 4. no window

    async fn no_window(
        &mut self,
        windowed_relay: &Server,
        windowed: &Settings,
    ) -> Result<(), BenchError> {
        let Some(msr) = self.results.ingest.as_ref().map(|i| i.search.msr) else {
            return Ok(());
        };
        if msr <= 0.0 {
            return Ok(());
        }
        println!("\n[4/5] no-window baseline: max_ids = 1, quiet_ms = 0 (another relay process)");
        let settings = self.settings(
            "nowin",
            &[
                ("WEILING_RELAY__WINDOW__MAX_IDS", "1"),
                ("WEILING_RELAY__WINDOW__QUIET_MS", "0"),
            ],
        )?;
        let relay = self.start_relay("relay (no window)", &settings).await?;
        let outcome = async {
            let target = Target {
                server: &relay,
                settings: &settings,
                relay: true,
                name: "no-window relay",
            };
            // From low rates up: every failing step leaves a backlog that drains slowly here.
            let search = self.search(&target, 200.0).await?;
            let compare_rate = round_rate((msr * 0.5).min(search.msr * 0.5)).max(10.0);
            println!("      comparing calls at {} req/s", thousands(compare_rate));
            let no_window = self
                .e2e(&target, compare_rate, "no window (max_ids 1, quiet_ms 0)")
                .await?;
            Ok::<_, BenchError>((search, compare_rate, no_window))
        }
        .await;
        relay.stop().await;
        let (search, compare_rate, no_window) = outcome?;
        let same_rate = self
            .results
            .end_to_end
            .as_ref()
            .filter(|e| (e.rate - compare_rate).abs() < 0.5)
            .cloned();
        let windowed_e2e = match same_rate {
            Some(e2e) => e2e,
            None => {
                let target = Target {
                    server: windowed_relay,
                    settings: windowed,
                    relay: true,
                    name: "relay",
                };
                self.e2e(&target, compare_rate, "windowed (defaults)")
                    .await?
            }
        };
        let calls_ratio = (no_window.calls_per_callback > 0.0)
            .then(|| windowed_e2e.calls_per_callback / no_window.calls_per_callback);
        self.results.no_window = Some(NoWindow {
            search,
            compare_rate,
            no_window: Some(no_window),
            windowed: Some(windowed_e2e),
            calls_ratio,
        });
        Ok(())
    }

    // ---------------------------------------------------------------- 5. steady

    async fn steady(&mut self) -> Result<(), BenchError> {
        let Some(msr) = self
            .results
            .ingest
            .as_ref()
            .map(|i| i.search.msr)
            .filter(|m| *m > 0.0)
        else {
            return Ok(());
        };
        // Half the MSR, and at least the 1,000 req/s a plan for memory is made at (full runs).
        let floor = if self.plan.quick {
            0.0
        } else {
            STEADY_MIN_RATE
        };
        self.steady_at(round_rate(msr * 0.5).max(floor)).await
    }

    async fn steady_at(&mut self, rate: f64) -> Result<(), BenchError> {
        let settings = self.settings("steady", &[])?;
        let warmup = self.plan.warmup(&settings, rate);
        let total = warmup + self.plan.steady_measure;
        println!(
            "\n[5/5] steady: a fresh relay at {} req/s, {:.0} s warm-up + {:.0} s measured",
            thousands(rate),
            warmup.as_secs_f64(),
            self.plan.steady_measure.as_secs_f64()
        );
        let relay = self.start_relay("relay (steady)", &settings).await?;
        let before_load = relay.sample();
        let series: Arc<Mutex<Vec<ProcPoint>>> = Arc::new(Mutex::new(Vec::new()));
        let after_warmup: Arc<Mutex<Option<ProcSample>>> = Arc::new(Mutex::new(None));
        let sampler = {
            let pid = relay.pid();
            let ticks = self.ticks;
            let every = self.plan.sample_every;
            let series = series.clone();
            let after_warmup = after_warmup.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut warm = false;
                loop {
                    tokio::time::sleep(every.min(warmup)).await;
                    let Some(sample) = procfs::sample(pid, ticks) else {
                        return;
                    };
                    let t = started.elapsed();
                    if !warm && t >= warmup {
                        warm = true;
                        *lock(&after_warmup) = Some(sample);
                    }
                    lock(&series).push(ProcPoint {
                        t_s: t.as_secs_f64(),
                        rss_kb: sample.rss_kb,
                        open_fds: sample.open_fds,
                        cpu_s: sample.cpu_s,
                    });
                }
            })
        };
        let target = Target {
            server: &relay,
            settings: &settings,
            relay: true,
            name: "steady relay",
        };
        let outcome = self
            .step(&target, rate, total, Some(self.plan.progress_every))
            .await;
        let end = relay.sample();
        sampler.abort();
        relay.stop().await;
        let (step, _) = outcome?;
        print_step("steady", &step);
        let after_warmup = *lock(&after_warmup);
        let rss_growth_pct = after_warmup.zip(end).and_then(|(a, e)| {
            (a.rss_kb > 0).then(|| (e.rss_kb as f64 - a.rss_kb as f64) / a.rss_kb as f64 * 100.0)
        });
        println!(
            "      relay RSS {} kB after warm-up → {} kB at the end ({}); fds {} → {}",
            after_warmup.map_or(0, |s| s.rss_kb),
            end.map_or(0, |s| s.rss_kb),
            rss_growth_pct.map_or("-".into(), |g| format!("{g:+.1} %")),
            after_warmup.map_or(0, |s| s.open_fds),
            end.map_or(0, |s| s.open_fds),
        );
        let series = lock(&series).clone();
        self.results.steady = Some(Steady {
            rate,
            warmup_s: warmup.as_secs_f64(),
            measured_s: self.plan.steady_measure.as_secs_f64(),
            before_load,
            after_warmup,
            end,
            rss_growth_pct,
            series,
            step,
        });
        Ok(())
    }

    // ---------------------------------------------------------------- steps and searches

    /// Steps up from `start` (down if it fails) by the plan's factor until the rule breaks, then
    /// bisects between the last passing and the first failing rate.
    async fn search(&mut self, target: &Target<'_>, start: f64) -> Result<Search, BenchError> {
        let mut steps: Vec<StepReport> = Vec::new();
        let mut best: Option<f64> = None;
        let mut worst: Option<f64> = None;
        let mut rate = round_rate(start);
        for _ in 0..self.plan.max_steps {
            let (step, _) = self.step(target, rate, self.plan.step, None).await?;
            print_step(target.name, &step);
            let passed = step.passed;
            steps.push(step);
            if passed {
                best = Some(best.map_or(rate, |b: f64| b.max(rate)));
                if worst.is_some() {
                    break;
                }
                rate = round_rate(rate * self.plan.factor);
            } else {
                worst = Some(worst.map_or(rate, |w: f64| w.min(rate)));
                if best.is_some() || rate <= 20.0 {
                    break;
                }
                rate = round_rate(rate / self.plan.factor);
            }
        }
        for _ in 0..self.plan.bisections {
            let (Some(low), Some(high)) = (best, worst) else {
                break;
            };
            let mid = round_rate((low * high).sqrt());
            if mid <= low || mid >= high || high / low < 1.04 {
                break;
            }
            let (step, _) = self.step(target, mid, self.plan.step, None).await?;
            print_step(target.name, &step);
            if step.passed {
                best = Some(mid);
            } else {
                worst = Some(mid);
            }
            steps.push(step);
        }
        let limited_by = worst
            .and_then(|w| steps.iter().find(|s| s.rate == w))
            .map_or_else(|| "-".into(), |s| s.verdict.clone());
        let msr = best.unwrap_or(0.0);
        println!("      → MSR {} req/s", thousands(msr));
        Ok(Search {
            rule: format!(
                "every request answered success, p99 ≤ {} ms, generator ≥ 95 % of the rate{}",
                target.settings.server.answer_budget_ms,
                if target.relay {
                    ", inbox backlog ≤ 0.5 s of arrivals"
                } else {
                    ""
                }
            ),
            steps,
            msr,
            first_failure: worst,
            limited_by,
        })
    }

    /// One run at a fixed rate, then the pipeline is drained (relay) or the queue purged (bare
    /// handler) so the next step starts clean.
    async fn step(
        &mut self,
        target: &Target<'_>,
        rate: f64,
        duration: Duration,
        progress: Option<Duration>,
    ) -> Result<(StepReport, Run), BenchError> {
        let calls_before = self.sim.batch_calls().len();
        let records_before = self.records_total();
        let (mut step, run) = self
            .step_without_drain(target, rate, duration, progress)
            .await?;
        let purged = self.drain(target).await?;
        if target.relay {
            let calls = self.sim.batch_calls();
            let calls = calls.get(calls_before..).unwrap_or_default();
            step.batch_calls = Some(calls.len() as u64);
            step.ids_requested = Some(calls.iter().map(|c| c.ids.len() as u64).sum());
            step.records = Some(self.records_total() - records_before);
        }
        if purged > 0 {
            step.verdict = format!(
                "{}; {purged} inbox messages left after {:.0} s of draining were purged",
                step.verdict,
                self.plan.drain_limit.as_secs_f64()
            );
        }
        // After an overload the broker and the relay's pipeline take a while to settle even once
        // the inbox is empty; the next step must not inherit that.
        tokio::time::sleep(if step.passed {
            COOL_DOWN
        } else {
            self.plan.recovery
        })
        .await;
        Ok((step, run))
    }

    async fn step_without_drain(
        &mut self,
        target: &Target<'_>,
        rate: f64,
        duration: Duration,
        progress: Option<Duration>,
    ) -> Result<(StepReport, Run), BenchError> {
        let url = target.server.callback_url();
        let before = self.meter(target.server);
        let run = self.generator.run(&url, rate, duration, progress).await;
        let after = self.meter(target.server);
        let cpu = cpu_share(&before, &after);
        let backlog = if target.relay {
            Some(u64::from(
                self.ready_count(&target.settings.amqp.inbox_queue).await?,
            ))
        } else {
            None
        };
        let (passed, verdict) = judge(
            &run,
            backlog,
            target.settings.server.answer_budget_ms as f64,
            &cpu,
        );
        let step = StepReport {
            rate,
            seconds: duration.as_secs_f64(),
            planned: run.planned,
            sent: run.sent,
            ok: run.ok,
            errors: run.errors.clone(),
            generator_rate: run.generator_rate,
            generator_lag_p99_ms: run.lag.p99_ms,
            ack: run.latency,
            inbox_backlog: backlog,
            cpu,
            batch_calls: None,
            ids_requested: None,
            distinct_ids: run.distinct_acked_customers(),
            records: None,
            passed,
            verdict,
        };
        Ok((step, run))
    }

    /// Relay: waits until the inbox is empty and the last windows flushed; a backlog that does not
    /// drain in time is purged (and counted) so the next step is not measured against it. Bare
    /// handler: purges its queue, which nobody consumes. Returns what was purged from a relay's inbox.
    async fn drain(&self, target: &Target<'_>) -> Result<u32, BenchError> {
        let queue = &target.settings.amqp.inbox_queue;
        if !target.relay {
            self.purge(queue).await?;
            return Ok(0);
        }
        let started = Instant::now();
        while self.ready_count(queue).await? > 0 {
            if started.elapsed() > self.plan.drain_limit {
                return self.purge(queue).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(
            target.settings.window.max_wait_ms + 300,
        ))
        .await;
        Ok(0)
    }

    async fn ready_count(&self, queue: &str) -> Result<u32, BenchError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = within(
            "inbox depth",
            self.channel
                .queue_declare(queue.into(), passive, FieldTable::default()),
        )
        .await?;
        Ok(queue.message_count())
    }

    async fn purge(&self, queue: &str) -> Result<u32, BenchError> {
        within(
            "purge",
            self.channel
                .queue_purge(queue.into(), QueuePurgeOptions::default()),
        )
        .await
    }

    fn records_total(&self) -> u64 {
        self.records.as_ref().map_or(0, Records::total)
    }

    fn meter(&self, server: &Server) -> Meter {
        Meter {
            at: Instant::now(),
            server: server.sample(),
            broker: self
                .broker_pid
                .and_then(|pid| procfs::sample(pid, self.ticks)),
            own: procfs::sample(std::process::id(), self.ticks),
            machine: procfs::machine_ticks(),
        }
    }

    fn write(&self) -> Result<(), BenchError> {
        let mut results = self.results.clone();
        results.judge();
        results.charts = charts::write_all(&results, &self.out)?
            .iter()
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect();
        std::fs::write(
            self.out.join("results.json"),
            serde_json::to_string_pretty(&results)? + "\n",
        )?;
        std::fs::write(self.out.join("results.md"), results.markdown())?;
        Ok(())
    }

    /// Stops the simulator and the consumer, deletes every queue and exchange the bench made.
    async fn finish(&mut self) {
        if let Some(records) = self.records.take() {
            records.stop();
        }
        for settings in &self.declared {
            let _ = tokio::time::timeout(
                AMQP_TIMEOUT,
                scenario::cleanup(&self.channel, &settings.amqp, &self.records_queue),
            )
            .await;
        }
        let _ = tokio::time::timeout(
            AMQP_TIMEOUT,
            self.channel.queue_delete(
                self.records_queue.as_str().into(),
                QueueDeleteOptions::default(),
            ),
        )
        .await;
        let _ = tokio::time::timeout(
            AMQP_TIMEOUT,
            self.connection.close(200, "bench done".into()),
        )
        .await;
        self.sim_server.stop(false).await;
    }
}

/// Whether a step kept up, and if not, the first reason.
fn judge(run: &Run, backlog: Option<u64>, budget_ms: f64, cpu: &CpuShare) -> (bool, String) {
    let errors = run.error_count();
    if errors > 0 {
        let kinds: Vec<String> = run.errors.iter().map(|(k, v)| format!("{v} {k}")).collect();
        return (
            false,
            format!("{errors} not answered success ({})", kinds.join(", ")),
        );
    }
    if run.generator_rate < 0.95 * run.rate {
        return (
            false,
            format!(
                "the generator reached only {} req/s (machine {:.0} % busy)",
                thousands(run.generator_rate),
                cpu.machine_busy_pct
            ),
        );
    }
    if run.latency.p99_ms > budget_ms {
        return (
            false,
            format!(
                "p99 {} over the {budget_ms:.0} ms budget",
                report::ms(run.latency.p99_ms)
            ),
        );
    }
    if let Some(backlog) = backlog
        && backlog as f64 > (run.rate * 0.5).max(500.0)
    {
        return (
            false,
            format!("the pipeline fell behind: {backlog} messages left in the inbox"),
        );
    }
    (true, "ok".into())
}

fn cpu_share(before: &Meter, after: &Meter) -> CpuShare {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let delta = |a: Option<ProcSample>, b: Option<ProcSample>| {
        a.zip(b).map_or(0.0, |(a, b)| (b.cpu_s - a.cpu_s).max(0.0))
    };
    let server = delta(before.server, after.server);
    let broker = delta(before.broker, after.broker);
    let own = delta(before.own, after.own);
    let busy = before
        .machine
        .zip(after.machine)
        .map_or(0.0, |((b0, t0), (b1, t1))| {
            let total = t1.saturating_sub(t0);
            if total == 0 {
                0.0
            } else {
                b1.saturating_sub(b0) as f64 / total as f64 * 100.0
            }
        });
    CpuShare {
        seconds,
        server_cores: server / seconds,
        broker_cores: broker / seconds,
        bench_cores: own / seconds,
        machine_busy_pct: busy,
        server_cpu_s: server,
        broker_cpu_s: broker,
        bench_cpu_s: own,
    }
}

fn print_step(label: &str, s: &StepReport) {
    println!(
        "      {label:<16} {:>7}/s: {:>7} ok, {:>5} err, gen {:>7}/s, p50 {:>8} p99 {:>8} p99.9 {:>8}, cores relay {:.2} broker {:.2} bench {:.2}{} → {}",
        thousands(s.rate),
        s.ok,
        s.errors.values().sum::<u64>(),
        thousands(s.generator_rate),
        report::ms(s.ack.p50_ms),
        report::ms(s.ack.p99_ms),
        report::ms(s.ack.p999_ms),
        s.cpu.server_cores,
        s.cpu.broker_cores,
        s.cpu.bench_cores,
        s.inbox_backlog
            .map_or(String::new(), |b| format!(", inbox left {b}")),
        if s.passed { "pass" } else { &s.verdict }
    );
}

/// Rates are kept to two or three significant figures, so tables read easily.
fn round_rate(rate: f64) -> f64 {
    let step = if rate < 1000.0 {
        10.0
    } else if rate < 10_000.0 {
        50.0
    } else {
        100.0
    };
    ((rate / step).round() * step).max(10.0)
}

async fn within<T, E>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BenchError>
where
    BenchError: From<E>,
{
    match tokio::time::timeout(AMQP_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BenchError::Timeout {
            secs: AMQP_TIMEOUT.as_secs(),
            what,
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_round_to_readable_values() {
        assert_eq!(round_rate(1234.0), 1250.0);
        assert_eq!(round_rate(12_345.0), 12_300.0);
        assert_eq!(round_rate(3.0), 10.0);
        assert_eq!(round_rate(777.0), 780.0);
    }

    #[test]
    fn a_step_fails_on_errors_latency_generator_or_backlog() {
        let run = Run {
            rate: 1000.0,
            sent: 1000,
            ok: 1000,
            generator_rate: 999.0,
            latency: Latency {
                p99_ms: 5.0,
                ..Latency::default()
            },
            ..Run::default()
        };
        let cpu = CpuShare::default();
        assert!(judge(&run, Some(0), 800.0, &cpu).0);
        assert!(!judge(&run, Some(600), 800.0, &cpu).0);
        let slow = Run {
            latency: Latency {
                p99_ms: 900.0,
                ..Latency::default()
            },
            ..run.clone()
        };
        assert!(judge(&slow, None, 800.0, &cpu).1.contains("budget"));
        let lagging = Run {
            generator_rate: 900.0,
            ..run.clone()
        };
        assert!(judge(&lagging, None, 800.0, &cpu).1.contains("generator"));
        let mut failing = run;
        failing.errors.insert("http 503".into(), 2);
        assert!(
            judge(&failing, None, 800.0, &cpu)
                .1
                .contains("2 not answered")
        );
    }
}
