//! Recent latency per backend for `/api/pools`: p50 and p99 over roughly the last ten seconds,
//! from snapshots of each backend's latency histogram kept between requests.
//!
//! The histograms only ever count up, so a window is the difference between now and a
//! snapshot taken about [`WINDOW`] ago. Snapshots are taken when the API is read (at most one
//! per [`STEP`]); after a quiet spell the only baseline left may be older, and the answer says
//! how long its window really is.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fulcrum_balance::histogram::{HistogramSnapshot, LatencyHistogram};

/// The window the figures aim at.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Snapshots closer together than this are not kept.
const STEP: Duration = Duration::from_secs(2);

/// Percentiles over a recent window, milliseconds; `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Recent {
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Samples in the window.
    pub count: u64,
    /// How long the window is, seconds (`None` on the first read).
    pub window_s: Option<f64>,
}

/// One backend's snapshots, oldest first.
type Ring = VecDeque<(Instant, HistogramSnapshot)>;

/// Snapshots per `(pool, backend)`.
#[derive(Debug, Default)]
pub(crate) struct LatencyWindows {
    rings: Mutex<HashMap<(String, String), Ring>>,
}

impl LatencyWindows {
    /// The recent figures of one backend, and a snapshot kept for later reads.
    pub(crate) fn recent(
        &self,
        pool: &str,
        backend: &str,
        histogram: &LatencyHistogram,
        now: Instant,
    ) -> Recent {
        let current = histogram.snapshot();
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let ring = rings
            .entry((pool.to_owned(), backend.to_owned()))
            .or_default();
        let recent = window(ring, &current, now);
        if ring
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= STEP)
        {
            ring.push_back((now, current));
        }
        // The front is redundant once the next snapshot is old enough to be the baseline.
        while ring.len() > 1 && now.saturating_duration_since(ring[1].0) >= WINDOW {
            ring.pop_front();
        }
        recent
    }

    /// Forget every backend not in `keep` (removed by a reload).
    pub(crate) fn retain(&self, keep: &[(String, String)]) {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.retain(|k, _| keep.contains(k));
    }
}

/// The figures since the newest snapshot at least [`WINDOW`] old (or the oldest one).
fn window(ring: &Ring, current: &HistogramSnapshot, now: Instant) -> Recent {
    let baseline = ring
        .iter()
        .rev()
        .find(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
        .or_else(|| ring.front());
    let Some((t, base)) = baseline else {
        return Recent::default();
    };
    let since = current.since(base);
    Recent {
        p50_ms: since.quantile_us(0.5).map(|us| us / 1000.0),
        p99_ms: since.quantile_us(0.99).map(|us| us / 1000.0),
        count: since.count(),
        window_s: Some(now.saturating_duration_since(*t).as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_only_recent_samples() {
        let h = LatencyHistogram::new();
        let w = LatencyWindows::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            h.record_ns(100_000_000); // 100 ms, before the first read
        }
        assert_eq!(w.recent("p", "b", &h, t0), Recent::default());
        for _ in 0..50 {
            h.record_ns(1_000_000); // 1 ms
        }
        let r = w.recent("p", "b", &h, t0 + Duration::from_secs(3));
        assert_eq!(r.count, 50);
        assert!(r.p99_ms.unwrap() < 2.0, "{r:?}");
        assert_eq!(r.window_s, Some(3.0));
        // Reads every 2 s: the window settles at about WINDOW.
        for i in 1..=10 {
            w.recent("p", "b", &h, t0 + Duration::from_secs(3 + 2 * i));
        }
        let r = w.recent("p", "b", &h, t0 + Duration::from_secs(24));
        assert_eq!(r.count, 0);
        let s = r.window_s.unwrap();
        assert!((10.0..=12.0).contains(&s), "{s}");
        let rings = w.rings.lock().unwrap();
        assert!(rings[&("p".into(), "b".into())].len() <= 7);
    }

    #[test]
    fn removed_backends_are_forgotten() {
        let h = LatencyHistogram::new();
        let w = LatencyWindows::default();
        w.recent("p", "a", &h, Instant::now());
        w.recent("p", "b", &h, Instant::now());
        w.retain(&[("p".into(), "b".into())]);
        assert_eq!(w.rings.lock().unwrap().len(), 1);
    }
}
