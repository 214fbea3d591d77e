//! Live feeds: an upstream exchange WebSocket, kept connected.
//!
//! One task per feed connects (`ws://` or `wss://` through rustls), subscribes
//! where the venue needs a message for it, and hands every message to the
//! venue's parser — the same one the replay of a capture uses. When the
//! connection drops, errors, or goes silent for longer than the feed's
//! staleness window, every symbol of the feed is marked `stale` (its last good
//! snapshot stays), and the task reconnects after an exponential backoff with
//! full jitter, capped. The first fresh update of a symbol makes it `live`
//! again (see [`Hub::publish`]).
//!
//! Full-depth books. A Coinbase feed subscribed to `level2_batch` keeps each
//! product's book from the `snapshot` Coinbase sends first and the
//! `l2update`s after it. A Binance feed with `depth_snapshot_url` and
//! `@depth` streams keeps each symbol's book the way Binance prescribes:
//! diffs are buffered from the first one on, a REST snapshot is fetched
//! ([`super::rest`]), and the diffs it does not already contain are applied;
//! a gap fetches a new snapshot (see `DepthSnapshots`). Either way a lost
//! connection drops the book: stale until the next connection's snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;
use tokio_util::sync::CancellationToken;

use super::rest::FetchError;
use super::snapshots::{Answer, DepthSnapshots};
use super::synthetic::SplitMix64;
use crate::book::depth::{DepthBook, Outcome, PendingBudget, DEFAULT_MAX_PENDING_LEVELS_ALL_BOOKS};
use crate::book::{Fold, TopRule, TopSource};
use crate::fanout::{Hub, SymbolEntry, SymbolState};
use crate::metrics::{FeedState, FeedStats, WarningLimiter};
use crate::normalize::depth::DepthMessage;
use crate::normalize::{binance, coinbase, ParseError, Parsed, Recognised, Tick};
use crate::wall_clock_ns;

/// The upstream protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Venue {
    /// Binance combined streams (`/stream?streams=btcusdt@bookTicker/...`):
    /// the URL alone selects the data.
    Binance {
        /// Where a symbol's depth snapshot is fetched, `{symbol}` standing
        /// for its name (`https://api.binance.com/api/v3/depth?symbol={symbol}&limit=1000`);
        /// with it, the `@depth` diffs in the streams keep a book. `None`:
        /// diffs are recognised and passed by.
        depth_snapshot_url: Option<String>,
    },
    /// Coinbase Exchange: a `subscribe` message selects products and channels.
    Coinbase {
        products: Vec<String>,
        channels: Vec<String>,
    },
}

impl Venue {
    /// The name used in metrics and `/api/feeds`.
    pub fn kind(&self) -> &'static str {
        match self {
            Venue::Binance { .. } => "binance",
            Venue::Coinbase { .. } => "coinbase",
        }
    }

    fn subscribe_messages(&self) -> Vec<String> {
        match self {
            Venue::Binance { .. } => Vec::new(),
            Venue::Coinbase { products, channels } => {
                vec![coinbase::subscribe_message(products, channels)]
            }
        }
    }

    /// Which source of a best bid and ask wins: the book for a Coinbase
    /// feed that has one (its `ticker` comes with trades only), quotes
    /// otherwise.
    pub fn top_rule(&self) -> TopRule {
        match self {
            Venue::Coinbase { channels, .. }
                if channels.iter().any(|c| c.starts_with("level2")) =>
            {
                TopRule::BookFirst
            }
            _ => TopRule::QuotesFirst,
        }
    }

    /// The snapshot URL template of a venue whose books start from a REST
    /// snapshot.
    fn depth_snapshot_url(&self) -> Option<&str> {
        match self {
            Venue::Binance { depth_snapshot_url } => depth_snapshot_url.as_deref(),
            Venue::Coinbase { .. } => None,
        }
    }

    /// Parses one message; a depth snapshot or diff is decoded into `depth`:
    /// always Coinbase's (its snapshot comes on the stream), Binance's
    /// where the feed fetches the REST snapshots its book starts from.
    fn parse<'a>(
        &self,
        message: &'a mut [u8],
        recv_ts_ns: i64,
        depth: &mut DepthMessage,
    ) -> Result<Parsed<'a>, ParseError> {
        match self {
            Venue::Binance {
                depth_snapshot_url: Some(_),
            } => binance::parse_message_with_depth(message, recv_ts_ns, depth),
            Venue::Binance { .. } => binance::parse_message(message, recv_ts_ns),
            Venue::Coinbase { .. } => {
                coinbase::parse_message_with_depth(message, recv_ts_ns, depth)
            }
        }
    }
}

