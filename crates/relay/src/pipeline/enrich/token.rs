//! Stage 6 access tokens: one cached token per app, refreshed single-flight shortly before it expires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::policy::TRANSPORT_ERROR;
use super::wire::{self, BodyError};

/// Weiling's token path, relative to `base_url`.
pub const TOKEN_PATH: &str = "/openapi/auth/access_token/get";

/// What a token answer without a usable `expires_in` is taken to mean (weiling-api.md, open question 1).
const DEFAULT_EXPIRES_IN_S: u64 = 7200;

/// A token answer is a few hundred bytes; anything near this is not a token answer.
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// One issued access token. `generation` identifies it without comparing secrets, so a stale
/// [`TokenCache::invalidate`] cannot throw away a newer token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    value: SecretString,
    generation: u64,
}

impl AccessToken {
    /// The raw token, for the `access_token` query parameter only.
    pub(crate) fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Why no token could be had. Never carries the secret, the token or the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token request failed: {0}")]
    Transport(String),
    #[error("token endpoint answered HTTP {0}")]
    Http(u16),
    #[error("token endpoint refused with code {0}")]
    Refused(i64),
    #[error("token answer unreadable: {0}")]
    Malformed(&'static str),
}

impl TokenError {
    /// The (status, code) pair [`super::policy::classify`] understands.
    pub fn status_and_code(&self) -> (u16, Option<i64>) {
        match self {
            Self::Transport(_) => (TRANSPORT_ERROR, None),
            Self::Http(status) => (*status, None),
            Self::Refused(code) => (200, Some(*code)),
            Self::Malformed(_) => (200, None),
        }
    }
}

struct Slot {
    current: Option<(AccessToken, Instant)>,
    /// Callers queued behind a failed fetch share its error instead of each hitting the endpoint.
    last_error: Option<TokenError>,
    generation: u64,
}

/// The token cache of one app.
pub struct TokenCache {
    http: reqwest::Client,
    url: String,
    app_id: String,
    app_secret: SecretString,
    margin: Duration,
    timeout: Duration,
    slot: Mutex<Slot>,
    finished_fetches: AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// `base_url` without a trailing slash; `timeout` bounds one token call end to end.
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        app_id: &str,
        app_secret: SecretString,
        refresh_margin: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url: format!("{}{TOKEN_PATH}", base_url.trim_end_matches('/')),
            app_id: app_id.to_owned(),
            app_secret,
            margin: refresh_margin,
            timeout,
            slot: Mutex::new(Slot {
                current: None,
                last_error: None,
                generation: 0,
            }),
            finished_fetches: AtomicU64::new(0),
        }
    }

    /// The cached token, or a fresh one. Concurrent callers share one fetch: the lock is held
    /// across it, and whoever gets the lock next finds the new token (or the shared error).
    pub async fn get(&self) -> Result<AccessToken, TokenError> {
        let fetches_before = self.finished_fetches.load(Ordering::Acquire);
        let mut slot = self.slot.lock().await;
        if let Some((token, refresh_at)) = &slot.current
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        if self.finished_fetches.load(Ordering::Acquire) != fetches_before
            && let Some(err) = &slot.last_error
        {
            return Err(err.clone());
        }
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(TokenError::Transport("timed out".to_owned())),
        };
        let label = match &result {
            Ok(_) => "0".to_owned(),
            Err(TokenError::Refused(code)) => crate::metrics::weiling_code_label(*code),
            Err(TokenError::Http(status)) => format!("http_{status}"),
            Err(TokenError::Transport(_)) => "transport".to_owned(),
            Err(TokenError::Malformed(_)) => "malformed".to_owned(),
        };
        crate::metrics::weiling_request("auth/access_token", &label, started.elapsed());
        if result.is_ok() {
            crate::metrics::token_refreshed();
        }
        self.finished_fetches.fetch_add(1, Ordering::Release);
        match result {
            Ok((value, lifetime)) => {
                slot.generation = slot.generation.wrapping_add(1);
                let token = AccessToken {
                    value,
                    generation: slot.generation,
                };
                slot.current = Some((token.clone(), Instant::now() + lifetime));
                slot.last_error = None;
                debug!(app_id = %self.app_id, lifetime_s = lifetime.as_secs(), "access token refreshed");
                Ok(token)
            }
            Err(err) => {
                warn!(app_id = %self.app_id, error = %err, "access token refresh failed");
                slot.current = None;
                slot.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Drops `token` if it is still the cached one; a token refreshed in the meantime is kept.
    pub async fn invalidate(&self, token: &AccessToken) {
        let mut slot = self.slot.lock().await;
        if slot
            .current
            .as_ref()
            .is_some_and(|(cur, _)| cur.generation == token.generation)
        {
            slot.current = None;
            debug!(app_id = %self.app_id, "access token invalidated");
        }
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), TokenError> {
        let resp = self
            .http
            .get(&self.url)
            .query(&[
                ("app_id", self.app_id.as_str()),
                ("app_secret", self.app_secret.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| TokenError::Transport(wire::describe_transport(&e)))?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err(TokenError::Http(status));
        }
        let bytes = wire::read_capped(resp, MAX_TOKEN_BODY)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => TokenError::Malformed("body too large"),
                BodyError::Transport(d) => TokenError::Transport(d),
            })?;
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed("not JSON"))?;
        match wire::envelope_code(&body) {
            Some(0) => {}
            Some(code) => return Err(TokenError::Refused(code)),
            None => return Err(TokenError::Malformed("no code")),
        }
        let data = body.get("data");
        let token = data
            .and_then(|d| d.get("access_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Malformed("no access_token"))?;
        let expires_in = data
            .and_then(|d| d.get("expires_in"))
            .and_then(wire::parse_int)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_EXPIRES_IN_S);
        Ok((
            SecretString::from(token.to_owned()),
            refresh_after(expires_in, self.margin),
        ))
    }
}

