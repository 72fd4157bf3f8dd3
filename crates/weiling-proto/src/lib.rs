//! Weiling's side of the wire, shared by the relay (which receives) and the simulator (which sends):
//! the callback scheme (signature, AES envelope, query string) and the entities Weiling names.
//!
//! Nothing here knows about RabbitMQ, configuration or HTTP servers; it must stay that way so the
//! simulator can speak Weiling's protocol without reaching into the relay.

pub mod callback;
pub mod entity;

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit of Weiling's `timestamp` fields.
pub fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
