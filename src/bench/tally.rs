//! What a load connection does with each message it receives, without I/O: read
//! the few ticker fields that matter, check `seq`/`skipped` per symbol, and
//! record end-to-end latency. The caller passes the receive time in.

use std::borrow::Cow;
use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::Deserialize;

/// Latency samples are nanoseconds, 1 ns .. 60 s at 3 significant digits (the
/// server's own bounds): three digits hold at every magnitude, also below 1 ms.
pub const HIGHEST_NS: u64 = 60_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram with the bounds above.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts; a failure would be a bug here.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// The fields of a server message the load client reads; the rest (prices,
/// sizes) is skipped by the parser without being copied.
#[derive(Debug, PartialEq, Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    symbol: Option<Cow<'a, str>>,
    seq: Option<u64>,
    skipped: Option<u64>,
    ingest_ts_ns: Option<i64>,
    exchange_ts_ns: Option<i64>,
    snapshot: Option<bool>,
}

/// The load client's hot path: the fields of [`Wire`] read straight from a
/// flat JSON object (strings, numbers, `true`, `false`, `null`; no nesting,
/// no escapes), the other values checked and skipped. serde_json spends most
/// of its time there matching field names and skipping the prices; this
/// costs a fraction. Whatever it is not sure to read exactly as serde_json
/// would — an escape, a nested value, a repeated field, a number that is
/// not an integer where one is expected, a missing `type` — is `None`, and
/// the caller asks serde_json.
fn scan(bytes: &[u8]) -> Option<Wire<'_>> {
    let text = |range: std::ops::Range<usize>| std::str::from_utf8(bytes.get(range)?).ok();
    let mut wire = Wire {
        kind: Cow::Borrowed(""),
        symbol: None,
        seq: None,
        skipped: None,
        ingest_ts_ns: None,
        exchange_ts_ns: None,
        snapshot: None,
    };
    let mut seen = 0u8;
    let mut at = skip_space(bytes, 0);
    at = expect_byte(bytes, at, b'{')?;
    loop {
        at = skip_space(bytes, at);
        let (key, after) = plain_string(bytes, at)?;
        at = skip_space(bytes, after);
        at = skip_space(bytes, expect_byte(bytes, at, b':')?);
        match WireField::of(bytes.get(key)?) {
            None => at = skip_value(bytes, at)?,
            Some(field) => {
                let bit = 1 << field as u8;
                if seen & bit != 0 {
                    return None; // serde_json refuses a repeated field.
                }
                seen |= bit;
                let null = bytes.get(at..at + 4) == Some(b"null");
                at = match field {
                    // Every field but `type` is an `Option`, left `None`.
                    _ if null && field != WireField::Kind => at + 4,
                    WireField::Kind | WireField::Symbol => {
                        let (value, after) = plain_string(bytes, at)?;
                        let value = Cow::Borrowed(text(value)?);
                        match field {
                            WireField::Kind => wire.kind = value,
                            _ => wire.symbol = Some(value),
                        }
                        after
                    }
                    WireField::Seq
                    | WireField::Skipped
                    | WireField::IngestTs
                    | WireField::ExchangeTs => {
                        let (value, after) = integer(bytes, at)?;
                        match field {
                            WireField::Seq => wire.seq = Some(u64::try_from(value).ok()?),
                            WireField::Skipped => wire.skipped = Some(u64::try_from(value).ok()?),
                            WireField::IngestTs => {
                                wire.ingest_ts_ns = Some(i64::try_from(value).ok()?);
                            }
                            _ => wire.exchange_ts_ns = Some(i64::try_from(value).ok()?),
                        }
                        after
                    }
                    WireField::Snapshot => {
                        let (value, after) = match bytes.get(at..)? {
                            [b't', b'r', b'u', b'e', ..] => (true, at + 4),
                            [b'f', b'a', b'l', b's', b'e', ..] => (false, at + 5),
                            _ => return None,
                        };
                        wire.snapshot = Some(value);
                        after
                    }
                };
            }
        }
        continue_after_value(bytes, &mut at)?;
        if bytes.get(at) == Some(&b'}') {
            break;
        }
        at += 1;
    }
    // `type` is the one field without a default; trailing bytes are an error.
    (seen & 1 << WireField::Kind as u8 != 0 && skip_space(bytes, at + 1) == bytes.len())
        .then_some(wire)
}

