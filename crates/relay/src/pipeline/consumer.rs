//! The inbox consumer, the pipeline's driver: deliveries → [`extract`] → [`window`] (closed by the
//! timer or by size) → [`flush`] (enrich, publish) → [`ack`]. Manual acks only after every named
//! customer or contact is confirmed downstream.
//!
//! [`extract`]: super::extract
//! [`window`]: super::window
//! [`flush`]: super::flush
//! [`ack`]: super::ack

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::{Channel, Connection};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::ack::{AckTracker, Settlements};
use super::extract::{Extracted, Mapping};
use super::flush::{self, FetchSlot, FlushOutcome, RefusedDeliveries, Stages};
use super::partitions::{self, Deliveries, Inbound, Partitions};
use super::window::{self, Coalescer, Contribution, DeliveryTag, Flush, Limits};
use crate::amqp::link::Reconnect;
use crate::amqp::message::{self, header};
use crate::amqp::publisher::Outgoing;
use crate::config::{AmqpSettings, WindowSettings};
use crate::persist::dead_letter;
use crate::telemetry::propagation;

const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `relay_inbox_oldest_held_seconds` is brought up to date.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// A parked event's confirm may take this long before the event is returned to the inbox instead.
const PARK_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything the pipeline needs; shared by its sessions.
pub struct Pipeline {
    pub amqp: AmqpSettings,
    pub window: WindowSettings,
    pub mapping: Mapping,
    pub stages: Stages,
    pub connection_name: String,
}

/// Starts the supervised consumer. `stop` starts the drain (flush windows, settle, ack, close);
/// `abort` gives up on whatever is still running.
pub fn spawn(
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    abort: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reconnect = Reconnect::new(&pipeline.amqp, pipeline.connection_name.clone());
        let setup_timeout = Duration::from_millis(pipeline.amqp.connect_timeout_ms);
        while let Some(connection) = reconnect.connect(&stop).await {
            match tokio::time::timeout(setup_timeout, Session::open(connection, &pipeline)).await {
                Ok(Ok(mut session)) => {
                    info!(queues = ?pipeline.amqp.inbox_queues(), "inbox consumer up");
                    reconnect.up();
                    let end = session.run(&pipeline, &stop, &abort).await;
                    session.close().await;
                    if let Some(reason) = end {
                        reconnect.lost(&reason);
                    }
                }
                Ok(Err(error)) => reconnect.failed(&error.to_string()),
                Err(_) => reconnect.failed("inbox consumer set-up timed out"),
            }
        }
        info!("inbox consumer stopped");
    })
}

struct Session {
    connection: Connection,
    channel: Channel,
    /// One consumer per inbox queue (partition) this relay holds, merged; delivery tags are per
    /// channel, so one tracker acks them all.
    consumer: futures::stream::SelectAll<Deliveries>,
    partitions: Partitions,
    /// Ends the queue-depth counting with the session.
    _depth: tokio_util::sync::DropGuard,
}

/// Why a consumer session could not be set up; the next attempt follows the reconnect backoff.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Partitions(#[from] partitions::RoundError),
}

