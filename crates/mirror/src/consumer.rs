//! The broker side: the mirror's own durable queue bound to the customers exchange, one consumer
//! session, batches taken from the prefetch buffer, and acks that cover a whole batch at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use super::stats::Stats;
use super::worker::{Verdict, Worker};
use crate::db::DbError;
use relay::amqp::topology;
use relay::config::AmqpSettings;

/// Routing keys the mirror's queue is bound with: every record of every app.
pub const BINDINGS: [&str; 2] = ["customer.#", "contact.#"];

const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Declares the mirror's durable queue and binds it to the customers exchange (which must exist:
/// [`topology::declare`] makes it). Idempotent.
pub async fn declare_queue(
    channel: &Channel,
    amqp: &AmqpSettings,
    queue: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for binding in BINDINGS {
        channel
            .queue_bind(
                queue.into(),
                amqp.customers_exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// How a session ended.
pub enum SessionEnd {
    /// `stop` fired; the current batch was settled first.
    Stopped,
    /// The broker link broke; reconnect. Unacked deliveries return to the queue.
    Broken(String),
    /// The database refused in a way no retry fixes; the batch was requeued.
    Fatal(DbError),
}

pub struct Session {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    consumer_tag: String,
}

impl Session {
    /// On a fresh connection: declares the relay's topology and the mirror's queue, and starts
    /// consuming.
    pub async fn open(
        connection: Connection,
        amqp: &AmqpSettings,
        queue: &str,
        prefetch: u16,
        connection_name: &str,
    ) -> Result<Session, lapin::Error> {
        let channel = connection.create_channel().await?;
        topology::declare(&connection, amqp).await?;
        declare_queue(&channel, amqp, queue).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer_tag = format!("{connection_name}-{}", std::process::id());
        let consumer = channel
            .basic_consume(
                queue.into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Session {
            connection,
            channel,
            consumer,
            consumer_tag,
        })
    }

    /// Stops the consumer and closes the connection; deliveries taken but not acked are requeued by
    /// the broker.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(
            ACK_TIMEOUT,
            self.channel.basic_cancel(
                self.consumer_tag.as_str().into(),
                BasicCancelOptions::default(),
            ),
        )
        .await;
        let _ = tokio::time::timeout(ACK_TIMEOUT, self.connection.close(200, "bye".into())).await;
    }

    /// Takes batches (whatever the prefetch buffer holds, up to `max_batch`) and settles each one
    /// before taking the next, until `stop`, a broken link or a fatal database error.
    pub async fn run(
        &mut self,
        worker: &mut Worker,
        max_batch: usize,
        stats: &Arc<Stats>,
        stop: &CancellationToken,
    ) -> SessionEnd {
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        let mut summary = tokio::time::interval(SUMMARY_EVERY);
        summary.reset();
        let mut since = (Instant::now(), stats.snapshot().settled());
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => return SessionEnd::Stopped,
                next = self.consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => return SessionEnd::Broken(format!("consumer error: {error}")),
                    None => return SessionEnd::Broken("consumer cancelled by the broker".into()),
                },
                _ = liveness.tick() => {
                    if !self.connection.status().connected() {
                        return SessionEnd::Broken("connection no longer connected".into());
                    }
                    continue;
                }
                _ = summary.tick() => {
                    if stats.snapshot().settled() != since.1 {
                        stats.log_summary("mirror progress", &mut since);
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match self.consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(error))) => {
                        return SessionEnd::Broken(format!("consumer error: {error}"));
                    }
                    Some(None) | None => break,
                }
            }
            let Some(last) = batch.last().map(|d| d.delivery_tag) else {
                continue;
            };
            let settled = match worker.handle(&batch, stop).await {
                Ok(Verdict::Ack) => self.ack_through(last).await,
                Ok(Verdict::Requeue(delay)) => {
                    // A stop cuts the wait short: the deliveries go back either way.
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => {}
                    }
                    self.requeue_through(last).await
                }
                Err(error) => {
                    let _ = self.requeue_through(last).await;
                    return SessionEnd::Fatal(error);
                }
            };
            if let Err(reason) = settled {
                return SessionEnd::Broken(reason);
            }
        }
    }

    /// Acks every delivery up to `tag`: batches are settled in order, so that is exactly this batch.
    async fn ack_through(&self, tag: u64) -> Result<(), String> {
        match tokio::time::timeout(
            ACK_TIMEOUT,
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true }),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("ack failed: {error}")),
            Err(_) => Err("ack timed out".into()),
        }
    }

    async fn requeue_through(&self, tag: u64) -> Result<(), String> {
        match tokio::time::timeout(
            ACK_TIMEOUT,
            self.channel.basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            ),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("nack failed: {error}")),
            Err(_) => Err("nack timed out".into()),
        }
    }
}
