//! Stage 6: one Weiling batch call per window flush (token, rate limit, retries, circuit breaker).
//!
//! [`WeilingClient::fetch`] is the only entry point (customers or contacts, one code path). Per app it owns a [`TokenCache`]
//! (single-flight refresh), a governor rate limiter (small burst), a [`Breaker`], and a hold-off
//! instant set by `Retry-After`. What to do with each answer is decided by [`policy::classify`].

pub mod breaker;
mod isolate;
pub mod policy;
pub mod token;
mod wire;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use crate::config::{AppSettings, WeilingSettings};
use crate::entity::Entity;

pub use breaker::{Breaker, BreakerState};
pub use isolate::{Isolated, RefusedId};
pub use policy::{Decision, TRANSPORT_ERROR, classify};
pub use token::{AccessToken, TokenCache, TokenError};

use wire::BodyError;

/// Weiling's batch cap (weiling-api.md §4: assumed 100; more is answered with code 1012).
pub const MAX_BATCH_IDS: usize = 100;

/// Tuning that is not in the settings file: defaults for production, shrunk by tests.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// First backoff step.
    pub backoff_min: Duration,
    /// Longest single backoff sleep, jitter included (Retry-After may still ask for more).
    pub backoff_max: Duration,
    /// Consecutive failed calls that open an app's breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    pub breaker_cool_down: Duration,
    /// Largest batch answer accepted; a bigger one is treated as garbage.
    pub max_body_bytes: usize,
    /// How often a garbage answer (unparseable, wrong schema, too big) is asked again before
    /// giving up: a truncated body from a proxy is often transient, a broken schema is not.
    pub garbage_retries: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(5),
            max_body_bytes: 8 * 1024 * 1024,
            garbage_retries: 2,
        }
    }
}

/// What one batch call found: records in request order, and the requested ids Weiling left out.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// (id, record exactly as returned: Weiling's bytes for that element of the list).
    pub records: Vec<(String, Box<RawValue>)>,
    pub missing: Vec<String>,
}

impl PartialEq for Fetched {
    fn eq(&self, other: &Self) -> bool {
        self.missing == other.missing
            && self.records.len() == other.records.len()
            && self
                .records
                .iter()
                .zip(&other.records)
                .all(|((a, ra), (b, rb))| a == b && ra.get() == rb.get())
    }
}

/// Why a batch could not be fetched. No variant carries a token, a secret, a URL or customer data.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("app is not configured for enrichment")]
    UnknownApp,
    #[error("Weiling batch call gave up after {attempts} attempt(s): {last}")]
    GaveUp { attempts: u32, last: String },
    /// Weiling refused the request itself (a definite error code) or kept answering garbage: asking
    /// again later will not help, so the inputs are parked instead of retried.
    #[error("Weiling refused the batch call after {attempts} attempt(s): {last}")]
    Rejected { attempts: u32, last: String },
    /// Weiling answered the batch with a definite refusal `code` (3000 客户不存在, 1001 …): usually
    /// one id in it, which [`WeilingClient::fetch_isolating`] finds by splitting the batch.
    #[error("Weiling refused the batch with code {code} after {attempts} attempt(s): {last}")]
    Refused {
        code: i64,
        attempts: u32,
        last: String,
    },
    #[error("more than {MAX_BATCH_IDS} distinct ids in one batch")]
    TooManyIds,
    #[error("cancelled")]
    Cancelled,
    #[error("invalid Weiling client configuration: {0}")]
    Config(String),
}

/// The Weiling client shared by every window flush; cheap to clone.
#[derive(Clone)]
pub struct WeilingClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash; each entity's batch path is appended.
    base_url: String,
    apps: HashMap<String, AppState>,
    auth_codes: Vec<i64>,
    rate_codes: Vec<i64>,
    missing_codes: Vec<i64>,
    max_retries: u32,
    request_timeout: Duration,
    options: ClientOptions,
}

