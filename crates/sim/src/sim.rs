//! The discrete-event simulator: Poisson clients, a proxy that picks with the real
//! [`fulcrum_balance::Pool`], and backends with slots, FIFO queues, lognormal service times,
//! errors and outages, all on simulated nanoseconds.
//!
//! The proxy side mirrors fulcrum: one `pick` per attempt, an [`InFlightGuard`] lease held until
//! the attempt completes, `record` of every attempt (Peak-EWMA, passive ejection), retries of
//! refused connections for any request and of 503s for idempotent ones only, an active health
//! checker with the proxy's thresholds, and a control tick running the same
//! [`TickObserver`] the control loop uses.
//!
//! With `SimOptions::replicas` > 1 several proxies share the backends, as the replicas of a
//! Kubernetes Deployment do: arrivals go to them in turn, and each has its own pool (picker,
//! statistics, health view), its own control loop and its own health checker, ticking out of
//! phase with the others.
//!
//! A run is a pure function of the scenario, the policy, the options and the seed: every random
//! draw comes from [`fulcrum_scenario::rng`] streams derived from the seed, and simultaneous
//! events are processed in the order they were scheduled.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fulcrum_balance::retry::{self, AttemptFailure, RetryContext, RetryDecision};
use fulcrum_balance::{
    Algorithm, Backend, HealthChange, HealthRule, HealthTracker, InFlightGuard, Outcome, P2cEwma,
    Pool, Tried,
};
use fulcrum_config::{control_defaults, pool_defaults};
use fulcrum_control::{BackendObservation, TickObserver};
use fulcrum_report::{Accumulator, PolicyResult, RunReport};
use fulcrum_scenario::rng::{stream_seed, Rng, Stream};
use fulcrum_scenario::{Policy, Scenario};

use crate::autoscale::{
    AutoscaleStats, ForecastScaler, Hpa, HpaSettings, OracleScaler, ProxyView, ScaleSample,
    ScaleView, Scaler, ScalerKind, StaticScaler, ViaHpa,
};

/// Sets pool weights from each control tick's observations, on simulated time.
pub trait WeightController {
    /// Called every control tick (`SimOptions::tick_ms`) with the window's observations; may
    /// call [`Pool::set_weights`].
    fn tick(&mut self, pool: &Pool, observations: &[BackendObservation], now_ns: u64);
}

/// Builds a fresh [`WeightController`] for one run, so every run starts from the same state.
pub type ControllerFactory = dyn Fn(&Scenario) -> Box<dyn WeightController> + Send + Sync;

/// Builds the forecast model a `forecast` scaler's demand tracking runs (a fresh session per
/// run), as a pool with `forecast_model` does in the proxy.
pub type ForecastModelFactory =
    dyn Fn() -> fulcrum_control::forecast_model::OnnxForecaster + Send + Sync;

/// Knobs of a simulation run; the defaults are the proxy's defaults.
#[derive(Clone)]
pub struct SimOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Extra attempts allowed per request (default 2).
    pub retries: u32,
    /// Passive ejection threshold (default 5; 0 disables).
    pub max_consecutive_failures: u32,
    /// Peak-EWMA decay time (default 10 s).
    pub ewma_decay: Duration,
    /// Active health check interval (default 1 s).
    pub health_interval: Duration,
    /// Failed checks before a backend is marked down (default 3).
    pub unhealthy_threshold: u32,
    /// Good checks before a backend is marked up again (default 2).
    pub healthy_threshold: u32,
    /// Control tick period in ms (default 500).
    pub tick_ms: u64,
    /// Time until a refused connection is reported, ms (default 0.1).
    pub refused_ms: f64,
    /// Control loop for the `ALGO+model` policies.
    pub weight_controller: Option<Arc<ControllerFactory>>,
    /// Proxies sharing the backends (default 1).
    pub replicas: u32,
    /// How arrivals are spread over the proxies when there are several (default in turns).
    pub split: ProxySplit,
    /// Changes of how many of the `replicas` proxies take arrivals, `(from_s, count)` sorted
    /// by time: the first `count` from `from_s` on, as a Deployment of fulcrum scaled out or
    /// in (default none: all of them, all the time). A proxy that joins starts with nothing
    /// learnt; one that leaves finishes what it holds and recommends no more.
    pub active_proxies: Vec<(f64, u32)>,
    /// A proxy that joins reads the pods' series back before its first step, as a pool with
    /// `history_prometheus` does (default: it starts from nothing).
    pub joining_proxies_read_history: bool,
    /// How the proxies' recommendations become the `forecast` scalers' count (default the
    /// highest).
    pub combine: crate::autoscale::Combine,
    /// The forecast model of the `forecast` scalers (default none: the built-in forecaster).
    pub forecast_model: Option<Arc<ForecastModelFactory>>,
    /// Restart the proxy that runs the `forecast` scalers once (default never).
    pub forecast_restart: Option<ForecastRestart>,
}

/// How arrivals reach the proxies that share the backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxySplit {
    /// Each proxy in turn: every proxy sees the same share of every second.
    #[default]
    Turns,
    /// Each arrival to a proxy drawn at random, as a Service or a cloud load balancer spreads
    /// independent clients: each proxy's count is a Poisson count of its share.
    Random,
}

/// A restart of the proxy whose demand tracking a `forecast` scaler runs: everything it learnt
/// is gone, unless its series is kept (`history_file`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastRestart {
    /// When, in simulated seconds; `None`: at the end of the scenario's warm-up, so every
    /// measured window comes after it.
    pub at_s: Option<f64>,
    /// Whether the series comes back (a `history_file`, or `history_prometheus`).
    pub keep_series: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        let health = fulcrum_config::HealthCheckConfig::default();
        Self {
            seed: None,
            retries: pool_defaults::RETRIES,
            max_consecutive_failures: pool_defaults::MAX_CONSECUTIVE_FAILURES,
            ewma_decay: Duration::from_millis(pool_defaults::EWMA_DECAY_MS),
            health_interval: health.interval,
            unhealthy_threshold: health.unhealthy_threshold,
            healthy_threshold: health.healthy_threshold,
            tick_ms: control_defaults::TICK_MS,
            refused_ms: 0.1,
            weight_controller: None,
            replicas: 1,
            split: ProxySplit::Turns,
            active_proxies: Vec::new(),
            joining_proxies_read_history: false,
            combine: crate::autoscale::Combine::Max,
            forecast_model: None,
            forecast_restart: None,
        }
    }
}

impl fmt::Debug for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimOptions")
            .field("seed", &self.seed)
            .field("retries", &self.retries)
            .field("max_consecutive_failures", &self.max_consecutive_failures)
            .field("ewma_decay", &self.ewma_decay)
            .field("health_interval", &self.health_interval)
            .field("unhealthy_threshold", &self.unhealthy_threshold)
            .field("healthy_threshold", &self.healthy_threshold)
            .field("tick_ms", &self.tick_ms)
            .field("refused_ms", &self.refused_ms)
            .field("weight_controller", &self.weight_controller.is_some())
            .field("replicas", &self.replicas)
            .field("split", &self.split)
            .field("active_proxies", &self.active_proxies)
            .field(
                "joining_proxies_read_history",
                &self.joining_proxies_read_history,
            )
            .field("combine", &self.combine)
            .field("forecast_model", &self.forecast_model.is_some())
            .field("forecast_restart", &self.forecast_restart)
            .finish()
    }
}

