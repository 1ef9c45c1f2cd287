//! Runs every scenario of a directory (default `benches/scenarios/autoscale`) under each scaler
//! (`hpa`, `forecast`, `forecast:300`, `static` sized for the peak, and the two references
//! that read the scenario, `oracle` and `oracle-now`; `SCALERS=hpa,forecast` picks some) and
//! prints a Markdown comparison, then the issue's targets per scenario: backend-seconds, p99
//! latency, SLO-violation windows, slow and failed requests, scale events; then, for scenarios
//! with bursts, the violation windows of each run during and right after each burst. Each
//! scenario is measured twice: from its own `warmup_s` (the forecast still learning the cycle)
//! and from two diurnal periods on (once a season can have been found). With a second
//! argument, writes per scenario an SVG plot of the demand, the forecast scaler's plan and the
//! copies serving under each scaler into that directory, and with `TIMELINE_CSV=1` each run's
//! control steps as CSV. With `FORECAST_MODEL=models/forecast.onnx` the `forecast` scalers
//! run that forecast model (through ONNX Runtime) instead of the built-in forecaster, as a pool
//! with `forecast_model` does. With `RESTART_AT=S` (or `warmup`: at the end of each
//! scenario's warm-up) the proxy running the `forecast` scalers restarts once then, losing what
//! it learnt, or keeping its series as well with `RESTART_KEEPS_SERIES=1` (`history_file`).
//! With `PROXIES=N`, N proxies share the backends, each arrival reaching one of them at random
//! (as a Service spreads independent clients); each runs its own demand tracking on the
//! requests that reach it, and the `forecast` scalers follow the highest of their
//! recommendations, as the Kubernetes recipes do (`COMBINE=mean`: their mean, rounded up).
//! `PROXIES_ACTIVE=0:2,2400:3` runs the first 2 of them, then all 3 from 2,400 s (fulcrum's
//! own Deployment scaled out; a proxy that joins starts with nothing learnt, or with
//! `JOINING_READ_HISTORY=1` reads the pods' series back first, as with `history_prometheus`).
//!
//! ```sh
//! cargo run --release -p fulcrum-sim --example autoscale -- benches/scenarios/autoscale out/
//! TIMELINE_CSV=1 cargo run --release -p fulcrum-sim --example autoscale -- DIR out/
//! ```

use std::path::{Path, PathBuf};

use fulcrum_scenario::{load_scenario, Scenario};
use fulcrum_sim::{
    simulate_autoscaled, AutoscaleRun, Policy, ScalerKind, SimOptions, AUTOSCALE_TABLE_HEADER,
};

/// The HPA, the forecast with the proxy's defaults, the forecast with the HPA's 300 s
/// scale-down stabilisation, the static pool, and the two oracles (what knowing the future,
/// or only the present, exactly would do).
const SCALERS: [ScalerKind; 6] = [
    ScalerKind::Hpa,
    ScalerKind::Forecast(None, 0),
    ScalerKind::Forecast(Some(300.0), 0),
    ScalerKind::Static(None),
    ScalerKind::Oracle(true),
    ScalerKind::Oracle(false),
];

