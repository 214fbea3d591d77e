//! Gateway: an edge server with no feeds of its own. It rebuilds the book
//! (top of book and depth) from NATS into its local [`Hub`], whose sessions
//! then serve it unchanged.
//!
//! Start-up subscribes first and only then reads the last-value streams, so no
//! version published in between is lost; both paths go through one `Merger`,
//! which keeps a version only if its `(epoch, seq)` is newer than the one held,
//! for each symbol's ticker and depth apart. A new epoch (a restarted ingest)
//! wins whatever its `seq`; the served `seq` then continues from the last one
//! served, so clients still see it only increase.
//!
//! The subscription reader never blocks on the fan-out: it takes everything the
//! client has buffered, keeps only the newest record per symbol and channel,
//! and applies that batch (bounded by the number of symbols, not by the message
//! rate), so the gateway never falls behind NATS and becomes a slow consumer.
//!
//! When the NATS connection drops, every symbol turns `stale` and keeps its
//! last value; after the reconnect the last values are read again and each
//! symbol takes the status its ingest last published (normally `live`).
//!
//! A depth record carries the ingest's depth cap. When this gateway serves
//! deeper books than that (`--max-book-depth`) and a side fills the cap, the
//! book is `stale` (cut short), as a standalone server's book cut at its
//! level cap is: the levels past the cap are unknown here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::wire::depth::{depth_subject_for, DepthRecord, DEPTH_SUBJECT_PREFIX};
use super::wire::{subject_for, TickerRecord, WireError};
use super::{ClusterError, LastValues, Link, DEPTH, TICKERS};
use crate::book::depth::CROSSED_REASON;
use crate::fanout::{Hub, SymbolEntry, SymbolState};
use crate::metrics::depth::DepthEvent;
use crate::metrics::{ClusterStats, WarningLimiter};

/// The status reason while the NATS connection is down.
pub const DISCONNECTED_REASON: &str = "source disconnected";

/// The status reason of a symbol while the link is up again but its last
/// values could not be read (JetStream unavailable, say): a status its
/// ingest published during the outage may be missing until its next record.
pub const LAST_VALUES_UNAVAILABLE_REASON: &str =
    "last values unavailable; awaiting the symbol's next version";

/// The status reason of a symbol live again once the link is back, when its
/// ingest gave none (it never had to: the symbol was live all along).
pub const RECONNECTED_REASON: &str = "source reconnected";

/// The status reason of a book whose last version could not be read again
/// after a reconnect: versions published meanwhile may be lost.
pub const UNCONFIRMED_REASON: &str = "source reconnected; awaiting the book's next version";

/// At most one warning of failed reloads of the last values this often.
const RELOAD_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Most symbols served; records of further symbols are dropped and counted.
    pub max_symbols: usize,
    /// Most records taken from the subscription per batch before applying them.
    pub max_batch: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            max_symbols: 10_000,
            max_batch: 4_096,
        }
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    reader: JoinHandle<()>,
    link: JoinHandle<()>,
}

impl GatewayHandle {
    /// Whether both gateway tasks are still running.
    pub fn is_running(&self) -> bool {
        !self.reader.is_finished() && !self.link.is_finished()
    }

    /// Waits for the gateway to stop (after `shutdown` is cancelled).
    pub async fn stopped(self) {
        let _ = self.reader.await;
        let _ = self.link.await;
    }
}

/// Connects to NATS, subscribes to every ticker subject, loads the last
/// values into `hub`, and keeps `hub` in step with NATS until `shutdown`.
pub async fn spawn(
    hub: Arc<Hub>,
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> Result<GatewayHandle, ClusterError> {
    let stats = hub.metrics().cluster.clone();
    stats.enable("gateway");
    let (client, link) = super::connect(&config.url, "tickwire-gateway", &stats).await?;
    let subscribe = |values: LastValues| {
        let client = client.clone();
        async move {
            client
                .subscribe(values.subjects)
                .await
                .map_err(|error| ClusterError::Subscribe {
                    subject: values.subjects,
                    error,
                })
        }
    };
    let subscriptions = (subscribe(TICKERS).await?, subscribe(DEPTH).await?);
    let merger = Arc::new(Merger::new(hub, config.max_symbols));
    let reader = tokio::spawn(read_subscriptions(
        subscriptions,
        merger.clone(),
        config.max_batch.max(1),
        shutdown.clone(),
    ));
    let loaded = match load_last_values(&client, &merger).await {
        Ok(LastValuesRead { loaded, .. }) => loaded,
        Err(e) => {
            reader.abort();
            return Err(e);
        }
    };
    tracing::info!(loaded, "last values loaded from NATS");
    let link = tokio::spawn(follow_link(client, link, merger, shutdown));
    Ok(GatewayHandle { reader, link })
}

/// Reads the ticker and depth subscriptions in conflated batches until
/// shutdown.
async fn read_subscriptions(
    (tickers, depth): (async_nats::Subscriber, async_nats::Subscriber),
    merger: Arc<Merger>,
    max_batch: usize,
    shutdown: CancellationToken,
) {
    let mut messages = futures_util::stream::select(tickers, depth);
    let mut batch = Batch::default();
    let mut hop_samples = Vec::new();
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            message = messages.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let mut taken = 1;
        merger.conflate(&mut batch, &first.subject, &first.payload);
        // Everything already buffered, without waiting for more.
        while taken < max_batch {
            let Some(Some(message)) = messages.next().now_or_never() else {
                break;
            };
            taken += 1;
            merger.conflate(&mut batch, &message.subject, &message.payload);
        }
        merger.stats.received.fetch_add(taken as u64, Relaxed);
        let now = crate::wall_clock_ns();
        hop_samples.clear();
        merger.apply_batch(&mut batch, |ingest_ts_ns| {
            let hop = now.saturating_sub(ingest_ts_ns);
            hop_samples.push(u64::try_from(hop).unwrap_or(0));
        });
        merger.stats.hop_latency.record_batch(0, &hop_samples);
    }
    let (tickers, depth) = messages.into_inner();
    for mut subscription in [tickers, depth] {
        let _ = subscription.unsubscribe().await;
    }
}