/// Why a simulation could not run.
#[derive(Debug)]
pub enum SimError {
    /// An `ALGO+model` policy was requested without `SimOptions::weight_controller`.
    NeedsModel {
        /// The policy name.
        policy: String,
    },
    /// The scenario or options cannot be simulated.
    Invalid(String),
    /// Writing an output file failed.
    Io(std::io::Error),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::NeedsModel { policy } => write!(
                f,
                "policy {policy}: the +model policies need the control loop's model"
            ),
            SimError::Invalid(why) => write!(f, "cannot simulate: {why}"),
            SimError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SimError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for SimError {
    fn from(e: std::io::Error) -> Self {
        SimError::Io(e)
    }
}

/// A backend's true condition at a control tick (what a model should learn to infer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendTruth {
    /// Slots serving in parallel.
    pub concurrency: u32,
    /// Current mean service time, ms (slowdown included).
    pub service_ms: f64,
    /// Current probability of a 503.
    pub error_rate: f64,
    /// Refusing connections.
    pub down: bool,
    /// Requests waiting for a slot.
    pub queue_len: usize,
    /// Slots busy.
    pub busy: u32,
}

/// Everything visible at one control tick of one proxy.
#[derive(Debug)]
pub struct TickSnapshot<'a> {
    /// Simulated time, seconds.
    pub t_s: f64,
    /// The proxy that ticked (0 when there is one).
    pub replica: usize,
    /// The pool, after the weight controller (if any) ran.
    pub pool: &'a Pool,
    /// The window's observations, one per backend.
    pub observations: &'a [BackendObservation],
    /// Ground truth, one per backend.
    pub truth: &'a [BackendTruth],
}

/// Queueing figures of a run, measured between the end of warm-up and the end of the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct SimStats {
    /// Length of the measurement window, seconds.
    pub window_s: f64,
    /// Requests that arrived in the window.
    pub arrivals: u64,
    /// Time-averaged number of requests in the system (arrived, not yet answered).
    pub mean_in_system: f64,
    /// Per backend, time-averaged busy slots divided by concurrency.
    pub utilisation: Vec<f64>,
    /// Events processed over the whole run.
    pub events: u64,
}

/// The result of a run and its queueing figures.
#[derive(Debug, Clone)]
pub struct SimOutput {
    /// The policy's results.
    pub result: PolicyResult,
    /// Queueing figures.
    pub stats: SimStats,
}

/// Simulate `scenario` under `policy`.
pub fn simulate(
    scenario: &Scenario,
    policy: &Policy,
    opts: &SimOptions,
) -> Result<PolicyResult, SimError> {
    simulate_detailed(scenario, policy, opts, &mut |_| {}).map(|o| o.result)
}

/// Simulate every policy (in parallel threads) and collect a [`RunReport`] in `policies` order.
pub fn simulate_all(
    scenario: &Scenario,
    policies: &[Policy],
    opts: &SimOptions,
) -> Result<RunReport, SimError> {
    let results: Vec<Result<PolicyResult, SimError>> = std::thread::scope(|s| {
        let handles: Vec<_> = policies
            .iter()
            .map(|p| s.spawn(move || simulate(scenario, p, opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(SimError::Invalid("simulation panicked".into())))
            })
            .collect()
    });
    Ok(RunReport {
        scenario: scenario.name.clone(),
        seed: opts.seed.unwrap_or(scenario.seed),
        mode: "sim".to_string(),
        results: results.into_iter().collect::<Result<_, _>>()?,
    })
}

/// Simulate and also return queueing figures; `on_tick` sees every control tick.
pub fn simulate_detailed(
    scenario: &Scenario,
    policy: &Policy,
    opts: &SimOptions,
    on_tick: &mut dyn FnMut(&TickSnapshot<'_>),
) -> Result<SimOutput, SimError> {
    validate(scenario, opts)?;
    let controllers = match (policy.needs_model(), &opts.weight_controller) {
        (false, _) => (0..opts.replicas).map(|_| None).collect(),
        (true, Some(factory)) => (0..opts.replicas)
            .map(|_| Some(factory(scenario)))
            .collect(),
        (true, None) => {
            return Err(SimError::NeedsModel {
                policy: policy.to_string(),
            })
        }
    };
    let mut sim = Sim::new(scenario, policy, opts, controllers);
    sim.run(on_tick);
    Ok(sim.finish())
}

fn validate(sc: &Scenario, opts: &SimOptions) -> Result<(), SimError> {
    let bad = |why: String| Err(SimError::Invalid(why));
    if sc.backends.is_empty() {
        return bad("the scenario has no backends".into());
    }
    if !(sc.duration_s.is_finite() && sc.duration_s > 0.0) {
        return bad(format!("duration_s = {} must be positive", sc.duration_s));
    }
    if !(sc.warmup_s.is_finite() && sc.warmup_s >= 0.0 && sc.warmup_s < sc.duration_s) {
        return bad(format!(
            "warmup_s = {} must be in [0, duration_s)",
            sc.warmup_s
        ));
    }
    let rates = std::iter::once(sc.load.rate_rps).chain(sc.load.steps.iter().map(|s| s.1));
    for r in rates {
        if !(r.is_finite() && r >= 0.0) {
            return bad(format!("arrival rate {r} must be finite and >= 0"));
        }
    }
    for b in &sc.backends {
        if b.concurrency == 0 {
            return bad(format!("backend {}: concurrency must be > 0", b.name));
        }
        if !(b.service_ms.is_finite() && b.service_ms >= 0.0 && b.error_ms.is_finite()) {
            return bad(format!("backend {}: invalid service time", b.name));
        }
    }
    if opts.tick_ms == 0 || opts.health_interval.is_zero() {
        return bad("tick_ms and health_interval must be positive".into());
    }
    if let Some((at, n)) = opts
        .active_proxies
        .iter()
        .find(|(_, n)| *n == 0 || *n > opts.replicas)
    {
        return bad(format!(
            "active proxies from {at} s: {n}, of {} replicas (at least 1, at most the replicas)",
            opts.replicas
        ));
    }
    if opts.replicas == 0 {
        return bad("replicas must be at least 1".into());
    }
    Ok(())
}

/// A failure probability never treated as certain by the oracle's cost.
const MIN_SUCCESS: f64 = 1e-9;
/// The oracle's cost of a final error for a non-idempotent request, ms.
const ORACLE_FAILURE_PENALTY_MS: f64 = 10_000.0;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Arrival,
    Done(u32),
    /// A control tick of this replica.
    Tick(u32),
    /// A round of active checks of this replica.
    Health(u32),
    /// A scaler's control step.
    Scale,
    /// A provisioned copy is ready: `(backend, generation)`.
    Ready(u32, u32),
}

/// A scheduled event; the heap pops the earliest, ties in scheduling order.
#[derive(Debug, Clone, Copy)]
struct Event {
    t: u64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap.
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

/// What happens to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Waiting for a slot.
    Queued,
    /// Connection refused (backend down).
    Refused,
    /// Served, answered 503.
    Error,
    /// Served successfully.
    Ok,
}

