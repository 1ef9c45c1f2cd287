//! A pool's demand, step after step: its request rate, the forecasts of that rate, the
//! capacity of one backend and the backend count to run.
//!
//! The rate is read from the counters the data plane already keeps (each backend's completed
//! attempts, a relaxed atomic load), so the request path does nothing more. Every step the
//! rate goes into a [`Tracker`], which forecasts it (the built-in forecaster, or an
//! [`OnnxForecaster`] whose refused answers fall back to it), and [`recommend`] turns the
//! highest p90 until the provisioning horizon into a backend count with the reasoning in words. The time is
//! an input, so the simulator can drive the same code on simulated time.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_balance::histogram::HistogramSnapshot;
use fulcrum_balance::Pool;
use fulcrum_config::AutoscaleConfig;
use fulcrum_forecast::builtin::{WARMUP_STEPS, Z90};
use fulcrum_forecast::recommend::{duration_words, plural, thousands};
use fulcrum_forecast::{
    capacity_per_backend, recommend_for, Forecast, Hold, RateRing, Sizing, Tracker,
};

use crate::forecast_model::{ForecastRefused, OnnxForecaster};

/// Horizons every pool is forecast at, seconds (its own `horizon_s` is added).
pub const REPORTED_HORIZONS_S: [f64; 3] = [60.0, 300.0, 900.0];
/// Horizons between now and the provisioning horizon the recommendation takes the highest
/// p90 of (see [`DemandSettings::planning_horizons_s`]).
pub const PLAN_POINTS: usize = 6;
/// The longest series kept, in steps: two days at the default 10 s step.
pub const MAX_STEPS: usize = 17_280;
/// Seconds of history the ring aims for: two cycles of a daily season.
const HISTORY_S: f64 = 2.0 * 86_400.0;
/// Steps of mean latency among which the lowest stands for the pool's idle latency.
const BASELINE_STEPS: usize = 360;
/// A step with more failed attempts than this is not "healthy latency": no capacity sample.
const MAX_ERROR_SHARE: f64 = 0.05;
/// Utilisation below this, inferred from latency, is not a capacity sample: latency within a
/// quarter of its idle level is noise as much as load.
const MIN_LATENCY_UTILIZATION: f64 = 0.2;
/// The plan never exceeds this multiple of the highest rate of the recent past (unless the
/// rate now does): a forecast far beyond anything the pool has seen lately is an
/// extrapolation (a trend carried past the turn of a cycle not found yet, a p90 widened by
/// bursts that are over), not demand.
const PLAN_CEILING: f64 = 1.25;
/// The recent past of [`PLAN_CEILING`], in steps: at least this many (10 minutes at the default
/// 10 s step), and at least twice the provisioning horizon (see
/// [`DemandSettings::ceiling_steps`]). Counted in steps, like the forecaster's memory of its own
/// errors that widens the p90 this bounds, so that it means the same at any step.
const PLAN_CEILING_WINDOW_STEPS: usize = 60;
/// The demand outran the plan when the rate arriving would have loaded the backends sized for
/// the previous step's plan to this share of their capacity or more (beyond a step's counting
/// noise): 1.29× the plan at a 70 % target. Such a rise was not in the forecast's p90, and the
/// backends serving meet it alone until new ones take traffic; the burst spare
/// ([`DemandSettings::burst_spare_backends`]) is kept for the next one.
pub const SURPRISE_UTILIZATION: f64 = 0.9;
/// Weight of a new capacity sample in the running estimate.
const CAPACITY_SMOOTHING: f64 = 0.3;

/// How a pool's demand is tracked and sized, from `[pools.NAME.autoscale]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandSettings {
    /// Seconds per step.
    pub step_s: f64,
    /// The provisioning horizon, seconds.
    pub horizon_s: f64,
    /// Utilisation target and backend bounds.
    pub sizing: Sizing,
    /// A backend's capacity when the operator knows it.
    pub backend_capacity_rps: Option<f64>,
    /// Seconds the recommendation must have been lower before it goes down (0: every step).
    pub scale_down_stabilization_s: f64,
    /// Backends recommended beyond what the demand needs (N+1 when 1).
    pub spare_backends: u32,
    /// Backends recommended beyond what the demand needs for `burst_memory_s` after the
    /// demand outran the plan (see [`SURPRISE_UTILIZATION`]); 0 turns it off.
    pub burst_spare_backends: u32,
    /// Seconds the burst spare is kept after the demand last outran the plan.
    pub burst_memory_s: f64,
}

impl From<&AutoscaleConfig> for DemandSettings {
    fn from(a: &AutoscaleConfig) -> Self {
        DemandSettings {
            step_s: a.step.as_secs_f64(),
            horizon_s: a.horizon.as_secs_f64(),
            sizing: Sizing {
                target_utilization: a.target_utilization,
                min_backends: a.min_backends,
                max_backends: a.max_backends,
            },
            backend_capacity_rps: a.backend_capacity_rps,
            scale_down_stabilization_s: a.scale_down_stabilization.as_secs_f64(),
            spare_backends: a.spare_backends,
            burst_spare_backends: a.burst_spare_backends,
            burst_memory_s: a.burst_memory.as_secs_f64(),
        }
    }
}

impl DemandSettings {
    /// The step as a duration.
    pub fn step(&self) -> Duration {
        Duration::from_secs_f64(self.step_s)
    }

    /// The horizons the recommendation looks at: [`PLAN_POINTS`] whole steps spread evenly up
    /// to the provisioning horizon (which is the last). A backend removed now is gone at once
    /// while one added now serves only after `horizon_s`, so the pool must cover the highest
    /// demand expected anywhere in between, not only the one at the horizon.
    pub fn planning_horizons_s(&self) -> Vec<f64> {
        let steps = (self.horizon_s / self.step_s).round().max(1.0) as usize;
        let points = steps.min(PLAN_POINTS);
        let mut h: Vec<f64> = (1..=points)
            .map(|i| (steps * i).div_ceil(points) as f64 * self.step_s)
            .collect();
        if let Some(last) = h.last_mut() {
            *last = self.horizon_s;
        }
        h.dedup();
        h
    }

    /// Steps the burst spare is kept after the demand last outran the plan (the step of the
    /// surprise not counted): the whole steps `burst_memory_s` holds.
    pub fn burst_memory_steps(&self) -> u64 {
        let steps = (self.burst_memory_s / self.step_s + 1e-9).floor();
        if steps.is_finite() && steps > 0.0 {
            steps as u64
        } else {
            0
        }
    }

    /// Steps whose recommendations hold a scale-down back: those of the last
    /// `scale_down_stabilization_s`, the current one included (at least the current one).
    pub fn stabilization_steps(&self) -> usize {
        ((self.scale_down_stabilization_s / self.step_s).round() as usize).max(1)
    }

    /// Steps of the recent past whose highest rate bounds the plan: the last
    /// [`PLAN_CEILING_WINDOW_STEPS`] or twice `horizon_s`, whichever is longer. Measured against
    /// the whole series instead, one burst or a level that has since fallen keeps the bound high
    /// for as long as the ring remembers it (two days), and a p90 widened by bursts is paid
    /// for all that time.
    pub fn ceiling_steps(&self) -> usize {
        let horizon = (2.0 * self.horizon_s / self.step_s).ceil();
        PLAN_CEILING_WINDOW_STEPS.max(if horizon.is_finite() {
            horizon as usize
        } else {
            1
        })
    }

