//! Immutable per-pool weight snapshot with everything the pickers precompute from it.

use crate::SlowStart;

/// Upper bound (approximately, see [`WeightTable::new`]) on the smooth-WRR sequence length.
///
/// 4096 slots keep quantisation error around 1/4096 of the total weight while the table stays
/// small (16 KiB) and cheap enough to rebuild on every control-plane weight update.
pub const MAX_WRR_SEQUENCE: u64 = 4096;

/// Largest least-connections multiplier. `in_flight` would have to exceed 2^40 before
/// `in_flight * multiplier` could overflow a u64.
const LC_MAX_MULT: u64 = 1 << 24;

/// Immutable snapshot of per-backend weights for one pool (swapped whole through `ArcSwap`).
///
/// Building it does all the expensive work (inverse weights, integer weights, the smooth-WRR
/// sequence) once per weight change so that picks are a handful of loads.
#[derive(Debug, Clone)]
pub struct WeightTable {
    weights: Box<[f64]>,
    /// `1/w` (0 for w = 0): P2C multiplies instead of dividing on the hot path.
    inverse: Box<[f64]>,
    /// Least-connections multipliers proportional to `1/w` (0 = excluded): `in_flight * mult` is
    /// a u64 score with the same order as `in_flight / w`, so the scan is one multiply and one
    /// compare per backend. For integer weights `mult = lcm / w`, making ratio ties exact
    /// (2 in flight at weight 2 ties 1 in flight at weight 1).
    lc_mult: Box<[u64]>,
    /// The smallest positive multiplier: the score of an idle backend of the largest weight,
    /// which no backend can beat.
    lc_floor: u64,
    /// Walker/Vose alias table over the weights: least connections draws its candidates from
    /// it on large pools (empty when no weight is positive).
    lc_alias: Box<[AliasSlot]>,
    /// Backend indices in smooth (nginx) WRR order; one full cycle.
    wrr_sequence: Box<[u32]>,
    /// The pool's slow-start ramp, which scales these weights per pick; `None` when off.
    slow_start: Option<SlowStart>,
}

impl WeightTable {
    /// Build a table; one weight per backend, in backend order.
    ///
    /// Weights should be finite and `>= 0` (0 = never picked unless nothing else is healthy);
    /// anything else (NaN, ±inf, negative) is treated as 0 — [`crate::Pool::set_weights`]
    /// rejects such input before it gets here.
    ///
    /// The WRR sequence uses the weights reduced by their gcd when they are all integers summing
    /// to at most [`MAX_WRR_SEQUENCE`]; otherwise they are scaled to about that many slots, with
    /// every positive weight keeping at least one slot. Cost is O(sequence length × backends).
    pub fn new(weights: Vec<f64>) -> Self {
        Self::build(weights, true)
    }

    /// Build a table for a pool using `algorithm`: the smooth-WRR sequence, the one costly part
    /// (O(sequence length × backends)), is only built for weighted round robin, so other pools
    /// can swap weights of thousands of backends every control tick.
    pub fn for_algorithm(weights: Vec<f64>, algorithm: crate::Algorithm) -> Self {
        Self::build(weights, algorithm == crate::Algorithm::WeightedRoundRobin)
    }

    fn build(weights: Vec<f64>, with_sequence: bool) -> Self {
        let weights: Box<[f64]> = weights
            .into_iter()
            .map(|w| if w.is_finite() && w > 0.0 { w } else { 0.0 })
            .collect();
        // min(f64::MAX) keeps subnormal weights from producing inf (and 0*inf = NaN costs).
        let inverse = weights
            .iter()
            .map(|&w| {
                if w > 0.0 {
                    (1.0 / w).min(f64::MAX)
                } else {
                    0.0
                }
            })
            .collect();
        let lc_mult = lc_multipliers(&weights);
        let lc_floor = lc_mult
            .iter()
            .copied()
            .filter(|&m| m > 0)
            .min()
            .unwrap_or(0);
        let lc_alias = alias_table(&weights);
        let wrr_sequence = if with_sequence {
            smooth_sequence(&wrr_quanta(&weights))
        } else {
            Box::default()
        };
        Self {
            weights,
            inverse,
            lc_mult,
            lc_floor,
            lc_alias,
            wrr_sequence,
            slow_start: None,
        }
    }

