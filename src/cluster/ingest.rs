//! Ingest: publishes every book version of the local [`Hub`] to NATS, top of
//! book and depth alike.
//!
//! The publisher subscribes to every symbol the way a session does (one
//! [`Slot`] per symbol and channel), so it reads each one's *current* version
//! when it drains. While NATS keeps up that is every version; when the NATS
//! client pushes back (a slow or absent server), versions conflate in the hub
//! instead of queueing here, and the next publish carries the newest book.
//! Status changes (a live feed going stale) are published as the same version
//! with the new status. After a reconnect the whole book is published again, so
//! the last-value stream and every gateway catch up with what was missed.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::wire::depth::{self, depth_subject_for, DepthRecord};
use super::wire::{subject_for, TickerRecord};
use super::{ClusterError, Link};
use crate::fanout::{Hub, Mailbox, Slot, SymbolEntry};
use crate::metrics::WarningLimiter;

/// How often the publisher looks for symbols declared since it last looked
/// (replays of files with many symbols declare them as they appear).
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(100);

/// How long shutdown waits for buffered records to reach NATS. With the
/// server gone they never will, and the process must still exit.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Least time between two warnings of records too large for the server: a
/// book that outgrew `max_payload` fails on every version.
const TOO_LARGE_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Marks a slot index as a symbol's depth channel rather than its ticker.
const DEPTH_SLOT: u32 = 1 << 31;

/// A running publisher.
#[derive(Debug)]
pub struct IngestHandle {
    /// This ingest's epoch: its start time in Unix nanoseconds.
    pub epoch: u64,
    task: JoinHandle<()>,
}

impl IngestHandle {
    /// Waits for the publisher to stop after `shutdown` was cancelled: it
    /// flushes what it buffered, or gives up after a grace period when NATS is
    /// unreachable.
    pub async fn stopped(mut self) {
        if tokio::time::timeout(FLUSH_GRACE * 2, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("NATS unreachable: records still buffered are dropped");
            self.task.abort();
        }
    }
}

/// Connects to NATS at `url`, makes sure the last-value stream exists, and
/// publishes `hub`'s book until `shutdown` is cancelled.
pub async fn spawn(
    hub: Arc<Hub>,
    url: &str,
    shutdown: CancellationToken,
) -> Result<IngestHandle, ClusterError> {
    let stats = hub.metrics().cluster.clone();
    stats.enable("ingest");
    let (client, link) = super::connect(url, "tickwire-ingest", &stats).await?;
    let max_payload = client.server_info().max_payload;
    if let Some(warning) = payload_warning(max_payload, hub.max_book_depth()) {
        tracing::warn!("{warning}");
    }
    super::ensure_streams(&async_nats::jetstream::new(client.clone())).await?;
    let epoch = u64::try_from(crate::wall_clock_ns()).unwrap_or(0);
    tracing::info!(epoch, "publishing the book to NATS at {url}");
    let publisher = Publisher {
        hub,
        client,
        epoch,
        mailbox: Arc::new(Mailbox::default()),
        symbols: Vec::new(),
        known: HashSet::new(),
        too_large: WarningLimiter::every(TOO_LARGE_WARNING_INTERVAL),
    };
    let task = tokio::spawn(publisher.run(link, shutdown));
    Ok(IngestHandle { epoch, task })
}

/// The warning due when the server's `max_payload` is below the largest
/// record a book kept at `depth` levels a side can take, if it is.
fn payload_warning(max_payload: usize, depth: usize) -> Option<String> {
    let largest = depth::max_encoded_len(depth);
    // 0: the server did not say.
    (max_payload > 0 && max_payload < largest).then(|| {
        format!(
            "the NATS server's max_payload is {max_payload} bytes, and a depth record of a \
             book {depth} levels deep can take up to {largest}: the server refuses any larger \
             than max_payload, and gateways never get those books (raise max_payload in \
             nats-server's configuration, or lower --max-book-depth)"
        )
    })
}

/// Per-symbol publishing state.
struct Published {
    entry: Arc<SymbolEntry>,
    ticker: Channel,
    depth: Channel,
}

/// Publishing state of one of a symbol's channels.
struct Channel {
    slot: Arc<Slot>,
    subject: Option<String>,
    /// (seq, status generation) of the last record published; `None` forces one.
    last: Option<(u64, u64)>,
}

impl Channel {
    /// Whether the version and status `key` names is still to be published;
    /// notes it as published if so.
    fn takes(&mut self, key: (u64, u64)) -> bool {
        if self.last == Some(key) {
            return false;
        }
        self.last = Some(key);
        true
    }
}

struct Publisher {
    hub: Arc<Hub>,
    client: async_nats::Client,
    epoch: u64,
    mailbox: Arc<Mailbox>,
    symbols: Vec<Published>,
    /// Warns of records refused for exceeding the server's `max_payload`.
    too_large: WarningLimiter,
    /// The names in `symbols`: discovery looks each served name up here
    /// instead of scanning `symbols`, which was quadratic in the symbols.
    known: HashSet<Arc<str>>,
}