/// Marks everything stale while NATS is away and reloads when it is back.
async fn follow_link(
    client: async_nats::Client,
    mut link: watch::Receiver<Link>,
    merger: Arc<Merger>,
    shutdown: CancellationToken,
) {
    let mut connects = link.borrow().connects;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = link.changed() => if changed.is_err() { break },
        }
        let now = *link.borrow_and_update();
        if !now.connected {
            merger.source_down();
            continue;
        }
        if now.connects == connects {
            continue;
        }
        connects = now.connects;
        // Retried until it works or the link drops again: the server may still
        // be recovering its streams right after it accepts connections.
        let mut attempt = 0u32;
        let mut warnings = WarningLimiter::every(RELOAD_WARNING_INTERVAL);
        loop {
            match load_last_values(&client, &merger).await {
                Ok(read) => {
                    tracing::info!(loaded = read.loaded, "last values reloaded after reconnect");
                    merger.source_up(read.books);
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    merger.stats.reload_failures.fetch_add(1, Relaxed);
                    // Every failure is counted; the log says so at most once
                    // an interval, as a server without JetStream fails each time.
                    warnings.warn(|held_back| tracing::warn!(attempt, held_back, "{e}"));
                    if attempt == 1 {
                        // Connected and receiving: "disconnected" would be
                        // false. Each symbol takes its next record's status.
                        merger.source_unconfirmed();
                    }
                    let delay = Duration::from_millis(200 * u64::from(attempt.min(10)));
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    if !link.borrow().connected {
                        break;
                    }
                }
            }
        }
    }
}

/// What [`load_last_values`] read.
struct LastValuesRead {
    /// Records read from both streams.
    loaded: u64,
    /// Whether the books' last values were read too.
    books: bool,
}

/// Reads the newest record of every subject from both last-value streams.
/// Only the tickers' is required (see [`super::ensure_streams`]).
async fn load_last_values(
    client: &async_nats::Client,
    merger: &Merger,
) -> Result<LastValuesRead, ClusterError> {
    let jetstream = async_nats::jetstream::new(client.clone());
    let mut loaded = load_stream(&jetstream, TICKERS, merger).await?;
    let books = match load_stream(&jetstream, DEPTH, merger).await {
        Ok(books) => {
            loaded += books;
            true
        }
        Err(e) => {
            tracing::warn!("{e}: books start from their next versions");
            false
        }
    };
    merger.stats.loaded.fetch_add(loaded, Relaxed);
    Ok(LastValuesRead { loaded, books })
}

/// Reads the newest record of every subject of one last-value stream. Stops
/// once the records present at the start are read: anything newer comes
/// through the subscription anyway.
async fn load_stream(
    jetstream: &async_nats::jetstream::Context,
    values: LastValues,
    merger: &Merger,
) -> Result<u64, ClusterError> {
    let failed = |e: &dyn std::fmt::Display| ClusterError::LastValues {
        stream: values.stream,
        error: e.to_string(),
    };
    let stream = super::ensure_stream(jetstream, values).await?;
    let mut consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::LastPerSubject,
            ack_policy: AckPolicy::None,
            filter_subject: values.subjects.to_owned(),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let present = consumer.info().await.map_err(|e| failed(&e))?.num_pending;
    let mut loaded = 0;
    let mut pending = present;
    let mut one = Batch::default();
    while pending > 0 && loaded < present {
        let mut batch = consumer
            .fetch()
            .max_messages(512)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| failed(&e))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| failed(&e))?;
            got += 1;
            if let Ok(info) = message.info() {
                pending = info.pending;
            }
            merger.conflate(&mut one, &message.subject, &message.payload);
            merger.apply_batch(&mut one, |_| {});
        }
        if got == 0 {
            break;
        }
        loaded += got;
    }
    let consumer_name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&consumer_name).await;
    Ok(loaded)
}

/// What the gateway holds of one symbol: its ticker and its depth, each
/// merged apart.
struct Held {
    entry: Arc<SymbolEntry>,
    ticker: Track,
    depth: Track,
}

/// The versions of one channel of a symbol, as they came and as they are served.
struct Track {
    /// (epoch, seq) of the newest record applied.
    epoch: u64,
    seq: u64,
    /// `seq` last served to clients, and what the current epoch's seqs add to it.
    served_seq: u64,
    offset: u64,
    /// Whether a record was applied: a book no record spoke of keeps its own
    /// status ("awaiting a depth snapshot") whatever happens to the link.
    heard: bool,
    /// The status the ingest last published.
    state: SymbolState,
    reason: String,
}

impl Default for Track {
    fn default() -> Self {
        Self {
            epoch: 0,
            seq: 0,
            served_seq: 0,
            offset: 0,
            heard: false,
            state: SymbolState::Live,
            reason: String::new(),
        }
    }
}

/// What a record means for its track.
enum Step {
    /// Older than what is held: dropped.
    Outdated,
    /// A seq that would wrap the served seq around: dropped.
    Overflow,
    /// The same version (or none), perhaps with a new status.
    StatusOnly,
    /// A newer version, to be served under this seq.
    Serve(u64),
}

impl Track {
    /// The status clients see: the ingest's last, or stale while the link
    /// to it is down.
    fn shown(&self, source_up: bool) -> (SymbolState, &str) {
        if source_up {
            (self.state, &self.reason)
        } else {
            (SymbolState::Stale, DISCONNECTED_REASON)
        }
    }

