//! Replay cache: an exact callback seen again inside the replay window is answered without a second store.
//!
//! Two parts with different lifetimes. Callbacks being stored right now sit in `pending` with a
//! `watch` channel their concurrent copies wait on; there are at most `server.max_in_flight` of them.
//! Stored callbacks sit in `remembered` for the whole window as a bare 16-byte fingerprint: at the
//! default 200,000 entries that part dominates, so it carries nothing else.
//!
//! Eviction is strictly oldest first. A frequency-based admission policy (TinyLFU, as in general
//! caches) would refuse the newest callbacks whenever the cache is full, since each is seen only
//! once; those are exactly the ones a replay targets.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::ReplayKey;

/// The first half of the key's SHA-256: a collision among even 2^32 remembered callbacks has a
/// chance near 2^-64, and the sender cannot pick ciphertexts without the Token.
type Fingerprint = [u8; 16];

/// Outcome of the first request with a given key, shared with its exact copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Stored,
    Failed,
}

#[derive(Clone)]
pub struct ReplayCache {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    /// Zero point of the whole-second timestamps kept per entry (4 bytes instead of an `Instant`'s 16).
    epoch: Instant,
    window_s: u32,
    capacity: usize,
    remembered: HashSet<Fingerprint>,
    /// The same fingerprints in the order they were stored, with the second they were stored in.
    order: VecDeque<(Fingerprint, u32)>,
    pending: HashMap<Fingerprint, watch::Sender<Outcome>>,
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
    key: Fingerprint,
    cache: ReplayCache,
    settled: bool,
}

impl FirstSighting {
    /// The callback is durable; later copies are answered `success` without a store.
    pub fn stored(mut self) {
        self.settled = true;
        let mut inner = self.cache.lock();
        let waiting = inner.pending.remove(&self.key);
        inner.remember(self.key);
        drop(inner);
        if let Some(waiting) = waiting {
            waiting.send_replace(Outcome::Stored);
        }
    }
}

impl Drop for FirstSighting {
    /// Not stored (error, timeout, cancelled request): forget the key so the sender's retry is stored.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let waiting = self.cache.lock().pending.remove(&self.key);
        // Waiting copies fail too and the sender retries, rather than several copies racing to store.
        if let Some(waiting) = waiting {
            waiting.send_replace(Outcome::Failed);
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
    /// `capacity` is validated by the configuration (at most ten million entries).
    pub fn new(window: Duration, capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let inner = Inner {
            epoch: Instant::now(),
            window_s: u32::try_from(window.as_secs()).unwrap_or(u32::MAX),
            capacity,
            // Allocated in full now, so the cache's memory is planned, not discovered: the set gets
            // twice the entries it will hold because eviction leaves tombstones, and a table more
            // than half full of live entries is doubled (not rehashed in place) once they use up
            // its spare room. Sized this way it never grows after start.
            remembered: HashSet::with_capacity(capacity.saturating_mul(2)),
            order: VecDeque::with_capacity(capacity),
            pending: HashMap::new(),
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// Atomically claims `key`: concurrent identical requests get exactly one `First`.
    pub fn admit(&self, key: &ReplayKey) -> Admission {
        let key = fingerprint(key);
        let mut inner = self.lock();
        inner.forget_expired();
        if inner.remembered.contains(&key) {
            return Admission::AlreadyStored;
        }
        if let Some(first) = inner.pending.get(&key) {
            return Admission::InFlight(InFlight {
                outcome: first.subscribe(),
            });
        }
        inner
            .pending
            .insert(key, watch::channel(Outcome::Pending).0);
        drop(inner);
        Admission::First(FirstSighting {
            key,
            cache: self.clone(),
            settled: false,
        })
    }

    /// Stored callbacks currently remembered.
    pub fn len(&self) -> usize {
        self.lock().remembered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nothing inside the lock can panic, so a poisoned lock still guards consistent data.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn now_s(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn remember(&mut self, key: Fingerprint) {
        self.forget_expired();
        while self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        if self.remembered.insert(key) {
            let now = self.now_s();
            self.order.push_back((key, now));
        }
    }

    /// Entries live between `window_s` and `window_s + 1` seconds (whole-second timestamps round
    /// towards keeping them, never towards forgetting early).
    fn forget_expired(&mut self) {
        let now = self.now_s();
        while let Some(&(_, stored_s)) = self.order.front() {
            if now.saturating_sub(stored_s) <= self.window_s {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            self.remembered.remove(&key);
        }
    }
}

fn fingerprint(key: &ReplayKey) -> Fingerprint {
    let mut print = [0u8; 16];
    for (to, from) in print.iter_mut().zip(key.as_bytes()) {
        *to = *from;
    }
    print
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

    fn store(cache: &ReplayCache, name: &str) {
        let Admission::First(first) = cache.admit(&key(name)) else {
            panic!("first sighting of {name} expected")
        };
        first.stored();
    }

    #[test]
    fn a_stored_key_is_answered_without_a_second_store() {
        let cache = cache();
        store(&cache, "k");
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
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_forgets_the_oldest_and_keeps_every_newest() {
        let capacity = 50;
        let cache = ReplayCache::new(Duration::from_secs(600), capacity);
        let names: Vec<String> = (0..2 * capacity).map(|n| format!("cb{n}")).collect();
        for name in &names {
            store(&cache, name);
        }
        assert_eq!(cache.len(), capacity as usize);
        let (oldest, newest) = names.split_at(capacity as usize);
        // Checked newest first: the oldest are then re-admitted as first sightings without evicting
        // any of the newest before they are looked at.
        let recognised = |names: &[String]| {
            names
                .iter()
                .filter(|n| matches!(cache.admit(&key(n)), Admission::AlreadyStored))
                .count()
        };
        assert_eq!(recognised(newest), 50, "every one of the newest 50");
        assert_eq!(recognised(oldest), 0, "none of the oldest 50");
    }

    #[test]
    fn entries_expire_after_the_window_only() {
        let cache = ReplayCache::new(Duration::from_secs(1), 10);
        store(&cache, "k");
        std::thread::sleep(Duration::from_millis(900));
        assert!(matches!(cache.admit(&key("k")), Admission::AlreadyStored));
        std::thread::sleep(Duration::from_millis(2200));
        assert!(matches!(cache.admit(&key("k")), Admission::First(_)));
        assert!(cache.is_empty());
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
