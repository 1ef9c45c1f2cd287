//! End-to-end: the real binary forecasts a pool's demand under an open-loop load whose rate
//! changes, and recommends more backends when the rate rises.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fulcrum_config::AutoscaleConfig;
use fulcrum_lab::loadgen::{self, LoadGenConfig, LoadStats};
use fulcrum_testbed::scenario::LabClock;

/// Offered rates: the first phase, then the second from `RISE_S` on.
const LOW_RPS: f64 = 80.0;
const HIGH_RPS: f64 = 240.0;
const RISE_S: f64 = 9.0;
const END_S: f64 = 15.0;
/// One backend serves 40 rps at full load, planned at 50 %: 20 rps per backend.
const CAPACITY_RPS: f64 = 40.0;

/// The open-loop load: Poisson arrivals at `LOW_RPS`, then `HIGH_RPS`.
fn load() -> fulcrum_scenario::Load {
    let source = format!(
        "name = \"forecast\"\nseed = 13\nduration_s = {END_S}\n\n[load]\nrate_rps = {LOW_RPS}\n\
         steps = [[{RISE_S}, {HIGH_RPS}]]\n\n[[backends]]\nname = \"b\"\nconcurrency = 4\nservice_ms = 1.0\n"
    );
    let (scenario, _) = fulcrum_scenario::parse_scenario(&source, "forecast.toml").unwrap();
    scenario.load
}

