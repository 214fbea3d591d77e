//! Which symbols each connection subscribes to: all of them, or `K` distinct
//! ones drawn uniformly or with Zipf popularity, reproducibly from a seed.

/// SplitMix64: tiny, fast and good enough to spread subscriptions; what matters
/// here is that a seed always yields the same plan.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Popularity of the symbol at `rank` (0 = first listed): `1 / (rank + 1)^s`.
/// `s = 0` is uniform.
pub fn zipf_weights(count: usize, s: f64) -> Vec<f64> {
    (0..count)
        .map(|rank| 1.0 / ((rank + 1) as f64).powf(s))
        .collect()
}

/// Picks `k` distinct indices out of `weights.len()`, each draw proportional to
/// the remaining weights (sampling without replacement). Returned in the order
/// drawn. With `k >= len` every index is returned in order, no randomness used.
pub fn choose(weights: &[f64], k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    if k >= weights.len() {
        return (0..weights.len()).collect();
    }
    let mut remaining: Vec<(usize, f64)> = weights.iter().copied().enumerate().collect();
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        let total: f64 = remaining.iter().map(|(_, w)| w).sum();
        let mut target = rng.next_f64() * total;
        // Float rounding can leave `target` a hair above the last weight: take the last.
        let mut pick = remaining.len() - 1;
        for (at, (_, weight)) in remaining.iter().enumerate() {
            if target < *weight {
                pick = at;
                break;
            }
            target -= weight;
        }
        chosen.push(remaining.swap_remove(pick).0);
    }
    chosen
}

/// The symbols of every connection: `connections` lists of `per_connection`
/// names from `symbols`, Zipf-skewed by `zipf` (0 = uniform), reproducible from `seed`.
pub fn plan(
    symbols: &[String],
    connections: usize,
    per_connection: usize,
    zipf: f64,
    seed: u64,
) -> Vec<Vec<String>> {
    let weights = zipf_weights(symbols.len(), zipf);
    let mut rng = SplitMix64::new(seed);
    (0..connections)
        .map(|_| {
            choose(&weights, per_connection, &mut rng)
                .into_iter()
                .map(|i| symbols[i].clone())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("S{i}")).collect()
    }

    #[test]
    fn all_symbols_when_k_covers_the_list() {
        let plan = plan(&names(3), 2, 3, 1.0, 7);
        assert_eq!(plan, vec![names(3), names(3)]);
    }

    #[test]
    fn picks_are_distinct_and_reproducible() {
        let symbols = names(100);
        let first = plan(&symbols, 50, 10, 1.0, 42);
        assert_eq!(first, plan(&symbols, 50, 10, 1.0, 42));
        assert_ne!(first, plan(&symbols, 50, 10, 1.0, 43));
        for list in &first {
            assert_eq!(list.len(), 10);
            let mut unique = list.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 10, "{list:?}");
        }
    }

    #[test]
    fn zipf_favours_the_head_and_uniform_does_not() {
        let symbols = names(100);
        let share_of_first = |zipf: f64| {
            let plan = plan(&symbols, 2_000, 1, zipf, 1);
            plan.iter().filter(|l| l[0] == "S0").count() as f64 / 2_000.0
        };
        // With s = 1 over 100 ranks, rank 0 holds 1 / H(100) ≈ 19% of the weight.
        let zipf = share_of_first(1.0);
        assert!((0.15..0.24).contains(&zipf), "{zipf}");
        let uniform = share_of_first(0.0);
        assert!(uniform < 0.03, "{uniform}");
    }

    #[test]
    fn uniform_floats_stay_in_range() {
        let mut rng = SplitMix64::new(0);
        for _ in 0..10_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
