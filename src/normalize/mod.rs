//! Normalize: raw venue messages → [`Tick`]s, the one event shape the book understands.
//!
//! Every parser here is I/O-free: it takes the bytes of one message (a line of a
//! capture, or a frame from a live upstream) and returns what it means. Prices and
//! sizes are parsed with [`Decimal::from_str_exact`], so `"61800.20"` keeps its
//! scale and prints back exactly as received.

use rust_decimal::Decimal;

pub mod binance;
pub mod coinbase;
pub mod depth;
pub mod native;
pub mod tardis;

/// One normalized market event for one symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    /// When the recorder (or this service, for a live feed) received the message,
    /// Unix-epoch nanoseconds. Replay pacing and merging follow this clock.
    pub recv_ts_ns: i64,
    /// The venue's own event time, if the message carries one.
    pub exchange_ts_ns: Option<i64>,
    pub update: BookUpdate,
}

/// What a tick changes in the top-of-book snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BookUpdate {
    /// A new best bid and ask.
    Quote {
        bid: Decimal,
        bid_size: Decimal,
        ask: Decimal,
        ask_size: Decimal,
    },
    /// A trade printed.
    Trade { price: Decimal, size: Decimal },
}

/// What one message turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A tick for `symbol` (borrowed from the message bytes).
    Tick { symbol: &'a str, tick: Tick },
    /// A well-formed message this stage recognises but the top of book does not use
    /// (depth diffs, a REST depth snapshot, a file header). Not malformed.
    Recognised(Recognised),
}

impl<'a> Parsed<'a> {
    /// A tick for `symbol`.
    pub fn tick(
        symbol: &'a str,
        recv_ts_ns: i64,
        exchange_ts_ns: Option<i64>,
        update: BookUpdate,
    ) -> Self {
        Parsed::Tick {
            symbol,
            tick: Tick {
                recv_ts_ns,
                exchange_ts_ns,
                update,
            },
        }
    }
}

/// Well-formed messages that carry no top-of-book change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recognised {
    DepthUpdate,
    DepthSnapshot,
    Header,
    /// A venue's acknowledgement of a subscription (Coinbase `subscriptions`).
    Subscriptions,
    /// A venue keep-alive (Coinbase `heartbeat`).
    Heartbeat,
    /// A recorder's note in a capture: a connection opened, or a message the
    /// client sent (Coinbase captures' `wss://...` lines).
    ConnectionEvent,
    /// An older Coinbase `ticker` (2021 captures): best bid and ask without sizes,
    /// so no quote, and a trade that the matching `match` message already carries.
    TickerWithoutSizes,
}

/// Why a message could not be normalized. The caller counts it and moves on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("missing or mistyped field `{0}`")]
    Field(&'static str),
    #[error("invalid decimal in `{field}`: {value:?}")]
    Decimal { field: &'static str, value: String },
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("malformed line: {0}")]
    Line(&'static str),
}

/// Parses an exact decimal, naming the field on failure.
pub(crate) fn decimal(field: &'static str, value: &str) -> Result<Decimal, ParseError> {
    Decimal::from_str_exact(value).map_err(|_| ParseError::Decimal {
        field,
        value: value.chars().take(40).collect(),
    })
}
