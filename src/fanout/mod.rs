//! Fan-out: the symbol table, each symbol's current book version, and the
//! conflating hand-off of new versions to subscribed sessions.
//!
//! A session owns one [`Mailbox`] and one [`Slot`] per subscribed symbol. A slot
//! holds no data: the data is always the symbol's *current* snapshot, read when
//! the session drains. Publishing a version therefore costs, per subscriber, one
//! atomic load of the slot's `queued` flag, plus — only when the flag was clear —
//! a swap, one index pushed onto the session's ready list and a wake-up. A slow session
//! accumulates nothing: its slots are already queued, so newer versions simply
//! replace older ones (conflation), and its memory is bounded by its
//! subscriptions, never by the feed rate.
//!
//! On a current-thread runtime, a publisher on a thread of its own (a replay)
//! wakes sessions through a [`WakeRelay`], a task on the runtime that wakes a
//! whole publish's sessions there, rather than one cross-thread wake-up per
//! session.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use futures_util::task::AtomicWaker;

pub mod depth;
mod relay;
mod subscribers;

pub use relay::{RelayGuard, WakeRelay};
use subscribers::Subscribers;

use crate::book::depth::{deepest_served, DEFAULT_MAX_BOOK_DEPTH};
use crate::book::{Fold, Snapshot};
use crate::metrics::Metrics;
use crate::normalize::Tick;

/// Everything the service knows about one symbol.
#[derive(Debug)]
pub struct SymbolEntry {
    name: Arc<str>,
    current: ArcSwapOption<Snapshot>,
    subscribers: Subscribers,
    /// Serializes writers of this symbol (several feeds may share it) and its
    /// status changes; never taken by readers.
    publish_lock: Mutex<()>,
    status: Status,
    /// The full-depth book, published and subscribed separately.
    depth: depth::DepthChannel,
}

/// Whether a symbol's data is current (protocol `status.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolState {
    Live = 0,
    Stale = 1,
    Halted = 2,
}

impl SymbolState {
    fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            1 => SymbolState::Stale,
            2 => SymbolState::Halted,
            _ => SymbolState::Live,
        }
    }

    /// The state's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SymbolState::Live => "live",
            SymbolState::Stale => "stale",
            SymbolState::Halted => "halted",
        }
    }
}

/// A symbol's status and the generation it was set in (0: never changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolStatus {
    pub generation: u64,
    pub state: SymbolState,
    pub reason: Arc<str>,
}

impl SymbolEntry {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            current: ArcSwapOption::empty(),
            subscribers: Subscribers::default(),
            publish_lock: Mutex::new(()),
            status: Status::new(SymbolState::Live, ""),
            depth: depth::DepthChannel::default(),
        }
    }

    /// The symbol's full-depth book channel.
    pub fn depth(&self) -> &depth::DepthChannel {
        &self.depth
    }

    /// The status generation; compare with the one a session last announced.
    pub fn status_generation(&self) -> u64 {
        self.status.generation()
    }

    /// The current status.
    pub fn status(&self) -> SymbolStatus {
        self.status.get()
    }

    /// The served name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The current version, or `None` before the first update.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// A cheap, lock-free borrow of the current version.
    pub fn peek(&self) -> arc_swap::Guard<Option<Arc<Snapshot>>> {
        self.current.load()
    }

    /// Adds a slot; from now on every new version queues it.
    pub fn subscribe(&self, slot: Arc<Slot>) {
        self.subscribers.add(slot);
    }

    /// Removes a slot; no new version queues it after this returns.
    pub fn unsubscribe(&self, slot: &Arc<Slot>) {
        self.subscribers.remove(slot);
    }

    /// Number of subscribed slots.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }
}

/// A live/stale status: `generation << 2 | state` in one atomic, so one load
/// tells a publisher whether its symbol is live and a session whether it has
/// announced the latest status; the reason beside it. Writers serialize under
/// their owner's publish lock.
#[derive(Debug)]
struct Status {
    bits: AtomicU64,
    reason: Mutex<Arc<str>>,
}

impl Status {
    fn new(state: SymbolState, reason: &str) -> Self {
        Self {
            bits: AtomicU64::new(state as u64),
            reason: Mutex::new(Arc::from(reason)),
        }
    }

    fn generation(&self) -> u64 {
        self.bits.load(Ordering::Acquire) >> 2
    }

