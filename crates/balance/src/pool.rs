//! A pool of backends with an atomically swappable weight table and its picker.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::{Algorithm, Backend, InFlightGuard, Outcome, Picker, SlowStart, Tried, WeightTable};

/// Why a weight vector was rejected: by [`Pool::set_weights`], or by the control loop's
/// guardrails before a model's scores become weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightError {
    /// The vector length differs from the number of backends.
    WrongLength {
        /// Number of backends in the pool.
        expected: usize,
        /// Length of the rejected vector.
        got: usize,
    },
    /// The weight at `index` is NaN or infinite.
    NotFinite {
        /// Offending backend index.
        index: usize,
    },
    /// The weight at `index` is negative.
    Negative {
        /// Offending backend index.
        index: usize,
    },
    /// Every healthy backend was given zero, leaving nothing to normalise around.
    AllZero,
}

impl WeightError {
    /// Check that `weights` has one entry per backend (`expected`), each finite and `>= 0`;
    /// the first offending entry is reported.
    pub fn check(
        expected: usize,
        weights: impl ExactSizeIterator<Item = f64>,
    ) -> Result<(), WeightError> {
        if weights.len() != expected {
            return Err(WeightError::WrongLength {
                expected,
                got: weights.len(),
            });
        }
        for (index, w) in weights.enumerate() {
            if !w.is_finite() {
                return Err(WeightError::NotFinite { index });
            }
            if w < 0.0 {
                return Err(WeightError::Negative { index });
            }
        }
        Ok(())
    }
}

impl fmt::Display for WeightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightError::WrongLength { expected, got } => {
                write!(
                    f,
                    "expected {expected} weights (one per backend), got {got}"
                )
            }
            WeightError::NotFinite { index } => {
                write!(f, "weight of backend {index} is not finite")
            }
            WeightError::Negative { index } => write!(f, "weight of backend {index} is negative"),
            WeightError::AllZero => write!(f, "every healthy backend scored zero"),
        }
    }
}

impl std::error::Error for WeightError {}

/// A pool: backends + `ArcSwap<WeightTable>` + the algorithm's picker.
pub struct Pool {
    name: String,
    algorithm: Algorithm,
    backends: Vec<Backend>,
    weights: ArcSwap<WeightTable>,
    picker: Box<dyn Picker>,
    decay_ns: f64,
    max_consecutive_failures: u32,
    probes: Probes,
    slow_start: Option<SlowStart>,
}

/// Recovery probes: a few requests steered to given backends whatever the picker would choose,
/// so a backend whose weight has been turned down far enough that the picker never chooses it
/// (least connections with a tiny weight) is still observed and can be seen to recover.
///
/// `pending` is the sum of `tokens`; the pick path reads only `pending` while no probe is due.
struct Probes {
    pending: AtomicU32,
    tokens: Box<[AtomicU32]>,
}

