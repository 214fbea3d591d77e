//! The command line: `tickwire serve`, `ingest`, `subscribe`, `record` and `bench`.

pub mod security;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::book::depth::DEFAULT_MAX_BOOK_LEVELS;
use crate::client::{self, SubscribeOptions};
use crate::cluster::gateway::{self, GatewayConfig};
use crate::cluster::ingest;
use crate::fanout::Hub;
use crate::feed::{self, config, replay};
use crate::metrics::Metrics;
use crate::server::{self, OpenFiles, ServerConfig};
use crate::session::SessionConfig;

/// Market-data ticker streaming over WebSocket.
///
/// With no command, runs `serve` (by default on the bundled sample, looping, at 1×).
#[derive(Debug, Parser)]
#[command(
    name = "tickwire",
    version,
    propagate_version = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Log filter, e.g. `info`, `debug`, `tickwire=debug` [default: RUST_LOG
    /// if set, else info]. The NATS client's own events are left out below
    /// `warn` unless the filter names `async_nats`: tickwire reports them
    /// itself, once each.
    #[arg(long, global = true, env = "TICKWIRE_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeCommand,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay feeds into the book and serve WebSocket clients and HTTP.
    Serve(ServeCommand),
    /// Connect to a server, subscribe, and print each message as a JSON line.
    Subscribe(SubscribeArgs),
    /// Record a live feed (binance or coinbase feed file) to a replay file.
    Record(RecordArgs),
    /// Load a server with many connections; report latency percentiles and efficiency.
    Bench(crate::bench::BenchArgs),
    /// Run feeds and the book, publish the book's versions to NATS, and serve
    /// clients and HTTP like `serve` (gateways: `serve --source nats://...`).
    Ingest(IngestArgs),
    /// Mint a signed token (JWT) for testing a server that requires one.
    Token(security::TokenArgs),
    /// Overlay the latency distributions of several bench runs in one SVG chart.
    Plot(PlotArgs),
}

/// `tickwire ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The NATS server to publish to, e.g. nats://127.0.0.1:4222 (several:
    /// comma-separated).
    #[arg(long, value_name = "URL")]
    pub nats: String,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `tickwire plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Runs to draw, as LABEL=PATH of a `tickwire bench --hgrm` file.
    #[arg(required = true, value_name = "LABEL=HGRM")]
    pub runs: Vec<String>,
    /// Where to write the SVG.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "latency by percentile")]
    pub title: String,
}

/// `tickwire serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for HTTP and WebSocket (`/ws`): IP:PORT, or HOST:PORT
    /// (`localhost:8080`), which listens on every address the name has
    /// (127.0.0.1 and ::1, say), all on the same port.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = listen_addresses)]
    pub listen: ListenAddresses,
    /// Threads serving connections and live and synthetic feeds (default: one
    /// per core); replays run on threads of their own. Fewer leave cores to
    /// whatever shares the machine, such as a load generator. One thread
    /// serves its tasks first come, first served; HTTP (accepting, TLS,
    /// handshakes, the API, SSE streams) then runs on a second thread of its
    /// own, busy while clients connect or use HTTP (SSE streams included),
    /// and the threads share one heap (see `server::memory`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// A file to replay, as PATH or PREFIX=PATH (`spot=f.gz` serves `spot:BTCUSDT`).
    /// Repeat to merge several files in receive-time order. Binance and
    /// Coinbase captures, Tardis CSVs and tickwire NDJSON, gzip or plain.
    #[arg(long, value_name = "[PREFIX=]PATH")]
    pub replay: Vec<String>,
    /// A feed file (`feeds/NAME.toml`); repeat to run several feeds at once.
    #[arg(long, value_name = "FILE")]
    pub feed: Vec<PathBuf>,
    /// Replay speed for --replay and the bundled sample: a factor (1, 10, 0.5)
    /// or `max` [default: 1]. A --feed file sets its own.
    #[arg(long)]
    pub speed: Option<replay::Speed>,
    /// Start the --replay files over when they end (the bundled sample always loops
    /// unless --once).
    #[arg(long = "loop")]
    pub looped: bool,
    /// Play the bundled sample once instead of looping.
    #[arg(long, conflicts_with = "looped")]
    pub once: bool,
    /// Shorten silences in a recording longer than this (milliseconds), for
    /// --replay and the bundled sample [default: 5000].
    #[arg(long)]
    pub max_gap_ms: Option<u64>,
    /// Most WebSocket and SSE connections at once.
    #[arg(long, default_value_t = ServerConfig::default().max_connections,
          value_parser = at_least_one)]
    pub max_connections: usize,
    /// Largest client message in bytes; larger ones close with 1009.
    #[arg(long, default_value_t = SessionConfig::default().max_message_bytes,
          value_parser = at_least_one)]
    pub max_message_bytes: usize,
    /// Most subscriptions per connection on each channel (`ticker`, `book`).
    #[arg(long, default_value_t = SessionConfig::default().max_subscriptions,
          value_parser = at_least_one)]
    pub max_subscriptions: usize,
    /// Deepest `book` subscription served, in levels per side: clients ask
    /// for 1, 5, 10, 25, 50, 100 or 500 levels, up to this (a value between
    /// two of them is taken down to the lower).
    #[arg(long, default_value_t = crate::book::depth::DEFAULT_MAX_BOOK_DEPTH,
          value_parser = at_least_one)]
    pub max_book_depth: usize,
    /// Seconds between server pings to a quiet client.
    #[arg(long, default_value_t = SessionConfig::default().ping_interval.as_secs(),
          value_parser = timeout_secs())]
    pub ping_interval_secs: u64,
    /// Seconds a client has to answer a ping before it is dropped.
    #[arg(long, default_value_t = SessionConfig::default().ping_timeout.as_secs(),
          value_parser = timeout_secs())]
    pub ping_timeout_secs: u64,
    /// Updates for a client that come within this many microseconds of its last
    /// write wait and leave together in one write (0: write each at once; at
    /// most 1,000,000).
    #[arg(long, default_value_t = SessionConfig::default().coalesce.as_micros() as u64,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub coalesce_us: u64,
    /// Give freed memory back to the system once this many connections have
    /// closed since the most were open and no more are closing (during a
    /// longer decline, every 10 s too; 0: never; glibc on Linux only).
    #[arg(long, default_value_t = ServerConfig::default().memory_trim_after,
          value_name = "CONNECTIONS")]
    pub memory_trim_after: usize,
    #[command(flatten)]
    pub security: Box<security::SecurityArgs>,
}

