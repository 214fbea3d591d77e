//! Shared test helpers: a real server on 127.0.0.1:0, real WebSocket clients, raw
//! sockets for protocol abuse, the `tickwire` binary as a child process, and an
//! independent reading of the sample files to check the served book against.
#![allow(dead_code)] // Each test binary uses a different subset.

pub mod exchange;
pub mod nats;

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tickwire::fanout::Hub;
use tickwire::feed::config::FeedConfig;
use tickwire::feed::replay::{ReplayConfig, ReplayHandle, ReplayInput, ReplaySource, Speed};
use tickwire::feed::FeedHandle;
use tickwire::metrics::Metrics;
use tickwire::server::{self, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Upper bound on any single wait, so a broken server fails the test instead
/// of hanging it. Not a performance assertion: healthy runs take a fraction.
pub const GUARD: Duration = Duration::from_secs(60);

pub fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("replay-data")
        .join(name)
}

pub const SPOT: &str = "binance-spot-btcusdt-20240808.gz";
pub const USDM: &str = "binance-usdm-btcusdt-20240808.gz";
pub const COINBASE: &str = "coinbase-sample.ws.gz";
pub const TARDIS_QUOTES: &str = "tardis-binance-futures-btcusdt-quotes-sample.csv";
pub const TARDIS_TRADES: &str = "tardis-binance-futures-btcusdt-trades-sample.csv";

/// A server that has replayed both Binance samples (as `spot:` and `usdm:`)
/// to the end: its books hold still while a test compares what clients see.
pub async fn settled_server(config: ServerConfig) -> TestServer {
    let files = [(Some("spot"), sample(SPOT)), (Some("usdm"), sample(USDM))];
    let server = TestServer::start(config, vec![replay_of(&files, Speed::Max, false, false)]).await;
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    server
}

/// A replay of `files` (`(prefix, path)`), paused until started when `paused`.
pub fn replay_of(
    files: &[(Option<&str>, PathBuf)],
    speed: Speed,
    looped: bool,
    paused: bool,
) -> ReplayConfig {
    ReplayConfig {
        name: "test".into(),
        sources: files
            .iter()
            .map(|(prefix, path)| ReplaySource {
                prefix: prefix.map(str::to_owned),
                input: ReplayInput::Path(path.clone()),
            })
            .collect(),
        speed,
        looped,
        max_gap: Duration::from_secs(1),
        start_paused: paused,
        max_book_levels: tickwire::book::depth::DEFAULT_MAX_BOOK_LEVELS,
    }
}

/// Both Binance samples (`spot:` and `usdm:`), looping at 1× so that updates
/// keep coming.
pub fn both_samples_looping() -> Vec<ReplayConfig> {
    let files = [(Some("spot"), sample(SPOT)), (Some("usdm"), sample(USDM))];
    vec![replay_of(&files, Speed::Factor(1.0), true, false)]
}

/// How a [`TestServer`] serves.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    /// HTTP on a thread of its own ([`server::run_fronted`]).
    pub fronted: bool,
    /// Listening sockets, each on an address of its own.
    pub listeners: usize,
    /// The server panics where it would shut down.
    pub panic_at_shutdown: bool,
}

impl Default for Serving {
    fn default() -> Self {
        Self {
            fronted: false,
            listeners: 1,
            panic_at_shutdown: false,
        }
    }
}

/// The server running in this process.
pub struct TestServer {
    /// The first of [`TestServer::addrs`].
    pub addr: SocketAddr,
    /// Each listening socket's address.
    pub addrs: Vec<SocketAddr>,
    pub hub: Arc<Hub>,
    pub replays: Vec<ReplayHandle>,
    pub lives: Vec<tickwire::feed::live::LiveHandle>,
    pub synthetics: Vec<tickwire::feed::synthetic::SyntheticHandle>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    feeds: CancellationToken,
}

impl TestServer {
    pub async fn start(config: ServerConfig, replays: Vec<ReplayConfig>) -> Self {
        Self::start_serving(config, replays, Serving::default()).await
    }

