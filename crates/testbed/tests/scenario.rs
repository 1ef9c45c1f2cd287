//! Scenario backends over real loopback sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fulcrum_scenario::{BackendEvent, ScenarioBackend};
use fulcrum_testbed::scenario::{LabClock, ScenarioServer};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn backend(concurrency: u32, service_ms: f64) -> ScenarioBackend {
    ScenarioBackend {
        name: "s1".into(),
        concurrency,
        service_ms,
        service_jitter: 0.0,
        error_rate: 0.0,
        error_ms: 0.0,
        weight: 1,
        events: Vec::new(),
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn connect(addr: SocketAddr) -> std::io::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET; returns (status, x-backend-load header).
async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> hyper::Result<(u16, String)> {
    sender.ready().await?;
    let req = hyper::Request::get(path)
        .header("host", "lab")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let load = resp
        .headers()
        .get("x-backend-load")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(resp.headers()["x-backend"], "s1");
    resp.into_body().collect().await?;
    Ok((status, load))
}

/// Wait until `cond` holds (for at most 5 s) and return the moment it was seen to.
async fn until(cond: impl Fn() -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        if cond() {
            return now;
        }
        assert!(now < deadline, "the condition never held");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn honours_concurrency() {
    let server = ScenarioServer::start(&backend(2, 100.0), any_port(), 1, LabClock::new(1.0))
        .await
        .unwrap();
    let addr = server.addr();
    let start = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = connect(addr).await.unwrap();
                let (status, load) = get(&mut s, "/work").await.unwrap();
                (status, load, start.elapsed())
            })
        })
        .collect();
    // Health checks are answered at once even while every slot is busy.
    until(|| server.busy() == 2).await;
    let mut h = connect(addr).await.unwrap();
    let t = Instant::now();
    assert_eq!(get(&mut h, "/healthz").await.unwrap().0, 200);
    // Queued behind the six 100 ms requests it would wait at least 270 ms.
    assert!(t.elapsed() < Duration::from_millis(150));

    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    let last = done.iter().map(|d| d.2).max().unwrap();
    let first = done.iter().map(|d| d.2).min().unwrap();
    assert!(done.iter().all(|d| d.0 == 200));
    // Responses report 1 or 2 busy slots of 2 (the twin finishing first may have left).
    assert!(
        done.iter().all(|d| d.1 == "1.000" || d.1 == "0.500"),
        "{done:?}"
    );
    assert!(done.iter().any(|d| d.1 == "1.000"), "{done:?}");
    assert!(first >= Duration::from_millis(95), "first {first:?}");
    assert!(
        last >= Duration::from_millis(290) && last < Duration::from_millis(450),
        "last {last:?}"
    );
    assert_eq!(server.max_busy(), 2);
    assert_eq!(server.requests(), 6);
    assert_eq!(server.busy(), 0);
    assert_eq!(server.health_requests(), 1);
}

#[tokio::test]
async fn honours_error_rate() {
    let mut b = backend(64, 1.0);
    b.error_rate = 0.5;
    b.error_ms = 20.0;
    let server = ScenarioServer::start(&b, any_port(), 42, LabClock::new(1.0))
        .await
        .unwrap();
    let addr = server.addr();
    let clients: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = connect(addr).await.unwrap();
                let mut out = Vec::new();
                for _ in 0..10 {
                    let t = Instant::now();
                    let (status, _) = get(&mut s, "/").await.unwrap();
                    out.push((status, t.elapsed()));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    assert_eq!(all.len(), 400);
    let failed: Vec<_> = all.iter().filter(|(s, _)| *s == 503).collect();
    let share = failed.len() as f64 / 400.0;
    assert!((0.42..=0.58).contains(&share), "503 share {share}");
    assert!(all.iter().all(|(s, _)| *s == 200 || *s == 503));
    for (_, d) in &failed {
        assert!(
            *d >= Duration::from_millis(19) && *d < Duration::from_millis(120),
            "failed request took {d:?}"
        );
    }
    assert_eq!(server.errors(), failed.len() as u64);
    assert_eq!(server.requests(), 400);
}

#[tokio::test]
async fn down_event_refuses_connections() {
    let mut b = backend(4, 1.0);
    b.events.push(BackendEvent {
        at_s: 0.3,
        until_s: 0.7,
        slowdown: 1.0,
        error_rate: None,
        down: true,
    });
    let clock = LabClock::new(1.0);
    let server = ScenarioServer::start(&b, any_port(), 3, clock)
        .await
        .unwrap();
    let addr = server.addr();

    let mut kept = connect(addr).await.unwrap();
    assert_eq!(get(&mut kept, "/").await.unwrap().0, 200);

    // The server goes down on its own timer: wait for it, then check it was not early.
    let went_down = until(|| !server.is_listening()).await;
    assert!(
        clock.scenario_time_at(went_down) >= 0.3,
        "down at {}",
        clock.scenario_time_at(went_down)
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "refused while down"
    );
    assert!(
        get(&mut kept, "/").await.is_err(),
        "open connections dropped"
    );

    let came_back = until(|| server.is_listening()).await;
    assert!(
        clock.scenario_time_at(came_back) >= 0.7,
        "back at {}",
        clock.scenario_time_at(came_back)
    );
    let mut s = connect(addr).await.unwrap();
    assert_eq!(get(&mut s, "/").await.unwrap().0, 200);
}

#[tokio::test]
async fn slowdown_and_time_scale() {
    let mut b = backend(4, 20.0);
    // Scenario seconds 1..100 at time_scale 0.1 start 100 ms of wall time in.
    b.events.push(BackendEvent {
        at_s: 1.0,
        until_s: 100.0,
        slowdown: 4.0,
        error_rate: None,
        down: false,
    });
    let clock = LabClock::new(0.1);
    let server = ScenarioServer::start(&b, any_port(), 3, clock)
        .await
        .unwrap();
    let mut s = connect(server.addr()).await.unwrap();
    let t = Instant::now();
    get(&mut s, "/").await.unwrap();
    let before = t.elapsed();
    tokio::time::sleep_until(clock.wall_at(1.5).into()).await;
    let t = Instant::now();
    get(&mut s, "/").await.unwrap();
    let during = t.elapsed();
    assert!(before < Duration::from_millis(60), "{before:?}");
    assert!(during >= Duration::from_millis(78), "{during:?}");
}

#[test]
fn run_testbed_ends_with_the_scenario() {
    use fulcrum_scenario::{Load, Scenario};
    let scenario = Scenario {
        name: "short".into(),
        description: String::new(),
        seed: 1,
        duration_s: 0.4,
        warmup_s: 0.0,
        load: Load {
            rate_rps: 1.0,
            steps: Vec::new(),
            non_idempotent_fraction: 0.0,
            diurnal: None,
            bursts: Vec::new(),
        },
        backends: vec![backend(1, 1.0)],
        autoscale: None,
        slo: None,
    };
    let start = Instant::now();
    fulcrum_testbed::scenario::run_testbed(&scenario, 0.5).unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(195) && took < Duration::from_secs(2),
        "{took:?}"
    );
}
