//! `tickwire bench`: the load client of the tail-latency harness.
//!
//! It opens many WebSocket connections to a server, subscribes each to some of
//! the given symbols, and times every ticker end to end (receive wall clock −
//! `ingest_ts_ns`, same host) into an HdrHistogram, while checking that `seq`
//! only grows and `skipped` matches each gap. Around the measurement window it
//! reads the server's `/metrics` and, with `--server-pid`, its CPU time and
//! memory from `/proc`, and reports deliveries per server CPU-second.
//!
//! - [`select`] decides who subscribes to what (uniform or Zipf, seeded);
//! - [`tally`] takes in one message at a time, with the clock passed in;
//! - [`load`] runs the sockets on current-thread runtimes on their own threads,
//!   healthy, slow and stalled readers alike;
//! - [`churn`] connects and disconnects at a constant rate during the window;
//! - [`probe`] reads `/metrics` and `/proc`; [`report`] prints and serializes,
//!   [`plot`] draws latency-by-percentile curves as SVG.

pub mod churn;
pub mod load;
pub mod plot;
pub mod probe;
pub mod report;
pub mod select;
pub mod sources;
pub mod tally;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use tokio::time::Instant;

use self::churn::{ChurnOutcome, ChurnReport};
use self::load::{Connected, LoadThread, Outcome, Phase, Reader, Target};
use self::probe::{HttpServer, MetricsPage, ProcSample};
use self::report::{
    AfterClose, ClientCpu, ConnectPhase, Connections, Percentiles, Report, ServerMetrics,
    ServerProcess, SlowReaders,
};
use self::tally::Clock;
use crate::client::{server_host_port, websocket_url};

/// Connections from one local address past which Linux's search for a
/// free port makes each `connect()` costly (see [`sources`]).
const ONE_ADDRESS_CONNECTIONS: usize = 10_000;

/// `tickwire bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server URL, e.g. ws://127.0.0.1:8080 (the /ws path is added if missing).
    /// `/metrics` is read from the same host and port.
    #[arg(default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Healthy WebSocket connections to open: they read everything at once.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Extra connections that read one message per --slow-interval.
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
    /// Seconds between two reads of a slow connection.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub slow_interval: f64,
    /// Extra connections that subscribe and then never read.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Connect-subscribe-disconnect cycles per second during the window, on
    /// top of the steady connections.
    #[arg(long, value_name = "PER_SEC")]
    pub churn: Option<f64>,
    /// Which timestamp latency is measured from: `ingest` (when the server took
    /// the update in) or `intended` (`exchange_ts_ns`, the update's slot on a
    /// synthetic feed's constant-rate schedule; corrects coordinated omission).
    #[arg(long, value_enum, default_value_t = Clock::Ingest)]
    pub clock: Clock,
    /// Comma-separated symbols to subscribe to, most popular first (for --zipf).
    #[arg(long, value_delimiter = ',', required = true)]
    pub symbols: Vec<String>,
    /// Symbols per connection, drawn from --symbols (default: all of them).
    #[arg(long)]
    pub per_connection: Option<usize>,
    /// Zipf exponent of symbol popularity for --per-connection (0: uniform).
    #[arg(long, default_value_t = 0.0)]
    pub zipf: f64,
    /// Seed for the symbol draw; the same seed gives the same subscriptions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Length of the measurement window in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds to run before the window opens (messages are checked, not timed).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// End the window early once no ticker arrived for this many seconds.
    #[arg(long, value_name = "SECS")]
    pub idle_exit: Option<f64>,
    /// Load threads, each a current-thread runtime with its share of connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds a connection may take to connect and subscribe.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Local addresses to connect from, taken in turn: comma-separated
    /// addresses or IPv4 ranges (`127.0.0.1-127.0.0.16`; on loopback all of
    /// 127.0.0.0/8 is local). Past ~14,000 connections from one address to
    /// one server, Linux spends more CPU finding each new one a port than
    /// the client spends on anything else. Default: the system picks.
    #[arg(long, value_delimiter = ',', value_parser = sources::parse_range, value_name = "ADDRESSES")]
    pub source_addresses: Vec<sources::AddressRange>,
    /// Trust the certificates in this PEM file for wss://, besides the public
    /// roots: a private CA, or a server's own self-signed certificate.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the client latency distribution here (HdrHistogram `.hgrm`, µs).
    #[arg(long, value_name = "PATH")]
    pub hgrm: Option<PathBuf>,
    /// Write the latency-by-percentile plot here (SVG).
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Name of this run in the plot and the JSON report.
    #[arg(long, default_value = "tickwire")]
    pub label: String,
    /// The server's process id, to report its CPU time and memory (Linux /proc).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Once every connection has closed, watch the server's RSS for up to
    /// this many seconds, until it stops falling, and report how much of
    /// what the connections took it still holds (with --server-pid).
    #[arg(long, value_name = "SECS", requires = "server_pid")]
    pub settle: Option<f64>,
}

