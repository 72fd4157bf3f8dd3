//! Stage 6 circuit breaker: opens after consecutive failures, then admits exactly one half-open probe.
//!
//! Hand-rolled because failsafe's half-open state admits every concurrent caller (ecosystem.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open: the value of the breaker state gauge.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    /// `Some` while open; half-open is "open and the cool-down has passed".
    opened_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<Inner>,
    probe_in_flight: AtomicBool,
    changed: Notify,
}

/// Leave to make one call. Report the outcome with [`Permit::success`] or [`Permit::failure`];
/// dropping it unreported (cancelled call, answer that says nothing about health) frees a probe slot
/// without changing the state.
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures (at least 1) and stays open for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            inner: Mutex::new(Inner {
                consecutive_failures: 0,
                opened_at: None,
            }),
            probe_in_flight: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections cannot panic half-way, so a poisoned lock still holds a valid state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> BreakerState {
        match self.lock().opened_at {
            None => BreakerState::Closed,
            Some(at) if at.elapsed() < self.cool_down => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// A permit now, or how long to wait before asking again.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Duration> {
        let opened_at = self.lock().opened_at;
        match opened_at {
            None => Ok(Permit {
                breaker: self,
                probe: false,
            }),
            Some(at) => {
                let elapsed = at.elapsed();
                if elapsed < self.cool_down {
                    Err(self.cool_down - elapsed)
                } else if self
                    .probe_in_flight
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    Ok(Permit {
                        breaker: self,
                        probe: true,
                    })
                } else {
                    // The probe's outcome wakes us; the cool-down is only a fallback.
                    Err(self.cool_down.max(Duration::from_millis(10)))
                }
            }
        }
    }

    /// Waits (sleeping, never spinning) until a call may go out. Callers add their own
    /// cancellation around it.
    pub async fn wait_until_call_allowed(&self) -> Permit<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a probe finishing in between is not missed.
            changed.as_mut().enable();
            match self.try_acquire() {
                Ok(permit) => return permit,
                Err(wait) => {
                    let _ = tokio::time::timeout(wait, changed).await;
                }
            }
        }
    }

    fn on_success(&self, probe: bool) {
        let mut inner = self.lock();
        if probe || inner.opened_at.is_none() {
            inner.consecutive_failures = 0;
            inner.opened_at = None;
        }
        // A call let in before the breaker opened proves nothing about now: it is ignored.
    }

    fn on_failure(&self, probe: bool) {
        let mut inner = self.lock();
        if probe {
            inner.opened_at = Some(Instant::now());
        } else if inner.opened_at.is_none() {
            inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
            if inner.consecutive_failures >= self.threshold {
                inner.opened_at = Some(Instant::now());
            }
        }
    }
}

impl Permit<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn success(self) {
        self.breaker.on_success(self.probe);
    }

    pub fn failure(self) {
        self.breaker.on_failure(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probe_in_flight.store(false, Ordering::Release);
            self.breaker.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_millis(100);

    fn fail_n(b: &Breaker, n: u32) {
        for _ in 0..n {
            b.try_acquire().unwrap().failure();
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, COOL);
        fail_n(&b, 2);
        b.try_acquire().unwrap().success();
        fail_n(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        fail_n(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.state().as_gauge(), 1.0);
        let wait = b.try_acquire().unwrap_err();
        assert!(wait <= COOL && wait > Duration::ZERO);
    }

    #[tokio::test]
    async fn half_open_admits_exactly_one_probe_and_success_closes() {
        let b = Breaker::new(1, COOL);
        fail_n(&b, 1);
        tokio::time::sleep(COOL).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.state().as_gauge(), 2.0);
        let probe = b.try_acquire().unwrap();
        assert!(probe.is_probe());
        assert!(b.try_acquire().is_err(), "a second caller must wait");
        assert!(b.try_acquire().is_err());
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.state().as_gauge(), 0.0);
        assert!(!b.try_acquire().unwrap().is_probe());
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_for_a_full_cool_down() {
        let b = Breaker::new(1, COOL);
        fail_n(&b, 1);
        tokio::time::sleep(COOL).await;
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().unwrap_err() > COOL / 2);
    }

    #[tokio::test]
    async fn a_dropped_probe_frees_the_slot_without_closing() {
        let b = Breaker::new(1, COOL);
        fail_n(&b, 1);
        tokio::time::sleep(COOL).await;
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().unwrap().is_probe());
    }

    #[tokio::test]
    async fn late_results_of_calls_admitted_before_opening_are_ignored() {
        let b = Breaker::new(2, COOL);
        let early_ok = b.try_acquire().unwrap();
        let early_fail = b.try_acquire().unwrap();
        fail_n(&b, 2);
        early_ok.success();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::sleep(COOL).await;
        early_fail.failure();
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[tokio::test]
    async fn waiters_sleep_through_the_cool_down_and_wake_after_the_probe() {
        let b = std::sync::Arc::new(Breaker::new(1, COOL));
        fail_n(&b, 1);
        let start = Instant::now();
        let probe = b.wait_until_call_allowed().await;
        assert!(start.elapsed() >= COOL - Duration::from_millis(5));
        assert!(probe.is_probe());

        let waiter = tokio::spawn({
            let b = b.clone();
            async move {
                let p = b.wait_until_call_allowed().await;
                p.is_probe()
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "only one probe at a time");
        probe.success();
        let was_probe = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(!was_probe, "after a good probe the breaker is closed");
    }
}
