//! Weighted least connections: fewest `(in_flight + 1) / weight`; an exact scan with ties
//! rotated round robin on small pools, the better of two weighted random choices on large ones.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use crate::p2c_ewma::{draw_two, GOLDEN, NONE};
use crate::round_robin::{advance_cursor, CURSOR_CAS_RETRIES};
use crate::slow_start::mix;
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
/// # Small pools: the exact minimum
///
/// Up to [`LeastConnections::EXACT_MAX`] backends every pick scans them all. Scores are
/// `(in_flight + 1) × multiplier`, where the weight table's integer multiplier is proportional
/// to `1/weight` (exact for integer weights), so the scan is one u64 multiply and compare per
/// backend with no float division, and ratio ties are exact. The scan starts at a shared cursor
/// and keeps the strict minimum; it stops early at an idle backend of the largest weight, since
/// nothing can beat it.
///
/// Equal backends take turns because the cursor moves to just past the winner (a CAS, as in
/// [`crate::RoundRobin`]). A cursor that merely counted picks would start every third scan of
/// `[a, down, b]` on the down backend and hand that turn to `b`: twice `a`'s share.
///
/// A retry (something already tried) turns its own cursor. A backend that is dead but not yet
/// ejected fails fast, so it stays idle and wins every first attempt; the shared cursor then
/// always stands just past it, and every retry's tie would go to its right-hand neighbour:
/// twice the share of the other live backend, until the dead one is ejected.
///
/// # Large pools: the better of two weighted random choices
///
/// The scan costs about 1 ns per backend (110 ns at 100), so above `EXACT_MAX` a pick draws two
/// distinct eligible backends (healthy, untried, weight above zero, and, while one ramps up in
/// slow start, admitted with probability equal to its ramp factor, as P2C does) and takes the
/// one with the lower score, the first drawn on a tie. Candidates are drawn with probability
/// proportional to weight, from an alias table the weight table builds off the data path, by
/// the same draw loop as [`crate::P2cEwma`]. Drawing in proportion to weight is what keeps
/// weights honoured: when the scores are level the comparison is a coin toss and picks follow
/// the draw, i.e. the weights; when a backend falls behind its share its score drops and it wins
/// more of its comparisons. Drawing uniformly instead would cap any backend at the ~2/n of picks
/// in which it is drawn at all, so one of weight 10 among 99 of weight 1 would get a fifth of
/// its share. With slow start a ramping backend is drawn and scored at `factor × weight` alike.
/// When the draws do not find two candidates (most of the pool down, tried or weighted zero) the
/// pick falls back to the exact scan, so the fallback rules are the small pools' ones.
///
/// Why this is safe for the tail: with `n` servers and Poisson arrivals at load `λ < 1`, the
/// fraction of servers with at least `i` requests decays like `λ^(2^i − 1)` when each request
/// joins the shorter of two random queues, against `λ^i` for one random queue: doubly
/// exponential, within a constant of joining the shortest queue of all (M. Mitzenmacher, "The
/// Power of Two Choices in Randomized Load Balancing", IEEE TPDS 12(10), 2001; Azar, Broder,
/// Karlin and Upfal, "Balanced Allocations", SIAM J. Comput. 29(1), 1999: maximum load
/// `ln ln n / ln 2 + O(1)`). Envoy's least-request balancer samples two candidates at every pool
/// size for that reason. Sampling also avoids the herd the exact scan invites: concurrent
/// pickers that read the same counters all pick the same minimum.
///
/// Where the threshold sits is measured (`benches/results/pickers.md`, the `exact_max` sweep):
/// the exact scan is kept up to 16 backends (see the table for the crossover).
///
/// The draws come from splitmix64 over the picker's counter (one `fetch_add` per 64-bit draw),
/// so the picks of a picker are a deterministic function of the pool's state and its pick count
/// (the simulator's runs stay reproducible) and no generator is shared between pools.
#[derive(Debug)]
pub struct LeastConnections {
    next: AtomicUsize,
    /// The tie-break cursor of retries.
    retry_next: AtomicUsize,
    exact_max: usize,
}

impl Default for LeastConnections {
    fn default() -> Self {
        Self::with_exact_max(Self::EXACT_MAX)
    }
}

impl LeastConnections {
    /// Largest pool [`LeastConnections::new`] scans exactly; larger pools are sampled.
    pub const EXACT_MAX: usize = 16;

