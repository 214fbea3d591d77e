//! Metrics: every counter the service exports, their names, and the Prometheus
//! text rendering. Hot paths batch their increments (a session adds its totals
//! once per socket write), so no shared cache line is touched per message.

mod cluster;
pub mod depth;
mod latency;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use cluster::ClusterStats;
pub use latency::{LatencyRecorder, LatencySummary};

/// The warning that goes with a counter whose event can repeat on every
/// message (a malformed line, a refused record): at most one per `interval`,
/// saying how many were held back since the last, while the counter takes
/// them all.
#[derive(Debug)]
pub struct WarningLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarningLimiter {
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Calls `emit` with the number held back since the last warning, unless
    /// the last was within the interval.
    pub fn warn(&mut self, emit: impl FnOnce(u64)) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < self.interval) {
            self.suppressed += 1;
            return;
        }
        emit(self.suppressed);
        self.suppressed = 0;
        self.last = Some(now);
    }
}

/// Where a feed is in its life; `tickwire_feed_state` exports the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    /// Connecting, or waiting to reconnect.
    Connecting = 0,
    /// Receiving data.
    Live = 1,
    /// Lost its upstream and waiting before the next attempt.
    Down = 2,
    /// A replay that has played everything.
    Ended = 3,
}

impl FeedState {
    /// The state's name in `/api/feeds`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::Connecting => "connecting",
            FeedState::Live => "live",
            FeedState::Down => "down",
            FeedState::Ended => "ended",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => FeedState::Live,
            2 => FeedState::Down,
            3 => FeedState::Ended,
            _ => FeedState::Connecting,
        }
    }
}

/// Counters for one feed (a replay, a live upstream or the synthetic feed).
#[derive(Debug)]
pub struct FeedStats {
    /// The feed's name, used as the `feed` label.
    pub name: String,
    /// `replay`, `binance`, `coinbase` or `synthetic`.
    pub kind: &'static str,
    state: std::sync::atomic::AtomicU8,
    /// Successful upstream connections.
    pub connects: AtomicU64,
    /// Connections after the first (each one followed a loss).
    pub reconnects: AtomicU64,
    /// Wall-clock time of the last message from the source (0: none yet).
    pub last_message_ns: AtomicI64,
    /// Venue timestamp → receive time, for live feeds.
    pub exchange_latency: LatencyRecorder,
    /// Messages read from the source (ticks, recognised and malformed alike).
    pub messages: AtomicU64,
    /// Quotes and trades read (a quote passed by because the symbol's book
    /// gives its top, see `book::TopRule`, counts too).
    pub ticks: AtomicU64,
    /// Well-formed messages the top of book does not use (depth diffs, snapshots).
    pub recognised: AtomicU64,
    /// Messages that could not be parsed and were skipped.
    pub malformed: AtomicU64,
    /// Times a replay started over (`--loop`).
    pub loops: AtomicU64,
    /// Depth snapshots a live feed fetched over REST, and requests for one
    /// that failed (refused, timed out, or not a snapshot).
    pub depth_snapshots: AtomicU64,
    pub depth_snapshot_failures: AtomicU64,
    /// Set once a replay without `--loop` has played every file.
    pub ended: AtomicBool,
}

impl FeedStats {
    fn new(name: &str, kind: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            state: std::sync::atomic::AtomicU8::new(FeedState::Connecting as u8),
            connects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_message_ns: AtomicI64::new(0),
            exchange_latency: LatencyRecorder::with_shards(1),
            messages: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            recognised: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            loops: AtomicU64::new(0),
            depth_snapshots: AtomicU64::new(0),
            depth_snapshot_failures: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> FeedState {
        FeedState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, state: FeedState) {
        self.state.store(state as u8, Relaxed);
    }

    /// Seconds since the last message, if there was one.
    pub fn last_message_age(&self, now_ns: i64) -> Option<f64> {
        let last = self.last_message_ns.load(Relaxed);
        (last > 0).then(|| (now_ns - last).max(0) as f64 / 1e9)
    }
}

/// Why a connection or handshake was refused or closed; the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    PingTimeout,
    Shutdown,
    ProtocolError,
    MessageTooBig,
    BinaryFrame,
    InvalidUtf8,
    Io,
    /// Kept flooding past the message rate limit (1008).
    RateLimited,
    /// The credential expired while connected (1008).
    CredentialsExpired,
    /// Held a connection without any subscription for too long (1008).
    IdleTimeout,
    /// An SSE client that took nothing for [`SSE_STALL_ROUNDS`](crate::session::sse::SSE_STALL_ROUNDS) ping rounds.
    Stalled,
}

