//! The one place where outcomes become HTTP answers (design.md §3). Bodies are generic on purpose:
//! a caller never learns which check failed.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpResponse, ResponseError};

use super::body::BodyError;
use crate::amqp::PublishError;
use crate::verify::Rejection;

/// The body Weiling expects for an accepted callback.
pub const SUCCESS: &str = "success";

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("unsupported content encoding or type")]
    UnsupportedMedia,
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The body was still arriving when every place was needed: shed for a newer callback.
    #[error("shed while its body was still arriving")]
    Shed { retry_after_s: u64 },
    #[error("too many callbacks in flight")]
    TooManyInFlight { retry_after_s: u64 },
    #[error("not durable: {source}")]
    NotDurable {
        source: PublishError,
        retry_after_s: u64,
    },
    #[error("answer budget exceeded before the broker confirmed")]
    BudgetExceeded { retry_after_s: u64 },
    #[error("the store task ended without an outcome")]
    StoreAborted { retry_after_s: u64 },
    #[error("an identical callback in flight was not stored")]
    DuplicateNotStored { retry_after_s: u64 },
    #[error("the relay is draining")]
    Draining { retry_after_s: u64 },
}

impl CallbackError {
    /// A bounded label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Rejected(Rejection::BadRequest(_)) => "bad_request",
            Self::Rejected(Rejection::Unauthorized(_)) => "unauthorized",
            Self::UnsupportedMedia => "unsupported_media",
            Self::Body(BodyError::TooLarge) => "body_too_large",
            Self::Body(BodyError::TimedOut) => "body_timeout",
            Self::Body(BodyError::Cut) | Self::Shed { .. } => "body_cut",
            Self::Body(BodyError::Broken) => "body_broken",
            Self::TooManyInFlight { .. } => "too_many_in_flight",
            Self::NotDurable { .. } => "broker_unavailable",
            Self::BudgetExceeded { .. } => "budget_exceeded",
            Self::StoreAborted { .. } => "store_aborted",
            Self::DuplicateNotStored { .. } => "duplicate_not_stored",
            Self::Draining { .. } => "draining",
        }
    }

    fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::TooManyInFlight { retry_after_s }
            | Self::NotDurable { retry_after_s, .. }
            | Self::BudgetExceeded { retry_after_s }
            | Self::StoreAborted { retry_after_s }
            | Self::DuplicateNotStored { retry_after_s }
            | Self::Draining { retry_after_s }
            | Self::Shed { retry_after_s } => Some(*retry_after_s),
            Self::Rejected(_) | Self::UnsupportedMedia | Self::Body(_) => None,
        }
    }
}

impl ResponseError for CallbackError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Rejected(Rejection::BadRequest(_)) => StatusCode::BAD_REQUEST,
            Self::Rejected(Rejection::Unauthorized(_)) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMedia => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Body(BodyError::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(BodyError::TimedOut) => StatusCode::REQUEST_TIMEOUT,
            // Shed for a newer callback: the relay is at capacity, the sender should come back.
            Self::Body(BodyError::Cut) | Self::Shed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Body(BodyError::Broken) => StatusCode::BAD_REQUEST,
            Self::TooManyInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotDurable { .. }
            | Self::BudgetExceeded { .. }
            | Self::StoreAborted { .. }
            | Self::DuplicateNotStored { .. }
            | Self::Draining { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        response.insert_header(ContentType::plaintext());
        if let Some(seconds) = self.retry_after_s() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        // The rest of an unread body would otherwise be drained to keep the connection: a stalled
        // or oversized sender gets the connection closed instead.
        if matches!(self, Self::Body(_) | Self::Shed { .. }) {
            response.force_close();
        }
        response.body(
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase(),
        )
    }
}

/// 200 `success`, the only answer Weiling accepts as delivered.
pub fn success() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::plaintext())
        .body(SUCCESS)
}
