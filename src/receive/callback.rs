//! `POST /weiling/callback`: verify, store durably, then answer; `GET`: the URL-verification echo.

use std::time::{Instant, SystemTime};

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use tracing::field::Empty;
use tracing::{Instrument, debug, info, info_span, warn};

use super::ReceiveState;
use super::answer::{self, CallbackError};
use crate::verify::replay::Admission;
use crate::verify::{CallbackQuery, Verified};

pub async fn post(
    request: HttpRequest,
    body: web::Bytes,
    path_app: Option<web::Path<String>>,
    state: web::Data<ReceiveState>,
) -> Result<HttpResponse, CallbackError> {
    let started = Instant::now();
    // One span per callback; app and event type are filled in once verification names them.
    let span = info_span!(
        "callback",
        app_id = Empty,
        event_type = Empty,
        outcome = Empty
    );
    let mut app = None;
    let result = receive(
        &request,
        &body,
        path_app.as_deref().map(String::as_str),
        &state,
        started,
        &mut app,
    )
    .instrument(span.clone())
    .await;
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
        Err(CallbackError::UnsupportedMedia) => state.refused.record(outcome, "-"),
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
    body: &[u8],
    path_app: Option<&str>,
    state: &ReceiveState,
    started: Instant,
    app: &mut Option<String>,
) -> Result<&'static str, CallbackError> {
    let retry_after_s = state.retry_after_s;
    if state.draining.is_cancelled() {
        return Err(CallbackError::Draining { retry_after_s });
    }
    check_media(request)?;
    let _permit = state
        .in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| CallbackError::TooManyInFlight { retry_after_s })?;
    let query = CallbackQuery::parse(request.query_string())?;
    let verified = state
        .verifier
        .verify_post(&query, body, path_app, SystemTime::now())?;

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

    let (store, outcome) = match &verified {
        Verified::Event(_) => ("inbox", "stored"),
        Verified::Undecodable(_) => ("dead_letter", "dead_lettered"),
    };
    let app_id = verified.app_id().to_owned();
    let stored = match verified {
        Verified::Event(event) => {
            let publish_started = Instant::now();
            let stored =
                tokio::time::timeout(remaining(), state.persister.store_event(event)).await;
            if matches!(stored, Ok(Ok(()))) {
                crate::metrics::inbox_publish(publish_started.elapsed());
            }
            debug!(app_id, store, "event persisted");
            stored
        }
        Verified::Undecodable(letter) => {
            warn!(
                app_id,
                reason = letter.reason().as_str(),
                detail = letter.detail(),
                "authentic callback could not be read; dead-lettering it"
            );
            let stored =
                tokio::time::timeout(remaining(), state.persister.store_dead_letter(&letter)).await;
            if matches!(stored, Ok(Ok(()))) {
                crate::metrics::dead_letter(letter.reason().as_str());
            }
            stored
        }
    };
    match stored {
        Ok(Ok(())) => {
            ticket.stored();
            Ok(outcome)
        }
        Ok(Err(source)) => Err(CallbackError::NotDurable {
            source,
            retry_after_s,
        }),
        Err(_) => Err(CallbackError::BudgetExceeded { retry_after_s }),
    }
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
    let query = CallbackQuery::parse(request.query_string())?;
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
