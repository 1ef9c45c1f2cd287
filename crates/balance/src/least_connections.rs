//! Weighted least connections: fewest `(in_flight + 1) / weight`, ties rotated round robin.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use crate::round_robin::{advance_cursor, CURSOR_CAS_RETRIES};
use crate::{fallback_pick, Backend, Picker, SlowStart, Tried, WeightTable};

/// Weighted least connections.
///
/// A backend's score is the load a new request would join, relative to its weight:
/// `(in_flight + 1) / weight` — Envoy's least-request rule with bias 1, the "shortest expected
/// delay" of queueing theory. With equal weights it orders backends exactly like `in_flight`
/// alone. With unequal weights the `+ 1` matters: plain `in_flight / weight` scores every idle
/// backend 0, so a backend with a tiny weight (a slow or failing one the control loop has
/// turned down) would still take a request whenever it is idle and the others are not.
///
/// Scores are `(in_flight + 1) × multiplier`, where the weight table's integer multiplier is
/// proportional to `1/weight` (exact for integer weights), so the scan is one u64 multiply and
/// compare per backend with no float division, and ratio ties are exact. The scan starts at a
/// shared cursor and keeps the strict minimum; it stops early at an idle backend of the largest
/// weight, since nothing can beat it.
///
/// Equal backends take turns because the cursor moves to just past the winner (a CAS, as in
/// [`crate::RoundRobin`]). A cursor that merely counted picks would start every third scan of
/// `[a, down, b]` on the down backend and hand that turn to `b`: twice `a`'s share.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LeastConnections {
    /// A picker whose first tie-break starts at backend 0.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Strict-minimum scan over `backends[range]` zipped with multipliers; `offset` is the index of
/// the first element. Returns true when an idle backend was found (the scan can stop).
///
/// `CHECK_TRIED` is a const parameter so the common first attempt (nothing tried) compiles to a
/// loop without the bitset test; `effective` maps a backend's multiplier to the one it is scored
/// with (the identity unless slow start is on, and then compiled away).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scan<const CHECK_TRIED: bool>(
    backends: &[Backend],
    mults: &[u64],
    offset: usize,
    tried: &Tried,
    floor: u64,
    effective: &impl Fn(&Backend, u64) -> u64,
    best: &mut usize,
    best_score: &mut u64,
) -> bool {
    for (i, (b, &m)) in backends.iter().zip(mults).enumerate() {
        if m == 0 || !b.stats.is_healthy() || (CHECK_TRIED && tried.contains(offset + i)) {
            continue;
        }
        let m = effective(b, m);
        // m <= 2^24 so this only saturates beyond 2^40 in flight; saturating (not plain) so a
        // corrupted counter can never panic the data plane in debug builds.
        let score = b.stats.in_flight().saturating_add(1).saturating_mul(m);
        if score < *best_score {
            *best_score = score;
            *best = offset + i;
            if score <= floor {
                return true;
            }
        }
    }
    false
}

#[inline(always)]
fn scan_all<const CHECK_TRIED: bool>(
    backends: &[Backend],
    mults: &[u64],
    start: usize,
    tried: &Tried,
    floor: u64,
    effective: &impl Fn(&Backend, u64) -> u64,
) -> Option<usize> {
    let (mut best, mut best_score) = (usize::MAX, u64::MAX);
    // Two halves instead of a wrapping index: no bounds checks and no modulo per step.
    if !scan::<CHECK_TRIED>(
        &backends[start..],
        &mults[start..],
        start,
        tried,
        floor,
        effective,
        &mut best,
        &mut best_score,
    ) {
        scan::<CHECK_TRIED>(
            &backends[..start],
            &mults[..start],
            0,
            tried,
            floor,
            effective,
            &mut best,
            &mut best_score,
        );
    }
    // best_score u64::MAX is unreachable for an eligible backend, so MAX means "none found".
    (best != usize::MAX).then_some(best)
}

