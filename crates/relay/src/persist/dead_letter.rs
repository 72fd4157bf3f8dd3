//! The dead-letter message: what could not be read, why, and everything needed to replay it.

use lapin::BasicProperties;
use lapin::types::FieldTable;
use sha2::{Digest, Sha256};

use crate::amqp::Outgoing;
use crate::amqp::message::{self, header};
use crate::verify::{AuthenticUndecodable, DeadLetterReason};

/// Published through the default exchange straight to the dead-letter queue. The query parameters
/// travel as headers so a replay can verify the signature again.
pub fn message(dead_letter_queue: &str, letter: &AuthenticUndecodable) -> Outgoing {
    let query = letter.query();
    let mut headers = FieldTable::default();
    let mut text = |name: &str, value: &str| message::put_text(&mut headers, name, value);
    text(header::REASON, letter.reason().as_str());
    text(header::DETAIL, letter.detail());
    text(header::APP_ID, letter.app_id());
    text(header::MSG_SIGNATURE, &query.msg_signature);
    text(header::TIMESTAMP, &query.timestamp);
    text(header::NONCE, &query.nonce);
    message::put_integer(&mut headers, header::RECEIVED_AT, letter.received_at_ms());
    let content_type = match letter.reason() {
        // The envelope is JSON; the decrypted text of a json failure is, by definition, not.
        DeadLetterReason::Decrypt | DeadLetterReason::ReceiveId => "application/json",
        DeadLetterReason::Json => "application/octet-stream",
    };
    let message_id = hex::encode(
        Sha256::new()
            .chain_update(letter.reason().as_str())
            .chain_update([0u8])
            .chain_update(query.msg_signature.as_bytes())
            .chain_update([0u8])
            .chain_update(letter.body())
            .finalize(),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(message::PERSISTENT)
        .with_content_type(content_type.into())
        .with_type(format!("dead.{}", letter.reason().as_str()).as_str().into())
        .with_message_id(message_id.as_str().into())
        .with_timestamp(letter.received_at_ms() / 1000)
        .with_headers(headers);
    Outgoing {
        exchange: String::new(),
        routing_key: dead_letter_queue.to_owned(),
        body: letter.body().to_vec(),
        properties,
        mandatory: true,
    }
}

/// Why an inbox event went to the dead-letter queue although it was read fine: Weiling refused one
/// id it names on its own (a code that does not mean "does not exist").
pub const WEILING_REFUSED: &str = "weiling_refused";

/// An inbox event parked because Weiling refused the id `id` it names: the event's own body and
/// headers (so `dlq replay` can publish it back unchanged), plus the reason, the id and the code.
pub fn refused_event(
    dead_letter_queue: &str,
    body: &[u8],
    properties: &BasicProperties,
    id: &str,
    code: i64,
    detail: &str,
) -> Outgoing {
    let mut headers = properties.headers().clone().unwrap_or_default();
    message::put_text(&mut headers, header::REASON, WEILING_REFUSED);
    message::put_text(&mut headers, header::DETAIL, detail);
    message::put_text(&mut headers, header::WEILING_ID, id);
    message::put_integer(&mut headers, header::WEILING_CODE, code);
    Outgoing {
        exchange: String::new(),
        routing_key: dead_letter_queue.to_owned(),
        body: body.to_vec(),
        properties: properties
            .clone()
            .with_type(format!("dead.{WEILING_REFUSED}").as_str().into())
            .with_headers(headers),
        mandatory: true,
    }
}
