//! The publish side and the session side of one update, without sockets:
//! book update + arc-swap publish + per-subscriber marks (`Hub::publish`),
//! the ticker encoding (once per version, then a suffix and frame per
//! subscriber), and one whole fan-out step to 1,000 subscribers.
//!
//! Run: `cargo bench --bench fanout`.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tickwire::auth::Grant;
use tickwire::book::{Fold, Snapshot};
use tickwire::fanout::{Hub, Mailbox, Slot, SymbolEntry};
use tickwire::metrics::Metrics;
use tickwire::normalize::binance::parse_message;
use tickwire::normalize::{Parsed, Tick};
use tickwire::protocol;
use tickwire::session::outbox::{Framing, Outbox};
use tickwire::session::subscriptions::Subscriptions;

/// The session defaults (`SessionConfig::write_high_water`, and the capacity a
/// subscribed session keeps after a write).
const HIGH_WATER: usize = 16 * 1024;
const KEEP: usize = 4 * HIGH_WATER;

fn real_tick(kind: &str) -> Tick {
    let (recv_ts_ns, mut json) = common::first_message(kind);
    match parse_message(&mut json, recv_ts_ns).expect("capture line parses") {
        Parsed::Tick { tick, .. } => tick,
        other => panic!("{kind} is not a tick: {other:?}"),
    }
}

fn group_config(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
}

/// A hub, its BTCUSDT entry, and that entry's subscribed slots with their mailboxes.
type Fixture = (Hub, Arc<SymbolEntry>, Vec<Arc<Slot>>, Vec<Arc<Mailbox>>);

/// A hub with BTCUSDT and `n` slots, each in its own mailbox (one per session).
fn hub_with_slots(n: usize) -> Fixture {
    let hub = Hub::new(Arc::new(Metrics::default()));
    let entry = hub.declare("BTCUSDT");
    let mut slots = Vec::with_capacity(n);
    let mut mailboxes = Vec::with_capacity(n);
    for _ in 0..n {
        let mailbox = Arc::new(Mailbox::default());
        let slot = Arc::new(Slot::new(mailbox.clone(), 0));
        entry.subscribe(slot.clone());
        slots.push(slot);
        mailboxes.push(mailbox);
    }
    (hub, entry, slots, mailboxes)
}

