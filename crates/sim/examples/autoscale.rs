//! Runs every scenario of a directory (default `benches/scenarios/autoscale`) under each scaler
//! (`hpa`, `forecast`, `static` sized for the peak) and prints a Markdown comparison: backend-
//! seconds, p99 latency, SLO-violation windows, slow and failed requests, scale events. Each
//! scenario is measured twice: from its own `warmup_s` (the forecast still learning the cycle)
//! and from two diurnal periods on (once a season can have been found). With a second
//! argument, writes each run's control steps as CSV into that directory (for plots).
//!
//! ```sh
//! cargo run --release -p fulcrum-sim --example autoscale -- benches/scenarios/autoscale out/
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fulcrum_scenario::load_scenario;
use fulcrum_sim::{simulate_autoscaled, AutoscaleRun, Policy, ScalerKind, SimOptions};

const SCALERS: [ScalerKind; 3] = [
    ScalerKind::Hpa,
    ScalerKind::Forecast,
    ScalerKind::Static(None),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "benches/scenarios/autoscale".into()),
    );
    let timelines = args.next().map(PathBuf::from);
    let policy: Policy = std::env::var("POLICY")
        .unwrap_or_else(|_| "least_connections".into())
        .parse()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|x| x == "toml"));
    files.sort();
    let opts = SimOptions::default();
    let mut out = String::new();
    writeln!(
        out,
        "| scenario | scaler | backend-s | vs hpa | p99 ms | SLO violation windows | slow requests | failed | scale up/down | peak serving |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    let mut scenarios = Vec::new();
    for path in &files {
        let (sc, _) = load_scenario(path).map_err(|d| format!("{}:\n{d}", path.display()))?;
        scenarios.push(sc);
    }
    let steady: Vec<_> = scenarios
        .iter()
        .filter_map(|sc| {
            let two = 2.0 * sc.load.diurnal?.period_s;
            (two > sc.warmup_s && two < sc.duration_s).then(|| {
                let mut s = sc.clone();
                s.warmup_s = two;
                s.name = format!("{} (from {two:.0} s)", sc.name);
                s
            })
        })
        .collect();
    scenarios.extend(steady);
    for sc in &scenarios {
        let runs: Vec<Result<AutoscaleRun, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = SCALERS
                .iter()
                .map(|k| {
                    let opts = &opts;
                    s.spawn(move || {
                        simulate_autoscaled(sc, &policy, *k, opts).map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
                .collect()
        });
        let runs = runs.into_iter().collect::<Result<Vec<_>, _>>()?;
        let hpa_cost = runs[0].autoscale.backend_seconds;
        for run in &runs {
            let a = &run.autoscale;
            let r = &run.result;
            writeln!(
                out,
                "| {} | {} | {:.0} | {:.2}× | {:.0} | {}/{} ({:.1} %) | {:.2} % | {} | {}/{} | {} |",
                sc.name,
                a.scaler,
                a.backend_seconds,
                a.backend_seconds / hpa_cost,
                r.p99_ms,
                a.slo_violation_windows,
                a.slo_windows,
                100.0 * f64::from(a.slo_violation_windows) / f64::from(a.slo_windows.max(1)),
                100.0 * a.slow_requests as f64 / r.requests.max(1) as f64,
                r.errors,
                a.scale_ups,
                a.scale_downs,
                a.peak_serving,
            )?;
            if let Some(dir) = &timelines {
                if !sc.name.contains(' ') {
                    write_timeline(dir, &sc.name, run)?;
                }
            }
        }
    }
    print!("{out}");
    Ok(())
}

fn write_timeline(dir: &Path, scenario: &str, run: &AutoscaleRun) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut w = csv::Writer::from_path(dir.join(format!(
        "{scenario}-{}.csv",
        run.autoscale.scaler.replace(':', "-")
    )))?;
    w.write_record([
        "t_s",
        "arrivals_rps",
        "serving",
        "provisioning",
        "desired",
        "planned_rps",
    ])?;
    for s in &run.autoscale.timeline {
        w.write_record([
            format!("{:.0}", s.t_s),
            format!("{:.1}", s.arrivals_rps),
            s.serving.to_string(),
            s.provisioning.to_string(),
            s.desired.to_string(),
            s.planned_rps.map_or(String::new(), |p| format!("{p:.1}")),
        ])?;
    }
    w.flush()
}
