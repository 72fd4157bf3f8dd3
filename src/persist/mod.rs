//! Stage 3: durable before acknowledged. Verified events go to the events exchange (and so to the
//! inbox); authentic but unreadable callbacks go to the dead-letter queue.

pub mod dead_letter;
pub mod inbox;

use crate::amqp::{PublishError, Publisher};
use crate::config::AmqpSettings;
use crate::verify::{AuthenticUndecodable, VerifiedEvent};

/// Stores callbacks with one confirmed publish each.
#[derive(Clone)]
pub struct Persister {
    publisher: Publisher,
    events_exchange: String,
    dead_letter_queue: String,
}

impl Persister {
    pub fn new(publisher: Publisher, amqp: &AmqpSettings) -> Self {
        Self {
            publisher,
            events_exchange: amqp.events_exchange.clone(),
            dead_letter_queue: amqp.dead_letter_queue.clone(),
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Resolves once the broker confirmed the event is in every bound queue, the inbox included.
    pub async fn store_event(&self, event: VerifiedEvent) -> Result<(), PublishError> {
        self.publisher
            .publish(inbox::message(&self.events_exchange, event))
            .await
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
