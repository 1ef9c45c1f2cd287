//! Simulator tests: determinism, queueing theory, policy ordering, retry and health rules.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_balance::{Algorithm, Pool};
use fulcrum_control::{BackendObservation, ControlSettings};
use fulcrum_scenario::{BackendEvent, Load, Scenario, ScenarioBackend};

use crate::control::{loop_factory, ScorerSource};
use crate::sim::run_for_test;
use crate::{simulate, simulate_all, Policy, SimError, SimOptions, WeightController};

pub(crate) fn backend(
    name: &str,
    concurrency: u32,
    service_ms: f64,
    jitter: f64,
) -> ScenarioBackend {
    ScenarioBackend {
        name: name.to_string(),
        concurrency,
        service_ms,
        service_jitter: jitter,
        error_rate: 0.0,
        error_ms: 1.0,
        weight: 1,
        events: Vec::new(),
    }
}

pub(crate) fn scenario(
    seed: u64,
    duration_s: f64,
    warmup_s: f64,
    rate_rps: f64,
    backends: Vec<ScenarioBackend>,
) -> Scenario {
    Scenario {
        name: "test".to_string(),
        description: "a test scenario".to_string(),
        seed,
        duration_s,
        warmup_s,
        load: Load {
            rate_rps,
            steps: Vec::new(),
            non_idempotent_fraction: 0.0,
            diurnal: None,
            bursts: Vec::new(),
        },
        backends,
        autoscale: None,
        slo: None,
    }
}

fn event(at_s: f64, until_s: f64) -> BackendEvent {
    BackendEvent {
        at_s,
        until_s,
        slowdown: 1.0,
        error_rate: None,
        down: false,
    }
}

/// Concurrency 2/4/8/16, equal speed, with `load` × capacity offered.
fn heterogeneous(seed: u64, duration_s: f64, load: f64) -> Scenario {
    let backends: Vec<_> = [2, 4, 8, 16]
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let mut b = backend(&format!("c{c}"), c, 20.0, 0.3);
            b.weight = c;
            b.name = format!("b{i}-c{c}");
            b
        })
        .collect();
    let mut sc = scenario(seed, duration_s, duration_s / 10.0, 1.0, backends);
    sc.load.rate_rps = load * sc.capacity_rps_at(0.0);
    sc
}

/// A scenario exercising every feature: steps, slowdowns, outages, error bursts, POSTs.
fn eventful(seed: u64) -> Scenario {
    let mut sc = heterogeneous(seed, 20.0, 0.7);
    sc.load.steps = vec![(8.0, sc.load.rate_rps * 1.2), (14.0, sc.load.rate_rps)];
    sc.load.non_idempotent_fraction = 0.2;
    sc.backends[1].events.push(BackendEvent {
        down: true,
        ..event(5.0, 10.0)
    });
    sc.backends[2].events.push(BackendEvent {
        slowdown: 3.0,
        ..event(6.0, 12.0)
    });
    sc.backends[3].events.push(BackendEvent {
        error_rate: Some(0.3),
        ..event(12.0, 15.0)
    });
    sc
}

#[test]
fn deterministic_for_a_seed() {
    for policy in Policy::BASELINES {
        let opts = SimOptions::default();
        let a = serde_json::to_string(&simulate(&eventful(11), &policy, &opts).unwrap()).unwrap();
        let b = serde_json::to_string(&simulate(&eventful(11), &policy, &opts).unwrap()).unwrap();
        let c = serde_json::to_string(&simulate(&eventful(12), &policy, &opts).unwrap()).unwrap();
        assert_eq!(a, b, "{policy}");
        assert_ne!(a, c, "{policy}");
        // The seed option overrides the scenario's.
        let d = SimOptions {
            seed: Some(12),
            ..SimOptions::default()
        };
        let d = serde_json::to_string(&simulate(&eventful(11), &policy, &d).unwrap()).unwrap();
        assert_eq!(c, d, "{policy}");
    }
}

/// `+model` policies driven by the shipped model give the same JSON for the same seed, and the
/// inference budget has no say in it: a zero budget, which on the wall clock would skip every
/// tick, gives the same run as the default one.
#[test]
fn deterministic_for_a_seed_with_the_shipped_model() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/balancer.onnx");
    let opts = |budget: Duration, seed: Option<u64>| SimOptions {
        seed,
        weight_controller: Some(
            loop_factory(
                ScorerSource::Model(model.clone()),
                ControlSettings {
                    inference_budget: budget,
                    ..ControlSettings::default()
                },
            )
            .expect("ONNX Runtime from .venv (./test.sh installs it) and models/balancer.onnx"),
        ),
        ..SimOptions::default()
    };
    let default_budget = ControlSettings::default().inference_budget;
    for algorithm in [Algorithm::LeastConnections, Algorithm::P2cEwma] {
        let policy = Policy::Model(algorithm);
        let run = |budget, seed| {
            let r = simulate(&eventful(11), &policy, &opts(budget, seed)).unwrap();
            serde_json::to_string(&r).unwrap()
        };
        let a = run(default_budget, None);
        assert_eq!(a, run(default_budget, None), "{policy}");
        assert_eq!(a, run(Duration::ZERO, None), "{policy}");
        assert_ne!(a, run(default_budget, Some(12)), "{policy}");
    }
}

