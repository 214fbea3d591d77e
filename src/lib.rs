//! tickwire: market-data ticker streaming.
//!
//! Quotes flow through one stage per module, each with a small surface:
//!
//! ```text
//!  feed ──► normalize ──► book ──► fanout ──► session ──► client socket
//!  (files,    (venue       (immutable  (symbol table,  (one task per
//!   pacing)    formats →    versioned   arc-swap,       WebSocket: requests,
//!              Tick)        snapshot)   conflation)     batched writes)
//! ```
//!
//! - [`feed`] reads recorded captures ([`feed::source`]), merges several files in
//!   receive-time order ([`feed::merge`]) and replays them at a chosen speed on
//!   its own thread ([`feed::replay`]); [`feed::config`] reads `feeds/*.toml`.
//! - [`normalize`] turns Binance, Tardis and tickwire's own NDJSON records into
//!   [`normalize::Tick`]s. It does no I/O.
//! - [`book`] applies a tick to a symbol's top of book, producing the next
//!   immutable [`book::Snapshot`], whose wire encoding is built once and shared.
//! - [`fanout`] holds every symbol's current snapshot behind `arc-swap` and tells
//!   subscribed sessions that something changed — never *what*, so a slow client
//!   conflates to the newest version instead of queueing.
//! - [`session`] runs one WebSocket client: protocol v1 requests ([`protocol`]),
//!   RFC 6455 framing ([`session::codec`]), and batched, bounded writes.
//! - [`server`] accepts connections, serves HTTP (`/healthz`, `/metrics`,
//!   `/api/...`) and upgrades `/ws` into sessions; it shuts down with 1001.
//! - [`metrics`] names every counter and keeps latency in HdrHistograms.
//! - [`client`] is the small WebSocket client behind `tickwire subscribe`, and
//!   [`cli`] the command line.
//! - [`bench`] is `tickwire bench`, the load client that measures end-to-end
//!   latency and server efficiency.

pub mod bench;
pub mod book;
pub mod cli;
pub mod client;
pub mod fanout;
pub mod feed;
pub mod metrics;
pub mod normalize;
pub mod protocol;
pub mod server;
pub mod session;

/// Wall-clock time as Unix-epoch nanoseconds (the protocol's timestamp unit).
pub fn wall_clock_ns() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