    /// Takes a record's `(epoch, seq)` and status. A new epoch (a restarted
    /// ingest) wins whatever its seq, and its seqs count on from the last one
    /// served.
    fn advance(&mut self, epoch: u64, seq: u64, state: SymbolState, reason: &str) -> Step {
        if (epoch, seq) < (self.epoch, self.seq) {
            return Step::Outdated;
        }
        let new_epoch = epoch != self.epoch;
        let offset = if new_epoch {
            self.served_seq
        } else {
            self.offset
        };
        let Some(served_seq) = offset.checked_add(seq) else {
            // No seq this large comes from a real ingest; serving it would
            // wrap the client-visible seq around.
            return Step::Overflow;
        };
        if new_epoch {
            self.epoch = epoch;
            self.offset = offset;
        }
        let serve = seq > 0 && (new_epoch || seq > self.seq);
        self.seq = seq;
        self.heard = true;
        self.state = state;
        reason.clone_into(&mut self.reason);
        if serve {
            self.served_seq = served_seq;
            Step::Serve(served_seq)
        } else {
            Step::StatusOnly
        }
    }
}

struct MergeState {
    /// Whether the NATS connection is up and the last values were read.
    source_up: bool,
    symbols: HashMap<Arc<str>, Held>,
}

/// Records taken off NATS and not applied yet: the newest per symbol and
/// channel.
#[derive(Default)]
struct Batch {
    tickers: HashMap<Arc<str>, TickerRecord>,
    depth: HashMap<Arc<str>, DepthRecord>,
}

/// Applies records to the hub in `(epoch, seq)` order.
struct Merger {
    hub: Arc<Hub>,
    stats: Arc<ClusterStats>,
    max_symbols: usize,
    /// Whether the log has said that the source keeps fewer levels than served.
    warned_cut_short: AtomicBool,
    state: Mutex<MergeState>,
}

impl Merger {
    fn new(hub: Arc<Hub>, max_symbols: usize) -> Self {
        Self {
            stats: hub.metrics().cluster.clone(),
            hub,
            max_symbols,
            warned_cut_short: AtomicBool::new(false),
            state: Mutex::new(MergeState {
                source_up: true,
                symbols: HashMap::new(),
            }),
        }
    }

    /// Decodes a message into `batch`, keeping the newer of two records of a
    /// symbol's channel (the later one when equal: it may carry a new status).
    fn conflate(&self, batch: &mut Batch, subject: &async_nats::Subject, payload: &[u8]) {
        if subject.as_str().starts_with(DEPTH_SUBJECT_PREFIX) {
            self.take(&mut batch.depth, subject, payload);
        } else {
            self.take(&mut batch.tickers, subject, payload);
        }
    }

