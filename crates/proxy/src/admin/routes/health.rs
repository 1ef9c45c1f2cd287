//! `GET /healthz` (the process answers) and `GET /readyz` (not draining, and every pool can
//! serve).

use hyper::StatusCode;

use crate::admin::response::{text, Reply};
use crate::Shared;

/// Liveness: answering at all is the proof.
pub(crate) fn healthz() -> Reply {
    text(StatusCode::OK, "ok\n")
}

/// Readiness: 503 `draining` from `SIGTERM` on, so load balancers stop sending traffic before
/// the listeners close; else 200 when every pool has a healthy backend, or 503 naming the pools
/// without one.
pub(crate) fn readyz(shared: &Shared) -> Reply {
    if shared.lifecycle.draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    let upstreams = shared.upstreams.load();
    if upstreams.ready() {
        return text(StatusCode::OK, "ready\n");
    }
    let down: Vec<&str> = upstreams
        .pools
        .iter()
        .filter(|p| p.pool.healthy_count() == 0)
        .map(|p| p.config.name.as_str())
        .collect();
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "not ready: no healthy backend in pool(s): {}\n",
            down.join(", ")
        ),
    )
}
