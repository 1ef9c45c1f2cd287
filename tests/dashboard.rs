//! The Grafana dashboard against real metrics: a real Prometheus scrapes a real fulcrum every
//! second while it serves a little traffic (a model pool with ONNX Runtime, a static pool with a
//! dead backend that forces retries and health-check failures, a pool whose backend is found by
//! DNS on a nameserver on loopback, a TLS listener, a configuration reload and a model reload,
//! the model pool's demand forecast), then every PromQL expression of `docker/grafana/fulcrum.json`
//! (panels, template variables, annotations) is evaluated through Prometheus's HTTP API. Each
//! must answer without error and with at least one series, and every label its legend names
//! (`{{backend}}`) must be on every series, so a renamed metric or label breaks this test
//! instead of a panel.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// What Grafana puts for `$__rate_interval` at a 1 s scrape interval: four scrape intervals
/// (with one to spare).
const RATE_INTERVAL: &str = "5s";

/// One PromQL expression of the dashboard and where it is.
#[derive(Debug)]
struct Query {
    place: String,
    expr: String,
    /// The labels the legend shows (`{{pool}} {{backend}}`).
    legend_labels: Vec<String>,
}

/// The labels a Grafana legend format names: `{{pool}} {{ backend }}` gives `pool`, `backend`.
fn legend_labels(format: &str) -> Vec<String> {
    format
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .map(|(label, _)| label.trim().to_string())
        .collect()
}

/// Every `expr` in the dashboard, named by its panel title (or annotation / variable name).
fn queries(dashboard: &Value) -> Vec<Query> {
    fn walk(v: &Value, place: &str, out: &mut Vec<Query>) {
        match v {
            Value::Object(map) => {
                let here = map
                    .get("title")
                    .or_else(|| map.get("name"))
                    .and_then(Value::as_str)
                    .map(|t| format!("{place} / {t}"))
                    .unwrap_or_else(|| place.to_string());
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) if !e.trim().is_empty() => out.push(Query {
                            place: format!(
                                "{here}{}",
                                map.get("refId")
                                    .and_then(Value::as_str)
                                    .map(|r| format!(" [{r}]"))
                                    .unwrap_or_default()
                            ),
                            expr: e.clone(),
                            legend_labels: map
                                .get("legendFormat")
                                .and_then(Value::as_str)
                                .map(legend_labels)
                                .unwrap_or_default(),
                        }),
                        _ => walk(v, &here, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, place, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    out
}

/// The `label_values(METRIC, LABEL)` query variables: (name, metric, label).
fn label_variables(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?").to_string();
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name} has no query"));
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!("variable {name}: only label_values(METRIC, LABEL) is understood: {q}")
            });
        let (metric, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("variable {name}: label_values needs a metric: {q}"));
        out.push((name, metric.trim().to_string(), label.trim().to_string()));
    }
    out
}

