//! Full order-book depth: an L2 book per symbol kept in sync with a venue's
//! snapshots and diffs, published as immutable top-of-book-N versions.
//!
//! [`DepthBook`] follows each venue's own procedure for a local book:
//!
//! - **Binance spot** (`depthUpdate` with `U`/`u`): diffs are buffered until a
//!   REST snapshot arrives; buffered diffs with `u <= lastUpdateId` are
//!   dropped; the first one applied must satisfy
//!   `U <= lastUpdateId + 1 <= u`; every later one must start at the previous
//!   `u + 1`.
//! - **Binance USD-M futures** (`U`/`u`/`pu`): diffs with `u < lastUpdateId`
//!   are dropped; the first one applied must satisfy `U <= lastUpdateId <= u`;
//!   every later one's `pu` must equal the previous `u`.
//! - **Coinbase** (`snapshot`/`l2update`, no sequence numbers): a snapshot
//!   replaces the book, updates apply in order; updates before the first
//!   snapshot have no base and are dropped.
//!
//! A break in continuity is a [`Outcome::Gap`]: the book is cleared and waits
//! for a new snapshot, buffering diffs again. A book whose best bid reaches its
//! best ask is [`Outcome::Crossed`]. Neither is ever published as good; the
//! caller marks the symbol's book stale instead.
//!
//! Applying a diff costs, per level, a binary search over a side's best few
//! hundred levels plus, for a new one, a short move within a sorted vector,
//! or one hash operation for a deeper level, and allocates nothing once
//! buffers have grown (see [`ladder`](super::ladder)). A price the book
//! cannot hold is [`Outcome::PriceOutOfRange`] and is handled like a gap.
//! [`DepthBook::publish`] copies only the best `max_depth` levels into a
//! [`DepthSnapshot`].

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use super::ladder::{Ladder, PriceOutOfRange, SideKind};
use super::Level;
use crate::normalize::depth::{DepthMessage, Sequence};
use crate::protocol::book as wire;

/// The depths a client may ask for (each no larger than the server's
/// configured maximum). A fixed set lets every subscriber of one depth share
/// one encoding of each version.
pub const BOOK_DEPTHS: [usize; 7] = [1, 5, 10, 25, 50, 100, 500];

/// The largest depth served unless configured otherwise.
pub const DEFAULT_MAX_BOOK_DEPTH: usize = 100;

/// Diffs buffered while waiting for a snapshot, unless configured otherwise.
pub const DEFAULT_MAX_PENDING_DIFFS: usize = 1_000;

/// Levels buffered in all of a book's pending diffs together (32 MB): a
/// file's lines may be megabytes long, so a count of diffs alone does not
/// bound the memory. A diff larger than this by itself is not buffered.
pub const MAX_PENDING_LEVELS: usize = 1_000_000;

fn levels(message: &DepthMessage) -> usize {
    message.bids.len() + message.asks.len()
}

/// Level capacity an emptied message keeps for reuse; one that held a huge
/// diff gives the rest back.
const SPARE_LEVELS: usize = 4_096;

/// Levels a book keeps per side, unless configured otherwise: twice the
/// deepest snapshot Binance serves. Past it (by an eighth) the worst levels
/// are dropped and counted (see [`ladder`](super::ladder)).
pub const DEFAULT_MAX_BOOK_LEVELS: usize = 10_000;

/// Levels that all of a feed's books together buffer while they await
/// their snapshots (128 MB). Each book is bounded on its own, but a feed
/// may carry many symbols.
pub const DEFAULT_MAX_PENDING_LEVELS_ALL_BOOKS: usize = 4_000_000;

/// The levels a set of books (a feed's) buffer together, and their bound:
/// past it, the book that grew drops what it buffered.
#[derive(Debug)]
pub struct PendingBudget {
    held: usize,
    max: usize,
}

impl PendingBudget {
    pub fn new(max: usize) -> Self {
        Self { held: 0, max }
    }

