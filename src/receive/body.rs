//! Reading a callback's body: only under an in-flight permit, within `server.body_timeout_ms`, and
//! never past `server.max_body_bytes`.
//!
//! The permit is taken before the first body byte is read, so memory held by bodies is bounded by
//! `max_in_flight × max_body_bytes` however many connections are open. A sender that stalls in the
//! middle of its body would then hold a permit until its deadline; when every permit is taken, a new
//! callback cuts the oldest body still being read and takes its permit. A genuine callback's body
//! arrives in milliseconds, so the oldest unfinished body is a stalled one, and stalled senders
//! cannot lock genuine ones out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::web::{self, Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Why a body was not read in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than server.max_body_bytes")]
    TooLarge,
    #[error("the body did not arrive within server.body_timeout_ms")]
    TimedOut,
    #[error("the body was still unfinished when every in-flight permit was needed")]
    Cut,
    #[error("the connection failed while the body was read")]
    Broken,
}

/// The in-flight permits and the bodies being read under them, oldest first.
pub struct BodyGate {
    in_flight: Arc<Semaphore>,
    reading: Mutex<Reading>,
    max_body_bytes: usize,
    timeout: Duration,
}

#[derive(Default)]
struct Reading {
    next: u64,
    open: BTreeMap<u64, (OwnedSemaphorePermit, CancellationToken)>,
}

/// A body being read: its permit sits in the gate so a newer callback can take it over.
pub struct ReadSlot {
    gate: Arc<BodyGate>,
    seq: u64,
    cut: CancellationToken,
}

impl BodyGate {
    pub fn new(max_in_flight: usize, max_body_bytes: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            reading: Mutex::new(Reading::default()),
            max_body_bytes,
            timeout,
        })
    }

    /// A permit for one more callback: a free one, or the one of the oldest body still being read.
    /// `None` when every permit belongs to a callback past its body (being stored): answer 429.
    pub fn enter(self: &Arc<Self>) -> Option<ReadSlot> {
        let permit = match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let (permit, cut) = self.lock().open.pop_first()?.1;
                cut.cancel();
                permit
            }
        };
        let cut = CancellationToken::new();
        let mut reading = self.lock();
        let seq = reading.next;
        reading.next += 1;
        reading.open.insert(seq, (permit, cut.clone()));
        drop(reading);
        Some(ReadSlot {
            gate: self.clone(),
            seq,
            cut,
        })
    }

    /// A declared length over the limit is refused before any permit is taken.
    pub fn check_length(&self, content_length: Option<usize>) -> Result<(), BodyError> {
        match content_length {
            Some(length) if length > self.max_body_bytes => Err(BodyError::TooLarge),
            _ => Ok(()),
        }
    }

    /// Bodies being read right now.
    pub fn reading(&self) -> usize {
        self.lock().open.len()
    }

    /// Nothing inside the lock can panic, so a poisoned lock still guards consistent data.
    fn lock(&self) -> MutexGuard<'_, Reading> {
        self.reading.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReadSlot {
    /// Reads the whole body, then hands back the permit, which the callback keeps until answered.
    pub async fn read(
        self,
        mut payload: web::Payload,
        content_length: Option<usize>,
    ) -> Result<(Bytes, OwnedSemaphorePermit), BodyError> {
        let limit = self.gate.max_body_bytes;
        self.gate.check_length(content_length)?;
        let whole = async {
            // Sized by the declared length (already checked against the limit), so the buffer never
            // doubles past what the sender sends.
            let mut body = BytesMut::with_capacity(content_length.unwrap_or(0));
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|_| BodyError::Broken)?;
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body.freeze())
        };
        let body = tokio::select! {
            read = tokio::time::timeout(self.gate.timeout, whole) => {
                read.map_err(|_| BodyError::TimedOut)??
            }
            () = self.cut.cancelled() => return Err(BodyError::Cut),
        };
        // Cut at the very moment the body completed: the permit already went to a newer callback.
        let permit = self.take_permit().ok_or(BodyError::Cut)?;
        Ok((body, permit))
    }

    fn take_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.gate
            .lock()
            .open
            .remove(&self.seq)
            .map(|(permit, _)| permit)
    }
}

impl Drop for ReadSlot {
    /// A body that failed or was abandoned frees its permit.
    fn drop(&mut self) {
        drop(self.take_permit());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gate_cuts_the_oldest_unfinished_body() {
        let gate = BodyGate::new(2, 1024, Duration::from_secs(5));
        let first = gate.enter().unwrap();
        let second = gate.enter().unwrap();
        assert_eq!(gate.reading(), 2);
        let third = gate.enter().unwrap();
        assert!(first.cut.is_cancelled(), "the oldest is cut");
        assert!(!second.cut.is_cancelled() && !third.cut.is_cancelled());
        assert_eq!(gate.reading(), 2);
        drop(first);
        assert_eq!(gate.reading(), 2, "a cut slot no longer owns a permit");
        drop((second, third));
        assert_eq!(gate.reading(), 0);
        assert_eq!(gate.in_flight.available_permits(), 2);
    }

    #[test]
    fn permits_held_past_the_body_are_never_cut() {
        let gate = BodyGate::new(1, 1024, Duration::from_secs(5));
        let slot = gate.enter().unwrap();
        let permit = slot.take_permit().unwrap();
        assert!(gate.enter().is_none(), "the only permit is storing: 429");
        drop(permit);
        assert!(gate.enter().is_some());
    }
}
