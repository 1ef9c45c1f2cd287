//! The control thread: every tick, observe each `weights = "model"` pool, score its backends
//! (ONNX model, or the built-in heuristic when no model can be loaded), apply the guardrails and
//! swap the pool's weight table. It runs on its own OS thread and never blocks the data plane:
//! the request path only ever loads the table it swaps.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fulcrum_balance::now_ns;
use fulcrum_config::{ControlConfig, WeightSource};
use fulcrum_control::decisions::Decision;
use fulcrum_control::model::{runtime, OnnxModel};
use fulcrum_control::{
    ControlSettings, Heuristic, PoolController, Scorer, TickObserver, TickOutcome, FEATURE_NAMES,
};
use tokio::sync::oneshot;

use crate::Shared;

/// Metric names owned by the control loop.
pub mod names {
    /// 1 when an ONNX model scores backends, 0 when the built-in heuristic does.
    pub const MODEL_LOADED: &str = "fulcrum_model_loaded";
    /// Duration of the last inference, seconds.
    pub const MODEL_INFERENCE_SECONDS: &str = "fulcrum_model_inference_seconds";
    /// Ticks whose scores failed a guardrail (previous weights kept).
    pub const MODEL_REJECTED_TICKS_TOTAL: &str = "fulcrum_model_rejected_ticks_total";
    /// Ticks skipped because inference overran its budget.
    pub const MODEL_SKIPPED_TICKS_TOTAL: &str = "fulcrum_model_skipped_ticks_total";
    /// Model reload attempts, by result.
    pub const MODEL_RELOADS_TOTAL: &str = "fulcrum_model_reloads_total";
    /// Control ticks run, per pool.
    pub const CONTROL_TICKS_TOTAL: &str = "fulcrum_control_ticks_total";
}

/// What scores the model pools, for the admin API and the status page.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelState {
    /// An ONNX model scores backends (`false`: the built-in heuristic does).
    pub loaded: bool,
    /// `model` or `heuristic`.
    pub source: &'static str,
    /// The configured model file.
    pub path: String,
    /// The feature schema this fulcrum feeds (a loaded model was trained on it).
    pub schema: &'static str,
    /// The model's own description, when one is loaded.
    pub description: String,
    /// Why no model is loaded (or why the last reload was refused, the running one kept).
    pub error: Option<String>,
    /// Duration of the last inference, microseconds.
    pub inference_us: f64,
    /// Control ticks run, every pool together.
    pub ticks: u64,
    /// Ticks whose scores failed a guardrail (previous weights kept).
    pub rejected_ticks: u64,
    /// Ticks skipped because inference overran its budget.
    pub skipped_ticks: u64,
}

/// The control loop's [`ModelState`], written by the control thread, read by the admin API.
#[derive(Debug, Default)]
pub struct ModelStatus(std::sync::Mutex<ModelState>);

impl ModelStatus {
    /// A copy of the current state.
    pub fn get(&self) -> ModelState {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut ModelState)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Record which scorer runs now; `error` says why it is not (or no longer) a new model.
    fn set_scorer(&self, scorer: &Scorer, cfg: &ControlConfig, error: Option<String>) {
        self.update(|s| {
            s.loaded = matches!(scorer, Scorer::Model(_));
            s.source = scorer.source();
            s.path = cfg.model.display().to_string();
            s.schema = fulcrum_control::FEATURE_SCHEMA;
            s.description = match scorer {
                Scorer::Model(m) => m.description().to_string(),
                Scorer::Heuristic(_) => String::new(),
            };
            s.error = error;
        });
    }
}

/// A request to reload the model, answered with the outcome.
pub type ModelReloadRequest = oneshot::Sender<Result<String, String>>;

/// Describe the control loop's metrics (call once after the recorder is installed).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        names::MODEL_LOADED,
        "1 when an ONNX model scores backends, 0 when the built-in heuristic does."
    );
    describe_gauge!(
        names::MODEL_INFERENCE_SECONDS,
        Unit::Seconds,
        "Duration of the last model inference."
    );
    describe_counter!(
        names::MODEL_REJECTED_TICKS_TOTAL,
        "Control ticks whose scores failed a guardrail; previous weights kept."
    );
    describe_counter!(
        names::MODEL_SKIPPED_TICKS_TOTAL,
        "Control ticks skipped because inference overran its budget."
    );
    describe_counter!(
        names::MODEL_RELOADS_TOTAL,
        "Model reload attempts, by result."
    );
    describe_counter!(names::CONTROL_TICKS_TOTAL, "Control ticks run, per pool.");
    metrics::gauge!(names::MODEL_LOADED).set(0.0);
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Load the configured model; `Err` explains why the heuristic is used instead.
fn load_model(cfg: &ControlConfig) -> Result<OnnxModel, String> {
    let env = runtime(cfg.ort_library.as_deref()).map_err(|e| e.to_string())?;
    OnnxModel::load(env, &cfg.model).map_err(|e| e.to_string())
}