    /// [`Self::conflate`] for one kind of record. A record that does not
    /// decode, or names a symbol whose subject is not the one it came on, is
    /// counted as malformed.
    fn take<R: Record>(
        &self,
        batch: &mut HashMap<Arc<str>, R>,
        subject: &async_nats::Subject,
        payload: &[u8],
    ) {
        let record = match R::decode(payload) {
            Ok(record) => record,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Relaxed);
                tracing::debug!(%subject, error = %e, "undecodable record");
                return;
            }
        };
        let symbol = record.symbol();
        if R::subject_for(symbol).as_deref() != Some(subject.as_str()) {
            self.stats.malformed.fetch_add(1, Relaxed);
            tracing::debug!(%subject, %symbol, "record on the wrong subject");
            return;
        }
        match batch.get(symbol) {
            Some(held) => {
                self.stats.conflated.fetch_add(1, Relaxed);
                if held.version() <= record.version() {
                    batch.insert(symbol.clone(), record);
                }
            }
            None => {
                batch.insert(symbol.clone(), record);
            }
        }
    }

    /// Applies and empties `batch`, telling `served` the ingest time of each
    /// record served as a new version. Only those are a hop: a status-only
    /// record repeats an old version's ingest time (a feed gone stale would
    /// read as a hop of seconds), and a dropped record was never served.
    fn apply_batch(&self, batch: &mut Batch, mut served: impl FnMut(i64)) {
        for record in batch.tickers.drain().map(|(_, record)| record) {
            let ingest_ts_ns = record.ingest_ts_ns;
            if self.apply(record) {
                served(ingest_ts_ns);
            }
        }
        for record in batch.depth.drain().map(|(_, record)| record) {
            let ingest_ts_ns = record.ingest_ts_ns;
            if self.apply_depth(record) {
                served(ingest_ts_ns);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MergeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The symbol's holding, declared in the hub at its first record; `None`
    /// (counted) past the symbol limit.
    fn held<'a>(&self, state: &'a mut MergeState, symbol: &Arc<str>) -> Option<&'a mut Held> {
        if !state.symbols.contains_key(symbol) {
            if state.symbols.len() >= self.max_symbols {
                self.stats.symbols_refused.fetch_add(1, Relaxed);
                return None;
            }
            let entry = self.hub.declare(symbol);
            let held = Held {
                entry,
                ticker: Track::default(),
                depth: Track::default(),
            };
            state.symbols.insert(symbol.clone(), held);
        }
        state.symbols.get_mut(symbol)
    }

    /// Counts a record that [`Track::advance`] dropped; true if it was kept.
    fn kept(&self, step: &Step) -> bool {
        match step {
            Step::Outdated => self.stats.outdated.fetch_add(1, Relaxed),
            Step::Overflow => self.stats.malformed.fetch_add(1, Relaxed),
            Step::StatusOnly | Step::Serve(_) => return true,
        };
        false
    }

    /// Serves a ticker `record` if it is newer than what is held, and takes
    /// its status. True if it was served as a new version.
    fn apply(&self, record: TickerRecord) -> bool {
        let mut state = self.lock();
        let source_up = state.source_up;
        let Some(held) = self.held(&mut state, &record.symbol) else {
            return false;
        };
        let step = held
            .ticker
            .advance(record.epoch, record.seq, record.state, &record.reason);
        if !self.kept(&step) {
            return false;
        }
        let mut served = false;
        if let Step::Serve(seq) = step {
            let version = record.to_snapshot(held.entry.name(), seq);
            self.hub.publish_version(&held.entry, Arc::new(version));
            served = true;
        }
        let (state, reason) = held.ticker.shown(source_up);
        self.set_ticker_status(&held.entry, state, reason);
        served
    }

    /// Serves a depth `record` if it is newer than what is held, does not
    /// cross and vouches for the depth served here, and takes its status.
    /// True if it was served as a new version.
    fn apply_depth(&self, record: DepthRecord) -> bool {
        let mut state = self.lock();
        let source_up = state.source_up;
        let Some(held) = self.held(&mut state, &record.symbol) else {
            return false;
        };
        let step = held
            .depth
            .advance(record.epoch, record.seq, record.state, &record.reason);
        if !self.kept(&step) {
            return false;
        }
        let mut published = false;
        // Checked on every record of a version, not only the first: the same
        // version comes again after a reconnect and must not turn it live.
        let served = self.hub.max_book_depth();
        if record.seq > 0 && record.crossed() {
            // What a standalone server does with a book that crosses: stale,
            // not published, counted as crossed. A later version uncrosses it.
            self.hub.metrics().depth.count(DepthEvent::Crossed);
            held.depth.state = SymbolState::Stale;
            held.depth.reason = CROSSED_REASON.to_owned();
            tracing::debug!(symbol = %record.symbol, seq = record.seq, "crossed depth record");
        } else if record.seq > 0 && !record.vouches_for(served) {
            self.hub.metrics().depth.count(DepthEvent::CutShort);
            held.depth.state = SymbolState::Stale;
            held.depth.reason = format!(
                "cut short: the source keeps {} levels a side, fewer than the {served} served here",
                record.levels
            );
            if !self.warned_cut_short.swap(true, Relaxed) {
                tracing::warn!(
                    "the ingest keeps {} levels a side and this gateway serves {served} \
                     (--max-book-depth): full books are stale until the two agree",
                    record.levels
                );
            }
        } else if let Step::Serve(seq) = step {
            let version = record.to_snapshot(held.entry.name(), seq, served);
            self.hub
                .publish_depth_version(&held.entry, Arc::new(version));
            published = true;
        }
        let (state, reason) = held.depth.shown(source_up);
        held.entry.depth().set_status(state, reason);
        published
    }

    /// Sets a symbol's ticker status. A symbol that stays stale keeps the
    /// reason it was announced with, except "last values unavailable": that
    /// one stops being true with the symbol's next record, or when the link
    /// drops or the reload works, and clients are told the reason that
    /// replaces it.
    fn set_ticker_status(&self, entry: &SymbolEntry, state: SymbolState, reason: &str) {
        if &*entry.status().reason == LAST_VALUES_UNAVAILABLE_REASON {
            self.hub.set_status_and_reason(entry, state, reason);
        } else {
            self.hub.set_status(entry, state, reason);
        }
    }

    /// The connection dropped: every symbol keeps its value but turns stale.
    fn source_down(&self) {
        let mut state = self.lock();
        state.source_up = false;
        for held in state.symbols.values() {
            self.set_ticker_status(&held.entry, SymbolState::Stale, DISCONNECTED_REASON);
            if held.depth.heard {
                held.entry
                    .depth()
                    .set_status(SymbolState::Stale, DISCONNECTED_REASON);
            }
        }
    }

    /// The connection is back but the last values could not be read: every
    /// symbol is stale for that reason until its next record, whose status
    /// it then takes (a record received now is the ingest's current one).
    /// The reload is retried; when it works, [`Self::source_up`] follows.
    fn source_unconfirmed(&self) {
        let mut state = self.lock();
        state.source_up = true;
        for held in state.symbols.values() {
            // Announced though the symbol was stale already: it is no longer
            // "source disconnected".
            self.hub.set_status_and_reason(
                &held.entry,
                SymbolState::Stale,
                LAST_VALUES_UNAVAILABLE_REASON,
            );
            if held.depth.heard {
                held.entry
                    .depth()
                    .set_status(SymbolState::Stale, LAST_VALUES_UNAVAILABLE_REASON);
            }
        }
    }

    /// The connection is back and the last values are read: every symbol
    /// takes the status its ingest last published. Books take theirs only if
    /// their last values were read too (`books`); otherwise a version
    /// published during the outage may be missing, and each stays stale until
    /// its next record.
    fn source_up(&self, books: bool) {
        let mut state = self.lock();
        state.source_up = true;
        // Clients saw the symbol go stale for the link: coming back, it says so.
        let reason = |status: &Track| match (status.state, status.reason.as_str()) {
            (SymbolState::Live, "") => RECONNECTED_REASON.to_owned(),
            (_, reason) => reason.to_owned(),
        };
        for held in state.symbols.values() {
            self.set_ticker_status(&held.entry, held.ticker.state, &reason(&held.ticker));
            if !held.depth.heard {
                continue;
            }
            let depth = held.entry.depth();
            if books {
                depth.set_status(held.depth.state, &reason(&held.depth));
            } else {
                depth.set_status(SymbolState::Stale, UNCONFIRMED_REASON);
            }
        }
    }
}

/// What batching needs of a record.
trait Record: Sized {
    fn decode(bytes: &[u8]) -> Result<Self, WireError>;
    /// The subject a record of `symbol` comes on.
    fn subject_for(symbol: &str) -> Option<String>;
    fn symbol(&self) -> &Arc<str>;
    /// `(epoch, seq)`: the larger is the newer.
    fn version(&self) -> (u64, u64);
}

