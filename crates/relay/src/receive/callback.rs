//! `POST /weiling/callback`: verify, store durably, then answer; `GET`: the URL-verification echo.

use std::time::{Instant, SystemTime};

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use tracing::field::Empty;
use tracing::{Instrument, debug, info, info_span, warn};

use super::ReceiveState;
use super::answer::{self, CallbackError};
use super::body::{BodyError, discard};
use crate::amqp::PublishError;
use crate::persist::Persister;
use crate::verify::replay::{Admission, FirstSighting};
use crate::verify::{CallbackQuery, Rejection, Verified};

pub async fn post(
    request: HttpRequest,
    body: web::Payload,
    path_app: Option<web::Path<String>>,
    state: web::Data<ReceiveState>,
) -> Result<HttpResponse, CallbackError> {
    let started = Instant::now();
    // One span per callback; app and event type are filled in once verification names them.
    // Exported, it is the trace's root: an HTTP server span (the extra fields stay out of the logs
    // while traces are off).
    let span = if crate::telemetry::tracing_on() {
        info_span!(
            "callback",
            otel.name = "POST /weiling/callback",
            otel.kind = "server",
            http.request.method = "POST",
            app_id = Empty,
            event_type = Empty,
            outcome = Empty
        )
    } else {
        info_span!(
            "callback",
            app_id = Empty,
            event_type = Empty,
            outcome = Empty
        )
    };
    let mut app = None;
    let mut body = Some(body);
    let result = receive(
        &request,
        &mut body,
        path_app.as_deref().map(String::as_str),
        &state,
        &mut app,
    )
    .instrument(span.clone())
    .await;
    // Refused before its body was read: read the rest (discarding it) so the answer reaches the
    // sender, rather than a reset from closing a connection with unread data.
    if let Some(unread) = body {
        discard(unread).await;
    }
    let _entered = span.enter();
    let outcome = match &result {
        Ok(outcome) => *outcome,
        Err(error) => error.outcome(),
    };
    span.record("outcome", outcome);
    // Only configured app ids become labels; anything refused before an app was verified is "-".
    crate::metrics::callback(
        app.as_deref().unwrap_or("-"),
        outcome,
        started.elapsed(),
        result.is_ok(),
    );
    match &result {
        Ok(_) => debug!(
            outcome,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "callback answered"
        ),
        // Refusals are counted exactly in the metrics and logged as periodic summaries: one line
        // per request would let a flood of forged callbacks flood the log.
        Err(CallbackError::Rejected(rejection)) => {
            state.refused.record(outcome, rejection.reason());
        }
        Err(CallbackError::UnsupportedMedia | CallbackError::Body(_)) => {
            state.refused.record(outcome, "-")
        }
        // Expected during a drain; logging each one would flood the log exactly when it is read.
        Err(error @ CallbackError::Draining { .. }) => {
            debug!(outcome, error = %error, "callback not stored")
        }
        Err(_) => state.not_stored.record(outcome, "-"),
    }
    result.map(|_| answer::success())
}