/// `expr` with Grafana's variables replaced as Grafana would for this run: a variable by the
/// regex of all its values (`(a|b)`), the interval variables by concrete durations.
fn substitute(expr: &str, variables: &[(String, String)]) -> String {
    let mut e = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${__rate_interval}", RATE_INTERVAL)
        .replace("$__interval", "1s")
        .replace("$__range", "5m");
    for (name, value) in variables {
        e = e
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(!e.contains('$'), "an unknown variable is left in {e}");
    e
}

/// A self-signed certificate for `localhost`, written as PEM into `dir`.
fn certificate(dir: &Path) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

/// The name the `found` pool's backend is published under.
const DNS_NAME: &str = "web.fulcrum.test";

/// Three pools behind one listener and one TLS listener: `web` (`/w`), tuned by the shipped
/// model; `api` (`/api`), static, whose second backend is dead; `found` (`/d`), whose backend
/// is what [`DNS_NAME`] resolves to on `dns` (on `web`'s first backend's port). `/` matches no
/// route.
fn configuration(
    web: &[&BackendServer],
    api: SocketAddr,
    dead: SocketAddr,
    tls: SocketAddr,
    cert: &(String, String),
    dns: SocketAddr,
) -> Config {
    let (proxy, admin) = fulcrum_lab::harness::loopback_pair().unwrap();
    let model = repo_root().join("models/balancer.onnx");
    let text = format!(
        r#"
[server]
listen = ["{proxy}"]
tls_listen = ["{tls}"]
threads = 1
drain_delay_s = 0
grace_period_s = 0
dns_resolver = "{dns}"

[[server.certificates]]
cert = "{cert}"
key = "{key}"

[admin]
listen = "{admin}"

[control]
tick_ms = 200
model = "{model}"

[[routes]]
path_prefix = "/w"
pool = "web"

[[routes]]
path_prefix = "/api"
pool = "api"

[[routes]]
path_prefix = "/d"
pool = "found"

[pools.web]
weights = "model"
health_check.interval_ms = 200
health_check.timeout_ms = 150

# Forecast and recommend, for the demand and autoscaling panels.
[pools.web.autoscale]
step_s = 0.5
horizon_s = 2
backend_capacity_rps = 100

[[pools.web.backends]]
addr = "{w1}"

[[pools.web.backends]]
addr = "{w2}"

# Checks far apart, so that the dead backend is ejected passively by the traffic first.
[pools.api]
algorithm = "round_robin"
retries = 1
max_consecutive_failures = 3
health_check.interval_ms = 5000
health_check.timeout_ms = 150

[[pools.api.backends]]
addr = "{api}"

[[pools.api.backends]]
addr = "{dead}"

[pools.found]
discovery = "dns"
dns_refresh_ms = 500

[[pools.found.backends]]
addr = "{DNS_NAME}:{found_port}"
"#,
        cert = cert.0,
        key = cert.1,
        model = model.display(),
        w1 = web[0].addr(),
        w2 = web[1].addr(),
        found_port = web[0].addr().port(),
    );
    match fulcrum_config::parse(&text, "<dashboard test>") {
        Ok((config, _)) => config,
        Err(d) => panic!("{d}"),
    }
}

/// A keep-alive client sending `GET path` every few milliseconds until `stop`.
fn load(
    proxy: SocketAddr,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = None;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let c = match conn.take() {
                Some(c) => c,
                None => match Conn::open(proxy).await {
                    Ok(c) => c,
                    Err(_) => continue,
                },
            };
            conn = Some(c);
            if let Some(c) = conn.as_mut() {
                if c.send_retry_closed("GET", path).await.is_err() {
                    conn = None;
                }
            }
        }
    })
}

/// `curl` against the TLS listener: a completed handshake.
async fn tls_request(tls: SocketAddr) {
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://localhost:{}/w", tls.port()))
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", tls.port()))
        .output()
        .await
        .expect("curl is required (scripts/setup.sh test installs it)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
}

/// Plain HTTP sent to the TLS listener: a failed handshake.
async fn tls_failure(tls: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(tls).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_answers_with_series_from_a_real_prometheus() {
    let path = repo_root().join("docker/grafana/fulcrum.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let queries = queries(&dashboard);
    assert!(queries.len() >= 20, "only {} queries found", queries.len());

    let b = backends(3).await;
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let cert = certificate(dir.path());
    let [tls_port] = fulcrum_lab::harness::free_ports::<1>().unwrap();
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let dns = Nameserver::start().await;
    dns.set(DNS_NAME, &[std::net::Ipv4Addr::LOCALHOST]);
    let config = configuration(&[&b[0], &b[1]], b[2].addr(), dead, tls, &cert, dns.addr);
    let process = fulcrum_lab::harness::Proxy::start(fulcrum_bin().as_ref(), &config)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (proxy, admin) = (config.server.listen[0], config.admin.listen);
    assert_eq!(
        metric_at(admin, "fulcrum_model_loaded").await,
        1.0,
        "the shipped model did not load (ONNX Runtime from .venv):\n{}",
        process.log_tail()
    );
    // Traffic on both pools (the dead backend forces retries, then its ejection), and the
    // rarer events.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = [(proxy, "/w"), (proxy, "/w"), (proxy, "/api"), (proxy, "/d")]
        .into_iter()
        .map(|(a, p)| load(a, p, stop.clone()))
        .collect();
    let prometheus = Prometheus::scraping(admin).await;
    // Events must fall between scrapes to show as changes: wait for the first few.
    let scraped = eventually(Duration::from_secs(20), || async {
        matches!(
            prometheus.series("count_over_time(fulcrum_build_info[1m]) >= 2").await,
            Ok(s) if !s.is_empty()
        )
    })
    .await;
    assert!(
        scraped.is_some(),
        "prometheus does not scrape fulcrum:\n{}",
        prometheus.log()
    );
    assert_eq!(
        get(proxy, "/").await.unwrap().status,
        404,
        "an unrouted request"
    );
    tls_request(tls).await;
    tls_failure(tls).await;
    let r = request(admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = request(admin, "POST", "/api/model/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let retried = eventually(Duration::from_secs(10), || async {
        metric_at(admin, "fulcrum_retries_total").await >= 1.0
    })
    .await;
    assert!(retried.is_some(), "no retry away from the dead backend");

    // Every variable's values, then every expression, until each has series (scrapes of the
    // events above take a second or two to arrive) or the time is up.
    let mut variables = Vec::new();
    for (name, metric, label) in label_variables(&dashboard) {
        let values = eventually(Duration::from_secs(20), || async {
            prometheus
                .api(
                    &format!("/api/v1/label/{label}/values"),
                    &[("match[]", &metric)],
                )
                .await
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() >= 2))
        })
        .await;
        assert!(
            values.is_some(),
            "variable {name}: no values of {label} on {metric}"
        );
        let data = prometheus
            .api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", &metric)],
            )
            .await
            .unwrap();
        let all: Vec<&str> = data
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        variables.push((name, format!("({})", all.join("|"))));
    }
    let mut failures = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        failures.clear();
        for q in &queries {
            let expr = substitute(&q.expr, &variables);
            match prometheus.series(&expr).await {
                Ok(s) if s.is_empty() => {
                    failures.push(format!("{}: no series for {expr}", q.place))
                }
                Ok(s) => {
                    for label in &q.legend_labels {
                        if let Some(m) = s.iter().find(|m| !m.contains_key(label)) {
                            failures.push(format!(
                                "{}: the legend's {{{{{label}}}}} is not on {m:?} of {expr}",
                                q.place
                            ));
                        }
                    }
                }
                Err(e) => failures.push(format!("{}: error {e} for {expr}", q.place)),
            }
        }
        if failures.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries failed:\n{}\nprometheus log:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n"),
        prometheus.log()
    );
    eprintln!("{} dashboard queries answered with series", queries.len());
}