impl CloseReason {
    const ALL: [CloseReason; 12] = [
        CloseReason::ClientClosed,
        CloseReason::PingTimeout,
        CloseReason::Shutdown,
        CloseReason::ProtocolError,
        CloseReason::MessageTooBig,
        CloseReason::BinaryFrame,
        CloseReason::InvalidUtf8,
        CloseReason::Io,
        CloseReason::RateLimited,
        CloseReason::CredentialsExpired,
        CloseReason::IdleTimeout,
        CloseReason::Stalled,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::BinaryFrame => "binary_frame",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::Io => "io_error",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::CredentialsExpired => "credentials_expired",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Stalled => "stalled",
        }
    }
}

/// Error codes sent to clients in `error` messages (protocol v1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnknownSymbol,
    NotEntitled,
    LimitExceeded,
    RateLimited,
    CredentialsExpired,
}

impl ErrorCode {
    const ALL: [ErrorCode; 6] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownSymbol,
        ErrorCode::NotEntitled,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::CredentialsExpired,
    ];

    /// The code as it appears on the wire and in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownSymbol => "unknown_symbol",
            ErrorCode::NotEntitled => "not_entitled",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::CredentialsExpired => "credentials_expired",
        }
    }
}

/// Handshakes refused before a session started; the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotWebSocket,
    ConnectionLimit,
    ShuttingDown,
    /// Missing or invalid credentials (401).
    Unauthorized,
    /// A browser `Origin` not on the allow-list (403).
    OriginNotAllowed,
    /// Too many connections from one address (429).
    PeerLimit,
    /// Too many connections from one address not yet handed to a WebSocket
    /// session (closed at accept, before any request is read).
    PeerHttpLimit,
    /// A query string that does not parse, or `/sse` without symbols (400).
    BadQuery,
    /// A WebSocket upgrade while the sessions' runtime is stalled (503).
    WorkerStalled,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::NotWebSocket,
        Refusal::ConnectionLimit,
        Refusal::ShuttingDown,
        Refusal::Unauthorized,
        Refusal::OriginNotAllowed,
        Refusal::PeerLimit,
        Refusal::PeerHttpLimit,
        Refusal::BadQuery,
        Refusal::WorkerStalled,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::NotWebSocket => "not_websocket",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Unauthorized => "unauthorized",
            Refusal::OriginNotAllowed => "origin_not_allowed",
            Refusal::PeerLimit => "peer_limit",
            Refusal::PeerHttpLimit => "peer_http_limit",
            Refusal::BadQuery => "bad_query",
            Refusal::WorkerStalled => "worker_stalled",
        }
    }
}

