//! Scalers that add and remove copies of a scenario's `[autoscale]` backend during a run:
//! Kubernetes' Horizontal Pod Autoscaler on utilisation ([`Hpa`]), fulcrum's forecast and
//! recommendation ([`ForecastScaler`]: the proxy's [`PoolDemand`], which forecasts with
//! `fulcrum_forecast`'s tracker and sizes with its `recommend`), and a fixed count
//! ([`ScalerKind::Static`]).
//!
//! A scaler runs every control step with what an operator's metrics would show
//! ([`ScaleView`]) and answers how many copies should exist. The simulator starts a new copy
//! at once but it takes traffic only `provision_s` later; a removed copy takes no new request
//! and finishes what it holds (it drains).

use std::fmt;
use std::str::FromStr;

use fulcrum_balance::Pool;
use fulcrum_control::demand::{DemandSettings, PoolDemand, StepObservation};
use fulcrum_control::forecast_model::OnnxForecaster;
use fulcrum_forecast::Sizing;
use fulcrum_scenario::Autoscale;

/// Which scaler drives a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalerKind {
    /// Kubernetes' HPA with its default behaviour ([`HpaSettings::kubernetes`]).
    Hpa,
    /// fulcrum's forecast and recommendation; `Some(s)`: with `scale_down_stabilization_s = s`
    /// instead of the proxy's default; the count: `spare_backends` (`forecast+N`).
    Forecast(Option<f64>, u32),
    /// A fixed number of copies from time 0; `None`: sized for the scenario's peak rate at
    /// `target_utilization` of the copies' true capacity (the over-provisioned reference).
    Static(Option<u32>),
    /// fulcrum's recommendation (the proxy's defaults) followed by Kubernetes' HPA as the
    /// recipes of `docker/k8s/autoscale/` set it up ([`ViaHpa`]), with this tolerance (0.1,
    /// the HPA's default: `forecast@hpa`; `forecast@hpa:T`; 0 is `behavior.*.tolerance: 0`).
    ForecastViaHpa(f64),
    /// A reference no real scaler can be: it reads the scenario's true rate and the copies'
    /// true capacity. `Oracle(true)` (`oracle`) knows the future exactly and runs what the
    /// highest rate until a copy started now would serve needs; `Oracle(false)`
    /// (`oracle-now`) knows only the rate in force now, exactly and at once — the best any
    /// scaler can do against demand it cannot foresee (an unannounced burst).
    Oracle(bool),
}

impl fmt::Display for ScalerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScalerKind::Hpa => f.write_str("hpa"),
            ScalerKind::Forecast(window, spare) => {
                f.write_str("forecast")?;
                if let Some(s) = window {
                    write!(f, ":{s}")?;
                }
                if *spare > 0 {
                    write!(f, "+{spare}")?;
                }
                Ok(())
            }
            ScalerKind::ForecastViaHpa(t) if *t == HPA_TOLERANCE => f.write_str("forecast@hpa"),
            ScalerKind::ForecastViaHpa(t) => write!(f, "forecast@hpa:{t}"),
            ScalerKind::Static(None) => f.write_str("static"),
            ScalerKind::Static(Some(n)) => write!(f, "static:{n}"),
            ScalerKind::Oracle(true) => f.write_str("oracle"),
            ScalerKind::Oracle(false) => f.write_str("oracle-now"),
        }
    }
}

