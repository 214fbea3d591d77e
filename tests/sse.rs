//! The Server-Sent Events fallback and symbol status, over real sockets.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use rust_decimal::Decimal;
use serde_json::json;
use tickwire::fanout::SymbolState;
use tickwire::feed::replay::Speed;
use tickwire::normalize::{BookUpdate, Tick};
use tickwire::server::ServerConfig;
use tickwire::session::SessionConfig;
use tokio::io::AsyncReadExt as _;

async fn live_server() -> TestServer {
    TestServer::start(ServerConfig::default(), both_samples_looping()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_the_same_messages_as_the_websocket() {
    streams_like_the_websocket(live_server().await).await;
}

#[tokio::test]
async fn with_http_on_its_own_thread_sse_streams_the_same_messages() {
    let server = TestServer::start_fronted(ServerConfig::default(), both_samples_looping()).await;
    streams_like_the_websocket(server).await;
}

async fn streams_like_the_websocket(server: TestServer) {
    let entry = server.hub.get("usdm:BTCUSDT").expect("symbol");
    eventually("first update", || entry.current().is_some()).await;

    let (status, head, mut events) =
        SseClient::connect(server.addr, "/sse?symbols=usdm:BTCUSDT,NOPE").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert_eq!(
        events.next().await,
        Some(json!({"type": "subscribed", "channel": "ticker", "symbols": ["usdm:BTCUSDT"]}))
    );
    let snapshot = events.next().await.expect("snapshot");
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["snapshot"].as_bool()),
        (Some("ticker"), Some(true))
    );
    let error = events.next().await.expect("error");
    assert_eq!(error["code"], "unknown_symbol");
    let mut tape = Tape::default();
    tape.record(&snapshot);
    while tape.tickers < 10 {
        tape.record(&events.next_type("ticker").await);
    }
    assert_eq!(server.metrics().connections.load(Relaxed), 1);
    drop(events);
    eventually("stream released", || {
        server.metrics().connections.load(Relaxed) == 0
            && server.metrics().subscriptions.load(Relaxed) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_without_any_subscription_ends_after_the_idle_timeout() {
    let config = ServerConfig {
        session: SessionConfig {
            idle_timeout: Duration::from_secs(1),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let files = [(Some("usdm"), sample(USDM))];
    let server = TestServer::start(config, vec![replay_of(&files, Speed::Max, false, true)]).await;
    let (status, _, mut events) = SseClient::connect(server.addr, "/sse?symbols=NOPE").await;
    assert_eq!(status, 200);
    let error = events.next_type("error").await;
    assert_eq!(error["code"], "unknown_symbol");
    // The stream holds a connection and serves nothing: it ends.
    while events.next().await.is_some() {}
    let series = r#"tickwire_connections_closed_total{reason="idle_timeout"}"#;
    eventually_metric(&server, series, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_needs_symbols_and_ends_at_shutdown() {
    let mut server = live_server().await;
    let (status, _, _) = SseClient::connect(server.addr, "/sse").await;
    assert_eq!(status, 400);
    let page = server.get("/metrics").await.1;
    let series = r#"tickwire_handshakes_refused_total{reason="bad_query"}"#;
    assert_eq!(metric(&page, series), 1.0, "the refusal is counted");
    let (_, _, mut events) = SseClient::connect(server.addr, "/sse?symbols=spot:BTCUSDT").await;
    events.next_type("subscribed").await;
    server.shutdown().await.expect("shutdown");
    while events.next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_symbols_parameter_names_the_same_list_as_on_the_websocket() {
    let server = settled_server(ServerConfig::default()).await;
    let mut ws = Client::connect(&server.url("")).await;
    ws.send(json!({"op": "subscribe", "symbols": ["usdm:BTCUSDT", "", " spot:BTCUSDT", ""]}))
        .await;
    let by_request = ws.recv_until_pong().await;
    let path = "/sse?symbols=usdm:BTCUSDT,,%20spot:BTCUSDT,";
    let (status, _, mut events) = SseClient::connect(server.addr, path).await;
    assert_eq!(status, 200);
    let mut by_url = Vec::new();
    while by_url.len() < by_request.len() {
        let event = events.next().await.expect("stream open");
        if event["type"] != "status" {
            by_url.push(event);
        }
    }
    assert_eq!(by_url, by_request);
    let error = by_request.last().expect("an error");
    assert_eq!(
        (&error["code"], &error["symbols"]),
        (&json!("unknown_symbol"), &json!(["", " spot:BTCUSDT"]))
    );
    // An empty value names no symbol: nothing to stream.
    let (status, _, _) = SseClient::connect(server.addr, "/sse?symbols=").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_live_status_reach_subscribers_on_both_transports() {
    // The replay never starts: this test drives the book by hand.
    let files = [(Some("usdm"), sample(USDM))];
    let server = TestServer::start(
        ServerConfig::default(),
        vec![replay_of(&files, Speed::Max, false, true)],
    )
    .await;
    let entry = server.hub.get("usdm:BTCUSDT").expect("symbol");
    let tick = |price: i64| Tick {
        recv_ts_ns: 0,
        exchange_ts_ns: None,
        update: BookUpdate::Trade {
            price: Decimal::new(price, 1),
            size: Decimal::ONE,
        },
    };
    server
        .hub
        .publish(&entry, &tick(10), tickwire::wall_clock_ns());

    let mut ws = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
    ws.recv_type("subscribed").await;
    let (_, _, mut sse) = SseClient::connect(server.addr, "/sse?symbols=usdm:BTCUSDT").await;
    sse.next_type("subscribed").await;

    server
        .hub
        .set_status(&entry, SymbolState::Stale, "feed disconnected");
    let expected = json!({"type": "status", "symbol": "usdm:BTCUSDT", "state": "stale", "reason": "feed disconnected"});
    assert_eq!(ws.recv_type("status").await, expected);
    assert_eq!(sse.next_type("status").await, expected);

    // A client subscribing while the symbol is stale is told so with its snapshot.
    let mut late = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
    late.recv_type("subscribed").await;
    assert_eq!(late.recv().await["snapshot"], true);
    assert_eq!(late.recv().await, expected);

    // The next update makes it live again: the update, then the status.
    server
        .hub
        .publish(&entry, &tick(11), tickwire::wall_clock_ns());
    for client in [&mut ws, &mut late] {
        let update = client.recv_type("ticker").await;
        assert_eq!(update["last"], "1.1");
        assert_eq!(client.recv().await["state"], "live");
    }
    assert_eq!(sse.next_type("ticker").await["last"], "1.1");
    assert_eq!(sse.next().await.expect("status")["state"], "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stopped_reading_ends_as_stalled() {
    // Short ping rounds, so the stall bound is short too.
    let config = ServerConfig {
        session: SessionConfig {
            ping_interval: Duration::from_millis(100),
            ping_timeout: Duration::from_millis(100),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let files = [(Some("usdm"), sample(USDM))];
    let server = TestServer::start(config, vec![replay_of(&files, Speed::Max, true, false)]).await;
    let stream = stalled_sse_client(server.addr, "/sse?symbols=usdm:BTCUSDT").await;
    // Never read: the socket's buffers fill, then the stream's channel.
    let series = r#"tickwire_connections_closed_total{reason="stalled"}"#;
    eventually_metric(&server, series, 1.0).await;
    assert_eq!(server.metrics().connections.load(Relaxed), 0);
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_that_is_let_go_also_closes_its_socket() {
    // A socket left open stays open.
    let files = [(Some("usdm"), sample(USDM))];
    let replays = vec![replay_of(&files, Speed::Max, true, false)];
    let server = TestServer::start(short_stall_bound(), replays).await;
    let mut stream = stalled_sse_client(server.addr, "/sse?symbols=usdm:BTCUSDT").await;
    let series = r#"tickwire_connections_closed_total{reason="stalled"}"#;
    eventually_metric(&server, series, 1.0).await;
    // Reading now only drains what the server had queued: its end of the
    // connection is gone, so the bytes end without the stream's last chunk.
    let mut received = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut received))
        .await
        .expect("the server closed the connection")
        .expect("read");
    assert!(
        !received.ends_with(b"0\r\n\r\n"),
        "the stream was ended, not cut"
    );
}
