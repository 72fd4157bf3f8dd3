//! A record the mirror cannot apply goes to the relay's dead-letter queue, body unchanged, with why.

use lapin::BasicProperties;
use lapin::message::Delivery;
use sha2::{Digest, Sha256};

use relay::amqp::Outgoing;
use relay::amqp::message::{self, PERSISTENT, header};

/// Published through the default exchange straight to `dead_letter_queue`. `x-reason` is one of the
/// `mirror_*` reasons (which `dlq replay` leaves alone), `x-detail` the parse or database error; the
/// original exchange, routing key and headers travel along so the record can be re-published as it
/// was once the cause is fixed.
pub fn message(
    dead_letter_queue: &str,
    delivery: &Delivery,
    reason: &'static str,
    detail: &str,
) -> Outgoing {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut text = |name: &str, value: &str| message::put_text(&mut headers, name, value);
    text(header::REASON, reason);
    text(header::DETAIL, detail);
    text(header::ORIGINAL_EXCHANGE, delivery.exchange.as_str());
    text(header::ORIGINAL_ROUTING_KEY, delivery.routing_key.as_str());
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| hex::encode(Sha256::digest(&delivery.data)));
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map_or_else(|| "application/octet-stream".to_owned(), |c| c.to_string());
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(content_type.as_str().into())
        .with_type(format!("dead.{reason}").as_str().into())
        .with_message_id(message_id.as_str().into())
        .with_headers(headers);
    if let Some(timestamp) = delivery.properties.timestamp() {
        properties = properties.with_timestamp(*timestamp);
    }
    Outgoing {
        exchange: String::new(),
        routing_key: dead_letter_queue.to_owned(),
        body: delivery.data.clone(),
        properties,
        mandatory: true,
    }
}
