//! The proxy under test: its generated configuration and what the lab reads from it.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_config::{Algorithm, Config, WeightSource};

use crate::harness;

/// A configuration for `fulcrum run`: one route `*` → pool `lab` over `backends`
/// (`(address, weight)`), one data-plane thread, retries 2, `/healthz` probed every second.
///
/// `extra_pool_toml` is laid over the `[pools.lab]` table (see [`harness::with_pool_toml`]).
pub fn proxy_config(
    listen: SocketAddr,
    admin: SocketAddr,
    algorithm: Algorithm,
    weights: WeightSource,
    backends: &[(SocketAddr, u32)],
    extra_pool_toml: &str,
    time_scale: f64,
) -> anyhow::Result<Config> {
    // The proxy's own clocks (control tick, health checks, EWMA decay) run at the same speed
    // as the scenario's timeline, so a shortened run is the scenario, not a different one.
    let scaled = |ms: f64| Duration::from_millis(((ms * time_scale).round() as u64).max(10));
    let (tick, interval, decay) = (scaled(500.0), scaled(1000.0), scaled(10_000.0));
    let mut pool = harness::pool("lab", algorithm, backends);
    pool.weights = weights;
    pool.retries = 2;
    pool.ewma_decay = decay;
    pool.health_check.path = "/healthz".to_string();
    pool.health_check.interval = interval;
    pool.health_check.timeout = interval.min(Duration::from_millis(500));
    let mut config = harness::single_pool(listen, admin, pool);
    if weights == WeightSource::Model {
        config.control.tick = tick;
    }
    harness::with_pool_toml(&config, "lab", extra_pool_toml)
}

/// Set some of a static pool's weights through the admin API
/// (`PUT /api/pools/{pool}/weights`, a JSON object of backend address to weight).
pub(crate) async fn put_weights(
    admin: SocketAddr,
    pool: &str,
    weights: &serde_json::Value,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(weights)?;
    let path = format!("/api/pools/{pool}/weights");
    let headers = [("content-type", "application/json")];
    let r = harness::request(admin, "PUT", &path, &headers, &body).await?;
    anyhow::ensure!(
        r.status == 200,
        "PUT {path} answered {}: {}",
        r.status,
        r.body
    );
    Ok(())
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
    let r = harness::get(admin, "/metrics").await?;
    anyhow::ensure!(r.status == 200, "/metrics answered {}", r.status);
    Ok(sum_retries(&r.body))
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
        let cfg = proxy_config(
            a,
            "127.0.0.1:2".parse().unwrap(),
            Algorithm::P2cEwma,
            WeightSource::Model,
            &[(a, 3), ("127.0.0.1:4".parse().unwrap(), 1)],
            "max_consecutive_failures = 3",
            0.5,
        )
        .unwrap();
        let (back, _) = fulcrum_config::parse(&cfg.to_toml(), "lab.toml").unwrap();
        assert_eq!(back, cfg);
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
