//! The `book` channel's message: the best N levels of a symbol's depth, with
//! a CRC-32 checksum of exactly those levels (see `docs/protocol.md`).

use crate::book::depth::DepthSnapshot;
use crate::book::Level;

use super::{write_decimal, write_int, write_json_string, write_stamps};

/// The channel name of full-depth subscriptions.
pub const BOOK_CHANNEL: &str = "book";

/// Encodes a `book` message of `depth` levels up to and including
/// `"skipped":`, the part every subscriber of that depth shares.
pub fn encode_book_prefix(snapshot: &DepthSnapshot, depth: usize) -> Vec<u8> {
    let (bids, asks) = snapshot.top(depth);
    let mut out = Vec::with_capacity(160 + 48 * (bids.len() + asks.len()));
    let mut crc = crc32fast::Hasher::new();
    out.extend_from_slice(br#"{"type":"book","symbol":"#);
    write_json_string(&mut out, &snapshot.symbol);
    out.extend_from_slice(br#","seq":"#);
    write_int(&mut out, snapshot.seq);
    out.extend_from_slice(br#","depth":"#);
    write_int(&mut out, depth);
    out.extend_from_slice(br#","bids":"#);
    write_levels(&mut out, &mut crc, bids);
    crc.update(b"|");
    out.extend_from_slice(br#","asks":"#);
    write_levels(&mut out, &mut crc, asks);
    out.extend_from_slice(br#","checksum":"#);
    write_int(&mut out, crc.finalize());
    write_stamps(&mut out, snapshot.exchange_ts_ns, snapshot.ingest_ts_ns);
    out
}

/// A `status` message about a symbol's book (`"channel":"book"`), which is
/// separate from the status of its ticker.
pub fn encode_status(symbol: &str, state: &str, reason: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Status<'a> {
        r#type: &'a str,
        channel: &'a str,
        symbol: &'a str,
        state: &'a str,
        reason: &'a str,
    }
    let status = Status {
        r#type: "status",
        channel: BOOK_CHANNEL,
        symbol,
        state,
        reason,
    };
    // Serializing a plain struct into a Vec cannot fail.
    serde_json::to_vec(&status).unwrap_or_default()
}

/// The checksum of a book message's levels: CRC-32 (IEEE 802.3, as zlib's
/// `crc32`) of `price:size` per level, joined by `,`, bids then `|` then
/// asks, each side best first, with prices and sizes exactly as sent.
pub fn checksum(bids: &[Level], asks: &[Level]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    let mut scratch = Vec::new();
    write_levels(&mut scratch, &mut crc, bids);
    crc.update(b"|");
    write_levels(&mut scratch, &mut crc, asks);
    crc.finalize()
}

/// Writes `[["price","size"],...]` and feeds the checksum text of the same
/// levels to `crc` (the decimal digits are hashed straight from `out`).
fn write_levels(out: &mut Vec<u8>, crc: &mut crc32fast::Hasher, levels: &[Level]) {
    out.push(b'[');
    for (i, level) in levels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
            crc.update(b",");
        }
        out.extend_from_slice(b"[\"");
        let start = out.len();
        write_decimal(out, level.price);
        crc.update(&out[start..]);
        crc.update(b":");
        out.extend_from_slice(b"\",\"");
        let start = out.len();
        write_decimal(out, level.size);
        crc.update(&out[start..]);
        out.extend_from_slice(b"\"]");
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::depth::DepthBook;
    use crate::book::tests::level;
    use crate::normalize::depth::{DepthMessage, Sequence};
    use std::sync::Arc;

    #[test]
    fn checksum_is_crc32_of_the_documented_text() {
        let bids = [level("61800.20", "2.909"), level("61800.10", "0.696")];
        let asks = [level("61800.30", "1.000")];
        let text = "61800.20:2.909,61800.10:0.696|61800.30:1.000";
        assert_eq!(checksum(&bids, &asks), crc32fast::hash(text.as_bytes()));
        // The standard CRC-32 check value, so any zlib-compatible CRC-32 agrees.
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(checksum(&[], &[]), crc32fast::hash(b"|"));
    }

    #[test]
    fn book_message_matches_the_documented_shape() {
        let mut book = DepthBook::default();
        let snapshot = DepthMessage {
            symbol: String::new(),
            sequence: Sequence::Snapshot,
            last_update_id: Some(7),
            bids: vec![level("61800.20", "2.909"), level("61800.10", "0.696")],
            asks: vec![level("61800.30", "1.000"), level("61800.40", "0.5")],
            recv_ts_ns: 0,
            exchange_ts_ns: Some(5),
        };
        book.apply(&snapshot);
        let published = book.publish(&Arc::from("usdm:BTCUSDT"), 3, 100, 9);
        let mut message = encode_book_prefix(&published, 1);
        message.extend_from_slice(br#"0,"snapshot":true}"#);
        let value: serde_json::Value = serde_json::from_slice(&message).unwrap_or_default();
        let expected = serde_json::json!({
            "type": "book", "symbol": "usdm:BTCUSDT", "seq": 3, "depth": 1,
            "bids": [["61800.20", "2.909"]], "asks": [["61800.30", "1.000"]],
            "checksum": crc32fast::hash(b"61800.20:2.909|61800.30:1.000"),
            "exchange_ts_ns": 5, "ingest_ts_ns": 9, "skipped": 0, "snapshot": true
        });
        assert_eq!(value, expected);
    }
}