impl FromStr for ScalerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hpa" | "reactive" => Ok(ScalerKind::Hpa),
            "forecast" => Ok(ScalerKind::Forecast(None, 0)),
            "static" => Ok(ScalerKind::Static(None)),
            "oracle" => Ok(ScalerKind::Oracle(true)),
            "oracle-now" => Ok(ScalerKind::Oracle(false)),
            "forecast@hpa" => Ok(ScalerKind::ForecastViaHpa(HPA_TOLERANCE)),
            _ => {
                if let Some(t) = s.strip_prefix("forecast@hpa:") {
                    if let Some(t) = t.parse::<f64>().ok().filter(|t| (0.0..1.0).contains(t)) {
                        return Ok(ScalerKind::ForecastViaHpa(t));
                    }
                }
                if let Some(Ok(n)) = s.strip_prefix("static:").map(str::parse::<u32>) {
                    if n > 0 {
                        return Ok(ScalerKind::Static(Some(n)));
                    }
                }
                if let Some(rest) = s.strip_prefix("forecast") {
                    let (window, spare) = match rest.split_once('+') {
                        Some((w, n)) => (w, n.parse::<u32>().ok()),
                        None => (rest, Some(0)),
                    };
                    let window = match window.strip_prefix(':') {
                        None if window.is_empty() => Some(None),
                        Some(w) => w
                            .parse::<f64>()
                            .ok()
                            .filter(|w| (0.0..=86_400.0).contains(w))
                            .map(Some),
                        None => None,
                    };
                    if let (Some(window), Some(spare)) = (window, spare) {
                        return Ok(ScalerKind::Forecast(window, spare));
                    }
                }
                Err(format!(
                    "unknown scaler {s:?}: expected hpa, forecast, forecast:S (S seconds of \
                     scale-down stabilisation), forecast+N or forecast:S+N (N spare backends), \
                     forecast@hpa or forecast@hpa:T (followed by Kubernetes' HPA with tolerance \
                     T, 0 <= T < 1), static, static:N, oracle or oracle-now"
                ))
            }
        }
    }
}

/// What a scaler sees at a control step: the last period's metrics of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleView {
    /// Simulated time, seconds.
    pub t_s: f64,
    /// Seconds since the previous step.
    pub period_s: f64,
    /// Copies of the scaled backend that exist (taking traffic or provisioning): Kubernetes'
    /// `spec.replicas`.
    pub replicas: u32,
    /// Utilisation of each copy taking traffic over the period: busy slots / concurrency, time
    /// averaged, as a CPU metric sees it (requests waiting in a queue burn no CPU).
    pub ready_utilisation: Vec<f64>,
    /// Copies still provisioning (not ready).
    pub unready: u32,
    /// Requests that arrived at the pool per second over the period.
    pub arrivals_rps: f64,
    /// Requests the pool completed per second over the period.
    pub completed_rps: f64,
    /// Attempts the backends completed per second over the period (retries included), as the
    /// proxy counts them.
    pub attempts_rps: f64,
    /// Share of those attempts that failed.
    pub error_share: f64,
    /// Mean latency of those attempts, ms (`None` without any).
    pub mean_latency_ms: Option<f64>,
    /// Busy slots over offered slots of every backend taking traffic, over the period.
    pub pool_utilisation: f64,
    /// How much the attempts in flight at the backends (in service or queued, draining copies
    /// included) grew over the period, per second, as the proxy counts them.
    pub in_flight_growth_rps: f64,
    /// Backends taking traffic now, scaled or not.
    pub pool_backends: u32,
    /// Backends of the pool that are not scaled.
    pub fixed_backends: u32,
    /// What each proxy sharing the backends saw of its own attempts (one entry per proxy).
    pub proxies: Vec<ProxyView>,
}

/// One proxy's own attempts over a step, as its control thread counts them: with several
/// proxies sharing the backends, each counts only the requests that reached it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProxyView {
    /// Whether the proxy takes arrivals now (it runs, and its recommendation counts).
    pub active: bool,
    /// Attempts this proxy's requests completed per second (retries included).
    pub attempts_rps: f64,
    /// Share of those attempts that failed.
    pub error_share: f64,
    /// Mean latency of those attempts, ms (`None` without any).
    pub mean_latency_ms: Option<f64>,
    /// How much this proxy's attempts in flight grew over the period, per second.
    pub in_flight_growth_rps: f64,
}

/// A rule that sets the number of copies.
pub trait Scaler: Send {
    /// Seconds between two steps.
    fn period_s(&self) -> f64;
    /// The number of copies there should be, from the view of this step.
    fn desired(&mut self, view: &ScaleView) -> u32;
    /// The demand this step planned for (rps), for reports; `None` when it plans on none.
    fn planned_rps(&self) -> Option<f64> {
        None
    }
}

