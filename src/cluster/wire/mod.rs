//! The binary encoding of one book version on NATS, and the subject it goes
//! to: ticker records here, depth records in [`depth`].
//!
//! A ticker record is the whole top of book of one symbol at one version, so any
//! single record is enough to serve the symbol (the last-value cache keeps one
//! per subject). Layout, version 1, integers little-endian:
//!
//! ```text
//! u8      format version (1)
//! u8      status: 0 live, 1 stale, 2 halted
//! u8      presence bits: 1 bid, 2 ask, 4 last, 8 exchange_ts_ns
//! u64     epoch: the publishing ingest's start time (Unix ns)
//! varint  seq: the symbol's book version (0: declared, no version yet)
//! i64     ingest_ts_ns
//! i64     exchange_ts_ns                    (if present)
//! level   bid, ask, last: price then size   (each if present)
//! varint  status reason length, then UTF-8
//! varint  symbol length, then UTF-8
//! ```
//!
//! A decimal is its mantissa as a zigzag LEB128 varint and its scale as a
//! `u8`, so prices keep the venue's scale (`61800.20` stays `61800.20`) in a
//! few bytes. Decoding never panics: every length is checked and a malformed
//! record is a [`WireError`].

pub mod depth;

use std::sync::Arc;

use rust_decimal::Decimal;

use crate::book::{Level, Snapshot};
use crate::fanout::{SymbolState, SymbolStatus};

/// The subject prefix every ticker record is published under.
pub const SUBJECT_PREFIX: &str = "tickwire.v1.ticker.";

/// The subject filter matching every ticker record.
pub const SUBJECT_FILTER: &str = "tickwire.v1.ticker.>";

const FORMAT_VERSION: u8 = 1;
const HAS_BID: u8 = 1;
const HAS_ASK: u8 = 2;
const HAS_LAST: u8 = 4;
const HAS_EXCHANGE_TS: u8 = 8;

/// Longest symbol or status reason a record carries.
pub const MAX_TEXT_BYTES: usize = 1024;

/// The NATS subject for `symbol`: `tickwire.v1.ticker.<token>`, or `None` for
/// an empty symbol (a subject token cannot be empty).
///
/// The token keeps ASCII letters, digits, `_`, `-` and `:` as they are and
/// writes every other byte as `%XX` (uppercase hex, `%` included), so `.`,
/// `*`, `>` and whitespace never reach the subject and two symbols never share
/// a token.
pub fn subject_for(symbol: &str) -> Option<String> {
    subject_under(SUBJECT_PREFIX, symbol)
}

