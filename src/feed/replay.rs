//! The replay feed: plays recorded files into the hub at recorded pace × speed.
//!
//! Replay runs on its own OS thread: reading and parsing are blocking, CPU-bound
//! work that must not take a runtime worker from the sessions. Before the thread
//! starts, the input is scanned once so every symbol it holds is declared, and
//! clients can subscribe to a symbol before its first update arrives.

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
use crate::book::depth::{DepthBook, DEFAULT_MAX_PENDING_DIFFS};
use crate::fanout::{Hub, SymbolEntry};
use crate::metrics::{FeedStats, WarningLimiter};
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
    std::thread::Builder::new()
        .name(format!("replay-{}", player.config.name))
        .spawn(move || {
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
            // Each file's symbol indices, resolved to hub entries on first use.
            let mut entries: Vec<Vec<Option<Arc<SymbolEntry>>>> = vec![Vec::new(); files.len()];
            let mut depth = DepthBooks::new(files.len(), self.config.max_book_levels);
            let mut merge = Merge::new(files);
            pacer.restart();
            let mut played = false;
            while let Some((file, item)) = merge.next_item() {
                if self.shutdown.is_cancelled() {
                    return;
                }
                self.stats.messages.fetch_add(1, Relaxed);
                match item {
                    Item::Tick { symbol, tick } => {
                        if !pacer.wait_until_due(tick.recv_ts_ns, &self.shutdown) {
                            return;
                        }
                        let Some(entry) = self.entry(&mut entries, &merge, file, symbol) else {
                            continue;
                        };
                        self.hub.publish(&entry, &tick, wall_clock_ns());
                        self.stats.ticks.fetch_add(1, Relaxed);
                        played = true;
                    }
                    Item::Depth { symbol } => {
                        self.stats.recognised.fetch_add(1, Relaxed);
                        let Some(symbol) = depth.attribute(file, symbol) else {
                            let unattributed = crate::metrics::depth::DepthEvent::Unattributed;
                            self.hub.metrics().depth.count(unattributed);
                            continue;
                        };
                        let Some(message) = merge.files().get(file).map(|f| f.depth()) else {
                            continue;
                        };
                        if !pacer.wait_until_due(message.recv_ts_ns, &self.shutdown) {
                            return;
                        }
                        let Some(entry) = self.entry(&mut entries, &merge, file, symbol) else {
                            continue;
                        };
                        depth.apply(file, symbol, |book| {
                            self.hub.apply_depth(&entry, book, message, wall_clock_ns());
                        });
                        played = true;
                    }
                    Item::Recognised(_) => {
                        self.stats.recognised.fetch_add(1, Relaxed);
                    }
                    Item::Malformed { line, error } => {
                        self.stats.malformed.fetch_add(1, Relaxed);
                        let file_name = merge.files().get(file).map_or("?", |f| f.name());
                        warnings.warn(|suppressed| {
                            tracing::warn!(feed = %name, file = file_name, line, %error, suppressed, "skipping malformed line");
                        });
                    }
                    Item::Failed(error) => {
                        self.stats.malformed.fetch_add(1, Relaxed);
                        let file_name = merge.files().get(file).map_or("?", |f| f.name());
                        // A looping replay of a damaged file meets it on every pass.
                        warnings.warn(|suppressed| {
                            tracing::warn!(feed = %name, file = file_name, %error, suppressed, "replay file ends early (read error)");
                        });
                    }
                }
            }
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

    fn entry(
        &self,
        entries: &mut [Vec<Option<Arc<SymbolEntry>>>],
        merge: &Merge,
        file: usize,
        symbol: u32,
    ) -> Option<Arc<SymbolEntry>> {
        let resolved = entries.get_mut(file)?;
        let index = symbol as usize;
        if resolved.len() <= index {
            resolved.resize(index + 1, None);
        }
        if let Some(entry) = &resolved[index] {
            return Some(entry.clone());
        }
        let raw = merge.files().get(file)?.symbols().get(index)?;
        let source = self.config.sources.get(file)?;
        let entry = self.hub.declare(&source.served_name(raw));
        resolved[index] = Some(entry.clone());
        Some(entry)
    }
}

/// The full-depth books a replay builds, per (file, symbol).
struct DepthBooks {
    books: HashMap<(usize, u32), DepthBook>,
    max_levels: usize,
    /// Levels in the diffs every book holds while awaiting its snapshot, and
    /// their bound.
    pending_levels: usize,
    max_pending_levels: usize,
    /// Each file's last diff symbol: a Binance REST snapshot names no symbol,
    /// and belongs to the symbol whose diffs the capture carries.
    last_symbol: Vec<Option<u32>>,
}

impl DepthBooks {
    fn new(files: usize, max_levels: usize) -> Self {
        Self {
            books: HashMap::new(),
            max_levels,
            pending_levels: 0,
            max_pending_levels: MAX_REPLAY_PENDING_LEVELS,
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

    /// Runs `apply` on the book of `symbol` in `file`, keeping the diffs all
    /// books buffer within `max_pending_levels`: past it, the book that grew
    /// drops what it buffered.
    fn apply(&mut self, file: usize, symbol: u32, apply: impl FnOnce(&mut DepthBook)) {
        let max_levels = self.max_levels;
        let book = self
            .books
            .entry((file, symbol))
            .or_insert_with(|| DepthBook::new(DEFAULT_MAX_PENDING_DIFFS, max_levels));
        let before = book.pending_levels();
        apply(book);
        let after = book.pending_levels();
        self.pending_levels = self.pending_levels.saturating_sub(before) + after;
        if self.pending_levels > self.max_pending_levels {
            book.drop_pending();
            self.pending_levels -= after;
        }
    }
}

/// Levels buffered by all of a replay's books together while they await
/// their snapshots (128 MB). Each book is bounded on its own, but a file
/// may name many symbols.
const MAX_REPLAY_PENDING_LEVELS: usize = 4_000_000;

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

    /// Sleeps until the tick received at `recv_ns` is due. Returns false if
    /// `shutdown` fired meanwhile.
    fn wait_until_due(&mut self, recv_ns: i64, shutdown: &CancellationToken) -> bool {
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
            return true;
        };
        // A timeline too long for the clock (centuries at a slow speed) is
        // due at once rather than a panic.
        let wait = Duration::try_from_secs_f64(self.played_ns as f64 / 1e9 / factor);
        let due = wait
            .ok()
            .and_then(|wait| self.started.checked_add(wait))
            .unwrap_or(self.started);
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
        let never = CancellationToken::new();
        for recv in [0, 500_000_000, 100, 600_000_000, 86_400_000_000_000] {
            assert!(pacer.wait_until_due(recv, &never));
        }
        // 0.5 s, then a step back (0) and on to 0.6 s (0.1 s, not 0.6 s
        // again), then a day clamped to 1 s.
        assert_eq!(pacer.played_ns, 1_600_000_000);
        // A day back is a new stretch: from there on, time plays as recorded.
        for recv in [200_000_000, 300_000_000] {
            assert!(pacer.wait_until_due(recv, &never));
        }
        assert_eq!(pacer.played_ns, 1_700_000_000);
    }

    #[test]
    fn a_pass_takes_at_least_a_second_of_recorded_time() {
        let mut pacer = Pacer::new(Speed::Max, Duration::from_secs(5));
        let never = CancellationToken::new();
        let pass = |pacer: &mut Pacer, ticks: &[i64]| {
            pacer.restart();
            for &recv in ticks {
                assert!(pacer.wait_until_due(recv, &never));
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
        books.max_pending_levels = 10 * levels;
        for symbol in 0..10 {
            books.apply(0, symbol, |book| {
                book.apply(&diff);
            });
            assert_eq!(books.pending_levels, (symbol as usize + 1) * levels);
        }
        // The eleventh book drops what it buffered; the others keep theirs.
        books.apply(0, 10, |book| {
            book.apply(&diff);
        });
        assert_eq!(books.pending_levels, 10 * levels);
        let held: Vec<usize> = (0..=10).map(|s| books.books[&(0, s)].pending()).collect();
        assert_eq!(held, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
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
