//! Several fulcrum replicas sharing the same backends, as the pods of a Kubernetes Deployment
//! do: every scenario of the public suite, the offered load split evenly over N proxies
//! (N = 1, 2, 4, 8), each with its own pickers, statistics, health checker and control loop,
//! ticking out of phase. Prints, per scenario, policy and N: p99 and errors against one proxy,
//! and how the weights move:
//!
//! - swing: the mean share of traffic a replica's weights move from one of its ticks to the
//!   next (total variation distance of the weight shares, %);
//! - spread: the mean distance between a replica's shares and the replicas' average right after
//!   its tick (%), i.e. how much the replicas disagree;
//! - herd: the mean correlation of successive weight changes between replicas on the same
//!   backend (1: all replicas move a backend's weight the same way at once, 0: independent).
//!
//! `cargo run --release -p fulcrum-sim --example replicas > benches/results/replicas.md`
//! (from the repository root, with ONNX Runtime in `.venv` for the `+model` policies).

use std::path::{Path, PathBuf};

use fulcrum_control::ControlSettings;
use fulcrum_scenario::{load_scenario, Scenario};
use fulcrum_sim::control::{loop_factory, ScorerSource};
use fulcrum_sim::{simulate_detailed, Policy, SimOptions, TickSnapshot};

const SCENARIOS: [&str; 6] = [
    "homogeneous",
    "heterogeneous",
    "one-slow-backend",
    "fast-failing",
    "transient-degradation",
    "load-ramp",
];
const POLICIES: [&str; 4] = [
    "least_connections",
    "p2c_ewma",
    "least_connections+model",
    "p2c_ewma+model",
];
const REPLICAS: [u32; 4] = [1, 2, 4, 8];

/// Weight movement of one run.
#[derive(Default)]
struct Movement {
    /// Per replica, its shares after its last tick.
    last: Vec<Option<Vec<f64>>>,
    /// Per replica, its change of shares at its last tick.
    last_change: Vec<Option<Vec<f64>>>,
    swing: Vec<f64>,
    spread: Vec<f64>,
    herd: Vec<f64>,
}

fn shares(weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    if total > 0.0 {
        weights.iter().map(|w| w / total).collect()
    } else {
        vec![0.0; weights.len()]
    }
}

/// Half the L1 distance: the share of traffic that moves from one split to the other.
fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
}

/// Pearson correlation of two change vectors; `None` when either does not move.
fn correlation(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 1e-12 && vb > 1e-12).then(|| cov / (va * vb).sqrt())
}

impl Movement {
    fn new(replicas: usize) -> Self {
        Movement {
            last: vec![None; replicas],
            last_change: vec![None; replicas],
            ..Movement::default()
        }
    }

    fn tick(&mut self, t: &TickSnapshot<'_>, warmup_s: f64) {
        let now = shares(t.pool.weights().weights());
        let r = t.replica;
        let change = self.last[r]
            .as_ref()
            .map(|prev| now.iter().zip(prev).map(|(a, b)| a - b).collect::<Vec<_>>());
        if t.t_s >= warmup_s {
            if let Some(prev) = &self.last[r] {
                self.swing.push(distance(&now, prev));
            }
            let others: Vec<&Vec<f64>> = self.last.iter().flatten().collect();
            if self.last.len() > 1 && others.len() == self.last.len() {
                let mean: Vec<f64> = (0..now.len())
                    .map(|b| others.iter().map(|s| s[b]).sum::<f64>() / others.len() as f64)
                    .collect();
                self.spread.push(distance(&now, &mean));
            }
            if let Some(c) = &change {
                for (o, other) in self.last_change.iter().enumerate() {
                    if o == r {
                        continue;
                    }
                    if let Some(corr) = other.as_ref().and_then(|oc| correlation(c, oc)) {
                        self.herd.push(corr);
                    }
                }
            }
        }
        self.last[r] = Some(now);
        self.last_change[r] = change;
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |x| format!("{:.2}", x * 100.0))
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/balancer.onnx");
    let factory = loop_factory(
        ScorerSource::Model(PathBuf::from(&model)),
        ControlSettings::default(),
    )
    .unwrap_or_else(|e| panic!("the model {} does not load: {e}", model.display()));
    println!("# Many replicas sharing the backends (simulator)\n");
    println!(
        "Each scenario of the public suite with its load split evenly over N proxies that share \
         the backends; each proxy has its own pickers, statistics, health checker and control \
         loop (model `models/balancer.onnx`), ticking 1/N of a period apart. p99 ×: against \
         N = 1 of the same policy. swing: traffic share a replica's weights move per tick (%). \
         spread: distance of a replica's shares from the replicas' mean (%). herd: mean \
         correlation of two replicas' successive weight changes (1: they move together).\n"
    );
    println!("Reproduce: `cargo run --release -p fulcrum-sim --example replicas`\n");
    for name in SCENARIOS {
        let path = root.join(format!("benches/scenarios/{name}.toml"));
        let (scenario, _): (Scenario, _) = load_scenario(&path).unwrap_or_else(|d| panic!("{d}"));
        println!("## {name}\n");
        println!("| policy | N | p99 ms | p99 × | errors % | swing % | spread % | herd |");
        println!("|---|---|---|---|---|---|---|---|");
        for policy in POLICIES {
            let policy: Policy = policy.parse().unwrap();
            let mut single_p99 = None;
            for n in REPLICAS {
                let opts = SimOptions {
                    replicas: n,
                    weight_controller: Some(factory.clone()),
                    ..SimOptions::default()
                };
                let mut movement = Movement::new(n as usize);
                let warmup = scenario.warmup_s;
                let out =
                    simulate_detailed(&scenario, &policy, &opts, &mut |t| movement.tick(t, warmup))
                        .unwrap_or_else(|e| panic!("{name} {policy} N={n}: {e}"));
                let p99 = out.result.p99_ms;
                let base = *single_p99.get_or_insert(p99);
                let model = policy.needs_model();
                println!(
                    "| {policy} | {n} | {p99:.1} | {:.2} | {:.2} | {} | {} | {} |",
                    p99 / base,
                    out.result.error_rate * 100.0,
                    if model {
                        pct(mean(&movement.swing))
                    } else {
                        "–".into()
                    },
                    if model && n > 1 {
                        pct(mean(&movement.spread))
                    } else {
                        "–".into()
                    },
                    if model && n > 1 {
                        mean(&movement.herd).map_or("–".into(), |h| format!("{h:.2}"))
                    } else {
                        "–".into()
                    },
                );
            }
        }
        println!();
    }
}
