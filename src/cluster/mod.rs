//! Cluster: scale-out on NATS. An [`ingest`] node runs the feeds and the book
//! and publishes every book version; stateless edge [`gateway`]s rebuild the
//! book from NATS and serve clients exactly as a standalone server does.
//!
//! ```text
//!  feeds ─► book ─► ingest ──core NATS──► gateway ─► fan-out ─► sessions
//!                     │   tickwire.v1.ticker.<S>      ▲
//!                     │   tickwire.v1.depth.<S>       │
//!                     └─► JetStream TICKWIRE_TICKERS ─┤ last value per subject,
//!                         JetStream TICKWIRE_DEPTH  ──┘ read on (re)connect
//!                         (max 1 message per subject)
//! ```
//!
//! Each record ([`wire`]) is a whole version: a top of book, or a book's best
//! levels per side. It is stamped with the ingest's epoch (its start time)
//! and the version's `seq`, so a gateway merges any mix of live messages and
//! cached last values by `(epoch, seq)` and the order they arrive in does not
//! matter. Depth has a stream of its own: its records are larger, and a
//! stream made before depth was carried keeps working unchanged.
//!
//! The streams are created with plain stream requests rather than as
//! key-value buckets, so they work with nats-server 2.9 (Debian's), whose
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

/// The JetStream stream holding the last ticker record of every symbol.
pub const STREAM_NAME: &str = "TICKWIRE_TICKERS";

/// The JetStream stream holding the last depth record of every symbol.
pub const DEPTH_STREAM_NAME: &str = "TICKWIRE_DEPTH";

/// A last-value stream: its name and the subjects it keeps.
#[derive(Clone, Copy, Debug)]
pub struct LastValues {
    pub stream: &'static str,
    /// Every record's subject: this prefix, then the symbol's token.
    pub prefix: &'static str,
    /// The filter matching them all.
    pub subjects: &'static str,
}

impl LastValues {
    /// The subject of `symbol`'s records, `None` for an empty symbol.
    pub fn subject_for(&self, symbol: &str) -> Option<String> {
        wire::subject_under(self.prefix, symbol)
    }
}

/// Top-of-book records.
pub const TICKERS: LastValues = LastValues {
    stream: STREAM_NAME,
    prefix: wire::SUBJECT_PREFIX,
    subjects: wire::SUBJECT_FILTER,
};

/// Depth records.
pub const DEPTH: LastValues = LastValues {
    stream: DEPTH_STREAM_NAME,
    prefix: wire::depth::DEPTH_SUBJECT_PREFIX,
    subjects: wire::depth::DEPTH_SUBJECT_FILTER,
};

/// Why the NATS link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {error}")]
    Connect {
        url: String,
        error: async_nats::ConnectError,
    },
    #[error("cannot create or open the JetStream stream {stream}: {error}")]
    Stream { stream: &'static str, error: String },
    #[error(
        "the JetStream stream {stream} exists with subjects {found:?}, none of which covers \
         {needed}, so it would store none of tickwire's records: delete the stream (it is \
         created again with the right settings) or edit it to add {needed} to its subjects"
    )]
    StreamSubjects {
        stream: &'static str,
        found: Vec<String>,
        needed: &'static str,
    },
    #[error("cannot read last values from {stream}: {error}")]
    LastValues { stream: &'static str, error: String },
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
            let mut lost = false;
            link.send_modify(|link| {
                lost = link.connected;
                link.connected = false;
            });
            stats.connected.store(false, Relaxed);
            match event {
                // Closed is the client shutting down, which only we do.
                async_nats::Event::Closed => tracing::info!("NATS connection closed"),
                _ if lost => tracing::warn!("NATS connection lost: {event}"),
                _ => tracing::debug!("NATS: {event}"),
            }
        }
        async_nats::Event::SlowConsumer(_) => {
            stats.slow_consumer.fetch_add(1, Relaxed);
            tracing::warn!("NATS: {event}");
        }
        // While the link is down every failed reconnect is an error event.
        other if !link.borrow().connected => tracing::debug!("NATS: {other}"),
        other => tracing::info!("NATS: {other}"),
    }
}

/// Opens a last-value stream, creating it if it does not exist yet: file
/// storage, one message per subject, so it holds each symbol's newest record.
/// A stream that already exists (made by hand, or by another tool) is
/// checked: subjects that miss ours are an error, settings that break the
/// one-last-value rule a warning.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    values: LastValues,
) -> Result<stream::Stream, ClusterError> {
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: values.stream.to_owned(),
            subjects: vec![values.subjects.to_owned()],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::Stream {
            stream: values.stream,
            error: e.to_string(),
        })?;
    for warning in check_existing(values, &stream.cached_info().config)? {
        tracing::warn!("the JetStream stream {}: {warning}", values.stream);
    }
    Ok(stream)
}

