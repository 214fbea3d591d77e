//! Depth records: one version of a symbol's order book, its best levels per
//! side, on `tickwire.v1.depth.<token>` (the token as in
//! [`subject_for`](super::subject_for)).
//!
//! Like a ticker record, one depth record is enough to serve the symbol's
//! book. Layout, version 1, integers little-endian, decimals and text as in
//! ticker records:
//!
//! ```text
//! u8      format version (1)
//! u8      status of the book: 0 live, 1 stale, 2 halted
//! u8      presence bits: 8 exchange_ts_ns
//! u64     epoch: the publishing ingest's start time (Unix ns)
//! varint  seq: the book's version (0: no version yet, status only)
//! varint  levels: the ingest's depth cap; a side holding fewer is whole
//! i64     ingest_ts_ns
//! i64     exchange_ts_ns                    (if present)
//! varint  bid count, then each bid: price, size (best first)
//! varint  ask count, then each ask: price, size (best first)
//! varint  status reason length, then UTF-8
//! varint  symbol length, then UTF-8
//! ```

use std::sync::Arc;

use rust_decimal::Decimal;

use super::{
    put_level, put_text, put_timestamps, put_varint, Header, Reader, WireError, HAS_EXCHANGE_TS,
};
use crate::book::depth::{DepthSnapshot, BOOK_DEPTHS};
use crate::book::Level;
use crate::fanout::{SymbolState, SymbolStatus};

/// The subject prefix every depth record is published under.
pub const DEPTH_SUBJECT_PREFIX: &str = "tickwire.v1.depth.";

/// The subject filter matching every depth record.
pub const DEPTH_SUBJECT_FILTER: &str = "tickwire.v1.depth.>";

const FORMAT_VERSION: u8 = 1;

/// Most levels a side of a record may hold: the deepest depth served.
pub const MAX_LEVELS: usize = BOOK_DEPTHS[BOOK_DEPTHS.len() - 1];

/// The smallest encoding of a level (two one-byte varints, two scales), so
/// a count is checked against the bytes left before anything is allocated.
const MIN_LEVEL_BYTES: usize = 4;

/// The largest record a book kept at `levels` a side can encode to: every
/// decimal at its longest (a 96-bit mantissa, 14 varint bytes, and a scale),
/// the seq's varint at its longest, and a reason and symbol of
/// [`MAX_TEXT_BYTES`](super::MAX_TEXT_BYTES) each. An ingest compares it
/// with the NATS server's `max_payload`.
pub fn max_encoded_len(levels: usize) -> usize {
    const LEVEL: usize = 2 * (14 + 1);
    const TEXT: usize = 2 + super::MAX_TEXT_BYTES;
    // Format, status, presence; epoch; seq; levels; the two timestamps.
    let fixed = 3 + 8 + 10 + 2 + 16;
    fixed + 2 * (2 + levels.min(MAX_LEVELS) * LEVEL) + 2 * TEXT
}

/// The NATS subject for `symbol`'s depth, or `None` for an empty symbol.
pub fn depth_subject_for(symbol: &str) -> Option<String> {
    super::subject_under(DEPTH_SUBJECT_PREFIX, symbol)
}

/// One decoded depth record.
#[derive(Clone, Debug, PartialEq)]
pub struct DepthRecord {
    /// The publishing ingest's start time; a later epoch supersedes any seq.
    pub epoch: u64,
    /// The ingest's depth version of the symbol (0: status only).
    pub seq: u64,
    /// The served symbol name.
    pub symbol: Arc<str>,
    /// The book's status on the ingest when this record was published.
    pub state: SymbolState,
    /// Why the book is not live (empty when it is).
    pub reason: String,
    /// Levels per side the ingest keeps in a version (its `--max-book-depth`).
    pub levels: usize,
    /// Best bids, highest first, and best asks, lowest first.
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
    /// Venue time of the last message applied, if the venue stamps one.
    pub exchange_ts_ns: Option<i64>,
    /// When the ingest took that message in.
    pub ingest_ts_ns: i64,
}

