//! Binance WebSocket messages (spot and USD-M futures) and hftbacktest-style captures.
//!
//! A message may arrive wrapped in a combined-stream envelope
//! (`{"stream":"btcusdt@bookTicker","data":{..}}`) or bare, as a single-stream
//! connection delivers it; both are accepted. A capture line is
//! `<receive time, ns since epoch> <raw message>`.

use std::cell::RefCell;

use simd_json::prelude::*;
use simd_json::tape::{Object, Value};
use simd_json::{Buffers, Tape};

use super::depth::{DepthMessage, Sequence};
use super::flat::{self, FlatObject, Scalar};
use super::{decimal, decimal_bytes, decimal_string, BookUpdate, ParseError, Parsed, Recognised};
use crate::book::Level;

/// Parses one raw Binance message received at `recv_ts_ns`.
///
/// `bookTicker` (with or without the `e` field spot omits) becomes a quote,
/// `trade` a trade; depth diffs and REST depth snapshots are recognised but carry
/// no top-of-book change. simd-json unescapes in place, hence `&mut`.
pub fn parse_message(json: &mut [u8], recv_ts_ns: i64) -> Result<Parsed<'_>, ParseError> {
    if let Some(flat) = flat_message(json, recv_ts_ns, None) {
        return flat.parsed(json);
    }
    with_tape(json, |root| parse_root(root, recv_ts_ns, None))
}

/// As [`parse_message`], and also decodes the levels of a depth message into
/// `depth` (cleared first). When the result is
/// `Recognised(DepthUpdate | DepthSnapshot)`, `depth` holds that message.
pub fn parse_message_with_depth<'a>(
    json: &'a mut [u8],
    recv_ts_ns: i64,
    depth: &mut DepthMessage,
) -> Result<Parsed<'a>, ParseError> {
    depth.clear();
    if let Some(flat) = flat_message(json, recv_ts_ns, Some(depth)) {
        return flat.parsed(json);
    }
    // The flat path may have decoded part of a message before giving it up.
    depth.clear();
    with_tape(json, |root| parse_root(root, recv_ts_ns, Some(depth)))
}

/// Parses one capture line, `<receive time ns> <raw message>`.
pub fn parse_capture_line(line: &mut [u8]) -> Result<Parsed<'_>, ParseError> {
    let (recv_ts_ns, json) = split_capture_line(line)?;
    parse_message(json, recv_ts_ns)
}

/// As [`parse_capture_line`], decoding depth messages into `depth` (see
/// [`parse_message_with_depth`]).
pub fn parse_capture_line_with_depth<'a>(
    line: &'a mut [u8],
    depth: &mut DepthMessage,
) -> Result<Parsed<'a>, ParseError> {
    let (recv_ts_ns, json) = split_capture_line(line)?;
    parse_message_with_depth(json, recv_ts_ns, depth)
}

fn split_capture_line(line: &mut [u8]) -> Result<(i64, &mut [u8]), ParseError> {
    // An i64 has at most 19 digits, so a missing separator is found without
    // scanning a 40 KB line.
    let space = line
        .iter()
        .take(21)
        .position(|&b| b == b' ')
        .ok_or(ParseError::Line(
            "expected `<receive time ns> <json>`: no space after the timestamp",
        ))?;
    let (ts, rest) = line.split_at_mut(space);
    let recv_ts_ns = parse_digits(ts).ok_or(ParseError::Line(
        "receive time is not a non-negative integer of nanoseconds",
    ))?;
    Ok((recv_ts_ns, rest.get_mut(1..).unwrap_or_default()))
}

/// What the flat scanner read: a `bookTicker` or `trade`, its symbol still a
/// position in the message (so the message is not borrowed until it is known
/// to be one), or a depth message.
enum FlatMessage {
    Tick {
        symbol: std::ops::Range<usize>,
        recv_ts_ns: i64,
        exchange_ts_ns: Option<i64>,
        update: BookUpdate,
    },
    Depth(Recognised),
}

impl FlatMessage {
    fn parsed(self, json: &[u8]) -> Result<Parsed<'_>, ParseError> {
        match self {
            FlatMessage::Tick {
                symbol,
                recv_ts_ns,
                exchange_ts_ns,
                update,
            } => {
                // The scanner only takes ASCII strings, so the symbol is valid UTF-8.
                let symbol = json
                    .get(symbol)
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .unwrap_or_default();
                Parsed::tick(symbol, recv_ts_ns, exchange_ts_ns, update)
            }
            FlatMessage::Depth(recognised) => Ok(Parsed::Recognised(recognised)),
        }
    }
}

