//! Full-depth books: replaying the Binance captures gives the book the venue's
//! own procedure gives; `book` subscribers can verify every message by its
//! checksum and converge to the server's book; a gap, or a price the book
//! cannot hold, makes the book stale until a new snapshot resyncs it; a book
//! capped far below the venue's depth holds only the venue's best levels
//! and is never served cut short.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;

use common::{
    book_top, metric, replay_of, sample, Client, TestServer, COINBASE, GUARD, SPOT, USDM,
};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tickwire::book::depth::{DepthBook, Outcome, DEFAULT_MAX_PENDING_DIFFS};
use tickwire::feed::replay::Speed;
use tickwire::metrics::depth::DepthEvent;
use tickwire::normalize::binance;
use tickwire::normalize::depth::DepthMessage;
use tickwire::server::ServerConfig;

/// A capture's lines, decompressed.
fn lines(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).expect("sample exists");
    BufReader::new(flate2::read::MultiGzDecoder::new(file))
        .lines()
        .map(|line| line.expect("sample decompresses"))
        .collect()
}

/// An independent local book: serde_json and sorted maps, following Binance's
/// "how to manage a local order book correctly" literally.
#[derive(Default, Clone)]
struct Reference {
    futures: bool,
    bids: BTreeMap<Decimal, String>,
    asks: BTreeMap<Decimal, String>,
    /// Diffs seen before the snapshot.
    buffered: Vec<Value>,
    /// `u` of the last applied diff (or the snapshot's lastUpdateId).
    last: Option<u64>,
    bridged: bool,
    gaps: u32,
}

impl Reference {
    fn set(side: &mut BTreeMap<Decimal, String>, levels: &Value) {
        for level in levels.as_array().into_iter().flatten() {
            let price = level[0].as_str().unwrap_or_default();
            let size = level[1].as_str().unwrap_or_default();
            let key: Decimal = price.parse().unwrap_or_default();
            if size.parse::<Decimal>().unwrap_or_default().is_zero() {
                side.remove(&key);
            } else {
                side.insert(key, format!("{price}:{size}"));
            }
        }
    }

    /// Applies `data` if it is a depth snapshot or diff, and says which.
    fn take(&mut self, data: &Value) -> Option<DepthKind> {
        if data.get("lastUpdateId").is_some() {
            self.snapshot(data);
            Some(DepthKind::Snapshot)
        } else if data["e"] == "depthUpdate" {
            self.diff(data);
            Some(DepthKind::Diff)
        } else {
            None
        }
    }

    fn snapshot(&mut self, message: &Value) {
        self.bids.clear();
        self.asks.clear();
        Self::set(&mut self.bids, &message["bids"]);
        Self::set(&mut self.asks, &message["asks"]);
        self.last = message["lastUpdateId"].as_u64();
        self.bridged = false;
        for diff in std::mem::take(&mut self.buffered) {
            self.diff(&diff);
        }
    }

    fn diff(&mut self, data: &Value) {
        let Some(last) = self.last else {
            self.buffered.push(data.clone());
            return;
        };
        let (first, u) = (
            data["U"].as_u64().unwrap_or(0),
            data["u"].as_u64().unwrap_or(0),
        );
        let fits = if self.futures {
            if u < last || (self.bridged && u == last) {
                return;
            }
            if self.bridged {
                data["pu"].as_u64() == Some(last)
            } else {
                first <= last
            }
        } else {
            if u <= last {
                return;
            }
            if self.bridged {
                first == last + 1
            } else {
                first <= last + 1
            }
        };
        if !fits {
            self.gaps += 1;
            self.bids.clear();
            self.asks.clear();
            self.last = None;
            self.buffered.push(data.clone());
            return;
        }
        Self::set(&mut self.bids, &data["b"]);
        Self::set(&mut self.asks, &data["a"]);
        self.last = Some(u);
        self.bridged = true;
    }

    /// Best-first `price:size` strings per side.
    fn levels(&self) -> (Vec<String>, Vec<String>) {
        self.top(usize::MAX)
    }

