//! The ledger of reliability.md (b): every callback sent and its answer, every record read back, and
//! the verdict (lost, unexpected, duplicates, recovered).
//!
//! A callback about a change carries the customer's revision after the change (`simulator::revision`,
//! which counts the simulator's changes of that customer), so "this acknowledged change reached the
//! output" is exact: some record of that customer has a revision at least as large. A callback about
//! an id Weiling does not know is covered by a `missing` record of that id.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde_json::Value;
use weiling_sim::{Outcome, revision};

/// What one callback was about.
#[derive(Debug, Clone)]
pub enum Subject {
    /// The customer and its revision after the change the callback announces.
    Change { customer: String, revision: u64 },
    /// An id the simulator does not know: it must come out as `missing`.
    Ghost(String),
}

impl Subject {
    pub fn id(&self) -> &str {
        match self {
            Self::Change { customer, .. } => customer,
            Self::Ghost(id) => id,
        }
    }
}

/// One ledger line.
#[derive(Debug, Clone)]
pub struct Entry {
    pub subject: Subject,
    pub outcome: Outcome,
    /// When the final answer arrived.
    pub answered_at: Instant,
    /// When the attempt that got the final answer was sent.
    pub sent_at: Instant,
}

/// What the checking consumer has read from the records exchange.
#[derive(Debug, Default)]
pub struct Seen {
    /// Per id: the largest revision of a record read, or `None` when only `missing` was read.
    pub latest: HashMap<String, Option<u64>>,
    pub missing: HashSet<String>,
    pub message_ids: HashMap<String, usize>,
    pub records: usize,
}

impl Seen {
    pub fn add(&mut self, message_id: Option<String>, body: &Value) {
        self.records += 1;
        if let Some(id) = message_id {
            *self.message_ids.entry(id).or_default() += 1;
        }
        let Some(id) = body["customer_id"].as_str() else {
            return;
        };
        if body["op"] == "missing" {
            self.missing.insert(id.to_owned());
            self.latest.entry(id.to_owned()).or_insert(None);
            return;
        }
        let read = revision(&body["record"]);
        let slot = self.latest.entry(id.to_owned()).or_insert(None);
        if read > *slot {
            *slot = read;
        }
    }

    pub fn covers(&self, subject: &Subject) -> bool {
        match subject {
            Subject::Change { customer, revision } => self
                .latest
                .get(customer)
                .is_some_and(|seen| seen.is_some_and(|r| r >= *revision)),
            Subject::Ghost(id) => self.missing.contains(id),
        }
    }

    pub fn duplicates(&self) -> usize {
        self.message_ids.values().map(|n| n - 1).sum()
    }
}

/// The pass rule's inputs, computed from the ledger and what was read.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub callbacks: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Ids of `ok` callbacks whose change never reached the output.
    pub lost: Vec<String>,
    /// Ids in the output that no callback named.
    pub unexpected: Vec<String>,
    pub duplicates: usize,
    /// `info` callbacks whose change did reach the output.
    pub recovered: usize,
    pub records: usize,
}

/// `exempt` marks `ok` callbacks whose loss the fault itself caused by design (they are counted as
/// `ok` but not judged).
pub fn judge(entries: &[Entry], seen: &Seen, exempt: impl Fn(&Entry) -> bool) -> Verdict {
    let named: HashSet<&str> = entries.iter().map(|e| e.subject.id()).collect();
    let mut verdict = Verdict {
        callbacks: entries.len(),
        duplicates: seen.duplicates(),
        records: seen.records,
        ..Verdict::default()
    };
    let mut lost = HashSet::new();
    for entry in entries {
        match entry.outcome {
            Outcome::Ok => {
                verdict.ok += 1;
                if !exempt(entry) && !seen.covers(&entry.subject) {
                    lost.insert(entry.subject.id().to_owned());
                }
            }
            Outcome::Fail => verdict.fail += 1,
            Outcome::Info => {
                verdict.info += 1;
                verdict.recovered += usize::from(seen.covers(&entry.subject));
            }
        }
    }
    verdict.lost = lost.into_iter().collect();
    verdict.lost.sort();
    verdict.unexpected = seen
        .latest
        .keys()
        .filter(|id| !named.contains(id.as_str()))
        .cloned()
        .collect();
    verdict.unexpected.sort();
    verdict
}

/// Whether every judged `ok` callback is covered (the settle condition).
pub fn settled(entries: &[Entry], seen: &Seen, exempt: impl Fn(&Entry) -> bool) -> bool {
    entries
        .iter()
        .filter(|e| e.outcome == Outcome::Ok && !exempt(e))
        .all(|e| seen.covers(&e.subject))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(subject: Subject, outcome: Outcome) -> Entry {
        Entry {
            subject,
            outcome,
            answered_at: Instant::now(),
            sent_at: Instant::now(),
        }
    }

    #[test]
    fn the_verdict_counts_lost_unexpected_duplicates_and_recovered() {
        let change = |c: &str, r| Subject::Change {
            customer: c.into(),
            revision: r,
        };
        let entries = vec![
            entry(change("a", 10), Outcome::Ok),
            entry(change("a", 20), Outcome::Ok),
            entry(change("b", 5), Outcome::Ok),
            entry(change("c", 7), Outcome::Info),
            entry(change("d", 1), Outcome::Fail),
            entry(Subject::Ghost("g".into()), Outcome::Ok),
        ];
        let mut seen = Seen::default();
        let upsert = |c: &str, r: u64| json!({"op": "upsert", "customer_id": c, "record": {"follow_users": [{"remark": format!("{c} #{r}")}]}});
        seen.add(Some("m1".into()), &upsert("a", 20));
        seen.add(Some("m1".into()), &upsert("a", 20));
        seen.add(Some("m2".into()), &upsert("b", 4));
        seen.add(Some("m3".into()), &upsert("c", 7));
        seen.add(Some("m4".into()), &upsert("zz", 1));
        seen.add(
            Some("m5".into()),
            &json!({"op": "missing", "customer_id": "g", "record": null}),
        );
        let v = judge(&entries, &seen, |_| false);
        assert_eq!((v.ok, v.fail, v.info), (4, 1, 1));
        assert_eq!(v.lost, ["b"], "b's change at 5 never arrived (only 4)");
        assert_eq!(v.unexpected, ["zz"]);
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.recovered, 1);
        assert!(!settled(&entries, &seen, |_| false));
        let exempt_b = |e: &Entry| e.subject.id() == "b";
        assert!(settled(&entries, &seen, exempt_b));
        assert!(judge(&entries, &seen, exempt_b).lost.is_empty());
    }
}
