//! How every broker connection of the relay is opened and kept: the publisher, the inbox consumer,
//! the mirror and `dlq replay` all connect through [`Reconnect`]. One attempt tries `amqp.url`'s
//! addresses in a shuffled order, each bounded by `amqp.connect_timeout_ms`
//! ([`connect`](super::connect::connect): heartbeat, TLS); after a failed attempt or a lost link
//! the next one waits a capped, jittered exponential backoff (`amqp.reconnect_max_delay_ms`), reset
//! once a link came up.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AmqpSettings;

/// First delay after a failure; doubled per failure up to `reconnect_max_delay_ms`.
const MIN_DELAY: Duration = Duration::from_millis(100);

/// One named connection's opening and reopening.
pub struct Reconnect {
    amqp: AmqpSettings,
    name: String,
    policy: ExponentialBuilder,
    backoff: ExponentialBackoff,
    /// Set after the first attempt: every later one follows a failure or a lost link, so it waits.
    attempted: bool,
}

impl Reconnect {
    /// `name` is the connection's name in the broker's management UI and in the logs.
    pub fn new(amqp: &AmqpSettings, name: impl Into<String>) -> Self {
        let policy = ExponentialBuilder::default()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(Duration::from_millis(amqp.reconnect_max_delay_ms))
            .with_jitter()
            .without_max_times();
        Self {
            amqp: amqp.clone(),
            name: name.into(),
            backoff: policy.build(),
            policy,
            attempted: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One attempt over the configured addresses, each bounded by the connect timeout; the error is
    /// text fit for a log line (the URL's password never appears in lapin's errors).
    pub async fn attempt(&self) -> Result<Connection, String> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.as_str().into());
        super::connect::connect(&self.amqp, properties)
            .await
            .map_err(|error| error.to_string())
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.backoff
            .next()
            .unwrap_or(Duration::from_millis(self.amqp.reconnect_max_delay_ms))
    }

    /// A connection, retried until one opens; `None` once `stop` fires. Every call after the first
    /// waits the backoff delay first, because it follows a failure or a lost link.
    pub async fn connect(&mut self, stop: &CancellationToken) -> Option<Connection> {
        loop {
            if self.attempted {
                let delay = self.next_delay();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return None,
                }
            }
            self.attempted = true;
            let attempt = tokio::select! {
                attempt = self.attempt() => attempt,
                () = stop.cancelled() => return None,
            };
            match attempt {
                Ok(connection) => return Some(connection),
                Err(error) => self.failed(&error),
            }
        }
    }

    /// The link is up and its session set: the backoff starts over.
    pub fn up(&mut self) {
        info!(connection = %self.name, "broker link up");
        self.backoff = self.policy.build();
    }

    /// An attempt or a session's set-up failed.
    pub fn failed(&mut self, error: &str) {
        self.attempted = true;
        warn!(connection = %self.name, error, "broker connection failed");
    }

    /// A live link broke; whatever it held unacked returns to its queues.
    pub fn lost(&mut self, reason: &str) {
        self.attempted = true;
        warn!(connection = %self.name, reason, "broker link lost; reconnecting");
    }
}