    /// A server with feeds of any kind.
    pub async fn start_feeds(config: ServerConfig, feeds: Vec<FeedConfig>) -> Self {
        Self::launch(config, feeds, Serving::default()).await
    }

    /// A server whose HTTP, handshakes included, runs on a thread of its
    /// own ([`server::run_fronted`]) while its sessions run on the test's
    /// runtime, as `tickwire serve --workers 1` runs them.
    pub async fn start_fronted(config: ServerConfig, replays: Vec<ReplayConfig>) -> Self {
        let serving = Serving {
            fronted: true,
            ..Serving::default()
        };
        Self::start_serving(config, replays, serving).await
    }

    /// A server served as `serving` says.
    pub async fn start_serving(
        config: ServerConfig,
        replays: Vec<ReplayConfig>,
        serving: Serving,
    ) -> Self {
        let feeds = replays.into_iter().map(FeedConfig::Replay).collect();
        Self::launch(config, feeds, serving).await
    }

    async fn launch(config: ServerConfig, feeds: Vec<FeedConfig>, serving: Serving) -> Self {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::default())));
        let cancel = CancellationToken::new();
        let mut replays = Vec::new();
        let mut lives = Vec::new();
        let mut synthetics = Vec::new();
        for feed in feeds {
            match tickwire::feed::spawn(hub.clone(), feed, cancel.clone()).expect("feed starts") {
                FeedHandle::Replay(handle) => replays.push(handle),
                FeedHandle::Live(handle) => lives.push(handle),
                FeedHandle::Synthetic(handle) => synthetics.push(handle),
            }
        }
        let mut bound = Vec::new();
        for _ in 0..serving.listeners.max(1) {
            bound.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let addrs: Vec<SocketAddr> = bound
            .iter()
            .map(|listener| listener.local_addr().expect("local addr"))
            .collect();
        let (tx, rx) = oneshot::channel::<()>();
        let panics = serving.panic_at_shutdown;
        let shutdown = async move {
            let _ = rx.await;
            assert!(!panics, "the server unwinds instead of shutting down");
        };
        let task = if serving.fronted {
            tokio::spawn(server::run_fronted(bound, hub.clone(), config, shutdown))
        } else {
            tokio::spawn(server::run_on(bound, hub.clone(), config, shutdown))
        };
        Self {
            addr: addrs[0],
            addrs,
            hub,
            replays,
            lives,
            synthetics,
            shutdown: Some(tx),
            task: Some(task),
            feeds: cancel,
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    pub fn metrics(&self) -> &Metrics {
        self.hub.metrics()
    }

    /// Triggers shutdown and waits for the server (`server::run` or
    /// `server::run_fronted`) to return.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.feeds.cancel();
        match self.task.take() {
            Some(task) => tokio::time::timeout(GUARD, task)
                .await
                .expect("server stops")
                .expect("server task"),
            None => Ok(()),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// Drops the server's future without its shutdown, as a caller that
    /// stops polling it would, and waits until it is gone.
    pub async fn abort(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let ended = tokio::time::timeout(GUARD, task).await.expect("aborted");
            assert!(ended.is_err_and(|e| e.is_cancelled()), "dropped, not ended");
        }
    }

    /// Triggers the shutdown of a server started with
    /// [`Serving::panic_at_shutdown`], and waits until its panic has
    /// unwound it.
    pub async fn shutdown_unwinding(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let ended = tokio::time::timeout(GUARD, task).await.expect("unwound");
            assert!(ended.is_err_and(|e| e.is_panic()), "the server panicked");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.feeds.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A server whose bound on output nobody takes (ten ping rounds) is short,
/// and whose handshake timeout is too long to end a connection first.
pub fn short_stall_bound() -> ServerConfig {
    ServerConfig {
        session: tickwire::session::SessionConfig {
            ping_interval: Duration::from_millis(100),
            ping_timeout: Duration::from_millis(100),
            ..Default::default()
        },
        header_timeout: Duration::from_secs(3600),
        ..ServerConfig::default()
    }
}

/// A plain HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    http_get_on(stream, path).await.expect("an HTTP answer")
}

/// [`http_get`] on a connection already made (from a chosen local address,
/// say); None when the server closed it without an answer.
pub async fn http_get_on(mut stream: TcpStream, path: &str) -> Option<(u16, String)> {
    let host = stream.peer_addr().ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut response))
        .await
        .expect("an answer or a close in time")
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

/// One value from a Prometheus text page, e.g. `tickwire_connections` or
/// `tickwire_feed_ended{feed="test"}`.
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

/// Polls `condition` every few milliseconds until it holds or GUARD passes.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `/metrics` until `series` reads `value` (or GUARD passes).
pub async fn eventually_metric(server: &TestServer, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let page = server.get("/metrics").await.1;
        let now = metric(&page, series);
        if now == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol v1 client on tokio-tungstenite.
pub struct Client {
    pub ws: Ws,
}

/// What a client sees next.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let handshake = tokio_tungstenite::connect_async_with_config(
            url,
            Some(tickwire::client::websocket_config()),
            true,
        );
        let (ws, response) = tokio::time::timeout(GUARD, handshake)
            .await
            .expect("handshake in time")
            .expect("handshake");
        assert_eq!(response.status(), 101);
        Self { ws }
    }

    pub async fn send(&mut self, request: Value) {
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next text message or the close, skipping pings.
    pub async fn next_event(&mut self) -> Event {
        loop {
            let message = tokio::time::timeout(GUARD, self.ws.next())
                .await
                .expect("a message in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Event::Json(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        let event = tokio::time::timeout(GUARD, self.next_event())
            .await
            .unwrap_or_else(|_| panic!("no message within {GUARD:?}"));
        match event {
            Event::Json(value) => value,
            Event::Closed(code) => panic!("closed ({code:?}) while expecting a message"),
        }
    }

    /// The next message of `kind`, skipping others (tickers usually), within
    /// GUARD in all: a stream that never brings one fails instead of spinning.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let value = tokio::time::timeout_at(deadline, self.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind} message in time"));
            if value["type"] == kind {
                return value;
            }
        }
    }

    /// Sends a ping and returns every message but `status` up to its pong:
    /// the server answers a request whole before it reads the next, so these
    /// are all it said before the ping.
    pub async fn recv_until_pong(&mut self) -> Vec<Value> {
        self.send(serde_json::json!({"op": "ping"})).await;
        let mut messages = Vec::new();
        loop {
            let message = self.recv().await;
            match message["type"].as_str() {
                Some("pong") => return messages,
                Some("status") => continue,
                _ => messages.push(message),
            }
        }
    }

    /// Reads until the server's close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Event::Closed(code) = self.next_event().await {
                return code;
            }
        }
    }
}

