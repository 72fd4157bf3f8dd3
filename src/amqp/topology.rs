//! The broker topology of design.md §4, declared idempotently on every (re)connect.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::AmqpSettings;

/// Binding of the inbox to the events exchange: every event of every app.
pub const INBOX_BINDING: &str = "event.#";

/// Declares exchanges, queues and bindings. Re-running it against an existing, identical topology is a
/// no-op, which is why it runs after every reconnect and after a publish was returned as unroutable.
pub async fn declare(channel: &Channel, amqp: &AmqpSettings) -> Result<(), lapin::Error> {
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
            FieldTable::default(),
        )
        .await?;

    let mut inbox_args = FieldTable::default();
    inbox_args.insert(
        "x-queue-type".into(),
        long_string(amqp.inbox_queue_type.as_str()),
    );
    // Messages the broker itself gives up on (rejected, or past a quorum delivery limit) must end in
    // the dead-letter queue, never vanish.
    inbox_args.insert("x-dead-letter-exchange".into(), long_string(""));
    inbox_args.insert(
        "x-dead-letter-routing-key".into(),
        long_string(&amqp.dead_letter_queue),
    );
    channel
        .queue_declare(amqp.inbox_queue.as_str().into(), durable_queue, inbox_args)
        .await?;
    channel
        .queue_bind(
            amqp.inbox_queue.as_str().into(),
            amqp.events_exchange.as_str().into(),
            INBOX_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

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
            FieldTable::default(),
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
