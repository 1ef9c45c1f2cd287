//! One control tick for one pool: observations → features → scores → guardrails → swap.
//!
//! The same code runs in the proxy's control thread on wall-clock time and in the simulator on
//! simulated time: the caller supplies the observations and the clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_balance::Pool;
use fulcrum_config::control_defaults as defaults;
use fulcrum_config::ControlConfig;

use crate::decisions::Decision;
use crate::features::{extract, NUM_FEATURES};
use crate::guardrails::{self, Limits};
use crate::model::{ModelError, OnnxModel};
use crate::observe::BackendObservation;

/// What turns a feature matrix into one positive score per backend.
#[derive(Debug)]
pub enum Scorer {
    /// A loaded ONNX model.
    Model(OnnxModel),
    /// The built-in controller, used when no model is available.
    Heuristic(Heuristic),
}

impl Scorer {
    /// `model` or `heuristic`, for decisions and metrics.
    pub fn source(&self) -> &'static str {
        match self {
            Scorer::Model(_) => "model",
            Scorer::Heuristic(_) => "heuristic",
        }
    }

    /// Score every backend.
    pub fn score(
        &mut self,
        features: &[f32],
        observations: &[BackendObservation],
    ) -> Result<Vec<f32>, ModelError> {
        match self {
            Scorer::Model(m) => m.scores(features, observations.len()),
            Scorer::Heuristic(h) => Ok(h.scores(observations)),
        }
    }
}

/// The built-in controller: move each backend's weight toward equal latency across the pool,
/// and away from backends that fail.
///
/// A backend slower than the pool's average gets a smaller share until latencies meet, which
/// is where a least-loaded picker spreads work in proportion to capacity. Errors weigh
/// quadratically so a fast-failing backend cannot look attractive because its failures are quick.
/// A backend that is again as fast as the pool and error-free returns to at least its static
/// share (the guardrails pace the climb), so one turned down while it was slow comes back once
/// its probes show it healed.
#[derive(Debug, Clone)]
pub struct Heuristic {
    /// Exponent on the latency ratio (higher reacts harder).
    pub latency_exponent: f64,
}

impl Default for Heuristic {
    fn default() -> Self {
        Heuristic {
            latency_exponent: 1.0,
        }
    }
}

impl Heuristic {
    /// Scores from observations.
    pub fn scores(&self, obs: &[BackendObservation]) -> Vec<f32> {
        let avg = |xs: Vec<f64>| {
            if xs.is_empty() {
                0.0
            } else {
                xs.iter().sum::<f64>() / xs.len() as f64
            }
        };
        let reference = avg(obs
            .iter()
            .filter(|o| o.requests > 0 && o.mean_ms > 0.0)
            .map(|o| o.mean_ms)
            .collect());
        let mean_static = avg(obs.iter().map(|o| o.static_weight).collect());
        let mean_current = avg(obs
            .iter()
            .filter(|o| o.current_weight > 0.0)
            .map(|o| o.current_weight)
            .collect());
        obs.iter()
            .map(|o| {
                let mut base = if o.current_weight > 0.0 {
                    o.current_weight
                } else {
                    o.static_weight
                };
                let speed = if reference > 0.0 && o.requests > 0 && o.mean_ms > 0.0 {
                    (reference / o.mean_ms).powf(self.latency_exponent)
                } else {
                    1.0
                };
                let healed = o.requests > 0 && speed >= 1.0 && o.error_rate < 0.01;
                if healed && mean_static > 0.0 && mean_current > 0.0 {
                    base = base.max(o.static_weight / mean_static * mean_current);
                }
                let health = (1.0 - o.error_rate).max(0.0).powi(2);
                (base * speed * health).max(0.0) as f32
            })
            .collect()
    }
}

/// Settings of the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSettings {
    /// Tick period.
    pub tick: Duration,
    /// Guardrail limits.
    pub limits: Limits,
    /// Inference longer than this on the wall clock skips the tick; a controller on
    /// simulated time ([`PoolController::simulated`]) never skips.
    pub inference_budget: Duration,
    /// Recovery probes per tick for a healthy backend that received no traffic of its own in
    /// the last window (0 disables probing).
    pub probes: u32,
}

impl Default for ControlSettings {
    /// The `[control]` defaults of [`fulcrum_config::control_defaults`].
    fn default() -> Self {
        ControlSettings {
            tick: Duration::from_millis(defaults::TICK_MS),
            limits: Limits::default(),
            inference_budget: Duration::from_millis(defaults::INFERENCE_BUDGET_MS),
            probes: defaults::PROBES,
        }
    }
}

