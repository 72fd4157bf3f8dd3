//! Stage 3: durable before acknowledged. Verified events go to the events exchange (and so to the
//! inbox); authentic but unreadable callbacks go to the dead-letter queue.

pub mod dead_letter;
pub mod inbox;

use std::sync::Arc;

use tracing::Instrument;

use crate::amqp::{PublishError, Publisher};
use crate::config::Settings;
use crate::telemetry::{self, propagation};
use crate::verify::{AuthenticUndecodable, VerifiedEvent};

/// Stores callbacks with one confirmed publish each.
#[derive(Clone)]
pub struct Persister {
    publisher: Publisher,
    inbox: Arc<inbox::InboxRouter>,
    dead_letter_queue: String,
}

impl Persister {
    pub fn new(publisher: Publisher, settings: &Settings) -> Self {
        Self {
            publisher,
            inbox: Arc::new(inbox::InboxRouter::new(settings)),
            dead_letter_queue: settings.amqp.dead_letter_queue.clone(),
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Resolves once the broker confirmed the event is in every bound queue, the inbox included.
    pub async fn store_event(&self, event: VerifiedEvent) -> Result<(), PublishError> {
        let mut message = self.inbox.message(event);
        // The event carries this span's context into the inbox: the flush that enriches it links here.
        let span = telemetry::publish_span(&message.exchange);
        span.record(
            "messaging.rabbitmq.destination.routing_key",
            message.routing_key.as_str(),
        );
        message.properties = propagation::inject(&span, message.properties);
        self.publisher.publish(message).instrument(span).await
    }

    /// Resolves once the broker confirmed the dead letter.
    pub async fn store_dead_letter(
        &self,
        letter: &AuthenticUndecodable,
    ) -> Result<(), PublishError> {
        self.publisher
            .publish(dead_letter::message(&self.dead_letter_queue, letter))
            .await
    }
}