async fn forecast(f: &Fulcrum) -> serde_json::Value {
    let r = get(f.admin, "/api/forecast?pool=web").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

/// The rate series of a forecast view, oldest first.
fn series(view: &serde_json::Value) -> Vec<f64> {
    view["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Mean of the last `n` steps of the series.
fn recent_rate(view: &serde_json::Value, n: usize) -> f64 {
    let series = series(view);
    let tail = &series[series.len().saturating_sub(n)..];
    tail.iter().sum::<f64>() / tail.len() as f64
}

/// Mean of `fulcrum_pool_requests_per_second{pool="web"}` over a few scrapes a step apart.
async fn metric_rate(f: &Fulcrum) -> f64 {
    let mut sum = 0.0;
    for _ in 0..4 {
        sum += metric(f, "fulcrum_pool_requests_per_second{pool=\"web\"}").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sum / 4.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recommendation_rises_with_the_offered_rate() {
    let b = backends(2).await;
    let mut web = web_pool(Algorithm::LeastConnections, &[&b[0], &b[1]]);
    web.autoscale = Some(AutoscaleConfig {
        step: Duration::from_millis(500),
        horizon: Duration::from_secs(2),
        target_utilization: 0.5,
        backend_capacity_rps: Some(CAPACITY_RPS),
        ..AutoscaleConfig::default()
    });
    let f = Fulcrum::start(|p, a| {
        let mut config = single_pool(p, a, web);
        config.control.tick = Duration::from_millis(100);
        config
    })
    .await;

    // Before the first step: known pool, no data yet; unknown pools and a missing name: 404.
    let r = get(f.admin, "/api/forecast?pool=nope").await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("no pool \"nope\""), "{}", r.body);
    let r = get(f.admin, "/api/forecast").await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("[\"web\"]"), "{}", r.body);

    let names = vec!["b1".to_string(), "b2".to_string()];
    let cfg = LoadGenConfig {
        target: f.proxy,
        load: load(),
        duration_s: END_S,
        clock: LabClock::new(1.0),
        backend_names: names,
        seed: 13,
        drain_timeout: Duration::from_secs(2),
        max_connections: None,
    };
    let stats = Arc::new(LoadStats::default());
    let generator = tokio::spawn({
        let stats = stats.clone();
        async move { loadgen::run(&cfg, stats).await }
    });

    // The first phase, once warm (12 steps) and with a few steps of margin.
    tokio::time::sleep(Duration::from_secs_f64(RISE_S - 2.5)).await;
    let low_metric = metric_rate(&f).await;
    let low = forecast(&f).await;
    eprintln!("low phase: {low:#}");
    assert_eq!(low["pool"], "web");
    assert_eq!(low["warm"], true, "{low}");
    let low_rate = recent_rate(&low, 8);
    assert!(
        (low_rate - LOW_RPS).abs() < 0.2 * LOW_RPS,
        "series says {low_rate:.1} rps, offered {LOW_RPS}"
    );
    assert!(
        (low_metric - LOW_RPS).abs() < 0.3 * LOW_RPS,
        "metric says {low_metric:.1} rps, offered {LOW_RPS}"
    );
    let horizons: Vec<f64> = low["forecasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["horizon_s"].as_f64().unwrap())
        .collect();
    assert_eq!(horizons, [2.0, 60.0, 300.0, 900.0]);
    assert!(low["forecasts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["p90"].as_f64() >= h["p50"].as_f64()));
    assert_eq!(low["capacity_per_backend_rps"], CAPACITY_RPS);
    assert_eq!(low["capacity_source"], "configured");
    assert_eq!(low["current_backends"], 2);
    assert_eq!(low["forecaster"], "builtin");
    let low_rec = low["recommended_backends"].as_u64().unwrap();
    let reason = low["reason"].as_str().unwrap();
    // Sized for the highest p90 of the next 2 s, or for the rate now in a step above it.
    assert!(
        reason.starts_with("highest p90 within 2 s: ") || reason.starts_with("rate now: "),
        "{reason}"
    );
    assert!(
        reason.contains("one backend serves ~20 rps at 50 %"),
        "{reason}"
    );
    assert!(reason.contains(&format!("{low_rec} backends")), "{reason}");
    // 80 rps at 20 rps per backend: 4, and the highest p90 of the next steps above it (a
    // one-second series of a random arrival process is noisy: up to about 2.5x the rate).
    assert!((4..=10).contains(&low_rec), "{low_rec}: {reason}");
    // Poisson arrivals counted in half-second steps are noisy, but not a burst: no spare.
    assert_eq!(low["burst_spare_backends"], 0, "{reason}");

    // The second phase: the rate triples, so does the recommendation, give or take.
    tokio::time::sleep(Duration::from_secs_f64(END_S - RISE_S - 2.0)).await;
    let high_metric = metric_rate(&f).await;
    let high = forecast(&f).await;
    eprintln!("high phase: {high:#}");
    let high_rate = recent_rate(&high, 6);
    assert!(
        (high_rate - HIGH_RPS).abs() < 0.2 * HIGH_RPS,
        "series says {high_rate:.1} rps, offered {HIGH_RPS}"
    );
    assert!(
        (high_metric - HIGH_RPS).abs() < 0.3 * HIGH_RPS,
        "metric says {high_metric:.1} rps, offered {HIGH_RPS}"
    );
    let high_rec = high["recommended_backends"].as_u64().unwrap();
    // The tripling is a burst only if it would have loaded the backends sized for the plan
    // before it to 90 % (the noisy low phase's p90 can leave that much room): whichever it
    // was, the count and the reasoning agree.
    let spare = high["burst_spare_backends"].as_u64().unwrap();
    let high_reason = high["reason"].as_str().unwrap();
    assert!(spare <= 1, "{high_reason}");
    assert_eq!(
        spare == 1,
        high_reason.contains(", and 1 spare backend for bursts (~20 rps) for "),
        "{high_reason}"
    );
    assert!(
        high_rec >= low_rec + 4 && high_rec >= 12,
        "recommendation {low_rec} -> {high_rec}: {}",
        high["reason"]
    );
    assert!(
        high["reason"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{} more than now", high_rec - 2)),
        "{}",
        high["reason"]
    );
    assert_eq!(
        metric(&f, "fulcrum_pool_burst_spare_backends{pool=\"web\"}").await,
        spare as f64,
        "the metric says what /api/forecast said"
    );
    let m = metric(&f, "fulcrum_pool_recommended_backends{pool=\"web\"}").await;
    assert!(m >= 12.0, "metric recommends {m}");
    let p90 = metric(
        &f,
        "fulcrum_pool_forecast_requests_per_second{pool=\"web\",horizon=\"2\",quantile=\"0.9\"}",
    )
    .await;
    assert!(p90 > 0.7 * HIGH_RPS, "p90 forecast {p90}");
    assert_eq!(
        metric(
            &f,
            "fulcrum_pool_capacity_per_backend_requests_per_second{pool=\"web\"}"
        )
        .await,
        CAPACITY_RPS
    );

    let records = generator.await.unwrap();
    assert!(records.len() > 1500, "{} requests", records.len());
    assert_eq!(stats.errors(), 0, "client-visible errors");
}

fn fixture(name: &str) -> std::path::PathBuf {
    repo_root().join("crates/control/tests/fixtures").join(name)
}

/// Replace `path` atomically, as a deploy would.
fn install(src: &std::path::Path, path: &std::path::Path) {
    let tmp = path.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The forecaster named by `/api/forecast` and why the model is not in use, once stepped.
async fn forecaster(f: &Fulcrum) -> (String, Option<String>) {
    let r = get(f.admin, "/api/forecast?pool=web").await.unwrap();
    if r.status == 503 {
        return (String::new(), None);
    }
    let v = forecast(f).await;
    (
        v["forecaster"].as_str().unwrap().to_string(),
        v["model_error"].as_str().map(str::to_string),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forecast_model_is_loaded_checked_and_reloaded_with_the_configuration() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("forecast.onnx");
    install(&fixture("forecast_last_value.onnx"), &model);
    let mut web = web_pool(Algorithm::LeastConnections, &[&b[0], &b[1]]);
    web.autoscale = Some(AutoscaleConfig {
        step: Duration::from_millis(100),
        horizon: Duration::from_secs(1),
        forecast_model: Some(model.clone()),
        ..AutoscaleConfig::default()
    });
    let config = move |p, a| {
        let mut config = single_pool(p, a, web.clone());
        config.control.tick = Duration::from_millis(50);
        config
    };
    let f = Fulcrum::start(config.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed, tasks) = keep_busy(f.proxy, 2, "/", stop.clone());

    // The model answers once it has its 32-step window.
    let used = eventually(Duration::from_secs(10), || async {
        forecaster(&f).await.0 == "forecast.onnx"
    })
    .await;
    assert!(used.is_some(), "model never used: {}", forecast(&f).await);
    let loaded = "fulcrum_pool_forecast_model_loaded{pool=\"web\"}";
    assert_eq!(metric(&f, loaded).await, 1.0);
    let v = forecast(&f).await;
    let f0 = &v["forecasts"][0];
    assert!(
        (f0["p90"].as_f64().unwrap() / f0["p50"].as_f64().unwrap() - 1.25).abs() < 1e-3,
        "the model's p90 is 1.25 times its p50: {f0}"
    );

    // A model whose p90 falls below its p50 whenever the latest rate is above the window's
    // mean: those steps fall back to the built-in forecast and are counted, the model stays.
    install(&fixture("forecast_inverted_when_rising.onnx"), &model);
    f.sighup();
    let fallbacks = "fulcrum_pool_forecast_model_fallbacks_total{pool=\"web\"}";
    let counted = eventually(Duration::from_secs(10), || async {
        metric(&f, fallbacks).await >= 3.0
    })
    .await;
    assert!(counted.is_some(), "{}", forecast(&f).await);
    assert_eq!(metric(&f, loaded).await, 1.0);
    install(&fixture("forecast_last_value.onnx"), &model);
    f.sighup();
    let good = eventually(Duration::from_secs(5), || async {
        let before = metric(&f, fallbacks).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        metric(&f, fallbacks).await == before
            && forecaster(&f).await == ("forecast.onnx".to_string(), None)
    })
    .await;
    assert!(good.is_some(), "{}", forecast(&f).await);

    // A new file that does not fit, on reload: refused, the running model keeps running.
    install(&fixture("forecast_wrong_schema.onnx"), &model);
    f.sighup();
    let refused = eventually(Duration::from_secs(5), || async {
        forecaster(&f)
            .await
            .1
            .is_some_and(|e| e.contains("the running model keeps running"))
    })
    .await;
    assert!(refused.is_some(), "{}", forecast(&f).await);
    let (name, why) = forecaster(&f).await;
    assert_eq!(name, "forecast.onnx");
    assert!(why.unwrap().contains("window32-season5-v1"));

    // The configuration names another file, of the wrong width: the built-in forecaster runs.
    let wrong = dir.path().join("wide.onnx");
    install(&fixture("forecast_wrong_width.onnx"), &wrong);
    let mut next = config(f.proxy, f.admin);
    next.pools[0].autoscale.as_mut().unwrap().forecast_model = Some(wrong);
    std::fs::write(&f.config_path, next.to_toml()).unwrap();
    f.sighup();
    let builtin = eventually(Duration::from_secs(5), || async {
        let (name, why) = forecaster(&f).await;
        name == "builtin" && why.is_some_and(|e| e.contains("expected [N, 41]"))
    })
    .await;
    assert!(builtin.is_some(), "{}", forecast(&f).await);
    assert_eq!(metric(&f, loaded).await, 0.0);

    // And back to a good model.
    install(&fixture("forecast_last_value.onnx"), &model);
    let mut back = config(f.proxy, f.admin);
    back.pools[0].autoscale.as_mut().unwrap().forecast_model = Some(model.clone());
    std::fs::write(&f.config_path, back.to_toml()).unwrap();
    f.sighup();
    let again = eventually(Duration::from_secs(5), || async {
        forecaster(&f).await == ("forecast.onnx".to_string(), None)
    })
    .await;
    assert!(again.is_some(), "{}", forecast(&f).await);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(ok.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn check_shows_each_autoscaled_pool() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:18080\"]\n\n[[routes]]\npool = \"web\"\n\n[pools.web]\n\
         [[pools.web.backends]]\naddr = \"127.0.0.1:9001\"\n\n[pools.web.autoscale]\n\
         min_backends = 2\nmax_backends = 40\nhorizon_s = 120\nspare_backends = 1\n\
         forecast_model = \"models/forecast.onnx\"\nhistory_file = \"/var/lib/fulcrum/web.csv\"\n\
         history_prometheus = \"http://prometheus:9090\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(fulcrum_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "pool web: autoscale recommends 2..=40 backends at 70 % utilisation for the p90 120 s \
             ahead and 1 spare backend (1 more for 3600 s after the demand outruns the plan), \
             down only after 20 s lower, a rate every 10 s, series kept in /var/lib/fulcrum/web.csv, \
             else its record from http://prometheus:9090 at start, forecast model \
             models/forecast.onnx, capacity per backend estimated from the traffic"
        ),
        "{stdout}"
    );
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("max_backends = 40", "max_backends = 1"),
    )
    .unwrap();
    let out = std::process::Command::new(fulcrum_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            ": error: pools.web.autoscale.max_backends: max_backends (1) must be at least \
             min_backends (2)"
        ),
        "{stderr}"
    );
}

/// A pool with static weights whose backends report their load (`X-Backend-Load`) sizes itself
/// on that load, not on latency alone: the data plane keeps the report for autoscaled pools too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_pool_with_static_weights_reads_the_load_its_backends_report() {
    let source = "name = \"reported\"\nseed = 5\nduration_s = 8\n\n[load]\nrate_rps = 60\n\n\
                  [[backends]]\nname = \"b\"\ncount = 2\nconcurrency = 4\nservice_ms = 20.0\n";
    let (scenario, _) = fulcrum_scenario::parse_scenario(source, "reported.toml").unwrap();
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let servers = fulcrum_testbed::scenario::start_all(&scenario, loopback, LabClock::new(1.0))
        .await
        .unwrap();
    let addrs: Vec<_> = servers.iter().map(|s| (s.addr(), 1)).collect();
    let mut web = pool("web", Algorithm::RoundRobin, &addrs);
    assert_eq!(web.weights, fulcrum_config::WeightSource::Static);
    web.autoscale = Some(AutoscaleConfig {
        step: Duration::from_millis(500),
        horizon: Duration::from_secs(2),
        ..AutoscaleConfig::default()
    });
    let f = Fulcrum::start(|p, a| {
        let mut config = single_pool(p, a, web);
        config.control.tick = Duration::from_millis(100);
        config
    })
    .await;
    let cfg = LoadGenConfig {
        target: f.proxy,
        load: scenario.load.clone(),
        duration_s: 8.0,
        clock: LabClock::new(1.0),
        backend_names: vec!["b-1".into(), "b-2".into()],
        seed: 5,
        drain_timeout: Duration::from_secs(2),
        max_connections: None,
    };
    let stats = Arc::new(LoadStats::default());
    let generator = tokio::spawn({
        let stats = stats.clone();
        async move { loadgen::run(&cfg, stats).await }
    });
    let source = eventually(Duration::from_secs(7), || async {
        let r = get(f.admin, "/api/forecast?pool=web").await.unwrap();
        r.status == 200
            && serde_json::from_str::<serde_json::Value>(&r.body)
                .is_ok_and(|v| v["capacity_source"] == "reported load")
    })
    .await;
    let last = forecast(&f).await;
    generator.abort();
    assert!(
        source.is_some(),
        "capacity not from the reported load: {last:#}"
    );
    let capacity = last["capacity_per_backend_rps"].as_f64().unwrap();
    assert!(capacity.is_finite() && capacity > 0.0, "{last:#}");
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// fulcrum over `backend` as the pool `web` with `autoscale`, its control thread ticking every
/// 100 ms.
async fn autoscaled(backend: &BackendServer, autoscale: AutoscaleConfig) -> Fulcrum {
    let mut web = web_pool(Algorithm::LeastConnections, &[backend]);
    web.autoscale = Some(autoscale);
    Fulcrum::start(move |p, a| {
        let mut config = single_pool(p, a, web);
        config.control.tick = Duration::from_millis(100);
        config
    })
    .await
}

async fn wait_for_a_step(f: &Fulcrum) -> serde_json::Value {
    for _ in 0..50 {
        let r = get(f.admin, "/api/forecast?pool=web").await.unwrap();
        if r.status == 200 {
            return serde_json::from_str(&r.body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no forecast step in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_series_outlives_a_restart_in_its_history_file() {
    // Five cycles of 10 s counted in half-second steps, ending a second ago: what a process
    // that ran until a moment ago left behind.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.csv");
    let cycle = |i: usize| 100.0 + 60.0 * (2.0 * std::f64::consts::PI * i as f64 / 20.0).sin();
    let end = unix_now() - 1.0;
    let mut text = "t_s,rps\n".to_string();
    for i in 0..100 {
        text += &format!("{:.3},{:.3}\n", end - (99 - i) as f64 * 0.5, cycle(i));
    }
    std::fs::write(&file, &text).unwrap();

    let b = backends(1).await;
    let web = |step_ms: u64| AutoscaleConfig {
        step: Duration::from_millis(step_ms),
        horizon: Duration::from_secs(2),
        backend_capacity_rps: Some(50.0),
        history_file: Some(file.clone()),
        ..AutoscaleConfig::default()
    };
    let start = |a: AutoscaleConfig| autoscaled(&b[0], a);

    // The first step forecasts at once, with the season the history holds; without it the
    // pool would warm up for 12 steps and need 40 to find a 20-step season.
    let mut f = start(web(500)).await;
    let first = wait_for_a_step(&f).await;
    eprintln!("{}", first["reason"]);
    assert_eq!(first["warm"], true, "{first}");
    assert_eq!(first["season_s"], 10.0, "{first}");
    assert_eq!(
        first["history"]["restored_steps"], 100,
        "{}",
        first["history"]
    );
    assert_eq!(first["history"]["error"], serde_json::Value::Null);
    let s = series(&first);
    let filled = first["history"]["filled_steps"].as_u64().unwrap() as usize;
    assert!(filled <= 6, "{} steps filled", filled);
    assert_eq!(
        s.len(),
        100 + filled + 1,
        "history, the steps filled, the first step"
    );
    for (i, x) in s[..100].iter().enumerate() {
        assert!((x - cycle(i)).abs() < 1e-3, "step {i}: {x} vs {}", cycle(i));
    }
    // Steps nobody counted (the process was starting) continue the cycle.
    for (i, x) in s[100..100 + filled].iter().enumerate() {
        assert!((x - cycle(100 + i)).abs() < 1e-3, "filled step {i}: {x}");
    }

    // Every step is appended; a stopped process leaves its series for the next one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_stop = series(&forecast(&f).await).len();
    assert_eq!(
        metric(
            &f,
            "fulcrum_pool_history_write_failures_total{pool=\"web\"}"
        )
        .await,
        0.0
    );
    assert!(metric(&f, "fulcrum_pool_series_steps{pool=\"web\"}").await >= before_stop as f64);
    assert_eq!(
        metric(&f, "fulcrum_pool_season_seconds{pool=\"web\"}").await,
        10.0
    );
    f.signal("TERM");
    assert!(f.wait_exit(Duration::from_secs(15)).await.is_some());
    let rows = std::fs::read_to_string(&file).unwrap().lines().count() - 1;
    assert!(
        rows >= before_stop,
        "{rows} rows written, {before_stop} steps held"
    );
    // Rewritten at start on the process's own steps, the file is a series at a fixed step,
    // as `fulcrum forecast` reads one.
    let out = dir.path().join("forecast.csv");
    let forecast_cli = std::process::Command::new(fulcrum_bin())
        .args(["forecast", "--horizon-s", "2", "--input"])
        .arg(&file)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(forecast_cli.status.success(), "{forecast_cli:?}");
    let mut f = start(web(500)).await;
    let again = wait_for_a_step(&f).await;
    let restored = again["history"]["restored_steps"].as_u64().unwrap() as usize;
    assert_eq!(restored, rows, "{}", again["history"]);
    assert_eq!(again["warm"], true);
    let s2 = series(&again);
    for (i, x) in s2[..100].iter().enumerate() {
        assert!(
            (x - cycle(i)).abs() < 1e-3,
            "after a restart, step {i}: {x}"
        );
    }
    f.signal("TERM");
    assert!(f.wait_exit(Duration::from_secs(15)).await.is_some());
    let rows = std::fs::read_to_string(&file).unwrap().lines().count() - 1;

    // A series of another step is not used, and not lost either: set aside, said why, and
    // the pool starts afresh.
    let f = start(web(1000)).await;
    let other = wait_for_a_step(&f).await;
    let error = other["history"]["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "not used (its steps are 0.500 s apart, the pool's step_s is 1 s); moved to "
        ),
        "{error}"
    );
    assert!(error.ends_with("web.csv.unused"), "{error}");
    assert_eq!(other["history"]["restored_steps"], 0);
    assert_eq!(other["warm"], false);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("web.csv.unused"))
            .unwrap()
            .lines()
            .count()
            - 1,
        rows,
        "the rows set aside"
    );
    drop(f);

    // A file that cannot be written: counted, said, and the series kept in memory.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "not a directory").unwrap();
    let f = start(AutoscaleConfig {
        history_file: Some(plain.join("web.csv")),
        ..web(500)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = forecast(&f).await;
    let error = v["history"]["error"].as_str().unwrap();
    assert!(error.starts_with("write failed: "), "{error}");
    let failures = metric(
        &f,
        "fulcrum_pool_history_write_failures_total{pool=\"web\"}",
    )
    .await;
    assert!(failures >= 2.0, "{failures} failed writes");
    assert!(series(&v).len() >= 2);
    assert!(v["recommended_backends"].as_u64().unwrap() >= 1);
}

/// The pool's forecast view once its `history_prometheus` query has answered.
async fn prometheus_answer(f: &Fulcrum) -> serde_json::Value {
    for _ in 0..150 {
        if let Ok(r) = get(f.admin, "/api/forecast?pool=web").await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) {
                if v["history_prometheus"]["pending"] == false {
                    return v;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the history query did not answer in 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_the_pools_series_from_prometheus() {
    let b = backends(1).await;
    let web = |url: Option<String>, query: Option<&str>| AutoscaleConfig {
        step: Duration::from_millis(500),
        horizon: Duration::from_secs(2),
        backend_capacity_rps: Some(500.0),
        history_prometheus: url,
        history_query: query.map(str::to_string),
        ..AutoscaleConfig::default()
    };
    let start = |a: AutoscaleConfig| autoscaled(&b[0], a);

    // The first process counts a steady load while a real Prometheus scrapes it.
    let mut first = start(web(None, None)).await;
    let prometheus = Prometheus::scraping_every(first.admin, "500ms").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (_, failed, clients) = keep_busy(first.proxy, 1, "/", stop.clone());
    let recorded = eventually(Duration::from_secs(30), || async {
        prometheus
            .series("count_over_time(fulcrum_pool_requests_per_second{pool=\"web\"}[1m]) >= 20")
            .await
            .is_ok_and(|s| !s.is_empty())
    })
    .await;
    assert!(recorded.is_some(), "{}", prometheus.log());
    let counted = series(&forecast(&first).await);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(15)).await.is_some());
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    // The first steps and the last (the drain) are not the steady load.
    let steady = mean(&counted[2..counted.len() - 2]);
    assert!(steady > 20.0, "{counted:?}");

    // A new process (a new pod, without a history file) starts from Prometheus's record of
    // the pool: warm at once, at the rate the first one counted.
    let url = format!("http://{}", prometheus.addr);
    let second = start(web(Some(url.clone()), None)).await;
    let answered = prometheus_answer(&second).await;
    let status = &answered["history_prometheus"];
    eprintln!("{status}");
    assert_eq!(status["error"], serde_json::Value::Null, "{status}");
    assert_eq!(status["url"], url.as_str());
    assert_eq!(
        status["query"],
        "avg(fulcrum_pool_requests_per_second{pool=\"web\"})"
    );
    let restored = status["restored_steps"].as_u64().unwrap() as usize;
    assert!(restored >= 20, "{status}");
    assert_eq!(answered["warm"], true, "{answered}");
    let s = series(&answered);
    let filled = status["filled_steps"].as_u64().unwrap() as usize;
    assert!(s.len() >= restored + filled, "{} steps held", s.len());
    let before = mean(&s[2..restored + filled - 4]);
    assert!(
        (before - steady).abs() < 0.25 * steady,
        "Prometheus's record {before:.0} rps, the first process counted {steady:.0}"
    );

    // `fulcrum history` exports the same record as a series at a fixed step, the whole pool's
    // rate (the sum over the pods; one pod here), which `fulcrum forecast --input` and a
    // scenario's `load.trace` read.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("web.csv");
    let history = |extra: &[&str]| {
        std::process::Command::new(fulcrum_bin())
            .args(["history", "--hours", "0.05", "--output"])
            .arg(&csv)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = history(&["--prometheus", &url, "--pool", "web", "--step-s", "0.5"]);
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!("{said}");
    assert!(out.status.success(), "{said}");
    assert!(said.contains("rows of 0.5 s"), "{said}");
    let exported = fulcrum_forecast::series::read_series(&csv).unwrap();
    assert_eq!(exported.step_s, 0.5);
    assert!(exported.rps.len() >= 12, "{exported:?}");
    let mut busy: Vec<f64> = exported.rps.iter().copied().filter(|r| *r > 0.0).collect();
    busy.sort_by(f64::total_cmp);
    let median = busy[busy.len() / 2];
    assert!(
        (median - steady).abs() < 0.25 * steady,
        "exported {median:.0} rps, the first process counted {steady:.0}"
    );
    let scenario = dir.path().join("replay.toml");
    std::fs::write(
        &scenario,
        format!(
            "name = \"replay\"\nduration_s = {}\n[load]\ntrace = \"web.csv\"\n[[backends]]\nname = \"web\"\nconcurrency = 8\nservice_ms = 5\n",
            exported.rps.len() as f64 * 0.5
        ),
    )
    .unwrap();
    let (replay, _) = fulcrum_scenario::load_scenario(&scenario).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(replay.load.steps.len(), exported.rps.len() - 1);
    for (extra, code, why) in [
        (
            vec![
                "--prometheus",
                &url,
                "--query",
                "fulcrum_pool_requests_per_second or vector(1)",
            ],
            69,
            "the query answers 2 series, not one: aggregate it",
        ),
        (
            vec!["--prometheus", &url, "--pool", "nope", "--step-s", "0.5"],
            65,
            "has no sample",
        ),
        (
            vec!["--prometheus", &url, "--pool", "web", "--step-s", "0"],
            78,
            "--step-s must be",
        ),
    ] {
        let out = history(&extra);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {said}");
        assert!(said.contains(why), "{extra:?}: {said}");
    }

    // A query that answers several series, and a Prometheus that is not there: said why, and
    // the pool starts from now.
    for (url, query, why) in [
        (
            url.as_str(),
            Some("fulcrum_pool_requests_per_second or vector(1)"),
            "the query answers 2 series, not one: aggregate it",
        ),
        (
            &*format!("http://{}", dead_addr()),
            None,
            "cannot connect to 127.0.0.1:",
        ),
    ] {
        let f = start(web(Some(url.to_string()), query)).await;
        let v = prometheus_answer(&f).await;
        let error = v["history_prometheus"]["error"]
            .as_str()
            .unwrap_or_default();
        assert!(error.contains(why), "{error}");
        assert_eq!(v["history_prometheus"]["restored_steps"], 0);
        assert!(series(&v).len() < 12, "only what it counted");
    }
}

/// Several fulcrum pods in front of one pool (a Deployment's replicas behind a Service): each
/// counts only its share of the requests, but the backends report the load every pod's
/// traffic puts on them, so each pod's capacity estimate is its share of a backend and its
/// recommendation is for the whole pool — what the KEDA and HPA recipes' `max` over the pods
/// (`docker/k8s/autoscale/`) relies on. Measured against one pod taking all the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_two_pods_recommends_backends_for_the_whole_pool() {
    // Four backends of ~190 rps (4 slots, 20 ms median), planned at 50 %: ~95 rps each. At
    // 480 rps the pool needs 6 of them, and 3 would be what half the traffic needs.
    const RATE_RPS: f64 = 480.0;
    const PHASE_S: f64 = 8.0;
    let source = format!(
        "name = \"pods\"\nseed = 21\nduration_s = {PHASE_S}\n\n[load]\nrate_rps = {RATE_RPS}\n\n\
         [[backends]]\nname = \"b\"\ncount = 4\nconcurrency = 4\nservice_ms = 20.0\n"
    );
    let (scenario, _) = fulcrum_scenario::parse_scenario(&source, "pods.toml").unwrap();
    let servers = fulcrum_testbed::scenario::start_all_with_load_window(
        &scenario,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        LabClock::new(1.0),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let addrs: Vec<_> = servers.iter().map(|s| (s.addr(), 1)).collect();
    let names: Vec<String> = scenario.backends.iter().map(|b| b.name.clone()).collect();
    let start = || {
        let mut web = pool("web", Algorithm::LeastConnections, &addrs);
        web.autoscale = Some(AutoscaleConfig {
            step: Duration::from_millis(500),
            horizon: Duration::from_secs(2),
            target_utilization: 0.5,
            ..AutoscaleConfig::default()
        });
        Fulcrum::start(move |p, a| {
            let mut config = single_pool(p, a, web);
            config.control.tick = Duration::from_millis(100);
            config
        })
    };
    // Drive `targets` at `rate` each for a phase; the last reports of each, once the phase is
    // warm (its last 2 s). Each process starts right before its phase, so that its series is
    // of its traffic alone (no idle steps before a rise, which would be a burst).
    let phase = |targets: Vec<(std::net::SocketAddr, std::net::SocketAddr)>, rate: f64| {
        let names = names.clone();
        let mut load = scenario.load.clone();
        load.rate_rps = rate;
        async move {
            let stats = Arc::new(LoadStats::default());
            let generators: Vec<_> = targets
                .iter()
                .enumerate()
                .map(|(i, (proxy, _))| {
                    let cfg = LoadGenConfig {
                        target: *proxy,
                        load: load.clone(),
                        duration_s: PHASE_S,
                        clock: LabClock::new(1.0),
                        backend_names: names.clone(),
                        seed: 21 + i as u64,
                        drain_timeout: Duration::from_secs(2),
                        max_connections: None,
                    };
                    let stats = stats.clone();
                    tokio::spawn(async move { loadgen::run(&cfg, stats).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_secs_f64(PHASE_S - 2.0)).await;
            let mut reports: Vec<Vec<serde_json::Value>> = vec![Vec::new(); targets.len()];
            for _ in 0..4 {
                for (k, (_, admin)) in targets.iter().enumerate() {
                    let r = get(*admin, "/api/forecast?pool=web").await.unwrap();
                    assert_eq!(r.status, 200, "{r:?}");
                    reports[k].push(serde_json::from_str(&r.body).unwrap());
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            for g in generators {
                g.await.unwrap();
            }
            assert_eq!(stats.errors(), 0, "client-visible errors");
            reports
        }
    };
    // The median over a phase's last reports of a number in them.
    let median = |reports: &[serde_json::Value], key: &str| {
        let mut v: Vec<f64> = reports.iter().map(|r| r[key].as_f64().unwrap()).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    let alone = start().await;
    let one = phase(vec![(alone.proxy, alone.admin)], RATE_RPS).await;
    drop(alone);
    let (pod_a, pod_b) = (start().await, start().await);
    let two = phase(
        vec![(pod_a.proxy, pod_a.admin), (pod_b.proxy, pod_b.admin)],
        RATE_RPS / 2.0,
    )
    .await;
    eprintln!("alone: {:#}", one[0].last().unwrap());
    eprintln!("pod a: {:#}", two[0].last().unwrap());
    eprintln!("pod b: {:#}", two[1].last().unwrap());
    let capacity_alone = median(&one[0], "capacity_per_backend_rps");
    let recommended_alone = median(&one[0], "recommended_backends");
    assert_eq!(one[0].last().unwrap()["capacity_source"], "reported load");
    // One backend serves ~190 rps: the pod taking all the traffic sees it whole.
    assert!(
        (120.0..260.0).contains(&capacity_alone),
        "capacity {capacity_alone}"
    );
    assert!(
        (6.0..=10.0).contains(&recommended_alone),
        "alone: {recommended_alone}"
    );
    for (k, name) in ["pod a", "pod b"].iter().enumerate() {
        let reports = &two[k];
        assert_eq!(reports.last().unwrap()["capacity_source"], "reported load");
        // Half the requests for the same load: half a backend's capacity, from this pod's view.
        let share = median(reports, "capacity_per_backend_rps") / capacity_alone;
        assert!(
            (0.35..0.65).contains(&share),
            "{name}: capacity {share:.2} of one pod's"
        );
        // And so backends for the whole pool, not for its half of the requests.
        let recommended = median(reports, "recommended_backends");
        assert!(
            (recommended - recommended_alone).abs() <= 1.0,
            "{name} recommends {recommended}, one pod alone {recommended_alone}: {:#}",
            reports.last().unwrap()
        );
    }
}
