//! Normalize: raw venue messages → [`Tick`]s, the one event shape the book understands.
//!
//! Every parser here is I/O-free: it takes the bytes of one message (a line of a
//! capture, or a frame from a live upstream) and returns what it means. JSON is
//! read with simd-json, except flat Binance `bookTicker`, `trade` and depth
//! messages, which a scanner reads straight from the bytes (`flat`). Prices and sizes are
//! exact decimals, so `"61800.20"` keeps its scale and prints back exactly as
//! received.

use rust_decimal::Decimal;

pub mod binance;
pub mod coinbase;
pub mod depth;
mod flat;
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
    /// A tick for `symbol`, unless a size in it is below zero: no venue
    /// quotes or trades a negative quantity, so such a message is malformed
    /// whichever format carried it.
    pub fn tick(
        symbol: &'a str,
        recv_ts_ns: i64,
        exchange_ts_ns: Option<i64>,
        update: BookUpdate,
    ) -> Result<Self, ParseError> {
        // Below zero: `-0` is a size of zero.
        let negative = |size: &Decimal| *size < Decimal::ZERO;
        let has_negative = match &update {
            BookUpdate::Quote {
                bid_size, ask_size, ..
            } => negative(bid_size) || negative(ask_size),
            BookUpdate::Trade { size, .. } => negative(size),
        };
        if has_negative {
            return Err(ParseError::Line("negative size"));
        }
        Ok(Parsed::Tick {
            symbol,
            tick: Tick {
                recv_ts_ns,
                exchange_ts_ns,
                update,
            },
        })
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
    /// A recording's note that the recorded feed lost its connection: the
    /// books it kept start over from the next connection's snapshot.
    Disconnect,
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
    /// A tickwire NDJSON header of a format version this build cannot read.
    #[error("tickwire_replay version {0} (this build reads version {version})", version = native::VERSION)]
    UnsupportedVersion(i64),
    #[error("malformed line: {0}")]
    Line(&'static str),
    /// A well-formed tick for a symbol its source was not asked for.
    #[error("a tick for {0:?}, a symbol this feed did not subscribe to")]
    UnknownSymbol(String),
}

/// Parses an exact decimal, naming the field on failure.
pub(crate) fn decimal(field: &'static str, value: &str) -> Result<Decimal, ParseError> {
    match plain_decimal(value.as_bytes()) {
        Some(plain) => Ok(plain),
        None => general_decimal(field, value),
    }
}

/// As [`decimal`], from bytes: the scanners' strings are checked as the venue
/// form first, which needs no UTF-8 check; bytes that are not UTF-8 are an
/// error.
pub(crate) fn decimal_bytes(field: &'static str, value: &[u8]) -> Result<Decimal, ParseError> {
    if let Some(plain) = plain_decimal(value) {
        return Ok(plain);
    }
    let text = std::str::from_utf8(value).map_err(|_| ParseError::Decimal {
        field,
        value: String::from_utf8_lossy(value).chars().take(40).collect(),
    })?;
    general_decimal(field, text)
}

/// What the venue form leaves out: more than 19 digits, a negative zero,
/// `1.` or `.5`, or malformed text. Only `-`, digits and `.` are taken, so
/// text that `rust_decimal` would also read — `+1`, `1_000` — is refused
/// rather than served as a number nobody wrote.
fn general_decimal(field: &'static str, value: &str) -> Result<Decimal, ParseError> {
    let unsigned = value.strip_prefix('-').unwrap_or(value);
    let parsed = unsigned
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.')
        .then(|| Decimal::from_str_exact(value).ok())
        .flatten();
    parsed.ok_or_else(|| ParseError::Decimal {
        field,
        value: value.chars().take(40).collect(),
    })
}

/// The decimal in the JSON string that starts at `at` (its opening quote),
/// and the index past its closing quote, as the flat scanner's string and
/// [`decimal_bytes`] would read it; `None` where either would not. A string in
/// the venue form is read in one pass.
pub(crate) fn decimal_string(bytes: &[u8], at: usize) -> Option<(Decimal, usize)> {
    if bytes.get(at) == Some(&b'"') {
        let contents = bytes.get(at + 1..)?;
        if let Some((plain, length)) = plain_decimal_prefix(contents) {
            if contents.get(length) == Some(&b'"') {
                return Some((plain, at + length + 2));
            }
        }
    }
    // The scanner's strings are ASCII.
    let (contents, end) = flat::scan_string(bytes, at)?;
    let text = std::str::from_utf8(bytes.get(contents)?).ok()?;
    Some((general_decimal("", text).ok()?, end))
}

/// The form venues write prices and sizes in (`61496.50`, `-0.5`, `3`: an
/// optional `-`, digits, optionally `.` and more digits, at most 19 digits in
/// all), read straight into a 64-bit mantissa. A depth diff carries a hundred
/// such numbers, and this is several times cheaper than the general parser,
/// which takes everything else (exponents, `+`, `_`, long or malformed text)
/// and gives the same value and scale for this form.
fn plain_decimal(text: &[u8]) -> Option<Decimal> {
    match plain_decimal_prefix(text)? {
        (plain, length) if length == text.len() => Some(plain),
        _ => None,
    }
}

/// The venue-form decimal that `text` starts with, and its length: up to the
/// first byte that is not a digit or the first `.`. `None` where that prefix
/// is not in the venue form.
fn plain_decimal_prefix(text: &[u8]) -> Option<(Decimal, usize)> {
    let negative = text.first() == Some(&b'-');
    let start = usize::from(negative);
    let mut mantissa: u64 = 0;
    let mut point = None;
    let mut end = start;
    while let Some(&byte) = text.get(end) {
        if byte.is_ascii_digit() {
            // Wraps only past 19 digits, which are refused below.
            mantissa = mantissa
                .wrapping_mul(10)
                .wrapping_add(u64::from(byte - b'0'));
        } else if byte == b'.' && point.is_none() {
            point = Some(end);
        } else {
            break;
        }
        end += 1;
        if end - start > 20 {
            return None;
        }
    }
    // A point needs digits on both sides.
    if point.is_some_and(|at| at == start || at + 1 == end) {
        return None;
    }
    let count = end - start - usize::from(point.is_some());
    // 19 digits always fit a u64; a negative zero keeps the general parser's sign.
    if count == 0 || count > 19 || (negative && mantissa == 0) {
        return None;
    }
    let scale = point.map_or(0, |at| end - at - 1) as u32;
    let decimal = Decimal::from_parts(mantissa as u32, (mantissa >> 32) as u32, 0, negative, scale);
    Some((decimal, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same value, scale and text as `rust_decimal`'s parser, or refused by
    /// both; `+` and `_`, which it takes, are refused.
    fn check(text: &str) {
        let general = Decimal::from_str_exact(text)
            .ok()
            .filter(|_| !text.contains(['+', '_']))
            .ok_or(());
        match (decimal("x", text), general) {
            (Ok(fast), Ok(general)) => {
                assert_eq!(fast, general, "{text}");
                assert_eq!(fast.scale(), general.scale(), "{text}");
                assert_eq!(fast.to_string(), general.to_string(), "{text}");
            }
            (Err(_), Err(_)) => {}
            (fast, general) => panic!("{text}: {fast:?} vs {general:?}"),
        }
        // The same inside a JSON string, what follows it left alone.
        let quoted = format!("\"{text}\"]");
        match (decimal_string(quoted.as_bytes(), 0), general) {
            (Some((fast, end)), Ok(general)) => {
                assert_eq!(end, text.len() + 2, "{text}");
                assert_eq!(fast, general, "{text}");
                assert_eq!(fast.scale(), general.scale(), "{text}");
            }
            (None, Err(_)) => {}
            (fast, general) => panic!("\"{text}\": {fast:?} vs {general:?}"),
        }
    }

    #[test]
    fn plain_decimals_read_like_the_general_parser() {
        for text in [
            "61496.50",
            "0.000",
            "-0.5",
            "3",
            "007.10",
            "-0",
            "-0.00",
            "1.",
            ".5",
            "-",
            "",
            "1.2.3",
            "1e5",
            "+1",
            "1_000",
            "1_0.5",
            "-+1",
            "+.5",
            "9999999999999999999",
            "99999999999999999999",
            "999999999.9999999999",
            "0.0000000000000000001",
            "18446744073709551616",
            "-9223372036854775808",
            "12a",
            " 1",
        ] {
            check(text);
        }
        assert!(
            plain_decimal(b"61496.50").is_some(),
            "the venue form takes the fast path"
        );
        assert_eq!(
            plain_decimal_prefix(b"61496.50\"").map(|(_, length)| length),
            Some(8),
            "and in a string too"
        );
        for text in [r#""1"#, r#"1""#, r#""1\"""#, "\"1\u{e9}\""] {
            assert_eq!(decimal_string(text.as_bytes(), 0), None, "{text}");
        }
        let mut x: u64 = 1;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let digits = (x >> 59) as usize + 1;
            let mut text: String = (0..digits)
                .map(|i| char::from(b'0' + ((x >> (i * 3 % 60)) % 10) as u8))
                .collect();
            if (x >> 20) % 3 > 0 {
                text.insert((x >> 24) as usize % (digits + 1), '.');
            }
            if (x >> 30) % 4 == 0 {
                text.insert(0, '-');
            }
            check(&text);
        }
    }
}