/// The common messages, `{"stream":"…","data":{…}}`-wrapped or bare, when
/// they are flat ([`flat`]): a `bookTicker` (spot's, without `e`, named by its
/// stream), a `trade`, a `depthUpdate` or a REST depth snapshot whose fields
/// all read cleanly, the depth message's levels decoded into `depth` when
/// given. `None` for anything else, errors included, so the full parser
/// decides, exactly as if this did not exist.
fn flat_message(
    json: &[u8],
    recv_ts_ns: i64,
    depth: Option<&mut DepthMessage>,
) -> Option<FlatMessage> {
    const STREAM: &[u8] = br#"{"stream":"#;
    const DATA: &[u8] = br#","data":"#;
    let mut payload = FlatObject::default();
    let (stream, end) = if json.starts_with(STREAM) {
        // The full parser takes `stream` and `data` from an object with any
        // other fields as well; this only from the two alone, in this order.
        let (stream, after) = flat::scan_string(json, STREAM.len())?;
        let at = after + DATA.len();
        (json.get(after..at)? == DATA).then_some(())?;
        let end = flat::scan_object(json, at, &mut payload)?;
        (Some(stream), flat::expect(json, end, b'}')?)
    } else {
        (None, flat::scan_object(json, 0, &mut payload)?)
    };
    let unwrapped_data = stream.is_none() && payload.get(json, "data").is_some();
    if end != json.len() || unwrapped_data {
        return None;
    }
    let fields = FlatFields {
        json,
        payload: &payload,
    };
    if let Some(id) = fields.get("lastUpdateId") {
        let Some(depth) = depth else {
            payload.check_pairs(json)?;
            return Some(FlatMessage::Depth(Recognised::DepthSnapshot));
        };
        depth.last_update_id = Some(u64::try_from(fields.integer(id)?).ok()?);
        depth.sequence = Sequence::Snapshot;
        fields.depth_common(recv_ts_ns, depth)?;
        fields.levels(["bids", "asks"], depth)?;
        return Some(FlatMessage::Depth(Recognised::DepthSnapshot));
    }
    let kind = match fields.get("e") {
        Some(Scalar::Str(range)) => Some(json.get(range.clone())?),
        Some(_) => return None,
        None => None,
    };
    let decimal = |key: &'static str| decimal_bytes(key, fields.string(key)?).ok();
    let update = match (kind, stream) {
        (Some(b"bookTicker"), _) => quote_fields(decimal)?,
        (None, Some(stream)) if json.get(stream.clone())?.ends_with(b"@bookTicker") => {
            quote_fields(decimal)?
        }
        (Some(b"trade"), _) => BookUpdate::Trade {
            price: decimal("p")?,
            size: decimal("q")?,
        },
        (Some(b"depthUpdate"), _) => {
            match depth {
                Some(depth) => fields.depth_update(recv_ts_ns, depth)?,
                None => payload.check_pairs(json)?,
            }
            return Some(FlatMessage::Depth(Recognised::DepthUpdate));
        }
        _ => return None,
    };
    payload.check_pairs(json)?;
    let symbol = match fields.get("s")? {
        Scalar::Str(range) => range.clone(),
        _ => return None,
    };
    let exchange_ts_ns = fields.exchange_ts_ns()?;
    Some(FlatMessage::Tick {
        symbol,
        recv_ts_ns,
        exchange_ts_ns,
        update,
    })
}

/// A flat payload's fields, read the way [`parse_root`] reads the tape's:
/// each accessor is `None` where the full parser would fail or could mean
/// something else.
struct FlatFields<'a> {
    json: &'a [u8],
    payload: &'a FlatObject,
}

impl FlatFields<'_> {
    fn get(&self, key: &str) -> Option<&Scalar> {
        self.payload.get(self.json, key)
    }

    /// A string field's contents (ASCII: the scanner takes nothing else).
    fn string(&self, key: &str) -> Option<&[u8]> {
        match self.get(key)? {
            Scalar::Str(range) => self.json.get(range.clone()),
            _ => None,
        }
    }

    /// A number field that is a non-negative integer fitting an `i64`.
    fn integer(&self, value: &Scalar) -> Option<i64> {
        match value {
            Scalar::Number(range) => parse_digits(self.json.get(range.clone())?),
            _ => None,
        }
    }

    /// `E`, the venue's event time in milliseconds, if present.
    fn exchange_ts_ns(&self) -> Option<Option<i64>> {
        match self.get("E") {
            None => Some(None),
            Some(ms) => Some(Some(self.integer(ms)?.checked_mul(1_000_000)?)),
        }
    }

    fn depth_common(&self, recv_ts_ns: i64, depth: &mut DepthMessage) -> Option<()> {
        depth.recv_ts_ns = recv_ts_ns;
        depth.exchange_ts_ns = self.exchange_ts_ns()?;
        Some(())
    }

    /// As the tape's [`depth_update`].
    fn depth_update(&self, recv_ts_ns: i64, depth: &mut DepthMessage) -> Option<()> {
        let id = |key: &str| u64::try_from(self.integer(self.get(key)?)?).ok();
        let (first, last) = (id("U")?, id("u")?);
        depth.sequence = match self.get("pu") {
            Some(_) => Sequence::Futures {
                first,
                last,
                previous: id("pu")?,
            },
            None => Sequence::Spot { first, last },
        };
        // ASCII, as every string the scanner takes.
        let symbol = std::str::from_utf8(self.string("s")?).ok()?;
        depth.symbol.push_str(symbol);
        self.depth_common(recv_ts_ns, depth)?;
        self.levels(["b", "a"], depth)
    }

    /// As the tape's [`levels`]: the bids' and the asks'
    /// `[["price","size"],...]` under `keys`, and no other pair list left
    /// unread.
    fn levels(&self, keys: [&str; 2], depth: &mut DepthMessage) -> Option<()> {
        for (key, into) in keys.into_iter().zip([&mut depth.bids, &mut depth.asks]) {
            self.payload
                .read_pairs(self.json, key, decimal_string, |price, size| {
                    into.push(Level { price, size });
                    Some(())
                })?;
        }
        self.payload.has_pair_lists(2).then_some(())
    }
}