/// The HPA's knobs; [`HpaSettings::kubernetes`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HpaSettings {
    /// Target utilisation, in (0, 1].
    pub target: f64,
    /// `--horizontal-pod-autoscaler-tolerance` (0.1).
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-sync-period` (15 s).
    pub sync_period_s: f64,
    /// `behavior.scaleUp.stabilizationWindowSeconds` (0).
    pub scale_up_window_s: f64,
    /// `behavior.scaleDown.stabilizationWindowSeconds` (300).
    pub scale_down_window_s: f64,
    /// `minReplicas`.
    pub min_replicas: u32,
    /// `maxReplicas`.
    pub max_replicas: u32,
}

/// `--horizontal-pod-autoscaler-tolerance`'s default.
pub const HPA_TOLERANCE: f64 = 0.1;

impl HpaSettings {
    /// Kubernetes' defaults with the scenario's bounds and target.
    pub fn kubernetes(a: &Autoscale) -> Self {
        Self {
            target: a.target_utilization,
            tolerance: HPA_TOLERANCE,
            sync_period_s: 15.0,
            scale_up_window_s: 0.0,
            scale_down_window_s: 300.0,
            min_replicas: a.min_backends,
            max_replicas: a.max_backends,
        }
    }
}

/// The replica count the HPA's replica calculator asks for (`GetResourceReplicas` in
/// `pkg/controller/podautoscaler/replica_calculator.go`), before stabilisation and rate limits.
///
/// Utilisation is an integer percentage of the pods' requests, as Kubernetes computes it.
/// Pods not yet ready are set aside; on a scale-up they are counted back in at 0 % (so a
/// scale-up already under way damps the next one), on a scale-down they are ignored.
pub fn hpa_replicas(current: u32, ready_utilisation: &[f64], unready: u32, s: &HpaSettings) -> u32 {
    if ready_utilisation.is_empty() {
        // No metrics: the HPA leaves the scale alone.
        return current;
    }
    let ready = ready_utilisation.len() as f64;
    let total: f64 = ready_utilisation.iter().sum();
    let target_pct = (s.target * 100.0).round();
    let utilisation_pct = (total * 100.0 / ready).floor();
    let usage_ratio = utilisation_pct / target_pct;
    let rebalance_unready = unready > 0 && usage_ratio > 1.0;
    if !rebalance_unready {
        if (usage_ratio - 1.0).abs() <= s.tolerance {
            return current;
        }
        return (usage_ratio * ready).ceil() as u32;
    }
    let pods = ready + f64::from(unready);
    let new_ratio = (total * 100.0 / pods).floor() / target_pct;
    if (new_ratio - 1.0).abs() <= s.tolerance || new_ratio < 1.0 {
        return current;
    }
    let replicas = (new_ratio * pods).ceil() as u32;
    if replicas < current {
        return current;
    }
    replicas
}

/// Kubernetes' HPA: [`hpa_replicas`], then the behaviour's stabilisation windows
/// (the lowest recommendation of the scale-up window, the highest of the scale-down window)
/// and the default rate limits (up: the larger of +100 % and +4 pods per 15 s; down: −100 %),
/// clamped to `[minReplicas, maxReplicas]`.
#[derive(Debug, Clone)]
pub struct Hpa {
    settings: HpaSettings,
    /// Past recommendations `(t_s, replicas)`, oldest first.
    recommendations: Vec<(f64, u32)>,
}

impl Hpa {
    /// An HPA with no history.
    pub fn new(settings: HpaSettings) -> Self {
        Self {
            settings,
            recommendations: Vec::new(),
        }
    }

    /// One sync: the new `spec.replicas` from `current` and the view's metrics.
    pub fn sync(&mut self, t_s: f64, current: u32, ready_utilisation: &[f64], unready: u32) -> u32 {
        let s = self.settings;
        if self.recommendations.is_empty() {
            // As the controller does for an HPA it has not seen: the scale it found counts as a
            // recommendation, so a fresh controller does not scale down at once.
            self.recommendations.push((t_s, current));
        }
        let proposed = hpa_replicas(current, ready_utilisation, unready, &s);
        // stabilizeRecommendationWithBehaviors: windows end at `t_s` and exclude their start.
        let (mut up, mut down) = (proposed, proposed);
        for &(at, r) in &self.recommendations {
            if at > t_s - s.scale_up_window_s {
                up = up.min(r);
            }
            if at > t_s - s.scale_down_window_s {
                down = down.max(r);
            }
        }
        let mut stabilised = current;
        if stabilised < up {
            stabilised = up;
        }
        if stabilised > down {
            stabilised = down;
        }
        let keep = s.scale_up_window_s.max(s.scale_down_window_s);
        self.recommendations.retain(|&(at, _)| at > t_s - keep);
        self.recommendations.push((t_s, proposed));
        // Default policies: up by max(100 %, 4 pods) per 15 s, down by up to 100 % per 15 s.
        let up_limit = (current * 2).max(current + 4);
        let limited = if stabilised > current {
            stabilised.min(up_limit)
        } else {
            stabilised
        };
        limited.clamp(s.min_replicas.max(1), s.max_replicas.max(1))
    }
}

impl Scaler for Hpa {
    fn period_s(&self) -> f64 {
        self.settings.sync_period_s
    }

    fn desired(&mut self, v: &ScaleView) -> u32 {
        self.sync(v.t_s, v.replicas, &v.ready_utilisation, v.unready)
    }
}

/// Seconds per step of the forecast scaler (the proxy's default `[pools.NAME.autoscale] step`).
pub const FORECAST_STEP_S: f64 = 10.0;

/// How the recommendations of several fulcrum pods for one pool become one count: the
/// aggregation of the Kubernetes recipes' query (`docker/k8s/autoscale/`), whose target of 1
/// per replica then rounds it up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Combine {
    /// `max(...)`: the highest (the recipes' choice; a pod that has just started cannot pull
    /// the count down).
    #[default]
    Max,
    /// `avg(...)`, rounded up: the pods' counting noise averages out.
    Mean,
}

impl Combine {
    /// The count for `recommendations` (one per pod that has one), `None` without any.
    pub fn apply(self, recommendations: &[f64]) -> Option<f64> {
        if recommendations.is_empty() {
            return None;
        }
        Some(match self {
            Combine::Max => recommendations.iter().copied().fold(f64::MIN, f64::max),
            Combine::Mean => {
                (recommendations.iter().sum::<f64>() / recommendations.len() as f64).ceil()
            }
        })
    }
}

impl FromStr for Combine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(Combine::Max),
            "mean" | "avg" => Ok(Combine::Mean),
            _ => Err(format!(
                "{s:?}: the pods' recommendations combine by max or mean"
            )),
        }
    }
}

impl fmt::Display for Combine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Combine::Max => "max",
            Combine::Mean => "mean",
        })
    }
}

/// fulcrum's scaler: the proxy's own demand tracking ([`PoolDemand`], the code its control
/// thread runs per autoscaled pool) on the simulated pool. Every step the simulator hands it
/// what the pool did ([`StepObservation`]: completed attempts per second, error share, mean
/// latency, and the copies' utilisation as the load they report about themselves), and it
/// forecasts, estimates the capacity per backend and recommends a count for the highest p90
/// until the provisioning horizon (`horizon_s = provision_s`) with the proxy's default
/// scale-down stabilisation, as the proxy recommends it.
pub struct ForecastScaler {
    demand: PoolDemand,
    /// The demand tracking of every other proxy sharing the backends (none with one proxy).
    others: Vec<PoolDemand>,
    /// How the proxies' recommendations become the count.
    combine: Combine,
    /// Which proxies have taken arrivals at a step so far.
    started: Vec<bool>,
    /// A proxy that joins later reads the pods' series back first (`history_prometheus`).
    join_history: bool,
    planned: Option<f64>,
    model: Option<OnnxForecaster>,
    /// When the proxy restarts, and whether its series comes back.
    restart: Option<(f64, bool)>,
}

impl fmt::Debug for ForecastScaler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForecastScaler")
            .field("demand", &self.demand)
            .finish()
    }
}

impl ForecastScaler {
    /// A scaler for the scenario's `[autoscale]` table over `pool` (with `fixed` backends that
    /// are not scaled), starting now; `stabilization_s` overrides the proxy's default
    /// `scale_down_stabilization_s`, and `spare_backends` is the proxy's key of that name;
    /// `model` is the pool's `forecast_model` (the built-in forecaster without one).
    pub fn new(
        a: &Autoscale,
        fixed: u32,
        pool: &Pool,
        now_ns: u64,
        stabilization_s: Option<f64>,
        spare_backends: u32,
        model: Option<OnnxForecaster>,
    ) -> Self {
        let settings = DemandSettings {
            step_s: FORECAST_STEP_S,
            horizon_s: a.provision_s.max(FORECAST_STEP_S),
            sizing: Sizing {
                target_utilization: a.target_utilization,
                min_backends: a.min_backends + fixed,
                max_backends: a.max_backends + fixed,
            },
            backend_capacity_rps: None,
            scale_down_stabilization_s: stabilization_s.unwrap_or(
                f64::from(fulcrum_config::autoscale_defaults::SCALE_DOWN_STABILIZATION_STEPS)
                    * FORECAST_STEP_S,
            ),
            spare_backends,
            burst_spare_backends: fulcrum_config::autoscale_defaults::BURST_SPARE_BACKENDS,
            burst_memory_s: fulcrum_config::autoscale_defaults::BURST_MEMORY_S as f64,
        };
        Self {
            demand: PoolDemand::new(pool, settings, now_ns),
            others: Vec::new(),
            combine: Combine::Max,
            started: Vec::new(),
            join_history: false,
            planned: None,
            model,
            restart: None,
        }
    }

    /// `proxies` proxies share the backends, each with its own demand tracking of the
    /// requests that reach it. The count followed is their recommendations combined as the
    /// Kubernetes recipes' query over fulcrum's pods does (`docker/k8s/autoscale/`).
    pub fn proxies(mut self, proxies: usize, combine: Combine) -> Self {
        self.others = (1..proxies).map(|_| self.demand.afresh()).collect();
        self.combine = combine;
        self
    }

    /// A proxy that starts after the first step reads back the series of the first proxy (one
    /// pod's share of the rate, as `history_prometheus`'s default `avg(...)` over the pods
    /// has it) before its first step, instead of starting from nothing.
    pub fn joining_with_history(mut self, yes: bool) -> Self {
        self.join_history = yes;
        self
    }

    /// Restart the proxy at `at_s` simulated seconds: its demand tracking starts afresh,
    /// with the series it had counted when `keep_series` (as its `history_file` brings back).
    pub fn restarting(mut self, restart: Option<(f64, bool)>) -> Self {
        self.restart = restart;
        self
    }

    /// The proxy's demand tracking, for its latest report.
    pub fn demand(&self) -> &PoolDemand {
        &self.demand
    }
}

impl Scaler for ForecastScaler {
    fn period_s(&self) -> f64 {
        FORECAST_STEP_S
    }

    fn desired(&mut self, v: &ScaleView) -> u32 {
        if let Some((at_s, keep_series)) = self.restart {
            if v.t_s >= at_s {
                self.restart = None;
                for demand in std::iter::once(&mut self.demand).chain(&mut self.others) {
                    let mut fresh = demand.afresh();
                    if keep_series {
                        fresh.prepend(&demand.series());
                    }
                    *demand = fresh;
                }
            }
        }
        // The backends report their load, which every proxy's traffic makes.
        let observe =
            |rate_rps, error_share, mean_latency_ms, in_flight_growth_rps| StepObservation {
                rate_rps,
                error_share,
                mean_latency_ms,
                reported_load: (v.pool_backends > 0).then_some(v.pool_utilisation),
                backends: v.pool_backends,
                healthy: v.pool_backends,
                in_flight_growth_rps,
            };
        if self.others.is_empty() {
            let obs = observe(
                v.attempts_rps,
                v.error_share,
                v.mean_latency_ms,
                v.in_flight_growth_rps,
            );
            let report = self.demand.record(obs, self.model.as_mut());
            self.planned = Some(report.planned_rps);
            return report.recommended_backends.saturating_sub(v.fixed_backends);
        }
        // A proxy that starts now has learnt nothing, unless it reads the pods' record back.
        if self.started.is_empty() {
            self.started = v.proxies.iter().map(|p| p.active).collect();
        } else if self.join_history {
            // The first proxy always runs (proxies join and leave from the last).
            for (k, p) in v.proxies.iter().enumerate().skip(1) {
                if p.active && !self.started[k] {
                    let first = self.demand.series();
                    self.others[k - 1].prepend(&first);
                }
            }
        }
        for (started, p) in self.started.iter_mut().zip(&v.proxies) {
            *started |= p.active;
        }
        // Each running proxy on what reached it; the plan shown is theirs added up.
        let (mut recommended, mut planned) = (Vec::with_capacity(v.proxies.len()), 0.0);
        for (demand, p) in std::iter::once(&mut self.demand)
            .chain(&mut self.others)
            .zip(&v.proxies)
            .filter(|(_, p)| p.active)
        {
            let obs = observe(
                p.attempts_rps,
                p.error_share,
                p.mean_latency_ms,
                p.in_flight_growth_rps,
            );
            let report = demand.record(obs, self.model.as_mut());
            recommended.push(f64::from(report.recommended_backends));
            planned += report.planned_rps;
        }
        self.planned = Some(planned);
        let count = self.combine.apply(&recommended).unwrap_or(0.0) as u32;
        count.saturating_sub(v.fixed_backends)
    }

    fn planned_rps(&self) -> Option<f64> {
        self.planned
    }
}

/// Seconds between two scrapes of fulcrum's metrics by Prometheus
/// (`docker/k8s/monitoring/servicemonitor.yaml`), and between two syncs of the HPA.
pub const SCRAPE_AND_SYNC_S: f64 = 15.0;

/// A recommendation followed by Kubernetes' HPA as `docker/k8s/autoscale/` sets it up: the
/// recommendation is an external metric with an `AverageValue` target of 1 (KEDA's Prometheus
/// trigger, or prometheus-adapter), Prometheus scrapes the pods every 15 s and the HPA syncs
/// every 15 s (the scrape 5 s after a sync), with no stabilisation window and up or down by up
/// to 100 % per sync. The HPA's replica calculator for such a metric
/// (`GetExternalPerPodMetricReplicas`) leaves the count alone while the metric is within
/// `tolerance` of the count (`|R / replicas − 1| ≤ tolerance`), else sets `ceil(R)`: at 10 % a
/// pool of 12 does not follow a recommendation of 13.
///
/// The inner scaler steps every [`FORECAST_STEP_S`] on what the pool did over its step (two
/// half steps of this one's 5 s period, added up).
pub struct ViaHpa {
    inner: Box<dyn Scaler>,
    tolerance: f64,
    min: u32,
    max: u32,
    /// The first half of the inner scaler's step.
    half: Option<ScaleView>,
    /// The inner scaler's latest answer, and what Prometheus last scraped of it.
    published: Option<u32>,
    scraped: Option<u32>,
    ticks: u64,
}

/// This scaler's period: the common divisor of the inner step (10 s) and the scrape and sync
/// period (15 s).
const VIA_HPA_TICK_S: f64 = 5.0;

impl ViaHpa {
    /// `inner`'s answers followed by an HPA with `tolerance`, between `min` and `max` replicas.
    pub fn new(inner: Box<dyn Scaler>, tolerance: f64, min: u32, max: u32) -> Self {
        Self {
            inner,
            tolerance,
            min,
            max,
            half: None,
            published: None,
            scraped: None,
            ticks: 0,
        }
    }

    /// The HPA's answer for a recommendation of `r` with `current` replicas (`spec.replicas`).
    pub fn follow(&self, current: u32, r: u32) -> u32 {
        let current_f = f64::from(current.max(1));
        let ratio = f64::from(r) / current_f;
        let proposed = if (ratio - 1.0).abs() <= self.tolerance {
            current
        } else {
            r
        };
        // Policies of the recipes: up to +100 % per 15 s, down to 0.
        proposed
            .min(current.max(1) * 2)
            .clamp(self.min.max(1), self.max.max(1))
    }
}

/// Two consecutive views as one over both periods: rates weighted by time, shares and means by
/// what they are of, the counts as at the end.
fn merge_views(a: &ScaleView, b: &ScaleView) -> ScaleView {
    let (wa, wb) = (a.period_s, b.period_s);
    let w = (wa + wb).max(f64::MIN_POSITIVE);
    let avg = |x: f64, y: f64| (x * wa + y * wb) / w;
    let by = |x: f64, nx: f64, y: f64, ny: f64| {
        let n = nx * wa + ny * wb;
        if n > 0.0 {
            (x * nx * wa + y * ny * wb) / n
        } else {
            0.0
        }
    };
    let latency = |x: Option<f64>, nx: f64, y: Option<f64>, ny: f64| match (x, y) {
        (Some(x), Some(y)) => Some(by(x, nx, y, ny)),
        (x, y) => x.or(y),
    };
    ScaleView {
        t_s: b.t_s,
        period_s: wa + wb,
        arrivals_rps: avg(a.arrivals_rps, b.arrivals_rps),
        completed_rps: avg(a.completed_rps, b.completed_rps),
        attempts_rps: avg(a.attempts_rps, b.attempts_rps),
        error_share: by(a.error_share, a.attempts_rps, b.error_share, b.attempts_rps),
        mean_latency_ms: latency(
            a.mean_latency_ms,
            a.attempts_rps,
            b.mean_latency_ms,
            b.attempts_rps,
        ),
        pool_utilisation: avg(a.pool_utilisation, b.pool_utilisation),
        in_flight_growth_rps: avg(a.in_flight_growth_rps, b.in_flight_growth_rps),
        proxies: a
            .proxies
            .iter()
            .zip(&b.proxies)
            .map(|(x, y)| ProxyView {
                active: y.active,
                attempts_rps: avg(x.attempts_rps, y.attempts_rps),
                error_share: by(x.error_share, x.attempts_rps, y.error_share, y.attempts_rps),
                mean_latency_ms: latency(
                    x.mean_latency_ms,
                    x.attempts_rps,
                    y.mean_latency_ms,
                    y.attempts_rps,
                ),
                in_flight_growth_rps: avg(x.in_flight_growth_rps, y.in_flight_growth_rps),
            })
            .collect(),
        ..b.clone()
    }
}

impl Scaler for ViaHpa {
    fn period_s(&self) -> f64 {
        VIA_HPA_TICK_S
    }

    fn desired(&mut self, v: &ScaleView) -> u32 {
        self.ticks += 1;
        let t = self.ticks as f64 * VIA_HPA_TICK_S;
        let every = |period: f64, phase: f64| ((t - phase) / period).fract().abs() < 1e-9;
        // The proxy's step: what the pool did over its 10 s.
        if every(FORECAST_STEP_S, 0.0) {
            let step = match self.half.take() {
                Some(first) => merge_views(&first, v),
                None => v.clone(),
            };
            self.published = Some(self.inner.desired(&step));
        } else {
            self.half = Some(v.clone());
        }
        // Prometheus scrapes 5 s after each sync; the HPA reads the last scrape.
        if every(SCRAPE_AND_SYNC_S, VIA_HPA_TICK_S) {
            self.scraped = self.published;
        }
        match self.scraped {
            Some(r) if every(SCRAPE_AND_SYNC_S, 0.0) => self.follow(v.replicas, r),
            _ => v.replicas,
        }
    }

    fn planned_rps(&self) -> Option<f64> {
        self.inner.planned_rps()
    }
}

/// A fixed count.
#[derive(Debug, Clone, Copy)]
pub struct StaticScaler(pub u32);

impl Scaler for StaticScaler {
    fn period_s(&self) -> f64 {
        FORECAST_STEP_S
    }

    fn desired(&mut self, _: &ScaleView) -> u32 {
        self.0
    }
}

/// The reference scalers of [`ScalerKind::Oracle`]: every step, the copies the true rate
/// needs at `target_utilization` of a copy's true capacity, the rate being the highest over
/// `[t, t + lookahead_s]` (sampled every second) — `provision_s` plus a step for `oracle`, so
/// a copy is started in time for every rise; 0 for `oracle-now`. Copies go as soon as the
/// rate allows (no stabilisation: it is never wrong).
#[derive(Debug, Clone)]
pub struct OracleScaler {
    load: fulcrum_scenario::Load,
    /// Requests per second a copy serves at the target utilisation.
    per_copy_rps: f64,
    /// What the backends that are not scaled serve at the target utilisation.
    fixed_rps: f64,
    lookahead_s: f64,
    min: u32,
    max: u32,
}

impl OracleScaler {
    /// An oracle for `sc`'s `[autoscale]` backend; `future`: see [`ScalerKind::Oracle`].
    pub fn new(sc: &fulcrum_scenario::Scenario, a: &Autoscale, future: bool) -> Self {
        let per = |b: &fulcrum_scenario::ScenarioBackend| {
            f64::from(b.concurrency) * 1000.0 / b.mean_service_ms() * a.target_utilization
        };
        let scaled = a.first..a.first + a.max_backends as usize;
        Self {
            load: sc.load.clone(),
            per_copy_rps: sc.backends.get(a.first).map_or(f64::NAN, per),
            fixed_rps: sc
                .backends
                .iter()
                .enumerate()
                .filter(|(i, _)| !scaled.contains(i))
                .map(|(_, b)| per(b))
                .sum(),
            lookahead_s: if future {
                a.provision_s + FORECAST_STEP_S
            } else {
                0.0
            },
            min: a.min_backends,
            max: a.max_backends,
        }
    }

    /// The highest true rate over `[t_s, t_s + lookahead_s]`.
    pub fn demand_rps(&self, t_s: f64) -> f64 {
        let mut rate = self.load.rate_at(t_s);
        let mut u = t_s.floor() + 1.0;
        while u <= t_s + self.lookahead_s {
            rate = rate.max(self.load.rate_at(u));
            u += 1.0;
        }
        rate
    }
}

impl Scaler for OracleScaler {
    fn period_s(&self) -> f64 {
        FORECAST_STEP_S
    }

    fn desired(&mut self, v: &ScaleView) -> u32 {
        let need = ((self.demand_rps(v.t_s) - self.fixed_rps) / self.per_copy_rps).ceil();
        if need.is_finite() {
            (need.max(0.0) as u32).clamp(self.min.max(1), self.max)
        } else {
            self.max
        }
    }
}

/// One control step of a run, for plots.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSample {
    /// Simulated time, seconds.
    pub t_s: f64,
    /// Arrivals per second over the last period.
    pub arrivals_rps: f64,
    /// Copies taking traffic.
    pub serving: u32,
    /// Copies provisioning.
    pub provisioning: u32,
    /// The scaler's answer.
    pub desired: u32,
    /// The demand the scaler planned for, if it plans on one.
    pub planned_rps: Option<f64>,
}

/// What scaling cost and bought over the measured window (after warm-up).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleStats {
    /// The scaler.
    pub scaler: String,
    /// Seconds of copies existing (provisioning, serving or draining), summed over copies.
    pub backend_seconds: f64,
    /// SLO windows that had requests.
    pub slo_windows: u32,
    /// Of those, windows whose p99 latency was above `[slo] p99_ms`.
    pub slo_violation_windows: u32,
    /// When each of those windows started, seconds of simulated time.
    pub violated_at_s: Vec<f64>,
    /// Requests answered later than `[slo] p99_ms`.
    pub slow_requests: u64,
    /// Requests answered later than the proxy's default read timeout (30 s): a client behind
    /// fulcrum would have had a 504 (the simulator itself has no timeout and serves them).
    pub timed_out: u64,
    /// Scale-ups (decisions that started copies).
    pub scale_ups: u32,
    /// Scale-downs (decisions that removed copies).
    pub scale_downs: u32,
    /// Most copies taking traffic at once.
    pub peak_serving: u32,
    /// Every control step of the whole run.
    pub timeline: Vec<ScaleSample>,
}