    /// The same table with `slow_start` scaling the weights of ramping backends per pick.
    pub fn with_slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.slow_start = slow_start;
        self
    }

    /// The slow-start ramp the pickers apply, if any.
    #[inline]
    pub fn slow_start(&self) -> Option<&SlowStart> {
        self.slow_start.as_ref()
    }

    /// The (sanitised) weights, one per backend.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Number of weights (= backends).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether the table has no weights.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// One cycle of the smooth weighted round robin sequence, as backend indices (empty for a
    /// table built for another algorithm).
    pub fn wrr_sequence(&self) -> &[u32] {
        &self.wrr_sequence
    }

    #[inline]
    pub(crate) fn inverse(&self) -> &[f64] {
        &self.inverse
    }

    #[inline]
    pub(crate) fn lc_multipliers(&self) -> &[u64] {
        &self.lc_mult
    }

    #[inline]
    pub(crate) fn lc_floor(&self) -> u64 {
        self.lc_floor
    }

    /// Map 32 random bits to a backend index with probability proportional to its weight
    /// (never a weight-0 backend); `None` when no weight is positive. O(1): one multiply, one
    /// table slot, one compare.
    #[inline]
    pub(crate) fn weighted_index(&self, random: u32) -> Option<usize> {
        let n = self.lc_alias.len();
        // Lemire's multiply-shift: the high half is a uniform slot, the low half the
        // (independent enough) fraction that decides between the slot and its alias.
        let x = u64::from(random) * n as u64;
        let slot = self.lc_alias.get((x >> 32) as usize)?;
        Some(if (x as u32) < slot.keep {
            slot.own as usize
        } else {
            slot.alias as usize
        })
    }
}

/// One column of the alias table: keep `own` when the fraction is below `keep` (out of 2^32),
/// otherwise take `alias`.
#[derive(Debug, Clone, Copy)]
struct AliasSlot {
    keep: u32,
    own: u32,
    alias: u32,
}

/// Vose's alias method: O(n) to build, O(1) per weighted draw. A column whose probability
/// rounds to one gets itself as alias, so `keep < 2^32` never loses it.
fn alias_table(weights: &[f64]) -> Box<[AliasSlot]> {
    let n = weights.len();
    let sum: f64 = weights.iter().sum();
    if n == 0 || n > u32::MAX as usize || !sum.is_finite() || sum <= 0.0 {
        return Box::default();
    }
    let mut scaled: Vec<f64> = weights.iter().map(|&w| w * n as f64 / sum).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    let mut slots: Vec<AliasSlot> = (0..n)
        .map(|i| AliasSlot {
            keep: u32::MAX,
            own: i as u32,
            alias: i as u32,
        })
        .collect();
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        // scaled[s] < 1, so the product stays below 2^32.
        slots[s].keep = (scaled[s] * 4_294_967_296.0) as u32;
        slots[s].alias = l as u32;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // Whatever is left is 1 up to rounding: keeps itself (the defaults).
    slots.into_boxed_slice()
}

fn all_integral(weights: &[f64], max: f64) -> bool {
    weights.iter().all(|&w| w.fract() == 0.0 && w <= max)
}

/// Positive weights scaled so the largest maps to `target`, rounded, never below 1.
fn scaled(weights: &[f64], target: f64, reference: f64) -> Vec<u64> {
    let scale = target / reference;
    weights
        .iter()
        .map(|&w| {
            if w > 0.0 {
                ((w * scale).round() as u64).max(1)
            } else {
                0
            }
        })
        .collect()
}