#[derive(Debug)]
struct Attempt {
    req: u32,
    backend: u32,
    start_ns: u64,
    fate: Fate,
    /// Held until the attempt completes, so the pool's `in_flight` is exact.
    guard: Option<InFlightGuard>,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    /// The proxy the request arrived at.
    replica: u32,
    arrival_ns: u64,
    post: bool,
    tried: Tried,
    attempts: u32,
}

/// Time integral of a step function over a fixed window.
#[derive(Debug, Clone, Copy)]
struct Integral {
    from: u64,
    to: u64,
    last: u64,
    value: u64,
    area: f64,
}

impl Integral {
    fn new(from: u64, to: u64) -> Self {
        Self {
            from,
            to,
            last: 0,
            value: 0,
            area: 0.0,
        }
    }

    /// The function changes to `value` at `now`.
    #[inline]
    fn set(&mut self, now: u64, value: u64) {
        let a = self.last.max(self.from);
        let b = now.min(self.to);
        if b > a {
            self.area += (self.value * (b - a)) as f64;
        }
        self.last = now;
        self.value = value;
    }

    fn mean(&mut self) -> f64 {
        self.set(self.to.max(self.last), self.value);
        self.area / (self.to - self.from).max(1) as f64
    }

    /// The area up to `now` (value-nanoseconds).
    fn area_to(&mut self, now: u64) -> f64 {
        self.set(now.max(self.last), self.value);
        self.area
    }
}

#[derive(Debug)]
struct BackendSim {
    busy: u32,
    queue: VecDeque<u32>,
    rng: Rng,
    busy_integral: Integral,
    /// Busy slots over the whole run, for the scalers' utilisation.
    busy_area: Integral,
}

/// One proxy: its pool, control loop, tick window and health checker, one tracker per backend.
/// One proxy's running counts of its own attempts.
#[derive(Debug, Clone, Copy, Default)]
struct ProxyCounts {
    attempts: u64,
    failed: u64,
    latency_ns: u128,
    /// Attempts started and not finished yet (in service, queued, or refused and not yet told).
    in_flight: i64,
}

impl ProxyCounts {
    /// The counts of several proxies added up.
    fn total<'c>(counts: impl Iterator<Item = &'c ProxyCounts>) -> ProxyCounts {
        counts.fold(ProxyCounts::default(), |t, c| ProxyCounts {
            attempts: t.attempts + c.attempts,
            failed: t.failed + c.failed,
            latency_ns: t.latency_ns + c.latency_ns,
            in_flight: t.in_flight + c.in_flight,
        })
    }

    /// What this proxy saw since `last`, over `dt` seconds.
    fn view_since(&self, last: &ProxyCounts, dt: f64, active: bool) -> ProxyView {
        let n = self.attempts - last.attempts;
        ProxyView {
            active,
            attempts_rps: n as f64 / dt,
            error_share: if n > 0 {
                (self.failed - last.failed) as f64 / n as f64
            } else {
                0.0
            },
            mean_latency_ms: (n > 0)
                .then(|| (self.latency_ns - last.latency_ns) as f64 / n as f64 / 1e6),
            in_flight_growth_rps: (self.in_flight - last.in_flight) as f64 / dt,
        }
    }
}

struct Replica {
    pool: Arc<Pool>,
    /// What this proxy counts of its own attempts, as its control thread reads them.
    counts: ProxyCounts,
    controller: Option<Box<dyn WeightController>>,
    observer: TickObserver,
    health: Vec<HealthTracker>,
}

struct Sim<'a> {
    sc: &'a Scenario,
    opts: &'a SimOptions,
    policy: Policy,
    replicas: Vec<Replica>,
    /// Arrivals so far, which pick the replica in turn.
    arrivals: u64,
    /// Picks the replica of an arrival under [`ProxySplit::Random`].
    split_rng: Rng,
    now: u64,
    seq: u64,
    events: u64,
    heap: BinaryHeap<Event>,
    backends: Vec<BackendSim>,
    attempts: Vec<Attempt>,
    free_attempts: Vec<u32>,
    requests: Vec<Request>,
    free_requests: Vec<u32>,
    outstanding: u64,
    arrival_rng: Rng,
    oracle_rotation: usize,
    /// `capacity_oracle`: the scenario's change times (ns) and the next one to apply.
    capacity_changes: Vec<u64>,
    next_capacity_change: usize,
    warmup_ns: u64,
    duration_ns: u64,
    refused_ns: u64,
    acc: Accumulator,
    in_system: Integral,
    arrivals_in_window: u64,
    /// Every arrival and every successful completion of the run, for the scalers.
    arrivals_total: u64,
    completed_total: u64,
    /// Every attempt completed, failed, and their summed latency (ns), for the scalers.
    /// Per SLO window, the latencies (ms) of the requests that arrived in it.
    slo_latencies: Vec<Vec<f32>>,
    scaling: Option<Scaling>,
}

/// Where a copy of the scaled backend is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Does not exist.
    Off,
    /// Started, takes traffic at the `Ready` event of this generation.
    Provisioning(u32),
    /// Takes traffic.
    Serving,
    /// Removed: takes no new request, finishes what it holds.
    Draining,
}

/// The scaler of a run and the copies it controls (backends `first..first + slots.len()`).
struct Scaling {
    scaler: Box<dyn Scaler>,
    kind: ScalerKind,
    first: usize,
    slots: Vec<Slot>,
    generation: u32,
    provision_ns: u64,
    period_ns: u64,
    /// Copies existing (not `Off`) over the measured window.
    existing: Integral,
    /// At the previous step: time, arrivals, completions, busy area of every backend.
    last_ns: u64,
    last_arrivals: u64,
    last_completed: u64,
    last_busy: Vec<f64>,
    /// Attempts in flight at every backend at the previous step.
    last_in_flight: u64,
    /// Every proxy's counts at the previous step.
    last_proxies: Vec<ProxyCounts>,
    scale_ups: u32,
    scale_downs: u32,
    peak_serving: u32,
    timeline: Vec<ScaleSample>,
}

impl Scaling {
    fn count(&self, f: impl Fn(Slot) -> bool) -> u32 {
        self.slots.iter().filter(|s| f(**s)).count() as u32
    }
    fn existing_now(&self) -> u64 {
        u64::from(self.count(|s| s != Slot::Off))
    }
}

fn ns(seconds: f64) -> u64 {
    (seconds * 1e9).round().max(0.0) as u64
}

