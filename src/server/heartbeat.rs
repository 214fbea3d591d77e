//! Whether the runtime that runs the WebSocket sessions still runs tasks.
//!
//! Where HTTP has a thread of its own ([`run_fronted`](super::run_fronted)),
//! answering `/healthz` shows only that that thread runs: a sessions' runtime
//! stuck in one task would still see clients accepted and answered `101`,
//! then never serve them. A task on that runtime stamps the time every
//! [`PERIOD`]; `/healthz` reads how long ago it last did, and so does each
//! WebSocket upgrade, refused while the runtime is stalled.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

/// How often the runtime stamps the time.
const PERIOD: Duration = Duration::from_millis(100);

/// How long the runtime may go without stamping before `/healthz` says
/// `503` and new WebSocket clients are refused: beyond the queueing of a
/// busy runtime (a few hundred milliseconds at most with 15,000 clients
/// connecting), well within a health checker's patience. A runtime that
/// still runs tasks, only later than this, counts as stalled too, and sheds
/// new clients on purpose: each would wait longer still.
pub const STALLED_AFTER: Duration = Duration::from_secs(2);

/// When a runtime last ran its heartbeat task.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    last_beat_ms: AtomicU64,
}

impl Heartbeat {
    /// Starts the heartbeat task on `runtime`; it ends once the returned
    /// heartbeat is dropped.
    pub fn start(runtime: &tokio::runtime::Handle) -> Arc<Self> {
        let heartbeat = Arc::new(Self {
            epoch: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
        });
        runtime.spawn(beat(Arc::downgrade(&heartbeat)));
        heartbeat
    }

    /// How long since the runtime last ran the heartbeat task.
    pub fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// How long the runtime has run nothing, once that is longer than
    /// [`STALLED_AFTER`].
    pub fn stalled(&self) -> Option<Duration> {
        Some(self.silence()).filter(|silence| *silence > STALLED_AFTER)
    }
}

async fn beat(heartbeat: Weak<Heartbeat>) {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(heartbeat) = heartbeat.upgrade() else {
            return;
        };
        let now = u64::try_from(heartbeat.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        heartbeat.last_beat_ms.store(now, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    }

    /// Two beats' time of the runtime's paused clock.
    fn run_a_while(runtime: &tokio::runtime::Runtime) {
        runtime.block_on(async { tokio::time::sleep(PERIOD * 2).await });
    }

    #[test]
    fn a_runtime_that_runs_nothing_is_stalled_and_one_that_runs_again_is_not() {
        let runtime = paused_runtime();
        let heartbeat = Heartbeat::start(runtime.handle());
        run_a_while(&runtime);
        assert_eq!(heartbeat.stalled(), None);
        // Nothing runs the runtime while this thread sleeps.
        std::thread::sleep(STALLED_AFTER + PERIOD);
        assert!(heartbeat.stalled().is_some_and(|s| s > STALLED_AFTER));
        run_a_while(&runtime);
        assert_eq!(heartbeat.stalled(), None);
    }

    #[test]
    fn the_heartbeat_task_ends_with_its_heartbeat() {
        let runtime = paused_runtime();
        let heartbeat = Heartbeat::start(runtime.handle());
        run_a_while(&runtime);
        assert_eq!(runtime.metrics().num_alive_tasks(), 1);
        drop(heartbeat);
        run_a_while(&runtime);
        assert_eq!(runtime.metrics().num_alive_tasks(), 0);
    }
}