/// Compares a stream's settings with the ones [`ensure_stream`] creates it
/// with. `get_or_create_stream` opens an existing stream as it is, so
/// without this a stream over other subjects stores nothing of ours (and a
/// gateway's reader fails on it with NATS's own error), and one keeping every
/// message grows without bound. Returns what to warn of.
fn check_existing(
    values: LastValues,
    config: &stream::Config,
) -> Result<Vec<String>, ClusterError> {
    if !config
        .subjects
        .iter()
        .any(|subject| subject_covers(subject, values.subjects))
    {
        return Err(ClusterError::StreamSubjects {
            stream: values.stream,
            found: config.subjects.clone(),
            needed: values.subjects,
        });
    }
    let fix = "delete the stream to have it created again, or edit it";
    let mut warnings = Vec::new();
    match config.max_messages_per_subject {
        1 => {}
        n if n < 1 => warnings.push(format!(
            "keeps every message per subject (max_msgs_per_subject {n}, needed 1), so it \
             grows with every version published and gateways read through all of them; {fix}"
        )),
        n => warnings.push(format!(
            "keeps {n} messages per subject (max_msgs_per_subject, needed 1), so it holds \
             {n} versions of every symbol where one is read; {fix}"
        )),
    }
    if config.retention != stream::RetentionPolicy::Limits {
        warnings.push(format!(
            "retention is {:?}, not Limits: the server removes last values once consumed \
             or unwanted, and gateways that start later miss them; {fix}",
            config.retention
        ));
    }
    if !config.max_age.is_zero() {
        warnings.push(format!(
            "messages expire after {:?} (max_age): a quiet symbol's last value disappears \
             and gateways that start later lack it; {fix}",
            config.max_age
        ));
    }
    if config.max_messages > 0 || config.max_bytes > 0 {
        warnings.push(format!(
            "is capped at {} messages and {} bytes (max_msgs, max_bytes; -1 none): past \
             them the last values of quiet symbols are dropped; {fix}",
            config.max_messages, config.max_bytes
        ));
    }
    Ok(warnings)
}

/// Whether every subject `filter` matches is one `pattern` matches, both
/// NATS subjects with `*` (one token) and `>` (one or more trailing tokens).
fn subject_covers(pattern: &str, filter: &str) -> bool {
    let mut filter = filter.split('.');
    for token in pattern.split('.') {
        let Some(theirs) = filter.next() else {
            return false;
        };
        match token {
            ">" => return true,
            "*" if theirs != ">" => {}
            literal if literal == theirs && theirs != "*" && theirs != ">" => {}
            _ => return false,
        }
    }
    filter.next().is_none()
}

/// Opens (or creates) both last-value streams. Only the tickers' is
/// required: without the depth stream (JetStream limits or permissions, say)
/// depth still flows live, and a gateway that starts later lacks only the
/// last books until their next versions.
pub async fn ensure_streams(jetstream: &jetstream::Context) -> Result<(), ClusterError> {
    ensure_stream(jetstream, TICKERS).await?;
    if let Err(e) = ensure_stream(jetstream, DEPTH).await {
        tracing::warn!("{e}: books are published live only");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(subjects: &[&str], max_messages_per_subject: i64) -> stream::Config {
        stream::Config {
            name: STREAM_NAME.to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            max_messages_per_subject,
            ..Default::default()
        }
    }

    #[test]
    fn a_subject_covers_a_filter_only_if_it_matches_all_it_matches() {
        let ours = TICKERS.subjects;
        for pattern in [ours, ">", "tickwire.>", "tickwire.*.ticker.>", "*.v1.*.>"] {
            assert!(subject_covers(pattern, ours), "{pattern}");
        }
        // One token is not every subject `>` matches, and other prefixes none.
        for pattern in [
            "tickwire.v1.ticker.*",
            "tickwire.v1.ticker",
            "tickwire.v1.depth.>",
            "other.>",
            "tickwire.v1.ticker.spot.>",
            "",
        ] {
            assert!(!subject_covers(pattern, ours), "{pattern}");
        }
    }

    #[test]
    fn an_existing_stream_over_other_subjects_is_an_error_naming_what_it_needs() {
        let error = check_existing(TICKERS, &config(&["other.>"], 1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for part in [
            STREAM_NAME,
            "\"other.>\"",
            TICKERS.subjects,
            "delete the stream",
        ] {
            assert!(error.contains(part), "{part}: {error}");
        }
        let both = config(&["other.>", "tickwire.v1.>"], 1);
        assert_eq!(check_existing(TICKERS, &both).ok(), Some(vec![]));
    }

    #[test]
    fn an_existing_stream_that_keeps_more_than_the_last_value_is_warned_of() {
        let ours = TICKERS.subjects;
        let unlimited = check_existing(TICKERS, &config(&[ours], -1)).unwrap_or_default();
        assert_eq!(unlimited.len(), 1);
        assert!(
            unlimited[0].contains("max_msgs_per_subject -1"),
            "{unlimited:?}"
        );
        let expiring = stream::Config {
            max_age: Duration::from_secs(60),
            retention: stream::RetentionPolicy::Interest,
            ..config(&[ours], 5)
        };
        let warnings = check_existing(TICKERS, &expiring).unwrap_or_default();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
    }
}
