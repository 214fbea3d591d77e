//! Live upstream feeds against a fake exchange: a real WebSocket server on
//! 127.0.0.1 playing a real capture. Same book as the replay, stale/live around
//! outages and silence, garbage counted, and wss:// through rustls.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use common::exchange::{binance_messages, self_signed_tls, FakeExchange, FakeRest, Script};
use common::*;
use serde_json::Value;
use tickwire::fanout::SymbolState;
use tickwire::feed::config::FeedConfig;
use tickwire::feed::live::{Backoff, LiveConfig, Venue};
use tickwire::feed::replay::Speed;
use tickwire::server::ServerConfig;
use tokio_tungstenite::tungstenite::Message;

/// How much of the USD-M sample the exchange plays.
const LINES: usize = 3_000;

fn binance_feed(url: String, stale_after: Duration) -> LiveConfig {
    LiveConfig {
        name: "fake-binance".into(),
        venue: Venue::Binance {
            depth_snapshot_url: None,
        },
        url,
        symbols: vec!["BTCUSDT".into()],
        prefix: Some("live".into()),
        rename: HashMap::new(),
        stale_after,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        connect_timeout: Duration::from_secs(5),
        ca_file: None,
    }
}

fn stream_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/stream?streams=btcusdt@bookTicker/btcusdt@trade/btcusdt@depth")
}

fn text_messages(lines: &[String]) -> Vec<Message> {
    lines.iter().map(|l| Message::text(l.clone())).collect()
}

/// A fake exchange on any free port that sends `lines` to every connection,
/// then stays connected and silent.
async fn exchange_playing(lines: &[String]) -> FakeExchange {
    let script = Script {
        messages: text_messages(lines),
        hold: true,
        keepalive: None,
    };
    FakeExchange::start("127.0.0.1:0".parse().expect("addr"), script, None).await
}

/// A server with the feed `live` and, beside it, a replay of `lines` under
/// the prefix `replay`, played to the end; and the live feed's counters.
async fn live_beside_replay(
    live: LiveConfig,
    lines: &[String],
) -> (TestServer, Arc<tickwire::metrics::FeedStats>) {
    let feeds = vec![FeedConfig::Live(live), replay_of_lines(lines)];
    let server = TestServer::start_feeds(ServerConfig::default(), feeds).await;
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    let live = server.lives[0].stats().clone();
    (server, live)
}

/// A server that replayed the files of a recording, under the prefix
/// `replay`, to the end, finding nothing malformed.
async fn replay_of_recording(files: &[std::path::PathBuf]) -> TestServer {
    let files: Vec<(Option<&str>, std::path::PathBuf)> =
        files.iter().map(|f| (Some("replay"), f.clone())).collect();
    let replayed = TestServer::start(
        ServerConfig::default(),
        vec![replay_of(&files, Speed::Max, false, false)],
    )
    .await;
    tokio::time::timeout(GUARD, replayed.replays[0].finished())
        .await
        .expect("replay ends");
    assert_eq!(replayed.replays[0].stats().malformed.load(Relaxed), 0);
    replayed
}

/// The same lines as a capture file, replayed under the prefix `replay`.
fn replay_of_lines(lines: &[String]) -> FeedConfig {
    let path = std::env::temp_dir().join(format!(
        "tickwire-live-{}-{}.capture",
        std::process::id(),
        lines.len()
    ));
    let capture: String = lines
        .iter()
        .enumerate()
        .map(|(i, line)| format!("{} {line}\n", 1_000_000_000 + i))
        .collect();
    std::fs::write(&path, capture).expect("write capture");
    FeedConfig::Replay(replay_of(
        &[(Some("replay"), path)],
        Speed::Max,
        false,
        false,
    ))
}

