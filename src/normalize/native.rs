//! tickwire's own replay format: NDJSON, one already-normalized tick or
//! depth message per line, and a line where a recorded feed disconnected.
//!
//! ```text
//! {"tickwire_replay":1,"source":"free text"}
//! {"recv_ts_ns":1723161255088169167,"symbol":"BTCUSDT","exchange_ts_ns":1723161256313000000,"type":"quote","bid":"61800.20","bid_size":"2.507","ask":"61800.30","ask_size":"2.510"}
//! {"recv_ts_ns":1723161255088176367,"symbol":"BTCUSDT","exchange_ts_ns":null,"type":"trade","price":"61800.30","size":"0.006"}
//! {"recv_ts_ns":1723161255319702566,"symbol":"BTCUSDT","exchange_ts_ns":null,"type":"book_snapshot","last_update_id":5123107852948,"bids":[["61800.20","2.507"]],"asks":[["61800.30","2.510"]]}
//! {"recv_ts_ns":1723161255400000000,"symbol":"BTCUSDT","exchange_ts_ns":1723161256400000000,"type":"book_diff","first_update_id":5123107852950,"last_update_id":5123107852960,"previous_update_id":5123107852948,"bids":[["61800.20","0"]],"asks":[]}
//! {"recv_ts_ns":1723161299000000000,"type":"disconnect","reason":"read failed: connection reset"}
//! ```
//!
//! A depth line is a venue's book snapshot or diff as it came, with its
//! update ids, so that a replay applies the venue's own sync rules to it:
//! `last_update_id` on a snapshot (absent where the venue numbers nothing,
//! as Coinbase); `first_update_id` and `last_update_id` on a Binance spot
//! diff, plus `previous_update_id` on a USD-M one, none on an unnumbered one.
//!
//! Prices and sizes are JSON strings: a JSON number would pass through binary
//! floating point in most readers and lose the exact decimal, so numbers are
//! rejected. `replay-data/README.md` documents the format field by field.

use rust_decimal::Decimal;
use simd_json::prelude::*;
use simd_json::tape::{Object, Value};
use simd_json::ValueType;

use super::binance::{levels, with_tape};
use super::depth::{DepthMessage, Sequence};
use super::{decimal, BookUpdate, ParseError, Parsed, Recognised, Tick};
use crate::book::{Level, TopRule};
use crate::protocol::{write_decimal, write_int, write_json_string};

/// The format version written in, and accepted from, the header line.
pub const VERSION: i64 = 1;

/// What a file's first line says of the whole file: the [`TopRule`] a
/// header names (`"top_of_book":"book"`, for a recording of a feed whose
/// book's top wins over its quotes; quotes first otherwise, and for any
/// line that is not a header), or why it refuses the file: a header of a
/// format version this build cannot read, whose ticks would otherwise be
/// read as version 1's.
pub fn read_header(first_line: &[u8]) -> Result<TopRule, String> {
    let mut line = first_line.to_vec();
    let header = with_tape(&mut line, |root| {
        let Some(obj) = root.as_object() else {
            return Ok(None);
        };
        let Some(version) = obj.get("tickwire_replay") else {
            return Ok(None);
        };
        let book = obj.get("top_of_book").and_then(|v| v.into_string()) == Some("book");
        Ok(Some((version.as_i64(), book)))
    });
    match header {
        Ok(Some((Some(VERSION), true))) => Ok(TopRule::BookFirst),
        Ok(Some((Some(VERSION), false))) | Ok(None) | Err(_) => Ok(TopRule::QuotesFirst),
        Ok(Some((Some(other), _))) => Err(ParseError::UnsupportedVersion(other).to_string()),
        Ok(Some((None, _))) => Err("tickwire_replay is not an integer version".into()),
    }
}

/// Parses one line (a header or a tick; a depth line is recognised). simd-json
/// unescapes in place, hence `&mut`.
pub fn parse_line(line: &mut [u8]) -> Result<Parsed<'_>, ParseError> {
    with_tape(line, |root| parse_root(root, None))
}

