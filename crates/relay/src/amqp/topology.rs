//! The broker topology of design.md §4 (and §6 when the inbox is partitioned), declared idempotently
//! on every (re)connect.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::warn;

use crate::config::{AmqpSettings, CLASSIC_QUEUE_VERSIONS, QueueType};

/// Binding of the inbox to the events exchange: every event of every app.
pub const INBOX_BINDING: &str = "event.#";
/// The exchange type of RabbitMQ's bundled rabbitmq_consistent_hash_exchange plugin.
pub const CONSISTENT_HASH: &str = "x-consistent-hash";

/// RabbitMQ's reply code when a declare's arguments differ from the existing queue's.
const PRECONDITION_FAILED: u16 = 406;

/// Declares exchanges, queues and bindings. Re-running it against an existing, identical topology is a
/// no-op, which is why it runs after every reconnect and after a publish was returned as unroutable.
///
/// It works on a channel of its own, closed afterwards: a declare the broker refuses closes the
/// channel it was sent on, and the caller's channel (a publisher's confirm channel, the consumer's)
/// must survive the one refusal that is expected, below.
///
/// A classic inbox is asked for `amqp.inbox_queue_version`, which RabbitMQ treats as part of the
/// queue's identity: an inbox created before (without the argument, as every relay declared it
/// until the setting existed) or by a relay set to the other version refuses the declare with 406.
/// That inbox is then declared as it is: its messages and consumers stay, and a `queue-version`
/// policy is the broker's own way to convert it in place.
pub async fn declare(connection: &Connection, amqp: &AmqpSettings) -> Result<(), lapin::Error> {
    let Some(configured) = inbox_version(amqp) else {
        return declare_on_own_channel(connection, amqp, None).await;
    };
    let mut refused = match declare_on_own_channel(connection, amqp, Some(configured)).await {
        Err(error) if is_other_queue_version(&error) => error,
        declared => return declared,
    };
    let existing = std::iter::once(None).chain(
        CLASSIC_QUEUE_VERSIONS
            .filter(|version| *version != configured)
            .map(Some),
    );
    for version in existing {
        match declare_on_own_channel(connection, amqp, version).await {
            Err(error) if is_other_queue_version(&error) => refused = error,
            Ok(()) => {
                warn!(
                    inbox = %amqp.inbox_queue,
                    configured,
                    kept = version.map_or_else(|| "declared without one".to_owned(), |v| v.to_string()),
                    "the inbox exists with another classic queue version and keeps it; a RabbitMQ \
                     policy with queue-version converts it in place (README, \"Inbox queue version\")"
                );
                return Ok(());
            }
            Err(error) => return Err(error),
        }
    }
    Err(refused)
}

/// The version a classic inbox is declared with; quorum queues have no such argument.
fn inbox_version(amqp: &AmqpSettings) -> Option<u8> {
    (amqp.inbox_queue_type == QueueType::Classic).then_some(amqp.inbox_queue_version)
}

fn is_other_queue_version(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.get_id() == PRECONDITION_FAILED
                && amqp.get_message().as_str().contains("x-queue-version")
    )
}

async fn declare_on_own_channel(
    connection: &Connection,
    amqp: &AmqpSettings,
    inbox_version: Option<u8>,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    declare_on(&channel, amqp, inbox_version).await?;
    // Callers bound the whole declare with their own timeout, so this await is bounded too.
    channel.close(200, "topology declared".into()).await
}

