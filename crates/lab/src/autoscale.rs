//! The lab under a scaler: copies of a scenario's `[autoscale]` backend are started and
//! stopped as real servers while the load runs, and the real proxy's pool follows them the way
//! an operator's tooling makes it follow: the configuration file is rewritten and
//! `POST /api/config/reload` applies it (kept backends keep their state, a removed one gets no
//! new request and finishes what it holds).
//!
//! The scalers are the simulator's ([`ScalerKind`]), fed from real measurements:
//!
//! - `hpa` (`reactive`): Kubernetes' HPA rule ([`Hpa`], the simulator's own code) every 15 s
//!   on each serving copy's utilisation, its busy slot-seconds over `concurrency` × the period
//!   as the backend server counts them (what a CPU metric measures, the simulator's meaning).
//! - `forecast` (`forecast:S`): `fulcrum_pool_recommended_backends{pool="lab"}` read from the
//!   running proxy's `/metrics` every 10 s, as a KEDA `ScaledObject` with a Prometheus trigger
//!   reads it; the proxy's `[pools.lab.autoscale]` is the scenario's with every time scaled.
//! - `static` (`static:N`): a fixed count, by default sized for the scenario's peak.
//!
//! A scale-up decision starts provisioning at once (it counts in backend-seconds from then);
//! `provision_s` later the copy's server is started and added to the pool. A scale-down takes
//! copies still provisioning first (newest first), then the newest serving ones, which drain:
//! removed from the pool, their server stops once it holds no request. Every time of the
//! scenario is scaled by `time_scale`; rates are not (a scenario's 1,000 rps are 1,000 wall
//! requests per second), so neither are service times nor the capacity of a copy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fulcrum_config::{Algorithm, AutoscaleConfig, Config, WeightSource};
use fulcrum_report::{PolicyResult, RequestRecord};
use fulcrum_scenario::rng::{stream_seed, Stream};
use fulcrum_scenario::{Autoscale, Scenario, ScenarioBackend, Slo};
use fulcrum_sim::autoscale::{Hpa, HpaSettings, FORECAST_STEP_S};
use fulcrum_sim::{AutoscaleStats, ScalerKind};
use fulcrum_testbed::scenario::{LabClock, ScenarioServer};

use crate::loadgen::{self, LoadStats};
use crate::{harness, proxy};

/// The pool the lab's proxy balances over.
const POOL: &str = "lab";

/// The series the forecast scaler follows.
const RECOMMENDED: &str = "fulcrum_pool_recommended_backends{pool=\"lab\"}";

/// A removed copy is stopped once it has held no request for this long after the reload that
/// removed it returned (a request picked just before the swap may still be on its way).
const DRAIN_QUIET: Duration = Duration::from_millis(20);

/// How often draining copies are looked at.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// The proxy's control tick is scaled with the timeline but never below the configuration's
/// floor.
const MIN_TICK: Duration = Duration::from_millis(50);
/// How long both processes of an upgrade accept (the proxy's overlap is 2 s), with a margin.
const HANDOVER_WAIT: Duration = Duration::from_millis(2500);
/// Longest an upgraded process may take to drain once the run is over.
const UPGRADE_EXIT: Duration = Duration::from_secs(30);

/// How to run the autoscale lab.
#[derive(Debug, Clone)]
pub struct AutoscaleLabOptions {
    /// The `fulcrum` binary to run.
    pub fulcrum_bin: PathBuf,
    /// Scalers to compare, run one after the other.
    pub scalers: Vec<ScalerKind>,
    /// The pool's picker.
    pub algorithm: Algorithm,
    /// Wall seconds per scenario second.
    pub time_scale: f64,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Extra TOML laid over the generated `[pools.lab]` table (its keys replace the
    /// generated ones, `autoscale.*` included).
    pub extra_pool_toml: String,
    /// Upgrade the proxy once, at this scenario second, as an operator does: `fulcrum run
    /// --upgrade` on the same configuration, then `SIGQUIT` to the running process.
    pub upgrade_at_s: Option<f64>,
    /// The pool keeps its rate series in a `history_file` of its own (one per run), which the
    /// upgraded process reads back.
    pub history_file: bool,
    /// Proxies in front of the pool (default 1), like the replicas of a Deployment behind one
    /// Service: each gets its share of the load from a generator of its own (Poisson at the
    /// scenario's rate / N, so each arrival reaches one proxy at random) and every pool change
    /// is applied to each; the `forecast` scaler follows the highest of their recommendations,
    /// as the Kubernetes recipes' `max` does.
    pub proxies: u32,
    /// How the proxies' recommendations become the `forecast` scaler's count (default the
    /// highest, the recipes' `max`).
    pub combine: fulcrum_sim::Combine,
}

impl AutoscaleLabOptions {
    /// HPA, forecast and static with least connections, at time scale 1, without progress.
    pub fn new(fulcrum_bin: impl Into<PathBuf>) -> Self {
        AutoscaleLabOptions {
            fulcrum_bin: fulcrum_bin.into(),
            scalers: vec![
                ScalerKind::Hpa,
                ScalerKind::Forecast(None, 0),
                ScalerKind::Static(None),
            ],
            algorithm: Algorithm::LeastConnections,
            time_scale: 1.0,
            progress: false,
            extra_pool_toml: String::new(),
            upgrade_at_s: None,
            history_file: false,
            proxies: 1,
            combine: fulcrum_sim::Combine::Max,
        }
    }
}

/// One scaler step, for plots.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabSample {
    /// Scenario time, seconds.
    pub t_s: f64,
    /// Requests the generator sent per wall second since the previous step.
    pub arrivals_rps: f64,
    /// Copies taking traffic.
    pub serving: u32,
    /// Copies provisioning.
    pub provisioning: u32,
    /// Copies draining.
    pub draining: u32,
    /// The scaler's answer.
    pub desired: u32,
    /// `fulcrum_pool_recommended_backends` as the proxy exported it at this step (whatever the
    /// scaler), when it has one; with several proxies, theirs combined (`combine`).
    pub recommended: Option<f64>,
    /// From the proxy's `GET /api/forecast?pool=lab` at this step, for plots and diagnosis:
    /// the rate it recorded, the demand it planned for, its capacity per backend and the
    /// season it found, the burst spare in force.
    pub forecast: Option<ForecastView>,
}

