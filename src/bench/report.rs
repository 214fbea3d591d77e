//! The numbers a run produces, as one serializable [`Report`], the human table
//! printed on stdout, and the `.hgrm` percentile distribution.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::churn::ChurnReport;
use super::probe::{MetricsPage, ProcSample};
use super::tally::{Clock, Tally};

/// Everything a run measured. `--json` writes this; the table shows the same.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `--label`: the run's name in comparisons and plots.
    pub label: String,
    pub url: String,
    pub connections: Connections,
    pub threads: usize,
    /// Symbols listed with `--symbols`.
    pub symbols: usize,
    pub symbols_per_connection: usize,
    /// Zipf exponent of symbol popularity (0: uniform).
    pub zipf: f64,
    pub seed: u64,
    pub warmup_secs: f64,
    /// Length of the measurement window (up to the last message when it ended idle).
    pub window_secs: f64,
    /// `duration`, `idle` or `all_closed`.
    pub ended_by: &'static str,
    /// Non-snapshot tickers received in the window; one latency sample each.
    pub delivered: u64,
    pub delivered_per_sec: f64,
    /// Versions conflation dropped for these clients in the window (sum of `skipped`).
    pub skipped: u64,
    /// `skipped / (delivered + skipped)`: the share of versions clients never saw.
    pub skipped_share: f64,
    /// `seq` regressions plus `skipped` mismatches over the whole run; must be 0.
    pub seq_violations: u64,
    /// Every counter, warm-up included where the field says so.
    pub counts: Tally,
    /// What latency is measured from (`ingest` or `intended`).
    pub clock: Clock,
    /// Healthy clients' receive time − the `clock` timestamp, in microseconds.
    pub latency_us: Percentiles,
    /// Per version, conflated ones included (an upper bound for those): how
    /// long until the client held it or a newer one. See `tally::Latency`.
    pub version_latency_us: Percentiles,
    /// Healthy clients, sampled every 100 ms of the window: for each symbol a
    /// connection holds, the age of the value it holds (now − the `clock`
    /// timestamp of that version).
    pub staleness_us: Percentiles,
    /// The same per symbol for the freshest value any reading connection held
    /// at that moment: the part of `staleness_us` that comes from how often
    /// the symbol changes rather than from delivery.
    pub staleness_floor_us: Percentiles,
    /// The slow readers, apart (`--slow`).
    pub slow: Option<SlowReaders>,
    /// Connections that never read (`--stalled`).
    pub stalled: usize,
    /// How connecting went, and what it cost the server.
    pub connect: ConnectPhase,
    /// Connection churn during the window (`--churn`).
    pub churn: Option<ChurnReport>,
    /// The server once every connection had closed (`--settle`).
    pub after_close: Option<AfterClose>,
    /// Deltas of the server's `/metrics` over the window; null if unreadable.
    pub server_metrics: Option<ServerMetrics>,
    /// The server process over the window (`--server-pid`).
    pub server_process: Option<ServerProcess>,
    /// This load client over the window; null if `/proc` was unreadable.
    pub client_cpu: Option<ClientCpu>,
}

/// What the load client itself cost: it shares the machine with the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ClientCpu {
    /// CPU seconds of every thread of this process over the window.
    pub cpu_secs: f64,
    /// `cpu_secs` per second of the window: cores kept busy.
    pub cores: f64,
    /// Tickers received in the window by healthy and slow readers, snapshots
    /// included: what `cpu_secs` is divided into for a cost per message.
    pub messages: u64,
    /// Whether `--churn` ran in the window: its handshakes are in `cpu_secs`
    /// too, so the cost per message is an upper bound.
    pub churn_included: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Connections {
    pub requested: usize,
    pub connected: usize,
    /// Handshakes that failed or timed out.
    pub failed: usize,
    /// Connections the server closed (or that broke) before the run ended.
    pub closed_early: usize,
}

/// Opening the steady connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ConnectPhase {
    /// From the first connect to the last subscription sent.
    pub secs: f64,
    pub handshakes_per_sec: f64,
    /// Server RSS before the first connection and once all were open.
    pub server_rss_before: Option<u64>,
    pub server_rss_connected: Option<u64>,
    /// Their difference per open connection, subscriptions included.
    pub rss_per_connection: Option<f64>,
}