struct PoolState {
    observer: TickObserver,
    controller: PoolController,
    /// The backends the observer and controller were built for, in pool order.
    backends: Vec<std::net::SocketAddr>,
}

impl PoolState {
    fn new(pool: &fulcrum_balance::Pool, settings: ControlSettings, now: u64) -> Self {
        PoolState {
            observer: TickObserver::new(pool, now),
            controller: PoolController::new(pool, settings, now),
            backends: pool.backends().iter().map(|b| b.addr).collect(),
        }
    }

    /// Whether this state still describes `pool` under `settings`: the same backends in the
    /// same order (their counters carry over a reload) and the same loop settings.
    fn fits(&self, pool: &fulcrum_balance::Pool, settings: &ControlSettings) -> bool {
        self.controller.settings() == settings
            && self.backends.len() == pool.backends().len()
            && self
                .backends
                .iter()
                .zip(pool.backends())
                .all(|(a, b)| *a == b.addr)
    }
}

/// Why no model is loaded while no pool asks for one.
const NO_MODEL_POOL: &str =
    "no pool has weights = \"model\": the model loads when a configuration with one is applied";

/// Whether any pool of `config` has its weights set by the control loop.
fn wants_model(config: &fulcrum_config::Config) -> bool {
    config
        .pools
        .iter()
        .any(|p| p.weights == WeightSource::Model)
}

struct ControlLoop {
    shared: Arc<Shared>,
    scorer: Scorer,
    /// Whether the configured model has been tried: at start when a pool has
    /// `weights = "model"`, else with the first configuration that has one, or an explicit
    /// reload. Until then ONNX Runtime is not loaded at all (tens of MB of memory).
    model_tried: bool,
    model_mtime: Option<SystemTime>,
    pools: HashMap<String, PoolState>,
    /// The [`crate::Upstreams::generation`] the pool states were last matched against.
    generation: u64,
    started: Instant,
    record: Option<csv::Writer<std::fs::File>>,
    /// Demand forecasts of the pools with `[pools.NAME.autoscale]`.
    forecasts: crate::forecast::Forecasts,
}

impl ControlLoop {
    fn new(shared: Arc<Shared>) -> Self {
        let cfg = shared.config.load().control.clone();
        let scorer = Scorer::Heuristic(Heuristic::default());
        metrics::gauge!(names::MODEL_LOADED).set(0.0);
        shared
            .model
            .set_scorer(&scorer, &cfg, Some(NO_MODEL_POOL.to_string()));
        let record = cfg.record.as_deref().and_then(open_record);
        let mut control = ControlLoop {
            shared,
            scorer,
            model_tried: false,
            model_mtime: None,
            pools: HashMap::new(),
            generation: 0,
            started: Instant::now(),
            record,
            forecasts: crate::forecast::Forecasts::default(),
        };
        if wants_model(&control.shared.config.load()) {
            control.first_load();
        } else {
            log::info!("control: {NO_MODEL_POOL}");
        }
        control
    }

    /// Load the configured model for the first time; the heuristic stays if it cannot be.
    fn first_load(&mut self) {
        self.model_tried = true;
        let cfg = self.shared.config.load().control.clone();
        match load_model(&cfg) {
            Ok(m) => {
                log::info!("control: model {} loaded", cfg.model.display());
                metrics::gauge!(names::MODEL_LOADED).set(1.0);
                self.scorer = Scorer::Model(m);
                self.model_mtime = mtime(&cfg.model);
                self.shared.model.set_scorer(&self.scorer, &cfg, None);
            }
            Err(why) => {
                log::warn!(
                    "control: {why}; the built-in heuristic controller tunes the model pools"
                );
                self.shared.model.set_scorer(&self.scorer, &cfg, Some(why));
            }
        }
    }

    /// Try a new model; keep the running one unless the new one loads and passes its probe.
    fn reload_model(&mut self) -> Result<String, String> {
        self.model_tried = true;
        let cfg = self.shared.config.load().control.clone();
        match load_model(&cfg) {
            Ok(m) => {
                self.scorer = Scorer::Model(m);
                self.model_mtime = mtime(&cfg.model);
                self.shared.model.set_scorer(&self.scorer, &cfg, None);
                metrics::gauge!(names::MODEL_LOADED).set(1.0);
                metrics::counter!(names::MODEL_RELOADS_TOTAL, "result" => "ok").increment(1);
                let msg = format!("model {} loaded", cfg.model.display());
                log::info!("control: {msg}");
                Ok(msg + "\n")
            }
            Err(why) => {
                // Remember the file's time so a broken file is not retried every tick.
                self.model_mtime = mtime(&cfg.model);
                metrics::counter!(names::MODEL_RELOADS_TOTAL, "result" => "error").increment(1);
                let kept = self.scorer.source();
                self.shared.model.set_scorer(
                    &self.scorer,
                    &cfg,
                    Some(format!("reload refused, the {kept} keeps running: {why}")),
                );
                log::error!("control: model reload refused, the {kept} keeps running: {why}");
                Err(format!(
                    "model reload refused, the {kept} keeps running: {why}\n"
                ))
            }
        }
    }

