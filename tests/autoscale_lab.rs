//! `fulcrum lab --scaler reactive` against the real binary: a load that overloads the one
//! backend it starts with, then falls. Kubernetes' HPA rule on the backend's measured
//! utilisation adds a second copy (a real server, taking traffic only `provision_s` after the
//! decision, through a configuration reload) and, once the stabilisation window has passed
//! after the fall, removes it again (drained, then stopped). The proxy's pool is read back
//! after every change; the backend-seconds are checked against the recorded decisions and stop.

use std::process::Command;

/// Scenario seconds per wall second: the 1,000 s run takes 10 s.
const TIME_SCALE: f64 = 0.01;

/// One copy (2 slots × 10 ms: 200 rps) at 300 rps until 400 s, then 20 rps. Provisioning
/// takes 100 s; the HPA may run two copies at most.
const SCENARIO: &str = r#"
name = "scale-up-down"
seed = 7
duration_s = 1000
warmup_s = 0

[load]
rate_rps = 300
steps = [[400, 20]]

[[backends]]
name = "web"
count = 1
concurrency = 2
service_ms = 10
service_jitter = 0.1

[autoscale]
backend = "web"
min_backends = 1
max_backends = 2
provision_s = 100
target_utilization = 0.7

[slo]
p99_ms = 1000
window_s = 50
"#;

fn names(change: &serde_json::Value) -> Vec<&str> {
    change["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect()
}

#[test]
fn reactive_scaler_adds_a_copy_under_overload_and_drains_it_after_the_fall() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("scale-up-down.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .arg("lab")
        .arg("--scenario")
        .arg(&scenario)
        .args(["--scaler", "reactive", "--quiet"])
        .args(["--time-scale", &TIME_SCALE.to_string()])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fulcrum lab failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["mode"], "lab");
    let run = &doc["results"][0];
    assert_eq!(run["scaler"], "hpa");
    assert_eq!(run["policy"], "least_connections");

    // The pool as the proxy listed it: the initial copy (named as written, `web`), both, the initial copy again.
    let membership = run["membership"].as_array().unwrap();
    let pools: Vec<Vec<&str>> = membership.iter().map(names).collect();
    assert_eq!(
        pools,
        [vec!["web"], vec!["web", "web-2"], vec!["web"]],
        "{membership:?}"
    );
    assert_eq!(run["scale_ups"], 1);
    assert_eq!(run["scale_downs"], 1);
    assert_eq!(run["peak_serving"], 2);

    // The copy took traffic only once provisioned: `provision_s` after the HPA asked for it.
    let timeline = run["timeline"].as_array().unwrap();
    let t = |v: &serde_json::Value| v["t_s"].as_f64().unwrap();
    let decided = timeline
        .iter()
        .find(|s| s["desired"] == 2)
        .map(t)
        .expect("a step that asked for two copies");
    assert!(decided < 100.0, "overload seen late: at {decided} s");
    let added = t(&membership[1]);
    assert!(
        (added - (decided + 100.0)).abs() < 10.0,
        "decided at {decided} s, added at {added} s"
    );
    // Removed once every recommendation of the last 300 s asked for one copy: the load fell
    // at 400 s, so not before 700 s.
    let removed = t(&membership[2]);
    assert!((700.0..800.0).contains(&removed), "removed at {removed} s");
    let web2 = run["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "web-2")
        .unwrap();
    assert!(web2["requests"].as_u64().unwrap() > 100, "{web2}");

    // web-2 stopped once drained, after its removal; the drain is wall-clock work (the reload,
    // then a quiet spell), so only its order and a loose bound are fixed here.
    let stopped = run["stopped"].as_array().unwrap();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0]["backend"], "web-2");
    let stop = t(&stopped[0]);
    assert!(
        stop >= removed && stop < removed + 100.0,
        "removed at {removed} s, stopped at {stop} s"
    );

    // Backend-seconds: web the whole 1,000 s, web-2 from the decision until it stopped.
    let expected = 1000.0 + (stop - decided);
    let measured = run["backend_seconds"].as_f64().unwrap();
    assert!(
        (measured - expected).abs() < 1.0,
        "backend-seconds {measured}, expected {expected}"
    );
    assert_eq!(run["errors"], 0);
}

