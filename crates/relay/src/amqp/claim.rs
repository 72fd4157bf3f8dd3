//! The broker side of sharing the inbox among relays, with nothing but RabbitMQ:
//!
//! - **Claims.** A relay consumes partition `q` only while its connection holds the exclusive queue
//!   `q.owner`. The broker refuses a second connection's declare (405 RESOURCE_LOCKED) and deletes
//!   the queue with the connection that declared it, so a killed relay's partitions are free the
//!   moment its connection is gone, and a partition never has two fetchers.
//! - **Roster.** Every consuming relay subscribes to `<inbox_queue>.relays`, which never holds a
//!   message; its consumer count is the number of live relays.
//! - **Rebalance asks.** A relay that cannot find its share free puts a message on
//!   `<inbox_queue>.rebalance` (at most one, expiring after [`ASK_TTL`]); relays above their share
//!   see the message count and hand partitions back.
//!
//! Everything here runs on a channel of its own: a refused claim closes its channel, and the consumer's
//! channel must not go with it. The roster subscription stays on the consumer's channel, so a relay
//! whose consumer is gone also leaves the roster.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use crate::config::AmqpSettings;

/// How long a rebalance ask stays visible: a few balancing rounds of every relay.
pub const ASK_TTL: Duration = Duration::from_secs(8);
/// Every broker operation of the balancer gives up after this long.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// RESOURCE_LOCKED: the queue is exclusive to another connection.
const RESOURCE_LOCKED: u16 = 405;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("broker refused {what}: {source}")]
    Broker {
        what: &'static str,
        source: lapin::Error,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// The exclusive queue whose holder consumes `partition`.
pub fn owner_queue(partition: &str) -> String {
    format!("{partition}.owner")
}

/// The queue whose consumers are the live consuming relays.
pub fn roster_queue(amqp: &AmqpSettings) -> String {
    format!("{}.relays", amqp.inbox_queue)
}

/// The queue whose message count is a waiting rebalance ask.
pub fn ask_queue(amqp: &AmqpSettings) -> String {
    format!("{}.rebalance", amqp.inbox_queue)
}

/// Declares the roster and ask queues on `channel` (the consumer's, during its set-up). They take
/// the inbox's queue type, so on a cluster with quorum inbox queues they outlive a node.
pub async fn declare(channel: &Channel, amqp: &AmqpSettings) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut roster_args = FieldTable::default();
    roster_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(amqp.inbox_queue_type.as_str().into()),
    );
    let mut ask_args = roster_args.clone();
    ask_args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    ask_args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(ASK_TTL.as_millis()).unwrap_or(i64::MAX)),
    );
    channel
        .queue_declare(roster_queue(amqp).as_str().into(), durable, roster_args)
        .await?;
    channel
        .queue_declare(ask_queue(amqp).as_str().into(), durable, ask_args)
        .await?;
    Ok(())
}

/// The balancer's own channel, opened on first use and again after any error closed it.
#[derive(Default)]
pub struct ClaimChannel {
    channel: Option<Channel>,
}

impl ClaimChannel {
    async fn open(&mut self, connection: &Connection) -> Result<Channel, ClaimError> {
        if let Some(channel) = &self.channel
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = timed(
            "opening the balancer's channel",
            connection.create_channel(),
        )
        .await?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Runs one operation; any error leaves the channel to be reopened next time.
    async fn run<T, F>(
        &mut self,
        connection: &Connection,
        what: &'static str,
        op: impl FnOnce(Channel) -> F,
    ) -> Result<T, ClaimError>
    where
        F: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        let channel = self.open(connection).await?;
        let result = timed(what, op(channel)).await;
        if result.is_err() {
            self.channel = None;
        }
        result
    }

    /// How many consumers `queue` has (a passive declare).
    pub async fn consumers(
        &mut self,
        connection: &Connection,
        queue: &str,
    ) -> Result<u32, ClaimError> {
        self.passive(connection, queue)
            .await
            .map(|q| q.consumer_count())
    }

    /// Whether a rebalance ask is waiting.
    pub async fn rebalance_asked(
        &mut self,
        connection: &Connection,
        amqp: &AmqpSettings,
    ) -> Result<bool, ClaimError> {
        self.passive(connection, &ask_queue(amqp))
            .await
            .map(|q| q.message_count() > 0)
    }

    async fn passive(
        &mut self,
        connection: &Connection,
        queue: &str,
    ) -> Result<lapin::Queue, ClaimError> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.run(
            connection,
            "a passive queue declare",
            |channel| async move {
                channel
                    .queue_declare(queue.into(), options, FieldTable::default())
                    .await
            },
        )
        .await
    }

    /// Takes `partition` for this connection: `Ok(false)` when another relay holds it.
    pub async fn claim(
        &mut self,
        connection: &Connection,
        partition: &str,
    ) -> Result<bool, ClaimError> {
        let owner = owner_queue(partition);
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let result = self
            .run(connection, "a claim", |channel| async move {
                channel
                    .queue_declare(owner.as_str().into(), options, FieldTable::default())
                    .await
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(ClaimError::Broker { source, .. }) if is_locked(&source) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives `partition` up; the next relay to claim it becomes its consumer.
    pub async fn unclaim(
        &mut self,
        connection: &Connection,
        partition: &str,
    ) -> Result<(), ClaimError> {
        let owner = owner_queue(partition);
        self.run(connection, "giving a claim up", |channel| async move {
            channel
                .queue_delete(owner.as_str().into(), QueueDeleteOptions::default())
                .await
        })
        .await
        .map(drop)
    }

    /// Asks the relays above their share to hand partitions back. Best effort: a lost ask is asked
    /// again in a later round.
    pub async fn ask_rebalance(
        &mut self,
        connection: &Connection,
        amqp: &AmqpSettings,
    ) -> Result<(), ClaimError> {
        let queue = ask_queue(amqp);
        self.run(connection, "a rebalance ask", |channel| async move {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    b"rebalance",
                    BasicProperties::default(),
                )
                .await
                .map(drop)
        })
        .await
    }
}

fn is_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == RESOURCE_LOCKED)
}

async fn timed<T>(
    what: &'static str,
    op: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, ClaimError> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(ClaimError::Broker { what, source }),
        Err(_) => Err(ClaimError::Timeout(what)),
    }
}
