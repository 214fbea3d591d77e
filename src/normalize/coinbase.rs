//! Coinbase Exchange (formerly Coinbase Pro) WebSocket messages and cryptofeed
//! captures of them.
//!
//! | `type` | becomes |
//! |---|---|
//! | `ticker` with `best_bid`, `best_bid_size`, `best_ask`, `best_ask_size` | quote |
//! | `ticker` without the two size fields (older feeds, e.g. the 2021 capture) | recognised ([`Recognised::TickerWithoutSizes`]), no tick |
//! | `match`, `last_match` | trade: `price`, `size` |
//! | `snapshot`, `l2update` | recognised (depth), no tick |
//! | `subscriptions`, `heartbeat` | recognised, no tick |
//! | `error` | [`ParseError::Line`], so that the caller counts it |
//! | anything else | [`ParseError::UnknownType`] |
//!
//! The symbol is `product_id`; the exchange time is `time`, an ISO-8601 UTC
//! timestamp with microseconds (`2021-04-17T16:43:37.154473Z`), converted exactly
//! to nanoseconds.
//!
//! **Why a sizeless ticker is not a tick.** A top-of-book quote needs both
//! sizes, and an older ticker (the 2021 capture's) has only `best_bid` and
//! `best_ask`. Its other half, `price`/`last_size`, is the last match, which the
//! `matches` channel delivers as a `match` message of its own: in the 2021
//! capture every one of the 107 tickers repeats the `trade_id` of a `match` or
//! `last_match` line. Turning the ticker into a trade would therefore print
//! every trade twice, so it is recognised and dropped, and trades come from
//! `match`/`last_match` alone. A current ticker (with sizes) becomes a quote and
//! its trade half is likewise left to the `matches` channel: subscribe to both
//! `ticker` and `matches` (a ticker-only feed without sizes yields no ticks).
//! A feed or capture that also holds the `level2` channel takes the best bid
//! and ask from the depth book instead ([`crate::book::TopRule::BookFirst`]).
//!
//! A capture line, as cryptofeed's raw-data recorder writes it, is one of
//!
//! ```text
//! wss://ws-feed.pro.coinbase.com <-> 1618677816.8434298                  connection opened
//! wss://ws-feed.pro.coinbase.com <- 1618677817.020616: {"type":"subscribe",...}   sent by the client
//! 1618677817.079694: {"type":"ticker",...}                               received
//! ```
//!
//! where the time is the receive time in seconds since the Unix epoch, a decimal
//! read exactly (digits past the ninth decimal place are truncated).

use simd_json::prelude::*;
use simd_json::tape::{Object, Value};

use super::binance::{levels, parse_digits, with_tape};
use super::depth::{DepthMessage, Sequence};
use super::{decimal, BookUpdate, ParseError, Parsed, Recognised};
use crate::book::Level;

/// Parses one raw Coinbase message received at `recv_ts_ns`. simd-json
/// unescapes in place, hence `&mut`. Allocates nothing when it succeeds.
pub fn parse_message(json: &mut [u8], recv_ts_ns: i64) -> Result<Parsed<'_>, ParseError> {
    with_tape(json, |root| parse_root(root, recv_ts_ns, None))
}

/// As [`parse_message`], and also decodes the levels of a `snapshot` or
/// `l2update` into `depth` (cleared first). When the result is
/// `Recognised(DepthUpdate | DepthSnapshot)`, `depth` holds that message.
pub fn parse_message_with_depth<'a>(
    json: &'a mut [u8],
    recv_ts_ns: i64,
    depth: &mut DepthMessage,
) -> Result<Parsed<'a>, ParseError> {
    depth.clear();
    with_tape(json, |root| parse_root(root, recv_ts_ns, Some(depth)))
}

/// Parses one line of a cryptofeed capture (see the module docs): a received
/// message, or a connection event or sent message, which is recognised.
pub fn parse_capture_line(line: &mut [u8]) -> Result<Parsed<'_>, ParseError> {
    if is_endpoint_line(line) {
        return endpoint_line(line);
    }
    let (recv_ts_ns, json) = split_capture_line(line)?;
    parse_message(json, recv_ts_ns)
}

