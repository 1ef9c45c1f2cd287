//! Backend selection for fulcrum: the `Picker` trait, shared types and one module per algorithm.
//!
//! The data plane calls [`Pool::pick`] once per attempt, takes an [`InFlightGuard`] lease on the
//! chosen backend and reports the result through [`Pool::record`]. Everything on that path is
//! lock-free and allocation-free; the control plane replaces weights wholesale through
//! [`Pool::set_weights`] (an `ArcSwap`), so readers never block.
//!
//! The rules the proxy and the simulator must apply alike live here too: [`retry::decide`]
//! (whether a failed attempt goes to another backend) and [`HealthTracker`] (consecutive
//! results → up or down, for active checks and passive ejection).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod backend;
pub mod health;
pub mod histogram;
mod least_connections;
mod p2c_ewma;
mod pool;
mod registry;
pub mod retry;
mod round_robin;
mod slow_start;
mod weighted_round_robin;
mod weights;

use std::sync::OnceLock;
use std::time::Instant;

pub use backend::{Backend, BackendStats, InFlightGuard, DEFAULT_EWMA_DECAY_NS};
/// The load-balancing algorithms, as the configuration names them.
pub use fulcrum_config::Algorithm;
pub use health::{HealthChange, HealthRule, HealthTracker};
pub use least_connections::LeastConnections;
pub use p2c_ewma::P2cEwma;
pub use pool::{Pool, WeightError};
pub use registry::{BackendRegistry, PoolSpec};
pub use round_robin::RoundRobin;
pub use slow_start::SlowStart;
pub use weighted_round_robin::WeightedRoundRobin;
pub use weights::{WeightTable, MAX_WRR_SEQUENCE};

/// A fresh picker implementing `algorithm` (P2C is seeded from std's per-process randomness).
pub fn new_picker(algorithm: Algorithm) -> Box<dyn Picker> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new()),
        Algorithm::WeightedRoundRobin => Box::new(WeightedRoundRobin::new()),
        Algorithm::LeastConnections => Box::new(LeastConnections::new()),
        Algorithm::P2cEwma => Box::new(P2cEwma::new()),
    }
}

/// Outcome of one attempt against a backend, for stats and passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with any status below 500.
    Success,
    /// A 5xx response.
    ServerError,
    /// The TCP/TLS connection could not be established.
    ConnectFailure,
    /// Connect, read or write timed out.
    Timeout,
    /// Any other failure, e.g. the connection was reset mid-response.
    OtherFailure,
}

/// Exclusion set for retries: indices already tried.
///
/// A fixed 256-bit bitset so it is `Copy` and never allocates; indices `>= Tried::CAPACITY` are
/// silently not excludable (a retry may then land on the same backend, which is harmless).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried {
    bits: [u64; 4],
}

impl Tried {
    /// Number of backend indices that can be recorded.
    pub const CAPACITY: usize = 256;

    /// An empty set (same as `Default`).
    pub const fn new() -> Self {
        Self { bits: [0; 4] }
    }

    /// Mark `idx` as tried; no-op for `idx >= CAPACITY`.
    #[inline]
    pub fn insert(&mut self, idx: usize) {
        if idx < Self::CAPACITY {
            self.bits[idx >> 6] |= 1 << (idx & 63);
        }
    }

    /// Whether `idx` was marked as tried.
    #[inline]
    pub fn contains(&self, idx: usize) -> bool {
        idx < Self::CAPACITY && self.bits[idx >> 6] & (1 << (idx & 63)) != 0
    }

    /// Whether nothing has been tried yet.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bits == [0; 4]
    }
}

/// The small selection trait, one implementation per algorithm file.
pub trait Picker: Send + Sync {
    /// Choose a backend index among healthy backends with weight > 0, preferring ones not in `tried`.
    ///
    /// If every healthy backend was tried, may return a tried one (retrying the same backend is
    /// allowed only when no other exists); healthy weight-0 backends are a last resort.
    /// Returns `None` only when no backend is healthy. Never allocates or locks; loops are bounded.
    fn pick(
        &self,
        backends: &[Backend],
        weights: &WeightTable,
        tried: Tried,
        now_ns: u64,
    ) -> Option<usize>;
}

/// Monotonic nanoseconds since a process-wide epoch (the first call).
///
/// `Instant`-based so it never goes backwards; hot-path callers should call it once per request
/// and pass the value down rather than re-reading the clock.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // u64 nanoseconds covers ~584 years of uptime, so the truncation cannot bite in practice.
    Instant::now().duration_since(epoch).as_nanos() as u64
}

/// Weight of backend `i` in `weights`, treating indices past the table as weight 0.
#[inline]
pub(crate) fn weight_of(weights: &WeightTable, i: usize) -> f64 {
    weights.weights().get(i).copied().unwrap_or(0.0)
}