impl<'a> Sim<'a> {
    fn new(
        sc: &'a Scenario,
        policy: &Policy,
        opts: &'a SimOptions,
        controllers: Vec<Option<Box<dyn WeightController>>>,
    ) -> Self {
        let seed = opts.seed.unwrap_or(sc.seed);
        let replicas = controllers
            .into_iter()
            .enumerate()
            .map(|(r, controller)| {
                let pool = Self::pool(sc, policy, opts, seed, r);
                Replica {
                    counts: ProxyCounts::default(),
                    observer: TickObserver::new(&pool, 0),
                    health: (0..sc.backends.len())
                        .map(|_| {
                            HealthTracker::new(HealthRule {
                                unhealthy_after: opts.unhealthy_threshold,
                                healthy_after: opts.healthy_threshold,
                            })
                        })
                        .collect(),
                    pool,
                    controller,
                }
            })
            .collect();
        let capacity_changes = if *policy == Policy::CapacityOracle {
            sc.change_times().into_iter().map(ns).collect()
        } else {
            Vec::new()
        };
        let warmup_ns = ns(sc.warmup_s);
        let duration_ns = ns(sc.duration_s);
        let names: Vec<String> = sc.backends.iter().map(|b| b.name.clone()).collect();
        let expected = (sc.load.rate_rps * sc.duration_s).clamp(0.0, 1e7) as usize;
        Self {
            sc,
            opts,
            policy: *policy,
            replicas,
            arrivals: 0,
            now: 0,
            seq: 0,
            events: 0,
            heap: BinaryHeap::with_capacity(1024),
            backends: (0..sc.backends.len())
                .map(|i| BackendSim {
                    busy: 0,
                    queue: VecDeque::new(),
                    rng: Rng::stream(seed, Stream::Backend(i)),
                    busy_integral: Integral::new(warmup_ns, duration_ns),
                    busy_area: Integral::new(0, u64::MAX),
                })
                .collect(),
            attempts: Vec::with_capacity(1024),
            free_attempts: Vec::new(),
            requests: Vec::with_capacity(1024),
            free_requests: Vec::new(),
            outstanding: 0,
            arrival_rng: Rng::stream(seed, Stream::Arrivals),
            split_rng: Rng::stream(seed, Stream::Proxies),
            oracle_rotation: 0,
            capacity_changes,
            next_capacity_change: 0,
            warmup_ns,
            duration_ns,
            refused_ns: ns(opts.refused_ms / 1000.0),
            acc: {
                let mut acc = Accumulator::new(&names, sc.warmup_s, sc.duration_s);
                acc.reserve(expected);
                acc
            },
            in_system: Integral::new(warmup_ns, duration_ns),
            arrivals_in_window: 0,
            arrivals_total: 0,
            completed_total: 0,
            slo_latencies: match sc.slo {
                Some(slo) => {
                    let n = ((sc.duration_s - sc.warmup_s) / slo.window_s)
                        .ceil()
                        .max(1.0);
                    vec![Vec::new(); n as usize]
                }
                None => Vec::new(),
            },
            scaling: None,
        }
    }

