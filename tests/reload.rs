//! End-to-end tests of configuration reloads: what fulcrum knows about its backends survives
//! them, requests in flight are not lost, and backends added by a reload start slowly.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fulcrum_config::BackendConfig;

/// Send `SIGHUP` and wait until the reload it asks for has been applied.
async fn sighup_and_wait(f: &Fulcrum) {
    let before = metric(f, "fulcrum_config_reloads_total{result=\"ok\"}").await;
    f.sighup();
    let done = eventually(Duration::from_secs(5), || async {
        metric(f, "fulcrum_config_reloads_total{result=\"ok\"}").await > before
    })
    .await;
    assert!(done.is_some(), "the reload after SIGHUP never completed");
}

async fn weights(f: &Fulcrum) -> Vec<f64> {
    f.backends()
        .await
        .iter()
        .map(|b| b["weight"].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_known_to_be_down_stays_down_across_a_reload() {
    let mut b = backends(3).await;
    let f = Fulcrum::web(web_pool(Algorithm::RoundRobin, &[&b[0], &b[1], &b[2]])).await;
    let dead = b[1].addr();
    b[1].stop().await;
    let down = eventually(Duration::from_secs(3), || async {
        !f.backend_healthy(dead).await
    })
    .await;
    assert!(down.is_some(), "/api/pools never showed {dead} down");
    let retries_before = metric(&f, "fulcrum_retries_total{").await;

    sighup_and_wait(&f).await;
    assert!(!f.backend_healthy(dead).await, "the reload revived {dead}");
    let counts = tally(&f, 200).await;
    assert_eq!(counts.get("b1"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b3"), Some(&100), "{counts:?}");
    assert_eq!(
        metric(&f, "fulcrum_retries_total{").await,
        retries_before,
        "a request went to the dead backend and was retried"
    );
    assert_eq!(metric(&f, "fulcrum_config_last_reload_success").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_pool_keeps_its_weights_across_a_reload() {
    let b = backends(3).await;
    b[2].set_delay(Duration::from_millis(30));
    let dir = tempfile::tempdir().unwrap();
    // No model file: the built-in heuristic tunes the pool, through the same loop.
    let control = ControlConfig {
        tick: Duration::from_millis(100),
        model: dir.path().join("missing.onnx"),
        max_step: 1.25,
        ..ControlConfig::default()
    };
    let f = Fulcrum::start(model_pool(&[&b[0], &b[1], &b[2]], control)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (_, failed, load) = keep_busy(f.proxy, 4, "/", stop.clone());
    let tuned = eventually(Duration::from_secs(10), || async {
        let w = weights(&f).await;
        w[2] < 0.5 * w[0].min(w[1])
    })
    .await;
    assert!(
        tuned.is_some(),
        "the slow backend never lost weight: {:?}",
        weights(&f).await
    );

    let before = weights(&f).await;
    let r = request(f.admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let after = weights(&f).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    // At most a tick or two ran in between, each moving a weight by at most `max_step`.
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        let ratio = a / b;
        assert!(
            (1.0 / 1.6..=1.6).contains(&ratio),
            "backend {i}: {b} before the reload, {a} after ({before:?} → {after:?})"
        );
    }
    assert!(after[2] < 0.8 * after[0].min(after[1]), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_no_request() {
    let b = backends(4).await;
    let f = Fulcrum::web(web_pool(
        Algorithm::LeastConnections,
        &[&b[0], &b[1], &b[2]],
    ))
    .await;
    let three = f.running_config();
    let mut four = three.clone();
    four.pools[0].backends.push(BackendConfig {
        addr: b[3].addr(),
        weight: 2,
    });

    // About 300 requests/s: 3 keep-alive clients, each request held 10 ms by its backend.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, load) = keep_busy(f.proxy, 3, "/?delay_ms=10", stop.clone());
    // Every 200 ms rather than every second, so the test stays short: what a reload does does
    // not depend on how long the one before it is past. Each reload adds or removes a backend,
    // so requests in flight on a removed one have to finish.
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        f.write_config(if i % 2 == 0 { &four } else { &three });
        f.sighup();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests were lost");
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 300, "too little load: {served}");
    assert!(metric(&f, "fulcrum_config_reloads_total{result=\"ok\"}").await >= 2.0);
    // Leases taken before a reload were released where the current pools count them.
    let idle = eventually(Duration::from_secs(2), || f.idle()).await;
    assert!(
        idle.is_some(),
        "in-flight counts leaked: {:?}",
        f.backends().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_added_by_a_reload_starts_slowly() {
    let b = backends(3).await;
    let mut pool = web_pool(Algorithm::WeightedRoundRobin, &[&b[0], &b[1]]);
    pool.slow_start = Duration::from_millis(3000);
    let f = Fulcrum::web(pool).await;
    let mut three = f.running_config();
    three.pools[0].backends.push(BackendConfig {
        addr: b[2].addr(),
        weight: 1,
    });
    f.write_config(&three);
    let r = request(f.admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let added = f.backends().await[2].clone();
    assert_eq!(added["slow_start"], true, "{added}");
    assert!(added["ramp_percent"].as_f64().unwrap() < 50.0, "{added}");
    assert_eq!(
        metric(
            &f,
            &format!(
                "fulcrum_backend_slow_start{{pool=\"web\",backend=\"{}\"}}",
                b[2].addr()
            )
        )
        .await,
        1.0
    );

    // Early in the ramp (10 % rising to about 30 %) the new backend gets a small share; at
    // full weight it would get a third (67 of 200).
    let early = tally(&f, 200).await;
    let share = early.get("b3").copied().unwrap_or(0);
    assert!(share <= 40, "{early:?}");

    let over = eventually(Duration::from_secs(5), || async {
        f.backends().await[2]["slow_start"] == false
    })
    .await;
    assert!(over.is_some(), "the ramp never ended");
    let full = tally(&f, 300).await;
    assert_eq!(full.get("b3"), Some(&100), "{full:?}");
    let gauge = format!(
        "fulcrum_backend_slow_start{{pool=\"web\",backend=\"{}\"}}",
        b[2].addr()
    );
    assert_eq!(metric(&f, &gauge).await, 0.0);
}
