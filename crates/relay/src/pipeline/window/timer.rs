//! The coalescer's clock: it never sleeps itself, the consumer's loop waits here for its next deadline.

use tokio::time::Instant;

/// Resolves at `deadline`, or never when no window is open.
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
