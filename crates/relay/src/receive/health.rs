//! `/healthz` (the process answers) and `/readyz` (the broker link can make callbacks durable).

use actix_web::{HttpResponse, web};

use super::ReceiveState;
use crate::amqp::LinkState;

/// Liveness never depends on the broker: a broker outage must not turn into a restart storm.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

pub async fn readyz(state: web::Data<ReceiveState>) -> HttpResponse {
    if state.draining.is_cancelled() {
        return HttpResponse::ServiceUnavailable().body("draining");
    }
    match state.persister.publisher().state() {
        LinkState::Ready => HttpResponse::Ok().body("ready"),
        other => HttpResponse::ServiceUnavailable().body(format!("broker {}", other.as_str())),
    }
}

/// Prometheus text exposition of every relay metric.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}
