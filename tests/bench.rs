//! `tickwire bench` against the real binary: it connects, measures and reports
//! consistent numbers. Correctness only; no timing thresholds.

mod common;

use common::*;

#[test]
fn bench_reports_consistent_numbers_against_a_live_server() {
    let spot = format!("spot={}", sample(SPOT).display());
    // Looping at 20× keeps ticks flowing for the whole window.
    let server = Binary::serve(&["--replay", &spot, "--speed", "20", "--loop"]);
    let dir = std::env::temp_dir().join(format!("tickwire-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json_path = dir.join("report.json");
    let hgrm_path = dir.join("latency.hgrm");

    let args = bench_args(
        &server,
        [
            ("--connections", "20".to_owned()),
            ("--symbols", "spot:BTCUSDT".into()),
            ("--duration", "3".into()),
            ("--warmup", "0.5".into()),
            ("--json", json_path.display().to_string()),
            ("--hgrm", hgrm_path.display().to_string()),
        ],
    );
    let stdout = run_tickwire(&args);
    assert!(stdout.contains("client e2e"), "{stdout}");

    let text = std::fs::read_to_string(&json_path).expect("JSON report written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON report parses");
    let delivered = report["delivered"].as_u64().expect("delivered");
    assert!(delivered > 0, "{report:#}");
    assert_eq!(report["seq_violations"], 0, "{report:#}");
    assert_eq!(report["latency_us"]["count"].as_u64(), Some(delivered));
    assert_eq!(report["connections"]["connected"], 20, "{report:#}");
    assert_eq!(report["connections"]["closed_early"], 0, "{report:#}");
    let snapshots = report["counts"]["snapshots"].as_u64();
    assert!(
        snapshots <= Some(20),
        "at most one per subscription: {report:#}"
    );
    assert_eq!(report["counts"]["malformed"], 0, "{report:#}");
    assert!(
        report["server_metrics"]["book_updates"].as_f64() > Some(0.0),
        "{report:#}"
    );
    assert!(
        report["server_process"]["cpu_secs"].is_number(),
        "{report:#}"
    );

    let hgrm = std::fs::read_to_string(&hgrm_path).expect("hgrm written");
    assert!(hgrm.trim_start().starts_with("Value"), "{hgrm}");
    let total = format!("Total count    = {delivered:>12}]");
    assert!(hgrm.contains(&total), "{hgrm}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tickwire bench` against `server` (its CPU and memory read through
/// `--server-pid`), with `flags`.
fn bench_args<const N: usize>(server: &Binary, flags: [(&str, String); N]) -> Vec<String> {
    let mut args = vec![
        "bench".to_owned(),
        format!("ws://{}", server.addr),
        "--server-pid".to_owned(),
        server.child.id().to_string(),
    ];
    for (flag, value) in flags {
        args.push(flag.to_owned());
        args.push(value);
    }
    args
}

/// A stalled reader the server drops (here at its ping timeout, as the S3
/// scenario's stalled clients are) is found closed behind its unread
/// backlog once the window is over, and reported so, not as open.
#[test]
fn stalled_readers_the_server_dropped_are_reported_closed() {
    let dir = std::env::temp_dir().join(format!("tickwire-bench-drop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // A stalled reader is taken for dead once its socket takes nothing more
    // for a ping round: fast enough a feed fills its buffers at once.
    let server = Binary::serve_synthetic_with(
        &dir,
        5,
        2_000.0,
        1,
        &["--ping-interval-secs", "1", "--ping-timeout-secs", "1"],
    );
    let json = dir.join("drop.json").display().to_string();
    let args = bench_args(
        &server,
        [
            ("--connections", "4".to_owned()),
            ("--stalled", "3".into()),
            ("--symbols", synthetic_symbols(5).join(",")),
            ("--duration", "4".into()),
            ("--warmup", "0.5".into()),
            ("--json", json.clone()),
        ],
    );
    let stdout = run_tickwire(&args);
    let text = std::fs::read_to_string(&json).expect("JSON report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    // The healthy readers answer pings; the stalled ones never do.
    assert_eq!(report["connections"]["connected"], 7, "{report:#}");
    assert_eq!(report["connections"]["closed_early"], 3, "{stdout}");
    assert!(stdout.contains("3 closed early"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The S3-shaped run: healthy, slow and stalled readers plus connection churn
/// on a constant-rate synthetic feed, measured from the intended times; every
/// part is reported apart, and the plot overlays runs.
#[test]
fn bench_reports_slow_stalled_and_churning_clients_apart() {
    let dir = std::env::temp_dir().join(format!("tickwire-bench-s3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let server = Binary::serve_synthetic(&dir, 20, 400.0, 3);
    let path = |name: &str| dir.join(name).display().to_string();

    let args = bench_args(
        &server,
        [
            ("--connections", "20".to_owned()),
            ("--slow", "4".into()),
            ("--slow-interval", "0.2".into()),
            ("--stalled", "3".into()),
            ("--churn", "20".into()),
            ("--symbols", synthetic_symbols(20).join(",")),
            ("--per-connection", "5".into()),
            ("--zipf", "1".into()),
            ("--clock", "intended".into()),
            ("--duration", "3".into()),
            ("--warmup", "1".into()),
            ("--json", path("s3.json")),
            ("--hgrm", path("s3.hgrm")),
            ("--svg", path("s3.svg")),
            ("--label", "s3".into()),
            ("--settle", "15".into()),
        ],
    );
    let stdout = run_tickwire(&args);
    for line in [
        "slow readers  4",
        "stalled       3",
        "churn ",
        "after close   server RSS ",
        "(from intended)",
        "staleness     p50 ",
    ] {
        assert!(stdout.contains(line), "`{line}` in\n{stdout}");
    }

    let text = std::fs::read_to_string(path("s3.json")).expect("JSON report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    assert_eq!(report["label"], "s3");
    assert_eq!(report["clock"], "intended");
    assert_eq!(report["connections"]["requested"], 27, "{report:#}");
    assert_eq!(report["connections"]["connected"], 27, "{report:#}");
    assert_eq!(report["seq_violations"], 0, "{report:#}");
    assert_eq!(report["stalled"], 3);
    let delivered = report["delivered"].as_u64().expect("delivered");
    assert!(delivered > 0, "{report:#}");
    assert_eq!(
        report["counts"]["untimed"], 0,
        "synthetic ticks carry intended times"
    );
    assert_eq!(report["latency_us"]["count"].as_u64(), Some(delivered));
    // Every version counts once in the per-version latency, conflated ones too.
    let skipped = report["skipped"].as_u64().expect("skipped");
    assert_eq!(
        report["version_latency_us"]["count"].as_u64(),
        Some(delivered + skipped),
        "{report:#}"
    );
    // A slow reader takes a message per interval: never more than that.
    let slow = &report["slow"];
    assert_eq!(slow["connections"], 4);
    assert!(slow["delivered"].as_u64() <= Some(4 * 20), "{report:#}");
    // Staleness: every 100 ms of the 3 s window, the age of each of the 5
    // values each reading connection holds, and next to each healthy one the
    // age of the freshest value of its symbol held anywhere.
    let samples = |p: &serde_json::Value| p["count"].as_u64().unwrap_or(0);
    let (healthy, slow, floor) = (
        &report["staleness_us"],
        &slow["staleness_us"],
        &report["staleness_floor_us"],
    );
    assert!((1..=20 * 5 * 31).contains(&samples(healthy)), "{report:#}");
    assert!((1..=4 * 5 * 31).contains(&samples(slow)), "{report:#}");
    assert_eq!(samples(floor), samples(healthy), "{report:#}");
    // Each freshest age is at most the age beside it, so every percentile is.
    for p in ["p50", "p90", "p99", "max"] {
        let at = |l: &serde_json::Value| l[p].as_f64().unwrap_or(f64::NAN);
        assert!(at(floor) <= at(healthy), "{p}: {report:#}");
    }
    // What the client cost, per message it received in the window.
    let client = &report["client_cpu"];
    assert_eq!(client["churn_included"], true, "{report:#}");
    assert!(client["messages"].as_u64() >= Some(delivered), "{report:#}");
    let churn = &report["churn"];
    assert!(churn["completed"].as_u64() > Some(0), "{report:#}");
    assert_eq!(churn["failed"], 0, "{report:#}");
    for times in ["handshake_us", "subscribed_us"] {
        assert_eq!(
            churn[times]["count"], churn["completed"],
            "one {times} sample per cycle"
        );
    }
    // Each cycle's answer comes after its handshake, so every percentile does.
    for p in ["p50", "p99", "max"] {
        assert!(
            churn["subscribed_us"][p].as_f64() >= churn["handshake_us"][p].as_f64(),
            "{p}: {report:#}"
        );
    }
    assert!(
        report["connect"]["rss_per_connection"].as_f64() > Some(0.0),
        "{report:#}"
    );
    assert!(
        report["connect"]["handshakes_per_sec"].as_f64() > Some(0.0),
        "{report:#}"
    );
    // Watched once every connection had closed: a few dozen connections'
    // memory settles within the 15 s given, after 5 s without a fall.
    let after_close = &report["after_close"];
    assert!(after_close["server_rss"].as_u64() > Some(0), "{report:#}");
    assert_eq!(after_close["settled"], true, "{report:#}");
    let watched = after_close["watched_secs"].as_f64().unwrap_or(0.0);
    assert!((5.0..15.5).contains(&watched), "{report:#}");

    let svg = std::fs::read_to_string(path("s3.svg")).expect("plot written");
    assert!(
        svg.contains("\ns3\n</text>"),
        "the run is named in the legend"
    );
    // Two runs overlaid from their .hgrm files.
    run_tickwire(&[
        "plot".into(),
        "--out".into(),
        path("both.svg"),
        format!("first={}", path("s3.hgrm")),
        format!("second={}", path("s3.hgrm")),
    ]);
    let both = std::fs::read_to_string(path("both.svg")).expect("overlay written");
    assert!(both.contains("\nfirst\n</text>") && both.contains("\nsecond\n</text>"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The S2 shape past its ceiling: a feed faster than the clients can read,
/// whose updates the sessions both gather and hold back at the high-water
/// mark. Every client keeps receiving, and the server keeps answering.
#[test]
fn a_firehose_that_outruns_its_clients_keeps_being_served() {
    let dir = std::env::temp_dir().join(format!("tickwire-bench-s2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let server = Binary::serve_synthetic(&dir, 100, 40_000.0, 5);
    let json = dir.join("s2.json").display().to_string();
    let args = bench_args(
        &server,
        [
            ("--connections", "50".to_owned()),
            ("--symbols", synthetic_symbols(100).join(",")),
            ("--per-connection", "100".into()),
            ("--duration", "3".into()),
            ("--warmup", "1".into()),
            ("--json", json.clone()),
        ],
    );
    let stdout = run_tickwire(&args);
    let text = std::fs::read_to_string(&json).expect("JSON report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    assert_eq!(report["connections"]["connected"], 50, "{stdout}");
    assert!(report["delivered"].as_u64() > Some(0), "{stdout}");
    assert_eq!(report["seq_violations"], 0, "{stdout}");
    assert!(
        report["server_metrics"].is_object(),
        "/metrics answered during the run:\n{stdout}"
    );
    let (status, _) = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(http_get(server.addr, "/metrics"));
    assert_eq!(status, 200);
    let _ = std::fs::remove_dir_all(dir);
}

/// A run whose every subscription the server refused measured nothing: it
/// fails, with the server's answer.
#[test]
fn a_run_the_server_refused_fails_with_its_reason() {
    let spot = format!("spot={}", sample(SPOT).display());
    let server = Binary::serve(&["--replay", &spot, "--speed", "20", "--loop"]);
    let args = bench_args(
        &server,
        [
            ("--connections", "2".to_owned()),
            ("--symbols", "NOPE".into()),
            ("--duration", "1".into()),
            ("--warmup", "0.2".into()),
        ],
    );
    let output = run_tickwire_to_end(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no ticker was delivered"), "{stderr}");
    assert!(stderr.contains("unknown_symbol"), "{stderr}");
}

/// `--source-addresses` spreads the steady connections and the churn over
/// the addresses given, in turn: against a server that admits two
/// connections per address, three steady ones and a churn all get in from
/// three loopback addresses, while from one address the third is refused.
#[test]
fn connections_are_opened_from_the_source_addresses_in_turn() {
    let dir = std::env::temp_dir().join(format!("tickwire-bench-src-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let server =
        Binary::serve_synthetic_with(&dir, 5, 100.0, 1, &["--max-connections-per-ip", "2"]);
    let run = |name: &str, extra: &[(&str, &str)]| {
        let json = dir.join(name).display().to_string();
        let mut args = bench_args(
            &server,
            [
                ("--connections", "3".to_owned()),
                ("--symbols", synthetic_symbols(5).join(",")),
                ("--duration", "2".into()),
                ("--warmup", "0.5".into()),
                ("--json", json.clone()),
            ],
        );
        for (flag, value) in extra {
            args.extend([flag.to_string(), value.to_string()]);
        }
        run_tickwire(&args);
        let text = std::fs::read_to_string(&json).expect("JSON report");
        serde_json::from_str::<serde_json::Value>(&text).expect("JSON parses")
    };

    let spread = run(
        "spread.json",
        &[
            ("--source-addresses", "127.0.0.1-127.0.0.2,127.0.0.3"),
            ("--churn", "4"),
        ],
    );
    assert_eq!(spread["connections"]["connected"], 3, "{spread:#}");
    let churn = &spread["churn"];
    assert!(churn["completed"].as_u64() > Some(0), "{spread:#}");
    assert_eq!(churn["failed"], 0, "{spread:#}");

    let one_address = run("one.json", &[]);
    assert_eq!(
        one_address["connections"]["connected"], 2,
        "{one_address:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