/// Per-symbol bookkeeping of everything a client received, checking the
/// delivery guarantees on every message.
#[derive(Default, Debug)]
pub struct Tape {
    pub last: std::collections::HashMap<String, Value>,
    pub tickers: u64,
    pub skipped: u64,
}

impl Tape {
    /// Records a ticker, asserting `seq` grows and `skipped` matches the gap.
    pub fn record(&mut self, ticker: &Value) {
        let symbol = ticker["symbol"].as_str().expect("symbol").to_owned();
        let seq = ticker["seq"].as_u64().expect("seq");
        let skipped = ticker["skipped"].as_u64().expect("skipped");
        if let Some(previous) = self.last.get(&symbol) {
            let previous_seq = previous["seq"].as_u64().expect("seq");
            assert!(
                seq > previous_seq,
                "{symbol}: seq {seq} after {previous_seq}"
            );
            if ticker["snapshot"] == false {
                assert_eq!(
                    skipped,
                    seq - previous_seq - 1,
                    "{symbol}: skipped at seq {seq}"
                );
            }
        }
        self.tickers += 1;
        self.skipped += skipped;
        self.last.insert(symbol, ticker.clone());
    }

    pub fn seq(&self, symbol: &str) -> u64 {
        self.last
            .get(symbol)
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0)
    }
}

