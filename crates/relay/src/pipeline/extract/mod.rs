//! From inbox event to the customer or contact ids it names: a pure mapping driven by the `[events]`
//! rules.

pub mod mapping;

pub use mapping::{Extracted, Mapping};
