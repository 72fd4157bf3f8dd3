//! The `weiling-relay` binary: parses the command line and dispatches. The only place that uses anyhow.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay::app::Relay;
use relay::config::Settings;
use relay::{ops, telemetry};
use relay_bench as bench;
use relay_demo as demo;
use relay_mirror as mirror;
use weiling_sim as simulator;

#[derive(Parser)]
#[command(
    name = "weiling-relay",
    version,
    about = "Weiling callbacks → verified, durable RabbitMQ messages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// Config file layered over the built-in defaults (config/default.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print it with secrets masked.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the simulator, the relay, a checking consumer and the PostgreSQL mirror; print a summary.
    Demo(demo::DemoArgs),
    /// The Weiling simulator on its own (token and batch endpoints, callback sender).
    Sim(simulator::cli::SimArgs),
    /// Measure the relay against the machine's own ceiling; writes DIR/results.md and results.json.
    Bench(bench::BenchArgs),
    /// Re-fetch the listed customers through the enrichment path and publish them (resumable).
    Reconcile(ops::reconcile::ReconcileArgs),
    /// Dead-letter queue tools: `dlq replay` re-processes dead letters after a configuration fix.
    Dlq {
        #[command(subcommand)]
        command: ops::DlqCommand,
    },
    /// Keep a PostgreSQL mirror of the customer (and contact) records, from the mirror's own queue.
    Mirror(mirror::MirrorArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    // The bench prints its own progress; the servers' info lines would only bury it.
    let quiet = matches!(
        cli.command,
        Command::Bench(_) | Command::Reconcile(_) | Command::Dlq { .. }
    )
    .then_some("warn,lapin=error,amq_protocol=error");
    let telemetry = telemetry::init(
        env.get("RUST_LOG").map(String::as_str).or(quiet),
        traces(&cli.command, &env),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let result = run(cli.command, &env, &runtime);
    // Outside the runtime: the exporter's client blocks while it sends the last spans.
    drop(runtime);
    telemetry.shutdown();
    result
}

/// Traces are exported by the two long-running services when `telemetry.otlp_endpoint` is set. A
/// configuration that does not load is reported by the command itself, with its reason.
fn traces(command: &Command, env: &HashMap<String, String>) -> Option<telemetry::Otlp> {
    let (settings, service) = match command {
        Command::Serve { config } => (Settings::load(config.as_deref(), env), "weiling-relay"),
        Command::Mirror(args) => (
            Settings::load_without_apps(args.config.as_deref(), env),
            "weiling-relay-mirror",
        ),
        _ => return None,
    };
    let endpoint = settings.ok()?.telemetry.otlp_endpoint;
    (!endpoint.is_empty()).then_some(telemetry::Otlp { endpoint, service })
}

fn run(
    command: Command,
    env: &HashMap<String, String>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { config } => {
            let settings = Settings::load(config.as_deref(), env)?;
            print!("{}", settings.to_masked_toml());
            Ok(())
        }
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref(), env)?;
            runtime.block_on(serve(settings))
        }
        Command::Sim(args) => Ok(runtime.block_on(simulator::cli::run(args))?),
        Command::Bench(args) => {
            if !runtime.block_on(bench::run(args))? {
                anyhow::bail!("the bench found problems; see the end of its output");
            }
            Ok(())
        }
        Command::Reconcile(args) => {
            if !runtime.block_on(ops::reconcile::run_cli(args, env))? {
                anyhow::bail!("reconcile did not publish every id (see the summary)");
            }
            Ok(())
        }
        Command::Dlq {
            command: ops::DlqCommand::Replay(args),
        } => {
            if !runtime.block_on(ops::dlq_replay::run_cli(args, env))? {
                anyhow::bail!("dead letters still fail (see the summary)");
            }
            Ok(())
        }
        Command::Mirror(args) => Ok(runtime.block_on(mirror::run_cli(args, env))?),
        Command::Demo(args) => {
            let ok = runtime.block_on(demo::run(args))?;
            if !ok {
                anyhow::bail!(
                    "the demo found problems (lost callbacks, a failed repair step or mirror differences); see its summary"
                );
            }
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(&settings.server.listen)
        .with_context(|| format!("could not listen on {}", settings.server.listen))?;
    let trim_every = Duration::from_millis(settings.server.heap_trim_interval_ms);
    let relay = Relay::start(settings, listener)?;
    let shutdown = relay.shutdown_token();
    // Detached: it ends with the shutdown token, and the process exits right after the drain.
    let _trimmer = relay::memory::spawn_trimmer(trim_every, shutdown.clone());
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    relay.wait().await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