/// The scalers to run: every one of [`SCALERS`], or those named in `SCALERS=forecast,hpa`.
fn scalers() -> Result<Vec<ScalerKind>, String> {
    match std::env::var("SCALERS") {
        Ok(list) => list.split(',').map(str::parse).collect(),
        Err(_) => Ok(SCALERS.to_vec()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "benches/scenarios/autoscale".into()),
    );
    let timelines = args.next().map(PathBuf::from);
    if let Some(dir) = &timelines {
        std::fs::create_dir_all(dir)?;
    }
    let policy: Policy = std::env::var("POLICY")
        .unwrap_or_else(|_| "least_connections".into())
        .parse()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|x| x == "toml"));
    files.sort();
    let mut opts = SimOptions::default();
    if let Some(path) = std::env::var_os("FORECAST_MODEL") {
        opts.forecast_model = Some(fulcrum_sim::control::forecast_model_factory(path.into())?);
    }
    if let Ok(at) = std::env::var("RESTART_AT") {
        opts.forecast_restart = Some(fulcrum_sim::ForecastRestart {
            at_s: match at.as_str() {
                "warmup" => None,
                s => Some(s.parse().map_err(|e| format!("RESTART_AT={s:?}: {e}"))?),
            },
            keep_series: std::env::var_os("RESTART_KEEPS_SERIES").is_some_and(|v| v == "1"),
        });
    }
    if let Ok(n) = std::env::var("PROXIES") {
        opts.replicas = n.parse().map_err(|e| format!("PROXIES={n:?}: {e}"))?;
        opts.split = fulcrum_sim::ProxySplit::Random;
    }
    if let Ok(changes) = std::env::var("PROXIES_ACTIVE") {
        for change in changes.split(',') {
            let parsed = change
                .split_once(':')
                .and_then(|(t, n)| Some((t.trim().parse().ok()?, n.trim().parse().ok()?)));
            opts.active_proxies.push(parsed.ok_or_else(|| {
                format!("PROXIES_ACTIVE={changes:?}: FROM_S:COUNT pairs, comma-separated")
            })?);
        }
    }
    opts.joining_proxies_read_history =
        std::env::var_os("JOINING_READ_HISTORY").is_some_and(|v| v == "1");
    if let Ok(c) = std::env::var("COMBINE") {
        opts.combine = c.parse()?;
    }
    let kinds = scalers()?;
    let mut out = String::new();
    let mut targets = String::from(TARGETS_HEADER);
    let mut bursts = String::new();
    out.push_str(AUTOSCALE_TABLE_HEADER);
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
    if std::env::var_os("STEADY").is_none_or(|v| v != "0") {
        scenarios.extend(steady);
    }
    for sc in &scenarios {
        let runs: Vec<Result<AutoscaleRun, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = kinds
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
        targets.push_str(&targets_rows(&sc.name, &runs));
        if !sc.name.contains(' ') {
            bursts.push_str(&burst_rows(sc, &runs));
        }
        let hpa_cost = runs
            .iter()
            .find(|r| r.autoscale.scaler == "hpa")
            .map_or(f64::NAN, |r| r.autoscale.backend_seconds);
        for run in &runs {
            out.push_str(&run.markdown_row(&sc.name, hpa_cost));
            if let Some(dir) = &timelines {
                if !sc.name.contains(' ') && std::env::var_os("TIMELINE_CSV").is_some() {
                    write_timeline(dir, &sc.name, run)?;
                }
            }
        }
        if let Some(dir) = &timelines {
            if !sc.name.contains(' ') {
                std::fs::write(dir.join(format!("{}.svg", sc.name)), plot(sc, &runs))?;
            }
        }
    }
    print!("{out}");
    if targets != TARGETS_HEADER {
        print!("\n{targets}");
    }
    if !bursts.is_empty() {
        print!(
            "\n| burst | from | to | rate without it at its start (× `rate_rps`) × its highest factor | {} |\n|---|---|---|---|{}\n{bursts}",
            kinds
                .iter()
                .map(|k| format!("{k} violation windows"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(kinds.len())
        );
    }
    Ok(())
}

const TARGETS_HEADER: &str = "| scenario | forecast ≤ ½ HPA's violation windows | ≤ 1.1× HPA's backend-s | ≤ 0.75× static's backend-s | ≤ static's violation windows | scale events hpa / forecast |\n|---|---|---|---|---|---|\n";

/// The issue's targets for each forecast scaler on one scenario, against the HPA and the
/// static pool (rows only when both ran).
fn targets_rows(scenario: &str, runs: &[AutoscaleRun]) -> String {
    let of = |name: &str| {
        runs.iter()
            .find(|r| r.autoscale.scaler == name)
            .map(|r| &r.autoscale)
    };
    let (Some(h), Some(s)) = (of("hpa"), of("static")) else {
        return String::new();
    };
    let verdict = |ok: bool, detail: String| {
        if ok {
            format!("yes ({detail})")
        } else {
            format!("**no** ({detail})")
        }
    };
    let mut out = String::new();
    for f in runs
        .iter()
        .map(|r| &r.autoscale)
        .filter(|a| a.scaler.starts_with("forecast"))
    {
        let (fv, hv, sv) = (
            f.slo_violation_windows,
            h.slo_violation_windows,
            s.slo_violation_windows,
        );
        let vs_hpa = f.backend_seconds / h.backend_seconds;
        let vs_static = f.backend_seconds / s.backend_seconds;
        let name = if f.scaler == "forecast" {
            scenario.to_string()
        } else {
            format!("{scenario}, {}", f.scaler)
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} / {} |\n",
            verdict(2 * fv <= hv, format!("{fv} vs {hv}")),
            verdict(vs_hpa <= 1.1, format!("{vs_hpa:.2}×")),
            verdict(vs_static <= 0.75, format!("{vs_static:.2}×")),
            verdict(fv <= sv, format!("{fv} vs {sv}")),
            h.scale_ups + h.scale_downs,
            f.scale_ups + f.scale_downs,
        ));
    }
    out
}