    fn state(&self) -> SymbolState {
        SymbolState::from_bits(self.bits.load(Ordering::Acquire))
    }

    fn get(&self) -> SymbolStatus {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let bits = self.bits.load(Ordering::Acquire);
        SymbolStatus {
            generation: bits >> 2,
            state: SymbolState::from_bits(bits),
            reason,
        }
    }

    /// Sets the status under a new generation; false when it already was.
    fn change(&self, state: SymbolState, reason: &str) -> bool {
        let bits = self.bits.load(Ordering::Acquire);
        if SymbolState::from_bits(bits) == state {
            return false;
        }
        self.set(bits, state, reason);
        true
    }

    /// [`Status::change`], except that a symbol that is not live and stays
    /// so under a new reason is announced again: for reasons from a small
    /// fixed set, each of which tells the client something different.
    fn change_reason_too(&self, state: SymbolState, reason: &str) -> bool {
        let bits = self.bits.load(Ordering::Acquire);
        if SymbolState::from_bits(bits) == state
            && (state == SymbolState::Live
                || **self.reason.lock().unwrap_or_else(|e| e.into_inner()) == *reason)
        {
            return false;
        }
        self.set(bits, state, reason);
        true
    }

    fn set(&self, bits: u64, state: SymbolState, reason: &str) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Arc::from(reason);
        let generation = (bits >> 2) + 1;
        self.bits
            .store(generation << 2 | state as u64, Ordering::Release);
    }
}

/// A session's inbox of "this subscription has something new" notices.
///
/// One session waits on it, so a single [`AtomicWaker`] does: registering and
/// waking are an atomic operation each, with no waiter list to lock.
#[derive(Debug, Default)]
pub struct Mailbox {
    ready: Mutex<Vec<u32>>,
    /// Set when the ready list went from empty to non-empty since the last
    /// [`Mailbox::poll_notified`]; a notice is never lost between two polls.
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Mailbox {
    /// Moves every ready slot index into `into` (which should be empty), keeping
    /// both vectors' capacity so steady-state draining never allocates.
    pub fn take_ready(&self, into: &mut Vec<u32>) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *ready, into);
    }

    /// Ready when a slot was queued since the last time this returned ready.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register first, then look: a notice that lands in between wakes the
        // newly registered waker.
        self.waker.register(cx.waker());
        if self.pending.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves when a slot was queued since the last notice was taken.
    pub async fn notified(&self) {
        poll_fn(|cx| self.poll_notified(cx)).await
    }

    fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        if !relay::collect(&self.waker) {
            self.waker.wake();
        }
    }
}

/// One (session, symbol) subscription as the publisher sees it.
#[derive(Debug)]
pub struct Slot {
    mailbox: Arc<Mailbox>,
    index: u32,
    queued: AtomicBool,
}

impl Slot {
    /// A slot that announces itself in `mailbox` under `index`.
    pub fn new(mailbox: Arc<Mailbox>, index: u32) -> Self {
        Self {
            mailbox,
            index,
            queued: AtomicBool::new(false),
        }
    }

    /// Called by the session just before it reads the symbol's current version.
    ///
    /// The fence pairs with the one in `Subscribers::queue_all` (a store-load pattern on
    /// both sides): either the publisher's load in `Slot::mark` sees this
    /// clear and queues the slot again, or the read that follows this call sees
    /// the version it published. The last version is never missed.
    pub fn clear(&self) {
        self.clear_unfenced();
        fence_after_clears();
    }

    /// [`Slot::clear`] without its fence, for a session that clears a batch
    /// of slots and then calls [`fence_after_clears`] once before reading any
    /// of their versions. A fence stalls until every earlier store is done,
    /// so one per slot made each slot's cache miss wait for the one before;
    /// without it the misses of a batch overlap.
    pub fn clear_unfenced(&self) {
        self.queued.store(false, Ordering::Relaxed);
    }

    /// Whether the slot is queued: a publisher's first look, before
    /// [`Slot::mark`]. A slow subscriber's flag stays set across many
    /// versions; a plain load leaves its cache line shared instead of taking
    /// it away from the session on every version.
    fn is_queued(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues the slot unless it already is, for a publisher that saw it
    /// clear with [`Slot::is_queued`].
    fn mark(&self) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return; // Queued meanwhile: the session will read the newest version anyway.
        }
        let was_empty = {
            let mut ready = self.mailbox.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.push(self.index);
            ready.len() == 1
        };
        if was_empty {
            self.mailbox.notify();
        }
    }
}

