//! The naive tokio-tungstenite peer: what a Rust user writes first, in the
//! style of the tokio-tungstenite examples. One generator thread serializes
//! every update once (serde_json) and sends it into a `tokio::sync::broadcast`
//! channel; one task per client receives every update, keeps those of its
//! subscribed symbols, and `send()`s (awaits: write + flush) each as its own
//! frame. No conflation: `skipped` is always 0.
//!
//!   naive-peer --symbols 100 --rate 2000 --port 8080     (or SYMBOLS/RATE/PORT/HOST)
//!
//! Speaks the part of protocol v1 that `tickwire bench` uses: GET /ws (with
//! ?symbols=A,B), subscribe/unsubscribe/list/ping, ticker messages with a
//! snapshot on subscribe, and GET /metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Updates a client may fall behind before it lags (and misses some).
const CHANNEL_CAPACITY: usize = 1 << 16;

struct Settings {
    symbols: usize,
    rate: f64,
    host: String,
    port: u16,
}

fn settings() -> Settings {
    let env = |key: &str| std::env::var(key).ok();
    let mut s = Settings {
        symbols: env("SYMBOLS").and_then(|v| v.parse().ok()).unwrap_or(100),
        rate: env("RATE").and_then(|v| v.parse().ok()).unwrap_or(2000.0),
        host: env("HOST").unwrap_or_else(|| "127.0.0.1".into()),
        port: env("PORT").and_then(|v| v.parse().ok()).unwrap_or(8080),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--symbols" => s.symbols = value.parse().expect("--symbols N"),
            "--rate" => s.rate = value.parse().expect("--rate R"),
            "--host" => s.host = value,
            "--port" => s.port = value.parse().expect("--port P"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(s.symbols >= 1 && s.rate > 0.0, "need symbols >= 1 and rate > 0");
    s
}

/// One update, serialized once for every subscriber.
#[derive(Clone, Debug)]
struct Update {
    symbol: usize,
    seq: u64,
    text: Utf8Bytes,
}

struct State {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Each symbol's latest message with `snapshot: true`, for new subscribers.
    snapshots: Vec<Mutex<Option<(u64, Utf8Bytes)>>>,
    tx: broadcast::Sender<Arc<Update>>,
    updates: AtomicU64,
    messages_out: AtomicU64,
    connections: AtomicU64,
    lagged: AtomicU64,
}

#[derive(Serialize)]
struct Ticker<'a> {
    r#type: &'static str,
    symbol: &'a str,
    seq: u64,
    bid: String,
    bid_size: String,
    ask: String,
    ask_size: String,
    last: Option<String>,
    last_size: Option<String>,
    exchange_ts_ns: i64,
    ingest_ts_ns: i64,
    skipped: u64,
    snapshot: bool,
}

fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

fn size(bits: u64) -> String {
    let milli = 1 + bits % 9_999;
    format!("{}.{:03}", milli / 1000, milli % 1000)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct Book {
    bid: i64,
    spread: i64,
    bid_size: String,
    ask_size: String,
    last: Option<String>,
    last_size: Option<String>,
    seq: u64,
}

/// The synthetic feed: update k is due k / rate seconds after the start
/// (`exchange_ts_ns`); `ingest_ts_ns` is the wall clock when it is made.
fn run_feed(state: Arc<State>, rate: f64) {
    let mut rng = Rng(1);
    let mut books: Vec<Book> = (0..state.names.len())
        .map(|_| Book {
            bid: 1_000 + (rng.next() % 99_000) as i64,
            spread: 1 + (rng.next() % 3) as i64,
            bid_size: "1.000".into(),
            ask_size: "1.000".into(),
            last: None,
            last_size: None,
            seq: 0,
        })
        .collect();
    let start_ns = wall_ns();
    let started = Instant::now();
    let mut emitted: u64 = 0;
    loop {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while emitted < due {
            emitted += 1;
            let symbol = (rng.next() % books.len() as u64) as usize;
            let bits = rng.next();
            let book = &mut books[symbol];
            if emitted % 10 == 0 {
                let price = if bits & 1 == 0 { book.bid } else { book.bid + book.spread };
                book.last = Some(cents(price));
                book.last_size = Some(size(bits >> 16));
            } else {
                book.bid = (book.bid + (bits % 5) as i64 - 2).max(1);
                book.spread = 1 + ((bits >> 8) % 3) as i64;
                book.bid_size = size(bits >> 16);
                book.ask_size = size(bits >> 40);
            }
            book.seq += 1;
            let mut ticker = Ticker {
                r#type: "ticker",
                symbol: &state.names[symbol],
                seq: book.seq,
                bid: cents(book.bid),
                bid_size: book.bid_size.clone(),
                ask: cents(book.bid + book.spread),
                ask_size: book.ask_size.clone(),
                last: book.last.clone(),
                last_size: book.last_size.clone(),
                exchange_ts_ns: start_ns + (emitted as f64 / rate * 1e9).ceil() as i64,
                ingest_ts_ns: wall_ns(),
                skipped: 0,
                snapshot: false,
            };
            let text = serde_json::to_string(&ticker).expect("serialize");
            ticker.snapshot = true;
            let snapshot = serde_json::to_string(&ticker).expect("serialize");
            *state.snapshots[symbol].lock().unwrap() = Some((book.seq, snapshot.into()));
            state.updates.fetch_add(1, Relaxed);
            // No receivers is not an error here: nobody is connected yet.
            let _ = state.tx.send(Arc::new(Update {
                symbol,
                seq: book.seq,
                text: text.into(),
            }));
        }
        let next = Duration::from_secs_f64((emitted + 1) as f64 / rate);
        let wait = next.saturating_sub(started.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
    }
}

#[tokio::main]
async fn main() {
    let s = settings();
    let width = (s.symbols - 1).to_string().len().max(3);
    let names: Vec<String> = (0..s.symbols).map(|i| format!("SYN{i:0width$}")).collect();
    let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
    let state = Arc::new(State {
        index: names.iter().cloned().enumerate().map(|(i, n)| (n, i)).collect(),
        snapshots: names.iter().map(|_| Mutex::new(None)).collect(),
        names,
        tx,
        updates: AtomicU64::new(0),
        messages_out: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        lagged: AtomicU64::new(0),
    });
    let listener = TcpListener::bind((s.host.as_str(), s.port)).await.expect("bind");
    println!(
        "naive tokio-tungstenite peer: {} symbols at {}/s, ws://{}/ws",
        s.symbols,
        s.rate,
        listener.local_addr().expect("local addr")
    );
    let feed_state = state.clone();
    std::thread::spawn(move || run_feed(feed_state, s.rate));

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, state.clone()));
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
}

/// `GET /metrics` gets the counters; anything else is a WebSocket handshake.
async fn handle(stream: TcpStream, state: Arc<State>) {
    let mut head = [0u8; 16];
    let n = stream.peek(&mut head).await.unwrap_or(0);
    if head[..n].starts_with(b"GET /metrics") {
        let _ = metrics(stream, &state).await;
        return;
    }
    let mut query = String::new();
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != "/ws" {
            let mut refusal = ErrorResponse::new(Some("not found".into()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        query = request.uri().query().unwrap_or_default().to_owned();
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    state.connections.fetch_add(1, Relaxed);
    let _ = client(ws, &state, &query).await;
    state.connections.fetch_sub(1, Relaxed);
}

async fn metrics(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = format!(
        "# TYPE tickwire_book_updates_total counter\ntickwire_book_updates_total {}\n\
         # TYPE tickwire_messages_out_total counter\ntickwire_messages_out_total {}\n\
         # TYPE tickwire_connections gauge\ntickwire_connections {}\n\
         # TYPE naive_lagged_total counter\nnaive_lagged_total {}\n",
        state.updates.load(Relaxed),
        state.messages_out.load(Relaxed),
        state.connections.load(Relaxed),
        state.lagged.load(Relaxed),
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[derive(serde::Deserialize)]
struct Op {
    op: String,
    id: Option<u64>,
    symbols: Option<Vec<String>>,
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn client(ws: Ws, state: &State, query: &str) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    // Subscribe to the channel before anything else, so no update sent after a
    // snapshot is read can be missed.
    let mut rx = state.tx.subscribe();
    let (mut sink, mut stream) = ws.split();
    // Subscribed symbol -> last seq sent (a snapshot may be newer than what is
    // still queued in `rx`).
    let mut subscribed: HashMap<usize, u64> = HashMap::new();
    let out = |n: u64| state.messages_out.fetch_add(n, Relaxed);

    let initial: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("symbols="))
        .flat_map(|list| list.split(','))
        .filter(|s| state.index.contains_key(*s))
        .map(str::to_owned)
        .collect();
    if !initial.is_empty() {
        let reply = serde_json::json!({"type": "subscribed", "id": null, "channel": "ticker", "symbols": initial});
        sink.send(Message::text(reply.to_string())).await?;
        out(1);
        for symbol in &initial {
            subscribe(&mut sink, state, &mut subscribed, symbol).await?;
        }
    }

    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Ok(update) => {
                    if let Some(last) = subscribed.get_mut(&update.symbol) {
                        if update.seq > *last {
                            *last = update.seq;
                            sink.send(Message::Text(update.text.clone())).await?;
                            out(1);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    state.lagged.fetch_add(n, Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(op) = serde_json::from_str::<Op>(text.as_str()) else {
                        let reply = r#"{"type":"error","id":null,"code":"bad_request","message":"invalid request"}"#;
                        sink.send(Message::text(reply)).await?;
                        out(1);
                        continue;
                    };
                    match op.op.as_str() {
                        "subscribe" | "unsubscribe" => {
                            let requested = op.symbols.unwrap_or_default();
                            let (known, unknown): (Vec<String>, Vec<String>) =
                                requested.into_iter().partition(|s| state.index.contains_key(s));
                            let kind = if op.op == "subscribe" { "subscribed" } else { "unsubscribed" };
                            let reply = serde_json::json!({"type": kind, "id": op.id, "channel": "ticker", "symbols": known});
                            sink.send(Message::text(reply.to_string())).await?;
                            out(1);
                            if !unknown.is_empty() {
                                let reply = serde_json::json!({"type": "error", "id": op.id, "code": "unknown_symbol", "message": "no such symbol", "symbols": unknown});
                                sink.send(Message::text(reply.to_string())).await?;
                                out(1);
                            }
                            for symbol in &known {
                                if op.op == "subscribe" {
                                    subscribe(&mut sink, state, &mut subscribed, symbol).await?;
                                } else {
                                    subscribed.remove(&state.index[symbol]);
                                }
                            }
                        }
                        "list" => {
                            let reply = serde_json::json!({"type": "symbols", "id": op.id, "symbols": state.names});
                            sink.send(Message::text(reply.to_string())).await?;
                            out(1);
                        }
                        "ping" => {
                            let reply = serde_json::json!({"type": "pong", "id": op.id, "server_ts_ns": wall_ns()});
                            sink.send(Message::text(reply.to_string())).await?;
                            out(1);
                        }
                        _ => {
                            let reply = serde_json::json!({"type": "error", "id": op.id, "code": "bad_request", "message": "unknown op"});
                            sink.send(Message::text(reply.to_string())).await?;
                            out(1);
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = sink.close().await;
                    return Ok(());
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
            },
        }
    }
}

async fn subscribe(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    state: &State,
    subscribed: &mut HashMap<usize, u64>,
    symbol: &str,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let index = state.index[symbol];
    if subscribed.contains_key(&index) {
        return Ok(());
    }
    let snapshot = state.snapshots[index].lock().unwrap().clone();
    match snapshot {
        Some((seq, text)) => {
            subscribed.insert(index, seq);
            sink.send(Message::Text(text)).await?;
            state.messages_out.fetch_add(1, Relaxed);
        }
        None => {
            subscribed.insert(index, 0);
        }
    }
    Ok(())
}