#[test]
fn simulate_all_reports_every_policy_in_order() {
    let sc = eventful(3);
    let report = simulate_all(&sc, &Policy::BASELINES, &SimOptions::default()).unwrap();
    assert_eq!(report.mode, "sim");
    assert_eq!(report.seed, 3);
    let names: Vec<_> = report.results.iter().map(|r| r.policy.as_str()).collect();
    assert_eq!(
        names,
        [
            "round_robin",
            "weighted_round_robin",
            "least_connections",
            "p2c_ewma",
            "oracle"
        ]
    );
    let single = simulate(&sc, &Policy::P2cEwma, &SimOptions::default()).unwrap();
    assert_eq!(report.results[3], single);
    for r in &report.results {
        assert!(r.requests > 10_000, "{}: {}", r.policy, r.requests);
        let attempts: u64 = r.backends.iter().map(|b| b.requests).sum();
        assert_eq!(attempts, r.requests + r.retries, "{}", r.policy);
    }
}

/// Little's law and utilisation on a single lognormal server.
#[test]
fn littles_law_and_utilisation() {
    let b = backend("solo", 1, 10.0, 0.5);
    let mean_s = b.mean_service_ms() / 1000.0;
    let rate = 0.7 / mean_s;
    let sc = scenario(5, 200_000.0 / rate, 20.0, rate, vec![b]);
    let (out, in_flight) = run_for_test(&sc, &Policy::RoundRobin, &SimOptions::default());
    assert_eq!(in_flight, vec![0]);
    let (r, s) = (&out.result, &out.stats);
    assert!(r.requests > 190_000, "{}", r.requests);
    let lambda = s.arrivals as f64 / s.window_s;
    let little = lambda * r.mean_ms / 1000.0;
    assert!(
        (s.mean_in_system / little - 1.0).abs() < 0.03,
        "L = {} vs λW = {}",
        s.mean_in_system,
        little
    );
    let rho = rate * mean_s;
    assert!(
        (s.utilisation[0] / rho - 1.0).abs() < 0.02,
        "ρ = {} vs λE[S] = {}",
        s.utilisation[0],
        rho
    );
}

/// M/D/1 mean wait against the Pollaczek–Khinchine formula at ρ = 0.7.
#[test]
fn md1_matches_pollaczek_khinchine() {
    let service_ms = 10.0;
    let rho: f64 = 0.7;
    let rate = rho / (service_ms / 1000.0);
    let sc = scenario(
        2024,
        220_000.0 / rate,
        10.0,
        rate,
        vec![backend("d", 1, service_ms, 0.0)],
    );
    let r = simulate(&sc, &Policy::LeastConnections, &SimOptions::default()).unwrap();
    assert!(r.requests >= 200_000, "{}", r.requests);
    let wq = r.mean_ms - service_ms;
    let pk = rho * service_ms / (2.0 * (1.0 - rho));
    assert!((wq / pk - 1.0).abs() < 0.05, "Wq = {wq} ms vs P-K {pk} ms");
    assert!(r.p50_ms >= service_ms);
}

#[test]
fn oracle_beats_least_connections_beats_round_robin() {
    // As in the public suite, the operator has not encoded capacity in the weights (with
    // capacity weights, weighted least connections can edge past the greedy oracle).
    let mut sc = heterogeneous(77, 60.0, 0.85);
    for b in &mut sc.backends {
        b.weight = 1;
    }
    let opts = SimOptions::default();
    let p99 = |p: Policy| {
        let (out, in_flight) = run_for_test(&sc, &p, &opts);
        assert!(in_flight.iter().all(|&n| n == 0), "{p}: {in_flight:?}");
        assert_eq!(out.result.errors, 0, "{p}");
        out.result.p99_ms
    };
    let (oracle, lc, rr) = (
        p99(Policy::Oracle),
        p99(Policy::LeastConnections),
        p99(Policy::RoundRobin),
    );
    assert!(
        oracle <= lc && lc <= rr,
        "oracle {oracle}, lc {lc}, rr {rr}"
    );
    // Weights at true capacity take least connections most of the way to the oracle.
    let capacity = p99(Policy::CapacityOracle);
    assert!(
        capacity < lc && capacity < oracle * 1.5,
        "capacity {capacity}, oracle {oracle}, lc {lc}"
    );
}