fn lc_multipliers(weights: &[f64]) -> Box<[u64]> {
    // Exact path: lcm of the (gcd-reduced) integer weights, if it stays small.
    if all_integral(weights, LC_MAX_MULT as f64) {
        let mut q: Vec<u64> = weights.iter().map(|&w| w as u64).collect();
        reduce_by_gcd(&mut q);
        let lcm = q.iter().filter(|&&x| x > 0).try_fold(1u64, |l, &x| {
            let l = l / gcd(l, x) * x;
            (l <= LC_MAX_MULT).then_some(l)
        });
        if let Some(lcm) = lcm {
            return q.iter().map(|&x| lcm.checked_div(x).unwrap_or(0)).collect();
        }
    }
    // Approximate path: the lightest weight gets LC_MAX_MULT, others proportionally less
    // (never below 1, so every positive weight stays eligible).
    let min = weights
        .iter()
        .copied()
        .filter(|&w| w > 0.0)
        .fold(f64::INFINITY, f64::min);
    weights
        .iter()
        .map(|&w| {
            if w > 0.0 {
                ((LC_MAX_MULT as f64 * min / w).round() as u64).max(1)
            } else {
                0
            }
        })
        .collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn reduce_by_gcd(q: &mut [u64]) {
    let g = q.iter().fold(0, |g, &x| gcd(g, x));
    if g > 1 {
        q.iter_mut().for_each(|x| *x /= g);
    }
}

/// Integer slot counts per backend for the WRR sequence.
fn wrr_quanta(weights: &[f64]) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return vec![0; weights.len()];
    }
    // Exact path first: integral weights reduced by their gcd (5:1:1 stays 5:1:1, 10:20 → 1:2).
    if all_integral(weights, u32::MAX as f64) {
        let mut q: Vec<u64> = weights.iter().map(|&w| w as u64).collect();
        reduce_by_gcd(&mut q);
        if q.iter().sum::<u64>() <= MAX_WRR_SEQUENCE {
            return q;
        }
    }
    // Fractional or too large: scale to ~MAX_WRR_SEQUENCE slots, then reduce (1.5:1 → 3:2 style
    // reductions happen whenever the rounding lands on a common factor).
    let mut q = scaled(weights, MAX_WRR_SEQUENCE as f64, sum);
    reduce_by_gcd(&mut q);
    q
}