/// `tickwire serve`: what `ingest` shares, and the gateway's source.
#[derive(Debug, Args)]
pub struct ServeCommand {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// `tickwire serve --source`: an edge gateway.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Serve the book an ingest publishes on NATS (nats://HOST:PORT, several
    /// comma-separated) instead of running feeds: an edge gateway.
    #[arg(long, value_name = "nats://...",
          conflicts_with_all = ["replay", "feed", "speed", "looped", "once", "max_gap_ms"])]
    pub source: Option<String>,
    /// With --source: most symbols served; further ones are dropped and counted.
    #[arg(long, default_value_t = GatewayConfig::default().max_symbols, requires = "source",
          value_parser = at_least_one)]
    pub max_source_symbols: usize,
}

impl GatewayArgs {
    /// The gateway these arguments ask for, if any.
    fn config(&self) -> anyhow::Result<Option<GatewayConfig>> {
        let Some(source) = &self.source else {
            return Ok(None);
        };
        if !source
            .split(',')
            .all(|url| url.trim().starts_with("nats://"))
        {
            anyhow::bail!("--source {source}: expected nats://HOST:PORT");
        }
        Ok(Some(GatewayConfig {
            url: source.clone(),
            max_symbols: self.max_source_symbols,
            ..GatewayConfig::default()
        }))
    }
}

/// `tickwire subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Server URL, e.g. ws://127.0.0.1:8080 (the /ws path is added if missing).
    #[arg(default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Comma-separated symbols, e.g. spot:BTCUSDT,usdm:BTCUSDT.
    #[arg(long, value_delimiter = ',', required = true)]
    pub symbols: Vec<String>,
    /// Subscribe to the `book` channel (full depth) at this many levels per
    /// side (1, 5, 10, 25, 50, 100 or 500) instead of `ticker`.
    #[arg(long, value_name = "LEVELS", conflicts_with = "max_rate_hz")]
    pub depth: Option<usize>,
    /// Exit after this many ticker messages (book messages with --depth).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Ask for at most this many updates per second per symbol.
    #[arg(long, value_parser = positive_number)]
    pub max_rate_hz: Option<f64>,
    /// Trust the certificates in this PEM file for wss://, besides the public
    /// roots: a private CA, or a server's own self-signed certificate.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// `tickwire record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// A live feed file (`kind = "binance"` or `"coinbase"`).
    #[arg(long, value_name = "FILE")]
    pub feed: PathBuf,
    /// Where to write tickwire NDJSON, gzip-compressed (e.g. replay-data/btc.ndjson.gz).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_parser = positive_seconds)]
    pub duration: Option<Duration>,
    /// Start a new file (NAME-1..., NAME-2...) after this many MiB of uncompressed data.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rotate_mib: Option<u64>,
}