struct AppState {
    tokens: TokenCache,
    limiter: DefaultDirectRateLimiter,
    breaker: Breaker,
    /// Set from Retry-After so every caller of this app waits, not only the one that saw it.
    hold_off_until: Mutex<Option<Instant>>,
    /// Kept only to scrub it from error text as a last line of defence.
    secret: SecretString,
}

impl std::fmt::Debug for WeilingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut apps: Vec<&str> = self.inner.apps.keys().map(String::as_str).collect();
        apps.sort_unstable();
        f.debug_struct("WeilingClient")
            .field("base_url", &self.inner.base_url)
            .field("apps", &apps)
            .finish_non_exhaustive()
    }
}

struct Attempt {
    answer: Answer,
    /// `None` when the token could not be had (the answer then describes the token call).
    token: Option<AccessToken>,
    decision: Decision,
}

/// One batch answer reduced to what the policy and the error text need.
struct Answer {
    status: u16,
    code: Option<i64>,
    /// The body, when it parsed as JSON.
    body: Option<Vec<u8>>,
    retry_after: Option<Duration>,
    detail: String,
}

impl WeilingClient {
    pub fn new(
        settings: &WeilingSettings,
        apps: &[AppSettings],
        instance: Option<String>,
    ) -> Result<Self, EnrichError> {
        Self::with_options(settings, apps, instance, ClientOptions::default())
    }