impl From<&ControlConfig> for ControlSettings {
    /// The loop settings of a `[control]` section.
    fn from(c: &ControlConfig) -> Self {
        ControlSettings {
            tick: c.tick,
            limits: Limits {
                floor: c.floor,
                ceiling: c.ceiling,
                max_step: c.max_step,
            },
            inference_budget: c.inference_budget,
            probes: c.probes,
        }
    }
}

/// Per-pool controller state.
#[derive(Debug)]
pub struct PoolController {
    name: String,
    backends: Arc<[String]>,
    settings: ControlSettings,
    ticks: u64,
    start_ns: u64,
    /// Probes granted per backend at the previous tick.
    granted: Vec<u32>,
    /// Whether inference is timed on the wall clock and skipped past the budget.
    wall_clock: bool,
}

/// What happened to a tick, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    /// New weights are in force.
    Applied,
    /// The scores failed a guardrail or inference failed; previous weights stay.
    Rejected,
    /// Inference took longer than the budget; previous weights stay.
    Skipped,
}

impl PoolController {
    /// A controller for `pool`, started at `now_ns`, that times every inference on the wall
    /// clock and skips the tick when it overruns the budget.
    pub fn new(pool: &Pool, settings: ControlSettings, now_ns: u64) -> Self {
        PoolController {
            wall_clock: true,
            ..Self::simulated(pool, settings, now_ns)
        }
    }

