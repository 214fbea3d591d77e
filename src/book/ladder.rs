//! One side of an order book: price levels kept in best-first order.
//!
//! A treap (a binary search tree balanced by random node priorities) whose
//! nodes live in one vector and are recycled through a free list. Setting,
//! replacing or removing a level is O(log n) expected, and once the vector has
//! grown to the largest book seen no operation allocates. Reading the best `n`
//! levels walks only those `n` nodes (plus the path to the first), never the
//! whole side.

use std::cmp::Ordering;

use rust_decimal::Decimal;

use super::Level;

const NIL: u32 = u32::MAX;

/// Which way a side is ordered: bids best-first means highest price first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideKind {
    Bids,
    Asks,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    level: Level,
    priority: u32,
    left: u32,
    right: u32,
}

/// The price levels of one side of a book.
#[derive(Clone, Debug)]
pub struct Ladder {
    kind: SideKind,
    nodes: Vec<Node>,
    free: Vec<u32>,
    root: u32,
    len: usize,
    /// xorshift state for node priorities; seeded so runs are reproducible.
    rng: u64,
}

impl Ladder {
    /// An empty side.
    pub fn new(kind: SideKind) -> Self {
        Self {
            kind,
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            len: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Number of levels.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the side has no level.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every level, keeping the storage for reuse.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.free.clear();
        self.root = NIL;
        self.len = 0;
    }

    /// Sets the size at `price`; a zero size removes the level (removing an
    /// absent level is a no-op, as venues send such deletions).
    pub fn set(&mut self, price: Decimal, size: Decimal) {
        if size.is_zero() {
            self.root = self.remove(self.root, price);
            return;
        }
        // Most updates change the size of an existing level: no restructuring.
        let mut at = self.root;
        while let Some(node) = self.nodes.get_mut(at as usize) {
            if compare(node.level.price, price) == Ordering::Equal {
                node.level.size = size;
                return;
            }
            at = if better(self.kind, price, node.level.price) {
                node.left
            } else {
                node.right
            };
        }
        let index = self.allocate(Level { price, size });
        self.root = self.insert(self.root, index);
        self.len += 1;
    }

    /// The best level (highest bid, lowest ask).
    pub fn best(&self) -> Option<Level> {
        let mut at = self.root;
        let mut best = None;
        while let Some(node) = self.nodes.get(at as usize) {
            best = Some(node.level);
            at = node.left;
        }
        best
    }

    /// Appends the best `n` levels, best first, to `out`. `stack` is scratch
    /// space (its capacity is kept, so repeated calls do not allocate).
    pub fn top(&self, n: usize, stack: &mut Vec<u32>, out: &mut Vec<Level>) {
        stack.clear();
        let mut at = self.root;
        let mut taken = 0;
        while taken < n {
            while let Some(node) = self.nodes.get(at as usize) {
                stack.push(at);
                at = node.left;
            }
            let Some(index) = stack.pop() else { break };
            let node = &self.nodes[index as usize];
            out.push(node.level);
            taken += 1;
            at = node.right;
        }
    }

    fn allocate(&mut self, level: Level) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let node = Node {
            level,
            priority: (self.rng >> 32) as u32,
            left: NIL,
            right: NIL,
        };
        match self.free.pop() {
            Some(index) => {
                self.nodes[index as usize] = node;
                index
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Inserts node `index` under `at`, returning the subtree's new root.
    fn insert(&mut self, at: u32, index: u32) -> u32 {
        if at == NIL {
            return index;
        }
        let price = self.nodes[index as usize].level.price;
        let here = self.nodes[at as usize];
        if better(self.kind, price, here.level.price) {
            let left = self.insert(here.left, index);
            self.nodes[at as usize].left = left;
            if self.nodes[left as usize].priority > here.priority {
                return self.rotate_right(at);
            }
        } else {
            let right = self.insert(here.right, index);
            self.nodes[at as usize].right = right;
            if self.nodes[right as usize].priority > here.priority {
                return self.rotate_left(at);
            }
        }
        at
    }

    /// Removes the level at `price` from the subtree under `at`.
    fn remove(&mut self, at: u32, price: Decimal) -> u32 {
        let Some(&here) = self.nodes.get(at as usize) else {
            return NIL;
        };
        if compare(here.level.price, price) == Ordering::Equal {
            self.free.push(at);
            self.len -= 1;
            return self.join(here.left, here.right);
        }
        if better(self.kind, price, here.level.price) {
            let left = self.remove(here.left, price);
            self.nodes[at as usize].left = left;
        } else {
            let right = self.remove(here.right, price);
            self.nodes[at as usize].right = right;
        }
        at
    }

    /// Joins two subtrees where every level of `a` is better than every level of `b`.
    fn join(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].priority > self.nodes[b as usize].priority {
            let right = self.nodes[a as usize].right;
            let joined = self.join(right, b);
            self.nodes[a as usize].right = joined;
            a
        } else {
            let left = self.nodes[b as usize].left;
            let joined = self.join(a, left);
            self.nodes[b as usize].left = joined;
            b
        }
    }

    fn rotate_right(&mut self, at: u32) -> u32 {
        let left = self.nodes[at as usize].left;
        self.nodes[at as usize].left = self.nodes[left as usize].right;
        self.nodes[left as usize].right = at;
        left
    }

    fn rotate_left(&mut self, at: u32) -> u32 {
        let right = self.nodes[at as usize].right;
        self.nodes[at as usize].right = self.nodes[right as usize].left;
        self.nodes[right as usize].left = at;
        right
    }
}

/// Whether `a` sorts before (is a better price than) `b` on this side.
#[inline]
fn better(kind: SideKind, a: Decimal, b: Decimal) -> bool {
    match kind {
        SideKind::Bids => compare(a, b) == Ordering::Greater,
        SideKind::Asks => compare(a, b) == Ordering::Less,
    }
}

/// Compares two prices by value. A venue writes every price of a symbol with
/// the same number of decimals, so the mantissas compare directly; other
/// pairs take `Decimal`'s general (rescaling, much slower) comparison.
#[inline]
fn compare(a: Decimal, b: Decimal) -> Ordering {
    if a.scale() == b.scale() {
        a.mantissa().cmp(&b.mantissa())
    } else {
        a.cmp(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn all(ladder: &Ladder) -> Vec<Level> {
        let mut out = Vec::new();
        ladder.top(usize::MAX, &mut Vec::new(), &mut out);
        out
    }

    #[test]
    fn matches_a_sorted_map_under_random_churn() {
        for kind in [SideKind::Bids, SideKind::Asks] {
            let mut ladder = Ladder::new(kind);
            let mut reference: BTreeMap<Decimal, Decimal> = BTreeMap::new();
            let mut x: u64 = 7;
            for step in 0..20_000u64 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let price = Decimal::new(((x >> 33) % 400) as i64 + 10_000, 2);
                let size = if (x >> 20) % 3 == 0 {
                    Decimal::ZERO
                } else {
                    Decimal::new(((x >> 40) % 1000) as i64 + 1, 3)
                };
                ladder.set(price, size);
                if size.is_zero() {
                    reference.remove(&price);
                } else {
                    reference.insert(price, size);
                }
                if step % 997 == 0 || step == 19_999 {
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
        let mut ladder = Ladder::new(SideKind::Asks);
        for i in 1..=100 {
            ladder.set(Decimal::new(i, 0), Decimal::ONE);
        }
        let mut out = Vec::new();
        ladder.top(3, &mut Vec::new(), &mut out);
        let prices: Vec<String> = out.iter().map(|l| l.price.to_string()).collect();
        assert_eq!(prices, ["1", "2", "3"]);
        let capacity = ladder.nodes.capacity();
        for round in 0..10 {
            for i in 1..=100 {
                ladder.set(Decimal::new(i + round, 0), Decimal::ZERO);
            }
            assert!(ladder.is_empty());
            for i in 1..=100 {
                ladder.set(Decimal::new(i + round + 1, 0), Decimal::TWO);
            }
        }
        assert_eq!(ladder.nodes.capacity(), capacity, "freed nodes are reused");
        assert_eq!(ladder.len(), 100);
    }

    #[test]
    fn prices_compare_by_value() {
        let mut ladder = Ladder::new(SideKind::Bids);
        ladder.set(Decimal::new(1_000, 2), Decimal::ONE); // 10.00
        ladder.set(Decimal::new(10, 0), Decimal::TWO); // 10: the same level
        assert_eq!(ladder.len(), 1);
        assert_eq!(ladder.best().map(|l| l.size), Some(Decimal::TWO));
        ladder.set(Decimal::new(100, 1), Decimal::ZERO);
        assert!(ladder.is_empty());
    }
}
