//! The capacity oracle: what each backend can really serve at a given instant, known from the
//! scenario rather than measured. The `capacity_oracle` reference policy balances by it and
//! results are judged against it.

use crate::{Scenario, ScenarioBackend};

impl ScenarioBackend {
    /// Requests per second this backend completes at `t` (concurrency / mean service time,
    /// with slowdowns; 0 while down).
    pub fn capacity_rps_at(&self, t: f64) -> f64 {
        let s = self.state_at(t);
        if s.down {
            0.0
        } else {
            f64::from(self.concurrency) * 1000.0 / (self.mean_service_ms() * s.slowdown)
        }
    }

    /// Mean service time in ms of the lognormal with this median and sigma, before events.
    pub fn mean_service_ms(&self) -> f64 {
        self.service_ms * (self.service_jitter * self.service_jitter / 2.0).exp()
    }
}

impl Scenario {
    /// Every backend's true capacity at time `t`, as balancing weights: concurrency / mean
    /// service time (rps), × (1 − error rate)² so a backend that fails fast counts as smaller,
    /// and 0 while down. The weights of the `capacity_oracle` reference policy.
    pub fn capacity_weights(&self, t: f64) -> Vec<f64> {
        self.backends
            .iter()
            .map(|b| {
                let ok = (1.0 - b.state_at(t).error_rate).clamp(0.0, 1.0);
                b.capacity_rps_at(t) * ok * ok
            })
            .collect()
    }

    /// Total capacity in requests per second at time `t` (sum of concurrency / mean service time).
    pub fn capacity_rps_at(&self, t: f64) -> f64 {
        self.backends.iter().map(|b| b.capacity_rps_at(t)).sum()
    }
}