    /// The recent past of [`DemandSettings::ceiling_steps`] in words ("10 min").
    fn ceiling_words(&self) -> String {
        duration_words(self.ceiling_steps() as f64 * self.step_s)
    }

    /// The horizons forecast each step: [`REPORTED_HORIZONS_S`] and the provisioning horizon.
    pub fn horizons_s(&self) -> Vec<f64> {
        let mut h = REPORTED_HORIZONS_S.to_vec();
        if !h.contains(&self.horizon_s) {
            h.push(self.horizon_s);
            h.sort_by(f64::total_cmp);
        }
        h
    }
}

/// The forecast of one horizon.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HorizonForecast {
    /// Seconds ahead.
    pub horizon_s: f64,
    /// Median rate, requests per second.
    pub p50: f64,
    /// 90th percentile rate, requests per second.
    pub p90: f64,
}

/// A step whose demand outran the plan made the step before, in `/api/forecast`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OutranPlan {
    /// The rate that arrived, requests per second.
    pub arrived_rps: f64,
    /// The demand the previous step's count was sized for, requests per second.
    pub planned_rps: f64,
}

/// What one step found, for metrics and `/api/forecast`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DemandReport {
    /// Steps recorded so far.
    pub steps: u64,
    /// Seconds per step.
    pub step_s: f64,
    /// The rate sent to the pool's backends in the step just ended, requests per second:
    /// attempts completed plus the growth of those in flight (what the series records).
    pub observed_rps: f64,
    /// Attempts the backends completed in the step, per second.
    pub completed_rps: f64,
    /// The demand the count is sized for: the highest p90 until the provisioning horizon, or
    /// the rate now when that is higher, requests per second.
    pub planned_rps: f64,
    /// Forecasts per horizon, shortest first.
    pub forecasts: Vec<HorizonForecast>,
    /// The provisioning horizon the recommendation covers, seconds.
    pub horizon_s: f64,
    /// `builtin`, or the model's file name when its answer was used this step.
    pub forecaster: String,
    /// Why the model's answer was not used this step (the built-in forecast was).
    pub model_fallback: Option<String>,
    /// The season found in the series (or none), seconds.
    pub season_s: Option<f64>,
    /// Steps of the series held, read back from a history at start or counted.
    pub series_steps: usize,
    /// Whether enough steps are held to forecast (otherwise the observed rate stands in).
    pub warm: bool,
    /// Requests per second one backend serves at full utilisation, when known.
    pub capacity_per_backend_rps: Option<f64>,
    /// Where the capacity comes from: `configured`, `reported load`, `latency`, or `unknown`.
    pub capacity_source: &'static str,
    /// Backends in the pool now.
    pub current_backends: u32,
    /// Backends eligible for traffic now.
    pub healthy_backends: u32,
    /// Backends to run.
    pub recommended_backends: u32,
    /// Backends the demand alone asks for, before the scale-down stabilisation holds a
    /// recent higher count (the spare backends included).
    pub needed_backends: u32,
    /// Of those, the burst spare in force: backends kept for `burst_memory_s` after the
    /// demand outran the plan.
    pub burst_spare_backends: u32,
    /// Set at the step the demand outran the plan.
    pub outran_plan: Option<OutranPlan>,
    /// The reasoning in words.
    pub reason: String,
    /// Share of the step's attempts that failed.
    pub error_share: f64,
}

/// The counters of one backend at the start of the step.
#[derive(Debug, Clone, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    in_flight: u64,
    latency: HistogramSnapshot,
}

/// What the pool's backends did in one step, read from their counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepObservation {
    /// Completed attempts per second (retries included: they are load the backends carry).
    pub rate_rps: f64,
    /// Share of the attempts that failed.
    pub error_share: f64,
    /// Mean latency of the step's attempts, ms (`None` without any).
    pub mean_latency_ms: Option<f64>,
    /// Mean utilisation the healthy backends report about themselves, if any does.
    pub reported_load: Option<f64>,
    /// Backends in the pool.
    pub backends: u32,
    /// Backends eligible for traffic.
    pub healthy: u32,
    /// How much the attempts in flight grew over the step, per second (negative when they
    /// fell): demand that arrived but did not complete yet, a queue building up.
    pub in_flight_growth_rps: f64,
}

/// The capacity of one backend, from the operator or from what the pool does: throughput
/// divided by utilisation, where utilisation is what the backends report about themselves, or
/// else how far latency has risen above its idle level (`1 − idle / now`, the M/M/1 relation).
#[derive(Debug, Clone, Default)]
pub struct CapacityEstimator {
    estimate: Option<f64>,
    source: &'static str,
    recent_latency_ms: VecDeque<f64>,
}

impl CapacityEstimator {
    /// Take one step's observation into the estimate; returns the estimate and its source.
    pub fn update(
        &mut self,
        obs: &StepObservation,
        configured: Option<f64>,
    ) -> (Option<f64>, &'static str) {
        if let Some(c) = configured {
            return (Some(c), "configured");
        }
        if let Some(ms) = obs.mean_latency_ms.filter(|ms| *ms > 0.0) {
            if self.recent_latency_ms.len() == BASELINE_STEPS {
                self.recent_latency_ms.pop_front();
            }
            self.recent_latency_ms.push_back(ms);
        }
        if obs.error_share <= MAX_ERROR_SHARE {
            let sample = match (obs.reported_load, obs.mean_latency_ms) {
                (Some(load), _) => Some((load, "reported load")),
                (None, Some(now)) if now > 0.0 => {
                    // The idle level is a low percentile rather than the minimum, which noise
                    // alone drags down; and a rise under a quarter is not told apart from noise.
                    let mut recent: Vec<f64> = self.recent_latency_ms.iter().copied().collect();
                    recent.sort_by(f64::total_cmp);
                    let idle = recent[recent.len() / 10];
                    let utilization = 1.0 - idle / now;
                    (utilization >= MIN_LATENCY_UTILIZATION).then_some((utilization, "latency"))
                }
                _ => None,
            }
            .and_then(|(utilization, source)| {
                capacity_per_backend(obs.rate_rps, utilization, obs.healthy).map(|c| (c, source))
            });
            if let Some((c, source)) = sample {
                self.estimate = Some(match self.estimate {
                    Some(e) => e + CAPACITY_SMOOTHING * (c - e),
                    None => c,
                });
                self.source = source;
            }
        }
        match self.estimate {
            Some(e) => (Some(e), self.source),
            None => (None, "unknown"),
        }
    }
}

/// One pool's demand tracking.
pub struct PoolDemand {
    settings: DemandSettings,
    tracker: Tracker,
    counters: HashMap<SocketAddr, Counters>,
    step_started_ns: u64,
    /// When the counters were last read (the rates divide by the time since).
    observed_ns: u64,
    steps: u64,
    capacity: CapacityEstimator,
    latest: Option<DemandReport>,
    /// The counts the demand asked for in the last steps, `(step, backends)`, oldest first.
    recent: VecDeque<(u64, u32)>,
    /// The demand the previous step's count was sized for, once warm.
    last_plan: Option<f64>,
    /// The last step whose demand outran the plan, and by how much.
    surprise: Option<(u64, OutranPlan)>,
}

impl std::fmt::Debug for PoolDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolDemand")
            .field("settings", &self.settings)
            .field("steps", &self.steps)
            .finish()
    }
}

