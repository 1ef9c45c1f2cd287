//! End-to-end tests of the control loop: the real binary, real ONNX Runtime, real sockets.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fulcrum_config::ControlConfig;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("crates/control/tests/fixtures").join(name)
}

/// Replace `path` atomically, as a deploy would.
fn install(src: &Path, path: &Path) {
    let tmp = path.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The control loop ticking every 100 ms with `model`, other settings at their defaults.
fn control_with(model: PathBuf) -> ControlConfig {
    ControlConfig {
        tick: Duration::from_millis(100),
        model,
        ..ControlConfig::default()
    }
}

async fn weights(f: &Fulcrum) -> Vec<f64> {
    f.pools().await["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_f64().unwrap())
        .collect()
}

/// The tick of the control loop's newest decision (0 before the first).
async fn latest_tick(f: &Fulcrum) -> u64 {
    let d: serde_json::Value =
        serde_json::from_str(&get(f.admin, "/api/decisions?limit=1").await.unwrap().body).unwrap();
    d["decisions"][0]["tick"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_loses_model_weight_and_regains_it_after_healing() {
    let b = backends(3).await;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("balancer.onnx");
    install(&fixture("prefer_low_p99.onnx"), &model);
    let record = dir.path().join("features.csv");
    let control = ControlConfig {
        record: Some(record.clone()),
        ..control_with(model)
    };
    let f = Fulcrum::start(model_pool(&[&b[0], &b[1], &b[2]], control)).await;
    assert_eq!(metric(&f, "fulcrum_model_loaded").await, 1.0);
    // The control loop owns a model pool's weights: the admin API refuses to set them.
    let r = request(
        f.admin,
        "PUT",
        "/api/pools/web/weights",
        JSON,
        format!(r#"{{"{}": 5}}"#, b[0].addr()).as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409, "{r:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let start_tick = latest_tick(&f).await;
    let (ok, failed, tasks) = keep_busy(f.proxy, 6, "/", stop.clone());
    // The weights under load: a few ticks of the control loop with traffic on every backend.
    let loaded = eventually(Duration::from_secs(5), || async {
        ok.load(Ordering::Relaxed) >= 100 && latest_tick(&f).await >= start_tick + 3
    })
    .await;
    assert!(loaded.is_some(), "no control ticks under load");
    let before = weights(&f).await;
    assert!(before.iter().all(|w| *w > 0.0), "{before:?}");

    b[2].set_delay(Duration::from_millis(40));
    let dropped = eventually(Duration::from_secs(3), || async {
        let w = weights(&f).await;
        w[2] < 0.25 * w[0].min(w[1])
    })
    .await;
    assert!(
        dropped.is_some(),
        "slow backend kept its weight: {:?}",
        weights(&f).await
    );
    eprintln!(
        "weight dropped after {:?}: {:?}",
        dropped.unwrap(),
        weights(&f).await
    );
    let w = weights(&f).await;
    assert!(
        w[2] > 0.0,
        "the floor keeps a slow backend observable: {w:?}"
    );

    b[2].set_delay(Duration::ZERO);
    let healed = eventually(Duration::from_secs(5), || async {
        let w = weights(&f).await;
        w[2] > 0.6 * w[0].max(w[1])
    })
    .await;
    assert!(
        healed.is_some(),
        "weight did not recover: {:?}",
        weights(&f).await
    );

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);

    // The decisions explain themselves.
    let d = get(f.admin, "/api/decisions?limit=5&pool=web")
        .await
        .unwrap();
    let d: serde_json::Value = serde_json::from_str(&d.body).unwrap();
    let first = &d["decisions"][0];
    assert_eq!(first["source"], "model");
    assert_eq!(first["features"].as_array().unwrap().len(), 3);
    assert_eq!(first["features"][0].as_array().unwrap().len(), 16);
    assert_eq!(first["raw_scores"].as_array().unwrap().len(), 3);
    assert!(first["guardrails"].is_array());

    // The same features were recorded for retraining: a header and one row per backend per tick.
    let recorded = std::fs::read_to_string(&record).unwrap();
    let mut lines = recorded.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("t_s,pool,backend,share,"), "{header}");
    assert!(header.ends_with(",weight"), "{header}");
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= 12, "{} rows", rows.len());
    assert!(rows
        .iter()
        .all(|r| r.split(',').count() == header.split(',').count()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_refuses_bad_models_and_never_fails_a_request() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("balancer.onnx");
    install(&fixture("prefer_low_p99.onnx"), &model);
    let f = Fulcrum::start(model_pool(&[&b[0], &b[1]], control_with(model.clone()))).await;
    assert_eq!(metric(&f, "fulcrum_model_loaded").await, 1.0);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = keep_busy(f.proxy, 4, "/", stop.clone());
    // The model is deciding under load before the first reload.
    let deciding = eventually(Duration::from_secs(5), || async {
        ok.load(Ordering::Relaxed) >= 20 && latest_tick(&f).await > 0
    })
    .await;
    assert!(
        deciding.is_some(),
        "no decisions under load before the reloads"
    );

    // Each bad file is noticed by the file watch, refused, and the running model stays.
    let bad = [
        "corrupt.onnx",
        "wrong_schema.onnx",
        "wrong_width.onnx",
        "nan_output.onnx",
    ];
    for (i, name) in bad.iter().enumerate() {
        install(&fixture(name), &model);
        let refused = eventually(Duration::from_secs(3), || async {
            metric(&f, "fulcrum_model_reloads_total{result=\"error\"}").await >= (i + 1) as f64
        })
        .await;
        assert!(refused.is_some(), "{name} was not refused");
        let r = request(f.admin, "POST", "/api/model/reload", JSON, b"")
            .await
            .unwrap();
        assert_eq!(r.status, 422, "{name}: {r:?}");
        assert!(r.body.contains("keeps running"), "{}", r.body);
        assert_eq!(metric(&f, "fulcrum_model_loaded").await, 1.0, "{name}");
    }
    // The next decision is still the model's.
    let refused_at = latest_tick(&f).await;
    let decided = eventually(Duration::from_secs(3), || async {
        latest_tick(&f).await > refused_at
    })
    .await;
    assert!(decided.is_some(), "no decision after the refusals");
    let d: serde_json::Value =
        serde_json::from_str(&get(f.admin, "/api/decisions?limit=1").await.unwrap().body).unwrap();
    assert_eq!(d["decisions"][0]["source"], "model");

    // A good file is swapped in, by the watch and on request.
    install(&fixture("prefer_low_p99.onnx"), &model);
    let swapped = eventually(Duration::from_secs(3), || async {
        metric(&f, "fulcrum_model_reloads_total{result=\"ok\"}").await >= 1.0
    })
    .await;
    assert!(swapped.is_some());
    let r = request(f.admin, "POST", "/api/model/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // Traffic goes on after the swap.
    let ok_at_swap = ok.load(Ordering::Relaxed);
    let flowing = eventually(Duration::from_secs(5), || async {
        ok.load(Ordering::Relaxed) >= ok_at_swap + 20
    })
    .await;
    assert!(flowing.is_some(), "no traffic after the swap");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a request failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_runtime_the_heuristic_takes_over_and_traffic_flows() {
    let b = backends(2).await;
    let control = ControlConfig {
        ort_library: Some("/nonexistent/libonnxruntime.so".into()),
        ..control_with(ControlConfig::default().model)
    };
    let f = Fulcrum::start(model_pool(&[&b[0], &b[1]], control)).await;
    for _ in 0..20 {
        assert_eq!(get(f.proxy, "/").await.unwrap().status, 200);
    }
    assert_eq!(metric(&f, "fulcrum_model_loaded").await, 0.0);
    let ticked = eventually(Duration::from_secs(3), || async {
        let d: serde_json::Value =
            serde_json::from_str(&get(f.admin, "/api/decisions?limit=1").await.unwrap().body)
                .unwrap();
        d["decisions"][0]["source"] == "heuristic"
    })
    .await;
    assert!(ticked.is_some(), "no heuristic decisions");
    let r = request(f.admin, "POST", "/api/model/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    assert!(
        r.body.contains("ONNX Runtime is not available"),
        "{}",
        r.body
    );
    assert!(r.body.contains("heuristic keeps running"), "{}", r.body);
}

/// Whether ONNX Runtime's library is mapped into process `pid`.
fn runtime_mapped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains("libonnxruntime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_runtime_is_loaded_only_once_a_pool_has_weights_from_the_model() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("balancer.onnx");
    install(&fixture("prefer_low_p99.onnx"), &model);
    let control = control_with(model);
    let pool = web_pool(Algorithm::LeastConnections, &[&b[0], &b[1]]);
    let f = Fulcrum::start(move |p, a| {
        let mut config = fulcrum_lab::harness::single_pool(p, a, pool);
        config.control = control;
        config
    })
    .await;
    // Static weights only: the model is configured but not loaded, and the API says why.
    assert_eq!(get(f.proxy, "/").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = &f.pools().await["model"];
    assert_eq!(state["loaded"], false, "{state}");
    assert!(
        state["error"]
            .as_str()
            .unwrap()
            .contains("no pool has weights"),
        "{state}"
    );
    assert_eq!(metric(&f, "fulcrum_model_loaded").await, 0.0);
    assert!(
        !runtime_mapped(f.pid()),
        "ONNX Runtime mapped without a model pool"
    );

    // A reload gives the pool its weights from the model: the model loads and scores it.
    let mut config = f.running_config();
    config.pools[0].weights = WeightSource::Model;
    f.write_config(&config);
    f.sighup();
    let loaded = eventually(Duration::from_secs(10), || async {
        metric(&f, "fulcrum_model_loaded").await == 1.0
    })
    .await;
    assert!(loaded.is_some(), "{}", f.log_tail());
    let state = &f.pools().await["model"];
    assert_eq!(state["loaded"], true, "{state}");
    assert!(state["error"].is_null(), "{state}");
    assert!(runtime_mapped(f.pid()));
    let ticked = eventually(Duration::from_secs(5), || async {
        latest_tick(&f).await > 0
    })
    .await;
    assert!(ticked.is_some(), "no decision after the model loaded");
    assert_eq!(get(f.proxy, "/").await.unwrap().status, 200);
}
