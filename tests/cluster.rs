//! Scale-out on NATS with a real `nats-server`: an ingest publishing a replay,
//! gateways rebuilding the book from NATS, and clients on real WebSockets.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use common::nats::{new_hub, HubServer, NatsServer};
use common::*;
use serde_json::{json, Value};
use tickwire::cluster::gateway::{self, GatewayConfig, GatewayHandle};
use tickwire::cluster::ingest::{self, IngestHandle};
use tickwire::cluster::wire::depth::DepthRecord;
use tickwire::cluster::wire::{subject_for, TickerRecord};
use tickwire::fanout::{Hub, SymbolState, SymbolStatus};
use tickwire::feed::config::FeedConfig;
use tickwire::feed::replay::{ReplayConfig, ReplayHandle, Speed};
use tickwire::feed::FeedHandle;
use tickwire::server::ServerConfig;
use tokio_util::sync::CancellationToken;

const SYMBOLS: [&str; 2] = ["spot:BTCUSDT", "usdm:BTCUSDT"];

fn files() -> Vec<(Option<&'static str>, std::path::PathBuf)> {
    vec![(Some("spot"), sample(SPOT)), (Some("usdm"), sample(USDM))]
}

/// An ingest in this process: a replay into a hub that is published to NATS.
struct Ingest {
    hub: Arc<Hub>,
    replay: ReplayHandle,
    publisher: Option<IngestHandle>,
    stop: CancellationToken,
}

impl Ingest {
    async fn start(nats: &NatsServer, replay: ReplayConfig) -> Self {
        let hub = new_hub();
        let stop = CancellationToken::new();
        let feed = tickwire::feed::spawn(hub.clone(), FeedConfig::Replay(replay), stop.clone());
        let Ok(FeedHandle::Replay(replay)) = feed else {
            panic!("replay starts");
        };
        let publisher = ingest::spawn(hub.clone(), &nats.url(), stop.clone())
            .await
            .expect("ingest connects");
        Self {
            hub,
            replay,
            publisher: Some(publisher),
            stop,
        }
    }