impl Picker for LeastConnections {
    fn pick(
        &self,
        backends: &[Backend],
        weights: &WeightTable,
        tried: Tried,
        now_ns: u64,
    ) -> Option<usize> {
        // Backends beyond the table (a mismatch the pool never produces) count as weight 0.
        let n = backends.len().min(weights.len());
        if n == 0 {
            return fallback_pick(backends, weights, tried, self.next.fetch_add(1, Relaxed));
        }
        let (bs, mults) = (&backends[..n], &weights.lc_multipliers()[..n]);
        let floor = weights.lc_floor();
        let same = |_: &Backend, m: u64| m;
        let mut cursor = self.next.load(Relaxed);
        for attempt in 0..CURSOR_CAS_RETRIES {
            let start = cursor % n;
            let found = match weights.slow_start() {
                None if tried.is_empty() => {
                    scan_all::<false>(bs, mults, start, &tried, floor, &same)
                }
                None => scan_all::<true>(bs, mults, start, &tried, floor, &same),
                Some(s) => {
                    // Weight × f means multiplier / f. It only grows, so `floor` (an idle backend
                    // of the largest weight) still cannot be beaten.
                    let ramped = |b: &Backend, m: u64| {
                        m * u64::from(SlowStart::ONE) / u64::from(s.factor(&b.stats, now_ns))
                    };
                    scan_all::<true>(bs, mults, start, &tried, floor, &ramped)
                }
            };
            let Some(idx) = found else {
                // The cursor still counts these picks, so last-resort candidates take turns too.
                let ticket = self.next.fetch_add(1, Relaxed);
                return fallback_pick(backends, weights, tried, ticket);
            };
            let step = if idx >= start {
                idx - start
            } else {
                idx + n - start
            };
            match advance_cursor(&self.next, cursor, step, attempt) {
                None => return Some(idx),
                Some(actual) => cursor = actual,
            }
        }
        unreachable!("the last CAS attempt always returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::backends;
    use crate::{Algorithm, InFlightGuard, Pool};
    use std::sync::Arc;
    use std::time::Duration;

    fn pool(weights: &[u32]) -> Arc<Pool> {
        Arc::new(Pool::new(
            "lc",
            Algorithm::LeastConnections,
            backends(weights),
            Duration::from_secs(10),
            0,
        ))
    }

    fn leases(p: &Arc<Pool>, counts: &[usize]) -> Vec<InFlightGuard> {
        counts
            .iter()
            .enumerate()
            .flat_map(|(i, &c)| (0..c).map(move |_| i))
            .map(|i| p.lease(i))
            .collect()
    }

    fn picks(p: &Pool, lc: &LeastConnections, tried: Tried, count: usize) -> Vec<usize> {
        (0..count)
            .map(|_| lc.pick(p.backends(), &p.weights(), tried, 0).unwrap())
            .collect()
    }

    #[test]
    fn picks_lowest_in_flight() {
        let p = pool(&[1, 1, 1, 1]);
        let _g = leases(&p, &[3, 1, 0, 2]);
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 8),
            vec![2; 8]
        );
        let _more = leases(&p, &[0, 0, 2, 0]);
        // Now 3,1,2,2: backend 1 is the unique minimum.
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 8),
            vec![1; 8]
        );
    }

    #[test]
    fn idle_ties_rotate_exactly() {
        let p = pool(&[1, 1, 1]);
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 6),
            vec![0, 1, 2, 0, 1, 2]
        );
    }

    #[test]
    fn loaded_ties_rotate_among_equal_only() {
        let p = pool(&[1, 1, 1, 1]);
        let _g = leases(&p, &[2, 5, 2, 2]);
        // Each scan starts just past the last winner, so the three tied backends take turns.
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 8),
            vec![0, 2, 3, 0, 2, 3, 0, 2]
        );
    }

    #[test]
    fn a_down_backend_does_not_double_its_neighbours_share() {
        let p = pool(&[1, 1, 1]);
        p.backends()[1].stats.set_healthy(false);
        let lc = LeastConnections::new();
        let mut hits = [0; 3];
        for i in picks(&p, &lc, Tried::new(), 1001) {
            hits[i] += 1;
        }
        assert_eq!(hits, [501, 0, 500]);
        // Five backends, two runs of down ones: still an even split.
        let p = pool(&[1; 5]);
        for i in [1, 2, 4] {
            p.backends()[i].stats.set_healthy(false);
        }
        let mut hits = [0; 5];
        for i in picks(&p, &lc, Tried::new(), 1000) {
            hits[i] += 1;
        }
        assert_eq!(hits, [500, 0, 0, 500, 0]);
    }

    #[test]
    fn weight_zero_spares_take_turns_when_the_rest_is_down() {
        let p = pool(&[1, 0, 1, 0, 0]);
        p.backends()[0].stats.set_healthy(false);
        p.backends()[2].stats.set_healthy(false);
        let mut hits = [0; 5];
        for i in picks(&p, &LeastConnections::new(), Tried::new(), 300) {
            hits[i] += 1;
        }
        assert_eq!(hits, [0, 100, 0, 100, 100]);
    }

    #[test]
    fn weighted_ratio_tie_and_break() {
        // Weights 2:1 with in-flight 3 and 1: (3+1)/2 == (1+1)/1 — an exact tie, so they alternate.
        let p = pool(&[2, 1]);
        let g = leases(&p, &[3, 1]);
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 4),
            vec![0, 1, 0, 1]
        );
        // One more on the heavy backend: 5/2 > 2/1 → always the light one.
        let _extra = p.lease(0);
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 4),
            vec![1; 4]
        );
        drop(g);
        // Now (1+1)/2 vs (0+1)/1: a tie again.
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 2),
            vec![0, 1]
        );
    }

    #[test]
    fn an_idle_low_weight_backend_does_not_win_over_a_busy_heavy_one() {
        // Weight 1 (turned down) against 20: idle it costs 1, the heavy one with 18 in flight
        // costs 19/20 — still cheaper. Plain in_flight/weight would pick the idle light one.
        let p = pool(&[1, 20]);
        let _g = leases(&p, &[0, 18]);
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 3),
            vec![1; 3]
        );
        let _more = leases(&p, &[0, 2]);
        // 21/20 > 1/1: now the light backend is the better place.
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 2),
            vec![0; 2]
        );
    }

    #[test]
    fn weight_fills_proportionally() {
        // Lease-and-hold: the heavy backend ends with about 3x the connections: (a+1)/3 = b+1
        // with a+b = 40 gives a = 30.5; the rotating tie-break lands on 30 and 10.
        let p = pool(&[3, 1]);
        let lc = LeastConnections::new();
        let mut held = Vec::new();
        for _ in 0..40 {
            let i = lc
                .pick(p.backends(), &p.weights(), Tried::new(), 0)
                .unwrap();
            held.push(p.lease(i));
        }
        assert_eq!(p.backends()[0].stats.in_flight(), 30);
        assert_eq!(p.backends()[1].stats.in_flight(), 10);
    }

    #[test]
    fn tried_and_unhealthy_skipped() {
        let p = pool(&[1, 1, 1]);
        let _g = leases(&p, &[0, 4, 5]);
        let lc = LeastConnections::new();
        let mut tried = Tried::new();
        tried.insert(0);
        assert_eq!(picks(&p, &lc, tried, 3), vec![1; 3]);
        p.backends()[1].stats.set_healthy(false);
        assert_eq!(picks(&p, &lc, tried, 3), vec![2; 3]);
        tried.insert(2);
        // Everything healthy was tried: a tried one is allowed.
        let i = lc.pick(p.backends(), &p.weights(), tried, 0).unwrap();
        assert!(i == 0 || i == 2);
        p.backends()[0].stats.set_healthy(false);
        p.backends()[2].stats.set_healthy(false);
        assert_eq!(lc.pick(p.backends(), &p.weights(), tried, 0), None);
    }

    #[test]
    fn zero_weight_is_last_resort() {
        let p = pool(&[0, 1]);
        let _g = leases(&p, &[0, 9]);
        let lc = LeastConnections::new();
        assert_eq!(picks(&p, &lc, Tried::new(), 3), vec![1; 3]);
        p.backends()[1].stats.set_healthy(false);
        assert_eq!(picks(&p, &lc, Tried::new(), 3), vec![0; 3]);
    }

    #[test]
    fn fractional_weights() {
        let p = pool(&[1, 1]);
        p.set_weights(vec![0.5, 0.25]).unwrap();
        let _g = leases(&p, &[3, 1]);
        // (3+1)/0.5 == (1+1)/0.25: tie → rotation.
        assert_eq!(
            picks(&p, &LeastConnections::new(), Tried::new(), 4),
            vec![0, 1, 0, 1]
        );
    }

    #[test]
    fn slow_start_scores_a_ramping_backend_at_its_ramped_weight() {
        let ramp = |min| crate::SlowStart::new(Duration::from_secs(1), min);
        let p = pool(&[1, 1]);
        let _g = leases(&p, &[1, 0]);
        let b = p.backends();
        let t = WeightTable::clone(&p.weights());
        let lc = LeastConnections::new();
        let pick = |t: &WeightTable, now| lc.pick(b, t, Tried::new(), now).unwrap();
        // Without a ramp the idle backend wins; at half weight (0 + 1) / 0.5 ties (1 + 1) / 1.
        assert_eq!(pick(&t, 0), 1);
        b[1].stats.start_ramp(0);
        let half = t.clone().with_slow_start(ramp(50));
        let both: Vec<usize> = (0..4).map(|_| pick(&half, 1)).collect();
        assert_eq!(both.iter().filter(|&&i| i == 1).count(), 2, "{both:?}");
        // At a tenth it loses; after the window it wins again.
        let tenth = t.with_slow_start(ramp(10));
        assert_eq!(pick(&tenth, 1), 0);
        assert_eq!(pick(&tenth, 2_000_000_000), 1);
    }
}
