//! Protocol v1 over real sockets: the request/answer flows, and every kind of
//! bad input answered with its documented error or close code while the server
//! keeps serving everyone else.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use serde_json::json;
use tickwire::feed::replay::Speed;
use tickwire::server::ServerConfig;
use tickwire::session::SessionConfig;
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::Message;

async fn live_server(config: ServerConfig) -> TestServer {
    TestServer::start(config, both_samples_looping()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_answers_then_snapshots_then_live_updates_in_seq_order() {
    let server = live_server(ServerConfig::default()).await;
    let entry = server
        .hub
        .get("usdm:BTCUSDT")
        .expect("declared before any update");
    eventually("first usdm update", || entry.current().is_some()).await;

    let mut client = Client::connect(&server.url("")).await;
    client
        .send(json!({"op": "subscribe", "id": 7, "symbols": ["usdm:BTCUSDT", "NOPE", "NOPE", "usdm:BTCUSDT"]}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "subscribed", "id": 7, "channel": "ticker", "symbols": ["usdm:BTCUSDT"]})
    );
    let snapshot = client.recv().await;
    assert_eq!(snapshot["type"], "ticker");
    assert_eq!(snapshot["snapshot"], true);
    assert_eq!(snapshot["skipped"], 0);
    assert!(snapshot["bid"].is_string() && snapshot["ask_size"].is_string());
    assert!(snapshot["ingest_ts_ns"].as_i64() > Some(0));
    assert_eq!(
        client.recv().await,
        json!({"type": "error", "id": 7, "code": "unknown_symbol", "message": "no such symbol", "symbols": ["NOPE"]})
    );

    let mut tape = Tape::default();
    tape.record(&snapshot);
    while tape.tickers < 20 {
        let ticker = client.recv_type("ticker").await;
        assert_eq!(ticker["snapshot"], false);
        tape.record(&ticker);
    }
    // Samples are recorded just after the write that delivered them: poll.
    let deadline = tokio::time::Instant::now() + GUARD;
    let latency = loop {
        let (status, latency) = server.get("/api/latency").await;
        assert_eq!(status, 200);
        let latency: serde_json::Value = serde_json::from_str(&latency).expect("JSON");
        if latency["count"].as_u64() >= Some(19) {
            break latency;
        }
        assert!(tokio::time::Instant::now() < deadline, "{latency}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(latency["p50_ns"].as_u64() <= latency["max_ns"].as_u64());
    let page = server.get("/metrics").await.1;
    assert_eq!(metric(&page, "tickwire_connections"), 1.0);
    assert_eq!(metric(&page, "tickwire_subscriptions"), 1.0);
    assert_eq!(
        metric(
            &page,
            r#"tickwire_client_errors_total{code="unknown_symbol"}"#
        ),
        1.0
    );
    assert!(metric(&page, "tickwire_delivery_latency_seconds_count") >= 19.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_name_is_told_the_served_symbols_it_may_mean() {
    let server = live_server(ServerConfig::default()).await;
    let (_, names) = server.get("/api/symbols").await;
    let names: Vec<String> = serde_json::from_str(&names).expect("JSON");
    let meant: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|name| name.ends_with(":BTCUSDT"))
        .collect();
    assert!(meant.len() >= 2, "{names:?}");
    let hint = format!(
        "no such symbol (btcusdt: did you mean {}?)",
        meant.join(", ")
    );

    let mut client = Client::connect(&server.url("")).await;
    client
        .send(json!({"op": "subscribe", "id": 1, "symbols": ["btcusdt", "NOPE"]}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "subscribed", "id": 1, "channel": "ticker", "symbols": []})
    );
    assert_eq!(
        client.recv().await,
        json!({"type": "error", "id": 1, "code": "unknown_symbol", "message": hint, "symbols": ["btcusdt", "NOPE"]})
    );
    let (status, body) = server.get("/api/snapshot/btcusdt").await;
    assert_eq!(status, 404, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body, json!({"error": "unknown_symbol", "message": hint}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_symbols_parameter_is_answered_as_an_empty_subscribe_request() {
    let server = live_server(ServerConfig::default()).await;
    let mut by_url = Client::connect(&server.url("?symbols=")).await;
    let mut by_message = Client::connect(&server.url("")).await;
    by_message
        .send(json!({"op": "subscribe", "symbols": []}))
        .await;
    let expected = json!({"type": "subscribed", "channel": "ticker", "symbols": []});
    assert_eq!(by_url.recv_type("subscribed").await, expected);
    assert_eq!(by_message.recv_type("subscribed").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_subscribe_list_ping_and_unsubscribe() {
    let server = live_server(ServerConfig::default()).await;
    let mut client = Client::connect(&server.url("?symbols=spot:BTCUSDT,usdm:BTCUSDT")).await;
    let subscribed = client.recv_type("subscribed").await;
    assert_eq!(
        subscribed["symbols"],
        json!(["spot:BTCUSDT", "usdm:BTCUSDT"])
    );
    assert!(
        subscribed.get("id").is_none(),
        "no id to echo: {subscribed}"
    );

    client.send(json!({"op": "list", "id": 1})).await;
    let list = client.recv_type("symbols").await;
    assert_eq!(
        list,
        json!({"type": "symbols", "id": 1, "symbols": ["spot:BTCUSDT", "usdm:BTCUSDT"]})
    );

    client.send(json!({"op": "ping", "id": 9})).await;
    let pong = client.recv_type("pong").await;
    assert_eq!(pong["id"], 9);
    assert!(pong["server_ts_ns"].as_i64() > Some(1_600_000_000_000_000_000));

    // Subscribing again is accepted and answered with a fresh snapshot (once
    // the symbol has data: a symbol without data has no snapshot to send).
    let spot = server.hub.get("spot:BTCUSDT").expect("symbol");
    eventually("first spot update", || spot.current().is_some()).await;
    client
        .send(json!({"op": "subscribe", "id": 2, "symbols": ["spot:BTCUSDT"]}))
        .await;
    let again = client.recv_type("subscribed").await;
    assert_eq!(again["symbols"], json!(["spot:BTCUSDT"]));
    let snapshot = client.recv_type("ticker").await;
    assert_eq!(
        (snapshot["symbol"].as_str(), snapshot["snapshot"].as_bool()),
        (Some("spot:BTCUSDT"), Some(true))
    );

    client
        .send(json!({"op": "unsubscribe", "id": 3, "symbols": ["spot:BTCUSDT"]}))
        .await;
    let unsubscribed = client.recv_type("unsubscribed").await;
    assert_eq!(unsubscribed["symbols"], json!(["spot:BTCUSDT"]));
    // Nothing for spot after the answer; usdm keeps flowing.
    let mut usdm = 0;
    while usdm < 30 {
        let message = client.recv().await;
        assert_eq!(message["type"], "ticker");
        assert_eq!(
            message["symbol"], "usdm:BTCUSDT",
            "update after unsubscribed"
        );
        usdm += 1;
    }
    client
        .send(json!({"op": "unsubscribe", "symbols": ["usdm:BTCUSDT"]}))
        .await;
    client.recv_type("unsubscribed").await;
    eventually("subscriptions released", || {
        server
            .metrics()
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_bad_request_and_the_connection_stays_open() {
    let server = live_server(ServerConfig::default()).await;
    let mut client = Client::connect(&server.url("")).await;
    let cases = [
        ("{not json", None),
        (r#"[1,2,3]"#, None),
        (r#"{"op":"fly","id":11}"#, Some(11)),
        (r#"{"id":12}"#, Some(12)),
        (
            r#"{"op":"subscribe","id":13,"symbols":"spot:BTCUSDT"}"#,
            Some(13),
        ),
        (r#"{"op":"subscribe","id":14}"#, Some(14)),
        (
            r#"{"op":"subscribe","id":15,"symbols":["spot:BTCUSDT"],"channel":"trades"}"#,
            Some(15),
        ),
        (
            r#"{"op":"subscribe","id":16,"symbols":["spot:BTCUSDT"],"max_rate_hz":0}"#,
            Some(16),
        ),
    ];
    for (request, id) in cases {
        client.send_raw(Message::text(request)).await;
        let error = client.recv_type("error").await;
        assert_eq!(error["code"], "bad_request", "{request}");
        assert_eq!(error["id"].as_u64(), id, "{request}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    client.send(json!({"op": "ping", "id": 99})).await;
    assert_eq!(client.recv_type("pong").await["id"], 99, "still serving");
    let page = server.get("/metrics").await.1;
    assert_eq!(
        metric(&page, r#"tickwire_client_errors_total{code="bad_request"}"#),
        8.0
    );
}

/// A server that lets each connection hold one subscription.
fn one_subscription_per_connection() -> ServerConfig {
    ServerConfig {
        session: SessionConfig {
            max_subscriptions: 1,
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_limit_is_enforced_per_connection() {
    let server = live_server(one_subscription_per_connection()).await;
    let mut client = Client::connect(&server.url("")).await;
    client
        .send(json!({"op": "subscribe", "id": 1, "symbols": ["spot:BTCUSDT", "usdm:BTCUSDT", "usdm:BTCUSDT"]}))
        .await;
    // Repeats count once, refused or not.
    assert_eq!(
        client.recv_type("subscribed").await["symbols"],
        json!(["spot:BTCUSDT"])
    );
    let error = client.recv_type("error").await;
    assert_eq!(error["code"], "limit_exceeded");
    assert_eq!(error["symbols"], json!(["usdm:BTCUSDT"]));
    assert_eq!(error["message"], "at most 1 subscription per connection");
}

/// A fresh client can still subscribe and get data: the server was unharmed.
async fn assert_still_serving(server: &TestServer) {
    let mut client = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
    client.recv_type("subscribed").await;
    client.recv_type("ticker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_with_1009() {
    let config = ServerConfig {
        session: SessionConfig {
            max_message_bytes: 1024,
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = live_server(config).await;
    let mut client = Client::connect(&server.url("")).await;
    let huge = format!(r#"{{"op":"subscribe","symbols":["{}"]}}"#, "A".repeat(4096));
    client.send_raw(Message::text(huge)).await;
    assert_eq!(client.close_code().await, Some(1009));
    assert_still_serving(&server).await;
    let series = r#"tickwire_connections_closed_total{reason="message_too_big"}"#;
    eventually_metric(&server, series, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_kib_default_limit_refuses_a_larger_message_even_fragmented() {
    let server = live_server(ServerConfig::default()).await;
    let mut stream = raw_connect(server.addr, "/ws", None).await;
    // Two 40 KiB fragments: each fits, together they exceed 64 KiB.
    let chunk = vec![b' '; 40 * 1024];
    stream
        .write_all(&client_frame(false, 0x1, &chunk))
        .await
        .expect("send");
    stream
        .write_all(&client_frame(true, 0x0, &chunk))
        .await
        .expect("send");
    assert_eq!(read_close_code(&mut stream).await, Some(1009));
    assert_still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_close_with_1003() {
    let server = live_server(ServerConfig::default()).await;
    let mut client = Client::connect(&server.url("")).await;
    client.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(client.close_code().await, Some(1003));
    assert_still_serving(&server).await;
}

/// Reads raw frames until a close frame; returns its code.
async fn read_close_code(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    let mut frames = ServerFrames::default();
    loop {
        let (opcode, payload) = frames.next(stream).await?;
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_1002_and_bad_utf8_with_1007() {
    let server = live_server(ServerConfig::default()).await;
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    let reserved_opcode = client_frame(true, 0x3, b"");
    let stray_continuation = client_frame(true, 0x0, b"x");
    let invalid_utf8 = client_frame(true, 0x1, &[0xc3, 0x28]);
    for (frame, code) in [
        (unmasked, 1002),
        (reserved_opcode, 1002),
        (stray_continuation, 1002),
        (invalid_utf8, 1007),
    ] {
        let mut stream = raw_connect(server.addr, "/ws", None).await;
        stream.write_all(&frame).await.expect("send");
        assert_eq!(
            read_close_code(&mut stream).await,
            Some(code),
            "{frame:02x?}"
        );
    }
    assert_still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_answered_and_everything_is_released() {
    let server = live_server(ServerConfig::default()).await;
    let mut client = Client::connect(&server.url("?symbols=spot:BTCUSDT,usdm:BTCUSDT")).await;
    client.recv_type("ticker").await;
    client.ws.close(None).await.expect("close");
    assert_eq!(client.close_code().await, Some(1000));
    let metrics = server.metrics();
    eventually("session released", || {
        metrics.connections.load(Relaxed) == 0
            && metrics.subscriptions.load(Relaxed) == 0
            && metrics.write_buffered_bytes.load(Relaxed) == 0
    })
    .await;
    for symbol in ["spot:BTCUSDT", "usdm:BTCUSDT"] {
        let entry = server.hub.get(symbol).expect("symbol");
        assert_eq!(
            entry.subscriber_count(),
            0,
            "{symbol} still has subscribers"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_read_with_the_upgrade_request_are_answered() {
    let server = live_server(ServerConfig::default()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    answers_requests_sent_with_the_upgrade(&mut stream, server.addr).await;
}

#[tokio::test]
async fn with_http_on_its_own_thread_requests_read_with_the_upgrade_request_are_answered() {
    let server = TestServer::start_fronted(ServerConfig::default(), both_samples_looping()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    answers_requests_sent_with_the_upgrade(&mut stream, server.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_websocket_requests_to_ws_get_a_json_400() {
    let server = live_server(ServerConfig::default()).await;
    let (status, body) = server.get("/ws").await;
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["error"], "bad_request");
    let (status, _) = server.get("/api/snapshot/NOPE").await;
    assert_eq!(status, 404);
    let page = server.get("/metrics").await.1;
    let series = r#"tickwire_client_errors_total{code="unknown_symbol"}"#;
    assert_eq!(metric(&page, series), 1.0, "the refusal is counted");
    // A path that does not decode to UTF-8 gets the same JSON shape, counted.
    let (status, body) = server.get("/api/snapshot/%FF").await;
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["error"], "bad_request");
    let page = server.get("/metrics").await.1;
    let series = r#"tickwire_handshakes_refused_total{reason="bad_query"}"#;
    assert_eq!(metric(&page, series), 1.0);
    let (status, body) = server.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Handshakes RFC 6455 does not allow are refused before any 101, with
    // the JSON body, and counted; only the last one is upgraded.
    let headers = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let host = "Host: x\r\n";
    let cases = [
        ("GET", "HTTP/1.0", host, good_key, "400"),
        ("HEAD", "HTTP/1.1", host, good_key, "405"),
        ("POST", "HTTP/1.1", host, good_key, "405"),
        ("GET", "HTTP/1.1", "", good_key, "400"),
        (
            "GET",
            "HTTP/1.1",
            host,
            "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!\r\n",
            "400",
        ),
        // Twice, each one valid on its own.
        (
            "GET",
            "HTTP/1.1",
            host,
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
            "400",
        ),
        (
            "GET",
            "HTTP/1.1",
            host,
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            "400",
        ),
        ("GET", "HTTP/1.1", host, good_key, "101"),
    ];
    for (method, version, host, key, status) in cases {
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let request = format!("{method} /ws {version}\r\n{host}{headers}{key}\r\n");
        stream.write_all(request.as_bytes()).await.expect("sent");
        let mut head = vec![0u8; 4096];
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut stream, &mut head),
        )
        .await
        .expect("answered")
        .expect("read");
        let head = String::from_utf8_lossy(&head[..read]).into_owned();
        let answer = head.split(' ').nth(1);
        assert_eq!(answer, Some(status), "{request}\n{head}");
        if status != "101" && method != "HEAD" {
            assert!(head.contains(r#""error":"bad_request""#), "{head}");
        }
    }
    let page = server.get("/metrics").await.1;
    let series = r#"tickwire_handshakes_refused_total{reason="not_websocket"}"#;
    assert_eq!(
        metric(&page, series),
        8.0,
        "the plain GET and seven handshakes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_with_503_and_json() {
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let server = live_server(config).await;
    let _first = Client::connect(&server.url("")).await;
    let refused = handshake_refusal(&server.url("")).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["error"], "connection_limit");
}

/// A ping after 200 ms of silence, to be answered within 200 ms.
fn quick_pings() -> ServerConfig {
    ServerConfig {
        session: SessionConfig {
            ping_interval: Duration::from_millis(200),
            ping_timeout: Duration::from_millis(200),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_dropped_and_released() {
    let server = live_server(quick_pings()).await;
    // A healthy client answers pings: tungstenite replies while it reads.
    let mut healthy = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                event = healthy.next_event() => {
                    assert!(matches!(event, Event::Json(_)), "healthy client closed: {event:?}");
                }
            }
        }
        healthy
    });
    // A dead one: subscribed, then silent and not reading.
    let _dead = stalled_client(server.addr, &["spot:BTCUSDT"]).await;

    let metrics = server.metrics();
    eventually("dead peer dropped", || {
        metrics.connections.load(Relaxed) == 1 && metrics.subscriptions.load(Relaxed) == 1
    })
    .await;
    let series = r#"tickwire_connections_closed_total{reason="ping_timeout"}"#;
    eventually_metric(&server, series, 1.0).await;
    // The healthy one lived through the same ping rounds.
    let _ = stop.send(());
    let mut healthy = reader.await.expect("reader");
    healthy.send(json!({"op": "ping", "id": 1})).await;
    assert_eq!(healthy.recv_type("pong").await["id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_long_answer_slowly_is_not_taken_for_dead() {
    // Requests, pongs included, are not read while an answer is written; the
    // answer here takes several ping rounds to read.
    let config = ServerConfig {
        session: SessionConfig {
            ping_interval: Duration::from_millis(500),
            ping_timeout: Duration::from_millis(500),
            send_buffer_bytes: Some(8 * 1024),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start(config, Vec::new()).await;
    let names = declare_quoted_symbols(&server.hub, 600);
    let mut stream = raw_connect(server.addr, "/ws", Some(4096)).await;
    let request = json!({"op": "subscribe", "id": 1, "symbols": names}).to_string();
    stream
        .write_all(&client_frame(true, 0x1, request.as_bytes()))
        .await
        .expect("send");
    let mut frames = ServerFrames::default();
    let mut snapshots = 0;
    while snapshots < names.len() {
        let (opcode, payload) = frames
            .next(&mut stream)
            .await
            .unwrap_or_else(|| panic!("dropped after {snapshots} snapshots"));
        match opcode {
            0x1 if payload.starts_with(br#"{"type":"ticker""#) => {
                snapshots += 1;
                // A pause every 20 snapshots (about 5 KB): 3 s in all.
                if snapshots % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            0x9 => {
                let pong = client_frame(true, 0xA, &payload);
                stream.write_all(&pong).await.expect("pong");
            }
            _ => {}
        }
    }
    let series = r#"tickwire_connections_closed_total{reason="ping_timeout"}"#;
    assert_eq!(metric(&server.get("/metrics").await.1, series), 0.0);
    assert_eq!(server.metrics().connections.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_reading_is_alive_without_answering_pings() {
    // A slow reader's pings wait behind what it has yet to read, maybe for
    // longer than the timeout; taking output is a sign of life all the same.
    // Dense enough that output never stops for a ping round.
    let files = [(Some("spot"), sample(SPOT)), (Some("usdm"), sample(USDM))];
    let replay = replay_of(&files, Speed::Factor(10.0), true, false);
    let server = TestServer::start(quick_pings(), vec![replay]).await;
    let mut stream = raw_connect(server.addr, "/ws?symbols=spot:BTCUSDT,usdm:BTCUSDT", None).await;
    let mut frames = ServerFrames::default();
    let (mut pings, mut tickers) = (0, 0);
    // Ten ping rounds' worth, none answered.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let (opcode, _) = frames
            .next(&mut stream)
            .await
            .unwrap_or_else(|| panic!("dropped after {pings} pings and {tickers} tickers"));
        match opcode {
            0x9 => pings += 1,
            _ => tickers += 1,
        }
    }
    assert!(pings > 0);
    let series = r#"tickwire_connections_closed_total{reason="ping_timeout"}"#;
    assert_eq!(metric(&server.get("/metrics").await.1, series), 0.0);
    assert_eq!(server.metrics().connections.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_without_max_rate_hz_lifts_the_cap_at_once() {
    let files = [(Some("usdm"), sample(USDM))];
    let replay = replay_of(&files, Speed::Factor(1.0), true, false);
    let server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    let entry = server.hub.get("usdm:BTCUSDT").expect("symbol");
    eventually("first update", || entry.current().is_some()).await;
    let mut client = Client::connect(&server.url("")).await;
    let subscribe = json!({"op": "subscribe", "symbols": ["usdm:BTCUSDT"], "max_rate_hz": 0.001});
    client.send(subscribe).await;
    client.recv_type("subscribed").await;
    let snapshot = client.recv_type("ticker").await;
    // An update comes within the hour the cap asks to wait: it is held.
    let held = snapshot["seq"].as_u64().expect("seq");
    eventually("a newer version", || {
        entry.current().is_some_and(|s| s.seq > held)
    })
    .await;
    client
        .send(json!({"op": "subscribe", "symbols": ["usdm:BTCUSDT"]}))
        .await;
    client.recv_type("subscribed").await;
    let snapshot = client.recv_type("ticker").await;
    assert_eq!(snapshot["snapshot"], true, "{snapshot}");
    // Without the cap, updates flow again, not an hour later.
    for _ in 0..3 {
        let update = client.recv_type("ticker").await;
        assert_ne!(update["snapshot"], true, "{update}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_hz_caps_delivery_and_still_converges_to_the_last_version() {
    let files = [(Some("usdm"), sample(USDM))];
    let replay = replay_of(&files, Speed::Max, false, true);
    let server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    let mut client = Client::connect(&server.url("")).await;
    let rate_hz = 20.0;
    client
        .send(json!({"op": "subscribe", "id": 1, "symbols": ["usdm:BTCUSDT"], "max_rate_hz": rate_hz}))
        .await;
    client.recv_type("subscribed").await;
    let started = tokio::time::Instant::now();
    server.replays[0].start();
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    let final_seq = server
        .hub
        .get("usdm:BTCUSDT")
        .and_then(|e| e.current())
        .map_or(0, |s| s.seq);

    let mut tape = Tape::default();
    while tape.seq("usdm:BTCUSDT") < final_seq {
        tape.record(&client.recv_type("ticker").await);
    }
    // However fast the feed, no more than one update per 1/rate seconds (plus
    // the first, which is not held back).
    let allowed = started.elapsed().as_secs_f64() * rate_hz + 1.0;
    assert!(
        (tape.tickers as f64) <= allowed,
        "{} updates in {:?} at {rate_hz} Hz",
        tape.tickers,
        started.elapsed()
    );
    assert_eq!(
        tape.tickers + tape.skipped,
        final_seq,
        "every version delivered or counted as skipped"
    );
}

/// The error codes a subscribe request can be answered with.
const SUBSCRIBE_ERRORS: [&str; 3] = ["unknown_symbol", "limit_exceeded", "bad_request"];

/// What one way of subscribing told its client: every message up to the
/// answer to a ping sent right after (statuses aside: a feed's state may
/// move on between two connections), and how far the subscription gauge and
/// the error counters moved.
#[derive(Debug, PartialEq)]
struct Told {
    messages: Vec<serde_json::Value>,
    counters: Vec<f64>,
}

impl Told {
    /// The messages (tickers by symbol only) and the counters, for a report.
    fn summary(&self) -> String {
        let messages: Vec<String> = self
            .messages
            .iter()
            .map(|m| match m["type"].as_str() {
                Some("ticker") => format!("ticker {}", m["symbol"]),
                _ => m.to_string(),
            })
            .collect();
        format!("{} {:?}", messages.join(" "), self.counters)
    }
}

async fn counters(server: &TestServer) -> Vec<f64> {
    let page = server.get("/metrics").await.1;
    let mut counters = vec![metric(&page, "tickwire_subscriptions")];
    for code in SUBSCRIBE_ERRORS {
        let series = format!(r#"tickwire_client_errors_total{{code="{code}"}}"#);
        counters.push(metric(&page, &series));
    }
    counters
}

/// Reads `client`'s messages up to the answer to a ping: a subscribe answer,
/// by URL or by request, is written whole before the next request is read.
async fn told(server: &TestServer, client: &mut Client, before: Vec<f64>) -> Told {
    let messages = client.recv_until_pong().await;
    let after = counters(server).await;
    let counters = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    Told { messages, counters }
}

/// Subscribes with the raw query value `by_url` on one connection and with
/// a subscribe request naming `by_request` on another (the first kept open
/// meanwhile), and says what each was told.
async fn both_ways(
    server: &TestServer,
    by_url: &str,
    by_request: serde_json::Value,
) -> (Told, Told) {
    let before = counters(server).await;
    let mut url_client = Client::connect(&server.url(&format!("?symbols={by_url}"))).await;
    let url_told = told(server, &mut url_client, before).await;
    let before = counters(server).await;
    let mut request_client = Client::connect(&server.url("")).await;
    request_client
        .send(json!({"op": "subscribe", "symbols": by_request}))
        .await;
    let request_told = told(server, &mut request_client, before).await;
    // Gone before the next comparison, whose gauge they would move.
    drop((url_client, request_client));
    eventually("both clients released", || {
        server.metrics().connections.load(Relaxed) == 0
    })
    .await;
    (url_told, request_told)
}

/// Asserts that every `(query value, request symbols)` pair is answered the
/// same both ways, listing every pair that is not.
async fn assert_same_both_ways(server: &TestServer, cases: &[(&str, serde_json::Value)]) {
    let mut differences = Vec::new();
    for (by_url, by_request) in cases {
        let (url_told, request_told) = both_ways(server, by_url, by_request.clone()).await;
        if url_told != request_told {
            differences.push(format!(
                "symbols={by_url} vs {by_request}:\n  by URL:     {}\n  by request: {}",
                url_told.summary(),
                request_told.summary()
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_symbols_parameter_names_exactly_what_a_subscribe_request_would() {
    let server = settled_server(ServerConfig::default()).await;
    let overlong = "X".repeat(1_000);
    let cases = [
        ("", json!([])),
        (
            "usdm:BTCUSDT,spot:BTCUSDT",
            json!(["usdm:BTCUSDT", "spot:BTCUSDT"]),
        ),
        // Percent-encoding is undone first: form encoders (`URLSearchParams`,
        // Python's `urlencode`) write the separating commas as `%2C`.
        ("usdm%3ABTCUSDT", json!(["usdm:BTCUSDT"])),
        (
            "usdm:BTCUSDT%2Cspot:BTCUSDT",
            json!(["usdm:BTCUSDT", "spot:BTCUSDT"]),
        ),
        // Repeats count once, refused or not.
        (
            "usdm:BTCUSDT,NOPE,usdm:BTCUSDT,NOPE",
            json!(["usdm:BTCUSDT", "NOPE", "usdm:BTCUSDT", "NOPE"]),
        ),
        // Empty entries and spaces are part of the list as written: the
        // names they make are refused as a request's would be.
        (
            "usdm:BTCUSDT,,spot:BTCUSDT",
            json!(["usdm:BTCUSDT", "", "spot:BTCUSDT"]),
        ),
        ("usdm:BTCUSDT,", json!(["usdm:BTCUSDT", ""])),
        (",usdm:BTCUSDT", json!(["", "usdm:BTCUSDT"])),
        (",", json!(["", ""])),
        (
            "usdm:BTCUSDT,%20spot:BTCUSDT",
            json!(["usdm:BTCUSDT", " spot:BTCUSDT"]),
        ),
        // `+` is a space in a query.
        ("usdm:BTCUSDT+", json!(["usdm:BTCUSDT "])),
        ("%20", json!([" "])),
        (&overlong, json!([overlong])),
        // (Bytes that are not UTF-8 get the 400: `tests/security.rs`.)
        ("%C3%A9t%C3%A9,usdm:BTCUSDT", json!(["été", "usdm:BTCUSDT"])),
    ];
    assert_same_both_ways(&server, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_symbols_parameter_is_held_to_the_subscription_limit_as_a_request_is() {
    let server = settled_server(one_subscription_per_connection()).await;
    let cases = [
        (
            "spot:BTCUSDT,usdm:BTCUSDT,usdm:BTCUSDT",
            json!(["spot:BTCUSDT", "usdm:BTCUSDT", "usdm:BTCUSDT"]),
        ),
        (
            "NOPE,usdm:BTCUSDT,spot:BTCUSDT",
            json!(["NOPE", "usdm:BTCUSDT", "spot:BTCUSDT"]),
        ),
        (
            "spot:BTCUSDT,,usdm:BTCUSDT",
            json!(["spot:BTCUSDT", "", "usdm:BTCUSDT"]),
        ),
    ];
    assert_same_both_ways(&server, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbols_list_too_long_for_a_request_head_is_refused_there_and_fits_in_a_request() {
    let server = settled_server(ServerConfig::default()).await;
    // Past the 16 KiB request head, within a request's 64 KiB and the
    // subscription limit.
    let names: Vec<String> = (0..1_000).map(|i| format!("venue:SYMBOL{i:08}")).collect();
    let url = server.url(&format!("?symbols={}", names.join(",")));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 431);
        }
        // The server may hang up before the client has read its answer.
        Err(tokio_tungstenite::tungstenite::Error::Io(_)) => {}
        other => panic!("not refused at the head: {:?}", other.map(|(_, r)| r)),
    }
    let mut client = Client::connect(&server.url("")).await;
    client
        .send(json!({"op": "subscribe", "symbols": names}))
        .await;
    assert_eq!(client.recv().await["type"], "subscribed");
    let error = client.recv().await;
    assert_eq!(error["code"], "unknown_symbol");
    assert_eq!(error["symbols"].as_array().map(Vec::len), Some(1_000));
}