#[test]
fn capacity_oracle_follows_a_slowdown_the_moment_it_happens() {
    let mut sc = heterogeneous(5, 60.0, 0.6);
    for b in &mut sc.backends {
        b.weight = 1;
        b.events.clear();
    }
    sc.backends[0].events.push(fulcrum_scenario::BackendEvent {
        at_s: 20.0,
        until_s: 40.0,
        slowdown: 1000.0,
        error_rate: None,
        down: false,
    });
    let opts = SimOptions::default();
    let (out, in_flight) = run_for_test(&sc, &Policy::CapacityOracle, &opts);
    assert!(in_flight.iter().all(|&n| n == 0), "{in_flight:?}");
    // Each request the slowed backend starts takes 20 s; its weight drops to a rounding
    // error at t = 20 s, so (almost) none does: nothing near the tail waits on it.
    assert!(
        out.result.p999_ms < 1000.0,
        "p99.9 {} ms",
        out.result.p999_ms
    );
    assert_eq!(out.result.errors, 0);
}

/// Refused connections are retried for every request; only idempotent requests retry 503s.
#[test]
fn retry_rules() {
    let opts = SimOptions::default();
    let run = |sc: &Scenario| {
        let (out, in_flight) = run_for_test(sc, &Policy::RoundRobin, &opts);
        assert!(in_flight.iter().all(|&n| n == 0), "{in_flight:?}");
        out.result
    };
    let two = |first: ScenarioBackend, post: f64| {
        let mut sc = scenario(9, 10.0, 0.0, 200.0, vec![first, backend("ok", 8, 5.0, 0.2)]);
        sc.load.non_idempotent_fraction = post;
        sc
    };

    // A backend that is down: every refusal is retried, GET or POST; no client errors.
    let mut down = backend("down", 8, 5.0, 0.2);
    down.events.push(BackendEvent {
        down: true,
        ..event(0.0, 10.0)
    });
    for post in [0.0, 1.0] {
        let r = run(&two(down.clone(), post));
        assert_eq!(r.errors, 0, "post fraction {post}");
        assert!(r.retries > 0, "post fraction {post}");
        assert_eq!(r.backends[0].requests, r.backends[0].errors);
        assert_eq!(r.retries, r.backends[0].requests);
    }

    // A backend that always answers 503.
    let mut failing = backend("503", 8, 5.0, 0.2);
    failing.error_rate = 1.0;
    let get = run(&two(failing.clone(), 0.0));
    assert_eq!(get.errors, 0);
    assert!(get.retries > 0);
    assert_eq!(get.retries, get.backends[0].requests);
    let post = run(&two(failing, 1.0));
    assert_eq!(post.retries, 0);
    assert!(post.errors > 0);
    assert_eq!(post.errors, post.backends[0].requests);
    assert_eq!(post.backends[1].errors, 0);

    // Everything down: each request fails after at most 1 + retries attempts.
    let sc = scenario(9, 5.0, 0.0, 100.0, vec![down.clone(), down.clone(), down]);
    let r = run(&sc);
    assert_eq!(r.errors, r.requests);
    let attempts: u64 = r.backends.iter().map(|b| b.requests).sum();
    assert!(attempts <= 3 * r.requests);
    assert!(r.retries > 0);
}

/// An outage is detected (passively and by health checks) and the backend is re-admitted by
/// the health checker once it is back.
#[test]
fn outage_and_recovery() {
    let mut sc = scenario(
        4,
        30.0,
        0.0,
        400.0,
        vec![backend("a", 8, 5.0, 0.2), backend("b", 8, 5.0, 0.2)],
    );
    sc.backends[0].events.push(BackendEvent {
        down: true,
        ..event(10.0, 20.0)
    });
    let r = simulate(&sc, &Policy::RoundRobin, &SimOptions::default()).unwrap();
    assert_eq!(r.errors, 0);
    let tl = &r.share_timeline;
    let share_at = |t: f64| tl.shares[((t - tl.start_s) / tl.bucket_s) as usize][0];
    assert!((share_at(5.0) - 0.5).abs() < 0.05);
    assert!(share_at(15.0) < 0.01, "{}", share_at(15.0));
    assert!((share_at(25.0) - 0.5).abs() < 0.05, "{}", share_at(25.0));
}

struct CountingController {
    ticks: Rc<Cell<u32>>,
}

impl WeightController for CountingController {
    fn tick(&mut self, pool: &Pool, observations: &[BackendObservation], _now_ns: u64) {
        self.ticks.set(self.ticks.get() + 1);
        assert_eq!(observations.len(), pool.backends().len());
        // Starve the first backend.
        pool.set_weights(vec![0.0, 1.0]).unwrap();
    }
}