/// The server's memory once every connection had closed and it stopped
/// falling: whether what the connections took was given back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct AfterClose {
    /// At the end of the watch.
    pub server_rss: u64,
    /// When it last fell, from the last close.
    pub fell_secs: f64,
    pub watched_secs: f64,
    /// Whether it had stopped falling before the watch (`--settle`) ran out.
    pub settled: bool,
    /// `(RSS now − before the first connect) ÷ (connected − before)`: the
    /// share of what connecting took that the server still holds (0: all
    /// given back; below 0 when it gave back more, above 1 when it grew).
    pub share_kept: Option<f64>,
}

/// What the slow readers got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SlowReaders {
    pub connections: usize,
    pub interval_secs: f64,
    pub delivered: u64,
    pub skipped: u64,
    pub latency_us: Percentiles,
    /// As [`Report::staleness_us`], for the slow readers.
    pub staleness_us: Percentiles,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Reads a nanosecond histogram.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Self {
            count: histogram.len(),
            p50: us(histogram.value_at_quantile(0.5)),
            p90: us(histogram.value_at_quantile(0.9)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            p9999: us(histogram.value_at_quantile(0.9999)),
            max: us(histogram.max()),
            mean: histogram.mean() / 1_000.0,
        }
    }
}

/// What the server's `/metrics` say happened in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ServerMetrics {
    /// `tickwire_book_updates_total` delta.
    pub book_updates: f64,
    pub book_updates_per_sec: f64,
    /// `tickwire_messages_out_total` delta (frames, control frames included).
    pub messages_out: f64,
    pub messages_out_per_sec: f64,
    /// `tickwire_updates_conflated_total` delta.
    pub updates_conflated: f64,
    /// `tickwire_delivery_latency_seconds` (ingest → written to the socket) at
    /// the end of the window, in µs. Cumulative since the server started, as exported.
    pub delivery_latency_us: ServerLatency,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ServerLatency {
    pub count: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl ServerMetrics {
    /// Deltas between two scrapes `secs` apart.
    pub fn between(before: &MetricsPage, after: &MetricsPage, secs: f64) -> Self {
        let delta = |name: &str| {
            let end = after.sum(name).unwrap_or(0.0);
            (end - before.sum(name).unwrap_or(0.0)).max(0.0)
        };
        const LATENCY: &str = "tickwire_delivery_latency_seconds";
        let quantile_us = |q: &str| {
            after
                .get(&format!("{LATENCY}{{quantile=\"{q}\"}}"))
                .map_or(0.0, |s| s * 1e6)
        };
        let book_updates = delta("tickwire_book_updates_total");
        let messages_out = delta("tickwire_messages_out_total");
        Self {
            book_updates,
            book_updates_per_sec: per_sec(book_updates, secs),
            messages_out,
            messages_out_per_sec: per_sec(messages_out, secs),
            updates_conflated: delta("tickwire_updates_conflated_total"),
            delivery_latency_us: ServerLatency {
                count: after.get(&format!("{LATENCY}_count")).unwrap_or(0.0),
                p50: quantile_us("0.5"),
                p90: quantile_us("0.9"),
                p99: quantile_us("0.99"),
                p999: quantile_us("0.999"),
                max: quantile_us("1"),
            },
        }
    }
}

/// The server process over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ServerProcess {
    pub pid: u32,
    pub cpu_secs: f64,
    /// `cpu_secs` per second between the two samples: cores kept busy.
    pub cpu_cores: f64,
    /// Delivered tickers (as counted by this client) per server CPU-second.
    pub deliveries_per_cpu_sec: f64,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

impl ServerProcess {
    /// The server between two samples `secs` apart, read at the window's
    /// edges, `delivered` tickers having arrived in between.
    pub fn between(
        pid: u32,
        before: &ProcSample,
        after: &ProcSample,
        ticks_per_sec: u64,
        secs: f64,
        delivered: u64,
    ) -> Self {
        let cpu_secs =
            after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks_per_sec.max(1) as f64;
        Self {
            pid,
            cpu_secs,
            cpu_cores: per_sec(cpu_secs, secs),
            deliveries_per_cpu_sec: per_sec(delivered as f64, cpu_secs),
            rss_bytes: after.rss_bytes,
            peak_rss_bytes: after.peak_rss_bytes,
        }
    }
}

/// `amount / secs`, 0 for an empty interval.
pub fn per_sec(amount: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        amount / secs
    } else {
        0.0
    }
}

