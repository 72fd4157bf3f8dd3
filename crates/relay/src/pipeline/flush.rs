//! One closed window through the two stages after it: a Weiling batch call per ≤100 ids ([`enrich`]),
//! then one confirmed record per id ([`publish`]). What became of each id goes back to the consumer,
//! which acks, requeues or parks the deliveries that named it.
//!
//! [`enrich`]: super::enrich
//! [`publish`]: super::publish

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};
use weiling_proto::unix_ms;

use super::enrich::{EnrichError, Isolated, MAX_BATCH_IDS, RefusedId, WeilingClient};
use super::publish::RecordPublisher;
use super::publish::record::{Op, Record};
use super::window::{DeliveryTag, Flush};
use crate::telemetry::propagation;

/// The stages a closed window passes through; cloned into each flush task.
#[derive(Clone)]
pub struct Stages {
    pub enrich: WeilingClient,
    pub publish: RecordPublisher,
}

/// What became of a flush, per id: the deliveries of confirmed ids may be acked, the others not.
#[derive(Debug, Default)]
pub struct FlushOutcome {
    pub app_id: String,
    pub confirmed: Vec<Vec<DeliveryTag>>,
    /// Ids not published; `permanent` says whether a retry could help.
    pub failed: Vec<Vec<DeliveryTag>>,
    /// Ids Weiling refused on their own: only the deliveries naming them are parked, with the id.
    pub refused: Vec<RefusedDeliveries>,
    pub permanent: bool,
    pub records: usize,
    pub missing: usize,
    pub batch_calls: usize,
}

/// The deliveries that named one id Weiling refused on its own, and why.
#[derive(Debug, Clone)]
pub struct RefusedDeliveries {
    pub id: String,
    pub code: i64,
    pub detail: String,
    pub deliveries: Vec<DeliveryTag>,
}

/// Released when a flush's Weiling calls are over (or the flush ended early): the consumer then starts
/// the app's next flush, whose calls may overlap this one's publishes but never its fetches.
pub struct FetchSlot {
    app_id: String,
    done: Option<mpsc::UnboundedSender<String>>,
}

impl FetchSlot {
    pub fn new(app_id: String, done: mpsc::UnboundedSender<String>) -> Self {
        Self {
            app_id,
            done: Some(done),
        }
    }

    fn release(&mut self) {
        if let Some(done) = self.done.take() {
            // The consumer is gone only when its session ended; nothing waits for the slot then.
            let _ = done.send(std::mem::take(&mut self.app_id));
        }
    }
}

impl Drop for FetchSlot {
    /// A flush task that ends or is cancelled before its fetches are over still frees its app.
    fn drop(&mut self) {
        self.release();
    }
}

/// One chunk's answer, kept until the publish phase.
struct Answered {
    chunk_start: usize,
    chunk_len: usize,
    fetched_at_ms: u64,
    records: Vec<(String, Box<RawValue>)>,
    refused: HashMap<String, RefusedId>,
}

/// Enriches and publishes one flush. Publishing retries until confirmed or `abort` fires.
///
/// Every Weiling call of the flush comes first, then `slot` is released, then every record is
/// published: fetches of one app never overlap (so `fetched_at` orders the states of a customer
/// exactly, and the per-app rate limit is not raced), while the next window's call no longer waits
/// for this window's confirms.
pub async fn run(
    flush: Flush,
    stages: &Stages,
    abort: &CancellationToken,
    mut slot: FetchSlot,
) -> FlushOutcome {
    let mut outcome = FlushOutcome {
        app_id: flush.app_id.clone(),
        ..FlushOutcome::default()
    };
    let ids: Vec<String> = flush.ids.keys().cloned().collect();
    let mut answered = Vec::new();
    for (index, chunk) in ids.chunks(MAX_BATCH_IDS).enumerate() {
        outcome.batch_calls += 1;
        let fetched = stages
            .enrich
            .fetch_isolating(&flush.app_id, flush.entity, chunk, abort)
            .await;
        if let Some(state) = stages.enrich.breaker_state(&flush.app_id) {
            crate::metrics::circuit_state(&flush.app_id, state.as_gauge());
        }
        match fetched {
            Ok(Isolated {
                fetched,
                refused,
                calls,
            }) => {
                outcome.batch_calls += calls.saturating_sub(1);
                answered.push(Answered {
                    chunk_start: index * MAX_BATCH_IDS,
                    chunk_len: chunk.len(),
                    fetched_at_ms: unix_ms(std::time::SystemTime::now()),
                    records: fetched.records,
                    refused: refused.into_iter().map(|r| (r.id.clone(), r)).collect(),
                });
            }
            Err(error) => {
                warn!(app_id = %flush.app_id, entity = flush.entity.as_str(), ids = chunk.len(), error = %error, "batch call failed; inbox deliveries stay unacked");
                outcome.permanent |= is_permanent(&error);
                outcome.failed.extend(
                    chunk
                        .iter()
                        .filter_map(|id| flush.ids.get(id))
                        .map(|s| s.deliveries.clone()),
                );
            }
        }
    }
    slot.release();
    for answer in &answered {
        let chunk = ids
            .get(answer.chunk_start..answer.chunk_start + answer.chunk_len)
            .unwrap_or_default();
        publish_chunk(&flush, chunk, answer, stages, abort, &mut outcome).await;
    }
    debug!(app_id = %outcome.app_id, reason = flush.reason.as_str(), records = outcome.records, missing = outcome.missing, failed = outcome.failed.len(), "flush done");
    outcome
}

