//! Parsing real Binance messages: tickwire's simd-json tape walker against a
//! serde_json derive into borrowed structs doing the same work (validate the
//! whole message, read the fields, parse prices with `Decimal::from_str_exact`).
//!
//! Run: `cargo bench --bench parse`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rust_decimal::Decimal;
use serde::Deserialize;
use tickwire::normalize::binance::{parse_capture_line, parse_message};
use tickwire::normalize::{BookUpdate, ParseError, Parsed, Recognised};

/// The combined-stream envelope the capture records.
#[derive(Deserialize)]
struct Envelope<'a, T> {
    #[serde(borrow)]
    #[allow(dead_code)]
    stream: &'a str,
    data: T,
}

#[derive(Deserialize)]
struct BookTicker<'a> {
    #[serde(borrow)]
    e: &'a str,
    #[serde(borrow)]
    s: &'a str,
    #[serde(rename = "b")]
    bid: &'a str,
    #[serde(rename = "B")]
    bid_size: &'a str,
    #[serde(rename = "a")]
    ask: &'a str,
    #[serde(rename = "A")]
    ask_size: &'a str,
    #[serde(rename = "E")]
    event_ms: Option<i64>,
}

#[derive(Deserialize)]
struct Trade<'a> {
    #[serde(borrow)]
    e: &'a str,
    #[serde(borrow)]
    s: &'a str,
    p: &'a str,
    q: &'a str,
    #[serde(rename = "E")]
    event_ms: Option<i64>,
}

/// tickwire only recognises a depth diff; serde still validates its levels.
#[derive(Deserialize)]
struct DepthUpdate<'a> {
    #[serde(borrow)]
    e: &'a str,
    #[allow(dead_code)]
    b: serde::de::IgnoredAny,
    #[allow(dead_code)]
    a: serde::de::IgnoredAny,
}

fn dec(field: &'static str, text: &str) -> Result<Decimal, ParseError> {
    Decimal::from_str_exact(text).map_err(|_| ParseError::Decimal {
        field,
        value: text.into(),
    })
}

fn event_ns(ms: Option<i64>) -> Result<Option<i64>, ParseError> {
    ms.map(|ms| ms.checked_mul(1_000_000).ok_or(ParseError::Field("E")))
        .transpose()
}

fn json_err(e: &serde_json::Error) -> ParseError {
    ParseError::Json(e.to_string())
}

fn serde_book_ticker(json: &[u8], recv_ts_ns: i64) -> Result<Parsed<'_>, ParseError> {
    let m: Envelope<BookTicker> = serde_json::from_slice(json).map_err(|e| json_err(&e))?;
    let d = m.data;
    if d.e != "bookTicker" {
        return Err(ParseError::UnknownType(d.e.into()));
    }
    let update = BookUpdate::Quote {
        bid: dec("b", d.bid)?,
        bid_size: dec("B", d.bid_size)?,
        ask: dec("a", d.ask)?,
        ask_size: dec("A", d.ask_size)?,
    };
    Parsed::tick(d.s, recv_ts_ns, event_ns(d.event_ms)?, update)
}

fn serde_trade(json: &[u8], recv_ts_ns: i64) -> Result<Parsed<'_>, ParseError> {
    let m: Envelope<Trade> = serde_json::from_slice(json).map_err(|e| json_err(&e))?;
    let d = m.data;
    if d.e != "trade" {
        return Err(ParseError::UnknownType(d.e.into()));
    }
    let update = BookUpdate::Trade {
        price: dec("p", d.p)?,
        size: dec("q", d.q)?,
    };
    Parsed::tick(d.s, recv_ts_ns, event_ns(d.event_ms)?, update)
}

fn serde_depth(json: &[u8], _recv_ts_ns: i64) -> Result<Parsed<'_>, ParseError> {
    let m: Envelope<DepthUpdate> = serde_json::from_slice(json).map_err(|e| json_err(&e))?;
    if m.data.e != "depthUpdate" {
        return Err(ParseError::UnknownType(m.data.e.into()));
    }
    Ok(Parsed::Recognised(Recognised::DepthUpdate))
}

type SerdeParser = for<'a> fn(&'a [u8], i64) -> Result<Parsed<'a>, ParseError>;

fn bench_messages(c: &mut Criterion) {
    let cases: [(&str, SerdeParser); 3] = [
        ("bookTicker", serde_book_ticker),
        ("trade", serde_trade),
        ("depthUpdate", serde_depth),
    ];
    for (kind, serde_parse) in cases {
        let (recv_ts_ns, json) = common::first_message(kind);
        // Both parsers must agree before their speed means anything.
        let mut copy = json.clone();
        let ours = parse_message(&mut copy, recv_ts_ns).expect("tickwire parses the line");
        let theirs = serde_parse(&json, recv_ts_ns).expect("serde_json parses the line");
        assert_eq!(ours, theirs, "{kind}: parsers disagree");
        assert!(matches!(
            (kind, &ours),
            ("depthUpdate", Parsed::Recognised(Recognised::DepthUpdate)) | (_, Parsed::Tick { .. })
        ));

        let mut group = c.benchmark_group(format!("parse/{kind}"));
        group
            .throughput(Throughput::Elements(1))
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1))
            .sample_size(30);
        // Same harness for both: a fresh copy per iteration made outside the
        // timing (simd-json unescapes in place), freed outside it too.
        group.bench_function(format!("tickwire_simd_json ({} B)", json.len()), |b| {
            b.iter_batched(
                || json.clone(),
                |mut buf| {
                    black_box(&parse_message(&mut buf, recv_ts_ns));
                    buf
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("serde_json_borrowed ({} B)", json.len()), |b| {
            b.iter_batched(
                || json.clone(),
                |buf| {
                    black_box(&serde_parse(&buf, recv_ts_ns));
                    buf
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

/// Every line of the capture through `parse_capture_line`, as the replay
/// source does (the message mix of the real file: 77% bookTicker, 16% trade,
/// 7% depthUpdate of ~1.6 KB). Each line is copied into one reused buffer
/// first; that memcpy is included in the timing.
fn bench_capture_mix(c: &mut Criterion) {
    let lines = common::capture_lines();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let mut buf = Vec::with_capacity(lines.iter().map(Vec::len).max().unwrap_or(0));
    let mut ok = 0usize;
    for line in &lines {
        buf.clear();
        buf.extend_from_slice(line);
        ok += usize::from(parse_capture_line(&mut buf).is_ok());
    }
    assert_eq!(ok, lines.len(), "every capture line parses");

    let mut group = c.benchmark_group("parse/capture_mix");
    group
        .throughput(Throughput::Elements(lines.len() as u64))
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10);
    group.bench_function(
        format!(
            "{} lines, {} bytes, copy+parse_capture_line",
            lines.len(),
            bytes
        ),
        |b| {
            b.iter(|| {
                for line in &lines {
                    buf.clear();
                    buf.extend_from_slice(line);
                    black_box(&parse_capture_line(&mut buf));
                }
            })
        },
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_messages, bench_capture_mix
}
criterion_main!(benches);
