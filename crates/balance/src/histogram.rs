//! A lock-free log-linear latency histogram: the control loop's window percentiles.
//!
//! Values are microseconds. Each power of two is split into four sub-buckets (≈19 % wide), so
//! a percentile read from the histogram is within about 10 % of the true value. Recording is
//! one relaxed `fetch_add`; readers take a snapshot and subtract the previous one to get the
//! counts of a time window.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Sub-buckets per power of two.
const SUB: usize = 4;
/// Powers of two covered: 1 µs up to 2^40 µs (about 12 days).
const OCTAVES: usize = 40;
/// Number of buckets.
pub const BUCKETS: usize = OCTAVES * SUB;

/// Atomic bucket counts.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.snapshot().count())
            .finish()
    }
}

/// Bucket index for a value in microseconds.
#[inline]
pub fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize; // >= 2
    let sub = ((us >> (octave - 2)) & 0b11) as usize;
    (octave * SUB + sub).min(BUCKETS - 1)
}

/// Representative value (µs) of a bucket: the midpoint of its range.
pub fn bucket_value(idx: usize) -> f64 {
    if idx < SUB {
        return idx as f64 + 0.5;
    }
    let octave = idx / SUB;
    let sub = idx % SUB;
    let lo = (1u64 << octave) as f64 * (1.0 + sub as f64 / SUB as f64);
    let width = (1u64 << octave) as f64 / SUB as f64;
    lo + width / 2.0
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Count one latency.
    #[inline]
    pub fn record_ns(&self, latency_ns: u64) {
        self.buckets[bucket_of(latency_ns / 1000)].fetch_add(1, Relaxed);
    }

    /// Summarise the window since `previous` (an earlier snapshot of this histogram) and
    /// advance `previous` to the current counts: one pass over the buckets, no allocation.
    /// Same figures as `snapshot().since(previous)` followed by its quantiles and mean.
    pub fn advance(&self, previous: &mut HistogramSnapshot) -> WindowSummary {
        let mut window = [0u64; BUCKETS];
        for ((bucket, prev), w) in self
            .buckets
            .iter()
            .zip(previous.counts.iter_mut())
            .zip(window.iter_mut())
        {
            let now = bucket.load(Relaxed);
            *w = now.saturating_sub(*prev);
            *prev = now;
        }
        let count = window.iter().sum();
        WindowSummary {
            count,
            mean_us: mean_of(&window, count),
            p50_us: quantile_of(&window, count, 0.5),
            p99_us: quantile_of(&window, count, 0.99),
        }
    }

    /// Copy the current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
        }
    }
}

/// Count, mean and quantiles (µs) of one window; the figures are `None` for an empty window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowSummary {
    /// Samples in the window.
    pub count: u64,
    /// Mean from bucket midpoints.
    pub mean_us: Option<f64>,
    /// Median.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
}

/// Plain bucket counts, for window arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    counts: Vec<u64>,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            counts: vec![0; BUCKETS],
        }
    }
}

impl HistogramSnapshot {
    /// Counts recorded since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    /// Total samples.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0..=1) in microseconds; `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        quantile_of(&self.counts, self.count(), q)
    }

    /// Mean in microseconds from bucket midpoints; `None` when empty.
    pub fn mean_us(&self) -> Option<f64> {
        mean_of(&self.counts, self.count())
    }
}

/// The `q` quantile (µs) of bucket `counts` holding `total` samples; `None` when empty.
fn quantile_of(counts: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bucket_value(i));
        }
    }
    Some(bucket_value(BUCKETS - 1))
}

/// Mean (µs, from bucket midpoints) of bucket `counts` holding `total` samples.
fn mean_of(counts: &[u64], total: u64) -> Option<f64> {
    (total > 0).then(|| {
        counts
            .iter()
            .enumerate()
            .map(|(i, c)| bucket_value(i) * *c as f64)
            .sum::<f64>()
            / total as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut prev = 0;
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 65_535, 1 << 30] {
            let b = bucket_of(us);
            assert!(b >= prev, "{us}");
            prev = b;
            let v = bucket_value(b);
            assert!(
                (v - us as f64).abs() <= (us as f64 * 0.13).max(0.5),
                "{us} -> {v}"
            );
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_a_window() {
        let h = LatencyHistogram::new();
        for _ in 0..90 {
            h.record_ns(1_000_000); // 1 ms
        }
        let before = h.snapshot();
        for _ in 0..99 {
            h.record_ns(2_000_000);
        }
        h.record_ns(100_000_000); // 100 ms
        let w = h.snapshot().since(&before);
        assert_eq!(w.count(), 100);
        let p50 = w.quantile_us(0.5).unwrap();
        assert!((p50 - 2000.0).abs() < 250.0, "{p50}");
        let p999 = w.quantile_us(0.999).unwrap();
        assert!((p999 - 100_000.0).abs() < 12_000.0, "{p999}");
        assert!(HistogramSnapshot::default().quantile_us(0.5).is_none());
    }

    #[test]
    fn advance_matches_snapshot_arithmetic() {
        let h = LatencyHistogram::new();
        let mut prev = HistogramSnapshot::default();
        assert_eq!(h.advance(&mut prev), WindowSummary::default());
        for (k, us) in [3u64, 900, 1_000, 1_100, 25_000, 25_000, 400_000]
            .iter()
            .enumerate()
        {
            for _ in 0..=k {
                h.record_ns(us * 1000);
            }
        }
        let before = prev.clone();
        let snap = h.snapshot();
        let window = snap.since(&before);
        let got = h.advance(&mut prev);
        assert_eq!(prev, snap);
        assert_eq!(got.count, window.count());
        assert_eq!(got.p50_us, window.quantile_us(0.5));
        assert_eq!(got.p99_us, window.quantile_us(0.99));
        let (a, b) = (got.mean_us.unwrap(), window.mean_us().unwrap());
        assert!((a - b).abs() < 1e-9 * b, "{a} {b}");
        // The next window holds only what came after.
        h.record_ns(7_000_000);
        let next = h.advance(&mut prev);
        assert_eq!(next.count, 1);
        assert_eq!(next.p50_us, next.p99_us);
        assert!((next.p50_us.unwrap() - 7_000.0).abs() < 7_000.0 * 0.13);
    }
}
