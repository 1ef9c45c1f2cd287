//! Demand forecasts and backend recommendations of the pools with `[pools.NAME.autoscale]`,
//! run on the control thread: every step of each such pool, its rate is read from the
//! backends' counters, forecast, and turned into a recommended backend count, exported as
//! metrics and through `GET /api/forecast`. The request path does nothing for it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use fulcrum_config::Config;
use fulcrum_control::demand::{ring_steps, DemandReport, DemandSettings, PoolDemand};
use fulcrum_control::forecast_model::OnnxForecaster;
use fulcrum_control::history::{assemble, HistoryFile, HistoryStatus};
use fulcrum_control::model::runtime;

use crate::forecast_history::{default_query, spawn_fetch};
use crate::Upstreams;

/// Metric names owned by the forecasts.
pub mod names {
    /// The pool's request rate in the last step (completed attempts plus the growth of those
    /// in flight).
    pub const POOL_REQUESTS_PER_SECOND: &str = "fulcrum_pool_requests_per_second";
    /// The forecast request rate, by horizon (seconds) and quantile (0.5, 0.9).
    pub const POOL_FORECAST_REQUESTS_PER_SECOND: &str = "fulcrum_pool_forecast_requests_per_second";
    /// Requests per second one backend serves at full utilisation.
    pub const POOL_CAPACITY_PER_BACKEND_REQUESTS_PER_SECOND: &str =
        "fulcrum_pool_capacity_per_backend_requests_per_second";
    /// The backend count recommended for the highest p90 forecast until the provisioning horizon.
    pub const POOL_RECOMMENDED_BACKENDS: &str = "fulcrum_pool_recommended_backends";
    /// Of the backends the demand asks for, those kept after the demand outran the plan.
    pub const POOL_BURST_SPARE_BACKENDS: &str = "fulcrum_pool_burst_spare_backends";
    /// 1 when the pool's forecast model is loaded, 0 when the built-in forecaster runs.
    pub const POOL_FORECAST_MODEL_LOADED: &str = "fulcrum_pool_forecast_model_loaded";
    /// Steps of the pool's rate series held (what the forecast learns from).
    pub const POOL_SERIES_STEPS: &str = "fulcrum_pool_series_steps";
    /// The season the forecast uses, in seconds; 0 while none is found.
    pub const POOL_SEASON_SECONDS: &str = "fulcrum_pool_season_seconds";
    /// Steps whose row could not be written to the pool's `history_file`.
    pub const POOL_HISTORY_WRITE_FAILURES_TOTAL: &str = "fulcrum_pool_history_write_failures_total";
    /// Steps whose forecast-model answer was refused (built-in forecast used instead).
    pub const POOL_FORECAST_MODEL_FALLBACKS_TOTAL: &str =
        "fulcrum_pool_forecast_model_fallbacks_total";
}

/// Describe the forecast metrics (call once after the recorder is installed).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        names::POOL_REQUESTS_PER_SECOND,
        "Requests per second sent to a pool's backends in the last forecast step (completed attempts plus the growth of those in flight)."
    );
    describe_gauge!(
        names::POOL_CAPACITY_PER_BACKEND_REQUESTS_PER_SECOND,
        "Requests per second one backend of a pool serves at full utilisation (configured or estimated)."
    );
    describe_gauge!(
        names::POOL_RECOMMENDED_BACKENDS,
        "Backends a pool needs for the highest p90 forecast until its provisioning horizon (or the rate now, if higher) at its target utilisation, held for the scale-down stabilisation window."
    );
    describe_gauge!(
        names::POOL_BURST_SPARE_BACKENDS,
        "Of the backends a pool's demand asks for, those kept beyond it (burst_spare_backends) for burst_memory_s after the demand outran the plan; 0 otherwise."
    );
    describe_gauge!(
        names::POOL_FORECAST_MODEL_LOADED,
        "1 when a pool's ONNX forecast model is loaded, 0 when the built-in forecaster runs."
    );
    describe_gauge!(
        names::POOL_SERIES_STEPS,
        "Steps of a pool's request-rate series held for its forecast (read back from its history at start, then counted)."
    );
    describe_gauge!(
        names::POOL_SEASON_SECONDS,
        "The season a pool's forecast uses, in seconds (found in its series, two cycles needed); 0 while none is found."
    );
    describe_counter!(
        names::POOL_HISTORY_WRITE_FAILURES_TOTAL,
        "Steps whose row could not be written to a pool's history_file (the series is kept in memory)."
    );
    describe_counter!(
        names::POOL_FORECAST_MODEL_FALLBACKS_TOTAL,
        "Forecast steps whose model answer failed a guardrail; the built-in forecast was used."
    );
}

