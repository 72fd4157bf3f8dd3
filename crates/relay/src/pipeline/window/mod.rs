//! Stage 5: coalescing. The pure core lives in [`coalescer`]; [`timer`] is how the consumer waits for
//! the next window to come due.

pub mod coalescer;
pub mod timer;

pub use coalescer::{Coalescer, Contribution, DeliveryTag, Flush, FlushReason, IdSource, Limits};
