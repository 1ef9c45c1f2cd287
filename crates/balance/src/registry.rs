//! Per-backend state that outlives the pools built from successive configurations, keyed by
//! pool name and backend address.
//!
//! A reload builds new pools; a backend that is in the old and the new configuration must keep
//! what the old pool learned about it (health, Peak-EWMA, latency window, counters, the weight in
//! force) and the leases taken through the old pool must count down the counter the new pool
//! reads. Both hold when the two pools share the backend's [`BackendStats`], which this registry
//! hands out. It is read and written only while pools are built, never on the request path.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;

use crate::{Algorithm, Backend, BackendStats, Pool, SlowStart};

/// How to build one pool: what its configuration says.
#[derive(Debug, Clone)]
pub struct PoolSpec<'a> {
    /// Pool name; with a backend's address, the key its state is kept under.
    pub name: &'a str,
    /// The picker's algorithm.
    pub algorithm: Algorithm,
    /// Backends as `(address, configured weight)`, in configuration order.
    pub backends: &'a [(SocketAddr, u32)],
    /// Peak-EWMA time constant.
    pub ewma_decay: Duration,
    /// Passive ejection threshold (0: off).
    pub max_consecutive_failures: u32,
    /// Slow start for backends that join the pool or come back healthy (`None`: off).
    pub slow_start: Option<SlowStart>,
    /// Whether weights installed at run time (by the control loop or the admin API) carry
    /// over; `false` when the pool's weight source changed, so every weight follows the
    /// configuration again.
    pub keep_weights: bool,
}

/// A backend's state as the registry keeps it.
#[derive(Debug)]
struct Carried {
    stats: Arc<BackendStats>,
    /// The configured weight the state was gathered under: a run-time weight carries over only
    /// while the configuration keeps this weight.
    configured_weight: u32,
}

/// The per-backend state of every pool, surviving the pools themselves.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    backends: DashMap<(String, SocketAddr), Carried>,
    /// The pool last built under each name, to carry its due recovery probes.
    pools: DashMap<String, Weak<Pool>>,
}

impl BackendRegistry {
    /// An empty registry: the first pools built from it start afresh.
    pub fn new() -> Self {
        Self::default()
    }

    /// Build pool `spec.name`, carrying over the state of backends it had before.
    ///
    /// A backend with the same address as before keeps its [`BackendStats`] (so leases taken
    /// through the previous pool are released on the counter this one reads), its due recovery
    /// probes, and its run-time weight unless its configured weight changed or
    /// `spec.keep_weights` is false. A backend new to an existing pool starts with no
    /// statistics and, when the pool has slow start, ramps up from `now_ns`; the backends of a
    /// pool seen for the first time, or of one that had no backend, start at full weight,
    /// having nobody to ramp against.
    /// Backends no longer configured are forgotten.
    pub fn build_pool(&self, spec: &PoolSpec<'_>, now_ns: u64) -> Arc<Pool> {
        let previous = self.pools.get(spec.name).map(|p| p.upgrade());
        // A pool seen for the first time, or one that had no backend (a DNS-discovered pool
        // before its names first resolved), has nobody to ramp against.
        let known = match &previous {
            None => false,
            Some(None) => true,
            Some(Some(p)) => !p.backends().is_empty(),
        };
        let previous = previous.flatten();
        let mut backends = Vec::with_capacity(spec.backends.len());
        let mut weights = Vec::with_capacity(spec.backends.len());
        for &(addr, configured) in spec.backends {
            let key = (spec.name.to_string(), addr);
            // Clone out and drop the map guard before inserting under the same key.
            let carried = self.backends.get(&key).map(|c| {
                let weight = match c.stats.assigned_weight() {
                    Some(w) if spec.keep_weights && c.configured_weight == configured => w,
                    _ => f64::from(configured),
                };
                (Arc::clone(&c.stats), weight)
            });
            let (stats, weight) = carried.unwrap_or_else(|| {
                let stats = Arc::new(BackendStats::new());
                if known && spec.slow_start.is_some() {
                    stats.start_ramp(now_ns);
                }
                (stats, f64::from(configured))
            });
            self.backends.insert(
                key,
                Carried {
                    stats: Arc::clone(&stats),
                    configured_weight: configured,
                },
            );
            backends.push(Backend::with_stats(addr, configured, stats));
            weights.push(weight);
        }
        let live: HashSet<SocketAddr> = spec.backends.iter().map(|&(a, _)| a).collect();
        self.backends
            .retain(|(pool, addr), _| pool != spec.name || live.contains(addr));

        let pool = Arc::new(
            Pool::new(
                spec.name,
                spec.algorithm,
                backends,
                spec.ewma_decay,
                spec.max_consecutive_failures,
            )
            .with_slow_start(spec.slow_start),
        );
        // Always installed, so every backend's remembered weight is the one now in force.
        // Carried weights passed this check when they were first set; configured ones are u32.
        let installed = pool.set_weights(weights);
        debug_assert!(installed.is_ok(), "{installed:?}");
        if let Some(previous) = previous {
            carry_probes(&previous, &pool);
        }
        self.pools
            .insert(spec.name.to_string(), Arc::downgrade(&pool));
        pool
    }