impl DepthRecord {
    /// The record an ingest publishes for `symbol`'s book: its current
    /// version if it has one, and its status.
    pub fn of_book(
        symbol: &Arc<str>,
        version: Option<&DepthSnapshot>,
        levels: usize,
        epoch: u64,
        status: &SymbolStatus,
    ) -> Self {
        let (seq, bids, asks, exchange_ts_ns, ingest_ts_ns) = match version {
            Some(v) => (
                v.seq,
                v.bids[..v.bids.len().min(MAX_LEVELS)].to_vec(),
                v.asks[..v.asks.len().min(MAX_LEVELS)].to_vec(),
                v.exchange_ts_ns,
                v.ingest_ts_ns,
            ),
            None => (0, Vec::new(), Vec::new(), None, 0),
        };
        Self {
            epoch,
            seq,
            symbol: symbol.clone(),
            state: status.state,
            reason: status.reason.to_string(),
            levels,
            bids,
            asks,
            exchange_ts_ns,
            ingest_ts_ns,
        }
    }

    /// Whether the record's best `depth` levels per side are the venue's:
    /// the ingest kept at least that many, or a side ends before its cap.
    pub fn vouches_for(&self, depth: usize) -> bool {
        self.levels >= depth || (self.bids.len() < self.levels && self.asks.len() < self.levels)
    }

    /// Whether the best bid is at or above the best ask: a book a
    /// standalone server never publishes as good.
    pub fn crossed(&self) -> bool {
        match (self.bids.first(), self.asks.first()) {
            (Some(bid), Some(ask)) => bid.price >= ask.price,
            _ => false,
        }
    }

    /// The version a gateway serves for this record, numbered `seq`, with at
    /// most `depth` levels per side.
    pub fn to_snapshot(&self, symbol: &Arc<str>, seq: u64, depth: usize) -> DepthSnapshot {
        let side = |levels: &[Level]| levels[..depth.min(levels.len())].into();
        DepthSnapshot::from_levels(
            symbol.clone(),
            seq,
            side(&self.bids),
            side(&self.asks),
            self.exchange_ts_ns,
            self.ingest_ts_ns,
        )
    }

    /// The record's bytes; sides beyond [`MAX_LEVELS`] are cut there, and
    /// so is the cap they are sent with, which then still says which sides
    /// are whole.
    pub fn encode(&self) -> Vec<u8> {
        let sides = self.bids.len().min(MAX_LEVELS) + self.asks.len().min(MAX_LEVELS);
        let mut out = Vec::with_capacity(64 + sides * 12 + self.symbol.len());
        let header = Header {
            version: FORMAT_VERSION,
            state: self.state,
            presence: if self.exchange_ts_ns.is_some() {
                HAS_EXCHANGE_TS
            } else {
                0
            },
            epoch: self.epoch,
            seq: self.seq,
        };
        header.put(&mut out);
        put_varint(&mut out, self.levels.min(MAX_LEVELS) as u128);
        put_timestamps(&mut out, self.ingest_ts_ns, self.exchange_ts_ns);
        for side in [&self.bids, &self.asks] {
            let side = &side[..side.len().min(MAX_LEVELS)];
            put_varint(&mut out, side.len() as u128);
            for level in side {
                put_level(&mut out, level);
            }
        }
        put_text(&mut out, &self.reason);
        put_text(&mut out, &self.symbol);
        out
    }

    /// Reads a record; any malformation is an error, never a panic, and a
    /// level count is checked before anything is allocated for it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut reader = Reader { bytes };
        let Header {
            state,
            presence,
            epoch,
            seq,
            ..
        } = reader.header(FORMAT_VERSION)?;
        let levels = usize::try_from(reader.varint()?).map_err(|_| WireError::Overflow)?;
        let (ingest_ts_ns, exchange_ts_ns) = reader.timestamps(presence)?;
        // Bids best first is descending, asks ascending: the order the
        // protocol promises clients and the only one an ingest publishes.
        let bids = reader.side(|better, worse| better.price > worse.price)?;
        let asks = reader.side(|better, worse| better.price < worse.price)?;
        let (reason, symbol) = reader.reason_and_symbol()?;
        Ok(Self {
            epoch,
            seq,
            symbol,
            state,
            reason,
            levels,
            bids,
            asks,
            exchange_ts_ns,
            ingest_ts_ns,
        })
    }
}

