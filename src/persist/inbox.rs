//! The raw-event message: the decrypted event JSON, unchanged, routed `event.<app_id>.<event_type>`.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::amqp::Outgoing;
use crate::verify::VerifiedEvent;

pub const PERSISTENT: u8 = 2;

pub fn routing_key(app_id: &str, event_type: &str) -> String {
    format!("event.{app_id}.{event_type}")
}

/// Mandatory, so a missing inbox binding comes back as a failure instead of a silent drop.
pub fn message(events_exchange: &str, event: VerifiedEvent) -> Outgoing {
    let mut headers = FieldTable::default();
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
