//! The replay feed: plays recorded files into the hub at recorded pace × speed.
//!
//! Replay runs on its own OS thread: reading and parsing are blocking, CPU-bound
//! work that must not take a runtime worker from the sessions. Before the thread
//! starts, the input is scanned once so every symbol it holds is declared, and
//! clients can subscribe to a symbol before its first update arrives.
//!
//! A replay publishes what it read when the next item is not due yet, or
//! after `MAX_HELD_ITEMS` of them: behind its recording (always, at `--speed max`)
//! it folds a symbol's updates into one version and applies several diffs to
//! a depth book before publishing it once (see `Symbols`).
//!
//! A symbol whose recording carries a depth book may take its best bid and
//! ask from the book's top, by its file's [`TopRule`] (the book, for a
//! Coinbase capture).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::merge::Merge;
use super::source::{Item, ReplayFile, SourceError};
use crate::book::depth::{
    DepthBook, Outcome, PendingBudget, DEFAULT_MAX_PENDING_DIFFS,
    DEFAULT_MAX_PENDING_LEVELS_ALL_BOOKS,
};
use crate::book::{Fold, TopRule, TopSource};
use crate::fanout::{Hub, SymbolEntry, SymbolState, WakeRelay};
use crate::metrics::{FeedStats, WarningLimiter};
use crate::normalize::{Recognised, Tick};
use crate::wall_clock_ns;

/// Where a replay file comes from.
#[derive(Clone, Debug)]
pub enum ReplayInput {
    /// A file on disk (gzip or plain).
    Path(PathBuf),
    /// A sample compiled into the binary.
    Bundled {
        name: &'static str,
        bytes: &'static [u8],
    },
}

impl ReplayInput {
    fn open(&self) -> Result<ReplayFile, SourceError> {
        match self {
            ReplayInput::Path(path) => ReplayFile::open(path),
            ReplayInput::Bundled { name, bytes } => ReplayFile::from_reader(*name, *bytes),
        }
    }
}

/// One replayed file and the namespace its symbols are served under.
#[derive(Clone, Debug)]
pub struct ReplaySource {
    /// `Some("spot")` serves the file's `BTCUSDT` as `spot:BTCUSDT`.
    pub prefix: Option<String>,
    pub input: ReplayInput,
}

impl ReplaySource {
    /// The served name of a symbol read from this source.
    pub fn served_name(&self, symbol: &str) -> String {
        super::served_name(self.prefix.as_deref(), symbol)
    }
}

/// The slowest replay speed: a second of the recording in about 17 minutes.
const MIN_SPEED: f64 = 0.001;
/// The fastest paced replay; faster is `max`.
const MAX_SPEED: f64 = 1_000_000.0;

/// Replay pacing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// As fast as the book can take it.
    Max,
    /// Recorded time divided by this factor (`1.0` is real time).
    Factor(f64),
}

impl std::str::FromStr for Speed {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        match text.trim_end_matches(['x', 'X']).parse::<f64>() {
            Ok(factor) if (MIN_SPEED..=MAX_SPEED).contains(&factor) => Ok(Speed::Factor(factor)),
            _ => Err(format!(
                "speed must be a number from {MIN_SPEED} to {MAX_SPEED}, or `max`, not {text:?}"
            )),
        }
    }
}

/// A replay feed's settings.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// The feed's name in logs and metrics.
    pub name: String,
    /// Files replayed together, merged in receive-time order.
    pub sources: Vec<ReplaySource>,
    pub speed: Speed,
    /// Start over at the end instead of stopping.
    pub looped: bool,
    /// Longer silences in the recording are shortened to this, so files from
    /// different days, or a recorder's outage, do not stall the replay.
    pub max_gap: Duration,
    /// Wait for [`ReplayHandle::start`] before the first tick.
    pub start_paused: bool,
    /// Levels each full-depth book keeps per side (see
    /// [`DEFAULT_MAX_BOOK_LEVELS`](crate::book::depth::DEFAULT_MAX_BOOK_LEVELS)).
    pub max_book_levels: usize,
}

/// Why a replay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("replay feed `{0}` has no input files")]
    NoInput(String),
    #[error("cannot start the replay thread: {0}")]
    Thread(std::io::Error),
}

/// Controls a running replay.
#[derive(Debug)]
pub struct ReplayHandle {
    start: mpsc::Sender<()>,
    finished: watch::Receiver<bool>,
    stats: Arc<FeedStats>,
}

impl ReplayHandle {
    /// Starts a replay created with `start_paused`; no effect otherwise.
    pub fn start(&self) {
        let _ = self.start.send(());
    }

