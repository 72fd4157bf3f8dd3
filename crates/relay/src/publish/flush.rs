//! One closed window end to end: a batch call per ≤100 ids, then one confirmed record per id.

use std::time::Duration;

use backon::BackoffBuilder;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::RecordSink;
use super::record::{self, Op, Record};
use crate::enrich::{EnrichError, Isolated, RefusedId};
use crate::verify::unix_ms;
use crate::window::{DeliveryTag, Flush};
use serde_json::value::RawValue;

/// Weiling's documented batch cap.
pub const BATCH_CAP: usize = 100;
/// One record publish may wait this long for its confirm before it is retried.
const CONFIRM_WAIT: Duration = Duration::from_secs(15);

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

/// Enriches and publishes one flush. Publishing retries until confirmed or `abort` fires, because the
/// inputs stay unacked (durable) meanwhile and a nack or a lost link is usually short.
pub async fn run(flush: Flush, sink: &RecordSink, abort: &CancellationToken) -> FlushOutcome {
    let mut outcome = FlushOutcome {
        app_id: flush.app_id.clone(),
        ..FlushOutcome::default()
    };
    let ids: Vec<String> = flush.ids.keys().cloned().collect();
    for chunk in ids.chunks(BATCH_CAP) {
        outcome.batch_calls += 1;
        let fetched = sink
            .client
            .fetch_isolating(&flush.app_id, flush.entity, chunk, abort)
            .await;
        if let Some(state) = sink.client.breaker_state(&flush.app_id) {
            crate::metrics::circuit_state(&flush.app_id, state.as_gauge());
        }
        let Isolated {
            fetched,
            refused,
            calls,
        } = match fetched {
            Ok(isolated) => isolated,
            Err(error) => {
                warn!(app_id = %flush.app_id, entity = flush.entity.as_str(), ids = chunk.len(), error = %error, "batch call failed; inbox deliveries stay unacked");
                outcome.permanent |= is_permanent(&error);
                outcome.failed.extend(
                    chunk
                        .iter()
                        .filter_map(|id| flush.ids.get(id))
                        .map(|s| s.deliveries.clone()),
                );
                continue;
            }
        };
        outcome.batch_calls += calls.saturating_sub(1);
        let fetched_at_ms = unix_ms(std::time::SystemTime::now());
        let records: std::collections::HashMap<&str, &RawValue> = fetched
            .records
            .iter()
            .map(|(id, r)| (id.as_str(), &**r))
            .collect();
        let refused: std::collections::HashMap<String, RefusedId> =
            refused.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut publishes = Vec::new();
        for id in chunk {
            let Some(source) = flush.ids.get(id) else {
                continue;
            };
            if let Some(refusal) = refused.get(id.as_str()) {
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
            let message = record::message(
                &sink.exchange,
                &Record {
                    entity: flush.entity,
                    app_id: &flush.app_id,
                    id,
                    op,
                    record,
                    source,
                    fetched_at_ms,
                },
                sink.sign_key.as_ref(),
            );
            let first_event_at_ms = source.first_event_at_ms;
            publishes.push(async move {
                let started = std::time::Instant::now();
                let confirmed = publish_until_confirmed(sink, message, abort).await;
                if confirmed {
                    let now_ms = unix_ms(std::time::SystemTime::now());
                    let since_first_event =
                        Duration::from_millis(now_ms.saturating_sub(first_event_at_ms));
                    crate::metrics::record_confirmed(
                        op.as_str(),
                        started.elapsed(),
                        since_first_event,
                    );
                }
                (source.deliveries.clone(), op, confirmed)
            });
        }
        for (deliveries, op, confirmed) in join_all(publishes).await {
            if confirmed {
                match op {
                    Op::Upsert => outcome.records += 1,
                    Op::Missing => outcome.missing += 1,
                }
                outcome.confirmed.push(deliveries);
            } else {
                outcome.failed.push(deliveries);
            }
        }
    }
    debug!(app_id = %outcome.app_id, reason = flush.reason.as_str(), records = outcome.records, missing = outcome.missing, failed = outcome.failed.len(), "flush done");
    outcome
}

async fn publish_until_confirmed(
    sink: &RecordSink,
    message: crate::amqp::Outgoing,
    abort: &CancellationToken,
) -> bool {
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let attempt = tokio::time::timeout(CONFIRM_WAIT, sink.publisher.publish(message.clone()));
        let error = tokio::select! {
            result = attempt => match result {
                Ok(Ok(())) => return true,
                Ok(Err(error)) => error.as_str(),
                Err(_) => "timeout",
            },
            () = abort.cancelled() => return false,
        };
        crate::metrics::publish_failed(error);
        debug!(error, "record publish failed; retrying");
        let delay = backoff.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = abort.cancelled() => return false,
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
