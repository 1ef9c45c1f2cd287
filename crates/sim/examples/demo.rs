//! Simulates a heterogeneous pool with a slowdown and an outage under every baseline policy and
//! writes the JSON results and the Markdown/SVG report into the directory given as argument
//! (default `sim-report`).

use fulcrum_report::{write_json, write_report};
use fulcrum_scenario::{BackendEvent, Load, Scenario, ScenarioBackend};
use fulcrum_sim::{simulate_all, Policy, SimOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sim-report".into());
    let backends: Vec<ScenarioBackend> = [2u32, 4, 8, 16]
        .iter()
        .enumerate()
        .map(|(i, &c)| ScenarioBackend {
            name: format!("b{i}-c{c}"),
            concurrency: c,
            service_ms: 20.0,
            service_jitter: 0.3,
            error_rate: 0.001,
            error_ms: 2.0,
            weight: c,
            events: match i {
                2 => vec![BackendEvent {
                    at_s: 20.0,
                    until_s: 35.0,
                    slowdown: 4.0,
                    error_rate: None,
                    down: false,
                }],
                1 => vec![BackendEvent {
                    at_s: 40.0,
                    until_s: 45.0,
                    slowdown: 1.0,
                    error_rate: None,
                    down: true,
                }],
                _ => Vec::new(),
            },
        })
        .collect();
    let mut scenario = Scenario {
        name: "demo".into(),
        description: "2/4/8/16 slots at 80 % load; b2 slows 4x at 20-35 s; b1 is down at 40-45 s"
            .into(),
        seed: 1,
        duration_s: 60.0,
        warmup_s: 5.0,
        load: Load {
            rate_rps: 0.0,
            steps: Vec::new(),
            non_idempotent_fraction: 0.1,
            diurnal: None,
            bursts: Vec::new(),
        },
        backends,
        autoscale: None,
        slo: None,
    };
    scenario.load.rate_rps = 0.8 * scenario.capacity_rps_at(0.0);
    let report = simulate_all(&scenario, &Policy::BASELINES, &SimOptions::default())?;
    let dir = std::path::Path::new(&dir);
    for path in write_report(&report, dir)? {
        println!("wrote {}", path.display());
    }
    write_json(&report, &dir.join("report.json"))?;
    print!("{}", fulcrum_report::markdown(&report));
    Ok(())
}