    /// The pool of replica `r`: the proxy's picker (P2C seeded apart per replica) over the
    /// scenario's backends.
    fn pool(sc: &Scenario, policy: &Policy, opts: &SimOptions, seed: u64, r: usize) -> Arc<Pool> {
        let backends: Vec<Backend> = sc
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                // Identifiers only; no socket is ever opened.
                let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
                let mut backend = Backend::new(SocketAddr::from((ip, 80)), b.weight);
                backend.name = b.name.clone();
                backend
            })
            .collect();
        let algorithm = policy.algorithm().unwrap_or(Algorithm::LeastConnections);
        let picker = match algorithm {
            Algorithm::P2cEwma => Box::new(P2cEwma::with_seed(
                stream_seed(seed, Stream::P2c).wrapping_add(r as u64),
            )) as _,
            a => fulcrum_balance::new_picker(a),
        };
        let pool = Arc::new(Pool::with_picker(
            sc.name.clone(),
            algorithm,
            backends,
            opts.ewma_decay,
            opts.max_consecutive_failures,
            picker,
        ));
        if *policy == Policy::CapacityOracle {
            // Always valid: one finite, non-negative weight per backend.
            let _ = pool.set_weights(sc.capacity_weights(0.0));
        }
        pool
    }

    #[inline]
    fn schedule(&mut self, t: u64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Event {
            t,
            seq: self.seq,
            kind,
        });
    }

    fn run(&mut self, on_tick: &mut dyn FnMut(&TickSnapshot<'_>)) {
        let tick_ns = self.opts.tick_ms.saturating_mul(1_000_000);
        let health_ns = u64::try_from(self.opts.health_interval.as_nanos()).unwrap_or(u64::MAX);
        if let Some(t) = self.next_arrival(0.0) {
            self.schedule(t, Kind::Arrival);
        }
        // Replicas started apart tick apart: replica r is r/N of a period behind replica 0.
        let n = self.replicas.len() as u64;
        for r in 0..n {
            let tick_at = tick_ns + tick_ns / n * r;
            if tick_at <= self.duration_ns {
                self.schedule(tick_at, Kind::Tick(r as u32));
            }
            self.schedule(health_ns + health_ns / n * r, Kind::Health(r as u32));
        }
        if let Some(period) = self.scaling.as_ref().map(|s| s.period_ns) {
            if period <= self.duration_ns {
                self.schedule(period, Kind::Scale);
            }
        }
        while let Some(ev) = self.heap.pop() {
            self.now = ev.t;
            self.events += 1;
            match ev.kind {
                Kind::Arrival => self.arrival(),
                Kind::Done(id) => self.done(id),
                Kind::Tick(r) => {
                    self.tick(r as usize, on_tick);
                    let next = self.now.saturating_add(tick_ns);
                    if next <= self.duration_ns {
                        self.schedule(next, Kind::Tick(r));
                    }
                }
                Kind::Health(r) => {
                    self.health_check(r as usize);
                    if self.now < self.duration_ns || self.outstanding > 0 {
                        self.schedule(self.now.saturating_add(health_ns), Kind::Health(r));
                    }
                }
                Kind::Scale => {
                    self.scale_step();
                    if let Some(period) = self.scaling.as_ref().map(|s| s.period_ns) {
                        let next = self.now.saturating_add(period);
                        if next <= self.duration_ns {
                            self.schedule(next, Kind::Scale);
                        }
                    }
                }
                Kind::Ready(b, generation) => self.ready(b as usize, generation),
            }
        }
    }

    fn finish(mut self) -> SimOutput {
        let window_s = (self.duration_ns - self.warmup_ns) as f64 / 1e9;
        let utilisation = self
            .backends
            .iter_mut()
            .zip(&self.sc.backends)
            .map(|(b, sb)| b.busy_integral.mean() / f64::from(sb.concurrency))
            .collect();
        let stats = SimStats {
            window_s,
            arrivals: self.arrivals_in_window,
            mean_in_system: self.in_system.mean(),
            utilisation,
            events: self.events,
        };
        let name = self.policy.to_string();
        SimOutput {
            result: self.acc.finish(&name),
            stats,
        }
    }

    /// Next arrival strictly after `from_s` from the piecewise-constant Poisson rate, or `None`
    /// past the end of the scenario.
    fn next_arrival(&mut self, from_s: f64) -> Option<u64> {
        let load = &self.sc.load;
        let end = self.sc.duration_s;
        let mut t = from_s;
        let mut e = self.arrival_rng.exp1();
        while t < end {
            let rate = load.rate_at(t);
            let boundary = load.next_change(t, end);
            if rate > 0.0 {
                let next = t + e / rate;
                if next < boundary {
                    return Some(ns(next).max(self.now + 1));
                }
                e -= (boundary - t) * rate;
            }
            t = boundary;
        }
        None
    }

    /// How many proxies take arrivals now (the first ones).
    fn active_proxies(&self) -> usize {
        let now_s = self.now as f64 * 1e-9;
        self.opts
            .active_proxies
            .iter()
            .rev()
            .find(|(from_s, _)| *from_s <= now_s)
            .map_or(self.replicas.len(), |(_, n)| *n as usize)
    }

    fn arrival(&mut self) {
        let now_s = self.now as f64 * 1e-9;
        let post = self.arrival_rng.uniform() < self.sc.load.non_idempotent_fraction;
        if let Some(t) = self.next_arrival(now_s) {
            self.schedule(t, Kind::Arrival);
        }
        let n = self.active_proxies() as u64;
        let replica = match self.opts.split {
            ProxySplit::Random if n > 1 => {
                ((self.split_rng.uniform() * n as f64) as u64).min(n - 1)
            }
            _ => self.arrivals % n,
        } as u32;
        self.arrivals += 1;
        let req = Request {
            replica,
            arrival_ns: self.now,
            post,
            tried: Tried::new(),
            attempts: 0,
        };
        let id = match self.free_requests.pop() {
            Some(id) => {
                self.requests[id as usize] = req;
                id
            }
            None => {
                self.requests.push(req);
                (self.requests.len() - 1) as u32
            }
        };
        self.outstanding += 1;
        self.arrivals_total += 1;
        self.in_system.set(self.now, self.outstanding);
        if self.now >= self.warmup_ns && self.now < self.duration_ns {
            self.arrivals_in_window += 1;
        }
        self.dispatch(id);
    }

    /// Start the next attempt of request `id`, or fail it when no backend is eligible.
    fn dispatch(&mut self, id: u32) {
        let r = self.requests[id as usize];
        if self.next_capacity_change < self.capacity_changes.len()
            && self.now >= self.capacity_changes[self.next_capacity_change]
        {
            self.follow_capacity();
        }
        let pick = match self.policy {
            Policy::Oracle => self.oracle_pick(r.tried, r.post),
            _ => self.replicas[r.replica as usize]
                .pool
                .pick(r.tried, self.now),
        };
        let Some(b) = pick else {
            self.finish_request(id, false);
            return;
        };
        let r = &mut self.requests[id as usize];
        r.tried.insert(b);
        r.attempts += 1;
        self.replicas[r.replica as usize].counts.in_flight += 1;
        let attempt = Attempt {
            req: id,
            backend: b as u32,
            start_ns: self.now,
            fate: Fate::Queued,
            guard: Some(self.replicas[r.replica as usize].pool.lease(b)),
        };
        let aid = match self.free_attempts.pop() {
            Some(aid) => {
                self.attempts[aid as usize] = attempt;
                aid
            }
            None => {
                self.attempts.push(attempt);
                (self.attempts.len() - 1) as u32
            }
        };
        let now_s = self.now as f64 * 1e-9;
        if self.sc.backends[b].state_at(now_s).down {
            self.attempts[aid as usize].fate = Fate::Refused;
            self.schedule(self.now + self.refused_ns, Kind::Done(aid));
        } else if self.backends[b].busy < self.sc.backends[b].concurrency {
            self.start_service(b, aid);
        } else {
            self.backends[b].queue.push_back(aid);
        }
    }

    /// Occupy a slot of backend `b` with attempt `aid` and schedule its completion.
    fn start_service(&mut self, b: usize, aid: u32) {
        let sb = &self.sc.backends[b];
        let state = sb.state_at(self.now as f64 * 1e-9);
        let bs = &mut self.backends[b];
        bs.busy += 1;
        bs.busy_integral.set(self.now, u64::from(bs.busy));
        bs.busy_area.set(self.now, u64::from(bs.busy));
        let (fate, ms) = if state.error_rate > 0.0 && bs.rng.uniform() < state.error_rate {
            (Fate::Error, sb.error_ms)
        } else {
            let median = sb.service_ms * state.slowdown;
            (Fate::Ok, bs.rng.lognormal(median, sb.service_jitter))
        };
        self.attempts[aid as usize].fate = fate;
        self.schedule(self.now + ns(ms / 1000.0), Kind::Done(aid));
    }

    fn done(&mut self, aid: u32) {
        let a = &mut self.attempts[aid as usize];
        let (req, b, fate) = (a.req, a.backend as usize, a.fate);
        let latency = self.now - a.start_ns;
        // The lease ends with the attempt.
        drop(a.guard.take());
        self.free_attempts.push(aid);
        if fate != Fate::Refused {
            let bs = &mut self.backends[b];
            bs.busy -= 1;
            bs.busy_integral.set(self.now, u64::from(bs.busy));
            bs.busy_area.set(self.now, u64::from(bs.busy));
            if let Some(next) = bs.queue.pop_front() {
                self.start_service(b, next);
            } else if bs.busy == 0 {
                self.drained(b);
            }
        }
        let outcome = match fate {
            Fate::Ok => Outcome::Success,
            Fate::Error => Outcome::ServerError,
            Fate::Refused | Fate::Queued => Outcome::ConnectFailure,
        };
        let r = self.requests[req as usize];
        let replica = &mut self.replicas[r.replica as usize];
        replica.counts.in_flight -= 1;
        replica.counts.attempts += 1;
        replica.counts.failed += u64::from(fate != Fate::Ok);
        replica.counts.latency_ns += u128::from(latency);
        replica.pool.record(b, latency, outcome, self.now);
        if r.arrival_ns >= self.warmup_ns {
            self.acc
                .attempt(r.arrival_ns as f64 * 1e-9, b, outcome != Outcome::Success);
        }
        let failure = match fate {
            Fate::Ok => {
                self.finish_request(req, true);
                return;
            }
            Fate::Refused | Fate::Queued => AttemptFailure::Connect,
            // A failing backend answers 503, as the testbed's do.
            Fate::Error => AttemptFailure::RetryableStatus,
        };
        let ctx = RetryContext {
            idempotent: !r.post,
            body_replayable: true,
            response_started: false,
            attempts: r.attempts,
            retries: self.opts.retries,
        };
        if retry::decide(failure, &ctx) == RetryDecision::RetryElsewhere {
            self.dispatch(req);
        } else {
            self.finish_request(req, false);
        }
    }

    fn finish_request(&mut self, id: u32, ok: bool) {
        let r = self.requests[id as usize];
        self.completed_total += u64::from(ok);
        if r.arrival_ns >= self.warmup_ns {
            let latency_ms = (self.now - r.arrival_ns) as f64 * 1e-6;
            self.acc
                .request(latency_ms, ok, r.attempts.saturating_sub(1));
            if let Some(slo) = self.sc.slo {
                let k = ((r.arrival_ns - self.warmup_ns) as f64 * 1e-9 / slo.window_s) as usize;
                if let Some(w) = self.slo_latencies.get_mut(k) {
                    w.push(latency_ms as f32);
                }
            }
        }
        self.free_requests.push(id);
        self.outstanding -= 1;
        self.in_system.set(self.now, self.outstanding);
    }

    /// `capacity_oracle`: apply every change of the scenario that has happened by now.
    #[cold]
    fn follow_capacity(&mut self) {
        while self.next_capacity_change < self.capacity_changes.len()
            && self.now >= self.capacity_changes[self.next_capacity_change]
        {
            self.next_capacity_change += 1;
        }
        let weights = self.sc.capacity_weights(self.now as f64 * 1e-9);
        if weights.iter().any(|w| *w > 0.0) {
            for r in &self.replicas {
                let _ = r.pool.set_weights(weights.clone());
            }
        }
    }

    /// The backend with the shortest expected completion time, from the true state.
    fn oracle_pick(&mut self, tried: Tried, post: bool) -> Option<usize> {
        let now_s = self.now as f64 * 1e-9;
        let n = self.backends.len();
        self.oracle_rotation = (self.oracle_rotation + 1) % n;
        let mut best: Option<(bool, f64, usize)> = None;
        for k in 0..n {
            let i = (self.oracle_rotation + k) % n;
            let sb = &self.sc.backends[i];
            let st = sb.state_at(now_s);
            if st.down {
                continue;
            }
            let bs = &self.backends[i];
            let c = f64::from(sb.concurrency);
            let mean = sb.mean_service_ms() * st.slowdown;
            let p = st.error_rate.clamp(0.0, 1.0);
            let occupancy = (1.0 - p) * mean + p * sb.error_ms;
            let ahead = (bs.queue.len() as u64 + u64::from(bs.busy)) as f64;
            let wait = ((ahead - c + 1.0).max(0.0) / c) * occupancy;
            let expected = wait + occupancy;
            let cost = if post {
                expected + p * ORACLE_FAILURE_PENALTY_MS
            } else {
                // Expected time to a success when failures are retried.
                expected / (1.0 - p).max(MIN_SUCCESS)
            };
            let key = (tried.contains(i), cost, i);
            if best.is_none_or(|(bt, bc, _)| (key.0, key.1) < (bt, bc)) {
                best = Some(key);
            }
        }
        best.map(|(_, _, i)| i)
    }

    fn truth(&self) -> Vec<BackendTruth> {
        let now_s = self.now as f64 * 1e-9;
        self.sc
            .backends
            .iter()
            .zip(&self.backends)
            .map(|(sb, bs)| {
                let st = sb.state_at(now_s);
                BackendTruth {
                    concurrency: sb.concurrency,
                    service_ms: sb.mean_service_ms() * st.slowdown,
                    error_rate: st.error_rate,
                    down: st.down,
                    queue_len: bs.queue.len(),
                    busy: bs.busy,
                }
            })
            .collect()
    }

    fn tick(&mut self, r: usize, on_tick: &mut dyn FnMut(&TickSnapshot<'_>)) {
        let now = self.now;
        let replica = &mut self.replicas[r];
        let observations = replica.observer.observe(&replica.pool, now);
        if let Some(c) = replica.controller.as_mut() {
            c.tick(&replica.pool, &observations, now);
        }
        let truth = self.truth();
        on_tick(&TickSnapshot {
            t_s: now as f64 * 1e-9,
            replica: r,
            pool: &self.replicas[r].pool,
            observations: &observations,
            truth: &truth,
        });
    }

    /// One round of active checks of replica `r`, with the proxy's health rule.
    fn health_check(&mut self, r: usize) {
        let now_s = self.now as f64 * 1e-9;
        let scaling = &self.scaling;
        let replica = &mut self.replicas[r];
        for (i, tracker) in replica.health.iter_mut().enumerate() {
            if let Some(s) = scaling {
                if i >= s.first
                    && i < s.first + s.slots.len()
                    && s.slots[i - s.first] != Slot::Serving
                {
                    continue;
                }
            }
            let stats = &replica.pool.backends()[i].stats;
            let up = !self.sc.backends[i].state_at(now_s).down;
            match tracker.observe(up, stats.is_healthy()) {
                Some(HealthChange::Up) => {
                    // Starts a slow-start ramp, which only a pool built with one applies.
                    stats.recover(self.now);
                }
                Some(HealthChange::Down) => stats.set_healthy(false),
                None => {}
            }
        }
    }
}

/// In-flight count of every backend of a finished run is checked by the tests through this.
#[cfg(test)]
pub(crate) fn run_for_test(
    scenario: &Scenario,
    policy: &Policy,
    opts: &SimOptions,
) -> (SimOutput, Vec<u64>) {
    validate(scenario, opts).unwrap();
    let controllers = (0..opts.replicas).map(|_| None).collect();
    let mut sim = Sim::new(scenario, policy, opts, controllers);
    sim.run(&mut |_| {});
    let in_flight = (0..scenario.backends.len())
        .map(|i| {
            sim.replicas
                .iter()
                .map(|r| r.pool.backends()[i].stats.in_flight())
                .sum()
        })
        .collect();
    (sim.finish(), in_flight)
}

/// The result of a run under a scaler.
#[derive(Debug, Clone)]
pub struct AutoscaleRun {
    /// The policy's results (backends are every copy the scaler could start).
    pub result: PolicyResult,
    /// Queueing figures.
    pub stats: SimStats,
    /// What scaling cost and bought.
    pub autoscale: AutoscaleStats,
}

/// The scenario with `max_backends` copies of its `[autoscale]` backend (the copies past its
/// `count` named on from it, without its events), so every copy a scaler may start has a place
/// in the pool from the start.
pub fn with_every_copy(sc: &Scenario) -> Result<Scenario, SimError> {
    let Some(a) = &sc.autoscale else {
        return Err(SimError::Invalid(
            "the scenario has no [autoscale] table".into(),
        ));
    };
    let template = sc
        .backends
        .get(a.first)
        .cloned()
        .ok_or_else(|| SimError::Invalid("[autoscale] names no backend".into()))?;
    let mut out = sc.clone();
    let at = a.first + a.initial as usize;
    let extra = (a.max_backends.saturating_sub(a.initial)) as usize;
    let copies = (0..extra).map(|k| {
        let mut b = template.clone();
        b.name = format!("{}-{}", a.backend, a.initial as usize + k + 1);
        b.events.clear();
        b
    });
    out.backends.splice(at..at, copies);
    Ok(out)
}

/// Copies a `static` scaler runs when no count is given: the scenario's peak rate (sampled
/// every second) over `target_utilization` of one copy's capacity, net of the other backends.
pub fn peak_sized_count(sc: &Scenario) -> u32 {
    let Some(a) = &sc.autoscale else {
        return 1;
    };
    let per = |b: &fulcrum_scenario::ScenarioBackend| {
        f64::from(b.concurrency) * 1000.0 / b.mean_service_ms()
    };
    let copy = sc.backends.get(a.first).map_or(f64::NAN, per);
    let others: f64 = sc
        .backends
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < a.first || *i >= a.first + a.initial as usize)
        .map(|(_, b)| per(b))
        .sum();
    let peak = (0..=sc.duration_s.ceil() as usize)
        .map(|t| sc.load.rate_at(t as f64))
        .fold(0.0, f64::max);
    let need = ((peak - others * a.target_utilization) / (copy * a.target_utilization)).ceil();
    if need.is_finite() {
        (need.max(0.0) as u32).clamp(a.min_backends, a.max_backends)
    } else {
        a.max_backends
    }
}

