//! Synthetic feed: random-walk quotes (and every so often a trade) for `N`
//! made-up symbols at a chosen rate, for benchmarks and demos.
//!
//! [`Generator`] is the I/O-free core: the caller owns the clock and the loop, asks
//! [`Generator::due`] for every tick due by now, and sleeps until
//! [`Generator::next_due`]. The output depends only on the config (seed
//! included), never on how often or how late the caller asks.
//!
//! **Schedule.** Tick `k` (1-based) is due `k / rate` seconds after the start in
//! [`Mode::Steady`], so `floor(T × rate)` ticks are due after `T`.
//! [`Mode::Bursty`] keeps the same average: each period's ticks are squeezed
//! into its first `duty` fraction, at `rate / duty`, and none come in the rest;
//! at every period boundary exactly as many ticks are due as in steady mode.
//! The rate is kept to a millionth of a tick per second and the duty to a
//! millionth, so the schedule is exact integer arithmetic.
//!
//! **Intended time.** Every tick carries `exchange_ts_ns = start_ns + its due
//! time` (rounded up to the nanosecond), so latency measured from it includes
//! any time the feed spent behind schedule, rather than hiding it (coordinated
//! omission); [`Generator::behind`] says how many ticks are overdue right now.
//!
//! **Prices.** Each symbol's best bid is a whole number of cents (a price of
//! scale 2) that moves by −2..=+2 cents per quote and never goes below 0.01; the
//! spread is 1 to 3 cents, so the bid is always below the ask. Sizes are
//! 0.001..=9.999 (scale 3). A trade prints at the symbol's current bid or ask.
//! Symbols are picked uniformly.
//!
//! [`spawn`] runs a generator as a feed: a task on the server's runtime, like
//! a live feed, that publishes every due tick into the hub and sleeps until the
//! next one. The runtime's timer wakes it at millisecond granularity, so ticks
//! due within the same millisecond are published together, as a live feed's
//! socket read hands over whatever arrived since the last one (and as the
//! benchmark peers' timer-driven feeds do). Publishing from the runtime also
//! wakes sessions on the worker's own run queue; a feed on a thread of its own
//! must go through the runtime's shared queue for every session it wakes, and
//! its sessions start writing before the rest of the batch is published. Each
//! tick still carries its own intended time, so the wait for the timer counts
//! in measured latency.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fanout::{Hub, SymbolEntry};
use crate::metrics::{FeedState, FeedStats};
use crate::normalize::{BookUpdate, Tick};
use crate::wall_clock_ns;

/// Most symbols a generator makes.
pub const MAX_SYMBOLS: usize = 1_000_000;
/// Highest rate, in ticks per second (one per nanosecond).
pub const MAX_RATE: f64 = 1e9;

const NS_PER_SEC: u128 = 1_000_000_000;
/// Rates are kept in millionths of a tick per second.
const RATE_UNIT: u128 = 1_000_000;
/// Duty cycles are kept in millionths.
const PPM: u128 = 1_000_000;

/// How ticks are spread over time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Evenly spaced, `1 / rate` apart.
    Steady,
    /// In bursts: all of a `period_ms` period's ticks in its first `duty`
    /// fraction (`0 < duty <= 1`), at the same average rate.
    Bursty { period_ms: u64, duty: f64 },
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Number of symbols, named `<prefix>000`, `<prefix>001`, …
    pub symbols: usize,
    /// Average ticks per second over all symbols.
    pub rate_per_sec: f64,
    pub mode: Mode,
    /// Seed of the random walk and symbol choice; the same seed gives the same ticks.
    pub seed: u64,
    /// Symbol name prefix, `SYN` by default.
    pub symbol_prefix: String,
    /// Every `trade_every`-th tick is a trade (0: never).
    pub trade_every: u32,
    /// The instant the schedule starts, Unix-epoch ns; intended times count from it.
    pub start_ns: i64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            symbols: 100,
            rate_per_sec: 10_000.0,
            mode: Mode::Steady,
            seed: 1,
            symbol_prefix: "SYN".into(),
            trade_every: 10,
            start_ns: 0,
        }
    }
}

