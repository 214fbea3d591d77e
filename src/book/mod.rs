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
use depth::Outcome;

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
    /// The version number: the updates applied so far, 1 for the first
    /// (a version folding several updates counts each of them).
    pub seq: u64,
    pub bid: Option<Level>,
    pub ask: Option<Level>,
    pub last: Option<Level>,
    /// Venue time of the update that made this version, if the venue stamps one.
    pub exchange_ts_ns: Option<i64>,
    /// Wall-clock time this service took the update in (for a fold, when it
    /// began taking in the batch the updates came in: never later).
    pub ingest_ts_ns: i64,
    encoded: OnceLock<Box<[u8]>>,
}

/// Updates of one symbol taken in together and published as one version.
/// A replay reading a backlog folds what it read at once, so that versions
/// nobody could have seen are neither built nor published; the version's
/// `seq` still counts every update, so clients see them as `skipped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fold {
    updates: u64,
    /// The best bid and ask, when an update set them; either side may be
    /// `None`, as a book's top is when that side of the book is empty.
    top: Option<Top>,
    last: Option<Level>,
    /// The last update's venue time (`None` if it had none).
    exchange_ts_ns: Option<i64>,
}

impl Fold {
    /// A fold of one update.
    pub fn of(tick: &Tick) -> Self {
        let mut fold = Self::default();
        fold.add(tick);
        fold
    }

    /// Folds in the next update: its fields replace the ones it sets.
    pub fn add(&mut self, tick: &Tick) {
        match tick.update {
            BookUpdate::Quote {
                bid,
                bid_size,
                ask,
                ask_size,
            } => {
                let bid = Level {
                    price: bid,
                    size: bid_size,
                };
                let ask = Level {
                    price: ask,
                    size: ask_size,
                };
                self.top = Some((Some(bid), Some(ask)));
            }
            BookUpdate::Trade { price, size } => self.last = Some(Level { price, size }),
        }
        self.exchange_ts_ns = tick.exchange_ts_ns;
        self.updates += 1;
    }

    /// A fold of one new top of book taken from a depth book.
    pub fn of_top(top: Top, exchange_ts_ns: Option<i64>) -> Self {
        let mut fold = Self::default();
        fold.add_top(top, exchange_ts_ns);
        fold
    }

    /// Folds in a new top of book taken from a depth book (see
    /// [`TopSource`]): a `None` side empties it.
    pub fn add_top(&mut self, top: Top, exchange_ts_ns: Option<i64>) {
        self.top = Some(top);
        self.exchange_ts_ns = exchange_ts_ns;
        self.updates += 1;
    }

    /// Number of updates folded in.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Whether nothing has been folded in.
    pub fn is_empty(&self) -> bool {
        self.updates == 0
    }
}

/// A best bid and ask; either side `None` where that side of the book is empty.
pub type Top = (Option<Level>, Option<Level>);

/// Which of a symbol's two sources of a best bid and ask wins, where it has
/// both quotes and a depth book.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TopRule {
    /// Quotes, from the symbol's first; the book's top until then. For
    /// venues whose quotes come on every change of the top (Binance's
    /// `bookTicker`), sooner than their depth diffs, which come in batches
    /// (every 100 ms on Binance spot).
    #[default]
    QuotesFirst,
    /// The book's top while the book is in sync; quotes only while it is
    /// not. For venues whose quotes lag the book (Coinbase's `ticker` comes
    /// with trades only, and its 2021 one had no sizes at all).
    BookFirst,
}

/// Where a symbol's best bid and ask come from, by its [`TopRule`]; a
/// symbol with no book has only its quotes.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopSource {
    rule: TopRule,
    quoted: bool,
    /// The depth book's top last taken, while the book is the source.
    taken: Option<Top>,
}

impl TopSource {
    pub fn new(rule: TopRule) -> Self {
        Self {
            rule,
            ..Self::default()
        }
    }

    /// Whether an update of the symbol's own is to be applied: not a quote
    /// while the book's top stands for it by [`TopRule::BookFirst`].
    pub fn takes(&mut self, update: &BookUpdate) -> bool {
        if !matches!(update, BookUpdate::Quote { .. }) {
            return true;
        }
        self.quoted = true;
        !(self.rule == TopRule::BookFirst && self.taken.is_some())
    }