impl Session {
    /// The configured heartbeat matters here, not the broker's 60 s: over a half-open link the
    /// deliveries this session holds stay unacked (and invisible to every other consumer) until one
    /// side notices.
    async fn open(connection: Connection, pipeline: &Pipeline) -> Result<Session, SetupError> {
        let channel = connection.create_channel().await?;
        crate::amqp::topology::declare(&connection, &pipeline.amqp).await?;
        // The prefetch exceeds the largest window (validated at start), so a window can always fill.
        channel
            .basic_qos(pipeline.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = futures::stream::SelectAll::new();
        let tag_prefix = format!("{}-{}", pipeline.connection_name, std::process::id());
        let partitions =
            Partitions::open(&channel, &pipeline.amqp, tag_prefix, &mut consumer).await?;
        let depth = CancellationToken::new();
        crate::amqp::depth::spawn(
            connection.create_channel().await?,
            &pipeline.amqp,
            depth.clone(),
        );
        Ok(Session {
            connection,
            channel,
            consumer,
            partitions,
            _depth: depth.drop_guard(),
        })
    }

    async fn close(&self) {
        let _ = tokio::time::timeout(ACK_TIMEOUT, self.connection.close(200, "bye".into())).await;
    }

    /// Returns `None` after a clean drain, or why the session broke.
    async fn run(
        &mut self,
        pipeline: &Pipeline,
        stop: &CancellationToken,
        abort: &CancellationToken,
    ) -> Option<String> {
        let Session {
            connection,
            channel,
            consumer,
            partitions,
            ..
        } = self;
        let mut driver = Driver::new(pipeline, channel, abort, partitions.count());
        let mut draining = false;
        let mut gauge_tick = tokio::time::interval(GAUGE_INTERVAL);
        gauge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first round runs at once: it claims this relay's share.
        let mut balance_tick = tokio::time::interval(partitions::ROUND);
        balance_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if draining && driver.flushes.is_empty() && driver.deferrals.is_empty() {
                return None;
            }
            let deadline = driver.coalescer.next_deadline();
            let step = tokio::select! {
                biased;
                () = abort.cancelled() => return Some("aborted with work in flight".into()),
                () = stop.cancelled(), if !draining => {
                    draining = true;
                    // No new deliveries; everything already taken is flushed, confirmed and acked.
                    partitions.cancel_all(channel).await;
                    for flush in driver.coalescer.drain_all() {
                        driver.start_flush(flush);
                    }
                    Ok(())
                }
                Some(app_id) = driver.fetch_done_rx.recv() => {
                    driver.on_fetch_done(&app_id);
                    Ok(())
                }
                Some(done) = driver.flushes.join_next(), if !driver.flushes.is_empty() => match done {
                    Ok(outcome) => driver.on_flush_done(outcome).await,
                    Err(error) => Err(format!("flush task failed: {error}")),
                },
                Some(done) = driver.deferrals.join_next(), if !driver.deferrals.is_empty() => match done {
                    Ok(deferral) => driver.on_deferral_done(deferral).await,
                    Err(error) => Err(format!("retry-queue move failed: {error}")),
                },
                _ = gauge_tick.tick() => {
                    let oldest = driver.settlements.oldest_open_since();
                    crate::metrics::oldest_held(oldest.map_or(Duration::ZERO, |at| at.elapsed()));
                    Ok(())
                }
                _ = balance_tick.tick(), if partitions.balanced() && !draining => {
                    match partitions.round(connection, channel, &pipeline.amqp, consumer, &driver.open_per_partition).await {
                        // A hand-back waits for the partition's deliveries: flush their windows now.
                        Ok(true) => {
                            for flush in driver.coalescer.drain_all() {
                                driver.start_flush(flush);
                            }
                            Ok(())
                        }
                        Ok(false) => Ok(()),
                        Err(error) => Err(error.to_string()),
                    }
                }
                () = window::timer::until(deadline), if deadline.is_some() => {
                    for flush in driver.coalescer.drain_due(Instant::now()) {
                        driver.start_flush(flush);
                    }
                    Ok(())
                }
                next = consumer.next(), if !draining && !consumer.is_empty() => match next {
                    Some((index, Inbound::Delivery(delivery))) => driver.on_delivery(index, delivery).await,
                    Some((_, Inbound::Failed(reason))) => Err(reason),
                    Some((index, Inbound::Ended)) if partitions.expects_end(index) => Ok(()),
                    Some((index, Inbound::Ended)) => {
                        Err(format!("consumer of {} cancelled by the broker", partitions.queue(index)))
                    }
                    // The last partition's consumer ended; a later round may claim another.
                    None => Ok(()),
                },
            };
            if let Err(reason) = step.and(driver.send_acks().await) {
                return Some(reason);
            }
            if !draining && partitions.releasing() {
                partitions
                    .finish_releases(connection, &driver.open_per_partition, false)
                    .await;
            }
        }
    }
}

