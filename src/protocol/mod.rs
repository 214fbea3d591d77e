//! Protocol v1: the JSON messages clients and the server exchange (see
//! `docs/protocol.md`). I/O-free: requests are parsed from a text frame's
//! payload and replies are encoded into byte buffers.

use serde::{Deserialize, Serialize};

use crate::book::{Level, Snapshot};

pub mod book;
use crate::metrics::ErrorCode;

/// The top-of-book channel, the default when a request names none.
pub const TICKER_CHANNEL: &str = "ticker";

/// A client request (one text frame).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Subscribe {
        id: Option<u64>,
        symbols: Vec<String>,
        channel: Option<String>,
        max_rate_hz: Option<f64>,
        /// Levels per side on the `book` channel.
        depth: Option<usize>,
    },
    Unsubscribe {
        id: Option<u64>,
        symbols: Vec<String>,
        channel: Option<String>,
    },
    List {
        id: Option<u64>,
    },
    Ping {
        id: Option<u64>,
    },
}

/// A request that could not be understood: answered with `bad_request`, echoing
/// the `id` when one could be read.
#[derive(Debug, PartialEq)]
pub struct BadRequest {
    pub id: Option<u64>,
    pub message: String,
}

/// Parses one client text message.
pub fn parse_request(text: &str) -> Result<Request, BadRequest> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        message: format!("invalid JSON: {e}"),
    })?;
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    if !value.is_object() {
        return Err(BadRequest {
            id,
            message: "a request must be a JSON object".into(),
        });
    }
    let request: Request = serde_json::from_value(value).map_err(|e| BadRequest {
        id,
        message: e.to_string(),
    })?;
    if let Request::Subscribe {
        max_rate_hz: Some(rate),
        ..
    } = request
    {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(BadRequest {
                id,
                message: "max_rate_hz must be a positive number".into(),
            });
        }
    }
    Ok(request)
}

/// Server → client control messages (everything but `ticker`).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply<'a> {
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        symbols: &'a [&'a str],
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        symbols: &'a [&'a str],
    },
    Symbols {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        symbols: &'a [&'a str],
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        server_ts_ns: i64,
    },
    Status {
        symbol: &'a str,
        state: &'a str,
        reason: &'a str,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        symbols: &'a [&'a str],
    },
}

impl Reply<'_> {
    /// An `error` reply.
    pub fn error<'a>(
        id: Option<u64>,
        code: ErrorCode,
        message: &'a str,
        symbols: &'a [&'a str],
    ) -> Reply<'a> {
        Reply::Error {
            id,
            code: code.as_str(),
            message,
            symbols,
        }
    }

    /// The JSON text of this reply.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Encodes a ticker message up to and including `"skipped":`, the part every