/// nginx smooth WRR: each step every backend gains its weight, the largest current value wins
/// (first index on ties) and pays back the total. Produces interleaved cycles like
/// `a a b a c a a` for 5:1:1 instead of bursts.
fn smooth_sequence(quanta: &[u64]) -> Box<[u32]> {
    let total: u64 = quanta.iter().sum();
    let mut current = vec![0i64; quanta.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        let mut best_val = i64::MIN;
        for (i, (c, &q)) in current.iter_mut().zip(quanta).enumerate() {
            *c += q as i64;
            if q > 0 && *c > best_val {
                best_val = *c;
                best = i;
            }
        }
        current[best] -= total as i64;
        seq.push(best as u32);
    }
    seq.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(w: &[f64]) -> Vec<u32> {
        WeightTable::new(w.to_vec()).wrr_sequence().to_vec()
    }

    #[test]
    fn smooth_sequence_5_1_1() {
        assert_eq!(seq(&[5.0, 1.0, 1.0]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn integral_weights_are_gcd_reduced() {
        assert_eq!(seq(&[10.0, 20.0]), vec![1, 0, 1]);
        assert_eq!(seq(&[3.0, 3.0, 3.0]), vec![0, 1, 2]);
    }

    #[test]
    fn zero_weights_get_no_slots() {
        assert_eq!(seq(&[0.0, 2.0, 0.0, 1.0]), vec![1, 3, 1]);
        assert!(seq(&[0.0, 0.0]).is_empty());
        assert!(seq(&[]).is_empty());
    }

    #[test]
    fn fractional_weights_are_scaled_and_reduced() {
        let s = seq(&[1.5, 1.0]);
        let a = s.iter().filter(|&&i| i == 0).count();
        let b = s.len() - a;
        assert!(s.len() as u64 <= MAX_WRR_SEQUENCE);
        assert!(((a as f64 / b as f64) - 1.5).abs() < 0.01, "{a}:{b}");
    }

    #[test]
    fn tiny_positive_weight_keeps_a_slot() {
        let s = seq(&[1000.0, 0.0001, 1.0]);
        assert!(s.contains(&1));
        assert!(s.contains(&2));
        assert!(s.len() as u64 <= MAX_WRR_SEQUENCE + 3);
    }

    #[test]
    fn huge_integral_weights_are_scaled() {
        let s = seq(&[1_000_000.0, 3_000_001.0]);
        assert!(s.len() as u64 <= MAX_WRR_SEQUENCE + 2);
        let a = s.iter().filter(|&&i| i == 0).count() as f64;
        assert!((a / s.len() as f64 - 0.25).abs() < 0.001);
    }

    #[test]
    fn invalid_weights_are_zeroed() {
        let t = WeightTable::new(vec![f64::NAN, -1.0, f64::INFINITY, 2.0]);
        assert_eq!(t.weights(), &[0.0, 0.0, 0.0, 2.0]);
        assert_eq!(t.inverse(), &[0.0, 0.0, 0.0, 0.5]);
        assert_eq!(t.lc_multipliers(), &[0, 0, 0, 1]);
        assert_eq!(t.wrr_sequence(), &[3]);
    }

    /// Exact draw frequencies of every 32-bit input, sampled on a regular grid.
    fn alias_shares(w: &[f64]) -> Vec<f64> {
        let t = WeightTable::new(w.to_vec());
        let mut hits = vec![0u64; w.len()];
        let steps = 1u64 << 20;
        for k in 0..steps {
            let r = (k << 12) as u32 | (k as u32 >> 8);
            hits[t.weighted_index(r).unwrap()] += 1;
        }
        hits.iter().map(|&h| h as f64 / steps as f64).collect()
    }

    #[test]
    fn alias_table_draws_in_proportion_to_weight() {
        let w = [3.0, 0.0, 1.0, 0.5, 2.5, 1.0];
        let sum: f64 = w.iter().sum();
        for (got, &w) in alias_shares(&w).iter().zip(&w) {
            assert!((got - w / sum).abs() < 1e-3, "{got} vs {}", w / sum);
        }
        assert_eq!(alias_shares(&[0.0, 0.0, 7.0]), vec![0.0, 0.0, 1.0]);
        let even = alias_shares(&[2.0; 7]);
        assert!(
            even.iter().all(|&s| (s - 1.0 / 7.0).abs() < 1e-3),
            "{even:?}"
        );
        assert_eq!(WeightTable::new(vec![0.0, 0.0]).weighted_index(7), None);
        assert_eq!(WeightTable::new(vec![]).weighted_index(7), None);
        // The extremes of the input stay in range.
        let t = WeightTable::new(vec![1.0, 1e-9, 5.0]);
        assert!([0, u32::MAX].iter().all(|&r| t.weighted_index(r).is_some()));
    }

    #[test]
    fn lc_multipliers_exact_for_integers_scaled_for_fractions() {
        assert_eq!(WeightTable::new(vec![2.0, 1.0]).lc_multipliers(), &[1, 2]);
        assert_eq!(
            WeightTable::new(vec![20.0, 30.0, 0.0, 10.0]).lc_multipliers(),
            &[3, 2, 0, 6]
        );
        let t = WeightTable::new(vec![0.5, 0.25, 0.0]);
        assert_eq!(t.lc_multipliers(), &[1 << 23, 1 << 24, 0]);
        // Huge lcm (many coprime weights) falls back to the proportional path.
        let primes = [101.0, 103.0, 107.0, 109.0, 113.0];
        let m = WeightTable::new(primes.to_vec()).lc_multipliers().to_vec();
        assert_eq!(m[0], 1 << 24);
        assert!(m.windows(2).all(|p| p[0] > p[1]));
        let sub = WeightTable::new(vec![1e-310, 1.0]);
        assert!(sub.inverse()[0].is_finite());
        assert_eq!(sub.lc_multipliers(), &[1 << 24, 1]);
    }
}