/// A TCP connection to `addr` whose receive buffer is shrunk to
/// `recv_buffer` bytes: a client that stops reading, or reads slowly, soon
/// leaves the server's bytes unsent.
pub async fn connect_with_receive_buffer(addr: SocketAddr, recv_buffer: u32) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// A WebSocket handshake on a bare socket, for sending what real clients won't.
/// `recv_buffer` shrinks the socket's receive buffer (a client that stalls).
pub async fn raw_connect(addr: SocketAddr, path: &str, recv_buffer: Option<u32>) -> TcpStream {
    let mut stream = match recv_buffer {
        Some(size) => connect_with_receive_buffer(addr, size).await,
        None => TcpStream::connect(addr).await.expect("connect"),
    };
    upgrade_sending(&mut stream, addr, path, &[]).await;
    stream
}

/// Sends the upgrade request for `path` with `after_request` in the same
/// write, and reads the `101`'s head, byte by byte so no frame after it is
/// consumed here.
pub async fn upgrade_sending<S>(
    stream: &mut S,
    host: impl std::fmt::Display,
    path: &str,
    after_request: &[u8],
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(after_request);
    stream.write_all(&request).await.expect("send");
    stream.flush().await.expect("flush");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(GUARD, stream.read_u8())
            .await
            .expect("handshake in time")
            .expect("handshake");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455 accept key: {head}"
    );
}

/// Upgrades with two requests sent in the same write as the upgrade request,
/// so that the HTTP layer reads them with it and hands them over as
/// leftovers, and checks both are answered, in order.
pub async fn answers_requests_sent_with_the_upgrade<S>(stream: &mut S, host: impl std::fmt::Display)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut requests = client_frame(
        true,
        0x1,
        br#"{"op":"subscribe","id":1,"symbols":["usdm:BTCUSDT"]}"#,
    );
    requests.extend(client_frame(true, 0x1, br#"{"op":"list","id":2}"#));
    upgrade_sending(stream, host, "/ws", &requests).await;
    let mut frames = ServerFrames::default();
    let mut answers = Vec::new();
    // Tickers stream meanwhile: a lost answer must fail, not wait for ever.
    let answered = async {
        while answers.len() < 2 {
            let (opcode, payload) = frames.next(stream).await.expect("answers before closing");
            assert_eq!(opcode, 0x1, "a text frame");
            let message: Value = serde_json::from_slice(&payload).expect("JSON");
            if message["type"] == "subscribed" || message["type"] == "symbols" {
                answers.push(message);
            }
        }
    };
    tokio::time::timeout(GUARD, answered)
        .await
        .expect("both requests answered in time");
    assert_eq!(answers[0]["type"], "subscribed", "{answers:?}");
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[0]["symbols"], serde_json::json!(["usdm:BTCUSDT"]));
    assert_eq!(answers[1]["type"], "symbols", "{answers:?}");
    assert_eq!(answers[1]["id"], 2);
}

/// Runs `client` on a thread with a runtime of its own, so that it goes on
/// while the test's runtime, which runs a fronted server's sessions, is
/// blocked.
pub fn on_a_thread_of_its_own(client: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime")
            .block_on(client);
    });
}

/// A WebSocket handshake the server refused with an HTTP answer.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    /// The JSON body every refusal has.
    pub body: Value,
    pub headers: tokio_tungstenite::tungstenite::http::HeaderMap,
}

/// A handshake to `url` with extra request `headers`: the client and the
/// subprotocol the server chose, or the server's refusal.
pub async fn handshake(
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<(Client, Option<String>), Refused> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Error;
    let mut request = url.into_client_request().expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).expect("header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((Client { ws }, protocol))
        }
        Err(Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            Err(Refused {
                status: response.status().as_u16(),
                body: serde_json::from_slice(body).expect("refusals have a JSON body"),
                headers: response.headers().clone(),
            })
        }
        Err(e) => panic!("handshake failed without a response: {e}"),
    }
}

/// Tries a handshake that must be refused, and returns the answer.
pub async fn handshake_refusal(url: &str) -> Refused {
    match handshake(url, &[]).await {
        Ok(_) => panic!("handshake accepted"),
        Err(refused) => refused,
    }
}