/// The longest timeout a flag takes, a week: deadlines are instants, and one
/// further away than an instant can hold would end the server.
const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// A timeout in seconds, from 1 to [`MAX_TIMEOUT_SECS`].
fn timeout_secs() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS)
}

/// What `--listen` names: one address, or every address of a host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddresses(Vec<SocketAddr>);

/// `--listen`: an address, or a host name and port resolved once at start.
/// A name resolves to each of its addresses once, in the resolver's order.
fn listen_addresses(text: &str) -> Result<ListenAddresses, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(address) = text.parse() {
        return Ok(ListenAddresses(vec![address]));
    }
    match text.to_socket_addrs() {
        Ok(resolved) => {
            let mut addresses: Vec<SocketAddr> = Vec::new();
            for address in resolved {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
            if addresses.is_empty() {
                return Err(format!("{text} resolves to no address"));
            }
            Ok(ListenAddresses(addresses))
        }
        Err(e) => Err(format!(
            "{e} (expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:8080)"
        )),
    }
}

/// `--max-connections`, or fewer when the open-file limit cannot hold that
/// many: past it clients would not even be accepted, while under the lower
/// limit they are refused with `503`. A warning when the setting was asked
/// for, a note when it is the default. With it, how many sockets may wait
/// for a request head at once (the default when the limit is unknown).
fn admitted_within_open_files(max_connections: usize) -> OpenFiles {
    let Some(files) = server::raise_open_file_limit(max_connections) else {
        return OpenFiles {
            connections: max_connections,
            waiting: ServerConfig::default().max_waiting,
        };
    };
    let room = files.connections;
    if room < max_connections {
        let message = "the open-file limit leaves room for fewer connections than \
                       --max-connections: the lower number is admitted (raise the \
                       limit, e.g. LimitNOFILE= or ulimit -n, for more)";
        if max_connections == ServerConfig::default().max_connections {
            tracing::info!(admitted = room, max_connections, "{message}");
        } else {
            tracing::warn!(admitted = room, max_connections, "{message}");
        }
    }
    files
}

/// Connections the kernel may hold completed but not yet accepted. The
/// standard library's 128 overflows when thousands of clients reconnect at
/// once (after a restart, say): the kernel then drops their handshakes and
/// each waits a second or more for its retransmission. The kernel caps this
/// at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds every address of `--listen`. With port 0 the first address picks
/// the port and the others take the same one, so one port serves them all.
/// An IPv6 socket is made IPv6-only, so `[::]` and `0.0.0.0` can both be bound.
fn bind_all(addresses: &ListenAddresses) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(addresses.0.len());
    for &requested in &addresses.0 {
        let mut address = requested;
        if let (0, Some(first)) = (address.port(), listeners.first()) {
            address.set_port(first.local_addr()?.port());
        }
        let listener = bind(address).with_context(|| format!("cannot listen on {address}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A count that must be at least 1 (a limit of 0 would refuse everything).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number above zero (a rate: `nan` or `inf` would read as no limit).
pub(crate) fn positive_number(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() && number > 0.0 => Ok(number),
        Ok(_) => Err(format!("{text} is not a positive number")),
        Err(e) => Err(e.to_string()),
    }
}

/// A positive number of seconds that a `Duration` holds (`1.5`, not `-1`,
/// `nan` or `1e30`).
fn positive_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{e}"))?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("{text} is not a positive number of seconds")),
    }
}

