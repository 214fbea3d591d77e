//! `wss://` and `https://` served with rustls (`--tls-cert`/`--tls-key`),
//! against real TLS clients trusting a self-signed certificate.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use serde_json::json;
use tickwire::feed::replay::ReplayConfig;
use tickwire::server::ServerConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::Connector;

struct Certificate {
    dir: std::path::PathBuf,
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for `localhost`, written as the PEM files
/// `--tls-cert`/`--tls-key` read, and a client that trusts it.
fn certificate() -> Certificate {
    // One folder per certificate: tests run in parallel, and each removes its own.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tickwire-serve-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let server = tickwire::server::tls::server_config(&cert, &key).expect("TLS config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Certificate {
        dir,
        client: Arc::new(client),
        server,
    }
}

fn tls_setup(certificate: &Certificate) -> (ServerConfig, Vec<ReplayConfig>) {
    let config = ServerConfig {
        tls: Some(certificate.server.clone()),
        ..ServerConfig::default()
    };
    (config, both_samples_looping())
}

/// A TLS client over `tcp` that trusts `certificate`, its handshake done.
async fn tls_over(
    tcp: TcpStream,
    certificate: &Certificate,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(certificate.client.clone());
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

async fn tls_server(certificate: &Certificate) -> TestServer {
    let (config, replays) = tls_setup(certificate);
    TestServer::start(config, replays).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_get_the_same_protocol_over_tls() {
    let certificate = certificate();
    let server = tls_server(&certificate).await;
    speaks_the_protocol_over_tls(&server, &certificate).await;
}

#[tokio::test]
async fn a_wss_session_keeps_its_tls_state_when_it_leaves_the_http_thread() {
    let certificate = certificate();
    let (config, replays) = tls_setup(&certificate);
    let server = TestServer::start_fronted(config, replays).await;
    speaks_the_protocol_over_tls(&server, &certificate).await;
}

async fn speaks_the_protocol_over_tls(server: &TestServer, certificate: &Certificate) {
    let url = format!(
        "wss://localhost:{}/ws?symbols=spot:BTCUSDT,usdm:BTCUSDT",
        server.addr.port()
    );
    let connector = Connector::Rustls(certificate.client.clone());
    let (ws, response) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
            .await
            .expect("wss handshake");
    assert_eq!(response.status(), 101);
    let mut client = Client { ws };
    assert_eq!(
        client.recv_type("subscribed").await["symbols"],
        json!(["spot:BTCUSDT", "usdm:BTCUSDT"])
    );
    let mut tape = Tape::default();
    while tape.tickers < 40 {
        tape.record(&client.recv_type("ticker").await);
    }
    client.send(json!({"op": "list", "id": 5})).await;
    assert_eq!(
        client.recv_type("symbols").await["symbols"],
        json!(["spot:BTCUSDT", "usdm:BTCUSDT"])
    );
    // A request larger than one TLS record arrives whole.
    let many: Vec<String> = (0..3000).map(|i| format!("NOPE{i}")).collect();
    client
        .send(json!({"op": "subscribe", "id": 6, "symbols": many}))
        .await;
    let error = client.recv_type("error").await;
    assert_eq!(error["symbols"].as_array().map(Vec::len), Some(3000));
    client
        .send_raw(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    assert_eq!(client.close_code().await, Some(1000));
}

#[tokio::test]
async fn wss_requests_read_with_the_upgrade_request_are_answered_after_the_hand_over() {
    let certificate = certificate();
    let (config, replays) = tls_setup(&certificate);
    let server = TestServer::start_fronted(config, replays).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut tls = tls_over(tcp, &certificate).await;
    answers_requests_sent_with_the_upgrade(&mut tls, "localhost").await;
}

/// This test's runtime runs the sessions: while it waits, blocked, for the
/// client to have sent its request, no session can start, so the request is
/// in the socket when the session takes the connection over.
#[tokio::test]
async fn a_wss_request_sent_before_its_session_starts_is_answered_on_taking_over() {
    let certificate = certificate();
    let (config, replays) = tls_setup(&certificate);
    let server = TestServer::start_fronted(config, replays).await;
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let connector = Connector::Rustls(certificate.client.clone());
    let (sent, request_sent) = std::sync::mpsc::channel();
    let (answered, answer) = tokio::sync::oneshot::channel();
    on_a_thread_of_its_own(async move {
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await
                .expect("wss handshake");
        let mut client = Client { ws };
        client
            .send(json!({"op": "subscribe", "id": 3, "symbols": ["usdm:BTCUSDT"]}))
            .await;
        let _ = sent.send(());
        let subscribed = client.recv_type("subscribed").await;
        let ticker = client.recv_type("ticker").await;
        let _ = answered.send((subscribed, ticker));
    });
    request_sent
        .recv_timeout(GUARD)
        .expect("handshake and request while the sessions wait");
    let (subscribed, ticker) = tokio::time::timeout(GUARD, answer)
        .await
        .expect("answered in time")
        .expect("the client saw its answer and a ticker");
    assert_eq!(subscribed["id"], 3);
    assert_eq!(ticker["symbol"], "usdm:BTCUSDT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_plain_http_is_not_answered() {
    let certificate = certificate();
    let server = tls_server(&certificate).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut tls = tls_over(tcp, &certificate).await;
    tls.write_all(b"GET /api/symbols HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(GUARD, tls.read_to_end(&mut response))
        .await
        .expect("response in time");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(r#"["spot:BTCUSDT","usdm:BTCUSDT"]"#),
        "{response}"
    );

    // Cleartext HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"GET /api/symbols HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(GUARD, plain.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
    // It is counted as a failed handshake (once the server has seen it fail,
    // which may be just after the client saw the close).
    let failures = &server.metrics().tls_handshake_failures;
    eventually("a failed handshake counted", || {
        failures.load(Ordering::Relaxed) == 1
    })
    .await;
}

#[test]
fn subscribe_and_bench_trust_a_self_signed_server_given_with_ca_file() {
    let certificate = certificate();
    let path = |name: &str| certificate.dir.join(name).display().to_string();
    let server = Binary::serve(&[
        "--tls-cert",
        &path("cert.pem"),
        "--tls-key",
        &path("key.pem"),
    ]);
    let url = format!("wss://localhost:{}", server.addr.port());
    let subscribe = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "subscribe",
            &url,
            "--symbols",
            "spot:BTCUSDT",
            "--count",
            "1",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };

    // Without it the certificate is refused, saying why.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(subscribe(&[]))
        .output()
        .expect("run tickwire");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    let stdout = run_tickwire(&subscribe(&["--ca-file", &path("cert.pem")]));
    assert!(stdout.contains(r#""type":"ticker""#), "{stdout}");

    let report = path("bench.json");
    run_tickwire(
        &[
            "bench",
            &url,
            "--ca-file",
            &path("cert.pem"),
            "--symbols",
            "spot:BTCUSDT",
            "--connections",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--json",
            &report,
        ]
        .map(String::from),
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    assert_eq!(report["connections"]["connected"], 2, "{report:#}");
    // `/metrics` was read over https from the same host and port.
    assert!(
        report["server_metrics"]["book_updates"].is_number(),
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_client_that_stops_reading_its_responses_is_dropped() {
    let certificate = certificate();
    // Short ping rounds, so the stall bound is short too.
    let config = ServerConfig {
        tls: Some(certificate.server.clone()),
        session: tickwire::session::SessionConfig {
            ping_interval: std::time::Duration::from_millis(100),
            ping_timeout: std::time::Duration::from_millis(100),
            ..Default::default()
        },
        header_timeout: std::time::Duration::from_secs(3600),
        ..ServerConfig::default()
    };
    let server = TestServer::start(config, Vec::new()).await;
    let tcp = connect_with_receive_buffer(server.addr, 4096).await;
    let mut tls = tls_over(tcp, &certificate).await;
    // Far more copies of the dashboard script than rustls and the socket
    // buffers hold, asked for at once, and never read.
    let request = b"GET /app.js HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(64);
    tls.write_all(&request).await.expect("send");
    tls.flush().await.expect("flush");
    let metrics = server.metrics();
    let stalled = || {
        metrics
            .http_stalled
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    eventually("the stalled connection dropped", || stalled() == 1).await;
    drop(tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_begin_their_tls_handshake_make_room_for_one_that_does() {
    let certificate = certificate();
    // At most four sockets waiting for a handshake or a request head (no
    // room for clients beside them), and a minute for each.
    let config = ServerConfig {
        tls: Some(certificate.server.clone()),
        max_waiting: 4,
        max_connections: 0,
        header_timeout: std::time::Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let server = TestServer::start(config, Vec::new()).await;
    let in_time = std::time::Duration::from_secs(20);
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let read = tokio::time::timeout(in_time, silent[0].read(&mut [0; 1]))
        .await
        .expect("the socket that waited longest was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let response = tokio::time::timeout(in_time, async {
        let mut tls = tls_over(tcp, &certificate).await;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        response
    })
    .await
    .expect("answered in time");
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    let evicted = server
        .metrics()
        .http_waiting_evicted
        .load(Ordering::Relaxed);
    assert!(evicted >= 4, "{evicted}");
}
