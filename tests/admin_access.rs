//! Who may use the admin API, through the real binary: the bearer token of `admin.token_file`,
//! the read-only rule for an exposed listener without one, and the JSON and same-origin rules
//! that keep web pages from driving the endpoints that change state.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use fulcrum_lab::harness::Response;

const TOKEN: &str = "0f3c9a7e5b1d2468ace013579bdf2468";

/// A web pool of two backends, weights 1 and 1.
async fn two_backends() -> (Vec<BackendServer>, PoolConfig) {
    let b = backends(2).await;
    let web = web_pool(Algorithm::WeightedRoundRobin, &[&b[0], &b[1]]);
    (b, web)
}

/// Write `token` (with a newline, as `echo` would) into `dir/token`, readable by its owner only.
fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A body-less request to the admin API.
async fn call(f: &Fulcrum, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request(f.admin, method, path, headers, b"").await.unwrap()
}

/// `PUT /api/pools/web/weights` setting the first backend's weight to 3.
async fn put_weight(f: &Fulcrum, backend: SocketAddr, headers: &[(&str, &str)]) -> Response {
    let body = format!(r#"{{"{backend}": 3}}"#);
    let path = "/api/pools/web/weights";
    request(f.admin, "PUT", path, headers, body.as_bytes())
        .await
        .unwrap()
}

/// The weight of each backend of the first pool, per `/api/pools` read with `headers`.
async fn weights(f: &Fulcrum, headers: &[(&str, &str)]) -> Vec<f64> {
    let r = call(f, "GET", "/api/pools", headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    let pools: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_without_a_token_changes_need_json_and_no_foreign_origin() {
    let (b, web) = two_backends().await;
    let f = Fulcrum::web(web).await;
    let a0 = b[0].addr();
    let port = f.admin.port();

    // What a form on any web page can send is refused, and changes nothing.
    for form in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = put_weight(&f, a0, &[("content-type", form)]).await;
        assert_eq!(r.status, 415, "{form}: {r:?}");
        assert!(r.body.contains("application/json"), "{}", r.body);
    }
    assert_eq!(put_weight(&f, a0, &[]).await.status, 415);
    let foreign = [
        ("content-type", "application/json"),
        ("origin", "http://evil.example"),
    ];
    let r = put_weight(&f, a0, &foreign).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("cross-origin"), "{}", r.body);
    // DNS rebinding: the attacker's name points here, so Host and Origin agree; still refused.
    let rebound_host = format!("evil.example:{port}");
    let rebound_origin = format!("http://evil.example:{port}");
    let rebound = [
        ("content-type", "application/json"),
        ("host", rebound_host.as_str()),
        ("origin", rebound_origin.as_str()),
    ];
    assert_eq!(put_weight(&f, a0, &rebound).await.status, 403);
    assert_eq!(weights(&f, &[]).await, vec![1.0, 1.0]);

    // A reload sent as a cross-site form: refused for its origin, and for its type alone.
    let reload = "/api/config/reload";
    let form = [
        ("content-type", "text/plain"),
        ("origin", "http://evil.example"),
    ];
    assert_eq!(call(&f, "POST", reload, &form).await.status, 403);
    let text = [("content-type", "text/plain")];
    assert_eq!(call(&f, "POST", reload, &text).await.status, 415);
    assert_eq!(call(&f, "POST", reload, &[]).await.status, 415);
    assert_eq!(call(&f, "POST", "/api/model/reload", &[]).await.status, 415);
    assert_eq!(call(&f, "POST", reload, JSON).await.status, 200);

    // JSON from a script (no Origin) or from the listener's own origin is taken.
    assert_eq!(put_weight(&f, a0, JSON).await.status, 200);
    let own = format!("http://127.0.0.1:{port}");
    let from_own = [
        ("content-type", "application/json"),
        ("origin", own.as_str()),
    ];
    assert_eq!(call(&f, "POST", reload, &from_own).await.status, 200);
    let host = format!("localhost:{port}");
    let origin = format!("http://localhost:{port}");
    let from_localhost = [
        ("content-type", "application/json"),
        ("host", host.as_str()),
        ("origin", origin.as_str()),
    ];
    let r = put_weight(&f, a0, &from_localhost).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(weights(&f, &[]).await, vec![3.0, 1.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_api_request_needs_it_and_the_probes_do_not() {
    let (b, web) = two_backends().await;
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(dir.path(), TOKEN);
    let f = Fulcrum::start(|p, a| {
        let mut config = single_pool(p, a, web);
        config.admin.token_file = Some(path.clone());
        config
    })
    .await;
    let a0 = b[0].addr();
    let good = format!("Bearer {TOKEN}");
    let authorized = [("authorization", good.as_str())];

    for path in [
        "/api/pools",
        "/api/decisions",
        "/api/forecast?pool=web",
        "/api/nope",
    ] {
        let r = call(&f, "GET", path, &[]).await;
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="fulcrum admin""#)
        );
        let wrong = [("authorization", "Bearer 0f3c9a7e5b1d2468ace013579bdf2469")];
        let r = call(&f, "GET", path, &wrong).await;
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token"),
            "{r:?}"
        );
    }
    assert_eq!(call(&f, "GET", "/api/pools", &authorized).await.status, 200);
    assert_eq!(call(&f, "GET", "/api/nope", &authorized).await.status, 404);
    // A pool without [pools.web.autoscale] is not forecast: told so, to whom may read.
    let r = call(&f, "GET", "/api/forecast?pool=web", &authorized).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("[pools.web.autoscale]"), "{}", r.body);
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(call(&f, "GET", open, &[]).await.status, 200, "{open}");
    }

    // Changes need the token, and still JSON.
    assert_eq!(put_weight(&f, a0, JSON).await.status, 401);
    let basic = [
        ("content-type", "application/json"),
        ("authorization", "Basic dXNlcjpwYXNz"),
    ];
    assert_eq!(put_weight(&f, a0, &basic).await.status, 401);
    let text = [
        ("content-type", "text/plain"),
        ("authorization", good.as_str()),
    ];
    assert_eq!(put_weight(&f, a0, &text).await.status, 415);
    let json = [
        ("content-type", "application/json"),
        ("authorization", good.as_str()),
    ];
    assert_eq!(put_weight(&f, a0, &json).await.status, 200);
    assert_eq!(weights(&f, &authorized).await, vec![3.0, 1.0]);

    // A reload re-reads the token file: a broken one is refused and the old token stays...
    std::fs::write(&path, "\n").unwrap();
    let reload = "/api/config/reload";
    let r = call(&f, "POST", reload, &json).await;
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("admin.token_file"), "{}", r.body);
    assert!(r.body.contains("is empty"), "{}", r.body);
    // ...and a new one replaces it from the next request.
    token_file(dir.path(), "a-rotated-token-of-enough-length");
    assert_eq!(call(&f, "POST", reload, &json).await.status, 200);
    assert_eq!(call(&f, "GET", "/api/pools", &authorized).await.status, 401);
    let rotated = [("authorization", "Bearer a-rotated-token-of-enough-length")];
    assert_eq!(call(&f, "GET", "/api/pools", &rotated).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_metrics_closes_metrics_but_not_the_probes() {
    let (_b, web) = two_backends().await;
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(dir.path(), TOKEN);
    let f = Fulcrum::start(|p, a| {
        let mut config = single_pool(p, a, web);
        config.admin.token_file = Some(path);
        config.admin.protect_metrics = true;
        config
    })
    .await;
    let r = call(&f, "GET", "/metrics", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let good = format!("bearer {TOKEN}");
    let r = call(&f, "GET", "/metrics", &[("authorization", good.as_str())]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("fulcrum_build_info"), "{}", r.body);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(call(&f, "GET", probe, &[]).await.status, 200, "{probe}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_listener_without_a_token_is_read_only() {
    let (b, web) = two_backends().await;
    // Bound on every interface, reached through loopback.
    let f = Fulcrum::start(|p, a| {
        let mut config = single_pool(p, a, web);
        config.admin.listen = SocketAddr::from(([0, 0, 0, 0], a.port()));
        config
    })
    .await;
    assert_eq!(weights(&f, &[]).await, vec![1.0, 1.0]);
    assert_eq!(call(&f, "GET", "/api/decisions", &[]).await.status, 200);
    assert_eq!(call(&f, "GET", "/metrics", &[]).await.status, 200);
    let r = put_weight(&f, b[0].addr(), JSON).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("token_file"), "{}", r.body);
    for reload in ["/api/config/reload", "/api/model/reload"] {
        let r = call(&f, "POST", reload, JSON).await;
        assert_eq!(r.status, 403, "{reload}: {r:?}");
        assert!(r.body.contains("token_file"), "{}", r.body);
    }
    assert_eq!(weights(&f, &[]).await, vec![1.0, 1.0]);

    // `fulcrum check` says so, and still passes the file.
    let out = std::process::Command::new(fulcrum_bin())
        .args(["check", "-c"])
        .arg(&f.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: admin.listen"), "{stderr}");
    assert!(stderr.contains("token_file"), "{stderr}");
}

#[test]
fn an_empty_or_missing_token_file_stops_start_up_at_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let empty = token_file(dir.path(), "");
    let missing = dir.path().join("missing");
    for (file, says) in [(&empty, "is empty"), (&missing, "cannot read")] {
        let mut config = single_pool(
            dead_addr(),
            dead_addr(),
            pool("web", Algorithm::RoundRobin, &[(dead_addr(), 1)]),
        );
        config.admin.token_file = Some(file.clone());
        let config_path = dir.path().join("fulcrum.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        for sub in ["check", "run"] {
            let out = std::process::Command::new(fulcrum_bin())
                .args([sub, "-c"])
                .arg(&config_path)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(78), "{sub}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("error: admin.token_file"), "{stderr}");
            assert!(stderr.contains(says), "{stderr}");
        }
    }
}
