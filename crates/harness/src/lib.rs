//! The rig the demo, the bench and the integration tests share: a simulated Weiling, a relay, and a
//! checking consumer on the records exchange, with unique names per run and cleanup afterwards.
//!
//! It sits above the relay and the simulator and below everything that drives them; the service never
//! depends on it.

pub mod scenario;
