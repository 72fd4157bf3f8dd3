//! Broker plumbing shared by every stage: connecting (TLS included), topology, and the supervised
//! confirmed publisher.

pub mod connect;
pub mod publisher;
pub mod topology;

pub use publisher::{LinkState, Outgoing, PublishError, Publisher};
