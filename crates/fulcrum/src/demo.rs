//! `fulcrum demo`: a small story played for real on loopback, to watch the model at work.
//!
//! Uneven backends (the lab's scenario backends, from `config/demo-scenario.toml`: two at full
//! capacity, one with a third of it, one 4× slower for 20 s of every minute) listen on the
//! configuration's backend addresses; the lab's open-loop generator offers a steady Poisson
//! load to the proxy; the proxy runs in this process on the demo configuration (weights tuned
//! by the model, or with `--static` least connections over static weights). Every few seconds
//! one line per backend shows its weight, share and p99, read from the admin API the status
//! page reads. Ctrl-C ends the process and everything in it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_config::{Algorithm, Config, WeightSource};
use fulcrum_lab::harness;
use fulcrum_lab::loadgen::{self, LoadGenConfig, LoadStats};
use fulcrum_proxy::{ConfigSource, Start};
use fulcrum_scenario::{Scenario, ScenarioBackend};
use fulcrum_testbed::scenario::{LabClock, ScenarioServer};

/// The demo's configuration: four backends, weights tuned by the model.
const MODEL_CONFIG: &str = include_str!("../../../config/demo.toml");
/// The same story with least connections over static weights, on other ports.
const STATIC_CONFIG: &str = include_str!("../../../config/demo-static.toml");
/// The backends' behaviour and the offered load, replayed every `duration_s`.
const SCENARIO: &str = include_str!("../../../config/demo-scenario.toml");

/// How often the terminal shows the backends.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// `fulcrum demo` options.
#[derive(Debug, Default, clap::Args)]
pub struct DemoArgs {
    /// Least connections over static weights instead of the model (config/demo-static.toml:
    /// proxy :8081, admin :9901, so it can run beside the model demo).
    #[arg(long = "static")]
    static_weights: bool,
    /// Offered load in requests per second (default: the scenario's, 450).
    #[arg(long)]
    rate: Option<f64>,
}

/// Every backend address of every pool once, in configuration order: a backend shared by
/// two pools, listed anywhere in either, gets one demo server, since binding twice fails.
pub fn backend_addrs(config: &Config) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    config
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(|b| b.addr))
        .filter(|a| seen.insert(*a))
        .collect()
}

/// The configuration to run: `-c FILE` (with `--static`, its pools switched to least
/// connections over static weights) or the embedded demo configuration.
fn demo_config(
    path: Option<&PathBuf>,
    args: &DemoArgs,
) -> Result<(Config, ConfigSource), ExitCode> {
    let (mut config, source) = match path {
        Some(_) => super::load(path)?,
        None => {
            let (text, name) = if args.static_weights {
                (STATIC_CONFIG, "config/demo-static.toml (embedded)")
            } else {
                (MODEL_CONFIG, "config/demo.toml (embedded)")
            };
            (
                super::report(fulcrum_config::parse(text, name))?,
                ConfigSource::Embedded,
            )
        }
    };
    if path.is_some() && args.static_weights {
        for pool in &mut config.pools {
            pool.algorithm = Algorithm::LeastConnections;
            pool.weights = WeightSource::Static;
        }
        eprintln!(
            "fulcrum demo: --static: every pool runs least_connections over its static weights \
             (a reload re-reads the file as written)"
        );
    }
    locate_model(&mut config);
    Ok((config, source))
}

/// A relative model path that is not below the working directory is looked for above it and
/// above the binary (target/release/fulcrum sits below the repository), so the demo finds the
/// shipped model from any directory of the repository.
fn locate_model(config: &mut Config) {
    let model = &config.control.model;
    if model.is_absolute() || model.is_file() {
        return;
    }
    let starts = [std::env::current_dir().ok(), std::env::current_exe().ok()];
    let found = starts.into_iter().flatten().find_map(|start| {
        start
            .ancestors()
            .map(|dir| dir.join(model))
            .find(|p| p.is_file())
    });
    if let Some(p) = found {
        config.control.model = p;
    }
}

/// An address to reach a listener at: its own, or loopback for an unspecified one.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// What backend `i` of the story plays, in words.
fn role(b: &ScenarioBackend, full: f64) -> String {
    let cap = b.capacity_rps_at(0.0);
    let mut words = if (cap - full).abs() < 0.05 * full {
        "full capacity".to_string()
    } else if (cap * 3.0 - full).abs() < 0.05 * full {
        "a third of the capacity".to_string()
    } else {
        format!("{:.0} % of the capacity", 100.0 * cap / full)
    };
    for e in &b.events {
        if e.slowdown > 1.0 {
            words.push_str(&format!(
                ", {}× slower {:.0}–{:.0} s",
                e.slowdown, e.at_s, e.until_s
            ));
        }
    }
    words
}

