//! The `fulcrum` command: run the proxy, check a configuration, or start the demo.
#![deny(unsafe_code)] // allowed only in `allocator`, around mimalloc's C API
#![deny(rust_2018_idioms)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fulcrum_config::{Config, Diagnostic, Diagnostics, EXIT_CONFIG};
use fulcrum_proxy::{ConfigSource, Start};

#[cfg(feature = "mimalloc")]
mod allocator;
mod demo;
mod forecast_cmd;
mod history_cmd;
mod logging;
mod probe;

/// fulcrum: a Layer-7 load-balancing reverse proxy whose backend weights can be tuned live.
#[derive(Debug, Parser)]
#[command(name = "fulcrum", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file for the default `run` (the embedded default when omitted).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic (the default). SIGHUP reloads the configuration, SIGTERM drains and
    /// exits, SIGQUIT hands the listeners to a process started with `run --upgrade`.
    Run(RunArgs),
    /// Validate a configuration, print every problem, exit 0 (valid) or 78 (invalid).
    Check,
    /// Watch the model at work: four uneven loopback backends, a steady open-loop load and
    /// the proxy (the embedded config/demo.toml unless `-c` is given); status page on the
    /// admin port. `--static` runs the same story with static weights on other ports.
    Demo(demo::DemoArgs),
    /// Run policies on a scenario in the discrete-event simulator.
    Sim(SimArgs),
    /// Run policies on a scenario for real: loopback backends, the real proxy, open-loop load.
    Lab(LabArgs),
    /// Start a scenario's backends on loopback (point any proxy at them).
    Testbed(TestbedArgs),
    /// Ask a running fulcrum's admin listener for `/healthz` (or PATH): exit 0 on a 2xx
    /// answer, 1 otherwise. For container health checks; the file given with `-c` is read
    /// only for `admin.listen`.
    Probe(probe::ProbeArgs),
    /// Forecast a request-rate series (CSV `t_s,rps`) with a rolling origin.
    Forecast(forecast_cmd::ForecastArgs),
    /// Export a pool's request-rate series from Prometheus as CSV `t_s,rps` at a fixed step:
    /// the input of `forecast`, and a scenario's `load.trace` for `sim`.
    History(history_cmd::HistoryArgs),
}

#[derive(Debug, Default, clap::Args)]
struct RunArgs {
    /// Take the listening sockets (data plane and admin) of the running fulcrum through
    /// `server.upgrade_sock` instead of binding them: start this, then send SIGQUIT to the old
    /// process (see scripts/upgrade.sh).
    #[arg(long)]
    upgrade: bool,
}

