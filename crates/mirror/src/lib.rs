//! `weiling-relay mirror`: consumes the record stream from its own durable queue and keeps a
//! PostgreSQL mirror of it, one table per entity (`mirror_customers`, `mirror_contacts`).
//!
//! Per delivery batch: parse ([`message`]) → one transaction ([`apply`]: last writer by
//! `fetched_at` wins, the same `message_id` twice changes nothing, `missing` marks the row deleted)
//! → commit → one multiple-ack ([`consumer`]). A body that can never apply is dead-lettered with a
//! `mirror_*` reason, confirmed, then acked; a transient database failure requeues the batch after a
//! backoff and reconnects. A crash at any point redelivers what was not acked, and applying it again
//! is harmless. Migrations ([`schema`]) are compiled in and run at every connect.

pub mod apply;
pub mod consumer;
pub mod db;
pub mod dead_letter;
pub mod message;
pub mod schema;
pub mod stats;
pub mod tls;
pub mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::consumer::{Session, SessionEnd};
use self::db::{DbError, Target};
use self::stats::Stats;
use self::worker::Worker;
use relay::amqp::Publisher;
use relay::amqp::link::Reconnect;
use relay::config::{ConfigError, Settings};

pub const DEFAULT_QUEUE: &str = "weiling.mirror";
const CONNECTION_NAME: &str = "weiling-relay-mirror";
const PUBLISHER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `weiling-relay mirror`
#[derive(Debug, clap::Args)]
pub struct MirrorArgs {
    /// PostgreSQL to write to, e.g. postgres://user:password@host:5432/db (never logged).
    #[arg(
        long,
        env = "WEILING_RELAY_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        value_parser = parse_secret
    )]
    pub database_url: SecretString,
    /// Config file layered over the built-in defaults (the broker URL and names come from it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The mirror's own durable queue, bound to the customers exchange with customer.# and contact.#.
    #[arg(long, default_value = DEFAULT_QUEUE, value_name = "NAME")]
    pub queue: String,
    /// Deliveries held unacked at once; also the most records applied in one transaction.
    #[arg(long, default_value_t = 200, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// PostgreSQL schema of the mirror's tables, created when missing. Default: the connection's
    /// search_path (normally public).
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
    /// Serve the Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw))
}

/// What the mirror needs beyond the relay's settings.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    pub database_url: SecretString,
    pub queue: String,
    pub prefetch: u16,
    pub schema: Option<String>,
}

