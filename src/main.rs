//! The `weiling-relay` binary: parses the command line and dispatches. The only place that uses anyhow.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weiling_relay::app::Relay;
use weiling_relay::config::Settings;
use weiling_relay::{demo, simulator, telemetry};

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
    /// Run the simulator, the relay and a checking consumer on the local RabbitMQ; print a summary.
    Demo(demo::DemoArgs),
    /// The Weiling simulator on its own (token and batch endpoints, callback sender).
    Sim(simulator::cli::SimArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    telemetry::init(env.get("RUST_LOG").map(String::as_str));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    match cli.command {
        Command::CheckConfig { config } => {
            let settings = Settings::load(config.as_deref(), &env)?;
            print!("{}", settings.to_masked_toml());
            Ok(())
        }
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref(), &env)?;
            runtime.block_on(serve(settings))
        }
        Command::Sim(args) => Ok(runtime.block_on(simulator::cli::run(args))?),
        Command::Demo(args) => {
            let ok = runtime.block_on(demo::run(args))?;
            if !ok {
                anyhow::bail!("the demo found lost callbacks");
            }
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(&settings.server.listen)
        .with_context(|| format!("could not listen on {}", settings.server.listen))?;
    let relay = Relay::start(settings, listener)?;
    let shutdown = relay.shutdown_token();
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
