//! `[pools.NAME.autoscale]`: defaults, every bad value located by key path and line, and a
//! round trip through the TOML writer.

use std::time::Duration;

use fulcrum_config::{parse, AutoscaleConfig};

fn config(autoscale: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:8080"]

[[routes]]
pool = "web"

[pools.web]
[[pools.web.backends]]
addr = "127.0.0.1:9001"

[pools.web.autoscale]
{autoscale}"#
    )
}

#[test]
fn an_empty_section_takes_the_defaults_and_no_section_means_no_forecast() {
    let (c, warnings) = parse(&config(""), "test.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let a = c.pool("web").unwrap().autoscale.clone().unwrap();
    assert_eq!(a, AutoscaleConfig::default());
    assert_eq!(a.target_utilization, 0.7);
    assert_eq!((a.min_backends, a.max_backends), (1, 100));
    assert_eq!(a.horizon, Duration::from_secs(300));
    assert_eq!(a.step, Duration::from_secs(10));
    assert_eq!(a.forecast_model, None);
    assert_eq!(a.backend_capacity_rps, None);
    assert_eq!(
        a.scale_down_stabilization,
        Duration::from_secs(20),
        "two steps"
    );
    assert_eq!(a.spare_backends, 0);
    assert_eq!(a.burst_spare_backends, 1);
    assert_eq!(a.burst_memory, Duration::from_secs(3600));
    let plain = config("").replace("[pools.web.autoscale]\n", "");
    let (c, _) = parse(&plain, "test.toml").unwrap();
    assert_eq!(c.pool("web").unwrap().autoscale, None);
}

#[test]
fn the_default_scale_down_window_is_two_steps_of_the_pools_own_step() {
    let window = |keys: &str| {
        let (c, _) = parse(&config(keys), "test.toml").unwrap();
        let a = c.pool("web").unwrap().autoscale.clone().unwrap();
        let (again, _) = parse(&c.to_toml(), "emitted.toml").unwrap();
        assert_eq!(again, c, "written back as it was read");
        a.scale_down_stabilization
    };
    assert_eq!(window("step_s = 30\n"), Duration::from_secs(60));
    assert_eq!(window("step_s = 0.5\n"), Duration::from_secs(1));
    assert_eq!(
        window("step_s = 30\nscale_down_stabilization_s = 0\n"),
        Duration::ZERO,
        "an explicit window is kept, even 0"
    );
    assert_eq!(
        window("scale_down_stabilization_s = 300\n"),
        Duration::from_secs(300),
        "Kubernetes' HPA window, when an operator asks for it"
    );
}

#[test]
fn every_key_is_read_and_written_back() {
    let src = config(
        "target_utilization = 0.6\nmin_backends = 2\nmax_backends = 40\nhorizon_s = 45\n\
         step_s = 0.5\nforecast_model = \"models/forecast.onnx\"\nbackend_capacity_rps = 210\n\
         scale_down_stabilization_s = 90\nspare_backends = 1\nburst_spare_backends = 2\n\
         burst_memory_s = 900\nhistory_file = \"/var/lib/fulcrum/web.csv\"\n\
         history_prometheus = \"http://prometheus:9090\"\n\
         history_query = 'sum(fulcrum_pool_requests_per_second{pool=\"web\"})'\n",
    );
    let (c, _) = parse(&src, "test.toml").unwrap();
    let a = c.pool("web").unwrap().autoscale.clone().unwrap();
    assert_eq!(a.target_utilization, 0.6);
    assert_eq!((a.min_backends, a.max_backends), (2, 40));
    assert_eq!(a.horizon, Duration::from_secs(45));
    assert_eq!(a.step, Duration::from_millis(500));
    assert_eq!(
        a.forecast_model.as_deref(),
        Some(std::path::Path::new("models/forecast.onnx"))
    );
    assert_eq!(a.backend_capacity_rps, Some(210.0));
    assert_eq!(a.scale_down_stabilization, Duration::from_secs(90));
    assert_eq!(a.spare_backends, 1);
    assert_eq!(a.burst_spare_backends, 2);
    assert_eq!(a.burst_memory, Duration::from_secs(900));
    assert_eq!(
        a.history_file.as_deref(),
        Some(std::path::Path::new("/var/lib/fulcrum/web.csv"))
    );
    assert_eq!(
        a.history_prometheus.as_deref(),
        Some("http://prometheus:9090")
    );
    assert_eq!(
        a.history_query.as_deref(),
        Some("sum(fulcrum_pool_requests_per_second{pool=\"web\"})")
    );
    let (again, _) = parse(&c.to_toml(), "emitted.toml").unwrap();
    assert_eq!(again, c);
}

#[test]
fn bad_values_are_reported_at_their_key_and_line_all_at_once() {
    let src = config(
        "target_utilization = 1.5\nmin_backends = 0\nhorizon_s = 0\nstep_s = \"10s\"\n\
         forecast_model = \"\"\nbackend_capacity_rps = -1\nmax_backend = 3\n\
         scale_down_stabilization_s = -5\nspare_backends = 1001\nburst_spare_backends = -1\n\
         burst_memory_s = 200000\nhistory_file = \"\"\n\
         history_prometheus = \"https://prometheus:9090\"\nhistory_query = \" \"\n",
    );
    let d = parse(&src, "test.toml").unwrap_err();
    let got: Vec<(&str, usize)> = d
        .errors
        .iter()
        .map(|e| (e.key_path.as_str(), e.line))
        .collect();
    assert_eq!(
        got,
        [
            ("pools.web.autoscale.target_utilization", 12),
            ("pools.web.autoscale.min_backends", 13),
            ("pools.web.autoscale.horizon_s", 14),
            ("pools.web.autoscale.step_s", 15),
            ("pools.web.autoscale.forecast_model", 16),
            ("pools.web.autoscale.backend_capacity_rps", 17),
            ("pools.web.autoscale.max_backend", 18),
            ("pools.web.autoscale.scale_down_stabilization_s", 19),
            ("pools.web.autoscale.spare_backends", 20),
            ("pools.web.autoscale.burst_spare_backends", 21),
            ("pools.web.autoscale.burst_memory_s", 22),
            ("pools.web.autoscale.history_file", 23),
            ("pools.web.autoscale.history_prometheus", 24),
            ("pools.web.autoscale.history_query", 25),
        ],
        "{d}"
    );
    let text = d.to_string();
    assert!(text.contains("did you mean `max_backends`?"), "{text}");
    assert!(
        text.contains("target_utilization must be greater than 0 and at most 1"),
        "{text}"
    );
    assert!(
        text.contains("min_backends must be between 1 and 100000, got 0"),
        "{text}"
    );
    assert!(
        text.contains("scale_down_stabilization_s must be between 0 and 86400 seconds"),
        "{text}"
    );
    assert!(
        text.contains("spare_backends must be between 0 and 1000, got 1001"),
        "{text}"
    );
    assert!(
        text.contains("burst_spare_backends must be between 0 and 1000, got -1"),
        "{text}"
    );
    assert!(
        text.contains("burst_memory_s must be between 0 and 172800 seconds"),
        "{text}"
    );
    assert!(
        text.contains("history_prometheus \"https://prometheus:9090\" is not an http:// URL"),
        "{text}"
    );
    assert!(text.contains("history_query must not be empty"), "{text}");

    let d = parse(&config("min_backends = 8\nmax_backends = 4\n"), "t.toml").unwrap_err();
    assert_eq!(d.errors.len(), 1, "{d}");
    assert_eq!(d.errors[0].key_path, "pools.web.autoscale.max_backends");
    assert_eq!(d.errors[0].line, 13);
    assert!(
        d.errors[0]
            .message
            .contains("max_backends (4) must be at least min_backends (8)"),
        "{d}"
    );

    let d = parse(
        &config("")
            .replace("[pools.web]\n", "[pools.web]\nautoscale = 3\n")
            .replace("[pools.web.autoscale]\n", ""),
        "t.toml",
    )
    .unwrap_err();
    assert!(d.to_string().contains("pools.web.autoscale"), "{d}");
}

#[test]
fn two_pools_may_not_keep_their_series_in_one_history_file() {
    let src = config("history_file = \"/var/lib/fulcrum/web.csv\"\n")
        + "\n[pools.api]\n[[pools.api.backends]]\naddr = \"127.0.0.1:9002\"\n\n\
           [pools.api.autoscale]\nhistory_file = \"/var/lib/fulcrum/web.csv\"\n";
    let d = parse(&src, "t.toml").unwrap_err();
    assert_eq!(d.errors.len(), 1, "{d}");
    assert_eq!(d.errors[0].key_path, "pools.api.autoscale.history_file");
    assert_eq!(d.errors[0].line, 19);
    assert!(
        d.errors[0]
            .message
            .contains("history_file /var/lib/fulcrum/web.csv is already pool web's"),
        "{d}"
    );
}

#[test]
fn a_step_longer_than_the_horizon_is_a_warning() {
    let (_, warnings) = parse(&config("step_s = 60\nhorizon_s = 30\n"), "t.toml").unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key_path, "pools.web.autoscale.step_s");
}

