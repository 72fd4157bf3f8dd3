//! Wires the stages together, owns their tasks, and runs the drain in the order of design.md §2.6.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::amqp::Publisher;
use crate::config::Settings;
use crate::persist::Persister;
use crate::pipeline::consumer::{self, Pipeline};
use crate::pipeline::enrich::{EnrichError, WeilingClient};
use crate::pipeline::extract::Mapping;
use crate::pipeline::flush::Stages;
use crate::pipeline::publish::RecordPublisher;
use crate::receive::body::BodyGate;
use crate::receive::{
    self, ConnectionLimits, ReceiveState, RefusalLog, SUMMARY_INTERVAL, Severity,
};
use crate::verify::cipher::KeyError;
use crate::verify::replay::ReplayCache;
use crate::verify::{Apps, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("an app's EncodingAESKey is unusable: {0}")]
    Key(#[from] KeyError),
    #[error("Weiling client: {0}")]
    Enrich(#[from] EnrichError),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("a relay task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running relay. Cancel its shutdown token (or call [`Relay::shutdown`]) to drain and stop it.
pub struct Relay {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RelayError>>,
}

impl Relay {
    /// Starts the relay on an already bound listener (tests bind port 0).
    pub fn start(settings: Settings, listener: TcpListener) -> Result<Relay, RelayError> {
        let addr = listener.local_addr()?;
        crate::metrics::install();
        crate::metrics::zero_known_series(settings.apps.iter().map(|app| app.app_id.as_str()));
        let shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let (publisher, publisher_task) = Publisher::spawn(
            settings.amqp.clone(),
            format!("weiling-relay publisher {addr}"),
            abort.clone(),
        );
        let draining = CancellationToken::new();
        let pipeline_stop = CancellationToken::new();
        let pipeline_task = if settings.amqp.consume_inbox {
            // Records get their own connection, so a burst of records never delays a callback's confirm.
            let (records, _records_task) = Publisher::spawn(
                settings.amqp.clone(),
                format!("weiling-relay records {addr}"),
                abort.clone(),
            );
            let client =
                WeilingClient::new(&settings.weiling, &settings.apps, Some(addr.to_string()))?;
            let pipeline = Pipeline {
                amqp: settings.amqp.clone(),
                window: settings.window.clone(),
                mapping: Mapping::new(&settings.events),
                stages: Stages {
                    enrich: client,
                    publish: RecordPublisher::new(
                        records,
                        &settings.amqp.customers_exchange,
                        &settings.security.sign_records_key,
                    ),
                },
                connection_name: format!("weiling-relay inbox {addr}"),
            };
            Some(consumer::spawn(
                std::sync::Arc::new(pipeline),
                pipeline_stop.clone(),
                abort.clone(),
            ))
        } else {
            None
        };
        let state = web::Data::new(ReceiveState {
            verifier: Verifier::new(
                Apps::from_settings(&settings.apps)?,
                settings.security.timestamp_tolerance_s,
            ),
            replay: ReplayCache::new(
                Duration::from_secs(settings.security.replay_window_s),
                settings.security.replay_cache_capacity,
            ),
            persister: Persister::new(publisher, &settings),
            bodies: BodyGate::new(&settings.server),
            answer_budget: Duration::from_millis(settings.server.answer_budget_ms),
            retry_after_s: settings.server.retry_after_s,
            draining: draining.clone(),
            refused: RefusalLog::new(Severity::Refused, SUMMARY_INTERVAL),
            not_stored: RefusalLog::new(Severity::NotStored, SUMMARY_INTERVAL),
        });
        // Writes the refusal summaries on a tick, so a burst's tail is logged without waiting for
        // the next refusal; the last ones go out when the drain starts.
        let summaries = state.clone();
        let stop_summaries = draining.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop_summaries.cancelled() => break,
                }
                summaries.refused.flush();
                summaries.not_stored.flush();
            }
            summaries.refused.flush();
            summaries.not_stored.flush();
        });
        let drain_deadline = Duration::from_millis(settings.server.drain_deadline_ms);
        let drain_grace = Duration::from_millis(settings.server.drain_grace_ms);
        let limits = ConnectionLimits::of(&settings.server);
        let workers = match settings.server.workers {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let server = {
            let state = state.clone();
            HttpServer::new(move || {
                App::new()
                    .wrap(actix_web::middleware::from_fn(receive::http_metrics))
                    .configure(receive::routes(state.clone()))
            })
            .workers(workers)
            .max_connections(limits.per_worker(workers))
            .keep_alive(limits.keep_alive)
            .client_request_timeout(limits.head_timeout)
            .client_disconnect_timeout(limits.linger)
            .disable_signals()
            .shutdown_timeout(drain_deadline.as_secs().max(1))
            .listen(listener)?
            .run()
        };
        let server_handle = server.handle();
        let server_task = tokio::spawn(server);
        info!(%addr, workers, "relay listening");

        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                info!("drain started: readiness off, new callbacks answered 503");
                // One deadline for the whole drain, so its steps cannot add up past what the
                // orchestrator's grace period allows.
                let deadline = tokio::time::Instant::now() + drain_grace + drain_deadline;
                draining.cancel();
                drop(state);
                tokio::time::sleep(drain_grace).await;
                // Callbacks in flight (each bounded by the answer budget) get their answer.
                let http_stopped = tokio::time::timeout_at(deadline, async {
                    server_handle.stop(true).await;
                    server_task.await
                })
                .await;
                if let Ok(Ok(Err(error))) = http_stopped {
                    warn!(error = %error, "HTTP server ended with an error");
                }
                // Open windows flush, their records are confirmed, their deliveries acked.
                pipeline_stop.cancel();
                if let Some(pipeline_task) = pipeline_task
                    && tokio::time::timeout_at(deadline, pipeline_task)
                        .await
                        .is_err()
                {
                    warn!(
                        "drain deadline passed with windows in flight; their deliveries return to the inbox"
                    );
                }
                // The publisher ends once every handle is gone and its confirms are settled.
                if tokio::time::timeout_at(deadline, publisher_task)
                    .await
                    .is_err()
                {
                    warn!(
                        "drain deadline passed with confirms outstanding; closing the broker links"
                    );
                }
                abort.cancel();
                info!("drain finished");
                Ok(())
            }
        });
        Ok(Relay {
            addr,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Drains and waits until the relay has stopped.
    pub async fn shutdown(self) -> Result<(), RelayError> {
        self.shutdown.cancel();
        self.task.await?
    }

    /// Waits until the relay stops (after its shutdown token was cancelled).
    pub async fn wait(self) -> Result<(), RelayError> {
        self.task.await?
    }
}
