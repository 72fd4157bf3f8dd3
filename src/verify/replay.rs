//! Replay cache: an exact callback seen again inside the replay window is answered without a second store.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::watch;

use super::ReplayKey;

type Digest = [u8; 32];

/// Outcome of the first request with a given key, shared with its exact copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Stored,
    Failed,
}

#[derive(Clone)]
pub struct ReplayCache {
    /// Keyed by a digest of the replay key: a fixed 32 bytes instead of a ~100-byte string, since the
    /// cache holds up to `replay_cache_capacity` entries.
    seen: Cache<Digest, Arc<watch::Sender<Outcome>>>,
}

/// What the caller must do with a verified callback.
pub enum Admission {
    /// First sighting: store it, then report with [`FirstSighting::stored`].
    First(FirstSighting),
    /// Already stored: answer `success`, store nothing.
    AlreadyStored,
    /// An identical request is being stored right now; wait for its outcome.
    InFlight(InFlight),
}

pub struct FirstSighting {
    key: Digest,
    cache: ReplayCache,
    entry: Arc<watch::Sender<Outcome>>,
    stored: bool,
}

impl FirstSighting {
    /// The callback is durable; later copies are answered `success` without a store.
    pub fn stored(mut self) {
        self.stored = true;
        self.entry.send_replace(Outcome::Stored);
    }
}

impl Drop for FirstSighting {
    /// Not stored (error, timeout, cancelled request): forget the key so the sender's retry is stored.
    fn drop(&mut self) {
        if !self.stored {
            self.cache.seen.invalidate(&self.key);
            // Waiting copies fail too and the sender retries, rather than several copies racing to store.
            self.entry.send_replace(Outcome::Failed);
        }
    }
}

pub struct InFlight {
    outcome: watch::Receiver<Outcome>,
}

impl InFlight {
    /// True once the first copy is stored; false if it failed or `within` elapsed.
    pub async fn stored_within(mut self, within: Duration) -> bool {
        let settled = self.outcome.wait_for(|o| *o != Outcome::Pending);
        matches!(
            tokio::time::timeout(within, settled).await,
            Ok(Ok(outcome)) if *outcome == Outcome::Stored
        )
    }
}

impl ReplayCache {
    pub fn new(window: Duration, capacity: u64) -> Self {
        Self {
            seen: Cache::builder()
                .time_to_live(window)
                .max_capacity(capacity)
                .build(),
        }
    }

    /// Atomically claims `key`: concurrent identical requests get exactly one `First`.
    pub fn admit(&self, key: &ReplayKey) -> Admission {
        let key: Digest = *key.as_bytes();
        let entry = self
            .seen
            .entry(key)
            .or_insert_with(|| Arc::new(watch::channel(Outcome::Pending).0));
        let fresh = entry.is_fresh();
        let sender = entry.into_value();
        if fresh {
            return Admission::First(FirstSighting {
                key,
                cache: self.clone(),
                entry: sender,
                stored: false,
            });
        }
        let outcome = sender.subscribe();
        if *outcome.borrow() == Outcome::Stored {
            Admission::AlreadyStored
        } else {
            Admission::InFlight(InFlight { outcome })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ReplayKey {
        ReplayKey::new("wloa1", name.as_bytes())
    }

    fn cache() -> ReplayCache {
        ReplayCache::new(Duration::from_secs(600), 1000)
    }

    #[test]
    fn a_stored_key_is_answered_without_a_second_store() {
        let cache = cache();
        let Admission::First(first) = cache.admit(&key("k")) else {
            panic!("first sighting expected")
        };
        first.stored();
        assert!(matches!(cache.admit(&key("k")), Admission::AlreadyStored));
        assert!(matches!(cache.admit(&key("other")), Admission::First(_)));
    }

    #[test]
    fn a_failed_store_frees_the_key_for_a_retry() {
        let cache = cache();
        let Admission::First(first) = cache.admit(&key("k")) else {
            panic!("first sighting expected")
        };
        drop(first);
        assert!(matches!(cache.admit(&key("k")), Admission::First(_)));
    }

    #[tokio::test]
    async fn copies_in_flight_follow_the_first_outcome() {
        let cache = cache();
        let Admission::First(first) = cache.admit(&key("k")) else {
            panic!("first sighting expected")
        };
        let Admission::InFlight(copy) = cache.admit(&key("k")) else {
            panic!("in-flight copy expected")
        };
        let waiter = tokio::spawn(copy.stored_within(Duration::from_secs(5)));
        first.stored();
        assert!(waiter.await.unwrap());

        let Admission::First(first) = cache.admit(&key("j")) else {
            panic!("first sighting expected")
        };
        let Admission::InFlight(copy) = cache.admit(&key("j")) else {
            panic!("in-flight copy expected")
        };
        let waiter = tokio::spawn(copy.stored_within(Duration::from_secs(5)));
        drop(first);
        assert!(!waiter.await.unwrap());
    }
}
