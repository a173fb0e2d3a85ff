//! The daemons' heap: keeping a long-lived process's resident memory near what it holds.
//! Used by both daemons: the controller (`gantry controller run`) and the agent.
//!
//! Vocabulary: an **arena** is one of glibc malloc's independent heaps; by default every
//! thread that allocates while the others hold theirs gets a new one, up to 8 per core, and
//! memory freed into an arena stays resident until it is **trimmed** (`malloc_trim`
//! returns whole free pages of every arena to the kernel).
//! - The agent allocates on its tokio thread and on up to 16 blocking threads (image
//!   unpack, the builder, shim spawns); after a burst of 100 containers, freed-but-resident
//!   arena memory was most of its idle RSS.
//! - The controller frees hundreds of MiB in small blocks after serializing a snapshot for
//!   a lagging member (a copy of the state) and after big plans; with 1,000,000
//!   allocations, a quarter of its RSS was free heap that `malloc_trim` returned.
//!
//! So: few arenas (the agent), a periodic trim, and a trim after each snapshot sent.

use std::time::Duration;

/// How often the agent trims its heap.
pub const AGENT_TRIM_EVERY: Duration = Duration::from_secs(5);

/// How often the controller trims its heap (a trim walks every free block: with a GiB of
/// state it is not free, and the state changes in bursts).
pub const CONTROLLER_TRIM_EVERY: Duration = Duration::from_secs(10);

/// Caps glibc's arenas. Call before any thread is started.
pub fn limit_arenas(max: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, max);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = max;
}

/// Returns free heap pages of every arena to the kernel.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs forever: trims every `every`, on a blocking thread (a trim of a big heap takes
/// milliseconds).
pub async fn trim_periodically(every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let started = std::time::Instant::now();
        let _ = tokio::task::spawn_blocking(trim).await;
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "heap trimmed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_returns_freed_heap() {
        // Allocate and free 128 MiB in small blocks (they stay in the arena), then trim:
        // RSS must drop. Reads our own /proc/self/status.
        fn rss_kib() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                .expect("VmRSS in /proc/self/status")
        }
        let blocks: Vec<Vec<u8>> = (0..32768).map(|i| vec![i as u8; 4000]).collect();
        // keep every other block so the freed ones cannot be returned from the heap top
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(64).collect();
        let before = rss_kib();
        trim();
        let after = rss_kib();
        assert!(
            after + 32 * 1024 < before,
            "malloc_trim released less than 32 MiB: {before} KiB → {after} KiB"
        );
        drop(kept);
    }
}
