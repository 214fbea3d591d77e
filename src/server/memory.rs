//! Handing memory back to the system once many clients have left.
//!
//! Every connection's buffers and session state come from the allocator, and
//! glibc's returns freed memory to the kernel only from the top of a heap. The
//! heaps of the worker threads, where sessions allocate, seldom end in free
//! space, so what thousands of closed connections freed stays in the process:
//! after 10,000 clients connected and left, the server still held 46 MiB of
//! RSS against 9 MiB before they came. That looks like a leak to whoever
//! watches the process, and it is memory the rest of the host cannot have.
//! `malloc_trim` gives back every free page of every heap (12 MiB after it in
//! the same run). It walks each heap under that heap's lock, so it runs on a
//! blocking thread, and only once the open connections have fallen by
//! `--memory-trim-after` from their peak. Other allocators and platforms keep
//! memory their own way, and the watch does not run there.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the open connection count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A wave of closes is trimmed once it is over (the count stopped falling
/// between two checks); a decline that never pauses, after this long.
/// Trimming in the middle of a wave of 10,000 closes released 3 MiB and took
/// 0.4 s; once it was over, 34 MiB in 6 ms.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Whether this build can give memory back (glibc on Linux).
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Trims the allocator's heaps whenever the open connections have fallen by
/// `trim_after` (0: never) since their peak, until `shutdown`.
pub(crate) async fn watch(metrics: Arc<Metrics>, trim_after: usize, shutdown: CancellationToken) {
    if trim_after == 0 || !SUPPORTED {
        return;
    }
    let trim_after = i64::try_from(trim_after).unwrap_or(i64::MAX);
    let open = || metrics.connections.load(Relaxed);
    let (mut peak, mut last) = (open(), open());
    let mut due_since: Option<Instant> = None;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now_open = open();
        let falling = now_open < last;
        last = now_open;
        peak = peak.max(now_open);
        if peak - now_open < trim_after {
            due_since = None;
            continue;
        }
        let waited = due_since.get_or_insert_with(Instant::now).elapsed();
        if falling && waited < MAX_WAIT {
            continue;
        }
        let started = Instant::now();
        let Ok(released) = tokio::task::spawn_blocking(trim).await else {
            continue;
        };
        peak = now_open;
        metrics.memory_trims.fetch_add(1, Relaxed);
        metrics.memory_released_bytes.fetch_add(released, Relaxed);
        tracing::debug!(
            open = now_open,
            released_kib = released / 1024,
            took_us = started.elapsed().as_micros() as u64,
            "returned freed memory to the system"
        );
    }
}

/// Gives every free page of the allocator's heaps back to the kernel; returns
/// by how much the resident set shrank.
fn trim() -> u64 {
    let before = resident_bytes();
    release_free_pages();
    before.saturating_sub(resident_bytes())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "a call into glibc, which has no safe binding")]
fn release_free_pages() {
    // SAFETY: `malloc_trim` takes no pointers and locks each heap it walks,
    // so it may run beside any other thread's allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_pages() {}

/// This process's resident set (`VmRSS`), or 0 where `/proc` cannot tell.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    crate::bench::probe::status_kib(&status, "VmRSS:").map_or(0, |kib| kib * 1024)
}
