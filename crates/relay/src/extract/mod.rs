//! Stage 4: from inbox event to affected customer ids.

pub mod consumer;
pub mod mapping;

pub use mapping::{Extracted, Mapping};