/// What `sim` and `lab` both take: a scenario, the policies to play it with, where to write.
#[derive(Debug, clap::Args)]
struct ScenarioRun {
    /// Scenario file (see benches/scenarios/README.md).
    #[arg(long)]
    scenario: PathBuf,
    /// Policy to run; repeat for several (default: the four algorithms, and in `sim` the
    /// oracle too). `ALGO+model` runs the control loop.
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a Markdown table and SVG plots into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    #[command(flatten)]
    run: ScenarioRun,
    /// Write per-tick features and ground truth (CSV) for the first policy here.
    #[arg(long)]
    export_features: Option<PathBuf>,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// ONNX model for `+model` policies (default: models/balancer.onnx when present).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Use the built-in heuristic controller for `+model` policies instead of a model.
    #[arg(long)]
    heuristic: bool,
    /// Scaler for a scenario with an `[autoscale]` table: `none` (default: the backends as
    /// written), `hpa` (or `reactive`: Kubernetes' HPA), `forecast` (fulcrum's recommendation
    /// with its defaults), `forecast:S` (with `scale_down_stabilization_s = S`),
    /// `forecast@hpa` (the recommendation as the Kubernetes recipes' HPA follows it: scraped
    /// and synced every 15 s, 10 % tolerance; `forecast@hpa:T` with tolerance T), `static`
    /// (sized for the peak), `static:N`, or the references that read the scenario, `oracle`
    /// (knows the future rate) and `oracle-now` (knows the rate now); repeat for several.
    #[arg(long = "scaler")]
    scalers: Vec<String>,
    /// ONNX forecast model for the `forecast` scalers, as a pool's `forecast_model` (default:
    /// the built-in forecaster); a model that does not fit is refused before any run.
    #[arg(long)]
    forecast_model: Option<PathBuf>,
    /// Proxies sharing the backends, each with its own pickers and control loop; the load is
    /// split evenly over them (as the replicas of a Deployment behind one Service). Each runs
    /// its own demand tracking for the `forecast` scalers, which follow the highest of their
    /// recommendations (the `max` of the Kubernetes recipes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    replicas: u32,
    /// How arrivals reach the replicas: `turns` (each in turn) or `random` (each arrival to a
    /// replica drawn at random, as a Service spreads independent clients).
    #[arg(long, default_value = "turns", value_parser = ["turns", "random"])]
    split: String,
    /// How several replicas' recommendations become the `forecast` scalers' count: `max` (the
    /// Kubernetes recipes' query) or `mean` (rounded up).
    #[arg(long, default_value = "max", value_parser = ["max", "mean"])]
    combine: String,
}

