//! Per-tick observations of a pool's backends, from the data plane's lock-free counters.
//!
//! The observer keeps the previous tick's counters and histogram snapshots and reports the
//! difference, so every figure describes the last window only. It takes the time as an input,
//! so the simulator drives it on simulated time with the same code.

use fulcrum_balance::histogram::HistogramSnapshot;
use fulcrum_balance::Pool;

/// What one backend did during one control window.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendObservation {
    /// Attempts completed in the window.
    pub requests: u64,
    /// Completed attempts per second.
    pub rate_rps: f64,
    /// This backend's share of the pool's completed attempts (0 when the pool did nothing).
    pub share: f64,
    /// Peak-EWMA latency at the end of the window, ms.
    pub ewma_ms: f64,
    /// Mean latency in the window, ms (0 without samples).
    pub mean_ms: f64,
    /// Median latency in the window, ms (0 without samples).
    pub p50_ms: f64,
    /// 99th percentile latency in the window, ms (0 without samples).
    pub p99_ms: f64,
    /// Requests in flight at the end of the window.
    pub in_flight: f64,
    /// Mean requests in flight over the window (Little's law: rate × mean latency).
    pub mean_in_flight: f64,
    /// Highest in-flight count seen in the window.
    pub max_in_flight: f64,
    /// Failed share of the window's attempts (5xx, connect failures, timeouts).
    pub error_rate: f64,
    /// Eligible for traffic at the end of the window.
    pub healthy: bool,
    /// Configured weight.
    pub static_weight: f64,
    /// Weight in force at the end of the window.
    pub current_weight: f64,
    /// Utilisation the backend reported about itself (0–1), if it does.
    pub reported_load: Option<f64>,
}

#[derive(Debug, Clone, Default)]
struct Previous {
    requests: u64,
    errors: u64,
    latency: HistogramSnapshot,
}

/// Turns successive reads of a pool's counters into per-window observations.
#[derive(Debug)]
pub struct TickObserver {
    previous: Vec<Previous>,
    last_ns: Option<u64>,
}

impl TickObserver {
    /// An observer whose first window starts now (counters so far are not reported).
    pub fn new(pool: &Pool, now_ns: u64) -> Self {
        let mut observer = TickObserver {
            previous: vec![Previous::default(); pool.backends().len()],
            last_ns: None,
        };
        observer.observe(pool, now_ns);
        observer
    }

    /// Observe the window since the previous call; one entry per backend, in pool order.
    pub fn observe(&mut self, pool: &Pool, now_ns: u64) -> Vec<BackendObservation> {
        let elapsed_s = self
            .last_ns
            .map_or(0.0, |last| now_ns.saturating_sub(last) as f64 / 1e9);
        self.last_ns = Some(now_ns);
        let weights = pool.weights();
        let mut out: Vec<BackendObservation> = pool
            .backends()
            .iter()
            .zip(self.previous.iter_mut())
            .enumerate()
            .map(|(i, (b, prev))| {
                let s = &b.stats;
                let requests = s.requests();
                let errors = s.errors();
                let window = s.latency_histogram().advance(&mut prev.latency);
                let n = requests.saturating_sub(prev.requests);
                let failed = errors.saturating_sub(prev.errors);
                prev.requests = requests;
                prev.errors = errors;
                let rate = if elapsed_s > 0.0 {
                    n as f64 / elapsed_s
                } else {
                    0.0
                };
                let mean_ms = window.mean_us.unwrap_or(0.0) / 1000.0;
                BackendObservation {
                    requests: n,
                    rate_rps: rate,
                    share: 0.0,
                    ewma_ms: s.ewma_ns(now_ns) / 1e6,
                    mean_ms,
                    p50_ms: window.p50_us.unwrap_or(0.0) / 1000.0,
                    p99_ms: window.p99_us.unwrap_or(0.0) / 1000.0,
                    in_flight: s.in_flight() as f64,
                    mean_in_flight: rate * mean_ms / 1000.0,
                    max_in_flight: s.take_max_in_flight() as f64,
                    error_rate: if n > 0 { failed as f64 / n as f64 } else { 0.0 },
                    healthy: s.is_healthy(),
                    static_weight: f64::from(b.static_weight),
                    current_weight: weights.weights().get(i).copied().unwrap_or(0.0),
                    reported_load: s.reported_load(),
                }
            })
            .collect();
        let total: u64 = out.iter().map(|o| o.requests).sum();
        if total > 0 {
            for o in &mut out {
                o.share = o.requests as f64 / total as f64;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_balance::{Algorithm, Backend, Outcome};
    use std::time::Duration;

    #[test]
    fn windows_report_only_their_own_traffic() {
        let backends = vec![
            Backend::new("127.0.0.1:1".parse().unwrap(), 1),
            Backend::new("127.0.0.1:2".parse().unwrap(), 3),
        ];
        let pool = Pool::new(
            "p",
            Algorithm::RoundRobin,
            backends,
            Duration::from_secs(10),
            5,
        );
        pool.record(0, 1_000_000, Outcome::Success, 1);
        let mut obs = TickObserver::new(&pool, 0);
        for _ in 0..30 {
            pool.record(0, 2_000_000, Outcome::Success, 100);
        }
        for _ in 0..10 {
            pool.record(1, 8_000_000, Outcome::ServerError, 100);
        }
        let w = obs.observe(&pool, 500_000_000);
        assert_eq!(w[0].requests, 30);
        assert!((w[0].rate_rps - 60.0).abs() < 1e-9);
        assert!((w[0].share - 0.75).abs() < 1e-9);
        assert!((w[0].p50_ms - 2.0).abs() < 0.25, "{}", w[0].p50_ms);
        assert_eq!(w[0].error_rate, 0.0);
        assert_eq!(w[1].error_rate, 1.0);
        assert!((w[1].p99_ms - 8.0).abs() < 1.0);
        assert_eq!(w[1].static_weight, 3.0);
        let quiet = obs.observe(&pool, 1_000_000_000);
        assert_eq!(quiet[0].requests, 0);
        assert_eq!(quiet[0].p99_ms, 0.0);
        assert_eq!(quiet[0].share, 0.0);
    }
}