    /// Levels held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Accounts for `book` after it took a message, `before` being what it
    /// buffered until then; drops what it buffers if all books now hold too
    /// much.
    pub fn settle(&mut self, before: usize, book: &mut DepthBook) {
        let after = book.pending_levels();
        self.held = self.held.saturating_sub(before) + after;
        if self.held > self.max {
            book.drop_pending();
            self.held -= after;
        }
    }

    /// Forgets what `book`, about to be dropped, buffers.
    pub fn release(&mut self, book: &DepthBook) {
        self.held = self.held.saturating_sub(book.pending_levels());
    }
}

/// What applying one depth message did to the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The book changed and is consistent: publish it.
    Updated,
    /// A diff held until a snapshot arrives.
    Buffered,
    /// A diff the book already contains (or, before the first snapshot of an
    /// unsequenced venue, one with nothing to apply to): ignored.
    Outdated,
    /// Update ids are not contiguous: the book was cleared and waits for a new
    /// snapshot.
    Gap,
    /// Applied, but the best bid is at or above the best ask: not publishable
    /// until a later diff uncrosses it.
    Crossed,
    /// A level's price does not fit the book ([`PriceOutOfRange`]): the book
    /// was cleared and waits for a new snapshot.
    PriceOutOfRange,
    /// Applied, but a side cut at its level cap now holds fewer levels than
    /// are published, so its best levels cannot be vouched for
    /// ([`DepthBook::vouches_for`]): not publishable until levels come back
    /// or a snapshot rebuilds the book. The publisher decides this, knowing
    /// the depth it publishes; [`DepthBook::apply`] never returns it.
    CutShort,
}

/// The status reason of a crossed book, wherever it was found crossed.
pub const CROSSED_REASON: &str = "crossed book: best bid at or above best ask";

impl Outcome {
    /// Why a book in this state is not served as good.
    pub fn stale_reason(self) -> Option<&'static str> {
        match self {
            Outcome::Gap => {
                Some("depth gap: update ids not contiguous; waiting for a new snapshot")
            }
            Outcome::Crossed => Some(CROSSED_REASON),
            Outcome::PriceOutOfRange => {
                Some("a price too large or too precise for the book; waiting for a new snapshot")
            }
            Outcome::CutShort => Some(
                "the price moved past where the book was cut at its level cap; waiting for levels to come back or a new snapshot",
            ),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncState {
    /// No snapshot yet (or a gap cleared the book): diffs are buffered.
    AwaitingSnapshot,
    /// Built from a snapshot. `last` is the update id the book is current as
    /// of (`None` for unsequenced venues); `bridged` once the first diff after
    /// the snapshot has been applied.
    Synced { last: Option<u64>, bridged: bool },
}

/// One symbol's full L2 book and its sync state.
#[derive(Debug)]
pub struct DepthBook {
    bids: Ladder,
    asks: Ladder,
    state: SyncState,
    /// Diffs received before the snapshot, oldest first.
    pending: VecDeque<DepthMessage>,
    /// Emptied messages kept for reuse by `pending`.
    spare: Vec<DepthMessage>,
    max_pending: usize,
    /// Venue time of the last message applied.
    exchange_ts_ns: Option<i64>,
}

impl Default for DepthBook {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PENDING_DIFFS, DEFAULT_MAX_BOOK_LEVELS)
    }
}

impl DepthBook {
    /// An empty book that buffers at most `max_pending` diffs before its
    /// snapshot (older ones are dropped, which surfaces as a gap) and keeps
    /// about `max_levels` levels per side.
    pub fn new(max_pending: usize, max_levels: usize) -> Self {
        Self {
            bids: Ladder::new(SideKind::Bids, max_levels),
            asks: Ladder::new(SideKind::Asks, max_levels),
            state: SyncState::AwaitingSnapshot,
            pending: VecDeque::new(),
            spare: Vec::new(),
            max_pending: max_pending.max(1),
            exchange_ts_ns: None,
        }
    }

    /// Whether the book is built from a snapshot (and not cleared by a gap).
    pub fn is_synced(&self) -> bool {
        matches!(self.state, SyncState::Synced { .. })
    }