async fn snapshot(server: &TestServer, symbol: &str) -> Value {
    let (status, body) = server.get(&format!("/api/snapshot/{symbol}")).await;
    assert_eq!(status, 200, "{symbol}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_for_symbols_the_feed_did_not_ask_for_are_refused_and_counted() {
    let mut lines = binance_messages(&sample(USDM), 300);
    // An upstream that also sends symbols nobody subscribed to, each new.
    let foreign: Vec<String> = lines
        .iter()
        .filter(|line| line.contains("@bookTicker"))
        .take(50)
        .enumerate()
        .map(|(i, line)| line.replace("\"BTCUSDT\"", &format!("\"X{i}USDT\"")))
        .collect();
    assert_eq!(foreign.len(), 50);
    lines.extend(foreign);
    let exchange = exchange_playing(&lines).await;
    let feed = binance_feed(stream_url(exchange.addr), Duration::from_secs(30));
    let server =
        TestServer::start_feeds(ServerConfig::default(), vec![FeedConfig::Live(feed)]).await;
    let live = server.lives[0].stats().clone();
    eventually("every message read", || {
        live.messages.load(Relaxed) == lines.len() as u64
    })
    .await;
    assert_eq!(live.malformed.load(Relaxed), 50);
    let served: Vec<String> = server
        .hub
        .symbol_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(served, ["live:BTCUSDT"], "no name the feed did not ask for");
    assert!(snapshot(&server, "live:BTCUSDT").await["bid"].is_string());
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_feed_builds_the_same_book_as_replaying_the_same_capture() {
    let lines = binance_messages(&sample(USDM), LINES);
    let exchange = exchange_playing(&lines).await;
    let live = binance_feed(stream_url(exchange.addr), Duration::from_secs(30));
    let (server, live) = live_beside_replay(live, &lines).await;
    let replayed = server.replays[0].stats().ticks.load(Relaxed);
    eventually("live feed caught up", || {
        live.ticks.load(Relaxed) == replayed
    })
    .await;

    let from_live = snapshot(&server, "live:BTCUSDT").await;
    let from_replay = snapshot(&server, "replay:BTCUSDT").await;
    for field in BOOK_FIELDS {
        assert_eq!(from_live[field], from_replay[field], "{field}");
    }
    assert_eq!(live.malformed.load(Relaxed), 0);
    assert_eq!(live.messages.load(Relaxed), LINES as u64);
    let (_, feeds) = server.get("/api/feeds").await;
    let feeds: Value = serde_json::from_str(&feeds).expect("JSON");
    let fake = feeds
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "fake-binance"))
        .cloned();
    let fake = fake.expect("feed listed");
    assert_eq!(
        (fake["kind"].as_str(), fake["state"].as_str()),
        (Some("binance"), Some("live"))
    );
    assert_eq!(fake["connects"], 1);
    assert!(
        fake["exchange_latency_ns"]["count"].as_u64() > Some(0),
        "{fake}"
    );
    let page = server.get("/metrics").await.1;
    assert_eq!(
        metric(&page, r#"tickwire_feed_state{feed="fake-binance"}"#),
        1.0
    );
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_outage_makes_symbols_stale_then_live_and_clients_converge() {
    let lines = binance_messages(&sample(USDM), LINES);
    let (first, second) = lines.split_at(LINES / 2);
    let script = |part: &[String]| Script {
        messages: text_messages(part),
        hold: true,
        keepalive: None,
    };
    let exchange =
        FakeExchange::start("127.0.0.1:0".parse().expect("addr"), script(first), None).await;
    let addr = exchange.addr;
    let live = binance_feed(stream_url(addr), Duration::from_secs(30));
    let (server, live) = live_beside_replay(live, &lines).await;

    // Subscribe once the feed is live, so the only status is the outage's.
    eventually("first half played", || {
        live.messages.load(Relaxed) == first.len() as u64
    })
    .await;
    let mut client = Client::connect(&server.url("?symbols=live:BTCUSDT")).await;
    client.recv_type("subscribed").await;
    assert_eq!(client.recv().await["snapshot"], true);

    exchange.kill().await;
    let stale = client.recv().await;
    assert_eq!(
        (stale["symbol"].as_str(), stale["state"].as_str()),
        (Some("live:BTCUSDT"), Some("stale")),
        "{stale}"
    );
    let reason = stale["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("closed") || reason.contains("read failed"),
        "{reason}"
    );
    let before_outage = snapshot(&server, "live:BTCUSDT").await;
    assert!(
        before_outage["bid"].is_string(),
        "the last good book is kept while stale"
    );

    // The exchange comes back on the same port with the rest of the capture.
    let exchange = FakeExchange::start(addr, script(second), None).await;
    let mut tape = Tape::default();
    let live_again = loop {
        let message = client.recv().await;
        match message["type"].as_str() {
            Some("ticker") => tape.record(&message),
            Some("status") => break message,
            _ => {}
        }
    };
    assert_eq!(live_again["state"], "live");
    assert!(live.reconnects.load(Relaxed) >= 1);

    // Converges to the book the whole capture gives.
    eventually("second half played", || {
        live.messages.load(Relaxed) == lines.len() as u64
    })
    .await;
    let expected = snapshot(&server, "replay:BTCUSDT").await;
    // The newest version may already have come with the `live` status.
    let converged = |tape: &Tape| {
        tape.last.get("live:BTCUSDT").is_some_and(|last| {
            ["bid", "ask_size", "exchange_ts_ns", "last_size", "bid_size"]
                .iter()
                .all(|field| last[field] == expected[field])
        })
    };
    while !converged(&tape) {
        tape.record(&client.recv_type("ticker").await);
    }
    let last = &tape.last["live:BTCUSDT"];
    // Everything but `seq` (the first field), which counts versions per feed.
    for field in &BOOK_FIELDS[1..] {
        assert_eq!(last[field], expected[field], "{field}");
    }
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_but_connected_upstream_is_detected_as_stale() {
    let lines = binance_messages(&sample(USDM), 200);
    let exchange = exchange_playing(&lines).await;
    let feed = binance_feed(stream_url(exchange.addr), Duration::from_millis(300));
    let server =
        TestServer::start_feeds(ServerConfig::default(), vec![FeedConfig::Live(feed)]).await;
    let mut client = Client::connect(&server.url("?symbols=live:BTCUSDT")).await;
    client.recv_type("subscribed").await;
    let status = loop {
        let status = client.recv_type("status").await;
        if status["state"] == "stale"
            && status["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no market data"))
        {
            break status;
        }
    };
    assert_eq!(status["reason"], "no market data for 300 ms");
    // Silence counts as a disconnect: the feed reconnects, gets data, goes live.
    assert_eq!(client.recv_type("status").await["state"], "live");
    assert!(server.lives[0].stats().connects.load(Relaxed) >= 2);
    drop(exchange);
}

/// Pings and keep-alives are not prices: an upstream that sends only those
/// after its data goes stale as a silent one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_only_keeps_alive_is_detected_as_stale() {
    let lines = binance_messages(&sample(USDM), 200);
    let keepalives = [
        Message::Ping(Vec::new().into()),
        Message::text(r#"{"result":null,"id":1}"#),
    ];
    for keepalive in keepalives {
        let script = Script {
            messages: text_messages(&lines),
            hold: true,
            keepalive: Some((Duration::from_millis(50), keepalive.clone())),
        };
        let exchange =
            FakeExchange::start("127.0.0.1:0".parse().expect("addr"), script, None).await;
        let feed = binance_feed(stream_url(exchange.addr), Duration::from_millis(300));
        let server =
            TestServer::start_feeds(ServerConfig::default(), vec![FeedConfig::Live(feed)]).await;
        let mut client = Client::connect(&server.url("?symbols=live:BTCUSDT")).await;
        client.recv_type("subscribed").await;
        // Stale first while connecting, perhaps; then live; then stale again
        // for want of data (or no such status comes, and the wait fails).
        loop {
            let status = client.recv_type("status").await;
            if status["state"] == "stale" && status["reason"] == "no market data for 300 ms" {
                break;
            }
        }
        drop(exchange);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_upstream_is_counted_and_skipped() {
    let good = binance_messages(&sample(USDM), 300);
    let mut messages = vec![
        Message::text("not json at all"),
        Message::text(r#"{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"6180"#),
        Message::text(r#"{"stream":"btcusdt@weird","data":{"e":"weird","s":"BTCUSDT"}}"#),
        Message::text(
            r#"{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"x","B":"1","a":"2","A":"1"}}"#,
        ),
        Message::binary(vec![0xff, 0x00, 0x13]),
    ];
    messages.extend(text_messages(&good));
    let garbage = 5;
    let script = Script {
        messages,
        hold: true,
        keepalive: None,
    };
    let exchange = FakeExchange::start("127.0.0.1:0".parse().expect("addr"), script, None).await;
    let feed = binance_feed(stream_url(exchange.addr), Duration::from_secs(30));
    let server =
        TestServer::start_feeds(ServerConfig::default(), vec![FeedConfig::Live(feed)]).await;
    let live = server.lives[0].stats().clone();
    eventually("everything read", || {
        live.messages.load(Relaxed) == (garbage + good.len()) as u64
    })
    .await;
    assert_eq!(live.malformed.load(Relaxed), garbage as u64);
    assert!(live.ticks.load(Relaxed) > 0);
    assert_eq!(
        live.connects.load(Relaxed),
        1,
        "garbage never drops the connection"
    );
    let page = server.get("/metrics").await.1;
    assert_eq!(
        metric(
            &page,
            r#"tickwire_feed_malformed_total{feed="fake-binance"}"#
        ),
        garbage as f64
    );
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_upstreams_are_reached_through_rustls() {
    let dir = std::env::temp_dir().join(format!("tickwire-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem = dir.join("exchange.pem");
    let tls = self_signed_tls(&pem);
    let lines = binance_messages(&sample(USDM), 300);
    let script = Script {
        messages: text_messages(&lines),
        hold: true,
        keepalive: None,
    };
    let exchange =
        FakeExchange::start("127.0.0.1:0".parse().expect("addr"), script, Some(tls)).await;
    let url = format!(
        "wss://localhost:{}/stream?streams=btcusdt@bookTicker",
        exchange.addr.port()
    );

    // Without trusting the certificate the handshake fails and the feed retries.
    let untrusted = binance_feed(url.clone(), Duration::from_secs(30));
    let mut trusted = binance_feed(url, Duration::from_secs(30));
    trusted.name = "trusted".into();
    trusted.prefix = Some("tls".into());
    trusted.ca_file = Some(pem);
    let feeds = vec![FeedConfig::Live(untrusted), FeedConfig::Live(trusted)];
    let server = TestServer::start_feeds(ServerConfig::default(), feeds).await;
    let trusted = server.lives[1].stats().clone();
    eventually("all messages over TLS", || {
        trusted.messages.load(Relaxed) == lines.len() as u64
    })
    .await;
    let tls_book = snapshot(&server, "tls:BTCUSDT").await;
    assert!(tls_book["bid"].is_string());
    let untrusted = server.lives[0].stats();
    assert_eq!(
        untrusted.connects.load(Relaxed),
        0,
        "an unknown certificate is refused"
    );
    assert_eq!(untrusted.messages.load(Relaxed), 0);
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replays_to_the_same_book_as_the_capture() {
    use tickwire::feed::record::{record, Progress, RecordOptions};
    let lines = binance_messages(&sample(USDM), LINES);
    let capture =
        TestServer::start_feeds(ServerConfig::default(), vec![replay_of_lines(&lines)]).await;
    tokio::time::timeout(GUARD, capture.replays[0].finished())
        .await
        .expect("replay ends");
    let ticks = capture.replays[0].stats().ticks.load(Relaxed);

    // The exchange streams everything but the REST snapshot, which its API
    // serves: the recording holds the diffs, and the snapshot the feed
    // fetched, at the time it came.
    let (snapshots, stream): (Vec<String>, Vec<String>) = lines
        .iter()
        .cloned()
        .partition(|l| l.contains("\"lastUpdateId\""));
    let diffs = stream.iter().filter(|l| l.contains("depthUpdate")).count() as u64;
    let rest = FakeRest::start(vec![("BTCUSDT", vec![(200, snapshots[0].clone())])]).await;
    let exchange = exchange_playing(&stream).await;
    let out = std::env::temp_dir().join(format!("tickwire-rec-{}.ndjson.gz", std::process::id()));
    let options = RecordOptions {
        out: out.clone(),
        duration: None,
        rotate_bytes: Some(256 * 1024),
    };
    let progress = std::sync::Arc::new(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let feed = binance_depth_feed(exchange.addr, &rest, &["BTCUSDT"]);
    let recording = tokio::spawn(record(feed, options, progress.clone(), stop.clone()));
    eventually("every tick and depth message recorded", || {
        progress.ticks.load(Relaxed) == ticks && progress.depth_messages.load(Relaxed) == diffs + 1
    })
    .await;
    stop.cancel();
    let summary = recording.await.expect("task").expect("recording");
    assert_eq!(summary.ticks, ticks);
    assert_eq!(
        summary.depth_messages,
        diffs + 1,
        "every diff and one snapshot"
    );
    assert_eq!(rest.requests(), 1);
    assert!(
        summary.files.len() > 1,
        "rotation at 256 KiB: {:?}",
        summary.files
    );

    let replayed = replay_of_recording(&summary.files).await;
    let from_recording = snapshot(&replayed, "replay:BTCUSDT").await;
    let from_capture = snapshot(&capture, "replay:BTCUSDT").await;
    for field in BOOK_FIELDS {
        assert_eq!(from_recording[field], from_capture[field], "{field}");
    }
    // The depth book too, across the files the recording was split into.
    let (_, bids, asks) = book_top(&replayed.hub, "replay:BTCUSDT", 100);
    let (_, capture_bids, capture_asks) = book_top(&capture.hub, "replay:BTCUSDT", 100);
    assert_eq!((bids, asks), (capture_bids, capture_asks));
    for file in &summary.files {
        let _ = std::fs::remove_file(file);
    }
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_command_leaves_a_complete_file_on_ctrl_c() {
    use std::io::Read as _;
    let lines = binance_messages(&sample(USDM), LINES);
    let exchange = exchange_playing(&lines).await;
    let dir = std::env::temp_dir().join(format!("tickwire-record-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let feed = dir.join("fake.toml");
    std::fs::write(
        &feed,
        format!(
            "kind = \"binance\"\nurl = \"{}\"\nprefix = \"rec\"\n",
            stream_url(exchange.addr)
        ),
    )
    .expect("feed file");
    let out = dir.join("session.ndjson.gz");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(["record", "--feed"])
        .arg(&feed)
        .arg("--out")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("record");
    // Let it connect and write; the checks below hold however much it got.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    // A complete gzip stream of whole lines, each one tickwire NDJSON.
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&out).expect("recording"))
        .read_to_string(&mut text)
        .expect("a complete gzip stream");
    assert!(text.ends_with('\n'), "never cut mid-line");
    let mut lines_read = text.lines();
    let header: Value = serde_json::from_str(lines_read.next().expect("header")).expect("JSON");
    assert_eq!(header["tickwire_replay"], 1);
    let mut ticks = 0;
    for line in lines_read {
        let tick: Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(tick["symbol"], "BTCUSDT");
        ticks += 1;
    }
    assert!(
        stderr.contains(&format!("recorded {ticks} ticks")),
        "{stderr}"
    );
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coinbase_style_feed_subscribes_and_matches_the_replayed_capture() {
    use std::io::BufRead as _;
    let path = sample("coinbase-sample.ws.gz");
    let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(&path).expect("sample"),
    ));
    // What the exchange sent: every received line's JSON (not the client's own
    // lines, which start with the URL).
    let messages: Vec<String> = reader
        .lines()
        .map(|l| l.expect("line"))
        .filter(|l| !l.starts_with("wss://"))
        .map(|l| l.split_once(": ").expect("<time>: <json>").1.to_owned())
        .collect();
    let products: Vec<String> = {
        let mut products: Vec<String> = messages
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(m).ok())
            .filter(|m| m["type"] == "ticker" || m["type"] == "match" || m["type"] == "last_match")
            .filter_map(|m| m["product_id"].as_str().map(str::to_owned))
            .collect();
        products.sort();
        products.dedup();
        products
    };
    let exchange = exchange_playing(&messages).await;
    let live = LiveConfig {
        name: "fake-coinbase".into(),
        venue: Venue::Coinbase {
            products: products.clone(),
            channels: vec!["ticker".into(), "matches".into()],
        },
        url: format!("ws://{}", exchange.addr),
        symbols: products.clone(),
        prefix: Some("live".into()),
        ..binance_feed(String::new(), Duration::from_secs(30))
    };
    let replay = FeedConfig::Replay(replay_of(
        &[(Some("replay"), path)],
        Speed::Max,
        false,
        false,
    ));
    let server = TestServer::start_feeds(
        ServerConfig::default(),
        vec![FeedConfig::Live(live), replay],
    )
    .await;
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    let replayed = server.replays[0].stats().ticks.load(Relaxed);
    assert!(replayed > 0);
    let stats = server.lives[0].stats().clone();
    eventually("live feed caught up", || {
        stats.ticks.load(Relaxed) == replayed
    })
    .await;
    assert_eq!(stats.malformed.load(Relaxed), 0);
    let received = exchange.received.clone();
    eventually("the exchange read the subscribe request", || {
        received.lock().map(|r| !r.is_empty()).unwrap_or(false)
    })
    .await;
    let sent = received.lock().map(|r| r.clone()).unwrap_or_default();
    let subscribe: Value =
        serde_json::from_str(sent.first().expect("a subscribe message")).expect("JSON");
    assert_eq!(subscribe["type"], "subscribe");
    assert_eq!(subscribe["product_ids"], serde_json::json!(products));
    assert_eq!(
        subscribe["channels"],
        serde_json::json!(["ticker", "matches"])
    );
    for product in &products {
        let (status, _) = server.get(&format!("/api/snapshot/replay:{product}")).await;
        if status == 404 {
            continue; // Declared, but no ticker or match in the sample.
        }
        let from_live = snapshot(&server, &format!("live:{product}")).await;
        let from_replay = snapshot(&server, &format!("replay:{product}")).await;
        for field in BOOK_FIELDS {
            assert_eq!(from_live[field], from_replay[field], "{product} {field}");
        }
        // The capture's tickers have no sizes: the best bid and ask are the
        // depth book's, which the live feed builds from the same messages.
        assert!(from_live["bid_size"].is_string(), "{product}: {from_live}");
        assert_eq!(
            book_top(&server.hub, &format!("live:{product}"), 100),
            book_top(&server.hub, &format!("replay:{product}"), 100),
            "{product}: the book"
        );
    }
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synthetic_feed_keeps_its_schedule_and_stamps_intended_times() {
    let config = tickwire::feed::config::parse(
        "kind = \"synthetic\"\nsymbols = 20\nrate = 2000.0\nseed = 7\n",
        std::path::Path::new("feeds/test.toml"),
    )
    .expect("synthetic feed file");
    let server = TestServer::start_feeds(ServerConfig::default(), vec![config]).await;
    let (_, names) = server.get("/api/symbols").await;
    let names: Vec<String> = serde_json::from_str(&names).expect("JSON");
    assert_eq!(names.len(), 20);
    assert_eq!(names[0], "SYN000");
    let mut client = Client::connect(&server.url(&format!("?symbols={}", names.join(",")))).await;
    client.recv_type("subscribed").await;
    let mut tape = Tape::default();
    while tape.tickers < 500 {
        let ticker = client.recv_type("ticker").await;
        if ticker["snapshot"] == false {
            // The intended time comes before the feed took the update in.
            let intended = ticker["exchange_ts_ns"].as_i64().expect("intended time");
            assert!(intended <= ticker["ingest_ts_ns"].as_i64().expect("ingest time"));
            let (bid, ask) = (ticker["bid"].as_str(), ticker["ask"].as_str());
            let number = |v: Option<&str>| v.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            assert!(number(bid) < number(ask), "{ticker}");
        }
        tape.record(&ticker);
    }
    let (_, feeds) = server.get("/api/feeds").await;
    let feeds: Value = serde_json::from_str(&feeds).expect("JSON");
    assert_eq!(feeds[0]["kind"], "synthetic");
    assert!(feeds[0]["ticks"].as_u64() >= Some(500));
}

/// A Coinbase capture's received messages for `product`, in order.
fn coinbase_messages(product: &str) -> Vec<String> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(sample(COINBASE)).expect("sample");
    std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file))
        .lines()
        .map(|l| l.expect("line"))
        .filter(|l| !l.starts_with("wss://"))
        .filter_map(|l| l.split_once(": ").map(|(_, json)| json.to_owned()))
        .filter(|json| json.contains(&format!("\"product_id\":\"{product}\"")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_book_goes_stale_with_its_connection_and_resyncs_from_the_next_snapshot() {
    const PRODUCT: &str = "SKL-USD";
    let messages = coinbase_messages(PRODUCT);
    let is_type = |kind: &str| {
        let tag = format!("\"type\":\"{kind}\"");
        move |m: &&String| m.contains(&tag)
    };
    let snapshot_message = messages
        .iter()
        .find(is_type("snapshot"))
        .expect("a snapshot");
    let diffs: Vec<&String> = messages.iter().filter(is_type("l2update")).collect();
    assert!(diffs.len() >= 4, "{} diffs", diffs.len());
    // Each connection starts with the snapshot, as Coinbase's does; the
    // second carries the later diffs.
    let script = |diffs: &[&String]| Script {
        messages: text_messages(
            &std::iter::once(snapshot_message)
                .chain(diffs.iter().copied())
                .cloned()
                .collect::<Vec<_>>(),
        ),
        hold: true,
        keepalive: None,
    };
    let (first, second) = diffs.split_at(diffs.len() / 2);
    let exchange =
        FakeExchange::start("127.0.0.1:0".parse().expect("addr"), script(first), None).await;
    let addr = exchange.addr;
    let live = LiveConfig {
        name: "coinbase-book".into(),
        venue: Venue::Coinbase {
            products: vec![PRODUCT.into()],
            channels: vec!["level2_batch".into()],
        },
        url: format!("ws://{addr}"),
        symbols: vec![PRODUCT.into()],
        prefix: Some("live".into()),
        ..binance_feed(String::new(), Duration::from_secs(30))
    };
    let second_connection: String = std::iter::once(snapshot_message)
        .chain(second.iter().copied())
        .enumerate()
        .map(|(i, json)| format!("{}.5: {json}\n", 1_618_677_817 + i))
        .collect();
    let path = std::env::temp_dir().join(format!(
        "tickwire-live-{}-coinbase-book.ws",
        std::process::id()
    ));
    std::fs::write(&path, second_connection).expect("write capture");
    let replay = replay_of(&[(Some("replay"), path.clone())], Speed::Max, false, false);
    let feeds = vec![FeedConfig::Live(live), FeedConfig::Replay(replay)];
    let server = TestServer::start_feeds(ServerConfig::default(), feeds).await;
    let symbol = format!("live:{PRODUCT}");
    let stats = server.lives[0].stats().clone();
    eventually("first connection played", || {
        stats.recognised.load(Relaxed) == 1 + first.len() as u64
    })
    .await;
    let mut client = Client::connect(&server.url("")).await;
    client
        .send(serde_json::json!({"op":"subscribe","id":1,"channel":"book","depth":10,"symbols":[&symbol]}))
        .await;
    client.recv_type("subscribed").await;
    let book = client.recv_type("book").await;
    assert_eq!(book["snapshot"], true);

    exchange.kill().await;
    let stale = client.recv_type("status").await;
    assert_eq!(
        (stale["channel"].as_str(), stale["state"].as_str()),
        (Some("book"), Some("stale")),
        "{stale}"
    );
    // The ticker's best bid and ask were the book's: emptied with it, so
    // that a trade before the next snapshot cannot serve them as live.
    let ticker = snapshot(&server, &symbol).await;
    assert!(
        ticker["bid"].is_null() && ticker["ask"].is_null(),
        "{ticker}"
    );

    // Back on the same port: a fresh snapshot, then the rest of the diffs.
    let exchange = FakeExchange::start(addr, script(second), None).await;
    let live_again = client.recv_type("status").await;
    assert_eq!(
        (live_again["channel"].as_str(), live_again["state"].as_str()),
        (Some("book"), Some("live")),
        "{live_again}"
    );
    eventually("second connection played", || {
        stats.recognised.load(Relaxed) == 2 + diffs.len() as u64
    })
    .await;

    // The live book is what replaying the second connection's messages
    // gives: the first connection's book was dropped with it.
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    let _ = std::fs::remove_file(&path);
    let (_, live_bids, live_asks) = book_top(&server.hub, &symbol, 100);
    let (_, bids, asks) = book_top(&server.hub, &format!("replay:{PRODUCT}"), 100);
    assert_eq!((live_bids, live_asks), (bids.clone(), asks.clone()));
    let ticker = snapshot(&server, &symbol).await;
    assert_eq!(
        (&ticker["bid"], &ticker["ask"]),
        (&bids[0][0], &asks[0][0]),
        "the ticker's best bid and ask are the book's: {ticker}"
    );
    drop(exchange);
}

/// A live Binance feed with `depth_snapshot_url` pointed at `rest`.
fn binance_depth_feed(exchange: SocketAddr, rest: &FakeRest, symbols: &[&str]) -> LiveConfig {
    let streams: Vec<String> = symbols
        .iter()
        .map(|s| format!("{0}@bookTicker/{0}@depth@100ms", s.to_ascii_lowercase()))
        .collect();
    LiveConfig {
        venue: Venue::Binance {
            depth_snapshot_url: Some(rest.template()),
        },
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        ..binance_feed(
            format!("ws://{exchange}/stream?streams={}", streams.join("/")),
            Duration::from_secs(30),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_binance_book_starts_from_the_rest_snapshot_and_matches_the_replay() {
    let lines = binance_messages(&sample(USDM), 2_000);
    let (snapshots, stream): (Vec<String>, Vec<String>) = lines
        .iter()
        .cloned()
        .partition(|l| l.contains("\"lastUpdateId\""));
    assert_eq!(snapshots.len(), 1, "the capture's one REST snapshot");
    let diffs = stream.iter().filter(|l| l.contains("depthUpdate")).count();
    assert!(diffs > 50, "{diffs} diffs");
    let rest = FakeRest::start(vec![("BTCUSDT", vec![(200, snapshots[0].clone())])]).await;
    let exchange = exchange_playing(&stream).await;
    let live = binance_depth_feed(exchange.addr, &rest, &["BTCUSDT"]);
    let (server, live) = live_beside_replay(live, &lines).await;
    eventually("the live feed read the stream", || {
        live.messages.load(Relaxed) == stream.len() as u64
    })
    .await;
    eventually("the live book is in sync", || {
        server
            .hub
            .get("live:BTCUSDT")
            .is_some_and(|e| e.depth().status().state == SymbolState::Live)
    })
    .await;
    assert_eq!(live.depth_snapshots.load(Relaxed), 1);
    assert_eq!(live.depth_snapshot_failures.load(Relaxed), 0);
    assert_eq!(rest.requests(), 1, "one snapshot was enough");
    let query = rest
        .queries
        .lock()
        .map(|q| q[0].clone())
        .unwrap_or_default();
    assert_eq!(query, "symbol=BTCUSDT&limit=1000");
    let (_, live_bids, live_asks) = book_top(&server.hub, "live:BTCUSDT", 100);
    let (_, bids, asks) = book_top(&server.hub, "replay:BTCUSDT", 100);
    assert_eq!((live_bids, live_asks), (bids, asks), "the same book");
    // The ticker keeps the venue's own quotes: bookTicker, not the book.
    let from_live = snapshot(&server, "live:BTCUSDT").await;
    let from_replay = snapshot(&server, "replay:BTCUSDT").await;
    for field in BOOK_FIELDS {
        assert_eq!(from_live[field], from_replay[field], "{field}");
    }
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("tickwire_feed_depth_snapshots_total{feed=\"fake-binance\"} 1"),
        "{metrics}"
    );
    drop(exchange);
}

/// Spot-style messages for one symbol: a REST snapshot, and a diff.
fn spot_snapshot(last_update_id: u64, bid: &str, ask: &str) -> String {
    format!(r#"{{"lastUpdateId":{last_update_id},"bids":[["{bid}","1"]],"asks":[["{ask}","1"]]}}"#)
}

fn spot_diff(symbol: &str, first: u64, last: u64, bid: &str) -> String {
    format!(
        r#"{{"stream":"{}@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"{symbol}","U":{first},"u":{last},"b":[["{bid}","2"]],"a":[]}}}}"#,
        symbol.to_ascii_lowercase()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_live_diffs_or_a_reconnect_fetches_a_new_snapshot_and_refusals_are_counted() {
    // BTCUSDT syncs from the first snapshot (10) with diff 11; diff 30,
    // which the exchange sends from 200 ms on and repeats, leaves a gap, and
    // the second snapshot (29) resyncs the book. ETHUSDT's first request is
    // refused: its book waits, nothing else is held up, and it asks again
    // by itself, with no diff to prompt it.
    let rest = FakeRest::start(vec![
        (
            "BTCUSDT",
            vec![
                (200, spot_snapshot(10, "99", "101")),
                (200, spot_snapshot(29, "95", "105")),
            ],
        ),
        (
            "ETHUSDT",
            vec![(503, "busy".into()), (200, spot_snapshot(4, "2", "4"))],
        ),
    ])
    .await;
    // Two diffs that are refused and counted: a negative size, and a
    // symbol the feed did not ask for.
    let refused = [
        spot_diff("BTCUSDT", 12, 12, "97").replace(r#""2"]"#, r#""-2"]"#),
        spot_diff("XRPUSDT", 1, 1, "1"),
    ];
    let script = Script {
        messages: text_messages(&[
            refused[0].clone(),
            spot_diff("BTCUSDT", 11, 11, "98"),
            spot_diff("ETHUSDT", 5, 5, "3"),
            refused[1].clone(),
        ]),
        hold: true,
        keepalive: Some((
            Duration::from_millis(200),
            Message::text(spot_diff("BTCUSDT", 30, 30, "94")),
        )),
    };
    let exchange =
        FakeExchange::start("127.0.0.1:0".parse().expect("addr"), script.clone(), None).await;
    let config = binance_depth_feed(exchange.addr, &rest, &["BTCUSDT", "ETHUSDT"]);
    let server =
        TestServer::start_feeds(ServerConfig::default(), vec![FeedConfig::Live(config)]).await;
    let live = server.lives[0].stats().clone();
    let resynced = || {
        let book = server
            .hub
            .get("live:BTCUSDT")
            .and_then(|e| e.depth().current());
        book.is_some_and(|b| {
            b.top(1)
                .0
                .first()
                .is_some_and(|l| l.price.to_string() == "95")
        })
    };
    eventually("BTCUSDT resynced from the second snapshot", resynced).await;
    let (_, bids, asks) = book_top(&server.hub, "live:BTCUSDT", 10);
    assert_eq!(bids, serde_json::json!([["95", "1"], ["94", "2"]]));
    assert_eq!(asks, serde_json::json!([["105", "1"]]));
    let depth_state = |symbol: &str| server.hub.get(symbol).map(|e| e.depth().status().state);
    eventually("ETHUSDT synced on its second request", || {
        depth_state("live:ETHUSDT") == Some(SymbolState::Live)
    })
    .await;
    let (_, eth_bids, _) = book_top(&server.hub, "live:ETHUSDT", 10);
    assert_eq!(eth_bids, serde_json::json!([["3", "2"], ["2", "1"]]));
    assert_eq!(live.depth_snapshot_failures.load(Relaxed), 1);
    let asked_for = |symbol: &str| {
        let queries = rest.queries.lock().map(|q| q.clone()).unwrap_or_default();
        queries.iter().filter(|q| q.contains(symbol)).count()
    };
    assert_eq!(asked_for("ETHUSDT"), 2, "refused, then asked again");
    assert_eq!(live.malformed.load(Relaxed), refused.len() as u64);
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("tickwire_feed_depth_snapshot_failures_total{feed=\"fake-binance\"} 1"),
        "{metrics}"
    );

    // A lost connection drops the book; the next one fetches a snapshot
    // again (the API's last answer, 29), which diff 30 bridges.
    let mut client = Client::connect(&server.url("")).await;
    client
        .send(serde_json::json!({"op":"subscribe","id":1,"channel":"book","depth":10,"symbols":["live:BTCUSDT"]}))
        .await;
    client.recv_type("subscribed").await;
    assert_eq!(client.recv_type("book").await["snapshot"], true);
    let addr = exchange.addr;
    exchange.kill().await;
    let stale = client.recv_type("status").await;
    assert_eq!(
        (stale["channel"].as_str(), stale["state"].as_str()),
        (Some("book"), Some("stale"))
    );
    let exchange = FakeExchange::start(addr, script, None).await;
    let live_again = client.recv_type("status").await;
    assert_eq!(live_again["state"], "live", "{live_again}");
    eventually("BTCUSDT rebuilt, diff 30 on the new snapshot", || {
        book_top(&server.hub, "live:BTCUSDT", 10).1 == serde_json::json!([["95", "1"], ["94", "2"]])
    })
    .await;
    drop(exchange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_snapshots_come_over_https_and_refusals_say_why() {
    use tickwire::feed::rest;
    let dir = std::env::temp_dir().join(format!("tickwire-rest-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem = dir.join("rest.pem");
    let body = spot_snapshot(10, "99", "101");
    let api = FakeRest::start_with(
        vec![
            ("BTCUSDT", vec![(200, body.clone())]),
            ("ETHUSDT", vec![(429, "slow down".into())]),
        ],
        Some(self_signed_tls(&pem)),
    )
    .await;
    let trusted = tickwire::client::tls_client_config(Some(&pem)).expect("CA file");
    let untrusted = tickwire::client::tls_client_config(None).expect("web roots");
    let url = |symbol: &str| rest::snapshot_url(&api.template(), symbol);
    let timeout = Duration::from_secs(5);

    let fetched = rest::get(&url("BTCUSDT"), &trusted, timeout).await;
    assert_eq!(fetched.as_deref(), Ok(body.as_bytes()));
    let refused = rest::get(&url("ETHUSDT"), &trusted, timeout).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("429")),
        "{refused:?}"
    );
    let unknown_issuer = rest::get(&url("BTCUSDT"), &untrusted, timeout).await;
    assert!(
        unknown_issuer
            .as_ref()
            .is_err_and(|e| e.to_string().starts_with("TLS failed")),
        "{unknown_issuer:?}"
    );
    assert_eq!(api.requests(), 2, "the untrusted one never got to ask");
    assert_eq!(
        refused.err().and_then(|e| e.back_off()),
        Some(rest::DEFAULT_BACK_OFF),
        "a 429 without Retry-After holds the feed for the default"
    );

    // A 429 that says how long: the feed holds back for that long.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answer = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).await;
        let reply = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n";
        stream.write_all(reply.as_bytes()).await.expect("reply");
    });
    let told = rest::get(&format!("http://{addr}/depth"), &trusted, timeout).await;
    assert_eq!(
        told.err().and_then(|e| e.back_off()),
        Some(Duration::from_secs(7))
    );
    answer.await.expect("served");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coinbase_recording_across_a_reconnect_replays_to_what_was_served_live() {
    use tickwire::feed::record::{record, Progress, RecordOptions};
    const PRODUCT: &str = "SKL-USD";
    // A sized ticker before the book is in sync sets the top; one after it
    // is passed by, as the book gives the top (Coinbase's tickers come with
    // trades only).
    let ticker = |bid: &str| {
        format!(
            r#"{{"type":"ticker","product_id":"{PRODUCT}","best_bid":"{bid}","best_bid_size":"1","best_ask":"0.9","best_ask_size":"2","price":"0.8","time":"2021-04-17T16:43:37.500000Z"}}"#
        )
    };
    let mut messages = vec![ticker("0.70")];
    messages.extend(coinbase_messages(PRODUCT));
    messages.push(ticker("0.71"));
    let count = |kinds: &[&str]| {
        let tags: Vec<String> = kinds.iter().map(|k| format!("\"type\":\"{k}\"")).collect();
        messages
            .iter()
            .filter(|m| tags.iter().any(|t| m.contains(t)))
            .count() as u64
    };
    let depth = count(&["snapshot", "l2update"]);
    let ticks = count(&["match", "last_match"]) + 2;
    let script = Script {
        messages: text_messages(&messages),
        hold: true,
        keepalive: None,
    };
    let exchange =
        FakeExchange::start("127.0.0.1:0".parse().expect("addr"), script.clone(), None).await;
    let addr = exchange.addr;
    let feed = LiveConfig {
        name: "coinbase-rec".into(),
        venue: Venue::Coinbase {
            products: vec![PRODUCT.into()],
            channels: vec!["ticker".into(), "matches".into(), "level2_batch".into()],
        },
        url: format!("ws://{addr}"),
        symbols: vec![PRODUCT.into()],
        prefix: Some("live".into()),
        ..binance_feed(String::new(), Duration::from_secs(30))
    };
    let server = TestServer::start_feeds(
        ServerConfig::default(),
        vec![FeedConfig::Live(feed.clone())],
    )
    .await;
    let live = server.lives[0].stats().clone();
    let out =
        std::env::temp_dir().join(format!("tickwire-rec-cb-{}.ndjson.gz", std::process::id()));
    let options = RecordOptions {
        out: out.clone(),
        duration: None,
        rotate_bytes: None,
    };
    let progress = Arc::new(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let recording = tokio::spawn(record(feed, options, progress.clone(), stop.clone()));
    let per_connection = messages.len() as u64;
    let played = |connections: u64| {
        let (live, progress) = (live.clone(), progress.clone());
        move || {
            live.messages.load(Relaxed) == connections * per_connection
                && progress.depth_messages.load(Relaxed) == connections * depth
                && progress.ticks.load(Relaxed) == connections * ticks
        }
    };
    eventually("the first connection played to both", played(1)).await;
    exchange.kill().await;
    let exchange = FakeExchange::start(addr, script, None).await;
    eventually("the second connection played to both", played(2)).await;
    stop.cancel();
    let summary = recording.await.expect("task").expect("recording");

    let replayed = replay_of_recording(&summary.files).await;
    let from_live = snapshot(&server, &format!("live:{PRODUCT}")).await;
    let from_recording = snapshot(&replayed, &format!("replay:{PRODUCT}")).await;
    for field in BOOK_FIELDS {
        assert_eq!(from_recording[field], from_live[field], "{field}");
    }
    assert!(
        from_live["bid_size"].is_string(),
        "the book's top: {from_live}"
    );
    assert_ne!(from_live["bid"], "0.71", "the later ticker was passed by");
    let (_, live_bids, _) = book_top(&server.hub, &format!("live:{PRODUCT}"), 100);
    let (_, bids, _) = book_top(&replayed.hub, &format!("replay:{PRODUCT}"), 100);
    assert_eq!(live_bids, bids);
    for file in &summary.files {
        let _ = std::fs::remove_file(file);
    }
    drop(exchange);
}
