//! What the mirror did: counts by entity and outcome, dead letters and requeues, for the periodic
//! summary line, the metrics, and tests that wait for a number of records to be settled.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tracing::info;

use super::apply::Outcome;
use super::message::Entity;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub records: BTreeMap<(Entity, Outcome), u64>,
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Batches handed back to the queue after a transient failure.
    pub requeued_batches: u64,
}

impl Counts {
    pub fn get(&self, entity: Entity, outcome: Outcome) -> u64 {
        self.records.get(&(entity, outcome)).copied().unwrap_or(0)
    }

    /// Records committed, whatever their outcome.
    pub fn committed(&self) -> u64 {
        self.records.values().sum()
    }

    pub fn dead_lettered(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    /// Deliveries settled for good: committed or dead-lettered.
    pub fn settled(&self) -> u64 {
        self.committed() + self.dead_lettered()
    }

    fn outcome_total(&self, outcome: Outcome) -> u64 {
        Entity::ALL.iter().map(|e| self.get(*e, outcome)).sum()
    }
}

/// Shared between the mirror and whoever watches it.
#[derive(Debug)]
pub struct Stats {
    counts: Mutex<Counts>,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            counts: Mutex::default(),
            started: Instant::now(),
        }
    }
}

impl Stats {
    pub fn snapshot(&self) -> Counts {
        self.lock().clone()
    }

    pub(crate) fn committed(&self, outcomes: &[(Entity, Outcome)]) {
        let mut counts = self.lock();
        for &(entity, outcome) in outcomes {
            *counts.records.entry((entity, outcome)).or_default() += 1;
            relay::metrics::mirror_record(entity.as_str(), outcome.as_str());
        }
    }

    pub(crate) fn dead_lettered(&self, reason: &'static str) {
        *self.lock().dead_letters.entry(reason).or_default() += 1;
        relay::metrics::mirror_dead_letter(reason);
    }

    pub(crate) fn requeued(&self) {
        self.lock().requeued_batches += 1;
    }

    /// One info line with the totals since start and the rate since the previous line.
    pub(crate) fn log_summary(&self, message: &'static str, since: &mut (Instant, u64)) {
        let counts = self.snapshot();
        let settled = counts.settled();
        let elapsed = since.0.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            (settled - since.1.min(settled)) as f64 / elapsed
        } else {
            0.0
        };
        *since = (Instant::now(), settled);
        info!(
            applied = counts.outcome_total(Outcome::Applied),
            deleted = counts.outcome_total(Outcome::Deleted),
            stale = counts.outcome_total(Outcome::Stale),
            duplicate = counts.outcome_total(Outcome::Duplicate),
            customers = Outcome::ALL
                .iter()
                .map(|o| counts.get(Entity::Customer, *o))
                .sum::<u64>(),
            contacts = Outcome::ALL
                .iter()
                .map(|o| counts.get(Entity::Contact, *o))
                .sum::<u64>(),
            dead_lettered = counts.dead_lettered(),
            requeued_batches = counts.requeued_batches,
            records_per_s = format!("{rate:.0}"),
            uptime_s = self.started.elapsed().as_secs(),
            "{message}"
        );
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
