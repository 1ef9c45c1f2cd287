//! `fulcrum forecast` through the real binary: rolling-origin forecasts of a CSV series, their
//! accuracy against the last value, p90 coverage, the feature dump, and input errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::fulcrum_bin;

fn forecast(args: &[&str]) -> Output {
    Command::new(fulcrum_bin())
        .arg("forecast")
        .args(args)
        .output()
        .unwrap()
}

/// A compressed 15-minute "day" at 10 s steps, four days long, with deterministic noise.
fn day_series() -> Vec<(f64, f64)> {
    let mut state = 12345u64;
    (0..360)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 40.0;
            let day = (2.0 * std::f64::consts::PI * i as f64 / 90.0).sin();
            (i as f64 * 10.0, 600.0 + 300.0 * day + noise)
        })
        .collect()
}

fn write_series(path: &Path, rows: &[(f64, f64)]) {
    let mut text = String::from("t_s,rps\n");
    for (t, r) in rows {
        text.push_str(&format!("{t},{r:.3}\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn read_rows(path: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("t_s,horizon_s,p50,p90"));
    lines
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect()
}

#[test]
fn rolling_forecasts_beat_the_last_value_and_use_only_the_past() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.csv"), dir.path().join("out.csv"));
    let series = day_series();
    write_series(&input, &series);
    let run = forecast(&[
        "--input",
        input.to_str().unwrap(),
        "--horizon-s",
        "300",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let rows = read_rows(&out);
    // One row per input row after the warm-up.
    assert!(
        rows.len() >= 300 && rows.len() < series.len(),
        "{}",
        rows.len()
    );
    assert_eq!(rows.last().unwrap()[0], series.last().unwrap().0);
    let value_at = |t: f64| series.iter().find(|(ts, _)| *ts == t).map(|r| r.1);
    let (mut ours, mut last, mut covered, mut n) = (0.0, 0.0, 0, 0);
    for r in rows.iter().filter(|r| r[0] >= 1800.0) {
        assert_eq!(r[1], 300.0);
        assert!(r[3] >= r[2] && r[2] >= 0.0, "{r:?}");
        let Some(actual) = value_at(r[0] + 300.0) else {
            continue;
        };
        ours += (r[2] - actual).abs();
        last += (value_at(r[0]).unwrap() - actual).abs();
        covered += usize::from(actual <= r[3]);
        n += 1;
    }
    assert!(n > 100);
    assert!(
        ours < 0.5 * last,
        "forecast MAE {ours} vs last value {last}"
    );
    let coverage = covered as f64 / n as f64;
    assert!((0.75..=0.99).contains(&coverage), "p90 coverage {coverage}");

    // A forecast made at t is the same whether or not later rows exist.
    let (cut_in, cut_out) = (dir.path().join("cut.csv"), dir.path().join("cut-out.csv"));
    write_series(&cut_in, &series[..250]);
    let run = forecast(&[
        "--input",
        cut_in.to_str().unwrap(),
        "--output",
        cut_out.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    let cut = read_rows(&cut_out);
    assert_eq!(&rows[..cut.len()], &cut[..]);
}

#[test]
fn dumps_the_feature_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let (input, features) = (dir.path().join("in.csv"), dir.path().join("f.csv"));
    write_series(&input, &day_series()[..200]);
    let run = forecast(&[
        "--input",
        input.to_str().unwrap(),
        "--horizon-s",
        "60",
        "--season-s",
        "900",
        "--dump-features",
        features.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&features).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[..3], ["t_s", "horizon_s", "w31"]);
    assert_eq!(header.last(), Some(&"target_ratio"));
    assert_eq!(header.len(), 2 + 41 + 1);
    let rows: Vec<&str> = lines.collect();
    // From the 32nd row on, one row per origin.
    assert_eq!(rows.len(), 200 - 31);
    assert!(rows.iter().all(|r| r.split(',').count() == header.len()));
}

#[test]
fn bad_input_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.csv");
    let out = dir.path().join("out.csv");
    std::fs::write(&input, "t_s,rps\n0,10\n10,11\n25,12\n").unwrap();
    let run = forecast(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(65));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("bad.csv:4:") && err.contains("fixed step"),
        "{err}"
    );
    assert!(!out.exists());

    std::fs::write(&input, "0,10\n10,ten\n").unwrap();
    let run = forecast(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&run.stderr).contains("bad.csv:2: rps must be a finite number"));

    let run = forecast(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--horizon-s",
        "0",
    ]);
    assert_eq!(run.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--horizon-s"));

    let missing = dir.path().join("missing.csv");
    let run = forecast(&[
        "--input",
        missing.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(66));
}

/// `fulcrum sim --scaler`: every policy under every scaler, with what scaling cost and bought
/// in the JSON; a scenario without `[autoscale]` is refused.
#[test]
fn sim_runs_scalers_and_reports_their_cost() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("day.toml");
    std::fs::write(
        &scenario,
        r#"
name = "day"
duration_s = 600
warmup_s = 60

[load]
rate_rps = 300
diurnal = { period_s = 300, amplitude = 0.5 }

[[backends]]
name = "web"
count = 2
concurrency = 4
service_ms = 20

[autoscale]
backend = "web"
max_backends = 6
provision_s = 30

[slo]
p99_ms = 100
"#,
    )
    .unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(fulcrum_bin())
        .args(["sim", "--scenario"])
        .arg(&scenario)
        .args(["--policy", "least_connections"])
        .args([
            "--scaler", "reactive", "--scaler", "forecast", "--scaler", "none",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| day (least_connections) | forecast |"),
        "{stdout}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    let scalers: Vec<&str> = results
        .iter()
        .map(|r| r["scaler"].as_str().unwrap())
        .collect();
    assert_eq!(scalers, ["hpa", "forecast", "static:2"]);
    for r in results {
        assert_eq!(r["policy"], "least_connections");
        // 540 measured seconds: the fixed pool of 2 costs exactly 1,080 backend-seconds.
        assert!(r["backend_seconds"].as_f64().unwrap() >= 540.0, "{r}");
        assert_eq!(r["slo_windows"], 54, "{r}");
        assert!(r["slo_violation_windows"].as_u64().unwrap() <= 54);
    }
    assert!((results[2]["backend_seconds"].as_f64().unwrap() - 1080.0).abs() < 1e-6);

    // The forecast scaler with the shipped forecast model; a model of another kind is refused
    // before any run, naming it.
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let with_model = |model: &str| {
        Command::new(fulcrum_bin())
            .args(["sim", "--scenario"])
            .arg(&scenario)
            .args(["--scaler", "forecast", "--forecast-model"])
            .arg(models.join(model))
            .output()
            .unwrap()
    };
    let out = with_model("forecast.onnx");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("| day (least_connections) | forecast |"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = with_model("balancer.onnx");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("balancer.onnx"), "{stderr}");

    let plain = dir.path().join("plain.toml");
    let text = std::fs::read_to_string(&scenario).unwrap();
    let cut = text.find("[autoscale]").unwrap();
    std::fs::write(&plain, &text[..cut]).unwrap();
    let out = Command::new(fulcrum_bin())
        .args(["sim", "--scenario"])
        .arg(&plain)
        .args(["--scaler", "hpa"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an [autoscale] table"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