    fn top(&self, n: usize) -> (Vec<String>, Vec<String>) {
        (
            self.bids.values().rev().take(n).cloned().collect(),
            self.asks.values().take(n).cloned().collect(),
        )
    }

    /// A REST snapshot line for the current book at receive time `ts`.
    fn snapshot_line(&self, ts: &str) -> String {
        let pairs = |levels: Vec<String>| -> Vec<Value> {
            levels
                .iter()
                .map(|l| {
                    let (p, s) = l.split_once(':').unwrap_or_default();
                    json!([p, s])
                })
                .collect()
        };
        let (bids, asks) = self.levels();
        let body = json!({"lastUpdateId": self.last, "bids": pairs(bids), "asks": pairs(asks)});
        format!("{ts} {body}")
    }
}

fn book_levels(book: &mut DepthBook, n: usize) -> (Vec<String>, Vec<String>) {
    let (mut bids, mut asks) = (Vec::new(), Vec::new());
    book.top(n, &mut bids, &mut asks);
    let text = |levels: Vec<tickwire::book::Level>| {
        levels
            .iter()
            .map(|l| format!("{}:{}", l.price, l.size))
            .collect::<Vec<_>>()
    };
    (text(bids), text(asks))
}

/// Which depth message a capture line carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DepthKind {
    Snapshot,
    Diff,
}

/// Reads a capture's depth line the way the server does.
fn parse_depth(line: &str, message: &mut DepthMessage) {
    let mut bytes = line.as_bytes().to_vec();
    binance::parse_capture_line_with_depth(&mut bytes, message).expect("depth line parses");
}

fn payload(line: &str) -> Option<Value> {
    let (_, json) = line.split_once(' ')?;
    let value: Value = serde_json::from_str(json).ok()?;
    Some(if value.get("data").is_some() {
        value["data"].clone()
    } else {
        value
    })
}

#[test]
fn replaying_a_capture_gives_the_venues_book_and_agrees_with_its_book_tickers() {
    for (name, futures) in [(SPOT, false), (USDM, true)] {
        let mut reference = Reference {
            futures,
            ..Reference::default()
        };
        let mut book = DepthBook::default();
        let mut message = DepthMessage::default();
        let (mut compared, mut ticker_checks, mut updated) = (0, 0, 0);
        for line in lines(&sample(name)) {
            let Some(data) = payload(&line) else { continue };
            let is_ticker = data.get("e").is_none_or(|e| e == "bookTicker")
                && data.get("b").is_some_and(Value::is_string);
            if is_ticker {
                // A bookTicker with the very update id the book stands at must
                // show the book's best levels.
                if book.is_synced() && data["u"].as_u64() == book.last_update_id() {
                    let (bids, asks) = book_levels(&mut book, 1);
                    let bid = format!(
                        "{}:{}",
                        data["b"].as_str().unwrap_or(""),
                        data["B"].as_str().unwrap_or("")
                    );
                    let ask = format!(
                        "{}:{}",
                        data["a"].as_str().unwrap_or(""),
                        data["A"].as_str().unwrap_or("")
                    );
                    assert_eq!(
                        (bids.first(), asks.first()),
                        (Some(&bid), Some(&ask)),
                        "{name}: bookTicker u={}",
                        data["u"]
                    );
                    ticker_checks += 1;
                }
                continue;
            }
            if reference.take(&data).is_none() {
                continue;
            }
            parse_depth(&line, &mut message);
            let outcome = book.apply(&message);
            assert_ne!(outcome, Outcome::Gap, "{name}: the capture has no gap");
            if outcome == Outcome::Updated {
                updated += 1;
            }
            if reference.last.is_some() {
                assert!(book.is_synced(), "{name}");
                assert_eq!(book.last_update_id(), reference.last, "{name}");
                // Whole books now and then (they hold thousands of levels),
                // the top 100 after every message.
                let n = if compared % 50 == 0 { usize::MAX } else { 100 };
                assert_eq!(
                    book_levels(&mut book, n),
                    reference.top(n),
                    "{name}: after u={}",
                    data["u"]
                );
                compared += 1;
            }
        }
        assert_eq!(
            book_levels(&mut book, usize::MAX),
            reference.levels(),
            "{name}: final book"
        );
        assert_eq!(reference.gaps, 0);
        assert!(compared > 100, "{name}: compared {compared} states");
        assert!(updated > 100, "{name}: {updated} publishable versions");
        // Futures diffs (`@depth@0ms`) end on update ids that bookTickers
        // carry; spot's 100 ms diffs coalesce, so its boundaries rarely meet one.
        if futures {
            assert!(
                ticker_checks > 0,
                "{name}: no bookTicker at a diff's update id"
            );
        }
        eprintln!(
            "{name}: {compared} book states compared, {ticker_checks} bookTicker cross-checks"
        );
    }
}

