//! The relay service: Weiling callbacks in, verified and durable in RabbitMQ, enriched records out.
//!
//! The modules follow the data flow. Synchronous, inside the callback's HTTP request: [`receive`]
//! (HTTP edge) → [`verify`] (signature, AES, replay) → [`persist`] (one confirmed publish to the inbox,
//! or to the dead-letter queue). Asynchronous, from the inbox: [`pipeline`] (extract → window → enrich
//! → publish → ack). [`amqp`] is the broker plumbing every stage shares; [`app`] wires the stages and
//! runs the drain; [`ops`] holds the operator's tools (`dlq replay`, `reconcile`).

pub mod amqp;
pub mod app;
pub mod config;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod persist;
pub mod pipeline;
pub mod receive;
pub mod telemetry;
pub mod verify;

/// The entities Weiling names (customers, contacts) are the protocol's; the relay uses them as they are.
pub use weiling_proto::entity;