/// The parts of `GET /api/forecast?pool=lab` a run keeps.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ForecastView {
    /// `observed_rps`.
    pub observed_rps: Option<f64>,
    /// `planned_rps`.
    pub planned_rps: Option<f64>,
    /// `capacity_per_backend_rps`.
    pub capacity_rps: Option<f64>,
    /// `season_s`.
    pub season_s: Option<f64>,
    /// `steps`.
    pub steps: Option<u64>,
    /// `series_steps`: steps of the series held, read back from a history or counted.
    pub series_steps: Option<u64>,
    /// `healthy_backends`.
    pub healthy_backends: Option<u64>,
    /// `capacity_source`.
    pub capacity_source: Option<String>,
    /// `burst_spare_backends`: of the recommended backends, those kept after the demand
    /// outran the plan.
    pub burst_spare_backends: Option<u64>,
}

/// The proxy's latest forecast of the lab pool.
async fn read_forecast(admin: SocketAddr) -> Option<ForecastView> {
    let r = harness::get(admin, "/api/forecast?pool=lab").await.ok()?;
    if r.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    Some(ForecastView {
        observed_rps: v["observed_rps"].as_f64(),
        planned_rps: v["planned_rps"].as_f64(),
        capacity_rps: v["capacity_per_backend_rps"].as_f64(),
        season_s: v["season_s"].as_f64(),
        steps: v["steps"].as_u64(),
        series_steps: v["series_steps"].as_u64(),
        healthy_backends: v["healthy_backends"].as_u64(),
        capacity_source: v["capacity_source"].as_str().map(str::to_owned),
        burst_spare_backends: v["burst_spare_backends"].as_u64(),
    })
}

/// The proxy's pool after a change of membership, as `GET /api/pools` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MembershipChange {
    /// Scenario time the reload was asked for, seconds.
    pub t_s: f64,
    /// The names of the backends in the pool, in the proxy's order.
    pub backends: Vec<String>,
}

/// A removed copy stopped: drained after the reload that took it out of the pool.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CopyStop {
    /// Scenario time the copy's server stopped, seconds.
    pub t_s: f64,
    /// The copy's name.
    pub backend: String,
}

/// The result of one scaler's run.
#[derive(Debug, Clone)]
pub struct AutoscaleLabRun {
    /// The requests' results (backends: every copy the scaler could start).
    pub result: PolicyResult,
    /// What scaling cost and bought, as the simulator reports it (its `timeline` is empty:
    /// see [`AutoscaleLabRun::timeline`]).
    pub autoscale: AutoscaleStats,
    /// Every scaler step of the whole run.
    pub timeline: Vec<LabSample>,
    /// Every change of the proxy's pool, the first being the pool it started with.
    pub membership: Vec<MembershipChange>,
    /// Every removed copy that stopped, in order; its backend-seconds end there.
    pub stopped: Vec<CopyStop>,
    /// Scenario seconds of the measured window (after warm-up).
    pub window_s: f64,
    /// The p99 of each SLO window after warm-up, ms (`None` without requests).
    pub slo_window_p99_ms: Vec<Option<f64>>,
    /// When the proxy was upgraded (the new process took the listeners), scenario seconds.
    pub upgraded_at_s: Option<f64>,
    /// Proxies in front of the pool.
    pub proxies: u32,
}

/// Play `scenario` (which needs `[autoscale]`) against the real proxy once per scaler.
///
/// Every backend, proxy process and temporary file is cleaned up before returning, on error
/// too. Builds its own tokio runtime, so it must not be called from within one.
pub fn run_autoscale_lab(
    scenario: &Scenario,
    opts: &AutoscaleLabOptions,
) -> anyhow::Result<Vec<AutoscaleLabRun>> {
    crate::check_run(opts.time_scale, &opts.fulcrum_bin)?;
    anyhow::ensure!(opts.proxies >= 1, "a lab run needs at least one proxy");
    anyhow::ensure!(
        opts.proxies == 1 || opts.upgrade_at_s.is_none(),
        "an upgrade in the middle of the run is played with one proxy"
    );
    let full = fulcrum_sim::with_every_copy(scenario).map_err(|e| anyhow::anyhow!("{e}"))?;
    let a = full
        .autoscale
        .clone()
        .context("checked by with_every_copy")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the lab runtime")?;
    let mut runs = Vec::with_capacity(opts.scalers.len());
    for (i, kind) in opts.scalers.iter().enumerate() {
        let label = format!("[scaler {}/{} {kind}]", i + 1, opts.scalers.len());
        let run = rt
            .block_on(run_scaler(scenario, &full, &a, opts, *kind, &label))
            .with_context(|| format!("lab run under scaler {kind}"))?;
        runs.push(run);
    }
    Ok(runs)
}

