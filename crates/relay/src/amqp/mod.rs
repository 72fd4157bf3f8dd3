//! Broker plumbing shared by every stage: connecting (TLS included) and reconnecting ([`link`]),
//! topology, the messages' header names and properties ([`message`]), and the supervised confirmed
//! publisher.

pub mod connect;
pub mod link;
pub mod message;
pub mod publisher;
pub mod topology;

pub use publisher::{LinkState, Outgoing, PublishError, Publisher};