/// The state of one consumer session. Delivery tags are only valid on their channel, so all of it
/// is dropped with the session; unacked deliveries are redelivered to the next one.
struct Driver<'a> {
    pipeline: &'a Pipeline,
    channel: &'a Channel,
    coalescer: Coalescer,
    tracker: AckTracker,
    settlements: Settlements,
    flushes: JoinSet<FlushOutcome>,
    /// Deliveries being moved to the retry queue.
    deferrals: JoinSet<Deferral>,
    /// Every delivery waiting in a window (at most `prefetch`), kept so an event naming an id Weiling
    /// refused can be parked with that id in the dead-letter queue.
    held: HashMap<DeliveryTag, Held>,
    /// How many of `held` each app has: capped at `max_unacked_per_app`.
    held_per_app: HashMap<String, u16>,
    /// One flush per app in its fetch phase at a time: fetches of one app never overlap, so
    /// `fetched_at` orders the states of a customer exactly, and Weiling's per-app rate limit is not
    /// raced. Later flushes wait here until the running one's [`FetchSlot`] is released.
    busy_apps: HashMap<String, VecDeque<Flush>>,
    fetch_done: mpsc::UnboundedSender<String>,
    fetch_done_rx: mpsc::UnboundedReceiver<String>,
    abort: &'a CancellationToken,
    /// The partition of every unsettled delivery, and how many each has: a partition is handed
    /// back only once its count is 0.
    partition_of: HashMap<DeliveryTag, usize>,
    open_per_partition: Vec<usize>,
}

impl<'a> Driver<'a> {
    fn new(
        pipeline: &'a Pipeline,
        channel: &'a Channel,
        abort: &'a CancellationToken,
        partitions: usize,
    ) -> Self {
        let w = &pipeline.window;
        let (fetch_done, fetch_done_rx) = mpsc::unbounded_channel();
        Self {
            pipeline,
            channel,
            coalescer: Coalescer::new(Limits {
                max_ids: w.max_ids,
                quiet: Duration::from_millis(w.quiet_ms),
                max_wait: Duration::from_millis(w.max_wait_ms),
            }),
            tracker: AckTracker::default(),
            settlements: Settlements::default(),
            held: HashMap::new(),
            held_per_app: HashMap::new(),
            flushes: JoinSet::new(),
            deferrals: JoinSet::new(),
            busy_apps: HashMap::new(),
            fetch_done,
            fetch_done_rx,
            abort,
            partition_of: HashMap::new(),
            open_per_partition: vec![0; partitions],
        }
    }

    /// A window just closed: count it, then run it or queue it behind its app's running flush.
    fn start_flush(&mut self, flush: Flush) {
        let events: u64 = flush.ids.values().map(|s| u64::from(s.events)).sum();
        crate::metrics::window_flushed(flush.reason.as_str(), flush.ids.len(), events);
        self.launch(flush);
    }

    fn launch(&mut self, flush: Flush) {
        if let Some(queued) = self.busy_apps.get_mut(&flush.app_id) {
            queued.push_back(flush);
            return;
        }
        self.busy_apps.insert(flush.app_id.clone(), VecDeque::new());
        let stages = self.pipeline.stages.clone();
        let abort = self.abort.clone();
        let slot = FetchSlot::new(flush.app_id.clone(), self.fetch_done.clone());
        let span = if crate::telemetry::tracing_on() {
            let inbox = &self.pipeline.amqp.inbox_queue;
            let span = info_span!("flush", otel.name = format!("process {inbox}"), otel.kind = "consumer", messaging.system = "rabbitmq", messaging.operation.type = "process", messaging.destination.name = %inbox, app_id = %flush.app_id, entity = flush.entity.as_str(), reason = flush.reason.as_str(), ids = flush.ids.len());
            self.link_events(&span, &flush);
            span
        } else {
            info_span!("flush", app_id = %flush.app_id, entity = flush.entity.as_str(), reason = flush.reason.as_str(), ids = flush.ids.len())
        };
        self.flushes
            .spawn(async move { flush::run(flush, &stages, &abort, slot).await }.instrument(span));
    }