/// Runs the benchmark and prints its report. Fails when nothing could connect,
/// or when the server broke the `seq`/`skipped` contract (after reporting).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let per_connection = args.per_connection.unwrap_or(args.symbols.len());
    validate(&args, per_connection)?;
    let url = websocket_url(&args.url);
    let tls = crate::client::tls_client_config(args.ca_file.as_deref())?;
    let http = http_server(&url, &tls)?;
    let total = args.connections + args.slow + args.stalled;
    if crate::server::raise_open_file_limit(total).is_some_and(|room| room.connections < total) {
        tracing::warn!("the open-file limit is too low for {total} connections; some will fail");
    }
    if args.source_addresses.is_empty() && total > ONE_ADDRESS_CONNECTIONS {
        tracing::warn!(
            "{total} connections from one local address: connecting slows down as its ports \
             fill; --source-addresses spreads them (on loopback: 127.0.0.1-127.0.0.16)"
        );
    }

    let plan = select::plan(&args.symbols, total, per_connection, args.zipf, args.seed);
    let slow = Reader::Slow(Duration::from_secs_f64(args.slow_interval));
    let readers = std::iter::repeat_n(Reader::Healthy, args.connections)
        .chain(std::iter::repeat_n(slow, args.slow))
        .chain(std::iter::repeat_n(Reader::Stalled, args.stalled));
    let control = Arc::new(load::Control::default());
    let mut threads = Vec::with_capacity(args.threads);
    let mut shares: Vec<Vec<(Reader, Vec<String>)>> = vec![Vec::new(); args.threads];
    for (i, connection) in readers.zip(plan).enumerate() {
        shares[i % args.threads].push(connection);
    }
    let sources = Arc::new(sources::SourceAddresses::new(&args.source_addresses));
    let target = Target {
        url: url.clone(),
        tls: tls.clone(),
        sources: sources.clone(),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        clock: args.clock,
    };
    let baseline = Probe::take(&http, args.server_pid, Edge::Opening).await;
    let connect_start = Instant::now();
    for (index, share) in shares.into_iter().enumerate() {
        let thread = load::spawn(index, target.clone(), share, control.clone())
            .context("cannot start a load thread")?;
        threads.push(thread);
    }

    let mut connected = Connected::default();
    for thread in &mut threads {
        match (&mut thread.connected).await {
            Ok(report) => connected.merge(report),
            Err(_) => connected.first_error = Some("a load thread failed to start".into()),
        }
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    if connected.connected == 0 {
        control.set_phase(Phase::Stop);
        let _ = join(threads).await;
        bail!(
            "no connection succeeded: {}",
            connected.first_error.unwrap_or_default()
        );
    }
    if let Some(error) = &connected.first_error {
        tracing::warn!(
            failed = connected.failed,
            "some connections failed: {error}"
        );
    }
    let churn = match args.churn {
        Some(rate) => {
            let symbols = select::plan(&args.symbols, 1, per_connection, args.zipf, args.seed)
                .pop()
                .unwrap_or_default();
            Some(churn::spawn(
                url.clone(),
                tls,
                sources,
                symbols,
                rate,
                control.clone(),
            )?)
        }
        None => None,
    };

    let progress: Vec<_> = threads.iter().map(|t| t.progress.clone()).collect();
    let open = || progress.iter().map(|p| p.open.load(Relaxed)).sum::<usize>();
    let tickers = || {
        progress
            .iter()
            .map(|p| p.tickers.load(Relaxed))
            .sum::<u64>()
    };

    let connected_probe = Probe::take(&http, args.server_pid, Edge::Closing).await;
    let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    while Instant::now() < warmup_end && open() > 0 {
        tokio::time::sleep_until(warmup_end.min(Instant::now() + POLL)).await;
    }

    let ticks_per_sec = probe::clock_ticks_per_second();
    let before = Probe::take(&http, args.server_pid, Edge::Opening).await;
    control.set_phase(Phase::Measure);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let idle_exit = args.idle_exit.map(Duration::from_secs_f64);
    let mut last_tickers = tickers();
    let mut last_change = start;
    let bar = progress_bar(args.duration);
    let (ended_by, window) = loop {
        tokio::time::sleep_until(end.min(Instant::now() + POLL)).await;
        let now = Instant::now();
        bar.set_position((now - start).as_millis() as u64);
        bar.set_message(format!("{} tickers", tickers()));
        if now >= end {
            break ("duration", now - start);
        }
        let seen = tickers();
        if seen != last_tickers {
            last_tickers = seen;
            last_change = now;
        }
        if idle_exit.is_some_and(|idle| now - last_change >= idle) {
            break ("idle", last_change - start);
        }
        if open() == 0 {
            break ("all_closed", now - start);
        }
    };
    bar.finish_and_clear();
    control.set_phase(Phase::Done);
    let after = Probe::take(&http, args.server_pid, Edge::Closing).await;
    let churn = match churn {
        Some(done) => Some(done.await.unwrap_or_default()),
        None => None,
    };
    control.set_phase(Phase::Stop);
    let outcome = join(threads).await?;
    let after_close = match (args.settle, args.server_pid) {
        (Some(limit), Some(pid)) => settle(pid, Duration::from_secs_f64(limit)).await,
        _ => None,
    };

    let window_secs = window.as_secs_f64();
    let report = build_report(Run {
        args: &args,
        url,
        per_connection,
        connected,
        outcome: &outcome,
        window_secs,
        ended_by,
        before: &before,
        after: &after,
        ticks_per_sec,
        connect: ConnectProbes {
            baseline: &baseline,
            connected: &connected_probe,
            secs: connect_secs,
        },
        churn: churn.as_ref(),
        after_close,
    });
    print!("{}", report::table(&report));
    if let Some(reason) = &outcome.first_close {
        tracing::warn!(
            connections = outcome.closed_early,
            "connections ended during the run, first: {reason}"
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, report::hgrm(&outcome.healthy.latency.delivered))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let curve = plot::Curve::of(&args.label, &outcome.healthy.latency.delivered);
        plot::write_svg(path, &format!("{} latency", args.clock.as_str()), &[curve])?;
    }
    let first_error = outcome
        .healthy
        .first_error
        .as_ref()
        .or(outcome.slow.first_error.as_ref());
    if let Some(error) = first_error {
        // Not even a snapshot: no subscription was accepted.
        let snapshots = outcome.healthy.tally.snapshots + outcome.slow.tally.snapshots;
        if report.delivered == 0 && snapshots == 0 {
            bail!("no ticker was delivered; the server answered with errors, first: {error}");
        }
        tracing::warn!("the server answered with errors, first: {error}");
    }
    if report.delivered == 0 {
        // Not an error: an idle feed is how handshakes and memory are
        // measured. But latency figures from no sample must not pass unseen.
        tracing::warn!(
            "no ticker arrived in the measurement window: there is no latency to report"
        );
    }
    if report.seq_violations > 0 {
        bail!(
            "the server broke the seq/skipped contract {} times ({} regressions, {} skipped mismatches)",
            report.seq_violations,
            outcome.healthy.tally.seq_regressions + outcome.slow.tally.seq_regressions,
            outcome.healthy.tally.skipped_mismatches + outcome.slow.tally.skipped_mismatches
        );
    }
    Ok(())
}