/// `prefix` then `symbol` as one subject token, as [`subject_for`] writes it.
pub(super) fn subject_under(prefix: &str, symbol: &str) -> Option<String> {
    if symbol.is_empty() {
        return None;
    }
    let mut subject = String::with_capacity(prefix.len() + symbol.len());
    subject.push_str(prefix);
    for byte in symbol.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b':') {
            subject.push(char::from(byte));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            subject.push('%');
            subject.push(char::from(HEX[usize::from(byte >> 4)]));
            subject.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    Some(subject)
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub struct TickerRecord {
    /// The publishing ingest's start time; a later epoch supersedes any seq.
    pub epoch: u64,
    /// The ingest's book version of the symbol (0: declared, no data yet).
    pub seq: u64,
    /// The served symbol name.
    pub symbol: Arc<str>,
    /// The symbol's status on the ingest when this record was published.
    pub state: SymbolState,
    /// Why the symbol is not live (empty when it is).
    pub reason: String,
    /// Best bid, best ask and last trade, as in [`Snapshot`].
    pub bid: Option<Level>,
    pub ask: Option<Level>,
    pub last: Option<Level>,
    /// Venue time of the update that made this version, if the venue stamps one.
    pub exchange_ts_ns: Option<i64>,
    /// When the ingest took the update in, so latency stays end to end.
    pub ingest_ts_ns: i64,
}

impl TickerRecord {
    /// The version and status an ingest publishes for `snapshot`.
    pub fn of_snapshot(snapshot: &Snapshot, epoch: u64, status: &SymbolStatus) -> Self {
        Self {
            epoch,
            seq: snapshot.seq,
            symbol: snapshot.symbol.clone(),
            state: status.state,
            reason: status.reason.to_string(),
            bid: snapshot.bid,
            ask: snapshot.ask,
            last: snapshot.last,
            exchange_ts_ns: snapshot.exchange_ts_ns,
            ingest_ts_ns: snapshot.ingest_ts_ns,
        }
    }

    /// The record of a symbol that is served but has no version yet.
    pub fn declared(symbol: Arc<str>, epoch: u64, status: &SymbolStatus) -> Self {
        Self {
            epoch,
            seq: 0,
            symbol,
            state: status.state,
            reason: status.reason.to_string(),
            bid: None,
            ask: None,
            last: None,
            exchange_ts_ns: None,
            ingest_ts_ns: 0,
        }
    }

    /// The snapshot a gateway serves for this record, numbered `seq`.
    pub fn to_snapshot(&self, symbol: &Arc<str>, seq: u64) -> Snapshot {
        Snapshot::from_parts(
            symbol.clone(),
            seq,
            self.bid,
            self.ask,
            self.last,
            self.exchange_ts_ns,
            self.ingest_ts_ns,
        )
    }

    /// The record's bytes. Text longer than [`MAX_TEXT_BYTES`] is cut at a
    /// character boundary (symbols that long are never served).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.symbol.len());
        let mut presence = 0;
        for (bit, present) in [
            (HAS_BID, self.bid.is_some()),
            (HAS_ASK, self.ask.is_some()),
            (HAS_LAST, self.last.is_some()),
            (HAS_EXCHANGE_TS, self.exchange_ts_ns.is_some()),
        ] {
            if present {
                presence |= bit;
            }
        }
        let header = Header {
            version: FORMAT_VERSION,
            state: self.state,
            presence,
            epoch: self.epoch,
            seq: self.seq,
        };
        header.put(&mut out);
        put_timestamps(&mut out, self.ingest_ts_ns, self.exchange_ts_ns);
        for level in [self.bid, self.ask, self.last].iter().flatten() {
            put_level(&mut out, level);
        }
        put_text(&mut out, &self.reason);
        put_text(&mut out, &self.symbol);
        out
    }

    /// Reads a record; any malformation is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut reader = Reader { bytes };
        let Header {
            state,
            presence,
            epoch,
            seq,
            ..
        } = reader.header(FORMAT_VERSION)?;
        let (ingest_ts_ns, exchange_ts_ns) = reader.timestamps(presence)?;
        let mut level = |bit: u8| -> Result<Option<Level>, WireError> {
            if presence & bit == 0 {
                return Ok(None);
            }
            reader.level().map(Some)
        };
        let bid = level(HAS_BID)?;
        let ask = level(HAS_ASK)?;
        let last = level(HAS_LAST)?;
        // No venue quotes or trades a negative quantity, and an ingest
        // refuses such ticks when it parses them: only a forged record has one.
        if [&bid, &ask, &last]
            .into_iter()
            .flatten()
            .any(|level| level.size < Decimal::ZERO)
        {
            return Err(WireError::NegativeSize);
        }
        let (reason, symbol) = reader.reason_and_symbol()?;
        Ok(Self {
            epoch,
            seq,
            symbol,
            state,
            reason,
            bid,
            ask,
            last,
            exchange_ts_ns,
            ingest_ts_ns,
        })
    }
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("record ends early")]
    Truncated,
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    #[error("unknown status {0}")]
    UnknownState(u8),
    #[error("a number does not fit")]
    Overflow,
    #[error("decimal out of range")]
    BadDecimal,
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("text longer than {MAX_TEXT_BYTES} bytes")]
    TextTooLong,
    #[error("empty symbol")]
    EmptySymbol,
    #[error("{0} bytes after the record")]
    TrailingBytes(usize),
    #[error("{0} levels on a side, more than a record carries")]
    TooManyLevels(u128),
    #[error("a side's levels are not strictly best first")]
    Unordered,
    #[error("a level's size is zero or below")]
    NonPositiveSize,
    #[error("a size is below zero")]
    NegativeSize,
}

fn put_varint(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_decimal(out: &mut Vec<u8>, value: Decimal) {
    let mantissa = value.mantissa();
    let zigzag = ((mantissa << 1) ^ (mantissa >> 127)) as u128;
    put_varint(out, zigzag);
    // A Decimal's scale is at most 28.
    out.push(value.scale() as u8);
}

/// The fields every record starts with.
struct Header {
    version: u8,
    state: SymbolState,
    /// Which optional fields follow; [`HAS_EXCHANGE_TS`] means the same in
    /// every record.
    presence: u8,
    epoch: u64,
    seq: u64,
}

impl Header {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.version, self.state as u8, self.presence]);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        put_varint(out, u128::from(self.seq));
    }
}