/// A pool's latest forecast, for `/api/forecast`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolForecastView {
    /// The pool.
    pub pool: String,
    /// The last step's report.
    #[serde(flatten)]
    pub report: DemandReport,
    /// The rate series, oldest first, `step_s` apart.
    pub series: Vec<f64>,
    /// The configured forecast model, if any.
    pub model: Option<String>,
    /// Why the configured model is not loaded (or why its last reload was refused).
    pub model_error: Option<String>,
    /// The pool's `history_file`: what was read back at start, and whether writing it fails.
    pub history: Option<HistoryStatus>,
    /// The pool's `history_prometheus`: what its query gave at start.
    pub history_prometheus: Option<PrometheusHistoryStatus>,
}

/// What the query of a pool's `history_prometheus` gave when the pool started counting.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PrometheusHistoryStatus {
    /// The Prometheus asked.
    pub url: String,
    /// The PromQL run.
    pub query: String,
    /// The answer has not arrived yet.
    pub pending: bool,
    /// Steps of the answer put in front of the series.
    pub restored_steps: usize,
    /// Of the series put in front, steps with no sample, filled.
    pub filled_steps: usize,
    /// Why nothing was used.
    pub error: Option<String>,
}

/// When a pool's tracking started: Unix time and the control thread's clock at that instant,
/// so a step's end in Unix time follows the step schedule, not the tick that noticed it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Origin {
    unix_s: f64,
    ns: u64,
}

impl Origin {
    /// The end of `demand`'s last step, Unix seconds (its start while none has ended).
    fn last_step_end_s(&self, demand: &PoolDemand) -> f64 {
        self.unix_s + demand.step_started_ns().saturating_sub(self.ns) as f64 / 1e9
    }
}

/// The answer of a `history_prometheus` query under way.
type Fetch = std::sync::mpsc::Receiver<Result<Vec<(f64, f64)>, String>>;

/// One autoscaled pool: its demand tracking, when that started, and where its series is kept.
struct Tracked {
    demand: PoolDemand,
    origin: Origin,
    history: Option<HistoryFile>,
    /// The `history_prometheus` query, while it runs.
    fetch: Option<Fetch>,
    /// What that query gave (or is still to give).
    prometheus: Option<PrometheusHistoryStatus>,
}

impl Tracked {
    /// Put the answer of the pool's `history_prometheus` query in front of what it counted
    /// since, and write the history file as the series then stands.
    fn took_history(&mut self, name: &str, answer: Result<Vec<(f64, f64)>, String>) {
        let Some(status) = self.prometheus.as_mut() else {
            return;
        };
        status.pending = false;
        let step_s = self.demand.settings().step_s;
        let reach = ring_steps(step_s);
        let used = answer.and_then(|rows| {
            if rows.is_empty() {
                return Err(format!(
                    "the query has no sample in the {:.0} s before the pool started counting",
                    reach as f64 * step_s
                ));
            }
            assemble(&rows, step_s, self.origin.unix_s, reach)
        });
        match used {
            Ok(a) => {
                self.demand.prepend(&a.rates);
                status.restored_steps = a.read;
                status.filled_steps = a.filled;
                log::info!(
                    "forecast: pool {name}: {} steps of history from {} put before the {} counted since",
                    a.read,
                    status.url,
                    self.demand.steps()
                );
                if let Some(h) = self.history.as_mut() {
                    let end_s = self.origin.last_step_end_s(&self.demand);
                    h.rewrite(&self.demand.series(), step_s, end_s);
                }
            }
            Err(why) => {
                log::warn!(
                    "forecast: pool {name}: no history from {}: {why}; the series starts from now",
                    status.url
                );
                status.error = Some(why);
            }
        }
    }
}

