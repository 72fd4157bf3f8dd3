//! Stage 1: the HTTP edge. Routes, shared handler state, and the admission limits.

pub mod answer;
pub mod body;
pub mod callback;
pub mod health;
pub mod refusals;

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::KeepAlive;
use actix_web::{HttpResponse, web};
use tokio_util::sync::CancellationToken;

pub use refusals::{RefusalLog, SUMMARY_INTERVAL, Severity};

use crate::config::ServerSettings;
use crate::persist::Persister;
use crate::verify::Verifier;
use crate::verify::replay::ReplayCache;

/// Everything a callback handler needs; shared by all HTTP workers.
pub struct ReceiveState {
    pub verifier: Verifier,
    pub replay: ReplayCache,
    pub persister: Persister,
    /// `max_in_flight` permits, each taken before a body is read: a callback that finds none (and
    /// no unfinished body to cut) is answered 429 at once.
    pub bodies: Arc<body::BodyGate>,
    pub answer_budget: Duration,
    pub retry_after_s: u64,
    /// Cancelled when the drain starts: readiness goes false and new callbacks get 503.
    pub draining: CancellationToken,
    /// Summaries of refused callbacks (bad input: 400, 401, 415).
    pub refused: RefusalLog,
    /// Summaries of callbacks the relay could not store (429, 503).
    pub not_stored: RefusalLog,
}

/// After an answer that leaves a body unread, the connection is closed at once. Such answers are a
/// stalled or cut sender's 408, whose bytes were all read, or refusals that first read and drop
/// the rest of the body ([`body::discard`]), so closing resets nothing the sender still needs.
/// Lingering instead would keep each cut connection's read buffer (up to 128 KiB) alive: measured,
/// 2,000 stalled senders took the relay from 83 MB to 150 MB with a 1 s linger.
pub const LINGER: Duration = Duration::ZERO;

/// How the HTTP server treats connections (the body limits are [`body::BodyGate`]'s).
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub keep_alive: KeepAlive,
    pub head_timeout: Duration,
    /// See [`LINGER`].
    pub linger: Duration,
}

impl ConnectionLimits {
    pub fn of(server: &ServerSettings) -> Self {
        Self {
            max_connections: server.max_connections,
            keep_alive: match server.keep_alive_ms {
                0 => KeepAlive::Disabled,
                ms => KeepAlive::Timeout(Duration::from_millis(ms)),
            },
            head_timeout: Duration::from_millis(server.head_timeout_ms),
            linger: LINGER,
        }
    }

    /// actix counts connections per worker; the setting is for the whole process.
    pub fn per_worker(&self, workers: usize) -> usize {
        self.max_connections.div_ceil(workers.max(1)).max(1)
    }
}

/// Registers the routes on an actix `App`.
pub fn routes(state: web::Data<ReceiveState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(state)
            .service(
                web::resource("/weiling/callback")
                    .route(web::post().to(post_callback))
                    .route(web::get().to(get_callback)),
            )
            .service(
                web::resource("/weiling/callback/{app_id}")
                    .route(web::post().to(callback::post))
                    .route(web::get().to(callback::get)),
            )
            .route("/healthz", web::get().to(health::healthz))
            .route("/readyz", web::get().to(health::readyz))
            .route("/metrics", web::get().to(health::relay_metrics));
    }
}

async fn post_callback(
    request: actix_web::HttpRequest,
    body: web::Payload,
    state: web::Data<ReceiveState>,
) -> Result<HttpResponse, answer::CallbackError> {
    callback::post(request, body, None, state).await
}

async fn get_callback(
    request: actix_web::HttpRequest,
    state: web::Data<ReceiveState>,
) -> Result<HttpResponse, answer::CallbackError> {
    callback::get(request, None, state).await
}

/// Counts every HTTP request by method, matched route pattern (bounded) and status.
pub async fn http_metrics(
    request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "other",
    };
    let response = next.call(request).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    crate::metrics::http_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    Ok(response)
}