/// Parses the command line, runs the command, and maps errors to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log.as_deref());
    let workers = match &cli.command {
        None => cli.serve.serve.workers,
        Some(Command::Serve(args)) => args.serve.workers,
        Some(Command::Ingest(args)) => args.serve.workers,
        Some(_) => None,
    };
    if workers == Some(1) {
        // Before any thread starts: HTTP gets a thread of its own beside the
        // one worker, and the two should share one heap.
        server::memory::share_one_heap();
    }
    let runtime = match runtime_for(workers).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    let result = runtime.block_on(async {
        match command {
            Command::Serve(args) => match args.gateway.config() {
                Ok(source) => on_a_worker(serve_with(args.serve, source, None)).await,
                Err(e) => Err(e),
            },
            Command::Bench(args) => crate::bench::run(args).await,
            Command::Plot(args) => plot(args),
            Command::Subscribe(args) => {
                client::subscribe(SubscribeOptions {
                    url: args.url,
                    symbols: args.symbols,
                    book_depth: args.depth,
                    count: args.count,
                    max_rate_hz: args.max_rate_hz,
                    connect_timeout: Duration::from_secs(10),
                    ca_file: args.ca_file,
                })
                .await
            }
            Command::Record(args) => record(args).await,
            Command::Ingest(args) => {
                on_a_worker(serve_with(args.serve, None, Some(args.nats))).await
            }
            Command::Token(args) => security::token(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// A runtime with `workers` threads (default: tokio's, one per core). One
/// worker is a current-thread runtime, whose run queue is one FIFO list. A
/// multi-thread runtime's worker runs the task woken last next, queues 256
/// more locally and moves the oldest half of a longer queue to a shared one,
/// which it visits only every few dozen tasks: an update for a symbol with
/// 800 subscribers wakes 800 sessions at once, and on one worker those pushed
/// out waited behind the next updates' sessions, which doubled the server's
/// tail latency. A handshake's next step would no longer jump the queue
/// either, so on one worker HTTP runs on a thread of its own
/// ([`server::run_fronted`]). Several workers need the multi-thread runtime,
/// which steals work between them.
fn runtime_for(workers: Option<u16>) -> tokio::runtime::Builder {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(workers));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    }
}

/// Runs `serve` on one of the runtime's workers instead of the thread that
/// blocks on it (on a current-thread runtime, the two are one). The accept
/// loop then spawns each connection's task onto its own worker's queue; from
/// the blocking thread, every accepted connection cost a cross-thread wake-up
/// (an `eventfd` write and a `futex`) and ran the accept path on a core the
/// sessions and a co-located load client need.
async fn on_a_worker<F>(serving: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    match tokio::spawn(serving).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("the server task was cancelled: {e}")),
    }
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose
/// text the message already holds: many libraries' errors repeat their
/// source's text in their own.
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Logs to stderr through `filter` (`--log`), else `RUST_LOG`, else `info`.
fn init_tracing(filter: Option<&str>) {
    let mut filter = match filter {
        Some(filter) => filter.to_owned(),
        None => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
    };
    if !filter.contains("async_nats") {
        filter.push_str(",async_nats=warn");
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The feeds the arguments describe.
pub fn feeds(args: &ServeArgs) -> anyhow::Result<Vec<config::FeedConfig>> {
    // Flags that would do nothing are refused, not ignored: the user meant
    // something by them.
    let replay_flags = args.speed.is_some() || args.looped || args.max_gap_ms.is_some();
    if replay_flags && args.replay.is_empty() && !args.feed.is_empty() {
        anyhow::bail!(
            "--speed, --loop and --max-gap-ms are for --replay files and the bundled sample; \
             a --feed file sets its own `speed`, `loop` and `max_gap_ms`"
        );
    }
    if args.once && !(args.replay.is_empty() && args.feed.is_empty()) {
        anyhow::bail!("--once is for the bundled sample; --replay files play once unless --loop");
    }
    let speed = args.speed.unwrap_or(config::DEFAULT_SPEED);
    let max_gap = args
        .max_gap_ms
        .map_or(config::DEFAULT_MAX_GAP, Duration::from_millis);
    // The --feed files' feeds first, in their order: `serve` names the
    // file of a feed that fails to start by its position.
    let mut feeds = Vec::new();
    for path in &args.feed {
        feeds.push(config::load(path)?);
    }
    if !args.replay.is_empty() {
        let sources = args
            .replay
            .iter()
            .map(|arg| parse_replay_arg(arg))
            .collect();
        feeds.push(config::FeedConfig::Replay(replay::ReplayConfig {
            name: "replay".into(),
            sources,
            speed,
            looped: args.looped,
            max_gap,
            start_paused: false,
            max_book_levels: DEFAULT_MAX_BOOK_LEVELS,
        }));
    }
    // A feed's name labels its series in /metrics; two alike would make a
    // scrape that Prometheus refuses whole.
    let mut names = std::collections::HashSet::new();
    for feed in &feeds {
        if !names.insert(feed.name()) {
            anyhow::bail!(
                "two feeds are named `{}`: give each feed file its own `name`",
                feed.name()
            );
        }
    }
    if feeds.is_empty() {
        feeds.push(config::FeedConfig::Replay(replay::ReplayConfig {
            name: "bundled".into(),
            sources: feed::bundled_sample(),
            speed,
            looped: !args.once,
            max_gap,
            start_paused: false,
            max_book_levels: DEFAULT_MAX_BOOK_LEVELS,
        }));
    }
    // A book cut shorter than the deepest subscription cannot vouch for it
    // and goes stale; a venue's book may never grow that deep, so this is
    // only said, not refused.
    for (replay, served) in shallower_than_served(&feeds, args.max_book_depth) {
        tracing::warn!(
            feed = %replay.name,
            "the feed keeps {} levels a side (`max_book_levels`), fewer than the {served} that --max-book-depth serves: a book cut at that cap is stale",
            replay.max_book_levels,
        );
    }
    Ok(feeds)
}

/// The replay feeds whose books keep fewer levels than the deepest depth
/// served under `max_book_depth` (which the hub takes down to a depth
/// clients can ask for), with that depth.
fn shallower_than_served(
    feeds: &[config::FeedConfig],
    max_book_depth: usize,
) -> impl Iterator<Item = (&replay::ReplayConfig, usize)> {
    let served = crate::book::depth::deepest_served(max_book_depth);
    feeds.iter().filter_map(move |feed| match feed {
        config::FeedConfig::Replay(replay) if replay.max_book_levels < served => {
            Some((replay, served))
        }
        _ => None,
    })
}

/// `PREFIX=PATH` or `PATH`. A `=` inside a path (after a `/`) is part of the path.
fn parse_replay_arg(arg: &str) -> replay::ReplaySource {
    match arg.split_once('=') {
        Some((prefix, path)) if !prefix.is_empty() && !prefix.contains('/') => {
            replay::ReplaySource {
                prefix: Some(prefix.to_owned()),
                input: replay::ReplayInput::Path(path.into()),
            }
        }
        _ => replay::ReplaySource {
            prefix: None,
            input: replay::ReplayInput::Path(arg.into()),
        },
    }
}

/// `serve` (standalone, or a gateway when `source` is set), or `ingest` when
/// `publish_to` names a NATS server.
async fn serve_with(
    args: ServeArgs,
    source: Option<GatewayConfig>,
    publish_to: Option<String>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(metrics.clone()).with_max_book_depth(args.max_book_depth));
    let feeds_shutdown = CancellationToken::new();
    if let Some(config) = source {
        gateway::spawn(hub.clone(), config, feeds_shutdown.clone()).await?;
    } else {
        // `feeds` lists the --feed files' feeds first, in their order.
        let files = args.feed.iter().map(Some).chain(std::iter::repeat(None));
        for (feed, file) in feeds(&args)?.into_iter().zip(files) {
            let name = feed.name().to_owned();
            feed::spawn(hub.clone(), feed, feeds_shutdown.clone()).with_context(|| match file {
                Some(file) => format!("cannot start feed `{name}` of {}", file.display()),
                None => format!("cannot start feed `{name}`"),
            })?;
        }
    }
    let publisher = match &publish_to {
        Some(url) => Some(ingest::spawn(hub.clone(), url, feeds_shutdown.clone()).await?),
        None => None,
    };
    let files = admitted_within_open_files(args.max_connections);
    let listeners = bind_all(&args.listen)?;
    let mut config = ServerConfig {
        session: SessionConfig {
            max_message_bytes: args.max_message_bytes,
            max_subscriptions: args.max_subscriptions,
            ping_interval: Duration::from_secs(args.ping_interval_secs),
            ping_timeout: Duration::from_secs(args.ping_timeout_secs),
            coalesce: Duration::from_micros(args.coalesce_us),
            ..SessionConfig::default()
        },
        max_connections: files.connections,
        max_waiting: files.waiting,
        memory_trim_after: args.memory_trim_after,
        ..ServerConfig::default()
    };
    args.security.apply(&mut config)?;
    if config.auth.enabled() {
        tracing::info!("clients must present credentials");
    }
    let (ws, http) = match config.tls {
        Some(_) => ("wss", "https"),
        None => ("ws", "http"),
    };
    let shutdown = shutdown_signal();
    let symbols = hub.symbol_count();
    for listener in &listeners {
        let address = listener.local_addr()?;
        tracing::info!(
            "serving {symbols} symbol{}: {ws}://{address}/ws, {http}://{address}/metrics",
            if symbols == 1 { "" } else { "s" }
        );
    }
    // One current-thread worker runs woken tasks in order: handshakes get a
    // thread of their own rather than queue behind the streaming sessions.
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    if flavor == tokio::runtime::RuntimeFlavor::CurrentThread {
        server::run_fronted(listeners, hub, config, shutdown).await?;
    } else {
        server::run_on(listeners, hub, config, shutdown).await?;
    }
    feeds_shutdown.cancel();
    if let Some(publisher) = publisher {
        publisher.stopped().await;
    }
    let latency = metrics.delivery_latency.summary();
    tracing::info!("delivery latency (ingest → socket): {latency}");
    Ok(())
}

async fn record(args: RecordArgs) -> anyhow::Result<()> {
    use crate::feed::record::{self, Progress, RecordOptions};
    let config::FeedConfig::Live(feed) = config::load(&args.feed)? else {
        anyhow::bail!(
            "{}: record captures a live feed (kind = \"binance\" or \"coinbase\")",
            args.feed.display()
        );
    };
    let options = RecordOptions {
        out: args.out,
        duration: args.duration,
        rotate_bytes: args.rotate_mib.map(|mib| mib.saturating_mul(1 << 20)),
    };
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let signal = shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        on_signal.cancel();
    });
    let progress = Arc::new(Progress::default());
    let display = show_progress(progress.clone());
    let name = feed.name.clone();
    let summary = record::record(feed, options, progress, shutdown).await;
    display.abort();
    let summary = summary.with_context(|| format!("cannot record feed `{name}`"))?;
    let files: Vec<String> = summary
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    eprintln!(
        "recorded {} ticks and {} depth messages ({} bytes before compression) to {}",
        summary.ticks,
        summary.depth_messages,
        summary.bytes,
        files.join(", ")
    );
    if summary.ticks == 0 {
        // An upstream that was down, or sent only what the parser refused,
        // all along: the file is valid, but say so rather than pass quietly.
        tracing::warn!("the feed delivered no tick in all that time");
    }
    Ok(())
}