/// The `[pools.lab.autoscale]` of a run: the scenario's bounds and target with the proxy's
/// time constants (and the simulator's choices: `horizon_s = provision_s`, at least one step)
/// scaled to wall time. The configuration's floors (a 0.1 s step, a 1 s horizon) are kept.
pub fn scaled_autoscale(
    a: &Autoscale,
    fixed: u32,
    stabilization_s: Option<f64>,
    spare_backends: u32,
    time_scale: f64,
) -> AutoscaleConfig {
    use fulcrum_config::autoscale_defaults as d;
    let secs = |s: f64, floor: f64| Duration::from_secs_f64((s * time_scale).max(floor));
    AutoscaleConfig {
        target_utilization: a.target_utilization,
        min_backends: a.min_backends + fixed,
        max_backends: a.max_backends + fixed,
        horizon: secs(a.provision_s.max(FORECAST_STEP_S), 1.0),
        step: secs(FORECAST_STEP_S, 0.1),
        scale_down_stabilization: secs(
            stabilization_s
                .unwrap_or(f64::from(d::SCALE_DOWN_STABILIZATION_STEPS) * FORECAST_STEP_S),
            0.0,
        ),
        spare_backends,
        burst_memory: secs(d::BURST_MEMORY_S as f64, 0.0),
        ..AutoscaleConfig::default()
    }
}

/// Where a copy of the scaled backend is.
enum CopyState {
    Off,
    Provisioning {
        generation: u64,
        ready_at_s: f64,
    },
    Serving(ScenarioServer),
    Draining {
        server: ScenarioServer,
        /// When the reload that took it out of the pool returned.
        removed: Option<Instant>,
    },
}

/// The servers of a run: the backends not scaled, and the copies.
struct Fleet {
    scenario_seed: u64,
    first: usize,
    fixed: Vec<(String, ScenarioServer)>,
    copies: Vec<ScenarioBackend>,
    states: Vec<CopyState>,
    /// Busy slot-seconds of each copy's server at the previous HPA look.
    last_busy: Vec<f64>,
    generation: u64,
    load_window: Duration,
    clock: LabClock,
}

impl Fleet {
    fn count(&self, f: impl Fn(&CopyState) -> bool) -> u32 {
        self.states.iter().filter(|s| f(s)).count() as u32
    }

    fn serving(&self) -> u32 {
        self.count(|s| matches!(s, CopyState::Serving(_)))
    }

    fn provisioning(&self) -> u32 {
        self.count(|s| matches!(s, CopyState::Provisioning { .. }))
    }

    fn draining(&self) -> u32 {
        self.count(|s| matches!(s, CopyState::Draining { .. }))
    }

    /// Copies that exist (cost money): provisioning, serving or draining.
    fn existing(&self) -> u32 {
        self.count(|s| !matches!(s, CopyState::Off))
    }

    /// Start copy `k`'s server (backend `first + k` of the scenario with every copy, drawing
    /// from that backend's random stream, as the simulator's copy does).
    async fn start_copy(&mut self, k: usize) -> anyhow::Result<()> {
        let seed = stream_seed(self.scenario_seed, Stream::Backend(self.first + k));
        let server = ScenarioServer::start_with_load_window(
            &self.copies[k],
            SocketAddr::from(([127, 0, 0, 1], 0)),
            seed,
            self.clock,
            self.load_window,
        )
        .await
        .with_context(|| format!("cannot start {}", self.copies[k].name))?;
        self.states[k] = CopyState::Serving(server);
        self.last_busy[k] = 0.0;
        Ok(())
    }

    /// The pool's backends: those not scaled, then the serving copies, as `(name, address)`.
    fn members(&self) -> Vec<(String, SocketAddr)> {
        let fixed = self.fixed.iter().map(|(n, s)| (n.clone(), s.addr()));
        let copies = self.states.iter().enumerate().filter_map(|(k, s)| match s {
            CopyState::Serving(server) => Some((self.copies[k].name.clone(), server.addr())),
            _ => None,
        });
        fixed.chain(copies).collect()
    }

    /// The name of the backend (not scaled, serving or draining) listening on `addr`.
    fn name_of(&self, addr: &str) -> Option<String> {
        let all = self.fixed.iter().map(|(n, s)| (n.clone(), s.addr())).chain(
            self.states.iter().enumerate().filter_map(|(k, s)| match s {
                CopyState::Serving(server) | CopyState::Draining { server, .. } => {
                    Some((self.copies[k].name.clone(), server.addr()))
                }
                _ => None,
            }),
        );
        all.into_iter()
            .find(|(_, a)| a.to_string() == addr)
            .map(|(n, _)| n)
    }

    /// Each serving copy's utilisation since the previous look, `elapsed` wall time ago.
    fn utilisation(&mut self, elapsed: Duration) -> Vec<f64> {
        let mut out = Vec::new();
        for (k, s) in self.states.iter().enumerate() {
            if let CopyState::Serving(server) = s {
                let busy = server.busy_seconds();
                let slots = f64::from(self.copies[k].concurrency.max(1));
                let u = (busy - self.last_busy[k]) / (slots * elapsed.as_secs_f64());
                self.last_busy[k] = busy;
                out.push(if u.is_finite() {
                    u.clamp(0.0, 1.0)
                } else {
                    0.0
                });
            }
        }
        out
    }
}

/// Copies that exist, integrated over scenario time within the measured window.
#[derive(Debug)]
struct Integral {
    from: f64,
    to: f64,
    last_t: f64,
    value: f64,
    area: f64,
}

impl Integral {
    fn new(from: f64, to: f64) -> Self {
        Integral {
            from,
            to,
            last_t: 0.0,
            value: 0.0,
            area: 0.0,
        }
    }