/// Levels per side the capped-book tests keep: a tenth of what the captures'
/// books hold.
const SMALL_BOOK: usize = 300;

/// Replays the depth messages of capture `name` into a book capped at
/// `SMALL_BOOK` levels per side, checking after every message that its top
/// 100 levels are the uncapped reference's best: all of them exactly when the
/// book vouches for 100 levels, fewer once the price has moved past where the
/// cap cut the book.
fn capped_replay(name: &str, futures: bool) -> CappedReplay {
    let mut reference = Reference {
        futures,
        ..Reference::default()
    };
    let mut book = DepthBook::new(DEFAULT_MAX_PENDING_DIFFS, SMALL_BOOK);
    let mut message = DepthMessage::default();
    let mut run = CappedReplay::default();
    for line in lines(&sample(name)) {
        let Some(data) = payload(&line) else { continue };
        if reference.take(&data).is_none() {
            continue;
        }
        parse_depth(&line, &mut message);
        let outcome = book.apply(&message);
        run.dropped += book.take_dropped_levels();
        let (bids, asks) = book.len();
        assert!(bids.max(asks) <= SMALL_BOOK + SMALL_BOOK / 8, "{name}");
        if reference.last.is_some() {
            let held = book_levels(&mut book, 100);
            let venue = reference.top(100);
            assert_eq!(held.0[..], venue.0[..held.0.len()], "{name}: bids");
            assert_eq!(held.1[..], venue.1[..held.1.len()], "{name}: asks");
            assert_eq!(book.vouches_for(100), held == venue, "{name}");
            if held != venue {
                run.shallower += 1;
            }
            run.compared += 1;
        }
        // What a server publishing 100 levels a side does with the outcome.
        if outcome == Outcome::Updated {
            if book.vouches_for(100) {
                run.published = book_levels(&mut book, 100);
            } else {
                run.cut_short += 1;
            }
        }
    }
    assert!(
        run.compared > 100,
        "{name}: compared {} states",
        run.compared
    );
    run.venue = reference.levels();
    run
}

#[derive(Default)]
struct CappedReplay {
    /// The top 100 of the last version a server publishing 100 levels would
    /// have published, per side.
    published: (Vec<String>, Vec<String>),
    /// The venue's whole final book, per side.
    venue: (Vec<String>, Vec<String>),
    dropped: u64,
    compared: u64,
    /// States in which the capped book held fewer than 100 levels on a side.
    shallower: u64,
    /// Updates a server publishing 100 levels would have refused as cut short.
    cut_short: u64,
}