/// Steps the ring holds for `step_s`: two days, at most [`MAX_STEPS`].
pub fn ring_steps(step_s: f64) -> usize {
    ((HISTORY_S / step_s).ceil() as usize).clamp(WARMUP_STEPS * 4, MAX_STEPS)
}

impl PoolDemand {
    /// Start tracking `pool` now: the first step counts what happens from `now_ns` on.
    pub fn new(pool: &Pool, settings: DemandSettings, now_ns: u64) -> Self {
        let mut demand = Self::blank(settings, now_ns);
        demand.observe(pool, now_ns);
        demand
    }

    /// Tracking with nothing counted or learnt, its first step starting at `now_ns`.
    fn blank(settings: DemandSettings, now_ns: u64) -> Self {
        PoolDemand {
            tracker: Tracker::new(
                RateRing::new(settings.step_s, ring_steps(settings.step_s)),
                None,
            ),
            settings,
            counters: HashMap::new(),
            step_started_ns: now_ns,
            observed_ns: now_ns,
            steps: 0,
            capacity: CapacityEstimator::default(),
            latest: None,
            recent: VecDeque::new(),
            last_plan: None,
            surprise: None,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &DemandSettings {
        &self.settings
    }

    /// New settings (a reload); the series is kept when the step is unchanged, and `false` is
    /// returned when it cannot be (the caller starts afresh).
    pub fn reconfigure(&mut self, settings: DemandSettings) -> bool {
        if settings.step_s != self.settings.step_s {
            return false;
        }
        self.settings = settings;
        true
    }

    /// Put a series kept from before (oldest first, the last rate the step before the first
    /// one this pool counted) in the ring, ahead of the steps counted since: a restart keeps
    /// the forecast's history. The ring keeps its length; the oldest steps go first.
    pub fn prepend(&mut self, older: &[f64]) {
        let counted = self.tracker.ring().to_vec();
        let mut ring = RateRing::new(self.settings.step_s, ring_steps(self.settings.step_s));
        for &r in older.iter().chain(&counted) {
            ring.push(r);
        }
        self.tracker = Tracker::new(ring, None);
    }

    /// This pool's tracking as a process started afresh has it: the same settings and nothing
    /// learnt (no series, no capacity estimate, no recent counts, no surprise).
    pub fn afresh(&self) -> PoolDemand {
        PoolDemand {
            counters: self.counters.clone(),
            step_started_ns: self.step_started_ns,
            observed_ns: self.observed_ns,
            ..Self::blank(self.settings.clone(), self.observed_ns)
        }
    }

    /// When the step under way started (the end of the last one, on the step schedule), in
    /// the time base of [`PoolDemand::step`]'s `now_ns`.
    pub fn step_started_ns(&self) -> u64 {
        self.step_started_ns
    }

    /// Steps counted (and forecast) since this pool's tracking started.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether a step has ended at `now_ns`.
    pub fn due(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.step_started_ns) as f64 >= self.settings.step_s * 1e9
    }

    /// The last step's report.
    pub fn latest(&self) -> Option<&DemandReport> {
        self.latest.as_ref()
    }

    /// The rate series, oldest first.
    pub fn series(&self) -> Vec<f64> {
        self.tracker.ring().to_vec()
    }

    /// Read the pool's counters: what happened since the previous read. Backends are matched
    /// by address, so a reload that rebuilds the pool loses no count; a backend seen for the
    /// first time counts from now.
    fn observe(&mut self, pool: &Pool, now_ns: u64) -> StepObservation {
        let elapsed_s = now_ns.saturating_sub(self.observed_ns) as f64 / 1e9;
        self.observed_ns = now_ns;
        let (mut requests, mut errors, mut latency_sum_us, mut latency_n) = (0u64, 0u64, 0.0, 0);
        let (mut load_sum, mut load_n, mut healthy) = (0.0, 0u32, 0u32);
        let mut in_flight_growth = 0i64;
        let mut seen = HashMap::with_capacity(pool.backends().len());
        for b in pool.backends() {
            let s = &b.stats;
            let (r, e, f) = (s.requests(), s.errors(), s.in_flight());
            let fresh = !self.counters.contains_key(&b.addr);
            let prev = self.counters.remove(&b.addr).unwrap_or_else(|| Counters {
                requests: r,
                errors: e,
                in_flight: f,
                latency: s.latency_histogram().snapshot(),
            });
            let mut latency = prev.latency;
            let window = s.latency_histogram().advance(&mut latency);
            if !fresh {
                requests += r.saturating_sub(prev.requests);
                errors += e.saturating_sub(prev.errors);
                // Only backends seen at both ends: one joining or leaving with attempts in
                // flight is not demand arriving or leaving.
                in_flight_growth += f as i64 - prev.in_flight as i64;
                if let Some(mean) = window.mean_us {
                    latency_sum_us += mean * window.count as f64;
                    latency_n += window.count;
                }
            }
            if s.is_healthy() {
                healthy += 1;
                if let Some(load) = s.reported_load() {
                    load_sum += load.clamp(0.0, 1.0);
                    load_n += 1;
                }
            }
            seen.insert(
                b.addr,
                Counters {
                    requests: r,
                    errors: e,
                    in_flight: f,
                    latency,
                },
            );
        }
        self.counters = seen;
        StepObservation {
            rate_rps: if elapsed_s > 0.0 {
                requests as f64 / elapsed_s
            } else {
                0.0
            },
            error_share: if requests > 0 {
                errors as f64 / requests as f64
            } else {
                0.0
            },
            mean_latency_ms: (latency_n > 0).then(|| latency_sum_us / latency_n as f64 / 1000.0),
            reported_load: (load_n > 0).then(|| load_sum / f64::from(load_n)),
            backends: pool.backends().len() as u32,
            healthy,
            in_flight_growth_rps: if elapsed_s > 0.0 {
                in_flight_growth as f64 / elapsed_s
            } else {
                0.0
            },
        }
    }

    /// End the step at `now_ns`: record the rate, forecast, size. `model` is the forecast
    /// model to try first; its refused answers fall back to the built-in forecaster.
    pub fn step(
        &mut self,
        pool: &Pool,
        now_ns: u64,
        model: Option<&mut OnnxForecaster>,
    ) -> &DemandReport {
        // Steps keep their length on average: the next one starts `step_s` after this one did,
        // not at the control tick that noticed its end (which would stretch every step by up
        // to a tick). After a stall of two steps or more the schedule starts again from now.
        let step_ns = (self.settings.step_s * 1e9) as u64;
        self.step_started_ns = if now_ns.saturating_sub(self.step_started_ns) < 2 * step_ns {
            self.step_started_ns + step_ns
        } else {
            now_ns
        };
        let obs = self.observe(pool, now_ns);
        self.record(obs, model)
    }

    /// End a step whose observation the caller made (the simulator's path).
    pub fn record(
        &mut self,
        obs: StepObservation,
        model: Option<&mut OnnxForecaster>,
    ) -> &DemandReport {
        self.steps += 1;
        let step_s = self.settings.step_s;
        // What arrived, not only what completed: under overload completions are capped at what
        // the backends can do, and the rest waits in flight.
        let offered = (obs.rate_rps + obs.in_flight_growth_rps).max(0.0);
        self.tracker.push(offered);
        // One forecast call for the reported horizons and the planning ones, then split.
        let reported = self.settings.horizons_s();
        let planning = self.settings.planning_horizons_s();
        let mut horizons = reported.clone();
        horizons.extend(planning.iter().copied());
        horizons.sort_by(f64::total_cmp);
        horizons.dedup();
        let builtin = self.tracker.forecast(&horizons);
        let warm = builtin.is_some();
        let mut forecaster = "builtin".to_string();
        let mut model_fallback = None;
        let forecasts: Vec<Forecast> = match (builtin, model) {
            (None, _) => vec![Forecast::new(offered, offered); horizons.len()],
            (Some(b), None) => b,
            (Some(b), Some(m)) => {
                let season = self.tracker.season_steps();
                let history = self.tracker.ring().to_vec();
                // The tracker's forecasts are the built-in ones for this history and season:
                // the model reads them instead of fitting them again.
                match m.forecast_from_builtin(&history, step_s, &horizons, season, &b) {
                    Ok(f) => {
                        forecaster = m.name().to_string();
                        f
                    }
                    Err(why) => {
                        model_fallback = Some(match why {
                            ForecastRefused::NoInput(w) => {
                                format!("model {} not run: {w}", m.name())
                            }
                            ForecastRefused::BadOutput(w) => {
                                format!("model {} refused this step: {w}", m.name())
                            }
                        });
                        b
                    }
                }
            }
        };
        let (capacity, capacity_source) = self
            .capacity
            .update(&obs, self.settings.backend_capacity_rps);
        let of = |h: &f64| {
            horizons
                .iter()
                .position(|x| x == h)
                .map_or(forecasts[0], |i| forecasts[i])
        };
        // The highest p90 until a backend started now would serve, of the demand rather than
        // of a step's count (see [`demand_p90`]), and never below the rate now once it is
        // above that by more than a step's counting noise: backends are not given up before
        // the demand has actually fallen.
        let (forecast_p90, highest_p90) = planning
            .iter()
            .map(|h| (of(h).p90, demand_p90(of(h), step_s)))
            .fold((0.0, 0.0), |(a, b), (x, y)| {
                (f64::max(a, x), f64::max(b, y))
            });
        let less_noise = (thousands(forecast_p90) != thousands(highest_p90)).then(|| {
            format!(
                "the forecast's {} rps less a step's counting noise",
                thousands(forecast_p90)
            )
        });
        let counted = less_noise
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})"));
        let within = duration_words(self.settings.horizon_s);
        let recent = self.settings.ceiling_steps().min(self.tracker.ring().len());
        let highest_seen = self.tracker.ring().highest_of_last(recent);
        let highest = highest_demand(highest_seen, recent, step_s).max(offered);
        let ceiling = PLAN_CEILING * highest;
        let chance = if thousands(highest) == thousands(highest_seen) {
            ""
        } else {
            " less the counting noise of its luckiest step"
        };
        // Above every forecast: the count follows the rate arriving now.
        let chasing = surely_above(offered, highest_p90, step_s);
        let (plan, basis) = if chasing {
            (
                offered,
                format!(
                    "rate now: {} rps, above the highest p90 within {within} ({} rps{})",
                    thousands(offered),
                    thousands(highest_p90),
                    less_noise
                        .as_ref()
                        .map_or(String::new(), |n| format!("; {n}"))
                ),
            )
        } else if highest_p90 > ceiling {
            (
                ceiling,
                format!(
                    "highest p90 within {within}: {} rps{counted}, bounded to {} rps ({PLAN_CEILING}× the highest rate of the last {}{chance})",
                    thousands(highest_p90),
                    thousands(ceiling),
                    self.settings.ceiling_words()
                ),
            )
        } else {
            (
                highest_p90,
                format!(
                    "highest p90 within {within}: {} rps{counted}",
                    thousands(highest_p90)
                ),
            )
        };
        let capacity_rps = capacity.unwrap_or(f64::NAN);
        let sizing = self.settings.sizing;
        // Did the demand outrun the plan? Only against a plan made from a forecast: in the
        // warm-up the plan is the rate of the step before, and every rise would count.
        let mut outran_plan = None;
        if let (true, Some(before)) = (warm, self.last_plan) {
            let limit = before * (SURPRISE_UTILIZATION / sizing.target_utilization).max(1.0);
            if surely_above(offered, limit, step_s) {
                let o = OutranPlan {
                    arrived_rps: offered,
                    planned_rps: before,
                };
                outran_plan = Some(o);
                self.surprise = Some((self.steps, o));
            }
        }
        self.last_plan = warm.then_some(plan);
        // Spare backends: sized as that much more demand at the target utilisation, so the
        // count is exactly the spare above what the demand needs (before clamping).
        let per_backend = capacity_rps * sizing.target_utilization;
        let spare = self.settings.spare_backends;
        let sized = per_backend.is_finite() && per_backend > 0.0;
        // The burst spare is for the next burst: while the plan is the rate arriving now, the
        // count is sized for the demand that is here.
        let burst = self.burst_spare().filter(|_| sized && !chasing);
        let mut sized_for = plan;
        let mut basis = basis;
        if sized {
            if spare > 0 {
                sized_for += f64::from(spare) * per_backend;
                basis = format!(
                    "{basis}, and {spare} spare backend{} (~{} rps)",
                    plural(spare),
                    thousands(f64::from(spare) * per_backend)
                );
            }
            if let Some((n, why)) = &burst {
                let n = *n;
                sized_for += f64::from(n) * per_backend;
                basis = format!(
                    "{basis}, and {n} {}backend{} for bursts (~{} rps) {why}",
                    if spare > 0 { "more " } else { "spare " },
                    plural(n),
                    thousands(f64::from(n) * per_backend)
                );
            }
        }
        let needed = recommend_for(sized_for, &basis, capacity_rps, sizing, obs.backends, None);
        // Scale-down stabilisation: the highest count the demand asked for over the window.
        let window = self.settings.stabilization_steps() as u64;
        while self
            .recent
            .front()
            .is_some_and(|&(at, _)| at + window <= self.steps)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((self.steps, needed.backends));
        let held = self.recent.iter().map(|&(_, b)| b).max().unwrap_or(0);
        let rec = if held > needed.backends {
            recommend_for(
                sized_for,
                &basis,
                capacity_rps,
                sizing,
                obs.backends,
                Some(Hold {
                    backends: held,
                    window_s: self.settings.scale_down_stabilization_s,
                }),
            )
        } else {
            needed.clone()
        };
        let reason = if warm {
            rec.reason
        } else {
            format!(
                "warming up ({} of {WARMUP_STEPS} steps), the observed rate stands in for the forecast; {}",
                self.tracker.ring().len(),
                rec.reason
            )
        };
        self.latest = Some(DemandReport {
            steps: self.steps,
            step_s,
            observed_rps: offered,
            completed_rps: obs.rate_rps,
            planned_rps: plan,
            forecasts: reported
                .iter()
                .map(|h| {
                    let f = of(h);
                    HorizonForecast {
                        horizon_s: *h,
                        p50: f.p50,
                        p90: f.p90,
                    }
                })
                .collect(),
            horizon_s: self.settings.horizon_s,
            forecaster,
            model_fallback,
            season_s: self.tracker.season_steps().map(|m| m as f64 * step_s),
            series_steps: self.tracker.ring().len(),
            warm,
            capacity_per_backend_rps: capacity,
            capacity_source,
            current_backends: obs.backends,
            healthy_backends: obs.healthy,
            recommended_backends: rec.backends,
            needed_backends: needed.backends,
            burst_spare_backends: burst.map_or(0, |(n, _)| n),
            outran_plan,
            reason,
            error_share: obs.error_share,
        });
        self.latest.as_ref().expect("just set")
    }

    /// The burst spare in force at this step and why, while the last surprise is within
    /// `burst_memory_s`.
    fn burst_spare(&self) -> Option<(u32, String)> {
        let n = self.settings.burst_spare_backends;
        let (at, s) = self.surprise?;
        let ago = self.steps - at;
        let memory = self.settings.burst_memory_steps();
        if n == 0 || ago > memory {
            return None;
        }
        let step_s = self.settings.step_s;
        let when = if ago == 0 {
            "this step".to_string()
        } else {
            format!("{} ago", duration_words(ago as f64 * step_s))
        };
        let left = match memory - ago {
            0 => "for this step".to_string(),
            k => format!("for {} more", duration_words(k as f64 * step_s)),
        };
        Some((
            n,
            format!(
                "{left}: {} rps arrived {when} against {} rps planned",
                thousands(s.arrived_rps),
                thousands(s.planned_rps)
            ),
        ))
    }
}