/// Reconnect pacing: exponential from `initial` up to `max`, with full jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// A live feed's settings.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// The feed's name in logs and metrics.
    pub name: String,
    pub venue: Venue,
    /// `ws://` or `wss://` URL of the upstream.
    pub url: String,
    /// Upstream symbol names, declared at start so clients can subscribe
    /// before the first update (and see them `stale` while the feed is down).
    pub symbols: Vec<String>,
    /// Served as `PREFIX:SYMBOL` when set.
    pub prefix: Option<String>,
    /// Upstream name → served name (before the prefix), e.g. `BTC-USD` → `BTCUSD`.
    pub rename: HashMap<String, String>,
    /// No market data for this long (pings and heartbeats do not count) is a
    /// disconnect.
    pub stale_after: Duration,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    /// Extra trusted root certificates (PEM), for private upstreams and tests.
    pub ca_file: Option<PathBuf>,
}

impl LiveConfig {
    /// The served name of an upstream symbol.
    pub fn served_name(&self, symbol: &str) -> String {
        let base = self.rename.get(symbol).map_or(symbol, String::as_str);
        super::served_name(self.prefix.as_deref(), base)
    }
}

/// Why a live feed could not start.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    // The caller names the feed (`cannot start feed ...`), so these do not.
    #[error("URL must start with ws:// or wss://, not {url:?}")]
    Url { url: String },
    #[error(transparent)]
    Tls(#[from] crate::client::ClientTlsError),
}

/// A running live feed.
#[derive(Debug)]
pub struct LiveHandle {
    stats: Arc<FeedStats>,
}

impl LiveHandle {
    /// The feed's counters.
    pub fn stats(&self) -> &Arc<FeedStats> {
        &self.stats
    }
}

/// Declares the feed's symbols (stale until the first update) and starts the
/// task that keeps the upstream connected until `shutdown`.
pub fn spawn(
    hub: Arc<Hub>,
    config: LiveConfig,
    shutdown: CancellationToken,
) -> Result<LiveHandle, LiveError> {
    let tls = prepare(&config)?;
    let stats = hub
        .metrics()
        .register_feed(&config.name, config.venue.kind());
    let mut publisher = Publisher::new(hub, &config);
    publisher.down("connecting to the feed");
    let feed = Feed::new(config, tls, stats.clone(), shutdown);
    tokio::spawn(async move { feed.run(&mut publisher).await });
    Ok(LiveHandle { stats })
}

/// Runs a live feed into `sink` until `shutdown` (the `record` command).
pub async fn run_into(
    config: LiveConfig,
    stats: Arc<FeedStats>,
    sink: &mut dyn Sink,
    shutdown: CancellationToken,
) -> Result<(), LiveError> {
    let tls = prepare(&config)?;
    let feed = Feed::new(config, tls, stats, shutdown);
    feed.run(sink).await;
    Ok(())
}

/// Whether a feed can connect to `url`: `ws://` or `wss://`.
pub(crate) fn is_websocket_url(url: &str) -> bool {
    url.starts_with("ws://") || url.starts_with("wss://")
}

