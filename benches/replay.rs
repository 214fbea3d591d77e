//! S5 without pacing: the whole real capture through the replay source (line
//! splitting, `parse_capture_line`, symbol interning) and into the hub
//! (`Hub::publish`, no subscribers), as the replay feed thread does at
//! `--speed max`. Messages/s here is the per-core ceiling of replay ingest.
//!
//! Run: `cargo bench --bench replay`.

mod common;

use std::hint::black_box;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickwire::fanout::{Hub, SymbolEntry};
use tickwire::feed::source::{Item, ReplayFile};
use tickwire::metrics::Metrics;

/// Reads every item of `bytes`; publishes ticks when a hub is given.
/// Returns the number of items (lines) read.
fn run(bytes: &'static [u8], publish: Option<(&Hub, &SymbolEntry)>) -> u64 {
    let mut file = ReplayFile::from_reader("bench", Cursor::new(bytes)).expect("capture opens");
    let mut items = 0;
    while let Some(item) = file.next_item() {
        items += 1;
        match item {
            Item::Tick { tick, .. } => {
                if let Some((hub, entry)) = publish {
                    hub.publish(entry, &tick, tickwire::wall_clock_ns());
                } else {
                    black_box(&tick);
                }
            }
            Item::Recognised(_) | Item::Depth { .. } => {}
            Item::Malformed { line, error } => panic!("line {line}: {error}"),
            Item::Failed(e) => panic!("read failed: {e}"),
        }
    }
    items
}

fn bench_replay(c: &mut Criterion) {
    let gz: &'static [u8] = Box::leak(common::capture_gz().into_boxed_slice());
    let plain: &'static [u8] = Box::leak(common::capture_plain().into_boxed_slice());
    let hub = Hub::new(Arc::new(Metrics::default()));
    let entry = hub.declare("BTCUSDT");
    let lines = run(plain, None);
    assert_eq!(run(gz, None), lines);

    let mut group = c.benchmark_group("replay");
    group
        .throughput(Throughput::Elements(lines))
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10);
    group.bench_function(format!("source_plain ({lines} lines)"), |b| {
        b.iter(|| run(plain, None))
    });
    group.bench_function(format!("source_plain+publish ({lines} lines)"), |b| {
        b.iter(|| run(plain, Some((&hub, &entry))))
    });
    group.bench_function(format!("source_gzip+publish ({lines} lines)"), |b| {
        b.iter(|| run(gz, Some((&hub, &entry))))
    });
    group.finish();
}

criterion_group!(benches, bench_replay);
criterion_main!(benches);