/// For a scenario with bursts: each burst episode (bursts that overlap or touch, merged) and
/// the SLO-violation windows of each run that start within it or in the minute after it (when
/// its backlog drains), then the windows outside every episode.
fn burst_rows(sc: &Scenario, runs: &[AutoscaleRun]) -> String {
    let mut episodes: Vec<(f64, f64)> = Vec::new();
    for b in &sc.load.bursts {
        let (from, to) = (b.at_s, b.at_s + b.duration_s);
        match episodes.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => episodes.push((from, to)),
        }
    }
    episodes.retain(|&(_, to)| to + 60.0 > sc.warmup_s);
    if episodes.is_empty() {
        return String::new();
    }
    let window_s = sc.slo.map_or(10.0, |s| s.window_s);
    let within = |t: f64, &(from, to): &(f64, f64)| t + window_s > from && t < to + 60.0;
    let mut quiet = sc.load.clone();
    quiet.bursts.clear();
    let mut out = String::new();
    for e in &episodes {
        let factor = (0..=((e.1 - e.0) as usize))
            .map(|k| e.0 + k as f64)
            .map(|t| sc.load.rate_at(t) / quiet.rate_at(t))
            .fold(0.0, f64::max);
        let counts: Vec<String> = runs
            .iter()
            .map(|r| {
                let n = r.autoscale.violated_at_s.iter();
                n.filter(|&&t| within(t, e)).count().to_string()
            })
            .collect();
        out.push_str(&format!(
            "| {} | {:.0} s | {:.0} s | {:.2} × up to {:.2} | {} |\n",
            sc.name,
            e.0,
            e.1,
            quiet.rate_at(e.0) / sc.load.rate_rps,
            factor,
            counts.join(" | ")
        ));
    }
    let outside: Vec<String> = runs
        .iter()
        .map(|r| {
            r.autoscale
                .violated_at_s
                .iter()
                .filter(|&&t| !episodes.iter().any(|e| within(t, e)))
                .count()
                .to_string()
        })
        .collect();
    out.push_str(&format!(
        "| {} | outside bursts | | | {} |\n",
        sc.name,
        outside.join(" | ")
    ));
    out
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

