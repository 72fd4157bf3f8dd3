//! Broker plumbing shared by every stage: connecting (TLS included) and reconnecting ([`link`]),
//! topology, the messages' header names and properties ([`message`]), the supervised confirmed
//! publisher, and the queue depths reported as metrics ([`depth`]).

pub mod claim;
pub mod connect;
pub mod depth;
pub mod link;
pub mod message;
pub mod publisher;
pub mod topology;

pub use publisher::{LinkState, Outgoing, PublishError, Publisher};
