//! The live state of every pool as one document, for `/api/pools` and any page that shows it.

use serde::Serialize;

use crate::admin::window::LatencyWindows;
use crate::control::ModelState;
use crate::Shared;

/// `/api/pools` document.
#[derive(Debug, Serialize)]
pub struct PoolsSnapshot {
    /// Every pool in configuration order.
    pub pools: Vec<PoolSnapshot>,
    /// What scores the `weights = "model"` pools.
    pub model: ModelState,
    /// The process is draining (after `SIGTERM`): `/readyz` answers 503.
    pub draining: bool,
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
    /// The latest recommendation of a pool with `[pools.NAME.autoscale]` (`null` without one);
    /// `/api/forecast?pool=NAME` has all of it.
    pub autoscale: Option<AutoscaleSnapshot>,
    /// Per-backend state.
    pub backends: Vec<BackendSnapshot>,
}

/// The latest step of an autoscaled pool's demand tracking, in `/api/pools`; every field
/// `null` before its first step has ended.
#[derive(Debug, Default, Serialize)]
pub struct AutoscaleSnapshot {
    /// Backends to run.
    pub recommended_backends: Option<u32>,
    /// Of those, the ones kept for bursts after the demand outran the plan.
    pub burst_spare_backends: Option<u32>,
    /// The rate that arrived in the last step, requests per second.
    pub observed_rps: Option<f64>,
    /// The demand the count is sized for, requests per second.
    pub planned_rps: Option<f64>,
    /// `builtin` or the forecast model's file name.
    pub forecaster: Option<String>,
    /// Seconds of the rate series held (read back from a history at start, or counted).
    pub series_s: Option<f64>,
    /// The season found in it, seconds.
    pub season_s: Option<f64>,
    /// The reasoning in words.
    pub reason: Option<String>,
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
    /// Median latency of the attempts over the last `latency_window_s`, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency over the same window, milliseconds.
    pub p99_ms: Option<f64>,
    /// Length of the window `p50_ms` and `p99_ms` cover, seconds (about 10; longer after a
    /// spell without reads, absent on the first read).
    pub latency_window_s: Option<f64>,
}

/// Build the `/api/pools` document from live state (without recent latencies, which need
/// the admin listener's history of reads).
pub fn pools_snapshot(shared: &Shared) -> PoolsSnapshot {
    build(shared, None)
}

/// The `/api/pools` document; with `windows`, recent p50 and p99 per backend.
pub(crate) fn build(shared: &Shared, windows: Option<&LatencyWindows>) -> PoolsSnapshot {
    let now = fulcrum_balance::now_ns();
    let instant = std::time::Instant::now();
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
                autoscale: p.config.autoscale.as_ref().map(|_| {
                    shared
                        .forecasts
                        .report(&p.config.name)
                        .map(|r| AutoscaleSnapshot {
                            recommended_backends: Some(r.recommended_backends),
                            burst_spare_backends: Some(r.burst_spare_backends),
                            observed_rps: Some(r.observed_rps),
                            planned_rps: Some(r.planned_rps),
                            forecaster: Some(r.forecaster),
                            series_s: Some(r.series_steps as f64 * r.step_s),
                            season_s: r.season_s,
                            reason: Some(r.reason),
                        })
                        .unwrap_or_default()
                }),
                backends: p
                    .pool
                    .backends()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let ramp = p.pool.ramp_factor(i, now);
                        let recent = windows
                            .map(|w| {
                                w.recent(
                                    &p.config.name,
                                    &b.name,
                                    b.stats.latency_histogram(),
                                    instant,
                                )
                            })
                            .unwrap_or_default();
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
                            p50_ms: recent.p50_ms,
                            p99_ms: recent.p99_ms,
                            latency_window_s: recent.window_s,
                        }
                    })
                    .collect(),
            }
        })
        .collect::<Vec<PoolSnapshot>>();
    if let Some(w) = windows {
        let keep: Vec<(String, String)> = pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| (p.name.clone(), b.addr.clone())))
            .collect();
        w.retain(&keep);
    }
    PoolsSnapshot {
        pools,
        model: shared.model.get(),
        draining: shared.lifecycle.draining(),
    }
}