/// As [`parse_line`], and also decodes a depth line into `depth` (cleared
/// first): when the result is `Recognised(DepthUpdate | DepthSnapshot)`,
/// `depth` holds that message.
pub fn parse_line_with_depth<'a>(
    line: &'a mut [u8],
    depth: &mut DepthMessage,
) -> Result<Parsed<'a>, ParseError> {
    depth.clear();
    with_tape(line, |root| parse_root(root, Some(depth)))
}

fn parse_root<'de>(
    root: Value<'_, 'de>,
    depth: Option<&mut DepthMessage>,
) -> Result<Parsed<'de>, ParseError> {
    let obj = root
        .as_object()
        .ok_or_else(|| ParseError::Json("line is not a JSON object".into()))?;

    if let Some(version) = obj.get("tickwire_replay") {
        return match version.as_i64() {
            Some(VERSION) => Ok(Parsed::Recognised(Recognised::Header)),
            Some(other) => Err(ParseError::UnsupportedVersion(other)),
            None => Err(ParseError::Field("tickwire_replay")),
        };
    }

    if obj.get("type").and_then(|v| v.into_string()) == Some("disconnect") {
        return Ok(Parsed::Recognised(Recognised::Disconnect));
    }
    let recv_ts_ns = obj
        .get("recv_ts_ns")
        .and_then(|v| v.as_i64())
        .ok_or(ParseError::Field("recv_ts_ns"))?;
    let symbol = obj
        .get("symbol")
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field("symbol"))?;
    let exchange_ts_ns = match obj.get("exchange_ts_ns") {
        None => None,
        Some(v) if v.is_null() => None,
        Some(v) => Some(v.as_i64().ok_or(ParseError::Field("exchange_ts_ns"))?),
    };
    let kind = obj
        .get("type")
        .and_then(|v| v.into_string())
        .ok_or(ParseError::Field("type"))?;
    let update = match kind {
        "quote" => BookUpdate::Quote {
            bid: dec(&obj, "bid")?,
            bid_size: dec(&obj, "bid_size")?,
            ask: dec(&obj, "ask")?,
            ask_size: dec(&obj, "ask_size")?,
        },
        "trade" => BookUpdate::Trade {
            price: dec(&obj, "price")?,
            size: dec(&obj, "size")?,
        },
        "book_snapshot" | "book_diff" => {
            let snapshot = kind == "book_snapshot";
            if let Some(depth) = depth {
                depth.symbol.push_str(symbol);
                depth.recv_ts_ns = recv_ts_ns;
                depth.exchange_ts_ns = exchange_ts_ns;
                depth_fields(&obj, snapshot, depth)?;
            }
            return Ok(Parsed::Recognised(if snapshot {
                Recognised::DepthSnapshot
            } else {
                Recognised::DepthUpdate
            }));
        }
        other => return Err(ParseError::UnknownType(other.chars().take(40).collect())),
    };
    Parsed::tick(symbol, recv_ts_ns, exchange_ts_ns, update)
}

/// The update ids and levels of a depth line.
fn depth_fields(
    obj: &Object<'_, '_>,
    snapshot: bool,
    depth: &mut DepthMessage,
) -> Result<(), ParseError> {
    let id = |key: &'static str| match obj.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(ParseError::Field(key)),
    };
    let last = id("last_update_id")?;
    depth.sequence = if snapshot {
        depth.last_update_id = last;
        Sequence::Snapshot
    } else {
        match (id("first_update_id")?, last, id("previous_update_id")?) {
            (None, None, None) => Sequence::Unsequenced,
            (Some(first), Some(last), None) => Sequence::Spot { first, last },
            (Some(first), Some(last), Some(previous)) => Sequence::Futures {
                first,
                last,
                previous,
            },
            (None, ..) => return Err(ParseError::Field("first_update_id")),
            (Some(_), None, _) => return Err(ParseError::Field("last_update_id")),
        }
    };
    levels(obj, "bids", &mut depth.bids)?;
    levels(obj, "asks", &mut depth.asks)
}