fn bench_publish(c: &mut Criterion) {
    let tick = real_tick("bookTicker");
    let mut group = c.benchmark_group("publish");
    group_config(&mut group);
    group.throughput(Throughput::Elements(1));
    for n in [0usize, 1, 100, 1_000] {
        // Steady conflation: every slot is already queued (a slow or busy
        // subscriber), so a mark is one atomic swap that finds the flag set.
        let (hub, entry, _slots, _mailboxes) = hub_with_slots(n);
        hub.publish(&entry, &tick, 1);
        group.bench_with_input(BenchmarkId::new("already_queued", n), &n, |b, _| {
            b.iter(|| hub.publish(&entry, black_box(&tick), 1))
        });
        if n == 0 {
            continue;
        }
        // Fresh: every slot was drained, so each mark also locks the mailbox,
        // pushes the index and notifies (no task is parked on the Notify, so
        // the cost of waking one is not included). Clearing and draining
        // happen outside the timing; each publish is timed on its own, which
        // adds the clock's overhead (~20-30 ns) to every sample.
        let (hub, entry, slots, mailboxes) = hub_with_slots(n);
        let mut ready = Vec::with_capacity(4);
        group.bench_with_input(BenchmarkId::new("fresh", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for (slot, mailbox) in slots.iter().zip(&mailboxes) {
                        mailbox.take_ready(&mut ready);
                        ready.clear();
                        slot.clear();
                    }
                    let start = Instant::now();
                    black_box(hub.publish(&entry, black_box(&tick), 1));
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

/// Joining and leaving a symbol that already has `n` subscribers: what a
/// subscribe and an unsubscribe cost the connection that makes them, and
/// how that grows with the symbol's popularity.
fn bench_subscribe(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscribe");
    group_config(&mut group);
    group.throughput(Throughput::Elements(1));
    for n in [0usize, 1_000, 10_000] {
        let (_hub, entry, _slots, _mailboxes) = hub_with_slots(n);
        let slot = Arc::new(Slot::new(Arc::new(Mailbox::default()), 0));
        group.bench_with_input(BenchmarkId::new("join_and_leave", n), &n, |b, _| {
            b.iter(|| {
                entry.subscribe(slot.clone());
                entry.unsubscribe(black_box(&slot));
            })
        });
        assert_eq!(entry.subscriber_count(), n);
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let quote = real_tick("bookTicker");
    let trade = real_tick("trade");
    let symbol: Arc<str> = Arc::from("BTCUSDT");
    let first = Snapshot::next(None, &symbol, &Fold::of(&quote), 1_723_161_255_088_169_167);
    let snap = Snapshot::next(
        Some(&first),
        &symbol,
        &Fold::of(&trade),
        1_723_161_255_088_176_367,
    );
    let prefix = snap.ticker_prefix().to_vec();

    let mut group = c.benchmark_group("encode");
    group_config(&mut group);
    group.throughput(Throughput::Elements(1));
    // The shared part, built once per version: what `Snapshot::ticker_prefix`
    // does on first use (encode, then box), on a snapshot that has not been
    // encoded yet; building and dropping the snapshot are not timed.
    group.bench_function(
        format!("ticker_prefix/fresh_snapshot ({} B)", prefix.len()),
        |b| {
            b.iter_batched(
                || {
                    Snapshot::next(
                        Some(&snap),
                        &symbol,
                        &Fold::of(&quote),
                        1_723_161_255_088_181_667,
                    )
                },
                |next| {
                    black_box(next.ticker_prefix());
                    next
                },
                BatchSize::SmallInput,
            )
        },
    );
    group.bench_function("encode_ticker_prefix (Vec, no boxing)", |b| {
        b.iter(|| protocol::encode_ticker_prefix(black_box(&snap)))
    });

    // Per subscriber: frame header + shared prefix + suffix into the outbox.
    // The buffer is emptied every 64 pushes outside the timing.
    let mut outbox = Outbox::new(Framing::WebSocket, Arc::new(Metrics::default()), 0);
    group.bench_function("outbox_push_ticker", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let k = (iters - done).min(64);
                let start = Instant::now();
                for _ in 0..k {
                    outbox.push_ticker(black_box(&prefix), 3, false, Some(1));
                }
                total += start.elapsed();
                let n = outbox.buffered();
                outbox.advance(n, KEEP);
                done += k;
            }
            total
        })
    });
    // The same plus what a session does per socket write: 16 frames, then
    // `advance` (latency samples into the histogram) and `report` (counters).
    group.throughput(Throughput::Elements(16));
    group.bench_function("outbox_push_ticker_x16+advance+report", |b| {
        b.iter(|| {
            for _ in 0..16 {
                outbox.push_ticker(black_box(&prefix), 3, false, Some(1));
            }
            let n = outbox.buffered();
            outbox.advance(n, KEEP);
            outbox.report();
        })
    });
    group.finish();
}

/// One version to 1,000 sessions: publish (book update, arc-swap store, 1,000
/// marks), then each session drains its mailbox into its outbox (conflating
/// `fill`: read the current snapshot, encode once, suffix + frame) and "writes"
/// it (`advance` + `report`, without the socket). The server's CPU per update ×
/// 1,000 subscribers, excluding the `write()` syscall and task wake-ups.
fn bench_fanout_step(c: &mut Criterion) {
    const SESSIONS: usize = 1_000;
    let quote = real_tick("bookTicker");
    let hub = Arc::new(Hub::new(Arc::new(Metrics::default())));
    let entry = hub.declare("BTCUSDT");
    hub.publish(&entry, &quote, 1);
    let mut sessions: Vec<(Subscriptions, Outbox)> = (0..SESSIONS)
        .map(|i| {
            let mut subs = Subscriptions::new(hub.clone(), Arc::new(Grant::unrestricted()), 16);
            let mut out = Outbox::new(Framing::WebSocket, hub.metrics().clone(), i as u64);
            subs.subscribe(None, vec!["BTCUSDT".into()], None, &mut out);
            let n = out.buffered();
            out.advance(n, KEEP);
            (subs, out)
        })
        .collect();
    assert_eq!(entry.subscriber_count(), SESSIONS);

    let mut step = || {
        hub.publish(&entry, &quote, tickwire::wall_clock_ns());
        let mut bytes = 0;
        for (subs, out) in &mut sessions {
            subs.fill(out, HIGH_WATER);
            out.report();
            let n = out.buffered();
            bytes += n;
            out.advance(n, KEEP);
        }
        bytes
    };
    let frame = step();
    assert!(frame > 0, "every session got the update");

    let mut group = c.benchmark_group("fanout_step");
    group_config(&mut group);
    group.throughput(Throughput::Elements(SESSIONS as u64));
    group.bench_function(
        format!(
            "publish+1000x(fill+advance+report) ({} B/frame)",
            frame / SESSIONS
        ),
        |b| b.iter(&mut step),
    );
    group.finish();
}

criterion_group!(
    benches,
    bench_publish,
    bench_subscribe,
    bench_encode,
    bench_fanout_step
);
criterion_main!(benches);