/// How often the coordinator looks at the load threads' progress.
const POLL: Duration = Duration::from_millis(50);

/// The server's memory counts as settled once it has not fallen by more than
/// [`RSS_NOISE`] for this long. A server may give memory back a while after
/// its clients left: tickwire looks once a second and trims once the count
/// of connections has stopped falling, so within about two seconds of the
/// last close.
const SETTLED_AFTER: Duration = Duration::from_secs(5);
const RSS_NOISE: u64 = 256 * 1024;

/// Watches the server's RSS until it has not fallen for [`SETTLED_AFTER`],
/// or for at most `limit`. `None` when `/proc` cannot tell it at all; the
/// share kept is left for the report, which knows the connect phase.
async fn settle(pid: u32, limit: Duration) -> Option<AfterClose> {
    let pid = pid.to_string();
    let read = || ProcSample::read(&pid).ok().and_then(|s| s.rss_bytes);
    let Some(first) = read() else {
        tracing::warn!("--settle: cannot read the server's RSS from /proc/{pid}/status");
        return None;
    };
    let start = Instant::now();
    let (mut rss, mut lowest, mut fell_at) = (first, first, start);
    while start.elapsed() < limit && fell_at.elapsed() < SETTLED_AFTER {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(now) = read() else {
            tracing::warn!("--settle: the server's RSS became unreadable; the last reading stands");
            break;
        };
        rss = now;
        if rss + RSS_NOISE < lowest {
            (lowest, fell_at) = (rss, Instant::now());
        }
    }
    Some(AfterClose {
        server_rss: rss,
        fell_secs: (fell_at - start).as_secs_f64(),
        watched_secs: start.elapsed().as_secs_f64(),
        settled: fell_at.elapsed() >= SETTLED_AFTER,
        share_kept: None,
    })
}