/// The fields of [`Wire`], by their names in the message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WireField {
    Kind,
    Symbol,
    Seq,
    Skipped,
    IngestTs,
    ExchangeTs,
    Snapshot,
}

impl WireField {
    fn of(key: &[u8]) -> Option<Self> {
        Some(match key {
            b"type" => Self::Kind,
            b"symbol" => Self::Symbol,
            b"seq" => Self::Seq,
            b"skipped" => Self::Skipped,
            b"ingest_ts_ns" => Self::IngestTs,
            b"exchange_ts_ns" => Self::ExchangeTs,
            b"snapshot" => Self::Snapshot,
            _ => return None,
        })
    }
}

/// After a value: moves `at` onto the `,` or `}` that must follow it.
fn continue_after_value(bytes: &[u8], at: &mut usize) -> Option<()> {
    *at = skip_space(bytes, *at);
    matches!(bytes.get(*at), Some(b',' | b'}')).then_some(())
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

fn expect_byte(bytes: &[u8], at: usize, byte: u8) -> Option<usize> {
    (bytes.get(at) == Some(&byte)).then_some(at + 1)
}

/// A string without escapes or control characters: its contents' range and
/// the position after its closing quote.
fn plain_string(bytes: &[u8], at: usize) -> Option<(std::ops::Range<usize>, usize)> {
    let start = expect_byte(bytes, at, b'"')?;
    let length = bytes
        .get(start..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    let end = start + length;
    (bytes[end] == b'"').then_some((start..end, end + 1))
}

/// A JSON integer (no fraction, no exponent, no leading zero), if it fits.
fn integer(bytes: &[u8], at: usize) -> Option<(i128, usize)> {
    let negative = bytes.get(at) == Some(&b'-');
    let start = at + usize::from(negative);
    let digits = bytes
        .get(start..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = start + digits;
    // `-0` too is left to serde_json.
    let zero_led = bytes[start..end].first() == Some(&b'0');
    if digits == 0 || digits > 20 || (zero_led && (digits > 1 || negative)) {
        return None;
    }
    if matches!(bytes.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let magnitude = bytes[start..end]
        .iter()
        .fold(0i128, |n, d| n * 10 + i128::from(d - b'0'));
    Some((if negative { -magnitude } else { magnitude }, end))
}

/// Skips a string, number, `true`, `false` or `null` that the client does not
/// read, checking it as JSON; anything nested is `None`.
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => plain_string(bytes, at).map(|(_, after)| after),
        b't' => (bytes.get(at..at + 4)? == b"true").then_some(at + 4),
        b'f' => (bytes.get(at..at + 5)? == b"false").then_some(at + 5),
        b'n' => (bytes.get(at..at + 4)? == b"null").then_some(at + 4),
        b'-' | b'0'..=b'9' => skip_number(bytes, at),
        _ => None,
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn skip_number(bytes: &[u8], mut at: usize) -> Option<usize> {
    let digits = |at: usize| {
        let n = bytes.get(at..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        });
        (n > 0).then_some((n, at + n))
    };
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    let (n, after) = digits(at)?;
    if n > 1 && bytes[at] == b'0' {
        return None;
    }
    at = after;
    if bytes.get(at) == Some(&b'.') {
        at = digits(at + 1)?.1;
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        at = digits(at)?.1;
    }
    Some(at)
}

/// Which timestamp of a ticker latency is measured from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// `ingest_ts_ns`: when the server took the update in.
    #[default]
    Ingest,
    /// `exchange_ts_ns`, which a synthetic feed sets to the update's *intended*
    /// time on its constant-rate schedule: a feed or server that falls behind
    /// shows up as latency instead of hiding (coordinated omission).
    Intended,
}

impl Clock {
    pub fn as_str(self) -> &'static str {
        match self {
            Clock::Ingest => "ingest",
            Clock::Intended => "intended",
        }
    }
}

/// A `ticker` message, reduced to what the benchmark checks.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticker<'a> {
    pub symbol: Cow<'a, str>,
    pub seq: u64,
    pub skipped: u64,
    pub ingest_ts_ns: i64,
    pub exchange_ts_ns: Option<i64>,
    pub snapshot: bool,
}

/// One server message as the benchmark sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    Ticker(Ticker<'a>),
    /// An `error` message (rejected symbols, limits).
    Error,
    /// Anything else well-formed: `subscribed`, `status`, `pong`, ...
    Other,
    /// Not JSON, no `type`, or a ticker without `symbol`, `seq` or `ingest_ts_ns`.
    Malformed,
}