/// Checks the URL and builds the TLS settings, so a bad feed fails at start.
pub(crate) fn prepare(config: &LiveConfig) -> Result<Arc<rustls::ClientConfig>, LiveError> {
    if !is_websocket_url(&config.url) {
        return Err(LiveError::Url {
            url: config.url.clone(),
        });
    }
    tls_config(config)
}

fn tls_config(config: &LiveConfig) -> Result<Arc<rustls::ClientConfig>, LiveError> {
    Ok(crate::client::tls_client_config(config.ca_file.as_deref())?)
}

/// Where a live feed's ticks go: the hub when serving, a file when recording.
pub trait Sink: Send {
    /// One tick for an upstream symbol.
    fn tick(&mut self, symbol: &str, tick: &Tick);
    /// One depth message (a book snapshot or diff) for an upstream symbol.
    /// Returns whether the symbol's book now waits for a snapshot, which a
    /// venue that serves them over REST is asked for. By default depth is
    /// passed by and no book kept.
    fn depth(&mut self, _symbol: &str, _message: &DepthMessage) -> bool {
        false
    }
    /// The upstream is down (or not connected yet) for `reason`.
    fn down(&mut self, reason: &str);
}

/// Hands parsed ticks and depth messages to the hub, resolving upstream
/// names once.
struct Publisher {
    hub: Arc<Hub>,
    symbols: HashMap<Box<str>, Carried>,
    config: LiveConfig,
    /// Which source of a best bid and ask wins for this feed's symbols.
    top_rule: TopRule,
    /// What all the feed's books buffer while they await snapshots.
    pending: PendingBudget,
}

/// An upstream symbol the feed serves.
struct Carried {
    entry: Arc<SymbolEntry>,
    /// Its full-depth book, once a depth message has come: dropped when the
    /// connection is lost, as the next one starts from a fresh snapshot.
    book: Option<DepthBook>,
    top: TopSource,
}

impl Publisher {
    fn new(hub: Arc<Hub>, config: &LiveConfig) -> Self {
        let mut publisher = Self {
            hub,
            symbols: HashMap::new(),
            config: config.clone(),
            top_rule: config.venue.top_rule(),
            pending: PendingBudget::new(DEFAULT_MAX_PENDING_LEVELS_ALL_BOOKS),
        };
        for symbol in &config.symbols {
            publisher.declare(symbol);
        }
        publisher
    }

    /// Declares `symbol` on first sight.
    fn declare(&mut self, symbol: &str) {
        if !self.symbols.contains_key(symbol) {
            let carried = Carried {
                entry: self.hub.declare(&self.config.served_name(symbol)),
                book: None,
                top: TopSource::new(self.top_rule),
            };
            self.symbols.insert(symbol.into(), carried);
        }
    }
}

impl Sink for Publisher {
    fn tick(&mut self, symbol: &str, tick: &Tick) {
        self.declare(symbol);
        let Some(carried) = self.symbols.get_mut(symbol) else {
            return;
        };
        if carried.top.takes(&tick.update) {
            self.hub.publish(&carried.entry, tick, wall_clock_ns());
        }
    }

    /// Applies the message to the symbol's book and publishes the book
    /// when it is consistent, and its top as the ticker's best bid and ask
    /// where the book is the source (see [`TopSource`]). Returns whether the
    /// book waits for a snapshot: it has none in sync, it can no longer vouch
    /// for the levels it serves, or it is crossed, which a book that applied
    /// every numbered diff in turn should never be.
    fn depth(&mut self, symbol: &str, message: &DepthMessage) -> bool {
        self.declare(symbol);
        let Some(Carried { entry, book, top }) = self.symbols.get_mut(symbol) else {
            return false;
        };
        let book = book.get_or_insert_with(DepthBook::default);
        let before = book.pending_levels();
        let outcome = self.hub.update_depth(entry, book, message);
        self.pending.settle(before, book);
        let ingest_ts_ns = wall_clock_ns();
        if outcome == Outcome::Updated {
            self.hub.publish_depth(entry, book, 1, ingest_ts_ns);
        }
        if let Some(new_top) = top.after_depth(outcome, book.best()) {
            let fold = Fold::of_top(new_top, book.exchange_ts_ns());
            self.hub.publish_fold(entry, &fold, ingest_ts_ns);
        }
        !book.is_synced() || matches!(outcome, Outcome::CutShort | Outcome::Crossed)
    }