#[test]
fn a_burst_memory_shorter_than_a_step_is_a_warning() {
    let (c, warnings) = parse(&config("step_s = 10\nburst_memory_s = 4\n"), "t.toml").unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key_path, "pools.web.autoscale.burst_memory_s");
    assert!(
        warnings[0].to_string().contains("shorter than step_s"),
        "{warnings:?}"
    );
    let a = c.pool("web").unwrap().autoscale.clone().unwrap();
    assert_eq!(a.burst_memory, Duration::from_secs(4));
    // 0, a whole step, or a spare turned off: nothing to say.
    for keys in [
        "step_s = 10\nburst_memory_s = 0\n",
        "step_s = 10\nburst_memory_s = 10\n",
        "step_s = 10\nburst_memory_s = 4\nburst_spare_backends = 0\n",
    ] {
        let (_, warnings) = parse(&config(keys), "t.toml").unwrap();
        assert!(warnings.is_empty(), "{keys}: {warnings:?}");
    }
}

#[test]
fn a_history_query_without_a_prometheus_to_ask_is_a_warning() {
    let (c, warnings) = parse(
        &config("history_query = 'sum(fulcrum_pool_requests_per_second)'\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key_path, "pools.web.autoscale.history_query");
    assert_eq!(warnings[0].line, 12);
    assert!(
        warnings[0]
            .to_string()
            .contains("history_query has no effect without history_prometheus"),
        "{warnings:?}"
    );
    let a = c.pool("web").unwrap().autoscale.clone().unwrap();
    assert_eq!(a.history_prometheus, None);
}