#[test]
fn model_policies_need_a_controller() {
    let sc = scenario(
        1,
        10.0,
        0.0,
        100.0,
        vec![backend("a", 4, 5.0, 0.1), backend("b", 4, 5.0, 0.1)],
    );
    let policy: Policy = "least_connections+model".parse().unwrap();
    let err = simulate(&sc, &policy, &SimOptions::default()).unwrap_err();
    assert!(matches!(err, SimError::NeedsModel { .. }));
    assert!(err
        .to_string()
        .contains("the +model policies need the control loop's model"));

    thread_local! {
        static TICKS: Rc<Cell<u32>> = Rc::new(Cell::new(0));
    }
    let opts = SimOptions {
        weight_controller: Some(Arc::new(|_: &Scenario| {
            Box::new(CountingController {
                ticks: TICKS.with(Rc::clone),
            }) as Box<dyn WeightController>
        })),
        ..SimOptions::default()
    };
    let r = simulate(&sc, &policy, &opts).unwrap();
    assert_eq!(TICKS.with(|t| t.get()), 20);
    assert_eq!(r.policy, "least_connections+model");
    // Only the first tick's window reaches backend a.
    assert!(r.backends[0].requests < r.backends[1].requests / 10);
    // Every +model policy needs it.
    let base = simulate(
        &sc,
        &Policy::Model(Algorithm::RoundRobin),
        &SimOptions::default(),
    );
    assert!(base.is_err());
}

#[test]
fn invalid_scenarios_are_rejected() {
    let opts = SimOptions::default();
    let empty = scenario(1, 10.0, 0.0, 10.0, vec![]);
    assert!(matches!(
        simulate(&empty, &Policy::RoundRobin, &opts),
        Err(SimError::Invalid(_))
    ));
    let zero = scenario(1, 10.0, 0.0, 10.0, vec![backend("z", 0, 1.0, 0.0)]);
    assert!(simulate(&zero, &Policy::RoundRobin, &opts).is_err());
    let warm = scenario(1, 10.0, 10.0, 10.0, vec![backend("a", 1, 1.0, 0.0)]);
    assert!(simulate(&warm, &Policy::RoundRobin, &opts).is_err());
}

/// N proxies share the backends: the same arrivals reach them in turn, each has its own control
/// loop ticking 1/N of a period after the previous one, and every lease of every proxy ends.
#[test]
fn replicas_share_the_backends_each_with_its_own_loop() {
    let sc = scenario(
        3,
        10.0,
        0.0,
        200.0,
        vec![backend("a", 2, 5.0, 0.2), backend("b", 2, 5.0, 0.2)],
    );
    let (one, _) = run_for_test(&sc, &Policy::LeastConnections, &SimOptions::default());
    let four = SimOptions {
        replicas: 4,
        ..SimOptions::default()
    };
    let (out, in_flight) = run_for_test(&sc, &Policy::LeastConnections, &four);
    assert_eq!(in_flight, vec![0, 0], "a lease outlived its attempt");
    assert_eq!(
        out.stats.arrivals, one.stats.arrivals,
        "the arrivals differ"
    );
    assert_eq!(out.result.requests, one.result.requests);

    thread_local! {
        static LOOPS: Rc<Cell<u32>> = Rc::new(Cell::new(0));
    }
    let opts = SimOptions {
        replicas: 3,
        weight_controller: Some(Arc::new(|_: &Scenario| {
            LOOPS.with(|l| l.set(l.get() + 1));
            Box::new(CountingController {
                ticks: Rc::new(Cell::new(0)),
            }) as Box<dyn WeightController>
        })),
        ..SimOptions::default()
    };
    let policy: Policy = "least_connections+model".parse().unwrap();
    let mut ticks: Vec<Vec<f64>> = vec![Vec::new(); 3];
    crate::simulate_detailed(&sc, &policy, &opts, &mut |t| ticks[t.replica].push(t.t_s)).unwrap();
    assert_eq!(LOOPS.with(|l| l.get()), 3, "one control loop per replica");
    let period = opts.tick_ms as f64 / 1000.0;
    for (r, times) in ticks.iter().enumerate() {
        let first = period + period / 3.0 * r as f64;
        assert!(
            (times[0] - first).abs() < 1e-6,
            "replica {r} first ticks at {}",
            times[0]
        );
        assert!(
            times.len() >= 19,
            "replica {r} ticked {} times",
            times.len()
        );
    }

    let none = SimOptions {
        replicas: 0,
        ..SimOptions::default()
    };
    assert!(matches!(
        simulate(&sc, &Policy::RoundRobin, &none),
        Err(SimError::Invalid(_))
    ));
}