/// One record per id of a fetched chunk, published concurrently; refused ids are handed back.
async fn publish_chunk(
    flush: &Flush,
    chunk: &[String],
    answer: &Answered,
    stages: &Stages,
    abort: &CancellationToken,
    outcome: &mut FlushOutcome,
) {
    let records: HashMap<&str, &RawValue> = answer
        .records
        .iter()
        .map(|(id, r)| (id.as_str(), &**r))
        .collect();
    // Exported, each record carries this span's context, so a consumer of the records continues the
    // trace of the callbacks that named its customer.
    let span = crate::telemetry::publish_span(stages.publish.exchange());
    span.record("messaging.batch.message_count", chunk.len());
    let mut publishes = Vec::new();
    for id in chunk {
        let Some(source) = flush.ids.get(id) else {
            continue;
        };
        if let Some(refusal) = answer.refused.get(id.as_str()) {
            warn!(app_id = %flush.app_id, entity = flush.entity.as_str(), code = refusal.code, "Weiling refused one id on its own; parking the events that name it");
            outcome.refused.push(RefusedDeliveries {
                id: id.clone(),
                code: refusal.code,
                detail: refusal.detail.clone(),
                deliveries: source.deliveries.clone(),
            });
            continue;
        }
        let (op, record) = match records.get(id.as_str()) {
            Some(record) => (Op::Upsert, Some(*record)),
            None => (Op::Missing, None),
        };
        // Every fetched state is published, even one equal to the last this process sent:
        // other replicas, a failover, `reconcile` or `dlq replay` may have published another
        // state since, and only this one is known to be Weiling's now.
        let mut message = stages.publish.message(&Record {
            entity: flush.entity,
            app_id: &flush.app_id,
            id,
            op,
            record,
            source,
            fetched_at_ms: answer.fetched_at_ms,
        });
        message.properties = propagation::inject(&span, message.properties);
        let first_event_at_ms = source.first_event_at_ms;
        publishes.push(async move {
            let started = std::time::Instant::now();
            let confirmed = stages.publish.publish_until_confirmed(message, abort).await;
            if confirmed {
                let now_ms = unix_ms(std::time::SystemTime::now());
                let since_first_event =
                    Duration::from_millis(now_ms.saturating_sub(first_event_at_ms));
                crate::metrics::record_confirmed(op.as_str(), started.elapsed(), since_first_event);
            }
            (&source.deliveries, op, confirmed)
        });
    }
    for (deliveries, op, confirmed) in join_all(publishes).instrument(span).await {
        if confirmed {
            match op {
                Op::Upsert => outcome.records += 1,
                Op::Missing => outcome.missing += 1,
            }
            outcome.confirmed.push(deliveries.clone());
        } else {
            outcome.failed.push(deliveries.clone());
        }
    }
}

/// A failure a retry cannot fix: the request itself is wrong, or Weiling refused it for good.
fn is_permanent(error: &EnrichError) -> bool {
    matches!(
        error,
        EnrichError::UnknownApp
            | EnrichError::TooManyIds
            | EnrichError::Config(_)
            | EnrichError::Rejected { .. }
    )
}
