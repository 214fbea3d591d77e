//! One side of an order book: the best few hundred price levels in one sorted
//! vector, worst first and best last, and the rest in a hash map.
//!
//! Prices are kept as integers at the finest scale the side has seen, so a
//! lookup compares plain `i64`s. The Binance captures' books hold 1,000–5,000
//! levels a side, and their diffs change levels at every depth: counted from
//! the best level, 24 % of the spot capture's changes fall within 16 levels,
//! 47 % between 16 and 256 and 29 % deeper; 10 %, 43 % and 47 % of the USD-M
//! capture's. Only the best few hundred levels are ever read
//! ([`Ladder::top`], [`Ladder::best`]).
//!
//! So a side is split at a *boundary* key into two parts:
//!
//! - the *near* part, the levels better than the boundary (between
//!   [`NEAR_MIN`] and [`NEAR_MAX`] of them while the side has more, or more
//!   if a publisher reads more: see [`Ladder::prepare_top`]), is a
//!   sorted vector with the best level at the end: a lookup is a binary
//!   search over a few kilobytes, and reading the best `n` levels walks the
//!   vector's tail. Inserting into a sorted vector moves everything above the
//!   new level, so a deleted level stays behind as a *vacant* slot: a later
//!   level at that price reuses it, and a new level moves only the levels
//!   between it and a vacant slot nearby. Vacant slots are dropped from the
//!   end at once and compacted away when they outnumber the levels;
//! - the *far* part, the levels at or beyond the boundary, is a hash map from
//!   key to size: setting one is one hash operation, with neither a search
//!   nor a move, however deep the book.
//!
//! When deletions leave the near part with fewer than [`NEAR_MIN`] levels
//! (or [`Ladder::prepare_top`] asks for more than it holds), the boundary
//! moves worse: the best far levels are selected from the map, sorted, and
//! put in front of the near part. When the near part grows past
//! [`NEAR_MAX`], its worst levels go to the map and the boundary moves
//! better. Either moves levels by the hundred (with the default bounds at
//! least 192, leaving the near part 320; a pull that empties the far part
//! may move fewer), so its cost is spread over at least as many changes; a
//! level revived in a vacant slot may take the near part a little past its
//! upper bound until the next insertion. Once the storage has grown to the
//! largest book seen no operation allocates, but for a [`Ladder::top`] that
//! reads far levels without [`Ladder::prepare_top`] first.
//! `benches/depth.rs` measures a set.
//!
//! With the whole side in one sorted vector, a change searched up to 5,000
//! keys and an insertion deep in the book moved everything above it, which
//! was over a quarter of a looping replay of the captures; split, the replay
//! reads a tenth more lines per CPU-second. The bounds and the map were
//! chosen by measurement: `docs/benchmarks.md` (S5) has the figures.
//!
//! A venue decides how many levels it sends, so a side is capped: once it
//! holds more than an eighth over its limit, the worst levels are dropped in
//! one pass down to the limit and counted. Only the best few hundred levels
//! are ever published, so the far end of a deep book is the part that can go.
//! The side is then *cut* at the best dropped price: what lies there and
//! beyond is unknown from then on (a level the venue never changes again is
//! never resent), so changes there are refused and counted too. The side
//! holds exactly the venue's levels better than the cut; should the price
//! move that far, it holds fewer levels rather than wrong ones (see
//! [`Ladder::is_cut`]), until a snapshot clears it.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use rust_decimal::Decimal;
use thiserror::Error;

use super::Level;

/// Which way a side is ordered: bids best-first means highest price first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideKind {
    Bids,
    Asks,
}

/// A price the ladder cannot hold: at the side's scale it does not fit in
/// 64 bits (a price above about 92 million with 10 decimals, for example).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("price {0} is too large or too precise for the order book")]
pub struct PriceOutOfRange(pub Decimal);

/// Fewest levels the near part holds while the far part has any: below it,
/// far levels are moved in.
pub const NEAR_MIN: usize = 128;

/// Most levels the near part holds: above it, its worst are moved out.
pub const NEAR_MAX: usize = 512;

/// The deepest read [`Ladder::prepare_top`] keeps near: four times
/// [`NEAR_MAX`], above the deepest book a client can subscribe to (500).
pub const MOST_PREPARED: usize = 4 * NEAR_MAX;

/// The price levels of one side of a book.
#[derive(Clone, Debug)]
pub struct Ladder {
    kind: SideKind,
    /// The near part's prices as integers at `scale` decimals, negated on the
    /// ask side so that both sides sort ascending from the worst level to the
    /// best. Every key is at least `boundary`.
    keys: Vec<i64>,
    /// The size of the level at the same index of `keys`; zero for a vacant
    /// slot. The last slot is never vacant.
    sizes: Vec<Decimal>,
    /// Slots of the near part that are not vacant.
    levels: usize,
    /// The far part: the levels whose keys are below `boundary`, none of
    /// them vacant. While it holds any, the near part holds at least
    /// `near_min` levels (so the best level is always the last slot).
    /// Seeded per map, so that a feed prepared in advance cannot collide in
    /// it.
    far: HashMap<i64, Decimal, RandomState>,
    /// Where the parts meet; `i64::MIN` (below every key) while the far part
    /// is empty.
    boundary: i64,
    /// The near part's bounds: [`NEAR_MIN`] and [`NEAR_MAX`] (smaller in
    /// tests), raised by [`Ladder::prepare_top`] for a publisher that reads
    /// more levels.
    near_min: usize,
    near_max: usize,
    /// Storage reused when levels move between the parts.
    moving: Vec<(i64, Decimal)>,
    /// Decimals of every key: the largest scale among the side's prices.
    scale: u32,
    /// Levels kept after the worst are dropped (see the module docs).
    max_levels: usize,
    /// Levels held past which the worst are dropped: an eighth over
    /// `max_levels`, so that dropping is one pass now and then.
    drop_above: usize,
    /// Levels dropped, and changes refused beyond the cut, since the last
    /// `take_dropped`.
    dropped: u64,
    /// The best key dropped since the last `clear`: the side knows nothing at
    /// or beyond it.
    cut: Option<i64>,
}

