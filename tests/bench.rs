//! `tickwire bench` against the real binary: it connects, measures and reports
//! consistent numbers. Correctness only; no timing thresholds.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    let mut bench = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .arg("bench")
        .arg(format!("ws://{}", server.addr))
        .args(["--connections", "20", "--symbols", "spot:BTCUSDT"])
        .args(["--duration", "3", "--warmup", "0.5"])
        .arg("--server-pid")
        .arg(server.child.id().to_string())
        .arg("--json")
        .arg(&json_path)
        .arg("--hgrm")
        .arg(&hgrm_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tickwire bench");
    let deadline = Instant::now() + GUARD;
    while bench.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = bench.kill();
            panic!("tickwire bench did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = bench.wait_with_output().expect("bench output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
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