/// The p90 of the demand a forecast's p90 stands for. A forecast's quantiles describe what a
/// step will count, and a step of `step_s` seconds counting arrivals at a steady λ rps varies by
/// √(λ / step_s) rps (Poisson) without the demand moving at all: noise a pool is not sized for
/// (its target utilisation absorbs arrivals that bunch up; a 10 s step at 980 rps holds ~9,800
/// requests, ±1 %, but a step of 0.25 s holds ~245, ±6 %). Taking the spread above the median
/// as normal, that variance is taken out of it: p50 + z₀.₉·√(max(0, ((p90 − p50)/z₀.₉)² − p50/step_s)).
/// A spread wider than counting explains (a demand that moves, errors of the forecaster) is
/// kept, so arrivals more bunched than Poisson keep what exceeds it.
pub fn demand_p90(f: Forecast, step_s: f64) -> f64 {
    if f.p90 <= f.p50 {
        return f.p90;
    }
    let spread = (f.p90 - f.p50) / Z90;
    let counting = counting_sd(f.p50, step_s);
    f.p50 + Z90 * (spread * spread - counting * counting).max(0.0).sqrt()
}

/// The standard deviation, in rps, of the rate a step of `step_s` seconds counts when arrivals
/// come at a steady `rps` (Poisson): √(rps / step_s); 0 for a step that is not positive.
fn counting_sd(rps: f64, step_s: f64) -> f64 {
    if step_s > 0.0 {
        (rps.max(0.0) / step_s).sqrt()
    } else {
        0.0
    }
}

