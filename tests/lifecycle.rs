//! The service as a process: graceful shutdown, the command line, feed files,
//! broken input, and memory under clients that never read.

mod common;

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::json;
use tickwire::feed::replay::{ReplayConfig, Speed};
use tickwire::server::ServerConfig;
use tokio::io::AsyncWriteExt as _;

fn looping_usdm() -> Vec<ReplayConfig> {
    let files = [(Some("usdm"), sample(USDM))];
    vec![replay_of(&files, Speed::Factor(1.0), true, false)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_client_with_1001() {
    let server = TestServer::start(ServerConfig::default(), looping_usdm()).await;
    closes_every_client_with_1001(server).await;
}

#[tokio::test]
async fn with_http_on_its_own_thread_shutdown_closes_every_client_with_1001() {
    let server = TestServer::start_fronted(ServerConfig::default(), looping_usdm()).await;
    closes_every_client_with_1001(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_serves_the_same_feed() {
    let serving = Serving {
        listeners: 2,
        ..Serving::default()
    };
    let server = TestServer::start_serving(ServerConfig::default(), looping_usdm(), serving).await;
    serves_on_every_listener(server).await;
}

#[tokio::test]
async fn with_http_on_its_own_thread_every_listener_serves_the_same_feed() {
    let serving = Serving {
        listeners: 2,
        fronted: true,
        ..Serving::default()
    };
    let server = TestServer::start_serving(ServerConfig::default(), looping_usdm(), serving).await;
    serves_on_every_listener(server).await;
}

async fn serves_on_every_listener(mut server: TestServer) {
    let mut clients = Vec::new();
    for addr in &server.addrs {
        let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
        client
            .send(json!({"op": "subscribe", "id": 1, "symbols": ["usdm:BTCUSDT"]}))
            .await;
        assert_eq!(client.recv_type("subscribed").await["id"], 1);
        assert_eq!(client.recv_type("ticker").await["symbol"], "usdm:BTCUSDT");
        clients.push(client);
    }
    let metrics = server.metrics();
    assert_eq!(metrics.connections.load(Relaxed), 2, "one count for both");
    server.shutdown().await.expect("clean shutdown");
    for client in &mut clients {
        assert_eq!(client.close_code().await, Some(1001));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dropped_without_its_shutdown_closes_every_client_with_1001() {
    let server = TestServer::start(ServerConfig::default(), looping_usdm()).await;
    closes_every_client_with_1001_when_dropped(server).await;
}

#[tokio::test]
async fn with_http_on_its_own_thread_a_server_dropped_without_its_shutdown_closes_every_client_with_1001(
) {
    let server = TestServer::start_fronted(ServerConfig::default(), looping_usdm()).await;
    closes_every_client_with_1001_when_dropped(server).await;
}

async fn closes_every_client_with_1001_when_dropped(mut server: TestServer) {
    let mut client = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
    client.recv_type("subscribed").await;
    server.abort().await;
    assert_eq!(client.close_code().await, Some(1001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_unwound_by_a_panic_closes_every_client_with_1001() {
    closes_every_client_with_1001_when_unwound(false).await;
}

#[tokio::test]
async fn with_http_on_its_own_thread_a_server_unwound_by_a_panic_closes_every_client_with_1001() {
    closes_every_client_with_1001_when_unwound(true).await;
}

async fn closes_every_client_with_1001_when_unwound(fronted: bool) {
    let serving = Serving {
        fronted,
        panic_at_shutdown: true,
        ..Serving::default()
    };
    let mut server =
        TestServer::start_serving(ServerConfig::default(), looping_usdm(), serving).await;
    let mut client = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
    client.recv_type("subscribed").await;
    server.shutdown_unwinding().await;
    assert_eq!(client.close_code().await, Some(1001));
}

#[tokio::test]
async fn with_http_on_its_own_thread_handshakes_are_answered_while_the_sessions_are_stuck() {
    let server = TestServer::start_fronted(ServerConfig::default(), looping_usdm()).await;
    let (addr, url) = (server.addr, server.url(""));
    // The heartbeat beats once at least, so that the stall is counted from
    // when this thread blocks below, not from the server's start.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (answered, while_stuck) = std::sync::mpsc::channel();
    let (streamed, client_done) = tokio::sync::oneshot::channel();
    on_a_thread_of_its_own(async move {
        let (status, _) = http_get(addr, "/api/symbols").await;
        let mut client = Client::connect(&url).await;
        // Sent before any session runs: it waits in the socket while the
        // socket changes hands.
        client
            .send(json!({"op": "subscribe", "id": 1, "symbols": ["usdm:BTCUSDT"]}))
            .await;
        let stalled = healthz_once_it_says(addr, 503).await;
        // Two seconds on, a session running on the HTTP thread would
        // have answered by now.
        let unanswered = client.ws.next().now_or_never().is_none();
        let refused = handshake_refusal(&url).await;
        let _ = answered.send((status, stalled, unanswered, refused));
        let subscribed = client.recv_type("subscribed").await;
        let ticker = client.recv_type("ticker").await;
        let healthy = healthz_once_it_says(addr, 200).await;
        let mut later = Client::connect(&url).await;
        later
            .send(json!({"op": "subscribe", "id": 2, "symbols": ["usdm:BTCUSDT"]}))
            .await;
        let later = later.recv_type("subscribed").await;
        let _ = streamed.send((subscribed, ticker, healthy, later));
    });
    // This thread runs the sessions' runtime: until this returns, only the
    // HTTP thread can answer.
    let (status, stalled, unanswered, refused) = while_stuck
        .recv_timeout(GUARD)
        .expect("HTTP answered while the sessions' runtime was stuck");
    assert_eq!(status, 200);
    assert!(stalled.starts_with("stalled: "), "{stalled}");
    assert!(unanswered, "no session runs on the HTTP thread");
    // A new client is told to go elsewhere rather than given a `101` and
    // then nothing.
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["error"], "worker_stalled", "{}", refused.body);
    assert_eq!(
        refused.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"2"[..])
    );
    // Given its runtime back, the session takes over the socket, reads the
    // request that waited in it, and streams; new clients are served again.
    let (subscribed, ticker, healthy, later) = tokio::time::timeout(GUARD, client_done)
        .await
        .expect("the session streams in time")
        .expect("the client saw its answer and a ticker");
    assert_eq!(subscribed["id"], 1);
    assert_eq!(ticker["symbol"], "usdm:BTCUSDT");
    assert_eq!(healthy, "ok\n");
    assert_eq!(later["id"], 2);
    let (_, page) = server.get("/metrics").await;
    let series = r#"tickwire_handshakes_refused_total{reason="worker_stalled"}"#;
    assert_eq!(metric(&page, series), 1.0);
}

/// `/healthz`'s body once it answers with `status`.
async fn healthz_once_it_says(addr: std::net::SocketAddr, status: u16) -> String {
    let poll = async {
        loop {
            let (answer, body) = http_get(addr, "/healthz").await;
            if answer == status {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(GUARD, poll)
        .await
        .unwrap_or_else(|_| panic!("/healthz never said {status}"))
}

async fn closes_every_client_with_1001(mut server: TestServer) {
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
        client.recv_type("subscribed").await;
        clients.push(client);
    }
    // One more that never reads must not hold shutdown up beyond the grace period.
    let mut silent = raw_connect(server.addr, "/ws", Some(4096)).await;
    silent
        .write_all(&client_frame(
            true,
            0x1,
            br#"{"op":"subscribe","symbols":["usdm:BTCUSDT"]}"#,
        ))
        .await
        .expect("send");

    server.shutdown().await.expect("clean shutdown");
    for client in &mut clients {
        assert_eq!(client.close_code().await, Some(1001));
    }
    assert_eq!(server.metrics().connections.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_nothing_to_do_is_closed_with_1001_at_shutdown() {
    // A paused replay: the session gets no update to wake it.
    let files = [(Some("usdm"), sample(USDM))];
    let replay = replay_of(&files, Speed::Max, false, true);
    let mut server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    let mut client = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
    client.recv_type("subscribed").await;
    // A request and its answer: the session has waited at least twice, so
    // only the wake-up that shutdown sends can end its current wait.
    client
        .send(serde_json::json!({"op": "ping", "id": 1}))
        .await;
    client.recv_type("pong").await;

    server.shutdown().await.expect("clean shutdown");
    let code = tokio::time::timeout(GUARD, client.close_code()).await;
    assert_eq!(code.expect("closed in time"), Some(1001));
    assert_eq!(server.metrics().connections.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1001_and_prints_latency() {
    // On one worker thread, as the benchmarks run it beside their load client.
    let server = Binary::serve(&["--workers", "1"]);
    let url = format!("ws://{}/ws?symbols=spot:BTCUSDT,usdm:BTCUSDT", server.addr);
    let mut client = Client::connect(&url).await;
    client.recv_type("subscribed").await;
    for _ in 0..3 {
        client.recv_type("ticker").await;
    }
    let page = http_get(server.addr, "/metrics").await.1;
    assert_eq!(metric(&page, "tickwire_runtime_workers"), 1.0);
    let (exited_cleanly, log) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert_eq!(client.close_code().await, Some(1001));
    assert!(exited_cleanly, "exit status after SIGTERM; log:\n{log}");
    assert!(
        log.contains("delivery latency"),
        "latency summary at shutdown; log:\n{log}"
    );
    assert!(log.contains("p99.9="), "{log}");
}

/// Runs `tickwire subscribe` against `server` with `args` and returns the
/// JSON lines it printed, after checking that it succeeded.
async fn subscribe_lines(server: &Binary, args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickwire"));
    command
        .args(["subscribe", &format!("ws://{}", server.addr)])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run subscribe"))
        .await
        .expect("subscribe");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_command_prints_json_lines() {
    let server = Binary::serve(&["--speed", "10"]);
    let lines = subscribe_lines(&server, &["--symbols", "usdm:BTCUSDT", "--count", "5"]).await;
    assert_eq!(lines[0]["type"], "subscribed");
    let tickers: Vec<_> = lines.iter().filter(|l| l["type"] == "ticker").collect();
    assert_eq!(tickers.len(), 5);
    assert!(tickers.iter().all(|t| t["symbol"] == "usdm:BTCUSDT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_command_prints_books_with_a_depth() {
    let server = Binary::serve(&["--speed", "10"]);
    let args = ["--symbols", "spot:BTCUSDT", "--depth", "5", "--count", "3"];
    let lines = subscribe_lines(&server, &args).await;
    assert_eq!(
        (&lines[0]["type"], &lines[0]["channel"]),
        (&json!("subscribed"), &json!("book"))
    );
    let books: Vec<_> = lines.iter().filter(|l| l["type"] == "book").collect();
    assert_eq!(books.len(), 3, "{lines:?}");
    assert!(books
        .iter()
        .all(|b| b["depth"] == 5 && b["symbol"] == "spot:BTCUSDT"));
}

/// `tickwire subscribe` refused every symbol it asked for: it says why and
/// fails, instead of waiting on a connection that will never carry data.
#[test]
fn the_subscribe_command_fails_when_no_symbol_is_accepted() {
    let dir = std::env::temp_dir().join(format!("tickwire-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let server = Binary::serve_synthetic(&dir, 2, 10.0, 1);
    let url = format!("ws://{}", server.addr);
    for (extra, why) in [
        (
            &["--symbols", "NOPE"][..],
            "nothing subscribed: no such symbol (unknown_symbol)",
        ),
        (
            &["--symbols", "SYN000", "--depth", "3"][..],
            "(bad_request)",
        ),
    ] {
        let mut args = vec!["subscribe".to_owned(), url.clone()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let output = run_tickwire_to_end(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?}: {stderr}");
        assert!(stderr.contains(why), "{extra:?}: {stderr}");
    }
    // Symbols the URL names count as accepted: the refusal of the others is
    // no reason to stop.
    let by_url = format!("{url}/ws?symbols=SYN000");
    let args = ["subscribe", &by_url, "--symbols", "NOPE", "--count", "2"];
    run_tickwire(&args.map(String::from));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a user of `tickwire subscribe` trips on: a URL without its scheme, a
/// server that wants a token (its reason is shown, not only the status), and
/// piping into `head` (a normal end, not an error).
#[test]
fn the_subscribe_command_explains_refusals_and_ends_quietly_when_its_reader_leaves() {
    let run = |args: &[&str]| {
        run_tickwire_to_end(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    };
    let output = run(&["subscribe", "127.0.0.1:9", "--symbols", "X"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("expected a ws:// or wss:// URL"),
        "{stderr}"
    );
    // A book client names its symbols with --symbols; the URL's would be tickers.
    let url_symbols = "ws://127.0.0.1:9/ws?symbols=X";
    let output = run(&["subscribe", url_symbols, "--symbols", "X", "--depth", "5"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not in the URL"), "{stderr}");
    let output = run(&[
        "subscribe",
        "ws://127.0.0.1:9",
        "--symbols",
        "X",
        "--depth",
        "5",
        "--max-rate-hz",
        "1",
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot be used with"),
        "rate caps are for tickers"
    );

    let dir = std::env::temp_dir().join(format!("tickwire-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "a test secret of at least thirty-two bytes").expect("secret");
    let locked = Binary::serve(&["--jwt-secret-file", &secret.display().to_string()]);
    let output = run(&[
        "subscribe",
        &format!("ws://{}", locked.addr),
        "--symbols",
        "X",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("401") && stderr.contains("credentials required"),
        "{stderr}"
    );
    assert!(
        !locked.startup_log.contains("RFC 7518"),
        "a long secret passes"
    );
    drop(locked);
    // A short secret still serves, with a warning.
    std::fs::write(&secret, "short").expect("secret");
    let weak = Binary::serve(&["--jwt-secret-file", &secret.display().to_string()]);
    assert!(
        weak.startup_log.contains("holds 5 bytes") && weak.startup_log.contains("RFC 7518"),
        "{}",
        weak.startup_log
    );
    drop(weak);
    let _ = std::fs::remove_dir_all(&dir);

    let server = Binary::serve(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args([
            "subscribe",
            &format!("ws://{}", server.addr),
            "--symbols",
            "spot:BTCUSDT",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a line");
    assert!(first.contains(r#""type":"subscribed""#), "{first}");
    // The reader is gone now: the next line cannot be written.
    let output = child.wait_with_output().expect("exit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
}

/// Ctrl-C ends `tickwire subscribe` even while it is busy printing: with a
/// full-speed replay, the client is almost never waiting when the signal comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_command_stops_on_the_first_ctrl_c_while_output_streams() {
    let server = Binary::serve(&["--speed", "max", "--loop"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(["subscribe", &format!("ws://{}", server.addr)])
        .args(["--symbols", "spot:BTCUSDT,usdm:BTCUSDT"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run subscribe");
    // Read its output as fast as it comes, counting tickers, so the client is
    // never held up by a full pipe.
    let stdout = child.stdout.take().expect("stdout");
    let (first_tickers, streaming) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut tickers = 0u64;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(r#"{"type":"ticker""#) {
                tickers += 1;
                if tickers == 1_000 {
                    first_tickers.send(()).ok();
                }
            }
        }
        tickers
    });
    tokio::task::spawn_blocking(move || streaming.recv().expect("tickers stream"))
        .await
        .expect("join");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    // An upper bound on the wait, so a client that missed the signal fails
    // the test instead of hanging it; not a performance limit.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("tickwire subscribe did not stop on SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let tickers = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("join");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).ok();
    }
    assert!(status.success(), "exit status {status}; stderr: {stderr}");
    assert!(tickers >= 1_000);
    drop(server);
}

#[test]
fn a_feed_file_runs_and_a_bad_one_fails_at_start_naming_file_line_and_field() {
    let dir = tempdir();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "name = \"sample\"\nkind = \"replay\"\nspeed = \"max\"\n[[files]]\npath = \"{}\"\nprefix = \"usdm\"\n",
            sample(USDM).display()
        ),
    )
    .expect("write");
    let server = Binary::serve(&["--feed", good.to_str().expect("utf-8 path")]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (status, body) = runtime.block_on(http_get(server.addr, "/api/symbols"));
    assert_eq!((status, body.as_str()), (200, r#"["usdm:BTCUSDT"]"#));
    drop(server);

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "kind = \"replay\"\n[[files]]\npath = \"x.gz\"\nprfix = \"a\"\n",
    )
    .expect("write");
    let bad = bad.to_str().expect("utf-8 path");
    let stderr = serve_refused(&["--feed", bad]);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("prfix"), "{stderr}");

    // Two feeds by one name would label two feeds' series alike in /metrics.
    let good = good.to_str().expect("utf-8 path");
    let stderr = serve_refused(&["--feed", good, "--feed", good]);
    assert!(stderr.contains("two feeds are named"), "{stderr}");

    let missing = "/no/such/file.gz";
    let stderr = serve_refused(&["--replay", missing]);
    assert!(stderr.contains(missing), "{stderr}");
    // A feed file's replay that cannot be read names the feed, its file and
    // the path as resolved next to it, once each.
    let dangling = dir.join("dangling.toml");
    std::fs::write(
        &dangling,
        "name = \"d\"\nkind = \"replay\"\n[[files]]\npath = \"gone.gz\"\n",
    )
    .expect("write");
    let dangling = dangling.to_str().expect("utf-8 path");
    let stderr = serve_refused(&["--feed", good, "--feed", dangling]);
    let expected = format!(
        "cannot start feed `d` of {dangling}: cannot read {}",
        dir.join("gone.gz").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.matches("feed `d`").count(), 1, "{stderr}");
    assert_eq!(stderr.matches(dangling).count(), 1, "{stderr}");

    // A device never ends and a FIFO blocks whoever opens it until a writer
    // comes: both are refused at once, as a replay, a feed file or a key.
    let fifo = dir.join("fifo.csv");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let fifo = fifo.to_str().expect("utf-8 path");
    for args in [
        ["--replay", "/dev/zero"],
        ["--replay", fifo],
        ["--feed", "/dev/zero"],
        ["--feed", fifo],
        ["--api-keys", fifo],
    ] {
        let stderr = serve_refused(&args);
        assert!(
            stderr.contains(args[1]) && stderr.contains("not a regular file"),
            "{args:?}: {stderr}"
        );
    }

    let stderr = serve_refused(&["--workers", "0"]);
    assert!(stderr.contains("--workers"), "{stderr}");

    // A timeout no deadline can hold, or none at all, is refused up front,
    // not found out by the first connection.
    for (flag, value) in [
        ("--ping-interval-secs", "18446744073709551615"),
        ("--ping-timeout-secs", "0"),
        ("--idle-timeout-secs", "604801"),
        ("--handshake-timeout-secs", "0"),
    ] {
        let stderr = serve_refused(&[flag, value]);
        assert!(
            stderr.contains(flag) && stderr.contains("1..=604800"),
            "{stderr}"
        );
    }
    for (flag, value) in [
        ("--duration", "-1"),
        ("--duration", "nan"),
        ("--duration", "1e30"),
        ("--rotate-mib", "0"),
    ] {
        let flag_value = format!("{flag}={value}");
        let stderr = refused(&["record", "--feed", "f.toml", "--out", "x.gz", &flag_value]);
        assert!(stderr.contains(flag), "{stderr}");
    }

    // A feed that cannot start leaves an earlier recording alone.
    let feed = dir.join("bad-ca.toml");
    std::fs::write(
        &feed,
        "kind = \"binance\"\nurl = \"wss://127.0.0.1:9/ws/btcusdt@bookTicker\"\nca_file = \"no-such.pem\"\n",
    )
    .expect("write");
    let out = dir.join("earlier.ndjson.gz");
    std::fs::write(&out, "an earlier recording").expect("write");
    let (feed, out_path) = (feed.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let stderr = refused(&["record", "--feed", feed, "--out", out_path]);
    assert!(stderr.contains("no-such.pem"), "{stderr}");
    assert_eq!(stderr.matches("feed `bad-ca`").count(), 1, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&out).expect("still there"),
        "an earlier recording"
    );
}

/// Runs `tickwire serve` on a free port with ARGS, which must fail; its standard error.
fn serve_refused(args: &[&str]) -> String {
    refused(&[&["serve", "--listen", "127.0.0.1:0"], args].concat())
}

/// Runs `tickwire ARGS`, which must fail; its standard error.
fn refused(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(args)
        .output()
        .expect("run");
    assert!(!output.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_replay_with_nothing_to_play_ends_instead_of_spinning() {
    let dir = tempdir();
    let path = dir.join("empty.ndjson");
    std::fs::write(
        &path,
        "{\"tickwire_replay\":1,\"source\":\"test\"}\nthis is not json\n",
    )
    .expect("write");
    let replay = replay_of(&[(None, path)], Speed::Max, true, false);
    let server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("the replay ends although it loops");
    let stats = server.replays[0].stats();
    assert_eq!(stats.loops.load(Relaxed), 0);
    assert_eq!(stats.malformed.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_counted_and_skipped_without_stopping_the_replay() {
    let dir = tempdir();
    let path = dir.join("mixed.ndjson");
    let mut file = std::fs::File::create(&path).expect("create");
    let lines = [
        r#"{"tickwire_replay":1,"source":"test"}"#,
        r#"{"recv_ts_ns":1000,"symbol":"X","exchange_ts_ns":null,"type":"quote","bid":"1.10","bid_size":"5","ask":"1.20","ask_size":"6"}"#,
        r#"{"recv_ts_ns":1001,"symbol":"X","type":"quote","bid":"1.1","bid_size":"5"}"#,
        "this is not json",
        r#"{"recv_ts_ns":1002,"symbol":"X","type":"quote","bid":1.15,"bid_size":"5","ask":"1.2","ask_size":"1"}"#,
        r#"{"recv_ts_ns":1003,"symbol":"X","type":"teleport"}"#,
        r#"{"recv_ts_ns":1004,"symbol":"X","exchange_ts_ns":77,"type":"trade","price":"1.15","size":"0.500"}"#,
        r#"{"recv_ts_ns":1005,"symbol":"X","exchange_ts_ns":78,"type":"quote","bid":"1.11","bid_size":"4","ask":"1.19","ask_size":"2"}"#,
        r#"{"recv_ts_ns":1006,"symbol":"X","type":"quote","bid":"1.12"#,
    ];
    for line in lines {
        writeln!(file, "{line}").expect("write");
    }
    drop(file);
    let replay = replay_of(&[(None, path)], Speed::Max, false, false);
    let server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    let page = server.get("/metrics").await.1;
    assert_eq!(
        metric(&page, r#"tickwire_feed_malformed_total{feed="test"}"#),
        5.0
    );
    assert_eq!(
        metric(&page, r#"tickwire_feed_ticks_total{feed="test"}"#),
        3.0
    );
    assert_eq!(
        metric(&page, r#"tickwire_feed_recognised_total{feed="test"}"#),
        1.0
    );
    assert_eq!(metric(&page, r#"tickwire_feed_ended{feed="test"}"#), 1.0);
    let (_, body) = server.get("/api/snapshot/X").await;
    let snapshot: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(snapshot["seq"], 3);
    assert_eq!(snapshot["bid"], "1.11");
    assert_eq!(snapshot["last_size"], "0.500");
    assert_eq!(snapshot["exchange_ts_ns"], 78);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cost_bounded_memory_in_the_real_process() {
    let spot = format!("spot={}", sample(SPOT).display());
    let usdm = format!("usdm={}", sample(USDM).display());
    // Pings stay out of it: a client that never reads never answers one, and
    // being dropped for that is another test's subject.
    let server = Binary::serve(&[
        "--replay",
        &spot,
        "--replay",
        &usdm,
        "--speed",
        "max",
        "--loop",
        "--ping-interval-secs",
        "3600",
    ]);
    let mut stalled = Vec::new();
    for _ in 0..50 {
        stalled.push(stalled_client(server.addr, &["spot:BTCUSDT", "usdm:BTCUSDT"]).await);
    }
    let updates = |page: &str| metric(page, "tickwire_book_updates_total");
    let wait_for_updates = |target: f64| {
        let addr = server.addr;
        async move {
            loop {
                let page = http_get(addr, "/metrics").await.1;
                if updates(&page) >= target {
                    return page;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    // Warm up until every stalled socket is full, then measure over a long
    // stretch. The counter is of versions, each of which every stalled client
    // would queue; the replay folds what it reads together, so a version
    // stands for some thirty lines of the captures.
    let page = tokio::time::timeout(GUARD, wait_for_updates(1_000.0))
        .await
        .expect("warm-up");
    let start = updates(&page);
    let rss_before = server.rss_bytes();
    let page = tokio::time::timeout(GUARD * 3, wait_for_updates(start + 5_000.0))
        .await
        .expect("feed keeps going");
    let rss_after = server.rss_bytes();
    assert_eq!(metric(&page, "tickwire_connections"), 50.0);
    let buffered = metric(&page, "tickwire_write_buffered_bytes");
    assert!(buffered <= 50.0 * 20.0 * 1024.0, "buffered {buffered}");
    // 5,000 versions queued per client would be ~1.3 MB each, over 60 MB in
    // all; conflation keeps it flat.
    let growth = rss_after as i64 - rss_before as i64;
    assert!(
        growth < 8 << 20,
        "RSS grew {growth} bytes ({rss_before} → {rss_after})"
    );
}

/// What an open, subscribed connection costs the server: its task, session
/// state, slots and nothing else; buffers exist only while bytes are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscribed_connection_costs_a_few_kib() {
    let dir = tempdir();
    let server = Binary::serve_synthetic(&dir, 10, 5.0, 1);
    let symbols = ["SYN000", "SYN001", "SYN002", "SYN003", "SYN004"];
    let mut clients = Vec::new();
    let mut rss = Vec::new();
    // The first batch pays one-off costs (runtime slabs, allocator arenas).
    for batch in [100, 500] {
        for _ in 0..batch {
            clients.push(stalled_client(server.addr, &symbols).await);
        }
        let want = (clients.len() * symbols.len()) as f64;
        until_metrics(&server, "every subscription registered", |page| {
            metric(page, "tickwire_subscriptions") >= want
        })
        .await;
        rss.push(server.rss_bytes());
    }
    let per_connection = (rss[1] as f64 - rss[0] as f64) / 500.0;
    assert!(
        per_connection < 8.0 * 1024.0,
        "{per_connection:.0} bytes of RSS per idle connection ({rss:?})"
    );
    drop(clients);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that stopped reading is closed with its output unwritten: what
/// it never took is neither counted as sent nor timed as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_a_closed_client_never_took_is_not_counted_as_delivered() {
    let dir = tempdir();
    let server = Binary::serve_synthetic(&dir, 10, 2_000.0, 1);
    let symbols: Vec<String> = synthetic_symbols(10);
    let symbols: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut stalled = stalled_client(server.addr, &symbols).await;
    // Its socket is full and the server holds more for it, unwritten (one
    // drain: newer versions wait, conflated, behind it).
    until_metrics(&server, "output held for the stalled client", |page| {
        metric(page, "tickwire_write_buffered_bytes") > 0.0
    })
    .await;
    let page = http_get(server.addr, "/metrics").await.1;
    let sent = metric(&page, "tickwire_messages_out_total");
    let timed = metric(&page, "tickwire_delivery_latency_seconds_count");
    // A flood of requests it will never read the answers to gets it closed.
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.extend(client_frame(true, 0x1, br#"{"op":"ping"}"#));
    }
    stalled.write_all(&flood).await.expect("send");
    until_metrics(&server, "the stalled client closed", |page| {
        metric(
            page,
            "tickwire_connections_closed_total{reason=\"rate_limited\"}",
        ) == 1.0
            && metric(page, "tickwire_connections") == 0.0
    })
    .await;
    let page = http_get(server.addr, "/metrics").await.1;
    assert_eq!(metric(&page, "tickwire_messages_out_total"), sent, "{page}");
    assert_eq!(
        metric(&page, "tickwire_delivery_latency_seconds_count"),
        timed,
        "{page}"
    );
    drop(stalled);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What clients freed by leaving goes back to the system, instead of staying
/// in the allocator's heaps as if it leaked (glibc's keeps it otherwise: RSS
/// stays where the crowd took it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_that_clients_freed_by_leaving_goes_back_to_the_system() {
    if !tickwire::server::memory::SUPPORTED {
        return;
    }
    // 2,000 sockets in this process and as many in the server, which inherits
    // the limit: more than the usual soft limit of 1,024.
    let _ = rlimit::increase_nofile_limit(8_192);
    let dir = tempdir();
    let server = Binary::serve_synthetic_with(
        &dir,
        10,
        5.0,
        1,
        &[
            "--memory-trim-after",
            "500",
            "--max-connections-per-ip",
            "0",
        ],
    );
    let symbols = ["SYN000", "SYN001", "SYN002", "SYN003", "SYN004"];
    // A first crowd comes and goes, so that one-off growth (runtime slabs,
    // allocator arenas) is in the baseline; the second one is measured.
    let mut rss = Vec::new();
    for crowd in 1..=2 {
        rss.push(server.rss_bytes());
        let mut clients = Vec::new();
        for _ in 0..2_000 {
            clients.push(stalled_client(server.addr, &symbols).await);
        }
        until_metrics(&server, "every subscription registered", |page| {
            metric(page, "tickwire_subscriptions") == 10_000.0
        })
        .await;
        rss.push(server.rss_bytes());
        let page = http_get(server.addr, "/metrics").await.1;
        let trims = metric(&page, "tickwire_memory_trims_total");
        assert_eq!(trims, f64::from(crowd - 1), "no trim while they stay");

        drop(clients);
        until_metrics(&server, "a trim once every client left", |page| {
            metric(page, "tickwire_connections") == 0.0
                && metric(page, "tickwire_memory_trims_total") > trims
        })
        .await;
    }
    let page = http_get(server.addr, "/metrics").await.1;
    assert!(metric(&page, "tickwire_memory_released_bytes_total") > 0.0);
    // Most of what the crowd took is given back (without the trim: none of it).
    let (before, crowded, after) = (rss[2], rss[3], server.rss_bytes());
    let (grew, kept) = (crowded as f64 - before as f64, after as f64 - before as f64);
    assert!(
        kept < grew / 4.0,
        "RSS {before} → {crowded} with 2,000 clients → {after} once they left ({rss:?})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls the server's `/metrics` until `done` holds, within GUARD.
async fn until_metrics(server: &Binary, what: &str, done: impl Fn(&str) -> bool) {
    tokio::time::timeout(GUARD, async {
        while !done(&http_get(server.addr, "/metrics").await.1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never happened: {what}"));
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tickwire-test-{}-{}",
        std::process::id(),
        tickwire::wall_clock_ns()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn every_shipped_feed_file_loads_and_declares_its_symbols() {
    let feeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds");
    let mut checked = 0;
    for entry in std::fs::read_dir(&feeds).expect("feeds/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let config = tickwire::feed::config::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match config {
            tickwire::feed::config::FeedConfig::Replay(mut config) => {
                config.start_paused = true;
                let hub = std::sync::Arc::new(tickwire::fanout::Hub::new(Default::default()));
                let cancel = tokio_util::sync::CancellationToken::new();
                let _replay = tickwire::feed::replay::spawn(hub.clone(), config, cancel.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    hub.symbol_count() > 0,
                    "{} declares no symbols",
                    path.display()
                );
                cancel.cancel();
            }
            // Live examples point at real exchanges: checked, never connected to.
            tickwire::feed::config::FeedConfig::Live(config) => {
                assert!(
                    !config.symbols.is_empty(),
                    "{} names no symbols",
                    path.display()
                );
                assert!(config.url.starts_with("wss://"), "{}", path.display());
            }
            tickwire::feed::config::FeedConfig::Synthetic(config) => {
                assert!(config.generator.validate().is_ok(), "{}", path.display());
            }
        }
        checked += 1;
    }
    assert!(checked >= 2, "expected the shipped feed files");
}