/// A client that subscribes to `symbols` and then never reads a byte.
pub async fn stalled_client(addr: SocketAddr, symbols: &[&str]) -> TcpStream {
    let mut stream = raw_connect(addr, "/ws", Some(4096)).await;
    let request = serde_json::json!({"op": "subscribe", "symbols": symbols}).to_string();
    stream
        .write_all(&client_frame(true, 0x1, request.as_bytes()))
        .await
        .expect("send");
    stream
}

/// An SSE client that asks for `path` and then never reads a byte.
pub async fn stalled_sse_client(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = connect_with_receive_buffer(addr, 4096).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// Reads a server's frames from a bare socket: unmasked, so parsed here
/// without a WebSocket client that would read ahead.
#[derive(Default)]
pub struct ServerFrames {
    buffer: Vec<u8>,
}

impl ServerFrames {
    /// The next frame's opcode and payload; `None` once the server closed
    /// the connection.
    pub async fn next<S>(&mut self, stream: &mut S) -> Option<(u8, Vec<u8>)>
    where
        S: tokio::io::AsyncRead + Unpin,
    {
        loop {
            if let Some(frame) = self.take() {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(GUARD, stream.read(&mut chunk))
                .await
                .expect("server answers in time")
                .unwrap_or(0);
            if read == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    fn take(&mut self) -> Option<(u8, Vec<u8>)> {
        let buffer = &self.buffer;
        if buffer.len() < 2 {
            return None;
        }
        let (len, header) = match buffer[1] & 0x7f {
            126 if buffer.len() >= 4 => (u16::from_be_bytes([buffer[2], buffer[3]]) as usize, 4),
            127 if buffer.len() >= 10 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&buffer[2..10]);
                (u64::from_be_bytes(be) as usize, 10)
            }
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if buffer.len() < header + len {
            return None;
        }
        let opcode = buffer[0] & 0x0f;
        let payload = buffer[header..header + len].to_vec();
        self.buffer.drain(..header + len);
        Some((opcode, payload))
    }
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut frame = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The final top of book a file leaves, read independently of the crate's
/// parsers: (bid, bid_size, ask, ask_size) of the last quote, (price, size) of
/// the last trade, and the exchange time of the last tick.
#[derive(Debug, Default, PartialEq)]
pub struct FinalBook {
    pub quote: Option<[String; 4]>,
    pub trade: Option<[String; 2]>,
    pub last_exchange_ts_ns: Option<i64>,
}

/// Reads a Binance capture (`<ns> <json>` lines, gzip) to its final book.
pub fn binance_final_book(path: &Path) -> FinalBook {
    let file = std::fs::File::open(path).expect("sample");
    let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file));
    let mut book = FinalBook::default();
    for line in reader.lines() {
        let line = line.expect("line");
        let (_, json) = line.split_once(' ').expect("capture line");
        let message: Value = serde_json::from_str(json).expect("json");
        let data = &message["data"];
        let stream = message["stream"].as_str().unwrap_or("");
        let text = |key: &str| data[key].as_str().expect(key).to_owned();
        if stream.ends_with("@bookTicker") {
            book.quote = Some([text("b"), text("B"), text("a"), text("A")]);
        } else if stream.ends_with("@trade") {
            book.trade = Some([text("p"), text("q")]);
        } else {
            continue;
        }
        book.last_exchange_ts_ns = data["E"].as_i64().map(|ms| ms * 1_000_000);
    }
    book
}

/// The fields of a ticker that describe the book (not the delivery).
pub const BOOK_FIELDS: [&str; 8] = [
    "seq",
    "bid",
    "bid_size",
    "ask",
    "ask_size",
    "last",
    "last_size",
    "exchange_ts_ns",
];

/// Asserts a ticker message (or snapshot body) shows `book`.
pub fn assert_shows(ticker: &Value, book: &FinalBook, what: &str) {
    let quote = book.quote.as_ref().expect("file has quotes");
    for (field, expected) in ["bid", "bid_size", "ask", "ask_size"].iter().zip(quote) {
        assert_eq!(ticker[field], expected.as_str(), "{what}: {field}");
    }
    if let Some([price, size]) = &book.trade {
        assert_eq!(ticker["last"], price.as_str(), "{what}: last");
        assert_eq!(ticker["last_size"], size.as_str(), "{what}: last_size");
    }
    assert_eq!(
        ticker["exchange_ts_ns"].as_i64(),
        book.last_exchange_ts_ns,
        "{what}: exchange_ts_ns"
    );
}

/// The `tickwire` binary, started with `args`, killed on drop.
/// The first `n` symbols of a synthetic feed: `SYN000`, `SYN001`, ….
pub fn synthetic_symbols(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SYN{i:03}")).collect()
}

pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the server logged, collected by a thread so the pipe never fills.
    log: Arc<std::sync::Mutex<String>>,
    /// What it logged before it listened (not part of `log`).
    pub startup_log: String,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Binary {
    /// `tickwire serve` on a synthetic feed of `symbols` symbols (named as
    /// [`synthetic_symbols`] names them) at `rate` updates a second, seeded
    /// with `seed`; the feed file is written into `dir`.
    pub fn serve_synthetic(dir: &Path, symbols: usize, rate: f64, seed: u64) -> Self {
        Self::serve_synthetic_with(dir, symbols, rate, seed, &[])
    }

    /// [`Binary::serve_synthetic`] with more `serve` flags.
    pub fn serve_synthetic_with(
        dir: &Path,
        symbols: usize,
        rate: f64,
        seed: u64,
        flags: &[&str],
    ) -> Self {
        let feed = dir.join("synthetic.toml");
        std::fs::write(
            &feed,
            format!(
                "name = \"synthetic\"\nkind = \"synthetic\"\nsymbols = {symbols}\nrate = {rate:?}\nseed = {seed}\n"
            ),
        )
        .expect("feed file");
        let feed = feed.display().to_string();
        let args: Vec<&str> = ["--feed", feed.as_str()]
            .into_iter()
            .chain(flags.iter().copied())
            .collect();
        Self::serve(&args)
    }

    /// Starts `tickwire serve --listen 127.0.0.1:0 ARGS` and waits for its address.
    pub fn serve(args: &[&str]) -> Self {
        Self::run("serve", args)
    }

    /// `tickwire ingest` publishing to NATS at `nats`, with more flags.
    pub fn ingest(nats: &str, args: &[&str]) -> Self {
        Self::run("ingest", &[&["--nats", nats], args].concat())
    }

    /// [`Binary::serve`] started with a soft open-file limit of `soft`, as a
    /// login shell's default may be, and the hard one `hard` (None: unchanged).
    pub fn serve_with_open_file_limit(soft: u64, hard: Option<u64>, args: &[&str]) -> Self {
        let hard = hard.map(|hard| hard.to_string()).unwrap_or_default();
        let mut launcher = Command::new("prlimit");
        launcher
            .arg(format!("--nofile={soft}:{hard}"))
            .arg(env!("CARGO_BIN_EXE_tickwire"));
        Self::start(launcher, "serve", args)
    }

    /// `tickwire COMMAND` (one that listens) with `args`.
    fn run(command: &str, args: &[&str]) -> Self {
        Self::start(Command::new(env!("CARGO_BIN_EXE_tickwire")), command, args)
    }

    fn start(mut launcher: Command, command: &str, args: &[&str]) -> Self {
        let mut child = launcher
            .args([command, "--listen", "127.0.0.1:0"])
            .args(args)
            .env("TICKWIRE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tickwire");
        let stderr = child.stderr.take().expect("stderr");
        let mut reader = std::io::BufReader::new(stderr);
        let mut line = String::new();
        let mut startup_log = String::new();
        let addr = loop {
            line.clear();
            let read = reader.read_line(&mut line).expect("read log");
            assert!(read > 0, "tickwire exited before listening");
            startup_log.push_str(&line);
            // `ws://ADDR/ws`, or `wss://ADDR/ws` with TLS.
            if let Some(rest) = line.split("ws://").nth(1).or(line.split("wss://").nth(1)) {
                let addr = rest.split('/').next().expect("address");
                break addr.parse().expect("socket address");
            }
        };
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child,
            addr,
            log,
            startup_log,
            log_reader: Some(log_reader),
        }
    }

    /// What the server has logged since it listened.
    pub fn log_so_far(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Resident set size of the server process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// Sends SIGTERM and returns (exit success, everything logged after startup).
    pub fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = self.child.wait().expect("wait");
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (status.success(), log)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Server-Sent Events client over a bare socket (HTTP/1.1, chunked body).
pub struct SseClient {
    reader: tokio::io::BufReader<TcpStream>,
    text: String,
}

impl SseClient {
    /// Opens `path`; returns the status, the raw response head and the client.
    pub async fn connect(addr: SocketAddr, path: &str) -> (u16, String, Self) {
        use tokio::io::AsyncBufReadExt as _;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut reader = tokio::io::BufReader::new(stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            let read = tokio::time::timeout(GUARD, reader.read_line(&mut head))
                .await
                .expect("head in time")
                .expect("head");
            assert!(read > 0, "connection closed in the head: {head}");
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (
            status,
            head,
            Self {
                reader,
                text: String::new(),
            },
        )
    }

    /// The next event's `data` as JSON (comments skipped); `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Value> {
        use tokio::io::AsyncBufReadExt as _;
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if data.is_empty() {
                    continue; // A comment such as `: keep-alive`.
                }
                return Some(serde_json::from_str(&data.join("\n")).expect("data is JSON"));
            }
            // One chunk: `<hex size>\r\n<bytes>\r\n`; size 0 ends the body.
            let mut size_line = String::new();
            let read = tokio::time::timeout(GUARD, self.reader.read_line(&mut size_line))
                .await
                .expect("chunk in time")
                .ok()?;
            if read == 0 {
                return None;
            }
            let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0u8; size + 2];
            self.reader.read_exact(&mut chunk).await.ok()?;
            self.text
                .push_str(std::str::from_utf8(&chunk[..size]).expect("UTF-8 events"));
        }
    }

    pub async fn next_type(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let event = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event in time"))
                .expect("stream open");
            if event["type"] == kind {
                return event;
            }
        }
    }
}

