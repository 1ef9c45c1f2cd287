//! Simulated requests per second: a 4-backend pool at 80 % load, every baseline policy.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fulcrum_scenario::{Load, Scenario, ScenarioBackend};
use fulcrum_sim::{simulate, Policy, SimOptions};

fn scenario() -> Scenario {
    let backends = (0..4)
        .map(|i| ScenarioBackend {
            name: format!("b{i}"),
            concurrency: 8,
            service_ms: 2.0 * (1.0 + 0.25 * f64::from(i)),
            service_jitter: 0.3,
            error_rate: 0.001,
            error_ms: 1.0,
            weight: 1,
            events: Vec::new(),
        })
        .collect();
    let mut sc = Scenario {
        name: "bench".into(),
        description: "4 backends at 80 % load".into(),
        seed: 42,
        duration_s: 10.0,
        warmup_s: 0.0,
        load: Load {
            rate_rps: 0.0,
            steps: Vec::new(),
            non_idempotent_fraction: 0.1,
            diurnal: None,
            bursts: Vec::new(),
        },
        backends,
        autoscale: None,
        slo: None,
    };
    sc.load.rate_rps = 0.8 * sc.capacity_rps_at(0.0);
    sc
}

fn bench(c: &mut Criterion) {
    let sc = scenario();
    let opts = SimOptions::default();
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10);
    for policy in Policy::BASELINES {
        let requests = simulate(&sc, &policy, &opts).unwrap().requests;
        group.throughput(Throughput::Elements(requests));
        group.bench_function(policy.to_string(), |b| {
            b.iter(|| black_box(simulate(black_box(&sc), &policy, &opts).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
