//! Counters of the NATS link (`tickwire ingest` and `serve --source nats://`),
//! exported only by a process that has one.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use super::LatencyRecorder;

/// What an ingest or gateway counts about its NATS link.
#[derive(Debug, Default)]
pub struct ClusterStats {
    role: OnceLock<&'static str>,
    /// Whether the NATS connection is up.
    pub connected: AtomicBool,
    /// Connections to NATS after the first (each followed a loss).
    pub reconnects: AtomicU64,
    /// Records published (ingest).
    pub published: AtomicU64,
    /// Publishes the NATS client refused (ingest).
    pub publish_errors: AtomicU64,
    /// Records received from the subscription (gateway).
    pub received: AtomicU64,
    /// Records read from the last-value cache (gateway).
    pub loaded: AtomicU64,
    /// Records that could not be decoded or came on the wrong subject (gateway).
    pub malformed: AtomicU64,
    /// Records older, by (epoch, seq), than the version already held (gateway).
    pub outdated: AtomicU64,
    /// Records replaced by a newer one of the same symbol before reaching the
    /// fan-out (gateway).
    pub conflated: AtomicU64,
    /// Records for a new symbol dropped because the symbol limit was reached (gateway).
    pub symbols_refused: AtomicU64,
    /// Times the NATS client reported this process as a slow consumer.
    pub slow_consumer: AtomicU64,
    /// Failed reads of the last values after a reconnect (gateway).
    pub reload_failures: AtomicU64,
    /// Ingest → read off the subscription, per record served as a new version
    /// (gateway): what the NATS hop adds before the gateway's own fan-out.
    pub hop_latency: LatencyRecorder,
}

impl ClusterStats {
    /// Turns the export on, labelled `role` (`ingest` or `gateway`).
    pub fn enable(&self, role: &'static str) {
        let _ = self.role.set(role);
    }

    pub(super) fn render(&self, out: &mut String) {
        let Some(role) = self.role.get() else {
            return;
        };
        let families: [(&str, &str, &str, u64); 12] = [
            (
                "tickwire_cluster_connected",
                "1 while the NATS connection is up.",
                "gauge",
                u64::from(self.connected.load(Relaxed)),
            ),
            (
                "tickwire_cluster_reconnects_total",
                "NATS connections after a loss.",
                "counter",
                self.reconnects.load(Relaxed),
            ),
            (
                "tickwire_cluster_published_total",
                "Book versions published to NATS.",
                "counter",
                self.published.load(Relaxed),
            ),
            (
                "tickwire_cluster_publish_errors_total",
                "Book versions the NATS client could not publish.",
                "counter",
                self.publish_errors.load(Relaxed),
            ),
            (
                "tickwire_cluster_received_total",
                "Book versions received from NATS.",
                "counter",
                self.received.load(Relaxed),
            ),
            (
                "tickwire_cluster_loaded_total",
                "Book versions read from the last-value stream.",
                "counter",
                self.loaded.load(Relaxed),
            ),
            (
                "tickwire_cluster_malformed_total",
                "NATS messages dropped as undecodable or on the wrong subject.",
                "counter",
                self.malformed.load(Relaxed),
            ),
            (
                "tickwire_cluster_outdated_total",
                "Book versions dropped as older than the one held.",
                "counter",
                self.outdated.load(Relaxed),
            ),
            (
                "tickwire_cluster_conflated_total",
                "Book versions replaced by a newer one before the fan-out.",
                "counter",
                self.conflated.load(Relaxed),
            ),
            (
                "tickwire_cluster_symbols_refused_total",
                "Book versions of new symbols dropped at the symbol limit.",
                "counter",
                self.symbols_refused.load(Relaxed),
            ),
            (
                "tickwire_cluster_slow_consumer_total",
                "Times the NATS client dropped messages for this process.",
                "counter",
                self.slow_consumer.load(Relaxed),
            ),
            (
                "tickwire_cluster_reload_failures_total",
                "Failed reads of the last values after a reconnect.",
                "counter",
                self.reload_failures.load(Relaxed),
            ),
        ];
        for (name, help, kind, value) in families {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{role=\"{role}\"}} {value}"
            );
        }
        let name = "tickwire_cluster_hop_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Ingest to received from NATS, per record served as a new version.\n# TYPE {name} summary"
        );
        self.hop_latency
            .summary()
            .render_series(out, name, &format!("role=\"{role}\""));
    }
}