/// The fence that completes [`Slot::clear_unfenced`]: after it, the versions
/// read for the cleared slots are at least as new as any whose publisher saw
/// the slot still queued.
pub fn fence_after_clears() {
    fence(Ordering::SeqCst);
}

/// A symbol's name without its `venue:` prefix, in upper case: what the
/// client may have meant when it names a symbol the server does not serve.
fn bare_name(name: &str) -> String {
    name.rsplit_once(':')
        .map_or(name, |(_, bare)| bare)
        .to_ascii_uppercase()
}

/// The symbol table and publisher side of the fan-out.
#[derive(Debug)]
pub struct Hub {
    symbols: RwLock<HashMap<Arc<str>, Arc<SymbolEntry>>>,
    /// Served names by their bare form (see [`bare_name`]), sorted, so that a
    /// client asking for `BTCUSDT` or `btcusdt` can be told of `spot:BTCUSDT`.
    by_bare_name: RwLock<HashMap<Box<str>, Vec<Arc<str>>>>,
    metrics: Arc<Metrics>,
    /// Levels per side kept in each published depth version.
    max_book_depth: usize,
}

impl Hub {
    /// An empty hub reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            symbols: RwLock::new(HashMap::new()),
            by_bare_name: RwLock::new(HashMap::new()),
            metrics,
            max_book_depth: DEFAULT_MAX_BOOK_DEPTH,
        }
    }

    /// Sets the deepest `book` subscription served (levels per side).
    /// A setting between two served depths (200, say) is taken down to the
    /// served depth below it (100): no client can ask for more, and keeping
    /// more would only let a book be cut short for levels nobody sees.
    pub fn with_max_book_depth(mut self, levels: usize) -> Self {
        self.max_book_depth = deepest_served(levels);
        self
    }

    /// The deepest `book` subscription served (levels per side).
    pub fn max_book_depth(&self) -> usize {
        self.max_book_depth
    }

    /// The metrics registry this hub and its sessions report into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Makes `name` servable (idempotent) and returns its entry. Feeds declare
    /// their symbols up front so clients can subscribe before the first update.
    pub fn declare(&self, name: &str) -> Arc<SymbolEntry> {
        if let Some(entry) = self.get(name) {
            return entry;
        }
        let mut symbols = self.symbols.write().unwrap_or_else(|e| e.into_inner());
        let mut added = None;
        let entry = symbols
            .entry(Arc::from(name))
            .or_insert_with_key(|key| {
                added = Some(key.clone());
                Arc::new(SymbolEntry::new(key.clone()))
            })
            .clone();
        drop(symbols);
        if let Some(name) = added {
            let mut by_bare_name = self.by_bare_name.write().unwrap_or_else(|e| e.into_inner());
            let names = by_bare_name.entry(bare_name(&name).into()).or_default();
            if let Err(at) = names.binary_search(&name) {
                names.insert(at, name);
            }
        }
        entry
    }

    /// `no such symbol` for the names of `unknown`, and for the first four
    /// of them the served symbols the client may have meant: those that
    /// differ only in a `venue:` prefix or in case, as far as `visible` (the
    /// client's entitlements) lets it see them, at most four a name. The
    /// names are the client's own, already in the error's `symbols`.
    pub fn no_such_symbol(&self, unknown: &[&str], visible: &dyn Fn(&str) -> bool) -> String {
        const HINTED_NAMES: usize = 4;
        const HINTS_PER_NAME: usize = 4;
        let by_bare_name = self.by_bare_name.read().unwrap_or_else(|e| e.into_inner());
        let hints: Vec<String> = unknown
            .iter()
            .take(HINTED_NAMES)
            .filter_map(|name| {
                let similar: Vec<&str> = by_bare_name
                    .get(bare_name(name).as_str())?
                    .iter()
                    .map(|similar| &**similar)
                    .filter(|&similar| visible(similar))
                    .take(HINTS_PER_NAME)
                    .collect();
                (!similar.is_empty())
                    .then(|| format!("{name}: did you mean {}?", similar.join(", ")))
            })
            .collect();
        if hints.is_empty() {
            "no such symbol".to_owned()
        } else {
            format!("no such symbol ({})", hints.join("; "))
        }
    }

    /// The entry for `name`, if it is served.
    pub fn get(&self, name: &str) -> Option<Arc<SymbolEntry>> {
        let symbols = self.symbols.read().unwrap_or_else(|e| e.into_inner());
        symbols.get(name).cloned()
    }

    /// Every served symbol, sorted.
    pub fn symbol_names(&self) -> Vec<Arc<str>> {
        let symbols = self.symbols.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<Arc<str>> = symbols.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Number of served symbols.
    pub fn symbol_count(&self) -> usize {
        self.symbols.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Changes a symbol's status and tells its subscribers; no-op when unchanged.
    pub fn set_status(&self, entry: &SymbolEntry, state: SymbolState, reason: &str) {
        Self::change_status(entry, state, reason, Status::change);
    }

    /// [`Self::set_status`], except that a symbol that is not live and stays
    /// so under a new reason is announced again: for a reason that tells
    /// clients something the one they were given no longer does.
    pub fn set_status_and_reason(&self, entry: &SymbolEntry, state: SymbolState, reason: &str) {
        Self::change_status(entry, state, reason, Status::change_reason_too);
    }

    /// Applies `change` under the symbol's writer lock and tells its
    /// subscribers when it changed anything.
    fn change_status(
        entry: &SymbolEntry,
        state: SymbolState,
        reason: &str,
        change: fn(&Status, SymbolState, &str) -> bool,
    ) {
        let changed = {
            let _writer = entry.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
            change(&entry.status, state, reason)
        };
        if changed {
            tracing::debug!(symbol = %entry.name, state = state.as_str(), reason, "symbol status");
            entry.subscribers.queue_all();
        }
    }

    /// Applies `tick` to `entry`'s book, publishes the new version and queues it
    /// for every subscriber. A fresh update makes a stale symbol live again.
    /// Returns the new version's `seq`.
    pub fn publish(&self, entry: &SymbolEntry, tick: &Tick, ingest_ts_ns: i64) -> u64 {
        self.publish_fold(entry, &Fold::of(tick), ingest_ts_ns)
    }

    /// [`Hub::publish`] for several updates taken in together: one version
    /// whose `seq` counts them all.
    pub fn publish_fold(&self, entry: &SymbolEntry, fold: &Fold, ingest_ts_ns: i64) -> u64 {
        if fold.is_empty() {
            // Nothing to publish: a version with the same `seq` would be a
            // second, different version numbered as the first.
            return entry.current().map_or(0, |current| current.seq);
        }
        let seq = {
            let _writer = entry.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
            let previous = entry.current.load();
            let next = Snapshot::next(previous.as_deref(), &entry.name, fold, ingest_ts_ns);
            let seq = next.seq;
            entry.current.store(Some(Arc::new(next)));
            // Live again only once the update is in place, and both are queued
            // together: a session never announces `live` before the update
            // that made it so.
            if entry.status.state() != SymbolState::Live
                && entry.status.change(SymbolState::Live, "fresh update")
            {
                tracing::debug!(symbol = %entry.name, "symbol status: live on a fresh update");
            }
            seq
        };
        entry.subscribers.queue_all();
        self.metrics.book_updates.fetch_add(1, Ordering::Relaxed);
        seq
    }

    /// Publishes a version built elsewhere (a gateway's copy of an ingest's
    /// book) and queues it for every subscriber. Unlike [`Hub::publish`] it
    /// leaves the status alone: the caller knows whether its source is live.
    pub fn publish_version(&self, entry: &SymbolEntry, version: Arc<Snapshot>) {
        {
            let _writer = entry.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
            entry.current.store(Some(version));
        }
        entry.subscribers.queue_all();
        self.metrics.book_updates.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::BookUpdate;
    use rust_decimal::Decimal;

    fn trade(price: i64) -> Tick {
        Tick {
            recv_ts_ns: 0,
            exchange_ts_ns: None,
            update: BookUpdate::Trade {
                price: Decimal::new(price, 2),
                size: Decimal::ONE,
            },
        }
    }

    #[test]
    fn a_slow_subscriber_is_queued_once_and_reads_the_newest_version() {
        let hub = Hub::new(Arc::default());
        let entry = hub.declare("BTCUSDT");
        let mailbox = Arc::new(Mailbox::default());
        let slot = Arc::new(Slot::new(mailbox.clone(), 3));
        entry.subscribe(slot.clone());

        for price in 1..=1_000 {
            hub.publish(&entry, &trade(price), price);
        }
        let mut ready = Vec::new();
        mailbox.take_ready(&mut ready);
        assert_eq!(ready, vec![3], "one notice however many versions");
        slot.clear();
        assert_eq!(entry.current().map(|s| s.seq), Some(1_000));

        hub.publish(&entry, &trade(1), 1);
        ready.clear();
        mailbox.take_ready(&mut ready);
        assert_eq!(ready, vec![3], "queued again after the session cleared it");
    }

    /// A publisher on one thread, a session on another clearing its slots in
    /// batches under one fence, over many short bursts: at the end of each,
    /// once every notice is handled, the session has read every symbol's
    /// last version, so every cleared slot was queued again by the next
    /// version. (What the fence itself guards against, a read overtaking the
    /// clear, this test cannot show on x86: there arc-swap's load is itself
    /// a locked instruction, which orders the two anyway.)
    #[test]
    fn slots_cleared_in_batches_never_miss_the_last_version() {
        const SYMBOLS: usize = 4;
        const BURSTS: i64 = 1_000;
        const ROUNDS: i64 = 50;
        let hub = Arc::new(Hub::new(Arc::default()));
        let mailbox = Arc::new(Mailbox::default());
        let entries: Vec<Arc<SymbolEntry>> = (0..SYMBOLS)
            .map(|i| hub.declare(&format!("S{i}")))
            .collect();
        let slots: Vec<Arc<Slot>> = (0..SYMBOLS as u32)
            .map(|i| Arc::new(Slot::new(mailbox.clone(), i)))
            .collect();
        for (entry, slot) in entries.iter().zip(&slots) {
            entry.subscribe(slot.clone());
        }
        let burst_done = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let start = Arc::new(std::sync::Barrier::new(2));
        let publisher = {
            let (hub, entries) = (hub.clone(), entries.clone());
            let (burst_done, start) = (burst_done.clone(), start.clone());
            std::thread::spawn(move || {
                for burst in 1..=BURSTS {
                    start.wait();
                    for round in 1..=ROUNDS {
                        for entry in &entries {
                            hub.publish(entry, &trade(round), round);
                        }
                    }
                    burst_done.store(burst, Ordering::SeqCst);
                }
            })
        };
        let mut seen = [0u64; SYMBOLS];
        let mut ready = Vec::new();
        for burst in 1..=BURSTS {
            start.wait();
            loop {
                // Read before taking: notices taken after the burst is done
                // are its last.
                let last_round = burst_done.load(Ordering::SeqCst) == burst;
                ready.clear();
                mailbox.take_ready(&mut ready);
                for &index in &ready {
                    slots[index as usize].clear_unfenced();
                }
                fence_after_clears();
                for &index in &ready {
                    let current = entries[index as usize].peek();
                    seen[index as usize] = current.as_deref().map_or(0, |s| s.seq);
                }
                if last_round && ready.is_empty() {
                    break;
                }
            }
            let last = (burst * ROUNDS) as u64;
            assert_eq!(seen, [last; SYMBOLS], "burst {burst}");
        }
        publisher.join().expect("publisher");
    }

    #[test]
    fn unsubscribed_slots_are_not_queued() {
        let hub = Hub::new(Arc::default());
        let entry = hub.declare("ETHUSDT");
        let mailbox = Arc::new(Mailbox::default());
        let slot = Arc::new(Slot::new(mailbox.clone(), 0));
        entry.subscribe(slot.clone());
        entry.unsubscribe(&slot);
        assert_eq!(entry.subscriber_count(), 0);
        hub.publish(&entry, &trade(5), 5);
        let mut ready = Vec::new();
        mailbox.take_ready(&mut ready);
        assert!(ready.is_empty());
    }

    #[test]
    fn a_stale_book_is_announced_again_when_its_reason_changes() {
        let hub = Hub::new(Arc::default());
        let entry = hub.declare("BTCUSDT");
        let depth = entry.depth();
        let mailbox = Arc::new(Mailbox::default());
        let slot = Arc::new(Slot::new(mailbox.clone(), 0));
        depth.subscribe(slot.clone());
        let before = depth.status();
        assert_eq!(&*before.reason, depth::AWAITING_SNAPSHOT);
        let cut = "the price moved past where the book was cut";
        depth.set_status(SymbolState::Stale, cut);
        let after = depth.status();
        assert_eq!((after.state, &*after.reason), (SymbolState::Stale, cut));
        assert_eq!(after.generation, before.generation + 1);
        let mut ready = Vec::new();
        mailbox.take_ready(&mut ready);
        assert_eq!(ready, vec![0], "subscribers are told");
        // The same reason again, or live after live, is no news.
        depth.set_status(SymbolState::Stale, cut);
        depth.set_status(SymbolState::Live, "book in sync");
        depth.set_status(SymbolState::Live, "book in sync again");
        assert_eq!(depth.status().generation, after.generation + 1);
    }

    #[test]
    fn status_changes_are_announced_and_a_fresh_update_makes_a_symbol_live() {
        let hub = Hub::new(Arc::default());
        let entry = hub.declare("BTCUSDT");
        let mailbox = Arc::new(Mailbox::default());
        let slot = Arc::new(Slot::new(mailbox.clone(), 0));
        entry.subscribe(slot.clone());
        assert_eq!(entry.status_generation(), 0);

        hub.set_status(&entry, SymbolState::Stale, "feed disconnected");
        hub.set_status(&entry, SymbolState::Stale, "again");
        let status = entry.status();
        assert_eq!((status.generation, status.state), (1, SymbolState::Stale));
        assert_eq!(
            &*status.reason, "feed disconnected",
            "unchanged state keeps its reason"
        );
        let mut ready = Vec::new();
        mailbox.take_ready(&mut ready);
        assert_eq!(ready, vec![0]);

        slot.clear();
        hub.publish(&entry, &trade(1), 1);
        assert_eq!(entry.status().state, SymbolState::Live);
        assert_eq!(entry.status_generation(), 2);
    }

    #[test]
    fn declare_is_idempotent_and_names_are_sorted() {
        let hub = Hub::new(Arc::default());
        let a = hub.declare("b");
        let b = hub.declare("b");
        hub.declare("a");
        assert!(Arc::ptr_eq(&a, &b));
        let names: Vec<String> = hub.symbol_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn unknown_names_are_told_the_served_ones_they_may_mean() {
        let hub = Hub::new(Arc::default());
        for name in ["usdm:BTCUSDT", "spot:BTCUSDT", "ETHUSDT", "spot:ETHUSDT"] {
            hub.declare(name);
        }
        hub.declare("spot:BTCUSDT");
        let everything = |_: &str| true;
        let cases = [
            (
                "BTCUSDT",
                "BTCUSDT: did you mean spot:BTCUSDT, usdm:BTCUSDT?",
            ),
            (
                "btcusdt",
                "btcusdt: did you mean spot:BTCUSDT, usdm:BTCUSDT?",
            ),
            (
                "spot:btcusdt",
                "spot:btcusdt: did you mean spot:BTCUSDT, usdm:BTCUSDT?",
            ),
            (
                "coinbase:ethusdt",
                "coinbase:ethusdt: did you mean ETHUSDT, spot:ETHUSDT?",
            ),
        ];
        for (name, hint) in cases {
            assert_eq!(
                hub.no_such_symbol(&[name], &everything),
                format!("no such symbol ({hint})")
            );
        }
        assert_eq!(
            hub.no_such_symbol(&["FOO", ""], &everything),
            "no such symbol"
        );
        // Only what the client may see is named.
        let usdm_only = |name: &str| name.starts_with("usdm:");
        assert_eq!(
            hub.no_such_symbol(&["FOO", "BTCUSDT", "ETHUSDT:"], &usdm_only),
            "no such symbol (BTCUSDT: did you mean usdm:BTCUSDT?)"
        );
        // Hints for the first four names only, each name's hints capped.
        for venue in 0..10 {
            hub.declare(&format!("v{venue}:SOLUSDT"));
        }
        let names = [
            "a:SOLUSDT",
            "b:SOLUSDT",
            "c:SOLUSDT",
            "d:SOLUSDT",
            "e:SOLUSDT",
        ];
        let message = hub.no_such_symbol(&names, &everything);
        assert_eq!(message.matches("did you mean").count(), 4, "{message}");
        assert!(!message.contains("e:SOLUSDT"), "{message}");
        assert!(message.starts_with("no such symbol (a:SOLUSDT: did you mean v0:SOLUSDT, v1:SOLUSDT, v2:SOLUSDT, v3:SOLUSDT?;"), "{message}");
    }
}