/// Run the demo: backends and load on a runtime of their own, the proxy on this thread.
pub fn run(path: Option<&PathBuf>, args: DemoArgs) -> ExitCode {
    let (config, source) = match demo_config(path, &args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut scenario = match super::report(fulcrum_scenario::parse_scenario(
        SCENARIO,
        "config/demo-scenario.toml (embedded)",
    )) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return super::fail(format!("--rate must be a positive number, got {rate}"));
        }
        scenario.load.rate_rps = rate;
        scenario.load.steps.clear();
    }
    let addrs = backend_addrs(&config);
    let story: Vec<ScenarioBackend> = (0..addrs.len())
        .map(|i| scenario.backends[i % scenario.backends.len()].clone())
        .collect();
    let listen = reachable(config.server.listen[0]);
    let admin = reachable(config.admin.listen);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread_story = story.clone();
    let thread_addrs = addrs.clone();
    let spawned = std::thread::Builder::new()
        .name("fulcrum-demo".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let clock = LabClock::new(1.0);
                let mut servers = Vec::with_capacity(thread_addrs.len());
                for (i, (addr, b)) in thread_addrs.iter().zip(&thread_story).enumerate() {
                    let seed = fulcrum_scenario::rng::stream_seed(
                        scenario.seed,
                        fulcrum_scenario::rng::Stream::Backend(i),
                    );
                    match ScenarioServer::start(b, *addr, seed, clock).await {
                        Ok(s) => servers.push(s),
                        Err(e) => {
                            let _ = ready_tx
                                .send(Err(std::io::Error::new(e.kind(), format!("{addr}: {e}"))));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                play(scenario, servers, listen, admin).await;
            });
        });
    if let Err(e) = spawned {
        return super::fail(format!("cannot start the demo thread: {e}"));
    }
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return super::fail(format!("demo: cannot start the demo backends: {e}"));
        }
        Err(_) => return ExitCode::from(1),
    }
    let full = story
        .iter()
        .map(|b| b.capacity_rps_at(0.0))
        .fold(0.0, f64::max);
    let mut intro = String::from("fulcrum demo: backends\n");
    for (addr, b) in addrs.iter().zip(&story) {
        intro.push_str(&format!("  {addr:<21} {:<8} {}\n", b.name, role(b, full)));
    }
    intro.push_str(&format!(
        "  load:   {:.0} requests/s, open loop (Poisson arrivals)\n  try:    curl http://{listen}/\n  \
         status: http://{admin}/\n  api:    curl http://{admin}/api/pools\n  stop:   Ctrl-C",
        scenario_rate(args.rate)
    ));
    println!("{intro}");
    super::run(config, source, Start::Fresh)
}

/// The offered rate the demo runs at.
fn scenario_rate(rate: Option<f64>) -> f64 {
    rate.unwrap_or_else(|| {
        fulcrum_scenario::parse_scenario(SCENARIO, "demo")
            .map(|(s, _)| s.load.rate_rps)
            .unwrap_or(0.0)
    })
}