impl Publisher {
    async fn run(mut self, mut link: watch::Receiver<Link>, shutdown: CancellationToken) {
        let mut ready = Vec::new();
        let mut connects = link.borrow().connects;
        let mut discovery = tokio::time::interval(DISCOVERY_INTERVAL);
        discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.mailbox.notified() => {}
                _ = discovery.tick() => self.discover().await,
                changed = link.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = *link.borrow_and_update();
                    if now.connected && now.connects != connects {
                        connects = now.connects;
                        self.republish_all().await;
                    }
                    continue;
                }
            }
            ready.clear();
            self.mailbox.take_ready(&mut ready);
            for &index in &ready {
                // A publish waits while the client's buffer is full (NATS away).
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.publish(index) => {}
                }
            }
        }
        // Whatever the client still buffers goes out before the process exits.
        let _ = tokio::time::timeout(FLUSH_GRACE, self.client.flush()).await;
    }

    /// Subscribes to symbols declared since the last look and publishes them.
    async fn discover(&mut self) {
        if self.hub.symbol_count() == self.symbols.len() {
            return;
        }
        for name in self.hub.symbol_names() {
            if self.known.contains(&name) {
                continue;
            }
            let Some(entry) = self.hub.get(&name) else {
                continue;
            };
            let Some(index) = u32::try_from(self.symbols.len())
                .ok()
                .filter(|&i| i < DEPTH_SLOT)
            else {
                return;
            };
            let ticker = Arc::new(Slot::new(self.mailbox.clone(), index));
            let depth = Arc::new(Slot::new(self.mailbox.clone(), index | DEPTH_SLOT));
            entry.subscribe(ticker.clone());
            entry.depth().subscribe(depth.clone());
            self.known.insert(name.clone());
            self.symbols.push(Published {
                ticker: Channel {
                    slot: ticker,
                    subject: subject_for(&name),
                    last: None,
                },
                depth: Channel {
                    slot: depth,
                    subject: depth_subject_for(&name),
                    last: None,
                },
                entry,
            });
            self.publish(index).await;
            self.publish(index | DEPTH_SLOT).await;
        }
    }

    async fn republish_all(&mut self) {
        // The server may have come back without its store: recreate the stream.
        let jetstream = async_nats::jetstream::new(self.client.clone());
        if let Err(e) = super::ensure_streams(&jetstream).await {
            tracing::warn!("after reconnect: {e}");
        }
        tracing::info!(
            symbols = self.symbols.len(),
            "publishing the whole book again"
        );
        for published in &mut self.symbols {
            published.ticker.last = None;
            published.depth.last = None;
        }
        // Indices are below DEPTH_SLOT: discovery stops short of it.
        for index in 0..self.symbols.len() as u32 {
            self.publish(index).await;
            self.publish(index | DEPTH_SLOT).await;
        }
    }

    /// Publishes the current version of the channel `slot` names (a symbol's
    /// ticker, or its depth with [`DEPTH_SLOT`]) unless it was already
    /// published.
    async fn publish(&mut self, slot: u32) {
        let Some(published) = self.symbols.get_mut((slot & !DEPTH_SLOT) as usize) else {
            return;
        };
        let entry = &published.entry;
        // The (seq, status generation) key is compared before a record is
        // built: a book's record copies and encodes hundreds of levels.
        let (channel, record) = if slot & DEPTH_SLOT == 0 {
            published.ticker.slot.clear();
            let status = entry.status();
            let current = entry.current();
            let key = (current.as_ref().map_or(0, |s| s.seq), status.generation);
            if !published.ticker.takes(key) {
                return;
            }
            let record = match current {
                Some(snapshot) => TickerRecord::of_snapshot(&snapshot, self.epoch, &status),
                None => TickerRecord::declared(entry.name().clone(), self.epoch, &status),
            };
            (&published.ticker, record.encode())
        } else {
            published.depth.slot.clear();
            // Published even before a first version: a restarted ingest's
            // records then tell gateways that its books await their snapshots.
            let depth = entry.depth();
            let status = depth.status();
            let version = depth.current();
            let key = (version.as_ref().map_or(0, |v| v.seq), status.generation);
            if !published.depth.takes(key) {
                return;
            }
            let levels = self.hub.max_book_depth();
            let record = DepthRecord::of_book(
                entry.name(),
                version.as_deref(),
                levels,
                self.epoch,
                &status,
            );
            (&published.depth, record.encode())
        };
        let Some(subject) = channel.subject.clone() else {
            return;
        };
        let stats = &self.hub.metrics().cluster;
        let size = record.len();
        match self.client.publish(subject, Bytes::from(record)).await {
            Ok(()) => {
                stats.published.fetch_add(1, Relaxed);
            }
            Err(e) if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                stats.publish_errors.fetch_add(1, Relaxed);
                // Not debug: this fails again on every version, and gateways
                // wait for the book forever. Rate-limited for the same reason.
                let client = &self.client;
                self.too_large.warn(|held_back| {
                    let max_payload = client.server_info().max_payload;
                    tracing::warn!(
                        symbol = %published.entry.name(),
                        refused = held_back + 1,
                        "a record of {size} bytes exceeds the NATS server's max_payload of \
                         {max_payload} bytes and was not published (counted in \
                         tickwire_cluster_publish_errors_total); raise max_payload in \
                         nats-server's configuration, or lower --max-book-depth"
                    );
                });
            }
            Err(e) => {
                stats.publish_errors.fetch_add(1, Relaxed);
                tracing::debug!(symbol = %published.entry.name(), error = %e, "publish failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_payload_below_the_largest_record_at_the_book_depth_is_warned_of() {
        let largest = depth::max_encoded_len(100);
        assert_eq!(payload_warning(1024 * 1024, 100), None, "the default 1 MB");
        assert_eq!(payload_warning(largest, 100), None);
        assert_eq!(payload_warning(0, 100), None, "not told");
        let warning = payload_warning(1024, 100).unwrap_or_default();
        assert!(
            warning.contains("max_payload is 1024 bytes")
                && warning.contains(&format!("up to {largest}")),
            "{warning}"
        );
        assert!(payload_warning(4096, 1).is_none(), "a one-level book fits");
    }
}