    fn set(&mut self, t: f64, value: f64) {
        let (a, b) = (
            self.last_t.clamp(self.from, self.to),
            t.clamp(self.from, self.to),
        );
        if b > a {
            self.area += self.value * (b - a);
        }
        self.last_t = self.last_t.max(t);
        self.value = value;
    }

    fn total(&mut self) -> f64 {
        let v = self.value;
        self.set(self.to, v);
        self.area
    }
}

/// The proxy, its configuration, and the record of its pool's changes.
struct ProxyHandle {
    proxy: harness::Proxy,
    config: Config,
    membership: Vec<MembershipChange>,
    /// Where the load generator sends this proxy's share (an upgrade keeps the address).
    listen: SocketAddr,
}

impl ProxyHandle {
    /// Write the configuration with `members` as the pool's backends, reload it through the
    /// admin API, and check that the running pool is exactly `members`.
    async fn apply(
        &mut self,
        members: &[(String, SocketAddr)],
        t_s: f64,
        name_of: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        let pool = self
            .config
            .pools
            .iter_mut()
            .find(|p| p.name == POOL)
            .context("the configuration has no lab pool")?;
        pool.backends = members
            .iter()
            .map(|(_, addr)| fulcrum_config::BackendConfig {
                addr: *addr,
                weight: 1,
            })
            .collect();
        let path = self.proxy.config_path().to_path_buf();
        std::fs::write(&path, self.config.to_toml())
            .with_context(|| format!("cannot write {}", path.display()))?;
        let r = harness::request(
            self.proxy.admin(),
            "POST",
            "/api/config/reload",
            &[("content-type", "application/json")],
            b"",
        )
        .await
        .context("POST /api/config/reload")?;
        anyhow::ensure!(
            r.status == 200,
            "POST /api/config/reload answered {}: {}",
            r.status,
            r.body
        );
        self.record(members, t_s, name_of).await
    }

    /// Read the pool from `GET /api/pools`, check it is `members`, and record it.
    async fn record(
        &mut self,
        members: &[(String, SocketAddr)],
        t_s: f64,
        name_of: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        let listed = pool_addrs(self.proxy.admin()).await?;
        let mut want: Vec<String> = members.iter().map(|(_, a)| a.to_string()).collect();
        let mut got = listed.clone();
        want.sort();
        got.sort();
        anyhow::ensure!(
            want == got,
            "after the reload the proxy's pool is {got:?}, expected {want:?}"
        );
        let backends = listed
            .iter()
            .map(|a| name_of(a).unwrap_or_else(|| a.clone()))
            .collect();
        self.membership.push(MembershipChange { t_s, backends });
        Ok(())
    }
}

