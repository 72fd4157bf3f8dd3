//! Test support: fault injection and private broker nodes.

pub mod private_broker;
pub mod proxy;