    /// Every symbol this feed has served goes stale, keeping its last
    /// snapshot (but a best bid and ask its book gave); so does its book,
    /// which waits for the next connection's.
    fn down(&mut self, reason: &str) {
        for carried in self.symbols.values_mut() {
            if let Some(book) = carried.book.take() {
                self.pending.release(&book);
                self.hub
                    .drop_depth_book(&carried.entry, &book, &mut carried.top, reason);
            }
            // After the emptied top, which counts as a fresh update.
            self.hub
                .set_status(&carried.entry, SymbolState::Stale, reason);
        }
    }
}

struct Feed {
    config: LiveConfig,
    /// The configured symbols, keyed in upper case; `None` when it lists none.
    carried: Option<HashMap<String, String>>,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<FeedStats>,
    shutdown: CancellationToken,
}

/// Exchange-latency samples are recorded in batches of this many.
const LATENCY_BATCH: usize = 64;

impl Feed {
    fn new(
        config: LiveConfig,
        tls: Arc<rustls::ClientConfig>,
        stats: Arc<FeedStats>,
        shutdown: CancellationToken,
    ) -> Self {
        let carried = (!config.symbols.is_empty()).then(|| {
            let mut carried = HashMap::new();
            for symbol in &config.symbols {
                carried
                    .entry(symbol.to_ascii_uppercase())
                    .or_insert_with(|| symbol.clone());
            }
            carried
        });
        Self {
            config,
            carried,
            tls,
            stats,
            shutdown,
        }
    }

    /// The name a tick for upstream `symbol` is served under, if it is one
    /// this feed asked for: one of its `symbols` in any case (Binance names
    /// its streams in lower case, its messages in upper), always spelled as
    /// configured, so that no spelling of it becomes a symbol of its own; or
    /// any symbol, as sent, when it lists none. An upstream that sends others
    /// is broken or not the one configured, and must not make the server
    /// serve names nobody declared. One lookup per tick, however many symbols
    /// the feed has.
    fn carried_name<'a>(&'a self, symbol: &'a str) -> Option<&'a str> {
        let Some(carried) = &self.carried else {
            return Some(symbol);
        };
        let name = if symbol.bytes().any(|b| b.is_ascii_lowercase()) {
            carried.get(&symbol.to_ascii_uppercase())
        } else {
            carried.get(symbol)
        };
        name.map(String::as_str)
    }

