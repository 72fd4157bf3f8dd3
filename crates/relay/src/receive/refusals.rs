//! Refused callbacks are logged as summaries, not one line each: a flood of forged requests must not
//! become a flood of log lines. Every refusal is still counted exactly in `relay_callbacks_total`;
//! the log says, once per interval, how many were refused and why.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How often a summary is written while refusals keep coming.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Which log level a summary takes: refusals of bad input are expected (INFO); callbacks the relay
/// could not store point at its own trouble (WARN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Refused,
    NotStored,
}

/// Counts per (outcome, reason) since the last summary.
pub struct RefusalLog {
    severity: Severity,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    since: Option<Instant>,
    counts: BTreeMap<(&'static str, &'static str), u64>,
}

impl RefusalLog {
    pub fn new(severity: Severity, interval: Duration) -> Self {
        Self {
            severity,
            interval,
            window: Mutex::new(Window::default()),
        }
    }

    /// Counts one refusal; writes the summary when the interval since the first uncounted one has
    /// passed. The first refusal after a quiet spell is written at once, so a lone one is not
    /// delayed by a whole interval.
    pub fn record(&self, outcome: &'static str, reason: &'static str) {
        let now = Instant::now();
        let due = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            let quiet = window.since.is_none();
            let since = *window.since.get_or_insert(now);
            *window.counts.entry((outcome, reason)).or_default() += 1;
            if quiet || now.duration_since(since) >= self.interval {
                Some(take(&mut window, now))
            } else {
                None
            }
        };
        if let Some((counts, over)) = due {
            self.write(&counts, over);
        }
    }

    /// Writes what was counted since the last summary, if anything (the periodic tick and the drain
    /// call it so a burst's tail is not held back until the next refusal).
    pub fn flush(&self) {
        let taken = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            (!window.counts.is_empty()).then(|| take(&mut window, Instant::now()))
        };
        if let Some((counts, over)) = taken {
            self.write(&counts, over);
        } else {
            // Nothing counted: the next refusal is the first after a quiet spell again.
            self.window
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .since = None;
        }
    }

    fn write(&self, counts: &BTreeMap<(&'static str, &'static str), u64>, over: Duration) {
        let total: u64 = counts.values().sum();
        let mut by_reason = String::new();
        for ((outcome, reason), n) in counts {
            if !by_reason.is_empty() {
                by_reason.push_str(", ");
            }
            let _ = write!(by_reason, "{outcome}/{reason}: {n}");
        }
        let over_s = over.as_secs_f64();
        match self.severity {
            Severity::Refused => info!(
                refused = total,
                over_s,
                by_reason = %by_reason,
                "callbacks refused"
            ),
            Severity::NotStored => warn!(
                not_stored = total,
                over_s,
                by_reason = %by_reason,
                "callbacks not stored"
            ),
        }
    }
}

/// The counts so far and the time they cover; the next window starts now, still counting as busy.
fn take(
    window: &mut Window,
    now: Instant,
) -> (BTreeMap<(&'static str, &'static str), u64>, Duration) {
    let over = window
        .since
        .map_or(Duration::ZERO, |s| now.duration_since(s));
    window.since = Some(now);
    (std::mem::take(&mut window.counts), over)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(log: &RefusalLog) -> u64 {
        log.window.lock().unwrap().counts.values().sum()
    }

    #[test]
    fn the_first_refusal_is_written_at_once_and_a_flood_is_held_for_the_summary() {
        let log = RefusalLog::new(Severity::Refused, Duration::from_secs(3600));
        log.record("unauthorized", "bad signature");
        assert_eq!(pending(&log), 0, "a lone refusal is written at once");
        for _ in 0..1000 {
            log.record("unauthorized", "bad signature");
        }
        log.record("bad_request", "missing nonce");
        assert_eq!(pending(&log), 1001, "held until the interval passes");
        log.flush();
        assert_eq!(pending(&log), 0);
        log.flush();
        log.record("unauthorized", "bad signature");
        assert_eq!(
            pending(&log),
            0,
            "after a quiet tick, the next one is written at once"
        );
    }

    #[test]
    fn a_summary_is_written_once_the_interval_passed() {
        let log = RefusalLog::new(Severity::NotStored, Duration::from_millis(20));
        log.record("broker_unavailable", "-");
        log.record("broker_unavailable", "-");
        assert_eq!(pending(&log), 1);
        std::thread::sleep(Duration::from_millis(30));
        log.record("broker_unavailable", "-");
        assert_eq!(pending(&log), 0);
    }
}