    pub fn with_options(
        settings: &WeilingSettings,
        apps: &[AppSettings],
        instance: Option<String>,
        options: ClientOptions,
    ) -> Result<Self, EnrichError> {
        let request_timeout = Duration::from_millis(settings.request_timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .user_agent(user_agent(instance.as_deref()))
            // The token rides in the query; a redirect would hand it to whatever host it names.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EnrichError::Config(format!("HTTP client: {}", e.without_url())))?;
        let quota = quota(settings.rate_limit_per_minute)?;
        let base = settings.base_url.trim_end_matches('/');
        let margin = Duration::from_secs(settings.token_refresh_margin_s);
        let apps = apps
            .iter()
            .map(|app| {
                let state = AppState {
                    tokens: TokenCache::new(
                        http.clone(),
                        base,
                        &app.app_id,
                        app.app_secret.clone(),
                        margin,
                        request_timeout,
                    ),
                    limiter: RateLimiter::direct(quota),
                    breaker: Breaker::new(options.breaker_threshold, options.breaker_cool_down),
                    hold_off_until: Mutex::new(None),
                    secret: app.app_secret.clone(),
                };
                (app.app_id.clone(), state)
            })
            .collect();
        crate::metrics::know_weiling_codes(
            settings
                .auth_error_codes
                .iter()
                .chain(&settings.rate_limit_codes)
                .chain(&settings.missing_codes)
                .copied(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url: base.to_owned(),
                apps,
                auth_codes: settings.auth_error_codes.clone(),
                rate_codes: settings.rate_limit_codes.clone(),
                missing_codes: settings.missing_codes.clone(),
                max_retries: settings.max_retries,
                request_timeout,
                options,
            }),
        })
    }

    pub fn breaker_state(&self, app_id: &str) -> Option<BreakerState> {
        self.inner.apps.get(app_id).map(|a| a.breaker.state())
    }

    /// [`Self::fetch`] for customers (`customer/batch`).
    pub async fn fetch_customers(
        &self,
        app_id: &str,
        ids: &[String],
        cancel: &CancellationToken,
    ) -> Result<Fetched, EnrichError> {
        self.fetch(app_id, Entity::Customer, ids, cancel).await
    }

    /// One POST per call (more than [`MAX_BATCH_IDS`] distinct ids is refused; duplicates are
    /// asked once; no ids means no call). Waits for the breaker, any Retry-After hold-off and the
    /// rate limiter; refreshes the token and retries once on an auth code; backs off with jitter
    /// on rate-limit codes, HTTP 429/5xx, transport errors and (a few times) garbage, up to
    /// `max_retries`; gives up on anything else.
    pub async fn fetch(
        &self,
        app_id: &str,
        entity: Entity,
        ids: &[String],
        cancel: &CancellationToken,
    ) -> Result<Fetched, EnrichError> {
        let inner = &*self.inner;
        let app = inner.apps.get(app_id).ok_or(EnrichError::UnknownApp)?;
        let requested = dedup(ids);
        if requested.len() > MAX_BATCH_IDS {
            return Err(EnrichError::TooManyIds);
        }
        if requested.is_empty() {
            return Ok(Fetched::default());
        }
        let n = requested.len();
        // The backoff is consumed as a plain iterator: when it runs out the loop ends, whatever
        // Retry-After says (backon's `.adjust()` can retry forever in that case).
        let mut backoff = inner.backoff().build();
        let mut attempts: u32 = 0;
        let mut refreshed = false;
        let mut garbage: u32 = 0;
        loop {
            let permit = cancellable(cancel, app.breaker.wait_until_call_allowed()).await?;
            cancellable(cancel, app.wait_hold_off()).await?;
            cancellable(cancel, app.limiter.until_ready()).await?;
            attempts = attempts.saturating_add(1);

            let Attempt {
                answer,
                token,
                decision,
            } = inner.attempt(app, entity, &requested, cancel).await?;
            debug!(
                app_id,
                entity = entity.as_str(),
                ids = n,
                attempt = attempts,
                status = answer.status,
                code = answer.code,
                decision = decision.as_str(),
                "weiling batch answer"
            );

            let is_garbage = match decision {
                Decision::Done => {
                    let parsed = answer
                        .body
                        .as_ref()
                        .and_then(|b| wire::records(b, entity, &requested));
                    if let Some(fetched) = parsed {
                        permit.success();
                        debug!(
                            app_id,
                            ids = n,
                            found = fetched.records.len(),
                            missing = fetched.missing.len(),
                            "weiling batch fetched"
                        );
                        return Ok(fetched);
                    }
                    true
                }
                // A 2xx without a usable code: unparseable, wrong schema or too big.
                Decision::GiveUp => (200..300).contains(&answer.status) && answer.code.is_none(),
                _ => false,
            };
            let detail = if is_garbage && decision == Decision::Done {
                format!(
                    "answer with code 0 but an unusable data.{}",
                    entity.list_field()
                )
            } else {
                answer.detail.clone()
            };

            // `permanent`: Weiling refused the request itself, so asking again later will not help.
            let fail = |last: String, permanent: bool| {
                let last = redact(last, &[app.secret.expose_secret(), token_str(&token)]);
                if let (true, Some(code)) = (permanent && !is_garbage, answer.code) {
                    debug!(app_id, ids = n, attempts, code, "weiling refused the batch");
                    EnrichError::Refused {
                        code,
                        attempts,
                        last,
                    }
                } else if permanent {
                    warn!(app_id, ids = n, attempts, last = %last, "weiling refused the batch call");
                    EnrichError::Rejected { attempts, last }
                } else {
                    warn!(app_id, ids = n, attempts, last = %last, "weiling batch call gave up");
                    EnrichError::GaveUp { attempts, last }
                }
            };

            match decision {
                Decision::Retry => permit.failure(),
                _ if is_garbage => permit.failure(),
                _ => permit.success(),
            }

            match decision {
                Decision::RefreshTokenAndRetryOnce => {
                    if let (Some(token), false) = (&token, refreshed) {
                        refreshed = true;
                        cancellable(cancel, app.tokens.invalidate(token)).await?;
                        warn!(
                            app_id,
                            ids = n,
                            attempt = attempts,
                            code = answer.code,
                            "access token refused; refreshing once"
                        );
                        continue;
                    }
                    return Err(fail(
                        format!("{detail}, still refused after a token refresh"),
                        false,
                    ));
                }
                Decision::GiveUp if !is_garbage => return Err(fail(detail, true)),
                _ if is_garbage => {
                    garbage = garbage.saturating_add(1);
                    if garbage > inner.options.garbage_retries {
                        return Err(fail(detail, true));
                    }
                }
                _ => {}
            }

            let Some(step) = backoff.next() else {
                return Err(fail(detail, false));
            };
            let mut delay = step.min(inner.options.backoff_max);
            if let Some(ra) = answer.retry_after {
                delay = delay.max(ra);
                app.hold_off(ra);
            }
            warn!(
                app_id,
                ids = n,
                attempt = attempts,
                status = answer.status,
                code = answer.code,
                decision = decision.as_str(),
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "weiling batch call failed; backing off"
            );
            cancellable(cancel, tokio::time::sleep(delay)).await?;
        }
    }
}

