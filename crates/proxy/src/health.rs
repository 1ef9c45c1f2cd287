//! Active HTTP health checks, and re-admission of passively ejected backends.
//!
//! One task per backend runs on the admin runtime, never on the data-plane threads. A backend
//! goes down after `unhealthy_threshold` consecutive failed checks and comes back after
//! `healthy_threshold` consecutive good ones; a backend ejected by the request path (consecutive
//! connect failures or 5xx) is re-admitted by the same rule. With checks disabled, an ejected
//! backend is re-admitted after a fixed back-off so it can be observed again. A backend that
//! comes back starts its pool's slow-start ramp, if the pool has one. Checks of a pool that
//! speaks TLS to its backends speak TLS too, checking certificates as the data plane does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_balance::{now_ns, HealthChange, HealthRule, HealthTracker};
use fulcrum_config::HealthCheckConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::state::Upstreams;

/// How long an ejected backend waits for re-admission when active checks are disabled.
const EJECTION_BACKOFF: Duration = Duration::from_secs(10);

/// Spawn one checker per backend of every pool; dropping the set stops them all.
pub fn spawn_all(upstreams: &Arc<Upstreams>, tasks: &mut JoinSet<()>) {
    for (pool_idx, pool) in upstreams.pools.iter().enumerate() {
        for backend_idx in 0..pool.pool.backends().len() {
            let upstreams = upstreams.clone();
            tasks.spawn(async move { check_loop(upstreams, pool_idx, backend_idx).await });
        }
    }
}

/// How a check reaches a backend over TLS.
#[derive(Clone)]
pub struct ProbeTls {
    /// The client, with the pool's trust anchors and client certificate.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the backend is asked for and checked against.
    pub server_name: String,
}

/// Perform one check: a `GET path` whose response status is 2xx or 3xx, within the timeout;
/// over TLS when `tls` is given.
pub async fn probe(
    addr: SocketAddr,
    cfg: &HealthCheckConfig,
    tls: Option<&ProbeTls>,
) -> Result<u16, String> {
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match tls {
            None => exchange(stream, addr, cfg).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                    .map_err(|e| format!("server name {:?}: {e}", tls.server_name))?;
                let stream = pingora_rustls::TlsConnector::from(tls.config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(stream, addr, cfg).await
            }
        }
    };
    match tokio::time::timeout(cfg.timeout, fut).await {
        Ok(Ok(status)) if (200..400).contains(&status) => Ok(status),
        Ok(Ok(status)) => Err(format!("status {status}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("timed out after {} ms", cfg.timeout.as_millis())),
    }
}

/// Send the check request on `stream` and read the status of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    cfg: &HealthCheckConfig,
) -> Result<u16, String> {
    let host = cfg.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fulcrum-health-check\r\nConnection: close\r\n\r\n",
        cfg.path, host
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    // Only the status line matters.
    while len < 12 {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".to_string());
        }
        len += n;
    }
    parse_status(&buf[..len]).ok_or_else(|| "malformed status line".to_string())
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head.get(..12)?).ok()?;
    if !line.starts_with("HTTP/1.") {
        return None;
    }
    line.get(9..12)?.parse().ok()
}

async fn check_loop(upstreams: Arc<Upstreams>, pool_idx: usize, backend_idx: usize) {
    let pool = &upstreams.pools[pool_idx];
    let cfg = &pool.config.health_check;
    let backend = &pool.pool.backends()[backend_idx];
    let metrics = &pool.backend_metrics[backend_idx];
    let tls = pool
        .tls
        .as_ref()
        .zip(pool.config.tls.as_ref())
        .map(|(upstream, t)| ProbeTls {
            config: upstream.probe.clone(),
            server_name: crate::tls::backend_server_name(t, backend.addr),
        });
    if !cfg.enabled {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !backend.stats.is_healthy() {
                tokio::time::sleep(EJECTION_BACKOFF).await;
                backend.stats.recover(now_ns());
                log::info!(
                    "pool {}: backend {} re-admitted after back-off",
                    pool.config.name,
                    backend.name
                );
            }
        }
    }
    let mut tracker = HealthTracker::new(HealthRule {
        unhealthy_after: cfg.unhealthy_threshold,
        healthy_after: cfg.healthy_threshold,
    });
    let mut interval = tokio::time::interval(cfg.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let result = probe(backend.addr, cfg, tls.as_ref()).await;
        if result.is_err() {
            metrics.health_check_failures.increment(1);
        }
        match (
            tracker.observe(result.is_ok(), backend.stats.is_healthy()),
            result,
        ) {
            (Some(HealthChange::Up), _) => {
                backend.stats.recover(now_ns());
                log::info!("pool {}: backend {} is up", pool.config.name, backend.name);
            }
            (Some(HealthChange::Down), Err(why)) => {
                backend.stats.set_healthy(false);
                log::warn!(
                    "pool {}: backend {} is down after {} failed checks: {}",
                    pool.config.name,
                    backend.name,
                    tracker.consecutive_failures(),
                    why
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1"), None);
    }

    #[tokio::test]
    async fn probe_reports_refused_and_bad_status() {
        let cfg = HealthCheckConfig {
            enabled: true,
            path: "/healthz".into(),
            host: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
        };
        // A port that was just free is almost certainly refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(probe(addr, &cfg, None)
            .await
            .unwrap_err()
            .starts_with("connect"));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        assert_eq!(probe(addr, &cfg, None).await.unwrap_err(), "status 503");
    }
}