    /// The update id the book is current as of, for sequenced venues.
    pub fn last_update_id(&self) -> Option<u64> {
        match self.state {
            SyncState::Synced { last, .. } => last,
            SyncState::AwaitingSnapshot => None,
        }
    }

    /// Whether the best `depth` levels of each side are the venue's: not when
    /// a side cut at its level cap holds fewer than `depth` (the venue may
    /// have more beyond the cut).
    pub fn vouches_for(&self, depth: usize) -> bool {
        [&self.bids, &self.asks]
            .iter()
            .all(|side| !side.is_cut() || side.len() >= depth)
    }

    /// Levels dropped at the far ends of the book past its cap, and changes
    /// refused beyond the cut, since the last call.
    pub fn take_dropped_levels(&mut self) -> u64 {
        self.bids.take_dropped() + self.asks.take_dropped()
    }

    /// The venue's time of the last snapshot or diff applied, if it stamped one.
    pub fn exchange_ts_ns(&self) -> Option<i64> {
        self.exchange_ts_ns
    }

    /// Number of bid and ask levels.
    pub fn len(&self) -> (usize, usize) {
        (self.bids.len(), self.asks.len())
    }

    /// Whether both sides are empty.
    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    /// The best bid and ask.
    pub fn best(&self) -> (Option<Level>, Option<Level>) {
        (self.bids.best(), self.asks.best())
    }

    /// Appends the best `n` bids and asks, best first.
    pub fn top(&mut self, n: usize, bids: &mut Vec<Level>, asks: &mut Vec<Level>) {
        self.bids.prepare_top(n);
        self.asks.prepare_top(n);
        self.bids.top(n, bids);
        self.asks.top(n, asks);
    }

    /// Applies one snapshot or diff following the venue's rules (module docs).
    pub fn apply(&mut self, message: &DepthMessage) -> Outcome {
        if message.is_snapshot() {
            // A snapshot older than a book in sync would take it back in
            // time, and the next diff would not follow on.
            if let (
                SyncState::Synced {
                    last: Some(last), ..
                },
                Some(id),
            ) = (self.state, message.last_update_id)
            {
                if id < last {
                    return Outcome::Outdated;
                }
            }
            return self.apply_snapshot(message);
        }
        match self.state {
            SyncState::AwaitingSnapshot => {
                if message.sequence == Sequence::Unsequenced {
                    return Outcome::Outdated;
                }
                self.buffer(message);
                Outcome::Buffered
            }
            SyncState::Synced { .. } => {
                let outcome = self.apply_diff(message);
                if outcome == Outcome::Gap && message.sequence != Sequence::Unsequenced {
                    // A later snapshot may cover this diff.
                    self.buffer(message);
                }
                outcome
            }
        }
    }

    fn apply_snapshot(&mut self, snapshot: &DepthMessage) -> Outcome {
        self.bids.clear();
        self.asks.clear();
        if self.set_levels(snapshot).is_err() {
            return self.reject();
        }
        self.exchange_ts_ns = snapshot.exchange_ts_ns;
        self.state = SyncState::Synced {
            last: snapshot.last_update_id,
            bridged: false,
        };
        let mut outcome = self.check_crossed();
        while let Some(diff) = self.pending.pop_front() {
            match self.apply_diff(&diff) {
                Outcome::Gap => {
                    // Kept, in order, for the next snapshot.
                    self.pending.push_front(diff);
                    return Outcome::Gap;
                }
                Outcome::Outdated => {}
                Outcome::PriceOutOfRange => {
                    self.recycle(diff);
                    return Outcome::PriceOutOfRange;
                }
                other => outcome = other,
            }
            self.recycle(diff);
        }
        outcome
    }