/// Returns the outcome label of a `success` answer.
async fn receive(
    request: &HttpRequest,
    payload: &mut Option<web::Payload>,
    path_app: Option<&str>,
    state: &ReceiveState,
    app: &mut Option<String>,
) -> Result<&'static str, CallbackError> {
    let retry_after_s = state.retry_after_s;
    if state.draining.is_cancelled() {
        return Err(CallbackError::Draining { retry_after_s });
    }
    check_media(request)?;
    let content_length = content_length(request);
    state.bodies.check_length(content_length)?;
    let slot = state
        .bodies
        .enter()
        .ok_or(CallbackError::TooManyInFlight { retry_after_s })?;
    let Some(payload) = payload.take() else {
        return Err(CallbackError::Body(BodyError::Broken));
    };
    let (body, _permit) =
        slot.read(payload, content_length)
            .await
            .map_err(|error| match error {
                BodyError::Cut => CallbackError::Shed { retry_after_s },
                other => CallbackError::Body(other),
            })?;
    // The answer budget covers verifying and storing: how fast the sender delivers its body is
    // bounded by `body_timeout_ms` instead.
    let started = Instant::now();
    let query = CallbackQuery::parse(request.query_string()).map_err(Rejection::from)?;
    let verified = state
        .verifier
        .verify_post(&query, &body, path_app, SystemTime::now())?;

    let span = tracing::Span::current();
    span.record("app_id", verified.app_id());
    *app = Some(verified.app_id().to_owned());
    if let Verified::Event(event) = &verified {
        span.record("event_type", event.event_type());
    }
    let remaining = || state.answer_budget.saturating_sub(started.elapsed());
    let ticket = match state.replay.admit(verified.replay_key()) {
        Admission::AlreadyStored => return Ok("replay"),
        Admission::InFlight(copy) => {
            return if copy.stored_within(remaining()).await {
                Ok("replay")
            } else {
                Err(CallbackError::DuplicateNotStored { retry_after_s })
            };
        }
        Admission::First(ticket) => ticket,
    };

    let outcome = match &verified {
        Verified::Event(_) => "stored",
        Verified::Undecodable(_) => "dead_lettered",
    };
    // The store runs as a task of its own: past the answer budget the sender gets 503 and will
    // retry, but a publish already on its way may still be confirmed. Finishing it, and recording
    // it in the replay cache, answers that retry `success` instead of storing the callback twice.
    // The in-flight permit goes with the answer, as before: the publisher bounds what it holds.
    let store = store(state.persister.clone(), verified, ticket);
    let storing = if crate::telemetry::tracing_on() {
        // The inbox publish is a child of this callback's span in the trace.
        tokio::spawn(store.in_current_span())
    } else {
        tokio::spawn(store)
    };
    match tokio::time::timeout(remaining(), storing).await {
        Ok(Ok(Ok(()))) => Ok(outcome),
        Ok(Ok(Err(source))) => Err(CallbackError::NotDurable {
            source,
            retry_after_s,
        }),
        Ok(Err(_aborted)) => Err(CallbackError::StoreAborted { retry_after_s }),
        Err(_) => Err(CallbackError::BudgetExceeded { retry_after_s }),
    }
}

/// One confirmed publish to the inbox (or the dead-letter queue); a confirmed one is remembered by
/// the replay cache.
async fn store(
    persister: Persister,
    verified: Verified,
    ticket: FirstSighting,
) -> Result<(), PublishError> {
    let app_id = verified.app_id().to_owned();
    let stored = match verified {
        Verified::Event(event) => {
            let publish_started = Instant::now();
            let stored = persister.store_event(event).await;
            if stored.is_ok() {
                crate::metrics::inbox_publish(publish_started.elapsed());
                debug!(app_id, "event persisted");
            }
            stored
        }
        Verified::Undecodable(letter) => {
            warn!(
                app_id,
                reason = letter.reason().as_str(),
                detail = letter.detail(),
                "authentic callback could not be read; dead-lettering it"
            );
            let stored = persister.store_dead_letter(&letter).await;
            if stored.is_ok() {
                crate::metrics::dead_letter(letter.reason().as_str());
            }
            stored
        }
    };
    if stored.is_ok() {
        ticket.stored();
    }
    stored
}

/// The declared body length, if any: a chunked body has none and is measured as it arrives (the
/// HTTP parser already refused a Content-Length that is not a number).
fn content_length(request: &HttpRequest) -> Option<usize> {
    let value = request.headers().get(header::CONTENT_LENGTH)?;
    value.to_str().ok()?.trim().parse().ok()
}

/// Only plain JSON bodies: a compressed body would bypass the size limit (decompression bombs), and
/// anything else is not what Weiling sends.
fn check_media(request: &HttpRequest) -> Result<(), CallbackError> {
    let headers = request.headers();
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(CallbackError::UnsupportedMedia);
    }
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !matches!(
            essence.as_str(),
            "application/json" | "text/json" | "text/plain"
        ) {
            return Err(CallbackError::UnsupportedMedia);
        }
    }
    Ok(())
}

pub async fn get(
    request: HttpRequest,
    path_app: Option<web::Path<String>>,
    state: web::Data<ReceiveState>,
) -> Result<HttpResponse, CallbackError> {
    let query = CallbackQuery::parse(request.query_string()).map_err(Rejection::from)?;
    let echo = state.verifier.verify_get(
        &query,
        path_app.as_deref().map(String::as_str),
        SystemTime::now(),
    );
    match echo {
        Ok(plain) => {
            info!("callback URL verified");
            Ok(HttpResponse::Ok()
                .insert_header(ContentType::plaintext())
                .body(plain))
        }
        Err(rejection) => {
            state
                .refused
                .record("url_verification_refused", rejection.reason());
            Err(rejection.into())
        }
    }
}
