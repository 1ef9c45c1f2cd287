//! The `[control]` section: defaults, validation and serialisation.

use std::path::PathBuf;
use std::time::Duration;

use fulcrum_config::{load_default, parse, ControlConfig, Severity, WeightSource};

/// A valid configuration whose only pool has `weights = "model"`, followed by `rest`.
fn with_model_pool(rest: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:8080"]

[[routes]]
pool = "web"

[pools.web]
weights = "model"

[[pools.web.backends]]
addr = "127.0.0.1:9001"
{rest}"#
    )
}

/// The 1-based line of the first line of `src` starting with `prefix`.
fn line_of(src: &str, prefix: &str) -> usize {
    src.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

#[test]
fn defaults_when_absent() {
    let (config, warnings) = parse(&with_model_pool(""), "test.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.control, ControlConfig::default());
    let c = ControlConfig::default();
    assert_eq!(c.tick, Duration::from_millis(500));
    assert_eq!(c.model, PathBuf::from("models/balancer.onnx"));
    assert_eq!(c.ort_library, None);
    assert_eq!(c.inference_budget, Duration::from_millis(20));
    assert_eq!((c.floor, c.ceiling, c.max_step), (0.05, 8.0, 2.0));
    assert_eq!(c.decisions, 256);
    assert_eq!(c.record, None);
    assert!(c.watch_model);
    assert_eq!(load_default().control, ControlConfig::default());
}

#[test]
fn empty_section_is_the_defaults() {
    let (config, warnings) = parse(&with_model_pool("\n[control]\n"), "test.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.control, ControlConfig::default());
}

#[test]
fn full_section_parses() {
    let src = with_model_pool(
        r#"
[control]
tick_ms = 250
model = "/srv/models/lb v2.onnx"
ort_library = "/opt/ort/libonnxruntime.so"
inference_budget_ms = 5
floor = 0.1
ceiling = 4            # integers are accepted for numbers
max_step = 1.5
probes = 0
decisions = 1000
record = "features.csv"
watch_model = false
"#,
    );
    let (config, warnings) = parse(&src, "test.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        config.control,
        ControlConfig {
            tick: Duration::from_millis(250),
            model: "/srv/models/lb v2.onnx".into(),
            ort_library: Some("/opt/ort/libonnxruntime.so".into()),
            inference_budget: Duration::from_millis(5),
            floor: 0.1,
            ceiling: 4.0,
            max_step: 1.5,
            probes: 0,
            decisions: 1000,
            record: Some("features.csv".into()),
            watch_model: false,
        }
    );
}

#[test]
fn range_limits_are_inclusive_where_documented() {
    let src = with_model_pool(
        "\n[control]\ntick_ms = 60000\ninference_budget_ms = 10000\nfloor = 1\nceiling = 1000\nmax_step = 100\ndecisions = 100000\n",
    );
    let (config, _) = parse(&src, "test.toml").unwrap();
    assert_eq!(config.control.tick, Duration::from_millis(60_000));
    assert_eq!(
        (config.control.floor, config.control.ceiling),
        (1.0, 1000.0)
    );
    let src =
        with_model_pool("\n[control]\ntick_ms = 50\ninference_budget_ms = 1\ndecisions = 1\n");
    assert!(parse(&src, "test.toml").is_ok());
}

#[test]
fn bad_values_are_reported_together() {
    let src = with_model_pool(
        r#"
[control]
tick_ms = 10
model = ""
ort_library = 3
inference_budget_ms = 2.5
floor = 0
ceiling = 0.5
max_step = 1
probes = 101
decisions = 0
record = ""
watch_model = "yes"
tick = 500
"#,
    );
    let d = parse(&src, "test.toml").unwrap_err();
    let got: Vec<(&str, usize)> = d
        .errors
        .iter()
        .map(|e| (e.key_path.as_str(), e.line))
        .collect();
    let expected: Vec<(&str, usize)> = [
        ("control.tick_ms", "tick_ms"),
        ("control.model", "model"),
        ("control.ort_library", "ort_library"),
        ("control.inference_budget_ms", "inference_budget_ms"),
        ("control.floor", "floor"),
        ("control.ceiling", "ceiling"),
        ("control.max_step", "max_step"),
        ("control.probes", "probes"),
        ("control.decisions", "decisions"),
        ("control.record", "record"),
        ("control.watch_model", "watch_model"),
        ("control.tick", "tick ="),
    ]
    .into_iter()
    .map(|(path, key)| (path, line_of(&src, key)))
    .collect();
    assert_eq!(got, expected, "{d}");
    let msgs: Vec<&str> = d.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs[0], "tick_ms must be between 50 and 60000, got 10");
    assert!(
        msgs[1].starts_with("model must not be empty"),
        "{}",
        msgs[1]
    );
    assert_eq!(msgs[2], "expected a string, got integer 3");
    assert_eq!(msgs[3], "expected an integer, got float 2.5");
    assert!(
        msgs[4].starts_with("floor must be greater than 0 and at most 1"),
        "{}",
        msgs[4]
    );
    assert!(msgs[4].ends_with("got 0"), "{}", msgs[4]);
    assert!(
        msgs[5].starts_with("ceiling must be between 1 and 1000"),
        "{}",
        msgs[5]
    );
    assert!(msgs[5].ends_with("got 0.5"), "{}", msgs[5]);
    assert!(
        msgs[6].starts_with("max_step must be greater than 1 and at most 100"),
        "{}",
        msgs[6]
    );
    assert_eq!(msgs[7], "probes must be between 0 and 100, got 101");
    assert_eq!(msgs[8], "decisions must be between 1 and 100000, got 0");
    assert!(
        msgs[9].starts_with("record must not be empty"),
        "{}",
        msgs[9]
    );
    assert_eq!(
        msgs[10],
        "expected a boolean (true or false), got string \"yes\""
    );
    assert!(msgs[11].contains("did you mean `tick_ms`?"), "{}", msgs[11]);
    let shown = d.errors[4].to_string();
    assert!(
        shown.starts_with(&format!(
            "test.toml:{}:9: error: control.floor: floor must be",
            line_of(&src, "floor")
        )),
        "{shown}"
    );
}

#[test]
fn ceiling_must_exceed_floor() {
    let src = with_model_pool("\n[control]\nfloor = 1.0\nceiling = 1\n");
    let d = parse(&src, "test.toml").unwrap_err();
    assert_eq!(d.errors.len(), 1, "{d}");
    let e = &d.errors[0];
    assert_eq!(e.key_path, "control.ceiling");
    assert_eq!(e.line, line_of(&src, "ceiling"));
    assert_eq!(e.message, "ceiling (1) must be greater than floor (1)");
}

#[test]
fn non_finite_and_non_numeric_floats_are_rejected() {
    let src = with_model_pool("\n[control]\nfloor = nan\nceiling = inf\nmax_step = \"2\"\n");
    let d = parse(&src, "test.toml").unwrap_err();
    let paths: Vec<&str> = d.errors.iter().map(|e| e.key_path.as_str()).collect();
    assert_eq!(
        paths,
        ["control.floor", "control.ceiling", "control.max_step"],
        "{d}"
    );
    assert_eq!(d.errors[2].message, "expected a number, got string \"2\"");
}

#[test]
fn misspelt_section_suggests_control() {
    let src = with_model_pool("\n[contro]\ntick_ms = 500\n");
    let d = parse(&src, "test.toml").unwrap_err();
    assert_eq!(d.errors.len(), 1, "{d}");
    assert_eq!(d.errors[0].key_path, "contro");
    assert!(
        d.errors[0].message.contains("did you mean `control`?"),
        "{}",
        d.errors[0].message
    );
}

#[test]
fn section_must_be_a_table() {
    let src = format!("control = 1\n{}", with_model_pool(""));
    let d = parse(&src, "test.toml").unwrap_err();
    assert_eq!(d.errors.len(), 1, "{d}");
    assert_eq!(d.errors[0].key_path, "control");
    assert_eq!(
        d.errors[0].message,
        "expected a table ([control]), got integer 1"
    );
}

#[test]
fn section_without_model_pool_warns() {
    let src = with_model_pool("\n[control]\ntick_ms = 1000\n").replace("weights = \"model\"", "");
    let (config, warnings) = parse(&src, "test.toml").unwrap();
    assert_eq!(config.pools[0].weights, WeightSource::Static);
    assert_eq!(config.control.tick, Duration::from_millis(1000));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(
        (w.key_path.as_str(), w.line, w.column),
        ("control", line_of(&src, "[control]"), 1)
    );
    assert!(
        w.message
            .contains("the control loop only tunes pools with weights = \"model\""),
        "{}",
        w.message
    );
    // Without the section there is nothing to warn about.
    let src = with_model_pool("").replace("weights = \"model\"", "");
    let (_, warnings) = parse(&src, "test.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn non_default_section_roundtrips() {
    let mut config = load_default();
    config.pools[0].weights = WeightSource::Model;
    config.control = ControlConfig {
        tick: Duration::from_millis(125),
        model: "models/a \"quoted\" model.onnx".into(),
        ort_library: Some("/opt/ort/libonnxruntime.so.1.20".into()),
        inference_budget: Duration::from_millis(7),
        floor: 0.1 + 0.2,
        ceiling: 12.5,
        max_step: 1.0000001,
        probes: 7,
        decisions: 4096,
        record: Some("out/features.csv".into()),
        watch_model: false,
    };
    let text = config.to_toml();
    assert!(text.contains("\n[control]\n"), "{text}");
    let (back, warnings) =
        parse(&text, "<generated>").unwrap_or_else(|d| panic!("{d}\n---\n{text}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(back, config, "{text}");

    // Whole-number floats are still written as floats.
    config.control = ControlConfig::default();
    let text = config.to_toml();
    assert!(text.contains("\nceiling = 8.0\n"), "{text}");
    assert_eq!(parse(&text, "<generated>").unwrap().0, config);
}

#[test]
fn default_section_is_omitted_without_model_pools() {
    let config = load_default();
    assert!(!config.to_toml().contains("[control]"));
    let mut tuned = config.clone();
    tuned.control.decisions = 10;
    let text = tuned.to_toml();
    assert!(text.contains("\n[control]\n"), "{text}");
    let (back, warnings) = parse(&text, "<generated>").unwrap();
    assert_eq!(back, tuned);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}