impl From<&MirrorArgs> for MirrorOptions {
    fn from(args: &MirrorArgs) -> Self {
        Self {
            database_url: args.database_url.clone(),
            queue: args.queue.clone(),
            prefetch: args.prefetch,
            schema: args.schema.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("metrics listener: {0}")]
    Metrics(#[from] std::io::Error),
}

/// The command: loads the settings, stops on the first SIGTERM / Ctrl-C after the current batch (a
/// second one aborts at once; unacked deliveries are redelivered either way).
pub async fn run_cli(args: MirrorArgs, env: &HashMap<String, String>) -> Result<(), MirrorError> {
    // The mirror reads records only: it needs the broker settings, not app credentials.
    let settings = Settings::load_without_apps(args.config.as_deref(), env)?;
    if let Some(addr) = args.metrics_listen {
        serve_metrics(addr)?;
    }
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    relay::ops::stop_on_signals(stop.clone(), abort.clone());
    let stats = Arc::new(Stats::default());
    let options = MirrorOptions::from(&args);
    tokio::select! {
        result = run(&options, &settings, stop, stats) => result,
        () = abort.cancelled() => {
            warn!("mirror aborted; unacked deliveries return to the queue");
            Ok(())
        }
    }
}

/// Runs the mirror until `stop`: connects to PostgreSQL (migrating), then consumes, reconnecting to
/// either side as needed. Returns an error only for what no retry fixes (configuration, a refused
/// migration, a database that rejects the mirror's statements).
pub async fn run(
    options: &MirrorOptions,
    settings: &Settings,
    stop: CancellationToken,
    stats: Arc<Stats>,
) -> Result<(), MirrorError> {
    validate_queue_name(&options.queue)?;
    let target = Target::new(&options.database_url, options.schema.as_deref())?;
    info!(
        db = %target.describe(),
        queue = %options.queue,
        exchange = %settings.amqp.customers_exchange,
        prefetch = options.prefetch,
        "mirror starting"
    );
    let abort = CancellationToken::new();
    let (publisher, publisher_task) = Publisher::spawn(
        settings.amqp.clone(),
        format!("{CONNECTION_NAME}-dead-letters"),
        abort.clone(),
    );
    let mut worker = Worker::new(
        target,
        publisher,
        settings.amqp.dead_letter_queue.clone(),
        Some(settings.security.sign_records_key.clone()),
        stats.clone(),
    );
    let started = (Instant::now(), stats.snapshot().settled());
    let result = supervise(options, settings, &mut worker, &stats, &stop).await;
    stats.log_summary("mirror stopped", &mut started.clone());
    // The dead-letter publisher ends once its last handle is gone and its confirms are settled.
    drop(worker);
    if tokio::time::timeout(PUBLISHER_STOP_TIMEOUT, publisher_task)
        .await
        .is_err()
    {
        abort.cancel();
    }
    result
}

async fn supervise(
    options: &MirrorOptions,
    settings: &Settings,
    worker: &mut Worker,
    stats: &Arc<Stats>,
    stop: &CancellationToken,
) -> Result<(), MirrorError> {
    // Connect (and migrate) first: a bad URL or a refused migration ends the command at once.
    if !worker.ensure_db(stop).await? {
        return Ok(());
    }
    let amqp = &settings.amqp;
    let max_batch = usize::from(options.prefetch);
    let mut reconnect = Reconnect::new(amqp, CONNECTION_NAME);
    let setup_timeout = Duration::from_millis(amqp.connect_timeout_ms);
    while let Some(connection) = reconnect.connect(stop).await {
        let opened = Session::open(
            connection,
            amqp,
            &options.queue,
            options.prefetch,
            CONNECTION_NAME,
        );
        match tokio::time::timeout(setup_timeout, opened).await {
            Ok(Ok(mut session)) => {
                info!(queue = %options.queue, "mirror consuming");
                reconnect.up();
                let end = session.run(worker, max_batch, stats, stop).await;
                session.close().await;
                match end {
                    SessionEnd::Stopped => break,
                    SessionEnd::Broken(reason) => reconnect.lost(&reason),
                    SessionEnd::Fatal(error) => return Err(error.into()),
                }
            }
            Ok(Err(error)) => reconnect.failed(&error.to_string()),
            Err(_) => reconnect.failed("mirror set-up timed out"),
        }
    }
    Ok(())
}

fn validate_queue_name(queue: &str) -> Result<(), MirrorError> {
    if queue.is_empty() || queue.len() > 200 || queue.starts_with("amq.") {
        return Err(MirrorError::Usage(format!(
            "--queue `{queue}` must be 1–200 bytes and not start with the reserved prefix amq."
        )));
    }
    Ok(())
}

/// `GET /metrics` on its own small server, for a mirror that runs without the relay.
fn serve_metrics(addr: SocketAddr) -> Result<(), std::io::Error> {
    use actix_web::{App, HttpServer, web};
    relay::metrics::install();
    let server = HttpServer::new(|| {
        App::new().route("/metrics", web::get().to(relay::receive::health::metrics))
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?
    .run();
    tokio::spawn(server);
    info!(%addr, "mirror metrics listening");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MirrorArgs,
    }

    #[test]
    fn flags_have_their_defaults_and_the_url_stays_secret() {
        let cli = Cli::try_parse_from(["mirror", "--database-url", "postgres://u:topsecret@h/d"])
            .unwrap();
        assert_eq!(cli.args.queue, DEFAULT_QUEUE);
        assert_eq!(cli.args.prefetch, 200);
        assert!(cli.args.schema.is_none());
        assert!(!format!("{:?}", cli.args).contains("topsecret"));
        assert!(Cli::try_parse_from(["mirror", "--database-url", "x", "--prefetch", "0"]).is_err());
    }

    #[test]
    fn reserved_or_empty_queue_names_are_refused() {
        assert!(validate_queue_name("weiling.mirror").is_ok());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name("amq.gen-1").is_err());
    }
}
