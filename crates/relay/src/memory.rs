//! Gives the heap's free pages back to the operating system now and then.
//!
//! glibc's allocator keeps what a burst of requests freed in the arena of the thread that allocated
//! it, and returns only the free space at the very top of each heap. After a stall (a paused node,
//! a slow broker) the requests that piled up leave megabytes resident that nothing will reuse soon,
//! and the pod's memory creeps up stall by stall. `malloc_trim` walks every arena and hands the
//! free pages anywhere in it back (`MADV_DONTNEED`); a call took 1–8 ms on the relay's heap under an
//! edge attack (bench/profile.md). Every `server.heap_trim_interval_ms` (10 s by default; 0 = never).

use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Trims the heap every `every` until `stop` is cancelled; does nothing (and returns `None`) where
/// the allocator is not glibc's or `every` is zero.
pub fn spawn_trimmer(every: Duration, stop: CancellationToken) -> Option<JoinHandle<()>> {
    if every.is_zero() || !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    // A plain thread: a trim holds each arena's lock for a moment, which must not stall a runtime
    // worker's other tasks.
    let spawned = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                std::thread::sleep(every);
                trim();
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "could not start the heap trimmer; memory freed after bursts stays resident");
            None
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and only reorganises the allocator's own free lists
    // under its locks; it is documented as safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_no_trimmer() {
        assert!(spawn_trimmer(Duration::ZERO, CancellationToken::new()).is_none());
    }

    #[test]
    fn the_trimmer_runs_until_stopped() {
        let stop = CancellationToken::new();
        let handle = spawn_trimmer(Duration::from_millis(5), stop.clone());
        // Garbage for it to hand back, freed on another thread than the trimmer's.
        let freed: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(freed);
        std::thread::sleep(Duration::from_millis(30));
        stop.cancel();
        if let Some(handle) = handle {
            assert!(handle.join().is_ok());
        }
    }
}
