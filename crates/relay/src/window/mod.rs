//! Stage 5: coalescing. The pure core lives in `coalescer`; the pipeline task drives it with a timer.

pub mod coalescer;

pub use coalescer::{Coalescer, Contribution, DeliveryTag, Flush, FlushReason, IdSource, Limits};
