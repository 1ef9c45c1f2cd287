//! One forecast step of an autoscaled pool: read its counters, forecast 60/300/900 s and the
//! provisioning horizon with the built-in forecaster on a ring of 1,000 / 8,640 / 17,280 steps
//! (the longest ring the proxy keeps), estimate the capacity, recommend.
//!
//! `cargo bench -p fulcrum-control --bench demand -- --warm-up-time 1 --measurement-time 5`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum_balance::{Algorithm, Backend, Outcome, Pool};
use fulcrum_control::demand::{DemandSettings, PoolDemand, StepObservation};
use fulcrum_forecast::Sizing;

fn settings() -> DemandSettings {
    DemandSettings {
        step_s: 10.0,
        horizon_s: 120.0,
        sizing: Sizing {
            target_utilization: 0.7,
            min_backends: 1,
            max_backends: 100,
        },
        backend_capacity_rps: None,
        scale_down_stabilization_s: 300.0,
        spare_backends: 0,
        burst_spare_backends: 0,
        burst_memory_s: 3600.0,
    }
}

/// A daily cycle (8,640 steps of 10 s) with a deterministic wobble.
fn rate(i: usize) -> f64 {
    let day = (i as f64 * std::f64::consts::TAU / 8640.0).sin();
    400.0 + 200.0 * day + ((i * 7919) % 23) as f64
}

fn bench_step(c: &mut Criterion) {
    let pool = Pool::new(
        "bench",
        Algorithm::LeastConnections,
        (0..8)
            .map(|i| Backend::new(format!("10.0.0.{i}:80").parse().unwrap(), 1))
            .collect(),
        Duration::from_secs(10),
        5,
    );
    let mut group = c.benchmark_group("demand_step");
    group.sample_size(20);
    for steps in [1_000usize, 8_640, 17_280] {
        let mut demand = PoolDemand::new(&pool, settings(), 0);
        for i in 0..steps {
            demand.record(
                StepObservation {
                    rate_rps: rate(i),
                    mean_latency_ms: Some(5.0),
                    backends: 8,
                    healthy: 8,
                    ..StepObservation::default()
                },
                None,
            );
        }
        let mut now = 0u64;
        group.bench_with_input(BenchmarkId::new("builtin", steps), &steps, |b, _| {
            b.iter(|| {
                for i in 0..8 {
                    pool.record(i, 5_000_000, Outcome::Success, now);
                }
                now += 10_000_000_000;
                demand.step(&pool, now, None).recommended_backends
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