/// A `kB` line of `/proc/PID/status`, e.g. `VmRSS:     1234 kB`: the
/// server's own memory, and a measured server's for `tickwire bench`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The process-wide metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket sessions.
    pub connections: AtomicI64,
    /// The most sessions open at once since the memory watcher last took
    /// it (`server::memory`), which looks only once a second: a crowd that
    /// comes and goes in between is seen all the same.
    pub connections_high: AtomicI64,
    /// WebSocket sessions accepted since start.
    pub connections_total: AtomicU64,
    /// Active (connection, symbol) subscriptions.
    pub subscriptions: AtomicI64,
    /// Frames written to clients (data and control).
    pub messages_out: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_out: AtomicU64,
    /// Updates a client never saw, summed from the `skipped` it was sent:
    /// versions a newer one replaced, and the updates a replay running
    /// behind folded into one version (its `seq` counts them all).
    pub updates_conflated: AtomicU64,
    /// Times a session held updates back to gather them into one write.
    pub updates_held: AtomicU64,
    /// Bytes encoded but not yet written, summed over connections.
    pub write_buffered_bytes: AtomicI64,
    /// Text messages received from clients.
    pub messages_in: AtomicU64,
    /// Book versions published by all feeds.
    pub book_updates: AtomicU64,
    /// Times freed memory was given back to the system (`server::memory`).
    pub memory_trims: AtomicU64,
    /// By how much those times shrank the resident set.
    pub memory_released_bytes: AtomicU64,
    /// HTTP connections dropped because their client took none of a response
    /// for the stall bound (`server::stall`).
    pub http_stalled: AtomicU64,
    /// Connections the listening socket could not accept (out of file
    /// descriptors, say): nobody is answered while this grows.
    pub accept_errors: AtomicU64,
    /// TLS handshakes that failed or ran out of time.
    pub tls_handshake_failures: AtomicU64,
    /// Sockets closed unread to make room under the bound on those waiting
    /// for a request head (`server::waiting`): they had waited longest.
    pub http_waiting_evicted: AtomicU64,
    /// Sockets waiting for a request head now (`server::waiting`).
    pub http_waiting: AtomicI64,
    closes: [AtomicU64; CloseReason::ALL.len()],
    errors: [AtomicU64; ErrorCode::ALL.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
    feeds: Mutex<Vec<Arc<FeedStats>>>,
    /// Ingest → written to the client socket, per delivered update.
    pub delivery_latency: LatencyRecorder,
    /// Depth messages by what they did to their book.
    pub depth: depth::DepthMetrics,
    /// The NATS link of an ingest or gateway.
    pub cluster: Arc<ClusterStats>,
}