    fn apply_diff(&mut self, diff: &DepthMessage) -> Outcome {
        let SyncState::Synced { last, bridged } = self.state else {
            return Outcome::Outdated;
        };
        let next_last = match (diff.sequence, last) {
            (Sequence::Spot { first, last: u }, Some(last)) => {
                if u <= last {
                    return Outcome::Outdated;
                }
                let continues = if bridged {
                    first == last + 1
                } else {
                    first <= last + 1
                };
                if !continues {
                    return self.gap();
                }
                Some(u)
            }
            (
                Sequence::Futures {
                    first,
                    last: u,
                    previous,
                },
                Some(last),
            ) => {
                if u < last || (bridged && u == last) {
                    return Outcome::Outdated;
                }
                let continues = if bridged {
                    previous == last
                } else {
                    first <= last
                };
                if !continues {
                    return self.gap();
                }
                Some(u)
            }
            (Sequence::Unsequenced, None) => None,
            // A diff whose kind does not match the snapshot's (a sequenced diff
            // on an unsequenced book or the reverse) cannot be placed.
            _ => return self.gap(),
        };
        if self.set_levels(diff).is_err() {
            return self.reject();
        }
        self.exchange_ts_ns = diff.exchange_ts_ns.or(self.exchange_ts_ns);
        self.state = SyncState::Synced {
            last: next_last,
            bridged: true,
        };
        self.check_crossed()
    }

    fn set_levels(&mut self, message: &DepthMessage) -> Result<(), PriceOutOfRange> {
        for level in &message.bids {
            self.bids.set(level.price, level.size)?;
        }
        for level in &message.asks {
            self.asks.set(level.price, level.size)?;
        }
        Ok(())
    }

    /// Clears the book after a level it cannot hold: the message is not
    /// applied in part, and only a new snapshot can rebuild the book.
    fn reject(&mut self) -> Outcome {
        self.gap();
        Outcome::PriceOutOfRange
    }

    /// Clears the book after a break in continuity.
    fn gap(&mut self) -> Outcome {
        self.bids.clear();
        self.asks.clear();
        self.state = SyncState::AwaitingSnapshot;
        Outcome::Gap
    }

    fn check_crossed(&self) -> Outcome {
        match (self.bids.best(), self.asks.best()) {
            (Some(bid), Some(ask)) if bid.price >= ask.price => Outcome::Crossed,
            _ => Outcome::Updated,
        }
    }

    /// Keeps `diff` for the next snapshot, dropping the oldest diffs past
    /// the buffer's bounds (they surface as a gap if the snapshot needs them).
    fn buffer(&mut self, diff: &DepthMessage) {
        if levels(diff) > MAX_PENDING_LEVELS {
            return;
        }
        let mut held = self.pending_levels();
        while self.pending.len() >= self.max_pending || held + levels(diff) > MAX_PENDING_LEVELS {
            let Some(oldest) = self.pending.pop_front() else {
                break;
            };
            held -= levels(&oldest);
            self.recycle(oldest);
        }
        let mut copy = self.spare.pop().unwrap_or_default();
        copy.copy_from(diff);
        self.pending.push_back(copy);
    }

    fn recycle(&mut self, mut message: DepthMessage) {
        message.clear();
        message.bids.shrink_to(SPARE_LEVELS);
        message.asks.shrink_to(SPARE_LEVELS);
        self.spare.push(message);
    }

    /// Number of diffs waiting for a snapshot.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Levels in the diffs waiting for a snapshot. Summed when asked: the
    /// buffer is empty but while a book awaits its snapshot, and summing is
    /// cheaper than keeping a count right through every path that takes
    /// diffs out.
    pub fn pending_levels(&self) -> usize {
        self.pending.iter().map(levels).sum()
    }

    /// Drops every diff waiting for a snapshot (they surface as a gap if the
    /// snapshot needs them), for a caller bounding many books together.
    pub fn drop_pending(&mut self) {
        // Their storage and the spares too: the point is the memory.
        self.pending = VecDeque::new();
        self.spare = Vec::new();
    }

    /// The next published version: the best `max_depth` levels per side.
    pub fn publish(
        &mut self,
        symbol: &Arc<str>,
        seq: u64,
        max_depth: usize,
        ingest_ts_ns: i64,
    ) -> DepthSnapshot {
        let mut bids = Vec::with_capacity(max_depth.min(self.bids.len()));
        let mut asks = Vec::with_capacity(max_depth.min(self.asks.len()));
        self.top(max_depth, &mut bids, &mut asks);
        DepthSnapshot::from_levels(
            symbol.clone(),
            seq,
            bids.into_boxed_slice(),
            asks.into_boxed_slice(),
            self.exchange_ts_ns,
            ingest_ts_ns,
        )
    }
}