fn dec(obj: &Object<'_, '_>, key: &'static str) -> Result<Decimal, ParseError> {
    let value = obj.get(key).ok_or(ParseError::Field(key))?;
    if let Some(text) = value.as_str() {
        return decimal(key, text);
    }
    match value.value_type() {
        ValueType::I64 | ValueType::U64 | ValueType::F64 => Err(ParseError::Decimal {
            field: key,
            value: "a JSON number (write decimals as strings so they stay exact)".into(),
        }),
        _ => Err(ParseError::Field(key)),
    }
}

/// Appends the header line, `{"tickwire_replay":1,"source":"..."}` and
/// `\n`, with `"top_of_book":"book"` for [`TopRule::BookFirst`].
pub fn encode_header(out: &mut Vec<u8>, source: &str, top_rule: TopRule) {
    out.extend_from_slice(b"{\"tickwire_replay\":");
    write_int(out, VERSION);
    out.extend_from_slice(b",\"source\":");
    write_json_string(out, source);
    if top_rule == TopRule::BookFirst {
        out.extend_from_slice(b",\"top_of_book\":\"book\"");
    }
    out.extend_from_slice(b"}\n");
}

/// Appends one tick line, terminated by `\n`, that [`parse_line`] reads back
/// exactly (decimals keep their scale).
pub fn encode_tick(out: &mut Vec<u8>, symbol: &str, tick: &Tick) {
    push_line_start(out, tick.recv_ts_ns, symbol, tick.exchange_ts_ns);
    match tick.update {
        BookUpdate::Quote {
            bid,
            bid_size,
            ask,
            ask_size,
        } => {
            out.extend_from_slice(b",\"type\":\"quote\"");
            push_decimal(out, "bid", bid);
            push_decimal(out, "bid_size", bid_size);
            push_decimal(out, "ask", ask);
            push_decimal(out, "ask_size", ask_size);
        }
        BookUpdate::Trade { price, size } => {
            out.extend_from_slice(b",\"type\":\"trade\"");
            push_decimal(out, "price", price);
            push_decimal(out, "size", size);
        }
    }
    out.extend_from_slice(b"}\n");
}

/// Appends one depth line, terminated by `\n`, that
/// [`parse_line_with_depth`] reads back exactly. `depth.symbol` is not
/// written: the line names `symbol`.
pub fn encode_depth(out: &mut Vec<u8>, symbol: &str, depth: &DepthMessage) {
    push_line_start(out, depth.recv_ts_ns, symbol, depth.exchange_ts_ns);
    let (kind, ids): (&[u8], [(&str, Option<u64>); 3]) = match depth.sequence {
        Sequence::Snapshot => (
            b"book_snapshot",
            [
                ("last_update_id", depth.last_update_id),
                ("", None),
                ("", None),
            ],
        ),
        Sequence::Spot { first, last } => (
            b"book_diff",
            [
                ("first_update_id", Some(first)),
                ("last_update_id", Some(last)),
                ("", None),
            ],
        ),
        Sequence::Futures {
            first,
            last,
            previous,
        } => (
            b"book_diff",
            [
                ("first_update_id", Some(first)),
                ("last_update_id", Some(last)),
                ("previous_update_id", Some(previous)),
            ],
        ),
        Sequence::Unsequenced => (b"book_diff", [("", None); 3]),
    };
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(kind);
    out.push(b'"');
    for (key, value) in ids {
        if let Some(value) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            write_int(out, value);
        }
    }
    for (key, side) in [("bids", &depth.bids), ("asks", &depth.asks)] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":[");
        for (i, Level { price, size }) in side.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"[\"");
            write_decimal(out, *price);
            out.extend_from_slice(b"\",\"");
            write_decimal(out, *size);
            out.extend_from_slice(b"\"]");
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}\n");
}

/// Appends a disconnect line, `{"recv_ts_ns":..,"type":"disconnect","reason":".."}`
/// and `\n`: the recorded feed lost its connection at `recv_ts_ns`.
pub fn encode_disconnect(out: &mut Vec<u8>, recv_ts_ns: i64, reason: &str) {
    out.extend_from_slice(b"{\"recv_ts_ns\":");
    write_int(out, recv_ts_ns);
    out.extend_from_slice(b",\"type\":\"disconnect\",\"reason\":");
    write_json_string(out, reason);
    out.extend_from_slice(b"}\n");
}

