//! The real-socket lab: a scenario played against the real `fulcrum` binary on loopback.
//!
//! For each policy, [`run_lab`] starts the scenario's backends
//! ([`fulcrum_testbed::scenario`]), writes a proxy configuration that balances over them with
//! that policy, starts `fulcrum run` on it, drives the proxy with the open-loop
//! [`loadgen`] for the scenario's duration, and turns the measured requests into a
//! [`PolicyResult`] with the same code the simulator uses.
//!
//! [`autoscale::run_autoscale_lab`] plays a scenario with an `[autoscale]` table under a
//! scaler instead: copies of its scaled backend are started and stopped while the load runs,
//! and the proxy's pool follows them through configuration reloads.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod autoscale;
pub mod harness;
pub mod loadgen;
mod proxy;
mod timer;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fulcrum_config::{Algorithm, WeightSource};
use fulcrum_report::{PolicyResult, RunReport};
use fulcrum_scenario::{Policy, Scenario};
use fulcrum_testbed::scenario::{start_all, LabClock};

use loadgen::{LoadGenConfig, LoadStats};
pub use proxy::{proxy_config, read_retries_total};

/// How to run the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The `fulcrum` binary to run.
    pub fulcrum_bin: PathBuf,
    /// Policies to compare, run one after the other: an algorithm name, optionally followed
    /// by `+model` for model-tuned weights, or `capacity_oracle` (see [`Policy`]). `oracle`
    /// (simulator-only) is skipped.
    pub policies: Vec<String>,
    /// Wall seconds per scenario second (0.25 plays a 120 s scenario in 30 s).
    pub time_scale: f64,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Extra TOML laid over the generated `[pools.lab]` table (its keys replace the
    /// generated ones).
    pub extra_pool_toml: String,
}

impl LabOptions {
    /// Every algorithm with static weights, at time scale 1, without progress output.
    pub fn new(fulcrum_bin: impl Into<PathBuf>) -> LabOptions {
        LabOptions {
            fulcrum_bin: fulcrum_bin.into(),
            policies: Algorithm::ALL.iter().map(|a| a.to_string()).collect(),
            time_scale: 1.0,
            progress: false,
            extra_pool_toml: String::new(),
        }
    }
}

/// Keep the proxy's weights at the backends' true capacity: set them now, then at every
/// change of the scenario.
async fn follow_capacity(
    scenario: Scenario,
    admin: SocketAddr,
    addrs: Vec<SocketAddr>,
    clock: LabClock,
) -> anyhow::Result<()> {
    let push = |t: f64| {
        let weights = scenario.capacity_weights(t);
        let body: serde_json::Map<String, serde_json::Value> = addrs
            .iter()
            .zip(&weights)
            .map(|(a, w)| (a.to_string(), serde_json::json!(w)))
            .collect();
        let all_down = weights.iter().all(|w| *w == 0.0);
        async move {
            if all_down {
                return anyhow::Ok(());
            }
            proxy::put_weights(admin, "lab", &serde_json::Value::Object(body)).await
        }
    };
    push(0.0).await?;
    for t in scenario.change_times() {
        tokio::time::sleep_until(clock.wall_at(t).into()).await;
        // Just after the change, so the state that starts at `t` is the one applied.
        push(t + 1e-9).await?;
    }
    Ok(())
}

/// Requests still outstanding when the load ends get this long before counting as errors.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The load generator's settings for playing `scenario`'s load against `target` on `clock`,
/// with `backend_names` in the scenario's backend order.
pub fn scenario_load(
    scenario: &Scenario,
    target: SocketAddr,
    clock: LabClock,
    backend_names: Vec<String>,
) -> LoadGenConfig {
    LoadGenConfig {
        target,
        load: scenario.load.clone(),
        duration_s: scenario.duration_s,
        clock,
        backend_names,
        seed: scenario.seed,
        drain_timeout: DRAIN_TIMEOUT,
        max_connections: None,
    }
}

/// What every lab run needs: a positive time scale and the fulcrum binary it starts.
pub(crate) fn check_run(time_scale: f64, fulcrum_bin: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        time_scale > 0.0 && time_scale.is_finite(),
        "time_scale must be positive, got {time_scale}"
    );
    anyhow::ensure!(
        fulcrum_bin.is_file(),
        "fulcrum binary not found at {}",
        fulcrum_bin.display()
    );
    Ok(())
}