fn quote_fields(
    decimal: impl Fn(&'static str) -> Option<rust_decimal::Decimal>,
) -> Option<BookUpdate> {
    Some(BookUpdate::Quote {
        bid: decimal("b")?,
        bid_size: decimal("B")?,
        ask: decimal("a")?,
        ask_size: decimal("A")?,
    })
}

fn parse_root<'de>(
    root: Value<'_, 'de>,
    recv_ts_ns: i64,
    depth: Option<&mut DepthMessage>,
) -> Result<Parsed<'de>, ParseError> {
    let root = root
        .as_object()
        .ok_or_else(|| ParseError::Json("message is not a JSON object".into()))?;
    let (stream, payload) = match root.get("data") {
        Some(data) => {
            let stream = match root.get("stream") {
                Some(s) => Some(s.into_string().ok_or(ParseError::Field("stream"))?),
                None => None,
            };
            (stream, data.as_object().ok_or(ParseError::Field("data"))?)
        }
        None => (None, root),
    };

    // The REST snapshot has no event type; its update id is what identifies it.
    if let Some(id) = payload.get("lastUpdateId") {
        if let Some(depth) = depth {
            depth.last_update_id = Some(id.as_u64().ok_or(ParseError::Field("lastUpdateId"))?);
            depth.sequence = Sequence::Snapshot;
            depth_common(&payload, recv_ts_ns, depth)?;
            levels(&payload, "bids", &mut depth.bids)?;
            levels(&payload, "asks", &mut depth.asks)?;
        }
        return Ok(Parsed::Recognised(Recognised::DepthSnapshot));
    }

    let kind = match payload.get("e") {
        Some(e) => e.into_string().ok_or(ParseError::Field("e"))?,
        None if is_spot_book_ticker(stream, &payload) => "bookTicker",
        None => return Err(ParseError::Field("e")),
    };
    match kind {
        "bookTicker" => quote(&payload, recv_ts_ns),
        "trade" => trade(&payload, recv_ts_ns),
        "depthUpdate" => {
            if let Some(depth) = depth {
                depth_update(&payload, recv_ts_ns, depth)?;
            }
            Ok(Parsed::Recognised(Recognised::DepthUpdate))
        }
        other => Err(ParseError::UnknownType(other.chars().take(40).collect())),
    }
}

/// Spot's bookTicker omits `e`; the stream name, or failing that (a bare
/// single-stream payload) its distinctive field set, identifies it.
fn is_spot_book_ticker(stream: Option<&str>, payload: &Object<'_, '_>) -> bool {
    if let Some(stream) = stream {
        return stream.ends_with("@bookTicker");
    }
    payload.get("u").is_some()
        && ["b", "B", "a", "A"]
            .iter()
            .all(|k| payload.get(*k).is_some_and(|v| v.is_str()))
}

fn quote<'de>(payload: &Object<'_, 'de>, recv_ts_ns: i64) -> Result<Parsed<'de>, ParseError> {
    let update = BookUpdate::Quote {
        bid: dec(payload, "b")?,
        bid_size: dec(payload, "B")?,
        ask: dec(payload, "a")?,
        ask_size: dec(payload, "A")?,
    };
    tick(payload, recv_ts_ns, update)
}

fn trade<'de>(payload: &Object<'_, 'de>, recv_ts_ns: i64) -> Result<Parsed<'de>, ParseError> {
    let update = BookUpdate::Trade {
        price: dec(payload, "p")?,
        size: dec(payload, "q")?,
    };
    tick(payload, recv_ts_ns, update)
}

fn tick<'de>(
    payload: &Object<'_, 'de>,
    recv_ts_ns: i64,
    update: BookUpdate,
) -> Result<Parsed<'de>, ParseError> {
    let symbol = payload
        .get("s")
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field("s"))?;
    let exchange_ts_ns = match payload.get("E") {
        Some(ms) => Some(
            ms.as_i64()
                .and_then(|ms| ms.checked_mul(1_000_000))
                .ok_or(ParseError::Field("E"))?,
        ),
        None => None,
    };
    Parsed::tick(symbol, recv_ts_ns, exchange_ts_ns, update)
}

fn dec(payload: &Object<'_, '_>, key: &'static str) -> Result<rust_decimal::Decimal, ParseError> {
    let text = payload
        .get(key)
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field(key))?;
    decimal(key, text)
}

/// A `depthUpdate` diff: spot carries `U`/`u`, USD-M futures also `pu`.
fn depth_update(
    payload: &Object<'_, '_>,
    recv_ts_ns: i64,
    depth: &mut DepthMessage,
) -> Result<(), ParseError> {
    let id = |key: &'static str| {
        payload
            .get(key)
            .and_then(|v| v.as_u64())
            .ok_or(ParseError::Field(key))
    };
    let (first, last) = (id("U")?, id("u")?);
    depth.sequence = match payload.get("pu") {
        Some(_) => Sequence::Futures {
            first,
            last,
            previous: id("pu")?,
        },
        None => Sequence::Spot { first, last },
    };
    let symbol = payload
        .get("s")
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field("s"))?;
    depth.symbol.push_str(symbol);
    depth_common(payload, recv_ts_ns, depth)?;
    levels(payload, "b", &mut depth.bids)?;
    levels(payload, "a", &mut depth.asks)
}

fn depth_common(
    payload: &Object<'_, '_>,
    recv_ts_ns: i64,
    depth: &mut DepthMessage,
) -> Result<(), ParseError> {
    depth.recv_ts_ns = recv_ts_ns;
    depth.exchange_ts_ns = match payload.get("E") {
        Some(ms) => Some(
            ms.as_i64()
                .and_then(|ms| ms.checked_mul(1_000_000))
                .ok_or(ParseError::Field("E"))?,
        ),
        None => None,
    };
    Ok(())
}