/// One published version of a symbol's depth: its best levels per side.
#[derive(Debug)]
pub struct DepthSnapshot {
    /// The served symbol name.
    pub symbol: Arc<str>,
    /// The book version: 1 for the first published, +1 for every later one.
    pub seq: u64,
    /// Best bids, highest first, at most the server's maximum depth.
    pub bids: Box<[Level]>,
    /// Best asks, lowest first, at most the server's maximum depth.
    pub asks: Box<[Level]>,
    /// Venue time of the last message applied, if the venue stamps one.
    pub exchange_ts_ns: Option<i64>,
    /// Wall-clock time this service took that message in.
    pub ingest_ts_ns: i64,
    encoded: [OnceLock<Box<[u8]>>; BOOK_DEPTHS.len()],
}

impl DepthSnapshot {
    /// A version built from levels held elsewhere (a gateway's copy of an
    /// ingest's book): bids highest first, asks lowest first.
    pub fn from_levels(
        symbol: Arc<str>,
        seq: u64,
        bids: Box<[Level]>,
        asks: Box<[Level]>,
        exchange_ts_ns: Option<i64>,
        ingest_ts_ns: i64,
    ) -> Self {
        Self {
            symbol,
            seq,
            bids,
            asks,
            exchange_ts_ns,
            ingest_ts_ns,
            encoded: Default::default(),
        }
    }

    /// The `book` message for `BOOK_DEPTHS[depth_index]` levels, up to and
    /// including `"skipped":`; built once per version and depth, shared by
    /// every subscriber of that depth.
    pub fn book_prefix(&self, depth_index: usize) -> &[u8] {
        let depth = BOOK_DEPTHS.get(depth_index).copied().unwrap_or(0);
        match self.encoded.get(depth_index) {
            Some(cell) => {
                cell.get_or_init(|| wire::encode_book_prefix(self, depth).into_boxed_slice())
            }
            None => b"",
        }
    }

    /// The best `depth` bids and asks.
    pub fn top(&self, depth: usize) -> (&[Level], &[Level]) {
        (
            &self.bids[..depth.min(self.bids.len())],
            &self.asks[..depth.min(self.asks.len())],
        )
    }
}

/// The deepest of [`BOOK_DEPTHS`] served under `max_depth` (1 at least).
pub fn deepest_served(max_depth: usize) -> usize {
    BOOK_DEPTHS
        .iter()
        .copied()
        .filter(|&depth| depth <= max_depth)
        .max()
        .unwrap_or(1)
}