/// How long a token is used: until `margin` before it expires, or half its life if the margin
/// would eat all of it (a refresh loop on every call would be worse than a slightly early refresh).
pub fn refresh_after(expires_in_s: u64, margin: Duration) -> Duration {
    let life = Duration::from_secs(expires_in_s);
    if margin < life {
        life - margin
    } else {
        life / 2
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_server::{APP_ID, APP_SECRET, FakeWeiling};
    use super::*;

    fn cache(fake: &FakeWeiling, margin_s: u64) -> TokenCache {
        TokenCache::new(
            reqwest::Client::new(),
            &fake.base_url,
            APP_ID,
            SecretString::from(APP_SECRET),
            Duration::from_secs(margin_s),
            Duration::from_secs(2),
        )
    }

    #[test]
    fn refresh_happens_margin_before_expiry_or_at_half_life() {
        assert_eq!(
            refresh_after(7200, Duration::from_secs(300)),
            Duration::from_secs(6900)
        );
        assert_eq!(
            refresh_after(100, Duration::from_secs(100)),
            Duration::from_secs(50)
        );
        assert_eq!(
            refresh_after(60, Duration::from_secs(600)),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn twenty_concurrent_callers_cause_one_token_call() {
        let fake = FakeWeiling::start().await;
        fake.set_token_delay(Duration::from_millis(200));
        let cache = Arc::new(cache(&fake, 300));
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await })
            })
            .collect();
        let mut generations = Vec::new();
        for call in calls {
            generations.push(call.await.unwrap().unwrap().generation());
        }
        assert_eq!(fake.token_calls(), 1);
        assert!(generations.iter().all(|g| *g == generations[0]));
        // Cached afterwards too.
        cache.get().await.unwrap();
        assert_eq!(fake.token_calls(), 1);
    }

    #[tokio::test]
    async fn a_stale_invalidation_keeps_the_newer_token() {
        let fake = FakeWeiling::start().await;
        let cache = cache(&fake, 300);
        let first = cache.get().await.unwrap();
        cache.invalidate(&first).await;
        let second = cache.get().await.unwrap();
        assert_eq!(fake.token_calls(), 2);
        assert_ne!(first.generation(), second.generation());
        assert_ne!(first.expose(), second.expose());

        // A caller still holding `first` reports it bad: `second` must survive.
        cache.invalidate(&first).await;
        let again = cache.get().await.unwrap();
        assert_eq!(again.generation(), second.generation());
        assert_eq!(fake.token_calls(), 2);
    }

    #[tokio::test]
    async fn expires_in_as_string_and_a_huge_margin_still_cache() {
        let fake = FakeWeiling::start().await;
        fake.set_expires_in(serde_json::json!("7200"));
        // Margin larger than the lifetime: half-life (3600 s) keeps it cached.
        let cache = cache(&fake, 10_000);
        cache.get().await.unwrap();
        cache.get().await.unwrap();
        assert_eq!(fake.token_calls(), 1);
    }

    #[tokio::test]
    async fn a_short_lifetime_is_refreshed() {
        let fake = FakeWeiling::start().await;
        fake.set_expires_in(serde_json::json!(1));
        let cache = cache(&fake, 0);
        let first = cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let second = cache.get().await.unwrap();
        assert_ne!(first.generation(), second.generation());
        assert_eq!(fake.token_calls(), 2);
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_without_leaking_it() {
        let fake = FakeWeiling::start().await;
        let cache = TokenCache::new(
            reqwest::Client::new(),
            &fake.base_url,
            APP_ID,
            SecretString::from("WrongSecretValue"),
            Duration::from_secs(300),
            Duration::from_secs(2),
        );
        let err = cache.get().await.unwrap_err();
        assert_eq!(err, TokenError::Refused(501));
        assert!(!format!("{err} {err:?}").contains("WrongSecretValue"));
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_transport_error_without_the_url() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cache = TokenCache::new(
            reqwest::Client::new(),
            &format!("http://127.0.0.1:{port}"),
            APP_ID,
            SecretString::from(APP_SECRET),
            Duration::from_secs(300),
            Duration::from_secs(2),
        );
        let err = cache.get().await.unwrap_err();
        assert!(matches!(err, TokenError::Transport(_)), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(APP_SECRET), "{shown}");
        assert!(!shown.contains("app_secret"), "{shown}");
        assert_eq!(err.status_and_code(), (TRANSPORT_ERROR, None));
    }
}