/// The table printed on stdout.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.connections;
    let _ = writeln!(out, "tickwire bench  {}", report.url);
    let _ = writeln!(
        out,
        "connections   {} open of {} ({} failed, {} closed early), {} thread(s), {} of {} symbols each{}",
        c.connected,
        c.requested,
        c.failed,
        c.closed_early,
        report.threads,
        report.symbols_per_connection,
        report.symbols,
        if report.zipf > 0.0 && report.symbols_per_connection < report.symbols {
            format!(" (zipf {}, seed {})", report.zipf, report.seed)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "window        {:.2} s after {:.1} s warm-up (ended: {})",
        report.window_secs, report.warmup_secs, report.ended_by
    );
    let counts = &report.counts;
    let _ = writeln!(
        out,
        "delivered     {} msgs  {}/s  skipped {} ({:.1}% of versions)  seq violations {}{}",
        group(report.delivered),
        group(report.delivered_per_sec.round() as u64),
        group(report.skipped),
        report.skipped_share * 100.0,
        report.seq_violations,
        if counts.errors + counts.malformed + counts.clamped + counts.untimed > 0 {
            format!(
                "  errors {} malformed {} clamped {} untimed {}",
                counts.errors, counts.malformed, counts.clamped, counts.untimed
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "client e2e    {}  (from {})",
        percentiles(&report.latency_us),
        report.clock.as_str()
    );
    if report.skipped > 0 {
        let _ = writeln!(
            out,
            "per version   {}  (conflated versions: until replaced, upper bound)",
            percentiles(&report.version_latency_us)
        );
    }
    if report.staleness_us.count > 0 {
        let floor = &report.staleness_floor_us;
        let _ = writeln!(
            out,
            "staleness     {}  (age of each value held, sampled every 100 ms; the freshest held: p50 {} p99 {} µs)",
            percentiles(&report.staleness_us),
            us(floor.p50),
            us(floor.p99)
        );
    }
    if let Some(slow) = &report.slow {
        let _ = writeln!(
            out,
            "slow readers  {} reading every {} s: delivered {}  skipped {}  e2e {}; staleness p50 {} p99 {} µs",
            slow.connections,
            slow.interval_secs,
            group(slow.delivered),
            group(slow.skipped),
            percentiles(&slow.latency_us),
            us(slow.staleness_us.p50),
            us(slow.staleness_us.p99)
        );
    }
    if report.stalled > 0 {
        let _ = writeln!(
            out,
            "stalled       {} connections never read",
            report.stalled
        );
    }
    let k = &report.connect;
    let _ = writeln!(
        out,
        "connect       {:.2} s, {} handshakes/s; server RSS {} → {} ({} per connection)",
        k.secs,
        group(k.handshakes_per_sec.round() as u64),
        mib(k.server_rss_before),
        mib(k.server_rss_connected),
        k.rss_per_connection
            .map_or_else(|| "?".to_owned(), |b| format!("{:.1} KiB", b / 1024.0))
    );
    if let Some(churn) = &report.churn {
        let _ = writeln!(
            out,
            "churn         {}/s of {}/s target ({} failed, {} skipped behind)\n  handshake   {}\n  subscribed  {}",
            group(churn.completed_per_sec.round() as u64),
            group(churn.target_per_sec.round() as u64),
            churn.failed,
            churn.behind,
            percentiles(&churn.handshake_us),
            percentiles(&churn.subscribed_us)
        );
    }
    if let Some(after) = &report.after_close {
        let _ = writeln!(
            out,
            "after close   server RSS {} ({} of what connecting took still held); last fell {:.1} s after the close, {} after {:.1} s",
            mib(Some(after.server_rss)),
            after
                .share_kept
                .map_or_else(|| "?".to_owned(), |s| format!("{:.0}%", s * 100.0)),
            after.fell_secs,
            if after.settled { "steady" } else { "still falling" },
            after.watched_secs
        );
    }
    match &report.server_metrics {
        Some(m) => {
            let _ = writeln!(
                out,
                "server        book updates {}/s  frames out {}/s  conflated {}",
                group(m.book_updates_per_sec.round() as u64),
                group(m.messages_out_per_sec.round() as u64),
                group(m.updates_conflated as u64)
            );
            let s = &m.delivery_latency_us;
            let _ = writeln!(
                out,
                "server e2e    p50 {}  p90 {}  p99 {}  p99.9 {}  max {} µs  (ingest → socket, since start, n={})",
                us(s.p50),
                us(s.p90),
                us(s.p99),
                us(s.p999),
                us(s.max),
                group(s.count as u64)
            );
        }
        None => {
            let _ = writeln!(out, "server        /metrics not available");
        }
    }
    if let Some(p) = &report.server_process {
        let _ = writeln!(
            out,
            "server CPU    {:.2} s ({:.2} cores)  {} deliveries/CPU-s  RSS {} (peak {})",
            p.cpu_secs,
            p.cpu_cores,
            group(p.deliveries_per_cpu_sec.round() as u64),
            mib(p.rss_bytes),
            mib(p.peak_rss_bytes)
        );
    }
    if let Some(client) = &report.client_cpu {
        let per_message = per_sec(client.cpu_secs * 1e6, client.messages as f64);
        let _ = writeln!(
            out,
            "client CPU    {:.2} s ({:.2} cores, {per_message:.1} µs per message received{})",
            client.cpu_secs,
            client.cores,
            if client.churn_included {
                ", churn included"
            } else {
                ""
            }
        );
    }
    out
}

/// `p50 … max µs (n=…)`.
fn percentiles(l: &Percentiles) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {} µs  (n={})",
        us(l.p50),
        us(l.p90),
        us(l.p99),
        us(l.p999),
        us(l.p9999),
        us(l.max),
        group(l.count)
    )
}

