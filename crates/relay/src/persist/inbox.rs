//! The raw-event message: the decrypted event JSON, unchanged, routed `event.<app_id>.<event_type>`;
//! with a partitioned inbox it also carries the `partition_key` header the consistent-hash exchange
//! hashes.

use lapin::BasicProperties;
use lapin::types::FieldTable;

use crate::amqp::Outgoing;
use crate::amqp::message::{self, header};
use crate::config::Settings;
use crate::pipeline::extract::Mapping;
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

/// Mandatory, so a missing inbox binding comes back as a failure instead of a silent drop.
pub fn message(
    events_exchange: &str,
    event: VerifiedEvent,
    partition_key: Option<&str>,
) -> Outgoing {
    let mut headers = FieldTable::default();
    if let Some(key) = partition_key {
        message::put_text(&mut headers, header::PARTITION_KEY, key);
    }
    message::put_text(&mut headers, header::APP_ID, event.app_id());
    message::put_text(&mut headers, header::EVENT_TYPE, event.event_type());
    message::put_integer(&mut headers, header::RECEIVED_AT, event.received_at_ms());
    if let Some(sent_at) = event.sent_at_ms() {
        message::put_integer(&mut headers, header::SENT_AT, sent_at);
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(message::PERSISTENT)
        .with_content_type("application/json".into())
        .with_type(
            message::event_type_property(event.event_type())
                .as_str()
                .into(),
        )
        .with_message_id(event.message_id().into())
        .with_timestamp(event.received_at_ms() / 1000)
        .with_headers(headers);
    Outgoing {
        exchange: events_exchange.to_owned(),
        routing_key: message::event_routing_key(event.app_id(), event.event_type()),
        body: event.into_body(),
        properties,
        mandatory: true,
    }
}
