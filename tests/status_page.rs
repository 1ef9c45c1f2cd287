//! The status page in a real browser: headless Chromium, driven over the DevTools protocol,
//! against the real binary with real backends under load. The page must render every pool and
//! backend, follow a weight change without being reloaded, send nothing but same-origin GETs,
//! and log no error.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long the page gets to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// The Chromium binary: `$CHROMIUM`, else `chromium` or `chromium-browser` on the `PATH`.
fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "this test drives a real browser and found no Chromium on the PATH. Install it with \
         `apt-get install -y chromium` (Debian; `scripts/setup.sh test` does it), or point \
         $CHROMIUM at a Chromium or Chrome binary"
    );
}

/// A headless Chromium with a throw-away profile, killed on drop.
struct Chromium {
    child: Child,
    devtools: SocketAddr,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn launch() -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium_path())
            .args([
                "--headless",
                // Root in a container has no user namespace for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chromium");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep reading stderr so Chromium never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let addr = rest.split('/').next().unwrap_or("").to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .expect("chromium did not open its DevTools port");
        Chromium {
            child,
            devtools: addr.parse().expect("DevTools address"),
            _profile: profile,
        }
    }

    /// Attach to the browser's first page.
    async fn page(&self) -> Cdp {
        let list = get(self.devtools, "/json/list").await.unwrap();
        let targets: Value = serde_json::from_str(&list.body).unwrap();
        let id = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["id"].as_str())
            .expect("a page target")
            .to_string();
        // Chromium writes the request's Host into the URLs it lists; name the port ourselves.
        let ws = format!("ws://{}/devtools/page/{id}", self.devtools);
        let (socket, _) = tungstenite::connect(ws).expect("DevTools WebSocket");
        if let MaybeTlsStream::Plain(s) = socket.get_ref() {
            s.set_read_timeout(Some(PATIENCE)).unwrap();
        }
        Cdp {
            socket,
            next_id: 0,
            events: Vec::new(),
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol session with one page: commands in order, events kept for later.
struct Cdp {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: Vec<Value>,
}

impl Cdp {
    /// Send a command and wait for its result; events that arrive meanwhile are kept.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(msg.to_string()))
            .expect("send to chromium");
        loop {
            let msg = self.socket.read().expect("read from chromium");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluate `expr` until `ok` holds of its value; the last value on success.
    async fn wait_for(&mut self, what: &str, expr: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = tokio::task::block_in_place(|| self.eval(expr));
            if ok(&v) {
                return v;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the page did not show {what} within {PATIENCE:?}; last value: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Events named `method`.
    fn events(&self, method: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["method"] == method)
            .collect()
    }

    /// Every error the page logged: exceptions, `console.error`, and the browser's own error
    /// entries (CSP violations, failed loads).
    fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.events("Runtime.exceptionThrown") {
            out.push(format!("exception: {}", e["params"]["exceptionDetails"]));
        }
        for e in self.events("Runtime.consoleAPICalled") {
            let kind = e["params"]["type"].as_str().unwrap_or("");
            if kind == "error" || kind == "assert" || kind == "warning" {
                out.push(format!("console.{kind}: {}", e["params"]["args"]));
            }
        }
        for e in self.events("Log.entryAdded") {
            let level = e["params"]["entry"]["level"].as_str().unwrap_or("");
            if level == "error" || level == "warning" {
                out.push(format!("{level}: {}", e["params"]["entry"]));
            }
        }
        out
    }
}

/// The backend rows the page shows: `[{pool, backend, weight, requests, points}]`.
const ROWS: &str = r#"JSON.stringify([...document.querySelectorAll("tr[data-backend]")].map(tr => ({
  pool: tr.closest("[data-pool]").dataset.pool,
  backend: tr.dataset.backend,
  weight: tr.querySelector("td.w").dataset.weight,
  requests: tr.lastElementChild.textContent,
  points: tr.querySelector("polyline").getAttribute("points"),
})))"#;

fn rows(v: &Value) -> Vec<Value> {
    serde_json::from_str(v.as_str().unwrap_or("[]")).unwrap()
}

fn row(rows: &[Value], backend: SocketAddr) -> &Value {
    rows.iter()
        .find(|r| r["backend"] == backend.to_string())
        .unwrap_or_else(|| panic!("no row for {backend} in {rows:?}"))
}

