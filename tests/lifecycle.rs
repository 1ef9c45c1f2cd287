//! The process's lifecycle under load, through the real binary: the drain on `SIGTERM` and the
//! zero-downtime binary upgrade (`run --upgrade`, then `SIGQUIT` to the old process).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fulcrum_lab::harness::{private_dir, Proxy};

/// One request of the load: when it started and how it ended.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    keep_alive: bool,
    result: Result<u16, String>,
    closes: bool,
}

type Log = Arc<Mutex<Vec<Outcome>>>;

/// About 300 requests/s until `stop` is set: four keep-alive clients (each a request every
/// 20 ms, reconnecting only when an answer says `Connection: close`; a request lost on a
/// reused connection counts as failed) and one client opening a new connection every 10 ms;
/// one request in five of the latter takes 1 s at the backend.
fn spawn_load(
    proxy: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Log, Vec<tokio::task::JoinHandle<()>>) {
    use std::sync::atomic::Ordering;
    let log: Log = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (log, stop) = (log.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    match Conn::open(proxy).await {
                        Ok(c) => conn = Some(c),
                        // Refused once the listeners are gone: nothing was sent.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().unwrap();
                let started = Instant::now();
                let result = c.send("GET", "/", &[], b"").await;
                let closes = matches!(&result, Ok(r) if r.header("connection") == Some("close"));
                if closes || result.is_err() {
                    conn = None;
                }
                log.lock().unwrap().push(Outcome {
                    started,
                    keep_alive: true,
                    result: result.map(|r| r.status).map_err(|e| e.to_string()),
                    closes,
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let (log2, stop2) = (log.clone(), stop);
    tasks.push(tokio::spawn(async move {
        let mut requests = tokio::task::JoinSet::new();
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let path = if i.is_multiple_of(5) {
                "/?delay_ms=1000"
            } else {
                "/"
            };
            i += 1;
            let log = log2.clone();
            requests.spawn(async move {
                let started = Instant::now();
                let Ok(mut c) = Conn::open(proxy).await else {
                    return; // refused: the request never started
                };
                let result = c.send("GET", path, &[], b"").await;
                log.lock().unwrap().push(Outcome {
                    started,
                    keep_alive: false,
                    result: result.map(|r| r.status).map_err(|e| e.to_string()),
                    closes: false,
                });
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while requests.join_next().await.is_some() {}
    }));
    (log, tasks)
}

/// The load of [`spawn_load`], running.
struct Load {
    log: Log,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Start the load on `proxy` and let it run for a moment.
    async fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, tasks) = spawn_load(proxy, stop.clone());
        tokio::time::sleep(Duration::from_millis(800)).await;
        Load { log, stop, tasks }
    }

    /// Stop the load, wait for every request under way, and return what happened.
    async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A proxy over one backend, with its upgrade socket in a private temporary directory.
struct Running {
    proxy: Proxy,
    listen: SocketAddr,
    admin: SocketAddr,
    _backend: BackendServer,
    _sock_dir: tempfile::TempDir,
}

async fn running(drain_delay_s: u64, grace_period_s: u64) -> Running {
    running_with(drain_delay_s, grace_period_s, |_, _| ()).await
}

/// [`running`], with `tweak` applied to the configuration (and the socket directory's path).
async fn running_with(
    drain_delay_s: u64,
    grace_period_s: u64,
    tweak: impl FnOnce(&mut fulcrum_config::Config, &std::path::Path),
) -> Running {
    let backend = backends(1).await.remove(0);
    let sock_dir = private_dir().unwrap();
    let (listen, admin) = fulcrum_lab::harness::loopback_pair().unwrap();
    let mut c = single_pool(listen, admin, web_pool(Algorithm::RoundRobin, &[&backend]));
    tweak(&mut c, sock_dir.path());
    c.server.threads = 2;
    c.server.upgrade_sock = sock_dir.path().join("upgrade.sock");
    c.server.drain_delay_s = drain_delay_s;
    c.server.grace_period_s = grace_period_s;
    let proxy = Proxy::start(fulcrum_bin().as_ref(), &c)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    Running {
        proxy,
        listen,
        admin,
        _backend: backend,
        _sock_dir: sock_dir,
    }
}

/// Wait for `proxy` to exit and check that it exited 0.
async fn exits_zero(proxy: &mut Proxy, limit: Duration) {
    let status = proxy.wait_exit(limit).await.unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        proxy.log_tail()
    );
}

fn failures(log: &[Outcome], before: Instant) -> Vec<&Outcome> {
    log.iter()
        .filter(|o| o.started < before && o.result != Ok(200))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_under_load_and_exits_zero() {
    let Running {
        mut proxy,
        listen,
        admin,
        _backend,
        _sock_dir,
    } = running(1, 5).await;

    let load = Load::start(listen).await;

    let signalled = Instant::now();
    proxy.signal("TERM").unwrap();
    let mut readyz = None;
    while signalled.elapsed() < Duration::from_secs(1) {
        if matches!(get(admin, "/readyz").await, Ok(r) if r.status == 503 && r.body == "draining\n")
        {
            readyz = Some(signalled.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let readyz = readyz.expect("/readyz never answered 503 draining");
    assert!(
        readyz < Duration::from_millis(100),
        "/readyz took {readyz:?}"
    );
    let metrics = get(admin, "/metrics").await.unwrap().body;
    assert!(metrics.contains("fulcrum_draining 1"), "{metrics}");

    exits_zero(&mut proxy, Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    let log = load.stop().await;
    // The listeners close after the drain delay; the slowest request then takes at most 1 s.
    assert!(
        took >= Duration::from_secs(1),
        "exited before the drain delay: {took:?}"
    );
    assert!(
        took < Duration::from_millis(3500),
        "waited for the grace period: {took:?}"
    );

    // Requests that started before the listeners closed (less a margin for the clock) all
    // got their answer; keep-alive clients were told to reconnect during the drain.
    let closed = signalled + Duration::from_millis(950);
    let failed = failures(&log, closed);
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    let served = log.iter().filter(|o| o.started < closed).count();
    assert!(served > 300, "only {served} requests");
    let told = log
        .iter()
        .filter(|o| o.keep_alive && o.closes && o.started > signalled)
        .count();
    assert!(
        told >= 4,
        "keep-alive answers with Connection: close: {told}"
    );
    assert!(
        log.iter()
            .any(|o| !o.keep_alive && o.started > signalled && o.result == Ok(200)),
        "new connections are still served during the drain"
    );
}

/// A request under way when the old process hands its sockets over is answered with
/// `Connection: close`, as in a drain: its connection closes with the old process, and a client
/// told nothing would send its next request into that close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_under_way_at_the_hand_over_is_told_to_reconnect() {
    let Running {
        proxy: mut old,
        listen,
        _backend,
        _sock_dir,
        ..
    } = running(1, 5).await;
    let mut new = old.start_upgrade(fulcrum_bin().as_ref()).await.unwrap();
    let mut conn = Conn::open(listen).await.unwrap();
    // Served by the old process, the only one accepting yet; the sockets are handed over
    // within a second of `SIGQUIT` and the answer comes 2.5 s after it.
    let slow = conn.send("GET", "/?delay_ms=2500", &[], b"");
    let quit = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        old.signal("QUIT").unwrap();
    };
    let (answer, ()) = tokio::join!(slow, quit);
    let answer = answer.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    exits_zero(&mut old, Duration::from_secs(15)).await;
    assert_eq!(get(listen, "/").await.unwrap().status, 200);
    new.signal("TERM").unwrap();
    exits_zero(&mut new, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_the_listeners_stop_has_its_first_request_answered() {
    let Running {
        mut proxy,
        listen,
        _backend,
        _sock_dir,
        ..
    } = running(1, 5).await;
    // Accepted before the drain; its client sends the request only once the listeners have
    // stopped, as one whose connect raced the stop would.
    let mut fresh = Conn::open(listen).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.signal("TERM").unwrap();
    let refused = eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(listen).await.is_err()
    })
    .await;
    assert!(
        refused.is_some(),
        "the listeners did not stop after the 1 s drain delay"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = fresh
        .send("GET", "/", &[], b"")
        .await
        .unwrap_or_else(|e| panic!("the accepted connection was closed unanswered: {e}"));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    exits_zero(&mut proxy, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_process_exits_right_after_the_drain_delay() {
    let Running {
        mut proxy,
        listen,
        _backend,
        _sock_dir,
        ..
    } = running(0, 30).await;
    assert_eq!(get(listen, "/").await.unwrap().status, 200);
    // An idle keep-alive connection does not hold the process.
    let mut idle = Conn::open(listen).await.unwrap();
    assert_eq!(idle.send("GET", "/", &[], b"").await.unwrap().status, 200);
    let signalled = Instant::now();
    proxy.signal("TERM").unwrap();
    exits_zero(&mut proxy, Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} of a 30 s grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_goaway_during_the_drain() {
    let Running {
        mut proxy,
        listen,
        _backend,
        _sock_dir,
        ..
    } = running(2, 5).await;
    proxy.signal("TERM").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = tokio::process::Command::new("nghttp")
        .args(["-n", "-v", &format!("http://{listen}/")])
        .output()
        .await
        .expect("nghttp (Debian package nghttp2-client) is required; ./test.sh installs it");
    let trace = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(trace.contains(":status: 200"), "still served:\n{trace}");
    assert!(trace.contains("recv GOAWAY"), "no GOAWAY:\n{trace}");
    exits_zero(&mut proxy, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_refuses_nothing_and_fails_nothing() {
    let Running {
        proxy: mut old,
        listen,
        admin,
        _backend,
        _sock_dir,
    } = running(1, 5).await;

    let load = Load::start(listen).await;

    let mut new = old.start_upgrade(fulcrum_bin().as_ref()).await.unwrap();
    let signalled = Instant::now();
    old.signal("QUIT").unwrap();
    exits_zero(&mut old, Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    // Let the load run on the new process alone for a while.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let log = load.stop().await;
    assert!(new.running(), "{}", new.log_tail());
    assert!(
        took < Duration::from_secs(5),
        "the old process took {took:?}"
    );

    // The admin listener moved too.
    let ready = get(admin, "/readyz").await.unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let failed = failures(&log, Instant::now());
    assert!(
        failed.is_empty(),
        "{} failed: {failed:?}\nnew: {}",
        failed.len(),
        new.log_tail()
    );
    let after = log.iter().filter(|o| o.started > signalled + took).count();
    assert!(
        after > 100,
        "only {after} requests after the old process exited"
    );
    assert!(log.len() > 600, "only {} requests", log.len());

    new.signal("TERM").unwrap();
    exits_zero(&mut new, Duration::from_secs(10)).await;
}

/// The series of `/api/forecast?pool=web`, and its history status.
async fn forecast_series(admin: SocketAddr) -> (Vec<f64>, serde_json::Value) {
    let r = get(admin, "/api/forecast?pool=web").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let series = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (series, v["history"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_the_forecasts_rate_series() {
    let Running {
        proxy: mut old,
        listen,
        admin,
        _backend,
        _sock_dir,
    } = running_with(1, 5, |c, dir| {
        c.pools[0].autoscale = Some(fulcrum_config::AutoscaleConfig {
            step: Duration::from_millis(250),
            horizon: Duration::from_secs(2),
            history_file: Some(dir.join("web.csv")),
            ..Default::default()
        });
        c.control.tick = Duration::from_millis(50);
    })
    .await;
    let load = Load::start(listen).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (counted, _) = forecast_series(admin).await;
    assert!(counted.len() >= 8, "{} steps", counted.len());

    let mut new = old.start_upgrade(fulcrum_bin().as_ref()).await.unwrap();
    old.signal("QUIT").unwrap();
    exits_zero(&mut old, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = load.stop().await;
    assert!(failures(&log, Instant::now()).is_empty());

    // The new process started from the old one's series: what it had counted when asked, in
    // the same order, to the file's precision.
    let (series, history) = forecast_series(admin).await;
    assert_eq!(history["error"], serde_json::Value::Null, "{history}");
    let restored = history["restored_steps"].as_u64().unwrap() as usize;
    assert!(
        restored >= counted.len(),
        "{restored} restored, {} counted",
        counted.len()
    );
    for (i, (a, b)) in counted.iter().zip(&series).enumerate() {
        assert!(
            (a - b).abs() < 1e-3,
            "step {i}: {a} before the upgrade, {b} after"
        );
    }
    // Once the listeners were handed over only the new process writes the file: a series at a
    // fixed step, as `fulcrum forecast` reads one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = _sock_dir.path().join("forecast.csv");
    let forecast = std::process::Command::new(fulcrum_bin())
        .args(["forecast", "--horizon-s", "1", "--input"])
        .arg(_sock_dir.path().join("web.csv"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(forecast.status.success(), "{forecast:?}");
    new.signal("TERM").unwrap();
    exits_zero(&mut new, Duration::from_secs(10)).await;
}