impl Record for TickerRecord {
    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        TickerRecord::decode(bytes)
    }
    fn subject_for(symbol: &str) -> Option<String> {
        subject_for(symbol)
    }
    fn symbol(&self) -> &Arc<str> {
        &self.symbol
    }
    fn version(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }
}

impl Record for DepthRecord {
    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        DepthRecord::decode(bytes)
    }
    fn subject_for(symbol: &str) -> Option<String> {
        depth_subject_for(symbol)
    }
    fn symbol(&self) -> &Arc<str> {
        &self.symbol
    }
    fn version(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Level;
    use crate::fanout::SymbolStatus;
    use rust_decimal::Decimal;

    fn merger(max_symbols: usize) -> Merger {
        Merger::new(Arc::new(Hub::new(Arc::default())), max_symbols)
    }

    fn record(symbol: &str, epoch: u64, seq: u64, bid: i64) -> TickerRecord {
        let live = SymbolStatus {
            generation: 0,
            state: SymbolState::Live,
            reason: Arc::from(""),
        };
        TickerRecord {
            seq,
            bid: Some(Level {
                price: Decimal::new(bid, 2),
                size: Decimal::ONE,
            }),
            ingest_ts_ns: 1_000 + bid,
            ..TickerRecord::declared(Arc::from(symbol), epoch, &live)
        }
    }

    /// (served seq, bid in cents) of the symbol's current version.
    fn served(merger: &Merger, symbol: &str) -> Option<(u64, i64)> {
        let current = merger.hub.get(symbol)?.current()?;
        let bid = current.bid?.price * Decimal::ONE_HUNDRED;
        Some((current.seq, bid.trunc().mantissa() as i64))
    }

    #[test]
    fn newer_versions_win_whatever_order_they_arrive_in() {
        let merger = merger(10);
        merger.apply(record("A", 5, 2, 200));
        merger.apply(record("A", 5, 1, 100));
        assert_eq!(served(&merger, "A"), Some((2, 200)));
        assert_eq!(merger.stats.outdated.load(Relaxed), 1);
        merger.apply(record("A", 5, 3, 300));
        assert_eq!(served(&merger, "A"), Some((3, 300)));
        let current = merger.hub.get("A").and_then(|e| e.current());
        assert_eq!(current.map(|s| s.ingest_ts_ns), Some(1_300));
    }

    #[test]
    fn a_restarted_ingest_is_taken_at_once_and_seq_keeps_increasing() {
        let merger = merger(10);
        merger.apply(record("A", 5, 40, 400));
        merger.apply(record("A", 9, 1, 101));
        assert_eq!(served(&merger, "A"), Some((41, 101)), "new epoch, low seq");
        merger.apply(record("A", 9, 2, 102));
        assert_eq!(served(&merger, "A"), Some((42, 102)));
        merger.apply(record("A", 5, 41, 410));
        assert_eq!(
            served(&merger, "A"),
            Some((42, 102)),
            "the old epoch is over"
        );
    }

    #[test]
    fn a_seq_that_would_wrap_the_served_seq_is_dropped_and_counted() {
        let merger = merger(10);
        merger.apply(record("A", 5, 100, 100));
        // A new epoch counts on from 100: u64::MAX more does not fit.
        merger.apply(record("A", 6, u64::MAX, 200));
        assert_eq!(served(&merger, "A"), Some((100, 100)));
        assert_eq!(merger.stats.malformed.load(Relaxed), 1);
        // The epoch was not taken either: the next real record of the old
        // one is served, and the new one, when it comes, counts on from it.
        merger.apply(record("A", 5, 101, 101));
        assert_eq!(served(&merger, "A"), Some((101, 101)));
        merger.apply(record("A", 6, 1, 300));
        assert_eq!(served(&merger, "A"), Some((102, 300)));
    }

    #[test]
    fn only_records_served_as_new_versions_are_timed_as_hops() {
        let merger = merger(10);
        let subject = async_nats::Subject::from(subject_for("A").unwrap_or_default());
        let depth_subject = async_nats::Subject::from(depth_subject_for("A").unwrap_or_default());
        let timed = |records: &[(&async_nats::Subject, Vec<u8>)]| {
            let mut batch = Batch::default();
            for (subject, payload) in records {
                merger.conflate(&mut batch, subject, payload);
            }
            let mut hops = Vec::new();
            merger.apply_batch(&mut batch, |ingest_ts_ns| hops.push(ingest_ts_ns));
            hops.sort_unstable();
            hops
        };
        let fresh = [
            (&subject, record("A", 5, 3, 300).encode()),
            (&depth_subject, depth_record("A", 5, 3, 10).encode()),
        ];
        assert_eq!(timed(&fresh), vec![1_003, 1_300]);
        // The feed went stale: the same versions again, with the new status.
        let stale = [
            (
                &subject,
                TickerRecord {
                    state: SymbolState::Stale,
                    reason: "feed disconnected".into(),
                    ..record("A", 5, 3, 300)
                }
                .encode(),
            ),
            (
                &depth_subject,
                DepthRecord {
                    state: SymbolState::Stale,
                    reason: "feed disconnected".into(),
                    ..depth_record("A", 5, 3, 10)
                }
                .encode(),
            ),
        ];
        assert_eq!(timed(&stale), Vec::<i64>::new(), "status only");
        let outdated = [
            (&subject, record("A", 5, 2, 200).encode()),
            (&depth_subject, depth_record("A", 5, 2, 10).encode()),
        ];
        assert_eq!(timed(&outdated), Vec::<i64>::new(), "outdated");
        assert_eq!(merger.stats.outdated.load(Relaxed), 2);
    }

    #[test]
    fn a_declared_symbol_is_served_before_its_first_version() {
        let merger = merger(10);
        let live = SymbolStatus {
            generation: 0,
            state: SymbolState::Stale,
            reason: Arc::from("feed connecting"),
        };
        merger.apply(TickerRecord::declared(Arc::from("A"), 5, &live));
        let entry = merger.hub.get("A");
        assert!(entry.as_ref().is_some_and(|e| e.current().is_none()));
        let status = entry.map(|e| e.status());
        assert_eq!(status.map(|s| s.state), Some(SymbolState::Stale));
        merger.apply(record("A", 5, 1, 100));
        assert_eq!(served(&merger, "A"), Some((1, 100)));
    }

    #[test]
    fn the_same_version_with_a_new_status_changes_only_the_status() {
        let merger = merger(10);
        merger.apply(record("A", 5, 3, 300));
        let stale = TickerRecord {
            state: SymbolState::Stale,
            reason: "feed disconnected".into(),
            ..record("A", 5, 3, 300)
        };
        merger.apply(stale);
        let entry = merger.hub.get("A").expect("declared");
        assert_eq!(entry.status().state, SymbolState::Stale);
        assert_eq!(&*entry.status().reason, "feed disconnected");
        assert_eq!(merger.hub.metrics().book_updates.load(Relaxed), 1);
    }

    #[test]
    fn a_lost_source_makes_everything_stale_until_it_is_back() {
        let merger = merger(10);
        merger.apply(record("A", 5, 1, 100));
        merger.apply(record("B", 5, 1, 100));
        merger.source_down();
        let state = |s: &str| merger.hub.get(s).map(|e| e.status());
        assert_eq!(state("A").map(|s| s.state), Some(SymbolState::Stale));
        assert_eq!(
            state("B").map(|s| s.reason.to_string()).as_deref(),
            Some(DISCONNECTED_REASON)
        );
        // Versions still buffered when the link dropped are served, but stay stale.
        merger.apply(record("A", 5, 2, 200));
        assert_eq!(served(&merger, "A"), Some((2, 200)));
        assert_eq!(state("A").map(|s| s.state), Some(SymbolState::Stale));
        merger.source_up(true);
        assert_eq!(state("A").map(|s| s.state), Some(SymbolState::Live));
        let b = state("B").map(|s| (s.state, s.reason.to_string()));
        assert_eq!(b, Some((SymbolState::Live, RECONNECTED_REASON.into())));
    }

    #[test]
    fn without_last_values_after_a_reconnect_each_symbol_goes_live_on_its_next_record() {
        let merger = merger(10);
        merger.apply(record("A", 5, 1, 100));
        merger.apply(record("B", 5, 1, 100));
        merger.apply_depth(depth_record("A", 5, 1, 10));
        merger.source_down();
        merger.source_unconfirmed();
        let ticker = |s: &str| merger.hub.get(s).map(|e| e.status());
        let book = |s: &str| merger.hub.get(s).map(|e| e.depth().status());
        for status in [ticker("A"), ticker("B"), book("A")] {
            let status = status.map(|s| (s.state, s.reason.to_string()));
            assert_eq!(
                status,
                Some((
                    SymbolState::Stale,
                    LAST_VALUES_UNAVAILABLE_REASON.to_owned()
                ))
            );
        }
        merger.apply(record("A", 5, 2, 200));
        merger.apply_depth(depth_record("A", 5, 2, 10));
        assert_eq!(ticker("A").map(|s| s.state), Some(SymbolState::Live));
        assert_eq!(book("A").map(|s| s.state), Some(SymbolState::Live));
        assert_eq!(ticker("B").map(|s| s.state), Some(SymbolState::Stale));
        // The reload works at last: every symbol takes its last status.
        merger.source_up(true);
        assert_eq!(ticker("B").map(|s| s.state), Some(SymbolState::Live));
    }

    /// A symbol whose next record is stale too takes that record's reason:
    /// "last values unavailable" is no longer true once it has arrived, nor
    /// once the link drops again.
    #[test]
    fn a_stale_record_after_a_reconnect_without_last_values_replaces_its_reason() {
        let merger = merger(10);
        merger.apply(record("A", 5, 1, 100));
        merger.apply(record("B", 5, 1, 100));
        merger.source_down();
        merger.source_unconfirmed();
        let reason = |s: &str| merger.hub.get(s).map(|e| e.status().reason.to_string());
        merger.apply(TickerRecord {
            state: SymbolState::Stale,
            reason: "feed disconnected".into(),
            ..record("A", 5, 2, 200)
        });
        assert_eq!(reason("A").as_deref(), Some("feed disconnected"));
        merger.source_down();
        assert_eq!(reason("B").as_deref(), Some(DISCONNECTED_REASON));
    }

    #[test]
    fn symbols_beyond_the_limit_are_refused_and_counted() {
        let merger = merger(2);
        for symbol in ["A", "B", "C", "D"] {
            merger.apply(record(symbol, 5, 1, 100));
        }
        assert_eq!(merger.hub.symbol_count(), 2);
        assert_eq!(merger.stats.symbols_refused.load(Relaxed), 2);
        merger.apply(record("A", 5, 2, 200));
        assert_eq!(served(&merger, "A"), Some((2, 200)), "known symbols go on");
    }

    #[test]
    fn batches_keep_the_newest_record_and_drop_malformed_ones() {
        let merger = merger(10);
        let mut batch = Batch::default();
        let subject = |s: &str| async_nats::Subject::from(subject_for(s).unwrap_or_default());
        let depth_subject =
            |s: &str| async_nats::Subject::from(depth_subject_for(s).unwrap_or_default());
        merger.conflate(&mut batch, &subject("A"), &record("A", 5, 2, 200).encode());
        merger.conflate(&mut batch, &subject("A"), &record("A", 5, 1, 100).encode());
        merger.conflate(&mut batch, &subject("B"), &record("A", 5, 3, 300).encode());
        merger.conflate(&mut batch, &subject("A"), b"not a record");
        let depth = depth_record("A", 5, 4, 10);
        merger.conflate(&mut batch, &depth_subject("A"), &depth.encode());
        merger.conflate(&mut batch, &subject("A"), &depth.encode());
        merger.conflate(
            &mut batch,
            &depth_subject("A"),
            &record("A", 5, 9, 900).encode(),
        );
        assert_eq!(batch.tickers.len(), 1);
        assert_eq!(batch.tickers.get("A").map(|r| r.seq), Some(2));
        assert_eq!(batch.depth.get("A").map(|r| r.seq), Some(4));
        assert_eq!(merger.stats.conflated.load(Relaxed), 1);
        assert_eq!(merger.stats.malformed.load(Relaxed), 4);
    }

    /// A live depth record of `levels` bids and asks, from an ingest that
    /// keeps 100 levels a side.
    fn depth_record(symbol: &str, epoch: u64, seq: u64, levels: i64) -> DepthRecord {
        let level = |price: i64| Level {
            price: Decimal::new(price, 2),
            size: Decimal::ONE,
        };
        DepthRecord {
            epoch,
            seq,
            symbol: Arc::from(symbol),
            state: SymbolState::Live,
            reason: String::new(),
            levels: 100,
            bids: (0..levels).map(|i| level(10_000 - i)).collect(),
            asks: (0..levels).map(|i| level(10_001 + i)).collect(),
            exchange_ts_ns: None,
            ingest_ts_ns: 1_000 + i64::try_from(seq).unwrap_or(0),
        }
    }

    fn book(merger: &Merger, symbol: &str) -> Option<(u64, usize, SymbolStatus)> {
        let depth = merger.hub.get(symbol)?.depth().current()?;
        let status = merger.hub.get(symbol)?.depth().status();
        Some((depth.seq, depth.bids.len(), status))
    }

    #[test]
    fn depth_is_served_in_order_and_its_status_taken_apart_from_the_ticker() {
        let merger = merger(10);
        merger.apply_depth(depth_record("A", 5, 2, 30));
        merger.apply_depth(depth_record("A", 5, 1, 20));
        assert_eq!(merger.stats.outdated.load(Relaxed), 1);
        let served = book(&merger, "A");
        assert_eq!(
            served.as_ref().map(|(seq, bids, _)| (*seq, *bids)),
            Some((2, 30))
        );
        assert_eq!(served.map(|(_, _, s)| s.state), Some(SymbolState::Live));
        // The ticker of a symbol first heard of through its depth is untouched.
        assert!(merger.hub.get("A").is_some_and(|e| e.current().is_none()));

        let gap = DepthRecord {
            state: SymbolState::Stale,
            reason: "gap in depth updates".into(),
            ..depth_record("A", 5, 2, 30)
        };
        merger.apply_depth(gap);
        let status = book(&merger, "A").map(|(seq, _, s)| (seq, s.state, s.reason.to_string()));
        assert_eq!(
            status,
            Some((2, SymbolState::Stale, "gap in depth updates".to_owned()))
        );
        // A restarted ingest counts on from the last seq served.
        merger.apply_depth(depth_record("A", 9, 1, 5));
        let restarted = book(&merger, "A").map(|(seq, bids, s)| (seq, bids, s.state));
        assert_eq!(restarted, Some((3, 5, SymbolState::Live)));
    }

    #[test]
    fn a_crossed_book_is_stale_and_counted_not_served_until_a_version_uncrosses_it() {
        let merger = merger(10);
        merger.apply_depth(depth_record("A", 5, 1, 10));
        let crossed = DepthRecord {
            bids: vec![Level {
                price: Decimal::new(10_005, 2),
                size: Decimal::ONE,
            }],
            ..depth_record("A", 5, 2, 10)
        };
        merger.apply_depth(crossed.clone());
        let (seq, _, status) = book(&merger, "A").expect("seq 1 was served");
        let reason = crate::book::depth::Outcome::Crossed.stale_reason();
        assert_eq!(
            (seq, status.state, Some(&*status.reason)),
            (1, SymbolState::Stale, reason)
        );
        // The same version again (a reconnect's reload) does not turn it live.
        merger.apply_depth(crossed);
        assert_eq!(
            book(&merger, "A").map(|(_, _, s)| s.state),
            Some(SymbolState::Stale)
        );
        let page = merger.hub.metrics().render(1, None);
        assert!(
            page.contains("tickwire_depth_messages_total{outcome=\"crossed\"} 2"),
            "{page}"
        );
        merger.apply_depth(depth_record("A", 5, 3, 10));
        let served = book(&merger, "A").map(|(seq, _, s)| (seq, s.state));
        assert_eq!(served, Some((3, SymbolState::Live)));
    }

    #[test]
    fn an_out_of_order_depth_record_is_malformed_and_never_served() {
        let merger = merger(10);
        let mut batch = Batch::default();
        let subject = async_nats::Subject::from(depth_subject_for("A").unwrap_or_default());
        let level = |price: i64, size: i64| Level {
            price: Decimal::new(price, 0),
            size: Decimal::new(size, 0),
        };
        let bad = DepthRecord {
            bids: vec![level(100, 1), level(105, 2), level(105, -3), level(90, 0)],
            asks: vec![level(95, 1), level(80, 1)],
            ..depth_record("A", 5, 1, 0)
        };
        merger.conflate(&mut batch, &subject, &bad.encode());
        merger.apply_batch(&mut batch, |_| {});
        assert_eq!(merger.stats.malformed.load(Relaxed), 1);
        assert!(merger.hub.get("A").is_none(), "nothing was applied");
    }

    #[test]
    fn a_book_the_source_keeps_shallower_than_served_here_is_stale_not_served() {
        let merger = Merger::new(
            Arc::new(Hub::new(Arc::default()).with_max_book_depth(10)),
            10,
        );
        merger.apply_depth(depth_record("A", 5, 1, 150));
        assert_eq!(
            book(&merger, "A").map(|(seq, bids, _)| (seq, bids)),
            Some((1, 10))
        );

        let deeper = Merger::new(
            Arc::new(Hub::new(Arc::default()).with_max_book_depth(500)),
            10,
        );
        deeper.apply_depth(depth_record("A", 5, 1, 100));
        let depth = deeper.hub.get("A").map(|e| e.depth().current().is_none());
        assert_eq!(
            depth,
            Some(true),
            "100 levels of a 100-level cap: maybe more"
        );
        let status = deeper.hub.get("A").map(|e| e.depth().status());
        assert_eq!(status.as_ref().map(|s| s.state), Some(SymbolState::Stale));
        assert!(status.is_some_and(|s| s.reason.starts_with("cut short")));
        // A book thinner than the source's cap is whole, and served.
        deeper.apply_depth(depth_record("A", 5, 2, 40));
        let served = book(&deeper, "A").map(|(seq, bids, s)| (seq, bids, s.state));
        assert_eq!(served, Some((2, 40, SymbolState::Live)));
    }

    #[test]
    fn a_book_cut_short_stays_stale_when_its_version_comes_again_after_a_reconnect() {
        let deeper = Merger::new(
            Arc::new(Hub::new(Arc::default()).with_max_book_depth(500)),
            10,
        );
        deeper.apply_depth(depth_record("A", 5, 1, 40));
        deeper.apply_depth(depth_record("A", 5, 2, 100));
        deeper.source_down();
        deeper.apply_depth(depth_record("A", 5, 2, 100));
        deeper.source_up(true);
        let (seq, bids, status) = book(&deeper, "A").expect("seq 1 was served");
        assert_eq!((seq, bids, status.state), (1, 40, SymbolState::Stale));
        assert!(status.reason.starts_with("cut short"), "{}", status.reason);
        // Each record cut short is counted where a standalone server counts its own.
        let page = deeper.hub.metrics().render(1, None);
        assert!(
            page.contains("tickwire_depth_messages_total{outcome=\"cut_short\"} 2"),
            "{page}"
        );
    }

    #[test]
    fn a_gateway_vouches_for_the_deepest_depth_it_serves_not_its_raw_setting() {
        // 200 serves at most 100 levels: the ingest's 100 are enough.
        let merger = Merger::new(
            Arc::new(Hub::new(Arc::default()).with_max_book_depth(200)),
            10,
        );
        merger.apply_depth(depth_record("A", 5, 1, 150));
        let served = book(&merger, "A").map(|(seq, bids, s)| (seq, bids, s.state));
        assert_eq!(served, Some((1, 100, SymbolState::Live)));
    }

    #[test]
    fn a_restarted_ingest_without_a_book_yet_makes_the_old_one_stale() {
        let merger = merger(10);
        merger.apply_depth(depth_record("A", 5, 7, 10));
        let awaiting = SymbolStatus {
            generation: 0,
            state: SymbolState::Stale,
            reason: Arc::from(crate::fanout::depth::AWAITING_SNAPSHOT),
        };
        merger.apply_depth(DepthRecord::of_book(
            &Arc::from("A"),
            None,
            100,
            9,
            &awaiting,
        ));
        let (seq, _, status) = book(&merger, "A").expect("the old version is kept");
        assert_eq!(seq, 7);
        assert_eq!(
            (status.state, &*status.reason),
            (SymbolState::Stale, crate::fanout::depth::AWAITING_SNAPSHOT)
        );
        // The new ingest's first version counts on from the last one served.
        merger.apply_depth(depth_record("A", 9, 1, 10));
        let served = book(&merger, "A").map(|(seq, _, s)| (seq, s.state));
        assert_eq!(served, Some((8, SymbolState::Live)));
    }

    #[test]
    fn books_whose_last_values_were_not_read_again_stay_stale_until_their_next_record() {
        let merger = merger(10);
        merger.apply_depth(depth_record("A", 5, 1, 10));
        merger.apply_depth(depth_record("B", 5, 1, 10));
        merger.source_down();
        merger.source_up(false);
        let status = |s: &str| merger.hub.get(s).map(|e| e.depth().status());
        let a = status("A").map(|s| (s.state, s.reason.to_string()));
        assert_eq!(a, Some((SymbolState::Stale, UNCONFIRMED_REASON.to_owned())));
        merger.apply_depth(depth_record("A", 5, 2, 10));
        assert_eq!(status("A").map(|s| s.state), Some(SymbolState::Live));
        assert_eq!(status("B").map(|s| s.state), Some(SymbolState::Stale));
    }

    #[test]
    fn a_lost_source_makes_heard_books_stale_and_leaves_the_others_awaiting() {
        let merger = merger(10);
        merger.apply_depth(depth_record("A", 5, 1, 10));
        merger.apply(record("B", 5, 1, 100));
        merger.source_down();
        let reason = |s: &str| {
            merger
                .hub
                .get(s)
                .map(|e| e.depth().status().reason.to_string())
        };
        assert_eq!(reason("A").as_deref(), Some(DISCONNECTED_REASON));
        assert_eq!(
            reason("B").as_deref(),
            Some(crate::fanout::depth::AWAITING_SNAPSHOT)
        );
        merger.source_up(true);
        let state = merger.hub.get("A").map(|e| e.depth().status().state);
        assert_eq!(state, Some(SymbolState::Live));
        assert_eq!(
            reason("B").as_deref(),
            Some(crate::fanout::depth::AWAITING_SNAPSHOT)
        );
    }
}