    /// Forget the pools (and their backends) not named in `keep`, e.g. those a new
    /// configuration removed.
    pub fn retain_pools(&self, keep: &[&str]) {
        self.backends
            .retain(|(pool, _), _| keep.contains(&pool.as_str()));
        self.pools.retain(|pool, _| keep.contains(&pool.as_str()));
    }

    /// Number of backends whose state is kept.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether no backend's state is kept.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

/// Grant `to` the recovery probes still due at the same addresses in `from`.
fn carry_probes(from: &Pool, to: &Pool) {
    let old: HashMap<SocketAddr, usize> = from
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| (b.addr, i))
        .collect();
    for (i, b) in to.backends().iter().enumerate() {
        if let Some(&j) = old.get(&b.addr) {
            let due = from.probes_due(j);
            if due > 0 {
                to.grant_probes(i, due);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Outcome, Tried};

    const MS: u64 = 1_000_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn spec<'a>(backends: &'a [(SocketAddr, u32)], algorithm: Algorithm) -> PoolSpec<'a> {
        PoolSpec {
            name: "web",
            algorithm,
            backends,
            ewma_decay: Duration::from_secs(10),
            max_consecutive_failures: 2,
            slow_start: SlowStart::new(Duration::from_millis(1000), 10),
            keep_weights: true,
        }
    }

    #[test]
    fn kept_backends_keep_state_weights_and_leases() {
        let reg = BackendRegistry::new();
        let first = [(addr(1), 1), (addr(2), 1), (addr(3), 1)];
        let old = reg.build_pool(&spec(&first, Algorithm::WeightedRoundRobin), 0);
        // The first build of a pool ramps nobody.
        assert!((0..3).all(|i| old.ramp_factor(i, 0) == 1.0));
        old.record(0, 3 * MS, Outcome::Success, 10);
        old.record(1, MS, Outcome::ConnectFailure, 10);
        assert!(old.record(1, MS, Outcome::ConnectFailure, 10));
        old.set_weights(vec![4.0, 1.0, 2.0]).unwrap();
        old.grant_probes(0, 2);
        let lease = old.lease(2);

        // Backend 3's configured weight changes; backend 4 joins.
        let second = [(addr(1), 1), (addr(2), 1), (addr(3), 5), (addr(4), 1)];
        let new = reg.build_pool(&spec(&second, Algorithm::WeightedRoundRobin), 100 * MS);
        let b = new.backends();
        assert_eq!(b[0].stats.requests(), 1);
        assert!(b[0].stats.ewma_ns(10) > 0.0);
        assert!(!b[1].stats.is_healthy(), "the ejected backend stays out");
        assert_eq!(b[1].stats.consecutive_failures(), 2);
        assert_eq!(b[2].stats.in_flight(), 1);
        assert_eq!(b[3].stats.requests(), 0);
        assert_eq!(new.weights().weights(), &[4.0, 1.0, 5.0, 1.0]);
        assert_eq!(new.probes_due(0), 2);
        // Only the added backend ramps.
        assert_eq!(new.ramp_factor(3, 100 * MS), 103.0 / 1024.0);
        assert!((0..3).all(|i| new.ramp_factor(i, 100 * MS) == 1.0));
        // The lease taken through the old pool is released on the counter the new one reads.
        drop(lease);
        assert_eq!(new.backends()[2].stats.in_flight(), 0);
        // The ejected backend gets nothing from the new pool.
        for _ in 0..50 {
            assert_ne!(new.pick(Tried::new(), 200 * MS), Some(1));
        }
        assert_eq!(reg.len(), 4);
    }