/// The highest demand among `n` steps whose highest count was `highest` rps over `step_s`
/// seconds each: that count less what chance adds to the highest of `n` counts of a steady
/// demand, √(`highest` / `step_s`) times the expected highest of `n` standard normal draws (about
/// 2.4 for 60). Without it the plan's bound rises with the counting noise: 15 % above a steady
/// 980 rps counted in quarter-second steps, 2 % with 10 s steps.
pub fn highest_demand(highest: f64, n: usize, step_s: f64) -> f64 {
    if n < 2 || highest.is_nan() || highest <= 0.0 {
        return highest.max(0.0);
    }
    // E[max of n standard normals] ≈ √(2 ln n) − (ln ln n + ln 4π − 2γ) / (2 √(2 ln n)).
    const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
    let ln_n = (n as f64).ln();
    let a = (2.0 * ln_n).sqrt();
    let z = if n < 3 {
        // n = 2: 1/√π exactly; the expansion needs ln ln n > 0 to hold.
        1.0 / std::f64::consts::PI.sqrt()
    } else {
        a - (ln_n.ln() + (4.0 * std::f64::consts::PI).ln() - 2.0 * EULER_GAMMA) / (2.0 * a)
    };
    (highest - z * counting_sd(highest, step_s)).max(0.0)
}