impl Ladder {
    /// An empty side holding at most about `max_levels` levels.
    pub fn new(kind: SideKind, max_levels: usize) -> Self {
        Self::with_near(kind, max_levels, NEAR_MIN, NEAR_MAX)
    }

    /// An empty side whose near part holds between `near_min` and `near_max`
    /// levels while the side has enough.
    fn with_near(kind: SideKind, max_levels: usize, near_min: usize, near_max: usize) -> Self {
        let max_levels = max_levels.max(1);
        let near_min = near_min.max(1);
        Self {
            kind,
            keys: Vec::new(),
            sizes: Vec::new(),
            levels: 0,
            far: HashMap::default(),
            boundary: i64::MIN,
            near_min,
            // Room for moves of at least `near_min` levels either way.
            near_max: near_max.max(near_min.saturating_mul(3)),
            moving: Vec::new(),
            scale: 0,
            max_levels,
            drop_above: max_levels.saturating_add(max_levels / 8),
            dropped: 0,
            cut: None,
        }
    }

    /// Levels dropped when the side outgrew its cap, and changes refused
    /// beyond the cut since, both since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Whether the side was cut at its cap since it was last cleared: its
    /// levels are the venue's best, but the venue may have more beyond them
    /// than `len` says.
    pub fn is_cut(&self) -> bool {
        self.cut.is_some()
    }

    /// Number of levels.
    pub fn len(&self) -> usize {
        self.levels + self.far.len()
    }

