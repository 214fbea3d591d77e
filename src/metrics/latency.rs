//! Latency histograms that many tasks record into without a global lock.
//!
//! Each recorder is a small array of HdrHistograms behind their own mutexes; a
//! session always records into the same shard, once per socket write and for the
//! whole batch, so contention is rare and brief. Readers merge the shards.

use std::fmt::Write as _;
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Shards: enough that two sessions on different cores rarely share one.
const SHARDS: usize = 8;
/// 1 µs .. 60 s at 2 significant digits (1 % resolution): 18 KiB of counts
/// per shard, which stay in cache while every delivery is recorded. Finer
/// histograms (1 ns, 3 digits: 220 KiB) cost a cache miss per sample; the
/// figures that need more precision come from the client-side benchmark.
const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 60_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

/// A mergeable, sharded latency histogram in nanoseconds.
#[derive(Debug)]
pub struct LatencyRecorder {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::with_shards(SHARDS)
    }
}

fn empty_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure is a bug here.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

impl LatencyRecorder {
    /// A recorder with `shards` histograms (one when a single task records).
    pub fn with_shards(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(empty_histogram()))
                .collect(),
        }
    }

    /// Records a batch of samples (nanoseconds) into the shard picked by `shard_key`.
    /// Samples above the range are clamped to the highest trackable value.
    pub fn record_batch(&self, shard_key: u64, samples_ns: &[u64]) {
        if samples_ns.is_empty() {
            return;
        }
        let shard = &self.shards[(shard_key as usize) % self.shards.len()];
        let mut histogram = shard.lock().unwrap_or_else(|e| e.into_inner());
        for &sample in samples_ns {
            histogram.saturating_record(sample.max(1));
        }
    }

    /// All shards merged into one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut merged = empty_histogram();
        for shard in self.shards.iter() {
            let histogram = shard.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds on both sides, so adding cannot fail.
            let _ = merged.add(&*histogram);
        }
        merged
    }

    /// Percentiles of everything recorded so far.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.merged())
    }
}

/// The percentiles the service reports, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub sum: u64,
}

impl LatencySummary {
    /// Reads the reported percentiles off a histogram.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            sum: (histogram.mean() * histogram.len() as f64) as u64,
        }
    }

    /// Writes a Prometheus summary (seconds) named `name`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
        self.render_series(out, name, "");
    }

    /// Writes the summary's series with extra `labels` (`key="value",...`),
    /// under a HELP/TYPE header the caller wrote.
    pub fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        for (quantile, value) in [
            ("0.5", self.p50),
            ("0.9", self.p90),
            ("0.99", self.p99),
            ("0.999", self.p999),
            ("1", self.max),
        ] {
            let _ = writeln!(
                out,
                "{name}{{{labels}{sep}quantile=\"{quantile}\"}} {}",
                seconds(value)
            );
        }
        let _ = writeln!(out, "{name}_sum{braces} {}", seconds(self.sum));
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |ns: u64| ns as f64 / 1_000.0;
        write!(
            f,
            "n={} p50={:.1}µs p90={:.1}µs p99={:.1}µs p99.9={:.1}µs max={:.1}µs",
            self.count,
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.p999),
            us(self.max)
        )
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_one_distribution() {
        let recorder = LatencyRecorder::default();
        recorder.record_batch(0, &[1_000; 90]);
        recorder.record_batch(5, &[1_000_000; 10]);
        let summary = recorder.summary();
        assert_eq!(summary.count, 100);
        // Within the histogram's resolution: its smallest unit (512 ns, the
        // power of two below LOWEST_NS) at the bottom, 1 % above.
        assert!(
            summary.p50 >= 1_000 && summary.p50 < 1_000 + 512,
            "{summary:?}"
        );
        assert!(summary.p99 >= 990_000, "{summary:?}");
        assert!(
            summary.max >= 990_000 && summary.max <= 1_010_000,
            "{summary:?}"
        );
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let recorder = LatencyRecorder::default();
        recorder.record_batch(1, &[0, u64::MAX]);
        assert_eq!(recorder.summary().count, 2);
    }
}