/// A progress line (ticks, bytes, rate) while recording, on terminals only.
fn show_progress(progress: Arc<crate::feed::record::Progress>) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::spawn(async move {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return;
        }
        let bar = indicatif::ProgressBar::new_spinner();
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let ticks = progress.ticks.load(Relaxed);
            let depth = progress.depth_messages.load(Relaxed);
            let bytes = progress.bytes.load(Relaxed);
            let rate = ticks as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "{ticks} ticks, {depth} depth messages, {:.1} MiB, {rate:.0} ticks/s (Ctrl-C to stop)",
                bytes as f64 / (1 << 20) as f64
            ));
            bar.tick();
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives after
/// the server has said where it listens, but before it first waits, must
/// still shut it down cleanly instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let installed =
            [SignalKind::interrupt(), SignalKind::terminate()].map(|kind| signal(kind).ok());
        async move {
            let [interrupt, terminate] = installed;
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn plot(args: PlotArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut curves = Vec::with_capacity(args.runs.len());
    for run in &args.runs {
        let (label, path) = run
            .split_once('=')
            .with_context(|| format!("`{run}`: expected LABEL=PATH"))?;
        // A percentile distribution is some hundred lines.
        let bytes = crate::files::read_capped(std::path::Path::new(path), 16 << 20)
            .with_context(|| format!("cannot read {path}"))?;
        let text = String::from_utf8(bytes).with_context(|| format!("{path} is not text"))?;
        let curve =
            crate::bench::plot::Curve::from_hgrm(label, &text).with_context(|| path.to_owned())?;
        curves.push(curve);
    }
    crate::bench::plot::write_svg(&args.out, &args.title, &curves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_is_a_current_thread_runtime_and_more_share_work() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |workers| {
            let runtime = runtime_for(Some(workers)).enable_all().build();
            runtime.map(|r| r.handle().runtime_flavor()).ok()
        };
        assert_eq!(flavor(1), Some(RuntimeFlavor::CurrentThread));
        assert_eq!(flavor(2), Some(RuntimeFlavor::MultiThread));
    }

    /// A SIGTERM that comes before anything waits for it (right after the
    /// server said where it listens) is caught, not the default kill, which
    /// would end this whole test process.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_signal_before_the_first_wait_still_shuts_down() {
        let shutdown = shutdown_signal();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), shutdown)
            .await
            .expect("the signal was caught");
    }

    #[test]
    fn limits_that_would_refuse_everything_or_mislead_are_refused_at_start() {
        use clap::Parser as _;
        let parses = |args: &[&str]| {
            let argv = ["tickwire", "serve"].iter().chain(args);
            Cli::try_parse_from(argv).is_ok()
        };
        assert!(parses(&["--max-book-depth", "7"]));
        assert!(parses(&["--max-book-depth", "20000"]));
        assert!(!parses(&["--max-book-depth", "0"]));
        for limit in [
            "--max-connections",
            "--max-subscriptions",
            "--max-message-bytes",
        ] {
            assert!(parses(&[limit, "1"]));
            assert!(!parses(&[limit, "0"]), "{limit} 0");
        }
        assert!(parses(&["--coalesce-us", "0"]));
        assert!(!parses(&["--coalesce-us", "99999999999"]));
        assert!(parses(&["--listen", "localhost:0"]));
        assert!(!parses(&["--listen", "localhost"]), "no port");
        // Settings that would be silently ignored or raised are refused.
        assert!(!parses(&["--message-burst", "0"]));
        assert!(!parses(&["--max-header-bytes", "8191"]));
        assert!(parses(&["--max-header-bytes", "8192"]));
        assert!(!parses(&[
            "--source",
            "nats://127.0.0.1:4222",
            "--speed",
            "10"
        ]));
        assert!(!parses(&["--source", "nats://127.0.0.1:4222", "--loop"]));
        assert!(!parses(&["--max-source-symbols", "5"]), "without --source");
        let source = ["--source", "nats://127.0.0.1:4222", "--max-source-symbols"];
        assert!(!parses(&[&source[..], &["0"]].concat()));
        assert!(!parses(&["--max-messages-per-sec", "nan"]));
        assert!(parses(&["--jwt-leeway-secs", "86400"]));
        assert!(!parses(&["--jwt-leeway-secs", "18446744073709551615"]));
        assert!(parses(&[
            "--source",
            "nats://127.0.0.1:4222",
            "--max-source-symbols",
            "5"
        ]));
        // An ingest runs feeds: it has no gateway's flags to offer.
        let ingest = |args: &[&str]| {
            let argv = ["tickwire", "ingest", "--nats", "nats://127.0.0.1:4222"];
            Cli::try_parse_from(argv.iter().chain(args)).is_ok()
        };
        assert!(ingest(&["--speed", "10"]));
        assert!(!ingest(&["--source", "nats://127.0.0.1:4222"]));
        assert!(!ingest(&["--max-source-symbols", "5"]));
        let subscribe = |count: &str| {
            let argv = ["tickwire", "subscribe", "--symbols", "X", "--count", count];
            Cli::try_parse_from(argv).is_ok()
        };
        assert!(subscribe("1") && !subscribe("0"));
        // A rate that serializes as `null` would ask for no cap at all.
        for rate in ["NaN", "inf", "0", "-1"] {
            let argv = [
                "tickwire",
                "subscribe",
                "--symbols",
                "X",
                "--max-rate-hz",
                rate,
            ];
            assert!(Cli::try_parse_from(argv).is_err(), "{rate}");
            let argv = [
                "tickwire",
                "token",
                "--secret-file",
                "s",
                "--max-rate-hz",
                rate,
            ];
            assert!(Cli::try_parse_from(argv).is_err(), "token {rate}");
        }
        // A token for no symbol, or one expired when minted, is refused.
        let token = |args: &[&str]| {
            let argv = ["tickwire", "token", "--secret-file", "s"];
            Cli::try_parse_from(argv.iter().chain(args)).is_ok()
        };
        assert!(token(&[
            "--symbols",
            "spot:*,usdm:BTCUSDT",
            "--ttl-secs",
            "1"
        ]));
        assert!(!token(&["--symbols", ""]));
        assert!(!token(&["--symbols", "spot:*,"]));
        assert!(!token(&["--symbols", "spot:*", "--ttl-secs", "0"]));
    }

    #[tokio::test]
    async fn a_name_with_several_addresses_is_served_on_all_of_them_on_one_port() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let both = ListenAddresses(vec![
            "127.0.0.1:0".parse().expect("address"),
            "[::1]:0".parse().expect("address"),
        ]);
        let listeners = bind_all(&both).expect("binds 127.0.0.1 and ::1");
        let bound: Vec<SocketAddr> = listeners
            .iter()
            .map(|listener| listener.local_addr().expect("local address"))
            .collect();
        assert_eq!(bound.len(), 2);
        assert_ne!(bound[0].port(), 0);
        assert_eq!(
            bound[0].port(),
            bound[1].port(),
            "one port for every address"
        );

        let hub = Arc::new(Hub::new(Arc::new(Metrics::default())));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::run_on(
            listeners,
            hub,
            ServerConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        // Twice round, so the listener looked at first has rotated.
        for address in bound.iter().chain(&bound) {
            let mut stream = tokio::net::TcpStream::connect(address)
                .await
                .expect("connects");
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("writes");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("reads");
            assert!(
                response.starts_with("HTTP/1.1 200"),
                "{address}: {response}"
            );
            assert!(response.ends_with("ok\n"), "{address}: {response}");
        }
        let _ = stop.send(());
        server.await.expect("joins").expect("stops cleanly");
    }

    #[test]
    fn a_host_name_listens_on_each_of_its_addresses_once() {
        let localhost = listen_addresses("localhost:8080").expect("resolves");
        assert!(!localhost.0.is_empty());
        let mut unique = localhost.0.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), localhost.0.len(), "no address twice");
        assert!(localhost
            .0
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
        assert_eq!(
            listen_addresses("[::1]:9").expect("parses"),
            ListenAddresses(vec!["[::1]:9".parse().expect("address")])
        );
    }

    #[test]
    fn a_feed_is_warned_about_only_when_it_is_shallower_than_what_is_served() {
        let replay = |max_book_levels| {
            config::FeedConfig::Replay(replay::ReplayConfig {
                name: format!("keeps {max_book_levels}"),
                sources: Vec::new(),
                speed: replay::Speed::Max,
                looped: false,
                max_gap: Duration::from_secs(1),
                start_paused: false,
                max_book_levels,
            })
        };
        let feeds = [replay(150), replay(50)];
        let warned = |max_book_depth| -> Vec<(String, usize)> {
            shallower_than_served(&feeds, max_book_depth)
                .map(|(replay, served)| (replay.name.clone(), served))
                .collect()
        };
        // 200 serves 100 levels: a feed keeping 150 is deep enough.
        assert_eq!(warned(200), [("keeps 50".to_owned(), 100)]);
        assert_eq!(warned(50), []);
        assert_eq!(warned(500).len(), 2);
    }

    #[test]
    fn replay_flags_that_a_feed_file_would_ignore_are_refused() {
        use clap::Parser as _;
        let feeds_of = |args: &[&str]| {
            let argv = ["tickwire", "serve"].iter().chain(args);
            match Cli::try_parse_from(argv).expect("parses").command {
                Some(Command::Serve(args)) => feeds(&args.serve).map(|feeds| feeds.len()),
                other => panic!("{other:?}"),
            }
        };
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/feeds/binance-sample.toml");
        let replay = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/replay-data/binance-usdm-btcusdt-20240808.gz"
        );
        for flags in [
            &["--speed", "max"][..],
            &["--loop"],
            &["--max-gap-ms", "10"],
        ] {
            let error = feeds_of(&[&["--feed", sample][..], flags].concat()).expect_err("refused");
            assert!(
                error.to_string().contains("sets its own"),
                "{flags:?}: {error}"
            );
            // With --replay files beside the feed file, the flags are theirs.
            let both = [&["--feed", sample, "--replay", replay][..], flags].concat();
            assert_eq!(feeds_of(&both).expect("accepted"), 2, "{flags:?}");
            assert_eq!(feeds_of(flags).expect("the bundled sample"), 1, "{flags:?}");
        }
        assert!(feeds_of(&["--once", "--replay", replay]).is_err());
        assert_eq!(feeds_of(&["--once"]).expect("the bundled sample"), 1);
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        /// An error that repeats its source's text, as many libraries' do.
        #[derive(Debug, thiserror::Error)]
        #[error("IO error: {0}")]
        struct Wrapper(#[source] std::io::Error);
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = anyhow::Error::new(Wrapper(refused())).context("cannot connect to ws://h/ws");
        assert_eq!(
            error_chain(&error),
            format!("cannot connect to ws://h/ws: IO error: {}", refused())
        );
        let plain = anyhow::Error::new(refused()).context("cannot read x");
        assert_eq!(error_chain(&plain), format!("cannot read x: {}", refused()));
    }
}