/// subscriber shares. Field order follows the protocol document.
pub fn encode_ticker_prefix(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(br#"{"type":"ticker","symbol":"#);
    write_json_string(&mut out, &snapshot.symbol);
    out.extend_from_slice(br#","seq":"#);
    write_int(&mut out, snapshot.seq);
    write_level(&mut out, "bid", snapshot.bid);
    write_level(&mut out, "ask", snapshot.ask);
    write_level(&mut out, "last", snapshot.last);
    write_stamps(&mut out, snapshot.exchange_ts_ns, snapshot.ingest_ts_ns);
    out
}

/// Writes the fields that end every shared message prefix, tickers and books
/// alike: `,"exchange_ts_ns":…,"ingest_ts_ns":…,"skipped":` (the value of
/// `skipped` is each subscriber's own).
pub(crate) fn write_stamps(out: &mut Vec<u8>, exchange_ts_ns: Option<i64>, ingest_ts_ns: i64) {
    out.extend_from_slice(br#","exchange_ts_ns":"#);
    match exchange_ts_ns {
        Some(ts) => write_int(out, ts),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","ingest_ts_ns":"#);
    write_int(out, ingest_ts_ns);
    out.extend_from_slice(br#","skipped":"#);
}

/// What follows the shared prefix for one subscriber: `skipped` as digits
/// (formatted into `digits`), then the `snapshot` flag and the closing brace.
/// Returned as parts so a caller can size a frame header and then write them
/// without formatting twice.
pub fn ticker_suffix(digits: &mut itoa::Buffer, skipped: u64, snapshot: bool) -> [&[u8]; 2] {
    [digits.format(skipped).as_bytes(), suffix_tail(snapshot)]
}

/// Appends `skipped` and the `snapshot` flag, closing the ticker object.
pub fn write_ticker_suffix(out: &mut Vec<u8>, skipped: u64, snapshot: bool) {
    let mut digits = itoa::Buffer::new();
    for part in ticker_suffix(&mut digits, skipped, snapshot) {
        out.extend_from_slice(part);
    }
}

fn suffix_tail(snapshot: bool) -> &'static [u8] {
    if snapshot {
        br#","snapshot":true}"#
    } else {
        br#","snapshot":false}"#
    }
}

/// The full ticker message of a snapshot as a newly subscribed client sees it
/// (also the body of `GET /api/snapshot/{symbol}`).
pub fn encode_ticker_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let prefix = snapshot.ticker_prefix();
    let mut out = Vec::with_capacity(prefix.len() + 24);
    out.extend_from_slice(prefix);
    write_ticker_suffix(&mut out, 0, true);
    out
}

fn write_level(out: &mut Vec<u8>, name: &str, level: Option<Level>) {
    let mut field = |suffix: &str, value: Option<rust_decimal::Decimal>| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            Some(v) => {
                out.push(b'"');
                write_decimal(out, v);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
    };
    field("", level.map(|l| l.price));
    field("_size", level.map(|l| l.size));
}

/// Writes a decimal with exactly the digits and scale it was parsed with (as
/// `Display` does), without going through `core::fmt`, which is most of the
/// cost of encoding a ticker.
pub fn write_decimal(out: &mut Vec<u8>, value: rust_decimal::Decimal) {
    if value.is_sign_negative() {
        out.push(b'-');
    }
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(value.mantissa().unsigned_abs()).as_bytes();
    let scale = value.scale() as usize;
    if scale == 0 {
        out.extend_from_slice(digits);
    } else if digits.len() > scale {
        let (integer, fraction) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(integer);
        out.push(b'.');
        out.extend_from_slice(fraction);
    } else {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + scale - digits.len(), b'0');
        out.extend_from_slice(digits);
    }
}

pub(crate) fn write_int(out: &mut Vec<u8>, value: impl itoa::Integer) {
    let mut buffer = itoa::Buffer::new();
    out.extend_from_slice(buffer.format(value).as_bytes());
}

/// Writes `value` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for &byte in value.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x00..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
            }
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Fold;
    use crate::normalize::{BookUpdate, Tick};
    use rust_decimal::Decimal;
    use std::sync::Arc;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap_or_default()
    }

    #[test]
    fn ticker_matches_the_protocol_example_field_for_field() {
        let symbol: Arc<str> = Arc::from("BTCUSDT");
        let quote = Tick {
            recv_ts_ns: 0,
            exchange_ts_ns: Some(1_723_161_256_313_000_000),
            update: BookUpdate::Quote {
                bid: dec("61800.20"),
                bid_size: dec("2.507"),
                ask: dec("61800.30"),
                ask_size: dec("2.510"),
            },
        };
        let snap = Snapshot::next(None, &symbol, &Fold::of(&quote), 1_723_161_255_088_169_167);
        let mut message = snap.ticker_prefix().to_vec();
        write_ticker_suffix(&mut message, 3, false);
        let mut digits = itoa::Buffer::new();
        let suffix_len: usize = ticker_suffix(&mut digits, 3, false)
            .iter()
            .map(|p| p.len())
            .sum();
        assert_eq!(message.len(), snap.ticker_prefix().len() + suffix_len);
        let value: serde_json::Value = serde_json::from_slice(&message).unwrap_or_default();
        let expected = serde_json::json!({
            "type": "ticker", "symbol": "BTCUSDT", "seq": 1,
            "bid": "61800.20", "bid_size": "2.507", "ask": "61800.30", "ask_size": "2.510",
            "last": null, "last_size": null,
            "exchange_ts_ns": 1_723_161_256_313_000_000_i64,
            "ingest_ts_ns": 1_723_161_255_088_169_167_i64,
            "skipped": 3, "snapshot": false
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn decimals_print_exactly_as_display_does() {
        let mut cases: Vec<Decimal> = [
            "0",
            "0.00",
            "-0.00",
            "1",
            "-1",
            "61800.20",
            "61837.63000000",
            "0.00000001",
            "-0.5",
            "10",
            "100.0",
            "123456789.987654321",
            "0.1",
            "7.0000000000000000000000000001",
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
        ]
        .iter()
        .map(|s| Decimal::from_str_exact(s).unwrap_or_default())
        .collect();
        // And a spread of scales and magnitudes.
        let mut x: i64 = 1;
        for scale in 0..20 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            cases.push(Decimal::new(x, scale));
        }
        for value in cases {
            let mut out = Vec::new();
            write_decimal(&mut out, value);
            assert_eq!(
                String::from_utf8_lossy(&out),
                value.to_string(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn symbols_are_escaped() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\n");
        assert_eq!(out, br#""a\"b\\c\u000a""#);
    }

    #[test]
    fn requests_parse_and_bad_ones_keep_their_id() {
        assert_eq!(
            parse_request(r#"{"op":"subscribe","id":7,"symbols":["BTCUSDT"]}"#),
            Ok(Request::Subscribe {
                id: Some(7),
                symbols: vec!["BTCUSDT".into()],
                channel: None,
                max_rate_hz: None,
                depth: None
            })
        );
        assert_eq!(
            parse_request(r#"{"op":"ping","id":9}"#),
            Ok(Request::Ping { id: Some(9) })
        );
        let unknown = parse_request(r#"{"op":"fly","id":3}"#);
        assert_eq!(unknown.map_err(|e| e.id), Err(Some(3)));
        let wrong_type = parse_request(r#"{"op":"subscribe","id":4,"symbols":"BTCUSDT"}"#);
        assert_eq!(wrong_type.map_err(|e| e.id), Err(Some(4)));
        assert!(parse_request("{not json").is_err());
        assert!(parse_request("[1,2]").is_err());
        assert!(parse_request(r#"{"op":"subscribe","symbols":[],"max_rate_hz":-1}"#).is_err());
    }

    #[test]
    fn replies_encode_as_documented() {
        let reply = Reply::Subscribed {
            id: Some(7),
            channel: TICKER_CHANNEL,
            symbols: &["BTCUSDT"],
        };
        assert_eq!(
            reply.encode(),
            br#"{"type":"subscribed","id":7,"channel":"ticker","symbols":["BTCUSDT"]}"#
        );
        let error = Reply::error(
            Some(7),
            ErrorCode::UnknownSymbol,
            "no such symbol",
            &["FOO"],
        );
        assert_eq!(
            error.encode(),
            br#"{"type":"error","id":7,"code":"unknown_symbol","message":"no such symbol","symbols":["FOO"]}"#
        );
    }
}