fn weight(row: &Value) -> f64 {
    row["weight"]
        .as_str()
        .and_then(|w| w.parse::<f64>().ok())
        .filter(|w| w.is_finite())
        .unwrap_or_else(|| panic!("no numeric weight in {row}"))
}

/// Pool `web` (least connections, static weights, autoscale recommendations every half
/// second) over b1..b3 on `/`, and pool `tuned` (weights from the shipped model) over b4, b5
/// on `/t/`.
fn two_pools(b: &[BackendServer]) -> impl FnOnce(SocketAddr, SocketAddr) -> Config + '_ {
    move |proxy, admin| {
        let mut web = web_pool(Algorithm::LeastConnections, &[&b[0], &b[1], &b[2]]);
        web.autoscale = Some(fulcrum_config::AutoscaleConfig {
            step: Duration::from_millis(500),
            horizon: Duration::from_secs(2),
            backend_capacity_rps: Some(100.0),
            ..fulcrum_config::AutoscaleConfig::default()
        });
        let mut tuned = web_pool(Algorithm::LeastConnections, &[&b[3], &b[4]]);
        tuned.name = "tuned".into();
        tuned.weights = WeightSource::Model;
        let mut config = single_pool(proxy, admin, web);
        let mut route = config.routes[0].clone();
        route.path_prefix = "/t/".into();
        route.pool = "tuned".into();
        config.routes.insert(0, route);
        config.pools.push(tuned);
        config.control.tick = Duration::from_millis(200);
        config.control.model = repo_root().join("models/balancer.onnx");
        config
    }
}