    /// Whether the book's top stands for the symbol's best bid and ask.
    fn book_is_source(&self) -> bool {
        self.rule == TopRule::BookFirst || !self.quoted
    }

    /// Given the depth book's top after a message that left it consistent,
    /// the top to take as the symbol's best bid and ask: `None` when its
    /// quotes are the source or the top has not moved (a change to deeper
    /// levels makes no version of the ticker).
    pub fn take_from_depth(&mut self, top: Top) -> Option<Top> {
        if !self.book_is_source() || self.taken == Some(top) {
            return None;
        }
        self.taken = Some(top);
        Some(top)
    }

    /// After a depth message had `outcome` on the symbol's book, whose best
    /// levels are now `best`: the top to publish as the symbol's best bid
    /// and ask, if any (see [`Self::take_from_depth`], [`Self::book_lost`]).
    pub fn after_depth(&mut self, outcome: Outcome, best: Top) -> Option<Top> {
        match outcome {
            // Far levels of a book cut short are in doubt, not the best ones.
            Outcome::Updated | Outcome::CutShort => self.take_from_depth(best),
            Outcome::Gap | Outcome::Crossed | Outcome::PriceOutOfRange => self.book_lost(),
            Outcome::Buffered | Outcome::Outdated => None,
        }
    }

    /// The book left sync (a gap, a crossed book, a price it cannot hold),
    /// or was dropped with the feed's connection: the top taken from it is
    /// no longer known, so the best bid and ask are emptied (the `Some` to
    /// publish; a trade before the book is in sync again must not serve
    /// them as live) until the book is in sync again, or a quote comes.
    pub fn book_lost(&mut self) -> Option<Top> {
        let was_taken = self.taken.take();
        let empty = (None, None);
        (self.book_is_source() && was_taken.is_some_and(|top| top != empty)).then_some(empty)
    }
}

