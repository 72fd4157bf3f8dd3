//! weiling-relay: Weiling callbacks in, verified and durable in RabbitMQ, enriched customer records out.
//!
//! The modules follow the data flow: [`receive`] (HTTP edge) → [`verify`] (signature, AES, replay) →
//! [`persist`] (confirmed publish to the inbox or the dead-letter queue). [`amqp`] holds the broker
//! plumbing every stage shares; [`app`] wires the stages and runs the drain.

pub mod ack;
pub mod amqp;
pub mod app;
pub mod config;
pub mod enrich;
pub mod extract;
pub mod metrics;
pub mod ops;
pub mod persist;
pub mod publish;
pub mod receive;
pub mod telemetry;
pub mod verify;
pub mod window;

/// The entities Weiling names (customers, contacts) are the protocol's; the relay uses them as they are.
pub use weiling_proto::entity;