/// Play `scenario` against the real proxy once per policy in `opts.policies`.
///
/// Every backend, proxy process and temporary file is cleaned up before returning, on error
/// too. Builds its own tokio runtime, so it must not be called from within one.
pub fn run_lab(scenario: &Scenario, opts: &LabOptions) -> anyhow::Result<RunReport> {
    check_run(opts.time_scale, &opts.fulcrum_bin)?;
    anyhow::ensure!(
        !scenario.backends.is_empty(),
        "the scenario has no backends"
    );
    let mut runs = Vec::new();
    for p in &opts.policies {
        let policy: Policy = p.parse()?;
        match policy.proxy_settings() {
            Some(spec) => runs.push((policy, spec)),
            None => eprintln!("note: policy {p:?} is simulator-only; the lab skips it"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the lab runtime")?;
    let mut results = Vec::with_capacity(runs.len());
    for (i, (policy, (algo, weights))) in runs.iter().enumerate() {
        let label = format!("[policy {}/{} {policy}]", i + 1, runs.len());
        let result = rt
            .block_on(run_policy(scenario, opts, *policy, *algo, *weights, &label))
            .with_context(|| format!("lab run of policy {policy}"))?;
        results.push(result);
    }
    Ok(RunReport {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        mode: "lab".to_string(),
        results,
    })
}

async fn run_policy(
    scenario: &Scenario,
    opts: &LabOptions,
    policy: Policy,
    algorithm: Algorithm,
    weights: WeightSource,
    label: &str,
) -> anyhow::Result<PolicyResult> {
    let names: Vec<String> = scenario.backends.iter().map(|b| b.name.clone()).collect();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let servers = start_all(scenario, loopback, LabClock::new(opts.time_scale))
        .await
        .context("cannot start scenario backends")?;
    let backends: Vec<(SocketAddr, u32)> = servers
        .iter()
        .map(|s| (s.addr(), s.backend().weight))
        .collect();
    let (listen, admin) = harness::loopback_pair().context("cannot pick free ports")?;
    let config = proxy_config(
        listen,
        admin,
        algorithm,
        weights,
        &backends,
        &opts.extra_pool_toml,
        opts.time_scale,
    )?;
    let proxy = harness::Proxy::start(&opts.fulcrum_bin, &config).await?;
    let retries_before = read_retries_total(admin).await?;

    // Scenario time 0 is the moment load starts.
    let clock = LabClock::new(opts.time_scale);
    for s in &servers {
        s.set_clock(clock);
    }
    let oracle = (policy == Policy::CapacityOracle).then(|| {
        let addrs = servers.iter().map(|s| s.addr()).collect();
        tokio::spawn(follow_capacity(scenario.clone(), admin, addrs, clock))
    });
    let cfg = scenario_load(scenario, listen, clock, names.clone());
    let stats = Arc::new(LoadStats::default());
    let progress = opts.progress.then(|| {
        tokio::spawn(show_progress(
            label.to_string(),
            clock,
            scenario.duration_s,
            stats.clone(),
        ))
    });
    let records = loadgen::run(&cfg, stats.clone()).await;
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        let wall_s = scenario.duration_s * opts.time_scale;
        let rps = (wall_s > 0.0).then(|| stats.completed() as f64 / wall_s);
        eprintln!(
            "\r{}",
            progress_line(
                label,
                1.0,
                scenario.duration_s,
                scenario.duration_s,
                rps,
                &stats
            )
        );
    }
    if let Some(task) = oracle {
        if task.is_finished() {
            task.await
                .context("capacity oracle task")?
                .context("capacity oracle could not set the proxy's weights")?;
        } else {
            task.abort();
        }
    }
    let retries_after = read_retries_total(admin).await;
    proxy.stop();
    drop(servers);
    let mut result = PolicyResult::from_records(
        &policy.to_string(),
        &records,
        &names,
        scenario.warmup_s,
        scenario.duration_s,
    );
    result.retries = retries_after?.saturating_sub(retries_before);
    Ok(result)
}

/// `[policy 2/4 least_connections] [=====>     ] 45% 54/120 s  rps 598  errors 0`
fn progress_line(
    label: &str,
    fraction: f64,
    t: f64,
    duration_s: f64,
    rps: Option<f64>,
    stats: &LoadStats,
) -> String {
    const WIDTH: usize = 20;
    let fraction = fraction.clamp(0.0, 1.0);
    let filled = (fraction * WIDTH as f64).round() as usize;
    let bar = if filled >= WIDTH {
        "=".repeat(WIDTH)
    } else {
        format!("{}>{}", "=".repeat(filled), " ".repeat(WIDTH - filled - 1))
    };
    let rps = rps.map_or_else(|| "-".to_string(), |r| format!("{r:.0}"));
    format!(
        "{label} [{bar}] {:>3.0}% {t:.0}/{duration_s:.0} s  rps {rps}  errors {}    ",
        fraction * 100.0,
        stats.errors()
    )
}

pub(crate) async fn show_progress(
    label: String,
    clock: LabClock,
    duration_s: f64,
    stats: Arc<LoadStats>,
) {
    let mut window: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = stats.completed();
        window.push_back((now, done));
        while window.len() > 5 {
            window.pop_front();
        }
        let rps = window.front().and_then(|(t0, n0)| {
            let dt = now.duration_since(*t0).as_secs_f64();
            (dt > 0.0).then(|| (done - n0) as f64 / dt)
        });
        let t = clock.scenario_time().min(duration_s);
        let line = progress_line(&label, t / duration_s, t, duration_s, rps, &stats);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_format() {
        let stats = LoadStats::default();
        let line = progress_line("[policy 2/4 lc]", 0.45, 54.0, 120.0, Some(598.2), &stats);
        assert_eq!(
            line.trim_end(),
            "[policy 2/4 lc] [=========>          ]  45% 54/120 s  rps 598  errors 0"
        );
    }
}
