//! The proxy under test: its generated configuration and its process.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use fulcrum_config::{Algorithm, WeightSource};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long the proxy may take to answer on both ports after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A configuration for `fulcrum run`: one route `*` → pool `lab` over `backends`
/// (`(address, weight)`), one data-plane thread, retries 2, `/healthz` probed every second.
///
/// `extra_pool_toml` is placed inside the `[pools.lab]` table, before its sub-tables.
pub fn proxy_config(
    listen: SocketAddr,
    admin: SocketAddr,
    algorithm: Algorithm,
    weights: WeightSource,
    backends: &[(SocketAddr, u32)],
    extra_pool_toml: &str,
    time_scale: f64,
) -> String {
    // The proxy's own clocks (control tick, health checks, EWMA decay) run at the same speed
    // as the scenario's timeline, so a shortened run is the scenario, not a different one.
    let scaled = |ms: f64| ((ms * time_scale).round() as u64).max(10);
    let (tick, interval, decay) = (scaled(500.0), scaled(1000.0), scaled(10_000.0));
    let timeout = interval.min(500);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[server]\nlisten = [\"{listen}\"]\nthreads = 1\ngrace_period_s = 0\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [[routes]]\nhost = \"*\"\npath_prefix = \"/\"\npool = \"lab\"\n\n\
         [pools.lab]\nalgorithm = \"{algorithm}\"\nweights = \"{weights}\"\nretries = 2\n\
         ewma_decay_ms = {decay}"
    );
    if !extra_pool_toml.trim().is_empty() {
        let _ = writeln!(s, "{}", extra_pool_toml.trim_end());
    }
    let _ = writeln!(
        s,
        "\n[pools.lab.health_check]\npath = \"/healthz\"\ninterval_ms = {interval}\ntimeout_ms = {timeout}"
    );
    for (addr, weight) in backends {
        let _ = writeln!(
            s,
            "\n[[pools.lab.backends]]\naddr = \"{addr}\"\nweight = {weight}"
        );
    }
    if weights == WeightSource::Model {
        let _ = writeln!(s, "\n[control]\ntick_ms = {tick}");
    }
    s
}

/// A temporary directory, removed with its contents on drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> anyhow::Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "fulcrum-lab-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two distinct ports the OS considered free a moment ago (both held until both are chosen,
/// so they cannot be the same port).
fn free_port_pair() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// A running `fulcrum run` process, killed on drop.
#[derive(Debug)]
pub(crate) struct Proxy {
    child: Child,
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
}

impl Proxy {
    /// Write the configuration into `dir`, start the binary and wait until both its data-plane
    /// and admin ports answer.
    pub(crate) async fn start(
        bin: &Path,
        dir: &TempDir,
        algorithm: Algorithm,
        weights: WeightSource,
        backends: &[(SocketAddr, u32)],
        extra_pool_toml: &str,
        time_scale: f64,
    ) -> anyhow::Result<Proxy> {
        let (listen_port, admin_port) = free_port_pair()?;
        let listen = SocketAddr::from(([127, 0, 0, 1], listen_port));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let text = proxy_config(
            listen,
            admin,
            algorithm,
            weights,
            backends,
            extra_pool_toml,
            time_scale,
        );
        let config_path = dir.path().join("fulcrum.toml");
        if let Err(diags) = fulcrum_config::parse(&text, &config_path.display().to_string()) {
            anyhow::bail!("the generated proxy configuration is invalid:\n{diags}\n{text}");
        }
        std::fs::write(&config_path, &text)?;
        let log_path = dir.path().join("fulcrum.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut proxy = Proxy {
            child,
            listen,
            admin,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = proxy.child.try_wait()? {
                anyhow::bail!(
                    "fulcrum exited during start-up ({status}):\n{}",
                    log_tail(&log_path)
                );
            }
            let admin_ok = matches!(http_get(admin, "/healthz").await, Ok((200, _)));
            if admin_ok && TcpStream::connect(listen).await.is_ok() {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "fulcrum did not answer on {listen} and {admin} within {READY_TIMEOUT:?}:\n{}",
                    log_tail(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill the process and reap it.
    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One `GET` on a fresh connection: status and body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, hyper::Method::GET, path, Bytes::new()).await
}

/// Set some of a static pool's weights through the admin API
/// (`PUT /api/pools/{pool}/weights`, a JSON object of backend address to weight).
pub(crate) async fn put_weights(
    admin: SocketAddr,
    pool: &str,
    weights: &serde_json::Value,
) -> anyhow::Result<()> {
    let body = Bytes::from(serde_json::to_vec(weights)?);
    let path = format!("/api/pools/{pool}/weights");
    let (status, text) = http_request(admin, hyper::Method::PUT, &path, body).await?;
    anyhow::ensure!(status == 200, "PUT {path} answered {status}: {text}");
    Ok(())
}

/// One request on a fresh connection: status and body.
async fn http_request(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .context("request timed out")?
}

/// Sum of every `fulcrum_retries_total` series in a Prometheus text exposition.
fn sum_retries(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix("fulcrum_retries_total")
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The proxy's total retries so far, from `/metrics` on its admin address.
pub async fn read_retries_total(admin: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = http_get(admin, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(sum_retries(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_summed() {
        let text = "# TYPE fulcrum_retries_total counter\n\
                    fulcrum_retries_total{pool=\"lab\",backend=\"a\"} 3\n\
                    fulcrum_retries_total{pool=\"lab\",backend=\"b\"} 4\n\
                    fulcrum_retries_total_other 100\n";
        assert_eq!(sum_retries(text), 7);
    }

    #[test]
    fn generated_config_is_valid() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let text = proxy_config(
            a,
            "127.0.0.1:2".parse().unwrap(),
            Algorithm::P2cEwma,
            WeightSource::Model,
            &[(a, 3), ("127.0.0.1:4".parse().unwrap(), 1)],
            "max_consecutive_failures = 3",
            0.5,
        );
        let (cfg, _) = fulcrum_config::parse(&text, "lab.toml").unwrap();
        let pool = cfg.pool("lab").unwrap();
        assert_eq!(pool.algorithm, Algorithm::P2cEwma);
        assert_eq!(pool.weights, WeightSource::Model);
        assert_eq!(pool.retries, 2);
        assert_eq!(pool.max_consecutive_failures, 3);
        assert_eq!(pool.backends[0].weight, 3);
        // Time constants follow the scenario's time scale.
        assert_eq!(cfg.control.tick, std::time::Duration::from_millis(250));
        assert_eq!(
            pool.health_check.interval,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(pool.ewma_decay, std::time::Duration::from_millis(5000));
        assert_eq!(cfg.server.threads, 1);
    }
}
