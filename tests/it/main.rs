//! The single integration test binary: every test talks to the real local RabbitMQ (the mirror tests
//! also to PostgreSQL).

// Test support code panics on purpose: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

// The harness: in-process and child-process rigs, fault proxies, private broker and PostgreSQL.
mod support;

// The HTTP edge: verification answers, limits, stalled bodies.
mod edge_limits;
mod receive;

// The pipeline against the simulated Weiling: catalog events, contacts, odd answers, tenants, scale.
mod catalog;
mod catalog_events;
mod contacts;
mod odd_answers;
mod pipeline;
mod scale;
mod share;
mod tenants;

// The broker: faults outside the matrix, TLS.
mod broker_faults;
mod cluster;
mod inbox_version;
mod tls;

// The fault matrix of reliability.md (b), row by row.
mod fault;

// The tools around the service: demo, mirror, dlq replay, reconcile, operating the process, and
// the chart's dashboard and alerts on a real Prometheus, one callback's trace over OTLP.
mod demo;
mod mirror;
mod monitoring;
mod operate;
mod ops;
mod traces;