/// As [`parse_capture_line`], decoding depth messages into `depth` (see
/// [`parse_message_with_depth`]).
pub fn parse_capture_line_with_depth<'a>(
    line: &'a mut [u8],
    depth: &mut DepthMessage,
) -> Result<Parsed<'a>, ParseError> {
    if is_endpoint_line(line) {
        return endpoint_line(line);
    }
    let (recv_ts_ns, json) = split_capture_line(line)?;
    parse_message_with_depth(json, recv_ts_ns, depth)
}

fn split_capture_line(line: &mut [u8]) -> Result<(i64, &mut [u8]), ParseError> {
    // Seconds since the epoch have at most 11 digits, a fraction rarely more than
    // 9; bound the scan so a missing separator is not searched for in a 40 KB line.
    let colon = line
        .iter()
        .take(40)
        .position(|&b| b == b':')
        .ok_or(ParseError::Line(
            "expected `<receive time s>: <json>`: no `:` after the timestamp",
        ))?;
    let (ts, rest) = line.split_at_mut(colon);
    let recv_ts_ns = parse_seconds(ts).ok_or(ParseError::Line(
        "receive time is not a non-negative decimal number of seconds",
    ))?;
    Ok((recv_ts_ns, rest.get_mut(1..).unwrap_or_default()))
}

/// Whether a capture line is a recorder annotation rather than a received message.
pub(crate) fn is_endpoint_line(line: &[u8]) -> bool {
    line.starts_with(b"wss://") || line.starts_with(b"ws://")
}

/// `<url> <-> <time>` (connected) or `<url> <- <time>: <sent json>`.
fn endpoint_line(line: &[u8]) -> Result<Parsed<'static>, ParseError> {
    let space = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ParseError::Line(
            "connection line has no `<->` or `<-` after the address",
        ))?;
    let marker = &line[space..];
    if marker.starts_with(b" <-> ") || marker.starts_with(b" <- ") {
        Ok(Parsed::Recognised(Recognised::ConnectionEvent))
    } else {
        Err(ParseError::Line(
            "connection line has no `<->` or `<-` after the address",
        ))
    }
}

fn parse_root<'de>(
    root: Value<'_, 'de>,
    recv_ts_ns: i64,
    depth: Option<&mut DepthMessage>,
) -> Result<Parsed<'de>, ParseError> {
    let obj = root
        .as_object()
        .ok_or_else(|| ParseError::Json("message is not a JSON object".into()))?;
    let kind = obj
        .get("type")
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field("type"))?;
    match kind {
        "ticker" => ticker(&obj, recv_ts_ns),
        "match" | "last_match" => {
            let update = BookUpdate::Trade {
                price: dec(&obj, "price")?,
                size: dec(&obj, "size")?,
            };
            tick(&obj, recv_ts_ns, update)
        }
        "l2update" => {
            if let Some(depth) = depth {
                l2update(&obj, recv_ts_ns, depth)?;
            }
            Ok(Parsed::Recognised(Recognised::DepthUpdate))
        }
        "snapshot" => {
            if let Some(depth) = depth {
                snapshot(&obj, recv_ts_ns, depth)?;
            }
            Ok(Parsed::Recognised(Recognised::DepthSnapshot))
        }
        "subscriptions" => Ok(Parsed::Recognised(Recognised::Subscriptions)),
        "heartbeat" => Ok(Parsed::Recognised(Recognised::Heartbeat)),
        "error" => Err(ParseError::Line("Coinbase sent an error message")),
        other => Err(ParseError::UnknownType(other.chars().take(40).collect())),
    }
}

fn ticker<'de>(obj: &Object<'_, 'de>, recv_ts_ns: i64) -> Result<Parsed<'de>, ParseError> {
    if obj.get("best_bid_size").is_none() && obj.get("best_ask_size").is_none() {
        return Ok(Parsed::Recognised(Recognised::TickerWithoutSizes));
    }
    let update = BookUpdate::Quote {
        bid: dec(obj, "best_bid")?,
        bid_size: dec(obj, "best_bid_size")?,
        ask: dec(obj, "best_ask")?,
        ask_size: dec(obj, "best_ask_size")?,
    };
    tick(obj, recv_ts_ns, update)
}

