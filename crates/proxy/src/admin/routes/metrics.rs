//! `GET /metrics`: the Prometheus exposition.

use hyper::StatusCode;

use crate::admin::response::{with_type, Reply};
use crate::Shared;

/// Refresh the gauges that mirror live state, then render every metric.
pub(crate) fn get(shared: &Shared) -> Reply {
    for pool in &shared.upstreams.load().pools {
        pool.refresh_gauges();
    }
    let mut body = crate::metrics::render(&shared.metrics);
    body.push_str(&shared.certificates.load().render_not_after());
    with_type(StatusCode::OK, "text/plain; version=0.0.4", body)
}
