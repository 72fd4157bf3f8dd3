//! Stage 7: one confirmed message per customer or contact to the records exchange (`customers_exchange`).
//! [`record`] builds the message (pure); [`RecordPublisher`] publishes it until the broker confirms.

pub mod record;

use std::time::Duration;

use backon::BackoffBuilder;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::amqp::{Outgoing, Publisher};

/// One record publish may wait this long for its confirm before it is retried.
const CONFIRM_WAIT: Duration = Duration::from_secs(15);

/// The records exchange with its own confirmed connection, and the key that signs records (if any).
#[derive(Clone)]
pub struct RecordPublisher {
    publisher: Publisher,
    exchange: String,
    sign_key: Option<SecretString>,
}

impl RecordPublisher {
    pub fn new(publisher: Publisher, exchange: &str, sign_key: &SecretString) -> Self {
        Self {
            publisher,
            exchange: exchange.to_owned(),
            sign_key: (!sign_key.expose_secret().is_empty()).then(|| sign_key.clone()),
        }
    }

    /// The confirmed connection, shared with the consumer's moves to the retry and dead-letter queues.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The message for one record, addressed to the records exchange.
    pub fn message(&self, record: &record::Record) -> Outgoing {
        record::message(&self.exchange, record, self.sign_key.as_ref())
    }

    /// Publishes until the broker confirms or `abort` fires. Retrying without end is safe because the
    /// inputs stay unacked (durable) meanwhile, and a nack or a lost link is usually short.
    pub async fn publish_until_confirmed(
        &self,
        message: Outgoing,
        abort: &CancellationToken,
    ) -> bool {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let attempt =
                tokio::time::timeout(CONFIRM_WAIT, self.publisher.publish(message.clone()));
            let error = tokio::select! {
                result = attempt => match result {
                    Ok(Ok(())) => return true,
                    Ok(Err(error)) => error.as_str(),
                    Err(_) => "timeout",
                },
                () = abort.cancelled() => return false,
            };
            crate::metrics::publish_failed(error);
            debug!(error, "record publish failed; retrying");
            let delay = backoff.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = abort.cancelled() => return false,
            }
        }
    }
}
