//! Scenarios: parsing, validation, expansion, the capacity oracle and the published suite.

use std::path::{Path, PathBuf};

use fulcrum_scenario::{
    load_scenario, parse_scenario, BackendEvent, BackendState, Diagnostic, Diagnostics, Load,
    Scenario, ScenarioBackend, Severity,
};

const EXAMPLE: &str = r#"
name = "one-slow-backend"
description = "One of four equal backends turns 8x slower for 30 s."
seed = 42
duration_s = 120
warmup_s = 10                    # excluded from the results

[load]
rate_rps = 600                   # Poisson arrivals at this mean rate
steps = [[60, 900]]              # optional: [at_s, rate_rps] changes over time
non_idempotent_fraction = 0.3

[[backends]]
name = "b"
count = 4
concurrency = 4
service_ms = 5.0
service_jitter = 0.5
error_rate = 0.0
error_ms = 0.5
weight = 1

[[backends.events]]
at_s = 40
until_s = 70
only = ["b-2"]
slowdown = 8.0
error_rate = 0.3
down = false
"#;

/// A valid scenario body after `name`/`duration_s`, for small variations.
const MINIMAL: &str = r#"
name = "t"
duration_s = 100

[load]
rate_rps = 100

[[backends]]
name = "b"
concurrency = 4
service_ms = 10
"#;

fn errors(src: &str) -> Diagnostics {
    match parse_scenario(src, "test.toml") {
        Ok((s, _)) => panic!("expected errors, parsed {s:?}"),
        Err(d) => d,
    }
}

fn single_error(src: &str) -> Diagnostic {
    let d = errors(src);
    assert_eq!(d.errors.len(), 1, "{d}");
    d.errors.into_iter().next().unwrap()
}

fn parse_ok(src: &str) -> Scenario {
    match parse_scenario(src, "test.toml") {
        Ok((s, warnings)) => {
            assert!(warnings.is_empty(), "{warnings:?}");
            s
        }
        Err(d) => panic!("{d}"),
    }
}

fn backend(name: &str, events: Vec<BackendEvent>) -> ScenarioBackend {
    ScenarioBackend {
        name: name.into(),
        concurrency: 4,
        service_ms: 5.0,
        service_jitter: 0.5,
        error_rate: 0.0,
        error_ms: 0.5,
        weight: 1,
        events,
    }
}

#[test]
fn example_parses_to_expected_values() {
    let (s, warnings) = parse_scenario(EXAMPLE, "example.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let slow = BackendEvent {
        at_s: 40.0,
        until_s: 70.0,
        slowdown: 8.0,
        error_rate: Some(0.3),
        down: false,
    };
    let expected = Scenario {
        name: "one-slow-backend".into(),
        description: "One of four equal backends turns 8x slower for 30 s.".into(),
        seed: 42,
        duration_s: 120.0,
        warmup_s: 10.0,
        load: Load {
            rate_rps: 600.0,
            steps: vec![(60.0, 900.0)],
            non_idempotent_fraction: 0.3,
            diurnal: None,
            bursts: Vec::new(),
        },
        backends: vec![
            backend("b-1", vec![]),
            backend("b-2", vec![slow]),
            backend("b-3", vec![]),
            backend("b-4", vec![]),
        ],
        autoscale: None,
        slo: None,
    };
    assert_eq!(s, expected);
}

#[test]
fn defaults_apply() {
    let s = parse_ok(MINIMAL);
    assert_eq!(s.description, "");
    assert_eq!(s.seed, 1);
    assert_eq!(s.warmup_s, 0.0);
    assert!(s.load.steps.is_empty());
    assert_eq!(s.load.non_idempotent_fraction, 0.0);
    assert_eq!(
        s.backends,
        vec![ScenarioBackend {
            name: "b".into(),
            concurrency: 4,
            service_ms: 10.0,
            service_jitter: 0.0,
            error_rate: 0.0,
            error_ms: 0.5,
            weight: 1,
            events: vec![],
        }]
    );
}

