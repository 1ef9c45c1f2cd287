//! Per-pick cost of every algorithm at 10 and 100 backends (least connections and round robin
//! also at 1,000), least connections' exact scan against its sampled path across pool sizes,
//! plus weight-table build and swap.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum_balance::{
    new_picker, Algorithm, Backend, InFlightGuard, LeastConnections, Outcome, Picker, Pool, Tried,
    WeightTable,
};

const NOW: u64 = 60_000_000_000;

/// A pool with realistic live state: mixed weights, 1–8 requests in flight per backend,
/// EWMA samples of 1–5 ms recorded at various ages, one backend in ten down.
fn loaded_pool(alg: Algorithm, n: usize) -> (Arc<Pool>, Vec<InFlightGuard>) {
    loaded_pool_with(alg, n, new_picker(alg))
}

/// [`loaded_pool`] with an explicit picker.
fn loaded_pool_with(
    alg: Algorithm,
    n: usize,
    picker: Box<dyn Picker>,
) -> (Arc<Pool>, Vec<InFlightGuard>) {
    let backends = (0..n)
        .map(|i| {
            Backend::new(
                format!("10.0.{}.{}:8080", i / 250, i % 250)
                    .parse()
                    .unwrap(),
                1 + (i as u32 % 3),
            )
        })
        .collect();
    let pool = Arc::new(Pool::with_picker(
        "bench",
        alg,
        backends,
        Duration::from_secs(10),
        5,
        picker,
    ));
    let mut held = Vec::new();
    for i in 0..n {
        let lat = 1_000_000 + (i as u64 * 7919 % 4_000_000);
        pool.record(
            i,
            lat,
            Outcome::Success,
            NOW - (i as u64 % 5) * 1_000_000_000,
        );
        for _ in 0..1 + (i * 5) % 8 {
            held.push(pool.lease(i));
        }
        if i % 10 == 9 {
            pool.backends()[i].stats.set_healthy(false);
        }
    }
    (pool, held)
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for (name, alg) in [
        ("round_robin", Algorithm::RoundRobin),
        ("weighted_round_robin", Algorithm::WeightedRoundRobin),
        ("least_connections", Algorithm::LeastConnections),
        ("p2c_ewma", Algorithm::P2cEwma),
    ] {
        let sizes: &[usize] = match alg {
            Algorithm::LeastConnections | Algorithm::RoundRobin => &[10, 100, 1000],
            _ => &[10, 100],
        };
        for &n in sizes {
            let (pool, _held) = loaded_pool(alg, n);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| pool.pick(black_box(Tried::new()), black_box(NOW)))
            });
        }
    }
    group.finish();

    // Least connections with the path forced: the exact scan (the baseline and the picker's
    // behaviour at or below `EXACT_MAX`) against the sampled path, to place the threshold.
    let mut group = c.benchmark_group("least_connections_path");
    for (name, exact_max) in [("exact", usize::MAX), ("sampled", 0)] {
        for n in [4, 8, 16, 32, 64, 100, 1000] {
            let picker = Box::new(LeastConnections::with_exact_max(exact_max));
            let (pool, _held) = loaded_pool_with(Algorithm::LeastConnections, n, picker);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| pool.pick(black_box(Tried::new()), black_box(NOW)))
            });
        }
    }
    group.finish();
}

fn weights(c: &mut Criterion) {
    let w: Vec<f64> = (0..100).map(|i| 1.0 + (i % 7) as f64 * 0.37).collect();
    c.bench_function("weight_table_new/100", |b| {
        b.iter(|| WeightTable::new(black_box(w.clone())))
    });
    let (pool, _held) = loaded_pool(Algorithm::WeightedRoundRobin, 100);
    c.bench_function("pool_set_weights/100", |b| {
        b.iter(|| pool.set_weights(black_box(w.clone())).unwrap())
    });
}

criterion_group!(benches, pick, weights);
criterion_main!(benches);