fn validate(args: &BenchArgs, per_connection: usize) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if args.symbols.iter().any(|s| s.is_empty()) {
        bail!("--symbols has an empty name");
    }
    if !(args.slow_interval > 0.0 && args.slow_interval < 1e9) {
        bail!("--slow-interval must be a positive number of seconds");
    }
    if args
        .churn
        .is_some_and(|rate| !(0.1..=1_000_000.0).contains(&rate))
    {
        bail!("--churn must be between 0.1 and 1,000,000 cycles per second");
    }
    let total = args
        .connections
        .checked_add(args.slow)
        .and_then(|n| n.checked_add(args.stalled))
        .context("--connections, --slow and --stalled add up to more than can be counted")?;
    if args.threads > total {
        bail!("--threads must be at most the {total} connections it shares them among");
    }
    if per_connection == 0 || per_connection > args.symbols.len() {
        bail!(
            "--per-connection must be between 1 and the {} symbols given",
            args.symbols.len()
        );
    }
    if !(args.zipf >= 0.0 && args.zipf.is_finite()) {
        bail!("--zipf must be a finite number ≥ 0");
    }
    for (flag, secs) in [
        ("--duration", Some(args.duration)),
        ("--warmup", Some(args.warmup)),
        ("--idle-exit", args.idle_exit),
        ("--connect-timeout", Some(args.connect_timeout)),
        ("--settle", args.settle),
    ] {
        if let Some(secs) = secs {
            if !(0.0..1e9).contains(&secs) {
                bail!("{flag} must be a number of seconds ≥ 0");
            }
        }
    }
    // No connection is made in no time: every one would fail.
    if args.connect_timeout == 0.0 {
        bail!("--connect-timeout must be more than 0 seconds");
    }
    Ok(())
}