    /// A controller for `pool` on simulated time, started at `now_ns`: inference is not timed,
    /// so no tick is skipped for how long the machine took and a run depends on its inputs
    /// only. Decisions report an inference time of zero.
    pub fn simulated(pool: &Pool, settings: ControlSettings, now_ns: u64) -> Self {
        PoolController {
            wall_clock: false,
            name: pool.name().to_string(),
            backends: pool
                .backends()
                .iter()
                .map(|b| b.name.clone())
                .collect::<Vec<_>>()
                .into(),
            settings,
            ticks: 0,
            start_ns: now_ns,
            granted: vec![0; pool.backends().len()],
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ControlSettings {
        &self.settings
    }

    /// Run one tick over `observations` (from a [`crate::TickObserver`] on the same pool) and
    /// swap the pool's weights when the result passes the guardrails.
    pub fn tick(
        &mut self,
        pool: &Pool,
        observations: &[BackendObservation],
        scorer: &mut Scorer,
        now_ns: u64,
    ) -> (TickOutcome, Decision) {
        self.ticks += 1;
        let features = extract(observations);
        let previous = pool.weights().weights().to_vec();
        let started = self.wall_clock.then(Instant::now);
        let scores = scorer.score(&features, observations);
        debug_assert_eq!(features.len(), observations.len() * NUM_FEATURES);
        let spent = started.map_or(Duration::ZERO, |s| s.elapsed());
        let healthy: Vec<bool> = observations.iter().map(|o| o.healthy).collect();
        let mut decision = Decision {
            tick: self.ticks,
            t_s: now_ns.saturating_sub(self.start_ns) as f64 / 1e9,
            pool: self.name.clone(),
            source: scorer.source(),
            backends: Arc::clone(&self.backends),
            features,
            raw_scores: Vec::new(),
            previous_weights: previous.clone(),
            weights: previous.clone(),
            guardrails: Vec::new(),
            rejected: None,
            inference_us: spent.as_secs_f64() * 1e6,
        };
        let outcome = match scores {
            Err(e) => {
                decision.rejected = Some(e.to_string());
                TickOutcome::Rejected
            }
            Ok(scores) => {
                decision.raw_scores = scores.clone();
                if self.wall_clock && spent > self.settings.inference_budget {
                    decision.rejected = Some(format!(
                        "inference took {:.1} ms, over the {} ms budget",
                        spent.as_secs_f64() * 1e3,
                        self.settings.inference_budget.as_millis()
                    ));
                    TickOutcome::Skipped
                } else {
                    match guardrails::apply(&scores, &healthy, &previous, &self.settings.limits) {
                        Err(r) => {
                            decision.rejected = Some(r.to_string());
                            TickOutcome::Rejected
                        }
                        Ok(g) => match pool.set_weights(g.weights.clone()) {
                            Ok(()) => {
                                decision.weights = g.weights;
                                decision.guardrails = g.fired;
                                TickOutcome::Applied
                            }
                            Err(e) => {
                                decision.rejected =
                                    Some(format!("weights refused by the pool: {e}"));
                                TickOutcome::Rejected
                            }
                        },
                    }
                }
            }
        };
        if let Some(probed) = self.grant_probes(pool, observations) {
            decision.guardrails.push(probed);
        }
        (outcome, decision)
    }

    /// Grant recovery probes to healthy backends that served nothing but their previous
    /// probes in the last window and have nothing in flight, while the rest of the pool had
    /// traffic. Without them a least-connections pool never sends a request to a backend whose
    /// weight sits at the floor, so the loop could never see it recover.
    fn grant_probes(&mut self, pool: &Pool, observations: &[BackendObservation]) -> Option<String> {
        let probes = self.settings.probes;
        if self.granted.len() != observations.len() {
            self.granted = vec![0; observations.len()];
        }
        let own = |i: usize, o: &BackendObservation| {
            o.requests.saturating_sub(u64::from(self.granted[i]))
        };
        // Saturating: observations are data, and a corrupt count must not panic the loop.
        let pool_traffic = observations
            .iter()
            .enumerate()
            .fold(0u64, |sum, (i, o)| sum.saturating_add(own(i, o)));
        let weights = pool.weights();
        let mut probed = Vec::new();
        let mut next = vec![0; observations.len()];
        for (i, o) in observations.iter().enumerate() {
            let starved = probes > 0
                && pool_traffic > 0
                && o.healthy
                && own(i, o) == 0
                && o.in_flight < 1.0
                && weights.weights().get(i).is_some_and(|&w| w > 0.0);
            if starved {
                next[i] = probes;
                probed.push(i);
            }
            if starved || self.granted[i] > 0 {
                pool.grant_probes(i, next[i]);
            }
        }
        self.granted = next;
        (!probed.is_empty()).then(|| format!("probe: backends {probed:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::TickObserver;
    use fulcrum_balance::{Algorithm, Backend, Outcome, Tried};

    fn pool() -> Pool {
        let backends = (1..=3)
            .map(|i| Backend::new(format!("127.0.0.1:{i}").parse().unwrap(), 1))
            .collect();
        Pool::new(
            "p",
            Algorithm::LeastConnections,
            backends,
            Duration::from_secs(10),
            5,
        )
    }

    /// A pool of three with its observer, controller and heuristic scorer, on simulated time.
    struct Loop {
        pool: Pool,
        obs: TickObserver,
        ctl: PoolController,
        scorer: Scorer,
        now: u64,
    }

    impl Loop {
        fn new(settings: ControlSettings) -> Self {
            let pool = pool();
            let obs = TickObserver::new(&pool, 0);
            let ctl = PoolController::new(&pool, settings, 0);
            Loop {
                pool,
                obs,
                ctl,
                scorer: Scorer::Heuristic(Heuristic::default()),
                now: 0,
            }
        }

        /// Advance one 500 ms tick: 60 requests through the picker, backend `i` answering in
        /// `ms(i)` milliseconds, then a control tick. Returns the requests per backend.
        fn tick_picked(&mut self, ms: impl Fn(usize) -> u64) -> ([u32; 3], Decision) {
            self.now += 500_000_000;
            let mut got = [0u32; 3];
            for _ in 0..60 {
                let i = self.pool.pick(Tried::new(), self.now).unwrap();
                got[i] += 1;
                self.pool
                    .record(i, ms(i) * 1_000_000, Outcome::Success, self.now);
            }
            let o = self.obs.observe(&self.pool, self.now);
            let (_, d) = self.ctl.tick(&self.pool, &o, &mut self.scorer, self.now);
            (got, d)
        }

        fn weights(&self) -> Vec<f64> {
            self.pool.weights().weights().to_vec()
        }
    }

    #[test]
    fn defaults_are_the_default_configs() {
        let parsed = fulcrum_config::load_default().control;
        assert_eq!(parsed, ControlConfig::default());
        assert_eq!(ControlSettings::from(&parsed), ControlSettings::default());
        assert_eq!(ControlSettings::default().limits, Limits::default());
    }

    #[test]
    fn only_the_wall_clock_budget_skips_ticks() {
        let zero = ControlSettings {
            inference_budget: Duration::ZERO,
            ..ControlSettings::default()
        };
        let mut wall = Loop::new(zero.clone());
        let o = wall.obs.observe(&wall.pool, 500_000_000);
        let (outcome, d) = wall.ctl.tick(&wall.pool, &o, &mut wall.scorer, 500_000_000);
        assert_eq!(outcome, TickOutcome::Skipped, "{d:?}");
        assert!(d.inference_us > 0.0, "{d:?}");

        let mut sim = Loop::new(zero.clone());
        sim.ctl = PoolController::simulated(&sim.pool, zero, 0);
        let o = sim.obs.observe(&sim.pool, 500_000_000);
        let (outcome, d) = sim.ctl.tick(&sim.pool, &o, &mut sim.scorer, 500_000_000);
        assert_eq!(outcome, TickOutcome::Applied, "{d:?}");
        assert_eq!(d.inference_us, 0.0);
    }

    #[test]
    fn heuristic_moves_weight_away_from_a_slow_backend() {
        let mut l = Loop::new(ControlSettings::default());
        for _ in 0..5 {
            l.now += 500_000_000;
            for _ in 0..50 {
                l.pool.record(0, 2_000_000, Outcome::Success, l.now);
                l.pool.record(1, 2_000_000, Outcome::Success, l.now);
                l.pool.record(2, 16_000_000, Outcome::Success, l.now);
            }
            let o = l.obs.observe(&l.pool, l.now);
            let (outcome, d) = l.ctl.tick(&l.pool, &o, &mut l.scorer, l.now);
            assert_eq!(outcome, TickOutcome::Applied, "{d:?}");
        }
        let w = l.weights();
        assert!(w[2] < w[0] / 4.0, "{w:?}");
        assert!((w[0] - w[1]).abs() < 1e-6);
    }

    #[test]
    fn request_counts_near_the_limit_do_not_overflow() {
        // Found by fuzzing: per-backend counts that sum past u64::MAX.
        let mut l = Loop::new(ControlSettings::default());
        let mut o = l.obs.observe(&l.pool, 500_000_000);
        for b in &mut o {
            b.requests = u64::MAX / 2;
        }
        let (outcome, d) = l.ctl.tick(&l.pool, &o, &mut l.scorer, 500_000_000);
        assert_eq!(outcome, TickOutcome::Applied, "{d:?}");
    }

    #[test]
    fn unhealthy_backends_get_zero_and_bad_scores_keep_weights() {
        let mut l = Loop::new(ControlSettings::default());
        l.pool.backends()[1].stats.set_healthy(false);
        let o = l.obs.observe(&l.pool, 500_000_000);
        let (outcome, _) = l.ctl.tick(&l.pool, &o, &mut l.scorer, 500_000_000);
        assert_eq!(outcome, TickOutcome::Applied);
        assert_eq!(l.pool.weights().weights()[1], 0.0);
    }

    #[test]
    fn a_starved_backend_gets_probes_and_its_weight_recovers() {
        // Backend 2 is eight times slower: the heuristic turns it down to the floor, after
        // which least connections sends it nothing while its peers have an idle slot.
        let mut l = Loop::new(ControlSettings::default());
        let slow = |slow_ms: u64| move |i: usize| if i == 2 { slow_ms } else { 2 };
        let (mut last, mut decision) = l.tick_picked(slow(16));
        for _ in 1..12 {
            (last, decision) = l.tick_picked(slow(16));
        }
        let w = l.weights();
        assert!(w[2] <= w[0] * 0.06, "{w:?}");
        // Only the probe reaches it: one request per tick.
        assert_eq!(last[2], 1, "{last:?}");
        assert!(
            decision
                .guardrails
                .iter()
                .any(|g| g == "probe: backends [2]"),
            "{decision:?}"
        );
        // It heals: the probes show it, and within a few ticks it is back to an equal weight.
        for _ in 0..8 {
            l.tick_picked(slow(2));
        }
        let w = l.weights();
        assert!(w[2] >= w[0] * 0.8, "{w:?}");

        // With probes disabled, least connections never sends it another request once it
        // is below its peers, so the loop never sees it heal.
        let mut l = Loop::new(ControlSettings {
            probes: 0,
            ..ControlSettings::default()
        });
        let mut late = 0;
        for k in 0..20 {
            let (got, _) = l.tick_picked(slow(if k < 12 { 16 } else { 2 }));
            if k >= 12 {
                late += got[2];
            }
        }
        let w = l.weights();
        assert_eq!(late, 0);
        assert!(w[2] < w[0] * 0.95, "{w:?}");
    }
}
