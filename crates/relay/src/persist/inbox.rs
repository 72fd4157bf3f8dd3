//! The raw-event message: the decrypted event JSON, unchanged, routed `event.<app_id>.<event_type>`;
//! with a partitioned inbox it also carries the `partition_key` header the consistent-hash exchange
//! hashes.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::amqp::Outgoing;
use crate::amqp::topology::PARTITION_HEADER;
use crate::config::Settings;
use crate::extract::Mapping;
use crate::verify::VerifiedEvent;

/// Builds inbox publishes: where they go and, when the inbox is partitioned, which partition key
/// they carry.
pub struct InboxRouter {
    events_exchange: String,
    /// `Some` only with `inbox_partitions > 1`: the event mapping finds the id to partition by.
    partitioning: Option<Mapping>,
}

impl InboxRouter {
    pub fn new(settings: &Settings) -> Self {
        Self {
            events_exchange: settings.amqp.events_exchange.clone(),
            partitioning: (settings.amqp.inbox_partitions > 1)
                .then(|| Mapping::new(&settings.events)),
        }
    }

    pub fn message(&self, event: VerifiedEvent) -> Outgoing {
        let key = self.partition_key(
            event.app_id(),
            event.event_type(),
            event.body(),
            event.message_id(),
        );
        message(&self.events_exchange, event, key.as_deref())
    }

    /// `None` when the inbox is not partitioned. An event naming ids is keyed by its app, entity and
    /// first id, so every event about one customer hashes to one partition; an event naming none is
    /// keyed by its `message_id` (a content hash), which spreads those evenly.
    pub fn partition_key(
        &self,
        app_id: &str,
        event_type: &str,
        body: &[u8],
        message_id: &str,
    ) -> Option<String> {
        let mapping = self.partitioning.as_ref()?;
        let parsed = serde_json::from_slice(body).ok();
        let named = parsed.and_then(|json| mapping.first_id(event_type, &json));
        Some(match named {
            Some((entity, id)) => format!("{app_id}/{entity}/{id}"),
            None => message_id.to_owned(),
        })
    }
}

pub const PERSISTENT: u8 = 2;

/// The callback header's own time (ms), from `time_stamp` or `timestamp`, when it has one.
pub const SENT_AT_HEADER: &str = "sent_at";

pub fn routing_key(app_id: &str, event_type: &str) -> String {
    format!("event.{app_id}.{event_type}")
}

/// Mandatory, so a missing inbox binding comes back as a failure instead of a silent drop.
pub fn message(
    events_exchange: &str,
    event: VerifiedEvent,
    partition_key: Option<&str>,
) -> Outgoing {
    let mut headers = FieldTable::default();
    if let Some(key) = partition_key {
        headers.insert(PARTITION_HEADER.into(), AMQPValue::LongString(key.into()));
    }
    headers.insert(
        "app_id".into(),
        AMQPValue::LongString(event.app_id().into()),
    );
    headers.insert(
        "event_type".into(),
        AMQPValue::LongString(event.event_type().into()),
    );
    headers.insert(
        "received_at".into(),
        AMQPValue::LongLongInt(i64::try_from(event.received_at_ms()).unwrap_or(i64::MAX)),
    );
    if let Some(sent_at) = event.sent_at_ms().and_then(|ms| i64::try_from(ms).ok()) {
        headers.insert(SENT_AT_HEADER.into(), AMQPValue::LongLongInt(sent_at));
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
        .with_type(format!("event.{}", event.event_type()).as_str().into())
        .with_message_id(event.message_id().into())
        .with_timestamp(event.received_at_ms() / 1000)
        .with_headers(headers);
    Outgoing {
        exchange: events_exchange.to_owned(),
        routing_key: routing_key(event.app_id(), event.event_type()),
        body: event.into_body(),
        properties,
        mandatory: true,
    }
}
