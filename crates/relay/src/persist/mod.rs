//! Stage 3: durable before acknowledged. Verified events go to the events exchange (and so to the
//! inbox); authentic but unreadable callbacks go to the dead-letter queue.

pub mod dead_letter;
pub mod inbox;

use std::sync::Arc;

use crate::amqp::{PublishError, Publisher};
use crate::config::Settings;
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
        self.publisher.publish(self.inbox.message(event)).await
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
