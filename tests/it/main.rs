//! The single integration test binary: every test talks to the real local RabbitMQ (the mirror tests
//! also to PostgreSQL).

// Test support code panics on purpose: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod broker_faults;
mod catalog;
mod catalog_events;
mod contacts;
mod demo;
mod edge_limits;
mod fault;
mod helpers;
mod mirror;
mod odd_answers;
mod operate;
mod ops;
mod pipeline;
mod process;
mod receive;
mod scale;
mod support;
mod tenants;
mod tls;
