//! The control loop fed arbitrary model outputs: scores of any length and any bits (NaN, ±inf,
//! subnormal, huge, negative), any health, any valid `[control]` limits, tick after tick.
//!
//! A tick either keeps the previous weights or installs ones that are finite, zero exactly for
//! unhealthy backends, within the floor and ceiling for healthy ones, and accepted by the pool;
//! and every algorithm still picks a healthy backend whenever one exists. The built-in
//! heuristic is driven the same way with arbitrary observations.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use fulcrum_balance::{Algorithm, Backend, InFlightGuard, Pool, Tried};
use fulcrum_control::guardrails::{self, Limits, BASE_WEIGHT};
use fulcrum_control::{BackendObservation, ControlSettings, Heuristic, PoolController, Scorer};

#[derive(Debug, Arbitrary)]
struct Input {
    algorithm: u8,
    backends: u8,
    floor: f64,
    ceiling: f64,
    max_step: f64,
    ticks: Vec<Tick>,
}

#[derive(Debug, Arbitrary)]
enum Tick {
    /// A model's raw output.
    Model {
        scores: Vec<f32>,
        down: u32,
        busy: Vec<u8>,
    },
    /// The heuristic over observations.
    Heuristic { observations: Vec<Observation> },
}

#[derive(Debug, Arbitrary)]
struct Observation {
    requests: u64,
    values: [f64; 10],
    in_flight: f64,
    healthy: bool,
    static_weight: f64,
    current_weight: f64,
    reported_load: Option<f64>,
}

/// The limits a `[control]` section may set; an out-of-range draw keeps the default, as the
/// configuration reader would refuse it.
fn limits(input: &Input) -> Limits {
    let d = Limits::default();
    let floor = if input.floor > 0.0 && input.floor <= 1.0 {
        input.floor
    } else {
        d.floor
    };
    let ceiling = if (1.0..=1000.0).contains(&input.ceiling) && input.ceiling > floor {
        input.ceiling
    } else {
        d.ceiling.max(floor * 2.0)
    };
    let max_step = if input.max_step > 1.0 && input.max_step <= 100.0 {
        input.max_step
    } else {
        d.max_step
    };
    Limits {
        floor,
        ceiling,
        max_step,
    }
}

fn observation(o: &Observation) -> BackendObservation {
    let v = &o.values;
    BackendObservation {
        requests: o.requests,
        rate_rps: v[0],
        share: v[1],
        ewma_ms: v[2],
        mean_ms: v[3],
        p50_ms: v[4],
        p99_ms: v[5],
        in_flight: o.in_flight,
        mean_in_flight: v[6],
        max_in_flight: v[7],
        error_rate: v[8],
        healthy: o.healthy,
        static_weight: o.static_weight,
        current_weight: o.current_weight,
        reported_load: o.reported_load.map(|_| v[9]),
    }
}

/// Whatever happened, the weights in force are usable.
fn check_weights(pool: &Pool) {
    let table = pool.weights();
    assert_eq!(table.len(), pool.backends().len());
    for &w in table.weights() {
        assert!(w.is_finite() && w >= 0.0, "weight {w}");
    }
}

fn check_picks(pool: &Arc<Pool>, now: u64) {
    let any_healthy = pool.backends().iter().any(|b| b.stats.is_healthy());
    let mut tried = Tried::new();
    for _ in 0..pool.backends().len() + 1 {
        match pool.pick(tried, now) {
            Some(i) => {
                assert!(
                    pool.backends()[i].stats.is_healthy(),
                    "picked down backend {i}"
                );
                tried.insert(i);
            }
            None => assert!(!any_healthy, "no pick while a backend is healthy"),
        }
    }
}

fuzz_target!(|input: Input| {
    let algorithm = Algorithm::ALL[usize::from(input.algorithm) % Algorithm::ALL.len()];
    let n = usize::from(input.backends % 16) + 1;
    let limits = limits(&input);
    let backends = (0..n)
        .map(|i| Backend::new(format!("127.0.0.1:{}", 9000 + i).parse().unwrap(), 1))
        .collect();
    let pool = Arc::new(Pool::new(
        "fuzz",
        algorithm,
        backends,
        Duration::from_secs(10),
        0,
    ));
    let settings = ControlSettings {
        limits: limits.clone(),
        ..ControlSettings::default()
    };
    let mut controller = PoolController::simulated(&pool, settings, 0);
    let mut heuristic = Scorer::Heuristic(Heuristic::default());
    let mut now = 0u64;
    for tick in input.ticks.iter().take(64) {
        now += 1_000_000_000;
        match tick {
            Tick::Model { scores, down, busy } => {
                for (i, b) in pool.backends().iter().enumerate() {
                    b.stats.set_healthy(down & (1 << i) == 0);
                }
                let _held: Vec<InFlightGuard> = busy
                    .iter()
                    .take(64)
                    .map(|&i| pool.lease(usize::from(i) % n))
                    .collect();
                let healthy: Vec<bool> = pool
                    .backends()
                    .iter()
                    .map(|b| b.stats.is_healthy())
                    .collect();
                let previous = pool.weights().weights().to_vec();
                if let Ok(g) = guardrails::apply(scores, &healthy, &previous, &limits) {
                    let (lo, hi) = (limits.floor * BASE_WEIGHT, limits.ceiling * BASE_WEIGHT);
                    assert_eq!(g.weights.len(), n);
                    for (i, &w) in g.weights.iter().enumerate() {
                        if healthy[i] {
                            assert!(w.is_finite() && lo <= w && w <= hi, "backend {i}: {w}");
                        } else {
                            assert_eq!(w, 0.0, "unhealthy backend {i} kept weight");
                        }
                    }
                    pool.set_weights(g.weights)
                        .expect("the pool refused guarded weights");
                }
                check_weights(&pool);
                check_picks(&pool, now);
            }
            Tick::Heuristic { observations } => {
                let obs: Vec<BackendObservation> = (0..n)
                    .map(|i| match observations.get(i) {
                        Some(o) => observation(o),
                        None => observation(&Observation {
                            requests: 0,
                            values: [0.0; 10],
                            in_flight: 0.0,
                            healthy: true,
                            static_weight: 1.0,
                            current_weight: 1.0,
                            reported_load: None,
                        }),
                    })
                    .collect();
                for (b, o) in pool.backends().iter().zip(&obs) {
                    b.stats.set_healthy(o.healthy);
                }
                let _ = controller.tick(&pool, &obs, &mut heuristic, now);
                check_weights(&pool);
                check_picks(&pool, now);
            }
        }
    }
});
