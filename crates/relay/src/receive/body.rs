//! Reading a callback's body: only under an in-flight permit, within `server.body_timeout_ms`, and
//! never past `server.max_body_bytes`.
//!
//! The permit is taken before the first body byte is read, so memory held by bodies is bounded by
//! `max_in_flight × max_body_bytes` however many connections are open. A sender that stalls in the
//! middle of its body would then hold a permit until its deadline; when every permit is taken, a new
//! callback cuts the oldest body still being read (that sender is answered 503 + Retry-After) and
//! takes its permit. A genuine callback's body arrives in milliseconds, so the oldest unfinished
//! body is a stalled one, and stalled senders cannot lock genuine ones out. In a burst of genuine
//! callbacks the one cut is simply refused like any other over capacity, and retried.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::web::{self, Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::ServerSettings;

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
    max_unfinished: usize,
    max_body_bytes: usize,
    timeout: Duration,
}

#[derive(Default)]
struct Reading {
    next: u64,
    open: BTreeMap<u64, Open>,
}

/// A body being read: its permit, and how to cut it.
struct Open {
    permit: OwnedSemaphorePermit,
    cut: CancellationToken,
}

impl Reading {
    /// Cuts the oldest unfinished body (its sender is answered 503) and hands over its permit.
    fn cut_oldest(&mut self) -> Option<OwnedSemaphorePermit> {
        let open = self.open.pop_first()?.1;
        open.cut.cancel();
        Some(open.permit)
    }
}

/// A body being read: its permit sits in the gate so a newer callback can take it over.
pub struct ReadSlot {
    gate: Arc<BodyGate>,
    seq: u64,
    cut: CancellationToken,
}

impl BodyGate {
    pub fn new(limits: &ServerSettings) -> Arc<Self> {
        Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            reading: Mutex::new(Reading::default()),
            max_unfinished: limits.max_unfinished_bodies.max(1),
            max_body_bytes: limits.max_body_bytes,
            timeout: Duration::from_millis(limits.body_timeout_ms),
        })
    }

    #[cfg(test)]
    fn with(max_in_flight: usize, max_unfinished: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            reading: Mutex::new(Reading::default()),
            max_unfinished,
            max_body_bytes: 1024,
            timeout: Duration::from_secs(5),
        })
    }

    /// A permit for one more callback: a free one, or the one of the oldest body still being read.
    /// The oldest unfinished body is also cut when `max_unfinished` bodies are being read already.
    /// `None` when every permit belongs to a callback past its body (being stored): answer 429.
    pub fn enter(self: &Arc<Self>) -> Option<ReadSlot> {
        let mut reading = self.lock();
        let permit = if reading.open.len() >= self.max_unfinished {
            reading.cut_oldest()?
        } else {
            match self.in_flight.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => reading.cut_oldest()?,
            }
        };
        let cut = CancellationToken::new();
        let seq = reading.next;
        reading.next += 1;
        reading.open.insert(
            seq,
            Open {
                permit,
                cut: cut.clone(),
            },
        );
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
            // Kept as the chunks the HTTP layer handed over and joined once complete: a stalled
            // body then holds only what it sent, never a buffer sized for what it announced.
            let mut chunks: Vec<Bytes> = Vec::new();
            let mut length = 0usize;
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|_| BodyError::Broken)?;
                length += chunk.len();
                if length > limit {
                    return Err(BodyError::TooLarge);
                }
                chunks.push(chunk);
            }
            Ok(join(chunks, length))
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
            .map(|open| open.permit)
    }
}

/// Refusals discard at most this much of an unread body, for at most [`DISCARD_WITHIN`]; a sender
/// still writing past that finds the connection closed.
const DISCARD_MAX_BYTES: usize = 16 << 20;
const DISCARD_WITHIN: Duration = Duration::from_secs(1);

/// Reads and drops the rest of a body the relay answers without using (429, 413, 415, 503). The
/// connection is closed right after such an answer, and closing one with unread data resets it:
/// the sender would see an error instead of the answer. Nothing is kept, so this costs no memory.
pub async fn discard(mut payload: web::Payload) {
    let drained = async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = payload.next().await {
            read += chunk.len();
            if read > DISCARD_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_WITHIN, drained).await;
}

fn join(mut chunks: Vec<Bytes>, length: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut body = BytesMut::with_capacity(length);
    for chunk in &chunks {
        body.extend_from_slice(chunk);
    }
    body.freeze()
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
        let gate = BodyGate::with(2, 2);
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
    fn at_most_max_unfinished_bodies_are_read_at_once() {
        let gate = BodyGate::with(10, 2);
        let first = gate.enter().unwrap();
        let _second = gate.enter().unwrap();
        let _third = gate.enter().unwrap();
        assert!(first.cut.is_cancelled());
        assert_eq!(gate.reading(), 2);
        assert_eq!(
            gate.in_flight.available_permits(),
            8,
            "the cut permit was reused"
        );
    }

    #[test]
    fn permits_held_past_the_body_are_never_cut() {
        let gate = BodyGate::with(1, 1);
        let slot = gate.enter().unwrap();
        let permit = slot.take_permit().unwrap();
        assert!(gate.enter().is_none(), "the only permit is storing: 429");
        drop(permit);
        assert!(gate.enter().is_some());
    }
}