    async fn run(&self, sink: &mut dyn Sink) {
        let name = &self.config.name;
        let mut attempt: u32 = 0;
        let mut jitter = Jitter::seeded(wall_clock_ns() as u64 ^ name.len() as u64);
        // Kept across connections: see `snapshots`.
        let mut snapshots = DepthSnapshots::new(
            self.config.venue.depth_snapshot_url().map(str::to_owned),
            self.tls.clone(),
            self.config.connect_timeout,
        );
        while !self.shutdown.is_cancelled() {
            self.stats.set_state(FeedState::Connecting);
            let reason = match self.connect().await {
                Ok(socket) => {
                    let connects = self.stats.connects.fetch_add(1, Relaxed);
                    if connects > 0 {
                        self.stats.reconnects.fetch_add(1, Relaxed);
                    }
                    self.stats.set_state(FeedState::Live);
                    tracing::info!(feed = %name, url = %self.config.url, "feed connected");
                    attempt = 0;
                    let reason = self.stream(socket, sink, &mut snapshots).await;
                    snapshots.connection_lost();
                    reason
                }
                Err(reason) => reason,
            };
            if self.shutdown.is_cancelled() {
                break;
            }
            self.stats.set_state(FeedState::Down);
            sink.down(&reason);
            let delay = jitter.backoff(self.config.backoff, attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(feed = %name, %reason, retry_in_ms = delay.as_millis() as u64, "feed down");
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(feed = %name, "feed stopped");
    }

    async fn connect(
        &self,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        String,
    > {
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            self.config.url.as_str(),
            Some(crate::client::websocket_config()),
            true,
            Some(Connector::Rustls(self.tls.clone())),
        );
        let (mut socket, _) = tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect failed: {e}"))?;
        for message in self.config.venue.subscribe_messages() {
            socket
                .send(Message::text(message))
                .await
                .map_err(|e| format!("subscribe failed: {e}"))?;
        }
        Ok(socket)
    }

    /// Applies a fetched snapshot of `symbol` to its book, or counts and
    /// reports why there is none.
    fn take_snapshot(
        &self,
        symbol: &str,
        answer: Result<DepthMessage, FetchError>,
        snapshots: &mut DepthSnapshots,
        sink: &mut dyn Sink,
        warnings: &mut WarningLimiter,
    ) {
        match answer {
            Ok(mut snapshot) => {
                // Received now, as far as the book and a recording go:
                // after every diff applied before it.
                snapshot.recv_ts_ns = wall_clock_ns();
                self.stats.depth_snapshots.fetch_add(1, Relaxed);
                let answer = if sink.depth(symbol, &snapshot) {
                    Answer::StillWaiting
                } else {
                    Answer::Synced
                };
                snapshots.answered(symbol, answer);
            }
            Err(error) => {
                self.stats.depth_snapshot_failures.fetch_add(1, Relaxed);
                if let Some(wait) = error.back_off() {
                    snapshots.back_off(wait);
                }
                snapshots.answered(symbol, Answer::StillWaiting);
                warnings.warn(|suppressed| {
                    tracing::warn!(feed = %self.config.name, symbol, %error, suppressed, "depth snapshot request failed; asking again later");
                });
            }
        }
    }

    /// Reads until the connection ends; returns why.
    async fn stream(
        &self,
        mut socket: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        sink: &mut dyn Sink,
        snapshots: &mut DepthSnapshots,
    ) -> String {
        let stats = &self.stats;
        // simd-json parses in place, so each message is copied into one reused buffer.
        let mut scratch: Vec<u8> = Vec::new();
        let mut depth = DepthMessage::default();
        let mut latencies: Vec<u64> = Vec::with_capacity(LATENCY_BATCH);
        let mut warnings = WarningLimiter::every(Duration::from_secs(1));
        let silence = self.config.stale_after;
        // Counted from the last market data: an upstream that only pings,
        // sends heartbeats or sends what cannot be read is alive but sends no
        // prices, and its symbols must go stale all the same.
        let quiet = tokio::time::sleep(silence);
        tokio::pin!(quiet);
        // When the next snapshot request may start; armed only while one is
        // queued, and reset only when that time moves.
        let snapshot_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(snapshot_timer);
        let mut snapshot_due = None;
        let reason = loop {
            let due = snapshots.next_due();
            if due != snapshot_due {
                snapshot_due = due;
                if let Some(due) = due {
                    snapshot_timer.as_mut().reset(due);
                }
            }
            let next = tokio::select! {
                () = self.shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    break "shutting down".to_owned();
                }
                () = &mut quiet => {
                    break format!("no market data for {} ms", silence.as_millis());
                }
                (symbol, answer) = snapshots.next_answer(), if snapshots.awaited() => {
                    self.take_snapshot(&symbol, answer, snapshots, sink, &mut warnings);
                    continue;
                }
                () = &mut snapshot_timer, if snapshot_due.is_some() => {
                    snapshots.start_due();
                    snapshot_due = None;
                    continue;
                }
                next = socket.next() => next,
            };
            let message = match next {
                None => break "upstream closed the connection".to_owned(),
                Some(Err(e)) => break format!("read failed: {e}"),
                Some(Ok(message)) => message,
            };
            let recv_ts_ns = wall_clock_ns();
            let payload: &[u8] = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes,
                Message::Close(frame) => {
                    break match frame {
                        Some(frame) => format!(
                            "upstream closed: {} {}",
                            u16::from(frame.code),
                            frame.reason
                        ),
                        None => "upstream closed".to_owned(),
                    }
                }
                // tungstenite answers pings itself while reading.
                _ => continue,
            };
            stats.messages.fetch_add(1, Relaxed);
            stats.last_message_ns.store(recv_ts_ns, Relaxed);
            scratch.clear();
            scratch.extend_from_slice(payload);
            let parsed = match self
                .config
                .venue
                .parse(&mut scratch, recv_ts_ns, &mut depth)
            {
                Ok(Parsed::Tick { symbol, tick }) => match self.carried_name(symbol) {
                    Some(symbol) => Ok(Parsed::Tick { symbol, tick }),
                    None => Err(ParseError::UnknownSymbol(symbol.chars().take(40).collect())),
                },
                // A depth message is refused before it counts as market data.
                Ok(Parsed::Recognised(Recognised::DepthUpdate | Recognised::DepthSnapshot))
                    if !depth.symbol.is_empty() && self.carried_name(&depth.symbol).is_none() =>
                {
                    Err(ParseError::UnknownSymbol(
                        depth.symbol.chars().take(40).collect(),
                    ))
                }
                Ok(Parsed::Recognised(Recognised::DepthUpdate | Recognised::DepthSnapshot))
                    if depth.has_negative_size() =>
                {
                    Err(ParseError::Line("negative size"))
                }
                parsed => parsed,
            };
            if parsed.as_ref().is_ok_and(is_market_data) {
                quiet.as_mut().reset(tokio::time::Instant::now() + silence);
            }
            match parsed {
                Ok(Parsed::Tick { symbol, tick }) => {
                    if let Some(exchange_ts_ns) = tick.exchange_ts_ns {
                        latencies.push(recv_ts_ns.saturating_sub(exchange_ts_ns).max(0) as u64);
                        if latencies.len() == LATENCY_BATCH {
                            stats.exchange_latency.record_batch(0, &latencies);
                            latencies.clear();
                        }
                    }
                    sink.tick(symbol, &tick);
                    stats.ticks.fetch_add(1, Relaxed);
                }
                Ok(Parsed::Recognised(Recognised::DepthUpdate | Recognised::DepthSnapshot)) => {
                    stats.recognised.fetch_add(1, Relaxed);
                    // Decoded only where the feed keeps books: else empty.
                    let decoded = !depth.symbol.is_empty();
                    if let Some(symbol) = self.carried_name(&depth.symbol).filter(|_| decoded) {
                        if sink.depth(symbol, &depth) {
                            snapshots.want(symbol);
                        }
                    }
                }
                Ok(Parsed::Recognised(_)) => {
                    stats.recognised.fetch_add(1, Relaxed);
                }
                Err(error) => {
                    stats.malformed.fetch_add(1, Relaxed);
                    warnings.warn(|suppressed| {
                        tracing::warn!(feed = %self.config.name, %error, suppressed, "skipping malformed message");
                    });
                }
            }
        };
        stats.exchange_latency.record_batch(0, &latencies);
        reason
    }
}

