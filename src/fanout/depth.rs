//! The depth side of a symbol: its current [`DepthSnapshot`] behind
//! `arc-swap`, its own subscribers and its own live/stale status, handed to
//! sessions exactly as top-of-book versions are (a notice, never the data).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use super::{Hub, Slot, Status, Subscribers, SymbolEntry, SymbolState, SymbolStatus};
use crate::book::depth::{DepthBook, DepthSnapshot, Outcome};
use crate::book::{Fold, TopSource};
use crate::metrics::depth::DepthEvent;
use crate::normalize::depth::DepthMessage;

/// Reason a book is stale before its first snapshot.
pub const AWAITING_SNAPSHOT: &str = "awaiting a depth snapshot";

/// A symbol's published depth and who is subscribed to it.
#[derive(Debug)]
pub struct DepthChannel {
    current: ArcSwapOption<DepthSnapshot>,
    subscribers: Subscribers,
    /// Serializes writers and status changes; never taken by readers.
    lock: Mutex<()>,
    status: Status,
}

impl Default for DepthChannel {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            subscribers: Subscribers::default(),
            lock: Mutex::new(()),
            status: Status::new(SymbolState::Stale, AWAITING_SNAPSHOT),
        }
    }
}

impl DepthChannel {
    /// The current version, or `None` before the first snapshot.
    pub fn current(&self) -> Option<Arc<DepthSnapshot>> {
        self.current.load_full()
    }

    /// The status generation; compare with the one a session last announced.
    pub fn status_generation(&self) -> u64 {
        self.status.generation()
    }

    /// The book's status: `stale` before the first snapshot and while a gap
    /// or a crossed book waits for a resync.
    pub fn status(&self) -> SymbolStatus {
        self.status.get()
    }

    /// Adds a slot; from now on every new version and status queues it.
    pub fn subscribe(&self, slot: Arc<Slot>) {
        self.subscribers.add(slot);
    }

    /// Removes a slot; nothing queues it after this returns.
    pub fn unsubscribe(&self, slot: &Arc<Slot>) {
        self.subscribers.remove(slot);
    }

    /// Number of subscribed slots.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Changes the status and tells subscribers; no-op when unchanged. A
    /// stale book is announced again when the reason changes (from awaiting
    /// its snapshot to cut short, say): the client needs the reason to act.
    pub fn set_status(&self, state: SymbolState, reason: &str) {
        let changed = {
            let _writer = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.status.change_reason_too(state, reason)
        };
        if changed {
            self.subscribers.queue_all();
        }
    }

    fn notify(&self) {
        self.subscribers.queue_all();
    }
}

impl Hub {
    /// Publishes a depth version built elsewhere (a gateway's copy of an
    /// ingest's book) and queues it for every subscriber. Like
    /// [`Hub::publish_version`] it leaves the status to the caller.
    pub fn publish_depth_version(&self, entry: &SymbolEntry, version: Arc<DepthSnapshot>) {
        let depth = entry.depth();
        {
            let _writer = depth.lock.lock().unwrap_or_else(|e| e.into_inner());
            depth.current.store(Some(version));
        }
        depth.notify();
    }

    /// Applies one depth message to `book` (the feed's full book of `entry`)
    /// and announces a book that fell out of sync as `stale`, with the
    /// reason. A book that is consistent afterwards (`Outcome::Updated`) is
    /// not published here: the caller publishes it with
    /// [`Hub::publish_depth`], at once or after the next few messages (a
    /// replay that is behind folds them). Returns what happened.
    pub fn update_depth(
        &self,
        entry: &SymbolEntry,
        book: &mut DepthBook,
        message: &DepthMessage,
    ) -> Outcome {
        let mut outcome = book.apply(message);
        if outcome == Outcome::Updated && !book.vouches_for(self.max_book_depth()) {
            outcome = Outcome::CutShort;
        }
        let metrics = &self.metrics().depth;
        metrics.count_dropped_levels(book.take_dropped_levels());
        match outcome {
            Outcome::Gap | Outcome::Crossed | Outcome::PriceOutOfRange | Outcome::CutShort => {
                let reason = outcome.stale_reason().unwrap_or("book not in sync");
                entry.depth().set_status(SymbolState::Stale, reason);
            }
            Outcome::Updated | Outcome::Buffered | Outcome::Outdated => {}
        }
        metrics.count(DepthEvent::from(outcome));
        outcome
    }

    /// A feed dropped `entry`'s book `book` with the connection it came
    /// on (a live feed's, or a recording's `disconnect` line): the book is
    /// stale for `reason` until the next connection's snapshot, and a best
    /// bid and ask it gave the ticker (by `top`) is emptied.
    pub fn drop_depth_book(
        &self,
        entry: &SymbolEntry,
        book: &DepthBook,
        top: &mut TopSource,
        reason: &str,
    ) {
        entry.depth().set_status(SymbolState::Stale, reason);
        if let Some(empty) = top.book_lost() {
            let fold = Fold::of_top(empty, book.exchange_ts_ns());
            self.publish_fold(entry, &fold, crate::wall_clock_ns());
        }
    }

    /// Publishes the best levels of `book`, which the last
    /// [`Hub::update_depth`] found consistent, as `entry`'s depth version
    /// `versions` after the current one (1 but for a replay that applied
    /// several messages together: `seq` counts each); a resynced book is
    /// live again, after the version is out.
    pub fn publish_depth(
        &self,
        entry: &SymbolEntry,
        book: &mut DepthBook,
        versions: u64,
        ingest_ts_ns: i64,
    ) {
        let depth = entry.depth();
        {
            let _writer = depth.lock.lock().unwrap_or_else(|e| e.into_inner());
            let previous = depth.current.load().as_ref().map_or(0, |c| c.seq);
            let seq = previous + versions.max(1);
            let next = book.publish(entry.name(), seq, self.max_book_depth(), ingest_ts_ns);
            depth.current.store(Some(Arc::new(next)));
        }
        depth.notify();
        depth.set_status(SymbolState::Live, "book in sync");
    }
}
