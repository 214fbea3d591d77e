//! The delivery guarantees of protocol v1, on real captures replayed at full
//! speed: latest value wins, every client converges to the book whatever its
//! speed, and a client that stops reading neither delays others nor costs
//! unbounded memory.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use rust_decimal::Decimal;
use serde_json::Value;
use tickwire::fanout::SymbolEntry;
use tickwire::feed::replay::Speed;
use tickwire::normalize::{BookUpdate, Tick};
use tickwire::server::ServerConfig;
use tickwire::session::SessionConfig;

const SYMBOLS: [&str; 2] = ["spot:BTCUSDT", "usdm:BTCUSDT"];

/// Reads (pausing after each ticker) until the client holds the final `seq` of
/// every symbol, which `finished` announces once the replay has ended.
async fn read_until_converged(
    mut client: Client,
    mut finished: tokio::sync::watch::Receiver<Vec<(String, u64)>>,
    pause: Duration,
) -> Tape {
    let mut tape = Tape::default();
    loop {
        {
            let finals = finished.borrow_and_update();
            if !finals.is_empty() && finals.iter().all(|(symbol, seq)| tape.seq(symbol) >= *seq) {
                return tape;
            }
        }
        tokio::select! {
            message = client.recv() => {
                if message["type"] == "ticker" {
                    tape.record(&message);
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
            // The final seqs were announced: check again.
            _ = finished.changed() => {}
        }
    }
}

/// `count` clients, each subscribed to both symbols.
async fn subscribed_clients(server: &TestServer, count: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut client = Client::connect(&server.url("")).await;
        client
            .send(serde_json::json!({"op": "subscribe", "id": 1, "symbols": SYMBOLS}))
            .await;
        assert_eq!(
            client.recv_type("subscribed").await["symbols"],
            serde_json::json!(SYMBOLS)
        );
        clients.push(client);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_converges_to_the_file_and_the_snapshot_whatever_its_speed() {
    let files = [(Some("spot"), sample(SPOT)), (Some("usdm"), sample(USDM))];
    let replay = replay_of(&files, Speed::Max, false, true);
    let server = TestServer::start(ServerConfig::default(), vec![replay]).await;

    // Everyone subscribes before the first update, so the slow reader is
    // behind from the start.
    let clients = subscribed_clients(&server, 8).await;
    server.replays[0].start();

    let mut readers = Vec::new();
    let (finished_tx, finished_rx) = tokio::sync::watch::channel(Vec::<(String, u64)>::new());
    for (i, client) in clients.into_iter().enumerate() {
        // Client 0 reads slowly: one message per 2 ms while the replay runs at full speed.
        let pause = if i == 0 {
            Duration::from_millis(2)
        } else {
            Duration::ZERO
        };
        readers.push(tokio::spawn(read_until_converged(
            client,
            finished_rx.clone(),
            pause,
        )));
    }
    // Readers read concurrently with the replay; they learn the final seqs to
    // wait for once it has ended.
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    let stats = server.replays[0].stats();
    assert_eq!(stats.malformed.load(Relaxed), 0);
    let final_seqs: Vec<(String, u64)> = SYMBOLS
        .iter()
        .map(|s| {
            let seq = server
                .hub
                .get(s)
                .and_then(|e| e.current())
                .map_or(0, |c| c.seq);
            (s.to_string(), seq)
        })
        .collect();
    assert_eq!(
        final_seqs.iter().map(|(_, seq)| seq).sum::<u64>(),
        stats.ticks.load(Relaxed),
        "every tick made one version"
    );
    finished_tx
        .send(final_seqs.clone())
        .expect("readers listen");

    let page = server.get("/metrics").await.1;
    assert_eq!(metric(&page, r#"tickwire_feed_ended{feed="test"}"#), 1.0);

    let mut snapshots = Vec::new();
    for symbol in SYMBOLS {
        let (status, body) = server.get(&format!("/api/snapshot/{symbol}")).await;
        assert_eq!(status, 200);
        snapshots.push(serde_json::from_str::<Value>(&body).expect("snapshot JSON"));
    }
    let file_books = [
        binance_final_book(&sample(SPOT)),
        binance_final_book(&sample(USDM)),
    ];
    for ((symbol, snapshot), book) in SYMBOLS.iter().zip(&snapshots).zip(&file_books) {
        assert_shows(snapshot, book, &format!("/api/snapshot/{symbol}"));
    }

    let mut slow_skipped = 0;
    for (i, reader) in readers.into_iter().enumerate() {
        let tape = tokio::time::timeout(GUARD, reader)
            .await
            .expect("client converges")
            .expect("reader task");
        for (symbol, snapshot) in SYMBOLS.iter().zip(&snapshots) {
            let last = &tape.last[*symbol];
            for field in BOOK_FIELDS.iter().chain(&["ingest_ts_ns"]) {
                assert_eq!(last[field], snapshot[field], "client {i} {symbol} {field}");
            }
        }
        if i == 0 {
            slow_skipped = tape.skipped;
        }
    }
    assert!(
        slow_skipped > 0,
        "the slow reader should have been conflated"
    );
    let page = server.get("/metrics").await.1;
    assert!(metric(&page, "tickwire_updates_conflated_total") >= slow_skipped as f64);
}

/// On a current-thread runtime, the server's with one worker, a replay hands
/// the wake-ups of what it publishes to a task on the runtime
/// (`fanout::WakeRelay`). Paced in real time, the replay is far from over
/// when every client has had live updates, and with no pings to wake a
/// session, each of them came through that task.
#[tokio::test]
async fn on_one_thread_a_paced_replay_reaches_every_client_while_it_plays() {
    let files = [(Some("spot"), sample(SPOT)), (Some("usdm"), sample(USDM))];
    let replay = replay_of(&files, Speed::Factor(1.0), false, true);
    let mut config = ServerConfig::default();
    config.session.ping_interval = Duration::from_secs(24 * 3600);
    let server = TestServer::start(config, vec![replay]).await;
    let mut clients = subscribed_clients(&server, 8).await;
    server.replays[0].start();
    for (i, client) in clients.iter_mut().enumerate() {
        let mut live_updates = 0;
        while live_updates < 20 {
            let message = tokio::time::timeout(GUARD, client.recv_type("ticker"))
                .await
                .unwrap_or_else(|_| panic!("client {i} is sent live updates"));
            live_updates += usize::from(message["snapshot"] == false);
        }
    }
    assert!(
        !server.replays[0].stats().ended.load(Relaxed),
        "the replay still plays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tardis_quotes_and_trades_merge_into_one_book() {
    let files = [(None, sample(TARDIS_QUOTES)), (None, sample(TARDIS_TRADES))];
    let replay = replay_of(&files, Speed::Max, false, false);
    let server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    let (status, body) = server.get("/api/snapshot/BTCUSDT").await;
    assert_eq!(status, 200, "{body}");
    let snapshot: Value = serde_json::from_str(&body).expect("JSON");

    // Independent reading: last quote row, last trade row, and the exchange
    // time of whichever came last by local (receive) time.
    let rows = |name: &str| -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(sample(name)).expect("csv");
        text.lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect()
    };
    let quotes = rows(TARDIS_QUOTES);
    let trades = rows(TARDIS_TRADES);
    let quote = quotes.last().expect("quotes");
    let trade = trades.last().expect("trades");
    // quotes: exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount
    // trades: exchange,symbol,timestamp,local_timestamp,id,side,price,amount
    let local = |row: &Vec<String>| row[3].parse::<i64>().expect("local_timestamp");
    let last_row = if local(trade) >= local(quote) {
        trade
    } else {
        quote
    };
    let book = FinalBook {
        quote: Some([
            quote[6].clone(),
            quote[7].clone(),
            quote[5].clone(),
            quote[4].clone(),
        ]),
        trade: Some([trade[6].clone(), trade[7].clone()]),
        last_exchange_ts_ns: Some(last_row[2].parse::<i64>().expect("timestamp") * 1_000),
    };
    assert_shows(&snapshot, &book, "tardis snapshot");
    assert_eq!(
        snapshot["seq"].as_u64(),
        Some((quotes.len() + trades.len()) as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_delay_others_and_its_memory_stays_bounded() {
    let high_water = 16 * 1024;
    let config = ServerConfig {
        session: SessionConfig {
            write_high_water: high_water,
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let files = [(Some("spot"), sample(SPOT)), (Some("usdm"), sample(USDM))];
    let server = TestServer::start(config, vec![replay_of(&files, Speed::Max, true, false)]).await;

    // Ten clients that subscribe and then never read a byte.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(stalled_client(server.addr, &["spot:BTCUSDT", "usdm:BTCUSDT"]).await);
    }
    let mut healthy = Client::connect(&server.url("?symbols=spot:BTCUSDT,usdm:BTCUSDT")).await;

    let metrics = server.metrics();
    let mut tape = Tape::default();
    let mut peak_buffered = 0;
    let start_updates = metrics.book_updates.load(Relaxed);
    // Keep going until the feed has pushed far more than any buffer could
    // hold: 20k versions × ~330 bytes ≈ 6.6 MB per stalled client if queued,
    // 400 times the high-water mark.
    while metrics.book_updates.load(Relaxed) < start_updates + 20_000 {
        let message = healthy.recv().await;
        if message["type"] == "ticker" {
            tape.record(&message);
        }
        peak_buffered = peak_buffered.max(metrics.write_buffered_bytes.load(Relaxed));
    }
    // Not delayed: the healthy client catches up with versions published
    // after the stalled clients' buffers were full, however fast the replay
    // ran meanwhile.
    for symbol in ["spot:BTCUSDT", "usdm:BTCUSDT"] {
        let newest = server
            .hub
            .get(symbol)
            .and_then(|entry| entry.current())
            .map_or(0, |snapshot| snapshot.seq);
        let held = |tape: &Tape| tape.last.get(symbol).and_then(|t| t["seq"].as_u64());
        while held(&tape).unwrap_or(0) < newest {
            let message = healthy.recv().await;
            if message["type"] == "ticker" {
                tape.record(&message);
            }
        }
    }
    assert_eq!(
        metrics.connections.load(Relaxed),
        11,
        "stalled clients are still connected"
    );
    // Each stalled session holds at most the high-water mark plus one batch
    // (two symbols) and a ping; the kernel's buffers hold the rest.
    let bound = 11 * (high_water as i64 + 4 * 1024);
    assert!(
        peak_buffered <= bound,
        "peak buffered {peak_buffered} > {bound}"
    );
    for symbol in ["spot:BTCUSDT", "usdm:BTCUSDT"] {
        assert_eq!(
            server.hub.get(symbol).map(|e| e.subscriber_count()),
            Some(11)
        );
    }
    drop(stalled);
}

/// A replay in tickwire's own format of `rounds` quotes for each of `symbols`
/// symbols (`S000`...), a round every `round_ns`; the last round's bid is
/// `{rounds-1}.10`.
fn many_symbols_replay(
    name: &str,
    symbols: usize,
    rounds: usize,
    round_ns: usize,
) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tickwire-{name}-{}.ndjson", std::process::id()));
    let mut lines = String::new();
    for round in 0..rounds {
        for symbol in 0..symbols {
            let ts = 1_000_000 + round * round_ns + symbol;
            lines.push_str(&format!(
                r#"{{"recv_ts_ns":{ts},"symbol":"S{symbol:03}","type":"quote","bid":"{round}.10","bid_size":"1","ask":"{round}.20","ask_size":"2"}}"#
            ));
            lines.push('\n');
        }
    }
    std::fs::write(&path, lines).expect("write replay");
    path
}

/// Subscribes to `symbols`, starts the replay and reads (pausing for
/// `pause` after every `burst` tickers) until every symbol shows its last round.
async fn converge_on_many_symbols(
    server: &TestServer,
    symbols: &[String],
    rounds: u64,
    burst: usize,
    pause: Duration,
) {
    let mut client = Client::connect(&server.url("")).await;
    client
        .send(serde_json::json!({"op": "subscribe", "id": 1, "symbols": symbols}))
        .await;
    client.recv_type("subscribed").await;
    server.replays[0].start();
    let mut tape = Tape::default();
    let mut read = 0;
    while symbols.iter().any(|s| tape.seq(s) < rounds) {
        tape.record(&client.recv_type("ticker").await);
        read += 1;
        if read % burst == 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let last_bid = format!("{}.10", rounds - 1);
    for symbol in symbols {
        assert_eq!(tape.last[symbol]["bid"], last_bid.as_str(), "{symbol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_many_symbols_converges_when_one_drain_exceeds_the_buffer() {
    // One round of updates (~300 × 330 bytes) is several times the
    // per-connection high-water mark.
    let path = many_symbols_replay("many", 300, 30, 1_000);
    let replay = replay_of(&[(None, path.clone())], Speed::Max, false, true);
    let server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    let symbols: Vec<String> = (0..300).map(|i| format!("S{i:03}")).collect();
    converge_on_many_symbols(&server, &symbols, 30, usize::MAX, Duration::ZERO).await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_fast_stream_converges_while_its_updates_are_gathered() {
    // A small buffer and socket and a reader that keeps pausing: drains stop
    // at the high-water mark with notices left over, the socket pushes back,
    // and the stream is fast enough to be gathered, all at once.
    // 100,000 updates a second for a second.
    let path = many_symbols_replay("gathered", 100, 1_000, 1_000_000);
    let replay = replay_of(&[(None, path.clone())], Speed::Factor(1.0), false, true);
    let config = ServerConfig {
        session: SessionConfig {
            write_high_water: 512,
            send_buffer_bytes: Some(4096),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start(config, vec![replay]).await;
    let symbols: Vec<String> = (0..100).map(|i| format!("S{i:03}")).collect();
    converge_on_many_symbols(&server, &symbols, 1_000, 20, Duration::from_millis(1)).await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_updates_is_gathered_into_one_write_per_coalescing_window() {
    // The replay never starts: this test publishes by hand.
    let files = [(Some("usdm"), sample(USDM))];
    let config = ServerConfig {
        session: SessionConfig {
            // Long enough that nothing below can outlast it.
            coalesce: Duration::from_secs(2),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start(config, vec![replay_of(&files, Speed::Max, false, true)]).await;
    let entry = server.hub.get("usdm:BTCUSDT").expect("symbol");
    let publish = |price: i64| publish_trade(&server, &entry, price);
    let mut client = Client::connect(&server.url("?symbols=usdm:BTCUSDT")).await;
    client.recv_type("subscribed").await;

    // The first update, and one that follows it closely by chance, leave at once.
    publish(1);
    assert_eq!(client.recv_type("ticker").await["last"], "1");
    publish(2);
    assert_eq!(client.recv_type("ticker").await["last"], "2");
    // A third in a row waits for the window; what comes meanwhile replaces it.
    publish(3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(4);
    let gathered = client.recv_type("ticker").await;
    assert_eq!(gathered["last"], "4");
    assert_eq!(
        gathered["skipped"], 1,
        "update 3 was conflated while waiting"
    );
    assert_eq!(server.metrics().updates_held.load(Relaxed), 1);
}

/// Bytes a client that stopped reading finds between itself and the book's
/// newest version once it reads again: the server's buffer, the kernel's
/// and the client's own (16 KiB asked for, which the kernel doubles; a
/// buffer much smaller than a loopback segment stalls on window probes).
async fn backlog_of_a_reader_that_stopped(session: SessionConfig) -> usize {
    // The replay never starts: this test publishes by hand.
    let files = [(Some("usdm"), sample(USDM))];
    let config = ServerConfig {
        session,
        ..ServerConfig::default()
    };
    let server = TestServer::start(config, vec![replay_of(&files, Speed::Max, false, true)]).await;
    let entry = server.hub.get("usdm:BTCUSDT").expect("symbol");
    let mut stream = raw_connect(server.addr, "/ws?symbols=usdm:BTCUSDT", Some(16 * 1024)).await;
    // Versions one after the other, each written on its own (a millisecond
    // apart, too slow to be gathered), long after the client stopped reading.
    let versions = 800;
    for price in 1..=versions {
        publish_trade(&server, &entry, price);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let newest = versions.to_string();
    let mut frames = ServerFrames::default();
    let mut backlog = 0;
    loop {
        let (_, payload) = frames.next(&mut stream).await.expect("open");
        backlog += payload.len();
        let message: Value = serde_json::from_slice(&payload).expect("json");
        if message["type"] == "ticker" && message["last"] == newest.as_str() {
            return backlog;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stopped_is_a_few_dozen_kib_behind_not_the_send_buffer() {
    let backlog = backlog_of_a_reader_that_stopped(SessionConfig::default()).await;
    let unlimited = backlog_of_a_reader_that_stopped(SessionConfig {
        unsent_limit_bytes: None,
        ..SessionConfig::default()
    })
    .await;
    // However much one drain may take, updates wait while the last are
    // unwritten: none of the old versions queue behind them.
    let large_drains = backlog_of_a_reader_that_stopped(SessionConfig {
        write_high_water: 256 * 1024,
        ..SessionConfig::default()
    })
    .await;
    eprintln!(
        "backlog {backlog} bytes; {unlimited} without the unsent limit, \
         {large_drains} with 256 KiB drains"
    );
    // The client's receive buffer, at most 16 KiB unsent in the kernel (a
    // write may pass the limit) and one message here.
    assert!(backlog < 64 * 1024, "{backlog} bytes behind");
    assert!(large_drains < 64 * 1024, "{large_drains} bytes behind");
    // The control: the send buffer alone holds about 100 KiB of frames (the
    // kernel doubles the 64 KiB asked for, and counts its overhead in it).
    assert!(unlimited > 96 * 1024, "{unlimited} bytes behind");
}

/// Publishes a trade at `price` as `symbol`'s next version, by hand.
fn publish_trade(server: &TestServer, symbol: &SymbolEntry, price: i64) {
    let tick = Tick {
        recv_ts_ns: 0,
        exchange_ts_ns: None,
        update: BookUpdate::Trade {
            price: Decimal::new(price, 0),
            size: Decimal::ONE,
        },
    };
    server.hub.publish(symbol, &tick, tickwire::wall_clock_ns());
}
