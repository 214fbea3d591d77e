//! Handing memory back to the system once many clients have left.
//!
//! Every connection's buffers and session state come from the allocator, and
//! glibc's returns freed memory to the kernel only from the top of a heap. The
//! heaps of the worker threads, where sessions allocate (and the HTTP
//! thread's, where handshakes do, with one worker), seldom end in free
//! space, so what thousands of closed connections freed stays in the process:
//! after 10,000 clients connected and left, the server still held 46 MiB of
//! RSS against 9 MiB before they came. That looks like a leak to whoever
//! watches the process, and it is memory the rest of the host cannot have.
//! `malloc_trim` gives back every free page of every heap (12 MiB after it in
//! the same run). It walks each heap under that heap's lock, so it runs on a
//! blocking thread, and only once the open connections have fallen by
//! `--memory-trim-after` from their peak and stopped falling (during a longer
//! decline, every 10 s as well). Other allocators and platforms keep
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
/// between two checks), and while it goes on, once per this long.
/// Trimming in the middle of a wave of 10,000 closes released 3 MiB and took
/// 0.4 s; once it was over, 34 MiB in 6 ms.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Whether this build can give memory back (glibc on Linux).
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Trims the allocator's heaps as [`Watch`] decides, until `shutdown`.
pub(crate) async fn watch(metrics: Arc<Metrics>, trim_after: usize, shutdown: CancellationToken) {
    if trim_after == 0 || !SUPPORTED {
        return;
    }
    let open = || metrics.connections.load(Relaxed);
    let mut watch = Watch::new(trim_after, open());
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        // Taken before the count: any session admitted after this raises
        // the mark again for the next look.
        let high = metrics.connections_high.swap(0, Relaxed);
        let now_open = open();
        if !watch.check(now_open, high, Instant::now()) {
            continue;
        }
        let started = Instant::now();
        let Ok(released) = tokio::task::spawn_blocking(trim).await else {
            continue;
        };
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

/// When to trim, from the open connection count seen once per check.
#[derive(Debug)]
struct Watch {
    trim_after: i64,
    /// The most connections open since the last trim after a finished wave.
    peak: i64,
    /// The count at the previous check.
    last: i64,
    /// Since when a trim has been due (`trim_after` closed since the peak)
    /// and put off because the count was still falling.
    due_since: Option<Instant>,
}

impl Watch {
    fn new(trim_after: usize, open: i64) -> Self {
        Self {
            trim_after: i64::try_from(trim_after).unwrap_or(i64::MAX),
            peak: open,
            last: open,
            due_since: None,
        }
    }

    /// Whether to trim now, `open` connections being open at `now` and at
    /// most `high` at once since the last check.
    fn check(&mut self, open: i64, high: i64, now: Instant) -> bool {
        // Below the count of the last check, or below the mark since then:
        // a crowd that arrived and is leaving between two checks is caught
        // on its way down, not at its end.
        let falling = open < self.last.max(high);
        self.last = open;
        self.peak = self.peak.max(open).max(high);
        if self.peak - open < self.trim_after {
            self.due_since = None;
            return false;
        }
        let due_since = *self.due_since.get_or_insert(now);
        if !falling {
            // The wave is over: what it freed is given back, and the next
            // one is measured from here.
            (self.peak, self.due_since) = (open, None);
            return true;
        }
        if now.duration_since(due_since) >= MAX_WAIT {
            // A long wave: trim what it freed so far, and again once it ends
            // (the peak stays, so the end is still due).
            self.due_since = Some(now);
            return true;
        }
        false
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

/// Has the threads started from now on allocate from the heap the calling
/// thread uses, instead of one each: glibc gives threads heaps of their own
/// to spare them its lock, but one heap's free space is no use to another.
/// With one worker, HTTP has a thread of its own ([`run_fronted`]), whose
/// handshakes' buffers come and go in bursts as clients connect, while the
/// sessions they hand over allocate on the worker. Apart, the HTTP thread's
/// heap kept the high-water mark of a burst, free but held: 15,000 clients
/// connecting at once cost the server 4.2 KiB each instead of 3.8 KiB. In
/// one heap, what the handshakes free, the sessions reuse. The two threads
/// seldom allocate at the same moment; blocks up to about 1 KiB that a
/// thread frees and allocates again come from its own cache without the
/// heap's lock, larger ones and those freed by the other thread take it.
/// Replay threads and tokio's blocking threads share the heap too, and an
/// operator's `MALLOC_ARENA_MAX` is overridden.
///
/// [`run_fronted`]: super::run_fronted
pub fn share_one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[expect(unsafe_code, reason = "a call into glibc, which has no safe binding")]
    // SAFETY: `mallopt` takes no pointers; `M_ARENA_MAX` bounds how many
    // heaps threads that allocate for the first time may create.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// This process's resident set (`VmRSS`), or 0 where `/proc` cannot tell.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    crate::metrics::status_kib(&status, "VmRSS:").map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `counts`, one check a second, and returns the seconds at which
    /// a trim is made.
    fn trims(trim_after: usize, counts: &[i64]) -> Vec<usize> {
        let checks: Vec<(i64, i64)> = counts.iter().map(|&count| (count, count)).collect();
        trims_marked(trim_after, &checks)
    }

    /// [`trims`] with each check's count and the high-water mark since the
    /// check before, as `(open, high)`.
    fn trims_marked(trim_after: usize, checks: &[(i64, i64)]) -> Vec<usize> {
        let start = Instant::now();
        let mut watch = Watch::new(trim_after, checks[0].0);
        (1..checks.len())
            .filter(|&i| {
                let (open, high) = checks[i];
                watch.check(open, high, start + CHECK_EVERY * i as u32)
            })
            .collect()
    }

    #[test]
    fn a_crowd_that_came_and_went_between_two_checks_is_trimmed_once_the_count_holds() {
        // 2,000 came and left within the second before check 2: only the
        // mark saw them, and whether they are all gone shows at check 3.
        let checks = [(0, 0), (0, 0), (0, 2_000), (0, 0), (0, 0)];
        assert_eq!(trims_marked(500, &checks), vec![3]);
    }

    #[test]
    fn a_crowd_caught_leaving_at_a_check_is_trimmed_once_it_has_left() {
        // 2,000 arrived before check 2, and half had left again by then:
        // more than the check before saw, yet falling.
        let checks = [(0, 0), (0, 0), (1_008, 2_000), (0, 0), (0, 0)];
        assert_eq!(trims_marked(500, &checks), vec![4]);
    }

    #[test]
    fn a_short_wave_is_trimmed_once_when_it_is_over() {
        // 10,000 open, all gone over three seconds, then quiet.
        let counts = [10_000, 10_000, 7_000, 3_000, 0, 0, 0, 0];
        assert_eq!(trims(1_000, &counts), vec![5]);
    }

    #[test]
    fn a_long_wave_is_trimmed_every_max_wait_and_once_more_at_its_end() {
        // 1,000 closes a second for 25 seconds, then quiet.
        let mut counts: Vec<i64> = (0..=25).map(|s| 30_000 - 1_000 * s).collect();
        counts.extend([5_000, 5_000, 5_000]);
        // Due from second 1; forced at 11 and 21; the end at 26.
        assert_eq!(trims(1_000, &counts), vec![11, 21, 26]);
    }

    #[test]
    fn fewer_closes_than_the_setting_are_never_trimmed() {
        let counts = [5_000, 4_200, 4_200, 4_500, 4_100, 4_100, 4_100];
        assert!(trims(1_000, &counts).is_empty());
    }

    #[test]
    fn a_crowd_that_comes_back_raises_the_peak_again() {
        // Trimmed after the first drop, then a new crowd and a new drop.
        let counts = [0, 2_000, 500, 500, 3_000, 3_000, 1_000, 1_000];
        assert_eq!(trims(1_000, &counts), vec![3, 7]);
    }

    #[test]
    fn churn_around_a_steady_count_is_not_a_wave() {
        let counts: Vec<i64> = (0..60).map(|s| 15_000 + (s % 3) * 400).collect();
        assert!(trims(1_000, &counts).is_empty());
    }
}