/// Decodes `[["price","size"],...]` under `key` into `into`, exactly (Binance
/// depth and Coinbase snapshots share the shape).
pub(super) fn levels(
    payload: &Object<'_, '_>,
    key: &'static str,
    into: &mut Vec<Level>,
) -> Result<(), ParseError> {
    let array = payload
        .get(key)
        .and_then(|v| v.as_array())
        .ok_or(ParseError::Field(key))?;
    for level in array.iter() {
        let pair = level.as_array().ok_or(ParseError::Field(key))?;
        let text = |i: usize| {
            pair.get(i)
                .and_then(|v| v.into_string())
                .ok_or(ParseError::Field(key))
        };
        into.push(Level {
            price: decimal(key, text(0)?)?,
            size: decimal(key, text(1)?)?,
        });
    }
    Ok(())
}

/// Parses an unsigned run of ASCII digits that fits an `i64`.
///
/// Every capture line starts with a 19-digit receive time and most messages
/// carry a 13-digit event time: read a digit at a time, each digit waits for
/// the multiplication before it, so up to 19 digits are read eight at a time
/// (the leading `len % 8` one by one), each group of eight converted without
/// a carried dependency (see [`eight_digits`]). A `u64` holds any 19 digits,
/// so only the result is checked against `i64::MAX`.
pub(crate) fn parse_digits(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() {
        return None;
    }
    if digits.len() > 19 {
        // Only leading zeros could make this fit; not worth a fast path.
        return digits.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit()
                .then(|| acc.checked_mul(10)?.checked_add(i64::from(b - b'0')))?
        });
    }
    let (head, groups) = digits.split_at(digits.len() % 8);
    let mut value = 0u64;
    for &b in head {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    for group in groups.chunks_exact(8) {
        value = value * 100_000_000 + eight_digits(group.try_into().ok()?)?;
    }
    i64::try_from(value).ok()
}

/// The value of eight ASCII digits, or `None` if any byte is not a digit:
/// the digits are one little-endian word, combined in pairs, then fours,
/// then eights by three multiplications.
fn eight_digits(group: [u8; 8]) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let word = u64::from_le_bytes(group);
    // A digit is 0x30..=0x39: its high nibble is 3, and stays 3 when 6 is
    // added (no byte can carry into the next once its high nibble is 3).
    let high_nibbles = 0xF0 * ONES;
    let digits = word & high_nibbles == 0x30 * ONES
        && word.wrapping_add(0x06 * ONES) & high_nibbles == 0x30 * ONES;
    if !digits {
        return None;
    }
    let ones = word - 0x30 * ONES;
    // The first digit is the lowest byte; each step combines neighbours.
    let pairs = (ones * 10 + (ones >> 8)) & 0x00FF_00FF_00FF_00FF;
    let fours = (pairs * 100 + (pairs >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((fours * 10_000 + (fours >> 32)) & 0xFFFF_FFFF)
}

/// Parser buffers and tape kept per thread, so that parsing a message allocates
/// nothing once they have grown to the largest message seen.
struct Scratch {
    buffers: Buffers,
    tape: Tape<'static>,
}

impl Scratch {
    fn parse<'de, R>(
        &mut self,
        json: &'de mut [u8],
        read: impl FnOnce(Value<'_, 'de>) -> Result<R, ParseError>,
    ) -> Result<R, ParseError> {
        let mut tape: Tape<'de> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let out = match simd_json::fill_tape(json, &mut self.buffers, &mut tape) {
            Ok(()) => read(tape.as_value()),
            Err(e) => Err(json_error(&e)),
        };
        self.tape = tape.reset();
        out
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        buffers: Buffers::default(),
        tape: Tape(Vec::new()),
    });
}

/// Parses `json` into a simd-json tape and hands `read` its root value.
///
/// The tape is a flat, already-validated node list whose strings borrow `json`,
/// so walking it is as cheap as a serde derive without forcing one struct shape
/// on messages whose fields change type by event (`b` is a price in bookTicker
/// and an array in depthUpdate). Shared with the native NDJSON parser.
pub(crate) fn with_tape<'de, R>(
    json: &'de mut [u8],
    read: impl FnOnce(Value<'_, 'de>) -> Result<R, ParseError>,
) -> Result<R, ParseError> {
    let mut job = Some((json, read));
    let reused = SCRATCH.try_with(|cell| {
        let mut scratch = cell.try_borrow_mut().ok()?;
        let (json, read) = job.take()?;
        Some(scratch.parse(json, read))
    });
    if let Ok(Some(out)) = reused {
        return out;
    }
    // Only reached during thread teardown or re-entrant use: parse without reuse.
    let Some((json, read)) = job else {
        return Err(ParseError::Json("parser state unavailable".into()));
    };
    let tape = simd_json::to_tape(json).map_err(|e| json_error(&e))?;
    read(tape.as_value())
}