    /// Whether the side has no level.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every level, keeping the storage for reuse.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.sizes.clear();
        self.levels = 0;
        self.far.clear();
        self.boundary = i64::MIN;
        self.scale = 0;
        self.cut = None;
    }

    /// Sets the size at `price`; a zero size removes the level (removing an
    /// absent level is a no-op, as venues send such deletions). Levels equal
    /// in value are one level whatever their scale (`10.0` is `10.00`).
    pub fn set(&mut self, price: Decimal, size: Decimal) -> Result<(), PriceOutOfRange> {
        if size.is_zero() {
            // A price the side cannot express at its scale is not in it: a
            // deletion neither rescales the side nor is refused.
            if let Some(key) = self.key_at_scale(price) {
                self.remove(key);
            }
            return Ok(());
        }
        if self.is_beyond_cut(price) {
            // Compared as decimals first, so a refused price cannot rescale
            // the side nor be out of its range.
            self.dropped += 1;
            return Ok(());
        }
        let key = self.key(price)?;
        if key < self.boundary {
            self.far.insert(key, size);
        } else {
            match self.keys.binary_search(&key) {
                Ok(at) => {
                    if self.sizes[at].is_zero() {
                        self.levels += 1;
                    }
                    self.sizes[at] = size;
                }
                Err(at) => {
                    self.insert(at, key, size);
                    self.levels += 1;
                    if self.levels > self.near_max {
                        self.push_out();
                    }
                }
            }
        }
        if self.len() > self.drop_above {
            self.drop_worst();
        }
        Ok(())
    }

    /// Removes the level at `key`, if there is one.
    fn remove(&mut self, key: i64) {
        if key < self.boundary {
            if self.far.remove(&key).is_some() && self.far.is_empty() {
                self.boundary = i64::MIN;
            }
            return;
        }
        if let Ok(at) = self.keys.binary_search(&key) {
            if !self.sizes[at].is_zero() {
                self.levels -= 1;
                self.sizes[at] = Decimal::ZERO;
                self.drop_vacant();
                if self.levels < self.near_min && !self.far.is_empty() {
                    self.pull_in(self.near_target() - self.levels);
                }
            }
        }
    }

    /// Levels the near part holds after levels moved in or out.
    fn near_target(&self) -> usize {
        // Not `(min + max) / 2`, which a side with huge bounds overflows.
        self.near_min + (self.near_max - self.near_min) / 2
    }

    /// Moves the near part's worst levels to the far part, down to
    /// `near_target` levels.
    fn push_out(&mut self) {
        self.compact();
        let out = self.levels - self.near_target();
        self.boundary = self.keys[out];
        self.far
            .extend(self.keys.drain(..out).zip(self.sizes.drain(..out)));
        self.levels -= out;
    }

    /// Moves the best `count` far levels (or all of them) to the near part.
    fn pull_in(&mut self, count: usize) {
        let mut moving = self.take_far_levels();
        if count < moving.len() {
            keep_best(&mut moving, count);
            let boundary = moving[0].0;
            self.far.retain(|&key, _| key < boundary);
            self.boundary = boundary;
        } else {
            self.far.clear();
            self.boundary = i64::MIN;
        }
        moving.sort_unstable_by_key(|&(key, _)| key);
        // Every far key is below every near key, vacant slots included.
        self.keys.splice(..0, moving.iter().map(|&(key, _)| key));
        self.sizes.splice(..0, moving.iter().map(|&(_, size)| size));
        self.levels += moving.len();
        self.moving = moving;
    }

    /// A copy of the far part's levels, in the storage kept for moving
    /// levels (`moving`), which the caller puts back when done.
    fn take_far_levels(&mut self) -> Vec<(i64, Decimal)> {
        let mut levels = std::mem::take(&mut self.moving);
        levels.clear();
        levels.extend(self.far.iter().map(|(&key, &size)| (key, size)));
        levels
    }

    /// Whether `price` is at or beyond the cut, where nothing is known.
    fn is_beyond_cut(&self, price: Decimal) -> bool {
        let Some(cut) = self.cut else {
            return false;
        };
        let cut = self.level(cut, Decimal::ZERO).price;
        match self.kind {
            SideKind::Bids => price <= cut,
            SideKind::Asks => price >= cut,
        }
    }

    /// Drops the worst levels down to `max_levels`, in one pass: the far
    /// part's first, then the near part's.
    fn drop_worst(&mut self) {
        let excess = self.len().saturating_sub(self.max_levels);
        if excess == 0 {
            return;
        }
        let from_far = excess.min(self.far.len());
        let mut best_dropped = if from_far == self.far.len() {
            let best = self.far.keys().max().copied();
            self.far.clear();
            self.boundary = i64::MIN;
            best
        } else {
            let mut moving = self.take_far_levels();
            let (_, &mut (best, _), _) =
                moving.select_nth_unstable_by_key(from_far - 1, |&(key, _)| key);
            self.far.retain(|&key, _| key > best);
            self.moving = moving;
            Some(best)
        };
        let from_near = excess - from_far;
        if from_near > 0 {
            self.compact();
            best_dropped = Some(self.keys[from_near - 1]);
            self.keys.drain(..from_near);
            self.sizes.drain(..from_near);
            self.levels -= from_near;
        }
        if best_dropped.is_some() {
            self.cut = best_dropped;
        }
        self.dropped += excess as u64;
    }

    /// Puts a new level at index `at` of the near part, moving the levels
    /// between `at` and the nearest vacant slot within [`NEARBY`] (or,
    /// failing that, every level above `at`) by one.
    fn insert(&mut self, at: usize, key: i64, size: Decimal) {
        let len = self.keys.len();
        if at == len {
            self.keys.push(key);
            self.sizes.push(size);
            return;
        }
        let above = self.sizes[at..len.min(at + NEARBY)]
            .iter()
            .position(|size| size.is_zero());
        if let Some(offset) = above {
            let vacant = at + offset;
            self.keys.copy_within(at..vacant, at + 1);
            self.sizes.copy_within(at..vacant, at + 1);
            self.keys[at] = key;
            self.sizes[at] = size;
            return;
        }
        let below = self.sizes[at.saturating_sub(NEARBY)..at]
            .iter()
            .rposition(|size| size.is_zero());
        if let Some(offset) = below {
            let vacant = at.saturating_sub(NEARBY) + offset;
            self.keys.copy_within(vacant + 1..at, vacant);
            self.sizes.copy_within(vacant + 1..at, vacant);
            self.keys[at - 1] = key;
            self.sizes[at - 1] = size;
            return;
        }
        self.keys.insert(at, key);
        self.sizes.insert(at, size);
    }

    /// Drops vacant slots from the end (so the best level is the last slot),
    /// and compacts the vectors once vacant slots outnumber the levels.
    fn drop_vacant(&mut self) {
        while self.sizes.last().is_some_and(|size| size.is_zero()) {
            self.sizes.pop();
            self.keys.pop();
        }
        if self.keys.len() - self.levels > self.levels.max(NEARBY) {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut kept = 0;
        for at in 0..self.keys.len() {
            if !self.sizes[at].is_zero() {
                self.keys[kept] = self.keys[at];
                self.sizes[kept] = self.sizes[at];
                kept += 1;
            }
        }
        self.keys.truncate(kept);
        self.sizes.truncate(kept);
    }

    /// The best level (highest bid, lowest ask).
    pub fn best(&self) -> Option<Level> {
        Some(self.level(*self.keys.last()?, *self.sizes.last()?))
    }

    /// Moves far levels into the near part until it holds the best `n` (or
    /// every level), so that [`Ladder::top`] finds them there: a publisher
    /// calls it first, and the far levels it reads once are not sorted
    /// again for the next version.
    ///
    /// A publisher asks for the same `n` every time, so the near part's
    /// bounds grow to hold `n` levels from the first call on: were it left at
    /// [`NEAR_MIN`]–[`NEAR_MAX`] for an `n` of 500, say, every version would
    /// pull hundreds of levels out of the whole far part again. An `n` above
    /// [`MOST_PREPARED`] is a one-off read of most of the book (no client
    /// is served that deep), which moves nothing: `top` sorts the far levels
    /// for it, rather than the side staying one long vector from then on.
    pub fn prepare_top(&mut self, n: usize) {
        let n = n.min(self.max_levels);
        if n > MOST_PREPARED {
            return;
        }
        if n > self.near_min {
            self.near_min = n;
            self.near_max = self.near_max.max(n.saturating_mul(3));
        }
        if n > self.levels && !self.far.is_empty() {
            self.pull_in(n.max(self.near_target()) - self.levels);
        }
    }

    /// Appends the best `n` levels, best first, to `out`. Prices come out at
    /// the side's scale. Levels beyond the near part are sorted for the
    /// occasion, unless [`Ladder::prepare_top`] moved them in.
    pub fn top(&self, n: usize, out: &mut Vec<Level>) {
        let occupied = self
            .keys
            .iter()
            .zip(&self.sizes)
            .rev()
            .filter(|(_, size)| !size.is_zero());
        let before = out.len();
        for (&key, &size) in occupied.take(n) {
            out.push(self.level(key, size));
        }
        let rest = n - (out.len() - before);
        if rest == 0 || self.far.is_empty() {
            return;
        }
        let mut far: Vec<(i64, Decimal)> =
            self.far.iter().map(|(&key, &size)| (key, size)).collect();
        keep_best(&mut far, rest);
        far.sort_unstable_by_key(|&(key, _)| std::cmp::Reverse(key));
        out.extend(far.iter().map(|&(key, size)| self.level(key, size)));
    }

    fn level(&self, key: i64, size: Decimal) -> Level {
        let value = match self.kind {
            SideKind::Bids => key,
            SideKind::Asks => -key,
        };
        let magnitude = value.unsigned_abs();
        Level {
            // Built from its parts: `Decimal::new` costs several times more,
            // which shows when publishing hundreds of levels per diff.
            price: Decimal::from_parts(
                magnitude as u32,
                (magnitude >> 32) as u32,
                0,
                value < 0,
                self.scale,
            ),
            size,
        }
    }

    /// The key of `price`, first rescaling every key if `price` has more
    /// decimals than the side so far.
    fn key(&mut self, price: Decimal) -> Result<i64, PriceOutOfRange> {
        let out_of_range = PriceOutOfRange(price);
        if self.is_empty() && self.cut.is_none() {
            self.scale = price.scale();
        } else if price.scale() > self.scale {
            // Trailing zeros do not need a finer scale ("10.50" is "10.5").
            let scale = price.normalize().scale().max(self.scale);
            if scale > self.scale {
                let factor = power_of_ten(scale - self.scale).ok_or(out_of_range)?;
                // Vacant slots must not stand in the way.
                self.compact();
                if self
                    .keys
                    .iter()
                    .chain(self.far.keys())
                    .chain(&self.cut)
                    .any(|key| key.checked_mul(factor).is_none())
                {
                    return Err(out_of_range);
                }
                for key in self.keys.iter_mut().chain(&mut self.cut) {
                    *key *= factor;
                }
                let mut moving = std::mem::take(&mut self.moving);
                moving.clear();
                moving.extend(self.far.drain());
                self.far
                    .extend(moving.iter().map(|&(key, size)| (key * factor, size)));
                self.moving = moving;
                // Between the far part's keys and the near part's, which do
                // not overflow; `i64::MIN` stays below every key.
                self.boundary = self.boundary.saturating_mul(factor);
                self.scale = scale;
            }
        }
        self.key_at_scale(price).ok_or(out_of_range)
    }

    /// The key of `price` at the side's current scale, if it has one: not
    /// when the price has non-zero digits beyond that scale or does not fit.
    fn key_at_scale(&self, price: Decimal) -> Option<i64> {
        let value = if price.scale() == self.scale {
            // The usual case, as a venue writes its prices at one scale: no
            // 128-bit multiplication by one.
            price.mantissa()
        } else if price.scale() < self.scale {
            let factor = power_of_ten(self.scale - price.scale())?;
            price.mantissa().checked_mul(i128::from(factor))?
        } else {
            let divisor = i128::from(power_of_ten(price.scale() - self.scale)?);
            if price.mantissa() % divisor != 0 {
                return None;
            }
            price.mantissa() / divisor
        };
        let value = i64::try_from(value).ok().filter(|&v| v != i64::MIN)?;
        Some(match self.kind {
            SideKind::Bids => value,
            SideKind::Asks => -value,
        })
    }
}