/// Send a request every few milliseconds to each path until `stop`.
fn light_load(proxy: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut conn) = Conn::open(proxy).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                let a = conn.send_retry_closed("GET", "/").await;
                let b = conn.send_retry_closed("GET", "/t/x").await;
                if a.is_err() || b.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_read_only_under_a_strict_policy() {
    let b = backends(5).await;
    let f = Fulcrum::start(two_pools(&b)).await;
    for path in ["/", "/status"] {
        let r = get(f.admin, path).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let csp = r.header("content-security-policy").unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'sha256-",
            "style-src 'sha256-",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{csp} lacks {part}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(r.body.contains("<title>fulcrum status</title>"));
    }
    // The page is a GET only.
    let r = request(f.admin, "POST", "/status", JSON, b"{}")
        .await
        .unwrap();
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_pools_and_follows_a_weight_change_without_reloading() {
    let chromium = Chromium::launch();
    let b = backends(5).await;
    let f = Fulcrum::start(two_pools(&b)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = light_load(f.proxy, stop.clone());

    let mut page = chromium.page().await;
    let url = format!("http://{}/status", f.admin);
    tokio::task::block_in_place(|| {
        for domain in ["Runtime", "Log", "Network", "Page"] {
            page.call(&format!("{domain}.enable"), json!({}));
        }
        page.call("Page.navigate", json!({ "url": url }));
    });

    // Every backend of both pools, each with a number for its weight.
    let shown = page
        .wait_for("five backend rows after two polls", ROWS, |v| {
            rows(v).len() == 5
        })
        .await;
    let shown = rows(&shown);
    for (i, backend) in b.iter().enumerate() {
        let r = row(&shown, backend.addr());
        assert_eq!(r["pool"], if i < 3 { "web" } else { "tuned" }, "{r}");
        weight(r);
    }
    let b1 = b[0].addr();
    assert_eq!(weight(row(&shown, b1)), 1.0);
    let requests_before = row(&shown, b1)["requests"].clone();

    // The model's state as the API reports it.
    let pools = f.pools().await;
    let source = page
        .wait_for(
            "the model's state",
            "document.getElementById('model-source').textContent",
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await;
    if pools["model"]["loaded"] == true {
        assert_eq!(source, "ONNX model loaded");
    } else {
        assert!(source.as_str().unwrap().contains("heuristic"), "{source}");
    }

    // The autoscaled pool's recommendation and its reasons, as `/api/pools` has them; none for
    // the pool without `[pools.NAME.autoscale]`.
    let autoscale = page
        .wait_for(
            "web's recommendation",
            "(document.querySelector('section[data-pool=\"web\"] .autoscale') || {}).textContent || ''",
            |v| v.as_str().is_some_and(|s| s.contains("recommended ")),
        )
        .await;
    let autoscale = autoscale.as_str().unwrap();
    assert!(
        autoscale.contains("one backend serves ~70 rps at 70 %"),
        "{autoscale}"
    );
    assert!(autoscale.contains("forecaster builtin"), "{autoscale}");
    // Half-second steps: seconds of series, no season in a few seconds of steady load.
    assert!(autoscale.contains("series "), "{autoscale}");
    assert!(autoscale.contains(" s, no season found yet"), "{autoscale}");
    let none = tokio::task::block_in_place(|| {
        page.eval("document.querySelectorAll('section[data-pool=\"tuned\"] .autoscale').length")
    });
    assert_eq!(none, 0);
    let pools = f.pools().await;
    let by_name = |n: &str| {
        pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()
            .clone()
    };
    assert!(
        by_name("web")["autoscale"]["recommended_backends"].is_u64(),
        "{pools}"
    );
    assert!(by_name("tuned")["autoscale"].is_null(), "{pools}");

    // A weight set through the admin API shows up in the same document: no reload.
    tokio::task::block_in_place(|| page.eval("window.fulcrumTestMarker = 42"));
    let body = format!(r#"{{"{b1}": 4.5}}"#);
    let r = request(
        f.admin,
        "PUT",
        "/api/pools/web/weights",
        JSON,
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let after = page
        .wait_for("weight 4.5 for b1", ROWS, |v| {
            rows(v)
                .iter()
                .any(|r| r["backend"] == b1.to_string() && r["weight"] == "4.5000")
        })
        .await;
    let after = rows(&after);
    assert_ne!(
        row(&after, b1)["requests"],
        requests_before,
        "the request counter did not move under load"
    );
    // The sparkline keeps both weights it has seen.
    let points = row(&after, b1)["points"].as_str().unwrap().to_string();
    let ys: std::collections::HashSet<&str> = points
        .split(' ')
        .filter_map(|p| p.split(',').nth(1))
        .collect();
    assert!(ys.len() >= 2, "sparkline has one level only: {points}");
    let marker = tokio::task::block_in_place(|| page.eval("window.fulcrumTestMarker"));
    assert_eq!(marker, 42, "the page was reloaded");

    // The model pool's decisions, in words.
    page.wait_for(
        "a decision of the model pool",
        "document.getElementById('decisions').textContent",
        |v| v.as_str().is_some_and(|s| s.contains("tuned")),
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    // Flush the events that arrived since the last command.
    tokio::task::block_in_place(|| page.eval("1"));
    assert_eq!(
        page.events("Page.frameNavigated").len(),
        1,
        "the page navigated more than once"
    );
    let errors = page.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    // Reads only, and only from its own origin.
    let origin = format!("http://{}/", f.admin);
    for e in page.events("Network.requestWillBeSent") {
        let req = &e["params"]["request"];
        let url = req["url"].as_str().unwrap_or("");
        assert_eq!(req["method"], "GET", "{url}");
        assert!(
            url.starts_with(&origin) || url.starts_with("data:"),
            "request to another origin: {url}"
        );
    }
    assert!(page.events("Network.requestWillBeSent").len() > 3);
}

/// Write docs/status-page.png from a running fulcrum (the demo by default): start `fulcrum
/// demo`, then `FULCRUM_STATUS=127.0.0.1:9900 cargo test -p fulcrum --test status_page --
/// --ignored screenshot`. The page watches for two minutes first, so the sparklines have a
/// history to draw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a running fulcrum; writes docs/status-page.png"]
async fn screenshot() {
    let admin: SocketAddr = std::env::var("FULCRUM_STATUS")
        .unwrap_or_else(|_| "127.0.0.1:9900".into())
        .parse()
        .unwrap();
    let watch_s: u64 = std::env::var("FULCRUM_STATUS_WATCH_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let chromium = Chromium::launch();
    let mut page = chromium.page().await;
    tokio::task::block_in_place(|| {
        page.call("Page.enable", json!({}));
        page.call(
            "Page.navigate",
            json!({ "url": format!("http://{admin}/") }),
        );
    });
    tokio::time::sleep(Duration::from_secs(watch_s)).await;
    let shot = tokio::task::block_in_place(|| {
        page.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        )
    });
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let out = repo_root().join("docs/status-page.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, png).unwrap();
    eprintln!("wrote {}", out.display());
}