/// Runs `tickwire ARGS` to the end, killing it (and failing) if it outlives
/// the guard.
pub fn run_tickwire_to_end(args: &[String]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tickwire");
    let deadline = std::time::Instant::now() + GUARD;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tickwire {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Runs `tickwire ARGS` to the end (within the guard) and returns its stdout;
/// fails on a nonzero exit.
pub fn run_tickwire(args: &[String]) -> String {
    let output = run_tickwire_to_end(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tickwire {args:?}: exit status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

/// Declares `test:S0000`, `test:S0001`, … (`count` symbols) and publishes one
/// quote for each: symbol `i` bids `1000.00 + i/100` and asks 1.00 above.
/// Returns the names, in order.
pub fn declare_quoted_symbols(hub: &Hub, count: usize) -> Vec<String> {
    use rust_decimal::Decimal;
    use tickwire::normalize::{BookUpdate, Tick};
    let names: Vec<String> = (0..count).map(|i| format!("test:S{i:04}")).collect();
    for (i, name) in names.iter().enumerate() {
        let tick = Tick {
            recv_ts_ns: 0,
            exchange_ts_ns: None,
            update: BookUpdate::Quote {
                bid: Decimal::new(100_000 + i as i64, 2),
                bid_size: Decimal::ONE,
                ask: Decimal::new(100_100 + i as i64, 2),
                ask_size: Decimal::ONE,
            },
        };
        let entry = hub.declare(name);
        hub.publish(&entry, &tick, tickwire::wall_clock_ns());
    }
    names
}

/// `hub`'s current book of `symbol` as a `book` message shows it: its `seq`
/// and its best `depth` bids and asks, each `["price","size"]`.
pub fn book_top(hub: &Hub, symbol: &str, depth: usize) -> (u64, Value, Value) {
    let entry = hub.get(symbol).expect("symbol served");
    let current = entry.depth().current().expect("a book was published");
    let (bids, asks) = current.top(depth);
    let pairs = |levels: &[tickwire::book::Level]| -> Value {
        levels
            .iter()
            .map(|l| serde_json::json!([l.price.to_string(), l.size.to_string()]))
            .collect()
    };
    (current.seq, pairs(bids), pairs(asks))
}
