//! Operator commands that repair a mirror: `reconcile` (re-fetch customers by id) and `dlq replay`
//! (send dead letters through verify → persist again after a configuration fix). Both reuse the live
//! path's pieces (Weiling client, record and event messages, confirmed publisher), so what they
//! publish is indistinguishable from what the relay publishes.

pub mod dlq_replay;
pub mod reconcile;

use std::path::PathBuf;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::amqp::{LinkState, Outgoing, PublishError, Publisher};
use crate::config::{AmqpSettings, ConfigError};

/// `weiling-relay dlq …`
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Send dead letters through verify → persist again with the current configuration.
    Replay(dlq_replay::DlqReplayArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("app `{0}` is not configured")]
    UnknownApp(String),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ids, line {line}: {problem}")]
    IdLine { line: usize, problem: &'static str },
    #[error("progress file {path}: {problem}")]
    Progress { path: PathBuf, problem: String },
    #[error("{0}")]
    Usage(&'static str),
    #[error("an app's keys are unusable: {0}")]
    Key(#[from] crate::verify::cipher::KeyError),
    #[error("Weiling client: {0}")]
    Enrich(#[from] crate::pipeline::enrich::EnrichError),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker: {0}")]
    Broker(String),
}

/// One broker operation; a healthy broker answers in milliseconds.
pub(crate) const BROKER_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// One publish may wait this long for its confirm.
const CONFIRM_WAIT: Duration = Duration::from_secs(15);
/// Attempts per message before it counts as failed; a short broker hiccup is ridden out.
const PUBLISH_ATTEMPTS: usize = 5;

/// Starts a confirmed publisher (which declares the topology) and waits until its link is up.
pub(crate) async fn start_publisher(
    amqp: &AmqpSettings,
    name: &str,
    abort: &CancellationToken,
) -> Result<(Publisher, JoinHandle<()>), OpsError> {
    let (publisher, task) = Publisher::spawn(amqp.clone(), name.to_owned(), abort.clone());
    let mut state = publisher.watch_state();
    let limit =
        Duration::from_millis(amqp.connect_timeout_ms.saturating_mul(3)).max(BROKER_OP_TIMEOUT);
    match tokio::time::timeout(limit, state.wait_for(|s| *s == LinkState::Ready)).await {
        Ok(Ok(_)) => Ok((publisher, task)),
        _ => {
            abort.cancel();
            Err(OpsError::Broker(format!(
                "no confirmed link to {} within {} s",
                crate::config::mask_url_password(secrecy::ExposeSecret::expose_secret(&amqp.url)),
                limit.as_secs()
            )))
        }
    }
}

/// Lets the publisher settle and end: it stops once every handle is gone.
pub(crate) async fn stop_publisher(
    publisher: Publisher,
    task: JoinHandle<()>,
    abort: &CancellationToken,
) {
    drop(publisher);
    if tokio::time::timeout(BROKER_OP_TIMEOUT, task).await.is_err() {
        abort.cancel();
    }
}

/// Publishes until the broker confirms, a few attempts with backoff, or `abort` fires.
pub(crate) async fn publish_confirmed(
    publisher: &Publisher,
    message: Outgoing,
    abort: &CancellationToken,
) -> Result<(), PublishError> {
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build();
    let mut last = PublishError::Unavailable;
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let publish = tokio::time::timeout(CONFIRM_WAIT, publisher.publish(message.clone()));
        last = tokio::select! {
            result = publish => match result {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => PublishError::Timeout,
            },
            () = abort.cancelled() => return Err(PublishError::Closed),
        };
        debug!(attempt, error = last.as_str(), "publish failed; retrying");
        if attempt < PUBLISH_ATTEMPTS {
            let delay = backoff.next().unwrap_or(Duration::from_secs(2));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = abort.cancelled() => return Err(PublishError::Closed),
            }
        }
    }
    Err(last)
}

/// First Ctrl-C (or SIGTERM) cancels `stop` (finish the current step, then end cleanly); a second
/// one cancels `abort` (end now; whatever is unconfirmed is simply not recorded as done).
pub fn stop_on_signals(stop: CancellationToken, abort: CancellationToken) {
    tokio::spawn(async move {
        signal().await;
        eprintln!("\nstopping after the current step (Ctrl-C again to abort at once)");
        stop.cancel();
        signal().await;
        abort.cancel();
    });
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
