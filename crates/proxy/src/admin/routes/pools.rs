//! `GET /api/pools` (live state of every pool) and `PUT /api/pools/{pool}/weights` (set a
//! static pool's weights at runtime).

use bytes::Bytes;
use fulcrum_balance::Backend;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{Map, Value};

use crate::admin::response::{json, not_found, text, unprocessable, Reply};
use crate::admin::snapshot;
use crate::admin::window::LatencyWindows;
use crate::Shared;

/// Largest accepted `PUT /api/pools/{pool}/weights` body.
const MAX_WEIGHTS_BODY: usize = 1 << 20;

/// Largest weight the API accepts for one backend.
const MAX_WEIGHT: f64 = 1e9;

/// Every pool and backend as JSON, with each backend's recent p50 and p99.
pub(crate) fn get(shared: &Shared, windows: &LatencyWindows) -> Reply {
    json(&snapshot::build(shared, Some(windows)))
}

/// The pool name in `/api/pools/{pool}/weights`.
pub(crate) fn weights_path(path: &str) -> Option<&str> {
    path.strip_prefix("/api/pools/")?
        .strip_suffix("/weights")
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

/// `PUT /api/pools/{pool}/weights`: set the weights of some or all of a static pool's backends
/// at runtime (`{"10.0.0.1:8080": 2.5, "10.0.0.2:8080": 0}`; 0 drains a backend). Every
/// problem in the body is reported at once and nothing changes unless all of it is valid. A
/// configuration reload keeps them, except for a backend whose configured weight changed. Pools with
/// `weights = "model"` are refused: the control loop owns their weights.
pub(crate) async fn put_weights(req: Request<Incoming>, shared: &Shared, name: &str) -> Reply {
    // Read the body before taking a snapshot of the live state, so a slow client never holds one.
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let upstreams = shared.upstreams.load();
    let Some(p) = upstreams.pools.iter().find(|p| p.config.name == name) else {
        return not_found(format!("no pool named {name:?}\n"));
    };
    if p.config.weights == fulcrum_config::WeightSource::Model {
        return text(
            StatusCode::CONFLICT,
            format!("pool {name:?} has weights = \"model\": the control loop sets its weights\n"),
        );
    }
    let updates: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("expected a JSON object of backend address to weight: {e}\n"),
            )
        }
    };
    let backends = p.pool.backends();
    let weights = match merged_weights(name, backends, p.pool.weights().weights(), &updates) {
        Ok(w) => w,
        Err(problems) => {
            return unprocessable(format!("weights not changed:\n{}\n", problems.join("\n")))
        }
    };
    if let Err(e) = p.pool.set_weights(weights.clone()) {
        return unprocessable(format!("weights not changed: {e}\n"));
    }
    log::info!("admin: pool {name} weights set to {weights:?}");
    let doc: Map<String, Value> = backends
        .iter()
        .zip(&weights)
        .map(|(b, w)| (b.name.clone(), serde_json::json!(w)))
        .collect();
    json(&serde_json::json!({ "pool": name, "weights": doc }))
}

/// The whole body, or the 413 answer when it is too large or cannot be read.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reply> {
    match Limited::new(req.into_body(), MAX_WEIGHTS_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_WEIGHTS_BODY} bytes or unreadable\n"),
        )),
    }
}

/// `current` with every weight in `updates` (backend address → number) applied, or every
/// problem found: unknown backends, weights outside 0..=1e9, a pool left with no weight at all.
fn merged_weights(
    pool: &str,
    backends: &[Backend],
    current: &[f64],
    updates: &Map<String, Value>,
) -> Result<Vec<f64>, Vec<String>> {
    let mut weights = current.to_vec();
    let mut problems = Vec::new();
    for (addr, value) in updates {
        let Some(i) = backends.iter().position(|b| &b.name == addr) else {
            let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
            problems.push(format!(
                "{addr}: no such backend in pool {pool:?} (it has {})",
                known.join(", ")
            ));
            continue;
        };
        match value.as_f64() {
            Some(w) if w.is_finite() && (0.0..=MAX_WEIGHT).contains(&w) => weights[i] = w,
            _ => problems.push(format!(
                "{addr}: weight must be a number from 0 to 1e9, got {value}"
            )),
        }
    }
    if problems.is_empty() && weights.iter().all(|&w| w == 0.0) {
        problems.push("every backend would have weight 0; the pool could serve nothing".into());
    }
    if problems.is_empty() {
        Ok(weights)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<Backend> {
        ["127.0.0.1:9001", "127.0.0.1:9002"]
            .iter()
            .map(|a| Backend::new(a.parse().unwrap(), 1))
            .collect()
    }

    fn updates(doc: &str) -> Map<String, Value> {
        serde_json::from_str(doc).unwrap()
    }

    #[test]
    fn weights_path_names_one_pool() {
        assert_eq!(weights_path("/api/pools/web/weights"), Some("web"));
        assert_eq!(weights_path("/api/pools//weights"), None);
        assert_eq!(weights_path("/api/pools/a/b/weights"), None);
        assert_eq!(weights_path("/api/pools"), None);
    }

    #[test]
    fn updates_apply_to_the_named_backends_only() {
        let merged = merged_weights(
            "web",
            &backends(),
            &[1.0, 1.0],
            &updates(r#"{"127.0.0.1:9002": 2.5}"#),
        );
        assert_eq!(merged, Ok(vec![1.0, 2.5]));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = merged_weights(
            "web",
            &backends(),
            &[1.0, 1.0],
            &updates(r#"{"10.0.0.1:80": 1, "127.0.0.1:9001": -1, "127.0.0.1:9002": "x"}"#),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("no such backend in pool \"web\""));
        assert!(problems[1].contains("got -1"));
    }

    #[test]
    fn a_pool_cannot_be_drained_whole() {
        let problems = merged_weights(
            "web",
            &backends(),
            &[1.0, 0.0],
            &updates(r#"{"127.0.0.1:9001": 0}"#),
        )
        .unwrap_err();
        assert!(problems[0].contains("every backend would have weight 0"));
    }
}