    fn tick(&mut self) {
        // Upstreams before configuration: a reload stores them the other way round, so a tick
        // that sees a new generation also sees the `[control]` settings it came with.
        let upstreams = self.shared.upstreams.load_full();
        let config = self.shared.config.load_full();
        let lifecycle = &self.shared.lifecycle;
        if lifecycle.closing_connections() && !lifecycle.draining() {
            self.forecasts.handed_over();
        }
        self.forecasts
            .tick(&upstreams, &config, &self.shared.forecasts);
        let cfg = config.control.clone();
        if !self.model_tried && wants_model(&config) {
            self.first_load();
        }
        if cfg.watch_model && self.model_tried {
            let current = mtime(&cfg.model);
            if current.is_some() && current != self.model_mtime {
                let _ = self.reload_model();
            }
        }
        let now = now_ns();
        // Pools whose observer starts now: their first window is empty, so they skip this tick.
        let mut fresh = Vec::new();
        if upstreams.generation != self.generation {
            // A reload: keep the state of every model pool whose backends and settings are
            // unchanged (their statistics and weights carried over), start the others afresh.
            self.generation = upstreams.generation;
            let settings = ControlSettings::from(&cfg);
            let mut kept = HashMap::new();
            for p in upstreams
                .pools
                .iter()
                .filter(|p| p.config.weights == WeightSource::Model)
            {
                let state = match self.pools.remove(&p.config.name) {
                    Some(state) if state.fits(&p.pool, &settings) => state,
                    _ => {
                        fresh.push(p.config.name.as_str());
                        PoolState::new(&p.pool, settings.clone(), now)
                    }
                };
                kept.insert(p.config.name.clone(), state);
            }
            self.pools = kept;
        }
        for p in upstreams
            .pools
            .iter()
            .filter(|p| p.config.weights == WeightSource::Model)
        {
            // A DNS pool whose names have not resolved yet has nothing to tune.
            if fresh.contains(&p.config.name.as_str()) || p.pool.backends().is_empty() {
                continue;
            }
            let Some(state) = self.pools.get_mut(&p.config.name) else {
                continue;
            };
            let observations = state.observer.observe(&p.pool, now);
            let (outcome, decision) =
                state
                    .controller
                    .tick(&p.pool, &observations, &mut self.scorer, now);
            metrics::counter!(names::CONTROL_TICKS_TOTAL, "pool" => p.config.name.clone())
                .increment(1);
            metrics::gauge!(names::MODEL_INFERENCE_SECONDS).set(decision.inference_us / 1e6);
            self.shared.model.update(|s| {
                s.ticks += 1;
                s.inference_us = decision.inference_us;
                s.rejected_ticks += u64::from(outcome == TickOutcome::Rejected);
                s.skipped_ticks += u64::from(outcome == TickOutcome::Skipped);
            });
            match outcome {
                TickOutcome::Applied => {}
                TickOutcome::Rejected => {
                    metrics::counter!(names::MODEL_REJECTED_TICKS_TOTAL, "pool" => p.config.name.clone()).increment(1);
                    log::warn!(
                        "control: pool {}: tick rejected, previous weights kept: {}",
                        p.config.name,
                        decision.rejected.as_deref().unwrap_or("")
                    );
                }
                TickOutcome::Skipped => {
                    metrics::counter!(names::MODEL_SKIPPED_TICKS_TOTAL, "pool" => p.config.name.clone()).increment(1);
                }
            }
            if let Some(record) = self.record.as_mut() {
                let t_s = self.started.elapsed().as_secs_f64();
                if let Err(e) = write_record_rows(record, t_s, &p.config.name, &decision) {
                    log::warn!("control: stopped recording features: {e}");
                    self.record = None;
                }
            }
            self.shared.decisions.push(decision);
        }
    }
}

/// Open the feature record for appending; a new file starts with the header
/// `t_s,pool,backend,<FEATURE_NAMES>,weight`.
fn open_record(path: &Path) -> Option<csv::Writer<std::fs::File>> {
    let new = !path.exists();
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => {
            let mut record = csv::Writer::from_writer(f);
            if new {
                let _ = write_record_header(&mut record);
            }
            log::info!("control: recording features to {}", path.display());
            Some(record)
        }
        Err(e) => {
            log::warn!("control: cannot record features to {}: {e}", path.display());
            None
        }
    }
}