/// Reads one text message: a flat object without escapes (what servers
/// send) by a scan of its own, anything else with serde_json, which reads
/// both the same.
pub fn parse(text: &str) -> Received<'_> {
    let wire = match scan(text.as_bytes()) {
        Some(wire) => wire,
        None => match serde_json::from_str::<Wire<'_>>(text) {
            Ok(wire) => wire,
            Err(_) => return Received::Malformed,
        },
    };
    match wire.kind.as_ref() {
        "ticker" => match (wire.symbol, wire.seq, wire.ingest_ts_ns) {
            (Some(symbol), Some(seq), Some(ingest_ts_ns)) => Received::Ticker(Ticker {
                symbol,
                seq,
                skipped: wire.skipped.unwrap_or(0),
                ingest_ts_ns,
                exchange_ts_ns: wire.exchange_ts_ns,
                snapshot: wire.snapshot.unwrap_or(false),
            }),
            _ => Received::Malformed,
        },
        "error" => Received::Error,
        _ => Received::Other,
    }
}

/// How a ticker's `seq` and `skipped` relate to the previous one for its symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqCheck {
    /// The first message for the symbol on this connection: nothing to compare.
    First,
    Ok,
    /// `seq` did not increase: an older or repeated version.
    Regression,
    /// `seq` increased but `skipped != seq - previous - 1`.
    SkippedMismatch,
}

/// The version a connection holds for one symbol.
#[derive(Clone, Copy, Debug)]
struct Held {
    seq: u64,
    /// Its timestamp on the run's clock, if it had one.
    ts: Option<i64>,
}

/// The last `seq` seen per symbol on one connection.
#[derive(Debug, Default)]
pub struct SeqChecker {
    /// Looked up once per message. The default SipHash guards against keys
    /// chosen to collide; these come from the server being measured.
    last: HashMap<Box<str>, Held, foldhash::fast::RandomState>,
}

impl SeqChecker {
    /// Checks a ticker against the previous one for its symbol and remembers it.
    /// A `snapshot` message (a fresh subscription) must still move forward, but
    /// its `skipped` is not compared.
    pub fn check(&mut self, symbol: &str, seq: u64, skipped: u64, snapshot: bool) -> SeqCheck {
        self.check_timed(symbol, seq, skipped, snapshot, None).0
    }

    /// [`SeqChecker::check`], also remembering the version's timestamp `ts`
    /// and returning the one of the version held before (for a newer version).
    pub fn check_timed(
        &mut self,
        symbol: &str,
        seq: u64,
        skipped: u64,
        snapshot: bool,
        ts: Option<i64>,
    ) -> (SeqCheck, Option<i64>) {
        let Some(held) = self.last.get_mut(symbol) else {
            self.last.insert(symbol.into(), Held { seq, ts });
            return (SeqCheck::First, None);
        };
        if seq <= held.seq {
            // Keep the newest seen, so one stray old version counts once.
            return (SeqCheck::Regression, None);
        }
        let expected = seq - held.seq - 1;
        let previous_ts = held.ts;
        *held = Held { seq, ts };
        let check = if !snapshot && skipped != expected {
            SeqCheck::SkippedMismatch
        } else {
            SeqCheck::Ok
        };
        (check, previous_ts)
    }

    /// Each symbol held, with the timestamp of the version held (symbols
    /// whose version had none are left out).
    pub fn held(&self) -> impl Iterator<Item = (&str, i64)> {
        self.last
            .iter()
            .filter_map(|(symbol, held)| Some((&**symbol, held.ts?)))
    }
}

/// The newest value of each symbol any connection held at a staleness
/// sample. Looked up twice for every value of every connection at each
/// sample, so keyed with foldhash, as [`SeqChecker`] is.
pub type Freshest = HashMap<Box<str>, i64, foldhash::fast::RandomState>;