#[test]
fn events_default_and_copy_to_every_backend_sorted() {
    let src = format!(
        "{MINIMAL}count = 2\n\
         [[backends.events]]\nat_s = 50\ndown = true\n\
         [[backends.events]]\nat_s = 10\nuntil_s = 20\nonly = [\"b-2\"]\n"
    );
    let s = parse_ok(&src);
    let down = BackendEvent {
        at_s: 50.0,
        until_s: 100.0,
        slowdown: 1.0,
        error_rate: None,
        down: true,
    };
    let early = BackendEvent {
        at_s: 10.0,
        until_s: 20.0,
        slowdown: 1.0,
        error_rate: None,
        down: false,
    };
    assert_eq!(s.backends[0].name, "b-1");
    assert_eq!(s.backends[0].events, vec![down.clone()]);
    assert_eq!(s.backends[1].name, "b-2");
    assert_eq!(s.backends[1].events, vec![early, down]);
}

#[test]
fn reports_every_mistake_with_path_and_line() {
    let src = r#"name = "broken"
duration_s = 120

[load]
rate_rps = 500
steps = [[60, 900], [30, 700]]

[[backends]]
name = "b"
count = 3
concurrency = 4
service_ms = -5
servce_jitter = 0.3
error_rate = 1.5

[[backends.events]]
at_s = 40
until_s = 40
only = ["b-4", "b_2"]
"#;
    let d = errors(src);
    let summary: Vec<(&str, usize)> = d
        .errors
        .iter()
        .map(|e| (e.key_path.as_str(), e.line))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("load.steps[1]", 6),
            ("backends[0].service_ms", 12),
            ("backends[0].servce_jitter", 13),
            ("backends[0].error_rate", 14),
            ("backends[0].events[0].until_s", 18),
            ("backends[0].events[0].only[0]", 19),
            ("backends[0].events[0].only[1]", 19),
        ],
        "{d}"
    );
    let msg = |path: &str| {
        d.errors
            .iter()
            .find(|e| e.key_path == path)
            .map(|e| e.message.clone())
            .unwrap()
    };
    assert!(msg("load.steps[1]").contains("strictly increasing"), "{d}");
    assert!(msg("load.steps[1]").contains("30"), "{d}");
    assert!(
        msg("backends[0].service_ms").contains("must be > 0, got -5"),
        "{d}"
    );
    assert!(
        msg("backends[0].servce_jitter").contains("did you mean `service_jitter`?"),
        "{d}"
    );
    assert!(
        msg("backends[0].error_rate").contains("between 0 and 1, got 1.5"),
        "{d}"
    );
    assert!(
        msg("backends[0].events[0].until_s").contains("at_s (40) must be less than until_s (40)"),
        "{d}"
    );
    assert!(
        msg("backends[0].events[0].only[0]").contains("\"b-4\""),
        "{d}"
    );
    assert!(
        msg("backends[0].events[0].only[0]").contains("b-1 .. b-3"),
        "{d}"
    );
    assert!(
        msg("backends[0].events[0].only[1]").contains("did you mean \"b-2\"?"),
        "{d}"
    );
    let first = d.errors[0].to_string();
    assert!(
        first.starts_with("test.toml:6:22: error: load.steps[1]: "),
        "{first}"
    );
}

#[test]
fn missing_required_keys() {
    let d = errors("[[backends]]\nname = \"b\"\n");
    let paths: Vec<&str> = d.errors.iter().map(|e| e.key_path.as_str()).collect();
    for p in [
        "name",
        "duration_s",
        "load.rate_rps",
        "backends[0].concurrency",
        "backends[0].service_ms",
    ] {
        assert!(paths.contains(&p), "{p} missing from {d}");
    }
    let d = errors(&MINIMAL.replace("[[backends]]", "[[backnds]]"));
    let paths: Vec<&str> = d.errors.iter().map(|e| e.key_path.as_str()).collect();
    assert_eq!(paths, vec!["backends", "backnds"], "{d}");
    assert!(
        d.errors[1].message.contains("did you mean `backends`?"),
        "{d}"
    );
    let d = errors(&format!("{MINIMAL}[[backends.events]]\nslowdown = 2\n"));
    assert_eq!(d.errors.len(), 1, "{d}");
    assert_eq!(d.errors[0].key_path, "backends[0].events[0].at_s");
}

#[test]
fn no_backends_is_an_error() {
    let src = "name = \"t\"\nduration_s = 10\n[load]\nrate_rps = 1\n";
    let e = single_error(src);
    assert_eq!(e.key_path, "backends");
    assert!(e.message.contains("at least one backend"), "{e}");
}

