//! One control tick for a pool: observe + features + inference + guardrails + weight swap.
//!
//! `cargo bench -p fulcrum-control --bench tick` (ONNX Runtime from the project's .venv; the
//! model is models/balancer.onnx, or the test fixture when it has not been built yet).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum_balance::{Algorithm, Backend, Outcome, Pool};
use fulcrum_control::model::{runtime, OnnxModel};
use fulcrum_control::{ControlSettings, Heuristic, PoolController, Scorer, TickObserver};

fn pool(n: usize) -> Pool {
    let backends = (0..n)
        .map(|i| {
            Backend::new(
                format!("10.0.{}.{}:80", i / 250, i % 250).parse().unwrap(),
                1 + (i % 4) as u32,
            )
        })
        .collect();
    Pool::new(
        "bench",
        Algorithm::LeastConnections,
        backends,
        Duration::from_secs(10),
        5,
    )
}

fn traffic(pool: &Pool, now: u64) {
    for i in 0..pool.backends().len() {
        for k in 0..8u64 {
            let outcome = if (i + k as usize).is_multiple_of(50) {
                Outcome::ServerError
            } else {
                Outcome::Success
            };
            pool.record(
                i,
                1_000_000 + (i as u64 % 7) * 300_000 + k * 10_000,
                outcome,
                now,
            );
        }
    }
}

fn model_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shipped = root.join("models/balancer.onnx");
    if shipped.is_file() {
        shipped
    } else {
        root.join("crates/control/tests/fixtures/prefer_low_p99.onnx")
    }
}

fn bench_tick(c: &mut Criterion) {
    let env = runtime(None).expect("ONNX Runtime (scripts/setup.sh installs it into .venv)");
    let path = model_path();
    let mut group = c.benchmark_group("control_tick");
    for n in [100usize, 1000] {
        for kind in ["model", "heuristic"] {
            let pool = pool(n);
            let mut now = 1_000_000_000u64;
            traffic(&pool, now);
            let mut observer = TickObserver::new(&pool, now);
            let mut controller = PoolController::new(&pool, ControlSettings::default(), now);
            let mut scorer = if kind == "model" {
                Scorer::Model(OnnxModel::load(env, &path).unwrap())
            } else {
                Scorer::Heuristic(Heuristic::default())
            };
            group.bench_function(BenchmarkId::new(kind, n), |b| {
                b.iter(|| {
                    now += 500_000_000;
                    let obs = observer.observe(&pool, now);
                    controller.tick(&pool, &obs, &mut scorer, now)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_tick);
criterion_main!(benches);