    /// A flush enriches many events at once: its span becomes a batch `process` span linked to the
    /// publish span of every event it enriches (the context each inbox message carries).
    fn link_events(&self, span: &tracing::Span, flush: &Flush) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let mut linked = std::collections::HashSet::new();
        for source in flush.ids.values() {
            for tag in &source.deliveries {
                let Some(held) = self.held.get(tag) else {
                    continue;
                };
                if linked.insert(*tag)
                    && let Some(event) =
                        propagation::linked_span(held.properties.headers().as_ref())
                {
                    span.add_link(event);
                }
            }
        }
        span.set_attribute("messaging.batch.message_count", linked.len() as i64);
    }

    /// An app's running flush finished its Weiling calls: its next queued flush may start fetching.
    fn on_fetch_done(&mut self, app_id: &str) {
        if let Some(mut queued) = self.busy_apps.remove(app_id)
            && let Some(next) = queued.pop_front()
        {
            self.launch(next);
            if let Some(behind) = self.busy_apps.get_mut(app_id) {
                behind.extend(queued);
            }
        }
    }

    /// Routes one inbox delivery: no ids → ack now; ids → into the window, acked later.
    async fn on_delivery(
        &mut self,
        partition: usize,
        delivery: lapin::message::Delivery,
    ) -> Result<(), String> {
        let tag = delivery.delivery_tag;
        let now = Instant::now();
        self.settlements.received(tag, now);
        self.partition_of.insert(tag, partition);
        if let Some(open) = self.open_per_partition.get_mut(partition) {
            *open += 1;
        }
        let Some(event) = InboxEvent::parse(&delivery) else {
            // Only the relay publishes to the inbox, after verification; anything else is parked.
            warn!(
                tag,
                "inbox message without app id or event type; dead-lettering it"
            );
            return self.reject(tag, false).await;
        };
        match self
            .pipeline
            .mapping
            .extract(&event.event_type, &event.body)
        {
            Extracted::Unmapped | Extracted::NoIds => {
                debug!(app_id = %event.app_id, event_type = %event.event_type, "event names no customer");
                crate::metrics::event_without_customers();
                self.ack(tag).await
            }
            Extracted::Ids(entity, ids) => {
                let app_held = self.held_per_app.get(&event.app_id).copied().unwrap_or(0);
                if app_held >= self.pipeline.amqp.max_unacked_per_app {
                    // This app's calls are not getting through (or it is far busier than the
                    // others): its unacked share is full, and holding more would leave other apps
                    // no slot. Later, not lost.
                    self.defer(delivery, &event.app_id);
                    return Ok(());
                }
                self.tracker.expect(tag, ids.len());
                *self.held_per_app.entry(event.app_id.clone()).or_default() += 1;
                // Moved, not copied: the delivery is not read again.
                self.held.insert(
                    tag,
                    Held {
                        app_id: event.app_id.clone(),
                        body: delivery.data,
                        properties: delivery.properties,
                    },
                );
                for id in ids {
                    let contribution = Contribution {
                        delivery: tag,
                        event_type: event.event_type.clone(),
                        received_at_ms: event.received_at_ms,
                    };
                    if let Some(full) =
                        self.coalescer
                            .insert(&event.app_id, entity, &id, contribution, now)
                    {
                        self.start_flush(full);
                    }
                }
                Ok(())
            }
        }
    }

    /// Moves a delivery to the retry queue, in the background: once the move is confirmed the
    /// delivery is acked and returns to the inbox after `retry_delay_ms`; if it is not, the delivery
    /// goes back to the inbox at once. Moves run concurrently, so a burst of one app's returning
    /// deliveries does not hold up the other apps' deliveries queued behind it.
    fn defer(&mut self, delivery: lapin::message::Delivery, app_id: &str) {
        let amqp = &self.pipeline.amqp;
        let message = Outgoing {
            exchange: String::new(),
            routing_key: amqp.inbox_retry_queue(),
            body: delivery.data,
            properties: delivery
                .properties
                .with_expiration(amqp.retry_delay_ms.to_string().as_str().into()),
            mandatory: true,
        };
        let (tag, app_id) = (delivery.delivery_tag, app_id.to_owned());
        let publisher = self.pipeline.stages.publish.publisher().clone();
        self.deferrals.spawn(async move {
            let moved = match tokio::time::timeout(PARK_TIMEOUT, publisher.publish(message)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.as_str().to_owned()),
                Err(_) => Err("no confirm in time".to_owned()),
            };
            Deferral { tag, app_id, moved }
        });
    }

    async fn on_deferral_done(&mut self, deferral: Deferral) -> Result<(), String> {
        match deferral.moved {
            Ok(()) => {
                crate::metrics::deferred(&deferral.app_id);
                self.ack(deferral.tag).await
            }
            Err(error) => {
                warn!(
                    error,
                    "delivery not moved to the retry queue; returning it to the inbox"
                );
                self.reject(deferral.tag, true).await
            }
        }
    }

    async fn on_flush_done(&mut self, outcome: FlushOutcome) -> Result<(), String> {
        for refused in &outcome.refused {
            for tag in self.tracker.failed(&refused.deliveries) {
                self.park_refused(tag, refused).await?;
            }
        }
        for deliveries in &outcome.confirmed {
            for tag in self.tracker.confirmed(deliveries) {
                self.ack(tag).await?;
            }
        }
        for deliveries in &outcome.failed {
            for tag in self.tracker.failed(deliveries) {
                // Transient failures go back to the queue to be tried again; a request Weiling can
                // never answer is parked in the dead-letter queue instead of looping.
                self.reject(tag, !outcome.permanent).await?;
            }
        }
        Ok(())
    }

    /// Publishes the event to the dead-letter queue naming the refused id, then acks it; if the
    /// letter is not confirmed, the delivery goes back to the inbox instead (nothing is dropped).
    async fn park_refused(
        &mut self,
        tag: DeliveryTag,
        refused: &RefusedDeliveries,
    ) -> Result<(), String> {
        let Some(held) = self.held.get(&tag) else {
            return self.reject(tag, false).await;
        };
        let letter = dead_letter::refused_event(
            &self.pipeline.amqp.dead_letter_queue,
            &held.body,
            &held.properties,
            &refused.id,
            refused.code,
            &refused.detail,
        );
        let publisher = self.pipeline.stages.publish.publisher();
        match tokio::time::timeout(PARK_TIMEOUT, publisher.publish(letter)).await {
            Ok(Ok(())) => {
                crate::metrics::dead_letter(dead_letter::WEILING_REFUSED);
                self.ack(tag).await
            }
            Ok(Err(error)) => {
                warn!(
                    error = error.as_str(),
                    "refused event not parked; returning it to the inbox"
                );
                self.reject(tag, true).await
            }
            Err(_) => {
                warn!("refused event not parked in time; returning it to the inbox");
                self.reject(tag, true).await
            }
        }
    }

    /// A delivery is settled (acked or returned): it no longer counts against its app or its
    /// partition.
    fn release(&mut self, tag: DeliveryTag) {
        if let Some(partition) = self.partition_of.remove(&tag)
            && let Some(open) = self.open_per_partition.get_mut(partition)
        {
            *open = open.saturating_sub(1);
        }
        let Some(held) = self.held.remove(&tag) else {
            return;
        };
        if let Some(count) = self.held_per_app.get_mut(&held.app_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.held_per_app.remove(&held.app_id);
            }
        }
    }

    /// The delivery's work is done; the ack itself goes out with [`Driver::send_acks`].
    async fn ack(&mut self, tag: DeliveryTag) -> Result<(), String> {
        self.release(tag);
        self.settlements.ready(tag);
        Ok(())
    }

    /// Sends the acks the last step made possible, as few frames as the order of tags allows.
    async fn send_acks(&mut self) -> Result<(), String> {
        for ack in self.settlements.take_acks() {
            let options = BasicAckOptions {
                multiple: ack.multiple,
            };
            match tokio::time::timeout(ACK_TIMEOUT, self.channel.basic_ack(ack.tag, options)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(format!("ack failed: {error}")),
                Err(_) => return Err("ack timed out".into()),
            }
        }
        Ok(())
    }

    async fn reject(&mut self, tag: DeliveryTag, requeue: bool) -> Result<(), String> {
        self.release(tag);
        self.settlements.returned(tag);
        let result = if requeue {
            tokio::time::timeout(
                ACK_TIMEOUT,
                self.channel.basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                ),
            )
            .await
        } else {
            tokio::time::timeout(
                ACK_TIMEOUT,
                self.channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false }),
            )
            .await
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("nack failed: {error}")),
            Err(_) => Err("nack timed out".into()),
        }
    }
}

/// The end of one move to the retry queue.
struct Deferral {
    tag: DeliveryTag,
    app_id: String,
    moved: Result<(), String>,
}

/// A delivery waiting in a window.
struct Held {
    app_id: String,
    body: Vec<u8>,
    properties: lapin::BasicProperties,
}

/// What the pipeline reads from an inbox message (the relay's own raw-event publish).
struct InboxEvent {
    app_id: String,
    event_type: String,
    received_at_ms: u64,
    body: Value,
}

impl InboxEvent {
    fn parse(delivery: &lapin::message::Delivery) -> Option<InboxEvent> {
        let headers = delivery.properties.headers().as_ref();
        let received_at_ms = message::integer(headers, header::RECEIVED_AT)
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or_default();
        Some(InboxEvent {
            app_id: message::text(headers, header::APP_ID)?,
            event_type: message::text(headers, header::EVENT_TYPE)?,
            received_at_ms,
            body: serde_json::from_slice(&delivery.data).ok()?,
        })
    }
}