fn tick<'de>(
    obj: &Object<'_, 'de>,
    recv_ts_ns: i64,
    update: BookUpdate,
) -> Result<Parsed<'de>, ParseError> {
    let symbol = obj
        .get("product_id")
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field("product_id"))?;
    let exchange_ts_ns = match obj.get("time") {
        Some(time) => Some(
            time.into_string()
                .and_then(parse_iso8601_utc_ns)
                .ok_or(ParseError::Field("time"))?,
        ),
        None => None,
    };
    Parsed::tick(symbol, recv_ts_ns, exchange_ts_ns, update)
}

/// A `snapshot`: the product's whole book as `[["price","size"],...]` per side.
fn snapshot(
    obj: &Object<'_, '_>,
    recv_ts_ns: i64,
    depth: &mut DepthMessage,
) -> Result<(), ParseError> {
    depth_header(obj, recv_ts_ns, depth)?;
    depth.sequence = Sequence::Snapshot;
    levels(obj, "bids", &mut depth.bids)?;
    levels(obj, "asks", &mut depth.asks)
}

/// An `l2update`: `changes` as `[["buy"|"sell","price","size"],...]`, a zero
/// size removing the level.
fn l2update(
    obj: &Object<'_, '_>,
    recv_ts_ns: i64,
    depth: &mut DepthMessage,
) -> Result<(), ParseError> {
    depth_header(obj, recv_ts_ns, depth)?;
    depth.sequence = Sequence::Unsequenced;
    let changes = obj
        .get("changes")
        .and_then(|v| v.as_array())
        .ok_or(ParseError::Field("changes"))?;
    for change in changes.iter() {
        let change = change.as_array().ok_or(ParseError::Field("changes"))?;
        let text = |i: usize| {
            change
                .get(i)
                .and_then(|v| v.into_string())
                .ok_or(ParseError::Field("changes"))
        };
        let level = Level {
            price: decimal("changes", text(1)?)?,
            size: decimal("changes", text(2)?)?,
        };
        match text(0)? {
            "buy" => depth.bids.push(level),
            "sell" => depth.asks.push(level),
            _ => return Err(ParseError::Field("changes")),
        }
    }
    Ok(())
}

fn depth_header(
    obj: &Object<'_, '_>,
    recv_ts_ns: i64,
    depth: &mut DepthMessage,
) -> Result<(), ParseError> {
    let symbol = obj
        .get("product_id")
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field("product_id"))?;
    depth.symbol.push_str(symbol);
    depth.recv_ts_ns = recv_ts_ns;
    depth.exchange_ts_ns = match obj.get("time") {
        Some(time) => Some(
            time.into_string()
                .and_then(parse_iso8601_utc_ns)
                .ok_or(ParseError::Field("time"))?,
        ),
        None => None,
    };
    Ok(())
}

fn dec(obj: &Object<'_, '_>, key: &'static str) -> Result<rust_decimal::Decimal, ParseError> {
    let text = obj
        .get(key)
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field(key))?;
    decimal(key, text)
}

/// The client's subscribe request:
/// `{"type":"subscribe","product_ids":[..],"channels":[..]}`.
pub fn subscribe_message(products: &[String], channels: &[String]) -> String {
    let mut out = Vec::with_capacity(64 + 16 * (products.len() + channels.len()));
    out.extend_from_slice(br#"{"type":"subscribe","product_ids":"#);
    json_array(&mut out, products);
    out.extend_from_slice(br#","channels":"#);
    json_array(&mut out, channels);
    out.push(b'}');
    // Only ASCII is ever added around the (UTF-8) names, so this cannot fail.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn json_array(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::protocol::write_json_string(out, item);
    }
    out.push(b']');
}

/// Parses seconds since the Unix epoch written as a decimal (`1618677817.061845`,
/// or `1618677817` with no fraction) into nanoseconds, exactly. Fraction digits
/// past the ninth (below a nanosecond) are checked and truncated.
pub fn parse_seconds(text: &[u8]) -> Option<i64> {
    let (int, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None => (text, None),
    };
    let mut ns = parse_digits(int)?.checked_mul(1_000_000_000)?;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut scale = 100_000_000i64;
        for &d in frac.iter().take(9) {
            ns = ns.checked_add(i64::from(d - b'0') * scale)?;
            scale /= 10;
        }
    }
    Some(ns)
}