impl Reader<'_> {
    /// Reads one side. A level whose size is not above zero, or that is not
    /// strictly worse than the one before (`ahead` of it), is malformed: an
    /// ingest's book holds neither, and served they would be a book no venue
    /// has.
    fn side(&mut self, ahead: fn(&Level, &Level) -> bool) -> Result<Vec<Level>, WireError> {
        let count = self.varint()?;
        let fits = usize::try_from(count)
            .ok()
            .filter(|&n| n <= MAX_LEVELS && n * MIN_LEVEL_BYTES <= self.bytes.len());
        let Some(count) = fits else {
            return Err(if count > MAX_LEVELS as u128 {
                WireError::TooManyLevels(count)
            } else {
                WireError::Truncated
            });
        };
        let mut side: Vec<Level> = Vec::with_capacity(count);
        for _ in 0..count {
            let level = self.level()?;
            if level.size <= Decimal::ZERO {
                return Err(WireError::NonPositiveSize);
            }
            if side.last().is_some_and(|last| !ahead(last, &level)) {
                return Err(WireError::Unordered);
            }
            side.push(level);
        }
        Ok(side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(price: i64, size: i64) -> Level {
        Level {
            price: Decimal::new(price, 2),
            size: Decimal::new(size, 3),
        }
    }

    fn record() -> DepthRecord {
        DepthRecord {
            epoch: 1_723_075_200_123_456_789,
            seq: 77,
            symbol: Arc::from("spot:BTCUSDT"),
            state: SymbolState::Live,
            reason: String::new(),
            levels: 100,
            bids: (0..10).map(|i| level(6_180_020 - i, 2_507 + i)).collect(),
            asks: (0..7).map(|i| level(6_180_030 + i, 10 * (i + 1))).collect(),
            exchange_ts_ns: Some(1_723_075_200_100_000_000),
            ingest_ts_ns: 1_723_075_200_999_000_000,
        }
    }

    #[test]
    fn records_round_trip_and_keep_their_scale() {
        let record = record();
        let decoded = DepthRecord::decode(&record.encode());
        assert_eq!(decoded.as_ref(), Ok(&record));
        let best = decoded.ok().map(|r| r.bids[0].price.to_string());
        assert_eq!(best.as_deref(), Some("61800.20"));

        let status_only = DepthRecord {
            seq: 0,
            state: SymbolState::Stale,
            reason: "awaiting a depth snapshot".into(),
            bids: vec![],
            asks: vec![],
            exchange_ts_ns: None,
            ..record
        };
        assert_eq!(DepthRecord::decode(&status_only.encode()), Ok(status_only));
    }

    #[test]
    fn a_side_longer_than_a_record_carries_is_cut_when_sent_and_refused_when_read() {
        let long = DepthRecord {
            bids: (0..MAX_LEVELS as i64 + 5)
                .map(|i| level(1_000_000 - i, 1))
                .collect(),
            ..record()
        };
        let decoded = DepthRecord::decode(&long.encode()).map(|r| r.bids.len());
        assert_eq!(decoded, Ok(MAX_LEVELS));
        // An ingest keeping more levels than a record carries sends its cap
        // cut as well, so the cut side does not pass for a whole one.
        let deep = DepthRecord {
            levels: 1_000,
            ..long
        };
        let decoded = DepthRecord::decode(&deep.encode());
        assert_eq!(decoded.as_ref().map(|r| r.levels), Ok(MAX_LEVELS));
        assert!(decoded.is_ok_and(|r| r.vouches_for(MAX_LEVELS) && !r.vouches_for(MAX_LEVELS + 1)));

        let mut forged = vec![FORMAT_VERSION, 0, 0];
        forged.extend_from_slice(&[0; 8]);
        put_varint(&mut forged, 1);
        put_varint(&mut forged, 100);
        forged.extend_from_slice(&[0; 8]);
        put_varint(&mut forged, u128::from(u64::MAX));
        assert_eq!(
            DepthRecord::decode(&forged),
            Err(WireError::TooManyLevels(u128::from(u64::MAX)))
        );
        // A count the remaining bytes cannot hold is refused before allocating.
        let mut short = forged[..forged.len() - 10].to_vec();
        put_varint(&mut short, 400);
        short.extend_from_slice(&[0; 40]);
        assert_eq!(DepthRecord::decode(&short), Err(WireError::Truncated));
    }

    #[test]
    fn a_side_out_of_order_or_with_a_size_not_above_zero_is_malformed() {
        let cases = [
            // Bids 100, 105: the second is better than the first.
            (
                vec![level(100, 1), level(105, 1)],
                vec![],
                WireError::Unordered,
            ),
            // The same price twice.
            (
                vec![level(105, 2), level(105, 3)],
                vec![],
                WireError::Unordered,
            ),
            // Asks 95, 80: descending.
            (
                vec![],
                vec![level(95, 1), level(80, 1)],
                WireError::Unordered,
            ),
            (vec![level(105, -3)], vec![], WireError::NonPositiveSize),
            (vec![], vec![level(90, 0)], WireError::NonPositiveSize),
        ];
        for (bids, asks, error) in cases {
            let bad = DepthRecord {
                bids,
                asks,
                ..record()
            };
            assert_eq!(DepthRecord::decode(&bad.encode()), Err(error), "{bad:?}");
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = record().encode();
        for end in 0..bytes.len() {
            assert!(DepthRecord::decode(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            DepthRecord::decode(&longer),
            Err(WireError::TrailingBytes(1))
        );
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            let _ = DepthRecord::decode(&flipped);
        }
    }

    #[test]
    fn a_record_vouches_for_depths_up_to_its_cap_or_for_a_whole_book() {
        let capped = DepthRecord {
            levels: 10,
            ..record()
        };
        assert!(capped.vouches_for(10));
        assert!(
            !capped.vouches_for(25),
            "10 bids at a cap of 10: maybe more"
        );
        let thin = DepthRecord {
            levels: 20,
            ..record()
        };
        assert!(thin.vouches_for(100), "both sides end before the cap");
        let snapshot = capped.to_snapshot(&capped.symbol, 3, 5);
        assert_eq!(
            (snapshot.seq, snapshot.bids.len(), snapshot.asks.len()),
            (3, 5, 5)
        );
    }

    #[test]
    fn the_largest_record_is_the_bound_an_ingest_checks_max_payload_against() {
        let widest = Level {
            price: Decimal::MIN,
            size: Decimal::MAX,
        };
        let longest = |levels: usize| DepthRecord {
            seq: u64::MAX,
            reason: "r".repeat(2 * super::super::MAX_TEXT_BYTES),
            symbol: Arc::from("s".repeat(2 * super::super::MAX_TEXT_BYTES)),
            levels,
            bids: vec![widest; levels],
            asks: vec![widest; levels],
            ..record()
        };
        assert_eq!(
            longest(MAX_LEVELS).encode().len(),
            max_encoded_len(MAX_LEVELS)
        );
        assert!(longest(100).encode().len() <= max_encoded_len(100));
        assert_eq!(max_encoded_len(10_000), max_encoded_len(MAX_LEVELS));
    }

    #[test]
    fn depth_subjects_sit_beside_ticker_subjects() {
        assert_eq!(
            depth_subject_for("spot:BTCUSDT").as_deref(),
            Some("tickwire.v1.depth.spot:BTCUSDT")
        );
        assert_eq!(
            depth_subject_for("a.b").as_deref(),
            Some("tickwire.v1.depth.a%2Eb")
        );
        assert_eq!(depth_subject_for(""), None);
    }
}