/// Where the HTTP side of a `ws://` or `wss://` URL's server is (its
/// `/metrics`), TLS through `tls` for `wss://`.
fn http_server(ws_url: &str, tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<HttpServer> {
    let parsed = url::Url::parse(ws_url).with_context(|| format!("bad URL `{ws_url}`"))?;
    let tls = match parsed.scheme() {
        "ws" => None,
        "wss" => Some(tls.clone()),
        _ => bail!("expected a ws:// or wss:// URL, not `{ws_url}`"),
    };
    let (host, port) = server_host_port(&parsed).context("the URL has no host")?;
    Ok(HttpServer { host, port, tls })
}

/// The server and this process, read at one edge of the window.
struct Probe {
    metrics: Option<MetricsPage>,
    /// When the metrics were read: midway through the scrape, as the server
    /// read its counters at some point while answering.
    metrics_at: Instant,
    server: Option<ProcSample>,
    client: Option<ProcSample>,
    /// When both processes' `/proc` entries were read.
    proc_at: Instant,
}

/// Which side of the window a [`Probe`] is taken at: `/proc` is read right at
/// the window's edge and the metrics scrape, which can take seconds from a
/// busy server, outside it, so that the server's CPU is never counted over a
/// longer span than the deliveries it is divided into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge {
    Opening,
    Closing,
}

/// A scrape slower than this is reported: the server's rates then cover the
/// span between two slow answers, not exactly the window.
const SLOW_SCRAPE: Duration = Duration::from_secs(1);

impl Probe {
    async fn take(http: &HttpServer, server_pid: Option<u32>, edge: Edge) -> Self {
        let (metrics_at, metrics, proc_at, server, client);
        if edge == Edge::Closing {
            (proc_at, server, client) = Self::read_processes(server_pid);
            (metrics_at, metrics) = Self::scrape(http).await;
        } else {
            (metrics_at, metrics) = Self::scrape(http).await;
            (proc_at, server, client) = Self::read_processes(server_pid);
        }
        Self {
            metrics,
            metrics_at,
            server,
            client,
            proc_at,
        }
    }

    fn read_processes(
        server_pid: Option<u32>,
    ) -> (Instant, Option<ProcSample>, Option<ProcSample>) {
        let server = server_pid.and_then(|pid| match ProcSample::read(&pid.to_string()) {
            Ok(sample) => Some(sample),
            Err(error) => {
                tracing::warn!("cannot read the server process: {error:#}");
                None
            }
        });
        (Instant::now(), server, ProcSample::read("self").ok())
    }

    async fn scrape(server: &HttpServer) -> (Instant, Option<MetricsPage>) {
        let sent = Instant::now();
        let metrics = match probe::http_get(server, "/metrics").await {
            Ok(body) => Some(MetricsPage::parse(&String::from_utf8_lossy(&body))),
            Err(error) => {
                tracing::warn!("cannot read the server's metrics: {error:#}");
                None
            }
        };
        let took = sent.elapsed();
        if metrics.is_some() && took > SLOW_SCRAPE {
            tracing::warn!(
                "the server took {:.1} s to answer /metrics: its rates are over the span \
                 between two slow answers, not exactly the window",
                took.as_secs_f64()
            );
        }
        (sent + took / 2, metrics)
    }

    /// Seconds between this probe's `/proc` reads and `later`'s.
    fn proc_secs_to(&self, later: &Probe) -> f64 {
        (later.proc_at - self.proc_at).as_secs_f64()
    }

    /// Seconds between this probe's metrics and `later`'s.
    fn metrics_secs_to(&self, later: &Probe) -> f64 {
        (later.metrics_at - self.metrics_at).as_secs_f64()
    }
}

async fn join(threads: Vec<LoadThread>) -> anyhow::Result<Outcome> {
    let handles: Vec<_> = threads.into_iter().map(|t| t.handle).collect();
    tokio::task::spawn_blocking(move || {
        let mut total = Outcome::default();
        for handle in handles {
            match handle.join() {
                Ok(outcome) => total.merge(outcome?),
                Err(_) => bail!("a load thread panicked"),
            }
        }
        Ok(total)
    })
    .await
    .context("load threads")?
}

