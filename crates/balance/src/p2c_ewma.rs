//! Power of two random choices over Peak-EWMA cost (`ewma × (in_flight + 1) / weight`).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::slow_start::mix;
use crate::{fallback_pick, Backend, Picker, SlowStart, Tried, WeightTable};

/// Random draws (two indices per 64-bit draw) before falling back to a scan; with at least half
/// the backends eligible the chance of needing the scan is below 1/256.
const MAX_DRAWS: usize = 4;
/// splitmix64 increment (the 64-bit golden ratio).
pub(crate) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// P2C over Peak-EWMA: draw two distinct eligible backends at random and take the cheaper.
///
/// `cost = ewma_ns(now) × (in_flight + 1) / weight`; a never-observed backend costs 0 and is
/// therefore explored. The RNG is splitmix64 over a per-picker atomic Weyl sequence: one
/// `fetch_add` per pick, so concurrent pickers never share or lose a draw, and a seeded picker is
/// fully deterministic.
#[derive(Debug)]
pub struct P2cEwma {
    state: AtomicU64,
}

impl Default for P2cEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl P2cEwma {
    /// A picker seeded from std's per-process random keys (no extra dependency).
    pub fn new() -> Self {
        Self::with_seed(RandomState::new().hash_one(0x5EED_u64))
    }

    /// A deterministic picker; the same seed and inputs give the same picks.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// Next 64 random bits (splitmix64: Weyl step + xorshift-multiply finaliser).
    #[inline]
    fn next_u64(&self) -> u64 {
        mix(self.state.fetch_add(GOLDEN, Relaxed))
    }
}

/// Map 32 random bits uniformly-enough onto `0..n` (Lemire's multiply-shift, no division).
#[inline]
fn reduce(r: u32, n: usize) -> usize {
    ((u64::from(r) * n as u64) >> 32) as usize
}

/// "No candidate" in [`draw_two`]'s answer.
pub(crate) const NONE: usize = usize::MAX;

/// The two random choices: up to [`MAX_DRAWS`] draws of 64 bits from `next_u64`, each half
/// mapped to a backend by `index` (uniform for P2C, weighted for least connections) and kept
/// when `eligible(index, half)` and distinct from the first. Returns the first and second
/// candidates ([`NONE`] when not found) and the last draw, for the caller's fallback.
#[inline(always)]
pub(crate) fn draw_two(
    mut next_u64: impl FnMut() -> u64,
    index: impl Fn(u32) -> usize,
    eligible: impl Fn(usize, u64) -> bool,
) -> (usize, usize, u64) {
    let (mut a, mut r) = (NONE, 0);
    for _ in 0..MAX_DRAWS {
        r = next_u64();
        for half in [r as u32, (r >> 32) as u32] {
            let i = index(half);
            if i != a && eligible(i, u64::from(half)) {
                if a == NONE {
                    a = i;
                } else {
                    return (a, i, r);
                }
            }
        }
    }
    (a, NONE, r)
}

#[inline]
fn cost(b: &Backend, inverse_weight: f64, now_ns: u64) -> f64 {
    b.stats.ewma_ns(now_ns) * (b.stats.in_flight() + 1) as f64 * inverse_weight
}

