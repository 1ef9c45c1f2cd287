//! Slow start: a backend that joins a pool or comes back healthy ramps its share of traffic up
//! over a window, as Envoy's `slow_start_config` and HAProxy's `slowstart` do.
//!
//! The ramp is linear from `min_percent` to 100 % of the backend's weight. It is applied per
//! pick from one relaxed load of the backend's ramp start time, so no task has to rewrite weight
//! tables while a ramp runs and the control loop's weights stay what the model chose: the ramp
//! caps them on the way into the picker.
//!
//! How each picker applies the factor `f` (in [`SlowStart::ONE`] units):
//! - weighted round robin: a sequence slot of a ramping backend is taken with probability `f`,
//!   otherwise the next slot is, so the backend's share follows `f × weight`;
//! - least connections: the backend's multiplier (∝ 1/weight) is divided by `f`, i.e. its
//!   score is computed with weight `f × weight`;
//! - P2C: a ramping backend stays a candidate of a draw with probability `f` (its Peak-EWMA
//!   cost is 0 while it is unobserved, so a weight on the cost alone would not hold it back);
//! - round robin ignores weights, so it ignores the ramp too.

use std::time::Duration;

use crate::BackendStats;

/// A pool's slow-start setting: how long a ramp lasts and the share it starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowStart {
    window_ns: u64,
    min_factor: u32,
}

impl SlowStart {
    /// A factor of one: the full weight.
    pub const ONE: u32 = 1024;

    /// A ramp over `window` starting at `min_percent` (clamped to 1..=100) of the weight;
    /// `None` for an empty window (slow start off).
    pub fn new(window: Duration, min_percent: u32) -> Option<Self> {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        (window_ns > 0).then(|| SlowStart {
            window_ns,
            min_factor: (min_percent.clamp(1, 100) * Self::ONE).div_ceil(100),
        })
    }

    /// The ramp's length.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    /// The share of its weight a backend whose ramp began at `ramp_start_ns` gets at `now_ns`,
    /// in [`SlowStart::ONE`] units (`ONE` when it has no ramp or the ramp is over).
    #[inline]
    pub fn factor_at(&self, ramp_start_ns: Option<u64>, now_ns: u64) -> u32 {
        let Some(start) = ramp_start_ns else {
            return Self::ONE;
        };
        let elapsed = now_ns.saturating_sub(start);
        if elapsed >= self.window_ns {
            return Self::ONE;
        }
        let rise = u64::from(Self::ONE - self.min_factor) * elapsed / self.window_ns;
        self.min_factor + rise as u32
    }

    /// [`SlowStart::factor_at`] for a backend's own ramp.
    #[inline]
    pub fn factor(&self, stats: &BackendStats, now_ns: u64) -> u32 {
        self.factor_at(stats.ramp_start_ns(), now_ns)
    }

    /// Whether a pick that landed on a backend with factor `factor` keeps it, given 64 random
    /// bits: true with probability `factor / ONE`.
    #[inline]
    pub(crate) fn admits(factor: u32, random: u64) -> bool {
        factor >= Self::ONE || ((random >> 54) as u32) < factor
    }
}

/// splitmix64's finaliser: 64 well-mixed bits from a counter, for admission draws.
#[inline]
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn off_for_an_empty_window() {
        assert_eq!(SlowStart::new(Duration::ZERO, 10), None);
        let s = SlowStart::new(Duration::from_millis(1000), 10).unwrap();
        assert_eq!(s.window(), Duration::from_secs(1));
    }

    #[test]
    fn linear_ramp_from_the_minimum_to_one() {
        let s = SlowStart::new(Duration::from_millis(1000), 10).unwrap();
        let start = Some(5 * MS);
        assert_eq!(s.factor_at(None, 0), SlowStart::ONE);
        assert_eq!(s.factor_at(start, 5 * MS), 103); // ceil(10 % of 1024)
        assert_eq!(s.factor_at(start, 505 * MS), 103 + (1024 - 103) / 2);
        assert_eq!(s.factor_at(start, 1004 * MS), 1023);
        assert_eq!(s.factor_at(start, 1005 * MS), SlowStart::ONE);
        assert_eq!(s.factor_at(start, u64::MAX), SlowStart::ONE);
        // A clock read before the ramp began (another thread's) counts as its start.
        assert_eq!(s.factor_at(start, 0), 103);
        // 100 % means no ramp at all; the minimum is at least 1 %.
        let full = SlowStart::new(Duration::from_millis(1), 100).unwrap();
        assert_eq!(full.factor_at(Some(1), 1), SlowStart::ONE);
        let tiny = SlowStart::new(Duration::from_millis(1), 0).unwrap();
        assert_eq!(tiny.factor_at(Some(1), 1), 11);
    }

    #[test]
    fn ramp_follows_the_backend_stats() {
        let s = SlowStart::new(Duration::from_millis(100), 50).unwrap();
        let stats = BackendStats::new();
        assert_eq!(s.factor(&stats, 7), SlowStart::ONE);
        stats.start_ramp(0);
        assert_eq!(stats.ramp_start_ns(), Some(1));
        assert_eq!(s.factor(&stats, 1), 512);
        assert_eq!(s.factor(&stats, 200 * MS), SlowStart::ONE);
        // Recovery starts a ramp only for a backend that was down.
        let stats = BackendStats::new();
        assert!(!stats.recover(9));
        assert_eq!(stats.ramp_start_ns(), None);
        stats.set_healthy(false);
        assert!(stats.recover(10 * MS));
        assert!(stats.is_healthy());
        assert_eq!(s.factor(&stats, 10 * MS), 512);
    }

    #[test]
    fn admission_probability_matches_the_factor() {
        for factor in [1, 103, 512, 1000] {
            let admitted = (0..100_000u64)
                .filter(|&i| SlowStart::admits(factor, mix(i)))
                .count();
            let expected = 100_000.0 * f64::from(factor) / 1024.0;
            assert!(
                (admitted as f64 - expected).abs() < 0.05 * expected + 50.0,
                "{factor}: {admitted} vs {expected}"
            );
        }
        assert!((0..1000).all(|i| SlowStart::admits(SlowStart::ONE, mix(i))));
    }
}