/// How far from a new level's place a vacant slot is looked for.
const NEARBY: usize = 16;

fn power_of_ten(exponent: u32) -> Option<i64> {
    10i64.checked_pow(exponent)
}

/// Keeps the best `count` of `levels` (the highest keys), in no order but
/// that, when any were dropped, the worst kept comes first.
fn keep_best(levels: &mut Vec<(i64, Decimal)>, count: usize) {
    if count < levels.len() {
        let first = levels.len() - count;
        levels.select_nth_unstable_by_key(first, |&(key, _)| key);
        levels.drain(..first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn all(ladder: &Ladder) -> Vec<Level> {
        let mut out = Vec::new();
        ladder.top(usize::MAX, &mut out);
        out
    }

    #[test]
    fn matches_a_sorted_map_under_random_churn() {
        for kind in [SideKind::Bids, SideKind::Asks] {
            let mut ladder = Ladder::new(kind, usize::MAX);
            let mut reference: BTreeMap<Decimal, Decimal> = BTreeMap::new();
            let mut x: u64 = 7;
            for step in 0..30_000u64 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let price = Decimal::new(((x >> 33) % 400) as i64 + 10_000, 2);
                // A third of the updates delete, then nine in ten (the book
                // thins out and is compacted), then one in ten (it refills).
                let deletes_in_ten = match step {
                    0..10_000 => 3,
                    10_000..20_000 => 9,
                    _ => 1,
                };
                let size = if (x >> 20) % 10 < deletes_in_ten {
                    Decimal::ZERO
                } else {
                    Decimal::new(((x >> 40) % 1000) as i64 + 1, 3)
                };
                ladder.set(price, size).expect("in range");
                if size.is_zero() {
                    reference.remove(&price);
                } else {
                    reference.insert(price, size);
                }
                let vacant = ladder.sizes.iter().filter(|s| s.is_zero()).count();
                assert_eq!(ladder.levels + vacant, ladder.keys.len());
                assert!(ladder.sizes.last().is_none_or(|s| !s.is_zero()));
                assert!(ladder.keys.windows(2).all(|w| w[0] < w[1]));
                if step % 997 == 0 || step == 29_999 {
                    let mut expected: Vec<Level> = reference
                        .iter()
                        .map(|(&price, &size)| Level { price, size })
                        .collect();
                    if kind == SideKind::Bids {
                        expected.reverse();
                    }
                    assert_eq!(all(&ladder), expected, "{kind:?} after step {step}");
                    assert_eq!(ladder.len(), reference.len());
                    assert_eq!(ladder.best(), expected.first().copied());
                }
            }
        }
    }

    #[test]
    fn top_n_stops_early_and_storage_is_reused() {
        let mut ladder = Ladder::new(SideKind::Asks, usize::MAX);
        for i in 1..=100 {
            ladder
                .set(Decimal::new(i, 0), Decimal::ONE)
                .expect("in range");
        }
        let mut out = Vec::new();
        ladder.top(3, &mut out);
        let prices: Vec<String> = out.iter().map(|l| l.price.to_string()).collect();
        assert_eq!(prices, ["1", "2", "3"]);
        let capacity = ladder.keys.capacity();
        for round in 0..10 {
            for i in 1..=100 {
                ladder
                    .set(Decimal::new(i + round, 0), Decimal::ZERO)
                    .expect("in range");
            }
            assert!(ladder.is_empty());
            for i in 1..=100 {
                ladder
                    .set(Decimal::new(i + round + 1, 0), Decimal::TWO)
                    .expect("in range");
            }
        }
        assert_eq!(ladder.keys.capacity(), capacity, "storage is reused");
        assert_eq!(ladder.len(), 100);
    }

    #[test]
    fn prices_compare_by_value_whatever_their_scale() {
        let mut ladder = Ladder::new(SideKind::Bids, usize::MAX);
        let mut set =
            |price: &str, size: Decimal| ladder.set(price.parse().expect("a price"), size);
        assert_eq!(set("10.00", Decimal::ONE), Ok(()));
        assert_eq!(set("10", Decimal::TWO), Ok(()), "the same level");
        assert_eq!(set("9.5", Decimal::ONE), Ok(()));
        // A finer price rescales the side; trailing zeros do not.
        assert_eq!(set("9.999", Decimal::ONE), Ok(()));
        assert_eq!(set("10.0000", Decimal::TEN), Ok(()));
        let mut out = Vec::new();
        ladder.top(usize::MAX, &mut out);
        let shown: Vec<String> = out
            .iter()
            .map(|l| format!("{}@{}", l.size, l.price))
            .collect();
        assert_eq!(shown, ["10@10.000", "1@9.999", "1@9.500"]);
        ladder
            .set(Decimal::new(100, 1), Decimal::ZERO)
            .expect("in range");
        assert_eq!(ladder.len(), 2);
        assert_eq!(
            ladder.best(),
            Some(Level {
                price: Decimal::new(9_999, 3),
                size: Decimal::ONE
            })
        );
    }

    #[test]
    fn negative_prices_keep_their_order() {
        let mut ladder = Ladder::new(SideKind::Asks, usize::MAX);
        for price in ["-37.63", "1.5", "-40"] {
            ladder
                .set(price.parse().expect("a price"), Decimal::ONE)
                .expect("in range");
        }
        let mut out = Vec::new();
        ladder.top(2, &mut out);
        let prices: Vec<String> = out.iter().map(|l| l.price.to_string()).collect();
        assert_eq!(prices, ["-40.00", "-37.63"]);
    }

    #[test]
    fn a_price_beyond_64_bits_at_the_side_scale_is_refused_and_changes_nothing() {
        let mut ladder = Ladder::new(SideKind::Bids, usize::MAX);
        ladder
            .set(Decimal::new(6_149_650, 2), Decimal::ONE)
            .expect("in range");
        let huge = Decimal::MAX;
        assert_eq!(ladder.set(huge, Decimal::ONE), Err(PriceOutOfRange(huge)));
        // Too precise for the levels already held: rescaling would overflow them.
        let fine = Decimal::new(1, 28);
        ladder
            .set(Decimal::new(90_000_000_000, 0), Decimal::ONE)
            .expect("in range");
        assert_eq!(ladder.set(fine, Decimal::ONE), Err(PriceOutOfRange(fine)));
        assert_eq!(ladder.len(), 2);
        assert_eq!(
            ladder.best().map(|l| l.price),
            Some(Decimal::new(9_000_000_000_000, 2))
        );
        // A deletion of a price the side cannot hold finds nothing to delete.
        assert_eq!(ladder.set(huge, Decimal::ZERO), Ok(()));
        assert_eq!(ladder.set(fine, Decimal::ZERO), Ok(()));
        assert_eq!(ladder.len(), 2);
    }

    #[test]
    fn deleting_an_absent_finer_price_leaves_the_scale_alone() {
        let mut ladder = Ladder::new(SideKind::Asks, usize::MAX);
        for price in ["10.5", "11"] {
            ladder
                .set(price.parse().expect("a price"), Decimal::ONE)
                .expect("in range");
        }
        ladder
            .set("10.123".parse().expect("a price"), Decimal::ZERO)
            .expect("a deletion");
        // The same level written with trailing zeros is still found.
        ladder
            .set("11.000".parse().expect("a price"), Decimal::ZERO)
            .expect("a deletion");
        let mut out = Vec::new();
        ladder.top(usize::MAX, &mut out);
        let prices: Vec<String> = out.iter().map(|l| l.price.to_string()).collect();
        assert_eq!(prices, ["10.5"]);
    }

    #[test]
    fn a_side_past_its_cap_drops_its_worst_levels_and_counts_them() {
        for kind in [SideKind::Bids, SideKind::Asks] {
            let mut ladder = Ladder::new(kind, 80);
            // Prices 1..=200 in a scattered order, a few deleted on the way.
            let mut reference: BTreeMap<Decimal, Decimal> = BTreeMap::new();
            for i in 0..200i64 {
                let price = Decimal::new((i * 37) % 200 + 1, 0);
                ladder.set(price, Decimal::ONE).expect("in range");
                reference.insert(price, Decimal::ONE);
                if i % 7 == 0 {
                    let gone = Decimal::new((i * 11) % 200 + 1, 0);
                    ladder.set(gone, Decimal::ZERO).expect("in range");
                    reference.remove(&gone);
                }
                assert!(ladder.len() <= 90, "{kind:?}: {} levels", ladder.len());
            }
            let dropped = ladder.take_dropped();
            assert!(dropped > 0);
            assert_eq!(ladder.take_dropped(), 0, "taken once");
            // What is kept is exactly the venue's best levels: a prefix of the
            // reference's, which never dropped anything.
            let mut kept = Vec::new();
            ladder.top(usize::MAX, &mut kept);
            let mut expected: Vec<Decimal> = reference.keys().copied().collect();
            if kind == SideKind::Bids {
                expected.reverse();
            }
            let kept: Vec<Decimal> = kept.iter().map(|l| l.price).collect();
            assert!(kept.len() >= 40, "{kind:?}: {}", kept.len());
            assert_eq!(kept[..], expected[..kept.len()], "{kind:?}");
            // A finer price rescales the side, and the cut with it.
            let better = match kind {
                SideKind::Bids => kept[0] + Decimal::new(5, 1),
                SideKind::Asks => kept[0] - Decimal::new(5, 1),
            };
            ladder.set(better, Decimal::ONE).expect("in range");
            assert_eq!(ladder.best().map(|l| l.price), Some(better));
            assert!(ladder.is_cut());
            // Beyond the cut nothing is known: the venue's next level (which
            // was dropped) and the worst are not taken.
            for beyond in [expected[kept.len()], *expected.last().expect("levels")] {
                ladder.set(beyond, Decimal::TEN).expect("in range");
                assert_eq!(ladder.len(), kept.len() + 1, "{kind:?}: {beyond}");
            }
            // Nor is a price finer than the side's scale, which stays as it is.
            let finer_beyond = match kind {
                SideKind::Bids => expected[kept.len()] - Decimal::new(5, 2),
                SideKind::Asks => expected[kept.len()] + Decimal::new(5, 2),
            };
            ladder.set(finer_beyond, Decimal::TEN).expect("in range");
            assert_eq!(ladder.len(), kept.len() + 1, "{kind:?}: {finer_beyond}");
            assert_eq!(ladder.best().map(|l| l.price.scale()), Some(1));
            assert_eq!(ladder.take_dropped(), 3);
            // Between the worst level held and the cut, a new level is.
            let worst_held = kept[kept.len() - 1];
            let between = match kind {
                SideKind::Bids => worst_held - Decimal::new(5, 1),
                SideKind::Asks => worst_held + Decimal::new(5, 1),
            };
            ladder.set(between, Decimal::ONE).expect("in range");
            assert_eq!(ladder.len(), kept.len() + 2, "{kind:?}: {between}");
            // Until the side is cleared.
            let worst = *expected.last().expect("levels");
            ladder.clear();
            assert!(!ladder.is_cut());
            ladder.set(worst, Decimal::TEN).expect("in range");
            assert_eq!(ladder.len(), 1);
        }
    }

    /// A side with a small near part, for the near/far split to move often.
    fn small(kind: SideKind, max_levels: usize) -> Ladder {
        Ladder::with_near(kind, max_levels, 8, 24)
    }

    /// The split's invariants (module docs).
    fn check_parts(ladder: &Ladder) {
        let vacant = ladder.sizes.iter().filter(|s| s.is_zero()).count();
        assert_eq!(ladder.levels + vacant, ladder.keys.len());
        assert!(ladder.sizes.last().is_none_or(|s| !s.is_zero()));
        assert!(ladder.keys.windows(2).all(|w| w[0] < w[1]));
        assert!(ladder.keys.iter().all(|&key| key >= ladder.boundary));
        assert!(ladder
            .far
            .iter()
            .all(|(&key, size)| key < ladder.boundary && !size.is_zero()));
        assert_eq!(ladder.far.is_empty(), ladder.boundary == i64::MIN);
        assert!(ladder.far.is_empty() || ladder.levels >= ladder.near_min);
    }

    /// What a side should hold: every level, capped and cut as the module
    /// docs say, in a sorted map.
    struct Model {
        kind: SideKind,
        levels: BTreeMap<Decimal, Decimal>,
        max_levels: usize,
        cut: Option<Decimal>,
        dropped: u64,
    }

    impl Model {
        fn set(&mut self, price: Decimal, size: Decimal) {
            if size.is_zero() {
                self.levels.remove(&price);
                return;
            }
            let beyond = self.cut.is_some_and(|cut| match self.kind {
                SideKind::Bids => price <= cut,
                SideKind::Asks => price >= cut,
            });
            if beyond {
                self.dropped += 1;
                return;
            }
            self.levels.insert(price, size);
            if self.levels.len() > self.max_levels.saturating_add(self.max_levels / 8) {
                while self.levels.len() > self.max_levels {
                    let worst = match self.kind {
                        SideKind::Bids => self.levels.pop_first(),
                        SideKind::Asks => self.levels.pop_last(),
                    };
                    self.cut = worst.map(|(price, _)| price);
                    self.dropped += 1;
                }
            }
        }

        fn best_first(&self) -> Vec<Level> {
            let levels = self
                .levels
                .iter()
                .map(|(&price, &size)| Level { price, size });
            match self.kind {
                SideKind::Bids => levels.rev().collect(),
                SideKind::Asks => levels.collect(),
            }
        }
    }

    #[test]
    fn levels_moving_between_the_parts_as_the_price_drifts_match_a_sorted_map() {
        for kind in [SideKind::Bids, SideKind::Asks] {
            for max_levels in [usize::MAX, 150] {
                let mut ladder = small(kind, max_levels);
                let mut model = Model {
                    kind,
                    levels: BTreeMap::new(),
                    max_levels,
                    cut: None,
                    dropped: 0,
                };
                let (mut pushed, mut pulled) = (0, 0);
                let mut x: u64 = 11;
                let mut next = || {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    x >> 16
                };
                // The best price, in cents, drifting up and down.
                let mut center: i64 = 100_000;
                let mut out = Vec::new();
                for step in 0..60_000u64 {
                    let r = next();
                    if r % 8 == 0 {
                        // Swings of about 190 levels either way.
                        let up = (step / 3_000) % 2 == 0;
                        center += if ((r >> 3) % 4 < 3) == up { 1 } else { -1 };
                    }
                    // Most changes near the best price, some deep in the book.
                    let depth = match (r >> 8) % 10 {
                        0..=5 => (r >> 12) % 16,
                        6..=8 => (r >> 12) % 128,
                        _ => (r >> 12) % 600,
                    } as i64;
                    let cents = match kind {
                        SideKind::Bids => center - depth,
                        SideKind::Asks => center + depth,
                    };
                    // Levels better than the best price are taken: deleted.
                    let swept = (r >> 24) % 4 == 0;
                    let deletes = swept || (r >> 26) % 10 < 4;
                    let price = if swept {
                        let cents = match kind {
                            SideKind::Bids => center + 1 + (r >> 30) as i64 % 8,
                            SideKind::Asks => center - 1 - (r >> 30) as i64 % 8,
                        };
                        Decimal::new(cents, 2)
                    } else if (r >> 34) % 50 == 0 {
                        // The same value at another scale.
                        Decimal::new(cents * 10, 3)
                    } else {
                        Decimal::new(cents, 2)
                    };
                    let size = if deletes {
                        Decimal::ZERO
                    } else {
                        Decimal::new((r >> 40) as i64 % 1000 + 1, 3)
                    };
                    let boundary = ladder.boundary;
                    ladder.set(price, size).expect("in range");
                    model.set(price, size);
                    if step == 30_000 {
                        // A finer price rescales both parts.
                        let finer = Decimal::new(cents * 10 + 5, 3);
                        ladder.set(finer, Decimal::ONE).expect("in range");
                        model.set(finer, Decimal::ONE);
                    }
                    match ladder.boundary.cmp(&boundary) {
                        std::cmp::Ordering::Greater if boundary != i64::MIN => pushed += 1,
                        std::cmp::Ordering::Less if ladder.boundary != i64::MIN => pulled += 1,
                        _ => {}
                    }
                    check_parts(&ladder);
                    let expected = model.best_first();
                    assert_eq!(ladder.len(), expected.len(), "{kind:?} step {step}");
                    assert_eq!(ladder.best(), expected.first().copied());
                    assert_eq!(ladder.is_cut(), model.cut.is_some());
                    if step % 101 == 0 {
                        // From both parts, and after moving levels in.
                        for n in [1, 5, 30, 200] {
                            out.clear();
                            ladder.top(n, &mut out);
                            assert_eq!(
                                out[..],
                                expected[..n.min(expected.len())],
                                "{kind:?} {step}"
                            );
                        }
                        assert_eq!(all(&ladder), expected, "{kind:?} after step {step}");
                        // Late in the run: from then on the near part holds
                        // at least 40 levels, and moves between the parts
                        // are rarer.
                        if step % 707 == 0 && step > 56_000 {
                            ladder.prepare_top(40);
                            assert!(ladder.near_min >= 40 && ladder.near_max >= 120);
                            check_parts(&ladder);
                            out.clear();
                            ladder.top(40, &mut out);
                            assert_eq!(out[..], expected[..40.min(expected.len())]);
                        }
                        assert_eq!(ladder.take_dropped(), std::mem::take(&mut model.dropped));
                    }
                }
                assert!(
                    pushed > 100 && pulled > 100,
                    "{kind:?} {max_levels}: {pushed} {pulled}"
                );
                if max_levels < usize::MAX {
                    assert!(ladder.is_cut());
                }
                assert_eq!(ladder.best().map(|l| l.price.scale()), Some(3));
            }
        }
    }

    /// Sets a level of size one at every price of `cents`.
    fn set_cents(ladder: &mut Ladder, cents: std::ops::Range<i64>) {
        for cents in cents {
            ladder
                .set(Decimal::new(cents, 2), Decimal::ONE)
                .expect("in range");
        }
    }

    #[test]
    fn every_level_of_an_uncapped_side_prepared_for_reading() {
        // A side with no cap (as `Ladder::new(kind, usize::MAX)` in the tests
        // above) and a far part, asked for every level.
        let mut ladder = small(SideKind::Bids, usize::MAX);
        set_cents(&mut ladder, 0..100);
        assert!(!ladder.far.is_empty());
        ladder.prepare_top(usize::MAX);
        check_parts(&ladder);
        let mut out = Vec::new();
        ladder.top(usize::MAX, &mut out);
        assert_eq!(out.len(), 100);
    }

    #[test]
    fn a_one_off_deep_read_leaves_the_far_part_in_use() {
        // tests/depth.rs reads the whole book now and then (n = usize::MAX on
        // a 10,000-level cap); publishing 100 levels afterwards should still
        // keep the deep levels in the map.
        let mut ladder = Ladder::new(SideKind::Bids, 10_000);
        set_cents(&mut ladder, 0..2_000);
        assert!(!ladder.far.is_empty());
        ladder.prepare_top(usize::MAX);
        ladder.prepare_top(100);
        set_cents(&mut ladder, 2_000..5_000);
        assert!(
            !ladder.far.is_empty(),
            "near part holds {} levels, bounds {}-{}",
            ladder.levels,
            ladder.near_min,
            ladder.near_max
        );
    }

    #[test]
    fn random_operations_on_small_parts_match_a_sorted_map() {
        let caps = [1usize, 2, 3, 7, 30, 100, 1_000, usize::MAX];
        let nears = [(1usize, 1usize), (1, 3), (2, 6), (4, 12), (8, 24)];
        let mut seed: u64 = 99;
        for kind in [SideKind::Bids, SideKind::Asks] {
            for &cap in &caps {
                for &(nmin, nmax) in &nears {
                    let mut ladder = Ladder::with_near(kind, cap, nmin, nmax);
                    let mut model = Model {
                        kind,
                        levels: BTreeMap::new(),
                        max_levels: cap,
                        cut: None,
                        dropped: 0,
                    };
                    let mut next = || {
                        seed = seed
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        seed >> 16
                    };
                    let mut scale = 2u32;
                    for step in 0..6_000u64 {
                        let r = next();
                        let op = r % 100;
                        if op == 0 {
                            ladder.clear();
                            model.levels.clear();
                            model.cut = None;
                        } else if op < 4 {
                            let n =
                                [0usize, 1, 3, 10, 50, 200, usize::MAX / 8][(r >> 8) as usize % 7];
                            ladder.prepare_top(n);
                            check_parts(&ladder);
                        } else {
                            if op == 4 && scale < 5 {
                                scale += 1;
                            }
                            let units = ((r >> 8) % 300) as i64;
                            let price = Decimal::new(
                                units * 10i64.pow(scale - 2) + if op == 5 { 1 } else { 0 },
                                scale,
                            );
                            let size = if (r >> 20) % 5 < 2 {
                                Decimal::ZERO
                            } else {
                                Decimal::new(((r >> 24) % 100 + 1) as i64, 1)
                            };
                            ladder.set(price, size).expect("in range");
                            model.set(price, size);
                        }
                        check_parts(&ladder);
                        let expected = model.best_first();
                        assert_eq!(
                            ladder.len(),
                            expected.len(),
                            "{kind:?} cap {cap} near {nmin} step {step}"
                        );
                        assert_eq!(ladder.best(), expected.first().copied());
                        assert_eq!(ladder.is_cut(), model.cut.is_some());
                        if step % 37 == 0 {
                            for n in [1usize, 4, 17, 500] {
                                let mut out = Vec::new();
                                ladder.top(n, &mut out);
                                assert_eq!(
                                    out[..],
                                    expected[..n.min(expected.len())],
                                    "{kind:?} cap {cap} step {step}"
                                );
                            }
                            assert_eq!(
                                ladder.take_dropped(),
                                std::mem::take(&mut model.dropped),
                                "{kind:?} cap {cap} step {step}"
                            );
                        }
                    }
                }
            }
        }
    }
}