impl Inner {
    /// One call: the token (cached or fetched), then the POST, classified. A failed token fetch
    /// is classified like a batch answer, so a token outage backs off like a batch outage.
    async fn attempt(
        &self,
        app: &AppState,
        entity: Entity,
        requested: &[String],
        cancel: &CancellationToken,
    ) -> Result<Attempt, EnrichError> {
        match cancellable(cancel, app.tokens.get()).await? {
            Ok(token) => {
                let answer =
                    cancellable(cancel, self.post_batch(&token, entity, requested)).await?;
                let decision = classify(
                    answer.status,
                    answer.code,
                    &self.auth_codes,
                    &self.rate_codes,
                );
                Ok(Attempt {
                    answer,
                    token: Some(token),
                    decision,
                })
            }
            Err(err) => {
                let (status, code) = err.status_and_code();
                // Auth codes from the token endpoint mean bad credentials, not a stale token.
                let decision = classify(status, code, &[], &self.rate_codes);
                let answer = Answer {
                    status,
                    code,
                    body: None,
                    retry_after: None,
                    detail: err.to_string(),
                };
                Ok(Attempt {
                    answer,
                    token: None,
                    decision,
                })
            }
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        // backon's jitter adds up to one more step, so steps are capped at half the ceiling.
        let step_cap = (self.options.backoff_max / 2).max(self.options.backoff_min);
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.options.backoff_min)
            .with_max_delay(step_cap)
            .with_max_times(usize::try_from(self.max_retries).unwrap_or(usize::MAX))
    }

