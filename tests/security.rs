//! Authentication, entitlements and abuse limits, against a real server with
//! real WebSocket, SSE and HTTP clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tickwire::auth::mint::{self, SigningKey, TokenClaims};
use tickwire::auth::{AuthConfig, Authenticator, JwtConfig, JwtKey, SymbolPattern};
use tickwire::feed::replay::Speed;
use tickwire::limits::{LimitsConfig, RateConfig};
use tickwire::server::ServerConfig;
use tickwire::session::SessionConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"integration test secret";

fn now_secs() -> i64 {
    tickwire::wall_clock_ns() / 1_000_000_000
}

/// Claims for `spot:*` only, valid for an hour.
fn spot_claims() -> TokenClaims {
    TokenClaims {
        sub: "alice".into(),
        exp: now_secs() + 3600,
        nbf: None,
        aud: Some("tickwire".into()),
        iss: None,
        symbols: vec![SymbolPattern::new("spot:*")],
        max_rate_hz: None,
        max_subscriptions: None,
    }
}

fn token(claims: &TokenClaims) -> String {
    mint::mint(claims, &SigningKey::Hs256(SECRET.to_vec())).expect("sign")
}

fn with_auth(config: ServerConfig, api_keys: Option<std::path::PathBuf>) -> ServerConfig {
    let auth = AuthConfig {
        jwt: Some(JwtConfig {
            key: JwtKey::Hs256(SECRET.to_vec()),
            audience: Some("tickwire".into()),
            issuer: None,
            leeway_secs: 0,
        }),
        api_keys,
    };
    ServerConfig {
        auth: Arc::new(Authenticator::new(&auth).expect("auth config")),
        ..config
    }
}

async fn live_server(config: ServerConfig) -> TestServer {
    let server = TestServer::start(config, both_samples_looping()).await;
    for name in ["spot:BTCUSDT", "usdm:BTCUSDT"] {
        let entry = server.hub.get(name).expect("symbol");
        eventually("first update", || entry.current().is_some()).await;
    }
    server
}

fn refused_with(result: Result<(Client, Option<String>), Refused>) -> (u16, String) {
    match result {
        Ok(_) => panic!("handshake was accepted"),
        Err(Refused { status, body, .. }) => {
            assert!(body["message"].is_string(), "{body}");
            (status, body["error"].as_str().unwrap_or("").to_owned())
        }
    }
}

fn accepted(result: Result<(Client, Option<String>), Refused>) -> (Client, Option<String>) {
    match result {
        Ok(accepted) => accepted,
        Err(Refused { status, body, .. }) => panic!("refused with {status}: {body}"),
    }
}

/// A server that takes two connections from one address.
fn two_per_address() -> ServerConfig {
    ServerConfig {
        limits: LimitsConfig {
            max_connections_per_ip: 2,
            ..LimitsConfig::default()
        },
        ..ServerConfig::default()
    }
}