/// Open the `history_file` at `path` of a pool; when the pool has just started (`fresh`), put
/// what it holds in the pool's series and rewrite it on this process's steps. A running pool
/// keeps the series it counted; the file goes on after it.
fn open_history(name: &str, path: &Path, t: &mut Tracked, fresh: bool) -> HistoryFile {
    let step_s = t.demand.settings().step_s;
    let (mut h, read) = HistoryFile::open(
        path.to_path_buf(),
        step_s,
        ring_steps(step_s),
        t.origin.unix_s,
    );
    if let Some(r) = read.filter(|_| fresh) {
        t.demand.prepend(&r.rates);
        let filled = match r.filled {
            0 => String::new(),
            n => format!(
                ", {n} steps nobody counted filled from {}",
                if r.season_steps.is_some() {
                    "one season before"
                } else {
                    "the step before them"
                }
            ),
        };
        log::info!(
            "forecast: pool {name}: {} steps of history read back from {}{filled}",
            r.read,
            path.display()
        );
        h.rewrite(&t.demand.series(), step_s, t.origin.unix_s);
    }
    if let Some(e) = &h.status.error {
        log::warn!("forecast: pool {name}: history {}: {e}", path.display());
    }
    h
}

/// The latest forecast of each autoscaled pool, written by the control thread every step and
/// read by the admin API.
#[derive(Debug, Default)]
pub struct ForecastStatus(Mutex<BTreeMap<String, PoolForecastView>>);

impl ForecastStatus {
    /// The latest view of `pool`, if it has stepped yet.
    pub fn get(&self, pool: &str) -> Option<PoolForecastView> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pool)
            .cloned()
    }

    /// The latest step's report of `pool`, without its series.
    pub fn report(&self, pool: &str) -> Option<DemandReport> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pool)
            .map(|v| v.report.clone())
    }

    fn set(&self, view: PoolForecastView) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(view.pool.clone(), view);
    }

    fn retain(&self, pools: &[&str]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| pools.contains(&name.as_str()));
    }
}

/// Time the control thread spends on forecast steps in one tick before it leaves the pools
/// still due for the next tick.
const STEP_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// A forecast model file: the running model (kept when a new version is refused) and why the
/// last load failed.
struct ModelSlot {
    mtime: Option<SystemTime>,
    model: Option<OnnxForecaster>,
    error: Option<String>,
}

/// Seconds since the Unix epoch, the time base of history files.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The forecast side of the control loop.
#[derive(Default)]
pub struct Forecasts {
    pools: HashMap<String, Tracked>,
    models: HashMap<PathBuf, ModelSlot>,
    generation: Option<u64>,
    /// The listeners were handed to a new process, which writes the history files from then on.
    handed_over: bool,
}

