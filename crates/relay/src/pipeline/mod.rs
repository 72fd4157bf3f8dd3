//! The asynchronous half of a callback's path, in the order an inbox delivery travels it:
//!
//! [`consumer`] (deliveries in; acks, requeues and parking out) → [`extract`] (pure: event → ids) →
//! [`window`] (pure coalescer; the consumer's timer closes windows) → [`flush`] (one closed window:
//! [`enrich`] with Weiling, then [`publish`] one confirmed record per id) → [`ack`] (a delivery is
//! acked once every id it named is confirmed).
//!
//! Each stage hands its result to the next through [`consumer`] and [`flush`], the two drivers; no
//! stage calls another.

pub mod ack;
pub mod consumer;
pub mod enrich;
pub mod extract;
pub mod flush;
pub mod partitions;
pub mod publish;
pub mod share;
pub mod window;

pub use consumer::{Pipeline, spawn};
