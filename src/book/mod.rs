//! Book: the top-of-book state of one symbol, as immutable versioned snapshots.
//!
//! A [`Snapshot`] is never mutated after it is built: applying a tick produces the
//! next version, which the fan-out publishes through `arc-swap`. Readers (sessions,
//! HTTP) therefore never lock and always see a consistent book. The wire encoding
//! of a version is computed at most once, on first use, and shared by every reader.

use std::sync::{Arc, OnceLock};

pub mod depth;
pub mod ladder;

use rust_decimal::Decimal;

use crate::normalize::{BookUpdate, Tick};
use crate::protocol;

/// A price level: price and size, exactly as the venue sent them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub price: Decimal,
    pub size: Decimal,
}

/// One version of a symbol's top of book.
#[derive(Debug)]
pub struct Snapshot {
    /// The served symbol name (after any feed prefix).
    pub symbol: Arc<str>,
    /// The version number: 1 for the first update, +1 for every later one.
    pub seq: u64,
    pub bid: Option<Level>,
    pub ask: Option<Level>,
    pub last: Option<Level>,
    /// Venue time of the update that made this version, if the venue stamps one.
    pub exchange_ts_ns: Option<i64>,
    /// Wall-clock time this service took the update in.
    pub ingest_ts_ns: i64,
    encoded: OnceLock<Box<[u8]>>,
}

impl Snapshot {
    /// The version that follows `previous` (or the first one) after `tick`.
    pub fn next(
        previous: Option<&Snapshot>,
        symbol: &Arc<str>,
        tick: &Tick,
        ingest_ts_ns: i64,
    ) -> Snapshot {
        let (mut bid, mut ask, mut last) = match previous {
            Some(p) => (p.bid, p.ask, p.last),
            None => (None, None, None),
        };
        match tick.update {
            BookUpdate::Quote {
                bid: bid_price,
                bid_size,
                ask: ask_price,
                ask_size,
            } => {
                bid = Some(Level {
                    price: bid_price,
                    size: bid_size,
                });
                ask = Some(Level {
                    price: ask_price,
                    size: ask_size,
                });
            }
            BookUpdate::Trade { price, size } => last = Some(Level { price, size }),
        }
        Snapshot {
            symbol: symbol.clone(),
            seq: previous.map_or(1, |p| p.seq + 1),
            bid,
            ask,
            last,
            exchange_ts_ns: tick.exchange_ts_ns,
            ingest_ts_ns,
            encoded: OnceLock::new(),
        }
    }

    /// A version built elsewhere (a gateway rebuilding an ingest's book from
    /// the cluster wire), with the ingest's `seq` and timestamps.
    pub fn from_parts(
        symbol: Arc<str>,
        seq: u64,
        bid: Option<Level>,
        ask: Option<Level>,
        last: Option<Level>,
        exchange_ts_ns: Option<i64>,
        ingest_ts_ns: i64,
    ) -> Snapshot {
        Snapshot {
            symbol,
            seq,
            bid,
            ask,
            last,
            exchange_ts_ns,
            ingest_ts_ns,
            encoded: OnceLock::new(),
        }
    }

    /// The ticker message for this version up to and including `"skipped":`.
    /// Built once per version; every subscriber appends its own `skipped` and
    /// `snapshot` fields to the same bytes.
    pub fn ticker_prefix(&self) -> &[u8] {
        self.encoded
            .get_or_init(|| protocol::encode_ticker_prefix(self).into_boxed_slice())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap_or_default()
    }

    /// A level from decimal strings, for the book and protocol tests.
    pub(crate) fn level(price: &str, size: &str) -> Level {
        Level {
            price: dec(price),
            size: dec(size),
        }
    }

    fn quote(bid: &str, ask: &str) -> Tick {
        Tick {
            recv_ts_ns: 1,
            exchange_ts_ns: Some(2),
            update: BookUpdate::Quote {
                bid: dec(bid),
                bid_size: dec("1.0"),
                ask: dec(ask),
                ask_size: dec("2.50"),
            },
        }
    }

    #[test]
    fn versions_carry_state_forward_and_count_up() {
        let symbol: Arc<str> = Arc::from("BTCUSDT");
        let first = Snapshot::next(None, &symbol, &quote("61800.20", "61800.30"), 10);
        assert_eq!(first.seq, 1);
        assert_eq!(first.last, None);
        let trade = Tick {
            recv_ts_ns: 3,
            exchange_ts_ns: None,
            update: BookUpdate::Trade {
                price: dec("61800.30"),
                size: dec("0.006"),
            },
        };
        let second = Snapshot::next(Some(&first), &symbol, &trade, 11);
        assert_eq!(second.seq, 2);
        assert_eq!(second.bid, first.bid, "a trade keeps the quote");
        assert_eq!(second.exchange_ts_ns, None);
        let last = second.last.map(|l| l.price.to_string());
        assert_eq!(last.as_deref(), Some("61800.30"));
    }

    #[test]
    fn prices_keep_their_scale() {
        let symbol: Arc<str> = Arc::from("BTCUSDT");
        let snap = Snapshot::next(None, &symbol, &quote("61800.20", "61837.64000000"), 10);
        let text = String::from_utf8_lossy(snap.ticker_prefix()).into_owned();
        assert!(text.contains(r#""bid":"61800.20""#), "{text}");
        assert!(text.contains(r#""ask":"61837.64000000""#), "{text}");
        assert!(text.contains(r#""ask_size":"2.50""#), "{text}");
    }
}