fn put_timestamps(out: &mut Vec<u8>, ingest_ts_ns: i64, exchange_ts_ns: Option<i64>) {
    out.extend_from_slice(&ingest_ts_ns.to_le_bytes());
    if let Some(ts) = exchange_ts_ns {
        out.extend_from_slice(&ts.to_le_bytes());
    }
}

fn put_level(out: &mut Vec<u8>, level: &Level) {
    put_decimal(out, level.price);
    put_decimal(out, level.size);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    put_varint(out, end as u128);
    out.extend_from_slice(&text.as_bytes()[..end]);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn varint(&mut self) -> Result<u128, WireError> {
        let mut value = 0u128;
        for shift in (0..128).step_by(7) {
            let byte = self.u8()?;
            let bits = u128::from(byte & 0x7f);
            if shift > 0 && bits.leading_zeros() < shift {
                return Err(WireError::Overflow);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Overflow)
    }

    fn decimal(&mut self) -> Result<Decimal, WireError> {
        let zigzag = self.varint()?;
        let mantissa = (zigzag >> 1) as i128 ^ -((zigzag & 1) as i128);
        let scale = self.u8()?;
        Decimal::try_from_i128_with_scale(mantissa, u32::from(scale))
            .map_err(|_| WireError::BadDecimal)
    }

    /// A record's [`Header`], which must be of format `version`.
    fn header(&mut self, version: u8) -> Result<Header, WireError> {
        let found = self.u8()?;
        if found != version {
            return Err(WireError::UnknownVersion(found));
        }
        Ok(Header {
            version,
            state: self.state()?,
            presence: self.u8()?,
            epoch: u64::from_le_bytes(self.array()?),
            seq: u64::try_from(self.varint()?).map_err(|_| WireError::Overflow)?,
        })
    }

    /// `ingest_ts_ns`, then `exchange_ts_ns` if `presence` says it follows.
    fn timestamps(&mut self, presence: u8) -> Result<(i64, Option<i64>), WireError> {
        let ingest_ts_ns = i64::from_le_bytes(self.array()?);
        let exchange_ts_ns = if presence & HAS_EXCHANGE_TS != 0 {
            Some(i64::from_le_bytes(self.array()?))
        } else {
            None
        };
        Ok((ingest_ts_ns, exchange_ts_ns))
    }

    fn state(&mut self) -> Result<SymbolState, WireError> {
        match self.u8()? {
            0 => Ok(SymbolState::Live),
            1 => Ok(SymbolState::Stale),
            2 => Ok(SymbolState::Halted),
            other => Err(WireError::UnknownState(other)),
        }
    }

    /// A record's last two fields, which must end it: the status reason and
    /// a non-empty symbol.
    fn reason_and_symbol(mut self) -> Result<(String, Arc<str>), WireError> {
        let reason = self.text()?.to_owned();
        let symbol: Arc<str> = Arc::from(self.text()?);
        if !self.bytes.is_empty() {
            return Err(WireError::TrailingBytes(self.bytes.len()));
        }
        if symbol.is_empty() {
            return Err(WireError::EmptySymbol);
        }
        Ok((reason, symbol))
    }

    fn level(&mut self) -> Result<Level, WireError> {
        Ok(Level {
            price: self.decimal()?,
            size: self.decimal()?,
        })
    }

    fn text(&mut self) -> Result<&'a str, WireError> {
        let len = usize::try_from(self.varint()?).map_err(|_| WireError::Overflow)?;
        if len > MAX_TEXT_BYTES {
            return Err(WireError::TextTooLong);
        }
        std::str::from_utf8(self.take(len)?).map_err(|_| WireError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap_or_default()
    }

    fn level(price: &str, size: &str) -> Option<Level> {
        Some(Level {
            price: dec(price),
            size: dec(size),
        })
    }

    fn full_record() -> TickerRecord {
        TickerRecord {
            epoch: 1_723_075_200_123_456_789,
            seq: 4812,
            symbol: Arc::from("spot:BTCUSDT"),
            state: SymbolState::Live,
            reason: String::new(),
            bid: level("61800.20", "2.507"),
            ask: level("61800.30", "0.00000000"),
            last: level(
                "-0.000000000000000000000000001",
                "79228162514264337593543950335",
            ),
            exchange_ts_ns: Some(-5),
            ingest_ts_ns: 1_723_075_200_999_000_000,
        }
    }

    #[test]
    fn records_round_trip_with_their_scale() {
        let record = full_record();
        let bytes = record.encode();
        let decoded = TickerRecord::decode(&bytes);
        assert_eq!(decoded.as_ref(), Ok(&record));
        let bid = decoded
            .ok()
            .and_then(|r| r.bid)
            .map(|l| l.price.to_string());
        assert_eq!(bid.as_deref(), Some("61800.20"), "scale kept");

        let stale = TickerRecord {
            state: SymbolState::Stale,
            reason: "feed disconnected".into(),
            symbol: Arc::from("a.b *>c"),
            ..TickerRecord::declared(Arc::from("x"), 7, &status(SymbolState::Live))
        };
        assert_eq!(TickerRecord::decode(&stale.encode()), Ok(stale));
    }

    fn status(state: SymbolState) -> SymbolStatus {
        SymbolStatus {
            generation: 0,
            state,
            reason: Arc::from(""),
        }
    }

    #[test]
    fn a_negative_size_is_malformed_and_minus_zero_is_zero() {
        let negative = TickerRecord {
            bid: level("61800.20", "-0.001"),
            ..full_record()
        };
        assert_eq!(
            TickerRecord::decode(&negative.encode()),
            Err(WireError::NegativeSize)
        );
        let minus_zero = TickerRecord {
            last: level("61800.20", "-0"),
            ..full_record()
        };
        assert!(TickerRecord::decode(&minus_zero.encode()).is_ok());
    }

    #[test]
    fn a_version_is_compact() {
        let record = TickerRecord {
            last: None,
            ..full_record()
        };
        let bytes = record.encode();
        assert!(bytes.len() < 64, "{} bytes", bytes.len());
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = full_record().encode();
        for end in 0..bytes.len() {
            assert!(TickerRecord::decode(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            TickerRecord::decode(&longer),
            Err(WireError::TrailingBytes(1))
        );
        let mut version = bytes.clone();
        version[0] = 9;
        assert_eq!(
            TickerRecord::decode(&version),
            Err(WireError::UnknownVersion(9))
        );
        let mut state = bytes.clone();
        state[1] = 3;
        assert_eq!(
            TickerRecord::decode(&state),
            Err(WireError::UnknownState(3))
        );
        // Flip every byte in turn: decoding may succeed or fail, never panic.
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            let _ = TickerRecord::decode(&flipped);
        }
        let endless_varint = [
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(
            TickerRecord::decode(&endless_varint),
            Err(WireError::Overflow)
        );
    }

    #[test]
    fn a_scale_beyond_28_is_refused() {
        let mut out = vec![];
        put_varint(&mut out, 2);
        out.push(29);
        let mut reader = Reader { bytes: &out };
        assert_eq!(reader.decimal(), Err(WireError::BadDecimal));
    }

    #[test]
    fn subjects_are_single_safe_tokens_and_never_collide() {
        assert_eq!(
            subject_for("spot:BTCUSDT").as_deref(),
            Some("tickwire.v1.ticker.spot:BTCUSDT")
        );
        assert_eq!(
            subject_for("BTC-USD_PERP").as_deref(),
            Some("tickwire.v1.ticker.BTC-USD_PERP")
        );
        assert_eq!(
            subject_for("a.b *>%\té").as_deref(),
            Some("tickwire.v1.ticker.a%2Eb%20%2A%3E%25%09%C3%A9")
        );
        assert_eq!(subject_for(""), None);
        let symbols = ["a.b", "a%2Eb", "a*", "a%2A", "a>", "a b", "a_b", "A.B"];
        let mut seen = std::collections::HashSet::new();
        for symbol in symbols {
            let subject = subject_for(symbol).unwrap_or_default();
            let token = &subject[SUBJECT_PREFIX.len()..];
            assert!(
                !token.contains(['.', '*', '>', ' ', '\t']),
                "{symbol} → {token}"
            );
            assert!(seen.insert(subject), "{symbol} collides");
        }
    }
}
