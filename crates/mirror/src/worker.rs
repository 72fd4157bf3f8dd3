//! One batch of deliveries → one verdict: parse each, apply the good ones in one transaction,
//! dead-letter the ones that can never apply, and say whether the batch may be acked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weiling_proto::unix_ms;

use super::apply::{self, Outcome};
use super::db::{self, Db, DbError, Target};
use super::dead_letter;
use super::message::{self, Entity, MirrorRecord};
use super::stats::Stats;
use relay::amqp::Publisher;

/// One transaction of up to `prefetch` pipelined statements; far more than a healthy server needs.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// What to do with the whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every delivery is committed or dead-lettered (confirmed): ack them all.
    Ack,
    /// A transient failure: hand them back to the queue after this delay. Whatever was committed
    /// comes back as a duplicate, which changes nothing.
    Requeue(Duration),
}

pub struct Worker {
    target: Target,
    db: Option<Db>,
    publisher: Publisher,
    dead_letter_queue: String,
    sign_key: Option<SecretString>,
    stats: Arc<Stats>,
    retry: backon::ExponentialBackoff,
}

fn retry_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// A record or why it cannot be one, per delivery.
type Parsed = Result<MirrorRecord, (&'static str, String)>;

impl Worker {
    pub fn new(
        target: Target,
        publisher: Publisher,
        dead_letter_queue: String,
        sign_key: Option<SecretString>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            target,
            db: None,
            publisher,
            dead_letter_queue,
            sign_key: sign_key.filter(|k| !k.expose_secret().is_empty()),
            stats,
            retry: retry_backoff(),
        }
    }

    /// Makes sure a live connection exists, retrying transient failures with backoff. `Ok(false)`
    /// when `stop` fired first; an error when retrying cannot help (bad URL, migration refused).
    pub async fn ensure_db(&mut self, stop: &CancellationToken) -> Result<bool, DbError> {
        if self.db.as_ref().is_some_and(|db| !db.is_closed()) {
            return Ok(true);
        }
        self.db = None;
        let mut backoff = retry_backoff();
        loop {
            let attempt = tokio::select! {
                attempt = self.target.connect() => attempt,
                () = stop.cancelled() => return Ok(false),
            };
            match attempt {
                Ok(db) => {
                    info!(db = %self.target.describe(), "PostgreSQL connected; mirror tables up to date");
                    self.db = Some(db);
                    return Ok(true);
                }
                Err(error) if error.is_transient() => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    warn!(db = %self.target.describe(), error = %error, retry_in_ms = delay.as_millis() as u64, "PostgreSQL unavailable");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => return Ok(false),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Handles one batch. Nothing here acks: the caller acks on [`Verdict::Ack`], and requeues on
    /// anything else, an error included.
    pub async fn handle(
        &mut self,
        deliveries: &[Delivery],
        stop: &CancellationToken,
    ) -> Result<Verdict, DbError> {
        let mut parsed: Vec<Parsed> = deliveries.iter().map(|d| self.parse(d)).collect();
        let good: Vec<(usize, &MirrorRecord)> = parsed
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|r| (i, r)))
            .collect();
        let mut refused: Vec<(usize, String)> = Vec::new();
        // Exported, each record's apply is a span continuing the trace its record carries; they
        // end with the batch's commit.
        let _applying: Vec<tracing::Span> = if relay::telemetry::tracing_on() {
            good.iter()
                .filter_map(|(i, _)| deliveries.get(*i))
                .map(apply_span)
                .collect()
        } else {
            Vec::new()
        };
        if !good.is_empty() {
            let started = Instant::now();
            let Some((outcomes, data_errors)) = self.apply(&good, stop).await? else {
                return Ok(self.requeue());
            };
            relay::metrics::mirror_batch(started.elapsed());
            let now = unix_ms(std::time::SystemTime::now());
            for (_, record) in &good {
                // A clock behind the relay's would make the lag negative: counted as none.
                let fetched_at = u64::try_from(record.fetched_at).unwrap_or(0);
                relay::metrics::mirror_lag(Duration::from_millis(now.saturating_sub(fetched_at)));
            }
            debug!(
                deliveries = deliveries.len(),
                records = outcomes.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "batch committed"
            );
            self.stats.committed(&outcomes);
            refused = data_errors;
        }
        for (i, detail) in refused {
            if let Some(slot) = parsed.get_mut(i) {
                *slot = Err(("mirror_data", detail));
            }
        }
        for (delivery, parsed) in deliveries.iter().zip(&parsed) {
            let Err((reason, detail)) = parsed else {
                continue;
            };
            if !self.dead_letter(delivery, reason, detail).await {
                return Ok(self.requeue());
            }
        }
        self.retry = retry_backoff();
        Ok(Verdict::Ack)
    }

    fn requeue(&mut self) -> Verdict {
        self.stats.requeued();
        Verdict::Requeue(self.retry.next().unwrap_or(Duration::from_secs(5)))
    }

    fn parse(&self, delivery: &Delivery) -> Parsed {
        let fail = |e: message::MessageError| (e.reason(), e.to_string());
        if let Some(key) = &self.sign_key {
            let signature = match delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-signature"))
            {
                Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
                _ => None,
            };
            message::verify_signature(
                key.expose_secret().as_bytes(),
                &delivery.data,
                signature.as_deref(),
            )
            .map_err(fail)?;
        }
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        MirrorRecord::parse(&delivery.data, message_id.as_deref()).map_err(fail)
    }

    /// Applies the records in one transaction. `None`: a transient failure, requeue (the connection
    /// is dropped and made anew before the next batch). A record PostgreSQL refuses as data is found
    /// by applying the batch one record at a time, and returned with the error to dead-letter it.
    async fn apply(
        &mut self,
        good: &[(usize, &MirrorRecord)],
        stop: &CancellationToken,
    ) -> Result<Option<(Vec<(Entity, Outcome)>, Vec<(usize, String)>)>, DbError> {
        if !self.ensure_db(stop).await? {
            return Ok(None);
        }
        let records: Vec<&MirrorRecord> = good.iter().map(|(_, r)| *r).collect();
        let entities = |records: &[&MirrorRecord], outcomes: Vec<Outcome>| {
            records
                .iter()
                .map(|r| r.entity)
                .zip(outcomes)
                .collect::<Vec<_>>()
        };
        match self.apply_batch(&records).await? {
            Ok(outcomes) => return Ok(Some((entities(&records, outcomes), Vec::new()))),
            Err(Failure::Transient) => return Ok(None),
            Err(Failure::Data(_)) => {}
        }
        let mut outcomes = Vec::with_capacity(records.len());
        let mut refused = Vec::new();
        for &(i, record) in good {
            match self.apply_batch(&[record]).await? {
                Ok(one) => outcomes.extend(entities(&[record], one)),
                Err(Failure::Transient) => return Ok(None),
                Err(Failure::Data(detail)) => refused.push((i, detail)),
            }
        }
        Ok(Some((outcomes, refused)))
    }

    async fn apply_batch(
        &mut self,
        records: &[&MirrorRecord],
    ) -> Result<Result<Vec<Outcome>, Failure>, DbError> {
        let Some(db) = self.db.as_mut() else {
            return Ok(Err(Failure::Transient));
        };
        let result = tokio::time::timeout(
            APPLY_TIMEOUT,
            apply::apply_batch(&mut db.client, &db.statements, records),
        )
        .await;
        match result {
            Ok(Ok(outcomes)) => Ok(Ok(outcomes)),
            Ok(Err(error)) if db::is_data_error(&error) => {
                // The server's message may quote the value; the SQLSTATE says enough.
                let code = error.code().map_or("?", |c| c.code()).to_owned();
                Ok(Err(Failure::Data(format!(
                    "PostgreSQL refused a value of the record (SQLSTATE {code})"
                ))))
            }
            Ok(Err(error)) if db::is_transient(&error) => {
                warn!(error = %db::error_text(&error), records = records.len(), "PostgreSQL failed the batch; requeueing it and reconnecting");
                self.db = None;
                Ok(Err(Failure::Transient))
            }
            Ok(Err(error)) => {
                self.db = None;
                Err(DbError::Postgres(error))
            }
            Err(_) => {
                warn!(
                    records = records.len(),
                    "PostgreSQL did not finish the batch in time; requeueing it and reconnecting"
                );
                self.db = None;
                Ok(Err(Failure::Transient))
            }
        }
    }

    /// Publishes a dead letter and waits for the confirm; `false` when that failed.
    async fn dead_letter(&self, delivery: &Delivery, reason: &'static str, detail: &str) -> bool {
        let letter = dead_letter::message(&self.dead_letter_queue, delivery, reason, detail);
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, self.publisher.publish(letter)).await;
        match result {
            Ok(Ok(())) => {
                warn!(
                    reason,
                    detail,
                    routing_key = %delivery.routing_key,
                    queue = %self.dead_letter_queue,
                    "record cannot be mirrored; dead-lettered"
                );
                self.stats.dead_lettered(reason);
                true
            }
            Ok(Err(error)) => {
                warn!(
                    reason,
                    error = error.as_str(),
                    "dead-letter publish failed; requeueing the batch"
                );
                false
            }
            Err(_) => {
                warn!(
                    reason,
                    "dead-letter confirm timed out; requeueing the batch"
                );
                false
            }
        }
    }
}

enum Failure {
    Transient,
    /// PostgreSQL refused a value of the record: the error text.
    Data(String),
}

fn apply_span(delivery: &Delivery) -> tracing::Span {
    let routing_key = delivery.routing_key.as_str();
    let span = tracing::info_span!(
        "mirror apply",
        otel.name = "process records",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %delivery.exchange,
        messaging.rabbitmq.destination.routing_key = %routing_key,
    );
    relay::telemetry::propagation::continue_from(&span, delivery.properties.headers().as_ref());
    span
}
