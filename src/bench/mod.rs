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
//! - [`load`] runs the sockets on current-thread runtimes on their own threads;
//! - [`probe`] reads `/metrics` and `/proc`; [`report`] prints and serializes.

pub mod load;
pub mod probe;
pub mod report;
pub mod select;
pub mod tally;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use tokio::time::Instant;

use self::load::{Connected, LoadThread, Outcome, Phase};
use self::probe::{MetricsPage, ProcSample};
use self::report::{Connections, Percentiles, Report, ServerMetrics, ServerProcess};
use crate::client::websocket_url;

/// `tickwire bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server URL, e.g. ws://127.0.0.1:8080 (the /ws path is added if missing).
    /// `/metrics` is read from the same host and port.
    #[arg(default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
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
    /// Also write the report as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the client latency distribution here (HdrHistogram `.hgrm`, µs).
    #[arg(long, value_name = "PATH")]
    pub hgrm: Option<PathBuf>,
    /// The server's process id, to report its CPU time and memory (Linux /proc).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

/// Runs the benchmark and prints its report. Fails when nothing could connect,
/// or when the server broke the `seq`/`skipped` contract (after reporting).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let per_connection = args.per_connection.unwrap_or(args.symbols.len());
    validate(&args, per_connection)?;
    let url = websocket_url(&args.url);
    let authority = authority(&url)?;
    raise_open_file_limit(args.connections);

    let plan = select::plan(
        &args.symbols,
        args.connections,
        per_connection,
        args.zipf,
        args.seed,
    );
    let control = Arc::new(load::Control::default());
    let mut threads = Vec::with_capacity(args.threads);
    let mut shares: Vec<Vec<Vec<String>>> = vec![Vec::new(); args.threads];
    for (i, symbols) in plan.into_iter().enumerate() {
        shares[i % args.threads].push(symbols);
    }
    let connect_timeout = Duration::from_secs_f64(args.connect_timeout);
    for (index, share) in shares.into_iter().enumerate() {
        let thread = load::spawn(index, url.clone(), share, control.clone(), connect_timeout)
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

    let progress: Vec<_> = threads.iter().map(|t| t.progress.clone()).collect();
    let open = || progress.iter().map(|p| p.open.load(Relaxed)).sum::<usize>();
    let tickers = || {
        progress
            .iter()
            .map(|p| p.tickers.load(Relaxed))
            .sum::<u64>()
    };

    let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    while Instant::now() < warmup_end && open() > 0 {
        tokio::time::sleep_until(warmup_end.min(Instant::now() + POLL)).await;
    }

    let ticks_per_sec = probe::clock_ticks_per_second();
    let before = Probe::take(&authority, args.server_pid).await;
    control.set_phase(Phase::Measure);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let idle_exit = args.idle_exit.map(Duration::from_secs_f64);
    let mut last_tickers = tickers();
    let mut last_change = start;
    let (ended_by, window) = loop {
        tokio::time::sleep_until(end.min(Instant::now() + POLL)).await;
        let now = Instant::now();
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
    control.set_phase(Phase::Done);
    let after = Probe::take(&authority, args.server_pid).await;
    control.set_phase(Phase::Stop);
    let outcome = join(threads).await?;

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
        std::fs::write(path, report::hgrm(&outcome.histogram))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.seq_violations > 0 {
        bail!(
            "the server broke the seq/skipped contract {} times ({} regressions, {} skipped mismatches)",
            report.seq_violations,
            outcome.tally.seq_regressions,
            outcome.tally.skipped_mismatches
        );
    }
    Ok(())
}

/// How often the coordinator looks at the load threads' progress.
const POLL: Duration = Duration::from_millis(50);

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
    ] {
        if let Some(secs) = secs {
            if !(0.0..1e9).contains(&secs) {
                bail!("{flag} must be a number of seconds ≥ 0");
            }
        }
    }
    Ok(())
}

/// `host:port` of a `ws://` URL, where `/metrics` is served too.
fn authority(ws_url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(ws_url).with_context(|| format!("bad URL `{ws_url}`"))?;
    if parsed.scheme() != "ws" {
        bail!("only ws:// URLs are supported, not `{ws_url}`");
    }
    let host = parsed.host_str().context("the URL has no host")?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok(format!("{host}:{port}"))
}

/// Each connection is a file descriptor: lift the soft limit to the hard one
/// when the default would not fit them.
fn raise_open_file_limit(connections: usize) {
    let needed = connections as u64 + 64;
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return;
    };
    if soft >= needed {
        return;
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit >= needed => {}
        Ok(limit) => tracing::warn!(
            limit,
            "open-file limit too low for {connections} connections; some will fail"
        ),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// The server and this process, read at one edge of the window.
struct Probe {
    metrics: Option<MetricsPage>,
    server: Option<ProcSample>,
    client: Option<ProcSample>,
}

impl Probe {
    async fn take(authority: &str, server_pid: Option<u32>) -> Self {
        let metrics = match probe::http_get(authority, "/metrics").await {
            Ok(body) => Some(MetricsPage::parse(&String::from_utf8_lossy(&body))),
            Err(error) => {
                tracing::warn!("cannot read the server's metrics: {error:#}");
                None
            }
        };
        let server = server_pid.and_then(|pid| match ProcSample::read(&pid.to_string()) {
            Ok(sample) => Some(sample),
            Err(error) => {
                tracing::warn!("cannot read the server process: {error:#}");
                None
            }
        });
        Self {
            metrics,
            server,
            client: ProcSample::read("self").ok(),
        }
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
}

fn build_report(run: Run<'_>) -> Report {
    let tally = run.outcome.tally;
    let delivered = tally.delivered;
    let server_metrics = match (&run.before.metrics, &run.after.metrics) {
        (Some(before), Some(after)) => Some(ServerMetrics::between(before, after, run.window_secs)),
        _ => None,
    };
    let server_process = match (run.args.server_pid, &run.before.server, &run.after.server) {
        (Some(pid), Some(before), Some(after)) => Some(ServerProcess::between(
            pid,
            before,
            after,
            run.ticks_per_sec,
            run.window_secs,
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
    Report {
        url: run.url,
        connections: Connections {
            requested: run.args.connections,
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
        skipped_share: report::per_sec(tally.skipped as f64, (delivered + tally.skipped) as f64),
        seq_violations: tally.seq_violations(),
        counts: tally,
        latency_us: Percentiles::of(&run.outcome.histogram),
        server_metrics,
        server_process,
        client_cpu_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_live_next_to_the_websocket() {
        let at = |url: &str| authority(url).ok();
        assert_eq!(
            at("ws://127.0.0.1:8080/ws").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(at("ws://localhost/ws").as_deref(), Some("localhost:80"));
        assert_eq!(at("ws://[::1]:9/ws?x=1").as_deref(), Some("[::1]:9"));
        assert_eq!(at("wss://example.com/ws"), None);
        assert_eq!(at("not a url"), None);
    }
}