/// A cycle of 200 s around 500 rps over one to three copies; the proxy is upgraded at 700 s,
/// once the forecast has found the cycle.
const CYCLE: &str = r#"
name = "upgrade"
seed = 11
duration_s = 1100
warmup_s = 0

[load]
rate_rps = 500
diurnal = { period_s = 200, amplitude = 0.8 }

[[backends]]
name = "web"
count = 1
concurrency = 4
service_ms = 10
service_jitter = 0.1

[autoscale]
backend = "web"
min_backends = 1
max_backends = 3
provision_s = 30
target_utilization = 0.7
"#;

/// `fulcrum lab --scaler forecast --upgrade-at 700`, with or without `--history-file`: the run.
fn upgraded_run(dir: &std::path::Path, history: bool) -> serde_json::Value {
    let scenario = dir.join("upgrade.toml");
    std::fs::write(&scenario, CYCLE).unwrap();
    let json = dir.join(format!("upgrade-{history}.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fulcrum"));
    cmd.arg("lab")
        .arg("--scenario")
        .arg(&scenario)
        .args(["--scaler", "forecast", "--quiet", "--upgrade-at", "700"])
        .args(["--time-scale", "0.03"])
        .arg("--json")
        .arg(&json);
    if history {
        cmd.arg("--history-file");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "fulcrum lab failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    doc["results"][0].clone()
}

/// An upgrade in the middle of an autoscaled run loses no request; with a history file the new
/// process forecasts with the season and the series the old one had, without one it starts
/// from nothing.
#[test]
fn an_upgrade_under_the_forecast_scaler_keeps_the_season_only_with_a_history_file() {
    let dir = tempfile::tempdir().unwrap();
    for history in [true, false] {
        let run = upgraded_run(dir.path(), history);
        // The load generator does not retry a request its reused connection lost as the old
        // process closed it idle (browsers and HTTP libraries do): a handful at most.
        let errors = run["errors"].as_u64().unwrap();
        assert!(errors <= 5, "history {history}: {errors} failed requests");
        let at = run["upgraded_at_s"].as_f64().unwrap();
        assert!((700.0..800.0).contains(&at), "upgraded at {at}");
        let steps: Vec<&serde_json::Value> = run["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| !s["forecast"].is_null())
            .collect();
        // The steps read from the old process (the step of the upgrade reads the new one).
        let before: Vec<_> = steps
            .iter()
            .filter(|s| s["t_s"].as_f64().unwrap() + 10.0 < at)
            .collect();
        let last = before.last().unwrap();
        assert!(
            before[before.len() - 5..]
                .iter()
                .any(|s| s["forecast"]["season_s"].as_f64().is_some()),
            "the season is found before the upgrade: {last}"
        );
        let held_before = last["forecast"]["series_steps"].as_u64().unwrap();
        let after: Vec<_> = steps
            .iter()
            // Past the hand-over, while both processes answer (2 s: 67 scenario seconds).
            .filter(|s| s["t_s"].as_f64().unwrap() > at + 120.0)
            .collect();
        assert!(after.len() >= 10, "{} steps after the upgrade", after.len());
        let seasonal = after
            .iter()
            .filter(|s| s["forecast"]["season_s"].as_f64().is_some())
            .count();
        for s in &after {
            let held = s["forecast"]["series_steps"].as_u64().unwrap();
            if history {
                assert!(held >= held_before, "{held} steps held: {s}");
            } else {
                assert!(held < held_before, "{held} steps held: {s}");
            }
        }
        if history {
            assert!(
                seasonal * 10 >= after.len() * 8,
                "{seasonal} of {} steps with a season",
                after.len()
            );
        } else {
            // Two cycles (400 s) must be counted again: not before the end.
            assert_eq!(seasonal, 0);
        }
    }
}
