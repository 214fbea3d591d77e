//! Full-depth book costs on the USD-M capture: applying diff levels to a
//! synced book, and publishing the top N (copy + encode with checksum).
//!
//! Run: `cargo bench --bench depth`.

use std::hint::black_box;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickwire::book::depth::{depth_index, DepthBook, DEFAULT_MAX_BOOK_LEVELS};
use tickwire::book::ladder::{Ladder, SideKind};
use tickwire::normalize::binance::parse_capture_line_with_depth;
use tickwire::normalize::depth::DepthMessage;
use tickwire::normalize::{Parsed, Recognised};

/// Every depth message of the bundled USD-M capture, in order.
fn depth_messages() -> Vec<DepthMessage> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("replay-data/binance-usdm-btcusdt-20240808.gz");
    let file = std::fs::File::open(path).expect("bundled sample");
    let mut out = Vec::new();
    for line in BufReader::new(flate2::read::MultiGzDecoder::new(file)).lines() {
        let mut bytes = line.expect("sample decompresses").into_bytes();
        let mut message = DepthMessage::default();
        if let Ok(Parsed::Recognised(Recognised::DepthUpdate | Recognised::DepthSnapshot)) =
            parse_capture_line_with_depth(&mut bytes, &mut message)
        {
            out.push(message);
        }
    }
    out
}

fn synced_book(messages: &[DepthMessage]) -> DepthBook {
    let mut book = DepthBook::default();
    for message in messages {
        book.apply(message);
    }
    book
}

fn apply(c: &mut Criterion) {
    let messages = depth_messages();
    let mut group = c.benchmark_group("depth_apply");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    // The data structure alone: every diff level of the capture set on a
    // ladder holding the snapshot, cycling (levels come and go as they did).
    let snapshot = messages
        .iter()
        .find(|m| m.is_snapshot())
        .expect("a snapshot");
    let diff_levels: Vec<_> = messages
        .iter()
        .filter(|m| !m.is_snapshot())
        .flat_map(|m| m.bids.iter().copied())
        .collect();
    let mut bids = Ladder::new(SideKind::Bids, DEFAULT_MAX_BOOK_LEVELS);
    for level in &snapshot.bids {
        bids.set(level.price, level.size)
            .expect("capture prices fit");
    }
    eprintln!(
        "snapshot bids: {}, diff bid levels: {}",
        bids.len(),
        diff_levels.len()
    );
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("ladder_set_per_level", |b| {
        b.iter(|| {
            let level = diff_levels[i % diff_levels.len()];
            i += 1;
            bids.set(black_box(level.price), black_box(level.size))
                .expect("capture prices fit");
        })
    });

    // The whole procedure: buffer, snapshot, bridge, every diff in sequence.
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("replay_capture_per_message", |b| {
        b.iter(|| black_box(synced_book(&messages)).len())
    });
    group.finish();
}

fn publish(c: &mut Criterion) {
    let messages = depth_messages();
    let mut book = synced_book(&messages);
    let symbol: Arc<str> = Arc::from("usdm:BTCUSDT");
    let mut group = c.benchmark_group("depth_publish");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for max_depth in [10, 100, 500] {
        group.bench_with_input(
            BenchmarkId::new("top_n_copy", max_depth),
            &max_depth,
            |b, &n| b.iter(|| black_box(book.publish(&symbol, 1, n, 0))),
        );
    }
    for depth in [10, 100] {
        let index = depth_index(depth, 100).expect("served depth");
        group.bench_with_input(
            BenchmarkId::new("copy_and_encode", depth),
            &index,
            |b, &index| {
                b.iter(|| {
                    let published = book.publish(&symbol, 1, 100, 0);
                    black_box(published.book_prefix(index).len())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, apply, publish);
criterion_main!(benches);