impl Probes {
    fn new(n: usize) -> Self {
        Probes {
            pending: AtomicU32::new(0),
            tokens: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("backends", &self.backends)
            .field("weights", &self.weights.load().weights())
            .field("decay_ns", &self.decay_ns)
            .field("max_consecutive_failures", &self.max_consecutive_failures)
            .field("slow_start", &self.slow_start)
            .field(
                "probes_pending",
                &self.probes.pending.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Pool {
    /// Build a pool whose initial weights are the backends' static weights.
    ///
    /// `ewma_decay` is the Peak-EWMA time constant; `max_consecutive_failures` is the passive
    /// ejection threshold (0 disables passive ejection).
    pub fn new(
        name: impl Into<String>,
        algorithm: Algorithm,
        backends: Vec<Backend>,
        ewma_decay: Duration,
        max_consecutive_failures: u32,
    ) -> Self {
        Self::with_picker(
            name,
            algorithm,
            backends,
            ewma_decay,
            max_consecutive_failures,
            crate::new_picker(algorithm),
        )
    }

    /// Like [`Pool::new`] but with an explicit picker (e.g. a seeded [`crate::P2cEwma`] in tests).
    /// `algorithm` is only reported back by [`Pool::algorithm`].
    pub fn with_picker(
        name: impl Into<String>,
        algorithm: Algorithm,
        backends: Vec<Backend>,
        ewma_decay: Duration,
        max_consecutive_failures: u32,
        picker: Box<dyn Picker>,
    ) -> Self {
        let table = WeightTable::for_algorithm(
            backends
                .iter()
                .map(|b| f64::from(b.static_weight))
                .collect(),
            algorithm,
        );
        let probes = Probes::new(backends.len());
        Self {
            name: name.into(),
            algorithm,
            probes,
            backends,
            weights: ArcSwap::from_pointee(table),
            picker,
            decay_ns: ewma_decay.as_nanos() as f64,
            max_consecutive_failures,
            slow_start: None,
        }
    }

    /// The same pool with `slow_start` ramping backends that join it or come back healthy
    /// (`None`: off). Ramps already begun (see [`crate::BackendStats::start_ramp`]) apply at once.
    pub fn with_slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.slow_start = slow_start;
        let table = WeightTable::clone(&self.weights.load()).with_slow_start(slow_start);
        self.weights = ArcSwap::from_pointee(table);
        self
    }

    /// The pool's slow-start setting, if on.
    pub fn slow_start(&self) -> Option<SlowStart> {
        self.slow_start
    }

    /// The share of its weight backend `idx` gets at `now_ns`, 0–1: below 1 while it ramps up
    /// in slow start, 1 otherwise (and for an out-of-range index).
    pub fn ramp_factor(&self, idx: usize, now_ns: u64) -> f64 {
        match (self.slow_start, self.backends.get(idx)) {
            (Some(s), Some(b)) => f64::from(s.factor(&b.stats, now_ns)) / f64::from(SlowStart::ONE),
            _ => 1.0,
        }
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// All backends, healthy or not, in configuration order (indices are stable).
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Current weight snapshot (a cheap, lock-free load).
    pub fn weights(&self) -> arc_swap::Guard<Arc<WeightTable>> {
        self.weights.load()
    }

    /// Validate and atomically install new weights (one per backend, finite, `>= 0`).
    /// The table (including the WRR sequence) is built here, off the data path. Each backend
    /// remembers its weight, so a pool rebuilt for a new configuration keeps it (see
    /// [`crate::BackendRegistry`]).
    pub fn set_weights(&self, weights: Vec<f64>) -> Result<(), WeightError> {
        WeightError::check(self.backends.len(), weights.iter().copied())?;
        for (b, &w) in self.backends.iter().zip(&weights) {
            b.stats.set_assigned_weight(w);
        }
        self.weights.store(Arc::new(
            WeightTable::for_algorithm(weights, self.algorithm).with_slow_start(self.slow_start),
        ));
        Ok(())
    }

    /// Choose a backend; see [`Picker::pick`]. A recovery probe that is due (see
    /// [`Pool::grant_probes`]) takes precedence over the picker.
    #[inline]
    pub fn pick(&self, tried: Tried, now_ns: u64) -> Option<usize> {
        let weights = self.weights.load();
        if self.probes.pending.load(Ordering::Relaxed) != 0 {
            if let Some(idx) = self.take_probe(&weights, tried) {
                return Some(idx);
            }
        }
        self.picker.pick(&self.backends, &weights, tried, now_ns)
    }

    /// Steer the next `count` picks that may go to backend `idx` (healthy, not yet tried by
    /// the request, weight above zero) to it, replacing any probes still due there. Returns
    /// `false` for an out-of-range index.
    pub fn grant_probes(&self, idx: usize, count: u32) -> bool {
        let Some(slot) = self.probes.tokens.get(idx) else {
            return false;
        };
        let old = slot.swap(count, Ordering::AcqRel);
        self.probes.pending.fetch_add(count, Ordering::AcqRel);
        self.probes.pending.fetch_sub(old, Ordering::AcqRel);
        true
    }

    /// Probes still due at backend `idx` (0 for an out-of-range index).
    pub fn probes_due(&self, idx: usize) -> u32 {
        self.probes
            .tokens
            .get(idx)
            .map_or(0, |t| t.load(Ordering::Relaxed))
    }

    #[cold]
    fn take_probe(&self, weights: &WeightTable, tried: Tried) -> Option<usize> {
        let w = weights.weights();
        for (idx, slot) in self.probes.tokens.iter().enumerate() {
            if slot.load(Ordering::Relaxed) == 0
                || tried.contains(idx)
                || !self.backends[idx].stats.is_healthy()
                || w.get(idx).is_none_or(|&x| x <= 0.0)
            {
                continue;
            }
            if slot
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| t.checked_sub(1))
                .is_ok()
            {
                self.probes.pending.fetch_sub(1, Ordering::AcqRel);
                return Some(idx);
            }
        }
        None
    }

    /// Backends currently healthy (active and passive).
    pub fn healthy_count(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| b.stats.is_healthy())
            .count()
    }

    /// Take a lease on backend `idx` (increments its `in_flight` until the guard drops).
    ///
    /// # Panics
    /// If `idx` is out of range (indices come from [`Pool::pick`], so this is a caller bug).
    pub fn lease(self: &Arc<Self>, idx: usize) -> InFlightGuard {
        InFlightGuard::new(Arc::clone(self), idx)
    }

    /// Record a finished attempt on backend `idx` with the pool's decay and ejection threshold;
    /// returns `true` if it passively ejected the backend. Out-of-range `idx` is ignored (`false`).
    pub fn record(&self, idx: usize, latency_ns: u64, outcome: Outcome, now_ns: u64) -> bool {
        self.backends.get(idx).is_some_and(|b| {
            b.stats.record(
                latency_ns,
                outcome,
                now_ns,
                self.decay_ns,
                self.max_consecutive_failures,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::backends;
    use crate::P2cEwma;

    fn pool(alg: Algorithm, weights: &[u32]) -> Arc<Pool> {
        Arc::new(Pool::new(
            "web",
            alg,
            backends(weights),
            Duration::from_secs(10),
            2,
        ))
    }

    #[test]
    fn accessors_and_initial_weights() {
        let p = pool(Algorithm::WeightedRoundRobin, &[5, 1, 1]);
        assert_eq!(p.name(), "web");
        assert_eq!(p.algorithm(), Algorithm::WeightedRoundRobin);
        assert_eq!(p.backends().len(), 3);
        assert_eq!(p.weights().weights(), &[5.0, 1.0, 1.0]);
        assert_eq!(p.healthy_count(), 3);
        let picks: Vec<_> = (0..7).map(|_| p.pick(Tried::new(), 0).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        assert!(format!("{p:?}").contains("web"));
    }

    #[test]
    fn set_weights_validates() {
        let p = pool(Algorithm::WeightedRoundRobin, &[1, 1]);
        assert_eq!(
            p.set_weights(vec![1.0]),
            Err(WeightError::WrongLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            p.set_weights(vec![1.0, f64::NAN]),
            Err(WeightError::NotFinite { index: 1 })
        );
        assert_eq!(
            p.set_weights(vec![f64::INFINITY, 1.0]),
            Err(WeightError::NotFinite { index: 0 })
        );
        assert_eq!(
            p.set_weights(vec![1.0, -0.5]),
            Err(WeightError::Negative { index: 1 })
        );
        assert_eq!(p.weights().weights(), &[1.0, 1.0]);
        assert_eq!(
            WeightError::WrongLength {
                expected: 2,
                got: 1
            }
            .to_string(),
            "expected 2 weights (one per backend), got 1"
        );
        assert_eq!(
            WeightError::NotFinite { index: 1 }.to_string(),
            "weight of backend 1 is not finite"
        );
        assert_eq!(
            WeightError::Negative { index: 0 }.to_string(),
            "weight of backend 0 is negative"
        );
        // The first offending entry is the one reported.
        assert_eq!(
            WeightError::check(2, [-1.0, f64::NAN].into_iter()),
            Err(WeightError::Negative { index: 0 })
        );
        assert_eq!(WeightError::check(2, [0.0, 0.0].into_iter()), Ok(()));
    }

    #[test]
    fn set_weights_swaps_atomically_and_old_snapshot_survives() {
        let p = pool(Algorithm::WeightedRoundRobin, &[1, 1]);
        let old = p.weights();
        p.set_weights(vec![0.0, 2.0]).unwrap();
        assert_eq!(old.weights(), &[1.0, 1.0]);
        assert_eq!(p.weights().weights(), &[0.0, 2.0]);
        for _ in 0..10 {
            assert_eq!(p.pick(Tried::new(), 0), Some(1));
        }
    }

    #[test]
    fn record_forwards_decay_and_threshold() {
        let p = pool(Algorithm::P2cEwma, &[1, 1]);
        assert!(!p.record(0, 1_000, Outcome::ServerError, 0));
        assert!(p.record(0, 1_000, Outcome::ServerError, 0));
        assert!(!p.backends()[0].stats.is_healthy());
        assert_eq!(p.healthy_count(), 1);
        assert!(!p.record(99, 1, Outcome::Success, 0));
        // 10 s decay: after 10 s the estimate is 1/e of the sample.
        p.record(1, 1_000_000, Outcome::Success, 0);
        let e = p.backends()[1].stats.ewma_ns(10_000_000_000);
        assert!((e - 1_000_000.0 / std::f64::consts::E).abs() < 1e-3, "{e}");
        // Ejected backend is never picked; active recovery brings it back.
        for _ in 0..20 {
            assert_eq!(p.pick(Tried::new(), 0), Some(1));
        }
        p.backends()[0].stats.set_healthy(true);
        assert_eq!(p.healthy_count(), 2);
    }

    #[test]
    fn none_when_all_unhealthy_for_every_algorithm() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::P2cEwma,
        ] {
            let p = pool(alg, &[1, 2, 3]);
            let mut tried = Tried::new();
            tried.insert(0);
            tried.insert(1);
            // Retry preference: the only untried backend.
            assert_eq!(p.pick(tried, 0), Some(2), "{alg:?}");
            for b in p.backends() {
                b.stats.set_healthy(false);
            }
            assert_eq!(p.healthy_count(), 0);
            assert_eq!(p.pick(Tried::new(), 0), None, "{alg:?}");
        }
    }

    #[test]
    fn with_seeded_picker_is_deterministic() {
        let mk = || {
            Pool::with_picker(
                "p2c",
                Algorithm::P2cEwma,
                backends(&[1; 8]),
                Duration::from_secs(10),
                3,
                Box::new(P2cEwma::with_seed(1234)),
            )
        };
        let (a, b) = (mk(), mk());
        for _ in 0..100 {
            assert_eq!(a.pick(Tried::new(), 0), b.pick(Tried::new(), 0));
        }
    }

    #[test]
    fn concurrent_pick_lease_record_and_swap() {
        let p = pool(Algorithm::LeastConnections, &[1, 1, 1, 1]);
        std::thread::scope(|s| {
            for t in 0..3 {
                let p = &p;
                s.spawn(move || {
                    for k in 0..5_000u64 {
                        let i = p.pick(Tried::new(), k).unwrap();
                        let _g = p.lease(i);
                        p.record(i, 1_000 + t, Outcome::Success, k);
                    }
                });
            }
            s.spawn(|| {
                for k in 0..200 {
                    let w = f64::from(k % 5);
                    p.set_weights(vec![1.0, w, 2.0, 0.5]).unwrap();
                }
            });
        });
        assert!(p.backends().iter().all(|b| b.stats.in_flight() == 0));
        let total: u64 = p.backends().iter().map(|b| b.stats.requests()).sum();
        assert_eq!(total, 15_000);
    }

    #[test]
    fn probes_reach_a_starved_backend_once_each() {
        let p = pool(Algorithm::LeastConnections, &[1, 1, 1]);
        // Least connections never picks a backend at 1/1000 of the others' weight while it
        // has idle peers.
        p.set_weights(vec![1.0, 0.001, 1.0]).unwrap();
        let picks =
            |n: usize| -> Vec<usize> { (0..n).map(|_| p.pick(Tried::new(), 0).unwrap()).collect() };
        assert!(!picks(20).contains(&1));
        assert!(p.grant_probes(1, 2));
        assert!(!p.grant_probes(3, 1));
        assert_eq!(p.probes_due(1), 2);
        let got = picks(20);
        assert_eq!(&got[..2], &[1, 1]);
        assert!(!got[2..].contains(&1));
        assert_eq!(p.probes_due(1), 0);

        // A retry does not return to a backend it already tried; an unhealthy or zero-weight
        // backend is not probed; a new grant replaces the old one.
        p.grant_probes(1, 5);
        let mut tried = Tried::new();
        tried.insert(1);
        assert_ne!(p.pick(tried, 0), Some(1));
        p.backends()[1].stats.set_healthy(false);
        assert_ne!(p.pick(Tried::new(), 0), Some(1));
        p.backends()[1].stats.set_healthy(true);
        p.set_weights(vec![1.0, 0.0, 1.0]).unwrap();
        assert_ne!(p.pick(Tried::new(), 0), Some(1));
        p.set_weights(vec![1.0, 0.001, 1.0]).unwrap();
        p.grant_probes(1, 1);
        let got = picks(3);
        assert_eq!(got[0], 1);
        assert!(!got[1..].contains(&1));
        p.grant_probes(1, 0);
        assert!(!picks(10).contains(&1));
    }

    #[test]
    fn concurrent_probes_are_taken_exactly_once() {
        let p = pool(Algorithm::LeastConnections, &[1, 1, 1, 1]);
        p.set_weights(vec![1.0, 1e-6, 1.0, 1.0]).unwrap();
        let taken = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if p.pick(Tried::new(), 0) == Some(1) {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..100 {
                    p.grant_probes(1, 3);
                    std::thread::yield_now();
                }
            });
        });
        let taken = taken.into_inner();
        assert!((3..=300).contains(&taken), "{taken}");
        // Every grant left 3 due; whatever was not taken is still due, none was lost or doubled.
        assert!(p.probes_due(1) <= 3);
        let pending = p.probes.pending.load(Ordering::Relaxed);
        assert_eq!(pending, p.probes_due(1));
    }
}
