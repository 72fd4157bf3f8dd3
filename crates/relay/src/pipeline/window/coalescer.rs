//! The coalescing core: per app and entity, a de-duplicated id set that remembers which inbox deliveries named each
//! id, and when it is due. Pure and synchronous; the async driver owns the clock and the timer.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use indexmap::IndexMap;
use tokio::time::Instant;

use crate::entity::Entity;

/// An inbox delivery tag on the consumer channel.
pub type DeliveryTag = u64;

/// One event naming one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    pub delivery: DeliveryTag,
    pub event_type: String,
    pub received_at_ms: u64,
}

/// Everything known about why an id is in a window; becomes the record's `source` and its acks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSource {
    pub events: u32,
    pub event_types: BTreeSet<String>,
    pub first_event_at_ms: u64,
    /// Each delivery at most once, so an ack count per delivery stays exact.
    pub deliveries: Vec<DeliveryTag>,
}

impl IdSource {
    fn add(&mut self, contribution: Contribution) {
        self.first_event_at_ms = if self.events == 0 {
            contribution.received_at_ms
        } else {
            self.first_event_at_ms.min(contribution.received_at_ms)
        };
        self.events = self.events.saturating_add(1);
        self.event_types.insert(contribution.event_type);
        if !self.deliveries.contains(&contribution.delivery) {
            self.deliveries.push(contribution.delivery);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    MaxIds,
    Quiet,
    MaxWait,
    Drain,
}

impl FlushReason {
    pub const ALL: [Self; 4] = [Self::MaxIds, Self::Quiet, Self::MaxWait, Self::Drain];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxIds => "max_ids",
            Self::Quiet => "quiet",
            Self::MaxWait => "max_wait",
            Self::Drain => "drain",
        }
    }
}

/// A closed window: one batch call's worth of ids of one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    pub app_id: String,
    pub entity: Entity,
    pub reason: FlushReason,
    pub ids: IndexMap<String, IdSource>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_ids: usize,
    /// Flush when no new id arrived for this long.
    pub quiet: Duration,
    /// Flush when the oldest id waited this long.
    pub max_wait: Duration,
}

struct Window {
    ids: IndexMap<String, IdSource>,
    opened_at: Instant,
    last_new_id_at: Instant,
}

impl Window {
    fn due_at(&self, limits: &Limits) -> Instant {
        (self.last_new_id_at + limits.quiet).min(self.opened_at + limits.max_wait)
    }

    fn reason_at(&self, limits: &Limits, now: Instant) -> Option<FlushReason> {
        if now >= self.opened_at + limits.max_wait {
            Some(FlushReason::MaxWait)
        } else if now >= self.last_new_id_at + limits.quiet {
            Some(FlushReason::Quiet)
        } else {
            None
        }
    }
}

pub struct Coalescer {
    limits: Limits,
    /// Keyed by (app, entity): one batch call asks for one entity of one app.
    windows: HashMap<(String, Entity), Window>,
}