/// One admitted client, counted in `tickwire_connections` until dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    metrics: Arc<Metrics>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// Counts a new client unless `limit` are already open. Taken at the
    /// handshake, so concurrent handshakes cannot overshoot the limit.
    pub fn admit(self: &Arc<Self>, limit: usize) -> Option<ConnectionPermit> {
        let open = self.connections.fetch_add(1, Relaxed);
        if open >= i64::try_from(limit).unwrap_or(i64::MAX) {
            self.connections.fetch_sub(1, Relaxed);
            return None;
        }
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_high.fetch_max(open + 1, Relaxed);
        Some(ConnectionPermit {
            metrics: self.clone(),
        })
    }

    /// Registers a feed of `kind` and returns its counters.
    pub fn register_feed(&self, name: &str, kind: &'static str) -> Arc<FeedStats> {
        let stats = Arc::new(FeedStats::new(name, kind));
        self.lock_feeds().push(stats.clone());
        stats
    }

    /// Counters of every registered feed.
    pub fn feeds(&self) -> Vec<Arc<FeedStats>> {
        self.lock_feeds().clone()
    }

    fn lock_feeds(&self) -> std::sync::MutexGuard<'_, Vec<Arc<FeedStats>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count_close(&self, reason: CloseReason) {
        self.closes[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn count_error(&self, code: ErrorCode) {
        self.errors[code as usize].fetch_add(1, Relaxed);
    }

    pub fn count_refusal(&self, refusal: Refusal) {
        self.refusals[refusal as usize].fetch_add(1, Relaxed);
    }

    /// Renders everything in the Prometheus text exposition format;
    /// `workers` is how many threads run the sessions, when known.
    pub fn render(&self, symbols: usize, workers: Option<usize>) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "tickwire_connections",
            "Open WebSocket sessions.",
            self.connections.load(Relaxed),
        );
        gauge(
            "tickwire_subscriptions",
            "Active (connection, symbol) subscriptions.",
            self.subscriptions.load(Relaxed),
        );
        gauge(
            "tickwire_write_buffered_bytes",
            "Encoded bytes waiting to be written, summed over connections.",
            self.write_buffered_bytes.load(Relaxed),
        );
        gauge(
            "tickwire_http_waiting",
            "Sockets waiting for a request head now (a TLS handshake included), all addresses together; past the bound the one waiting longest is closed.",
            self.http_waiting.load(Relaxed),
        );
        gauge(
            "tickwire_symbols",
            "Symbols the server can serve.",
            symbols as i64,
        );
        if let Some(workers) = workers {
            gauge(
                "tickwire_runtime_workers",
                "Threads serving WebSocket sessions (--workers).",
                workers as i64,
            );
        }
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "tickwire_connections_total",
            "WebSocket sessions accepted.",
            self.connections_total.load(Relaxed),
        );
        counter(
            "tickwire_messages_out_total",
            "Frames written to clients.",
            self.messages_out.load(Relaxed),
        );
        counter(
            "tickwire_bytes_out_total",
            "Bytes written to client sockets.",
            self.bytes_out.load(Relaxed),
        );
        counter(
            "tickwire_updates_conflated_total",
            "Book updates a client did not receive (the skipped it was told of): versions replaced by a newer one before it was sent, and updates a replay behind its recording folded into one version.",
            self.updates_conflated.load(Relaxed),
        );
        counter(
            "tickwire_update_holds_total",
            "Times a client's updates were held back to leave in one write (see --coalesce-us).",
            self.updates_held.load(Relaxed),
        );
        counter(
            "tickwire_messages_in_total",
            "Text messages received from clients.",
            self.messages_in.load(Relaxed),
        );
        counter(
            "tickwire_book_updates_total",
            "Book versions published.",
            self.book_updates.load(Relaxed),
        );
        counter(
            "tickwire_memory_trims_total",
            "Times freed memory was given back to the system after clients left (--memory-trim-after).",
            self.memory_trims.load(Relaxed),
        );
        counter(
            "tickwire_memory_released_bytes_total",
            "By about how much those times shrank the server's resident memory.",
            self.memory_released_bytes.load(Relaxed),
        );
        counter(
            "tickwire_http_stalled_total",
            "HTTP connections dropped because their client took no byte of a response for ten ping rounds.",
            self.http_stalled.load(Relaxed),
        );
        counter(
            "tickwire_accept_errors_total",
            "Connections the listening socket failed to accept (e.g. out of file descriptors).",
            self.accept_errors.load(Relaxed),
        );
        counter(
            "tickwire_tls_handshakes_failed_total",
            "TLS handshakes that failed or did not finish within the handshake timeout.",
            self.tls_handshake_failures.load(Relaxed),
        );
        counter(
            "tickwire_http_waiting_evicted_total",
            "Sockets closed unread to make room, the most that may wait for a request head (a TLS handshake included) being reached: each had waited longest.",
            self.http_waiting_evicted.load(Relaxed),
        );
        labelled(
            &mut out,
            "tickwire_connections_closed_total",
            "Sessions ended, by reason.",
            "reason",
            CloseReason::ALL
                .iter()
                .map(|r| (r.label(), &self.closes[*r as usize])),
        );
        labelled(
            &mut out,
            "tickwire_client_errors_total",
            "Error messages sent to clients, by code.",
            "code",
            ErrorCode::ALL
                .iter()
                .map(|c| (c.as_str(), &self.errors[*c as usize])),
        );
        labelled(
            &mut out,
            "tickwire_handshakes_refused_total",
            "WebSocket, SSE and API requests refused, by reason.",
            "reason",
            Refusal::ALL
                .iter()
                .map(|r| (r.label(), &self.refusals[*r as usize])),
        );
        self.depth.render(&mut out);
        self.render_feeds(&mut out);
        self.cluster.render(&mut out);
        self.delivery_latency.summary().render(
            &mut out,
            "tickwire_delivery_latency_seconds",
            "Ingest to written-to-socket latency per delivered update.",
        );
        out
    }

    fn render_feeds(&self, out: &mut String) {
        let feeds = self.feeds();
        let families: [FeedFamily; 11] = [
            (
                "tickwire_feed_messages_total",
                "Messages read from the feed.",
                "counter",
                |f| f.messages.load(Relaxed),
            ),
            (
                "tickwire_feed_ticks_total",
                "Quotes and trades read from the feed.",
                "counter",
                |f| f.ticks.load(Relaxed),
            ),
            (
                "tickwire_feed_recognised_total",
                "Well-formed feed messages the top of book does not use.",
                "counter",
                |f| f.recognised.load(Relaxed),
            ),
            (
                "tickwire_feed_malformed_total",
                "Feed messages skipped as malformed.",
                "counter",
                |f| f.malformed.load(Relaxed),
            ),
            (
                "tickwire_feed_loops_total",
                "Times a looping replay started over.",
                "counter",
                |f| f.loops.load(Relaxed),
            ),
            (
                "tickwire_feed_ended",
                "1 once a non-looping replay has played all its input.",
                "gauge",
                |f| u64::from(f.ended.load(Relaxed)),
            ),
            (
                "tickwire_feed_state",
                "0 connecting, 1 live, 2 down (waiting to reconnect), 3 ended.",
                "gauge",
                |f| f.state() as u64,
            ),
            (
                "tickwire_feed_connects_total",
                "Successful upstream connections.",
                "counter",
                |f| f.connects.load(Relaxed),
            ),
            (
                "tickwire_feed_reconnects_total",
                "Upstream connections after a loss.",
                "counter",
                |f| f.reconnects.load(Relaxed),
            ),
            (
                "tickwire_feed_depth_snapshots_total",
                "Depth snapshots a live feed fetched over REST.",
                "counter",
                |f| f.depth_snapshots.load(Relaxed),
            ),
            (
                "tickwire_feed_depth_snapshot_failures_total",
                "Depth snapshot requests that failed (refused, timed out, or not a snapshot).",
                "counter",
                |f| f.depth_snapshot_failures.load(Relaxed),
            ),
        ];
        for (name, help, kind, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for feed in &feeds {
                let _ = writeln!(
                    out,
                    "{name}{{feed=\"{}\"}} {}",
                    escape_label(&feed.name),
                    value(feed)
                );
            }
        }
        let now = crate::wall_clock_ns();
        let name = "tickwire_feed_last_message_age_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Seconds since the feed's last message.\n# TYPE {name} gauge"
        );
        for feed in &feeds {
            if let Some(age) = feed.last_message_age(now) {
                let _ = writeln!(out, "{name}{{feed=\"{}\"}} {age}", escape_label(&feed.name));
            }
        }
        let name = "tickwire_feed_exchange_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Venue timestamp to receive time, live feeds.\n# TYPE {name} summary"
        );
        for feed in &feeds {
            let summary = feed.exchange_latency.summary();
            if summary.count > 0 {
                let labels = format!("feed=\"{}\"", escape_label(&feed.name));
                summary.render_series(out, name, &labels);
            }
        }
    }
}

/// A per-feed metric: name, help, type, and how to read it off a feed.
type FeedFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&FeedStats) -> u64,
);

fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, counter) in values {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{value}\"}} {}",
            counter.load(Relaxed)
        );
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_warning_says_how_many_it_held_back() {
        let hour = Duration::from_secs(3600);
        let mut limiter = WarningLimiter::every(hour);
        let mut emitted = Vec::new();
        for _ in 0..3 {
            limiter.warn(|held_back| emitted.push(held_back));
        }
        assert_eq!(emitted, [0], "one warning within the interval");
        // The interval has passed: the next one comes, with the two held back.
        limiter.last = Instant::now().checked_sub(hour);
        limiter.warn(|held_back| emitted.push(held_back));
        assert_eq!(emitted, [0, 2]);
    }
}
