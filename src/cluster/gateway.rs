//! Gateway: an edge server with no feeds of its own. It rebuilds the book from
//! NATS into its local [`Hub`], whose sessions then serve it unchanged.
//!
//! Start-up subscribes first and only then reads the last-value stream, so no
//! version published in between is lost; both paths go through one
//! `Merger`, which keeps a version only if its `(epoch, seq)` is newer than
//! the one held. A new epoch (a restarted ingest) wins whatever its `seq`; the
//! served `seq` then continues from the last one served, so clients still see
//! it only increase.
//!
//! The subscription reader never blocks on the fan-out: it takes everything
//! the client has buffered, keeps only the newest record per symbol, and
//! applies that batch (bounded by the number of symbols, not by the message
//! rate), so the gateway never falls behind NATS and becomes a slow consumer.
//!
//! When the NATS connection drops, every symbol turns `stale` and keeps its
//! last value; after the reconnect the last values are read again and each
//! symbol takes the status its ingest last published (normally `live`).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::wire::{subject_for, TickerRecord, SUBJECT_FILTER};
use super::{ClusterError, Link};
use crate::fanout::{Hub, SymbolEntry, SymbolState};
use crate::metrics::ClusterStats;

/// The status reason while the NATS connection is down.
pub const DISCONNECTED_REASON: &str = "source disconnected";

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
    // Records carry the top of book only (see `wire`): no depth to serve.
    hub.stop_serving_depth();
    let (client, link) = super::connect(&config.url, "tickwire-gateway", &stats).await?;
    let subscription =
        client
            .subscribe(SUBJECT_FILTER)
            .await
            .map_err(|error| ClusterError::Subscribe {
                subject: SUBJECT_FILTER,
                error,
            })?;
    let merger = Arc::new(Merger {
        hub,
        stats,
        max_symbols: config.max_symbols,
        state: Mutex::new(MergeState {
            source_up: true,
            symbols: HashMap::new(),
        }),
    });
    let reader = tokio::spawn(read_subscription(
        subscription,
        merger.clone(),
        config.max_batch.max(1),
        shutdown.clone(),
    ));
    let loaded = match load_last_values(&client, &merger).await {
        Ok(loaded) => loaded,
        Err(e) => {
            reader.abort();
            return Err(e);
        }
    };
    tracing::info!(loaded, "last values loaded from {}", super::STREAM_NAME);
    let link = tokio::spawn(follow_link(client, link, merger, shutdown));
    Ok(GatewayHandle { reader, link })
}

/// Reads the subscription in conflated batches until shutdown.
async fn read_subscription(
    mut subscription: async_nats::Subscriber,
    merger: Arc<Merger>,
    max_batch: usize,
    shutdown: CancellationToken,
) {
    let mut batch: HashMap<Arc<str>, TickerRecord> = HashMap::new();
    let mut hop_samples = Vec::new();
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            message = subscription.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let mut taken = 1;
        merger.conflate(&mut batch, &first.subject, &first.payload);
        // Everything already buffered, without waiting for more.
        while taken < max_batch {
            let Some(Some(message)) = subscription.next().now_or_never() else {
                break;
            };
            taken += 1;
            merger.conflate(&mut batch, &message.subject, &message.payload);
        }
        merger.stats.received.fetch_add(taken as u64, Relaxed);
        let now = crate::wall_clock_ns();
        hop_samples.clear();
        for record in batch.drain().map(|(_, record)| record) {
            if record.seq > 0 {
                let hop = now.saturating_sub(record.ingest_ts_ns);
                hop_samples.push(u64::try_from(hop).unwrap_or(0));
            }
            merger.apply(record);
        }
        merger.stats.hop_latency.record_batch(0, &hop_samples);
    }
    let _ = subscription.unsubscribe().await;
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
        loop {
            match load_last_values(&client, &merger).await {
                Ok(loaded) => {
                    tracing::info!(loaded, "last values reloaded after reconnect");
                    merger.source_up();
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(attempt, "{e}");
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

/// Reads the newest record of every subject from the last-value stream.
/// Stops once the records present at the start are read: anything newer comes
/// through the subscription anyway.
async fn load_last_values(
    client: &async_nats::Client,
    merger: &Merger,
) -> Result<u64, ClusterError> {
    let failed = |e: &dyn std::fmt::Display| ClusterError::LastValues(e.to_string());
    let jetstream = async_nats::jetstream::new(client.clone());
    let stream = super::ensure_stream(&jetstream).await?;
    let mut consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::LastPerSubject,
            ack_policy: AckPolicy::None,
            filter_subject: SUBJECT_FILTER.to_owned(),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let present = consumer.info().await.map_err(|e| failed(&e))?.num_pending;
    let mut loaded = 0;
    let mut pending = present;
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
            let mut one = HashMap::with_capacity(1);
            merger.conflate(&mut one, &message.subject, &message.payload);
            for record in one.into_values() {
                merger.apply(record);
            }
        }
        if got == 0 {
            break;
        }
        loaded += got;
    }
    merger.stats.loaded.fetch_add(loaded, Relaxed);
    let consumer_name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&consumer_name).await;
    Ok(loaded)
}

/// What the gateway holds of one symbol.
struct Held {
    entry: Arc<SymbolEntry>,
    /// (epoch, seq) of the newest record applied.
    epoch: u64,
    seq: u64,
    /// `seq` last served to clients, and what the current epoch's seqs add to it.
    served_seq: u64,
    offset: u64,
    /// The status the ingest last published.
    state: SymbolState,
    reason: String,
}