impl Forecasts {
    /// Match the tracked pools and models to a new configuration: pools whose step is unchanged
    /// keep their series, and every configured model file is loaded again if it changed.
    fn reconfigure(&mut self, upstreams: &Upstreams, config: &Config, status: &ForecastStatus) {
        let now = fulcrum_balance::now_ns();
        let mut kept = HashMap::new();
        for p in &upstreams.pools {
            let Some(a) = &p.config.autoscale else {
                continue;
            };
            let settings = DemandSettings::from(a);
            let step_s = settings.step_s;
            let name = &p.config.name;
            let running = self
                .pools
                .remove(name)
                .and_then(|mut t| t.demand.reconfigure(settings.clone()).then_some(t));
            let fresh = running.is_none();
            let mut t = running.unwrap_or_else(|| Tracked {
                demand: PoolDemand::new(&p.pool, settings, now),
                // On a whole millisecond, so the rows' times (written to the millisecond) are
                // exactly a step apart.
                origin: Origin {
                    unix_s: (unix_now() * 1e3).round() / 1e3,
                    ns: now,
                },
                history: None,
                fetch: None,
                prometheus: None,
            });
            t.history = match (&a.history_file, t.history.take()) {
                (None, _) => None,
                (Some(path), Some(h)) if h.path() == path.as_path() => Some(h),
                (Some(path), _) => Some(open_history(name, path, &mut t, fresh)),
            };
            let restored = t
                .history
                .as_ref()
                .is_some_and(|h| h.status.restored_steps > 0);
            if let (true, Some(url), false) = (fresh, &a.history_prometheus, restored) {
                let query = a
                    .history_query
                    .clone()
                    .unwrap_or_else(|| default_query(name));
                let reach_s = ring_steps(step_s) as f64 * step_s;
                log::info!(
                    "forecast: pool {name}: asking {url} for the last {reach_s:.0} s of {query}"
                );
                let start_s = t.origin.unix_s;
                t.fetch = Some(spawn_fetch(
                    url.clone(),
                    query.clone(),
                    start_s - reach_s,
                    start_s,
                    step_s,
                ));
                t.prometheus = Some(PrometheusHistoryStatus {
                    url: url.clone(),
                    query,
                    pending: true,
                    restored_steps: 0,
                    filled_steps: 0,
                    error: None,
                });
            }
            kept.insert(name.clone(), t);
        }
        self.pools = kept;
        let names: Vec<&str> = self.pools.keys().map(String::as_str).collect();
        status.retain(&names);
        forecast_values()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _, _), _| names.contains(&p.as_str()));
        let wanted: Vec<PathBuf> = upstreams
            .pools
            .iter()
            .filter_map(|p| p.config.autoscale.as_ref()?.forecast_model.clone())
            .collect();
        self.models.retain(|path, _| wanted.contains(path));
        for path in wanted {
            self.load_model(&path, config);
        }
    }

    /// Load `path` unless the same file is loaded already; a refused file keeps the running
    /// model of that path, or the built-in forecaster when there is none.
    fn load_model(&mut self, path: &Path, config: &Config) {
        let current = mtime(path);
        if let Some(slot) = self.models.get(path) {
            if slot.mtime == current && (slot.model.is_some() || slot.error.is_some()) {
                return;
            }
        }
        let loaded = runtime(config.control.ort_library.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|env| OnnxForecaster::load(env, path).map_err(|e| e.to_string()));
        let slot = self.models.entry(path.to_path_buf()).or_insert(ModelSlot {
            mtime: None,
            model: None,
            error: None,
        });
        slot.mtime = current;
        match loaded {
            Ok(m) => {
                log::info!("forecast: model {} loaded", path.display());
                slot.model = Some(m);
                slot.error = None;
            }
            Err(why) => {
                let kept = if slot.model.is_some() {
                    "the running model"
                } else {
                    "the built-in forecaster"
                };
                log::error!("forecast: model refused, {kept} keeps running: {why}");
                slot.error = Some(format!("refused, {kept} keeps running: {why}"));
            }
        }
    }

    /// The listeners went to a new process (`SIGQUIT`): it read the history files as it started
    /// and writes them from now on, so this process stops writing them (its rows, a share of
    /// the traffic at steps of its own, would break the new process's fixed step).
    pub fn handed_over(&mut self) {
        if !self.handed_over && self.pools.values().any(|t| t.history.is_some()) {
            log::info!("forecast: the listeners were handed over; the new process writes the history files from now on");
        }
        self.handed_over = true;
    }

    /// Step every autoscaled pool whose step has ended.
    pub fn tick(&mut self, upstreams: &Upstreams, config: &Config, status: &ForecastStatus) {
        if self.generation != Some(upstreams.generation) {
            self.generation = Some(upstreams.generation);
            self.reconfigure(upstreams, config, status);
        }
        let now = fulcrum_balance::now_ns();
        let started = std::time::Instant::now();
        for p in &upstreams.pools {
            // A step of the built-in forecaster on a full two-day ring takes ~20 ms (release
            // build); past this budget the pools still due wait for the next control tick, so
            // many autoscaled pools never hold up the weights of the model pools for long.
            if started.elapsed() > STEP_BUDGET {
                break;
            }
            let Some(a) = &p.config.autoscale else {
                continue;
            };
            let name = &p.config.name;
            let Some(t) = self.pools.get_mut(name) else {
                continue;
            };
            if let Some(answer) = t.fetch.as_ref().and_then(|rx| rx.try_recv().ok()) {
                t.fetch = None;
                t.took_history(name, answer);
            }
            let demand = &mut t.demand;
            if !demand.due(now) {
                continue;
            }
            let slot = a
                .forecast_model
                .as_ref()
                .and_then(|path| self.models.get_mut(path));
            let (model, model_error) = match slot {
                Some(s) => (s.model.as_mut(), s.error.clone()),
                None => (None, None),
            };
            let loaded = model.is_some();
            let report = demand.step(&p.pool, now, model).clone();
            if let Some(o) = report.outran_plan {
                let (arrived, planned) = (o.arrived_rps, o.planned_rps);
                let spare = match a.burst_spare_backends {
                    0 => "no burst spare (burst_spare_backends = 0)".to_string(),
                    n => format!(
                        "{n} spare backend{} kept for {} s",
                        if n == 1 { "" } else { "s" },
                        a.burst_memory.as_secs_f64()
                    ),
                };
                log::info!(
                    "forecast: pool {name}: the demand outran the plan, {arrived:.0} rps arrived \
                     against {planned:.0} rps planned; {spare}"
                );
            }
            export(name, &report, loaded);
            let series = demand.series();
            metrics::gauge!(names::POOL_SERIES_STEPS, "pool" => name.clone())
                .set(series.len() as f64);
            let handed_over = self.handed_over;
            let origin = t.origin;
            let history = t.history.as_mut().map(|h| {
                if handed_over {
                    return h.status.clone();
                }
                let ended_s = origin.last_step_end_s(demand);
                let written = h.append(ended_s, report.observed_rps, &series, report.step_s);
                metrics::counter!(names::POOL_HISTORY_WRITE_FAILURES_TOTAL, "pool" => name.clone())
                    .increment(u64::from(!written));
                h.status.clone()
            });
            status.set(PoolForecastView {
                pool: name.clone(),
                series,
                report,
                model: a.forecast_model.as_ref().map(|m| m.display().to_string()),
                model_error,
                history,
                history_prometheus: t.prometheus.clone(),
            });
        }
    }
}