/// A progress bar over the window, on stderr (hidden when it is not a terminal).
fn progress_bar(duration_secs: f64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new((duration_secs * 1000.0) as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "measuring {wide_bar} {elapsed_precise}/{duration_precise} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The server as it was before anyone connected, and once everyone had.
struct ConnectProbes<'a> {
    baseline: &'a Probe,
    connected: &'a Probe,
    secs: f64,
}

/// The inputs of a report.
struct Run<'a> {
    args: &'a BenchArgs,
    url: String,
    per_connection: usize,
    connected: Connected,
    outcome: &'a Outcome,
    window_secs: f64,
    ended_by: &'static str,
    before: &'a Probe,
    after: &'a Probe,
    ticks_per_sec: u64,
    connect: ConnectProbes<'a>,
    churn: Option<&'a ChurnOutcome>,
    after_close: Option<AfterClose>,
}

fn build_report(run: Run<'_>) -> Report {
    let tally = run.outcome.healthy.tally;
    let delivered = tally.delivered;
    let rss = |probe: &Probe| probe.server.as_ref().and_then(|s| s.rss_bytes);
    let connect = ConnectPhase {
        secs: run.connect.secs,
        handshakes_per_sec: report::per_sec(run.connected.connected as f64, run.connect.secs),
        server_rss_before: rss(run.connect.baseline),
        server_rss_connected: rss(run.connect.connected),
        rss_per_connection: match (rss(run.connect.baseline), rss(run.connect.connected)) {
            (Some(before), Some(after)) if run.connected.connected > 0 => {
                Some(after.saturating_sub(before) as f64 / run.connected.connected as f64)
            }
            _ => None,
        },
    };
    let after_close = run.after_close.map(|after| AfterClose {
        share_kept: match (connect.server_rss_before, connect.server_rss_connected) {
            (Some(before), Some(connected)) if connected > before => {
                Some((after.server_rss as f64 - before as f64) / (connected - before) as f64)
            }
            _ => None,
        },
        ..after
    });
    let slow = (run.args.slow > 0).then(|| {
        let slow = &run.outcome.slow;
        SlowReaders {
            connections: run.args.slow,
            interval_secs: run.args.slow_interval,
            delivered: slow.tally.delivered,
            skipped: slow.tally.skipped,
            latency_us: Percentiles::of(&slow.latency.delivered),
            staleness_us: Percentiles::of(&slow.latency.staleness),
        }
    });
    let churn = run.churn.map(|churn| ChurnReport {
        target_per_sec: run.args.churn.unwrap_or_default(),
        completed_per_sec: report::per_sec(churn.completed as f64, run.window_secs),
        completed: churn.completed,
        failed: churn.failed,
        behind: churn.behind,
        handshake_us: Percentiles::of(&churn.handshake),
        subscribed_us: Percentiles::of(&churn.subscribed),
    });
    if let Some(error) = run.churn.and_then(|c| c.first_error.as_ref()) {
        tracing::warn!("a churn cycle failed: {error}");
    }
    let server_metrics = match (&run.before.metrics, &run.after.metrics) {
        (Some(before), Some(after)) => Some(ServerMetrics::between(
            before,
            after,
            run.before.metrics_secs_to(run.after),
        )),
        _ => None,
    };
    let proc_secs = run.before.proc_secs_to(run.after);
    let server_process = match (run.args.server_pid, &run.before.server, &run.after.server) {
        (Some(pid), Some(before), Some(after)) => Some(ServerProcess::between(
            pid,
            before,
            after,
            run.ticks_per_sec,
            proc_secs,
            delivered,
        )),
        _ => None,
    };
    let client_cpu_secs = match (&run.before.client, &run.after.client) {
        (Some(before), Some(after)) => Some(
            after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64
                / run.ticks_per_sec.max(1) as f64,
        ),
        _ => None,
    };
    let slow_tally = &run.outcome.slow.tally;
    let client_cpu = client_cpu_secs.map(|cpu_secs| ClientCpu {
        cpu_secs,
        cores: report::per_sec(cpu_secs, proc_secs),
        messages: tally.delivered
            + tally.window_snapshots
            + slow_tally.delivered
            + slow_tally.window_snapshots,
        churn_included: run.churn.is_some(),
    });
    Report {
        label: run.args.label.clone(),
        url: run.url,
        connections: Connections {
            requested: run.args.connections + run.args.slow + run.args.stalled,
            connected: run.connected.connected,
            failed: run.connected.failed,
            closed_early: run.outcome.closed_early,
        },
        threads: run.args.threads,
        symbols: run.args.symbols.len(),
        symbols_per_connection: run.per_connection,
        zipf: run.args.zipf,
        seed: run.args.seed,
        warmup_secs: run.args.warmup,
        window_secs: run.window_secs,
        ended_by: run.ended_by,
        delivered,
        delivered_per_sec: report::per_sec(delivered as f64, run.window_secs),
        skipped: tally.skipped,
        skipped_share: report::per_sec(
            tally.skipped as f64,
            delivered as f64 + tally.skipped as f64,
        ),
        seq_violations: tally.seq_violations() + run.outcome.slow.tally.seq_violations(),
        counts: tally,
        clock: run.args.clock,
        latency_us: Percentiles::of(&run.outcome.healthy.latency.delivered),
        version_latency_us: Percentiles::of(&run.outcome.healthy.latency.versions),
        staleness_us: Percentiles::of(&run.outcome.healthy.latency.staleness),
        staleness_floor_us: Percentiles::of(&run.outcome.staleness_floor),
        slow,
        stalled: run.args.stalled,
        connect,
        churn,
        after_close,
        server_metrics,
        server_process,
        client_cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_live_next_to_the_websocket() {
        let tls = crate::client::tls_client_config(None).expect("TLS");
        let at = |url: &str| {
            http_server(url, &tls)
                .ok()
                .map(|s| (s.host, s.port, s.tls.is_some()))
        };
        let server = |host: &str, port, tls| Some((host.to_owned(), port, tls));
        assert_eq!(
            at("ws://127.0.0.1:8080/ws"),
            server("127.0.0.1", 8080, false)
        );
        assert_eq!(at("ws://localhost/ws"), server("localhost", 80, false));
        assert_eq!(at("ws://[::1]:9/ws?x=1"), server("::1", 9, false));
        assert_eq!(at("wss://example.com/ws"), server("example.com", 443, true));
        assert_eq!(at("http://example.com/ws"), None);
        assert_eq!(at("not a url"), None);
    }

    /// `/proc` is read at the window's edge and the scrape, which a busy
    /// server may answer late, outside it: before the window opens, after it
    /// closes.
    #[tokio::test]
    async fn processes_are_read_at_the_edge_and_metrics_outside_the_window() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        // A server whose metrics take a while to come.
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0; 1024];
                let _ = stream.read(&mut request).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let body = "tickwire_messages_out_total 5\n";
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        let http = HttpServer {
            host: "127.0.0.1".into(),
            port,
            tls: None,
        };
        let pid = Some(std::process::id());
        let opening = Probe::take(&http, pid, Edge::Opening).await;
        assert!(opening.metrics.is_some() && opening.server.is_some());
        assert!(opening.metrics_at < opening.proc_at, "scraped, then read");
        let closing = Probe::take(&http, pid, Edge::Closing).await;
        assert!(closing.metrics.is_some() && closing.server.is_some());
        assert!(closing.proc_at < closing.metrics_at, "read, then scraped");
        // The slow answers are outside the span the CPU is counted over.
        assert!(opening.proc_secs_to(&closing) < opening.metrics_secs_to(&closing));
    }

    #[test]
    fn arguments_that_would_overflow_or_stall_are_refused() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let refused = |extra: &[&str]| {
            let mut argv = vec!["bench", "ws://127.0.0.1:1", "--symbols", "A"];
            argv.extend_from_slice(extra);
            let args = Cli::try_parse_from(argv).expect("parses").bench;
            validate(&args, 1).is_err()
        };
        assert!(!refused(&["--churn", "5"]));
        assert!(
            refused(&["--churn", "0.01"]),
            "a window's end unseen for 100 s"
        );
        assert!(refused(&["--churn", "1e-20"]));
        assert!(refused(&["--threads", "2", "--connections", "1"]));
        let huge = usize::MAX.to_string();
        assert!(refused(&["--connections", &huge, "--slow", "1"]));
        assert!(refused(&["--connect-timeout", "0"]));
        assert!(!refused(&["--connect-timeout", "0.5"]));
    }
}