fn write_record_header<W: Write>(record: &mut csv::Writer<W>) -> csv::Result<()> {
    let columns = ["t_s", "pool", "backend"]
        .iter()
        .chain(&FEATURE_NAMES)
        .chain(&["weight"]);
    record.write_record(columns)?;
    record.flush()?;
    Ok(())
}

/// Append one row per backend of `decision`, taken `t_s` seconds after the loop started, and
/// flush them. Numbers keep their shortest exact form (`t_s` to the millisecond), as the
/// training scripts read them; names are quoted when they hold a comma, quote or line break.
fn write_record_rows<W: Write>(
    record: &mut csv::Writer<W>,
    t_s: f64,
    pool: &str,
    decision: &Decision,
) -> csv::Result<()> {
    let mut number = String::new();
    for (i, row) in decision.feature_rows().enumerate() {
        write_number(record, &mut number, format_args!("{t_s:.3}"))?;
        record.write_field(pool)?;
        record.write_field(&decision.backends[i])?;
        for v in row {
            write_number(record, &mut number, v)?;
        }
        let weight = decision.weights.get(i).copied().unwrap_or(0.0);
        write_number(record, &mut number, weight)?;
        record.write_record(None::<&[u8]>)?;
    }
    record.flush()?;
    Ok(())
}

/// One field holding `value` as `Display` writes it, through a reused buffer.
fn write_number<W: Write>(
    record: &mut csv::Writer<W>,
    buf: &mut String,
    value: impl std::fmt::Display,
) -> csv::Result<()> {
    use std::fmt::Write as _;
    buf.clear();
    let _ = write!(buf, "{value}");
    record.write_field(buf.as_bytes())
}

/// Run the control loop on the current thread until the process ends; `ready` is signalled
/// once the model (or the heuristic fallback) is settled.
pub fn run(
    shared: Arc<Shared>,
    reloads: Receiver<ModelReloadRequest>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let mut control = ControlLoop::new(shared.clone());
    let _ = ready.send(());
    let mut next = Instant::now();
    loop {
        let tick = shared.config.load().control.tick;
        next += tick;
        let now = Instant::now();
        if next < now {
            // Fell behind (a long stall): skip missed ticks rather than bursting.
            next = now + tick;
        }
        match reloads.recv_timeout(next - now) {
            Ok(reply) => {
                let _ = reply.send(control.reload_model());
                // Keep the tick schedule.
                next -= tick;
                continue;
            }
            Err(RecvTimeoutError::Timeout) => control.tick(),
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                control.tick();
            }
        }
    }
}

/// Start the control thread and wait until its model is loaded or the fallback chosen, so the
/// proxy never serves a model pool before its controller is settled.
pub fn spawn(shared: Arc<Shared>, reloads: Receiver<ModelReloadRequest>) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fulcrum-control".into())
        .spawn(move || run(shared, reloads, ready_tx))?;
    if ready_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .is_err()
    {
        log::warn!(
            "control: the model is still loading after 30 s; serving with static weights meanwhile"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_control::NUM_FEATURES;

    fn decision(backends: &[&str]) -> Decision {
        let n = backends.len();
        Decision {
            tick: 1,
            t_s: 0.5,
            pool: "web".into(),
            source: "heuristic",
            backends: backends.iter().map(|b| b.to_string()).collect(),
            features: (0..n * NUM_FEATURES).map(|i| i as f32 / 4.0).collect(),
            raw_scores: vec![1.0; n],
            previous_weights: vec![1.0; n],
            weights: (0..n).map(|i| i as f64 + 0.5).collect(),
            guardrails: Vec::new(),
            rejected: None,
            inference_us: 0.0,
        }
    }

    #[test]
    fn record_rows_quote_names_and_read_back() {
        let names = ["plain", "a,b", "say \"hi\""];
        let mut record = csv::Writer::from_writer(Vec::new());
        write_record_header(&mut record).unwrap();
        write_record_rows(&mut record, 2.0, "p,\"q\"", &decision(&names)).unwrap();
        let bytes = record.into_inner().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains("\n2.000,\"p,\"\"q\"\"\",plain,0,0.25,"),
            "{text}"
        );

        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let header = reader.headers().unwrap().clone();
        assert_eq!(header.len(), 4 + NUM_FEATURES);
        assert_eq!(&header[0], "t_s");
        assert_eq!(&header[3], FEATURE_NAMES[0]);
        assert_eq!(&header[header.len() - 1], "weight");
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), names.len());
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.len(), header.len());
            assert_eq!(&row[1], "p,\"q\"");
            assert_eq!(&row[2], names[i]);
            assert_eq!(row[row.len() - 1], format!("{}", i as f64 + 0.5));
        }
    }
}
