//! The relay's messages as both ends see them: header names, routing-key shapes, the properties every
//! stored message carries, and readers for header values. The writers (persist, publish, the mirror's
//! letters) and the readers (the pipeline's consumer, `dlq replay`) use these, never string literals,
//! so the two ends cannot drift apart.

use lapin::types::{AMQPValue, FieldTable};

/// Delivery mode 2: the broker writes the message to disk in a durable queue.
pub const PERSISTENT: u8 = 2;

/// Header names. Plain names are the contract's (consumers read them); `x-` names are the relay's
/// own bookkeeping on dead letters and records.
pub mod header {
    /// The Weiling app a message belongs to (raw events, dead letters, records).
    pub const APP_ID: &str = "app_id";
    /// The callback's `event_type` (raw events).
    pub const EVENT_TYPE: &str = "event_type";
    /// When the relay received the callback, ms since the epoch (raw events, dead letters).
    pub const RECEIVED_AT: &str = "received_at";
    /// The callback header's own time (ms), from `time_stamp` or `timestamp`, when it has one.
    pub const SENT_AT: &str = "sent_at";
    /// The consistent-hash exchange's key when the inbox is partitioned: one customer, one partition.
    pub const PARTITION_KEY: &str = "partition_key";
    /// When Weiling's answer for a record was received, ms since the epoch (records).
    pub const FETCHED_AT: &str = "fetched_at";
    /// Hex SHA-256 of a record's content: equal for equal states, whichever publication carried it.
    pub const CONTENT_HASH: &str = "x-content-sha256";
    /// HMAC-SHA256 of a record's body under `security.sign_records_key`, when set.
    pub const SIGNATURE: &str = "x-signature";
    /// Why a message is in the dead-letter queue.
    pub const REASON: &str = "x-reason";
    /// The reason in words, for the operator.
    pub const DETAIL: &str = "x-detail";
    /// The callback's query parameters on a dead letter, so a replay can verify it again.
    pub const MSG_SIGNATURE: &str = "msg_signature";
    pub const TIMESTAMP: &str = "timestamp";
    pub const NONCE: &str = "nonce";
    /// The id Weiling refused, on a `weiling_refused` letter.
    pub const WEILING_ID: &str = "x-weiling-id";
    /// Weiling's refusal code, on a `weiling_refused` letter.
    pub const WEILING_CODE: &str = "x-weiling-code";
    /// How many times `dlq replay` has published this event back.
    pub const REPLAYED: &str = "x-replayed";
    /// Where a mirror dead letter was first delivered from.
    pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
}

/// A raw event's routing key on the events exchange: `event.<app_id>.<event_type>`.
pub fn event_routing_key(app_id: &str, event_type: &str) -> String {
    format!("event.{app_id}.{event_type}")
}

/// A raw event's AMQP `type` property: `event.<event_type>`.
pub fn event_type_property(event_type: &str) -> String {
    format!("event.{event_type}")
}

/// A text header (long or short string), if present.
pub fn text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    as_text(headers?.inner().get(name)?)
}

/// An integer header of any width, if present.
pub fn integer(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    as_integer(headers?.inner().get(name)?)
}

pub fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub fn as_integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// Inserts a text header.
pub fn put_text(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(name.into(), AMQPValue::LongString(value.into()));
}

/// Inserts an integer header; a value beyond i64 is clamped (the broker has no wider integer).
pub fn put_integer(headers: &mut FieldTable, name: &str, value: impl TryInto<i64>) {
    let value = value.try_into().unwrap_or(i64::MAX);
    headers.insert(name.into(), AMQPValue::LongLongInt(value));
}
