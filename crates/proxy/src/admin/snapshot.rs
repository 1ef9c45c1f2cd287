//! The live state of every pool as one document, for `/api/pools` and any page that shows it.

use serde::Serialize;

use crate::Shared;

/// `/api/pools` document.
#[derive(Debug, Serialize)]
pub struct PoolsSnapshot {
    /// Every pool in configuration order.
    pub pools: Vec<PoolSnapshot>,
}

/// One pool in `/api/pools`.
#[derive(Debug, Serialize)]
pub struct PoolSnapshot {
    /// Pool name.
    pub name: String,
    /// Picker algorithm.
    pub algorithm: &'static str,
    /// Where weights come from (`static` or `model`).
    pub weights: &'static str,
    /// How the backends are found (`static` or `dns`).
    pub discovery: &'static str,
    /// Backends currently eligible for traffic.
    pub healthy_backends: usize,
    /// Per-backend state.
    pub backends: Vec<BackendSnapshot>,
}

/// One backend in `/api/pools`.
#[derive(Debug, Serialize)]
pub struct BackendSnapshot {
    /// `ip:port`.
    pub addr: String,
    /// The `host:port` name DNS discovery found the backend under (`null` when configured).
    pub dns_name: Option<String>,
    /// Eligible for traffic.
    pub healthy: bool,
    /// Weight from the configuration.
    pub static_weight: u32,
    /// Weight the picker uses now.
    pub weight: f64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Peak-EWMA latency estimate, milliseconds.
    pub ewma_latency_ms: f64,
    /// Completed attempts.
    pub requests: u64,
    /// Failed attempts (5xx, connect failures, timeouts).
    pub errors: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Ramping up in slow start (added by a reload or back from being down).
    pub slow_start: bool,
    /// Share of `weight` the ramp gives the backend now, percent (100 outside slow start).
    pub ramp_percent: f64,
}

/// Build the `/api/pools` document from live state.
pub fn pools_snapshot(shared: &Shared) -> PoolsSnapshot {
    let now = fulcrum_balance::now_ns();
    let upstreams = shared.upstreams.load();
    let pools = upstreams
        .pools
        .iter()
        .map(|p| {
            let weights = p.pool.weights();
            PoolSnapshot {
                name: p.config.name.clone(),
                algorithm: p.config.algorithm.as_str(),
                weights: match p.config.weights {
                    fulcrum_config::WeightSource::Static => "static",
                    fulcrum_config::WeightSource::Model => "model",
                },
                discovery: p.config.discovery.as_str(),
                healthy_backends: p.pool.healthy_count(),
                backends: p
                    .pool
                    .backends()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let ramp = p.pool.ramp_factor(i, now);
                        BackendSnapshot {
                            addr: b.name.clone(),
                            dns_name: shared.discovered.origin(&p.config, b.addr),
                            healthy: b.stats.is_healthy(),
                            static_weight: b.static_weight,
                            weight: weights.weights().get(i).copied().unwrap_or(0.0),
                            in_flight: b.stats.in_flight(),
                            ewma_latency_ms: b.stats.ewma_ns(now) / 1e6,
                            requests: b.stats.requests(),
                            errors: b.stats.errors(),
                            consecutive_failures: b.stats.consecutive_failures(),
                            slow_start: ramp < 1.0,
                            ramp_percent: ramp * 100.0,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    PoolsSnapshot { pools }
}