#[derive(Debug, clap::Args)]
struct LabArgs {
    #[command(flatten)]
    run: ScenarioRun,
    /// Run the scenario's timeline this many times faster than written (0.25 = a quarter of
    /// the time); service times are not scaled.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Extra TOML laid over the generated `[pools.lab]` table; its keys replace the generated
    /// ones (e.g. `retries = 0` or `health_check.interval_ms = 200`).
    #[arg(long, default_value = "")]
    pool_toml: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Scaler for a scenario with an `[autoscale]` table, as for `sim`: `reactive` (or `hpa`:
    /// Kubernetes' HPA on the copies' measured utilisation), `forecast` (follows the running
    /// proxy's `fulcrum_pool_recommended_backends`), `forecast:S`, `static` or `static:N`;
    /// repeat for several. Copies are real servers, started and stopped as the scaler decides,
    /// and the proxy's pool follows them through configuration reloads.
    #[arg(long = "scaler")]
    scalers: Vec<String>,
    /// With --scaler: upgrade the proxy once, at this scenario second (`fulcrum run
    /// --upgrade`, then SIGQUIT to the running process), as an operator deploys a new build.
    #[arg(long)]
    upgrade_at: Option<f64>,
    /// With --scaler: the pool keeps its rate series in a `history_file` (one per run), which
    /// an upgraded process reads back.
    #[arg(long)]
    history_file: bool,
    /// With --scaler: this many proxies in front of the pool, as a Deployment's replicas behind
    /// one Service (each its share of the load, every pool change applied to each; `forecast`
    /// follows the highest of their recommendations).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    proxies: u32,
    /// With --proxies: how their recommendations become the `forecast` scaler's count, `max`
    /// (the Kubernetes recipes' query) or `mean` (rounded up).
    #[arg(long, default_value = "max", value_parser = ["max", "mean"])]
    combine: String,
}

#[derive(Debug, clap::Args)]
struct TestbedArgs {
    /// Scenario file.
    #[arg(long)]
    scenario: PathBuf,
    /// Timeline speed-up, as for `lab`.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Where backend `i` listens: this address with its port plus `i` (port 0: ephemeral
    /// ports). `0.0.0.0:9001` serves other hosts, as in a container.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

fn load_scenario(path: &std::path::Path) -> Result<fulcrum_scenario::Scenario, ExitCode> {
    report(fulcrum_scenario::load_scenario(path))
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("fulcrum: {e}");
    ExitCode::from(1)
}

/// Write `doc` to `path` as pretty-printed JSON; the error says which file.
fn write_json(path: &std::path::Path, doc: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(doc).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn sim(args: SimArgs) -> ExitCode {
    use fulcrum_sim::control::{loop_factory, ScorerSource};
    use fulcrum_sim::{Policy, SimOptions};
    let scenario = match load_scenario(&args.run.scenario) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let scaled = args.scalers.iter().any(|s| s != "none");
    let policies: Vec<Policy> = if args.run.policies.is_empty() {
        Policy::BASELINES
            .iter()
            .filter(|p| !scaled || !matches!(p, Policy::Oracle | Policy::CapacityOracle))
            .copied()
            .collect()
    } else {
        match args
            .run
            .policies
            .iter()
            .map(|p| p.parse())
            .collect::<Result<Vec<Policy>, _>>()
        {
            Ok(p) => p,
            Err(e) => return fail(e),
        }
    };
    let mut opts = SimOptions {
        seed: args.seed,
        replicas: args.replicas,
        split: if args.split == "random" {
            fulcrum_sim::ProxySplit::Random
        } else {
            fulcrum_sim::ProxySplit::Turns
        },
        combine: args.combine.parse().unwrap_or_default(),
        ..SimOptions::default()
    };
    if policies.iter().any(Policy::needs_model) {
        let default_model = PathBuf::from("models/balancer.onnx");
        let source = match (&args.model, args.heuristic) {
            (_, true) => ScorerSource::Heuristic,
            (Some(m), false) => ScorerSource::Model(m.clone()),
            (None, false) if default_model.is_file() => ScorerSource::Model(default_model),
            (None, false) => {
                eprintln!("fulcrum sim: no model given and models/balancer.onnx is missing; +model policies use the built-in heuristic");
                ScorerSource::Heuristic
            }
        };
        match loop_factory(source, fulcrum_control::ControlSettings::default()) {
            Ok(f) => opts.weight_controller = Some(f),
            Err(e) => return fail(e),
        }
    }
    if let Some(path) = &args.forecast_model {
        match fulcrum_sim::control::forecast_model_factory(path.clone()) {
            Ok(f) => opts.forecast_model = Some(f),
            Err(e) => return fail(e),
        }
    }
    if scaled {
        return sim_autoscaled(
            &scenario,
            &policies,
            &args.scalers,
            &opts,
            args.run.json.as_ref(),
        );
    }
    if let Some(path) = &args.export_features {
        match fulcrum_sim::export_features(&scenario, &policies[0], &opts, path) {
            Ok(export) => eprintln!("wrote {} feature rows to {}", export.rows, path.display()),
            Err(e) => return fail(e),
        }
    }
    let report = match fulcrum_sim::simulate_all(&scenario, &policies, &opts) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    write_outputs(&report, args.run.json.as_ref(), args.run.report.as_ref())
}

/// `fulcrum sim --scaler ...`: every policy under every scaler, a Markdown table on stdout and
/// the results as JSON (each with `scaler`, `backend_seconds`, `slo_windows`,
/// `slo_violation_windows`, `slow_requests`, `timed_out`, `scale_ups`, `scale_downs`,
/// `peak_serving`).
fn sim_autoscaled(
    scenario: &fulcrum_scenario::Scenario,
    policies: &[fulcrum_sim::Policy],
    scalers: &[String],
    opts: &fulcrum_sim::SimOptions,
    json: Option<&PathBuf>,
) -> ExitCode {
    use fulcrum_sim::{simulate_autoscaled, ScalerKind};
    let Some(a) = &scenario.autoscale else {
        return fail(format!(
            "{}: --scaler needs an [autoscale] table in the scenario",
            scenario.name
        ));
    };
    let mut kinds = Vec::new();
    for s in scalers {
        match s.as_str() {
            "none" => kinds.push(ScalerKind::Static(Some(a.initial))),
            other => match other.parse::<ScalerKind>() {
                Ok(k) => kinds.push(k),
                Err(e) => return fail(e),
            },
        }
    }
    let pairs: Vec<(fulcrum_sim::Policy, ScalerKind)> = policies
        .iter()
        .flat_map(|p| kinds.iter().map(move |k| (*p, *k)))
        .collect();
    let runs = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|(p, k)| s.spawn(move || simulate_autoscaled(scenario, p, *k, opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    });
    let runs = match runs {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut table = fulcrum_sim::AUTOSCALE_TABLE_HEADER.to_string();
    let mut results = Vec::new();
    for ((policy, _), run) in pairs.iter().zip(&runs) {
        let reference = pairs
            .iter()
            .zip(&runs)
            .find(|((p, k), _)| p == policy && *k == ScalerKind::Hpa)
            .map_or(run.autoscale.backend_seconds, |(_, r)| {
                r.autoscale.backend_seconds
            });
        let label = format!("{} ({policy})", scenario.name);
        table.push_str(&run.markdown_row(&label, reference));
        let mut v = match serde_json::to_value(&run.result) {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        if let Some(o) = v.as_object_mut() {
            insert_autoscale_fields(o, &run.autoscale);
        }
        results.push(v);
    }
    print!("{table}");
    if let Some(path) = json {
        let doc = serde_json::json!({
            "scenario": scenario.name,
            "seed": opts.seed.unwrap_or(scenario.seed),
            "mode": "sim",
            "replicas": opts.replicas,
            "split": if opts.split == fulcrum_sim::ProxySplit::Random { "random" } else { "turns" },
            "combine": opts.combine.to_string(),
            "results": results,
        });
        if let Err(e) = write_json(path, &doc) {
            return fail(e);
        }
    }
    ExitCode::SUCCESS
}

/// The fields an autoscaled run adds to its policy's JSON result, in `sim` and `lab` alike.
fn insert_autoscale_fields(
    o: &mut serde_json::Map<String, serde_json::Value>,
    s: &fulcrum_sim::AutoscaleStats,
) {
    o.insert("scaler".into(), s.scaler.clone().into());
    o.insert("backend_seconds".into(), s.backend_seconds.into());
    o.insert("slo_windows".into(), s.slo_windows.into());
    o.insert(
        "slo_violation_windows".into(),
        s.slo_violation_windows.into(),
    );
    o.insert("slow_requests".into(), s.slow_requests.into());
    o.insert("timed_out".into(), s.timed_out.into());
    o.insert("scale_ups".into(), s.scale_ups.into());
    o.insert("scale_downs".into(), s.scale_downs.into());
    o.insert("peak_serving".into(), s.peak_serving.into());
}

fn write_outputs(
    report: &fulcrum_report::RunReport,
    json: Option<&PathBuf>,
    dir: Option<&PathBuf>,
) -> ExitCode {
    print!("{}", fulcrum_report::markdown(report));
    if let Some(path) = json {
        if let Err(e) = fulcrum_report::write_json(report, path) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    if let Some(dir) = dir {
        if let Err(e) = fulcrum_report::write_report(report, dir) {
            return fail(format!(
                "cannot write the report into {}: {e}",
                dir.display()
            ));
        }
    }
    ExitCode::SUCCESS
}

fn lab(args: LabArgs) -> ExitCode {
    let scenario = match load_scenario(&args.run.scenario) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    if !args.scalers.is_empty() {
        return lab_autoscaled(&scenario, args, exe);
    }
    if args.upgrade_at.is_some() || args.history_file || args.proxies > 1 {
        return fail(
            "--upgrade-at, --history-file and --proxies go with --scaler (an autoscaled lab run)",
        );
    }
    let mut opts = fulcrum_lab::LabOptions::new(exe);
    if !args.run.policies.is_empty() {
        opts.policies = args.run.policies;
    }
    opts.time_scale = args.time_scale;
    opts.progress = !args.quiet;
    opts.extra_pool_toml = args.pool_toml;
    match fulcrum_lab::run_lab(&scenario, &opts) {
        Ok(report) => write_outputs(&report, args.run.json.as_ref(), args.run.report.as_ref()),
        Err(e) => fail(format!("{e:#}")),
    }
}

/// `fulcrum lab --scaler ...`: the scenario under each scaler with real copies, a Markdown
/// table on stdout and the results as JSON with the fields `sim --scaler` writes, plus each
/// run's `timeline` (every scaler step), `membership` (the proxy's pool after every reload) and
/// `stopped` (when each removed copy, drained, stopped).
fn lab_autoscaled(scenario: &fulcrum_scenario::Scenario, args: LabArgs, exe: PathBuf) -> ExitCode {
    use fulcrum_lab::autoscale::{run_autoscale_lab, AutoscaleLabOptions};
    use fulcrum_sim::ScalerKind;
    if scenario.autoscale.is_none() {
        return fail(format!(
            "{}: --scaler needs an [autoscale] table in the scenario",
            scenario.name
        ));
    }
    let mut opts = AutoscaleLabOptions::new(exe);
    opts.scalers.clear();
    for s in &args.scalers {
        match s.parse::<ScalerKind>() {
            Ok(k) => opts.scalers.push(k),
            Err(e) => return fail(e),
        }
    }
    match args.run.policies.as_slice() {
        [] => {}
        [one] => match one.parse() {
            Ok(a) => opts.algorithm = a,
            Err(_) => {
                return fail(format!(
                    "--policy {one:?}: an autoscaled lab run takes one algorithm ({})",
                    fulcrum_config::Algorithm::ALL
                        .map(|a| a.to_string())
                        .join(", ")
                ))
            }
        },
        _ => return fail("an autoscaled lab run takes at most one --policy"),
    }
    opts.time_scale = args.time_scale;
    opts.progress = !args.quiet;
    opts.extra_pool_toml = args.pool_toml;
    opts.upgrade_at_s = args.upgrade_at;
    opts.history_file = args.history_file;
    opts.proxies = args.proxies;
    opts.combine = args.combine.parse().unwrap_or_default();
    let runs = match run_autoscale_lab(scenario, &opts) {
        Ok(r) => r,
        Err(e) => return fail(format!("{e:#}")),
    };
    let reference = runs
        .iter()
        .find(|r| r.autoscale.scaler == ScalerKind::Hpa.to_string())
        .map(|r| r.autoscale.backend_seconds);
    let mut table = fulcrum_sim::AUTOSCALE_TABLE_HEADER.to_string();
    let mut results = Vec::new();
    for run in &runs {
        let row = fulcrum_sim::AutoscaleRun {
            result: run.result.clone(),
            stats: fulcrum_sim::SimStats {
                window_s: run.window_s,
                arrivals: run.result.requests,
                mean_in_system: f64::NAN,
                utilisation: Vec::new(),
                events: 0,
            },
            autoscale: run.autoscale.clone(),
        };
        let label = format!("{} ({}, lab)", scenario.name, opts.algorithm);
        table.push_str(
            &row.markdown_row(&label, reference.unwrap_or(run.autoscale.backend_seconds)),
        );
        let mut v = match serde_json::to_value(&run.result) {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        if let Some(o) = v.as_object_mut() {
            insert_autoscale_fields(o, &run.autoscale);
            o.insert("timeline".into(), serde_json::json!(run.timeline));
            o.insert("membership".into(), serde_json::json!(run.membership));
            o.insert("stopped".into(), serde_json::json!(run.stopped));
            o.insert("upgraded_at_s".into(), serde_json::json!(run.upgraded_at_s));
            o.insert("proxies".into(), serde_json::json!(run.proxies));
            o.insert(
                "combine".into(),
                serde_json::json!(opts.combine.to_string()),
            );
            // JSON has no infinity: a window whose p99 request failed is written as null too.
            let p99: Vec<Option<f64>> = run
                .slo_window_p99_ms
                .iter()
                .map(|p| p.filter(|v| v.is_finite()))
                .collect();
            o.insert("slo_window_p99_ms".into(), serde_json::json!(p99));
        }
        results.push(v);
    }
    print!("{table}");
    if let Some(path) = &args.run.json {
        let doc = serde_json::json!({
            "scenario": scenario.name,
            "seed": scenario.seed,
            "mode": "lab",
            "time_scale": opts.time_scale,
            "results": results,
        });
        if let Err(e) = write_json(path, &doc) {
            return fail(e);
        }
    }
    ExitCode::SUCCESS
}

fn testbed(args: TestbedArgs) -> ExitCode {
    let scenario = match load_scenario(&args.scenario) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match fulcrum_testbed::scenario::run_testbed_at(&scenario, args.listen, args.time_scale) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Load the configuration (or the embedded default) and print warnings; errors exit 78.
fn load(path: Option<&PathBuf>) -> Result<(Config, ConfigSource), ExitCode> {
    let (parsed, source) = match path {
        Some(p) => (fulcrum_config::load(p), ConfigSource::File(p.clone())),
        None => (
            fulcrum_config::parse(
                fulcrum_config::DEFAULT_CONFIG,
                fulcrum_config::DEFAULT_CONFIG_NAME,
            ),
            ConfigSource::Embedded,
        ),
    };
    report(parsed).map(|config| (config, source))
}

/// Print warnings and pass the value on, or print every problem and exit 78 (EX_CONFIG).
fn report<T>(parsed: Result<(T, Vec<Diagnostic>), Diagnostics>) -> Result<T, ExitCode> {
    match parsed {
        Ok((value, warnings)) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            Ok(value)
        }
        Err(diagnostics) => {
            let text = diagnostics.to_string();
            eprint!("{text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
            Err(ExitCode::from(EXIT_CONFIG as u8))
        }
    }
}

/// What `fulcrum check` says about the client limits: the connection cap `fulcrum run` can
/// honour under this process's hard open-file limit (which it raises the soft limit to).
fn print_client_limits(config: &Config, backends: usize) {
    let l = &config.server.limits;
    let open_files = fulcrum_proxy::limits::open_file_limit()
        .map(|l| l.hard)
        .unwrap_or(1024);
    let budget = fulcrum_proxy::limits::ConnectionBudget::new(l, backends, open_files);
    println!(
        "client limits: {} connections at once (max_connections {}, open-file limit {}), head within {} ms, keep-alive idle {} ms, head up to {} bytes, request line up to {} bytes, body reads at most {} ms apart",
        budget.effective,
        budget.configured,
        open_files,
        l.header_timeout.as_millis(),
        l.keepalive_timeout.as_millis(),
        l.max_header_bytes,
        l.max_request_line_bytes,
        config.server.body_timeout.as_millis()
    );
    for pool in &config.pools {
        match pool.request_buffer_bytes {
            0 => println!(
                "pool {}: request bodies stream to the backend as they arrive",
                pool.name
            ),
            n => println!(
                "pool {}: request bodies up to {n} bytes are read whole before a backend is picked",
                pool.name
            ),
        }
    }
    if let Some(w) = budget.warning() {
        eprintln!("warning: {w}");
    }
}

fn run(config: Config, source: ConfigSource, start: Start) -> ExitCode {
    match fulcrum_proxy::serve(config, source, start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::from(1)
        }
    }
}

/// One line of `fulcrum check` about a pool's `[pools.NAME.autoscale]` section.
fn autoscale_summary(pool: &str, a: &fulcrum_config::AutoscaleConfig) -> String {
    let capacity = match a.backend_capacity_rps {
        Some(c) => format!("{c} rps per backend (configured)"),
        None => "capacity per backend estimated from the traffic".to_string(),
    };
    let model = match &a.forecast_model {
        Some(m) => format!("forecast model {}", m.display()),
        None => "built-in forecaster".to_string(),
    };
    let down = if a.scale_down_stabilization.is_zero() {
        "down at once when the demand falls".to_string()
    } else {
        format!(
            "down only after {} s lower",
            a.scale_down_stabilization.as_secs_f64()
        )
    };
    let mut spare = match a.spare_backends {
        0 => String::new(),
        1 => " and 1 spare backend".to_string(),
        n => format!(" and {n} spare backends"),
    };
    if a.burst_spare_backends > 0 {
        spare.push_str(&format!(
            " ({} more for {} s after the demand outruns the plan)",
            a.burst_spare_backends,
            a.burst_memory.as_secs_f64()
        ));
    }
    let mut history = match &a.history_file {
        Some(h) => format!(", series kept in {}", h.display()),
        None => String::new(),
    };
    if let Some(url) = &a.history_prometheus {
        history.push_str(&format!(
            ", {} from {url} at start",
            if a.history_file.is_some() {
                "else its record"
            } else {
                "its record"
            }
        ));
    }
    format!(
        "pool {pool}: autoscale recommends {}..={} backends at {} % utilisation for the p90 \
         {} s ahead{spare}, {down}, a rate every {} s{history}, {model}, {capacity}",
        a.min_backends,
        a.max_backends,
        a.target_utilization * 100.0,
        a.horizon.as_secs_f64(),
        a.step.as_secs_f64(),
    )
}

fn main() -> ExitCode {
    logging::init();
    #[cfg(feature = "mimalloc")]
    fulcrum_proxy::memory::set_release(allocator::release_thread_memory);
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Run(args) => match load(cli.config.as_ref()) {
            Ok((config, source)) => {
                let start = if args.upgrade {
                    Start::Upgrade
                } else {
                    Start::Fresh
                };
                run(config, source, start)
            }
            Err(code) => code,
        },
        Command::Check => match load(cli.config.as_ref()) {
            Ok((config, _)) => {
                let backends: usize = config.pools.iter().map(|p| p.backends.len()).sum();
                let names: usize = config.pools.iter().map(|p| p.discovery.names().len()).sum();
                let names = match names {
                    0 => String::new(),
                    n => format!(", {n} DNS names resolved at run time"),
                };
                println!(
                    "{}: configuration is valid ({} routes, {} pools, {} backends{names})",
                    cli.config
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| fulcrum_config::DEFAULT_CONFIG_NAME.to_string()),
                    config.routes.len(),
                    config.pools.len(),
                    backends
                );
                print_client_limits(&config, backends);
                for pool in &config.pools {
                    if let Some(a) = &pool.autoscale {
                        println!("{}", autoscale_summary(&pool.name, a));
                    }
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Demo(args) => demo::run(cli.config.as_ref(), args),
        Command::Sim(args) => sim(args),
        Command::Lab(args) => lab(args),
        Command::Testbed(args) => testbed(args),
        Command::Probe(args) => run_probe(&args, cli.config.as_ref()),
        Command::Forecast(args) => forecast_cmd::run(args),
        Command::History(args) => history_cmd::run(args),
    }
}

/// `fulcrum probe`: the admin address from `--admin`, else from the configuration (its
/// `admin.listen`), else the default admin address.
fn run_probe(args: &probe::ProbeArgs, config: Option<&PathBuf>) -> ExitCode {
    let configured = match (&args.admin, config) {
        (None, Some(_)) => match load(config) {
            Ok((config, _)) => config.admin.listen,
            Err(code) => return code,
        },
        _ => fulcrum_config::AdminConfig::default().listen,
    };
    let result = probe::target(args.admin.as_deref(), configured).and_then(|addr| {
        probe::probe(
            addr,
            &args.path,
            std::time::Duration::from_millis(args.timeout_ms),
        )
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fulcrum probe: {e}");
            ExitCode::from(1)
        }
    }
}