#[test]
fn range_checks() {
    let cases: &[(&str, &str, &str)] = &[
        ("duration_s = 100", "duration_s = 0", "duration_s"),
        (
            "duration_s = 100",
            "duration_s = 100\nwarmup_s = 100",
            "warmup_s",
        ),
        (
            "duration_s = 100",
            "duration_s = 100\nwarmup_s = -1",
            "warmup_s",
        ),
        ("rate_rps = 100", "rate_rps = 0", "load.rate_rps"),
        ("rate_rps = 100", "rate_rps = inf", "load.rate_rps"),
        ("rate_rps = 100", "rate_rps = nan", "load.rate_rps"),
        (
            "rate_rps = 100",
            "rate_rps = 100\nsteps = [[100, 5]]",
            "load.steps[0]",
        ),
        (
            "rate_rps = 100",
            "rate_rps = 100\nsteps = [[-1, 5]]",
            "load.steps[0]",
        ),
        (
            "rate_rps = 100",
            "rate_rps = 100\nsteps = [[10, 0]]",
            "load.steps[0]",
        ),
        (
            "rate_rps = 100",
            "rate_rps = 100\nsteps = [[10]]",
            "load.steps[0]",
        ),
        (
            "rate_rps = 100",
            "rate_rps = 100\nsteps = [10, 20]",
            "load.steps",
        ),
        (
            "rate_rps = 100",
            "rate_rps = 100\nnon_idempotent_fraction = 1.1",
            "load.non_idempotent_fraction",
        ),
        (
            "concurrency = 4",
            "concurrency = 0",
            "backends[0].concurrency",
        ),
        (
            "concurrency = 4",
            "concurrency = 10001",
            "backends[0].concurrency",
        ),
        (
            "concurrency = 4",
            "concurrency = 4.5",
            "backends[0].concurrency",
        ),
        (
            "service_ms = 10",
            "service_ms = 0",
            "backends[0].service_ms",
        ),
        (
            "service_ms = 10",
            "service_ms = \"10\"",
            "backends[0].service_ms",
        ),
        (
            "service_ms = 10",
            "service_ms = 10\nservice_jitter = 3.5",
            "backends[0].service_jitter",
        ),
        (
            "service_ms = 10",
            "service_ms = 10\nerror_ms = -0.1",
            "backends[0].error_ms",
        ),
        (
            "service_ms = 10",
            "service_ms = 10\nweight = 0",
            "backends[0].weight",
        ),
        (
            "service_ms = 10",
            "service_ms = 10\ncount = 1001",
            "backends[0].count",
        ),
        ("name = \"b\"", "name = \"b 1\"", "backends[0].name"),
        ("name = \"t\"", "name = \"a/b\"", "name"),
        ("name = \"t\"", "name = \"t\"\nseed = -1", "seed"),
    ];
    for (from, to, path) in cases {
        let src = MINIMAL.replacen(from, to, 1);
        let e = single_error(&src);
        assert_eq!(e.key_path, *path, "{to}: {e}");
        assert!(e.line > 0, "{e}");
    }
    let event = |body: &str| format!("{MINIMAL}[[backends.events]]\n{body}\n");
    for (body, path) in [
        ("at_s = 101", "backends[0].events[0].at_s"),
        ("at_s = 10\nuntil_s = 101", "backends[0].events[0].until_s"),
        ("at_s = 100", "backends[0].events[0].at_s"),
        ("at_s = 10\nslowdown = 0", "backends[0].events[0].slowdown"),
        (
            "at_s = 10\nerror_rate = -0.5",
            "backends[0].events[0].error_rate",
        ),
        ("at_s = 10\ndown = 1", "backends[0].events[0].down"),
        ("at_s = 10\nonly = []", "backends[0].events[0].only"),
        ("at_s = 10\nonly = \"b\"", "backends[0].events[0].only"),
        ("at_s = 10\nslowdwn = 2", "backends[0].events[0].slowdwn"),
    ] {
        let e = single_error(&event(body));
        assert_eq!(e.key_path, path, "{body}: {e}");
    }
}

#[test]
fn integers_accepted_where_floats_are_expected() {
    let s = parse_ok(&MINIMAL.replace("service_ms = 10", "service_ms = 10\nservice_jitter = 1"));
    assert_eq!(s.backends[0].service_ms, 10.0);
    assert_eq!(s.backends[0].service_jitter, 1.0);
    assert_eq!(s.duration_s, 100.0);
}