impl Snapshot {
    /// The version that follows `previous` (or the first one) after the
    /// updates in `fold`.
    pub fn next(
        previous: Option<&Snapshot>,
        symbol: &Arc<str>,
        fold: &Fold,
        ingest_ts_ns: i64,
    ) -> Snapshot {
        let (bid, ask) = fold
            .top
            .or(previous.map(|p| (p.bid, p.ask)))
            .unwrap_or_default();
        let last = fold.last.or(previous.and_then(|p| p.last));
        Snapshot {
            symbol: symbol.clone(),
            seq: previous.map_or(0, |p| p.seq) + fold.updates,
            bid,
            ask,
            last,
            exchange_ts_ns: fold.exchange_ts_ns,
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
        let first = Snapshot::next(None, &symbol, &Fold::of(&quote("61800.20", "61800.30")), 10);
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
        let second = Snapshot::next(Some(&first), &symbol, &Fold::of(&trade), 11);
        assert_eq!(second.seq, 2);
        assert_eq!(second.bid, first.bid, "a trade keeps the quote");
        assert_eq!(second.exchange_ts_ns, None);
        let last = second.last.map(|l| l.price.to_string());
        assert_eq!(last.as_deref(), Some("61800.30"));
    }

    #[test]
    fn a_fold_is_one_version_counting_every_update() {
        let symbol: Arc<str> = Arc::from("BTCUSDT");
        let first = Snapshot::next(None, &symbol, &Fold::of(&quote("1.0", "2.0")), 10);
        let mut fold = Fold::default();
        assert!(fold.is_empty());
        let trade = Tick {
            recv_ts_ns: 3,
            exchange_ts_ns: Some(7),
            update: BookUpdate::Trade {
                price: dec("1.5"),
                size: dec("0.1"),
            },
        };
        fold.add(&trade);
        fold.add(&quote("1.1", "2.1"));
        fold.add(&Tick {
            exchange_ts_ns: None,
            ..quote("1.2", "2.2")
        });
        assert_eq!(fold.updates(), 3);
        let next = Snapshot::next(Some(&first), &symbol, &fold, 11);
        assert_eq!(next.seq, 4, "the first version plus three updates");
        assert_eq!(next.bid, Some(level("1.2", "1.0")), "the last quote wins");
        assert_eq!(
            next.last,
            Some(level("1.5", "0.1")),
            "a quote keeps the trade"
        );
        assert_eq!(next.exchange_ts_ns, None, "the last update's venue time");
        assert_eq!(next.ingest_ts_ns, 11);
    }

    #[test]
    fn a_top_from_depth_replaces_both_sides_and_keeps_the_trade() {
        let symbol: Arc<str> = Arc::from("BTC-USD");
        let first = Snapshot::next(None, &symbol, &Fold::of(&quote("1.0", "2.0")), 10);
        let mut fold = Fold::default();
        fold.add(&Tick {
            recv_ts_ns: 3,
            exchange_ts_ns: None,
            update: BookUpdate::Trade {
                price: dec("1.5"),
                size: dec("0.1"),
            },
        });
        fold.add_top((Some(level("1.1", "4")), None), Some(9));
        let next = Snapshot::next(Some(&first), &symbol, &fold, 11);
        assert_eq!(next.seq, 3);
        assert_eq!(next.bid, Some(level("1.1", "4")));
        assert_eq!(next.ask, None, "an empty side is no ask, not the old one");
        assert_eq!(next.last, Some(level("1.5", "0.1")));
        assert_eq!(next.exchange_ts_ns, Some(9));
        let trade_only = Snapshot::next(
            Some(&next),
            &symbol,
            &Fold::of(&Tick {
                recv_ts_ns: 4,
                exchange_ts_ns: None,
                update: BookUpdate::Trade {
                    price: dec("1.6"),
                    size: dec("0.2"),
                },
            }),
            12,
        );
        assert_eq!(trade_only.bid, next.bid, "a trade keeps the top");
        assert_eq!(trade_only.ask, None);
    }

    #[test]
    fn quotes_first_takes_the_books_top_only_until_the_first_quote() {
        let mut source = TopSource::new(TopRule::QuotesFirst);
        let top = (Some(level("1", "1")), Some(level("2", "1")));
        assert_eq!(source.take_from_depth(top), Some(top));
        assert_eq!(source.take_from_depth(top), None, "an unmoved top");
        assert!(source.takes(&quote("1.5", "9").update));
        let moved = (Some(level("1.1", "1")), top.1);
        assert_eq!(source.take_from_depth(moved), None, "quotes win now");
        assert_eq!(source.book_lost(), None, "the quotes' top stands");
    }

    #[test]
    fn book_first_takes_quotes_only_while_the_book_is_out_of_sync() {
        let mut source = TopSource::new(TopRule::BookFirst);
        assert!(source.takes(&quote("1.5", "9").update), "no book yet");
        let top = (Some(level("1", "1")), Some(level("2", "1")));
        assert_eq!(source.take_from_depth(top), Some(top));
        assert!(
            !source.takes(&quote("1.6", "9").update),
            "the book's top stands"
        );
        let trade = BookUpdate::Trade {
            price: dec("1"),
            size: dec("1"),
        };
        assert!(source.takes(&trade), "trades always count");
        assert_eq!(source.book_lost(), Some((None, None)), "emptied");
        assert!(
            source.takes(&quote("1.7", "9").update),
            "quotes while out of sync"
        );
        assert_eq!(source.take_from_depth(top), Some(top), "taken afresh");
        assert_eq!(source.book_lost(), Some((None, None)), "emptied");
        assert_eq!(source.take_from_depth(top), Some(top), "a new book's top");
    }

    #[test]
    fn prices_keep_their_scale() {
        let symbol: Arc<str> = Arc::from("BTCUSDT");
        let snap = Snapshot::next(
            None,
            &symbol,
            &Fold::of(&quote("61800.20", "61837.64000000")),
            10,
        );
        let text = String::from_utf8_lossy(snap.ticker_prefix()).into_owned();
        assert!(text.contains(r#""bid":"61800.20""#), "{text}");
        assert!(text.contains(r#""ask":"61837.64000000""#), "{text}");
        assert!(text.contains(r#""ask_size":"2.50""#), "{text}");
    }
}
