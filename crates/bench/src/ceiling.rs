//! The machine's own ceilings, measured in the same run as the relay: (a) persistent, confirmed
//! publishes of an inbox-sized message through the relay's own publisher; (b) a bare actix-web handler
//! that publishes the request body the same way and answers 200 after the confirm, with nothing else
//! (no verification, no replay cache, no window, no pipeline). It runs as a child process, like the relay.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use actix_web::{App, HttpResponse, HttpServer, web};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::BasicProperties;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::BenchError;
use relay::amqp::message::PERSISTENT;
use relay::amqp::{LinkState, Outgoing, Publisher};
use relay::config::Settings;
use relay::persist::inbox;
use relay::verify::seal::seal_event;
use relay::verify::{AppKeys, Apps, Verified, Verifier};

/// A confirm this late means the broker is stuck; the probe counts it as a failure.
const CONFIRM_LIMIT: Duration = Duration::from_secs(10);
const READY_LIMIT: Duration = Duration::from_secs(15);

/// One rate of confirmed publishes at a fixed number in flight.
#[derive(Debug, Clone, Serialize)]
pub struct PublishProbe {
    pub in_flight: usize,
    pub confirmed: u64,
    pub failed: u64,
    pub seconds: f64,
    pub msgs_per_s: f64,
}

/// Exactly what the relay publishes for one callback: the event is sealed, verified and turned into
/// an inbox message by the relay's own code, so size, headers and properties match.
pub fn inbox_template(settings: &Settings, app: &AppKeys, event: &[u8]) -> Option<Outgoing> {
    let verifier = Verifier::new(
        Apps::from_settings(&settings.apps).ok()?,
        settings.security.timestamp_tolerance_s,
    );
    let now = SystemTime::now();
    let timestamp = (relay::verify::unix_ms(now) / 1000).to_string();
    let sealed = seal_event(app, event, &timestamp, "benchtemplate00");
    match verifier
        .verify_post(&sealed.query, &sealed.body, None, now)
        .ok()?
    {
        Verified::Event(event) => Some(inbox::InboxRouter::new(settings).message(event)),
        Verified::Undecodable(_) => None,
    }
}

/// Waits until the publisher's link is up.
pub async fn wait_link(publisher: &Publisher) -> Result<(), BenchError> {
    let mut state = publisher.watch_state();
    let ready = state.wait_for(|s| *s == LinkState::Ready);
    match tokio::time::timeout(READY_LIMIT, ready).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(BenchError::Child(
            "the bench's publisher did not connect to the broker".into(),
        )),
    }
}

/// Publishes copies of `template` (each with its own message id) keeping `in_flight` unconfirmed,
/// for `duration`; the rate counts confirmed messages over the time until the last confirm.
pub async fn probe(
    publisher: &Publisher,
    template: &Outgoing,
    in_flight: usize,
    duration: Duration,
) -> PublishProbe {
    let publish = |n: u64| {
        let publisher = publisher.clone();
        let mut message = template.clone();
        message.properties = message
            .properties
            .clone()
            .with_message_id(format!("bench-probe-{n}").as_str().into());
        async move { tokio::time::timeout(CONFIRM_LIMIT, publisher.publish(message)).await }
    };
    let mut pending = FuturesUnordered::new();
    let mut next: u64 = 0;
    let (mut confirmed, mut failed) = (0u64, 0u64);
    let started = Instant::now();
    let mut count = |result: Option<Result<Result<(), _>, _>>| match result {
        Some(Ok(Ok(()))) => confirmed += 1,
        Some(_) => failed += 1,
        None => {}
    };
    while started.elapsed() < duration {
        while pending.len() < in_flight.max(1) {
            pending.push(publish(next));
            next += 1;
        }
        count(pending.next().await);
    }
    while let Some(result) = pending.next().await {
        count(Some(result));
    }
    let seconds = started.elapsed().as_secs_f64();
    PublishProbe {
        in_flight,
        confirmed,
        failed,
        seconds,
        msgs_per_s: confirmed as f64 / seconds.max(1e-9),
    }
}

struct Bare {
    publisher: Publisher,
    exchange: String,
    routing_key: String,
    budget: Duration,
    next_id: AtomicU64,
}

async fn bare(body: web::Bytes, state: web::Data<Bare>) -> HttpResponse {
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    // The same properties that matter to the broker as the relay's: persistent, and an id for returns.
    let message = Outgoing {
        exchange: state.exchange.clone(),
        routing_key: state.routing_key.clone(),
        body: body.to_vec(),
        properties: BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(format!("bench-bare-{n}").as_str().into()),
        mandatory: true,
    };
    match tokio::time::timeout(state.budget, state.publisher.publish(message)).await {
        Ok(Ok(())) => HttpResponse::Ok().body("success"),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

async fn ready(state: web::Data<Bare>) -> HttpResponse {
    if state.publisher.state() == LinkState::Ready {
        HttpResponse::Ok().body("ready")
    } else {
        HttpResponse::ServiceUnavailable().finish()
    }
}

/// The child-process side of ceiling (b): the relay's settings from the environment, the relay's
/// worker count, the relay's publisher, and a handler that only publishes. Runs until SIGTERM.
pub async fn serve(listen: &str) -> Result<(), BenchError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = Settings::load(None, &env)?;
    let listener = TcpListener::bind(listen)?;
    let abort = CancellationToken::new();
    let (publisher, link) = Publisher::spawn(
        settings.amqp.clone(),
        format!("weiling-relay bench ceiling {listen}"),
        abort.clone(),
    );
    let app_id = settings
        .apps
        .first()
        .map(|a| a.app_id.clone())
        .unwrap_or_default();
    let state = web::Data::new(Bare {
        publisher,
        exchange: settings.amqp.events_exchange.clone(),
        routing_key: relay::amqp::message::event_routing_key(&app_id, "customer_update"),
        budget: Duration::from_millis(settings.server.answer_budget_ms),
        next_id: AtomicU64::new(0),
    });
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    let max_body = settings.server.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .route("/weiling/callback", web::post().to(bare))
            .route("/readyz", web::get().to(ready))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run();
    let handle = server.handle();
    let running = tokio::spawn(server);
    interrupted().await;
    handle.stop(true).await;
    let _ = running.await;
    abort.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), link).await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C: the bench and the bare handler both stop on either.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