#[test]
fn duplicate_names_after_expansion() {
    let src = format!(
        "{MINIMAL}count = 2\n[[backends]]\nname = \"b-2\"\nconcurrency = 1\nservice_ms = 10\n"
    );
    let e = single_error(&src);
    assert_eq!(e.key_path, "backends[1].name");
    assert_eq!(e.line, 14);
    assert!(e.message.contains("duplicate backend name \"b-2\""), "{e}");
    assert!(e.message.contains("backends[0]"), "{e}");
}

#[test]
fn only_naming_another_backend_is_explained() {
    let src = format!(
        "{MINIMAL}[[backends.events]]\nat_s = 1\nonly = [\"c\"]\n\
         [[backends]]\nname = \"c\"\nconcurrency = 1\nservice_ms = 10\n"
    );
    let e = single_error(&src);
    assert_eq!(e.key_path, "backends[0].events[0].only[0]");
    assert!(e.message.contains("belongs to backends[1]"), "{e}");
}

#[test]
fn warnings_do_not_prevent_use() {
    let src = MINIMAL.replace("rate_rps = 100", "rate_rps = 100\nsteps = [[50, 5000]]");
    let (s, warnings) = parse_scenario(&src, "test.toml").unwrap();
    assert_eq!(s.load.rate_at(60.0), 5000.0);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].severity, Severity::Warning);
    assert_eq!(warnings[0].key_path, "load.steps[0]");
    assert!(
        warnings[0].message.contains("capacity of 400 rps"),
        "{}",
        warnings[0]
    );
}

#[test]
fn syntax_errors_and_unreadable_files() {
    let e = single_error("name = \n");
    assert!(e.message.starts_with("invalid TOML"), "{e}");
    let d = load_scenario(Path::new("/nonexistent/scenario.toml")).unwrap_err();
    assert!(
        d.errors[0].message.contains("cannot read scenario file"),
        "{d}"
    );
}

#[test]
fn state_at_composes_overlapping_events() {
    let event = |at_s, until_s, slowdown, error_rate, down| BackendEvent {
        at_s,
        until_s,
        slowdown,
        error_rate,
        down,
    };
    let mut b = backend("b", vec![]);
    b.error_rate = 0.01;
    b.events = vec![
        event(10.0, 50.0, 2.0, None, false),
        event(20.0, 30.0, 3.0, Some(0.5), false),
        event(25.0, 40.0, 1.0, Some(0.2), false),
        event(45.0, 60.0, 1.0, None, true),
    ];
    let state = |slowdown, error_rate, down| BackendState {
        slowdown,
        error_rate,
        down,
    };
    assert_eq!(b.state_at(5.0), state(1.0, 0.01, false));
    assert_eq!(b.state_at(10.0), state(2.0, 0.01, false));
    assert_eq!(b.state_at(22.0), state(6.0, 0.5, false));
    assert_eq!(b.state_at(27.0), state(6.0, 0.2, false));
    assert_eq!(b.state_at(30.0), state(2.0, 0.2, false));
    assert_eq!(b.state_at(47.0), state(2.0, 0.01, true));
    assert_eq!(b.state_at(50.0), state(1.0, 0.01, true));
    assert_eq!(b.state_at(60.0), state(1.0, 0.01, false));
}

#[test]
fn rate_at_follows_steps() {
    let s = parse_ok(&MINIMAL.replace(
        "rate_rps = 100",
        "rate_rps = 100\nsteps = [[20, 200], [40.5, 50]]",
    ));
    assert_eq!(s.load.rate_at(0.0), 100.0);
    assert_eq!(s.load.rate_at(19.99), 100.0);
    assert_eq!(s.load.rate_at(20.0), 200.0);
    assert_eq!(s.load.rate_at(40.0), 200.0);
    assert_eq!(s.load.rate_at(40.5), 50.0);
    assert_eq!(s.load.rate_at(99.0), 50.0);
}

#[test]
fn capacity_accounts_for_jitter_and_events() {
    let (s, _) = parse_scenario(EXAMPLE, "example.toml").unwrap();
    let mean = 5.0 * (0.125f64).exp();
    let per = 4.0 * 1000.0 / mean;
    assert!((s.capacity_rps_at(0.0) - 4.0 * per).abs() < 1e-9);
    assert!((s.capacity_rps_at(50.0) - (3.0 * per + per / 8.0)).abs() < 1e-9);
}