/// The index in [`BOOK_DEPTHS`] of `depth`, if it is served under `max_depth`.
pub fn depth_index(depth: usize, max_depth: usize) -> Option<usize> {
    if depth > max_depth {
        return None;
    }
    BOOK_DEPTHS.iter().position(|&d| d == depth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::tests::level;

    fn message(sequence: Sequence, bids: &[(&str, &str)], asks: &[(&str, &str)]) -> DepthMessage {
        DepthMessage {
            symbol: "BTCUSDT".into(),
            sequence,
            last_update_id: None,
            bids: bids.iter().map(|(p, s)| level(p, s)).collect(),
            asks: asks.iter().map(|(p, s)| level(p, s)).collect(),
            recv_ts_ns: 0,
            exchange_ts_ns: None,
        }
    }

    fn snapshot(id: u64) -> DepthMessage {
        let mut m = message(
            Sequence::Snapshot,
            &[("100.0", "1"), ("99.0", "2")],
            &[("101.0", "1"), ("102.0", "2")],
        );
        m.last_update_id = Some(id);
        m
    }

    fn spot(first: u64, last: u64, bids: &[(&str, &str)]) -> DepthMessage {
        message(Sequence::Spot { first, last }, bids, &[])
    }

    fn futures(first: u64, last: u64, previous: u64, bids: &[(&str, &str)]) -> DepthMessage {
        message(
            Sequence::Futures {
                first,
                last,
                previous,
            },
            bids,
            &[],
        )
    }

    fn best_bid(book: &DepthBook) -> String {
        book.best()
            .0
            .map(|l| format!("{}@{}", l.size, l.price))
            .unwrap_or_default()
    }

    #[test]
    fn spot_buffers_until_the_snapshot_then_drops_old_diffs_and_bridges() {
        let mut book = DepthBook::default();
        assert_eq!(
            book.apply(&spot(90, 95, &[("98.0", "5")])),
            Outcome::Buffered
        );
        assert_eq!(
            book.apply(&spot(96, 103, &[("100.0", "7")])),
            Outcome::Buffered
        );
        assert_eq!(book.apply(&snapshot(100)), Outcome::Updated);
        // 90..95 is inside the snapshot; 96..103 bridges lastUpdateId + 1.
        assert_eq!(best_bid(&book), "7@100.0");
        assert_eq!(book.len().0, 2, "the pre-snapshot 98.0 level was dropped");
        assert_eq!(book.last_update_id(), Some(103));
        assert_eq!(
            book.apply(&spot(104, 104, &[("100.0", "0")])),
            Outcome::Updated
        );
        assert_eq!(best_bid(&book), "2@99.0");
        assert_eq!(book.apply(&spot(100, 104, &[])), Outcome::Outdated);
        assert_eq!(book.apply(&spot(106, 107, &[])), Outcome::Gap);
        assert!(!book.is_synced());
        assert!(book.is_empty(), "a gapped book is cleared");
        assert_eq!(
            book.pending(),
            1,
            "the diff after the gap waits for a snapshot"
        );
        assert_eq!(book.apply(&snapshot(106)), Outcome::Updated);
        assert_eq!(book.last_update_id(), Some(107));
        // A snapshot older than the book in sync changes nothing.
        let before = best_bid(&book);
        assert_eq!(book.apply(&snapshot(105)), Outcome::Outdated);
        assert_eq!(
            (best_bid(&book), book.last_update_id()),
            (before, Some(107))
        );
        assert_eq!(
            book.apply(&snapshot(107)),
            Outcome::Updated,
            "as new: taken"
        );
    }

    #[test]
    fn spot_snapshot_older_than_every_buffered_diff_is_a_gap() {
        let mut book = DepthBook::default();
        book.apply(&spot(110, 120, &[]));
        assert_eq!(book.apply(&snapshot(100)), Outcome::Gap);
        assert_eq!(book.pending(), 1);
        assert_eq!(book.apply(&snapshot(115)), Outcome::Updated);
        assert_eq!(book.last_update_id(), Some(120));
    }

    #[test]
    fn futures_follow_previous_update_ids() {
        let mut book = DepthBook::default();
        assert_eq!(book.apply(&futures(80, 99, 70, &[])), Outcome::Buffered);
        assert_eq!(
            book.apply(&futures(100, 105, 99, &[("100.0", "3")])),
            Outcome::Buffered
        );
        assert_eq!(book.apply(&snapshot(100)), Outcome::Updated);
        assert_eq!(best_bid(&book), "3@100.0");
        // `U` of the next diff need not be `u + 1`: `pu` is what links them.
        assert_eq!(
            book.apply(&futures(109, 112, 105, &[("100.0", "4")])),
            Outcome::Updated
        );
        assert_eq!(best_bid(&book), "4@100.0");
        assert_eq!(book.apply(&futures(120, 130, 115, &[])), Outcome::Gap);
        assert!(!book.is_synced());
    }

    #[test]
    fn crossed_books_are_reported_until_they_uncross() {
        let mut book = DepthBook::default();
        book.apply(&snapshot(1));
        assert_eq!(book.apply(&spot(2, 2, &[("101.0", "1")])), Outcome::Crossed);
        assert_eq!(book.apply(&spot(3, 3, &[("101.0", "0")])), Outcome::Updated);
    }

    #[test]
    fn unsequenced_updates_need_a_snapshot_first() {
        let mut book = DepthBook::default();
        let update = message(Sequence::Unsequenced, &[("99.5", "1")], &[]);
        assert_eq!(book.apply(&update), Outcome::Outdated);
        let mut snap = snapshot(0);
        snap.last_update_id = None;
        assert_eq!(book.apply(&snap), Outcome::Updated);
        assert_eq!(book.apply(&update), Outcome::Updated);
        assert_eq!(book.len(), (3, 2));
    }

    #[test]
    fn a_price_the_book_cannot_hold_clears_it_until_the_next_snapshot() {
        let mut book = DepthBook::default();
        book.apply(&snapshot(1));
        let huge = "79228162514264337593543950335";
        assert_eq!(
            book.apply(&spot(2, 2, &[("99.5", "1"), (huge, "1")])),
            Outcome::PriceOutOfRange
        );
        assert!(!book.is_synced());
        assert!(book.is_empty(), "nothing of the message is kept");
        assert_eq!(book.pending(), 0, "a diff that cannot apply is not kept");
        let mut bad_snapshot = snapshot(3);
        bad_snapshot.asks.push(level(huge, "1"));
        assert_eq!(book.apply(&bad_snapshot), Outcome::PriceOutOfRange);
        assert!(!book.is_synced());
        assert_eq!(book.apply(&snapshot(4)), Outcome::Updated);
        assert_eq!(best_bid(&book), "1@100.0");
    }

    #[test]
    fn the_pending_buffer_is_bounded() {
        let mut book = DepthBook::new(4, DEFAULT_MAX_BOOK_LEVELS);
        for i in 0..10 {
            book.apply(&spot(i * 10, i * 10 + 9, &[]));
        }
        assert_eq!(book.pending(), 4);
        // The oldest were dropped, so a snapshot from before them cannot bridge.
        assert_eq!(book.apply(&snapshot(5)), Outcome::Gap);
    }

    #[test]
    fn the_pending_buffer_is_bounded_in_levels_too() {
        let mut book = DepthBook::default();
        let price = |i: usize| format!("{}.5", i + 1);
        let prices: Vec<String> = (0..MAX_PENDING_LEVELS / 3 + 1).map(price).collect();
        let levels: Vec<(&str, &str)> = prices.iter().map(|p| (p.as_str(), "1")).collect();
        // Three diffs of a third of the levels and one more do not fit.
        for i in 0..3 {
            assert_eq!(
                book.apply(&spot(i * 10, i * 10 + 9, &levels)),
                Outcome::Buffered
            );
        }
        assert_eq!(book.pending(), 2);
        let held: usize = book.pending.iter().map(|m| m.bids.len()).sum();
        assert!(held <= MAX_PENDING_LEVELS);
        // A diff larger than the whole buffer by itself is not kept.
        let prices: Vec<String> = (0..=MAX_PENDING_LEVELS).map(price).collect();
        let huge: Vec<(&str, &str)> = prices.iter().map(|p| (p.as_str(), "1")).collect();
        assert_eq!(book.apply(&spot(30, 39, &huge)), Outcome::Buffered);
        assert_eq!(book.pending(), 2);
        // Emptied messages give a huge diff's memory back.
        book.apply(&snapshot(1_000));
        assert!(book.spare.iter().all(|m| m.bids.capacity() <= SPARE_LEVELS));
    }

    #[test]
    fn published_versions_hold_only_the_top_levels() {
        let mut book = DepthBook::default();
        book.apply(&snapshot(1));
        let symbol: Arc<str> = Arc::from("BTCUSDT");
        let published = book.publish(&symbol, 1, 1, 5);
        assert_eq!(published.bids.len(), 1);
        assert_eq!(published.asks[0], level("101.0", "1"));
        assert_eq!(depth_index(10, 100), Some(2));
        assert_eq!(depth_index(500, 100), None);
        assert_eq!(depth_index(7, 100), None);
    }
}