/// Whether a message carries prices, served or not; acknowledgements and
/// keep-alives do not, and do not keep a feed live.
fn is_market_data(parsed: &Parsed<'_>) -> bool {
    match parsed {
        Parsed::Tick { .. } => true,
        Parsed::Recognised(recognised) => matches!(
            recognised,
            Recognised::DepthUpdate | Recognised::DepthSnapshot | Recognised::TickerWithoutSizes
        ),
    }
}

/// Backoff jitter from the same small generator the synthetic feed uses.
struct Jitter(SplitMix64);

impl Jitter {
    fn seeded(seed: u64) -> Self {
        Self(SplitMix64(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next()
    }

    /// Full jitter: uniform in [initial/2, min(max, initial·2^attempt)], so
    /// reconnecting clients spread out and never hammer the upstream.
    fn backoff(&mut self, backoff: Backoff, attempt: u32) -> Duration {
        let ceiling = backoff
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(backoff.max);
        let floor = (backoff.initial / 2).min(ceiling);
        let span = ceiling.saturating_sub(floor).as_nanos() as u64;
        let offset = if span == 0 {
            0
        } else {
            self.next() % (span + 1)
        };
        floor + Duration::from_nanos(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut jitter = Jitter::seeded(7);
        for attempt in 0..40 {
            let delay = jitter.backoff(backoff, attempt);
            let ceiling = Duration::from_millis(100 << attempt.min(5)).min(backoff.max);
            assert!(
                delay >= Duration::from_millis(50),
                "attempt {attempt}: {delay:?}"
            );
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
        }
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| jitter.backoff(backoff, 10)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }

    #[test]
    fn coinbase_with_its_level2_book_takes_the_books_top() {
        let coinbase = |channels: &[&str]| Venue::Coinbase {
            products: vec!["BTC-USD".into()],
            channels: channels.iter().map(|c| c.to_string()).collect(),
        };
        assert_eq!(
            coinbase(&["ticker", "level2_batch"]).top_rule(),
            TopRule::BookFirst
        );
        assert_eq!(
            coinbase(&["ticker", "matches"]).top_rule(),
            TopRule::QuotesFirst
        );
        let binance = Venue::Binance {
            depth_snapshot_url: Some("https://h/{symbol}".into()),
        };
        assert_eq!(binance.top_rule(), TopRule::QuotesFirst);
    }

    #[test]
    fn names_are_renamed_then_prefixed() {
        let config = LiveConfig {
            name: "cb".into(),
            venue: Venue::Binance {
                depth_snapshot_url: None,
            },
            url: "ws://x".into(),
            symbols: vec![],
            prefix: Some("cb".into()),
            rename: HashMap::from([("BTC-USD".to_owned(), "BTCUSD".to_owned())]),
            stale_after: Duration::from_secs(1),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(1),
            ca_file: None,
        };
        assert_eq!(config.served_name("BTC-USD"), "cb:BTCUSD");
        assert_eq!(config.served_name("ETH-USD"), "cb:ETH-USD");
    }

    #[test]
    fn a_feed_carries_its_symbols_in_any_case_as_configured_or_any_when_it_lists_none() {
        let feed = |symbols: &[&str]| {
            let config = LiveConfig {
                name: "f".into(),
                venue: Venue::Binance {
                    depth_snapshot_url: None,
                },
                url: "ws://x".into(),
                symbols: symbols.iter().map(|s| s.to_string()).collect(),
                prefix: None,
                rename: HashMap::new(),
                stale_after: Duration::from_secs(1),
                backoff: Backoff::default(),
                connect_timeout: Duration::from_secs(1),
                ca_file: None,
            };
            let tls = tls_config(&config).expect("TLS settings");
            let stats = crate::metrics::Metrics::default().register_feed("f", "binance");
            Feed::new(config, tls, stats, CancellationToken::new())
        };
        let listed = feed(&["btcusdt", "ETHUSDT", "BTC-USD"]);
        // Every spelling is served under the configured one, never its own.
        for (sent, served) in [
            ("BTCUSDT", "btcusdt"),
            ("btcusdt", "btcusdt"),
            ("BtcUsdt", "btcusdt"),
            ("ETHUSDT", "ETHUSDT"),
            ("ethUSDT", "ETHUSDT"),
            ("btc-usd", "BTC-USD"),
        ] {
            assert_eq!(listed.carried_name(sent), Some(served), "{sent}");
        }
        assert_eq!(listed.carried_name("XRPUSDT"), None);
        assert_eq!(feed(&[]).carried_name("AnyThing"), Some("AnyThing"));
    }
}
