//! Test support: fault injection, private broker nodes and private PostgreSQL clusters.

pub mod private_broker;
pub mod private_postgres;
pub mod proxy;