impl Picker for P2cEwma {
    fn pick(
        &self,
        backends: &[Backend],
        weights: &WeightTable,
        tried: Tried,
        now_ns: u64,
    ) -> Option<usize> {
        let n = backends.len().min(weights.len());
        let inv = &weights.inverse()[..n];
        let ramp = weights.slow_start();
        // `seed` draws whether a ramping backend stays a candidate (see `SlowStart`); it is
        // only mixed when a ramp is on.
        let eligible = |i: usize, seed: u64| {
            inv[i] > 0.0
                && !tried.contains(i)
                && backends[i].stats.is_healthy()
                && ramp.is_none_or(|s| {
                    SlowStart::admits(s.factor(&backends[i].stats, now_ns), mix(seed))
                })
        };
        let (mut a, mut b, r) = if n > 2 {
            draw_two(|| self.next_u64(), |half| reduce(half, n), eligible)
        } else {
            (NONE, NONE, self.next_u64())
        };
        if b == NONE && n > 0 {
            // Few eligible (or a tiny pool): count what exists and take candidates by a random
            // rank among them. The first one after a random start would favour a backend that
            // follows a run of ineligible ones.
            let draw = mix(r);
            let others =
                |skip: usize| (0..n).filter(move |&i| i != skip && eligible(i, r ^ i as u64));
            let count = others(a).count();
            if count > 0 {
                let x = others(a).nth(reduce(draw as u32, count));
                if a == NONE {
                    a = x.unwrap_or(NONE);
                    if count > 1 {
                        let rank = reduce((draw >> 32) as u32, count - 1);
                        b = others(a).nth(rank).unwrap_or(NONE);
                    }
                } else {
                    b = x.unwrap_or(NONE);
                }
            }
        }
        if a == NONE {
            return fallback_pick(backends, weights, tried, r as usize);
        }
        if b == NONE {
            return Some(a);
        }
        // Ties (e.g. two unobserved backends at cost 0) go to the first draw, itself random.
        if cost(&backends[b], inv[b], now_ns) < cost(&backends[a], inv[a], now_ns) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{backends, histogram, table};
    use crate::Outcome;

    const DECAY: f64 = 10e9;
    const MS: u64 = 1_000_000;

    fn warm(b: &[Backend], latencies_ms: &[u64], now: u64) {
        for (backend, &l) in b.iter().zip(latencies_ms) {
            backend
                .stats
                .record(l * MS, Outcome::Success, now, DECAY, 0);
        }
    }

    #[test]
    fn slow_backend_gets_few_picks() {
        let b = backends(&[1; 5]);
        let t = table(&b);
        let p = P2cEwma::with_seed(42);
        let lat = [1, 1, 1, 1, 10];
        warm(&b, &lat, 0);
        let mut hits = [0usize; 5];
        let mut now = 0;
        for k in 0..1000u64 {
            now += MS;
            let i = p.pick(&b, &t, Tried::new(), now).unwrap();
            hits[i] += 1;
            // Feed the sample back as the proxy would, with a little deterministic jitter.
            let l = lat[i] * MS + (k % 7) * 10_000;
            b[i].stats.record(l, Outcome::Success, now, DECAY, 0);
        }
        assert_eq!(hits.iter().sum::<usize>(), 1000);
        assert!(hits[4] < 150, "slow backend picked {} times", hits[4]);
        for &h in &hits[..4] {
            assert!(h > 150, "{hits:?}");
        }
    }

    #[test]
    fn in_flight_and_weight_enter_cost() {
        let b = backends(&[1, 1]);
        let t = table(&b);
        warm(&b, &[1, 1], 0);
        let p = P2cEwma::with_seed(7);
        // Same latency; backend 0 has more outstanding work → backend 1 always.
        b[0].stats.acquire_for_test(3);
        assert_eq!(histogram(&p, &b, &t, 20), vec![0, 20]);
        // Weight 8 on backend 0: 1ms*4/8 < 1ms*1/1 → backend 0 always.
        let t = WeightTable::new(vec![8.0, 1.0]);
        assert_eq!(histogram(&p, &b, &t, 20), vec![20, 0]);
    }

    #[test]
    fn unobserved_backend_is_explored() {
        let b = backends(&[1, 1]);
        let t = table(&b);
        b[0].stats.record(5 * MS, Outcome::Success, 0, DECAY, 0);
        let p = P2cEwma::with_seed(1);
        assert_eq!(p.pick(&b, &t, Tried::new(), 0), Some(1));
    }

    #[test]
    fn unobserved_backends_share_evenly() {
        let b = backends(&[1; 4]);
        let t = table(&b);
        let h = histogram(&P2cEwma::with_seed(3), &b, &t, 4000);
        for &c in &h {
            assert!((850..=1150).contains(&c), "{h:?}");
        }
    }

    #[test]
    fn few_eligible_share_evenly_past_down_ones() {
        // Two live backends among ten: draws rarely find both, so the scan path decides most
        // picks. Unobserved, they tie, and neither may be favoured for where it sits.
        let b = backends(&[1; 10]);
        let t = table(&b);
        for d in &b[2..] {
            d.stats.set_healthy(false);
        }
        let h = histogram(&P2cEwma::with_seed(9), &b, &t, 4000);
        assert!((1850..=2150).contains(&h[0]), "{h:?}");
        assert_eq!(h[0] + h[1], 4000, "{h:?}");
    }

    #[test]
    fn deterministic_given_seed() {
        let b = backends(&[1; 10]);
        let t = table(&b);
        let run = |seed| {
            let p = P2cEwma::with_seed(seed);
            (0..200)
                .map(|_| p.pick(&b, &t, Tried::new(), 0).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(99), run(99));
        assert_ne!(run(99), run(100));
    }

    #[test]
    fn unhealthy_tried_and_zero_weight() {
        let b = backends(&[1, 1, 1, 0, 1]);
        let t = table(&b);
        let p = P2cEwma::with_seed(5);
        b[0].stats.set_healthy(false);
        let mut tried = Tried::new();
        tried.insert(1);
        for _ in 0..200 {
            let i = p.pick(&b, &t, tried, 0).unwrap();
            assert!(i == 2 || i == 4, "{i}");
        }
        // Only one eligible left: it is taken without a partner.
        b[4].stats.set_healthy(false);
        assert_eq!(p.pick(&b, &t, tried, 0), Some(2));
        // Nothing untried with weight: untried weight-0 beats the tried one.
        b[2].stats.set_healthy(false);
        assert_eq!(p.pick(&b, &t, tried, 0), Some(3));
        b[3].stats.set_healthy(false);
        assert_eq!(p.pick(&b, &t, tried, 0), Some(1));
        b[1].stats.set_healthy(false);
        assert_eq!(p.pick(&b, &t, tried, 0), None);
    }

    #[test]
    fn single_and_empty_pools() {
        let p = P2cEwma::with_seed(0);
        let b = backends(&[1]);
        assert_eq!(p.pick(&b, &table(&b), Tried::new(), 0), Some(0));
        assert_eq!(
            p.pick(&[], &WeightTable::new(vec![]), Tried::new(), 0),
            None
        );
    }

    #[test]
    fn decayed_slow_backend_is_retried_eventually() {
        let b = backends(&[1, 1]);
        let t = table(&b);
        warm(&b, &[100, 1], 0);
        let p = P2cEwma::with_seed(11);
        assert_eq!(p.pick(&b, &t, Tried::new(), MS), Some(1));
        // Backend 1 keeps being sampled at 1 ms; backend 0's 100 ms decays below it after
        // ln(100) ≈ 4.6 decay times.
        let later = (DECAY * 5.0) as u64;
        b[1].stats.record(MS, Outcome::Success, later, DECAY, 0);
        assert_eq!(p.pick(&b, &t, Tried::new(), later), Some(0));
    }

    #[test]
    fn slow_start_holds_back_a_ramping_backend() {
        let b = backends(&[1, 1, 1, 1]);
        let ramp = crate::SlowStart::new(std::time::Duration::from_secs(1), 10);
        let t = table(&b).with_slow_start(ramp);
        b[3].stats.start_ramp(0);
        let p = P2cEwma::with_seed(7);
        // Unobserved backends cost 0, so without the ramp backend 3 would take about a quarter.
        let ramping = histogram(&p, &b, &t, 10_000)[3];
        assert!((100..=800).contains(&ramping), "{ramping}");
        let mut after = 0;
        for _ in 0..10_000 {
            after += usize::from(p.pick(&b, &t, Tried::new(), 2_000_000_000) == Some(3));
        }
        assert!((2_000..=3_000).contains(&after), "{after}");
    }
}
