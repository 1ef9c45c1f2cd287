//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/api/pools`, `/api/decisions`,
//! `PUT /api/pools/{pool}/weights`, `POST /api/config/reload`, `POST /api/model/reload`.
//!
//! It runs on its own thread and runtime, apart from the data plane, so a slow scrape can never
//! take a worker from client traffic.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::Shared;

/// A request to reload the configuration, answered with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// Serve the admin API on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    reload: mpsc::Sender<ReloadRequest>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, shared.clone(), reload.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// Answer a reload request with its outcome: 200, or 422 with the reasons it was refused.
async fn reload_reply(rx: oneshot::Receiver<Result<String, String>>) -> Response<Full<Bytes>> {
    match rx.await {
        Ok(Ok(msg)) => text(StatusCode::OK, "text/plain", msg),
        Ok(Err(msg)) => text(StatusCode::UNPROCESSABLE_ENTITY, "text/plain", msg),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "reload aborted\n",
        ),
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reload: mpsc::Sender<ReloadRequest>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if let Some(pool) = weights_path(&path) {
        return Ok(if method == Method::PUT {
            put_weights(req, &shared, pool).await
        } else {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed; PUT a JSON object of backend address to weight\n",
            )
        });
    }
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            for pool in &shared.upstreams.load().pools {
                pool.refresh_gauges();
            }
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::metrics::render(&shared.metrics),
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            let upstreams = shared.upstreams.load();
            if upstreams.ready() {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                let down: Vec<&str> = upstreams
                    .pools
                    .iter()
                    .filter(|p| p.pool.healthy_count() == 0)
                    .map(|p| p.config.name.as_str())
                    .collect();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "not ready: no healthy backend in pool(s): {}\n",
                        down.join(", ")
                    ),
                )
            }
        }
        (&Method::GET, "/api/pools") => {
            let body = serde_json::to_vec_pretty(&pools_snapshot(&shared)).unwrap_or_default();
            text(StatusCode::OK, "application/json", body)
        }
        (&Method::GET, "/api/decisions") => {
            let query = req.uri().query().unwrap_or("");
            let param = |k: &str| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            };
            let limit = param("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20usize);
            let pool = param("pool");
            let decisions = shared.decisions.recent(limit, pool.as_deref());
            let body = serde_json::to_vec_pretty(&serde_json::json!({ "decisions": decisions }))
                .unwrap_or_default();
            text(StatusCode::OK, "application/json", body)
        }
        (&Method::POST, "/api/model/reload") => {
            let (tx, rx) = oneshot::channel();
            match shared.model_reload.send(tx) {
                Ok(()) => reload_reply(rx).await,
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "control loop is not running\n",
                ),
            }
        }
        (&Method::POST, "/api/config/reload") => {
            let (tx, rx) = oneshot::channel();
            match reload.send(tx).await {
                Ok(()) => reload_reply(rx).await,
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "reloader is not running\n",
                ),
            }
        }
        (
            _,
            "/metrics" | "/healthz" | "/readyz" | "/api/pools" | "/api/decisions"
            | "/api/config/reload" | "/api/model/reload",
        ) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics /healthz /readyz /api/pools /api/decisions\n",
        ),
    };
    Ok(resp)
}