impl Coalescer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                max_ids: limits.max_ids.max(1),
                ..limits
            },
            windows: HashMap::new(),
        }
    }

    /// Adds one event's id. An id already in the window only gains a contribution. Returns the window
    /// when it just reached `max_ids`, so a full batch never waits for a timer.
    pub fn insert(
        &mut self,
        app_id: &str,
        entity: Entity,
        id: &str,
        contribution: Contribution,
        now: Instant,
    ) -> Option<Flush> {
        let key = (app_id.to_owned(), entity);
        let window = self.windows.entry(key.clone()).or_insert_with(|| Window {
            ids: IndexMap::new(),
            opened_at: now,
            last_new_id_at: now,
        });
        if !window.ids.contains_key(id) {
            window.last_new_id_at = now;
        }
        window
            .ids
            .entry(id.to_owned())
            .or_default()
            .add(contribution);
        if window.ids.len() >= self.limits.max_ids {
            return self.close(key, FlushReason::MaxIds);
        }
        None
    }

    /// The earliest moment a window becomes due, for the driver's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.windows.values().map(|w| w.due_at(&self.limits)).min()
    }

    /// Closes every window that is due at `now`.
    pub fn drain_due(&mut self, now: Instant) -> Vec<Flush> {
        let due: Vec<((String, Entity), FlushReason)> = self
            .windows
            .iter()
            .filter_map(|(key, w)| w.reason_at(&self.limits, now).map(|r| (key.clone(), r)))
            .collect();
        due.into_iter()
            .filter_map(|(key, reason)| self.close(key, reason))
            .collect()
    }

    /// Closes every window (shutdown).
    pub fn drain_all(&mut self) -> Vec<Flush> {
        let keys: Vec<(String, Entity)> = self.windows.keys().cloned().collect();
        keys.into_iter()
            .filter_map(|key| self.close(key, FlushReason::Drain))
            .collect()
    }

    /// Ids waiting in open windows.
    pub fn open_ids(&self) -> usize {
        self.windows.values().map(|w| w.ids.len()).sum()
    }

    fn close(&mut self, key: (String, Entity), reason: FlushReason) -> Option<Flush> {
        let window = self.windows.remove(&key)?;
        let (app_id, entity) = key;
        Some(Flush {
            app_id,
            entity,
            reason,
            ids: window.ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Entity = Entity::Customer;

    const LIMITS: Limits = Limits {
        max_ids: 3,
        quiet: Duration::from_millis(200),
        max_wait: Duration::from_millis(1000),
    };

    fn event(delivery: DeliveryTag, event_type: &str, at: u64) -> Contribution {
        Contribution {
            delivery,
            event_type: event_type.into(),
            received_at_ms: at,
        }
    }

    fn ids(flush: &Flush) -> Vec<&str> {
        flush.ids.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_window_flushes_at_once_when_it_reaches_max_ids() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(LIMITS);
        assert!(
            c.insert("a", C, "c1", event(1, "add_customer", 10), t0)
                .is_none()
        );
        assert!(
            c.insert("a", C, "c2", event(2, "add_customer", 11), t0)
                .is_none()
        );
        let flush = c
            .insert("a", C, "c3", event(3, "add_customer", 12), t0)
            .expect("full");
        assert_eq!(flush.reason, FlushReason::MaxIds);
        assert_eq!(ids(&flush), ["c1", "c2", "c3"]);
        assert_eq!(c.open_ids(), 0);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn repeated_ids_are_kept_once_with_every_contribution() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(LIMITS);
        c.insert("a", C, "c1", event(1, "add_customer", 30), t0);
        c.insert("a", C, "c1", event(2, "history_add", 10), t0);
        c.insert("a", C, "c1", event(2, "history_add", 20), t0);
        c.insert("a", C, "c2", event(3, "customer_update", 40), t0);
        assert_eq!(c.open_ids(), 2);
        let flush = c.drain_all().pop().expect("one window");
        let c1 = &flush.ids["c1"];
        assert_eq!(c1.events, 3);
        assert_eq!(c1.first_event_at_ms, 10);
        assert_eq!(c1.deliveries, vec![1, 2], "a delivery is listed once");
        assert_eq!(
            c1.event_types
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["add_customer", "history_add"]
        );
        assert_eq!(flush.reason, FlushReason::Drain);
    }

    #[test]
    fn a_quiet_window_flushes_after_quiet_and_a_busy_one_at_max_wait() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Coalescer::new(Limits {
            max_ids: 100,
            ..LIMITS
        });
        c.insert("quiet", C, "q1", event(1, "e", 0), t0);
        assert_eq!(c.next_deadline(), Some(t0 + ms(200)));
        assert!(c.drain_due(t0 + ms(199)).is_empty());
        let flushed = c.drain_due(t0 + ms(200));
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].reason, FlushReason::Quiet);

        // A new id every 150 ms keeps the quiet timer from firing; max_wait closes the window.
        for i in 0..7u64 {
            c.insert(
                "busy",
                C,
                &format!("b{i}"),
                event(i, "e", 0),
                t0 + ms(150 * i),
            );
            assert!(c.drain_due(t0 + ms(150 * i)).is_empty());
        }
        assert_eq!(c.next_deadline(), Some(t0 + ms(1000)));
        let flushed = c.drain_due(t0 + ms(1000));
        assert_eq!(flushed[0].reason, FlushReason::MaxWait);
        assert_eq!(flushed[0].ids.len(), 7);
    }

    #[test]
    fn a_repeated_id_does_not_extend_the_quiet_period() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Coalescer::new(LIMITS);
        c.insert("a", C, "c1", event(1, "e", 0), t0);
        c.insert("a", C, "c1", event(2, "e", 0), t0 + ms(150));
        assert_eq!(c.drain_due(t0 + ms(200))[0].reason, FlushReason::Quiet);
    }

    #[test]
    fn apps_have_separate_windows() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(LIMITS);
        c.insert("a", C, "c1", event(1, "e", 0), t0);
        c.insert("b", C, "c1", event(2, "e", 0), t0);
        c.insert("a", C, "c2", event(3, "e", 0), t0);
        assert_eq!(c.open_ids(), 3);
        let mut flushed = c.drain_all();
        flushed.sort_by(|x, y| x.app_id.cmp(&y.app_id));
        assert_eq!(ids(&flushed[0]), ["c1", "c2"]);
        assert_eq!(ids(&flushed[1]), ["c1"]);
    }

    #[test]
    fn entities_of_one_app_have_separate_windows() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(LIMITS);
        c.insert("a", C, "same", event(1, "add_customer", 0), t0);
        c.insert("a", Entity::Contact, "same", event(2, "contact_add", 0), t0);
        c.insert(
            "a",
            Entity::Contact,
            "k2",
            event(3, "contact_update", 0),
            t0,
        );
        let mut flushed = c.drain_all();
        flushed.sort_by_key(|f| f.entity);
        assert_eq!(flushed.len(), 2);
        assert_eq!((flushed[0].entity, ids(&flushed[0])), (C, vec!["same"]));
        assert_eq!(
            (flushed[1].entity, ids(&flushed[1])),
            (Entity::Contact, vec!["same", "k2"])
        );
    }

    #[test]
    fn max_ids_of_one_flushes_every_id_alone() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Limits {
            max_ids: 1,
            quiet: Duration::ZERO,
            max_wait: Duration::ZERO,
        });
        let flush = c
            .insert("a", C, "c1", event(1, "e", 0), t0)
            .expect("immediate");
        assert_eq!(ids(&flush), ["c1"]);
    }
}