/// Wait for the proxy, then replay the scenario's minute forever and report every few seconds.
async fn play(
    scenario: Scenario,
    servers: Vec<ScenarioServer>,
    listen: SocketAddr,
    admin: SocketAddr,
) {
    let up = harness::eventually(Duration::from_secs(30), || async {
        harness::get(admin, "/healthz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    if up.is_none() {
        eprintln!("fulcrum demo: the proxy's admin port {admin} did not answer; no load sent");
        return;
    }
    let stats = Arc::new(LoadStats::default());
    let names: Vec<String> = servers.iter().map(|s| s.name().to_string()).collect();
    let first = LabClock::new(1.0);
    tokio::spawn(report(
        admin,
        servers.iter().map(|s| s.backend().clone()).collect(),
        first,
        scenario.duration_s,
        stats.clone(),
    ));
    let mut clock = first;
    for cycle in 0u64.. {
        for s in &servers {
            s.set_clock(clock);
        }
        let cfg = LoadGenConfig {
            target: listen,
            load: scenario.load.clone(),
            duration_s: scenario.duration_s,
            clock,
            backend_names: names.clone(),
            seed: scenario.seed.wrapping_add(cycle),
            drain_timeout: fulcrum_lab::DRAIN_TIMEOUT,
            max_connections: None,
        };
        let stats = stats.clone();
        // Each minute's requests finish on their own task while the next minute starts.
        tokio::spawn(async move {
            drop(loadgen::run(&cfg, stats).await);
        });
        let next = clock.wall_at(scenario.duration_s);
        tokio::time::sleep_until(next.into()).await;
        clock = LabClock {
            start: next,
            time_scale: 1.0,
        };
    }
}

/// One backend in `/api/pools`, the fields the terminal shows.
#[derive(Debug, serde::Deserialize)]
struct Backend {
    addr: String,
    healthy: bool,
    weight: f64,
    requests: u64,
    p99_ms: Option<f64>,
}

/// One pool in `/api/pools`.
#[derive(Debug, serde::Deserialize)]
struct Pool {
    name: String,
    weights: String,
    backends: Vec<Backend>,
}

/// The model's state in `/api/pools`.
#[derive(Debug, serde::Deserialize)]
struct Model {
    loaded: bool,
    path: String,
    schema: String,
    error: Option<String>,
}

/// `/api/pools`.
#[derive(Debug, serde::Deserialize)]
struct Pools {
    pools: Vec<Pool>,
    model: Model,
}

async fn read_pools(admin: SocketAddr) -> Result<Pools, String> {
    let r = harness::get(admin, "/api/pools")
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!(
            "/api/pools answered {}: {}",
            r.status,
            r.body.trim()
        ));
    }
    serde_json::from_str(&r.body).map_err(|e| e.to_string())
}

/// Say once what tunes the weights, honestly, then print the backends every few seconds.
async fn report(
    admin: SocketAddr,
    story: Vec<ScenarioBackend>,
    clock: LabClock,
    cycle_s: f64,
    stats: Arc<LoadStats>,
) {
    let mut said_model = false;
    let mut last: Option<(Instant, Vec<u64>, u64, u64)> = None;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tick.tick().await;
        let pools = match read_pools(admin).await {
            Ok(p) => p,
            Err(e) => {
                println!("fulcrum demo: cannot read the admin API: {e}");
                continue;
            }
        };
        let Some(pool) = pools.pools.first() else {
            continue;
        };
        if !said_model {
            said_model = true;
            println!(
                "{}",
                describe_model(
                    &pools.model,
                    pools.pools.iter().any(|p| p.weights == "model")
                )
            );
        }
        let now = Instant::now();
        let requests: Vec<u64> = pool.backends.iter().map(|b| b.requests).collect();
        let (done, errors) = (stats.completed(), stats.errors());
        let Some((then, before, done_before, errors_before)) =
            last.replace((now, requests.clone(), done, errors))
        else {
            continue;
        };
        let dt = now.duration_since(then).as_secs_f64().max(1e-9);
        let deltas: Vec<u64> = requests
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let total: u64 = deltas.iter().sum();
        let t = clock.scenario_time();
        let minute_t = t % cycle_s;
        println!(
            "\n[{t:>5.0} s] pool {} · weights {} · {:.0} answered/s · client errors {} · status http://{admin}/",
            pool.name,
            pool.weights,
            (done - done_before) as f64 / dt,
            errors - errors_before,
        );
        println!(
            "  {:<21} {:<8} {:>7} {:>7} {:>8}",
            "backend", "", "weight", "share", "p99 ms"
        );
        for (i, b) in pool.backends.iter().enumerate() {
            let role = story.get(i);
            let share = if total > 0 {
                format!("{:.1} %", 100.0 * deltas[i] as f64 / total as f64)
            } else {
                "–".to_string()
            };
            let p99 = b.p99_ms.map_or("–".to_string(), |v| format!("{v:.1}"));
            let mut note = String::new();
            if !b.healthy {
                note.push_str("  DOWN");
            }
            if role.is_some_and(|r| r.state_at(minute_t).slowdown > 1.0) {
                note.push_str("  ← slow now");
            }
            println!(
                "  {:<21} {:<8} {:>7.2} {:>7} {:>8}{note}",
                b.addr,
                role.map_or("", |r| r.name.as_str()),
                b.weight,
                share,
                p99
            );
        }
    }
}