/// Sum of the samples on `admin`'s `/metrics` whose line starts with `prefix`.
async fn metric_at(admin: SocketAddr, prefix: &str) -> f64 {
    let body = get(admin, "/metrics").await.unwrap().body;
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn variables_are_substituted_as_grafana_does() {
    let vars = [("pool".to_string(), "(a|b)".to_string())];
    assert_eq!(
        substitute(
            r#"rate(x{pool=~"$pool"}[$__rate_interval]) + y{p=~"${pool}"}"#,
            &vars
        ),
        r#"rate(x{pool=~"(a|b)"}[5s]) + y{p=~"(a|b)"}"#
    );
    let d: Value = serde_json::json!({
        "panels": [{"title": "A", "targets": [{"refId": "B", "expr": "up"}]}],
        "templating": {"list": [{"name": "pool", "type": "query",
                                  "query": {"query": "label_values(m, pool)"}}]}
    });
    let q = queries(&d);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].place, "dashboard / A [B]");
    assert_eq!(
        legend_labels("{{pool}} {{ backend }} static"),
        ["pool", "backend"]
    );
    assert_eq!(
        label_variables(&d),
        [("pool".to_string(), "m".to_string(), "pool".to_string())]
    );
}

/// The panels of `docker/grafana/fulcrum.json`, rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().into_iter().flatten());
        out.push(p);
    }
    out
}

#[test]
fn panels_have_unique_ids_do_not_overlap_and_use_the_datasource_variable() {
    let path = repo_root().join("docker/grafana/fulcrum.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = panels(&dashboard);
    let mut ids: Vec<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "a panel without an id");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids repeat");
    let boxes: Vec<(&str, [u64; 4])> = panels
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_u64().unwrap_or_else(|| panic!("{p}: gridPos.{k}"));
            (
                p["title"].as_str().unwrap_or("?"),
                [n("x"), n("y"), n("w"), n("h")],
            )
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in boxes.iter().enumerate() {
        assert!(ax + aw <= 24, "{a} is wider than the grid");
        for (b, [bx, by, bw, bh]) in &boxes[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            assert!(apart, "panels {a:?} and {b:?} overlap");
        }
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{}: a target not on the datasource variable",
                p["title"]
            );
        }
    }
}

#[test]
fn the_compose_prometheus_configuration_is_valid() {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo_root().join("docker/prometheus.yml"))
        .output()
        .expect(
            "promtool (Debian package `prometheus`) is required; scripts/setup.sh test installs it",
        );
    assert!(
        out.status.success(),
        "promtool check config docker/prometheus.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
