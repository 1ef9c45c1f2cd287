//! The open-loop load generator against real scenario backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_lab::loadgen::{self, LoadGenConfig, LoadStats};
use fulcrum_scenario::{Load, ScenarioBackend};
use fulcrum_testbed::scenario::{LabClock, ScenarioServer};

fn backend(name: &str, concurrency: u32, service_ms: f64) -> ScenarioBackend {
    ScenarioBackend {
        name: name.into(),
        concurrency,
        service_ms,
        service_jitter: 0.0,
        error_rate: 0.0,
        error_ms: 0.0,
        weight: 1,
        events: Vec::new(),
    }
}

/// A scenario backend server on a loopback port, in real time.
async fn serve(name: &str, concurrency: u32, service_ms: f64) -> ScenarioServer {
    ScenarioServer::start(
        &backend(name, concurrency, service_ms),
        "127.0.0.1:0".parse().unwrap(),
        1,
        LabClock::new(1.0),
    )
    .await
    .unwrap()
}

/// Mean latency of `records`, in ms.
fn mean(records: &[fulcrum_report::RequestRecord]) -> f64 {
    records.iter().map(|r| r.latency_ms).sum::<f64>() / records.len() as f64
}

fn config(server: &ScenarioServer, rate: f64, duration_s: f64, post: f64) -> LoadGenConfig {
    LoadGenConfig {
        target: server.addr(),
        load: Load {
            rate_rps: rate,
            steps: Vec::new(),
            non_idempotent_fraction: post,
            diurnal: None,
            bursts: Vec::new(),
        },
        duration_s,
        clock: LabClock::new(1.0),
        backend_names: vec!["other".into(), server.name().to_string()],
        seed: 11,
        drain_timeout: Duration::from_secs(10),
        max_connections: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_the_target_rate() {
    let server = serve("fast", 256, 1.0).await;
    let cfg = config(&server, 800.0, 3.0, 0.25);
    let stats = Arc::new(LoadStats::default());
    let start = Instant::now();
    let records = loadgen::run(&cfg, stats.clone()).await;
    let wall = start.elapsed().as_secs_f64();

    let n = records.len() as f64;
    let rate = n / 3.0;
    assert!((rate - 800.0).abs() <= 40.0, "offered {rate} rps");
    // Sent on schedule: the run takes the scenario's duration, not more.
    assert!(wall < 3.5, "run took {wall} s");
    assert_eq!(server.requests(), records.len() as u64);
    assert_eq!(stats.sent(), records.len() as u64);
    assert_eq!(stats.completed(), records.len() as u64);
    assert_eq!(stats.errors(), 0);
    assert!(records
        .iter()
        .all(|r| r.ok && r.attempts == vec![1] && r.retries == 0));
    assert!(records.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
    assert!(records.last().unwrap().arrival_s < 3.0);
    let mut lat: Vec<f64> = records.iter().map(|r| r.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let p50 = lat[lat.len() / 2];
    assert!((1.0..20.0).contains(&p50), "p50 {p50} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_counts_from_the_scheduled_time() {
    // Capacity 20 rps, offered 40 rps: a queue builds at about 20 requests per second.
    let server = serve("slow", 1, 50.0).await;
    let cfg = config(&server, 40.0, 2.0, 0.0);
    let records = loadgen::run(&cfg, Arc::new(LoadStats::default())).await;
    assert!(records.len() > 60, "{} requests", records.len());
    assert!(records.iter().all(|r| r.ok));
    assert_eq!(server.max_busy(), 1);
    let q = records.len() / 4;
    let early = mean(&records[..q]);
    let late = mean(&records[records.len() - q..]);
    assert!(late > 600.0, "late requests waited {late} ms");
    // The first request found no queue: its latency is its service time and the connection's
    // setup, whatever the machine's load, far from what the last ones waited.
    let first = records[0].latency_ms;
    assert!(first < late / 3.0, "first {first} ms, late {late} ms");
    assert!(late > early * 3.0, "early {early} ms, late {late} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cap_bounds_requests_under_way_and_their_wait_counts() {
    // The backend could serve 8 at once; two connections let through at most 40 rps of the 80
    // offered, and the rest wait for a connection from their scheduled instant.
    let server = serve("wide", 8, 50.0).await;
    let mut cfg = config(&server, 80.0, 1.5, 0.0);
    cfg.max_connections = Some(2);
    let records = loadgen::run(&cfg, Arc::new(LoadStats::default())).await;
    assert!(records.len() > 80, "{} requests", records.len());
    assert!(records.iter().all(|r| r.ok));
    assert_eq!(server.max_busy(), 2);
    let q = records.len() / 4;
    let late = mean(&records[records.len() - q..]);
    assert!(late > 300.0, "late requests waited {late} ms");
}