/// The pool name in `/api/pools/{pool}/weights`.
fn weights_path(path: &str) -> Option<&str> {
    path.strip_prefix("/api/pools/")?
        .strip_suffix("/weights")
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

/// Largest accepted `PUT /api/pools/{pool}/weights` body.
const MAX_WEIGHTS_BODY: usize = 1 << 20;

/// `PUT /api/pools/{pool}/weights`: set the weights of some or all of a static pool's backends
/// at runtime (`{"10.0.0.1:8080": 2.5, "10.0.0.2:8080": 0}`; 0 drains a backend). Every
/// problem in the body is reported at once and nothing changes unless all of it is valid. The
/// weights last until the next configuration reload rebuilds the pool. Pools with
/// `weights = "model"` are refused: the control loop owns their weights.
async fn put_weights(req: Request<Incoming>, shared: &Shared, name: &str) -> Response<Full<Bytes>> {
    // Read the body before taking a snapshot of the live state, so a slow client never holds one.
    let body = match Limited::new(req.into_body(), MAX_WEIGHTS_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("body larger than {MAX_WEIGHTS_BODY} bytes or unreadable\n"),
            )
        }
    };
    let upstreams = shared.upstreams.load();
    let Some(p) = upstreams.pools.iter().find(|p| p.config.name == name) else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no pool named {name:?}\n"),
        );
    };
    if p.config.weights == fulcrum_config::WeightSource::Model {
        return text(
            StatusCode::CONFLICT,
            "text/plain",
            format!("pool {name:?} has weights = \"model\": the control loop sets its weights\n"),
        );
    }
    let map: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("expected a JSON object of backend address to weight: {e}\n"),
            )
        }
    };
    let backends = p.pool.backends();
    let mut weights = p.pool.weights().weights().to_vec();
    let mut problems = Vec::new();
    for (addr, value) in &map {
        let Some(i) = backends.iter().position(|b| &b.name == addr) else {
            let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
            problems.push(format!(
                "{addr}: no such backend in pool {name:?} (it has {})",
                known.join(", ")
            ));
            continue;
        };
        match value.as_f64() {
            Some(w) if w.is_finite() && (0.0..=1e9).contains(&w) => weights[i] = w,
            _ => problems.push(format!(
                "{addr}: weight must be a number from 0 to 1e9, got {value}"
            )),
        }
    }
    if problems.is_empty() && weights.iter().all(|&w| w == 0.0) {
        problems.push("every backend would have weight 0; the pool could serve nothing".into());
    }
    if !problems.is_empty() {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "text/plain",
            format!("weights not changed:\n{}\n", problems.join("\n")),
        );
    }
    if let Err(e) = p.pool.set_weights(weights.clone()) {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "text/plain",
            format!("weights not changed: {e}\n"),
        );
    }
    log::info!("admin: pool {name} weights set to {weights:?}");
    let doc: serde_json::Map<String, serde_json::Value> = backends
        .iter()
        .zip(&weights)
        .map(|(b, w)| (b.name.clone(), serde_json::json!(w)))
        .collect();
    let body = serde_json::to_vec_pretty(&serde_json::json!({ "pool": name, "weights": doc }))
        .unwrap_or_default();
    text(StatusCode::OK, "application/json", body)
}

/// `/api/pools` document.
#[derive(Debug, Serialize)]
pub struct PoolsSnapshot {
    /// Every pool in configuration order.
    pub pools: Vec<PoolSnapshot>,
}

/// One pool in `/api/pools`.
#[derive(Debug, Serialize)]
pub struct PoolSnapshot {
    /// Pool name.
    pub name: String,
    /// Picker algorithm.
    pub algorithm: &'static str,
    /// Where weights come from (`static` or `model`).
    pub weights: &'static str,
    /// Backends currently eligible for traffic.
    pub healthy_backends: usize,
    /// Per-backend state.
    pub backends: Vec<BackendSnapshot>,
}

/// One backend in `/api/pools`.
#[derive(Debug, Serialize)]
pub struct BackendSnapshot {
    /// `ip:port`.
    pub addr: String,
    /// Eligible for traffic.
    pub healthy: bool,
    /// Weight from the configuration.
    pub static_weight: u32,
    /// Weight the picker uses now.
    pub weight: f64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Peak-EWMA latency estimate, milliseconds.
    pub ewma_latency_ms: f64,
    /// Completed attempts.
    pub requests: u64,
    /// Failed attempts (5xx, connect failures, timeouts).
    pub errors: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

/// Build the `/api/pools` document from live state.
pub fn pools_snapshot(shared: &Shared) -> PoolsSnapshot {
    let now = fulcrum_balance::now_ns();
    let upstreams = shared.upstreams.load();
    let pools = upstreams
        .pools
        .iter()
        .map(|p| {
            let weights = p.pool.weights();
            PoolSnapshot {
                name: p.config.name.clone(),
                algorithm: p.config.algorithm.as_str(),
                weights: match p.config.weights {
                    fulcrum_config::WeightSource::Static => "static",
                    fulcrum_config::WeightSource::Model => "model",
                },
                healthy_backends: p.pool.healthy_count(),
                backends: p
                    .pool
                    .backends()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BackendSnapshot {
                        addr: b.name.clone(),
                        healthy: b.stats.is_healthy(),
                        static_weight: b.static_weight,
                        weight: weights.weights().get(i).copied().unwrap_or(0.0),
                        in_flight: b.stats.in_flight(),
                        ewma_latency_ms: b.stats.ewma_ns(now) / 1e6,
                        requests: b.stats.requests(),
                        errors: b.stats.errors(),
                        consecutive_failures: b.stats.consecutive_failures(),
                    })
                    .collect(),
            }
        })
        .collect();
    PoolsSnapshot { pools }
}