    /// A picker whose first tie-break starts at backend 0 and which samples pools larger than
    /// [`LeastConnections::EXACT_MAX`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A picker that scans pools of up to `exact_max` backends exactly and samples larger ones;
    /// `usize::MAX` always scans (exact order at any size, at about 1 ns per backend).
    pub fn with_exact_max(exact_max: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            retry_next: AtomicUsize::new(0),
            exact_max,
        }
    }

    /// Next 64 random bits: splitmix64's output at the picker's counter.
    #[inline]
    fn next_u64(&self) -> u64 {
        mix((self.next.fetch_add(1, Relaxed) as u64).wrapping_mul(GOLDEN))
    }

    /// The lower-scored of two weighted random eligible backends among the first `n`; `None`
    /// when the draws did not find two (the caller then scans).
    #[inline]
    fn sample(
        &self,
        backends: &[Backend],
        weights: &WeightTable,
        n: usize,
        tried: &Tried,
        now_ns: u64,
    ) -> Option<usize> {
        let (bs, mults) = (&backends[..n], &weights.lc_multipliers()[..n]);
        let ramp = weights.slow_start();
        let eligible = |i: usize, seed: u64| {
            i < n
                && mults[i] > 0
                && bs[i].stats.is_healthy()
                && !tried.contains(i)
                && ramp.is_none_or(|s| SlowStart::admits(s.factor(&bs[i].stats, now_ns), mix(seed)))
        };
        let index = |half: u32| weights.weighted_index(half).unwrap_or(NONE);
        let (a, b, _) = draw_two(|| self.next_u64(), index, eligible);
        if b == NONE {
            return None;
        }
        let score = |i: usize| {
            let m = match ramp {
                None => mults[i],
                Some(s) => {
                    mults[i] * u64::from(SlowStart::ONE) / u64::from(s.factor(&bs[i].stats, now_ns))
                }
            };
            bs[i].stats.in_flight().saturating_add(1).saturating_mul(m)
        };
        Some(if score(b) < score(a) { b } else { a })
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
        if n > self.exact_max {
            if let Some(idx) = self.sample(backends, weights, n, &tried, now_ns) {
                return Some(idx);
            }
        }
        let (bs, mults) = (&backends[..n], &weights.lc_multipliers()[..n]);
        let floor = weights.lc_floor();
        let same = |_: &Backend, m: u64| m;
        let rotation = if tried.is_empty() {
            &self.next
        } else {
            &self.retry_next
        };
        let mut cursor = rotation.load(Relaxed);
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
            match advance_cursor(rotation, cursor, step, attempt) {
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

    /// A pool large enough to be sampled by `LeastConnections::new()`.
    const LARGE: usize = 100;

    fn large_pool(weights: impl Fn(usize) -> u32) -> Arc<Pool> {
        const { assert!(LARGE > LeastConnections::EXACT_MAX) };
        pool(&(0..LARGE).map(weights).collect::<Vec<_>>())
    }

    /// Picks per backend over `count` picks while a window of the last `window` leases is
    /// held (the oldest is released at each pick): a steady state with requests in flight.
    fn steady_hits(p: &Arc<Pool>, lc: &LeastConnections, window: usize, count: usize) -> Vec<u64> {
        let mut held = std::collections::VecDeque::new();
        let mut hits = vec![0u64; p.backends().len()];
        for k in 0..count {
            let i = lc
                .pick(p.backends(), &p.weights(), Tried::new(), k as u64)
                .unwrap();
            hits[i] += 1;
            held.push_back(p.lease(i));
            if held.len() > window {
                held.pop_front();
            }
        }
        hits
    }

    #[test]
    fn large_pools_spread_over_healthy_backends_and_starve_none() {
        let p = large_pool(|_| 1);
        for i in (0..LARGE).step_by(10) {
            p.backends()[i].stats.set_healthy(false);
        }
        let hits = steady_hits(&p, &LeastConnections::new(), 300, 45_000);
        // 90 healthy backends, 500 picks each on average.
        for (i, &h) in hits.iter().enumerate() {
            if i % 10 == 0 {
                assert_eq!(h, 0, "down backend {i} picked");
            } else {
                assert!((400..=600).contains(&h), "backend {i}: {h} of 45000");
            }
        }
    }

    #[test]
    fn large_pools_balance_in_flight_close_to_the_exact_minimum() {
        // Lease and hold 1000 picks on 100 backends: the exact scan ends with 10 each; two
        // choices stay within a few (one random choice would leave some near 3, others near 20).
        let p = large_pool(|_| 1);
        let lc = LeastConnections::new();
        let _held: Vec<_> = (0..1000)
            .map(|_| {
                p.lease(
                    lc.pick(p.backends(), &p.weights(), Tried::new(), 0)
                        .unwrap(),
                )
            })
            .collect();
        let load: Vec<u64> = p.backends().iter().map(|b| b.stats.in_flight()).collect();
        let (min, max) = (load.iter().min().unwrap(), load.iter().max().unwrap());
        assert!(*min >= 7 && *max <= 13, "{load:?}");
    }

    #[test]
    fn a_much_more_loaded_backend_is_rarely_picked() {
        let p = large_pool(|_| 1);
        let mut counts: Vec<usize> = (0..LARGE).map(|i| 1 + i % 3).collect();
        counts[7] = 30;
        let _g = leases(&p, &counts);
        let lc = LeastConnections::new();
        let hits = picks(&p, &lc, Tried::new(), 10_000);
        assert!(!hits.contains(&7), "the loaded backend won a comparison");
        // The idle-est third (1 in flight) takes the most: each wins whenever drawn.
        let ones = hits.iter().filter(|&&i| i % 3 == 0).count();
        assert!(ones > 5_000, "{ones}");
        // Steady state with a stuck backend: its leases never end, so it stops being picked
        // once it is a few above the others.
        let p = large_pool(|_| 1);
        let mut held = std::collections::VecDeque::new();
        let mut stuck = Vec::new();
        let mut stuck_picks = 0;
        for k in 0..20_000u64 {
            let i = lc
                .pick(p.backends(), &p.weights(), Tried::new(), k)
                .unwrap();
            if i == 7 {
                stuck_picks += 1;
                stuck.push(p.lease(i));
            } else {
                held.push_back(p.lease(i));
                if held.len() > 300 {
                    held.pop_front();
                }
            }
        }
        assert!(
            stuck_picks <= 12,
            "stuck backend took {stuck_picks} of 20000"
        );
    }

    #[test]
    fn large_pools_honour_weights_like_the_exact_scan() {
        // Ten backends of weight 4 among ninety of weight 1, 2000 requests in flight: equal
        // scores (x + 1) / 4 = y + 1 mean 10 (4y + 3) + 90 y = 2000, so the heavy ten hold and
        // take 31.8 % (the `+ 1` puts them a little above their 40/130 of the weight; the exact
        // scan lands a little below, as in-flight counts are whole). Sampling must land there
        // too, and starve no one.
        let heavy_every_tenth = |i: usize| if i % 10 == 0 { 4 } else { 1 };
        let share_of =
            |weights: &dyn Fn(usize) -> u32, lc: LeastConnections, sel: &dyn Fn(usize) -> bool| {
                let hits = steady_hits(&large_pool(weights), &lc, 2_000, 100_000);
                assert!(hits.iter().all(|&h| h > 0), "{hits:?}");
                let part: u64 = hits
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| sel(*i))
                    .map(|(_, h)| h)
                    .sum();
                (part as f64 / 100_000.0, hits)
            };
        let heavy = |i: usize| i % 10 == 0;
        let fluid = 10.0 * (4.0 * (2000.0 - 30.0) / 130.0 + 3.0) / 2000.0;
        let (exact, _) = share_of(
            &heavy_every_tenth,
            LeastConnections::with_exact_max(usize::MAX),
            &heavy,
        );
        let (sampled, hits) = share_of(&heavy_every_tenth, LeastConnections::new(), &heavy);
        assert!((exact - fluid).abs() < 0.01, "exact {exact}");
        assert!(
            (sampled - fluid).abs() < 0.01,
            "sampled {sampled}, exact {exact}"
        );
        for (i, &h) in hits.iter().enumerate() {
            let expected = if heavy(i) { 3_180.0 } else { 757.0 };
            assert!((h as f64 - expected).abs() < 0.2 * expected, "{i}: {h}");
        }
        // One backend of weight 10 among 99 of weight 1: 10 y + 9 + 99 y = 2000 gives it 9.6 %.
        // Uniform draws would cap it near the 2 % of picks in which it is drawn at all.
        let one_heavy = |i: usize| if i == 0 { 10 } else { 1 };
        let first = |i: usize| i == 0;
        let fluid = (10.0 * (2000.0 - 9.0) / 109.0 + 9.0) / 2000.0;
        let (exact, _) = share_of(
            &one_heavy,
            LeastConnections::with_exact_max(usize::MAX),
            &first,
        );
        let (sampled, _) = share_of(&one_heavy, LeastConnections::new(), &first);
        assert!((exact - fluid).abs() < 0.01, "exact {exact}");
        assert!(
            (sampled - fluid).abs() < 0.01,
            "sampled {sampled}, exact {exact}"
        );
        // Lease and hold: in flight settles in proportion, (a + 1) / 4 ≈ b + 1.
        let p = large_pool(heavy_every_tenth);
        let lc = LeastConnections::new();
        let _held: Vec<_> = (0..1300)
            .map(|_| {
                p.lease(
                    lc.pick(p.backends(), &p.weights(), Tried::new(), 0)
                        .unwrap(),
                )
            })
            .collect();
        let avg = |h: bool| {
            let it = p
                .backends()
                .iter()
                .enumerate()
                .filter(|(i, _)| heavy(*i) == h);
            let v: Vec<u64> = it.map(|(_, b)| b.stats.in_flight()).collect();
            v.iter().sum::<u64>() as f64 / v.len() as f64
        };
        let ratio = (avg(true) + 1.0) / (avg(false) + 1.0);
        assert!((ratio - 4.0).abs() < 0.4, "{ratio}");
    }

    #[test]
    fn large_pools_keep_the_retry_and_fallback_rules() {
        let p = large_pool(|i| u32::from(i != 40));
        let lc = LeastConnections::new();
        let mut tried = Tried::new();
        for i in [3, 4, 5] {
            tried.insert(i);
        }
        assert!(picks(&p, &lc, tried, 2_000)
            .iter()
            .all(|&i| !tried.contains(i) && i != 40));
        // Two healthy: the draws seldom find both, the scan decides, and they share evenly.
        for (i, b) in p.backends().iter().enumerate() {
            b.stats.set_healthy(i == 3 || i == 60);
        }
        let hits = picks(&p, &lc, Tried::new(), 1_000);
        let at3 = hits.iter().filter(|&&i| i == 3).count();
        assert!(hits.iter().all(|&i| i == 3 || i == 60));
        assert!((450..=550).contains(&at3), "{at3}");
        // Both tried: a tried one again; then only the weight-0 spare: it is the last resort.
        tried.insert(60);
        assert!(picks(&p, &lc, tried, 20).iter().all(|&i| i == 3 || i == 60));
        p.backends()[3].stats.set_healthy(false);
        p.backends()[60].stats.set_healthy(false);
        assert_eq!(lc.pick(p.backends(), &p.weights(), tried, 0), None);
        p.backends()[40].stats.set_healthy(true);
        assert_eq!(picks(&p, &lc, tried, 3), vec![40; 3]);
    }

    #[test]
    fn large_pools_ramp_a_slow_starting_backend() {
        let p = large_pool(|_| 1);
        let t = WeightTable::clone(&p.weights())
            .with_slow_start(crate::SlowStart::new(Duration::from_secs(1), 10));
        p.backends()[5].stats.start_ramp(0);
        let lc = LeastConnections::new();
        let held: Vec<_> = (0..1000)
            .map(|_| p.lease(lc.pick(p.backends(), &t, Tried::new(), 1).unwrap()))
            .collect();
        // At a tenth of its weight it holds about a tenth of the others' ten.
        assert!(
            p.backends()[5].stats.in_flight() <= 2,
            "{}",
            p.backends()[5].stats.in_flight()
        );
        // After the window it is the least loaded and wins whenever drawn (~2 % of picks).
        let _more: Vec<_> = (0..1000)
            .map(|_| {
                p.lease(
                    lc.pick(p.backends(), &t, Tried::new(), 2_000_000_000)
                        .unwrap(),
                )
            })
            .collect();
        assert!(
            p.backends()[5].stats.in_flight() >= 10,
            "{}",
            p.backends()[5].stats.in_flight()
        );
        drop(held);
    }

    #[test]
    fn large_pools_are_deterministic_per_picker() {
        let p = large_pool(|i| 1 + i as u32 % 3);
        let _g = leases(&p, &(0..LARGE).map(|i| i % 5).collect::<Vec<_>>());
        let run = || picks(&p, &LeastConnections::new(), Tried::new(), 200);
        assert_eq!(run(), run());
        // The exact scan stays available at any size.
        let exact = LeastConnections::with_exact_max(usize::MAX);
        let first = picks(&p, &exact, Tried::new(), 1)[0];
        let best = |i: usize| (p.backends()[i].stats.in_flight() + 1) * 6 / (1 + i as u64 % 3);
        assert!((0..LARGE).all(|i| best(first) <= best(i)));
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
    fn retries_from_a_dead_backend_not_yet_ejected_split_evenly() {
        // Backend 1 is dead but still marked up: it fails at once, so it is idle and wins
        // every first attempt; the retry must not always land on its neighbour.
        let p = pool(&[1, 1, 1]);
        let _busy = leases(&p, &[1, 0, 1]);
        let lc = LeastConnections::new();
        let mut tried = Tried::new();
        tried.insert(1);
        let mut hits = [0; 3];
        for _ in 0..1000 {
            assert_eq!(
                lc.pick(p.backends(), &p.weights(), Tried::new(), 0),
                Some(1)
            );
            hits[lc.pick(p.backends(), &p.weights(), tried, 0).unwrap()] += 1;
        }
        assert_eq!(hits, [500, 0, 500]);
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