/// One staleness sample at `now_ns` over the symbols that `holders` hold:
/// for every value each holder holds, `record(kind, age, freshest_age)` gets
/// the holder's `kind`, the value's age, and the age of the newest value of
/// the same symbol that any connection has held by now, the other load
/// threads' included: `freshest` keeps that newest timestamp per symbol
/// across samples and threads, and this sample raises it first. So the
/// freshest age of each pair is never above its age, and the gap between
/// the two is how far that client lagged the freshest one. Ages are clamped
/// into the histograms' range.
pub fn sample_staleness<K: Copy>(
    now_ns: i64,
    holders: &[(&SeqChecker, K)],
    freshest: &mut Freshest,
    mut record: impl FnMut(K, u64, u64),
) {
    let age = |ts: i64| now_ns.saturating_sub(ts).clamp(1, HIGHEST_NS as i64) as u64;
    for (seqs, _) in holders {
        for (symbol, ts) in seqs.held() {
            match freshest.get_mut(symbol) {
                Some(newest) => *newest = (*newest).max(ts),
                None => {
                    freshest.insert(symbol.into(), ts);
                }
            }
        }
    }
    for &(seqs, kind) in holders {
        for (symbol, ts) in seqs.held() {
            let newest = freshest.get(symbol).copied().unwrap_or(ts);
            record(kind, age(ts), age(newest));
        }
    }
}

/// The latency distributions of one kind of reader, in nanoseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    /// One sample per delivered ticker: its own latency.
    pub delivered: Histogram<u64>,
    /// One sample per *version*, the conflated ones included: a delivered
    /// version counts its own latency; each version conflation skipped counts
    /// the time from the previous held version's timestamp — the earliest the
    /// skipped one could have existed — to the delivery that replaced it, an
    /// upper bound on how long the client lacked it.
    pub versions: Histogram<u64>,
    /// Sampled at fixed times (see [`sample_staleness`]): for every symbol a
    /// connection holds, the age of the value it holds.
    pub staleness: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            delivered: new_histogram(),
            versions: new_histogram(),
            staleness: new_histogram(),
        }
    }
}

impl Latency {
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.delivered.add(&other.delivered);
        let _ = self.versions.add(&other.versions);
        let _ = self.staleness.add(&other.staleness);
    }
}

/// Counts of one connection (or, merged, of the whole run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Non-snapshot tickers received inside the measurement window; each one is
    /// a latency sample.
    pub delivered: u64,
    /// Sum of their `skipped` fields: versions conflation dropped for this client.
    pub skipped: u64,
    /// Every non-snapshot ticker, warm-up included.
    pub delivered_total: u64,
    /// `snapshot: true` tickers (one per subscription), never timed.
    pub snapshots: u64,
    /// Those of them received inside the measurement window.
    pub window_snapshots: u64,
    /// Samples outside 1 ns .. 60 s (a clock step, or a stuck server), clamped.
    pub clamped: u64,
    /// Window tickers without the timestamp latency is measured from (`null`
    /// `exchange_ts_ns` with `--clock intended`): counted, not timed.
    pub untimed: u64,
    /// `seq` not increasing for a symbol (whole run, warm-up included).
    pub seq_regressions: u64,
    /// `skipped` not equal to `seq - previous - 1` (whole run).
    pub skipped_mismatches: u64,
    /// `error` messages from the server.
    pub errors: u64,
    /// Other well-formed messages (`subscribed`, `status`, ...).
    pub other: u64,
    /// Text messages that could not be read.
    pub malformed: u64,
}

impl Tally {
    /// Takes in one text message received at `now_ns` (Unix-epoch ns). When
    /// `measuring`, a non-snapshot ticker's latency from `clock` goes into
    /// `latency`. Returns true for a ticker message.
    pub fn observe(
        &mut self,
        seqs: &mut SeqChecker,
        latency: &mut Latency,
        text: &str,
        now_ns: i64,
        clock: Clock,
        measuring: bool,
    ) -> bool {
        let ticker = match parse(text) {
            Received::Ticker(ticker) => ticker,
            Received::Error => {
                self.errors += 1;
                return false;
            }
            Received::Other => {
                self.other += 1;
                return false;
            }
            Received::Malformed => {
                self.malformed += 1;
                return false;
            }
        };
        let from = match clock {
            Clock::Ingest => Some(ticker.ingest_ts_ns),
            Clock::Intended => ticker.exchange_ts_ns,
        };
        let (check, previous_from) = seqs.check_timed(
            &ticker.symbol,
            ticker.seq,
            ticker.skipped,
            ticker.snapshot,
            from,
        );
        match check {
            SeqCheck::First | SeqCheck::Ok => {}
            SeqCheck::Regression => self.seq_regressions += 1,
            SeqCheck::SkippedMismatch => self.skipped_mismatches += 1,
        }
        if ticker.snapshot {
            self.snapshots += 1;
            self.window_snapshots += u64::from(measuring);
            return true;
        }
        self.delivered_total += 1;
        if measuring {
            self.delivered += 1;
            // The server's count: an absurd one must not overflow the sum.
            self.skipped = self.skipped.saturating_add(ticker.skipped);
            let Some(from) = from else {
                self.untimed += 1;
                return true;
            };
            let sample = self.clamp(now_ns.saturating_sub(from));
            // In range by construction, so these never fail.
            let _ = latency.delivered.record(sample);
            let _ = latency.versions.record(sample);
            if let (Some(previous), 1..) = (previous_from, ticker.skipped) {
                let lacked = self.clamp(now_ns.saturating_sub(previous));
                let _ = latency.versions.record_n(lacked, ticker.skipped);
            }
        }
        true
    }