#[test]
fn capacity_weights_follow_events_and_count_errors_twice() {
    let (s, _) = parse_scenario(EXAMPLE, "example.toml").unwrap();
    let per = 4.0 * 1000.0 / (5.0 * (0.125f64).exp());
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
    assert!(close(&s.capacity_weights(0.0), &[per; 4]));
    let slow = per / 8.0 * 0.7 * 0.7;
    assert!(close(&s.capacity_weights(40.0), &[per, slow, per, per]));
    assert!(close(&s.capacity_weights(70.0), &[per; 4]));
    assert_eq!(s.change_times(), vec![40.0, 70.0]);
    assert_eq!(parse_ok(MINIMAL).change_times(), Vec::<f64>::new());
}

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/scenarios")
}

/// Mean offered load over the measured window, as a fraction of the capacity in force.
fn mean_load(s: &Scenario) -> f64 {
    let dt = 0.01;
    let steps = ((s.duration_s - s.warmup_s) / dt).round() as usize;
    let total: f64 = (0..steps)
        .map(|i| {
            let t = s.warmup_s + (i as f64 + 0.5) * dt;
            s.load.rate_at(t) / s.capacity_rps_at(t)
        })
        .sum();
    total / steps as f64
}

#[test]
fn published_suite_parses_and_stays_below_capacity() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let mut seeds = Vec::new();
    for path in &files {
        let (s, warnings) = match load_scenario(path) {
            Ok(ok) => ok,
            Err(d) => panic!("{}:\n{d}", path.display()),
        };
        assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert_eq!(s.name, stem, "{}", path.display());
        let load = mean_load(&s);
        assert!(load < 1.0, "{stem}: mean load {:.1} %", load * 100.0);
        assert!(!seeds.contains(&s.seed), "{stem}: seed {} reused", s.seed);
        seeds.push(s.seed);
    }
}

#[test]
fn published_suite_load_figures() {
    // (file, load at the start of the measured window, peak offered rate).
    let expected = [
        ("homogeneous", 0.70, 517.0),
        ("heterogeneous", 0.85, 588.0),
        ("one-slow-backend", 0.60, 443.0),
        ("fast-failing", 0.60, 443.0),
        ("transient-degradation", 0.65, 576.0),
        ("load-ramp", 0.30, 592.0),
    ];
    for (name, load, peak) in expected {
        let path = suite_dir().join(format!("{name}.toml"));
        let (s, _) = load_scenario(&path).unwrap_or_else(|d| panic!("{name}:\n{d}"));
        assert_eq!(s.duration_s, 120.0, "{name}");
        assert_eq!(s.warmup_s, 10.0, "{name}");
        let at = s.warmup_s;
        let util = s.load.rate_at(at) / s.capacity_rps_at(at);
        assert!((util - load).abs() < 0.005, "{name}: {util}");
        let max_rate = s
            .load
            .steps
            .iter()
            .map(|(_, r)| *r)
            .fold(s.load.rate_rps, f64::max);
        assert_eq!(max_rate, peak, "{name}");
        assert!(max_rate <= 700.0, "{name}");
        for b in &s.backends {
            assert!(b.service_ms >= 10.0, "{name}: {}", b.name);
            assert!(
                (0.3..=0.5).contains(&b.service_jitter),
                "{name}: {}",
                b.name
            );
        }
    }
    let ramp = load_scenario(&suite_dir().join("load-ramp.toml"))
        .unwrap()
        .0;
    let last = ramp.load.rate_at(119.0) / ramp.capacity_rps_at(119.0);
    assert!((last - 0.95).abs() < 0.005, "{last}");
    let slow = load_scenario(&suite_dir().join("one-slow-backend.toml"))
        .unwrap()
        .0;
    assert_eq!(slow.backends[1].state_at(50.0).slowdown, 8.0);
    assert_eq!(slow.backends[0].state_at(50.0).slowdown, 1.0);
    let failing = load_scenario(&suite_dir().join("fast-failing.toml"))
        .unwrap()
        .0;
    assert_eq!(failing.backends[3].state_at(0.0).error_rate, 0.4);
    assert_eq!(failing.backends[0].state_at(0.0).error_rate, 0.0);
    assert_eq!(failing.load.non_idempotent_fraction, 0.3);
}

const AUTOSCALED: &str = r#"
name = "t"
duration_s = 1200

[load]
rate_rps = 400
diurnal = { period_s = 600, amplitude = 0.5 }
bursts = [[700, 30, 2.0], [300, 20, 1.5]]

