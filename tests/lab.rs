//! A whole lab run against the real `fulcrum` binary, which Cargo builds for this test.

use fulcrum_lab::{run_lab, LabOptions};
use fulcrum_scenario::{BackendEvent, Load, Scenario, ScenarioBackend};

fn backend(name: &str, concurrency: u32, service_ms: f64, weight: u32) -> ScenarioBackend {
    ScenarioBackend {
        name: name.into(),
        concurrency,
        service_ms,
        service_jitter: 0.2,
        error_rate: 0.0,
        error_ms: 5.0,
        weight,
        events: Vec::new(),
    }
}

#[test]
fn tiny_scenario_against_the_real_proxy() {
    let mut scenario = Scenario {
        name: "tiny".into(),
        description: "two unequal backends".into(),
        seed: 5,
        duration_s: 3.0,
        warmup_s: 0.5,
        load: Load {
            rate_rps: 100.0,
            steps: Vec::new(),
            non_idempotent_fraction: 0.1,
            diurnal: None,
            bursts: Vec::new(),
        },
        backends: vec![backend("fast", 8, 5.0, 3), backend("slow", 2, 40.0, 1)],
        autoscale: None,
        slo: None,
    };
    // The slow backend refuses connections for a second: the proxy retries elsewhere.
    scenario.backends[1].events.push(BackendEvent {
        at_s: 1.5,
        until_s: 2.5,
        slowdown: 1.0,
        error_rate: None,
        down: true,
    });
    let mut opts = LabOptions::new(env!("CARGO_BIN_EXE_fulcrum"));
    opts.policies = vec![
        "round_robin".into(),
        "oracle".into(),
        "least_connections".into(),
    ];
    opts.progress = true;
    let report = run_lab(&scenario, &opts).expect("lab run");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());

    assert_eq!(report.mode, "lab");
    assert_eq!(report.scenario, "tiny");
    let policies: Vec<&str> = report.results.iter().map(|r| r.policy.as_str()).collect();
    assert_eq!(policies, ["round_robin", "least_connections"]);
    for r in &report.results {
        // About 100 rps over the 2.5 s after warm-up.
        assert!(
            (180..=320).contains(&r.requests),
            "{}: {}",
            r.policy,
            r.requests
        );
        // Only requests caught in flight when the backend went down may fail.
        assert!(r.error_rate < 0.05, "{}: {} errors", r.policy, r.errors);
        let attempts: u64 = r.backends.iter().map(|b| b.requests).sum();
        assert!(
            attempts >= r.requests - r.errors,
            "every answer names its backend"
        );
        assert!(
            r.backends.iter().all(|b| b.requests > 0),
            "{:?}",
            r.backends
        );
        assert!(
            r.p50_ms > 0.0 && r.p99_ms < 1000.0,
            "{}: {:?}",
            r.policy,
            r.p99_ms
        );
    }
    // Round robin keeps picking the refusing backend until it is ejected: retries show.
    assert!(report.results[0].retries > 0, "retries read from /metrics");
    // Least connections favours the fast backend more than round robin does.
    let share_fast = |i: usize| {
        let r = &report.results[i];
        r.backends[0].requests as f64 / r.requests as f64
    };
    assert!(
        share_fast(1) > share_fast(0),
        "{} vs {}",
        share_fast(1),
        share_fast(0)
    );
}