/// Last-resort selection shared by the weighted pickers, used when their fast path found no
/// healthy, untried, positive-weight backend.
///
/// Ranks healthy backends by preference: untried & weight > 0, untried & weight 0, tried &
/// weight > 0, tried & weight 0 — so a retry only lands on an already-tried backend when nothing
/// else healthy exists. Among the best-ranked candidates it takes the `ticket % count`-th, so
/// callers that pass a counter (or a random number) spread the load evenly over them. Taking the
/// first one after a rotating start instead would give a candidate that follows a run of down
/// backends the turns of all of them. Two bounded passes, no allocation.
pub(crate) fn fallback_pick(
    backends: &[Backend],
    weights: &WeightTable,
    tried: Tried,
    ticket: usize,
) -> Option<usize> {
    let rank = |i: usize| {
        backends[i]
            .stats
            .is_healthy()
            .then(|| (u8::from(tried.contains(i)) << 1) | u8::from(weight_of(weights, i) <= 0.0))
    };
    let (mut best, mut count) = (u8::MAX, 0);
    for i in 0..backends.len() {
        match rank(i) {
            Some(r) if r < best => (best, count) = (r, 1),
            Some(r) if r == best => count += 1,
            _ => {}
        }
    }
    if count == 0 {
        return None;
    }
    let mut skip = ticket % count;
    for i in 0..backends.len() {
        if rank(i) == Some(best) {
            if skip == 0 {
                return Some(i);
            }
            skip -= 1;
        }
    }
    unreachable!("the second pass sees the candidates the first one counted")
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the per-algorithm unit tests.
    use super::*;
    use std::net::SocketAddr;

    /// `n` backends on 127.0.0.1:9001.. with the given static weights (cycled).
    pub fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 9001 + i).parse().unwrap();
                Backend::new(addr, w)
            })
            .collect()
    }

    /// Weight table from the backends' static weights.
    pub fn table(backends: &[Backend]) -> WeightTable {
        WeightTable::new(
            backends
                .iter()
                .map(|b| f64::from(b.static_weight))
                .collect(),
        )
    }

    /// Pick `count` times with an empty `tried` set and return per-backend hit counts.
    pub fn histogram(
        picker: &dyn Picker,
        backends: &[Backend],
        weights: &WeightTable,
        count: usize,
    ) -> Vec<usize> {
        let mut hits = vec![0; backends.len()];
        for _ in 0..count {
            hits[picker.pick(backends, weights, Tried::new(), 0).unwrap()] += 1;
        }
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_bitset() {
        let mut t = Tried::new();
        assert!(t.is_empty());
        t.insert(0);
        t.insert(63);
        t.insert(64);
        t.insert(255);
        t.insert(256); // beyond capacity: ignored
        assert!(!t.is_empty());
        for i in [0, 63, 64, 255] {
            assert!(t.contains(i), "{i}");
        }
        for i in [1, 62, 65, 254, 256, 10_000] {
            assert!(!t.contains(i), "{i}");
        }
    }

    #[test]
    fn now_ns_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }

    #[test]
    fn fallback_tiers() {
        let backends = test_util::backends(&[1, 0, 1]);
        let table = test_util::table(&backends);
        let mut tried = Tried::new();
        tried.insert(0);
        tried.insert(2);
        // Untried weight-0 beats tried weight>0.
        assert_eq!(fallback_pick(&backends, &table, tried, 0), Some(1));
        backends[1].stats.set_healthy(false);
        // Only tried ones left: the ticket chooses among the tried positive-weight ones.
        assert_eq!(fallback_pick(&backends, &table, tried, 1), Some(2));
        backends[0].stats.set_healthy(false);
        backends[2].stats.set_healthy(false);
        assert_eq!(fallback_pick(&backends, &table, tried, 0), None);
    }

    #[test]
    fn fallback_spreads_over_equal_candidates_past_down_ones() {
        // Weight-0 spares 0, 3 and 4 behind down ones: each ticket in turn, none favoured.
        let backends = test_util::backends(&[0, 1, 1, 0, 0]);
        let table = test_util::table(&backends);
        backends[1].stats.set_healthy(false);
        backends[2].stats.set_healthy(false);
        let mut hits = [0; 5];
        for ticket in 0..300 {
            hits[fallback_pick(&backends, &table, Tried::new(), ticket).unwrap()] += 1;
        }
        assert_eq!(hits, [100, 0, 0, 100, 100]);
    }

    #[test]
    fn every_algorithm_builds_a_picker() {
        let backends = test_util::backends(&[1, 1]);
        let table = test_util::table(&backends);
        for alg in Algorithm::ALL {
            let p = new_picker(alg);
            assert!(p.pick(&backends, &table, Tried::new(), 0).is_some());
        }
    }
}
