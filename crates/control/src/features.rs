//! The model's input: a float32 matrix `[N, F]`, one row per backend, normalised within the
//! pool so one model serves pools of any size and scale.
//!
//! The list is versioned by [`FEATURE_SCHEMA`]; a model names the schema it was trained on.

use crate::observe::BackendObservation;

/// Version of the feature list below. Change it whenever the list or a definition changes.
pub const FEATURE_SCHEMA: &str = "fulcrum-features-v1";

/// Feature names, in column order.
pub const FEATURE_NAMES: [&str; NUM_FEATURES] = [
    "share",
    "rate_rel",
    "ewma_rel",
    "mean_rel",
    "p50_rel",
    "p99_rel",
    "in_flight_rel",
    "mean_in_flight_rel",
    "max_in_flight_rel",
    "error_rate",
    "healthy",
    "static_weight_rel",
    "current_weight_rel",
    "reported_load",
    "has_samples",
    "pool_size_inv",
];

/// Number of features per backend.
pub const NUM_FEATURES: usize = 16;

/// A value relative to the pool's mean of the same quantity (1 = average, 0 when the pool's
/// mean is 0), squashed into a bounded range so one outlier cannot dominate the input.
fn rel(value: f64, mean: f64) -> f32 {
    if mean <= 0.0 || !value.is_finite() {
        return 0.0;
    }
    (value / mean).min(100.0) as f32
}

fn mean(obs: &[BackendObservation], f: impl Fn(&BackendObservation) -> f64) -> f64 {
    if obs.is_empty() {
        return 0.0;
    }
    obs.iter().map(f).sum::<f64>() / obs.len() as f64
}

/// Latency figures are averaged over backends that served something in the window, so an
/// idle backend's zero does not pull the reference down.
fn mean_active(obs: &[BackendObservation], f: impl Fn(&BackendObservation) -> f64) -> f64 {
    let active: Vec<f64> = obs.iter().filter(|o| o.requests > 0).map(f).collect();
    if active.is_empty() {
        0.0
    } else {
        active.iter().sum::<f64>() / active.len() as f64
    }
}

/// Build the row-major `[N, F]` feature matrix for one pool.
pub fn extract(obs: &[BackendObservation]) -> Vec<f32> {
    let n = obs.len();
    let mut out = Vec::with_capacity(n * NUM_FEATURES);
    let m_rate = mean(obs, |o| o.rate_rps);
    let m_ewma = mean(obs, |o| o.ewma_ms);
    let m_mean = mean_active(obs, |o| o.mean_ms);
    let m_p50 = mean_active(obs, |o| o.p50_ms);
    let m_p99 = mean_active(obs, |o| o.p99_ms);
    let m_inf = mean(obs, |o| o.in_flight);
    let m_minf = mean(obs, |o| o.mean_in_flight);
    let m_xinf = mean(obs, |o| o.max_in_flight);
    let m_sw = mean(obs, |o| o.static_weight);
    let m_cw = mean(obs, |o| o.current_weight);
    let inv_n = if n > 0 { 1.0 / n as f32 } else { 0.0 };
    for o in obs {
        let row: [f32; NUM_FEATURES] = [
            o.share as f32,
            rel(o.rate_rps, m_rate),
            rel(o.ewma_ms, m_ewma),
            rel(o.mean_ms, m_mean),
            rel(o.p50_ms, m_p50),
            rel(o.p99_ms, m_p99),
            rel(o.in_flight, m_inf),
            rel(o.mean_in_flight, m_minf),
            rel(o.max_in_flight, m_xinf),
            o.error_rate as f32,
            if o.healthy { 1.0 } else { 0.0 },
            rel(o.static_weight, m_sw),
            rel(o.current_weight, m_cw),
            o.reported_load.map_or(-1.0, |l| l as f32),
            if o.requests > 0 { 1.0 } else { 0.0 },
            inv_n,
        ];
        out.extend_from_slice(&row);
    }
    out
}

/// The feature row of an average, healthy, busy backend in a pool of `n` (used to probe a
/// model when it is loaded).
pub fn neutral_row(n: usize) -> [f32; NUM_FEATURES] {
    let share = if n > 0 { 1.0 / n as f32 } else { 0.0 };
    [
        share, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, -1.0, 1.0, share,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(rate: f64, p99: f64, requests: u64) -> BackendObservation {
        BackendObservation {
            requests,
            rate_rps: rate,
            share: 0.5,
            ewma_ms: p99 / 2.0,
            mean_ms: p99 / 3.0,
            p50_ms: p99 / 4.0,
            p99_ms: p99,
            in_flight: 1.0,
            mean_in_flight: 1.0,
            max_in_flight: 2.0,
            error_rate: 0.1,
            healthy: true,
            static_weight: 1.0,
            current_weight: 1.0,
            reported_load: None,
        }
    }

    #[test]
    fn shape_and_scale_invariance() {
        let a = extract(&[obs(100.0, 10.0, 50), obs(300.0, 30.0, 150)]);
        assert_eq!(a.len(), 2 * NUM_FEATURES);
        // Ten times the traffic and latency gives the same features.
        let b = extract(&[obs(1000.0, 100.0, 500), obs(3000.0, 300.0, 1500)]);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        assert!(
            (a[FEATURE_NAMES.iter().position(|n| *n == "p99_rel").unwrap()] - 0.5).abs() < 1e-6
        );
        assert_eq!(a[13], -1.0, "no reported load is -1");
        assert!(a.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn idle_pool_is_finite() {
        let f = extract(&[obs(0.0, 0.0, 0), obs(0.0, 0.0, 0)]);
        assert!(f.iter().all(|v| v.is_finite()));
        assert!(extract(&[]).is_empty());
    }
}