    /// Resolves once a non-looping replay has played everything (or stopped).
    pub async fn finished(&self) {
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// The feed's counters.
    pub fn stats(&self) -> &Arc<FeedStats> {
        &self.stats
    }
}

/// Declares the replay's symbols in `hub`, then plays it on a new thread until
/// it ends or `shutdown` is cancelled.
pub fn spawn(
    hub: Arc<Hub>,
    config: ReplayConfig,
    shutdown: CancellationToken,
) -> Result<ReplayHandle, ReplayError> {
    if config.sources.is_empty() {
        return Err(ReplayError::NoInput(config.name));
    }
    let started = Instant::now();
    let declared = declare_symbols(&hub, &config.sources)?;
    tracing::info!(
        feed = %config.name,
        symbols = declared,
        scan_ms = started.elapsed().as_millis() as u64,
        "replay input scanned"
    );
    let stats = hub.metrics().register_feed(&config.name, "replay");
    let (start_tx, start_rx) = mpsc::channel();
    let (finished_tx, finished_rx) = watch::channel(false);
    let player = Player {
        hub,
        stats: stats.clone(),
        config,
        shutdown,
    };
    // Sessions are woken on the runtime, a publish's at once.
    let relay = WakeRelay::start();
    std::thread::Builder::new()
        .name(format!("replay-{}", player.config.name))
        .spawn(move || {
            let _relayed = relay.as_ref().map(WakeRelay::enter);
            if player.config.start_paused && !player.wait_for_start(&start_rx) {
                return;
            }
            player.stats.set_state(crate::metrics::FeedState::Live);
            player.play();
            let _ = finished_tx.send(true);
        })
        .map_err(ReplayError::Thread)?;
    Ok(ReplayHandle {
        start: start_tx,
        finished: finished_rx,
        stats,
    })
}

/// Reads every source once and declares the symbols found. Returns their count.
fn declare_symbols(hub: &Hub, sources: &[ReplaySource]) -> Result<usize, ReplayError> {
    // Files may share symbols (a Tardis quotes file and its trades file).
    let mut served = std::collections::HashSet::new();
    for source in sources {
        let mut file = source.input.open()?;
        while file.next_item().is_some() {}
        for symbol in file.symbols() {
            let name = source.served_name(symbol);
            hub.declare(&name);
            served.insert(name);
        }
    }
    Ok(served.len())
}

struct Player {
    hub: Arc<Hub>,
    stats: Arc<FeedStats>,
    config: ReplayConfig,
    shutdown: CancellationToken,
}

impl Player {
    fn wait_for_start(&self, start: &mpsc::Receiver<()>) -> bool {
        loop {
            match start.recv_timeout(Duration::from_millis(100)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(mpsc::RecvTimeoutError::Timeout) if self.shutdown.is_cancelled() => {
                    return false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn play(&self) {
        let name = &self.config.name;
        let mut pacer = Pacer::new(self.config.speed, self.config.max_gap);
        let mut warnings = WarningLimiter::every(Duration::from_secs(1));
        let started = Instant::now();
        loop {
            let files = match self.open_all() {
                Ok(files) => files,
                Err(e) => {
                    tracing::error!(feed = %name, error = %e, "replay input unreadable; feed stops");
                    break;
                }
            };
            let mut symbols = Symbols::new(files.len(), self.config.max_book_levels);
            let mut merge = Merge::new(files);
            pacer.restart();
            let mut played = false;
            let mut until_shutdown_check = 0_u32;
            while let Some((file, item)) = merge.next_item() {
                if until_shutdown_check == 0 {
                    // Looking takes a lock: once per batch of items is soon enough.
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    until_shutdown_check = SHUTDOWN_CHECK_ITEMS;
                }
                until_shutdown_check -= 1;
                count_one(&self.stats.messages);
                match item {
                    Item::Tick { symbol, tick } => {
                        if !self.wait_until_due(&mut pacer, tick.recv_ts_ns, &mut symbols) {
                            return;
                        }
                        let Some(served) = self.resolve(&mut symbols, &merge, file, symbol) else {
                            continue;
                        };
                        symbols.fold(served, &tick);
                        symbols.publish_if_full(&self.hub);
                        count_one(&self.stats.ticks);
                        played = true;
                    }
                    Item::Depth { symbol } => {
                        count_one(&self.stats.recognised);
                        let Some(symbol) = symbols.depth.attribute(file, symbol) else {
                            let unattributed = crate::metrics::depth::DepthEvent::Unattributed;
                            self.hub.metrics().depth.count(unattributed);
                            continue;
                        };
                        let Some(message) = merge.files().get(file).map(|f| f.depth()) else {
                            continue;
                        };
                        if !self.wait_until_due(&mut pacer, message.recv_ts_ns, &mut symbols) {
                            return;
                        }
                        let Some(served) = self.resolve(&mut symbols, &merge, file, symbol) else {
                            continue;
                        };
                        let Some(Served { entry, .. }) = symbols.served.get(served) else {
                            continue;
                        };
                        let outcome = symbols
                            .depth
                            .apply(served, |book| self.hub.update_depth(entry, book, message));
                        symbols.take_in();
                        symbols.top_from_depth(served, outcome);
                        symbols.publish_if_full(&self.hub);
                        played = true;
                    }
                    Item::Recognised(Recognised::Disconnect) => {
                        count_one(&self.stats.recognised);
                        symbols.disconnect(file, &self.hub);
                    }
                    Item::Recognised(_) => count_one(&self.stats.recognised),
                    Item::Malformed { line, error } => {
                        count_one(&self.stats.malformed);
                        let file_name = merge.files().get(file).map_or("?", |f| f.name());
                        warnings.warn(|suppressed| {
                            tracing::warn!(feed = %name, file = file_name, line, %error, suppressed, "skipping malformed line");
                        });
                    }
                    Item::Failed(error) => {
                        count_one(&self.stats.malformed);
                        let file_name = merge.files().get(file).map_or("?", |f| f.name());
                        // A looping replay of a damaged file meets it on every pass.
                        warnings.warn(|suppressed| {
                            tracing::warn!(feed = %name, file = file_name, %error, suppressed, "replay file ends early (read error)");
                        });
                    }
                }
            }
            symbols.publish(&self.hub);
            if !self.config.looped || self.shutdown.is_cancelled() {
                break;
            }
            if !played {
                // Starting over would read the same nothing again, at once.
                tracing::error!(feed = %name, "the replay holds no tick or depth message; it does not loop");
                break;
            }
            self.stats.loops.fetch_add(1, Relaxed);
            tracing::debug!(feed = %name, "replay starts over");
        }
        self.stats.ended.store(true, Relaxed);
        self.stats.set_state(crate::metrics::FeedState::Ended);
        let elapsed = started.elapsed();
        let ticks = self.stats.ticks.load(Relaxed);
        tracing::info!(
            feed = %name,
            ticks,
            malformed = self.stats.malformed.load(Relaxed),
            elapsed_ms = elapsed.as_millis() as u64,
            ticks_per_sec = (ticks as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
            "replay feed ended; serving the final book"
        );
    }

    fn open_all(&self) -> Result<Vec<ReplayFile>, SourceError> {
        self.config
            .sources
            .iter()
            .map(|source| source.input.open())
            .collect()
    }

    /// Sleeps until an item received at `recv_ts_ns` is due, publishing
    /// what `symbols` holds first if it is not due yet. Returns false if
    /// `shutdown` fired meanwhile.
    fn wait_until_due(&self, pacer: &mut Pacer, recv_ts_ns: i64, symbols: &mut Symbols) -> bool {
        let Some(due) = pacer.due(recv_ts_ns) else {
            return true;
        };
        if Instant::now() < due {
            symbols.publish(&self.hub);
        }
        Pacer::sleep_until(due, &self.shutdown)
    }

    /// The index in `symbols.served` of `symbol` in `file`, its hub entry
    /// declared on first use.
    fn resolve(
        &self,
        symbols: &mut Symbols,
        merge: &Merge,
        file: usize,
        symbol: u32,
    ) -> Option<usize> {
        if let Some(index) = symbols.served_index(file, symbol) {
            return Some(index);
        }
        let replayed = merge.files().get(file)?;
        let raw = replayed.symbols().get(symbol as usize)?;
        let source = self.config.sources.get(file)?;
        let entry = self.hub.declare(&source.served_name(raw));
        symbols.insert(file, symbol, entry, replayed.top_rule())
    }
}

/// Timed items a replay takes in before it publishes what they changed: at
/// `--speed max` about 30 µs of reading, which bounds how long the first of
/// them waits. A paced replay publishes whenever the next item is not due
/// yet, so it holds updates only while it is behind.
const MAX_HELD_ITEMS: usize = 64;

/// Items between two looks at the shutdown token.
const SHUTDOWN_CHECK_ITEMS: u32 = 1_024;

/// Adds one to a feed counter. Each replay registers its own counters and
/// only its thread writes them, so a plain load and store is exact, and
/// cheaper than a locked add on a path taken for every message.
fn count_one(counter: &std::sync::atomic::AtomicU64) {
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

/// The symbols a pass over the files has met, resolved to hub entries, and
/// what each holds until the replay next publishes.
///
/// A replay that is behind (always, at `--speed max`) reads many updates in
/// the time one version takes to publish. It folds each symbol's updates
/// into one version (see [`Fold`]), and publishes a full-depth book once for
/// all the diffs applied to it since the last publish, so that versions
/// nobody could have seen are not built, published and freed: at full speed
/// that was a fifth of the replay's time.
struct Symbols {
    /// Per file, per symbol index: the index in `served` of the symbol it
    /// is served as.
    resolved: Vec<Vec<Option<usize>>>,
    /// Every served symbol met, once however many files carry it (a quotes
    /// file and its trades file), with one fold: folds kept per file would
    /// publish one after the other, and the book would end on the last
    /// file's updates rather than on the last update read.
    served: Vec<Served>,
    /// Index in `served` of each served symbol's name.
    served_by_name: HashMap<Arc<str>, usize>,
    /// Indices in `served` of those holding updates, in the order they took
    /// their first.
    holding: Vec<usize>,
    depth: DepthBooks,
    /// Timed items taken in since the last publish.
    held: usize,
    /// When the first of them was taken in: the ingest time of every
    /// version they make, never later than any of them was taken in.
    batch_started_ns: i64,
}

/// A served symbol: its hub entry and the updates it holds.
struct Served {
    entry: Arc<SymbolEntry>,
    fold: Fold,
    top: TopSource,
}

impl Symbols {
    fn new(files: usize, max_book_levels: usize) -> Self {
        Self {
            resolved: std::iter::repeat_with(Vec::new).take(files).collect(),
            served: Vec::new(),
            served_by_name: HashMap::new(),
            holding: Vec::new(),
            depth: DepthBooks::new(files, max_book_levels),
            held: 0,
            batch_started_ns: 0,
        }
    }

    /// The index in `served` of `symbol` of `file`, once resolved.
    fn served_index(&self, file: usize, symbol: u32) -> Option<usize> {
        *self.resolved.get(file)?.get(symbol as usize)?
    }

    /// Resolves `symbol` of `file` to `entry`, served once for every file
    /// that carries the same symbol (by the [`TopRule`] of the first);
    /// returns its index in `served`.
    fn insert(
        &mut self,
        file: usize,
        symbol: u32,
        entry: Arc<SymbolEntry>,
        top_rule: TopRule,
    ) -> Option<usize> {
        let resolved = self.resolved.get_mut(file)?;
        let index = symbol as usize;
        if resolved.len() <= index {
            resolved.resize_with(index + 1, || None);
        }
        let served = &mut self.served;
        let at = *self
            .served_by_name
            .entry(entry.name().clone())
            .or_insert_with(|| {
                served.push(Served {
                    entry,
                    fold: Fold::default(),
                    top: TopSource::new(top_rule),
                });
                served.len() - 1
            });
        resolved[index] = Some(at);
        Some(at)
    }

    /// Holds `tick` for the served symbol at `index` until the next publish.
    fn fold(&mut self, index: usize, tick: &Tick) {
        let Some(served) = self.served.get_mut(index) else {
            return;
        };
        if served.top.takes(&tick.update) {
            if served.fold.is_empty() {
                self.holding.push(index);
            }
            served.fold.add(tick);
        }
        self.take_in();
    }

    /// After a depth message had `outcome` on the book of the served symbol
    /// at `index`, holds the book's top as that symbol's best bid and ask
    /// where its [`TopSource`] takes it: the new top of a book in sync, or
    /// none for one that left sync.
    fn top_from_depth(&mut self, index: usize, outcome: Outcome) {
        let Some(served) = self.served.get_mut(index) else {
            return;
        };
        let Some(held) = self.depth.books.get(&index) else {
            return;
        };
        let Some(top) = served.top.after_depth(outcome, held.book.best()) else {
            return;
        };
        if served.fold.is_empty() {
            self.holding.push(index);
        }
        served.fold.add_top(top, held.book.exchange_ts_ns());
    }

    /// The recorded feed of `file` lost its connection here: as the live
    /// feed did, its symbols go stale, their books are dropped until the
    /// next snapshot, and a best bid and ask a book gave is emptied. What is
    /// held goes out first, so that these come after it.
    fn disconnect(&mut self, file: usize, hub: &Hub) {
        const REASON: &str = "the recorded feed disconnected";
        self.publish(hub);
        let Some(resolved) = self.resolved.get(file) else {
            return;
        };
        let indices: Vec<usize> = resolved.iter().flatten().copied().collect();
        for index in indices {
            let Some(served) = self.served.get_mut(index) else {
                continue;
            };
            if let Some(held) = self.depth.books.remove(&index) {
                self.depth.pending.release(&held.book);
                self.depth.unpublished.retain(|&queued| queued != index);
                hub.drop_depth_book(&served.entry, &held.book, &mut served.top, REASON);
            }
            hub.set_status(&served.entry, SymbolState::Stale, REASON);
        }
    }

    /// Counts a timed item taken in; the first of a batch reads the clock.
    fn take_in(&mut self) {
        if self.held == 0 {
            self.batch_started_ns = wall_clock_ns();
        }
        self.held += 1;
    }

    /// Publishes once [`MAX_HELD_ITEMS`] are held.
    fn publish_if_full(&mut self, hub: &Hub) {
        if self.held >= MAX_HELD_ITEMS {
            self.publish(hub);
        }
    }

    /// Publishes one version per symbol holding updates and per book
    /// holding diffs, all stamped with the same ingest time: when the batch's
    /// first item was taken in, so that end-to-end latency counted from it
    /// includes the time an update was held.
    fn publish(&mut self, hub: &Hub) {
        self.held = 0;
        if self.holding.is_empty() && self.depth.unpublished.is_empty() {
            return;
        }
        let ingest_ts_ns = self.batch_started_ns;
        for index in self.holding.drain(..) {
            if let Some(served) = self.served.get_mut(index) {
                hub.publish_fold(&served.entry, &served.fold, ingest_ts_ns);
                served.fold = Fold::default();
            }
        }
        // Taken out while the books are published, and put back: the list
        // keeps its storage from one batch to the next.
        let mut unpublished = std::mem::take(&mut self.depth.unpublished);
        for index in unpublished.drain(..) {
            let entry = self.served.get(index).map(|served| &served.entry);
            let Some(book) = self.depth.books.get_mut(&index) else {
                continue;
            };
            book.queued = false;
            if let (true, Some(entry)) = (std::mem::take(&mut book.in_sync), entry) {
                let versions = std::mem::take(&mut book.versions);
                hub.publish_depth(entry, &mut book.book, versions, ingest_ts_ns);
            }
        }
        self.depth.unpublished = unpublished;
    }
}

/// The full-depth books a replay builds, one per served symbol: files
/// served under one name (a recording split into several) build one book.
struct DepthBooks {
    /// By index in `Symbols::served`.
    books: HashMap<usize, ReplayBook>,
    /// Books updated since the replay last published, in the order of
    /// their first update; a book that fell out of sync since is skipped.
    unpublished: Vec<usize>,
    max_levels: usize,
    /// Levels in the diffs every book holds while awaiting its snapshot, and
    /// their bound.
    pending: PendingBudget,
    /// Each file's last diff symbol: a Binance REST snapshot names no symbol,
    /// and belongs to the symbol whose diffs the capture carries.
    last_symbol: Vec<Option<u32>>,
}

struct ReplayBook {
    book: DepthBook,
    /// Versions (diffs or snapshots that left the book consistent) applied
    /// since the last one published; a version that was not published
    /// because the book fell out of sync still counts in the next `seq`.
    versions: u64,
    /// Consistent since its last version, which is not published yet.
    in_sync: bool,
    /// In `DepthBooks::unpublished`.
    queued: bool,
}

impl DepthBooks {
    fn new(files: usize, max_levels: usize) -> Self {
        Self {
            books: HashMap::new(),
            unpublished: Vec::new(),
            max_levels,
            pending: PendingBudget::new(DEFAULT_MAX_PENDING_LEVELS_ALL_BOOKS),
            last_symbol: vec![None; files],
        }
    }

    /// The symbol a depth message of `file` belongs to.
    fn attribute(&mut self, file: usize, symbol: Option<u32>) -> Option<u32> {
        let last = self.last_symbol.get_mut(file)?;
        if symbol.is_some() {
            *last = symbol;
        }
        *last
    }

    /// Runs `apply` on the book of the served symbol at `served`, notes
    /// whether the book now holds a version to publish, and returns what
    /// happened. The diffs all books buffer are kept within the replay's
    /// `pending` budget: past it, the book that grew drops what it buffered.
    fn apply(&mut self, served: usize, apply: impl FnOnce(&mut DepthBook) -> Outcome) -> Outcome {
        let max_levels = self.max_levels;
        let held = self.books.entry(served).or_insert_with(|| ReplayBook {
            book: DepthBook::new(DEFAULT_MAX_PENDING_DIFFS, max_levels),
            versions: 0,
            in_sync: false,
            queued: false,
        });
        let before = held.book.pending_levels();
        let outcome = apply(&mut held.book);
        match outcome {
            Outcome::Updated => {
                held.versions += 1;
                held.in_sync = true;
                if !std::mem::replace(&mut held.queued, true) {
                    self.unpublished.push(served);
                }
            }
            // What it held before is no longer the venue's book, and it
            // has been announced stale.
            Outcome::Gap | Outcome::Crossed | Outcome::PriceOutOfRange | Outcome::CutShort => {
                held.in_sync = false;
            }
            Outcome::Buffered | Outcome::Outdated => {}
        }
        self.pending.settle(before, &mut held.book);
        outcome
    }
}

/// Maps recorded receive times onto the wall clock.
struct Pacer {
    speed: Speed,
    max_gap_ns: i64,
    started: Instant,
    /// Recorded time played so far, with long gaps shortened.
    played_ns: i64,
    /// The latest receive time played in the current stretch of recording.
    last_recv_ns: Option<i64>,
    /// `played_ns` when the current pass over the files began.
    pass_started_ns: Option<i64>,
}

/// The least recorded time a pass over the files takes: a looping file whose
/// ticks share one receive time would otherwise be replayed as fast as it
/// can be read, whatever the speed.
const MIN_PASS_NS: i64 = 1_000_000_000;

impl Pacer {
    fn new(speed: Speed, max_gap: Duration) -> Self {
        Self {
            speed,
            max_gap_ns: i64::try_from(max_gap.as_nanos()).unwrap_or(i64::MAX),
            started: Instant::now(),
            played_ns: 0,
            last_recv_ns: None,
            pass_started_ns: None,
        }
    }

    /// A new pass over the files continues the timeline without a pause,
    /// once the last pass has taken at least [`MIN_PASS_NS`].
    fn restart(&mut self) {
        if let Some(started) = self.pass_started_ns {
            self.played_ns = self.played_ns.max(started.saturating_add(MIN_PASS_NS));
        }
        self.pass_started_ns = Some(self.played_ns);
        self.last_recv_ns = None;
    }

    /// Moves the timeline on to an item received at `recv_ns` and says when
    /// it is due; `None` at `--speed max`, where everything is due at once.
    fn due(&mut self, recv_ns: i64) -> Option<Instant> {
        match self.last_recv_ns.map(|last| recv_ns.saturating_sub(last)) {
            Some(step) if step >= 0 => {
                self.played_ns = self.played_ns.saturating_add(step.min(self.max_gap_ns));
                self.last_recv_ns = Some(recv_ns);
            }
            // A little out of order: played at once, and the timeline keeps
            // its place, so the same stretch is not played twice.
            Some(step) if step >= -self.max_gap_ns => {}
            // A jump back further than a long gap is a new stretch of
            // recording: the timeline goes on from there.
            _ => self.last_recv_ns = Some(recv_ns),
        }
        let Speed::Factor(factor) = self.speed else {
            return None;
        };
        // A timeline too long for the clock (centuries at a slow speed) is
        // due at once rather than a panic.
        let wait = Duration::try_from_secs_f64(self.played_ns as f64 / 1e9 / factor);
        Some(
            wait.ok()
                .and_then(|wait| self.started.checked_add(wait))
                .unwrap_or(self.started),
        )
    }

    /// Sleeps until `due`. Returns false if `shutdown` fired meanwhile.
    fn sleep_until(due: Instant, shutdown: &CancellationToken) -> bool {
        loop {
            let now = Instant::now();
            if now >= due {
                return true;
            }
            if shutdown.is_cancelled() {
                return false;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(100)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_parses_factors_and_max() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("10".parse::<Speed>(), Ok(Speed::Factor(10.0)));
        assert_eq!("2.5x".parse::<Speed>(), Ok(Speed::Factor(2.5)));
        assert!("0".parse::<Speed>().is_err());
        assert_eq!("0.001".parse::<Speed>(), Ok(Speed::Factor(0.001)));
        for absurd in ["1e-20", "1e300", "inf", "NaN", "-1"] {
            assert!(absurd.parse::<Speed>().is_err(), "{absurd}");
        }
        assert!("fast".parse::<Speed>().is_err());
    }

    #[test]
    fn long_gaps_are_shortened_and_rewinds_ignored() {
        let mut pacer = Pacer::new(Speed::Max, Duration::from_secs(1));
        for recv in [0, 500_000_000, 100, 600_000_000, 86_400_000_000_000] {
            assert_eq!(pacer.due(recv), None, "at full speed all is due at once");
        }
        // 0.5 s, then a step back (0) and on to 0.6 s (0.1 s, not 0.6 s
        // again), then a day clamped to 1 s.
        assert_eq!(pacer.played_ns, 1_600_000_000);
        // A day back is a new stretch: from there on, time plays as recorded.
        for recv in [200_000_000, 300_000_000] {
            pacer.due(recv);
        }
        assert_eq!(pacer.played_ns, 1_700_000_000);
    }

    #[test]
    fn a_pass_takes_at_least_a_second_of_recorded_time() {
        let mut pacer = Pacer::new(Speed::Max, Duration::from_secs(5));
        let pass = |pacer: &mut Pacer, ticks: &[i64]| {
            pacer.restart();
            for &recv in ticks {
                pacer.due(recv);
            }
        };
        // The first pass starts at once; passes whose ticks share one time
        // are a second apart; a longer pass goes on without a pause.
        pass(&mut pacer, &[7, 7]);
        assert_eq!(pacer.played_ns, 0);
        pass(&mut pacer, &[7]);
        assert_eq!(pacer.played_ns, MIN_PASS_NS);
        pass(&mut pacer, &[0, 3_000_000_000]);
        assert_eq!(pacer.played_ns, 2 * MIN_PASS_NS + 3_000_000_000);
        pass(&mut pacer, &[0]);
        assert_eq!(pacer.played_ns, 2 * MIN_PASS_NS + 3_000_000_000);
    }

    #[test]
    fn books_awaiting_snapshots_buffer_within_one_budget() {
        use crate::book::Level;
        use crate::normalize::depth::{DepthMessage, Sequence};
        use rust_decimal::Decimal;
        // Each diff holds a tenth of the budget: ten books' worth is all the
        // replay may hold.
        let levels = 1_000;
        let diff = DepthMessage {
            sequence: Sequence::Spot { first: 1, last: 1 },
            bids: (0..levels)
                .map(|i| Level {
                    price: Decimal::from(i + 1),
                    size: Decimal::ONE,
                })
                .collect(),
            ..DepthMessage::default()
        };
        let mut books = DepthBooks::new(1, 10);
        books.pending = PendingBudget::new(10 * levels);
        for symbol in 0..10 {
            books.apply(symbol, |book| book.apply(&diff));
            assert_eq!(books.pending.held(), (symbol + 1) * levels);
        }
        // The eleventh book drops what it buffered; the others keep theirs.
        books.apply(10, |book| book.apply(&diff));
        assert_eq!(books.pending.held(), 10 * levels);
        let held: Vec<usize> = (0..=10).map(|s| books.books[&s].book.pending()).collect();
        assert_eq!(held, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
    }

    /// A player of one in-memory file of trades of `AAA`, one a millisecond
    /// of the recording, at `speed`.
    fn player_of_trades(trades: usize, speed: Speed) -> Player {
        let mut text = String::from("{\"tickwire_replay\":1,\"source\":\"test\"}\n");
        for i in 1..=trades {
            let recv = i as i64 * 1_000_000;
            text.push_str(&format!(
                "{{\"recv_ts_ns\":{recv},\"symbol\":\"AAA\",\"type\":\"trade\",\"price\":\"{i}\",\"size\":\"1\"}}\n"
            ));
        }
        player_of_files(vec![text], speed)
    }

    /// A player of in-memory files (each one's text), replayed together at
    /// `speed`.
    fn player_of_files(texts: Vec<String>, speed: Speed) -> Player {
        let hub = Arc::new(Hub::new(Arc::default()));
        let stats = hub.metrics().register_feed("test", "replay");
        let sources = texts
            .into_iter()
            .map(|text| ReplaySource {
                prefix: None,
                input: ReplayInput::Bundled {
                    name: "test",
                    bytes: Box::leak(text.into_bytes().into_boxed_slice()),
                },
            })
            .collect();
        let config = ReplayConfig {
            name: "test".into(),
            sources,
            speed,
            looped: false,
            max_gap: Duration::from_secs(1),
            start_paused: false,
            max_book_levels: 10,
        };
        Player {
            hub,
            stats,
            config,
            shutdown: CancellationToken::new(),
        }
    }

    #[test]
    fn a_replay_behind_folds_what_it_reads_together_into_one_version() {
        let player = player_of_trades(1_000, Speed::Max);
        player.play();
        let entry = player.hub.get("AAA").expect("declared on first use");
        let current = entry.current().expect("published");
        assert_eq!(current.seq, 1_000, "seq counts every update");
        assert_eq!(
            current.last.map(|l| l.price.to_string()),
            Some("1000".into())
        );
        let versions = player.hub.metrics().book_updates.load(Relaxed);
        assert_eq!(versions, 1_000_usize.div_ceil(MAX_HELD_ITEMS) as u64);
        assert_eq!(player.stats.ticks.load(Relaxed), 1_000);
        assert_eq!(player.stats.messages.load(Relaxed), 1_001, "and the header");
    }

    /// Two files that carry the same symbol (a quotes file and its trades
    /// file, or two captures of one stream) fold into one version: the
    /// last update read is the one the book ends on, whichever file held it.
    #[test]
    fn files_sharing_a_symbol_fold_in_the_order_they_are_read() {
        let header = "{\"tickwire_replay\":1,\"source\":\"test\"}\n";
        let quote = |recv: i64, bid: u32| {
            format!(
                "{{\"recv_ts_ns\":{recv},\"symbol\":\"AAA\",\"exchange_ts_ns\":{recv},\"type\":\"quote\",\"bid\":\"{bid}\",\"bid_size\":\"1\",\"ask\":\"{}\",\"ask_size\":\"1\"}}\n",
                bid + 1
            )
        };
        let trade = |recv: i64| {
            format!(
                "{{\"recv_ts_ns\":{recv},\"symbol\":\"AAA\",\"exchange_ts_ns\":{recv},\"type\":\"trade\",\"price\":\"7\",\"size\":\"1\"}}\n"
            )
        };
        let first = format!("{header}{}{}", quote(1, 10), quote(4, 40));
        let second = format!("{header}{}{}", quote(2, 20), trade(3));
        let player = player_of_files(vec![first, second], Speed::Max);
        player.play();
        let current = player.hub.get("AAA").and_then(|e| e.current());
        let current = current.expect("published");
        assert_eq!(current.seq, 4);
        assert_eq!(current.bid.map(|l| l.price.to_string()), Some("40".into()));
        assert_eq!(current.last.map(|l| l.price.to_string()), Some("7".into()));
        assert_eq!(current.exchange_ts_ns, Some(4), "the last update's");
    }

    #[test]
    fn a_paced_replay_publishes_what_it_holds_before_it_sleeps() {
        let player = player_of_trades(1, Speed::Factor(1.0));
        let files = player.open_all().expect("in memory");
        let mut merge = Merge::new(files);
        let mut symbols = Symbols::new(1, 10);
        let mut pacer = Pacer::new(Speed::Factor(1.0), Duration::from_secs(3_600));
        let tick = loop {
            match merge.next_item() {
                Some((_, Item::Tick { symbol, tick })) => break (symbol, tick),
                Some(_) => continue,
                None => panic!("the file holds a trade"),
            }
        };
        let (symbol, tick) = tick;
        assert!(player.wait_until_due(&mut pacer, tick.recv_ts_ns, &mut symbols));
        let served = player.resolve(&mut symbols, &merge, 0, symbol);
        symbols.fold(served.expect("resolved"), &tick);
        let taken_in_by = wall_clock_ns();
        let entry = player.hub.get("AAA").expect("resolved");
        assert!(entry.current().is_none(), "held while the replay reads on");
        // Time passes while it is held.
        while wall_clock_ns() <= taken_in_by {
            std::thread::yield_now();
        }

        // The next item is due in a minute: what is held goes out first.
        // (The replay is shut down, so the wait itself returns at once.)
        player.shutdown.cancel();
        assert!(!player.wait_until_due(&mut pacer, tick.recv_ts_ns + 60_000_000_000, &mut symbols));
        let current = entry.current().expect("published");
        assert_eq!(current.seq, 1);
        assert!(
            current.ingest_ts_ns <= taken_in_by,
            "stamped when it was taken in, not when it went out"
        );
    }

    /// Diffs applied since the last publish go out as one depth version; a
    /// book that falls out of sync meanwhile publishes nothing and is stale.
    #[test]
    fn a_replay_publishes_a_book_once_for_the_diffs_it_applied_together() {
        use crate::book::Level;
        use crate::fanout::SymbolState;
        use crate::normalize::depth::{DepthMessage, Sequence};
        use rust_decimal::Decimal;
        let level = |price: i64| Level {
            price: Decimal::from(price),
            size: Decimal::ONE,
        };
        let snapshot = DepthMessage {
            last_update_id: Some(10),
            bids: vec![level(99)],
            asks: vec![level(101)],
            ..DepthMessage::default()
        };
        let diff = |id: u64, bid: i64| DepthMessage {
            sequence: Sequence::Spot {
                first: id,
                last: id,
            },
            bids: vec![level(bid)],
            ..DepthMessage::default()
        };
        let hub = Hub::new(Arc::default());
        let entry = hub.declare("AAA");
        let mut symbols = Symbols::new(1, 100);
        symbols.insert(0, 0, entry.clone(), TopRule::QuotesFirst);
        let apply = |symbols: &mut Symbols, message: &DepthMessage| {
            symbols
                .depth
                .apply(0, |book| hub.update_depth(&entry, book, message));
        };
        for message in [&snapshot, &diff(11, 98), &diff(12, 97)] {
            apply(&mut symbols, message);
        }
        assert!(entry.depth().current().is_none(), "held until published");
        symbols.publish(&hub);
        let published = entry.depth().current().expect("published");
        assert_eq!(published.seq, 3, "three versions, published as one");
        assert_eq!(published.bids.len(), 3);
        assert_eq!(entry.depth().status().state, SymbolState::Live);

        // A diff, then a gap: the book is stale and the diff never goes out.
        apply(&mut symbols, &diff(13, 96));
        apply(&mut symbols, &diff(20, 95));
        symbols.publish(&hub);
        assert_eq!(entry.depth().current().map(|c| c.seq), Some(3));
        assert_eq!(entry.depth().status().state, SymbolState::Stale);

        // A new snapshot: its version follows the one that never went out.
        let resync = DepthMessage {
            last_update_id: Some(30),
            ..snapshot.clone()
        };
        apply(&mut symbols, &resync);
        symbols.publish(&hub);
        assert_eq!(entry.depth().current().map(|c| c.seq), Some(5));
        assert_eq!(entry.depth().status().state, SymbolState::Live);
    }

    /// Until a symbol has a quote of its own, each move of its depth book's
    /// top is a version of its ticker; from its first quote, quotes alone
    /// set its best bid and ask.
    #[test]
    fn the_depth_books_top_stands_in_for_quotes_until_the_first_quote() {
        use crate::book::Level;
        use crate::normalize::depth::{DepthMessage, Sequence};
        use crate::normalize::BookUpdate;
        use rust_decimal::Decimal;
        let level = |price: i64, size: i64| Level {
            price: Decimal::from(price),
            size: Decimal::from(size),
        };
        let snapshot = DepthMessage {
            last_update_id: Some(10),
            bids: vec![level(99, 1), level(98, 1)],
            asks: vec![level(101, 2)],
            exchange_ts_ns: Some(7),
            ..DepthMessage::default()
        };
        let diff = |id: u64, bids: Vec<Level>| DepthMessage {
            sequence: Sequence::Spot {
                first: id,
                last: id,
            },
            bids,
            ..DepthMessage::default()
        };
        let hub = Hub::new(Arc::default());
        let entry = hub.declare("AAA");
        let mut symbols = Symbols::new(1, 100);
        let served = symbols
            .insert(0, 0, entry.clone(), TopRule::QuotesFirst)
            .expect("resolved");
        let apply = |symbols: &mut Symbols, message: &DepthMessage| {
            let outcome = symbols
                .depth
                .apply(0, |book| hub.update_depth(&entry, book, message));
            symbols.top_from_depth(served, outcome);
            symbols.publish(&hub);
            let current = entry.current().expect("published");
            (current.seq, current.bid, current.ask)
        };

        let top = apply(&mut symbols, &snapshot);
        assert_eq!(top, (1, Some(level(99, 1)), Some(level(101, 2))));
        assert_eq!(entry.current().and_then(|c| c.exchange_ts_ns), Some(7));
        // A level below the best moves nothing: no version.
        assert_eq!(apply(&mut symbols, &diff(11, vec![level(97, 5)])).0, 1);
        let top = apply(&mut symbols, &diff(12, vec![level(99, 0)]));
        assert_eq!(top, (2, Some(level(98, 1)), Some(level(101, 2))));
        // A gap clears the book, and the top taken from it, until a snapshot.
        let gap = apply(&mut symbols, &diff(15, vec![level(97, 1)]));
        assert_eq!(gap, (3, None, None));
        let resync = DepthMessage {
            last_update_id: Some(20),
            ..snapshot.clone()
        };
        let top = apply(&mut symbols, &resync);
        assert_eq!(top, (4, Some(level(99, 1)), Some(level(101, 2))));

        let quote = Tick {
            recv_ts_ns: 1,
            exchange_ts_ns: None,
            update: BookUpdate::Quote {
                bid: Decimal::from(95),
                bid_size: Decimal::ONE,
                ask: Decimal::from(96),
                ask_size: Decimal::ONE,
            },
        };
        symbols.fold(served, &quote);
        symbols.publish(&hub);
        let quoted = (5, Some(level(95, 1)), Some(level(96, 1)));
        assert_eq!(apply(&mut symbols, &diff(21, vec![level(100, 3)])), quoted);
    }

    #[test]
    fn prefixes_namespace_symbols() {
        let source = ReplaySource {
            prefix: Some("spot".into()),
            input: ReplayInput::Path("x".into()),
        };
        assert_eq!(source.served_name("BTCUSDT"), "spot:BTCUSDT");
    }
}