/// Whether the rate a step counted, `observed` rps over `step_s` seconds, is above `rps` by
/// more than the step's counting noise (its one-sided 90 % bound under Poisson arrivals).
pub fn surely_above(observed: f64, rps: f64, step_s: f64) -> bool {
    observed - Z90 * counting_sd(observed, step_s) > rps
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_balance::{Algorithm, Backend, Outcome};

    fn pool(n: u16) -> Pool {
        let backends = (1..=n)
            .map(|i| Backend::new(SocketAddr::from(([127, 0, 0, 1], i)), 1))
            .collect();
        Pool::new(
            "web",
            Algorithm::RoundRobin,
            backends,
            Duration::from_secs(10),
            5,
        )
    }

    fn settings(capacity: Option<f64>) -> DemandSettings {
        DemandSettings {
            step_s: 1.0,
            horizon_s: 5.0,
            sizing: Sizing {
                target_utilization: 0.5,
                min_backends: 1,
                max_backends: 50,
            },
            backend_capacity_rps: capacity,
            scale_down_stabilization_s: 0.0,
            spare_backends: 0,
            burst_spare_backends: 0,
            burst_memory_s: 3600.0,
        }
    }

    #[test]
    fn the_plan_looks_at_whole_steps_up_to_the_horizon() {
        assert_eq!(
            settings(None).planning_horizons_s(),
            [1.0, 2.0, 3.0, 4.0, 5.0]
        );
        let s = DemandSettings {
            step_s: 10.0,
            horizon_s: 120.0,
            ..settings(None)
        };
        assert_eq!(
            s.planning_horizons_s(),
            [20.0, 40.0, 60.0, 80.0, 100.0, 120.0]
        );
        let s = DemandSettings {
            step_s: 10.0,
            horizon_s: 300.0,
            ..settings(None)
        };
        assert_eq!(
            s.planning_horizons_s(),
            [50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
        );
        let s = DemandSettings {
            step_s: 10.0,
            horizon_s: 5.0,
            ..settings(None)
        };
        assert_eq!(s.planning_horizons_s(), [5.0]);
    }

    /// `n` attempts spread over the pool's backends, each `latency_ms` long.
    fn serve(pool: &Pool, n: u64, latency_ms: u64) {
        let backends = pool.backends().len() as u64;
        for i in 0..n {
            pool.record(
                (i % backends) as usize,
                latency_ms * 1_000_000,
                Outcome::Success,
                0,
            );
        }
    }

    #[test]
    fn steps_keep_their_length_when_ticks_do_not_divide_it() {
        let p = pool(2);
        let mut d = PoolDemand::new(&p, settings(Some(10.0)), 0);
        // Ticks every 0.3 s, steps of 1 s: 100 s hold 100 steps, not one per 1.2 s.
        let mut steps = 0;
        for tick in 1..=(100_000 / 300) {
            let t = tick * 300_000_000;
            if d.due(t) {
                serve(&p, 3, 2);
                d.step(&p, t, None);
                steps += 1;
            }
        }
        assert!((99..=100).contains(&steps), "{steps} steps in 100 s");
        // Rates are still counted over the time that really passed.
        let r = d.latest().unwrap();
        assert!(r.observed_rps > 2.0 && r.observed_rps < 4.5, "{r:?}");
        // After a stall the schedule starts again from the step that ended it.
        let stall = 100_000_000_000 + 10_000_000_000;
        assert!(d.due(stall));
        d.step(&p, stall, None);
        assert!(!d.due(stall + 900_000_000));
        assert!(d.due(stall + 1_000_000_000));
    }

    #[test]
    fn the_rate_is_read_from_the_counters_and_the_recommendation_follows_it() {
        let p = pool(2);
        let mut d = PoolDemand::new(&p, settings(Some(10.0)), 0);
        assert!(!d.due(999_999_999));
        assert!(d.due(1_000_000_000));
        let mut t = 0;
        for _ in 0..20 {
            t += 1_000_000_000;
            serve(&p, 20, 2);
            d.step(&p, t, None);
        }
        let r = d.latest().unwrap().clone();
        assert!(r.warm);
        assert!((r.observed_rps - 20.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.forecasts.len(), 4, "60/300/900 and the 5 s horizon");
        // 20 rps at 10 rps per backend at 50 %: 4 backends, 2 more than now.
        assert_eq!(r.recommended_backends, 4, "{r:?}");
        assert!(
            r.reason.ends_with("4 backends, 2 more than now"),
            "{}",
            r.reason
        );
        assert_eq!(r.capacity_source, "configured");
        for _ in 0..20 {
            t += 1_000_000_000;
            serve(&p, 60, 2);
            d.step(&p, t, None);
        }
        let r = d.latest().unwrap();
        assert!((r.observed_rps - 60.0).abs() < 1e-9, "{r:?}");
        assert!(r.recommended_backends >= 12, "{r:?}");
        assert_eq!(d.series().len(), 40);
    }

    #[test]
    fn warm_up_uses_the_observed_rate_and_says_so() {
        let p = pool(1);
        let mut d = PoolDemand::new(&p, settings(Some(10.0)), 0);
        serve(&p, 30, 1);
        let r = d.step(&p, 1_000_000_000, None);
        assert!(!r.warm);
        assert!(
            r.reason.starts_with("warming up (1 of 12 steps)"),
            "{}",
            r.reason
        );
        assert_eq!(r.forecasts[0].p90, 30.0);
        assert_eq!(r.recommended_backends, 6);
    }

    /// A step of `rps` completed at 2 ms on two backends, the attempts in flight growing by
    /// `growth` a second.
    fn obs(rps: f64, growth: f64) -> StepObservation {
        StepObservation {
            rate_rps: rps,
            mean_latency_ms: Some(2.0),
            backends: 2,
            healthy: 2,
            in_flight_growth_rps: growth,
            ..StepObservation::default()
        }
    }

    #[test]
    fn a_scale_down_waits_until_the_demand_has_been_lower_for_the_window() {
        let p = pool(2);
        let mut follow = PoolDemand::new(&p, settings(Some(10.0)), 0);
        let held = DemandSettings {
            scale_down_stabilization_s: 5.0,
            ..settings(Some(10.0))
        };
        assert_eq!(held.stabilization_steps(), 5);
        let mut stable = PoolDemand::new(&p, held, 0);
        // A plateau, a fall, noise: each step the stabilised count is the highest of the
        // last five counts the demand alone asked for.
        let rates = (0..60).map(|i| match i {
            0..=19 => 60.0,
            20..=39 => 15.0,
            _ => 30.0 + if i % 3 == 0 { 12.0 } else { 0.0 },
        });
        let mut needed = Vec::new();
        let mut held_steps = 0;
        for r in rates {
            let f = follow.record(obs(r, 0.0), None).clone();
            let s = stable.record(obs(r, 0.0), None).clone();
            assert_eq!(f.recommended_backends, f.needed_backends);
            assert_eq!(
                s.needed_backends, f.needed_backends,
                "the demand is the same"
            );
            needed.push(f.needed_backends);
            let window = &needed[needed.len().saturating_sub(5)..];
            assert_eq!(
                s.recommended_backends,
                *window.iter().max().unwrap(),
                "{window:?}: {}",
                s.reason
            );
            if s.recommended_backends > s.needed_backends {
                held_steps += 1;
                assert!(
                    s.reason.contains(&format!(
                        "{} backends would do, but {} were recommended within the last 5 s \
                         (scale-down stabilisation)",
                        s.needed_backends, s.recommended_backends
                    )),
                    "{}",
                    s.reason
                );
            } else {
                assert!(!s.reason.contains("stabilisation"), "{}", s.reason);
            }
        }
        assert!(held_steps >= 4, "the fall was held for {held_steps} steps");
    }

    #[test]
    fn demand_waiting_in_flight_counts_and_the_rate_now_is_a_floor() {
        let p = pool(2);
        let mut d = PoolDemand::new(&p, settings(Some(10.0)), 0);
        for _ in 0..20 {
            d.record(obs(20.0, 0.0), None);
        }
        let r = d.latest().unwrap().clone();
        assert_eq!((r.observed_rps, r.completed_rps), (20.0, 20.0));
        // The backends complete what they can (capped at 20 rps) while 100 more attempts a
        // second queue up: 120 rps arrived, more than any p90 forecast from the past.
        let r = d.record(obs(20.0, 100.0), None).clone();
        assert_eq!((r.observed_rps, r.completed_rps), (120.0, 20.0));
        assert_eq!(r.planned_rps, 120.0);
        // 120 rps at 5 rps per backend (10 at 50 %).
        assert_eq!(r.recommended_backends, 24, "{}", r.reason);
        assert!(
            r.reason
                .starts_with("rate now: 120 rps, above the highest p90 within 5 s ("),
            "{}",
            r.reason
        );
        assert_eq!(*d.series().last().unwrap(), 120.0);
        // The queue drains: fewer arrived than completed.
        let r = d.record(obs(20.0, -10.0), None);
        assert_eq!(r.observed_rps, 10.0);
    }

    /// Poisson counts (Knuth's method) from the scenarios' seeded generator: what a step
    /// counts at a steady intensity.
    struct Arrivals(fulcrum_scenario::rng::Rng);

    impl Arrivals {
        fn new(seed: u64) -> Self {
            Self(fulcrum_scenario::rng::Rng::new(seed))
        }

        fn count(&mut self, mean: f64) -> u64 {
            let (limit, mut product, mut k) = ((-mean).exp(), self.0.uniform(), 0);
            while product > limit {
                product *= self.0.uniform();
                k += 1;
            }
            k
        }
    }

    #[test]
    fn a_demand_that_outruns_the_plan_keeps_a_spare_backend_for_the_burst_memory() {
        let p = pool(2);
        let with = DemandSettings {
            burst_spare_backends: 1,
            burst_memory_s: 30.0,
            ..settings(Some(100.0))
        };
        let without = DemandSettings {
            burst_spare_backends: 0,
            ..with.clone()
        };
        let (mut a, mut b) = (
            PoolDemand::new(&p, with, 0),
            PoolDemand::new(&p, without, 0),
        );
        // 400 rps, then a burst to 800 for three steps (twice the plan, above the 1.8× that
        // loads backends sized at 50 % to 90 %), then 400 again for 40 steps.
        let rates = (0..40)
            .map(|_| 400.0)
            .chain((0..3).map(|_| 800.0))
            .chain((0..40).map(|_| 400.0));
        let mut spare_steps = Vec::new();
        for (i, r) in rates.enumerate() {
            let x = a.record(obs(r, 0.0), None).clone();
            let y = b.record(obs(r, 0.0), None);
            assert_eq!(y.burst_spare_backends, 0);
            // The surprise is the burst's first step, whether or not a spare follows it.
            let surprise = (i == 40).then_some(OutranPlan {
                arrived_rps: 800.0,
                planned_rps: 400.0,
            });
            assert_eq!(x.outran_plan, surprise, "step {i}: {}", x.reason);
            assert_eq!(y.outran_plan, surprise, "step {i}: {}", y.reason);
            assert_eq!(
                x.needed_backends,
                y.needed_backends + x.burst_spare_backends,
                "step {i}: {}",
                x.reason
            );
            if x.burst_spare_backends > 0 {
                assert_eq!(x.burst_spare_backends, 1);
                spare_steps.push(i);
            }
            if i == 43 {
                assert!(
                    x.reason.contains(
                        ", and 1 spare backend for bursts (~50 rps) for 27 s more: 800 rps \
                         arrived 3 s ago against 400 rps planned; one backend serves"
                    ),
                    "{}",
                    x.reason
                );
            }
        }
        // The burst's first step (the 41st) outran the plan (the two after it were planned
        // for: the rate now was the plan); while the count follows the rate arriving now there
        // is no spare, then one for the 30 steps after the surprise.
        assert_eq!(spare_steps, (43..=70).collect::<Vec<_>>());
    }

    #[test]
    fn counting_noise_and_the_forecasts_own_misses_are_not_bursts() {
        let p = pool(2);
        // At the default 70 % target a rate 1.29× the plan is a surprise; 300 rps counted
        // over 1 s varies by ±17 rps, and a noisy cycle is missed by its forecast now and then.
        let s = DemandSettings {
            sizing: Sizing {
                target_utilization: 0.7,
                ..settings(None).sizing
            },
            burst_spare_backends: 1,
            ..settings(Some(100.0))
        };
        let mut d = PoolDemand::new(&p, s, 0);
        let mut arrivals = Arrivals::new(0x5851_f42d_4c95_7f2d);
        for t in 0..1200 {
            let mean = 300.0 * (1.0 + 0.5 * (std::f64::consts::TAU * f64::from(t) / 200.0).sin());
            let r = d.record(obs(arrivals.count(mean) as f64, 0.0), None);
            assert_eq!(r.burst_spare_backends, 0, "step {t}: {}", r.reason);
        }
        // One step at twice the cycle's peak is one: the spare is kept from the next step on.
        d.record(obs(2.0 * 300.0 * 1.5, 0.0), None);
        let r = d.record(obs(arrivals.count(300.0) as f64, 0.0), None);
        assert_eq!(r.burst_spare_backends, 1, "{}", r.reason);
    }

    #[test]
    fn counting_noise_is_taken_out_of_the_spread_and_the_rest_is_kept() {
        let f = |p50: f64, p90: f64| Forecast { p50, p90 };
        // 100 rps counted over 1 s: ±10 rps of Poisson noise, a p90 of ~112.8 from counting
        // alone.
        let counting_only = f(100.0, 100.0 + Z90 * 10.0);
        assert!((demand_p90(counting_only, 1.0) - 100.0).abs() < 1e-9);
        // A spread of twice that: √(20² − 10²) of it is the demand's.
        let wider = f(100.0, 100.0 + Z90 * 20.0);
        let expected = 100.0 + Z90 * (300.0f64).sqrt();
        assert!((demand_p90(wider, 1.0) - expected).abs() < 1e-9);
        // Over 100 s the same rate counts ±1 rps: almost all of the spread is kept.
        assert!(demand_p90(wider, 100.0) > 100.0 + Z90 * 19.9);
        // Narrower than counting explains (arrivals more even than Poisson): the median.
        assert_eq!(demand_p90(f(100.0, 105.0), 1.0), 100.0);
        assert_eq!(demand_p90(f(100.0, 100.0), 1.0), 100.0);
        // The rate now is above a level only beyond its own counting noise.
        assert!(
            !surely_above(110.0, 100.0, 1.0),
            "110 ± 10.5 counted over 1 s"
        );
        assert!(surely_above(120.0, 100.0, 1.0));
        assert!(surely_above(110.0, 100.0, 100.0));
    }

    #[test]
    fn the_bound_is_on_the_highest_demand_not_on_the_luckiest_count() {
        // 60 steps of 0.25 s counting a steady 980 rps (~245 arrivals, ±6.4 %).
        let step_s = 0.25;
        let mut arrivals = Arrivals::new(0x2545_f491_4f6c_dd1d);
        let (mut raw, mut corrected) = (0.0, 0.0);
        let runs = 200;
        for _ in 0..runs {
            let highest = (0..60)
                .map(|_| arrivals.count(980.0 * step_s) as f64 / step_s)
                .fold(0.0, f64::max);
            raw += highest / runs as f64;
            corrected += highest_demand(highest, 60, step_s) / runs as f64;
        }
        assert!(
            raw > 980.0 * 1.12,
            "the highest count averages {raw:.0} rps"
        );
        assert!(
            (corrected / 980.0 - 1.0).abs() < 0.02,
            "the highest demand averages {corrected:.0} rps"
        );
        // Counted over 10 s steps, the correction is a couple of percent; one step, none.
        let ten = highest_demand(1000.0, 60, 10.0);
        assert!((970.0..985.0).contains(&ten), "{ten}");
        assert_eq!(highest_demand(1000.0, 1, 10.0), 1000.0);
        assert_eq!(highest_demand(0.0, 60, 10.0), 0.0);
    }

    #[test]
    fn a_demand_counted_in_short_steps_is_sized_for_itself_not_for_the_counting_noise() {
        // 200 rps ± 30 % over a cycle of 400 steps, counted in steps of 0.25 s (~50 arrivals,
        // ±14 %). The forecast's p90 covers what the next step counts; the plan only has to
        // cover the demand.
        let step_s = 0.25;
        let demand =
            |t: usize| 200.0 * (1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 400.0).sin());
        let p = pool(2);
        let mut d = PoolDemand::new(
            &p,
            DemandSettings {
                step_s,
                horizon_s: step_s,
                ..settings(Some(10.0))
            },
            0,
        );
        let mut arrivals = Arrivals::new(0x9e37_79b9_7f4a_7c15);
        let mut previous: Option<(f64, f64)> = None;
        let (mut counts_covered, mut demand_covered, mut n, mut said) = (0, 0, 0, 0);
        let (mut p90_sum, mut plan_sum, mut demand_sum) = (0.0, 0.0, 0.0);
        for t in 0..1600 {
            let counted = arrivals.count(demand(t) * step_s) as f64 / step_s;
            if let (Some((p90, plan)), true) = (previous, t >= 800) {
                counts_covered += usize::from(p90 >= counted);
                demand_covered += usize::from(plan >= demand(t));
                p90_sum += p90;
                plan_sum += plan;
                demand_sum += demand(t);
                n += 1;
            }
            let r = d.record(obs(counted, 0.0), None);
            let next = r.forecasts[0];
            assert_eq!(next.horizon_s, step_s);
            previous = Some((next.p90, r.planned_rps));
            if t >= 800 && r.reason.starts_with("highest p90 within ") {
                said += usize::from(r.reason.contains(" rps less a step's counting noise)"));
            }
        }
        assert!(said > 400, "{said} reasons said the noise was left out");
        let share = |k: usize| k as f64 / n as f64;
        assert!(
            (0.85..=0.95).contains(&share(counts_covered)),
            "the p90 covered the count in {:.3} of the steps",
            share(counts_covered)
        );
        assert!(
            share(demand_covered) >= 0.8,
            "the plan covered the demand in {:.3} of the steps",
            share(demand_covered)
        );
        let (p90, plan) = (p90_sum / demand_sum, plan_sum / demand_sum);
        assert!(p90 > 1.12, "the counts' p90 is {p90:.3}× the demand");
        assert!(
            plan < p90 - 0.05,
            "the plan is {plan:.3}× the demand, the p90 {p90:.3}×"
        );
    }

    #[test]
    fn the_plan_never_goes_far_beyond_the_highest_rate_seen() {
        let p = pool(2);
        let mut d = PoolDemand::new(
            &p,
            DemandSettings {
                horizon_s: 30.0,
                ..settings(Some(10.0))
            },
            0,
        );
        // A steep ramp: a trend carried 30 steps on lands far above anything seen.
        for i in 1..=20 {
            d.record(obs(10.0 * f64::from(i), 0.0), None);
        }
        let r = d.latest().unwrap();
        assert!(r.forecasts.iter().any(|f| f.p90 > 300.0), "{r:?}");
        assert_eq!(r.planned_rps, 250.0, "1.25 × 200 rps");
        assert_eq!(r.recommended_backends, 50, "{}", r.reason);
        assert!(
            r.reason
                .contains(", bounded to 250 rps (1.25× the highest rate of the last 1 min)"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn spare_backends_come_on_top_of_what_the_demand_needs_and_say_so() {
        let p = pool(2);
        let spare = |n| DemandSettings {
            spare_backends: n,
            ..settings(Some(10.0))
        };
        let (mut none, mut one) = (
            PoolDemand::new(&p, spare(0), 0),
            PoolDemand::new(&p, spare(1), 0),
        );
        for _ in 0..20 {
            none.record(obs(20.0, 0.0), None);
            one.record(obs(20.0, 0.0), None);
        }
        let (r0, r1) = (none.latest().unwrap(), one.latest().unwrap());
        // 20 rps at 5 rps per backend (10 at 50 %): 4, and one spare.
        assert_eq!(r0.recommended_backends, 4, "{}", r0.reason);
        assert_eq!(r1.recommended_backends, 5, "{}", r1.reason);
        assert_eq!(r1.planned_rps, r0.planned_rps, "the demand is the same");
        assert!(
            r1.reason.contains(
                "rps, and 1 spare backend (~5 rps); one backend serves ~5 rps at 50 %; 5 backends"
            ),
            "{}",
            r1.reason
        );
        // Clamped like any count.
        let mut capped = PoolDemand::new(
            &p,
            DemandSettings {
                sizing: Sizing {
                    max_backends: 4,
                    ..spare(3).sizing
                },
                ..spare(3)
            },
            0,
        );
        assert_eq!(capped.record(obs(20.0, 0.0), None).recommended_backends, 4);
    }

    #[test]
    fn the_bound_forgets_a_burst_once_it_is_out_of_the_recent_past() {
        let p = pool(2);
        let s = DemandSettings {
            step_s: 10.0,
            horizon_s: 300.0,
            ..settings(Some(100.0))
        };
        assert_eq!(
            s.ceiling_steps(),
            60,
            "10 min (twice the horizon) of 10 s steps"
        );
        assert_eq!(
            DemandSettings {
                step_s: 0.25,
                horizon_s: 7.5,
                ..s.clone()
            }
            .ceiling_steps(),
            60,
            "the same steps with every time scaled by 0.025"
        );
        assert_eq!(
            DemandSettings {
                horizon_s: 900.0,
                ..s.clone()
            }
            .ceiling_steps(),
            180,
            "twice a 15-minute horizon"
        );
        let mut d = PoolDemand::new(&p, s, 0);
        // A burst to 1,000 rps, 80 quiet steps at 100 rps (out of the last 60 by far), then a
        // steep ramp to 300 rps: its trend carried 5 minutes on lands far above 300 rps.
        let rates = (0..20)
            .map(|_| 100.0)
            .chain((0..3).map(|_| 1000.0))
            .chain((0..80).map(|_| 100.0))
            .chain((1..=20).map(|i| 100.0 + 10.0 * f64::from(i)));
        for r in rates {
            d.record(obs(r, 0.0), None);
        }
        let r = d.latest().unwrap();
        assert!(r.forecasts.iter().any(|f| f.p90 > 375.0), "{r:?}");
        // Against the whole series the bound would be 1,250 rps: the burst would still count.
        assert_eq!(r.planned_rps, 375.0, "1.25 × 300 rps: {}", r.reason);
        // 375 rps at 50 rps per backend (100 at 50 %).
        assert_eq!(r.recommended_backends, 8, "{}", r.reason);
        assert!(
            r.reason
                .contains("rps, bounded to 375 rps (1.25× the highest rate of the last 10 min)"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn capacity_comes_from_reported_load_or_from_latency_above_its_idle_level() {
        let mut c = CapacityEstimator::default();
        let obs = StepObservation {
            rate_rps: 100.0,
            reported_load: Some(0.25),
            mean_latency_ms: Some(5.0),
            backends: 2,
            healthy: 2,
            ..StepObservation::default()
        };
        // 100 rps over 2 backends a quarter busy: 200 rps each at full load.
        assert_eq!(c.update(&obs, None), (Some(200.0), "reported load"));
        assert_eq!(c.update(&obs, Some(50.0)), (Some(50.0), "configured"));

        let mut c = CapacityEstimator::default();
        let idle = StepObservation {
            rate_rps: 10.0,
            mean_latency_ms: Some(10.0),
            backends: 1,
            healthy: 1,
            ..StepObservation::default()
        };
        assert_eq!(c.update(&idle, None), (None, "unknown"));
        // Latency a tenth above idle is noise, not load.
        let noisy = StepObservation {
            rate_rps: 40.0,
            mean_latency_ms: Some(11.0),
            ..idle
        };
        assert_eq!(c.update(&noisy, None), (None, "unknown"));
        // Latency doubled: half busy (M/M/1), so 80 rps at full load.
        let busy = StepObservation {
            rate_rps: 40.0,
            mean_latency_ms: Some(20.0),
            ..idle
        };
        let (cap, source) = c.update(&busy, None);
        assert_eq!(source, "latency");
        assert!((cap.unwrap() - 80.0).abs() < 1e-9, "{cap:?}");
        // A failing step is not healthy latency: the estimate stays.
        let failing = StepObservation {
            rate_rps: 400.0,
            error_share: 0.5,
            mean_latency_ms: Some(40.0),
            ..idle
        };
        assert_eq!(c.update(&failing, None).0, cap);
    }

    #[test]
    fn a_rebuilt_pool_keeps_its_counts_by_address() {
        let p = pool(2);
        let mut d = PoolDemand::new(&p, settings(Some(10.0)), 0);
        serve(&p, 10, 1);
        // The same backends (same stats) in a rebuilt pool, plus a new one.
        let mut backends: Vec<Backend> = p
            .backends()
            .iter()
            .map(|b| Backend::with_stats(b.addr, 1, b.stats.clone()))
            .collect();
        backends.push(Backend::new(SocketAddr::from(([127, 0, 0, 1], 9)), 1));
        let rebuilt = Pool::new(
            "web",
            Algorithm::RoundRobin,
            backends,
            Duration::from_secs(10),
            5,
        );
        let r = d.step(&rebuilt, 1_000_000_000, None);
        assert_eq!(r.observed_rps, 10.0);
        assert_eq!(r.current_backends, 3);
    }
}