async fn metric_value(server: &TestServer, series: &str) -> f64 {
    metric(&server.get("/metrics").await.1, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_forged_expired_and_misaddressed_tokens_are_refused_with_401() {
    let server = live_server(with_auth(ServerConfig::default(), None)).await;
    let url = server.url("");
    assert_eq!(
        refused_with(handshake(&url, &[]).await),
        (401, "unauthorized".into())
    );
    let forged = mint::mint(&spot_claims(), &SigningKey::Hs256(b"guess".to_vec())).expect("sign");
    let expired = token(&TokenClaims {
        exp: now_secs() - 60,
        ..spot_claims()
    });
    let not_yet = token(&TokenClaims {
        nbf: Some(now_secs() + 600),
        ..spot_claims()
    });
    let other_audience = token(&TokenClaims {
        aud: Some("someone-else".into()),
        ..spot_claims()
    });
    for bad in [&forged, &expired, &not_yet, &other_audience, "garbage"] {
        let query = server.url(&format!("?token={bad}"));
        assert_eq!(
            refused_with(handshake(&query, &[]).await),
            (401, "unauthorized".into())
        );
    }
    // The same on the data API and SSE; nothing leaks without credentials.
    assert_eq!(server.get("/api/symbols").await.0, 401);
    assert_eq!(server.get("/api/snapshot/spot:BTCUSDT").await.0, 401);
    let (status, _, _) = SseClient::connect(server.addr, "/sse?symbols=spot:BTCUSDT").await;
    assert_eq!(status, 401);
    let series = r#"tickwire_handshakes_refused_total{reason="unauthorized"}"#;
    assert_eq!(metric_value(&server, series).await, 9.0);
    // Secrets never reach the metrics page.
    let page = server.get("/metrics").await.1;
    assert!(!page.contains(&forged) && !page.contains("integration test secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_accepted_in_the_header_the_query_or_the_subprotocol() {
    let server = live_server(with_auth(ServerConfig::default(), None)).await;
    let jwt = token(&spot_claims());
    let url = server.url("?symbols=spot:BTCUSDT");
    let bearer = format!("Bearer {jwt}");
    let (mut client, protocol) = accepted(handshake(&url, &[("authorization", &bearer)]).await);
    assert_eq!(protocol, None);
    client.recv_type("subscribed").await;

    let query = server.url(&format!("?symbols=spot:BTCUSDT&token={jwt}"));
    let (mut client, _) = accepted(handshake(&query, &[]).await);
    client.recv_type("subscribed").await;

    // Browsers offer `tickwire.v1` beside the credential and get it selected.
    let offer = format!("tickwire.v1, bearer.{jwt}");
    let (mut client, protocol) =
        accepted(handshake(&url, &[("sec-websocket-protocol", &offer)]).await);
    assert_eq!(protocol.as_deref(), Some("tickwire.v1"));
    client.recv_type("subscribed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unentitled_symbols_never_reach_the_client_on_any_path() {
    let server = live_server(with_auth(ServerConfig::default(), None)).await;
    let jwt = token(&spot_claims());

    // Subscribe on connect and by request: only the entitled symbol is served.
    let url = server.url(&format!("?symbols=usdm:BTCUSDT&token={jwt}"));
    let (mut client, _) = accepted(handshake(&url, &[]).await);
    assert_eq!(
        client.recv().await,
        json!({"type": "subscribed", "channel": "ticker", "symbols": []})
    );
    let error = client.recv().await;
    assert_eq!(error["code"], "not_entitled");
    assert_eq!(error["symbols"], json!(["usdm:BTCUSDT"]));
    client
        .send(json!({"op": "subscribe", "id": 2, "symbols": ["usdm:BTCUSDT", "spot:BTCUSDT", "usdm:NOPE"]}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "subscribed", "id": 2, "channel": "ticker", "symbols": ["spot:BTCUSDT"]})
    );
    let snapshot = client.recv().await;
    assert_eq!(
        (&snapshot["symbol"], &snapshot["snapshot"]),
        (&json!("spot:BTCUSDT"), &json!(true))
    );
    let error = client.recv().await;
    assert_eq!(error["code"], "not_entitled");
    // Unentitled names are refused whether they exist or not: no probing.
    assert_eq!(error["symbols"], json!(["usdm:BTCUSDT", "usdm:NOPE"]));
    client.send(json!({"op": "list", "id": 3})).await;
    let list = client.recv_type("symbols").await;
    assert_eq!(list["symbols"], json!(["spot:BTCUSDT"]));
    let mut tape = Tape::default();
    tape.record(&snapshot);
    while tape.tickers < 20 {
        let message = client.recv().await;
        assert_ne!(message["symbol"], "usdm:BTCUSDT", "{message}");
        if message["type"] == "ticker" {
            tape.record(&message);
        }
    }

    // A name the server does not serve is told only of the symbols the
    // credential covers that it may mean, on both paths.
    let hint = "no such symbol (spot:btcusdt: did you mean spot:BTCUSDT?)";
    client
        .send(json!({"op": "subscribe", "id": 4, "symbols": ["spot:btcusdt"]}))
        .await;
    let error = client.recv_type("error").await;
    assert_eq!(
        (&error["code"], &error["message"]),
        (&json!("unknown_symbol"), &json!(hint))
    );
    let (status, body) = server
        .get(&format!("/api/snapshot/spot:btcusdt?token={jwt}"))
        .await;
    assert_eq!(status, 404, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["message"], hint);

    // HTTP: the symbol list is filtered and a snapshot outside the grant is 403.
    let (status, body) = server.get(&format!("/api/symbols?token={jwt}")).await;
    assert_eq!((status, body.as_str()), (200, r#"["spot:BTCUSDT"]"#));
    let (status, body) = server
        .get(&format!("/api/snapshot/usdm:BTCUSDT?token={jwt}"))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("bid"), "{body}");
    let (status, _) = server
        .get(&format!("/api/snapshot/spot:BTCUSDT?token={jwt}"))
        .await;
    assert_eq!(status, 200);

    // SSE: the same refusal, and only entitled tickers.
    let path = format!("/sse?symbols=spot:BTCUSDT,usdm:BTCUSDT&token={jwt}");
    let (status, _, mut events) = SseClient::connect(server.addr, &path).await;
    assert_eq!(status, 200);
    let subscribed = events.next_type("subscribed").await;
    assert_eq!(subscribed["symbols"], json!(["spot:BTCUSDT"]));
    let mut refused = false;
    for _ in 0..10 {
        let event = events.next().await.expect("stream open");
        assert_ne!(event["symbol"], "usdm:BTCUSDT", "{event}");
        refused |= event["code"] == "not_entitled";
    }
    assert!(refused);
    let series = r#"tickwire_client_errors_total{code="not_entitled"}"#;
    assert_eq!(metric_value(&server, series).await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_cap_subscriptions() {
    let server = live_server(with_auth(ServerConfig::default(), None)).await;
    let jwt = token(&TokenClaims {
        symbols: vec![SymbolPattern::new("*")],
        max_subscriptions: Some(1),
        ..spot_claims()
    });
    let (mut client, _) = accepted(handshake(&server.url(&format!("?token={jwt}")), &[]).await);
    client
        .send(json!({"op": "subscribe", "id": 1, "symbols": ["spot:BTCUSDT", "usdm:BTCUSDT"]}))
        .await;
    let subscribed = client.recv_type("subscribed").await;
    assert_eq!(subscribed["symbols"], json!(["spot:BTCUSDT"]));
    let error = client.recv_type("error").await;
    assert_eq!(
        (&error["code"], &error["symbols"]),
        (&json!("limit_exceeded"), &json!(["usdm:BTCUSDT"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_gets_a_notice_then_1008_on_both_transports() {
    let server = live_server(with_auth(ServerConfig::default(), None)).await;
    let jwt = token(&TokenClaims {
        exp: now_secs() + 2,
        ..spot_claims()
    });
    let url = server.url(&format!("?symbols=spot:BTCUSDT&token={jwt}"));
    let (mut client, _) = accepted(handshake(&url, &[]).await);
    let path = format!("/sse?symbols=spot:BTCUSDT&token={jwt}");
    let (status, _, mut events) = SseClient::connect(server.addr, &path).await;
    assert_eq!(status, 200);

    let notice = client.recv_type("error").await;
    assert_eq!(notice["code"], "credentials_expired");
    assert_eq!(client.close_code().await, Some(1008));
    let notice = events.next_type("error").await;
    assert_eq!(notice["code"], "credentials_expired");
    while events.next().await.is_some() {}
    let series = r#"tickwire_connections_closed_total{reason="credentials_expired"}"#;
    eventually_metric(&server, series, 2.0).await;
}

/// A server looping a capture at full speed, so that every time a session
/// has handed over its output the next is ready, and a token for it that
/// expires in 2 s.
async fn firehose_with_an_expiring_token() -> (TestServer, String) {
    let files = [(Some("spot"), sample(SPOT))];
    let replay = replay_of(&files, Speed::Max, true, false);
    let server = TestServer::start(with_auth(ServerConfig::default(), None), vec![replay]).await;
    let jwt = token(&TokenClaims {
        exp: now_secs() + 2,
        ..spot_claims()
    });
    (server, jwt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_that_always_has_data_still_ends_when_its_token_expires() {
    let (server, jwt) = firehose_with_an_expiring_token().await;
    let path = format!("/sse?symbols=spot:BTCUSDT&token={jwt}");
    let (status, _, mut events) = SseClient::connect(server.addr, &path).await;
    assert_eq!(status, 200);
    let notice = events.next_type("error").await;
    assert_eq!(notice["code"], "credentials_expired");
    while events.next().await.is_some() {}
    let series = r#"tickwire_connections_closed_total{reason="credentials_expired"}"#;
    eventually_metric(&server, series, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_whose_client_stopped_reading_still_ends_when_its_token_expires() {
    let (server, jwt) = firehose_with_an_expiring_token().await;
    let path = format!("/sse?symbols=spot:BTCUSDT&token={jwt}");
    let stream = stalled_sse_client(server.addr, &path).await;
    // Never read: the error event cannot reach the client, the end can.
    let series = r#"tickwire_connections_closed_total{reason="credentials_expired"}"#;
    eventually_metric(&server, series, 1.0).await;
    let open = server
        .metrics()
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(open, 0);
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_always_has_data_still_loses_it_when_its_token_expires() {
    let (server, jwt) = firehose_with_an_expiring_token().await;
    let url = server.url(&format!("?symbols=spot:BTCUSDT&token={jwt}"));
    let (mut client, _) = accepted(handshake(&url, &[]).await);
    let notice = client.recv_type("error").await;
    assert_eq!(notice["code"], "credentials_expired");
    assert_eq!(client.close_code().await, Some(1008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_api_keys_authenticate_server_to_server_clients() {
    let dir = std::env::temp_dir().join(format!("tickwire-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("keys.toml");
    let key = "s3rv3r-to-s3rv3r-key";
    let digest: String = tickwire::auth::keys::sha256(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let file =
        format!("[[key]]\nname = \"backoffice\"\nsha256 = \"{digest}\"\nsymbols = [\"usdm:*\"]\n");
    std::fs::write(&path, file).expect("write keys");
    let server = live_server(with_auth(ServerConfig::default(), Some(path))).await;
    let _ = std::fs::remove_dir_all(&dir);

    let bearer = format!("Bearer {key}");
    let url = server.url("?symbols=usdm:BTCUSDT,spot:BTCUSDT");
    let (mut client, _) = accepted(handshake(&url, &[("authorization", &bearer)]).await);
    let subscribed = client.recv_type("subscribed").await;
    assert_eq!(subscribed["symbols"], json!(["usdm:BTCUSDT"]));
    assert_eq!(client.recv_type("error").await["code"], "not_entitled");
    let wrong = format!("Bearer {key}x");
    assert_eq!(
        refused_with(handshake(&url, &[("authorization", &wrong)]).await),
        (401, "unauthorized".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_off_the_allow_list_get_403() {
    let config = ServerConfig {
        limits: LimitsConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..LimitsConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = live_server(config).await;
    let url = server.url("?symbols=spot:BTCUSDT");
    assert_eq!(
        refused_with(handshake(&url, &[("origin", "https://evil.example")]).await),
        (403, "origin_not_allowed".into())
    );
    let (mut client, _) = accepted(handshake(&url, &[("origin", "https://app.example")]).await);
    client.recv_type("subscribed").await;
    // Non-browser clients send no Origin and are not affected.
    accepted(handshake(&url, &[]).await);
    let series = r#"tickwire_handshakes_refused_total{reason="origin_not_allowed"}"#;
    assert_eq!(metric_value(&server, series).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited_with_429() {
    let server = live_server(two_per_address()).await;
    let url = server.url("");
    let first = accepted(handshake(&url, &[]).await);
    let _second = accepted(handshake(&url, &[]).await);
    assert_eq!(
        refused_with(handshake(&url, &[]).await),
        (429, "too_many_connections".into())
    );
    let (status, _, _) = SseClient::connect(server.addr, "/sse?symbols=spot:BTCUSDT").await;
    assert_eq!(status, 429);
    // A closed connection frees its place.
    drop(first);
    let mut again = None;
    for _ in 0..200 {
        if let Ok(accepted) = handshake(&url, &[]).await {
            again = Some(accepted);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again.is_some(), "a place was never freed");
    let series = r#"tickwire_handshakes_refused_total{reason="peer_limit"}"#;
    assert!(metric_value(&server, series).await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_read_together_queue_no_more_replies_than_the_output_limit() {
    let config = with_message_rate(RateConfig {
        per_second: 1_000.0,
        burst: 1_000,
        max_strikes: 3,
    });
    let limit = config.session.max_write_buffer as f64;
    let server = live_server(config).await;
    // Each `list` answer is then about 70 KB.
    for i in 0..3_000 {
        server.hub.declare(&format!("test:SYMBOL{i:05}"));
    }
    let mut stream = raw_connect(server.addr, "/ws", Some(4096)).await;
    // Sixty requests in one write, read by the server in one go: 4 MB of
    // answers, to a client that reads nothing for now.
    let requests = numbered_requests("list", 60);
    stream.write_all(&requests).await.expect("send");
    let series = "tickwire_write_buffered_bytes";
    let buffered = tokio::time::timeout(GUARD, async {
        loop {
            let buffered = metric_value(&server, series).await;
            if buffered >= limit {
                break buffered;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the output fills up");
    assert!(
        buffered < limit + 100_000.0,
        "{buffered} bytes queued: the limit and one answer at most"
    );
    // The rest waited, unanswered, until the client read: nothing was lost.
    let mut frames = ServerFrames::default();
    for id in 0..60 {
        let (opcode, payload) = frames.next(&mut stream).await.expect("an answer");
        assert_eq!(opcode, 0x1);
        let answer: Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(
            (&answer["type"], &answer["id"]),
            (&json!("symbols"), &json!(id))
        );
        assert_eq!(answer["symbols"].as_array().map(Vec::len), Some(3_002));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscribe_of_thousands_of_symbols_writes_its_snapshots_as_the_client_reads() {
    let config = ServerConfig {
        session: SessionConfig {
            max_subscriptions: 5_000,
            write_high_water: 4 * 1024,
            // Room for the `subscribed` reply, which names every symbol (39 KB).
            max_write_buffer: 64 * 1024,
            send_buffer_bytes: Some(4 * 1024),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let limit = config.session.max_write_buffer as f64;
    let server = TestServer::start(config, Vec::new()).await;
    // 3,000 symbols with a version each: ~700 KB of snapshots for one request.
    let names = declare_quoted_symbols(&server.hub, 3_000);
    let mut stream = raw_connect(server.addr, "/ws", Some(4096)).await;
    // The subscribe, and a ping read with it, to a client that reads nothing yet.
    let mut symbols = names.clone();
    symbols.push("NOPE".into());
    let requests = [
        json!({"op": "subscribe", "id": 1, "symbols": symbols}),
        json!({"op": "ping", "id": 2}),
    ]
    .iter()
    .flat_map(|request| client_frame(true, 0x1, request.to_string().as_bytes()))
    .collect::<Vec<u8>>();
    stream.write_all(&requests).await.expect("send");
    let series = "tickwire_write_buffered_bytes";
    let buffered = tokio::time::timeout(GUARD, async {
        loop {
            let buffered = metric_value(&server, series).await;
            if buffered > 0.0 {
                break buffered;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the socket pushes back");
    assert!(
        buffered < limit,
        "{buffered} bytes queued for one request: over the output limit"
    );

    // Read back, in the protocol's order: `subscribed`, a snapshot per symbol
    // in the request's order, the refusal, then the next request's answer.
    let mut frames = ServerFrames::default();
    let mut next = async || {
        let (opcode, payload) = frames.next(&mut stream).await.expect("a frame");
        assert_eq!(opcode, 0x1);
        serde_json::from_slice::<Value>(&payload).expect("JSON")
    };
    let subscribed = next().await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["symbols"], json!(names));
    let mut peak = buffered;
    for (i, name) in names.iter().enumerate() {
        let snapshot = next().await;
        assert_eq!(
            (&snapshot["symbol"], &snapshot["snapshot"]),
            (&json!(name), &json!(true)),
            "snapshot {i}"
        );
        assert_eq!(
            snapshot["bid"],
            Decimal::new(100_000 + i as i64, 2).to_string()
        );
        if i % 500 == 0 {
            peak = peak.max(metric_value(&server, series).await);
        }
    }
    assert!(peak < limit, "{peak} bytes queued while the client read");
    let refused = next().await;
    assert_eq!(
        (&refused["type"], &refused["code"], &refused["symbols"]),
        (&json!("error"), &json!("unknown_symbol"), &json!(["NOPE"]))
    );
    let pong = next().await;
    assert_eq!((&pong["type"], &pong["id"]), (&json!("pong"), &json!(2)));
    let series = r#"tickwire_client_errors_total{code="unknown_symbol"}"#;
    assert_eq!(metric_value(&server, series).await, 1.0);
}

/// `count` requests `{"op": op, "id": 0..count}`, framed back to back for
/// one write.
fn numbered_requests(op: &str, count: u64) -> Vec<u8> {
    (0..count)
        .flat_map(|id| {
            client_frame(
                true,
                0x1,
                json!({"op": op, "id": id}).to_string().as_bytes(),
            )
        })
        .collect()
}

/// The default server with `rate` as every connection's message rate.
fn with_message_rate(rate: RateConfig) -> ServerConfig {
    ServerConfig {
        session: SessionConfig {
            message_rate: rate,
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    }
}

/// A burst of 5 messages, three strikes, and no token back during a test.
fn strict_rate() -> ServerConfig {
    with_message_rate(RateConfig {
        per_second: 0.001,
        burst: 5,
        max_strikes: 3,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_rate_limited_then_closed_with_1008() {
    let server = live_server(strict_rate()).await;
    let mut client = Client::connect(&server.url("")).await;
    for id in 0..10 {
        client.send(json!({"op": "ping", "id": id})).await;
    }
    let mut pongs = Vec::new();
    let mut limited = 0;
    let code = loop {
        match client.next_event().await {
            Event::Json(message) if message["type"] == "pong" => pongs.push(message["id"].clone()),
            Event::Json(message) => {
                assert_eq!(message["code"], "rate_limited", "{message}");
                limited += 1;
            }
            Event::Closed(code) => break code,
        }
    };
    assert_eq!(pongs, [0, 1, 2, 3, 4]);
    assert_eq!(limited, 3);
    assert_eq!(code, Some(1008));
    let series = r#"tickwire_connections_closed_total{reason="rate_limited"}"#;
    eventually_metric(&server, series, 1.0).await;
    let series = r#"tickwire_client_errors_total{code="rate_limited"}"#;
    assert_eq!(metric_value(&server, series).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_read_at_once_is_paced_like_one_sent_slowly() {
    // Five at once, then one every 20 ms; more than ten refusals close.
    let server = live_server(with_message_rate(RateConfig {
        per_second: 50.0,
        burst: 5,
        max_strikes: 10,
    }))
    .await;
    // Twenty requests in one write, so the server reads them together: were
    // they handled back to back, the eleventh refusal would close.
    let burst = numbered_requests("ping", 20);
    let mut stream = raw_connect(server.addr, "/ws", None).await;
    stream.write_all(&burst).await.expect("burst sent");
    let mut frames = ServerFrames::default();
    let (mut pongs, mut limited) = (Vec::new(), 0);
    while pongs.len() + limited < 20 {
        let Some((opcode, payload)) = frames.next(&mut stream).await else {
            panic!("closed after {pongs:?} and {limited} refusals");
        };
        assert_eq!(opcode, 0x1, "{:?}", String::from_utf8_lossy(&payload));
        let message: Value = serde_json::from_slice(&payload).expect("json");
        match message["type"].as_str() {
            Some("pong") => pongs.push(message["id"].as_u64().expect("id")),
            _ => {
                assert_eq!(message["code"], "rate_limited", "{message}");
                limited += 1;
            }
        }
    }
    // The burst, then about every other one as the bucket refills.
    assert_eq!(pongs[..5], [0, 1, 2, 3, 4]);
    assert!(pongs.len() > 5 && pongs.is_sorted(), "{pongs:?}");
    // Still open, and answering once the client keeps to the rate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ping = json!({"op": "ping", "id": 99}).to_string();
    stream
        .write_all(&client_frame(true, 0x1, ping.as_bytes()))
        .await
        .expect("ping sent");
    let (opcode, payload) = frames.next(&mut stream).await.expect("an answer");
    let message: Value = serde_json::from_slice(&payload).expect("json");
    assert_eq!(
        (opcode, &message["type"], &message["id"]),
        (0x1, &json!("pong"), &json!(99))
    );
    let series = r#"tickwire_client_errors_total{code="rate_limited"}"#;
    assert_eq!(metric_value(&server, series).await, limited as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_pongs_pings_or_empty_fragments_pay_the_message_rate_too() {
    let server = live_server(strict_rate()).await;
    let floods = [
        client_frame(true, 0xA, b"").repeat(1000),
        client_frame(true, 0x9, b"p").repeat(1000),
        [
            client_frame(false, 0x1, b" "),
            client_frame(false, 0x0, b"").repeat(1000),
        ]
        .concat(),
    ];
    for (n, flood) in floods.iter().enumerate() {
        let mut stream = raw_connect(server.addr, "/ws", None).await;
        stream.write_all(flood).await.expect("flood sent");
        let mut frames = ServerFrames::default();
        let mut pongs = 0;
        let close = loop {
            match frames.next(&mut stream).await {
                Some((0x8, payload)) => break payload,
                Some((0xA, _)) => pongs += 1,
                Some(other) => panic!("flood {n}: unexpected {other:?}"),
                None => panic!("flood {n}: closed without a close frame"),
            }
        };
        assert_eq!(&close[..2], 1008u16.to_be_bytes(), "flood {n}");
        // Pings over the rate are still answered, until the strikes run out:
        // the burst, then one a strike.
        assert_eq!(pongs, if n == 1 { 5 + 3 } else { 0 }, "flood {n}");
        let series = r#"tickwire_connections_closed_total{reason="rate_limited"}"#;
        eventually_metric(&server, series, n as f64 + 1.0).await;
    }
    // Frames are not requests: no error message answered them.
    let series = r#"tickwire_client_errors_total{code="rate_limited"}"#;
    assert_eq!(metric_value(&server, series).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_client_does_not_starve_the_others() {
    // The abuser is never closed, so it floods for the whole test.
    let server = live_server(with_message_rate(RateConfig {
        max_strikes: u32::MAX,
        ..RateConfig::default()
    }))
    .await;
    let mut abuser = raw_connect(server.addr, "/ws", None).await;
    let (mut abuser_reader, mut abuser_writer) = abuser.split();
    let request = json!({"op": "subscribe", "symbols": ["spot:BTCUSDT", "usdm:BTCUSDT"]});
    let frame = client_frame(true, 0x1, request.to_string().as_bytes());
    let flood: Vec<u8> = frame.repeat(256);
    let stop = tokio_util::sync::CancellationToken::new();
    let flooding = async {
        let mut sent = 0u64;
        while !stop.is_cancelled() {
            tokio::select! {
                written = abuser_writer.write_all(&flood) => {
                    if written.is_err() { break; }
                    sent += 256;
                }
                () = stop.cancelled() => break,
            }
        }
        sent
    };
    // The abuser reads its answers, so the server is never held back by its socket.
    let draining = async {
        let mut sink = vec![0u8; 64 * 1024];
        while !stop.is_cancelled() {
            tokio::select! {
                read = abuser_reader.read(&mut sink) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                () = stop.cancelled() => break,
            }
        }
    };
    let well_behaved = async {
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut client =
                Client::connect(&server.url("?symbols=spot:BTCUSDT,usdm:BTCUSDT")).await;
            client.recv_type("subscribed").await;
            clients.push(client);
        }
        for client in &mut clients {
            let mut tape = Tape::default();
            while tape.tickers < 30 {
                let message = client.recv().await;
                assert_ne!(message["type"], "error", "{message}");
                if message["type"] == "ticker" {
                    tape.record(&message);
                }
            }
            client.send(json!({"op": "ping", "id": 1})).await;
            client.recv_type("pong").await;
        }
        stop.cancel();
    };
    let (sent, (), ()) = tokio::join!(flooding, draining, well_behaved);
    assert!(sent > 0);
    let series = r#"tickwire_client_errors_total{code="rate_limited"}"#;
    assert!(metric_value(&server, series).await > 0.0);
    drop(abuser);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_subscriptions_is_closed_when_idle() {
    let config = ServerConfig {
        session: SessionConfig {
            idle_timeout: Duration::from_millis(300),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = live_server(config).await;
    let mut idle = Client::connect(&server.url("")).await;
    let mut busy = Client::connect(&server.url("?symbols=spot:BTCUSDT")).await;
    assert_eq!(idle.close_code().await, Some(1008));
    let series = r#"tickwire_connections_closed_total{reason="idle_timeout"}"#;
    eventually_metric(&server, series, 1.0).await;
    // The subscribed client is still served.
    busy.recv_type("subscribed").await;
    for _ in 0..5 {
        busy.recv_type("ticker").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_query_string_gets_the_json_400() {
    let server = live_server(ServerConfig::default()).await;
    // A parameter twice, and bytes that are not UTF-8 once decoded.
    for query in [
        "?symbols=a&symbols=b",
        "?symbols=%FF",
        "?symbols=spot:BTCUSDT&token=%C0",
    ] {
        assert_eq!(
            refused_with(handshake(&server.url(query), &[]).await),
            (400, "bad_request".into()),
            "{query}"
        );
        let (status, body) = server.get(&format!("/sse{query}")).await;
        assert_eq!(status, 400, "{query}");
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(body["error"], "bad_request", "{body}");
    }
    let series = r#"tickwire_handshakes_refused_total{reason="bad_query"}"#;
    assert_eq!(metric_value(&server, series).await, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_request_heads_are_cut_off() {
    let config = ServerConfig {
        header_timeout: Duration::from_millis(300),
        max_header_bytes: 8 * 1024,
        ..ServerConfig::default()
    };
    let server = live_server(config).await;
    // Slowloris: half a request head, then nothing. The server hangs up.
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(GUARD, slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server kept a stalled handshake open");
    // A header bomb is refused without reading it all.
    let mut bomb = TcpStream::connect(server.addr).await.expect("connect");
    let huge = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = bomb.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(GUARD, bomb.read_to_end(&mut answer))
        .await
        .expect("the server answers or hangs up");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // Everyone else is still served.
    let mut client = Client::connect(&server.url("?symbols=spot:BTCUSDT")).await;
    client.recv_type("ticker").await;
    let _ = client.ws.next().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_mints_eddsa_tokens_its_server_accepts_and_never_logs_them() {
    let dir = std::env::temp_dir().join(format!("tickwire-eddsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key pair");
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    std::fs::write(&private, pair.serialize_pem()).expect("write key");
    std::fs::write(&public, pair.public_key_pem()).expect("write key");
    let minted = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(["token", "--algorithm", "eddsa", "--symbols", "spot:*"])
        .args(["--aud", "tickwire", "--private-key"])
        .arg(&private)
        .output()
        .expect("tickwire token");
    assert!(minted.status.success(), "{minted:?}");
    let jwt = String::from_utf8(minted.stdout).expect("UTF-8");
    let jwt = jwt.trim();

    let public_arg = public.to_string_lossy().into_owned();
    let server = Binary::serve(&[
        "--log",
        "debug",
        "--jwt-public-key",
        &public_arg,
        "--jwt-algorithm",
        "eddsa",
        "--jwt-audience",
        "tickwire",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("ws://{}/ws?symbols=spot:BTCUSDT,usdm:BTCUSDT", server.addr);
    let bearer = format!("Bearer {jwt}");
    let (mut client, _) = accepted(handshake(&url, &[("authorization", &bearer)]).await);
    assert_eq!(
        client.recv_type("subscribed").await["symbols"],
        json!(["spot:BTCUSDT"])
    );
    // A token signed by another key is refused.
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key pair");
    let forged = mint::mint(
        &spot_claims(),
        &SigningKey::EdDsaPem(stranger.serialize_pem().into_bytes()),
    )
    .expect("sign");
    let bearer = format!("Bearer {forged}");
    assert_eq!(
        refused_with(handshake(&url, &[("authorization", &bearer)]).await).0,
        401
    );
    drop(client);
    let (_, log) = server.terminate();
    assert!(log.contains("credentials refused"), "{log}");
    assert!(!log.contains(jwt) && !log.contains(&forged), "{log}");
}

#[test]
fn bad_security_settings_stop_the_binary_with_what_was_expected() {
    let dir = std::env::temp_dir().join(format!("tickwire-bad-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret = dir.join("hs256.secret");
    std::fs::write(&secret, "not a PEM key\n").expect("write secret");
    let secret = secret.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 6] = [
        (
            &["token", "--symbols", "*", "--private-key", &secret],
            "hs256.secret: not an RS256 private key in PEM",
        ),
        (
            &[
                "token",
                "--symbols",
                "*",
                "--algorithm",
                "eddsa",
                "--private-key",
                &secret,
            ],
            "hs256.secret: not an Ed25519 private key in PEM",
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--jwt-public-key",
                &secret,
            ],
            "hs256.secret: not an RS256 public key in PEM",
        ),
        // Origins a browser never sends would lock every browser out.
        (
            &["serve", "--allowed-origin", "app.example"],
            "expected SCHEME://HOST or SCHEME://HOST:PORT",
        ),
        (
            &["serve", "--allowed-origin", "https://app.example/app"],
            "is not an origin",
        ),
        // The HTTP parser cannot keep a limit below 8 KiB.
        (
            &["serve", "--max-header-bytes", "1024"],
            "1024 is not in 8192..=1048576",
        ),
    ];
    for (args, expected) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
            .args(args)
            .output()
            .expect("run tickwire");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("InvalidKeyFormat"), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_capped_credential_is_refused_the_book_channel_after_an_empty_subscribed() {
    let server = live_server(with_auth(ServerConfig::default(), None)).await;
    let jwt = token(&TokenClaims {
        max_rate_hz: Some(5.0),
        ..spot_claims()
    });
    let (mut client, _) = accepted(handshake(&server.url(&format!("?token={jwt}")), &[]).await);
    client
        .send(json!({"op": "subscribe", "id": 5, "channel": "book", "symbols": ["spot:BTCUSDT"]}))
        .await;
    // Every refused subscribe request is still answered with `subscribed`.
    assert_eq!(
        client.recv().await,
        json!({"type": "subscribed", "id": 5, "channel": "book", "symbols": []})
    );
    let error = client.recv().await;
    assert_eq!(
        (
            &error["type"],
            &error["id"],
            &error["code"],
            &error["symbols"]
        ),
        (
            &json!("error"),
            &json!(5),
            &json!("not_entitled"),
            &json!(["spot:BTCUSDT"])
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_that_stops_reading_its_responses_is_dropped() {
    // Only the stall can end the connection.
    let server = TestServer::start(short_stall_bound(), Vec::new()).await;
    let mut stream = connect_with_receive_buffer(server.addr, 4096).await;
    // Far more copies of the dashboard script than the socket buffers hold,
    // asked for at once, and never read.
    let request = format!("GET /app.js HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stream
        .write_all(request.repeat(64).as_bytes())
        .await
        .expect("send");
    eventually_metric(&server, "tickwire_http_stalled_total", 1.0).await;
    // Reading now only drains what was queued before the server let go.
    // (A reset is a close too: the server may drop requests it never read.)
    let mut received = Vec::new();
    let _ = tokio::time::timeout(GUARD, stream.read_to_end(&mut received))
        .await
        .expect("the server closed the connection");
    let answered = received
        .windows(15)
        .filter(|w| w == b"HTTP/1.1 200 OK")
        .count();
    assert!(answered < 64, "every response was written: {answered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_default_open_file_limit_does_not_let_one_address_lock_everyone_out() {
    // A soft limit of 64 open files, and connections that hold theirs (a
    // long handshake timeout): more of them than that still leave the
    // server answering, as its connection limits promise.
    let server = Binary::serve_with_open_file_limit(
        64,
        None,
        &[
            "--handshake-timeout-secs",
            "3600",
            "--once",
            "--speed",
            "max",
        ],
    );
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let (status, body) = http_get(server.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_has_no_descriptor_for_are_counted() {
    // Clients alone cannot take every descriptor (sockets waiting for a
    // request are bounded within what the limit leaves), so the limit is
    // lowered under the running server, to two more than it holds. More
    // connections than that wait in the backlog, unaccepted.
    let server = Binary::serve_with_open_file_limit(64, Some(64), &["--once", "--speed", "max"]);
    let ended = "replay feed ended";
    eventually("the replay ended", || {
        server.startup_log.contains(ended) || server.log_so_far().contains(ended)
    })
    .await;
    let pid = server.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's descriptors")
        .count();
    let lowered = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={}", open + 2))
        .status()
        .expect("prlimit");
    assert!(lowered.success());
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    eventually("an accept failed", || {
        server.log_so_far().contains("accept failed")
    })
    .await;
    // Once they are gone there are descriptors again, for /metrics too.
    drop(held);
    let page = http_get(server.addr, "/metrics").await.1;
    assert!(metric(&page, "tickwire_accept_errors_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_what_the_open_files_hold_are_refused_with_503() {
    // 64 open files: room for 32 clients, the rest kept for handshakes. More
    // clients than that are each answered, the last ones with a refusal.
    let server = Binary::serve_with_open_file_limit(64, Some(64), &["--once", "--speed", "max"]);
    assert!(
        server.startup_log.contains("admitted=32"),
        "{}",
        server.startup_log
    );
    let url = format!("ws://{}/ws", server.addr);
    let mut clients = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match handshake(&url, &[]).await {
            Ok(client) => clients.push(client),
            Err(Refused { status, body, .. }) => {
                assert_eq!((status, &body["error"]), (503, &json!("connection_limit")));
                refused += 1;
            }
        }
    }
    assert_eq!((clients.len(), refused), (32, 8));
    let (status, _) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_many_addresses_make_room_for_a_client_that_speaks() {
    // 64 open files, which the server cannot lift: room for 32 clients and
    // 16 sockets waiting for a request head beside them, 48 while no client
    // is admitted. Twenty addresses, each under its
    // limit of four, open 80 sockets that never send a byte, and the head
    // timeout is a minute: unbounded across addresses, they would hold every
    // descriptor for that minute, and nobody else would even be accepted.
    let server = Binary::serve_with_open_file_limit(
        64,
        Some(64),
        &[
            "--max-connections-per-ip",
            "4",
            "--handshake-timeout-secs",
            "60",
            "--once",
            "--speed",
            "max",
        ],
    );
    let mut silent = Vec::new();
    for address in 2..22 {
        for _ in 0..4 {
            silent.push(connect_from([127, 0, 0, address], server.addr).await);
        }
    }
    // The ones that waited longest were closed, unread, to make room.
    let in_time = Duration::from_secs(20);
    for socket in &mut silent[..8] {
        let read = tokio::time::timeout(in_time, socket.read(&mut [0; 1]))
            .await
            .expect("a socket that waited longest was closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // A client that sends its request at once is answered, long before the
    // silent sockets' minute is out.
    let client = connect_from([127, 0, 0, 1], server.addr).await;
    let answered = tokio::time::timeout(in_time, healthz_on(client))
        .await
        .expect("answered in time");
    assert_eq!(answered, Some(200));
    let metrics_client = connect_from([127, 0, 0, 1], server.addr).await;
    let (_, page) = tokio::time::timeout(in_time, http_get_on(metrics_client, "/metrics"))
        .await
        .expect("metrics in time")
        .expect("metrics");
    assert!(
        metric(&page, "tickwire_http_waiting_evicted_total") >= 1.0,
        "{page}"
    );
    // The silent sockets still open wait, within the bound: 64 descriptors
    // less a twentieth kept (at least 16), none taken by a client.
    let waiting = metric(&page, "tickwire_http_waiting");
    assert!((1.0..=48.0).contains(&waiting), "{page}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_between_requests_waits_like_a_new_one() {
    // Room for no client, so the two waiting sockets are all there is.
    let config = ServerConfig {
        max_waiting: 2,
        max_connections: 0,
        header_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let server = live_server(config).await;
    let in_time = Duration::from_secs(20);
    // One request answered, and the connection kept open without another.
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\nok\n") {
        let mut buf = [0; 512];
        let read = tokio::time::timeout(in_time, idle.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(read > 0, "closed before the answer");
        response.extend_from_slice(&buf[..read]);
    }
    // Two sockets that say nothing: it has waited longest, and makes room.
    let _silent = [
        TcpStream::connect(server.addr).await.expect("connect"),
        TcpStream::connect(server.addr).await.expect("connect"),
    ];
    let read = tokio::time::timeout(in_time, idle.read(&mut [0; 1]))
        .await
        .expect("the idle connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        server
            .metrics()
            .http_waiting_evicted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// A connection to `addr` from the local address `from` (any of 127/8 is this
/// host), so that one test can be several clients' addresses.
async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// GET /healthz on `stream`; the status, or None when the server closed it.
async fn healthz_on(stream: TcpStream) -> Option<u16> {
    http_get_on(stream, "/healthz")
        .await
        .map(|(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_send_no_request_cannot_take_every_descriptor_from_one_address() {
    let server = live_server(two_per_address()).await;
    let url = server.url("");
    // Two WebSocket sessions from 127.0.0.1 fill its client limit, but not
    // its limit on connections still speaking HTTP: the sessions took theirs over.
    let _sessions = [
        accepted(handshake(&url, &[]).await),
        accepted(handshake(&url, &[]).await),
    ];
    let served = connect_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(healthz_on(served).await, Some(200));
    // Two sockets that say nothing fill it; a third is closed unanswered.
    let idle = [
        connect_from([127, 0, 0, 1], server.addr).await,
        connect_from([127, 0, 0, 1], server.addr).await,
    ];
    let mut refused = false;
    for _ in 0..200 {
        let third = connect_from([127, 0, 0, 1], server.addr).await;
        if healthz_on(third).await.is_none() {
            refused = true;
            break;
        }
        // The server had not accepted both idle sockets yet.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "a third socket from a full address was served");
    // Everybody else is served meanwhile.
    let other = connect_from([127, 0, 0, 2], server.addr).await;
    assert_eq!(healthz_on(other).await, Some(200));
    let series = r#"tickwire_handshakes_refused_total{reason="peer_http_limit"}"#;
    let metrics_client = connect_from([127, 0, 0, 3], server.addr).await;
    let (_, page) = http_get_on(metrics_client, "/metrics")
        .await
        .expect("metrics");
    assert!(metric(&page, series) >= 1.0, "{page}");
    // A socket that goes frees its place.
    drop(idle);
    let mut again = false;
    for _ in 0..200 {
        if healthz_on(connect_from([127, 0, 0, 1], server.addr).await).await == Some(200) {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again, "a place was never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_clients_that_speak_at_once_is_answered_under_a_login_shell_limit() {
    // 1,024 open files, which the server cannot lift: room for 922 clients
    // and 51 sockets waiting for a request head beside them. No client is
    // admitted yet, so a burst of 300 that each send their request as soon
    // as they are connected (none of them silent) fits in the descriptors
    // the clients leave, even when the server accepts faster than it reads.
    let server =
        Binary::serve_with_open_file_limit(1_024, Some(1_024), &["--once", "--speed", "max"]);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let addr = server.addr;
        clients.spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            healthz_on(stream).await
        });
    }
    let mut unanswered = 0;
    while let Some(answer) = clients.join_next().await {
        if answer.expect("client") != Some(200) {
            unanswered += 1;
        }
    }
    let (_, page) = http_get(server.addr, "/metrics").await;
    let evicted = metric(&page, "tickwire_http_waiting_evicted_total");
    assert_eq!((unanswered, evicted), (0, 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_still_on_its_way_to_a_slow_reader_is_not_cut_short_to_make_room() {
    // Room for no client and two waiting sockets.
    let config = ServerConfig {
        max_waiting: 2,
        max_connections: 0,
        header_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let server = TestServer::start(config, Vec::new()).await;
    declare_quoted_symbols(&server.hub, 20_000);
    // A client with a small receive window asks for a large page and reads
    // it slowly: most of it is still the server's to send when its body is done.
    let mut slow = connect_with_receive_buffer(server.addr, 4096).await;
    slow.write_all(b"GET /api/symbols HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Sockets that say nothing arrive meanwhile.
    let _silent = [
        TcpStream::connect(server.addr).await.expect("connect"),
        TcpStream::connect(server.addr).await.expect("connect"),
        TcpStream::connect(server.addr).await.expect("connect"),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The whole page still arrives.
    let mut response = Vec::new();
    let mut buf = [0; 4096];
    let complete = loop {
        let read = tokio::time::timeout(GUARD, slow.read(&mut buf))
            .await
            .expect("read in time");
        match read {
            Ok(0) | Err(_) => break false,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
        if response.ends_with(b"\"]") {
            break true;
        }
    };
    assert!(complete, "cut short after {} bytes", response.len());
    // The bound was at work all the while: silent sockets made room.
    let evicted = server
        .metrics()
        .http_waiting_evicted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(evicted >= 1, "{evicted}");
}
