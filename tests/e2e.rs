//! End-to-end tests: the real `fulcrum` binary, real loopback backends, real sockets.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fulcrum_config::{BackendConfig, HostMatch, RouteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_300_requests_evenly() {
    let b = backends(3).await;
    let web = web_pool(Algorithm::RoundRobin, &[&b[0], &b[1], &b[2]]);
    let f = Fulcrum::web(web).await;
    let counts = tally(&f, 300).await;
    assert_eq!(counts.get("b1"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b2"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b3"), Some(&100), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_offered_again() {
    let b = backends(1).await;
    let f = Fulcrum::web(web_pool(Algorithm::RoundRobin, &[&b[0]])).await;
    // Sequential requests, first over one client connection, then each over a new one: the
    // proxy's connection to the backend goes back to its pool after every answer and is taken
    // from it for the next request, whichever client sends it.
    let mut conn = Conn::open(f.proxy).await.unwrap();
    for _ in 0..50 {
        let r = conn.send("GET", "/", &[], b"").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    for _ in 0..10 {
        let mut fresh = Conn::open(f.proxy).await.unwrap();
        let r = fresh.send("GET", "/", &[], b"").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(b[0].requests(), 60);
    // One, or a second when a request arrives before the previous answer's connection is back
    // in the pool; sixty if reuse were refused.
    let opened = b[0].request_connections();
    assert!(
        (1..=3).contains(&opened),
        "60 requests over {opened} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smooth_weighted_5_1_1_gives_500_100_100() {
    let b = backends(3).await;
    let mut web = web_pool(Algorithm::WeightedRoundRobin, &[&b[0], &b[1], &b[2]]);
    web.backends[0].weight = 5;
    let f = Fulcrum::web(web).await;
    let counts = tally(&f, 700).await;
    assert_eq!(counts.get("b1"), Some(&500), "{counts:?}");
    assert_eq!(counts.get("b2"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b3"), Some(&100), "{counts:?}");
    // Smooth: each cycle of 7 interleaves as a a b a c a a, not a a a a a b c.
    let mut conn = Conn::open(f.proxy).await.unwrap();
    let mut seq = String::new();
    for _ in 0..14 {
        let r = conn.send("GET", "/", &[], b"").await.unwrap();
        seq.push_str(r.header("x-backend").unwrap());
    }
    assert_eq!(seq, "b1b1b2b1b3b1b1".repeat(2), "not smooth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_a_slow_backend_clearly_fewer() {
    let b = backends(3).await;
    b[2].set_delay(Duration::from_millis(200));
    let web = web_pool(Algorithm::LeastConnections, &[&b[0], &b[1], &b[2]]);
    let f = Fulcrum::web(web).await;
    // 200 requests from 20 concurrent keep-alive clients.
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let next = next.clone();
        let proxy = f.proxy;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(proxy).await.unwrap();
            let mut seen = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < 200 {
                let r = conn.send("GET", "/", &[], b"").await.unwrap();
                assert_eq!(r.status, 200);
                seen.push(r.header("x-backend").unwrap().to_string());
            }
            seen
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for name in t.await.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    let slow = counts.get("b3").copied().unwrap_or(0);
    let fast = counts
        .get("b1")
        .copied()
        .unwrap_or(0)
        .min(counts.get("b2").copied().unwrap_or(0));
    assert_eq!(counts.values().sum::<usize>(), 200);
    assert!(
        slow * 3 < fast,
        "slow backend got {slow}, fast ones at least {fast}: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_backend_under_load_is_invisible_to_gets() {
    let mut b = backends(3).await;
    let web = web_pool(Algorithm::LeastConnections, &[&b[0], &b[1], &b[2]]);
    let f = Fulcrum::web(web).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, failures, ok, proxy) = (stop.clone(), failures.clone(), ok.clone(), f.proxy);
        load.push(tokio::spawn(async move {
            let mut conn = Conn::open(proxy).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match conn.send_retry_closed("GET", "/?delay_ms=2").await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("client-visible failure: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                        conn = Conn::open(proxy).await.unwrap();
                    }
                }
            }
        }));
    }
    // The backend goes away under load: wait until every backend is serving it.
    let loaded = eventually(Duration::from_secs(5), || async {
        b.iter().all(|s| s.requests() >= 20)
    })
    .await;
    assert!(loaded.is_some(), "the load never reached every backend");
    let victim = b[1].addr();
    b[1].stop().await;
    // Health window: 2 failed checks at 200 ms intervals, plus one interval of slack.
    let down = eventually(Duration::from_secs(3), || async {
        !f.backend_healthy(victim).await
    })
    .await;
    assert!(down.is_some(), "/api/pools never showed {victim} down");
    // GETs go on while it is down.
    let ok_while_down = ok.load(Ordering::Relaxed);
    let served = eventually(Duration::from_secs(5), || async {
        ok.load(Ordering::Relaxed) >= ok_while_down + 100
    })
    .await;
    assert!(served.is_some(), "the load stalled while {victim} was down");
    b[1].restart().await.unwrap();
    let up = eventually(Duration::from_secs(3), || async {
        f.backend_healthy(victim).await
    })
    .await;
    assert!(up.is_some(), "/api/pools never showed {victim} up again");
    let served_before = b[1].requests();
    let rejoined = eventually(Duration::from_secs(5), || async {
        b[1].requests() > served_before
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "GETs saw errors");
    assert!(
        ok.load(Ordering::Relaxed) > 200,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(rejoined.is_some(), "the recovered backend got no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_elsewhere_for_any_method() {
    let b = backends(1).await;
    let dead: std::net::SocketAddr = dead_addr();
    let mut web = web_pool(Algorithm::RoundRobin, &[&b[0]]);
    web.backends.insert(
        0,
        BackendConfig {
            addr: dead,
            weight: 1,
        },
    );
    // Checks slow enough that the dead backend is still in rotation for this test.
    web.health_check.interval = Duration::from_secs(60);
    web.health_check.timeout = Duration::from_millis(500);
    let f = Fulcrum::web(web).await;
    for method in ["GET", "POST", "GET", "POST"] {
        let r = request(f.proxy, method, "/", &[], b"payload")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{method}: {r:?}");
        assert_eq!(r.header("x-backend"), Some("b1"));
    }
    let metrics = get(f.admin, "/metrics").await.unwrap().body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fulcrum_retries_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_connect_retry_only_idempotent_requests() {
    // A backend that accepts, reads the request and closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude = listener.local_addr().unwrap();
    let rude_hits = Arc::new(AtomicU64::new(0));
    let hits = rude_hits.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if let Ok(n) = s.read(&mut buf).await {
                    if buf[..n].starts_with(b"GET /healthz") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                }
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    let b = backends(1).await;
    let mut web = web_pool(Algorithm::RoundRobin, &[&b[0]]);
    web.backends.insert(
        0,
        BackendConfig {
            addr: rude,
            weight: 1,
        },
    );
    web.max_consecutive_failures = 1000;
    let f = Fulcrum::web(web).await;
    let mut gets = 0;
    let mut posts_failed = 0;
    for i in 0..6 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = request(f.proxy, method, "/", &[], b"x").await.unwrap();
        if method == "GET" {
            assert_eq!(r.status, 200, "GET must be retried: {r:?}");
            gets += 1;
        } else if r.status == 502 {
            posts_failed += 1;
        } else {
            assert_eq!(r.header("x-backend"), Some("b1"));
        }
    }
    assert_eq!(gets, 3);
    // Round robin alternates, so some POSTs land on the rude backend and must not be replayed.
    assert!(posts_failed >= 1, "no POST reached the failing backend");
    assert!(rude_hits.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_hop_by_hop() {
    let b = backends(1).await;
    let web = web_pool(Algorithm::RoundRobin, &[&b[0]]);
    let f = Fulcrum::web(web).await;
    let r = request(
        f.proxy,
        "GET",
        "/echo",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let echo = r.body.to_ascii_lowercase();
    assert!(
        echo.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{echo}"
    );
    assert!(echo.contains("x-forwarded-proto: http\n"), "{echo}");
    assert!(echo.contains("x-forwarded-host: localhost\n"), "{echo}");
    assert!(!echo.contains("x-secret"), "{echo}");
    assert!(!echo.contains("keep-alive: timeout"), "{echo}");
}

async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_and_others_are_unaffected() {
    let b = backends(1).await;
    let web = web_pool(Algorithm::RoundRobin, &[&b[0]]);
    let f = Fulcrum::web(web).await;
    // A healthy keep-alive client before and after.
    let mut good = Conn::open(f.proxy).await.unwrap();
    assert_eq!(good.send("GET", "/", &[], b"").await.unwrap().status, 200);

    let smuggle = raw_exchange(
        f.proxy,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(smuggle.starts_with("HTTP/1.1 400"), "{smuggle}");
    assert_eq!(
        b[0].requests(),
        1,
        "the smuggling attempt must not reach the backend"
    );

    let garbage = raw_exchange(f.proxy, b"GARBAGE\r\n\r\n").await;
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage}"
    );

    assert_eq!(good.send("GET", "/", &[], b"").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_404_and_no_healthy_backend_503() {
    let b = backends(2).await;
    let dead: std::net::SocketAddr = dead_addr();
    let (a0, a1) = (b[0].addr(), b[1].addr());
    let route = |host: &str, path_prefix: &str, pool: &str| RouteConfig {
        host: HostMatch::parse(host).unwrap(),
        path_prefix: path_prefix.into(),
        pool: pool.into(),
        redirect_https: false,
    };
    let mut gone = pool("gone", Algorithm::LeastConnections, &[(dead, 1)]);
    gone.health_check.interval = Duration::from_millis(100);
    gone.health_check.timeout = Duration::from_millis(50);
    gone.health_check.unhealthy_threshold = 1;
    let f = Fulcrum::start(|p, a| {
        let mut c = single_pool(p, a, pool("api", Algorithm::RoundRobin, &[(a0, 1)]));
        c.pools.push(pool("static", Algorithm::P2cEwma, &[(a1, 1)]));
        c.pools.push(gone);
        c.routes = vec![
            route("api.example.com", "/", "api"),
            route("*.example.com", "/static", "static"),
            route("*.example.com", "/gone", "gone"),
        ];
        c
    })
    .await;
    let host = |h: &'static str| [("host", h)];
    let mut c = Conn::open(f.proxy).await.unwrap();
    let r = c
        .send("GET", "/x", &host("API.example.com:8080"), b"")
        .await
        .unwrap();
    assert_eq!(r.header("x-backend"), Some("b1"));
    let r = c
        .send("GET", "/static/a.css", &host("www.example.com"), b"")
        .await
        .unwrap();
    assert_eq!(r.header("x-backend"), Some("b2"));
    let r = c
        .send("GET", "/other", &host("www.example.com"), b"")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = c
        .send(
            "POST",
            "/",
            &host("example.org"),
            b"a body the proxy must drain",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "no route for this host and path\n");
    // A 404 keeps the connection usable.
    let r = c
        .send("GET", "/x", &host("api.example.com"), b"")
        .await
        .unwrap();
    assert_eq!(r.header("x-backend"), Some("b1"));
    let down = eventually(Duration::from_secs(3), || async {
        get(f.admin, "/readyz")
            .await
            .map(|r| r.status == 503)
            .unwrap_or(false)
    })
    .await;
    assert!(
        down.is_some(),
        "/readyz should report the pool without a healthy backend"
    );
    let r = request(f.proxy, "GET", "/gone/x", &host("www.example.com"), b"")
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{r:?}");
}

#[test]
fn check_reports_every_mistake_and_exits_78() {
    let broken = repo_root().join("config/examples/broken.toml");
    for sub in ["check", "run"] {
        let out = std::process::Command::new(fulcrum_bin())
            .args([sub, "-c"])
            .arg(&broken)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{sub}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
        assert!(
            errors.len() >= 5,
            "{sub}: expected every mistake, got:\n{stderr}"
        );
        for e in &errors {
            // file:line:column: error: key.path: message
            let mut parts = e.splitn(4, ':');
            assert!(parts.next().unwrap().ends_with("broken.toml"), "{e}");
            assert!(
                parts.next().unwrap().parse::<usize>().is_ok(),
                "no line in {e}"
            );
            assert!(
                parts.next().unwrap().parse::<usize>().is_ok(),
                "no column in {e}"
            );
        }
    }
    let ok = std::process::Command::new(fulcrum_bin())
        .args(["check", "-c"])
        .arg(repo_root().join("config/fulcrum.toml"))
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let b = backends(2).await;
    let mut web = web_pool(Algorithm::P2cEwma, &[&b[0], &b[1]]);
    // Forecasts every 200 ms (the control loop's tick bounds it), so their metrics are there.
    web.autoscale = Some(fulcrum_config::AutoscaleConfig {
        step: Duration::from_millis(200),
        horizon: Duration::from_secs(1),
        ..Default::default()
    });
    let f = Fulcrum::web(web).await;
    let mut c = Conn::open(f.proxy).await.unwrap();
    for i in 0..20 {
        let path = if i % 5 == 0 { "/?status=503" } else { "/" };
        c.send("GET", path, &[], b"").await.unwrap();
    }
    let stepped = eventually(Duration::from_secs(5), || async {
        get(f.admin, "/metrics")
            .await
            .unwrap()
            .body
            .contains("fulcrum_pool_recommended_backends{")
    })
    .await;
    assert!(stepped.is_some(), "no forecast step");
    let m = get(f.admin, "/metrics").await.unwrap();
    assert_eq!(m.status, 200);
    for name in [
        "fulcrum_requests_total{",
        "fulcrum_request_duration_seconds_bucket{",
        "fulcrum_backend_in_flight{",
        "fulcrum_backend_up{",
        "fulcrum_backend_weight{",
        "fulcrum_retries_total{",
        "fulcrum_health_check_failures_total{",
        "fulcrum_backend_slow_start{",
        "fulcrum_config_last_reload_success 1",
        "fulcrum_config_last_reload_timestamp_seconds ",
        "fulcrum_build_info{",
        "fulcrum_draining 0",
        // Every client limit, exported from the start.
        "fulcrum_connections_open ",
        "fulcrum_connections_max ",
        "fulcrum_connections_queued_total ",
        "fulcrum_connections_evicted_total ",
        "fulcrum_connections_idle_closed_total ",
        "fulcrum_client_aborts_total{phase=\"head\"} ",
        "fulcrum_client_timeouts_total{phase=\"body\"} ",
        "fulcrum_request_framing_errors_total{stage=\"buffered\"} ",
        "fulcrum_pool_requests_per_second{pool=\"web\"}",
        "fulcrum_pool_forecast_requests_per_second{pool=\"web\",horizon=\"300\",quantile=\"0.9\"}",
        "fulcrum_pool_forecast_requests_per_second{pool=\"web\",horizon=\"1\",quantile=\"0.5\"}",
        "fulcrum_pool_recommended_backends{pool=\"web\"}",
        "fulcrum_pool_forecast_model_loaded{pool=\"web\"} 0",
        "fulcrum_pool_forecast_model_fallbacks_total{pool=\"web\"} 0",
        "fulcrum_pool_series_steps{pool=\"web\"} ",
        "fulcrum_pool_season_seconds{pool=\"web\"} 0",
    ] {
        assert!(m.body.contains(name), "missing {name} in\n{}", m.body);
    }
    for reason in [
        "head_timeout",
        "head_too_large",
        "request_line_too_long",
        "bare_cr",
        "body_timeout",
        "malformed_body",
        "content_length_and_transfer_encoding",
        "transfer_encoding",
        "missing_host",
    ] {
        let name = format!("fulcrum_rejected_requests_total{{reason=\"{reason}\"}} ");
        assert!(m.body.contains(&name), "missing {name} in\n{}", m.body);
    }
    assert!(m.body.contains("code_class=\"5xx\""), "{}", m.body);
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) is required; ./test.sh installs it");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(m.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_reports_pools_and_reload_keeps_old_config_on_error() {
    let b = backends(2).await;
    let web = web_pool(Algorithm::LeastConnections, &[&b[0], &b[1]]);
    let f = Fulcrum::web(web).await;
    for _ in 0..10 {
        assert_eq!(get(f.proxy, "/").await.unwrap().status, 200);
    }
    // A lease is released when the proxy finishes its bookkeeping, which may be just after the
    // client has its response: wait for the last one before reading the snapshot.
    eventually(Duration::from_secs(2), || f.idle()).await;
    let pools = f.pools().await;
    let pool = &pools["pools"][0];
    assert_eq!(pool["name"], "web");
    assert_eq!(pool["algorithm"], "least_connections");
    let backends = pool["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    let total: u64 = backends
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 10);
    for b in backends {
        assert_eq!(b["healthy"], true);
        assert_eq!(b["in_flight"], 0);
        assert!(b["ewma_latency_ms"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(get(f.admin, "/readyz").await.unwrap().status, 200);
    assert_eq!(get(f.admin, "/nope").await.unwrap().status, 404);
    assert_eq!(get(f.admin, "/api/model/reload").await.unwrap().status, 405);
    assert_eq!(
        get(f.admin, "/api/config/reload").await.unwrap().status,
        405
    );

    // A broken file is refused, every problem is listed, and traffic goes on as before.
    let good = std::fs::read_to_string(&f.config_path).unwrap();
    std::fs::write(
        &f.config_path,
        good.replace("least_connections", "least_conn")
            .replace("weight = 1", "weight = 0"),
    )
    .unwrap();
    let r = request(f.admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("pools.web.algorithm"), "{}", r.body);
    assert!(
        r.body.contains("pools.web.backends[0].weight"),
        "{}",
        r.body
    );
    assert_eq!(get(f.proxy, "/").await.unwrap().status, 200);
    assert_eq!(
        f.pools().await["pools"][0]["algorithm"],
        "least_connections"
    );

    // A valid change applies.
    std::fs::write(
        &f.config_path,
        good.replace("least_connections", "round_robin"),
    )
    .unwrap();
    let r = request(f.admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(f.pools().await["pools"][0]["algorithm"], "round_robin");
    assert_eq!(get(f.proxy, "/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_clients_are_served() {
    let b = backends(2).await;
    let web = web_pool(Algorithm::RoundRobin, &[&b[0], &b[1]]);
    let f = Fulcrum::web(web).await;
    // Three streams multiplexed on one HTTP/2 connection (prior knowledge, no upgrade).
    let urls: Vec<String> = ["/a", "/b", "/c"]
        .iter()
        .map(|p| format!("http://{}{p}", f.proxy))
        .collect();
    let out = tokio::process::Command::new("nghttp")
        .args(["-n", "-s"])
        .args(&urls)
        .output()
        .await
        .expect("nghttp (Debian package nghttp2-client) is required; ./test.sh installs it");
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let ok = stats.lines().filter(|l| l.contains(" 200 ")).count();
    assert_eq!(ok, 3, "{stats}");
    assert_eq!(b[0].requests() + b[1].requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_do_not_eject_a_healthy_backend() {
    let b = backends(1).await;
    let mut web = web_pool(Algorithm::RoundRobin, &[&b[0]]);
    web.max_consecutive_failures = 3;
    // Checks far apart: only the request path could eject the backend here.
    web.health_check.interval = Duration::from_secs(60);
    web.health_check.timeout = Duration::from_millis(500);
    let f = Fulcrum::web(web).await;
    for i in 0..8 {
        let mut s = tokio::net::TcpStream::connect(f.proxy).await.unwrap();
        s.write_all(b"GET /?delay_ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Hang up only once the request is at the backend, in flight through the proxy.
        let arrived = eventually(Duration::from_secs(5), || async { b[0].requests() > i }).await;
        assert!(arrived.is_some(), "request {i} never reached the backend");
        drop(s);
    }
    // Every abandoned request has finished its bookkeeping, so any ejection has happened.
    let settled = eventually(Duration::from_secs(5), || f.idle()).await;
    assert!(settled.is_some(), "requests still in flight");
    assert!(
        f.backend_healthy(b[0].addr()).await,
        "backend ejected for the clients' hang-ups"
    );
    let r = get(f.proxy, "/").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_elsewhere_for_idempotent_requests_only() {
    let b = backends(2).await;
    b[0].set_status(503);
    let mut web = web_pool(Algorithm::RoundRobin, &[&b[0], &b[1]]);
    // Keep the failing backend in rotation: only the retry rule is under test.
    web.max_consecutive_failures = 1000;
    let f = Fulcrum::web(web).await;
    let mut conn = Conn::open(f.proxy).await.unwrap();
    for _ in 0..6 {
        let r = conn.send_retry_closed("GET", "/").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-backend"), Some("b2"));
    }
    let mut passed_through = 0;
    for _ in 0..6 {
        let r = request(f.proxy, "POST", "/", &[], b"x").await.unwrap();
        match r.status {
            503 => {
                assert_eq!(r.header("x-backend"), Some("b1"));
                passed_through += 1;
            }
            200 => assert_eq!(r.header("x-backend"), Some("b2")),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        passed_through >= 2,
        "POSTs must not be replayed: {passed_through}"
    );
    // Every backend answering 503: the last attempt's answer reaches the client.
    b[1].set_status(503);
    let r = get(f.proxy, "/").await.unwrap();
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sets_weights_at_runtime_and_refuses_bad_ones_whole() {
    let b = backends(2).await;
    let web = web_pool(Algorithm::WeightedRoundRobin, &[&b[0], &b[1]]);
    let f = Fulcrum::web(web).await;
    let (a0, a1) = (b[0].addr().to_string(), b[1].addr().to_string());
    let put = |path: &'static str, body: String| {
        let admin = f.admin;
        async move {
            request(admin, "PUT", path, JSON, body.as_bytes())
                .await
                .unwrap()
        }
    };

    let r = put("/api/pools/web/weights", format!(r#"{{"{a0}": 3}}"#)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(&format!(r#""{a0}": 3.0"#)), "{}", r.body);
    let counts = tally(&f, 400).await;
    assert_eq!(counts.get("b1"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("b2"), Some(&100), "{counts:?}");

    // Every problem is listed and nothing changes.
    let r = put(
        "/api/pools/web/weights",
        format!(r#"{{"{a1}": 5, "10.9.9.9:1": 1, "{a0}": -2}}"#),
    )
    .await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("10.9.9.9:1: no such backend"), "{}", r.body);
    assert!(
        r.body.contains(&format!("{a0}: weight must be")),
        "{}",
        r.body
    );
    let r = put(
        "/api/pools/web/weights",
        format!(r#"{{"{a0}": 0, "{a1}": 0}}"#),
    )
    .await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.body.contains("every backend would have weight 0"),
        "{}",
        r.body
    );
    assert_eq!(
        put("/api/pools/web/weights", "[1, 2]".into()).await.status,
        400
    );
    assert_eq!(
        put("/api/pools/nope/weights", "{}".into()).await.status,
        404
    );
    assert_eq!(
        get(f.admin, "/api/pools/web/weights").await.unwrap().status,
        405
    );
    let weights: Vec<f64> = f.pools().await["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(weights, vec![3.0, 1.0]);

    // Weight 0 drains a backend.
    let r = put("/api/pools/web/weights", format!(r#"{{"{a0}": 0}}"#)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let counts = tally(&f, 50).await;
    assert_eq!(counts.get("b2"), Some(&50), "{counts:?}");

    // A config reload keeps weights set at run time while the configured ones stay ...
    let r = request(f.admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let counts = tally(&f, 50).await;
    assert_eq!(counts.get("b2"), Some(&50), "{counts:?}");

    // ... and a backend whose configured weight changes takes the new one.
    let text = std::fs::read_to_string(&f.config_path).unwrap();
    let changed = text.replacen("weight = 1", "weight = 2", 1);
    assert_ne!(changed, text);
    std::fs::write(&f.config_path, changed).unwrap();
    let r = request(f.admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let counts = tally(&f, 150).await;
    assert_eq!(counts.get("b1"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b2"), Some(&50), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_splits_evenly_while_a_backend_is_down() {
    let mut b = backends(3).await;
    let web = web_pool(Algorithm::LeastConnections, &[&b[0], &b[1], &b[2]]);
    let f = Fulcrum::web(web).await;
    b[1].stop().await;
    let down = eventually(Duration::from_secs(5), || async {
        !f.backend_healthy(b[1].addr()).await
    })
    .await;
    assert!(down.is_some(), "the stopped backend was never marked down");
    // One client at a time: every pick is a tie between two idle backends.
    let counts = tally(&f, 300).await;
    assert_eq!(counts.get("b1"), Some(&150), "{counts:?}");
    assert_eq!(counts.get("b3"), Some(&150), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_head_are_counted_not_logged_as_errors() {
    let b = backends(1).await;
    let f = Fulcrum::web(web_pool(Algorithm::RoundRobin, &[&b[0]])).await;
    // Each at least 24 bytes: with h2c on, a shorter start is dropped silently while pingora
    // waits for the HTTP/2 preface, before any request head is read.
    let partial: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"GET /a-long-path-that-never-ends",
        b"POST /upload HTTP/1.1\r\nContent-Length: 5\r\n",
    ];
    for i in 0..50 {
        let mut s = tokio::net::TcpStream::connect(f.proxy).await.unwrap();
        s.write_all(partial[i % 3]).await.unwrap();
        if i % 2 == 0 {
            // A reset instead of an orderly close.
            s.set_zero_linger().unwrap();
        } else {
            s.shutdown().await.unwrap();
        }
    }
    let head = "fulcrum_client_aborts_total{phase=\"head\"}";
    let counted = eventually(Duration::from_secs(5), || async {
        metric(&f, head).await >= 50.0
    })
    .await;
    assert!(counted.is_some(), "{head} = {}", metric(&f, head).await);
    let log = f.log_tail();
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(get(f.proxy, "/").await.unwrap().status, 200);
    assert_eq!(b[0].requests(), 1, "a partial head reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_gone_before_their_answer_are_not_errors_and_pipelined_requests_are_answered_in_order(
) {
    use std::net::Shutdown;
    let b = backends(1).await;
    let f = Fulcrum::web(web_pool(Algorithm::RoundRobin, &[&b[0]])).await;
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(f.proxy).await.unwrap();
        s.write_all(b"GET /?delay_ms=200 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if i % 2 == 0 {
            // Gone while its answer is on the way, with a reset.
            s.set_zero_linger().unwrap();
            drop(s);
            continue;
        }
        // The next requests before this one is answered (pipelining): all answered, in order,
        // on this connection; the last asks it to close.
        s.write_all(
            b"GET /?status=201 HTTP/1.1\r\nHost: x\r\n\r\nGET /?status=202 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the connection stayed open");
        let text = String::from_utf8_lossy(&answer);
        let statuses: Vec<&str> = text
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| &text[at + 9..at + 12])
            .collect();
        assert_eq!(statuses, ["200", "201", "202"], "{text}");
        let _ = s.into_std().map(|s| s.shutdown(Shutdown::Both));
    }
    let gone = "fulcrum_client_aborts_total{phase=\"request\"}";
    let counted = eventually(Duration::from_secs(5), || async {
        metric(&f, gone).await >= 1.0
    })
    .await;
    assert!(counted.is_some(), "{gone} = {}", metric(&f, gone).await);
    let log = f.log_tail();
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(get(f.proxy, "/").await.unwrap().status, 200);
}

/// A keep-alive HTTP/1.1 backend on a raw socket that answers every request with 200 and, when
/// `close_idle_after` is set, closes a connection that stays idle that long after an answer.
/// Counts the connections it accepted, and those the proxy closed (end of stream while idle).
struct RawBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    closed_by_proxy: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(close_idle_after: Option<Duration>) -> RawBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, closed_by_proxy) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (a, c) = (accepted.clone(), closed_by_proxy.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::Relaxed);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let read = match close_idle_after {
                            Some(d) if buf.is_empty() => {
                                match tokio::time::timeout(d, s.read(&mut chunk)).await {
                                    Ok(r) => r,
                                    Err(_) => return, // idle too long: the backend closes
                                }
                            }
                            _ => s.read(&mut chunk).await,
                        };
                        match read {
                            Ok(0) | Err(_) => {
                                if buf.is_empty() {
                                    c.fetch_add(1, Ordering::Relaxed);
                                }
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\nok\n";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            accepted,
            closed_by_proxy,
            task,
        }
    }

    fn pool(&self, idle_timeout: Duration) -> PoolConfig {
        let mut p = pool("web", Algorithm::RoundRobin, &[(self.addr, 1)]);
        p.health_check.enabled = false;
        p.idle_timeout = idle_timeout;
        p.read_timeout = Duration::from_secs(5);
        p
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_its_backend_closed_while_idle_is_not_used_again() {
    let b = RawBackend::start(Some(Duration::from_millis(100))).await;
    let f = Fulcrum::web(b.pool(Duration::from_secs(60))).await;
    let mut conn = Conn::open(f.proxy).await.unwrap();
    for round in 0..3 {
        let r = conn.send("GET", "/", &[], b"").await.unwrap();
        assert_eq!(r.status, 200, "round {round}: {r:?}");
        // The backend closes the pooled connection meanwhile.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        b.accepted.load(Ordering::Relaxed),
        3,
        "one connection per round"
    );
    assert!(!f.log_tail().contains("error"), "{}", f.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_is_closed_after_the_pools_idle_timeout() {
    let b = RawBackend::start(None).await;
    let f = Fulcrum::web(b.pool(Duration::from_millis(300))).await;
    let mut conn = Conn::open(f.proxy).await.unwrap();
    assert_eq!(conn.send("GET", "/", &[], b"").await.unwrap().status, 200);
    // Still offered within its idle time.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(conn.send("GET", "/", &[], b"").await.unwrap().status, 200);
    assert_eq!(b.accepted.load(Ordering::Relaxed), 1);
    // Then closed by fulcrum, without a request to find it expired.
    let closed = eventually(Duration::from_secs(3), || async {
        b.closed_by_proxy.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        closed.is_some(),
        "the idle upstream connection was not closed"
    );
    assert_eq!(conn.send("GET", "/", &[], b"").await.unwrap().status, 200);
    assert_eq!(b.accepted.load(Ordering::Relaxed), 2);
}

/// One piece of a scripted answer: wait, then write these bytes.
type Piece = (u64, &'static [u8]);

/// A backend on a raw socket that answers the n-th request it reads (counted over all its
/// connections) with the n-th script, piece by piece, and closes the connection after a script
/// that ends with `close`. Counts the connections it accepted.
struct ScriptedBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    /// Every request head received, in order, as bytes.
    heads: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedBackend {
    async fn start(scripts: Vec<(Vec<Piece>, bool)>) -> ScriptedBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let a = accepted.clone();
        let scripts = Arc::new(scripts);
        let next = Arc::new(AtomicU64::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::Relaxed);
                let (scripts, next, heads) = (scripts.clone(), next.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        heads.lock().unwrap().push(buf.drain(..end + 4).collect());
                        let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let (pieces, close) = &scripts[n.min(scripts.len() - 1)];
                        for (wait_ms, bytes) in pieces {
                            tokio::time::sleep(Duration::from_millis(*wait_ms)).await;
                            if s.write_all(bytes).await.is_err() {
                                return;
                            }
                        }
                        if *close {
                            return;
                        }
                    }
                });
            }
        });
        ScriptedBackend {
            addr,
            accepted,
            heads,
            task,
        }
    }

    fn pool(&self) -> PoolConfig {
        let mut p = pool("web", Algorithm::RoundRobin, &[(self.addr, 1)]);
        p.health_check.enabled = false;
        p.read_timeout = Duration::from_secs(5);
        p
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const PLAIN_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_in_pieces_after_an_informational_head_arrives_whole_and_its_connection_is_reused(
) {
    // An early-hints head, then the response head, then a chunked body in three pieces, each
    // written after a pause so that the proxy reads them one by one.
    let pieces: Vec<Piece> = vec![
        (
            0,
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
        ),
        (
            50,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-from: script\r\n\r\n",
        ),
        (0, b"5\r\nhello\r\n"),
        (50, b"6\r\n, wide\r\n"),
        (50, b"7\r\n world!\r\n0\r\n\r\n"),
    ];
    let b = ScriptedBackend::start(vec![(pieces, false), (vec![(0, PLAIN_OK)], false)]).await;
    let f = Fulcrum::web(b.pool()).await;
    let mut conn = Conn::open(f.proxy).await.unwrap();
    let r = conn.send("GET", "/", &[], b"").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello, wide world!");
    assert_eq!(r.header("x-from"), Some("script"));
    // The body was read to its last chunk, so the backend connection serves the next request.
    let r = conn.send("GET", "/", &[], b"").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(b.accepted.load(Ordering::Relaxed), 1);
    assert!(!f.log_tail().contains("ERROR"), "{}", f.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_its_backend_cuts_short_is_cut_short_and_its_connection_not_reused() {
    // Ten bytes announced, four sent, then the backend closes.
    let cut: Vec<Piece> = vec![
        (0, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
        (30, b"abcd"),
    ];
    let b = ScriptedBackend::start(vec![(cut, true), (vec![(0, PLAIN_OK)], false)]).await;
    let f = Fulcrum::web(b.pool()).await;
    let mut conn = Conn::open(f.proxy).await.unwrap();
    // The client sees the head and then the end of its connection before the body's end.
    let cut_short = conn.send("GET", "/", &[], b"").await;
    assert!(cut_short.is_err(), "{cut_short:?}");
    let r = request(f.proxy, "GET", "/", &[], b"").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(b.accepted.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_longer_than_its_content_length_leaves_the_rest_behind() {
    // Three bytes announced; the backend sends eight. What follows the announced body is not
    // a response the proxy can match to a request, so the connection is not reused.
    let long: Vec<Piece> = vec![(0, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\nEXTRA")];
    let b = ScriptedBackend::start(vec![(long, false), (vec![(0, PLAIN_OK)], false)]).await;
    let f = Fulcrum::web(b.pool()).await;
    for _ in 0..2 {
        let r = request(f.proxy, "GET", "/", &[], b"").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    }
}

/// Send `request` on `s` and read until a response ending in the scripted body `ok\n` has
/// arrived whole; the response as text.
async fn exchange_ok(s: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_names_keep_their_case_both_ways() {
    // The first exchange names every field in its usual case, the second also in others:
    // both reach the other side as they were written.
    let usual: Vec<Piece> = vec![(
        0,
        b"HTTP/1.1 200 OK\r\nServer: b\r\nETag: \"1\"\r\nX-Request-Id: 7\r\n\
          Set-Cookie: a=1\r\nContent-Length: 3\r\n\r\nok\n",
    )];
    let mixed: Vec<Piece> = vec![(
        0,
        b"HTTP/1.1 200 OK\r\nserver: b\r\nEtag: \"1\"\r\nX-REQUEST-ID: 7\r\n\
          Set-Cookie: a=1\r\nset-cookie: b=2\r\nx-lower: 1\r\ncontent-length: 3\r\n\r\nok\n",
    )];
    let b = ScriptedBackend::start(vec![(usual, false), (mixed, false)]).await;
    let f = Fulcrum::web(b.pool()).await;
    let mut s = tokio::net::TcpStream::connect(f.proxy).await.unwrap();
    let names = |head: &str| -> Vec<String> {
        head.split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_owned()))
            .collect()
    };
    let head = exchange_ok(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nX-Trace-Id: 1\r\nDNT: 1\r\n\r\n",
    )
    .await;
    assert_eq!(
        names(&head),
        [
            "Server",
            "ETag",
            "X-Request-Id",
            "Set-Cookie",
            "Content-Length",
            "Date",
            "Connection"
        ],
        "{head}"
    );
    let head = exchange_ok(
        &mut s,
        b"GET / HTTP/1.1\r\nhost: a\r\nuser-agent: t\r\nX-TRACE-ID: 1\r\ndnt: 1\r\n\r\n",
    )
    .await;
    assert_eq!(
        names(&head),
        [
            "server",
            "Etag",
            "X-REQUEST-ID",
            "Set-Cookie",
            "set-cookie",
            "x-lower",
            "content-length",
            "Date",
            "Connection"
        ],
        "{head}"
    );
    let heads: Vec<String> = b
        .heads
        .lock()
        .unwrap()
        .iter()
        .map(|h| String::from_utf8(h.clone()).unwrap())
        .collect();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let forwarded = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"];
    let expect = |sent: [&str; 4]| -> Vec<String> {
        sent.iter()
            .chain(&forwarded)
            .map(|n| n.to_string())
            .collect()
    };
    assert_eq!(
        names(&heads[0]),
        expect(["Host", "User-Agent", "X-Trace-Id", "DNT"]),
        "{}",
        heads[0]
    );
    assert_eq!(
        names(&heads[1]),
        expect(["host", "user-agent", "X-TRACE-ID", "dnt"]),
        "{}",
        heads[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_connection_field_never_decides_the_clients_connection() {
    // The backend says `close` (and closes); then `keep-alive` with a field of its own named.
    let close: Vec<Piece> = vec![(
        0,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 3\r\n\r\nok\n",
    )];
    let named: Vec<Piece> = vec![(
        0,
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\ncontent-length: 3\r\n\r\nok\n",
    )];
    let b =
        ScriptedBackend::start(vec![(close, true), (named.clone(), false), (named, false)]).await;
    let f = Fulcrum::web(b.pool()).await;
    let mut s = tokio::net::TcpStream::connect(f.proxy).await.unwrap();
    let connection_lines = |head: &str| -> Vec<String> {
        head.lines()
            .filter(|l| l.starts_with("connection:"))
            .map(str::to_owned)
            .collect()
    };
    // The client keeps its connection: one `Connection: keep-alive`, the backend's `close` gone.
    let head = exchange_ok(&mut s, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .to_ascii_lowercase();
    assert_eq!(
        connection_lines(&head),
        ["connection: keep-alive"],
        "{head}"
    );
    let head = exchange_ok(&mut s, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .to_ascii_lowercase();
    assert_eq!(
        connection_lines(&head),
        ["connection: keep-alive"],
        "{head}"
    );
    assert!(!head.contains("x-hop"), "{head}");
    // The client closes: `Connection: close`, whatever the backend said.
    let head = exchange_ok(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert_eq!(connection_lines(&head), ["connection: close"], "{head}");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}
