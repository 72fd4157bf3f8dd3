//! Broker plumbing shared by every stage: topology, and the supervised confirmed publisher.

pub mod publisher;
pub mod topology;

pub use publisher::{LinkState, Outgoing, PublishError, Publisher};