/// `{"recv_ts_ns":..,"symbol":"..","exchange_ts_ns":..`, the start every
/// tick and depth line shares.
fn push_line_start(out: &mut Vec<u8>, recv_ts_ns: i64, symbol: &str, exchange_ts_ns: Option<i64>) {
    out.extend_from_slice(b"{\"recv_ts_ns\":");
    write_int(out, recv_ts_ns);
    out.extend_from_slice(b",\"symbol\":");
    write_json_string(out, symbol);
    out.extend_from_slice(b",\"exchange_ts_ns\":");
    match exchange_ts_ns {
        Some(ts) => write_int(out, ts),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes `,"key":"value"`; keys are plain identifiers and a decimal's text
/// is digits, `-` and `.`, so neither needs escaping.
fn push_decimal(out: &mut Vec<u8>, key: &str, value: Decimal) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    write_decimal(out, value);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTE: &str = r#"{"recv_ts_ns":1723161255088169167,"symbol":"BTCUSDT","exchange_ts_ns":1723161256313000000,"type":"quote","bid":"61800.20","bid_size":"2.507","ask":"61800.30","ask_size":"2.510"}"#;
    const TRADE: &str = r#"{"recv_ts_ns":1723161255088176367,"symbol":"BTCUSDT","exchange_ts_ns":null,"type":"trade","price":"61800.30","size":"0.006"}"#;

    fn parse(line: &str) -> Result<(String, Tick), ParseError> {
        let mut buf = line.as_bytes().to_vec();
        match parse_line(&mut buf)? {
            Parsed::Tick { symbol, tick } => Ok((symbol.to_owned(), tick)),
            Parsed::Recognised(r) => Err(ParseError::UnknownType(format!("{r:?}"))),
        }
    }

    fn dec(text: &str) -> Decimal {
        decimal("test", text).expect("valid decimal")
    }

    #[test]
    fn documented_examples_parse() {
        let (symbol, tick) = parse(QUOTE).expect("quote parses");
        assert_eq!(symbol, "BTCUSDT");
        assert_eq!(tick.recv_ts_ns, 1_723_161_255_088_169_167);
        assert_eq!(tick.exchange_ts_ns, Some(1_723_161_256_313_000_000));
        let (_, tick) = parse(TRADE).expect("trade parses");
        assert_eq!(tick.exchange_ts_ns, None);
        let absent = r#"{"recv_ts_ns":5,"symbol":"X","type":"trade","price":"1","size":"2"}"#;
        assert_eq!(parse(absent).map(|(_, t)| t.exchange_ts_ns), Ok(None));
    }

    #[test]
    fn encoding_matches_the_documented_lines() {
        for line in [QUOTE, TRADE] {
            let (symbol, tick) = parse(line).expect("example parses");
            let mut out = Vec::new();
            encode_tick(&mut out, &symbol, &tick);
            assert_eq!(out, format!("{line}\n").into_bytes());
        }
    }

    #[test]
    fn round_trip_keeps_symbol_and_scale() {
        let ticks = [
            Tick {
                recv_ts_ns: 1_723_161_254_087_891_268,
                exchange_ts_ns: None,
                update: BookUpdate::Quote {
                    bid: dec("61837.63000000"),
                    bid_size: dec("3.78826000"),
                    ask: dec("61837.64000000"),
                    ask_size: dec("1.54698000"),
                },
            },
            Tick {
                recv_ts_ns: -3,
                exchange_ts_ns: Some(i64::MAX),
                update: BookUpdate::Trade {
                    price: dec("-0.000001"),
                    size: dec("0"),
                },
            },
        ];
        let symbols = ["BTCUSDT", "we\"ird\\ sym\n\u{1}/€"];
        for tick in ticks {
            for symbol in symbols {
                let mut out = Vec::new();
                encode_tick(&mut out, symbol, &tick);
                assert_eq!(out.last(), Some(&b'\n'));
                let (back_symbol, back) = parse(
                    std::str::from_utf8(&out[..out.len() - 1]).expect("encoder writes UTF-8"),
                )
                .expect("encoded line parses");
                assert_eq!(back_symbol, symbol);
                assert_eq!(back, tick);
                assert_eq!(format!("{:?}", back.update), format!("{:?}", tick.update));
            }
        }
    }

    const BOOK_SNAPSHOT: &str = r#"{"recv_ts_ns":1723161255319702566,"symbol":"BTCUSDT","exchange_ts_ns":null,"type":"book_snapshot","last_update_id":5123107852948,"bids":[["61800.20","2.507"]],"asks":[["61800.30","2.510"]]}"#;
    const BOOK_DIFF: &str = r#"{"recv_ts_ns":1723161255400000000,"symbol":"BTCUSDT","exchange_ts_ns":1723161256400000000,"type":"book_diff","first_update_id":5123107852950,"last_update_id":5123107852960,"previous_update_id":5123107852948,"bids":[["61800.20","0"]],"asks":[]}"#;

    fn parse_depth(line: &str) -> Result<(Recognised, DepthMessage), ParseError> {
        let mut buf = line.as_bytes().to_vec();
        let mut depth = DepthMessage::default();
        match parse_line_with_depth(&mut buf, &mut depth)? {
            Parsed::Recognised(r) => Ok((r, depth)),
            Parsed::Tick { .. } => Err(ParseError::Line("a tick")),
        }
    }

    #[test]
    fn depth_lines_round_trip_with_their_update_ids() {
        let (kind, snapshot) = parse_depth(BOOK_SNAPSHOT).expect("snapshot parses");
        assert_eq!(kind, Recognised::DepthSnapshot);
        assert_eq!(snapshot.sequence, Sequence::Snapshot);
        assert_eq!(snapshot.last_update_id, Some(5_123_107_852_948));
        assert_eq!(snapshot.symbol, "BTCUSDT");
        let (kind, diff) = parse_depth(BOOK_DIFF).expect("diff parses");
        assert_eq!(kind, Recognised::DepthUpdate);
        assert_eq!(
            diff.sequence,
            Sequence::Futures {
                first: 5_123_107_852_950,
                last: 5_123_107_852_960,
                previous: 5_123_107_852_948
            }
        );
        assert_eq!(diff.exchange_ts_ns, Some(1_723_161_256_400_000_000));
        assert_eq!(diff.bids.len(), 1);
        assert!(diff.asks.is_empty());
        for line in [BOOK_SNAPSHOT, BOOK_DIFF] {
            let (_, depth) = parse_depth(line).expect("parses");
            let mut out = Vec::new();
            encode_depth(&mut out, "BTCUSDT", &depth);
            assert_eq!(out, format!("{line}\n").into_bytes());
        }
        // Every kind of numbering, and none, reads back as written.
        let mut message = DepthMessage {
            recv_ts_ns: 7,
            asks: vec![Level {
                price: dec("1.50"),
                size: dec("3"),
            }],
            ..DepthMessage::default()
        };
        for sequence in [
            Sequence::Snapshot,
            Sequence::Spot { first: 3, last: 4 },
            Sequence::Unsequenced,
        ] {
            message.sequence = sequence;
            let mut out = Vec::new();
            encode_depth(&mut out, "BTC-USD", &message);
            let text = String::from_utf8_lossy(&out[..out.len() - 1]).into_owned();
            let (_, back) = parse_depth(&text).expect("encoded line parses");
            assert_eq!(back.sequence, sequence, "{text}");
            assert_eq!(back.last_update_id, None, "{text}");
            assert_eq!(
                (back.bids, back.asks),
                (message.bids.clone(), message.asks.clone())
            );
        }
        let mut out = Vec::new();
        encode_disconnect(&mut out, 5, "read failed: \"reset\"");
        assert_eq!(
            parse_line(&mut out),
            Ok(Parsed::Recognised(Recognised::Disconnect))
        );
        // Without a depth buffer a depth line is only recognised.
        let mut buf = BOOK_DIFF.as_bytes().to_vec();
        assert_eq!(
            parse_line(&mut buf),
            Ok(Parsed::Recognised(Recognised::DepthUpdate))
        );
    }

    #[test]
    fn bad_depth_lines_are_errors() {
        let line =
            |rest: &str| format!(r#"{{"recv_ts_ns":1,"symbol":"X","type":"book_diff",{rest}}}"#);
        let cases = [
            (
                line(r#""last_update_id":2,"bids":[],"asks":[]"#),
                ParseError::Field("first_update_id"),
            ),
            (
                line(r#""first_update_id":2,"bids":[],"asks":[]"#),
                ParseError::Field("last_update_id"),
            ),
            (
                line(r#""first_update_id":"2","last_update_id":3,"bids":[],"asks":[]"#),
                ParseError::Field("first_update_id"),
            ),
            (
                line(r#""bids":[["1",2]],"asks":[]"#),
                ParseError::Field("bids"),
            ),
            (line(r#""bids":[]"#), ParseError::Field("asks")),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_depth(&text).map(|_| ()), Err(expected), "{text}");
        }
    }

    #[test]
    fn header_round_trip() {
        let mut out = Vec::new();
        encode_header(&mut out, "binance \"spot\" capture", TopRule::QuotesFirst);
        assert_eq!(
            out,
            b"{\"tickwire_replay\":1,\"source\":\"binance \\\"spot\\\" capture\"}\n"
        );
        assert_eq!(
            parse_line(&mut out),
            Ok(Parsed::Recognised(Recognised::Header))
        );
        let mut v2 = br#"{"tickwire_replay":2}"#.to_vec();
        assert_eq!(parse_line(&mut v2), Err(ParseError::UnsupportedVersion(2)));
    }

    #[test]
    fn bad_lines_are_errors() {
        type Check = fn(&ParseError) -> bool;
        let cases: [(&str, Check); 10] = [
            (
                r#"{"recv_ts_ns":1,"symbol":"X","type":"trade","price":61800.3,"size":"1"}"#,
                |e| matches!(e, ParseError::Decimal { field: "price", .. }),
            ),
            (
                r#"{"recv_ts_ns":1,"symbol":"X","type":"trade","price":"1","size":2}"#,
                |e| matches!(e, ParseError::Decimal { field: "size", .. }),
            ),
            (
                r#"{"recv_ts_ns":1,"symbol":"X","type":"book","price":"1","size":"2"}"#,
                |e| *e == ParseError::UnknownType("book".into()),
            ),
            (
                r#"{"recv_ts_ns":1,"symbol":"X","type":"quote","bid":"1","bid_size":"1","ask":"1"}"#,
                |e| *e == ParseError::Field("ask_size"),
            ),
            (
                r#"{"recv_ts_ns":"1","symbol":"X","type":"trade","price":"1","size":"2"}"#,
                |e| *e == ParseError::Field("recv_ts_ns"),
            ),
            (
                r#"{"recv_ts_ns":1,"symbol":"X","exchange_ts_ns":"x","type":"trade","price":"1","size":"2"}"#,
                |e| *e == ParseError::Field("exchange_ts_ns"),
            ),
            (
                r#"{"recv_ts_ns":1,"type":"trade","price":"1","size":"2"}"#,
                |e| *e == ParseError::Field("symbol"),
            ),
            (
                r#"{"recv_ts_ns":1,"symbol":"X","type":"trade","price":"1,5","size":"2"}"#,
                |e| matches!(e, ParseError::Decimal { field: "price", .. }),
            ),
            (r#"{"recv_ts_ns":1,"symbol":"X","type":"trade","pri"#, |e| {
                matches!(e, ParseError::Json(_))
            }),
            ("[]", |e| matches!(e, ParseError::Json(_))),
        ];
        for (line, expected) in cases {
            let err = parse(line).expect_err(line);
            assert!(expected(&err), "{line}: unexpected {err:?}");
        }
    }
}