    /// A latency in the histograms' range, counting those that were not.
    fn clamp(&mut self, latency_ns: i64) -> u64 {
        if latency_ns < 1 {
            self.clamped += 1;
            1
        } else if latency_ns as u64 > HIGHEST_NS {
            self.clamped += 1;
            HIGHEST_NS
        } else {
            latency_ns as u64
        }
    }

    /// Protocol violations seen: must be zero.
    pub fn seq_violations(&self) -> u64 {
        self.seq_regressions + self.skipped_mismatches
    }

    pub fn merge(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.skipped = self.skipped.saturating_add(other.skipped);
        self.delivered_total += other.delivered_total;
        self.snapshots += other.snapshots;
        self.window_snapshots += other.window_snapshots;
        self.clamped += other.clamped;
        self.untimed += other.untimed;
        self.seq_regressions += other.seq_regressions;
        self.skipped_mismatches += other.skipped_mismatches;
        self.errors += other.errors;
        self.other += other.other;
        self.malformed += other.malformed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticker(symbol: &str, seq: u64, skipped: u64, ingest: i64, snapshot: bool) -> String {
        format!(
            r#"{{"type":"ticker","symbol":"{symbol}","seq":{seq},"bid":"61800.20","bid_size":"2.507","ask":"61800.30","ask_size":"2.510","last":null,"last_size":null,"exchange_ts_ns":null,"ingest_ts_ns":{ingest},"skipped":{skipped},"snapshot":{snapshot}}}"#
        )
    }

    #[test]
    fn reads_the_ticker_fields_and_nothing_else() {
        let text = ticker("spot:BTCUSDT", 4812, 3, 1_723_161_255_088_169_167, false);
        assert_eq!(
            parse(&text),
            Received::Ticker(Ticker {
                symbol: "spot:BTCUSDT".into(),
                seq: 4812,
                skipped: 3,
                ingest_ts_ns: 1_723_161_255_088_169_167,
                exchange_ts_ns: None,
                snapshot: false,
            })
        );
        // Field order and whitespace are the sender's business.
        let spaced = r#"{ "snapshot": true, "seq": 1, "ingest_ts_ns": 5, "symbol": "A\u0042", "type": "ticker" }"#;
        let Received::Ticker(t) = parse(spaced) else {
            panic!("a ticker");
        };
        assert_eq!(
            (t.symbol.as_ref(), t.seq, t.skipped, t.snapshot),
            ("AB", 1, 0, true)
        );
    }

    #[test]
    fn the_scan_reads_what_serde_json_reads_or_leaves_it_to_serde_json() {
        let good = ticker("spot:BTCUSDT", 4812, 3, 1_723_161_255_088_169_167, false);
        assert!(
            scan(good.as_bytes()).is_some(),
            "the common case is scanned"
        );
        let spaced = format!(" {} ", good.replace(':', " : ").replace(',', " ,\n"));
        assert!(scan(spaced.as_bytes()).is_some(), "{spaced}");
        // Every one-byte change of a ticker (and the cases it may miss): the
        // scan either agrees with serde_json or declines.
        let mut cases: Vec<String> = [
            r#"{"type":"ticker","seq":-0,"symbol":"A","ingest_ts_ns":1}"#,
            r#"{"type":"ticker","seq":1,"seq":2,"symbol":"A","ingest_ts_ns":1}"#,
            r#"{"type":"ticker","seq":1e2,"symbol":"A","ingest_ts_ns":1}"#,
            r#"{"type":"ticker","seq":18446744073709551616,"symbol":"A","ingest_ts_ns":1}"#,
            r#"{"type":"ticker","seq":1,"symbol":"A","ingest_ts_ns":-9223372036854775809}"#,
            r#"{"type":"ticker","x":{"y":1},"seq":1,"symbol":"A","ingest_ts_ns":1}"#,
            r#"{"type":"ticker","x":01,"seq":1,"symbol":"A","ingest_ts_ns":1}"#,
            r#"{"type":"ticker","x":1.,"seq":1,"symbol":"A","ingest_ts_ns":1}"#,
            r#"{"type":null,"seq":1,"symbol":"A","ingest_ts_ns":1}"#,
            r#"{"type":"ticker","seq":1,"symbol":"A","ingest_ts_ns":1}}"#,
            r#"{"type":"ticker","seq":1,"symbol":"A","ingest_ts_ns":1,}"#,
            "{}",
        ]
        .map(String::from)
        .into();
        for at in 0..good.len() {
            for byte in [
                b'"', b'\\', b'0', b'9', b'-', b'.', b'e', b' ', b',', b':', b'}', b'{', b'n',
                b'\x01',
            ] {
                let mut bytes = good.clone().into_bytes();
                bytes[at] = byte;
                cases.extend(String::from_utf8(bytes).ok());
            }
            let mut cut = good.clone();
            cut.remove(at);
            cases.push(cut);
        }
        let mut scanned = 0;
        for case in &cases {
            let by_serde = serde_json::from_str::<Wire<'_>>(case).ok();
            if let Some(wire) = scan(case.as_bytes()) {
                scanned += 1;
                assert_eq!(Some(wire), by_serde, "{case}");
            }
        }
        assert!(scanned > cases.len() / 4, "{scanned} of {}", cases.len());
    }

    #[test]
    fn other_messages_are_told_apart() {
        assert_eq!(
            parse(r#"{"type":"subscribed","id":1,"symbols":["A"]}"#),
            Received::Other
        );
        assert_eq!(
            parse(r#"{"type":"error","code":"unknown_symbol"}"#),
            Received::Error
        );
        assert_eq!(parse("not json"), Received::Malformed);
        assert_eq!(
            parse(r#"{"type":"ticker","symbol":"A"}"#),
            Received::Malformed
        );
        assert_eq!(parse(r#"{"symbol":"A"}"#), Received::Malformed);
    }

    #[test]
    fn seq_must_grow_and_skipped_must_match_the_gap() {
        let mut seqs = SeqChecker::default();
        assert_eq!(seqs.check("A", 10, 0, true), SeqCheck::First);
        assert_eq!(seqs.check("A", 11, 0, false), SeqCheck::Ok);
        assert_eq!(seqs.check("A", 15, 3, false), SeqCheck::Ok);
        assert_eq!(seqs.check("B", 3, 0, false), SeqCheck::First);
        assert_eq!(seqs.check("A", 17, 0, false), SeqCheck::SkippedMismatch);
        assert_eq!(seqs.check("A", 17, 0, false), SeqCheck::Regression);
        assert_eq!(seqs.check("A", 12, 0, false), SeqCheck::Regression);
        assert_eq!(
            seqs.check("A", 18, 0, false),
            SeqCheck::Ok,
            "compares to the newest"
        );
        assert_eq!(
            seqs.check("A", 30, 0, true),
            SeqCheck::Ok,
            "a snapshot may jump"
        );
        assert_eq!(seqs.check("B", 4, 0, false), SeqCheck::Ok);
    }

    #[test]
    fn only_window_tickers_are_timed() {
        let mut tally = Tally::default();
        let mut seqs = SeqChecker::default();
        let mut latency = Latency::default();
        let now = 1_000_000_000;
        let mut feed = |tally: &mut Tally, text: &str, measuring: bool| {
            tally.observe(&mut seqs, &mut latency, text, now, Clock::Ingest, measuring)
        };
        assert!(!feed(&mut tally, r#"{"type":"subscribed","id":1}"#, false));
        assert!(feed(
            &mut tally,
            &ticker("A", 1, 0, now - 50_000, true),
            false
        ));
        assert!(feed(
            &mut tally,
            &ticker("A", 2, 0, now - 40_000, false),
            false
        ));
        assert!(feed(
            &mut tally,
            &ticker("A", 5, 2, now - 20_000, false),
            true
        ));
        assert!(feed(&mut tally, &ticker("A", 6, 0, now + 5, false), true));
        assert!(feed(&mut tally, &ticker("A", 6, 0, now - 1, false), true));
        assert_eq!(tally.snapshots, 1);
        assert_eq!(tally.delivered_total, 4);
        assert_eq!(tally.delivered, 3);
        assert_eq!(tally.skipped, 2);
        assert_eq!(tally.clamped, 1, "a receive time before ingest");
        assert_eq!(tally.seq_violations(), 1);
        assert_eq!(tally.other, 1);
        let histogram = &latency.delivered;
        assert_eq!(histogram.len(), 3);
        assert!(histogram.equivalent(histogram.max(), 20_000));
        assert_eq!(histogram.min(), 1);
        // The two versions skipped before seq 5 lacked since seq 2 (40 µs ago).
        let versions = &latency.versions;
        assert_eq!(versions.len(), 3 + 2);
        assert_eq!(versions.count_at(versions.highest_equivalent(40_000)), 2);
    }

    #[test]
    fn intended_time_counts_the_time_spent_behind_schedule() {
        let mut tally = Tally::default();
        let mut seqs = SeqChecker::default();
        let mut latency = Latency::default();
        let now = 1_000_000_000;
        // Ingested 10 µs ago, but due 3 ms ago: the feed was behind by 2.99 ms.
        let late = ticker("A", 1, 0, now - 10_000, false).replace(
            r#""exchange_ts_ns":null"#,
            &format!(r#""exchange_ts_ns":{}"#, now - 3_000_000),
        );
        let intended = Clock::Intended;
        assert!(tally.observe(&mut seqs, &mut latency, &late, now, intended, true));
        let histogram = &latency.delivered;
        assert!(histogram.equivalent(histogram.max(), 3_000_000));
        // Without an intended time there is nothing to measure from.
        let plain = ticker("A", 2, 0, now - 10_000, false);
        assert!(tally.observe(&mut seqs, &mut latency, &plain, now, intended, true));
        let timed = latency.delivered.len();
        assert_eq!((tally.delivered, tally.untimed, timed), (2, 1, 1));
    }

    #[test]
    fn staleness_is_the_age_of_each_value_held_and_the_floor_the_freshest() {
        let now = 1_000_000_000;
        let held = |versions: &[(&str, u64, i64)]| {
            let mut seqs = SeqChecker::default();
            for &(symbol, seq, ts) in versions {
                seqs.check_timed(symbol, seq, 0, seq == 1, Some(ts));
            }
            seqs
        };
        // A has A@2 (held 1 ms) and B@1 (5 ms); the other connection lags on
        // A (4 ms) and holds nothing of B; a version without time is skipped.
        let fresh = held(&[
            ("A", 1, now - 9_000_000),
            ("A", 2, now - 1_000_000),
            ("B", 1, now - 5_000_000),
        ]);
        let mut lagging = held(&[("A", 1, now - 4_000_000)]);
        lagging.check_timed("C", 1, 0, true, None);
        let mut ages = [new_histogram(), new_histogram()];
        let mut floors = [new_histogram(), new_histogram()];
        // Another load thread held a newer B (2 ms) at its last sample.
        let mut freshest = Freshest::from_iter([("B".into(), now - 2_000_000)]);
        let record = |kind: usize, age, floor| {
            ages[kind].record(age).expect("in range");
            floors[kind].record(floor).expect("in range");
        };
        sample_staleness(now, &[(&fresh, 0), (&lagging, 1)], &mut freshest, record);
        let [fresh_ages, lagging_ages] = &ages;
        let ms = |h: &Histogram<u64>| {
            let mut v: Vec<u64> = h
                .iter_recorded()
                .flat_map(|x| {
                    let ms = x.value_iterated_to() / 1_000_000;
                    std::iter::repeat_n(ms, x.count_at_value() as usize)
                })
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(ms(fresh_ages), [1, 5]);
        assert_eq!(ms(lagging_ages), [4]);
        // Per value held, the freshest of its symbol held anywhere: A 1 ms
        // (this thread), B 2 ms (the other thread); and the newest A is
        // kept for the other threads.
        assert_eq!(ms(&floors[0]), [1, 2]);
        assert_eq!(ms(&floors[1]), [1]);
        assert_eq!(freshest.get("A"), Some(&(now - 1_000_000)));
    }
}