/// The addresses of the lab pool's backends, as `GET /api/pools` lists them.
async fn pool_addrs(admin: SocketAddr) -> anyhow::Result<Vec<String>> {
    let r = harness::get(admin, "/api/pools").await?;
    anyhow::ensure!(r.status == 200, "GET /api/pools answered {}", r.status);
    let doc: serde_json::Value = serde_json::from_str(&r.body).context("/api/pools is not JSON")?;
    let pool = doc["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == POOL))
        .context("/api/pools lists no lab pool")?;
    Ok(pool["backends"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .filter_map(|b| b["addr"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The value of the exposition line for `series` (name and labels exactly as written).
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `fulcrum_pool_recommended_backends{pool="lab"}` from the proxy's `/metrics`.
async fn read_recommended(admin: SocketAddr) -> Option<f64> {
    let r = harness::get(admin, "/metrics").await.ok()?;
    (r.status == 200).then(|| metric_value(&r.body, RECOMMENDED))?
}

/// A run's SLO windows and the requests that missed the SLO.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SloCount {
    /// Windows that had requests.
    pub windows: u32,
    /// Of those, windows whose p99 was above the SLO.
    pub violations: u32,
    /// Requests answered later than the SLO, or failed.
    pub slow: u64,
    /// Requests answered later than the proxy's default read timeout (30 s), or given up on
    /// after it.
    pub timed_out: u64,
    /// Each window's p99, ms (`None` for a window without requests; infinite when the p99
    /// request failed).
    pub window_p99_ms: Vec<Option<f64>>,
}

/// SLO windows of `records` over `[warmup_s, duration_s)`, counted as the simulator counts
/// them: window `k` holds the requests that arrived in it, its p99 is the
/// `ceil(0.99 n)`-th smallest latency. A failed request counts as slower than any SLO.
pub fn slo_count(records: &[RequestRecord], warmup_s: f64, duration_s: f64, slo: Slo) -> SloCount {
    let n = ((duration_s - warmup_s) / slo.window_s).max(0.0) as usize;
    let mut windows: Vec<Vec<f64>> = vec![Vec::new(); n];
    let timeout_ms = fulcrum_config::pool_defaults::READ_TIMEOUT_MS as f64;
    let mut out = SloCount::default();
    for r in records {
        if r.arrival_s < warmup_s {
            continue;
        }
        let k = ((r.arrival_s - warmup_s) / slo.window_s) as usize;
        let Some(w) = windows.get_mut(k) else {
            continue;
        };
        let latency = if r.ok { r.latency_ms } else { f64::INFINITY };
        out.slow += u64::from(latency > slo.p99_ms);
        out.timed_out += u64::from(r.latency_ms > timeout_ms);
        w.push(latency);
    }
    for w in &mut windows {
        if w.is_empty() {
            out.window_p99_ms.push(None);
            continue;
        }
        w.sort_unstable_by(f64::total_cmp);
        let p99 = w[((w.len() as f64 * 0.99).ceil() as usize).clamp(1, w.len()) - 1];
        out.windows += 1;
        out.violations += u32::from(p99 > slo.p99_ms);
        out.window_p99_ms.push(Some(p99));
    }
    out
}

/// The scaler's rule for one run.
enum Rule {
    Hpa(Hpa),
    Forecast,
    Static(u32),
}

impl Rule {
    /// Scenario seconds between two looks.
    fn period_s(&self, a: &Autoscale) -> f64 {
        match self {
            Rule::Hpa(_) => HpaSettings::kubernetes(a).sync_period_s,
            Rule::Forecast | Rule::Static(_) => FORECAST_STEP_S,
        }
    }
}

async fn run_scaler(
    scenario: &Scenario,
    full: &Scenario,
    a: &Autoscale,
    opts: &AutoscaleLabOptions,
    kind: ScalerKind,
    label: &str,
) -> anyhow::Result<AutoscaleLabRun> {
    let scale = opts.time_scale;
    let copies_end = a.first + a.max_backends as usize;
    let fixed_count = (full.backends.len() - a.max_backends as usize) as u32;
    let (mut rule, start) = match kind {
        ScalerKind::Hpa => (Rule::Hpa(Hpa::new(HpaSettings::kubernetes(a))), a.initial),
        ScalerKind::Forecast(..) => (Rule::Forecast, a.initial),
        ScalerKind::Static(n) => {
            let n = n
                .unwrap_or_else(|| fulcrum_sim::peak_sized_count(scenario))
                .clamp(1, a.max_backends);
            (Rule::Static(n), n)
        }
        ScalerKind::Oracle(_) => anyhow::bail!(
            "scaler {kind} is the simulator's reference (it reads the future load); the lab runs reactive, forecast and static"
        ),
        ScalerKind::ForecastViaHpa(_) => anyhow::bail!(
            "scaler {kind} runs in the simulator only; the lab runs reactive, forecast and static"
        ),
    };
    let (stabilization, spare) = match kind {
        ScalerKind::Forecast(w, spare) => (w, spare),
        _ => (None, 0),
    };
    let slo = scenario.slo.unwrap_or(Slo {
        p99_ms: f64::INFINITY,
        window_s: 10.0,
    });

    // Servers report their load as the mean over one forecast step, as the proxy reads it
    // once per step.
    let load_window = Duration::from_secs_f64((FORECAST_STEP_S * scale).max(0.01));
    let boot_clock = LabClock::new(scale);
    let mut fleet = Fleet {
        scenario_seed: full.seed,
        first: a.first,
        fixed: Vec::new(),
        copies: full.backends[a.first..copies_end].to_vec(),
        states: (0..a.max_backends).map(|_| CopyState::Off).collect(),
        last_busy: vec![0.0; a.max_backends as usize],
        generation: 0,
        load_window,
        clock: boot_clock,
    };
    for (i, b) in full.backends.iter().enumerate() {
        if i >= a.first && i < copies_end {
            continue;
        }
        let seed = stream_seed(full.seed, Stream::Backend(i));
        let server = ScenarioServer::start_with_load_window(
            b,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            seed,
            boot_clock,
            load_window,
        )
        .await
        .with_context(|| format!("cannot start {}", b.name))?;
        fleet.fixed.push((b.name.clone(), server));
    }
    for k in 0..start as usize {
        fleet.start_copy(k).await?;
    }

    // The upgrade socket and the history files of this run, in a directory only it uses.
    let state_dir = harness::private_dir().context("cannot make a private directory")?;
    let members = fleet.members();
    let backends: Vec<(SocketAddr, u32)> = members.iter().map(|(_, a)| (*a, 1)).collect();
    let mut handles = Vec::with_capacity(opts.proxies as usize);
    for k in 0..opts.proxies {
        let (listen, admin) = harness::loopback_pair().context("cannot pick free ports")?;
        let mut config = proxy::proxy_config(
            listen,
            admin,
            opts.algorithm,
            WeightSource::Static,
            &backends,
            "",
            scale,
        )?;
        {
            let pool = config
                .pools
                .iter_mut()
                .find(|p| p.name == POOL)
                .context("no lab pool")?;
            pool.autoscale = Some(scaled_autoscale(
                a,
                fixed_count,
                stabilization,
                spare,
                scale,
            ));
            // Membership follows the scaler; health checks only need to notice a dead server.
            pool.health_check.interval = Duration::from_secs(1);
            pool.health_check.timeout = Duration::from_millis(500);
            let step = pool.autoscale.as_ref().map_or(MIN_TICK, |x| x.step);
            config.control.tick = (step / 5).max(MIN_TICK);
            if let (true, Some(a)) = (opts.history_file, pool.autoscale.as_mut()) {
                let name = if k == 0 {
                    "lab.csv".to_string()
                } else {
                    format!("lab-{k}.csv")
                };
                a.history_file = Some(state_dir.path().join(name));
            }
        }
        if opts.upgrade_at_s.is_some() {
            config.server.upgrade_sock = state_dir.path().join("upgrade.sock");
            // The requests in flight at the hand-over get the default grace period to finish,
            // as in production (the lab's proxy otherwise stops at once).
            config.server.grace_period_s = fulcrum_config::server_defaults::GRACE_PERIOD_S;
        }
        let config = harness::with_pool_toml(&config, POOL, &opts.extra_pool_toml)?;
        let proxy = harness::Proxy::start(&opts.fulcrum_bin, &config).await?;
        handles.push(ProxyHandle {
            proxy,
            config,
            membership: Vec::new(),
            listen,
        });
    }

    // Scenario time 0 is the moment load starts.
    let clock = LabClock::new(scale);
    fleet.clock = clock;
    for (_, s) in &fleet.fixed {
        s.set_clock(clock);
    }
    for s in &fleet.states {
        if let CopyState::Serving(server) = s {
            server.set_clock(clock);
        }
    }
    for handle in &mut handles {
        handle
            .record(&members, 0.0, |a| fleet.name_of(a))
            .await
            .context("the proxy did not start with the initial pool")?;
    }

    let names: Vec<String> = full.backends.iter().map(|b| b.name.clone()).collect();
    let stats = Arc::new(LoadStats::default());
    let progress = opts.progress.then(|| {
        tokio::spawn(crate::show_progress(
            label.to_string(),
            clock,
            scenario.duration_s,
            stats.clone(),
        ))
    });
    // One generator per proxy, each at its share of the rate with a seed of its own: together
    // a Poisson process at the scenario's rate, each arrival reaching one proxy at random.
    let share = 1.0 / f64::from(opts.proxies);
    let loads: Vec<_> = handles
        .iter()
        .enumerate()
        .map(|(k, handle)| {
            let mut cfg = crate::scenario_load(scenario, handle.listen, clock, names.clone());
            if opts.proxies > 1 {
                cfg.load = cfg.load.scaled(share);
                cfg.seed = cfg.seed.wrapping_add(k as u64);
            }
            let stats = stats.clone();
            tokio::spawn(async move { loadgen::run(&cfg, stats).await })
        })
        .collect();

    let mut existing = Integral::new(scenario.warmup_s, scenario.duration_s);
    existing.set(0.0, f64::from(fleet.existing()));
    let mut driver = Driver {
        rule: &mut rule,
        a,
        fixed_count,
        clock,
        warmup_s: scenario.warmup_s,
        duration_s: scenario.duration_s,
        timeline: Vec::new(),
        scale_ups: 0,
        scale_downs: 0,
        peak_serving: fleet.serving(),
        stopped: Vec::new(),
        stats: stats.clone(),
        upgrade_at_s: opts.upgrade_at_s,
        fulcrum_bin: &opts.fulcrum_bin,
        upgraded_at_s: None,
        retired: Vec::new(),
        reloads_held_until: None,
        reload_pending: false,
        combine: opts.combine,
    };
    let driven = driver.drive(&mut fleet, &mut handles, &mut existing).await;
    let records = match driven {
        Ok(()) => {
            let mut records = Vec::new();
            for load in loads {
                records.extend(load.await.context("the load generator failed")?);
            }
            records
        }
        Err(e) => {
            for load in &loads {
                load.abort();
            }
            if let Some(p) = progress {
                p.abort();
            }
            return Err(e);
        }
    };
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        eprintln!();
    }
    let timeline = std::mem::take(&mut driver.timeline);
    let stopped = std::mem::take(&mut driver.stopped);
    let (scale_ups, scale_downs, peak_serving) =
        (driver.scale_ups, driver.scale_downs, driver.peak_serving);
    let upgraded_at_s = driver.upgraded_at_s;
    for mut old in std::mem::take(&mut driver.retired) {
        let exited = old.wait_exit(UPGRADE_EXIT).await?;
        anyhow::ensure!(
            exited.is_some(),
            "the upgraded process did not exit within {UPGRADE_EXIT:?}:\n{}",
            old.log_tail()
        );
    }
    let membership = std::mem::take(&mut handles[0].membership);
    for handle in handles {
        handle.proxy.stop();
    }
    drop(fleet);

    let result = PolicyResult::from_records(
        &opts.algorithm.to_string(),
        &records,
        &names,
        scenario.warmup_s,
        scenario.duration_s,
    );
    let count = slo_count(&records, scenario.warmup_s, scenario.duration_s, slo);
    Ok(AutoscaleLabRun {
        result,
        autoscale: AutoscaleStats {
            scaler: kind.to_string(),
            backend_seconds: existing.total(),
            slo_windows: count.windows,
            slo_violation_windows: count.violations,
            violated_at_s: count
                .window_p99_ms
                .iter()
                .enumerate()
                .filter(|(_, p99)| p99.is_some_and(|p| p > slo.p99_ms))
                .map(|(k, _)| scenario.warmup_s + k as f64 * slo.window_s)
                .collect(),
            slow_requests: count.slow,
            timed_out: count.timed_out,
            scale_ups,
            scale_downs,
            peak_serving,
            timeline: Vec::new(),
        },
        timeline,
        membership,
        stopped,
        window_s: scenario.duration_s - scenario.warmup_s,
        slo_window_p99_ms: count.window_p99_ms,
        upgraded_at_s,
        proxies: opts.proxies,
    })
}

/// The scaler's loop over one run.
struct Driver<'r> {
    rule: &'r mut Rule,
    a: &'r Autoscale,
    fixed_count: u32,
    clock: LabClock,
    warmup_s: f64,
    duration_s: f64,
    timeline: Vec<LabSample>,
    scale_ups: u32,
    scale_downs: u32,
    peak_serving: u32,
    stopped: Vec<CopyStop>,
    stats: Arc<LoadStats>,
    /// When to upgrade the proxy (taken once done).
    upgrade_at_s: Option<f64>,
    fulcrum_bin: &'r Path,
    upgraded_at_s: Option<f64>,
    /// Processes that handed their listeners over.
    retired: Vec<harness::Proxy>,
    /// Pool changes wait until then (an upgrade's overlap).
    reloads_held_until: Option<Instant>,
    /// A pool change is waiting.
    reload_pending: bool,
    /// How the proxies' recommendations combine.
    combine: fulcrum_sim::Combine,
}

impl Driver<'_> {
    /// `fulcrum run --upgrade` on the running configuration, then `SIGQUIT` to the running
    /// process: the new one takes the listeners (admin included) and the old one drains. The
    /// scaler goes on deciding, but the pool's changes wait until the old process has stopped
    /// accepting: while both accept, a reload could reach either.
    async fn upgrade(&mut self, proxy: &mut ProxyHandle) -> anyhow::Result<()> {
        let new = proxy
            .proxy
            .start_upgrade(self.fulcrum_bin)
            .await
            .context("the upgrade")?;
        proxy.proxy.signal("QUIT")?;
        self.retired.push(std::mem::replace(&mut proxy.proxy, new));
        self.upgraded_at_s = Some(self.clock.scenario_time());
        self.reloads_held_until = Some(Instant::now() + HANDOVER_WAIT);
        Ok(())
    }
    /// Until the end of the scenario: every period ask the scaler; start provisioned copies
    /// when their time comes; stop drained ones.
    async fn drive(
        &mut self,
        fleet: &mut Fleet,
        proxies: &mut [ProxyHandle],
        existing: &mut Integral,
    ) -> anyhow::Result<()> {
        let period = self.rule.period_s(self.a);
        let mut next_step = period;
        let mut last_look = Instant::now();
        let mut last_sent = 0u64;
        loop {
            let now_s = self.clock.scenario_time();
            if now_s >= self.duration_s {
                return Ok(());
            }
            let next_ready = fleet
                .states
                .iter()
                .filter_map(|s| match s {
                    CopyState::Provisioning { ready_at_s, .. } => Some(*ready_at_s),
                    _ => None,
                })
                .fold(f64::INFINITY, f64::min);
            let wake_s = next_step.min(next_ready).min(self.duration_s);
            let mut wake = self.clock.wall_at(wake_s);
            if fleet.draining() > 0 {
                wake = wake.min(Instant::now() + DRAIN_POLL);
            }
            tokio::time::sleep_until(wake.into()).await;
            let now_s = self.clock.scenario_time();
            let mut changed = false;

            // Provisioned copies take traffic.
            for k in 0..fleet.states.len() {
                if matches!(fleet.states[k], CopyState::Provisioning { ready_at_s, .. } if ready_at_s <= now_s)
                {
                    fleet.start_copy(k).await?;
                    changed = true;
                }
            }
            if changed {
                self.peak_serving = self.peak_serving.max(fleet.serving());
            }

            if self.upgrade_at_s.is_some_and(|at| now_s >= at) {
                self.upgrade_at_s = None;
                self.upgrade(&mut proxies[0]).await?;
            }
            if now_s >= next_step {
                // Steps missed while the loop was held (an upgrade) are skipped, not caught up
                // in a burst of decisions.
                while next_step <= now_s {
                    next_step += period;
                }
                let elapsed = last_look.elapsed();
                last_look = Instant::now();
                let sent = self.stats.sent();
                let arrivals_rps = (sent - last_sent) as f64 / elapsed.as_secs_f64().max(1e-9);
                last_sent = sent;
                // The proxies that answered, combined as the Kubernetes query does.
                let mut answers = Vec::with_capacity(proxies.len());
                for p in proxies.iter() {
                    answers.extend(read_recommended(p.proxy.admin()).await);
                }
                let recommended = self.combine.apply(&answers);
                let forecast = read_forecast(proxies[0].proxy.admin()).await;
                let replicas = fleet.serving() + fleet.provisioning();
                let utilisation = fleet.utilisation(elapsed);
                let desired = match &mut *self.rule {
                    Rule::Hpa(hpa) => hpa.sync(now_s, replicas, &utilisation, fleet.provisioning()),
                    Rule::Forecast => recommended
                        .filter(|r| r.is_finite() && *r >= 0.0)
                        .map_or(replicas, |r| (r as u32).saturating_sub(self.fixed_count)),
                    Rule::Static(n) => *n,
                }
                .clamp(1, self.a.max_backends);
                self.timeline.push(LabSample {
                    t_s: now_s,
                    arrivals_rps,
                    serving: fleet.serving(),
                    provisioning: fleet.provisioning(),
                    draining: fleet.draining(),
                    desired,
                    recommended,
                    forecast,
                });
                changed |= self.apply(fleet, desired, replicas, now_s);
                existing.set(now_s, f64::from(fleet.existing()));
            }

            let held = self
                .reloads_held_until
                .is_some_and(|until| Instant::now() < until);
            self.reload_pending |= changed;
            if self.reload_pending && !held {
                self.reload_pending = false;
                let members = fleet.members();
                let t = self.clock.scenario_time();
                for p in proxies.iter_mut() {
                    p.apply(&members, t, |a| fleet.name_of(a)).await?;
                }
                let reloaded = Instant::now();
                for s in &mut fleet.states {
                    if let CopyState::Draining { removed, .. } = s {
                        removed.get_or_insert(reloaded);
                    }
                }
            }

            // Drained copies stop.
            let mut stopped = false;
            // After a reload, later than `now_s`.
            let checked_s = self.clock.scenario_time();
            for (k, s) in fleet.states.iter_mut().enumerate() {
                if let CopyState::Draining {
                    server,
                    removed: Some(removed),
                } = s
                {
                    if server.in_flight() == 0 && removed.elapsed() >= DRAIN_QUIET {
                        *s = CopyState::Off;
                        stopped = true;
                        self.stopped.push(CopyStop {
                            t_s: checked_s,
                            backend: fleet.copies[k].name.clone(),
                        });
                    }
                }
            }
            if stopped {
                existing.set(checked_s, f64::from(fleet.existing()));
            }
        }
    }

    /// Start provisioning or remove copies to reach `desired`; whether the pool changed.
    fn apply(&mut self, fleet: &mut Fleet, desired: u32, replicas: u32, now_s: f64) -> bool {
        let counted = now_s >= self.warmup_s;
        if desired > replicas {
            self.scale_ups += u32::from(counted);
            let mut more = desired - replicas;
            for s in &mut fleet.states {
                if more == 0 {
                    break;
                }
                if matches!(s, CopyState::Off) {
                    more -= 1;
                    fleet.generation += 1;
                    *s = CopyState::Provisioning {
                        generation: fleet.generation,
                        ready_at_s: now_s + self.a.provision_s,
                    };
                }
            }
            return false;
        }
        if desired == replicas {
            return false;
        }
        self.scale_downs += u32::from(counted);
        let mut fewer = replicas - desired;
        // Like a ReplicaSet: copies not yet ready go first (the newest first), then the newest
        // copies taking traffic.
        let mut order: Vec<(u64, usize)> = fleet
            .states
            .iter()
            .enumerate()
            .filter_map(|(k, s)| match s {
                CopyState::Provisioning { generation, .. } => Some((*generation, k)),
                _ => None,
            })
            .collect();
        order.sort_by(|x, y| y.cmp(x));
        let mut order: Vec<usize> = order.into_iter().map(|(_, k)| k).collect();
        order.extend(
            (0..fleet.states.len())
                .rev()
                .filter(|&k| matches!(fleet.states[k], CopyState::Serving(_))),
        );
        let mut changed = false;
        for k in order {
            if fewer == 0 {
                break;
            }
            fewer -= 1;
            let state = std::mem::replace(&mut fleet.states[k], CopyState::Off);
            if let CopyState::Serving(server) = state {
                fleet.states[k] = CopyState::Draining {
                    server,
                    removed: None,
                };
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(arrival_s: f64, latency_ms: f64, ok: bool) -> RequestRecord {
        RequestRecord {
            arrival_s,
            latency_ms,
            ok,
            attempts: Vec::new(),
            retries: 0,
        }
    }

    #[test]
    fn slo_windows_are_counted_as_the_simulator_counts_them() {
        let slo = Slo {
            p99_ms: 100.0,
            window_s: 10.0,
        };
        let mut records = Vec::new();
        // Warm-up: not counted, however slow.
        records.push(rec(5.0, 5_000.0, true));
        // Window [10, 20): 100 requests, one slow: p99 is the 99th smallest, fast.
        for i in 0..100 {
            records.push(rec(
                10.0 + i as f64 * 0.05,
                if i == 0 { 900.0 } else { 20.0 },
                true,
            ));
        }
        // Window [20, 30): 100 requests, two slow: p99 is slow.
        for i in 0..100 {
            records.push(rec(
                20.0 + i as f64 * 0.05,
                if i < 2 { 150.0 } else { 20.0 },
                true,
            ));
        }
        // Window [30, 40): empty. Window [40, 50): one fast request that failed.
        records.push(rec(41.0, 3.0, false));
        // Past the last whole window: not counted.
        records.push(rec(50.5, 9_000.0, true));
        let c = slo_count(&records, 10.0, 50.9, slo);
        assert_eq!(
            c,
            SloCount {
                windows: 3,
                violations: 2,
                slow: 4,
                timed_out: 0,
                window_p99_ms: vec![Some(20.0), Some(150.0), None, Some(f64::INFINITY)],
            }
        );
    }

    #[test]
    fn backend_seconds_cover_the_measured_window_only() {
        let mut i = Integral::new(100.0, 400.0);
        i.set(0.0, 2.0);
        i.set(150.0, 3.0);
        i.set(300.0, 1.0);
        // 2 × 50 + 3 × 150 + 1 × 100.
        assert_eq!(i.total(), 650.0);
    }

    #[test]
    fn metric_lines_are_found_by_series() {
        let text = "# TYPE fulcrum_pool_recommended_backends gauge\n\
                    fulcrum_pool_recommended_backends{pool=\"lab2\"} 9\n\
                    fulcrum_pool_recommended_backends{pool=\"lab\"} 7\n";
        assert_eq!(metric_value(text, RECOMMENDED), Some(7.0));
        assert_eq!(metric_value("", RECOMMENDED), None);
    }

    #[test]
    fn autoscale_times_follow_the_time_scale() {
        let a = Autoscale {
            backend: "web".into(),
            first: 0,
            initial: 3,
            min_backends: 2,
            max_backends: 40,
            provision_s: 120.0,
            target_utilization: 0.7,
        };
        let c = scaled_autoscale(&a, 1, None, 0, 0.025);
        assert_eq!(c.step, Duration::from_millis(250));
        assert_eq!(c.horizon, Duration::from_secs(3));
        assert_eq!(
            c.scale_down_stabilization,
            Duration::from_millis(500),
            "two steps"
        );
        assert_eq!((c.min_backends, c.max_backends), (3, 41));
        assert_eq!(c.burst_memory, Duration::from_secs(90), "an hour, scaled");
        assert_eq!(c.burst_spare_backends, 1);
        let c = scaled_autoscale(&a, 0, Some(60.0), 1, 0.001);
        assert_eq!(c.spare_backends, 1);
        assert_eq!(c.step, Duration::from_millis(100), "the step's floor");
        assert_eq!(c.horizon, Duration::from_secs(1), "the horizon's floor");
        assert_eq!(c.scale_down_stabilization, Duration::from_millis(60));
    }
}