/// Parses an ISO-8601 UTC timestamp, `YYYY-MM-DDTHH:MM:SS[.f]Z` with 1 to 9
/// fraction digits (more are checked and truncated), into nanoseconds since the
/// Unix epoch. Anything else — another offset, a lowercase `t`/`z`, an impossible
/// date such as `2021-02-29`, a leap second, a time outside what an `i64` of
/// nanoseconds holds (1677–2262) — is `None`.
pub fn parse_iso8601_utc_ns(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b.last() != Some(&b'Z') {
        return None;
    }
    let year = parse_digits(&b[0..4])?;
    let month = parse_digits(&b[5..7])?;
    let day = parse_digits(&b[8..10])?;
    let hour = parse_digits(&b[11..13])?;
    let minute = parse_digits(&b[14..16])?;
    let second = parse_digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut frac_ns = 0i64;
    let rest = &b[19..b.len() - 1];
    if let Some(frac) = rest.strip_prefix(b".") {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut scale = 100_000_000i64;
        for &d in frac.iter().take(9) {
            frac_ns += i64::from(d - b'0') * scale;
            scale /= 10;
        }
    } else if !rest.is_empty() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    // Before 1970 with a fraction, borrow a second so that the earliest
    // representable instant does not overflow on the way.
    let (secs, frac_ns) = if secs < 0 && frac_ns > 0 {
        (secs + 1, frac_ns - 1_000_000_000)
    } else {
        (secs, frac_ns)
    };
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the proleptic Gregorian date `year-month-day`
/// (Howard Hinnant's `days_from_civil`), for years 0..=9999.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Tick;

    // Real lines from /work/shared/data/coinbase/COINBASE.ws.28.0 (cryptofeed
    // sample data, Coinbase Pro, 2021-04-17).
    const CONNECT: &str = "wss://ws-feed.pro.coinbase.com <-> 1618677816.8434298";
    const SENT: &str = r#"wss://ws-feed.pro.coinbase.com <- 1618677817.020779: {"type":"subscribe","product_ids":["SKL-USD","SKL-BTC","BAND-GBP","NMR-EUR","BAND-BTC","YFI-BTC","DASH-BTC","NU-GBP","CRV-EUR","SKL-GBP"],"channels":["ticker"]}"#;
    const SUBSCRIPTIONS: &str = r#"1618677817.061845: {"type":"subscriptions","channels":[{"name":"level2","product_ids":["BAND-GBP","BAND-BTC","YFI-BTC","NU-GBP","CRV-EUR","SKL-GBP","SKL-USD","SKL-BTC","NMR-EUR","DASH-BTC"]}]}"#;
    const TICKER: &str = r#"1618677817.079694: {"type":"ticker","sequence":333938798,"product_id":"BAND-GBP","price":"14.7775","open_24h":"14.6647","volume_24h":"94381.28000000","low_24h":"14.3691","high_24h":"16.55","volume_30d":"2295579.57000000","best_bid":"14.7550","best_ask":"14.8060","side":"buy","time":"2021-04-17T16:43:30.244075Z","trade_id":881613,"last_size":"0.04"}"#;
    const LAST_MATCH: &str = r#"1618677817.079762: {"type":"last_match","trade_id":881613,"maker_order_id":"27fff20b-af29-4f45-8744-56dd1ef57dc0","taker_order_id":"1da6ce16-c8da-4732-9f71-6049f4c6aaf8","side":"sell","size":"0.04","price":"14.7775","product_id":"BAND-GBP","sequence":333938798,"time":"2021-04-17T16:43:30.244075Z"}"#;
    const MATCH: &str = r#"1618677817.1295161: {"type":"match","trade_id":280232,"maker_order_id":"2a0da34e-61f7-4c36-88e5-c9dd15927b16","taker_order_id":"3c82abaa-c01e-4608-be59-6a1e69742891","side":"sell","size":"985","price":"0.00001305","product_id":"SKL-BTC","sequence":177100030,"time":"2021-04-17T16:43:37.089723Z"}"#;
    const L2UPDATE: &str = r#"1618677817.118783: {"type":"l2update","product_id":"SKL-BTC","changes":[["sell","0.00001306","660.5"]],"time":"2021-04-17T16:43:37.075687Z"}"#;
    const SNAPSHOT: &str = r#"1618677817.077736: {"type":"snapshot","product_id":"BAND-GBP","asks":[["14.8024","12.77"],["14.8069","12.49"]],"bids":[["14.7550","0.60"]]}"#;
    // A current-format ticker, shaped like the Coinbase Exchange docs' example,
    // which carries sizes.
    const TICKER_WITH_SIZES: &str = r#"{"type":"ticker","sequence":37475248783,"product_id":"ETH-USD","price":"1285.22","open_24h":"1310.79","volume_24h":"245532.79269678","low_24h":"1280.52","high_24h":"1313.8","volume_30d":"9788783.60117027","best_bid":"1285.04","best_bid_size":"0.46688654","best_ask":"1285.27","best_ask_size":"1.56637040","side":"buy","time":"2022-10-19T23:28:22.061769Z","trade_id":370843401,"last_size":"11.4396987"}"#;

    fn capture(line: &str) -> Result<Parsed<'static>, ParseError> {
        // Leaked so the borrowed result can outlive the helper; tests only.
        let buf: &'static mut [u8] = Box::leak(line.as_bytes().to_vec().into_boxed_slice());
        parse_capture_line(buf)
    }

    fn message(json: &str) -> Result<Parsed<'static>, ParseError> {
        let buf: &'static mut [u8] = Box::leak(json.as_bytes().to_vec().into_boxed_slice());
        parse_message(buf, 42)
    }

    fn dec(s: &str) -> rust_decimal::Decimal {
        decimal("test", s).unwrap_or_default()
    }

    #[test]
    fn matches_are_trades() {
        let parsed = capture(MATCH).expect("match parses");
        assert_eq!(
            parsed,
            Parsed::Tick {
                symbol: "SKL-BTC",
                tick: Tick {
                    recv_ts_ns: 1_618_677_817_129_516_100,
                    exchange_ts_ns: Some(1_618_677_817_089_723_000),
                    update: BookUpdate::Trade {
                        price: dec("0.00001305"),
                        size: dec("985"),
                    },
                },
            }
        );
        let Ok(Parsed::Tick { symbol, tick }) = capture(LAST_MATCH) else {
            panic!("last_match is a tick");
        };
        assert_eq!(symbol, "BAND-GBP");
        assert_eq!(tick.recv_ts_ns, 1_618_677_817_079_762_000);
        assert_eq!(tick.exchange_ts_ns, Some(1_618_677_810_244_075_000));
        let BookUpdate::Trade { price, size } = tick.update else {
            panic!("last_match is a trade");
        };
        // Scale is kept exactly as sent.
        assert_eq!(
            (price.to_string(), size.to_string()),
            ("14.7775".into(), "0.04".into())
        );
    }

    #[test]
    fn ticker_with_sizes_is_a_quote() {
        let parsed = message(TICKER_WITH_SIZES).expect("ticker parses");
        assert_eq!(
            parsed,
            Parsed::Tick {
                symbol: "ETH-USD",
                tick: Tick {
                    recv_ts_ns: 42,
                    exchange_ts_ns: Some(1_666_222_102_061_769_000),
                    update: BookUpdate::Quote {
                        bid: dec("1285.04"),
                        bid_size: dec("0.46688654"),
                        ask: dec("1285.27"),
                        ask_size: dec("1.56637040"),
                    },
                },
            }
        );
    }

    #[test]
    fn ticker_without_sizes_is_recognised() {
        assert_eq!(
            capture(TICKER),
            Ok(Parsed::Recognised(Recognised::TickerWithoutSizes))
        );
        // One size alone is a broken quote, not an old ticker.
        assert_eq!(
            message(
                r#"{"type":"ticker","product_id":"X","best_bid":"1","best_bid_size":"2","best_ask":"3"}"#
            ),
            Err(ParseError::Field("best_ask_size"))
        );
        assert_eq!(
            message(
                r#"{"type":"ticker","product_id":"X","best_bid":"1","best_bid_size":"2","best_ask_size":"4"}"#
            ),
            Err(ParseError::Field("best_ask"))
        );
    }

    #[test]
    fn non_tick_messages_are_recognised() {
        for (line, want) in [
            (CONNECT, Recognised::ConnectionEvent),
            (SENT, Recognised::ConnectionEvent),
            (SUBSCRIPTIONS, Recognised::Subscriptions),
            (L2UPDATE, Recognised::DepthUpdate),
            (SNAPSHOT, Recognised::DepthSnapshot),
        ] {
            assert_eq!(capture(line), Ok(Parsed::Recognised(want)), "{line}");
        }
        assert_eq!(
            message(
                r#"{"type":"heartbeat","last_trade_id":20,"product_id":"BTC-USD","sequence":10,"time":"2014-11-07T08:19:28.464459Z"}"#
            ),
            Ok(Parsed::Recognised(Recognised::Heartbeat))
        );
    }

    #[test]
    fn errors_and_unknown_types() {
        assert_eq!(
            message(
                r#"{"type":"error","message":"Failed to subscribe","reason":"FOO-BAR is not a valid product"}"#
            ),
            Err(ParseError::Line("Coinbase sent an error message"))
        );
        assert_eq!(
            message(r#"{"type":"received","product_id":"BTC-USD"}"#),
            Err(ParseError::UnknownType("received".into()))
        );
        assert_eq!(
            message(r#"{"product_id":"X"}"#),
            Err(ParseError::Field("type"))
        );
        assert_eq!(message(r#"{"type":1}"#), Err(ParseError::Field("type")));
        assert!(matches!(message("[1]"), Err(ParseError::Json(_))));
        assert!(matches!(message(""), Err(ParseError::Json(_))));
        assert!(matches!(message(&MATCH[..100]), Err(ParseError::Json(_))));
        assert_eq!(
            message(r#"{"type":"match","price":"1","size":"2"}"#),
            Err(ParseError::Field("product_id"))
        );
        assert_eq!(
            message(r#"{"type":"match","product_id":"X","price":1.5,"size":"2"}"#),
            Err(ParseError::Field("price"))
        );
        assert_eq!(
            message(r#"{"type":"match","product_id":"X","price":"1","size":"2x"}"#),
            Err(ParseError::Decimal {
                field: "size",
                value: "2x".into()
            })
        );
        assert_eq!(
            message(
                r#"{"type":"match","product_id":"X","price":"1","size":"2","time":"yesterday"}"#
            ),
            Err(ParseError::Field("time"))
        );
        assert_eq!(
            message(
                r#"{"type":"match","product_id":"X","price":"1","size":"2","time":1618677817}"#
            ),
            Err(ParseError::Field("time"))
        );
        // No time is allowed: the tick just has no exchange time.
        let Ok(Parsed::Tick { tick, .. }) =
            message(r#"{"type":"match","product_id":"X","price":"1","size":"2"}"#)
        else {
            panic!("a match without time is a tick");
        };
        assert_eq!(tick.exchange_ts_ns, None);
    }

    #[test]
    fn bad_capture_lines() {
        for line in [
            "",
            "hello",
            "1618677817.061845 {}",
            "16186x7817.06: {}",
            "1618677817.: {}",
            ".5: {}",
            "-1.5: {}",
            "99999999999999999999: {}",
            "wss://ws-feed.pro.coinbase.com",
            "wss://ws-feed.pro.coinbase.com -> 1: {}",
        ] {
            assert!(
                matches!(capture(line), Err(ParseError::Line(_))),
                "{line:?}"
            );
        }
        assert!(matches!(
            capture("1618677817.061845: "),
            Err(ParseError::Json(_))
        ));
        // A long line without a separator is rejected without scanning it all.
        let long = "1".repeat(100_000);
        assert!(matches!(capture(&long), Err(ParseError::Line(_))));
    }

    #[test]
    fn seconds_are_exact() {
        assert_eq!(
            parse_seconds(b"1618677817.061845"),
            Some(1_618_677_817_061_845_000)
        );
        assert_eq!(
            parse_seconds(b"1618677816.8434298"),
            Some(1_618_677_816_843_429_800)
        );
        assert_eq!(
            parse_seconds(b"1618677817.07979"),
            Some(1_618_677_817_079_790_000)
        );
        assert_eq!(
            parse_seconds(b"1618677817"),
            Some(1_618_677_817_000_000_000)
        );
        assert_eq!(parse_seconds(b"0.000000001"), Some(1));
        assert_eq!(parse_seconds(b"1.1234567899"), Some(1_123_456_789));
        assert_eq!(parse_seconds(b"9223372036.854775807"), Some(i64::MAX));
        assert_eq!(parse_seconds(b"9223372036.854775808"), None);
        assert_eq!(parse_seconds(b"9223372037"), None);
        for bad in [
            &b""[..],
            b".",
            b"1.",
            b".1",
            b"1.2.3",
            b"1e9",
            b" 1",
            b"1.0x",
            b"1.00000000000x",
        ] {
            assert_eq!(
                parse_seconds(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn iso8601() {
        let p = parse_iso8601_utc_ns;
        assert_eq!(p("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(p("1970-01-01T00:00:00.000000001Z"), Some(1));
        assert_eq!(
            p("2021-04-17T16:43:37.154473Z"),
            Some(1_618_677_817_154_473_000)
        );
        assert_eq!(p("2021-04-17T16:43:37Z"), Some(1_618_677_817_000_000_000));
        assert_eq!(p("2021-04-17T16:43:37.1Z"), Some(1_618_677_817_100_000_000));
        assert_eq!(
            p("2021-04-17T16:43:37.1234567891Z"),
            Some(1_618_677_817_123_456_789)
        );
        assert_eq!(p("2000-02-29T23:59:59Z"), Some(951_868_799_000_000_000));
        assert_eq!(
            p("2024-12-31T23:59:59.999999999Z"),
            Some(1_735_689_599_999_999_999)
        );
        assert_eq!(p("1969-12-31T23:59:59Z"), Some(-1_000_000_000));
        assert_eq!(p("2262-04-11T23:47:16.854775807Z"), Some(i64::MAX));
        assert_eq!(p("2262-04-11T23:47:16.854775808Z"), None);
        assert_eq!(p("9999-12-31T23:59:59Z"), None);
        assert_eq!(p("1677-09-21T00:12:43.145224192Z"), Some(i64::MIN));
        for bad in [
            "",
            "garbage",
            "2021-04-17",
            "2021-04-17T16:43:37",
            "2021-04-17T16:43:37.154473",
            "2021-04-17T16:43:37.Z",
            "2021-04-17T16:43:37.15x473Z",
            "2021-04-17 16:43:37Z",
            "2021-04-17t16:43:37z",
            "2021-04-17T16:43:37+00:00",
            "2021-04-17T16:43:37.154473+01:00",
            "2021-4-17T16:43:37.154473Z",
            "+021-04-17T16:43:37Z",
            "2021-13-17T16:43:37Z",
            "2021-00-17T16:43:37Z",
            "2021-04-31T16:43:37Z",
            "2021-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2021-04-00T16:43:37Z",
            "2021-04-17T24:00:00Z",
            "2021-04-17T16:60:37Z",
            "2021-04-17T16:43:60Z",
            "2021-04-17T16:43:37ZZ",
            "2021-04-17T16:43:37.1Z ",
            "２０２１-04-17T16:43:37Z",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn days_from_civil_matches_a_day_by_day_walk() {
        // Walk every day from 1600-01-01 to 2400-12-31 and check consecutive days.
        let mut expected = days_from_civil(1600, 1, 1);
        for year in 1600..=2400 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_from_civil(year, month, day), expected);
                    expected += 1;
                }
            }
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(0, 1, 1), -719_528);
    }

    #[test]
    fn subscribe_message_is_escaped_json() {
        let products = vec!["BTC-USD".to_string(), "ETH-USD".to_string()];
        let channels = vec!["ticker".to_string(), "matches".to_string()];
        assert_eq!(
            subscribe_message(&products, &channels),
            r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["ticker","matches"]}"#
        );
        assert_eq!(
            subscribe_message(&[], &[]),
            r#"{"type":"subscribe","product_ids":[],"channels":[]}"#
        );
        let odd = vec!["a\"b\\c\nd".to_string(), "é".to_string()];
        let text = subscribe_message(&odd, &channels);
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["product_ids"][0], "a\"b\\c\nd");
        assert_eq!(value["product_ids"][1], "é");
        assert_eq!(value["channels"][1], "matches");
    }
}