    async fn post_batch(&self, token: &AccessToken, entity: Entity, ids: &[String]) -> Answer {
        let mut body = serde_json::Map::new();
        body.insert(entity.ids_field().to_owned(), json!(ids));
        let request = self
            .http
            .post(format!("{}{}", self.base_url, entity.batch_path()))
            .query(&[("access_token", token.expose())])
            .json(&body);
        let exchange = async {
            let resp = match request.send().await {
                Ok(resp) => resp,
                Err(e) => return transport(wire::describe_transport(&e)),
            };
            let status = resp.status().as_u16();
            let retry_after = wire::retry_after(resp.headers());
            let bytes = match wire::read_capped(resp, self.options.max_body_bytes).await {
                Ok(bytes) => bytes,
                Err(BodyError::Transport(detail)) => return transport(detail),
                Err(BodyError::TooLarge) => {
                    return Answer {
                        status,
                        code: None,
                        body: None,
                        retry_after,
                        detail: format!(
                            "HTTP {status} body too large (over {} bytes)",
                            self.options.max_body_bytes
                        ),
                    };
                }
            };
            let envelope: Option<wire::Envelope> = serde_json::from_slice(&bytes).ok();
            let code = envelope.as_ref().and_then(wire::Envelope::code);
            let body = envelope.map(|_| bytes);
            let detail = match (code, &body) {
                (Some(code), _) => format!("HTTP {status} code {code}"),
                (None, Some(_)) => format!("HTTP {status} without a usable code"),
                (None, None) => format!("HTTP {status} body is not JSON"),
            };
            Answer {
                status,
                code,
                body,
                retry_after,
                detail,
            }
        };
        // reqwest's own timeout covers send and body; this one also bounds anything around them.
        let started = std::time::Instant::now();
        let bounded = tokio::time::timeout(self.request_timeout, exchange);
        // The span names the path only: the query holds the access token.
        let span = if crate::telemetry::tracing_on() {
            tracing::info_span!(
                "weiling call",
                otel.name = format!("POST {}", entity.batch_path()),
                otel.kind = "client",
                http.request.method = "POST",
                url.path = entity.batch_path(),
                ids = ids.len(),
                http.response.status_code = tracing::field::Empty,
                weiling.code = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let answer = match bounded.instrument(span.clone()).await {
            Ok(answer) => answer,
            Err(_) => transport("timed out".to_owned()),
        };
        span.record("http.response.status_code", answer.status);
        if let Some(code) = answer.code {
            span.record("weiling.code", code);
        }
        crate::metrics::weiling_request(
            entity.batch_endpoint(),
            &answer_label(&answer),
            started.elapsed(),
        );
        answer
    }
}

impl AppState {
    async fn wait_hold_off(&self) {
        loop {
            let until = *self
                .hold_off_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    fn hold_off(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut slot = self
            .hold_off_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none_or(|t| t < until) {
            *slot = Some(until);
        }
    }
}

fn transport(detail: String) -> Answer {
    Answer {
        status: TRANSPORT_ERROR,
        code: None,
        body: None,
        retry_after: None,
        detail: format!("transport: {detail}"),
    }
}

fn token_str(token: &Option<AccessToken>) -> &str {
    token.as_ref().map_or("", AccessToken::expose)
}

/// Error text is built without secrets; this catches one sneaking in through a library message.
fn redact(mut text: String, secrets: &[&str]) -> String {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret) {
            text = text.replace(secret, "<redacted>");
        }
    }
    text
}

fn dedup(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

async fn cancellable<F: Future>(
    cancel: &CancellationToken,
    fut: F,
) -> Result<F::Output, EnrichError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(EnrichError::Cancelled),
        out = fut => Ok(out),
    }
}

/// `60 s / limit` per call with a burst of at most 5: `Quota::per_minute(n)` would allow a burst
/// of n, i.e. up to 2n calls within one minute (ecosystem.md, governor).
fn quota(per_minute: u32) -> Result<Quota, EnrichError> {
    let limit = NonZeroU32::new(per_minute)
        .ok_or_else(|| EnrichError::Config("rate_limit_per_minute must be > 0".to_owned()))?;
    let burst = NonZeroU32::new(per_minute.min(5)).unwrap_or(limit);
    let period = Duration::from_secs(60) / limit.get();
    Quota::with_period(period)
        .map(|q| q.allow_burst(burst))
        .ok_or_else(|| EnrichError::Config("rate_limit_per_minute is too large".to_owned()))
}

/// `weiling-relay/<version>`, plus the instance tag in parentheses, reduced to safe header bytes.
fn user_agent(instance: Option<&str>) -> String {
    let base = concat!("weiling-relay/", env!("CARGO_PKG_VERSION"));
    match instance.map(str::trim).filter(|t| !t.is_empty()) {
        None => base.to_owned(),
        Some(tag) => {
            let tag: String = tag
                .chars()
                .take(64)
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-._:/".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{base} ({tag})")
        }
    }
}

/// The bounded `code` label of a Weiling answer: its code, `http_<status>` without one, or `transport`.
fn answer_label(answer: &Answer) -> String {
    match (answer.status, answer.code) {
        (policy::TRANSPORT_ERROR, _) => "transport".to_owned(),
        (_, Some(code)) => crate::metrics::weiling_code_label(code),
        (status, _) => format!("http_{status}"),
    }
}