    #[test]
    fn removed_backends_are_forgotten_and_come_back_fresh() {
        let reg = BackendRegistry::new();
        let two = [(addr(1), 1), (addr(2), 1)];
        let old = reg.build_pool(&spec(&two, Algorithm::LeastConnections), 0);
        old.record(1, MS, Outcome::Success, 0);
        let lease = old.lease(1);
        let one = [(addr(1), 1)];
        let new = reg.build_pool(&spec(&one, Algorithm::LeastConnections), 0);
        assert_eq!(new.backends().len(), 1);
        assert_eq!(reg.len(), 1);
        // In flight on the removed backend: it finishes through the old pool.
        assert_eq!(lease.backend().stats.in_flight(), 1);
        drop(lease);
        let back = reg.build_pool(&spec(&two, Algorithm::LeastConnections), 0);
        assert_eq!(back.backends()[1].stats.requests(), 0);
        reg.retain_pools(&["api"]);
        assert!(reg.is_empty());
    }

    #[test]
    fn run_time_weights_reset_when_the_weight_source_changes() {
        let reg = BackendRegistry::new();
        let two = [(addr(1), 2), (addr(2), 1)];
        let old = reg.build_pool(&spec(&two, Algorithm::P2cEwma), 0);
        old.set_weights(vec![0.5, 3.0]).unwrap();
        let kept = reg.build_pool(&spec(&two, Algorithm::P2cEwma), 0);
        assert_eq!(kept.weights().weights(), &[0.5, 3.0]);
        let reset = reg.build_pool(
            &PoolSpec {
                keep_weights: false,
                ..spec(&two, Algorithm::P2cEwma)
            },
            0,
        );
        assert_eq!(reset.weights().weights(), &[2.0, 1.0]);
        // ... and stay reset on the next reload.
        let again = reg.build_pool(&spec(&two, Algorithm::P2cEwma), 0);
        assert_eq!(again.weights().weights(), &[2.0, 1.0]);
    }

    #[test]
    fn the_first_backends_of_an_empty_pool_do_not_ramp() {
        let reg = BackendRegistry::new();
        let empty = reg.build_pool(&spec(&[], Algorithm::WeightedRoundRobin), 0);
        assert!(empty.backends().is_empty());
        let two = [(addr(1), 1), (addr(2), 1)];
        let first = reg.build_pool(&spec(&two, Algorithm::WeightedRoundRobin), 10 * MS);
        assert!((0..2).all(|i| first.ramp_factor(i, 10 * MS) == 1.0));
        let three = [(addr(1), 1), (addr(2), 1), (addr(3), 1)];
        let next = reg.build_pool(&spec(&three, Algorithm::WeightedRoundRobin), 20 * MS);
        assert_eq!(next.ramp_factor(2, 20 * MS), 103.0 / 1024.0);
        drop(empty);
    }

    #[test]
    fn pools_are_kept_apart() {
        let reg = BackendRegistry::new();
        let one = [(addr(1), 1)];
        let web = reg.build_pool(&spec(&one, Algorithm::RoundRobin), 0);
        let api = reg.build_pool(
            &PoolSpec {
                name: "api",
                ..spec(&one, Algorithm::RoundRobin)
            },
            0,
        );
        web.backends()[0].stats.set_healthy(false);
        assert!(api.backends()[0].stats.is_healthy());
        assert_eq!(reg.len(), 2);
    }
}
