//! The simulator's shared state: apps, tokens, customers and contacts, switchable faults, rate windows and the call log.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;

use super::quirks::Quirks;
use super::{BatchCall, SimConfig};
use weiling_proto::entity::Entity;

/// How long a rate window looks back.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Expired tokens are kept this long so a call with one can still be attributed to its app.
const EXPIRED_TOKEN_MEMORY: Duration = Duration::from_secs(600);
const TOKEN_LEN: usize = 96;

/// Everything mutable, behind one lock: a simulator is not a hot path, and one lock makes each answer a
/// consistent snapshot (fault switches, token validity and rate window are read together).
pub(super) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub fn new(config: SimConfig) -> Self {
        Self {
            state: Mutex::new(State {
                config,
                apps: HashMap::new(),
                tokens: HashMap::new(),
                people: HashMap::new(),
                faults: Faults::default(),
                windows: HashMap::new(),
                batch_calls: Vec::new(),
                token_calls: 0,
                quirks: Quirks::default(),
            }),
        }
    }

    /// A panicking test thread must not take the simulator down with it for the other tests.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Faults {
    pub ratio_5xx: f64,
    pub latency: Duration,
    pub http_429_retry_after: Option<u64>,
    pub token_endpoint_down: bool,
    pub garbage: bool,
    /// Apps whose every batch call is answered as over the rate limit (their quota is spent).
    pub exhausted_apps: std::collections::HashSet<String>,
}

pub(super) struct Token {
    pub app_id: String,
    pub valid_until: Instant,
}

/// One customer or contact: its current record and how often it was edited.
pub(super) struct Person {
    pub record: Value,
    pub revision: u64,
}

pub(super) struct State {
    pub config: SimConfig,
    /// app id → app secret
    pub apps: HashMap<String, String>,
    pub tokens: HashMap<String, Token>,
    /// (entity, app id) → id → person, in creation order so listings are stable.
    pub people: HashMap<(Entity, String), IndexMap<String, Person>>,
    pub faults: Faults,
    /// (app id, endpoint) → times of the admitted calls of the last minute.
    pub windows: HashMap<(String, &'static str), VecDeque<Instant>>,
    pub batch_calls: Vec<BatchCall>,
    pub token_calls: usize,
    pub quirks: Quirks,
}

impl State {
    /// Issues a new token for `app_id`; with `reissue_invalidates_old` every older token of the app ends now.
    pub fn issue_token(&mut self, app_id: &str, now: Instant) -> String {
        self.tokens
            .retain(|_, t| t.valid_until + EXPIRED_TOKEN_MEMORY > now);
        if self.config.reissue_invalidates_old {
            for token in self.tokens.values_mut().filter(|t| t.app_id == app_id) {
                token.valid_until = token.valid_until.min(now);
            }
        }
        let token = Alphanumeric.sample_string(&mut rand::rng(), TOKEN_LEN);
        self.tokens.insert(
            token.clone(),
            Token {
                app_id: app_id.to_owned(),
                valid_until: now + self.config.token_ttl,
            },
        );
        token
    }

    /// The app a token was issued to, and whether it is still valid at `now`.
    pub fn token_app(&self, token: &str, now: Instant) -> Option<(&str, bool)> {
        self.tokens
            .get(token)
            .map(|t| (t.app_id.as_str(), now < t.valid_until))
    }

    pub fn expire_tokens(&mut self, now: Instant) {
        for token in self.tokens.values_mut() {
            token.valid_until = token.valid_until.min(now);
        }
    }

    /// Sliding one-minute window per app and endpoint. Only admitted calls count, so a client that keeps
    /// hammering while limited is not locked out for longer than the window.
    pub fn admit(&mut self, app_id: &str, endpoint: &'static str, now: Instant) -> bool {
        let limit = usize::try_from(self.config.rate_limit_per_minute).unwrap_or(usize::MAX);
        let window = self
            .windows
            .entry((app_id.to_owned(), endpoint))
            .or_default();
        while window
            .front()
            .is_some_and(|&t| now.duration_since(t) >= RATE_WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= limit {
            return false;
        }
        window.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_admits_the_limit_then_refuses_until_a_minute_passed() {
        let shared = Shared::new(SimConfig {
            rate_limit_per_minute: 2,
            ..SimConfig::default()
        });
        let mut state = shared.lock();
        let t0 = Instant::now();
        assert!(state.admit("a", "batch", t0));
        assert!(state.admit("a", "batch", t0));
        assert!(!state.admit("a", "batch", t0 + Duration::from_secs(59)));
        assert!(state.admit("b", "batch", t0), "limits are per app");
        assert!(state.admit("a", "other", t0), "limits are per endpoint");
        assert!(state.admit("a", "batch", t0 + RATE_WINDOW));
    }

    #[test]
    fn reissue_keeps_or_revokes_the_old_token_as_configured() {
        for revoke in [false, true] {
            let shared = Shared::new(SimConfig {
                reissue_invalidates_old: revoke,
                ..SimConfig::default()
            });
            let mut state = shared.lock();
            let now = Instant::now();
            let old = state.issue_token("a", now);
            let new = state.issue_token("a", now);
            assert_ne!(old, new);
            assert!(old.len() >= 64);
            assert_eq!(state.token_app(&old, now), Some(("a", !revoke)));
            assert_eq!(state.token_app(&new, now), Some(("a", true)));
        }
    }
}