/// Microseconds with a precision that suits their size.
fn us(value: f64) -> String {
    if value < 100.0 {
        format!("{value:.1}")
    } else {
        group(value.round() as u64)
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "?".to_owned(),
        |b| format!("{:.1} MiB", b as f64 / 1_048_576.0),
    )
}

/// `1234567` → `1,234,567`.
fn group(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The classic HdrHistogram percentile distribution (`.hgrm`, as Java's
/// `outputPercentileDistribution` writes it, 5 ticks per half distance) of a
/// nanosecond histogram, with values in microseconds.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    const SCALE: f64 = 1_000.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(5) {
            total += step.count_since_last_iteration();
            let value = histogram.highest_equivalent(step.value_iterated_to()) as f64 / SCALE;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {quantile:2.12} {total:10}");
            }
        }
    }
    let sub_buckets = 2u64.pow(
        (2.0 * 10f64.powi(i32::from(histogram.sigfig())))
            .log2()
            .ceil() as u32,
    );
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / SCALE,
        histogram.stdev() / SCALE
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / SCALE,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_buckets
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::tally::new_histogram;
    use super::*;

    fn sample_report() -> Report {
        Report {
            label: "tickwire".into(),
            url: "ws://127.0.0.1:1/ws".into(),
            connections: Connections {
                requested: 100,
                connected: 100,
                failed: 0,
                closed_early: 0,
            },
            threads: 1,
            symbols: 2,
            symbols_per_connection: 2,
            zipf: 0.0,
            seed: 1,
            warmup_secs: 3.0,
            window_secs: 20.0,
            ended_by: "duration",
            delivered: 1_234_567,
            delivered_per_sec: 61_728.35,
            skipped: 100,
            skipped_share: 0.0001,
            seq_violations: 0,
            counts: Tally::default(),
            clock: Clock::Intended,
            latency_us: Percentiles {
                count: 1_234_567,
                p50: 23.15,
                p90: 45.0,
                p99: 120.4,
                p999: 812.0,
                p9999: 2_048.0,
                max: 15_000.0,
                mean: 30.0,
            },
            version_latency_us: Percentiles::default(),
            staleness_us: Percentiles::default(),
            staleness_floor_us: Percentiles::default(),
            slow: Some(SlowReaders {
                connections: 10,
                interval_secs: 1.0,
                delivered: 200,
                skipped: 9_000,
                latency_us: Percentiles::default(),
                staleness_us: Percentiles::default(),
            }),
            stalled: 5,
            connect: ConnectPhase {
                secs: 0.5,
                handshakes_per_sec: 200.0,
                server_rss_before: Some(8 << 20),
                server_rss_connected: Some(9 << 20),
                rss_per_connection: Some(10_485.76),
            },
            churn: None,
            after_close: None,
            server_metrics: None,
            server_process: Some(ServerProcess {
                pid: 7,
                cpu_secs: 10.0,
                cpu_cores: 0.5,
                deliveries_per_cpu_sec: 123_456.7,
                rss_bytes: Some(10 << 20),
                peak_rss_bytes: None,
            }),
            client_cpu: Some(ClientCpu {
                cpu_secs: 12.0,
                cores: 1.2,
                messages: 100_000,
                churn_included: false,
            }),
        }
    }

    #[test]
    fn table_shows_the_headline_numbers() {
        let text = table(&sample_report());
        for expected in [
            "100 open of 100",
            "20.00 s after 3.0 s warm-up (ended: duration)",
            "1,234,567 msgs  61,728/s",
            "seq violations 0",
            "p50 23.1  p90 45.0  p99 120  p99.9 812  p99.99 2,048  max 15,000 µs  (n=1,234,567)",
            "(from intended)",
            "slow readers  10 reading every 1 s: delivered 200  skipped 9,000",
            "stalled       5 connections",
            "200 handshakes/s; server RSS 8.0 MiB → 9.0 MiB (10.2 KiB per connection)",
            "/metrics not available",
            "123,457 deliveries/CPU-s  RSS 10.0 MiB (peak ?)",
        ] {
            assert!(text.contains(expected), "`{expected}` in\n{text}");
        }
        let json = serde_json::to_value(sample_report()).unwrap_or_default();
        assert_eq!(json["latency_us"]["count"], 1_234_567);
        assert_eq!(json["server_process"]["pid"], 7);
        assert!(json["server_metrics"].is_null());
    }

    #[test]
    fn server_deltas_and_rates() {
        let before = MetricsPage::parse(
            "tickwire_book_updates_total 100\ntickwire_messages_out_total 1000\n",
        );
        let after = MetricsPage::parse(
            "tickwire_book_updates_total 300\ntickwire_messages_out_total 5000\n\
             tickwire_updates_conflated_total 7\n\
             tickwire_delivery_latency_seconds{quantile=\"0.99\"} 0.00025\n\
             tickwire_delivery_latency_seconds_count 42\n",
        );
        let m = ServerMetrics::between(&before, &after, 2.0);
        assert_eq!(m.book_updates_per_sec, 100.0);
        assert_eq!(m.messages_out, 4000.0);
        assert_eq!(m.updates_conflated, 7.0);
        assert!((m.delivery_latency_us.p99 - 250.0).abs() < 1e-9);
        assert_eq!(m.delivery_latency_us.count, 42.0);

        let before = ProcSample {
            cpu_ticks: 100,
            ..ProcSample::default()
        };
        let after = ProcSample {
            cpu_ticks: 350,
            rss_bytes: Some(1),
            peak_rss_bytes: Some(2),
        };
        let p = ServerProcess::between(1, &before, &after, 100, 5.0, 1_000);
        assert_eq!(p.cpu_secs, 2.5);
        assert_eq!(p.cpu_cores, 0.5);
        assert_eq!(p.deliveries_per_cpu_sec, 400.0);
        assert_eq!(per_sec(1.0, 0.0), 0.0);
    }

    #[test]
    fn hgrm_lists_percentiles_in_microseconds() {
        let mut histogram = new_histogram();
        for ns in 1..=1_000u64 {
            let _ = histogram.record(ns * 1_000);
        }
        let text = hgrm(&histogram);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("       Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));
        let first = lines.next().unwrap_or_default();
        assert!(
            first.starts_with("       1.000 0.000000000000          1           1.00"),
            "{first}"
        );
        let rows: Vec<&str> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#'))
            .collect();
        let last = rows.last().copied().unwrap_or_default();
        assert!(
            last.starts_with("    1000.447 1.000000000000       1000")
                || last.starts_with("    1000.959 1.000000000000       1000"),
            "{last}"
        );
        assert_eq!(last.split_whitespace().count(), 3, "no 1/(1-p) at 100%");
        assert!(
            text.contains("#[Max     =     1000.447, Total count    =         1000]"),
            "{text}"
        );
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(12_345_678), "12,345,678");
    }
}