/// A horizon in seconds, ordered as a number.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HorizonKey(f64);

impl Eq for HorizonKey {}

impl PartialOrd for HorizonKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HorizonKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

type ForecastValues = Mutex<BTreeMap<(String, HorizonKey, &'static str), f64>>;

/// The latest forecast of every pool, horizon and quantile, rendered at each scrape by
/// [`render_forecasts`].
fn forecast_values() -> &'static ForecastValues {
    static VALUES: std::sync::OnceLock<ForecastValues> = std::sync::OnceLock::new();
    VALUES.get_or_init(Default::default)
}

/// Append `fulcrum_pool_forecast_requests_per_second` to a Prometheus exposition.
///
/// Its `quantile` label is what operators query (`quantile="0.9"`), and Prometheus reserves
/// that label for summaries in typed families, so the family is written `untyped`: the
/// exposition format's type for a value that is neither a counter nor a summary of
/// observations. PromQL reads it as it reads a gauge.
pub fn render_forecasts(out: &mut String) {
    use std::fmt::Write as _;
    let values = forecast_values().lock().unwrap_or_else(|e| e.into_inner());
    if values.is_empty() {
        return;
    }
    let name = names::POOL_FORECAST_REQUESTS_PER_SECOND;
    let _ = writeln!(
        out,
        "# HELP {name} Forecast requests per second of a pool, by horizon in seconds and quantile."
    );
    let _ = writeln!(out, "# TYPE {name} untyped");
    for ((pool, horizon, quantile), v) in values.iter() {
        let _ = writeln!(
            out,
            "{name}{{pool=\"{}\",horizon=\"{}\",quantile=\"{quantile}\"}} {v}",
            crate::metrics::escape_label(pool),
            horizon.0
        );
    }
}

/// The step's figures as metrics (label sets are built here, on the control thread, once per
/// pool and step).
fn export(pool: &str, r: &DemandReport, model_loaded: bool) {
    let pool = pool.to_string();
    metrics::gauge!(names::POOL_REQUESTS_PER_SECOND, "pool" => pool.clone()).set(r.observed_rps);
    {
        let mut forecasts = forecast_values().lock().unwrap_or_else(|e| e.into_inner());
        forecasts.retain(|(p, _, _), _| *p != pool);
        for f in &r.forecasts {
            for (quantile, v) in [("0.5", f.p50), ("0.9", f.p90)] {
                forecasts.insert((pool.clone(), HorizonKey(f.horizon_s), quantile), v);
            }
        }
    }
    if let Some(c) = r.capacity_per_backend_rps {
        metrics::gauge!(
            names::POOL_CAPACITY_PER_BACKEND_REQUESTS_PER_SECOND,
            "pool" => pool.clone()
        )
        .set(c);
    }
    metrics::gauge!(names::POOL_RECOMMENDED_BACKENDS, "pool" => pool.clone())
        .set(f64::from(r.recommended_backends));
    metrics::gauge!(names::POOL_BURST_SPARE_BACKENDS, "pool" => pool.clone())
        .set(f64::from(r.burst_spare_backends));
    metrics::gauge!(names::POOL_FORECAST_MODEL_LOADED, "pool" => pool.clone())
        .set(if model_loaded { 1.0 } else { 0.0 });
    metrics::gauge!(names::POOL_SEASON_SECONDS, "pool" => pool.clone())
        .set(r.season_s.unwrap_or(0.0));
    let fallbacks = metrics::counter!(names::POOL_FORECAST_MODEL_FALLBACKS_TOTAL, "pool" => pool);
    if model_loaded && r.model_fallback.is_some() && r.warm {
        fallbacks.increment(1);
    } else {
        // Exported at 0 from the first step, so a rate() over it is defined.
        fallbacks.increment(0);
    }
}
