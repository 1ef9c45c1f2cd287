//! Helpers for end-to-end tests: the real `fulcrum` binary started through the lab's harness,
//! loopback backends, and a pool shaped for quick health decisions.
// Each test file uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use fulcrum_config::{Algorithm, Config, ControlConfig, PoolConfig, WeightSource};
pub use fulcrum_lab::harness::{eventually, get, pool, request, single_pool, Conn};
pub use fulcrum_testbed::BackendServer;
pub use nameserver::Nameserver;
pub use prometheus::Prometheus;

mod nameserver;
mod prometheus;

/// The headers of an admin request that changes state: the admin API takes only JSON there,
/// even with an empty body.
pub const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// The binary under test.
pub fn fulcrum_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fulcrum")
}

/// The repository root (for example configs).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tool `scripts/setup.sh test` installs into the project's venv (docker/requirements.txt).
pub fn venv_tool(name: &str) -> PathBuf {
    let tool = repo_root().join(".venv/bin").join(name);
    assert!(
        tool.is_file(),
        "{} is missing: scripts/setup.sh test installs docker/requirements.txt into .venv",
        tool.display()
    );
    tool
}

/// A loopback address on a port that was free a moment ago: nothing answers there.
pub fn dead_addr() -> SocketAddr {
    let [port] = fulcrum_lab::harness::free_ports::<1>().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sum of the samples of every series on `f`'s `/metrics` whose line starts with `prefix`.
pub async fn metric(f: &Fulcrum, prefix: &str) -> f64 {
    let body = get(f.admin, "/metrics").await.unwrap().body;
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Start `n` loopback backends named b1..bn on ephemeral ports.
pub async fn backends(n: usize) -> Vec<BackendServer> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            BackendServer::start("127.0.0.1:0".parse().unwrap(), format!("b{}", i + 1))
                .await
                .unwrap(),
        );
    }
    v
}

/// Pool `web` over `backends` (weight 1 each) with short timeouts and health checks every
/// 200 ms that decide after two probes, so tests see health changes quickly.
pub fn web_pool(algorithm: Algorithm, backends: &[&BackendServer]) -> PoolConfig {
    let addrs: Vec<(SocketAddr, u32)> = backends.iter().map(|b| (b.addr(), 1)).collect();
    let mut p = pool("web", algorithm, &addrs);
    p.connect_timeout = Duration::from_millis(500);
    p.read_timeout = Duration::from_millis(5000);
    p.retries = 2;
    let hc = &mut p.health_check;
    hc.interval = Duration::from_millis(200);
    hc.timeout = Duration::from_millis(150);
    hc.unhealthy_threshold = 2;
    hc.healthy_threshold = 2;
    p
}

/// Keep `workers` keep-alive clients sending `GET path` until `stop`; returns the counters of
/// answered (200) and failed requests, and the clients' tasks.
pub fn keep_busy(
    proxy: SocketAddr,
    workers: usize,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(proxy).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match conn.send_retry_closed("GET", path).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("client-visible failure: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        conn = Conn::open(proxy).await.unwrap();
                    }
                }
            }
        }));
    }
    (ok, failed, tasks)
}

/// Pool `web` over `backends` with weights tuned by the control loop with `control`.
pub fn model_pool(
    backends: &[&BackendServer],
    control: ControlConfig,
) -> impl FnOnce(SocketAddr, SocketAddr) -> Config {
    let mut pool = web_pool(Algorithm::LeastConnections, backends);
    pool.weights = WeightSource::Model;
    move |p, a| {
        let mut config = single_pool(p, a, pool);
        config.control = control;
        config
    }
}

/// `n` GETs on one keep-alive connection, counted by the backend that answered (`x-backend`).
pub async fn tally(f: &Fulcrum, n: usize) -> HashMap<String, usize> {
    let mut conn = Conn::open(f.proxy).await.unwrap();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = conn.send("GET", "/", &[], b"").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        *counts
            .entry(
                r.header("x-backend")
                    .unwrap_or_else(|| panic!("{r:?}"))
                    .to_string(),
            )
            .or_insert(0) += 1;
    }
    counts
}

/// A running `fulcrum run` process, killed on drop.
pub struct Fulcrum {
    /// The data-plane address.
    pub proxy: SocketAddr,
    /// The admin API's address.
    pub admin: SocketAddr,
    /// The configuration file it runs on.
    pub config_path: PathBuf,
    process: fulcrum_lab::harness::Proxy,
}

impl Fulcrum {
    /// Start the proxy on `config` (a function of the proxy and admin addresses).
    pub async fn start(config: impl FnOnce(SocketAddr, SocketAddr) -> Config) -> Fulcrum {
        let (proxy, admin) = fulcrum_lab::harness::loopback_pair().unwrap();
        let process =
            fulcrum_lab::harness::Proxy::start(fulcrum_bin().as_ref(), &config(proxy, admin))
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        Fulcrum {
            proxy,
            admin,
            config_path: process.config_path().to_path_buf(),
            process,
        }
    }

    /// Start the proxy with the single pool `web`.
    pub async fn web(pool: PoolConfig) -> Fulcrum {
        Fulcrum::start(|p, a| single_pool(p, a, pool)).await
    }

    /// `/api/pools` as JSON.
    pub async fn pools(&self) -> serde_json::Value {
        let r = get(self.admin, "/api/pools").await.unwrap();
        serde_json::from_str(&r.body).unwrap()
    }

    /// The backends of the first pool, per `/api/pools`.
    pub async fn backends(&self) -> Vec<serde_json::Value> {
        match self.pools().await["pools"][0]["backends"].take() {
            serde_json::Value::Array(b) => b,
            other => panic!("no backends in /api/pools: {other}"),
        }
    }

    /// Health of the backend at `addr` in the first pool, per `/api/pools`.
    pub async fn backend_healthy(&self, addr: SocketAddr) -> bool {
        self.backends()
            .await
            .iter()
            .find(|b| b["addr"] == addr.to_string())
            .map(|b| b["healthy"].as_bool().unwrap())
            .unwrap()
    }

    /// Whether no request is in flight to any backend of the first pool, per `/api/pools`.
    pub async fn idle(&self) -> bool {
        self.backends().await.iter().all(|b| b["in_flight"] == 0)
    }

    /// The running configuration, as written to the file the process reloads.
    pub fn running_config(&self) -> Config {
        fulcrum_config::load(&self.config_path)
            .unwrap_or_else(|d| panic!("{d}"))
            .0
    }

    /// Replace the configuration file atomically, so a reload never reads half of it.
    pub fn write_config(&self, config: &Config) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config.to_toml()).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Send the process `SIGHUP`, as `kill -HUP` does: reload the configuration file.
    pub fn sighup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.process.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP failed: {status}");
    }

    /// Send `signal` (a name such as `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal).unwrap();
    }

    /// Wait up to `limit` for the process to exit; its exit status, `None` if it still runs.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit(limit).await.unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    /// The last lines the process wrote to its log (it runs with `RUST_LOG=warn`).
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}
