//! Cluster: scale-out on NATS. An [`ingest`] node runs the feeds and the book
//! and publishes every book version; stateless edge [`gateway`]s rebuild the
//! book from NATS and serve clients exactly as a standalone server does.
//!
//! ```text
//!  feeds ─► book ─► ingest ──core NATS──► gateway ─► fan-out ─► sessions
//!                     │   tickwire.v1.ticker.<S>      ▲
//!                     └─► JetStream TICKWIRE_TICKERS ─┘ last value per subject,
//!                         (max 1 message per subject)   read on (re)connect
//! ```
//!
//! Each record ([`wire`]) is a whole top of book, stamped with the ingest's
//! epoch (its start time) and the symbol's `seq`, so a gateway merges any mix
//! of live messages and cached last values by `(epoch, seq)` and the order they
//! arrive in does not matter.
//!
//! The stream is created with a plain stream request rather than as a
//! key-value bucket, so it works with nats-server 2.9 (Debian's), whose
//! replies the client's key-value helpers do not accept.

pub mod gateway;
pub mod ingest;
pub mod wire;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::watch;

use crate::metrics::ClusterStats;

/// The JetStream stream holding the last record of every symbol.
pub const STREAM_NAME: &str = "TICKWIRE_TICKERS";

/// Why the NATS link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {error}")]
    Connect {
        url: String,
        error: async_nats::ConnectError,
    },
    #[error("cannot create or open the JetStream stream {STREAM_NAME}: {0}")]
    Stream(String),
    #[error("cannot read last values from {STREAM_NAME}: {0}")]
    LastValues(String),
    #[error("cannot subscribe to {subject}: {error}")]
    Subscribe {
        subject: &'static str,
        error: async_nats::SubscribeError,
    },
}

/// The connection's state as the NATS client reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Whether the connection is up now.
    pub connected: bool,
    /// Connections made so far (1 after the first, +1 per reconnect).
    pub connects: u64,
}

/// Connects to `url` (one server, or several separated by commas) as `name`,
/// reconnecting forever after a loss. The returned watch follows the
/// connection's state.
pub async fn connect(
    url: &str,
    name: &str,
    stats: &Arc<ClusterStats>,
) -> Result<(async_nats::Client, watch::Receiver<Link>), ClusterError> {
    // The first connect happens inside `connect` below, before the event
    // callback reports it, so the state starts as connected once.
    let (link_tx, link_rx) = watch::channel(Link {
        connected: true,
        connects: 1,
    });
    let link_tx = Arc::new(link_tx);
    let callback_stats = stats.clone();
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        // Retry quickly at first: a restarted server is usually back within a second.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(attempts as u64).min(2_000))
        })
        .event_callback(move |event| {
            let link = link_tx.clone();
            let stats = callback_stats.clone();
            async move { on_event(&event, &link, &stats) }
        })
        .connect(url.split(',').map(str::trim).collect::<Vec<_>>())
        .await
        .map_err(|error| ClusterError::Connect {
            url: url.to_owned(),
            error,
        })?;
    stats.connected.store(true, Relaxed);
    Ok((client, link_rx))
}

fn on_event(event: &async_nats::Event, link: &watch::Sender<Link>, stats: &ClusterStats) {
    match event {
        async_nats::Event::Connected => {
            let mut reconnected = false;
            link.send_modify(|link| {
                if !link.connected {
                    link.connected = true;
                    link.connects += 1;
                    reconnected = true;
                }
            });
            if reconnected {
                stats.reconnects.fetch_add(1, Relaxed);
                tracing::info!("NATS connection restored");
            }
            stats.connected.store(true, Relaxed);
        }
        async_nats::Event::Disconnected | async_nats::Event::Closed => {
            link.send_modify(|link| link.connected = false);
            stats.connected.store(false, Relaxed);
            tracing::warn!("NATS connection lost: {event}");
        }
        async_nats::Event::SlowConsumer(_) => {
            stats.slow_consumer.fetch_add(1, Relaxed);
            tracing::warn!("NATS: {event}");
        }
        other => tracing::info!("NATS: {other}"),
    }
}

/// Opens the last-value stream, creating it if it does not exist yet: file
/// storage, one message per subject, so it holds each symbol's newest record.
pub async fn ensure_stream(jetstream: &jetstream::Context) -> Result<stream::Stream, ClusterError> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: STREAM_NAME.to_owned(),
            subjects: vec![wire::SUBJECT_FILTER.to_owned()],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::Stream(e.to_string()))
}
