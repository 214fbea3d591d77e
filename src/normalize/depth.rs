//! Order-book depth messages: a venue's full snapshot or one diff of price
//! levels, decoded into reusable buffers.
//!
//! A [`DepthMessage`] is filled in place by the venue parsers
//! ([`binance::parse_capture_line_with_depth`](super::binance::parse_capture_line_with_depth),
//! [`coinbase::parse_capture_line_with_depth`](super::coinbase::parse_capture_line_with_depth)):
//! its vectors keep their capacity, so decoding allocates nothing once they
//! have grown to the largest message seen.

use crate::book::Level;

/// How a depth message is sequenced, which decides the sync rules the book
/// applies (see [`crate::book::depth`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sequence {
    /// A full book as of update id `last_update_id` (Binance REST snapshot),
    /// or unsequenced (`None`: Coinbase `snapshot`).
    #[default]
    Snapshot,
    /// Binance spot `depthUpdate`: updates `first` (`U`) to `last` (`u`).
    Spot { first: u64, last: u64 },
    /// Binance USD-M futures `depthUpdate`: as spot, plus `previous` (`pu`),
    /// the `u` of the diff before this one.
    Futures {
        first: u64,
        last: u64,
        previous: u64,
    },
    /// A diff without sequence numbers (Coinbase `l2update`).
    Unsequenced,
}

/// One decoded depth message.
#[derive(Clone, Debug, Default)]
pub struct DepthMessage {
    /// The venue's symbol; empty for a Binance REST snapshot, which names none.
    pub symbol: String,
    /// Snapshot or diff, and its update ids.
    pub sequence: Sequence,
    /// For a Binance snapshot, the update id it is current as of.
    pub last_update_id: Option<u64>,
    /// Changed (diff) or present (snapshot) bid levels; a zero size removes one.
    pub bids: Vec<Level>,
    /// Changed (diff) or present (snapshot) ask levels; a zero size removes one.
    pub asks: Vec<Level>,
    /// When the message was received, Unix-epoch nanoseconds.
    pub recv_ts_ns: i64,
    /// The venue's event time, if the message carries one.
    pub exchange_ts_ns: Option<i64>,
}

impl DepthMessage {
    /// Whether a level has a size below zero, which no venue sends (zero
    /// removes a level).
    pub fn has_negative_size(&self) -> bool {
        // The sign bit, not a comparison with zero: a decimal comparison
        // aligns scales first, and this runs for every level of every diff.
        let mut levels = self.bids.iter().chain(&self.asks);
        levels.any(|level| level.size.is_sign_negative() && !level.size.is_zero())
    }

    /// Empties the message for reuse, keeping every buffer's capacity.
    pub fn clear(&mut self) {
        self.symbol.clear();
        self.sequence = Sequence::Snapshot;
        self.last_update_id = None;
        self.bids.clear();
        self.asks.clear();
        self.recv_ts_ns = 0;
        self.exchange_ts_ns = None;
    }

    /// Makes this message a copy of `other`, reusing this one's buffers.
    pub fn copy_from(&mut self, other: &DepthMessage) {
        self.symbol.clear();
        self.symbol.push_str(&other.symbol);
        self.sequence = other.sequence;
        self.last_update_id = other.last_update_id;
        self.bids.clear();
        self.bids.extend_from_slice(&other.bids);
        self.asks.clear();
        self.asks.extend_from_slice(&other.asks);
        self.recv_ts_ns = other.recv_ts_ns;
        self.exchange_ts_ns = other.exchange_ts_ns;
    }

    /// Whether this is a full book rather than a diff.
    pub fn is_snapshot(&self) -> bool {
        self.sequence == Sequence::Snapshot
    }
}