#[test]
fn a_book_capped_far_below_the_venues_depth_holds_only_the_venues_best_levels() {
    for (name, futures) in [(SPOT, false), (USDM, true)] {
        let run = capped_replay(name, futures);
        let (bids, asks) = &run.venue;
        assert!(
            bids.len().max(asks.len()) > 3 * SMALL_BOOK,
            "{name}: the venue's book is deeper than the cap"
        );
        assert!(run.dropped > 0, "{name}: far levels were dropped");
        // Mostly the whole top 100: the price rarely moves 200 levels.
        assert!(
            run.shallower * 2 < run.compared,
            "{name}: {} of {} states shallower",
            run.shallower,
            run.compared
        );
        eprintln!(
            "{name}: {} levels dropped; {} of {} states held fewer than 100 levels a side",
            run.dropped, run.shallower, run.compared
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_book_is_never_served_cut_short_and_counts_what_it_dropped() {
    for (prefix, name, futures) in [("spot", SPOT, false), ("usdm", USDM, true)] {
        let mut replay = replay_of(&[(Some(prefix), sample(name))], Speed::Max, false, true);
        replay.max_book_levels = SMALL_BOOK;
        let mut server = TestServer::start(ServerConfig::default(), vec![replay]).await;
        let symbol = format!("{prefix}:BTCUSDT");
        let mut client = Client::connect(&server.url("")).await;
        client
            .send(json!({"op":"subscribe","channel":"book","depth":100,"symbols":[symbol]}))
            .await;
        client.recv_type("subscribed").await;
        server.replays[0].start();
        tokio::time::timeout(GUARD, server.replays[0].finished())
            .await
            .expect("replay ends");
        let mut state = BookClient::default();
        read_until_final(&mut client, &mut state, &server, &[&symbol], 100).await;

        // The server published what the same cap publishes offline.
        let run = capped_replay(name, futures);
        let held = &state.books[&symbol];
        assert_eq!(price_size_pairs(&held["bids"]), run.published.0, "{name}");
        assert_eq!(price_size_pairs(&held["asks"]), run.published.1, "{name}");
        let page = server.get("/metrics").await.1;
        for (series, expected) in [
            (
                "tickwire_depth_levels_dropped_total".to_owned(),
                run.dropped,
            ),
            (
                r#"tickwire_depth_messages_total{outcome="cut_short"}"#.to_owned(),
                run.cut_short,
            ),
        ] {
            assert_eq!(metric(&page, &series), expected as f64, "{name}: {series}");
        }
        if futures {
            // The futures book moves past its cut in this capture.
            assert!(run.cut_short > 0);
        }
        server.shutdown().await.expect("clean shutdown");
    }
}

/// A side of a `book` message as `price:size` texts.
fn price_size_pairs(levels: &Value) -> Vec<String> {
    levels
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "{}:{}",
                l[0].as_str().unwrap_or(""),
                l[1].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The client's side of the checksum: the documented text, CRC-32.
fn client_checksum(message: &Value) -> u32 {
    let side = |levels: &Value| price_size_pairs(levels).join(",");
    crc32fast::hash(format!("{}|{}", side(&message["bids"]), side(&message["asks"])).as_bytes())
}

/// What a `book` client holds: the last message per symbol, each verified.
#[derive(Default)]
struct BookClient {
    books: BTreeMap<String, Value>,
    messages: u64,
    skipped: u64,
    statuses: Vec<(String, String)>,
}

impl BookClient {
    fn take(&mut self, message: Value, depth: usize) {
        match message["type"].as_str() {
            Some("book") => {
                let symbol = message["symbol"].as_str().unwrap_or_default().to_owned();
                assert_eq!(
                    message["checksum"].as_u64(),
                    Some(u64::from(client_checksum(&message))),
                    "{message}"
                );
                assert_eq!(message["depth"].as_u64(), Some(depth as u64));
                for side in ["bids", "asks"] {
                    assert!(message[side].as_array().is_some_and(|l| l.len() <= depth));
                }
                let seq = message["seq"].as_u64().unwrap_or(0);
                if let Some(previous) = self.books.get(&symbol) {
                    let last = previous["seq"].as_u64().unwrap_or(0);
                    if message["snapshot"] == false {
                        assert!(seq > last, "versions only move forward");
                        assert_eq!(message["skipped"].as_u64(), Some(seq - last - 1));
                    }
                }
                self.skipped += message["skipped"].as_u64().unwrap_or(0);
                self.messages += 1;
                self.books.insert(symbol, message);
            }
            Some("status") => {
                assert_eq!(message["channel"], "book");
                self.statuses.push((
                    message["state"].as_str().unwrap_or_default().to_owned(),
                    message["reason"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            _ => {}
        }
    }

    fn seq(&self, symbol: &str) -> u64 {
        self.books
            .get(symbol)
            .and_then(|b| b["seq"].as_u64())
            .unwrap_or(0)
    }
}

/// Reads until the client holds the server's final version of every symbol.
async fn read_until_final(
    client: &mut Client,
    state: &mut BookClient,
    server: &TestServer,
    symbols: &[&str],
    depth: usize,
) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let done = symbols.iter().all(|s| {
            let entry = server.hub.get(s);
            let seq = entry
                .and_then(|e| e.depth().current())
                .map_or(u64::MAX, |c| c.seq);
            state.seq(s) >= seq
        });
        if done {
            return;
        }
        let message = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("the final version in time");
        state.take(message, depth);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_clients_verify_every_message_and_converge_even_when_conflated() {
    let replay = replay_of(
        &[(Some("spot"), sample(SPOT)), (Some("usdm"), sample(USDM))],
        Speed::Max,
        false,
        true,
    );
    let mut server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    let symbols = ["spot:BTCUSDT", "usdm:BTCUSDT"];

    let mut eager = Client::connect(&server.url("")).await;
    let mut slow = Client::connect(&server.url("")).await;
    for (client, depth) in [(&mut eager, 10), (&mut slow, 5)] {
        client
            .send(json!({"op":"subscribe","id":1,"channel":"book","depth":depth,"symbols":symbols}))
            .await;
        let subscribed = client.recv_type("subscribed").await;
        assert_eq!(subscribed["channel"], "book");
        assert_eq!(subscribed["symbols"], json!(symbols));
    }
    server.replays[0].start();

    // One client reads as the replay runs; the other only once it is over, so
    // it sees the conflated stream.
    let mut eager_state = BookClient::default();
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");
    read_until_final(&mut eager, &mut eager_state, &server, &symbols, 10).await;
    let mut slow_state = BookClient::default();
    read_until_final(&mut slow, &mut slow_state, &server, &symbols, 5).await;

    for symbol in symbols {
        for (state, depth) in [(&eager_state, 10), (&slow_state, 5)] {
            let held = &state.books[symbol];
            let (seq, bids, asks) = book_top(&server.hub, symbol, depth);
            assert_eq!(held["seq"].as_u64(), Some(seq));
            assert_eq!(
                (&held["bids"], &held["asks"]),
                (&bids, &asks),
                "{symbol} at depth {depth}"
            );
        }
    }
    assert!(
        eager_state.messages > 2,
        "the eager client saw the book move"
    );
    assert!(slow_state.skipped > 0, "the slow client was conflated");
    // Each client was told the books went live once they synced.
    assert!(eager_state
        .statuses
        .iter()
        .any(|(state, _)| state == "live"));

    // Refusals keep the connection open.
    eager
        .send(json!({"op":"subscribe","id":2,"channel":"book","depth":7,"symbols":symbols}))
        .await;
    let error = eager.recv_type("error").await;
    assert_eq!(
        (error["id"].as_u64(), error["code"].as_str()),
        (Some(2), Some("bad_request"))
    );
    eager
        .send(json!({"op":"subscribe","id":3,"channel":"book","depth":500,"symbols":symbols}))
        .await;
    let error = eager.recv_type("error").await;
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("100")),
        "{error}"
    );
    eager
        .send(json!({"op":"unsubscribe","id":4,"channel":"book","symbols":["spot:BTCUSDT"]}))
        .await;
    let unsubscribed = eager.recv_type("unsubscribed").await;
    assert_eq!(unsubscribed["channel"], "book");
    server.shutdown().await.expect("clean shutdown");
}

/// What a depth-25 subscriber of `spot:BTCUSDT` saw of a replay of the spot
/// capture in which the 20th diff after the book synced was replaced by
/// `damage(line)` (dropped when `None`), with, when `resnapshot`, a REST
/// snapshot of the true book inserted after the 60th diff: what a feed that
/// receives one bad message and then refetches the snapshot sees.
///
/// Statuses conflate like tickers (the latest wins), so a stale spell that is
/// over before the session writes may reach the client only as `live`: the
/// run without a new snapshot is the one that shows the stale reason for sure.
struct DamagedReplay {
    server: TestServer,
    client: BookClient,
    /// The true book (the undamaged diffs applied by [`Reference`]).
    reference: Reference,
    dir: std::path::PathBuf,
}

impl DamagedReplay {
    async fn run(tag: &str, resnapshot: bool, damage: impl Fn(&str) -> Option<String>) -> Self {
        let original = lines(&sample(SPOT));
        let mut reference = Reference::default();
        let mut edited = Vec::new();
        let (mut diffs_after_sync, mut damaged, mut resnapshotted) = (0, false, false);
        for line in original {
            let kind = payload(&line).and_then(|data| reference.take(&data));
            let is_diff = kind == Some(DepthKind::Diff);
            if is_diff && reference.last.is_some() {
                diffs_after_sync += 1;
                if diffs_after_sync == 20 && !damaged {
                    damaged = true;
                    edited.extend(damage(&line));
                    continue;
                }
            }
            edited.push(line.clone());
            if resnapshot && is_diff && diffs_after_sync == 60 && !resnapshotted {
                resnapshotted = true;
                let ts = line.split_once(' ').map_or("0", |(ts, _)| ts);
                edited.push(reference.snapshot_line(ts));
            }
        }
        assert!(
            damaged && resnapshotted == resnapshot,
            "the capture is long enough"
        );
        let dir = std::env::temp_dir().join(format!("tickwire-depth-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("spot.txt");
        std::fs::write(&path, edited.join("\n")).expect("write capture");

        let replay = replay_of(&[(Some("spot"), path.clone())], Speed::Max, false, true);
        let server = TestServer::start(ServerConfig::default(), vec![replay]).await;
        let mut client = Client::connect(&server.url("")).await;
        client
            .send(json!({"op":"subscribe","channel":"book","depth":25,"symbols":["spot:BTCUSDT"]}))
            .await;
        client.recv_type("subscribed").await;
        let mut state = BookClient::default();
        // Before any snapshot the book is announced stale.
        state.take(client.recv_type("status").await, 25);
        assert_eq!(
            state.statuses[0],
            ("stale".to_owned(), "awaiting a depth snapshot".to_owned())
        );
        server.replays[0].start();
        tokio::time::timeout(GUARD, server.replays[0].finished())
            .await
            .expect("replay ends");
        read_until_final(&mut client, &mut state, &server, &["spot:BTCUSDT"], 25).await;
        // A status the client has not read yet follows the final version.
        let status = server
            .hub
            .get("spot:BTCUSDT")
            .expect("served")
            .depth()
            .status();
        let current = (status.state.as_str().to_owned(), status.reason.to_string());
        while state.statuses.last() != Some(&current) {
            let message = tokio::time::timeout(GUARD, client.recv())
                .await
                .expect("status in time");
            state.take(message, 25);
        }
        Self {
            server,
            client: state,
            reference,
            dir,
        }
    }

    /// The book ended stale for a reason mentioning `reason`, and the
    /// message was counted as `event` in `/metrics`.
    async fn assert_left_stale(&self, reason: &str, event: DepthEvent) {
        let (state, why) = self.client.statuses.last().expect("a status");
        assert_eq!(state, "stale");
        assert!(why.contains(reason), "{why}");
        assert!(self.server.metrics().depth.get(event) >= 1);
        let page = self.server.get("/metrics").await.1;
        let series = format!(
            "tickwire_depth_messages_total{{outcome=\"{}\"}}",
            event.label()
        );
        assert!(page.contains(&series), "{series} in /metrics");
    }

    /// The book went stale once and came back in sync with the true book.
    fn assert_stale_once_then_resynced(&self) {
        let entry = self.server.hub.get("spot:BTCUSDT").expect("served");
        // Awaiting the snapshot, live, stale, live again.
        assert_eq!(entry.depth().status_generation(), 3);
        // Statuses conflate: the client may miss the stale spell, but is
        // never told `live` twice in a row.
        let statuses = &self.client.statuses;
        assert!(
            statuses
                .windows(2)
                .all(|w| w[0].0 != "live" || w[1].0 != "live"),
            "{statuses:?}"
        );
        assert_eq!(statuses.first().map(|s| s.0.as_str()), Some("stale"));
        assert_eq!(statuses.last().map(|s| s.0.as_str()), Some("live"));
        let (bids, asks) = self.reference.levels();
        let held = &self.client.books["spot:BTCUSDT"];
        let bids_held = price_size_pairs(&held["bids"]);
        let asks_held = price_size_pairs(&held["asks"]);
        assert_eq!(bids_held, bids[..25.min(bids.len())].to_vec());
        assert_eq!(asks_held, asks[..25.min(asks.len())].to_vec());
    }

    async fn finish(mut self) {
        self.server.shutdown().await.expect("clean shutdown");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_makes_the_book_stale_until_a_new_snapshot_resyncs_it() {
    // The diff is lost on the way: the served book has a gap.
    let lost = |_: &str| None;
    let run = DamagedReplay::run("gap", false, lost).await;
    run.assert_left_stale("gap", DepthEvent::Gap).await;
    run.finish().await;
    let run = DamagedReplay::run("gap-resync", true, lost).await;
    run.assert_stale_once_then_resynced();
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_the_book_cannot_hold_makes_it_stale_until_a_new_snapshot() {
    // One bid of the diff is priced beyond what a book holds (2^96 - 1).
    let oversized = |line: &str| {
        let huge = r#"["79228162514264337593543950335","1"]"#;
        let bids = line.find(r#""b":["#).expect("a diff has bids") + 5;
        let separator = if line[bids..].starts_with(']') {
            ""
        } else {
            ","
        };
        Some(format!(
            "{}{huge}{separator}{}",
            &line[..bids],
            &line[bids..]
        ))
    };
    let run = DamagedReplay::run("price", false, oversized).await;
    run.assert_left_stale("too large", DepthEvent::PriceOutOfRange)
        .await;
    run.finish().await;
    let run = DamagedReplay::run("price-resync", true, oversized).await;
    run.assert_stale_once_then_resynced();
    let counted = run.server.metrics().depth.get(DepthEvent::PriceOutOfRange);
    assert_eq!(counted, 1, "one message refused");
    run.finish().await;
}

/// A level as (price, size).
type PriceSize = (Decimal, Decimal);

/// What an independent reading of a Coinbase capture (serde_json and sorted
/// maps, its `snapshot`s and `l2update`s applied literally) says each
/// product's ticker must end on.
#[derive(Debug, Default)]
struct CoinbaseTop {
    /// The best bid and ask last taken from the book.
    taken: Option<(Option<PriceSize>, Option<PriceSize>)>,
    /// Trades (`match`, `last_match`) plus the depth messages that moved the
    /// best bid or ask: the versions the ticker must count.
    updates: u64,
}

fn coinbase_tops(path: &Path) -> BTreeMap<String, CoinbaseTop> {
    type Side = BTreeMap<Decimal, Decimal>;
    let mut books: BTreeMap<String, (Side, Side)> = BTreeMap::new();
    let mut tops: BTreeMap<String, CoinbaseTop> = BTreeMap::new();
    let number = |v: &Value| v.as_str().and_then(|s| s.parse::<Decimal>().ok());
    for line in lines(path) {
        // `<receive time>: <json>`; the recorder's `wss://` lines carry none.
        let Some((_, json)) = line
            .split_once(": ")
            .filter(|_| !line.starts_with("wss://"))
        else {
            continue;
        };
        let message: Value = serde_json::from_str(json).expect("the capture is JSON");
        let product = message["product_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let set = |side: &mut Side, price: &Value, size: &Value| {
            let (Some(price), Some(size)) = (number(price), number(size)) else {
                panic!("levels are decimal strings: {message}");
            };
            if size.is_zero() {
                side.remove(&price);
            } else {
                side.insert(price, size);
            }
        };
        let (bids, asks) = books.entry(product.clone()).or_default();
        match message["type"].as_str() {
            Some("match" | "last_match") => {
                tops.entry(product).or_default().updates += 1;
                continue;
            }
            Some("snapshot") => {
                bids.clear();
                asks.clear();
                for (side, key) in [(&mut *bids, "bids"), (&mut *asks, "asks")] {
                    for level in message[key].as_array().into_iter().flatten() {
                        set(side, &level[0], &level[1]);
                    }
                }
            }
            // Coinbase's diffs apply to the book its snapshot began.
            Some("l2update") if tops.get(&product).is_none_or(|t| t.taken.is_none()) => {
                continue;
            }
            Some("l2update") => {
                for change in message["changes"].as_array().into_iter().flatten() {
                    let side = if change[0] == "buy" {
                        &mut *bids
                    } else {
                        &mut *asks
                    };
                    set(side, &change[1], &change[2]);
                }
            }
            _ => continue,
        }
        let bid = bids.iter().next_back().map(|(p, s)| (*p, *s));
        let ask = asks.iter().next().map(|(p, s)| (*p, *s));
        let top = tops.entry(product).or_default();
        if top.taken != Some((bid, ask)) {
            top.taken = Some((bid, ask));
            top.updates += 1;
        }
    }
    tops
}

/// A ticker's side as (price, size).
fn ticker_level(ticker: &Value, side: &str) -> Option<PriceSize> {
    let price = ticker[side].as_str()?.parse().ok()?;
    let size = ticker[format!("{side}_size")].as_str()?.parse().ok()?;
    Some((price, size))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_venue_without_sized_quotes_takes_its_best_bid_and_ask_from_the_depth_book() {
    let tops = coinbase_tops(&sample(COINBASE));
    assert_eq!(tops.len(), 10, "the sample's ten products");
    let replay = replay_of(&[(None, sample(COINBASE))], Speed::Max, false, true);
    let mut server = TestServer::start(ServerConfig::default(), vec![replay]).await;
    let symbols: Vec<&str> = tops.keys().map(String::as_str).collect();
    let mut client = Client::connect(&server.url("")).await;
    client
        .send(json!({"op":"subscribe","id":1,"channel":"ticker","symbols":symbols}))
        .await;
    assert_eq!(
        client.recv_type("subscribed").await["symbols"],
        json!(symbols)
    );
    server.replays[0].start();
    tokio::time::timeout(GUARD, server.replays[0].finished())
        .await
        .expect("replay ends");

    let mut held: BTreeMap<String, Value> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + GUARD;
    while !symbols.iter().all(|s| {
        let served = server.hub.get(s).and_then(|e| e.current()).map(|c| c.seq);
        let seen = held.get(*s).and_then(|t| t["seq"].as_u64());
        served.is_some() && seen == served
    }) {
        let message = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("every final ticker in time");
        if message["type"] == "ticker" {
            let symbol = message["symbol"].as_str().unwrap_or_default().to_owned();
            held.insert(symbol, message);
        }
    }
    for (product, top) in &tops {
        let ticker = &held[product];
        let (bid, ask) = top.taken.unwrap_or_default();
        assert!(
            bid.is_some() && ask.is_some(),
            "{product}: a two-sided book"
        );
        assert_eq!(ticker_level(ticker, "bid"), bid, "{product}: {ticker}");
        assert_eq!(ticker_level(ticker, "ask"), ask, "{product}: {ticker}");
        assert_eq!(
            ticker["seq"].as_u64(),
            Some(top.updates),
            "{product}: a version per trade and per move of the top, none for deeper levels"
        );
    }
    server.shutdown().await.expect("clean shutdown");
}
