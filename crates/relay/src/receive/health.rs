//! `/healthz` (the process answers) and `/readyz` (the broker link can make callbacks durable).

use actix_web::{HttpResponse, web};

use super::ReceiveState;
use crate::amqp::LinkState;

/// Liveness never depends on the broker: a broker outage must not turn into a restart storm.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

pub async fn readyz(state: web::Data<ReceiveState>) -> HttpResponse {
    match readiness(&state) {
        Ok(()) => HttpResponse::Ok().body("ready"),
        Err(why) => HttpResponse::ServiceUnavailable().body(why),
    }
}

fn readiness(state: &ReceiveState) -> Result<(), String> {
    if state.draining.is_cancelled() {
        return Err("draining".into());
    }
    match state.persister.publisher().state() {
        LinkState::Ready => Ok(()),
        other => Err(format!("broker {}", other.as_str())),
    }
}

/// The relay's `/metrics`: `relay_ready` is taken from what `/readyz` would answer right now, so
/// an alert on it sees exactly what the orchestrator sees.
pub async fn relay_metrics(state: web::Data<ReceiveState>) -> HttpResponse {
    crate::metrics::ready(readiness(&state).is_ok());
    metrics().await
}

/// Prometheus text exposition of every metric of this process.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}