/// Demand (in copies needed at the target utilisation), the forecast's plan and the copies
/// serving under each scaler over the whole run; the warm-up is shaded.
fn plot(sc: &Scenario, runs: &[AutoscaleRun]) -> String {
    let (w, h, left, right, top, bottom) = (960.0, 360.0, 50.0, 150.0, 30.0, 40.0);
    let a = sc.autoscale.as_ref().expect("autoscale scenarios");
    let copy = &sc.backends[a.first];
    let per_copy =
        f64::from(copy.concurrency) * 1000.0 / copy.mean_service_ms() * a.target_utilization;
    let needed: Vec<(f64, f64)> = (0..=sc.duration_s as usize)
        .step_by(5)
        .map(|t| (t as f64, sc.load.rate_at(t as f64) / per_copy))
        .collect();
    let planned: Vec<(f64, f64)> = runs
        .iter()
        .find(|r| r.autoscale.scaler == "forecast")
        .map(|r| {
            r.autoscale
                .timeline
                .iter()
                .filter_map(|s| s.planned_rps.map(|p| (s.t_s, p / per_copy)))
                .collect()
        })
        .unwrap_or_default();
    let top_y = runs
        .iter()
        .flat_map(|r| r.autoscale.timeline.iter().map(|s| f64::from(s.serving)))
        .chain(needed.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        .ceil()
        + 1.0;
    let x = |t: f64| left + t / sc.duration_s * (w - left - right);
    let y = |v: f64| top + (1.0 - v.min(top_y) / top_y) * (h - top - bottom);
    let path = |pts: &[(f64, f64)], step: bool| {
        let mut d = String::new();
        let mut prev: Option<f64> = None;
        for &(t, v) in pts {
            match prev {
                None => d.push_str(&format!("M{:.1},{:.1}", x(t), y(v))),
                Some(p) if step => d.push_str(&format!(
                    " L{:.1},{:.1} L{:.1},{:.1}",
                    x(t),
                    y(p),
                    x(t),
                    y(v)
                )),
                Some(_) => d.push_str(&format!(" L{:.1},{:.1}", x(t), y(v))),
            }
            prev = Some(v);
        }
        d
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="white"/>
<rect x="{left}" y="{top}" width="{:.1}" height="{:.1}" fill="#eee"/>
<text x="{left}" y="18">{}: copies serving (at {:.0} rps per copy = {:.0} % of capacity); grey: warm-up</text>
"##,
        x(sc.warmup_s) - left,
        h - top - bottom,
        sc.name,
        per_copy,
        a.target_utilization * 100.0,
    );
    for k in 0..=4 {
        let v = top_y * f64::from(k) / 4.0;
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ccc\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            w - right,
            y(v),
            y(v),
            left - 4.0,
            y(v) + 4.0
        ));
    }
    for k in 0..=6 {
        let t = sc.duration_s * f64::from(k) / 6.0;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0} s</text>\n",
            x(t),
            h - bottom + 16.0
        ));
    }
    let mut series: Vec<(String, &str, String, &str)> = vec![
        ("demand / copy".into(), "#888", path(&needed, false), "4,3"),
        ("forecast plan".into(), "#9cf", path(&planned, false), "2,2"),
    ];
    for r in runs
        .iter()
        .filter(|r| !r.autoscale.scaler.starts_with("oracle"))
    {
        let colour = match r.autoscale.scaler.as_str() {
            "hpa" => "#d62728",
            "forecast" => "#1f5fbf",
            s if s.starts_with("forecast:") => "#9467bd",
            _ => "#2ca02c",
        };
        let pts: Vec<(f64, f64)> = r
            .autoscale
            .timeline
            .iter()
            .map(|s| (s.t_s, f64::from(s.serving)))
            .collect();
        series.push((
            format!("{} serving", r.autoscale.scaler),
            colour,
            path(&pts, true),
            "",
        ));
    }
    for (i, (name, colour, d, dash)) in series.iter().enumerate() {
        svg.push_str(&format!(
            "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" stroke-dasharray=\"{dash}\"/>\n"
        ));
        let ly = top + 16.0 * i as f64 + 8.0;
        svg.push_str(&format!(
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/><text x=\"{:.1}\" y=\"{:.1}\">{name}</text>\n",
            w - right + 10.0,
            w - right + 30.0,
            w - right + 34.0,
            ly + 4.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