/// Simulate `scenario` under `policy` with `scaler` adding and removing copies of its
/// `[autoscale]` backend.
pub fn simulate_autoscaled(
    scenario: &Scenario,
    policy: &Policy,
    scaler: ScalerKind,
    opts: &SimOptions,
) -> Result<AutoscaleRun, SimError> {
    simulate_autoscaled_detailed(scenario, policy, scaler, opts, &mut |_| {})
}

/// [`simulate_autoscaled`] with every control tick shown to `on_tick`.
pub fn simulate_autoscaled_detailed(
    scenario: &Scenario,
    policy: &Policy,
    scaler: ScalerKind,
    opts: &SimOptions,
    on_tick: &mut dyn FnMut(&TickSnapshot<'_>),
) -> Result<AutoscaleRun, SimError> {
    if matches!(policy, Policy::Oracle | Policy::CapacityOracle) {
        return Err(SimError::Invalid(format!(
            "policy {policy} reads the scenario's backends directly and cannot run under a scaler"
        )));
    }
    let sc = with_every_copy(scenario)?;
    validate(&sc, opts)?;
    let a = sc.autoscale.clone().expect("checked by with_every_copy");
    let controllers = match (policy.needs_model(), &opts.weight_controller) {
        (false, _) => (0..opts.replicas).map(|_| None).collect(),
        (true, Some(factory)) => (0..opts.replicas).map(|_| Some(factory(&sc))).collect(),
        (true, None) => {
            return Err(SimError::NeedsModel {
                policy: policy.to_string(),
            })
        }
    };
    let fixed = (sc.backends.len() - a.max_backends as usize) as u32;
    let mut sim = Sim::new(&sc, policy, opts, controllers);
    let (boxed, start): (Box<dyn Scaler>, u32) = match scaler {
        ScalerKind::Hpa => (Box::new(Hpa::new(HpaSettings::kubernetes(&a))), a.initial),
        // The proxy's demand tracking reads the first replica's pool at the start.
        ScalerKind::Forecast(window, spare) => (
            Box::new(
                ForecastScaler::new(
                    &a,
                    fixed,
                    &sim.replicas[0].pool,
                    0,
                    window,
                    spare,
                    opts.forecast_model.as_ref().map(|f| f()),
                )
                .restarting(
                    opts.forecast_restart
                        .map(|r| (r.at_s.unwrap_or(sc.warmup_s), r.keep_series)),
                )
                .proxies(opts.replicas as usize, opts.combine)
                .joining_with_history(opts.joining_proxies_read_history),
            ),
            a.initial,
        ),
        ScalerKind::ForecastViaHpa(tolerance) => (
            Box::new(ViaHpa::new(
                Box::new(
                    ForecastScaler::new(
                        &a,
                        fixed,
                        &sim.replicas[0].pool,
                        0,
                        None,
                        0,
                        opts.forecast_model.as_ref().map(|f| f()),
                    )
                    .proxies(opts.replicas as usize, opts.combine),
                ),
                tolerance,
                a.min_backends,
                a.max_backends,
            )),
            a.initial,
        ),
        ScalerKind::Oracle(future) => (Box::new(OracleScaler::new(&sc, &a, future)), a.initial),
        ScalerKind::Static(n) => {
            let n = n
                .unwrap_or_else(|| peak_sized_count(scenario))
                .clamp(1, a.max_backends);
            (Box::new(StaticScaler(n)), n)
        }
    };
    sim.start_scaling(boxed, scaler, &a, start);
    sim.run(on_tick);
    let autoscale = sim.autoscale_stats();
    let out = sim.finish();
    Ok(AutoscaleRun {
        result: out.result,
        stats: out.stats,
        autoscale,
    })
}

impl Sim<'_> {
    fn start_scaling(
        &mut self,
        scaler: Box<dyn Scaler>,
        kind: ScalerKind,
        a: &fulcrum_scenario::Autoscale,
        start: u32,
    ) {
        let slots: Vec<Slot> = (0..a.max_backends)
            .map(|k| if k < start { Slot::Serving } else { Slot::Off })
            .collect();
        for (k, s) in slots.iter().enumerate() {
            if *s == Slot::Off {
                for r in &self.replicas {
                    r.pool.backends()[a.first + k].stats.set_healthy(false);
                }
            }
        }
        let period_ns = ns(scaler.period_s()).max(1);
        let mut scaling = Scaling {
            scaler,
            kind,
            first: a.first,
            slots,
            generation: 0,
            provision_ns: ns(a.provision_s),
            period_ns,
            existing: Integral::new(self.warmup_ns, self.duration_ns),
            last_ns: 0,
            last_arrivals: 0,
            last_completed: 0,
            last_busy: vec![0.0; self.backends.len()],
            last_in_flight: 0,
            last_proxies: self.replicas.iter().map(|r| r.counts).collect(),
            scale_ups: 0,
            scale_downs: 0,
            peak_serving: start,
            timeline: Vec::new(),
        };
        scaling.existing.set(0, scaling.existing_now());
        self.scaling = Some(scaling);
    }

    /// A control step: measure the period, ask the scaler, start or remove copies.
    fn scale_step(&mut self) {
        let now = self.now;
        let Some(mut s) = self.scaling.take() else {
            return;
        };
        let dt_ns = now.saturating_sub(s.last_ns).max(1);
        let dt = dt_ns as f64 * 1e-9;
        let mut ready_utilisation = Vec::new();
        let (mut busy_sum, mut offered, mut pool_backends) = (0.0, 0.0, 0u32);
        for (i, bs) in self.backends.iter_mut().enumerate() {
            let area = bs.busy_area.area_to(now);
            let busy = area - s.last_busy[i];
            s.last_busy[i] = area;
            let slot = (i >= s.first && i < s.first + s.slots.len()).then(|| s.slots[i - s.first]);
            if matches!(slot, None | Some(Slot::Serving)) {
                let conc = f64::from(self.sc.backends[i].concurrency);
                let u = (busy / (conc * dt_ns as f64)).clamp(0.0, 1.0);
                busy_sum += busy;
                offered += conc * dt_ns as f64;
                pool_backends += 1;
                if slot.is_some() {
                    ready_utilisation.push(u);
                }
            }
        }
        let in_flight: u64 = self
            .backends
            .iter()
            .map(|b| u64::from(b.busy) + b.queue.len() as u64)
            .sum();
        // Every proxy's attempts together, as one proxy would have counted them.
        let all = ProxyCounts::total(self.replicas.iter().map(|r| &r.counts)).view_since(
            &ProxyCounts::total(s.last_proxies.iter()),
            dt,
            true,
        );
        let view = ScaleView {
            t_s: now as f64 * 1e-9,
            period_s: dt,
            replicas: s.count(|x| matches!(x, Slot::Serving | Slot::Provisioning(_))),
            ready_utilisation,
            unready: s.count(|x| matches!(x, Slot::Provisioning(_))),
            arrivals_rps: (self.arrivals_total - s.last_arrivals) as f64 / dt,
            completed_rps: (self.completed_total - s.last_completed) as f64 / dt,
            attempts_rps: all.attempts_rps,
            error_share: all.error_share,
            mean_latency_ms: all.mean_latency_ms,
            pool_utilisation: if offered > 0.0 {
                busy_sum / offered
            } else {
                0.0
            },
            pool_backends,
            fixed_backends: (self.backends.len() - s.slots.len()) as u32,
            in_flight_growth_rps: (in_flight as f64 - s.last_in_flight as f64) / dt,
            proxies: {
                let active = self.active_proxies();
                self.replicas
                    .iter()
                    .zip(&s.last_proxies)
                    .enumerate()
                    .map(|(k, (r, last))| r.counts.view_since(last, dt, k < active))
                    .collect()
            },
        };
        s.last_in_flight = in_flight;
        s.last_proxies = self.replicas.iter().map(|r| r.counts).collect();
        s.last_ns = now;
        s.last_arrivals = self.arrivals_total;
        s.last_completed = self.completed_total;
        let desired = s.scaler.desired(&view).clamp(1, s.slots.len() as u32);
        s.timeline.push(ScaleSample {
            t_s: view.t_s,
            arrivals_rps: view.arrivals_rps,
            serving: view.replicas - view.unready,
            provisioning: view.unready,
            desired,
            planned_rps: s.scaler.planned_rps(),
        });
        let counted = now >= self.warmup_ns;
        if desired > view.replicas {
            s.scale_ups += u32::from(counted);
            let mut more = desired - view.replicas;
            for k in 0..s.slots.len() {
                if more == 0 {
                    break;
                }
                if s.slots[k] == Slot::Off {
                    more -= 1;
                    s.generation += 1;
                    s.slots[k] = Slot::Provisioning(s.generation);
                    let (b, g) = ((s.first + k) as u32, s.generation);
                    self.schedule(now + s.provision_ns, Kind::Ready(b, g));
                }
            }
        } else if desired < view.replicas {
            s.scale_downs += u32::from(counted);
            let mut fewer = view.replicas - desired;
            // Like a ReplicaSet: copies not yet ready go first (the newest first), then the
            // newest copies taking traffic.
            let mut order: Vec<usize> = (0..s.slots.len())
                .filter(|&k| matches!(s.slots[k], Slot::Provisioning(_)))
                .collect();
            order.sort_by_key(|&k| match s.slots[k] {
                Slot::Provisioning(g) => std::cmp::Reverse(g),
                _ => std::cmp::Reverse(0),
            });
            order.extend(
                (0..s.slots.len())
                    .rev()
                    .filter(|&k| s.slots[k] == Slot::Serving),
            );
            for k in order {
                if fewer == 0 {
                    break;
                }
                fewer -= 1;
                let b = s.first + k;
                if s.slots[k] == Slot::Serving {
                    for r in &self.replicas {
                        r.pool.backends()[b].stats.set_healthy(false);
                    }
                    let bs = &self.backends[b];
                    s.slots[k] = if bs.busy == 0 && bs.queue.is_empty() {
                        Slot::Off
                    } else {
                        Slot::Draining
                    };
                } else {
                    s.slots[k] = Slot::Off;
                }
            }
        }
        s.existing.set(now, s.existing_now());
        self.scaling = Some(s);
    }

    /// A provisioned copy takes traffic, unless it was removed meanwhile.
    fn ready(&mut self, b: usize, generation: u32) {
        let Some(s) = self.scaling.as_mut() else {
            return;
        };
        let k = b - s.first;
        if s.slots[k] != Slot::Provisioning(generation) {
            return;
        }
        s.slots[k] = Slot::Serving;
        let serving = s.count(|x| x == Slot::Serving);
        s.peak_serving = s.peak_serving.max(serving);
        let rule = HealthRule {
            unhealthy_after: self.opts.unhealthy_threshold,
            healthy_after: self.opts.healthy_threshold,
        };
        // Every proxy sees the new copy, as every replica of a Deployment does an endpoint.
        for r in &mut self.replicas {
            r.health[b] = HealthTracker::new(rule);
            r.pool.backends()[b].stats.set_healthy(true);
        }
    }

    /// Backend `b` holds nothing any more: a draining copy is gone.
    fn drained(&mut self, b: usize) {
        let now = self.now;
        let Some(s) = self.scaling.as_mut() else {
            return;
        };
        if b >= s.first && b < s.first + s.slots.len() && s.slots[b - s.first] == Slot::Draining {
            s.slots[b - s.first] = Slot::Off;
            let n = s.existing_now();
            s.existing.set(now, n);
        }
    }

    fn autoscale_stats(&mut self) -> AutoscaleStats {
        let window_s = (self.duration_ns - self.warmup_ns) as f64 * 1e-9;
        let slo = self.sc.slo;
        let (mut windows, mut violations, mut slow, mut timed_out) = (0u32, 0u32, 0u64, 0u64);
        let mut violated_at_s = Vec::new();
        let timeout_ms = pool_defaults::READ_TIMEOUT_MS as f32;
        for (k, w) in self.slo_latencies.iter_mut().enumerate() {
            if w.is_empty() {
                continue;
            }
            let limit = slo.map_or(f64::INFINITY, |s| s.p99_ms) as f32;
            slow += w.iter().filter(|&&l| l > limit).count() as u64;
            timed_out += w.iter().filter(|&&l| l > timeout_ms).count() as u64;
            w.sort_unstable_by(f32::total_cmp);
            let p99 = w[((w.len() as f64 * 0.99).ceil() as usize).clamp(1, w.len()) - 1];
            windows += 1;
            if p99 > limit {
                violations += 1;
                if let Some(slo) = slo {
                    violated_at_s.push(self.sc.warmup_s + k as f64 * slo.window_s);
                }
            }
        }
        let s = self.scaling.as_mut().expect("a scaled run");
        AutoscaleStats {
            scaler: s.kind.to_string(),
            backend_seconds: s.existing.mean() * window_s,
            slo_windows: windows,
            slo_violation_windows: violations,
            violated_at_s,
            slow_requests: slow,
            timed_out,
            scale_ups: s.scale_ups,
            scale_downs: s.scale_downs,
            peak_serving: s.peak_serving,
            timeline: std::mem::take(&mut s.timeline),
        }
    }
}