async fn declare_on(
    channel: &Channel,
    amqp: &AmqpSettings,
    inbox_version: Option<u8>,
) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };

    channel
        .exchange_declare(
            amqp.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    channel
        .queue_declare(
            amqp.dead_letter_queue.as_str().into(),
            durable_queue,
            replicated(amqp),
        )
        .await?;

    declare_inbox(channel, amqp, inbox_version).await?;

    // The unrouted exchange and its queue share a name so operators find one from the other.
    channel
        .exchange_declare(
            amqp.unrouted_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            amqp.unrouted_exchange.as_str().into(),
            durable_queue,
            replicated(amqp),
        )
        .await?;
    channel
        .queue_bind(
            amqp.unrouted_exchange.as_str().into(),
            amqp.unrouted_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut customers_args = FieldTable::default();
    customers_args.insert(
        "alternate-exchange".into(),
        long_string(&amqp.unrouted_exchange),
    );
    channel
        .exchange_declare(
            amqp.customers_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            customers_args,
        )
        .await?;
    Ok(())
}

/// The inbox: one queue bound to the events exchange, or (P > 1) a consistent-hash exchange bound to the
/// events exchange over P single-active-consumer queues. Every inbox queue dead-letters into the
/// dead-letter queue, so messages the broker itself gives up on (rejected, or past a quorum delivery
/// limit) end there and never vanish.
async fn declare_inbox(
    channel: &Channel,
    amqp: &AmqpSettings,
    version: Option<u8>,
) -> Result<(), lapin::Error> {
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut inbox_args = FieldTable::default();
    inbox_args.insert(
        "x-queue-type".into(),
        long_string(amqp.inbox_queue_type.as_str()),
    );
    inbox_args.insert("x-dead-letter-exchange".into(), long_string(""));
    inbox_args.insert(
        "x-dead-letter-routing-key".into(),
        long_string(&amqp.dead_letter_queue),
    );
    if let Some(version) = version {
        inbox_args.insert(
            "x-queue-version".into(),
            AMQPValue::LongLongInt(i64::from(version)),
        );
    }
    declare_retry(channel, amqp).await?;
    let Some(hash_exchange) = amqp.inbox_hash_exchange() else {
        channel
            .queue_declare(amqp.inbox_queue.as_str().into(), durable_queue, inbox_args)
            .await?;
        return channel
            .queue_bind(
                amqp.inbox_queue.as_str().into(),
                amqp.events_exchange.as_str().into(),
                INBOX_BINDING.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
    };

    let mut hash_args = FieldTable::default();
    hash_args.insert(
        "hash-header".into(),
        long_string(super::message::header::PARTITION_KEY),
    );
    channel
        .exchange_declare(
            hash_exchange.as_str().into(),
            ExchangeKind::Custom(CONSISTENT_HASH.into()),
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            hash_args,
        )
        .await?;
    channel
        .exchange_bind(
            hash_exchange.as_str().into(),
            amqp.events_exchange.as_str().into(),
            INBOX_BINDING.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // A relay consumes a partition only while it holds its claim (`claim`); single-active-consumer
    // is the broker's own guard on top, should two ever subscribe.
    inbox_args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    for queue in amqp.inbox_queues() {
        channel
            .queue_declare(queue.as_str().into(), durable_queue, inbox_args.clone())
            .await?;
        // The binding key of a consistent-hash exchange is the queue's weight; equal weights spread
        // the hash ring evenly.
        channel
            .queue_bind(
                queue.as_str().into(),
                hash_exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// The retry queue: deliveries moved here carry a per-message expiration (`retry_delay_ms`, so the
/// setting can change without re-declaring) and dead-letter back into the inbox when it passes:
/// straight to the inbox queue, or with P > 1 to the consistent-hash exchange, which sends each to
/// its partition by the `partition_key` it still carries. Never through the events exchange, whose
/// other subscribers have had the event already.
async fn declare_retry(channel: &Channel, amqp: &AmqpSettings) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        long_string(amqp.inbox_queue_type.as_str()),
    );
    match amqp.inbox_hash_exchange() {
        None => {
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert(
                "x-dead-letter-routing-key".into(),
                long_string(&amqp.inbox_queue),
            );
        }
        Some(hash) => {
            args.insert("x-dead-letter-exchange".into(), long_string(&hash));
        }
    }
    channel
        .queue_declare(
            amqp.inbox_retry_queue().as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map(|_| ())
}

/// The dead-letter and unrouted queues follow the inbox onto quorum queues, so on a cluster no
/// parked message depends on one node. Classic ones keep the arguments they always had (none), so a
/// broker holding them from before accepts the declare.
fn replicated(amqp: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    if amqp.inbox_queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            long_string(QueueType::Quorum.as_str()),
        );
    }
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Routing-key words are limited to 255 bytes in AMQP 0-9-1; callers keep names short, this is a guard.
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().into()
}