    /// Every symbol's final seq, once the replay has ended.
    async fn final_seqs(&self) -> HashMap<String, u64> {
        self.replay.finished().await;
        SYMBOLS
            .iter()
            .map(|symbol| {
                let seq = self
                    .hub
                    .get(symbol)
                    .and_then(|e| e.current())
                    .map(|s| s.seq);
                (
                    symbol.to_string(),
                    seq.expect("the replay updated the symbol"),
                )
            })
            .collect()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A gateway in this process, serving on its own port.
struct Gateway {
    server: HubServer,
    handle: GatewayHandle,
    stop: CancellationToken,
}

impl Gateway {
    async fn start(nats: &NatsServer) -> Self {
        Self::start_with(nats, &SYMBOLS).await
    }

    /// A gateway that has heard of `symbols`.
    async fn start_with(nats: &NatsServer, symbols: &[&str]) -> Self {
        let hub = new_hub();
        let stop = CancellationToken::new();
        let config = GatewayConfig {
            url: nats.url(),
            ..GatewayConfig::default()
        };
        let handle = gateway::spawn(hub.clone(), config, stop.clone())
            .await
            .expect("gateway connects");
        let server = HubServer::start(hub).await;
        // The ingest announces its symbols when it starts; wait until they are known.
        eventually("gateway knows the symbols", || {
            symbols.iter().all(|s| server.hub.get(s).is_some())
        })
        .await;
        Self {
            server,
            handle,
            stop,
        }
    }

    fn metrics_page(&self) -> String {
        self.server
            .hub
            .metrics()
            .render(self.server.hub.symbol_count(), None)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A client subscribed to both symbols, and everything it has seen.
struct Watcher {
    client: Client,
    tape: Tape,
    /// The latest `status.state` per symbol.
    states: HashMap<String, String>,
    /// Every state each symbol went through, in order.
    history: HashMap<String, Vec<String>>,
}

impl Watcher {
    async fn subscribe(url: &str) -> Self {
        Self::subscribe_to(url, &SYMBOLS).await
    }

    async fn subscribe_to(url: &str, symbols: &[&str]) -> Self {
        let mut client = Client::connect(url).await;
        client
            .send(json!({"op": "subscribe", "id": 1, "symbols": symbols}))
            .await;
        let reply = client.recv_type("subscribed").await;
        assert_eq!(reply["symbols"], json!(symbols), "{reply}");
        Self {
            client,
            tape: Tape::default(),
            states: HashMap::new(),
            history: HashMap::new(),
        }
    }

    async fn read_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + GUARD;
        while !done(self) {
            let message = tokio::time::timeout_at(deadline, self.client.recv())
                .await
                .unwrap_or_else(|_| panic!("never happened: {what}"));
            match message["type"].as_str() {
                Some("ticker") => self.tape.record(&message),
                Some("status") => {
                    let symbol = message["symbol"].as_str().expect("symbol").to_owned();
                    let state = message["state"].as_str().expect("state").to_owned();
                    self.history
                        .entry(symbol.clone())
                        .or_default()
                        .push(state.clone());
                    self.states.insert(symbol, state);
                }
                _ => {}
            }
        }
    }

    async fn read_to(&mut self, seqs: &HashMap<String, u64>) {
        self.read_until("the final seq of every symbol", |w| {
            seqs.iter().all(|(symbol, seq)| w.tape.seq(symbol) >= *seq)
        })
        .await;
    }

    async fn read_to_state(&mut self, state: &str) {
        self.read_until(&format!("every symbol {state}"), |w| {
            SYMBOLS
                .iter()
                .all(|s| w.states.get(*s).map(String::as_str) == Some(state))
        })
        .await;
    }

    fn book(&self, symbol: &str) -> Vec<&Value> {
        let last = &self.tape.last[symbol];
        BOOK_FIELDS.iter().map(|field| &last[field]).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_two_gateways_see_the_book_of_a_standalone_replay() {
    let nats = NatsServer::start();
    let ingest = Ingest::start(&nats, replay_of(&files(), Speed::Max, false, true)).await;
    let gateways = [Gateway::start(&nats).await, Gateway::start(&nats).await];
    let standalone = TestServer::start(
        ServerConfig::default(),
        vec![replay_of(&files(), Speed::Max, false, true)],
    )
    .await;
    let mut reference = Watcher::subscribe(&standalone.url("")).await;
    let mut watchers = Vec::new();
    for gateway in &gateways {
        watchers.push(Watcher::subscribe(&gateway.server.url()).await);
    }
    let mut books = book_client(&gateways[0].server.url()).await;

    // A foreign publisher's garbage and a record on another symbol's subject
    // are dropped and counted; nobody else notices.
    let intruder = async_nats::connect(nats.url()).await.expect("connect");
    let spot_subject = subject_for(SYMBOLS[0]).expect("subject");
    // Were it accepted, its epoch would shadow the ingest's for good.
    let live = SymbolStatus {
        generation: 0,
        state: SymbolState::Live,
        reason: Arc::from(""),
    };
    let misplaced = TickerRecord::declared(Arc::from(SYMBOLS[1]), u64::MAX, &live);
    for payload in [b"garbage".to_vec(), misplaced.encode()] {
        intruder
            .publish(spot_subject.clone(), payload.into())
            .await
            .expect("publish");
    }
    intruder.flush().await.expect("flush");
    for gateway in &gateways {
        eventually("the gateway counted both bad records", || {
            gateway.server.hub.metrics().cluster.malformed.load(Relaxed) == 2
        })
        .await;
    }

    ingest.replay.start();
    standalone.replays[0].start();
    let seqs = ingest.final_seqs().await;
    standalone.replays[0].finished().await;
    for symbol in SYMBOLS {
        let standalone_seq = standalone.hub.get(symbol).and_then(|e| e.current());
        assert_eq!(
            standalone_seq.map(|s| s.seq),
            Some(seqs[symbol]),
            "{symbol}: same replay, same versions"
        );
    }

    reference.read_to(&seqs).await;
    for (gateway, watcher) in gateways.iter().zip(&mut watchers) {
        watcher.read_to(&seqs).await;
        for symbol in SYMBOLS {
            assert_eq!(
                watcher.book(symbol),
                reference.book(symbol),
                "{symbol}: gateway and standalone agree"
            );
            let ingested = ingest.hub.get(symbol).and_then(|e| e.current());
            assert_eq!(
                watcher.tape.last[symbol]["ingest_ts_ns"].as_i64(),
                ingested.map(|s| s.ingest_ts_ns),
                "{symbol}: the ingest node's timestamp is kept"
            );
        }
        let page = gateway.metrics_page();
        assert_eq!(
            metric(&page, "tickwire_cluster_malformed_total{role=\"gateway\"}"),
            2.0
        );
        assert!(metric(&page, "tickwire_cluster_received_total{role=\"gateway\"}") > 0.0);
        let hop = "tickwire_cluster_hop_latency_seconds{role=\"gateway\",quantile=\"0.5\"}";
        assert!(metric(&page, hop) > 0.0, "the NATS hop is measured");
        assert_eq!(
            metric(
                &page,
                "tickwire_cluster_slow_consumer_total{role=\"gateway\"}"
            ),
            0.0,
            "a replay at full speed never makes the gateway a slow consumer"
        );
    }
    assert!(ingest.hub.metrics().cluster.published.load(Relaxed) > 0);

    // The book channel follows the ingest's depth, in order, to its last version.
    BookView::default().read_to_final(&mut books, &ingest).await;
}

/// What a `book` client of a gateway has seen: the last book per symbol
/// (each checked to move `seq` forward with `skipped` consistent) and every
/// book status, in order.
#[derive(Default)]
struct BookView {
    books: HashMap<String, Value>,
    statuses: Vec<(String, String, String)>,
}

impl BookView {
    async fn read_until(&mut self, client: &mut Client, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + GUARD;
        while !done(self) {
            let message = tokio::time::timeout_at(deadline, client.recv())
                .await
                .unwrap_or_else(|_| panic!("never happened: {what}"));
            let symbol = message["symbol"].as_str().unwrap_or_default().to_owned();
            match message["type"].as_str() {
                Some("book") => {
                    if let Some(last) = self.books.get(&symbol).and_then(|b| b["seq"].as_u64()) {
                        let seq = message["seq"].as_u64().expect("seq");
                        assert!(seq > last, "{message}");
                        assert_eq!(message["skipped"].as_u64(), Some(seq - last - 1));
                    }
                    self.books.insert(symbol, message);
                }
                Some("status") => {
                    let text = |key: &str| message[key].as_str().unwrap_or_default().to_owned();
                    self.statuses.push((symbol, text("state"), text("reason")));
                }
                _ => {}
            }
        }
    }

    /// Reads until every symbol shows `ingest`'s last depth version, and
    /// checks its best 10 levels.
    async fn read_to_final(&mut self, client: &mut Client, ingest: &Ingest) {
        let final_book = |symbol: &str| book_top(&ingest.hub, symbol, 10);
        self.read_until(client, "every book's last version", |view| {
            SYMBOLS.iter().all(|&symbol| {
                view.books.get(symbol).and_then(|b| b["seq"].as_u64()) == Some(final_book(symbol).0)
            })
        })
        .await;
        for symbol in SYMBOLS {
            let (_, bids, asks) = final_book(symbol);
            let book = &self.books[symbol];
            assert_eq!((&book["bids"], &book["asks"]), (&bids, &asks), "{symbol}");
        }
    }
}

/// A client subscribed to the best 10 levels of both symbols' books.
async fn book_client(url: &str) -> Client {
    let mut client = Client::connect(url).await;
    client
        .send(
            json!({"op": "subscribe", "id": 1, "channel": "book", "symbols": SYMBOLS, "depth": 10}),
        )
        .await;
    client.recv_type("subscribed").await;
    client
}

/// Waits until `values`' stream holds `seq` as `symbol`'s last record.
async fn wait_for_last_value(
    jetstream: &async_nats::jetstream::Context,
    values: tickwire::cluster::LastValues,
    symbol: &str,
    seq: u64,
    seq_of: impl Fn(&[u8]) -> Option<u64>,
) {
    let stream = jetstream
        .get_stream(values.stream)
        .await
        .expect("the ingest created the stream");
    let subject = values.subject_for(symbol).expect("subject");
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let last = stream.direct_get_last_for_subject(subject.as_str()).await;
        if last.ok().and_then(|m| seq_of(&m.payload)) == Some(seq) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{symbol}: {} never held seq {seq}",
            values.stream
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_after_the_replay_ended_serves_the_full_book() {
    let nats = NatsServer::start();
    let ingest = Ingest::start(&nats, replay_of(&files(), Speed::Max, false, false)).await;
    let seqs = ingest.final_seqs().await;

    // The ingest's own final books, which the gateway must serve as they are.
    let books: HashMap<&str, (u64, Value, Value)> = SYMBOLS
        .iter()
        .map(|&symbol| (symbol, book_top(&ingest.hub, symbol, 10)))
        .collect();

    // Wait until the last-value streams hold each symbol's final versions.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(client);
    for symbol in SYMBOLS {
        wait_for_last_value(
            &jetstream,
            tickwire::cluster::TICKERS,
            symbol,
            seqs[symbol],
            |m| TickerRecord::decode(m).ok().map(|r| r.seq),
        )
        .await;
        wait_for_last_value(
            &jetstream,
            tickwire::cluster::DEPTH,
            symbol,
            books[symbol].0,
            |m| DepthRecord::decode(m).ok().map(|r| r.seq),
        )
        .await;
    }

    let gateway = Binary::serve(&["--source", &nats.url()]);
    let mut client = Client::connect(&format!("ws://{}/ws", gateway.addr)).await;
    client
        .send(json!({"op": "subscribe", "id": 1, "symbols": SYMBOLS}))
        .await;
    client.recv_type("subscribed").await;
    let mut snapshots = HashMap::new();
    while snapshots.len() < SYMBOLS.len() {
        let ticker = client.recv_type("ticker").await;
        assert_eq!(ticker["snapshot"], true, "{ticker}");
        snapshots.insert(
            ticker["symbol"].as_str().expect("symbol").to_owned(),
            ticker,
        );
    }
    for (symbol, (_, path)) in SYMBOLS.iter().zip(files()) {
        let ticker = &snapshots[*symbol];
        assert_shows(ticker, &binance_final_book(&path), symbol);
        assert_eq!(ticker["seq"], seqs[*symbol], "{symbol}");
    }
    // Depth comes over NATS too: the book channel serves the ingest's books.
    client
        .send(
            json!({"op": "subscribe", "id": 2, "channel": "book", "symbols": SYMBOLS, "depth": 10}),
        )
        .await;
    client.recv_type("subscribed").await;
    for _ in SYMBOLS {
        let book = client.recv_type("book").await;
        let symbol = book["symbol"].as_str().expect("symbol");
        let (seq, bids, asks) = &books[symbol];
        assert_eq!(book["snapshot"], true, "{book}");
        assert_eq!(
            (&book["seq"], &book["bids"], &book["asks"]),
            (&json!(seq), bids, asks),
            "{symbol}"
        );
    }
    let page = http_get(gateway.addr, "/metrics").await.1;
    assert_eq!(
        metric(&page, "tickwire_cluster_loaded_total{role=\"gateway\"}"),
        2.0 * SYMBOLS.len() as f64,
        "a ticker and a depth record per symbol"
    );
    let (clean, _) = gateway.terminate();
    assert!(clean, "the gateway exits cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_ride_out_a_nats_restart_mid_replay() {
    let mut nats = NatsServer::start();
    // About four seconds of replay, so the outage falls in the middle.
    let ingest = Ingest::start(&nats, replay_of(&files(), Speed::Factor(15.0), false, true)).await;
    let origin = HubServer::start(ingest.hub.clone()).await;
    let gateways = [Gateway::start(&nats).await, Gateway::start(&nats).await];
    let mut reference = Watcher::subscribe(&origin.url()).await;
    let mut watchers = Vec::new();
    for gateway in &gateways {
        watchers.push(Watcher::subscribe(&gateway.server.url()).await);
    }
    let mut books = book_client(&gateways[0].server.url()).await;
    let mut book_view = BookView::default();

    ingest.replay.start();
    for watcher in &mut watchers {
        watcher
            .read_until("tickers through NATS", |w| w.tape.tickers >= 10)
            .await;
    }
    book_view
        .read_until(&mut books, "a book of each symbol", |view| {
            view.books.len() == SYMBOLS.len()
        })
        .await;
    nats.kill();
    assert!(
        !ingest.replay.stats().ended.load(Relaxed),
        "the outage starts mid-replay"
    );
    for watcher in &mut watchers {
        watcher.read_to_state("stale").await;
    }
    let mut during_outage = 0;
    for gateway in &gateways {
        // Still serving HTTP and its last values while NATS is away.
        let (status, body) = http_get(gateway.server.addr, "/api/symbols").await;
        assert_eq!(status, 200, "{body}");
        during_outage += gateway.server.hub.symbol_count();
    }
    assert_eq!(during_outage, 2 * SYMBOLS.len());
    nats.restart();
    for watcher in &mut watchers {
        watcher.read_to_state("live").await;
    }

    let seqs = ingest.final_seqs().await;
    reference.read_to(&seqs).await;
    for (gateway, watcher) in gateways.iter().zip(&mut watchers) {
        watcher.read_to(&seqs).await;
        for symbol in SYMBOLS {
            assert_eq!(watcher.book(symbol), reference.book(symbol), "{symbol}");
            let history = &watcher.history[symbol];
            assert!(
                history.windows(2).any(|w| w == ["stale", "live"]),
                "{symbol}: {history:?}"
            );
        }
        assert!(gateway.handle.is_running(), "the gateway keeps running");
        assert!(gateway.server.is_running());
        let page = gateway.metrics_page();
        assert!(metric(&page, "tickwire_cluster_reconnects_total{role=\"gateway\"}") >= 1.0);
        assert_eq!(
            metric(&page, "tickwire_cluster_connected{role=\"gateway\"}"),
            1.0
        );
    }
    assert!(ingest.hub.metrics().cluster.reconnects.load(Relaxed) >= 1);

    // Books went stale with the link and came back with it, to the last version.
    book_view.read_to_final(&mut books, &ingest).await;
    for symbol in SYMBOLS {
        let states: Vec<(&str, &str)> = book_view
            .statuses
            .iter()
            .filter(|(s, _, _)| s == symbol)
            .map(|(_, state, reason)| (state.as_str(), reason.as_str()))
            .collect();
        let lost = states
            .iter()
            .position(|&s| s == ("stale", gateway::DISCONNECTED_REASON));
        let lost = lost.unwrap_or_else(|| panic!("{symbol}: {states:?}"));
        assert!(
            states[lost..].iter().any(|(state, _)| *state == "live"),
            "{symbol}: {states:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_ingest_is_served_at_once_and_seq_keeps_increasing() {
    let nats = NatsServer::start();
    let spot = vec![(Some("spot"), sample(SPOT))];
    let first = Ingest::start(&nats, replay_of(&spot, Speed::Max, false, false)).await;
    first.replay.finished().await;
    let first_seq = first.hub.get(SYMBOLS[0]).and_then(|e| e.current());
    let first_seq = first_seq.map(|s| s.seq).expect("replayed");
    let gateway = Gateway::start_with(&nats, &SYMBOLS[..1]).await;
    let mut watcher = Watcher::subscribe_to(&gateway.server.url(), &SYMBOLS[..1]).await;
    watcher
        .read_to(&HashMap::from([(SYMBOLS[0].to_owned(), first_seq)]))
        .await;
    let mut books = Client::connect(&gateway.server.url()).await;
    books
        .send(json!({"op": "subscribe", "id": 1, "channel": "book", "symbols": [SYMBOLS[0]]}))
        .await;
    let old_book = books.recv_type("book").await;
    drop(first);

    // The same capture again from a new process: its seq starts over at 1.
    // Before its first depth snapshot, the old process's book is no longer live.
    let second = Ingest::start(&nats, replay_of(&spot, Speed::Max, false, true)).await;
    let status = books.recv_type("status").await;
    assert_eq!(
        (&status["state"], &status["reason"]),
        (&json!("stale"), &json!("awaiting a depth snapshot")),
        "{status}"
    );
    second.replay.start();
    let new_book = books.recv_type("book").await;
    assert!(
        new_book["seq"].as_u64() > old_book["seq"].as_u64(),
        "{new_book}"
    );
    second.replay.finished().await;
    let second_seq = second.hub.get(SYMBOLS[0]).and_then(|e| e.current());
    let second_seq = second_seq.map(|s| s.seq).expect("replayed");
    // The Tape checks that seq only increases and `skipped` matches every gap.
    watcher
        .read_to(&HashMap::from([(
            SYMBOLS[0].to_owned(),
            first_seq + second_seq,
        )]))
        .await;
    let last = &watcher.tape.last[SYMBOLS[0]];
    assert_eq!(last["seq"], first_seq + second_seq);
    assert_shows(last, &binance_final_book(&sample(SPOT)), SYMBOLS[0]);
    let ingested = second.hub.get(SYMBOLS[0]).and_then(|e| e.current());
    assert_eq!(
        last["ingest_ts_ns"].as_i64(),
        ingested.map(|s| s.ingest_ts_ns),
        "the new ingest's version"
    );
}

/// Waits until the gateway's `/metrics` page satisfies `done`.
async fn metrics_until(gateway: &Binary, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let page = http_get(gateway.addr, "/metrics").await.1;
        if done(&page) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_is_logged_once_as_lost_and_once_as_restored() {
    const CONNECTED: &str = "tickwire_cluster_connected{role=\"gateway\"}";
    const RECONNECTS: &str = "tickwire_cluster_reconnects_total{role=\"gateway\"}";
    let mut nats = NatsServer::start();
    let gateway = Binary::serve(&["--source", &nats.url()]);
    nats.kill();
    metrics_until(&gateway, "the link is down", |page| {
        metric(page, CONNECTED) == 0.0
    })
    .await;
    // Long enough for several failed reconnects (the client retries within
    // a second), each of which the NATS client reports as an error event.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    nats.restart();
    metrics_until(&gateway, "the link is back", |page| {
        metric(page, CONNECTED) == 1.0 && metric(page, RECONNECTS) == 1.0
    })
    .await;
    let (clean, log) = gateway.terminate();
    assert!(clean, "{log}");
    assert_eq!(log.matches("NATS connection lost").count(), 1, "{log}");
    assert_eq!(log.matches("NATS connection restored").count(), 1, "{log}");
    // The NATS client's own copies of those events, and the failed
    // reconnects, stay below the default level.
    assert!(!log.contains("async_nats"), "{log}");
    assert!(!log.contains("error"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_stops_even_when_nats_is_gone() {
    let mut nats = NatsServer::start();
    let mut ingest = Ingest::start(&nats, replay_of(&files(), Speed::Max, true, false)).await;
    eventually("records published", || {
        ingest.hub.metrics().cluster.published.load(Relaxed) > 100
    })
    .await;
    nats.kill();
    ingest.stop.cancel();
    let publisher = ingest.publisher.take().expect("running");
    tokio::time::timeout(GUARD, publisher.stopped())
        .await
        .expect("the publisher gives up on NATS and stops");
}

#[test]
fn a_gateway_without_a_usable_source_fails_with_a_clear_error() {
    let cases = [
        ("http://127.0.0.1:4222", "expected nats://HOST:PORT"),
        // Port 1 on loopback: nothing listens there.
        (
            "nats://127.0.0.1:1",
            "cannot connect to NATS at nats://127.0.0.1:1",
        ),
    ];
    for (source, expected) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
            .args(["serve", "--listen", "127.0.0.1:0", "--source", source])
            .output()
            .expect("run tickwire");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{source}: {stderr}");
        assert!(stderr.contains(expected), "{source}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_with_other_settings_is_refused_or_warned_of() {
    use async_nats::jetstream::stream;
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(client);
    let made_by_hand = |subjects: &str, max_messages_per_subject| stream::Config {
        name: tickwire::cluster::STREAM_NAME.to_owned(),
        subjects: vec![subjects.to_owned()],
        max_messages_per_subject,
        ..Default::default()
    };
    jetstream
        .create_stream(made_by_hand("other.>", 1))
        .await
        .expect("create the stream");
    // It would store none of the records: both roles refuse to start.
    let error = ingest::spawn(new_hub(), &nats.url(), CancellationToken::new())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let expected = "the JetStream stream TICKWIRE_TICKERS exists with subjects [\"other.>\"], \
                    none of which covers tickwire.v1.ticker.>";
    assert!(error.contains(expected), "{error}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(["serve", "--listen", "127.0.0.1:0", "--source", &nats.url()])
        .output()
        .expect("run tickwire");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");

    // Over the right subjects but keeping every message: served, and warned of.
    jetstream
        .delete_stream(tickwire::cluster::STREAM_NAME)
        .await
        .expect("delete the stream");
    jetstream
        .create_stream(made_by_hand(tickwire::cluster::TICKERS.subjects, -1))
        .await
        .expect("create the stream");
    let gateway = Binary::serve(&["--source", &nats.url()]);
    let log = gateway.startup_log.clone();
    // Serving: a SIGTERM sent the moment the address is logged can come
    // before the process listens for it.
    assert_eq!(http_get(gateway.addr, "/healthz").await.0, 200);
    let (clean, rest) = gateway.terminate();
    assert!(clean, "{log}{rest}");
    assert!(
        log.contains("TICKWIRE_TICKERS: keeps every message per subject (max_msgs_per_subject -1"),
        "{log}"
    );
    assert!(!log.contains("TICKWIRE_DEPTH:"), "made by tickwire: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_warns_when_its_books_do_not_fit_the_servers_max_payload() {
    // Enough for tickers and JetStream's requests, not for a 100-level book.
    let nats = NatsServer::start_with_config("max_payload: 1024\n");
    let spot = sample(SPOT).display().to_string();
    let ingest = Binary::ingest(
        &nats.url(),
        &[
            "--replay",
            &spot,
            "--speed",
            "max",
            "--max-book-depth",
            "100",
        ],
    );
    assert!(
        ingest
            .startup_log
            .contains("the NATS server's max_payload is 1024 bytes"),
        "{}",
        ingest.startup_log
    );
    const REFUSED: &str = "tickwire_cluster_publish_errors_total{role=\"ingest\"}";
    metrics_until(&ingest, "books refused", |page| metric(page, REFUSED) > 5.0).await;
    let refused = metric(&http_get(ingest.addr, "/metrics").await.1, REFUSED);
    let startup = ingest.startup_log.clone();
    let (clean, log) = ingest.terminate();
    let log = format!("{startup}{log}");
    assert!(clean, "{log}");
    let warning = "exceeds the NATS server's max_payload of 1024 bytes and was not published";
    let warnings = log.matches(warning).count();
    // Rate-limited: not one warning per refused version.
    assert!(
        warnings >= 1 && (warnings as f64) < refused,
        "{refused}: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_fresh_versions_as_live_when_nats_comes_back_without_jetstream() {
    let mut nats = NatsServer::start();
    // About four seconds of replay, so versions flow after the restart.
    let ingest = Ingest::start(&nats, replay_of(&files(), Speed::Factor(15.0), false, true)).await;
    let gateway = Gateway::start(&nats).await;
    let mut watcher = Watcher::subscribe(&gateway.server.url()).await;
    ingest.replay.start();
    watcher
        .read_until("tickers through NATS", |w| w.tape.tickers >= 10)
        .await;
    nats.kill();
    watcher.read_to_state("stale").await;
    nats.restart_without_jetstream();
    // Connected, and the ingest's records arrive: they are served as its
    // status says, though the last values cannot be read.
    watcher.read_to_state("live").await;
    let page = gateway.metrics_page();
    assert_eq!(
        metric(&page, "tickwire_cluster_connected{role=\"gateway\"}"),
        1.0
    );
    assert!(
        metric(
            &page,
            "tickwire_cluster_reload_failures_total{role=\"gateway\"}"
        ) >= 1.0,
        "{page}"
    );
    assert!(gateway.handle.is_running());
}