/// A config value out of range: which field of [`SyntheticConfig`] (or of
/// its [`Mode`]) and the rule it breaks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid synthetic feed config: `{field}` {rule}")]
pub struct InvalidConfig {
    pub field: &'static str,
    pub rule: &'static str,
}

impl SyntheticConfig {
    /// Checks the config; [`Generator::new`] clamps what this rejects.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let invalid = |field, rule| Err(InvalidConfig { field, rule });
        if self.symbols == 0 || self.symbols > MAX_SYMBOLS {
            return invalid("symbols", "must be 1 to 1000000");
        }
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec >= 1e-6)
            || self.rate_per_sec > MAX_RATE
        {
            return invalid("rate_per_sec", "must be a number from 0.000001 to 1e9");
        }
        if let Mode::Bursty { period_ms, duty } = self.mode {
            if period_ms == 0 {
                return invalid("period_ms", "must be at least 1");
            }
            if !(duty.is_finite() && duty > 0.0 && duty <= 1.0) {
                return invalid("duty", "must be in (0, 1]");
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Book {
    /// Best bid in cents, >= 1.
    bid: i64,
    /// Ask minus bid in cents, >= 1.
    spread: i64,
}

/// The tick generator. See the module docs.
#[derive(Debug)]
pub struct Generator {
    names: Vec<String>,
    books: Vec<Book>,
    rng: SplitMix64,
    /// Ticks per second, in millionths; >= 1.
    rate: u128,
    /// Bursty period in ns; 0 when steady.
    period_ns: u128,
    /// Bursty duty cycle in millionths, 1..=PPM.
    duty_ppm: u128,
    start_ns: i64,
    trade_every: u32,
    /// Ticks handed out so far; the next one is `emitted + 1`.
    emitted: u64,
}

impl Generator {
    /// A generator for `config`. Never fails: out-of-range values are clamped
    /// (see [`SyntheticConfig::validate`] to reject them instead).
    pub fn new(config: SyntheticConfig) -> Self {
        let symbols = config.symbols.clamp(1, MAX_SYMBOLS);
        let rate = if config.rate_per_sec.is_finite() {
            config.rate_per_sec.clamp(0.0, MAX_RATE)
        } else {
            0.0
        };
        // Saturating float-to-int cast; at least one millionth of a tick a second.
        let rate = ((rate * RATE_UNIT as f64).round() as u128).max(1);
        let (period_ns, duty_ppm) = match config.mode {
            Mode::Steady => (0, PPM),
            Mode::Bursty { period_ms, duty } => {
                let duty = if duty.is_finite() { duty } else { 1.0 };
                let duty_ppm = ((duty * PPM as f64).round() as u128).clamp(1, PPM);
                let period_ns = u128::from(period_ms.max(1)) * 1_000_000;
                if duty_ppm == PPM {
                    (0, PPM)
                } else {
                    (period_ns, duty_ppm)
                }
            }
        };

        let width = (symbols - 1).to_string().len().max(3);
        let names = (0..symbols)
            .map(|i| format!("{}{i:0width$}", config.symbol_prefix))
            .collect();
        let mut rng = SplitMix64(config.seed);
        let books = (0..symbols)
            .map(|_| Book {
                // 10.00 to 999.99
                bid: 1_000 + rng.below(99_000) as i64,
                spread: 1 + rng.below(3) as i64,
            })
            .collect();
        Self {
            names,
            books,
            rng,
            rate,
            period_ns,
            duty_ppm,
            start_ns: config.start_ns,
            trade_every: config.trade_every,
            emitted: 0,
        }
    }

    /// Every symbol's name, indexed by the `u32` in [`Generator::due`]'s output.
    /// Fixed when the generator is made.
    pub fn symbols(&self) -> &[String] {
        &self.names
    }

    /// Appends to `out`, as `(symbol index, tick)`, the ticks due by `elapsed`
    /// since the start that have not been handed out yet — at most `max` of them;
    /// the rest stay due for the next call. `recv_ts_ns` stamps them all.
    /// Allocates only if `out` must grow.
    pub fn due(
        &mut self,
        elapsed: Duration,
        recv_ts_ns: i64,
        out: &mut Vec<(u32, Tick)>,
        max: usize,
    ) {
        let n = self
            .behind(elapsed)
            .min(u64::try_from(max).unwrap_or(u64::MAX));
        // Bounded, so a huge backlog grows `out` as it fills rather than at once.
        out.reserve(usize::try_from(n.min(1 << 16)).unwrap_or(0));
        for _ in 0..n {
            out.push(self.next_tick(recv_ts_ns));
        }
    }

    /// How many ticks are due by `elapsed` but not yet handed out.
    pub fn behind(&self, elapsed: Duration) -> u64 {
        self.count(elapsed.as_nanos()).saturating_sub(self.emitted)
    }

    /// Ticks handed out so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// When, since the start, the next tick not yet handed out is due: sleep
    /// until then. Saturates at `u64::MAX` ns.
    pub fn next_due(&self) -> Duration {
        let ns = self.due_ns(self.emitted.saturating_add(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn next_tick(&mut self, recv_ts_ns: i64) -> (u32, Tick) {
        self.emitted = self.emitted.saturating_add(1);
        let k = self.emitted;
        let intended = i64::try_from(self.due_ns(k)).unwrap_or(i64::MAX);
        let exchange_ts_ns = Some(self.start_ns.saturating_add(intended));

        let n = self.books.len() as u64;
        let index = self.rng.below(n) as usize;
        let bits = self.rng.next();
        // `below(n)` is always less than `n`, the number of books.
        let book = &mut self.books[index];
        let update = if self.trade_every > 0 && k % u64::from(self.trade_every) == 0 {
            let price = if bits & 1 == 0 {
                book.bid
            } else {
                book.bid + book.spread
            };
            BookUpdate::Trade {
                price: Decimal::new(price, 2),
                size: size(bits >> 16),
            }
        } else {
            let step = (bits % 5) as i64 - 2;
            book.bid = (book.bid + step).max(1);
            book.spread = 1 + ((bits >> 8) % 3) as i64;
            BookUpdate::Quote {
                bid: Decimal::new(book.bid, 2),
                bid_size: size(bits >> 16),
                ask: Decimal::new(book.bid + book.spread, 2),
                ask_size: size(bits >> 40),
            }
        };
        let tick = Tick {
            recv_ts_ns,
            exchange_ts_ns,
            update,
        };
        (index as u32, tick)
    }

    /// Virtual (steady-schedule) time at real time `t_ns`: the identity when
    /// steady; when bursty, time runs `1 / duty` times faster during the burst
    /// and stands still for the rest of the period.
    fn virtual_ns(&self, t_ns: u128) -> u128 {
        if self.period_ns == 0 {
            return t_ns;
        }
        let full = t_ns / self.period_ns;
        let phase = t_ns % self.period_ns;
        full * self.period_ns + (phase * PPM / self.duty_ppm).min(self.period_ns)
    }

    /// Ticks due by real time `t_ns`: `floor(virtual seconds × rate)`.
    fn count(&self, t_ns: u128) -> u64 {
        let ticks = self.virtual_ns(t_ns).saturating_mul(self.rate) / (NS_PER_SEC * RATE_UNIT);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The earliest real time (ns) by which tick `k` is due: the inverse of
    /// [`Self::count`], so `count(due_ns(k)) >= k > count(due_ns(k) - 1)`.
    fn due_ns(&self, k: u64) -> u128 {
        // ceil(k / rate) in virtual ns.
        let v = (u128::from(k) * NS_PER_SEC * RATE_UNIT).div_ceil(self.rate);
        if self.period_ns == 0 {
            return v;
        }
        let full = v / self.period_ns;
        let rem = v % self.period_ns;
        if rem == 0 && full > 0 {
            // Exactly on a boundary: due when the previous period's burst ends.
            (full - 1) * self.period_ns + (self.period_ns * self.duty_ppm).div_ceil(PPM)
        } else {
            full * self.period_ns + (rem * self.duty_ppm).div_ceil(PPM)
        }
    }
}

/// A size of 0.001 to 9.999 from random bits.
fn size(bits: u64) -> Decimal {
    Decimal::new(1 + (bits % 9_999) as i64, 3)
}

/// SplitMix64 (Steele, Lea and Flood): tiny, fast and good enough for a
/// synthetic walk; not for anything adversarial.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; bias below 2^-40 for n < 2^24).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// A synthetic feed's settings (`kind = "synthetic"` in a feed file).
#[derive(Clone, Debug)]
pub struct SyntheticFeedConfig {
    /// The feed's name in logs and metrics.
    pub name: String,
    pub generator: SyntheticConfig,
}

/// A running synthetic feed.
#[derive(Debug)]
pub struct SyntheticHandle {
    stats: Arc<FeedStats>,
}

impl SyntheticHandle {
    /// The feed's counters.
    pub fn stats(&self) -> &Arc<FeedStats> {
        &self.stats
    }
}

/// Most ticks published per wake-up, so a feed far behind lets the sessions
/// on its worker run between batches.
const BATCH: usize = 4_096;

/// Declares the symbols and publishes the schedule from a task on the current
/// runtime until `shutdown`.
pub fn spawn(
    hub: Arc<Hub>,
    mut config: SyntheticFeedConfig,
    shutdown: CancellationToken,
) -> Result<SyntheticHandle, InvalidConfig> {
    config.generator.validate()?;
    config.generator.start_ns = wall_clock_ns();
    let mut generator = Generator::new(config.generator);
    let entries: Vec<Arc<SymbolEntry>> = generator
        .symbols()
        .iter()
        .map(|name| hub.declare(name))
        .collect();
    let stats = hub.metrics().register_feed(&config.name, "synthetic");
    stats.set_state(FeedState::Live);
    let task_stats = stats.clone();
    let name = config.name.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut due = Vec::with_capacity(BATCH);
        loop {
            due.clear();
            generator.due(started.elapsed(), wall_clock_ns(), &mut due, BATCH);
            for (symbol, tick) in &due {
                if let Some(entry) = entries.get(*symbol as usize) {
                    hub.publish(entry, tick, wall_clock_ns());
                }
            }
            let published = due.len() as u64;
            task_stats.messages.fetch_add(published, Relaxed);
            task_stats.ticks.fetch_add(published, Relaxed);
            task_stats.last_message_ns.store(wall_clock_ns(), Relaxed);
            let now = started.elapsed();
            let wait = generator.next_due().saturating_sub(now);
            if wait.is_zero() {
                // Behind schedule: a full batch went out and more are due.
                tokio::task::yield_now().await;
                if shutdown.is_cancelled() {
                    break;
                }
                continue;
            }
            // A far-off tick (a very low rate) is waited for in steps, so the
            // deadline cannot overflow.
            let wake = started + now + wait.min(Duration::from_secs(1));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        tracing::info!(feed = %name, ticks = generator.emitted(), "synthetic feed stopped");
    });
    Ok(SyntheticHandle { stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(symbols: usize, rate: f64, mode: Mode, seed: u64) -> SyntheticConfig {
        SyntheticConfig {
            symbols,
            rate_per_sec: rate,
            mode,
            seed,
            start_ns: 1_700_000_000_000_000_000,
            ..SyntheticConfig::default()
        }
    }

    fn run(gen: &mut Generator, until: Duration, step: Duration) -> Vec<(u32, Tick)> {
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        while t < until {
            t = (t + step).min(until);
            gen.due(t, 7, &mut out, usize::MAX);
        }
        out
    }

    #[test]
    fn symbols_are_named_and_stable() {
        let gen = Generator::new(config(12, 100.0, Mode::Steady, 1));
        assert_eq!(gen.symbols().len(), 12);
        assert_eq!(gen.symbols()[0], "SYN000");
        assert_eq!(gen.symbols()[11], "SYN011");
        let mut gen = Generator::new(SyntheticConfig {
            symbols: 1001,
            symbol_prefix: "X".into(),
            ..SyntheticConfig::default()
        });
        let before = gen.symbols().to_vec();
        assert_eq!(
            (before[0].as_str(), before[1000].as_str()),
            ("X0000", "X1000")
        );
        let mut out = Vec::new();
        gen.due(Duration::from_secs(1), 0, &mut out, usize::MAX);
        assert_eq!(out.len(), 10_000);
        assert!(out.iter().all(|(i, _)| (*i as usize) < 1001));
        assert_eq!(gen.symbols(), before.as_slice());
    }

    #[test]
    fn same_seed_same_ticks_however_polled() {
        let mut a = Generator::new(config(50, 1000.0, Mode::Steady, 42));
        let mut b = Generator::new(config(50, 1000.0, Mode::Steady, 42));
        let mut c = Generator::new(config(50, 1000.0, Mode::Steady, 43));
        let until = Duration::from_secs(3);
        let ta = run(&mut a, until, Duration::from_micros(1_337));
        let tb = run(&mut b, until, Duration::from_millis(250));
        let tc = run(&mut c, until, Duration::from_millis(250));
        assert_eq!(ta.len(), 3000);
        assert_eq!(ta, tb);
        assert_ne!(ta, tc);
    }

    #[test]
    fn steady_count_is_floor_of_rate_times_time() {
        for rate in [1.0, 3.0, 1000.0, 12_345.0, 1_000_000.0] {
            let gen = Generator::new(config(3, rate, Mode::Steady, 1));
            for ns in [
                0u64,
                1,
                999_999,
                1_000_000,
                333_333_333,
                1_234_567_891,
                60_000_000_007,
            ] {
                let expected = u128::from(ns) * rate as u128 / NS_PER_SEC;
                assert_eq!(
                    u128::from(gen.behind(Duration::from_nanos(ns))),
                    expected,
                    "rate {rate}, {ns} ns"
                );
            }
        }
        // A fractional rate: 2.5 per second.
        let gen = Generator::new(config(3, 2.5, Mode::Steady, 1));
        assert_eq!(gen.behind(Duration::from_millis(399)), 0);
        assert_eq!(gen.behind(Duration::from_millis(400)), 1);
        assert_eq!(gen.behind(Duration::from_secs(10)), 25);
    }

    #[test]
    fn due_respects_max_and_behind_counts_the_rest() {
        let mut gen = Generator::new(config(5, 1000.0, Mode::Steady, 9));
        let mut out = Vec::with_capacity(64);
        let t = Duration::from_millis(100);
        assert_eq!(gen.behind(t), 100);
        gen.due(t, 0, &mut out, 64);
        assert_eq!((out.len(), gen.behind(t), gen.emitted()), (64, 36, 64));
        gen.due(t, 0, &mut out, 64);
        assert_eq!((out.len(), gen.behind(t)), (100, 0));
        gen.due(t, 0, &mut out, 64);
        assert_eq!(out.len(), 100);
        assert_eq!(gen.next_due(), Duration::from_millis(101));
    }

    #[test]
    fn intended_times_follow_the_schedule() {
        let start = 1_700_000_000_000_000_000;
        let mut gen = Generator::new(config(5, 4.0, Mode::Steady, 9));
        let mut out = Vec::new();
        // Polled late: the intended times are still 250 ms apart.
        gen.due(Duration::from_secs(1), 99, &mut out, usize::MAX);
        let times: Vec<i64> = out
            .iter()
            .map(|(_, t)| t.exchange_ts_ns.unwrap_or_default() - start)
            .collect();
        assert_eq!(
            times,
            [250_000_000, 500_000_000, 750_000_000, 1_000_000_000]
        );
        assert!(out.iter().all(|(_, t)| t.recv_ts_ns == 99));
    }

    #[test]
    fn due_time_is_the_inverse_of_count() {
        for (rate, mode) in [
            (1000.0, Mode::Steady),
            (3.0, Mode::Steady),
            (777.7, Mode::Steady),
            (
                1000.0,
                Mode::Bursty {
                    period_ms: 100,
                    duty: 0.25,
                },
            ),
            (
                333.0,
                Mode::Bursty {
                    period_ms: 7,
                    duty: 0.3,
                },
            ),
            (
                50_000.0,
                Mode::Bursty {
                    period_ms: 1000,
                    duty: 0.001,
                },
            ),
            (
                10.0,
                Mode::Bursty {
                    period_ms: 100,
                    duty: 1.0,
                },
            ),
        ] {
            let gen = Generator::new(config(1, rate, mode, 1));
            for k in (1..5000).chain([1_000_000, 123_456_789]) {
                let t = gen.due_ns(k);
                assert!(gen.count(t) >= k, "{rate} {mode:?} k={k} t={t}");
                assert!(gen.count(t - 1) < k, "{rate} {mode:?} k={k} t={t}");
            }
        }
    }

    #[test]
    fn bursty_keeps_the_average_rate() {
        let rate = 1000.0;
        let mode = Mode::Bursty {
            period_ms: 100,
            duty: 0.25,
        };
        let gen = Generator::new(config(4, rate, mode, 1));
        let steady = Generator::new(config(4, rate, Mode::Steady, 1));
        // At every period boundary, exactly the steady count is due.
        for periods in 0..50u64 {
            let t = Duration::from_millis(100 * periods);
            assert_eq!(gen.behind(t), steady.behind(t));
            assert_eq!(gen.behind(t), 100 * periods);
        }
        // A period's 100 ticks all come in its first 25 ms, at 4000/s...
        assert_eq!(gen.behind(Duration::from_millis(1_010)), 1_040);
        assert_eq!(gen.behind(Duration::from_millis(1_025)), 1_100);
        // ...and none in the rest.
        assert_eq!(gen.behind(Duration::from_millis(1_099)), 1_100);
        // Within any period, never more than one period's ticks ahead or behind.
        for ms in 0..3_000 {
            let t = Duration::from_millis(ms);
            let (b, s) = (gen.behind(t), steady.behind(t));
            assert!(b >= s && b - s <= 100, "{ms} ms: {b} vs {s}");
        }
        // Averaged over a long run the rates agree.
        let t = Duration::from_millis(123_456);
        let (b, s) = (gen.behind(t), steady.behind(t));
        assert!(b.abs_diff(s) <= 100);
        let mut gen = Generator::new(config(4, rate, mode, 1));
        assert_eq!(
            run(&mut gen, Duration::from_secs(2), Duration::from_millis(3)).len(),
            2000
        );
    }

    #[test]
    fn prices_stay_positive_and_uncrossed() {
        // Few symbols, a long run, so each walk goes far.
        let mut gen = Generator::new(SyntheticConfig {
            symbols: 2,
            rate_per_sec: 1_000_000.0,
            trade_every: 7,
            seed: 5,
            ..SyntheticConfig::default()
        });
        let mut out = Vec::new();
        gen.due(Duration::from_millis(300), 0, &mut out, usize::MAX);
        assert_eq!(out.len(), 300_000);
        let (mut quotes, mut trades) = (0, 0);
        let zero = Decimal::ZERO;
        for (k, (_, tick)) in out.iter().enumerate() {
            match tick.update {
                BookUpdate::Quote {
                    bid,
                    bid_size,
                    ask,
                    ask_size,
                } => {
                    quotes += 1;
                    assert!(bid > zero && bid < ask, "{bid} {ask}");
                    assert!(bid_size > zero && ask_size > zero);
                    assert_eq!((bid.scale(), ask.scale(), bid_size.scale()), (2, 2, 3));
                }
                BookUpdate::Trade { price, size } => {
                    trades += 1;
                    assert_eq!((k + 1) % 7, 0, "every 7th tick is a trade");
                    assert!(price > zero && size > zero);
                }
            }
        }
        assert_eq!((quotes, trades), (300_000 - 300_000 / 7, 300_000 / 7));
        // The floor at one cent holds even for a walk that starts there.
        gen.books.iter_mut().for_each(|b| b.bid = 1);
        out.clear();
        gen.due(Duration::from_millis(400), 0, &mut out, usize::MAX);
        assert!(gen.books.iter().all(|b| b.bid >= 1 && b.spread >= 1));
    }

    #[test]
    fn no_trades_when_trade_every_is_zero() {
        let mut gen = Generator::new(SyntheticConfig {
            trade_every: 0,
            ..SyntheticConfig::default()
        });
        let mut out = Vec::new();
        gen.due(Duration::from_secs(1), 0, &mut out, usize::MAX);
        assert_eq!(out.len(), 10_000);
        assert!(out
            .iter()
            .all(|(_, t)| matches!(t.update, BookUpdate::Quote { .. })));
    }

    #[test]
    fn invalid_configs_are_rejected_or_clamped() {
        let ok = SyntheticConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            SyntheticConfig {
                symbols: 0,
                ..ok.clone()
            },
            SyntheticConfig {
                symbols: MAX_SYMBOLS + 1,
                ..ok.clone()
            },
            SyntheticConfig {
                rate_per_sec: 0.0,
                ..ok.clone()
            },
            SyntheticConfig {
                rate_per_sec: -5.0,
                ..ok.clone()
            },
            SyntheticConfig {
                rate_per_sec: f64::NAN,
                ..ok.clone()
            },
            SyntheticConfig {
                rate_per_sec: f64::INFINITY,
                ..ok.clone()
            },
            SyntheticConfig {
                rate_per_sec: 2e9,
                ..ok.clone()
            },
            SyntheticConfig {
                mode: Mode::Bursty {
                    period_ms: 0,
                    duty: 0.5,
                },
                ..ok.clone()
            },
            SyntheticConfig {
                mode: Mode::Bursty {
                    period_ms: 10,
                    duty: 0.0,
                },
                ..ok.clone()
            },
            SyntheticConfig {
                mode: Mode::Bursty {
                    period_ms: 10,
                    duty: 1.5,
                },
                ..ok.clone()
            },
            SyntheticConfig {
                mode: Mode::Bursty {
                    period_ms: 10,
                    duty: f64::NAN,
                },
                ..ok.clone()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
            // Clamped, never a panic, even for huge elapsed times.
            let mut gen = Generator::new(config);
            assert!(!gen.symbols().is_empty());
            let mut out = Vec::new();
            gen.due(Duration::from_millis(10), 0, &mut out, 1000);
            let _ = gen.behind(Duration::MAX);
            let _ = gen.next_due();
            gen.due(Duration::MAX, 0, &mut out, 10);
        }
        let gen = Generator::new(SyntheticConfig {
            rate_per_sec: MAX_RATE,
            ..ok
        });
        assert_eq!(gen.behind(Duration::MAX), u64::MAX);
        assert_eq!(gen.behind(Duration::from_secs(1)), 1_000_000_000);
    }
}
