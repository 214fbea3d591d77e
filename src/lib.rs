//! tickwire: market-data ticker streaming.
//!
//! Quotes flow through one stage per module, each with a small surface:
//!
//! ```text
//!  feed ──► normalize ──► book ──► fanout ──► session ──► client socket
//!  (replay,   (venue       (immutable  (symbol table,  (one task per client:
//!   live,      formats →    versioned   arc-swap,       WebSocket or SSE,
//!   synthetic) Tick)        snapshot)   conflation)     batched writes)
//! ```
//!
//! - [`feed`] produces ticks: replays of recorded files ([`feed::source`] reads
//!   one, [`feed::merge`] merges several in receive-time order, [`feed::replay`]
//!   paces them on its own thread, folding what it reads together when it is
//!   behind); live exchange upstreams over `ws://`/`wss://`
//!   with reconnects and staleness ([`feed::live`]), which [`feed::record`] can
//!   write to a replay file; and a seeded random-walk load ([`feed::synthetic`]).
//!   [`feed::config`] reads `feeds/*.toml`. Every file an operator names is
//!   opened through [`files`], which takes regular files only.
//! - [`normalize`] turns Binance, Coinbase, Tardis and tickwire's own NDJSON
//!   messages into [`normalize::Tick`]s. It does no I/O.
//! - [`book`] applies a tick to a symbol's top of book, producing the next
//!   immutable [`book::Snapshot`], whose wire encoding is built once and shared.
//!   [`book::depth`] keeps a full L2 book in sync with a venue's snapshots and
//!   diffs ([`normalize::depth`]) and publishes its best levels as
//!   [`book::depth::DepthSnapshot`]s, served on the `book` channel
//!   ([`fanout::depth`], [`session::book`], [`protocol::book`]).
//! - [`fanout`] holds every symbol's current snapshot behind `arc-swap`, and its
//!   live/stale status, and tells subscribed sessions that something changed —
//!   never *what*, so a slow client conflates to the newest version instead of
//!   queueing.
//! - [`session`] serves one client: protocol v1 requests ([`protocol`]), the
//!   subscriptions and conflating drain shared by both transports
//!   ([`session::subscriptions`]), the bounded output buffer
//!   ([`session::outbox`]), RFC 6455 framing ([`session::codec`]), the
//!   Server-Sent Events fallback ([`session::sse`]), requests seen through the
//!   client's entitlements ([`session::entitled`]) and the plain or TLS socket
//!   ([`session::transport`]).
//! - [`server`] accepts connections (TLS with [`server::tls`]), serves HTTP
//!   (the dashboard, `/healthz`, `/metrics`, `/api/...`), admits or refuses
//!   clients, upgrades `/ws` into sessions (with one worker, HTTP and the
//!   upgrade run on a thread of their own: [`server::run_fronted`]), streams
//!   `/sse`, gives the memory of clients that left back to the system
//!   ([`server::memory`]), and shuts down with 1001.
//! - [`auth`] checks a client's credentials (JWTs, API keys) into a
//!   [`auth::Grant`]: the symbols it may see and its caps, which every data
//!   path filters by; [`limits`] keeps any one client or address from taking
//!   the server down (connections per IP, `Origin`, inbound message rate).
//! - [`cluster`] scales out on NATS: `tickwire ingest` publishes the book's
//!   versions, top of book and depth (the newest per symbol when a burst
//!   outruns it; [`cluster::ingest`], encoded by
//!   [`cluster::wire`]), and stateless gateways rebuild the book from NATS
//!   into their own fan-out ([`cluster::gateway`]), so sessions serve it
//!   unchanged on both channels.
//! - [`metrics`] names every counter and keeps latency in HdrHistograms.
//! - [`client`] is the small WebSocket client behind `tickwire subscribe`,
//!   [`bench`](mod@bench) the load generator behind `tickwire bench`, and [`cli`] the
//!   command line (`tickwire token` mints test tokens).

pub mod auth;
pub mod bench;
pub mod book;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod fanout;
pub mod feed;
pub mod files;
pub mod limits;
pub mod metrics;
pub mod normalize;
pub mod protocol;
pub mod server;
pub mod session;
#[cfg(target_os = "linux")]
mod sockopt;

/// Wall-clock time as Unix-epoch nanoseconds (the protocol's timestamp unit).
pub fn wall_clock_ns() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
