//! Counts the messages waiting in the relay's queues for `relay_queue_messages`, on a channel of
//! its own: a passive declare of a queue an operator deleted closes the channel it ran on, and that
//! must never be the consumer's.

use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::AmqpSettings;

/// Often enough for a dashboard and an alert's 10-minute trend, rare enough to cost the broker
/// nothing (four declares per relay).
const INTERVAL: Duration = Duration::from_secs(15);
const DECLARE_TIMEOUT: Duration = Duration::from_secs(5);

/// The queues counted, by the role they are reported under.
fn queues(amqp: &AmqpSettings) -> [(&'static str, Vec<String>); 4] {
    [
        ("inbox", amqp.inbox_queues()),
        ("retry", vec![amqp.inbox_retry_queue()]),
        ("dead_letter", vec![amqp.dead_letter_queue.clone()]),
        ("unrouted", vec![amqp.unrouted_exchange.clone()]),
    ]
}

/// Counts every [`INTERVAL`] until `stop` (the consumer session's end) or until the channel closes
/// (a queue was deleted; the next session declares the topology again and counts anew).
pub fn spawn(channel: Channel, amqp: &AmqpSettings, stop: CancellationToken) {
    let queues = queues(amqp);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            for (role, names) in &queues {
                match count(&channel, names).await {
                    Ok(messages) => crate::metrics::queue_messages(role, messages),
                    // A slow broker: the gauge keeps its last value until the next tick.
                    Err(Uncounted::Slow(name)) => {
                        debug!(role, name, "queue depth not counted in time")
                    }
                    Err(Uncounted::Refused(error)) => {
                        debug!(
                            role,
                            error, "queue depth not counted; counting stops for this session"
                        );
                        return;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(DECLARE_TIMEOUT, channel.close(200, "done".into())).await;
    });
}

enum Uncounted {
    Slow(String),
    /// The broker refused the declare and closed the channel.
    Refused(String),
}

async fn count(channel: &Channel, names: &[String]) -> Result<u32, Uncounted> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut messages = 0u32;
    for name in names {
        let declared = tokio::time::timeout(
            DECLARE_TIMEOUT,
            channel.queue_declare(name.as_str().into(), passive, FieldTable::default()),
        )
        .await
        .map_err(|_| Uncounted::Slow(name.clone()))?
        .map_err(|error| Uncounted::Refused(format!("{name}: {error}")))?;
        messages = messages.saturating_add(declared.message_count());
    }
    Ok(messages)
}
