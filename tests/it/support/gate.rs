//! Keeps the suite's floods apart from the tests that judge answers.
//!
//! The suite runs several tests at once on a two-core machine. A few tests flood the relay as fast as
//! it answers (forged callbacks by the ten thousand, thousands of stalled senders), and the fault
//! rows judge every answer, each of which the relay must give within its 1 s budget. Side by side,
//! a flood starves a judged relay of CPU and the verdict is about the machine, not the relay. A
//! flood therefore runs with no judged test beside it and no other flood; judged tests run
//! together as before. Tests that take neither side are unaffected.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static GATE: RwLock<()> = RwLock::const_new(());

/// Held for the whole of a flood test: waits until no judged test or other flood is running.
pub async fn flood() -> RwLockWriteGuard<'static, ()> {
    GATE.write().await
}

/// Held for the whole of a test whose answers are judged; any number run at once.
pub async fn judged() -> RwLockReadGuard<'static, ()> {
    GATE.read().await
}