struct MergeState {
    /// Whether the NATS connection is up and the last values were read.
    source_up: bool,
    symbols: HashMap<Arc<str>, Held>,
}

/// Applies records to the hub in `(epoch, seq)` order.
struct Merger {
    hub: Arc<Hub>,
    stats: Arc<ClusterStats>,
    max_symbols: usize,
    state: Mutex<MergeState>,
}

impl Merger {
    /// Decodes a message into `batch`, keeping the newer of two records of a
    /// symbol (the later one when equal: it may carry a new status).
    fn conflate(
        &self,
        batch: &mut HashMap<Arc<str>, TickerRecord>,
        subject: &async_nats::Subject,
        payload: &[u8],
    ) {
        let record = match TickerRecord::decode(payload) {
            Ok(record) => record,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Relaxed);
                tracing::debug!(%subject, error = %e, "undecodable record");
                return;
            }
        };
        if subject_for(&record.symbol).as_deref() != Some(subject.as_str()) {
            self.stats.malformed.fetch_add(1, Relaxed);
            tracing::debug!(%subject, symbol = %record.symbol, "record on the wrong subject");
            return;
        }
        match batch.get(&record.symbol) {
            Some(held) if (held.epoch, held.seq) > (record.epoch, record.seq) => {
                self.stats.conflated.fetch_add(1, Relaxed);
            }
            Some(_) => {
                self.stats.conflated.fetch_add(1, Relaxed);
                batch.insert(record.symbol.clone(), record);
            }
            None => {
                batch.insert(record.symbol.clone(), record);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MergeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `record` if it is newer than what is held, and takes its status.
    fn apply(&self, record: TickerRecord) {
        let mut state = self.lock();
        let source_up = state.source_up;
        if !state.symbols.contains_key(&record.symbol) {
            if state.symbols.len() >= self.max_symbols {
                self.stats.symbols_refused.fetch_add(1, Relaxed);
                return;
            }
            let entry = self.hub.declare(&record.symbol);
            state.symbols.insert(
                record.symbol.clone(),
                Held {
                    entry,
                    epoch: 0,
                    seq: 0,
                    served_seq: 0,
                    offset: 0,
                    state: SymbolState::Live,
                    reason: String::new(),
                },
            );
        }
        let Some(held) = state.symbols.get_mut(&record.symbol) else {
            return;
        };
        if (record.epoch, record.seq) < (held.epoch, held.seq) {
            self.stats.outdated.fetch_add(1, Relaxed);
            return;
        }
        let new_epoch = record.epoch != held.epoch;
        // A new epoch (a restarted ingest) counts on from what was served.
        let offset = if new_epoch {
            held.served_seq
        } else {
            held.offset
        };
        let Some(served_seq) = offset.checked_add(record.seq) else {
            // No seq this large comes from a real ingest; serving it would
            // wrap the client-visible seq around.
            self.stats.malformed.fetch_add(1, Relaxed);
            return;
        };
        if new_epoch {
            held.epoch = record.epoch;
            held.offset = offset;
        }
        if record.seq > 0 && (new_epoch || record.seq > held.seq) {
            let version = record.to_snapshot(held.entry.name(), served_seq);
            self.hub.publish_version(&held.entry, Arc::new(version));
            held.served_seq = served_seq;
        }
        held.seq = record.seq;
        held.state = record.state;
        held.reason = record.reason;
        if source_up {
            self.hub.set_status(&held.entry, held.state, &held.reason);
        } else {
            self.hub
                .set_status(&held.entry, SymbolState::Stale, DISCONNECTED_REASON);
        }
    }

    /// The connection dropped: every symbol keeps its value but turns stale.
    fn source_down(&self) {
        let mut state = self.lock();
        state.source_up = false;
        for held in state.symbols.values() {
            self.hub
                .set_status(&held.entry, SymbolState::Stale, DISCONNECTED_REASON);
        }
    }

    /// The connection is back and the last values are read: every symbol
    /// takes the status its ingest last published.
    fn source_up(&self) {
        let mut state = self.lock();
        state.source_up = true;
        for held in state.symbols.values() {
            self.hub.set_status(&held.entry, held.state, &held.reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Level;
    use crate::fanout::SymbolStatus;
    use rust_decimal::Decimal;

    fn merger(max_symbols: usize) -> Merger {
        let hub = Arc::new(Hub::new(Arc::default()));
        Merger {
            stats: hub.metrics().cluster.clone(),
            hub,
            max_symbols,
            state: Mutex::new(MergeState {
                source_up: true,
                symbols: HashMap::new(),
            }),
        }
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
        merger.source_up();
        assert_eq!(state("A").map(|s| s.state), Some(SymbolState::Live));
        assert_eq!(state("B").map(|s| s.state), Some(SymbolState::Live));
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
        let mut batch = HashMap::new();
        let subject = |s: &str| async_nats::Subject::from(subject_for(s).unwrap_or_default());
        merger.conflate(&mut batch, &subject("A"), &record("A", 5, 2, 200).encode());
        merger.conflate(&mut batch, &subject("A"), &record("A", 5, 1, 100).encode());
        merger.conflate(&mut batch, &subject("B"), &record("A", 5, 3, 300).encode());
        merger.conflate(&mut batch, &subject("A"), b"not a record");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.get("A").map(|r| r.seq), Some(2));
        assert_eq!(merger.stats.conflated.load(Relaxed), 1);
        assert_eq!(merger.stats.malformed.load(Relaxed), 2);
    }
}