[[backends]]
name = "fixed"
concurrency = 4
service_ms = 10

[[backends]]
name = "web"
count = 3
concurrency = 8
service_ms = 20

[autoscale]
backend = "web"
min_backends = 2
max_backends = 12
provision_s = 90

[slo]
p99_ms = 120
"#;

#[test]
fn autoscale_slo_diurnal_and_bursts_parse() {
    let s = parse_ok(AUTOSCALED);
    let a = s.autoscale.clone().unwrap();
    assert_eq!(
        (
            a.backend.as_str(),
            a.first,
            a.initial,
            a.min_backends,
            a.max_backends
        ),
        ("web", 1, 3, 2, 12)
    );
    assert_eq!((a.provision_s, a.target_utilization), (90.0, 0.7));
    assert_eq!(s.slo.unwrap().p99_ms, 120.0);
    assert_eq!(s.slo.unwrap().window_s, 10.0);
    // Sorted by start.
    assert_eq!(s.load.bursts[0].at_s, 300.0);
    // A quarter period in: the top of the cycle; inside a burst, times its factor.
    assert!((s.load.rate_at(150.0) - 600.0).abs() < 1e-9);
    assert!((s.load.rate_at(450.5) - 200.0).abs() < 1e-9);
    assert!((s.load.rate_at(300.0) - 400.0 * 1.5).abs() < 1e-6);
    assert!(
        (s.load.rate_at(320.0)
            - 400.0 * (1.0 + 0.5 * (std::f64::consts::TAU * 320.0 / 600.0).sin()))
        .abs()
            < 1e-9
    );
    // The rate is constant over one-second slices and changes at burst edges.
    assert_eq!(s.load.next_change(150.2, 1200.0), 151.0);
    assert_eq!(s.load.rate_at(150.2), s.load.rate_at(150.9));
    let flat =
        parse_ok(&MINIMAL.replace("rate_rps = 100", "rate_rps = 100\nbursts = [[30, 10, 3]]"));
    assert_eq!(flat.load.next_change(0.0, 100.0), 30.0);
    assert_eq!(flat.load.next_change(30.0, 100.0), 40.0);
    assert_eq!(flat.load.next_change(40.0, 100.0), 100.0);
    assert_eq!(flat.load.rate_at(35.0), 300.0);
}

#[test]
fn autoscale_mistakes_are_explained() {
    let src = AUTOSCALED
        .replace("backend = \"web\"", "backend = \"wbe\"")
        .replace("amplitude = 0.5", "amplitude = 1.0")
        .replace("[300, 20, 1.5]", "[300, 20]")
        .replace("p99_ms = 120", "p99_ms = 0");
    let d = errors(&src);
    let paths: Vec<&str> = d.errors.iter().map(|e| e.key_path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "load.diurnal.amplitude",
            "load.bursts[1]",
            "autoscale.backend",
            "slo.p99_ms"
        ],
        "{d}"
    );
    assert!(d.errors[2].message.contains("did you mean \"web\"?"), "{d}");
    let d = errors(&AUTOSCALED.replace("min_backends = 2", "min_backends = 4"));
    assert!(d.errors[0].message.contains("count = 3, outside"), "{d}");
    let d = errors(&AUTOSCALED.replace("min_backends = 2", "min_backends = 20"));
    assert!(d.errors[0].message.contains("must not exceed"), "{d}");
}

