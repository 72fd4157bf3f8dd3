//! Heap bytes the replay cache holds per remembered callback, counted by the allocator rather than
//! estimated: `cargo bench --bench replay_entry`. The figure sizes `security.replay_cache_capacity`
//! (200,000 entries by default) and is printed, never asserted.

use std::time::Duration;

use relay::verify::ReplayKey;
use relay::verify::replay::{Admission, ReplayCache};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const WINDOW: Duration = Duration::from_secs(600);

fn heap_bytes() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

/// Remembers `count` distinct callbacks, each stored as a first sighting.
fn remember(cache: &ReplayCache, from: u64, count: u64) {
    for n in from..from + count {
        let key = ReplayKey::new("wloabench", &n.to_le_bytes());
        if let Admission::First(ticket) = cache.admit(&key) {
            ticket.stored();
        }
    }
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    println!("| capacity | callbacks remembered | heap bytes | bytes per entry |");
    println!("|---:|---:|---:|---:|");
    for capacity in [10_000u64, 200_000] {
        let before = heap_bytes();
        let cache = ReplayCache::new(WINDOW, capacity);
        // Filled to capacity, then past it: the second figure is the steady state of a busy relay,
        // where every new callback evicts the oldest.
        for (from, count) in [(0, capacity), (capacity, capacity)] {
            remember(&cache, from, count);
            let held = heap_bytes().saturating_sub(before);
            println!(
                "| {capacity} | {} | {held} | {:.0} |",
                from + count,
                held as f64 / capacity as f64
            );
        }
        drop(cache);
    }
}
