//! weiling-relay: Weiling callbacks in, verified and durable in RabbitMQ, enriched customer records out.
//!
//! The modules follow the data flow: [`receive`] (HTTP edge) → [`verify`] (signature, AES, replay) →
//! [`persist`] (confirmed publish to the inbox or the dead-letter queue). [`amqp`] holds the broker
//! plumbing every stage shares; [`app`] wires the stages and runs the drain.

pub mod ack;
pub mod amqp;
pub mod app;
pub mod bench;
pub mod config;
pub mod demo;
pub mod enrich;
pub mod entity;
pub mod extract;
pub mod metrics;
pub mod mirror;
pub mod ops;
pub mod persist;
pub mod publish;
pub mod receive;
pub mod simulator;
pub mod telemetry;
pub mod verify;
pub mod window;