/// What tunes the weights, in words: the model, or why not and what runs instead.
fn describe_model(model: &Model, any_model_pool: bool) -> String {
    if !any_model_pool {
        return "fulcrum demo: static weights, least connections (no model)".to_string();
    }
    if model.loaded {
        return format!(
            "fulcrum demo: weights tuned by the ONNX model {} (schema {}) under ONNX Runtime",
            model.path, model.schema
        );
    }
    format!(
        "fulcrum demo: THE MODEL IS NOT LOADED: {}\n  The built-in heuristic tunes the weights instead, \
         not the shipped model. To run the model, install ONNX Runtime into .venv with \
         scripts/setup.sh build, or set ORT_DYLIB_PATH to a libonnxruntime.so, and start the demo \
         from the repository (the model file is {}).",
        model.error.as_deref().unwrap_or("no reason given"),
        model.path
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addrs_are_unique_in_configuration_order() {
        let source = r#"
[server]
listen = ["127.0.0.1:8080"]

[[routes]]
path_prefix = "/a"
pool = "a"

[[routes]]
path_prefix = "/b"
pool = "b"

[pools.a]
[[pools.a.backends]]
addr = "127.0.0.1:9002"
[[pools.a.backends]]
addr = "127.0.0.1:9001"

[pools.b]
[[pools.b.backends]]
addr = "127.0.0.1:9003"
[[pools.b.backends]]
addr = "127.0.0.1:9002"
"#;
        let (config, _) = fulcrum_config::parse(source, "test.toml").unwrap();
        let addrs: Vec<String> = backend_addrs(&config)
            .iter()
            .map(|a| a.to_string())
            .collect();
        // 9002 is not adjacent to its repeat, which `dedup` alone would keep twice.
        assert_eq!(
            addrs,
            ["127.0.0.1:9002", "127.0.0.1:9001", "127.0.0.1:9003"]
        );
    }

    #[test]
    fn embedded_demo_files_are_valid_and_tell_one_story() {
        let (model, _) = fulcrum_config::parse(MODEL_CONFIG, "demo.toml").unwrap();
        let (stat, _) = fulcrum_config::parse(STATIC_CONFIG, "demo-static.toml").unwrap();
        let (scenario, _) = fulcrum_scenario::parse_scenario(SCENARIO, "demo").unwrap();
        assert_eq!(model.pools[0].weights, WeightSource::Model);
        assert!(
            model.pools[0].autoscale.is_some(),
            "the demo shows a recommendation"
        );
        assert_eq!(stat.pools[0].weights, WeightSource::Static);
        assert_eq!(model.pools[0].algorithm, stat.pools[0].algorithm);
        // One backend per role, and the two demos can run side by side.
        assert_eq!(backend_addrs(&model).len(), scenario.backends.len());
        assert_eq!(backend_addrs(&stat).len(), scenario.backends.len());
        let ports = |c: &Config| {
            let mut p: Vec<u16> = backend_addrs(c).iter().map(|a| a.port()).collect();
            p.push(c.server.listen[0].port());
            p.push(c.admin.listen.port());
            p
        };
        let theirs = ports(&stat);
        assert!(ports(&model).iter().all(|p| !theirs.contains(p)));
        // The story: a third of the capacity, and a backend that slows down every minute.
        let full = scenario.backends[0].capacity_rps_at(0.0);
        let roles: Vec<String> = scenario.backends.iter().map(|b| role(b, full)).collect();
        assert!(
            roles.iter().any(|r| r == "a third of the capacity"),
            "{roles:?}"
        );
        assert!(
            roles.iter().any(|r| r.contains("4× slower 40–60 s")),
            "{roles:?}"
        );
        assert_eq!(scenario.duration_s, 60.0);
    }

    #[test]
    fn the_shipped_model_is_found_from_the_binary() {
        let (mut config, _) = fulcrum_config::parse(MODEL_CONFIG, "demo.toml").unwrap();
        locate_model(&mut config);
        // Tests run below the repository, like target/release/fulcrum.
        assert!(config.control.model.is_file(), "{:?}", config.control.model);
    }

    #[test]
    fn a_missing_runtime_is_said_plainly() {
        let model = Model {
            loaded: false,
            path: "models/balancer.onnx".into(),
            schema: "fulcrum-features-v1".into(),
            error: Some("ONNX Runtime is not available: no libonnxruntime found".into()),
        };
        let text = describe_model(&model, true);
        assert!(text.contains("NOT LOADED"), "{text}");
        assert!(text.contains("heuristic"), "{text}");
        assert!(text.contains("scripts/setup.sh"), "{text}");
        assert!(describe_model(&model, false).contains("static weights"));
    }
}