/// Header of the Markdown table [`AutoscaleRun::markdown_row`] writes rows of.
pub const AUTOSCALE_TABLE_HEADER: &str = "| scenario | scaler | backend-s | vs hpa | p99 ms | SLO violation windows | slow requests | failed | over 30 s | scale up/down | peak serving |\n|---|---|---|---|---|---|---|---|---|---|---|\n";

impl AutoscaleRun {
    /// One row of the comparison table; `hpa_backend_seconds` is the reference for the ratio.
    pub fn markdown_row(&self, scenario: &str, hpa_backend_seconds: f64) -> String {
        let (a, r) = (&self.autoscale, &self.result);
        format!(
            "| {scenario} | {} | {:.0} | {:.2}× | {:.0} | {}/{} ({:.1} %) | {:.2} % | {} | {:.2} % | {}/{} | {} |\n",
            a.scaler,
            a.backend_seconds,
            a.backend_seconds / hpa_backend_seconds,
            r.p99_ms,
            a.slo_violation_windows,
            a.slo_windows,
            100.0 * f64::from(a.slo_violation_windows) / f64::from(a.slo_windows.max(1)),
            100.0 * a.slow_requests as f64 / r.requests.max(1) as f64,
            r.errors,
            100.0 * a.timed_out as f64 / r.requests.max(1) as f64,
            a.scale_ups,
            a.scale_downs,
            a.peak_serving,
        )
    }
}