/// A scenario replaying `trace` (CSV text) written beside it, with `load` as its [load] table.
fn traced(trace: &str, load: &str, duration_s: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.csv"), trace).unwrap();
    let path = dir.path().join("replay.toml");
    let body = MINIMAL
        .replace("duration_s = 100", &format!("duration_s = {duration_s}"))
        .replace("rate_rps = 100", load);
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

#[test]
fn a_trace_replays_its_rows_from_the_scenario_directory() {
    // A pool's history as `history_file` writes it: Unix times, a 10 s step, an idle step.
    let csv = "t_s,rps\n1764547200,120\n1764547210,80.5\n1764547220,0\n1764547230,200\n";
    let (_dir, path) = traced(
        csv,
        "trace = \"web.csv\"\ntrace_scale = 2\nbursts = [[30, 5, 1.5]]",
        40,
    );
    let (s, warnings) = load_scenario(&path).unwrap_or_else(|d| panic!("{d}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let l = &s.load;
    assert_eq!(l.rate_rps, 240.0);
    assert_eq!(l.steps, vec![(10.0, 161.0), (20.0, 0.0), (30.0, 400.0)]);
    let at = |t: f64| l.rate_at(t);
    assert_eq!(
        (at(0.0), at(9.9), at(10.0), at(25.0)),
        (240.0, 240.0, 161.0, 0.0)
    );
    assert_eq!(
        (at(32.0), at(36.0)),
        (600.0, 400.0),
        "the burst multiplies the trace"
    );
    assert_eq!(l.next_change(0.0, 40.0), 10.0);
    assert_eq!(l.next_change(10.0, 40.0), 20.0);
    assert_eq!(l.next_change(30.0, 40.0), 35.0);
    assert_eq!(l.next_change(35.0, 40.0), 40.0);
    // A shorter run replays the rows it covers.
    let (_dir, path) = traced(csv, "trace = \"web.csv\"", 15);
    let (s, _) = load_scenario(&path).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        (s.load.rate_rps, s.load.steps.clone()),
        (120.0, vec![(10.0, 80.5)])
    );
}

#[test]
fn trace_mistakes_are_explained() {
    let csv = "0,100\n10,120\n20,90\n";
    // (trace, [load] table, duration_s, expected errors as (key path, part of the message))
    type Case<'a> = (&'a str, &'a str, u32, &'a [(&'a str, &'a str)]);
    let cases: &[Case<'_>] = &[
        (
            csv,
            "trace = \"web.csv\"\nrate_rps = 100\nsteps = [[10, 50]]",
            30,
            &[
                ("load.rate_rps", "cannot be given with `trace`"),
                ("load.steps", "cannot be given with `trace`"),
            ],
        ),
        (
            csv,
            "rate_rps = 100\ntrace_scale = 2",
            30,
            &[("load.trace_scale", "[load] has none")],
        ),
        (
            csv,
            "trace = \"nope.csv\"",
            30,
            &[("load.trace", "nope.csv")],
        ),
        (
            "0,100\n10,120\n25,90\n",
            "trace = \"web.csv\"",
            30,
            &[("load.trace", "web.csv:3: rows must be a fixed step apart")],
        ),
        (
            csv,
            "trace = \"web.csv\"",
            31,
            &[(
                "load.trace",
                "covers 30 s (3 rows of 10 s) and duration_s is 31",
            )],
        ),
        (
            csv,
            "trace = \"web.csv\"\ntrace_scale = 0",
            30,
            &[("load.trace_scale", "> 0")],
        ),
        (csv, "trace = 3", 30, &[("load.trace", "string")]),
    ];
    for (trace, load, duration, want) in cases {
        let (_dir, path) = traced(trace, load, *duration);
        let d = match load_scenario(&path) {
            Ok((s, _)) => panic!("{load}: parsed {:?}", s.load),
            Err(d) => d,
        };
        let got: Vec<(&str, &str)> = d
            .errors
            .iter()
            .map(|e| (e.key_path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got.len(), want.len(), "{load}: {d}");
        for ((path, message), (want_path, needle)) in got.iter().zip(want.iter()) {
            assert_eq!(path, want_path, "{load}: {d}");
            assert!(
                message.contains(needle),
                "{load}: {message:?} lacks {needle:?}"
            );
        }
        assert!(d.to_string().contains("replay.toml:"), "{d}");
    }
}

#[test]
fn autoscale_suite_parses_with_scaler_and_slo() {
    let toml_in = |dir: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(suite_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        files
    };
    let (public, unseen, unseen2) = (
        toml_in("autoscale"),
        toml_in("autoscale-unseen"),
        toml_in("autoscale-unseen2"),
    );
    assert!(public.len() >= 5, "{public:?}");
    assert!(unseen.len() >= 2, "{unseen:?}");
    assert!(unseen2.len() >= 3, "{unseen2:?}");
    let files: Vec<PathBuf> = public.into_iter().chain(unseen).chain(unseen2).collect();
    for path in &files {
        let (s, warnings) =
            load_scenario(path).unwrap_or_else(|d| panic!("{}:\n{d}", path.display()));
        assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
        assert_eq!(s.name, path.file_stem().unwrap().to_str().unwrap());
        assert!(s.autoscale.is_some() && s.slo.is_some(), "{}", s.name);
    }
}