fn json_error(e: &simd_json::Error) -> ParseError {
    // simd-json names its own stages for most malformed input
    // (`InternalError(TapeError)`), which tells a reader nothing; where the
    // parse stopped does.
    let at = match e.character() {
        Some(c) => format!("byte {} ({c:?})", e.index()),
        None => format!("byte {}", e.index()),
    };
    ParseError::Json(format!("parsing stopped at {at}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Tick;
    use rust_decimal::Decimal;

    // Real lines from /work/shared/data/binance (hftbacktest captures, 2024-08-08).
    const SPOT_BOOK: &str = r#"1723161254087891268 {"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000","a":"61837.64000000","A":"1.54698000"}}"#;
    const SPOT_TRADE: &str = r#"1723161254087896568 {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}"#;
    const SPOT_DEPTH: &str = r#"1723161254036059768 {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,"u":50093239207,"b":[["55653.87000000","0.00000000"]],"a":[["61838.04000000","0.32332000"],["61844.30000000","0.40163000"],["61862.50000000","0.05019000"],["61862.51000000","0.00000000"]]}}"#;
    const USDM_BOOK: &str = r#"1723161255088169167 {"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507","a":"61800.30","A":"2.510","T":1723161256313,"E":1723161256313}}"#;
    const USDM_TRADE: &str = r#"1723161255088176367 {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256322,"T":1723161256322,"s":"BTCUSDT","t":5266583935,"p":"61800.30","q":"0.006","X":"MARKET","m":false}}"#;
    const SNAPSHOT: &str = r#"1723161254206652067 {"lastUpdateId":50093239218,"bids":[["61837.63000000","3.78826000"],["61837.62000000","0.61700000"]],"asks":[["61837.64000000","1.54698000"]]}"#;

    fn capture(line: &str) -> Result<Parsed<'static>, ParseError> {
        // Leaked so the borrowed result can outlive the helper; tests only.
        let buf: &'static mut [u8] = Box::leak(line.as_bytes().to_vec().into_boxed_slice());
        parse_capture_line(buf)
    }

    fn quote_of(parsed: &Parsed<'_>) -> (String, String, String, String) {
        match parsed {
            Parsed::Tick {
                tick:
                    Tick {
                        update:
                            BookUpdate::Quote {
                                bid,
                                bid_size,
                                ask,
                                ask_size,
                            },
                        ..
                    },
                ..
            } => (
                bid.to_string(),
                bid_size.to_string(),
                ask.to_string(),
                ask_size.to_string(),
            ),
            other => panic!("expected a quote, got {other:?}"),
        }
    }

    /// What the full (simd-json) parser alone makes of `json`.
    fn full_parse(json: &str, recv_ts_ns: i64) -> String {
        let mut copy = json.as_bytes().to_vec();
        format!(
            "{:?}",
            with_tape(&mut copy, |root| parse_root(root, recv_ts_ns, None))
        )
    }

    /// What the full parser alone makes of `json` with depth decoding, and
    /// the depth message it decoded.
    fn full_parse_with_depth(json: &[u8], recv_ts_ns: i64) -> String {
        let mut copy = json.to_vec();
        let mut depth = DepthMessage::default();
        let parsed = with_tape(&mut copy, |root| {
            parse_root(root, recv_ts_ns, Some(&mut depth))
        });
        format!("{parsed:?} {depth:?}")
    }

    /// What the flat path alone makes of `json`, in the form of
    /// [`full_parse_with_depth`]; `None` where it leaves the message to the
    /// full parser.
    fn flat_parse_with_depth(json: &str, recv_ts_ns: i64) -> Option<String> {
        let mut depth = DepthMessage::default();
        let flat = flat_message(json.as_bytes(), recv_ts_ns, Some(&mut depth))?;
        let parsed = flat.parsed(json.as_bytes());
        Some(format!("{parsed:?} {depth:?}"))
    }

    /// The Binance captures in `replay-data/`.
    const BUNDLED_CAPTURES: [&str; 2] = [
        "binance-spot-btcusdt-20240808.gz",
        "binance-usdm-btcusdt-20240808.gz",
    ];

    /// The lines of a bundled capture (`receive-time json`), decompressed.
    fn bundled_capture_lines(name: &str) -> impl Iterator<Item = String> {
        use std::io::{BufRead as _, BufReader};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("replay-data")
            .join(name);
        let file = std::fs::File::open(path).expect("bundled sample");
        BufReader::new(flate2::read::MultiGzDecoder::new(file))
            .lines()
            .map(|line| line.expect("sample decompresses"))
    }

    #[test]
    fn the_flat_path_reads_every_capture_line_as_the_full_parser_does() {
        for name in BUNDLED_CAPTURES {
            let (mut flat, mut ticks, mut depth) = (0, 0, 0);
            for line in bundled_capture_lines(name) {
                let (ts, json) = line.split_once(' ').expect("a capture line");
                let ts: i64 = ts.parse().expect("a receive time");
                let full = full_parse_with_depth(json.as_bytes(), ts);
                if full.starts_with("Ok(Tick") {
                    ticks += 1;
                }
                if full.starts_with("Ok(Recognised(Depth") {
                    depth += 1;
                }
                if let Some(fast) = flat_parse_with_depth(json, ts) {
                    flat += 1;
                    assert_eq!(fast, full, "{json}");
                }
                // Without depth decoding too.
                if let Some(fast) = flat_message(json.as_bytes(), ts, None) {
                    let fast = format!("{:?}", fast.parsed(json.as_bytes()));
                    assert_eq!(fast, full_parse(json, ts), "{json}");
                }
            }
            assert!(ticks > 1_000, "{name}: {ticks} ticks");
            assert!(depth > 100, "{name}: {depth} depth messages");
            assert_eq!(
                flat,
                ticks + depth,
                "{name}: every tick and depth message of the capture is flat"
            );
        }
    }

    /// Capture lines, damaged byte by byte, mean the same whichever path reads
    /// them: the flat path takes a damaged line only where the full parser
    /// reads it the same, and leaves every other to it.
    #[test]
    fn damaged_capture_lines_mean_what_the_full_parser_says() {
        // Every depth message and every 50th line (mostly tickers) of both
        // samples, the recording's receive time cut off.
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for name in BUNDLED_CAPTURES {
            let sample = bundled_capture_lines(name)
                .enumerate()
                .filter(|(i, line)| i % 50 == 0 || line.contains("depthUpdate"))
                .filter_map(|(_, line)| Some(line.split_once(' ')?.1.as_bytes().to_vec()));
            lines.extend(sample);
        }
        assert!(lines.len() > 2_000, "{} lines", lines.len());
        const BYTES: &[u8] = b"\"[]{},:\\ -.0123456789eE\x7f\xc3";
        let (mut x, mut flat_damaged) = (11u64, 0);
        let mut next = |below: usize| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as usize % below.max(1)
        };
        for line in &lines {
            for _ in 0..8 {
                let mut damaged = line.clone();
                let at = next(damaged.len());
                match next(4) {
                    0 => damaged[at] = BYTES[next(BYTES.len())],
                    1 => drop(damaged.remove(at)),
                    2 => damaged.insert(at, BYTES[next(BYTES.len())]),
                    _ => damaged.truncate(at),
                }
                let (mut copy, mut depth) = (damaged.clone(), DepthMessage::default());
                let parsed = parse_message_with_depth(&mut copy, 9, &mut depth);
                let public = format!("{parsed:?} {depth:?}");
                let full = full_parse_with_depth(&damaged, 9);
                assert_eq!(public, full, "{}", String::from_utf8_lossy(&damaged));
                flat_damaged +=
                    usize::from(flat_message(&damaged, 9, None).is_some() && *line != damaged);
            }
        }
        // Some damage leaves a message valid (a digit for a digit): those
        // still take the flat path.
        assert!(flat_damaged > 100, "{flat_damaged} damaged lines read flat");
    }

    #[test]
    fn depth_messages_off_the_flat_path_mean_what_the_full_parser_says() {
        let ids = r#""e":"depthUpdate","E":1723161256299,"s":"BTCUSDT","U":5,"u":9"#;
        let good = r#"[["61800.20","2.909"],["61800.10","0.000"]]"#;
        let snapshot = r#""lastUpdateId":7,"E":1723161256501,"T":1723161256493"#;
        for (i, json) in [
            format!(r#"{{"stream":"btcusdt@depth@0ms","data":{{{ids},"b":{good},"a":[]}}}}"#),
            format!(r#"{{{ids},"pu":4,"b":[],"a":{good}}}"#),
            format!(r#"{{{snapshot},"bids":{good},"asks":{good}}}"#),
            r#"{"lastUpdateId":7,"bids":[],"asks":[]}"#.to_owned(),
            // Each of these leaves the flat path, some part-way through the levels.
            format!(r#"{{{ids},"b":[["1.5","2"],["x","1"]],"a":[]}}"#),
            format!(r#"{{{ids},"b":[["1.5","2"],["1.6","1e3"]],"a":[]}}"#),
            format!(r#"{{{ids},"b":[["1.5","2","9"]],"a":[]}}"#),
            format!(r#"{{{ids},"b":[["1.5"]],"a":[]}}"#),
            format!(r#"{{{ids},"b":[[1.5,"2"]],"a":[]}}"#),
            format!(r#"{{{ids},"b":[["1.5","2"],],"a":[]}}"#),
            format!(r#"{{{ids},"b":[["1.5", "2"]],"a":[]}}"#),
            format!(r#"{{{ids},"b":[["1.5","2"]]}}"#),
            format!(r#"{{{ids},"b":[["1","]]"],["2","3"]],"a":[]}}"#),
            format!(r#"{{{ids},"b":[],"a":[],"x":[["1","2"]]}}"#),
            format!(r#"{{{ids},"b":[],"a":[],"b":[["1","2"]]}}"#),
            format!(r#"{{{ids},"b":"1.5","a":[]}}"#),
            format!(r#"{{{ids},"pu":"4","b":[],"a":[]}}"#),
            format!(r#"{{{ids},"pu":-4,"b":[],"a":[]}}"#),
            format!(r#"{{{ids},"pu":18446744073709551615,"b":[],"a":[]}}"#),
            format!(r#"{{{ids},"pu":4.0,"b":[],"a":[]}}"#),
            r#"{"e":"depthUpdate","U":5,"u":9,"b":[],"a":[]}"#.to_owned(),
            r#"{"e":"depthUpdate","s":"BTCUSDT","U":5,"b":[],"a":[]}"#.to_owned(),
            r#"{"e":"depthUpdate","s":"BTCUSDT","U":5,"u":9,"E":"1","b":[],"a":[]}"#.to_owned(),
            r#"{"lastUpdateId":-7,"bids":[],"asks":[]}"#.to_owned(),
            r#"{"lastUpdateId":"7","bids":[],"asks":[]}"#.to_owned(),
            r#"{"lastUpdateId":7,"bids":[]}"#.to_owned(),
            r#"{"lastUpdateId":7,"E":1.5,"bids":[],"asks":[]}"#.to_owned(),
            r#"{"lastUpdateId":7,"bids":[["1","2"]],"asks":[["1","2"],["3"]]}"#.to_owned(),
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(
                flat_parse_with_depth(json, 9).is_some(),
                i < 4,
                "only the first four are flat: {json}"
            );
            let mut bytes = json.as_bytes().to_vec();
            let mut depth = DepthMessage::default();
            let parsed = parse_message_with_depth(&mut bytes, 9, &mut depth);
            let parsed = format!("{parsed:?} {depth:?}");
            assert_eq!(parsed, full_parse_with_depth(json.as_bytes(), 9), "{json}");
        }
    }

    #[test]
    fn messages_off_the_flat_path_mean_what_the_full_parser_says() {
        let book = r#""u":1,"s":"BTCUSDT","b":"1.5","B":"2","a":"1.6","A":"3""#;
        for json in [
            format!(r#"{{"stream":"btcusdt@bookTicker","data":{{{book}}}}}"#),
            format!(r#"{{"stream":"btcusdt@depth","data":{{{book}}}}}"#),
            format!(r#"{{"stream":"btcusdt@bookTicker","data":{{"e":7,{book}}}}}"#),
            format!(r#"{{"data":{{"e":"bookTicker",{book}}},"stream":"x"}}"#),
            format!(r#"{{"e":"bookTicker","data":"x",{book}}}"#),
            format!(r#"{{"e":"bookTicker","E":-5,{book}}}"#),
            format!(r#"{{"e":"bookTicker","E":1.5,{book}}}"#),
            format!(r#"{{"e":"bookTicker","E":"1",{book}}}"#),
            format!(r#"{{"e":"bookTicker","lastUpdateId":1,{book}}}"#),
            format!(r#"{{"e":"bookTicker",{book},"b":"9"}}"#),
            format!(r#"{{"e":"bookTicker",{book}}} "#),
            format!(r#"{{"e":"bookTicker","x":[[1]],{book}}}"#),
            format!(r#"{{"e":"bookTicker","x":[["1","2"]],{book}}}"#),
            format!(r#"{{{book}}}"#),
            r#"{"e":"bookTicker","s":"BTCUSDT","b":"x","B":"2","a":"1.6","A":"3"}"#.to_owned(),
            r#"{"e":"trade","s":"BTCUSDT","p":"1.5","q":"1e2","E":3}"#.to_owned(),
            r#"{"e":"trade","s":7,"p":"1.5","q":"2","E":3}"#.to_owned(),
            r#"{"e":"trade","s":"BTCUSDT","p":"1.5","q":"2","E":3}"#.to_owned(),
            r#"{"e":"kline","s":"BTCUSDT"}"#.to_owned(),
        ] {
            let mut bytes = json.as_bytes().to_vec();
            let parsed = format!("{:?}", parse_message(&mut bytes, 9));
            assert_eq!(parsed, full_parse(&json, 9), "{json}");
        }
    }

    #[test]
    fn decimals_keep_their_scale() {
        for text in ["61800.20", "61837.63000000", "0.006", "2.510"] {
            let d: Decimal = decimal("x", text).expect("valid decimal");
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn spot_book_ticker_without_event_type() {
        let parsed = capture(SPOT_BOOK).expect("spot bookTicker parses");
        let Parsed::Tick { symbol, tick } = &parsed else {
            panic!("expected a tick, got {parsed:?}");
        };
        assert_eq!(*symbol, "BTCUSDT");
        assert_eq!(tick.recv_ts_ns, 1_723_161_254_087_891_268);
        assert_eq!(tick.exchange_ts_ns, None);
        assert_eq!(
            quote_of(&parsed),
            (
                "61837.63000000".into(),
                "3.78826000".into(),
                "61837.64000000".into(),
                "1.54698000".into()
            )
        );
    }

    #[test]
    fn bare_spot_book_ticker_is_detected_by_fields() {
        let mut json = br#"{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000","a":"61837.64000000","A":"1.54698000"}"#.to_vec();
        let parsed = parse_message(&mut json, 7).expect("bare spot bookTicker parses");
        assert_eq!(quote_of(&parsed).0, "61837.63000000");
    }

    #[test]
    fn usdm_book_ticker() {
        let parsed = capture(USDM_BOOK).expect("usdm bookTicker parses");
        let Parsed::Tick { symbol, tick } = &parsed else {
            panic!("expected a tick, got {parsed:?}");
        };
        assert_eq!(*symbol, "BTCUSDT");
        assert_eq!(tick.recv_ts_ns, 1_723_161_255_088_169_167);
        assert_eq!(tick.exchange_ts_ns, Some(1_723_161_256_313_000_000));
        assert_eq!(
            quote_of(&parsed),
            (
                "61800.20".into(),
                "2.507".into(),
                "61800.30".into(),
                "2.510".into()
            )
        );
    }

    #[test]
    fn bare_usdm_book_ticker() {
        let mut json = br#"{"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507","a":"61800.30","A":"2.510","T":1723161256313,"E":1723161256313}"#.to_vec();
        let parsed = parse_message(&mut json, 1).expect("bare usdm bookTicker parses");
        assert_eq!(quote_of(&parsed).3, "2.510");
    }

    #[test]
    fn trades() {
        for (line, price, size, e_ms) in [
            (
                SPOT_TRADE,
                "61837.63000000",
                "0.02000000",
                1_723_161_255_343,
            ),
            (USDM_TRADE, "61800.30", "0.006", 1_723_161_256_322),
        ] {
            let parsed = capture(line).expect("trade parses");
            let Parsed::Tick {
                symbol,
                tick:
                    Tick {
                        exchange_ts_ns,
                        update: BookUpdate::Trade { price: p, size: q },
                        ..
                    },
            } = parsed
            else {
                panic!("expected a trade, got {parsed:?}");
            };
            assert_eq!(symbol, "BTCUSDT");
            assert_eq!(p.to_string(), price);
            assert_eq!(q.to_string(), size);
            assert_eq!(exchange_ts_ns, Some(e_ms * 1_000_000));
        }
    }

    #[test]
    fn depth_update_and_snapshot_are_recognised() {
        assert_eq!(
            capture(SPOT_DEPTH),
            Ok(Parsed::Recognised(Recognised::DepthUpdate))
        );
        assert_eq!(
            capture(SNAPSHOT),
            Ok(Parsed::Recognised(Recognised::DepthSnapshot))
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let truncated = &USDM_BOOK[..USDM_BOOK.len() - 20];
        assert!(matches!(capture(truncated), Err(ParseError::Json(_))));
        assert!(matches!(
            capture("1 not json at all"),
            Err(ParseError::Json(_))
        ));
        assert!(matches!(capture("1 [1,2]"), Err(ParseError::Json(_))));
        assert!(matches!(capture("1 "), Err(ParseError::Json(_))));
        // The message says where, not which of the parser's stages gave up.
        let garbled = r#"1 {"e":"bookTicker","u":1,"s":"BTCUSDT","b":"1.0",?}"#;
        let message = capture(garbled).expect_err("refused").to_string();
        assert!(
            message.starts_with("invalid JSON: parsing stopped at byte"),
            "{message}"
        );
        assert!(matches!(capture(""), Err(ParseError::Line(_))));
        assert!(matches!(capture("{\"a\":1}"), Err(ParseError::Line(_))));
        assert!(matches!(capture("12x4 {}"), Err(ParseError::Line(_))));
        assert!(matches!(
            capture("99999999999999999999 {}"),
            Err(ParseError::Line(_))
        ));
        assert_eq!(capture("1 {}"), Err(ParseError::Field("e")));
        assert_eq!(
            capture(r#"1 {"e":"aggTrade","s":"BTCUSDT"}"#),
            Err(ParseError::UnknownType("aggTrade".into()))
        );
        assert_eq!(
            capture(r#"1 {"e":7,"s":"BTCUSDT"}"#),
            Err(ParseError::Field("e"))
        );
        assert_eq!(
            capture(r#"1 {"stream":"x","data":[1]}"#),
            Err(ParseError::Field("data"))
        );
        // Missing fields.
        assert_eq!(
            capture(r#"1 {"e":"trade","s":"BTCUSDT","p":"1.0"}"#),
            Err(ParseError::Field("q"))
        );
        assert_eq!(
            capture(r#"1 {"e":"bookTicker","b":"1","B":"1","a":"1","A":"1"}"#),
            Err(ParseError::Field("s"))
        );
        assert_eq!(
            capture(r#"1 {"e":"trade","s":"X","p":"1.0","q":"1","E":"soon"}"#),
            Err(ParseError::Field("E"))
        );
        // A number where Binance sends a string would lose exactness.
        assert_eq!(
            capture(r#"1 {"e":"trade","s":"X","p":1.5,"q":"1"}"#),
            Err(ParseError::Field("p"))
        );
        assert_eq!(
            capture(r#"1 {"e":"trade","s":"X","p":"1.2.3","q":"1"}"#),
            Err(ParseError::Decimal {
                field: "p",
                value: "1.2.3".into()
            })
        );
    }

    #[test]
    fn escaped_symbol_is_unescaped() {
        let parsed = capture(r#"5 {"e":"trade","s":"BTC\u0055SDT","p":"1.0","q":"2"}"#)
            .expect("escaped symbol parses");
        let Parsed::Tick { symbol, .. } = parsed else {
            panic!("expected a tick");
        };
        assert_eq!(symbol, "BTCUSDT");
    }

    #[test]
    fn digits() {
        assert_eq!(parse_digits(b"0"), Some(0));
        assert_eq!(parse_digits(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_digits(b"9223372036854775808"), None);
        assert_eq!(parse_digits(b""), None);
        assert_eq!(parse_digits(b"-1"), None);
        assert_eq!(
            parse_digits(b"1723161253937085768"),
            Some(1_723_161_253_937_085_768)
        );
        assert_eq!(parse_digits(b"00000000000000000000001"), Some(1));
        assert_eq!(parse_digits(b"99999999999999999999"), None);
        assert_eq!(parse_digits(b"9999999999999999999"), None);
        // Every length and digit agrees with a digit-at-a-time reading.
        let mut x: u64 = 1;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = (x >> 59) as usize % 19 + 1;
            let text: Vec<u8> = (0..len)
                .map(|i| b'0' + ((x >> (i * 3 % 60)) % 10) as u8)
                .collect();
            let expected = std::str::from_utf8(&text)
                .ok()
                .and_then(|t| t.parse::<i64>().ok());
            assert_eq!(
                parse_digits(&text),
                expected,
                "{:?}",
                std::str::from_utf8(&text)
            );
        }
    }

    #[test]
    fn digits_read_as_a_wide_reference_does_with_any_byte_anywhere() {
        fn reference(text: &[u8]) -> Option<i64> {
            if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let mut v: u128 = 0;
            for &b in text {
                v = v * 10 + u128::from(b - b'0');
                if v > i64::MAX as u128 {
                    return None;
                }
            }
            Some(v as i64)
        }
        let bases: [&[u8]; 4] = [
            b"9223372036854775807123456",
            b"0000000000000000000000000",
            b"1723161253937085768999999",
            b"9999999999999999999999999",
        ];
        for base in bases {
            for len in 0..=base.len() {
                let text = &base[..len];
                assert_eq!(parse_digits(text), reference(text), "{text:?}");
                for at in 0..len {
                    for bad in 0..=255u8 {
                        let mut t = text.to_vec();
                        t[at] = bad;
                        assert_eq!(parse_digits(&t), reference(&t), "{t:?}");
                    }
                }
            }
        }
        // i64::MAX and one above at every length of leading zeros.
        for zeros in 0..6 {
            let mut t = vec![b'0'; zeros];
            t.extend_from_slice(b"9223372036854775807");
            assert_eq!(parse_digits(&t), Some(i64::MAX));
            let mut t = vec![b'0'; zeros];
            t.extend_from_slice(b"9223372036854775808");
            assert_eq!(parse_digits(&t), None);
        }
    }
}
