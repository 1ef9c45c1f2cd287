//! Prometheus metrics: names in one place, per-backend handles registered once.
//!
//! Request-path code never builds label sets: it increments handles that were registered when
//! the pool was built, or once per process for the few metrics that belong to no pool. Gauges that mirror live atomics (in-flight, up, weight) are refreshed
//! just before each scrape instead of on every request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests answered, by pool, backend and status class.
pub const REQUESTS_TOTAL: &str = "fulcrum_requests_total";
/// Client-visible request duration, by pool and backend.
pub const REQUEST_DURATION_SECONDS: &str = "fulcrum_request_duration_seconds";
/// Requests currently in flight to a backend.
pub const BACKEND_IN_FLIGHT: &str = "fulcrum_backend_in_flight";
/// 1 when a backend is eligible for traffic, 0 when ejected.
pub const BACKEND_UP: &str = "fulcrum_backend_up";
/// The weight the picker currently uses for a backend.
pub const BACKEND_WEIGHT: &str = "fulcrum_backend_weight";
/// Extra attempts made after a failed one.
pub const RETRIES_TOTAL: &str = "fulcrum_retries_total";
/// Failed active health checks.
pub const HEALTH_CHECK_FAILURES_TOTAL: &str = "fulcrum_health_check_failures_total";
/// Passive ejections after consecutive failures.
pub const PASSIVE_EJECTIONS_TOTAL: &str = "fulcrum_passive_ejections_total";
/// Requests that matched no route.
pub const UNROUTED_REQUESTS_TOTAL: &str = "fulcrum_unrouted_requests_total";
/// Requests rejected before routing (malformed framing and the like).
pub const REJECTED_REQUESTS_TOTAL: &str = "fulcrum_rejected_requests_total";
/// Clients whose connection ended before they had their answer, by phase.
pub const CLIENT_ABORTS_TOTAL: &str = "fulcrum_client_aborts_total";
/// Clients that stopped sending for longer than their timeout, by phase.
pub const CLIENT_TIMEOUTS_TOTAL: &str = "fulcrum_client_timeouts_total";
/// Request bodies with broken framing (invalid chunks, HTTP/2 DATA frames that disagree with
/// `content-length`), by whether a backend had been picked when it showed.
pub const REQUEST_FRAMING_ERRORS_TOTAL: &str = "fulcrum_request_framing_errors_total";
/// Configuration reloads, by result.
pub const CONFIG_RELOADS_TOTAL: &str = "fulcrum_config_reloads_total";
/// 1 when the last configuration reload succeeded, 0 when it was refused.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "fulcrum_config_last_reload_success";
/// Unix time of the last successful configuration load (start-up or reload).
pub const CONFIG_LAST_RELOAD_TIMESTAMP_SECONDS: &str =
    "fulcrum_config_last_reload_timestamp_seconds";
/// 1 while a backend ramps up in slow start, 0 otherwise.
pub const BACKEND_SLOW_START: &str = "fulcrum_backend_slow_start";
/// 1 while the process drains before exiting (after `SIGTERM`), else 0.
pub const DRAINING: &str = "fulcrum_draining";
/// Client connections open on the data-plane listeners.
pub const CONNECTIONS_OPEN: &str = "fulcrum_connections_open";
/// The client-connection cap applied (`server.max_connections`, bounded by the open-file limit).
pub const CONNECTIONS_MAX: &str = "fulcrum_connections_max";
/// Connections that found every slot taken and waited in the listen backlog.
pub const CONNECTIONS_QUEUED_TOTAL: &str = "fulcrum_connections_queued_total";
/// Connections waiting for a request head that were closed to make room for a new one.
pub const CONNECTIONS_EVICTED_TOTAL: &str = "fulcrum_connections_evicted_total";
/// Connections closed for sending nothing: a new one within the shorter of the keep-alive and
/// header timeouts, a kept-alive one within `server.keepalive_timeout_ms`.
pub const CONNECTIONS_IDLE_CLOSED_TOTAL: &str = "fulcrum_connections_idle_closed_total";
/// Times the heaps were collected after client connections fell (see `memory`).
pub const MEMORY_RELEASES_TOTAL: &str = "fulcrum_memory_releases_total";
/// Constant 1 labelled with the build's version.
pub const BUILD_INFO: &str = "fulcrum_build_info";

/// Status classes used as the `code_class` label; `error` is a request that got no response.
pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Buckets for request durations, in seconds: 0.5 ms to 30 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// The same bounds in nanoseconds, for the request path.
const DURATION_BUCKETS_NS: [u64; 16] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    30_000_000_000,
];

/// A fixed-bucket duration histogram: one relaxed `fetch_add` per bucket hit, no clock read,
/// no allocation, and bounded memory whether or not anyone scrapes.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    buckets: [AtomicU64; 16],
    overflow: AtomicU64,
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// Count one duration.
    #[inline]
    pub fn record_ns(&self, ns: u64) {
        match DURATION_BUCKETS_NS.iter().position(|&le| ns <= le) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn render(&self, out: &mut String, labels: &str) {
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{REQUEST_DURATION_SECONDS}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.overflow.load(Relaxed);
        let _ = writeln!(
            out,
            "{REQUEST_DURATION_SECONDS}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{REQUEST_DURATION_SECONDS}_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "{REQUEST_DURATION_SECONDS}_count{{{labels}}} {cumulative}"
        );
    }
}

type DurationRegistry = Mutex<BTreeMap<(String, String), Arc<DurationHistogram>>>;

/// Every duration histogram by (pool, backend); they outlive configuration reloads, like the
/// recorder's own counters.
fn durations() -> &'static DurationRegistry {
    static REGISTRY: OnceLock<DurationRegistry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// `v` escaped for a label value of the Prometheus text format.
pub(crate) fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus exposition: the recorder's metrics plus the duration histograms.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    let registry = durations().lock().unwrap_or_else(|p| p.into_inner());
    if !registry.is_empty() {
        let _ = writeln!(
            out,
            "# HELP {REQUEST_DURATION_SECONDS} Client-visible request duration, by pool and backend."
        );
        let _ = writeln!(out, "# TYPE {REQUEST_DURATION_SECONDS} histogram");
        for ((pool, backend), h) in registry.iter() {
            let labels = format!(
                "pool=\"{}\",backend=\"{}\"",
                escape_label(pool),
                escape_label(backend)
            );
            h.render(&mut out, &labels);
        }
    }
    drop(registry);
    crate::forecast::render_forecasts(&mut out);
    out
}

/// Handles for requests refused before routing, one per `reason` label.
#[derive(Debug)]
pub struct Rejections {
    /// Both `Content-Length` and `Transfer-Encoding` (`reason="content_length_and_transfer_encoding"`).
    pub both_framings: Counter,
    /// An HTTP/1.1 request without `Host` (`reason="missing_host"`).
    pub missing_host: Counter,
    /// `Transfer-Encoding` other than exactly one `chunked` (`reason="transfer_encoding"`).
    pub transfer_encoding: Counter,
    /// A request body that stopped coming for longer than `server.body_timeout_ms`, answered
    /// 408 (`reason="body_timeout"`).
    pub body_timeout: Counter,
    /// A request body whose framing is broken, found before a backend was picked and answered
    /// 400 (`reason="malformed_body"`).
    pub malformed_body: Counter,
}

/// The rejection handles, registered on first use; [`install`] makes that use, so every reason
/// is exported (at 0) from the start.
pub fn rejections() -> &'static Rejections {
    static REJECTIONS: OnceLock<Rejections> = OnceLock::new();
    REJECTIONS.get_or_init(|| Rejections {
        both_framings: metrics::counter!(REJECTED_REQUESTS_TOTAL, "reason" => "content_length_and_transfer_encoding"),
        missing_host: metrics::counter!(REJECTED_REQUESTS_TOTAL, "reason" => "missing_host"),
        transfer_encoding: metrics::counter!(REJECTED_REQUESTS_TOTAL, "reason" => "transfer_encoding"),
        body_timeout: metrics::counter!(REJECTED_REQUESTS_TOTAL, "reason" => "body_timeout"),
        malformed_body: metrics::counter!(REJECTED_REQUESTS_TOTAL, "reason" => "malformed_body"),
    })
}

/// Handles for clients that went away, one per `phase` label.
#[derive(Debug)]
pub struct ClientAborts {
    /// Before their request head was complete: hung up, reset, or too slow (`phase="head"`).
    pub head: Counter,
    /// After the head, while the request was proxied (`phase="request"`).
    pub request: Counter,
}

/// The client-abort handles, registered on first use; [`install`] makes that use, so both
/// phases are exported (at 0) from the start.
pub fn client_aborts() -> &'static ClientAborts {
    static ABORTS: OnceLock<ClientAborts> = OnceLock::new();
    ABORTS.get_or_init(|| ClientAborts {
        head: metrics::counter!(CLIENT_ABORTS_TOTAL, "phase" => "head"),
        request: metrics::counter!(CLIENT_ABORTS_TOTAL, "phase" => "request"),
    })
}

/// Handles for clients that stopped sending, one per `phase` label.
#[derive(Debug)]
pub struct ClientTimeouts {
    /// Between two reads of the request body, longer than `server.body_timeout_ms`
    /// (`phase="body"`).
    pub body: Counter,
}

/// The client-timeout handles, registered on first use; [`install`] makes that use.
pub fn client_timeouts() -> &'static ClientTimeouts {
    static TIMEOUTS: OnceLock<ClientTimeouts> = OnceLock::new();
    TIMEOUTS.get_or_init(|| ClientTimeouts {
        body: metrics::counter!(CLIENT_TIMEOUTS_TOTAL, "phase" => "body"),
    })
}

/// Handles for request bodies with broken framing, one per `stage` label.
#[derive(Debug)]
pub struct FramingErrors {
    /// Found while the body was read ahead: refused with 400, no backend saw the request
    /// (`stage="buffered"`).
    pub buffered: Counter,
    /// Found while the body streamed to a backend: the request and its backend connection
    /// were abandoned (`stage="streaming"`).
    pub streaming: Counter,
}

/// The framing-error handles, registered on first use; [`install`] makes that use.
pub fn framing_errors() -> &'static FramingErrors {
    static FRAMING: OnceLock<FramingErrors> = OnceLock::new();
    FRAMING.get_or_init(|| FramingErrors {
        buffered: metrics::counter!(REQUEST_FRAMING_ERRORS_TOTAL, "stage" => "buffered"),
        streaming: metrics::counter!(REQUEST_FRAMING_ERRORS_TOTAL, "stage" => "streaming"),
    })
}

/// Install the process-wide recorder and describe every metric. Call once, before any pool is built.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe();
    // Registered only after the recorder exists, or the handles would count into nothing.
    rejections();
    client_aborts();
    client_timeouts();
    framing_errors();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by pool, backend and status class."
    );
    describe_gauge!(
        BACKEND_IN_FLIGHT,
        "Requests currently in flight to a backend."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 when a backend is eligible for traffic, 0 when ejected."
    );
    describe_gauge!(
        BACKEND_WEIGHT,
        "The weight the picker currently uses for a backend."
    );
    describe_counter!(RETRIES_TOTAL, "Extra attempts made after a failed attempt.");
    describe_counter!(HEALTH_CHECK_FAILURES_TOTAL, "Failed active health checks.");
    describe_counter!(
        PASSIVE_EJECTIONS_TOTAL,
        "Backends ejected after consecutive failures."
    );
    describe_counter!(
        UNROUTED_REQUESTS_TOTAL,
        "Requests that matched no route (answered 404)."
    );
    describe_counter!(
        REJECTED_REQUESTS_TOTAL,
        "Requests refused by fulcrum before any backend saw them, by reason: a client limit (head_timeout, head_too_large, request_line_too_long, bare_cr, body_timeout) or a malformed or ambiguous request."
    );
    describe_counter!(
        CLIENT_ABORTS_TOTAL,
        "Clients whose connection ended before they had their answer, by phase."
    );
    describe_counter!(
        CLIENT_TIMEOUTS_TOTAL,
        "Clients that stopped sending for longer than their timeout, by phase."
    );
    describe_counter!(
        REQUEST_FRAMING_ERRORS_TOTAL,
        "Request bodies with broken framing, by whether they were read ahead (buffered) or streamed to a backend."
    );
    describe_counter!(CONFIG_RELOADS_TOTAL, "Configuration reloads, by result.");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        "1 when the last configuration reload succeeded, 0 when it was refused."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_TIMESTAMP_SECONDS,
        metrics::Unit::Seconds,
        "Unix time of the last successful configuration load (start-up or reload)."
    );
    describe_gauge!(
        BACKEND_SLOW_START,
        "1 while a backend ramps up in slow start, 0 otherwise."
    );
    describe_gauge!(
        DRAINING,
        "1 while the process drains before exiting (after SIGTERM), else 0."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Client connections open on the data-plane listeners."
    );
    describe_gauge!(
        CONNECTIONS_MAX,
        "The client-connection cap applied: server.max_connections, bounded by the open-file limit."
    );
    describe_counter!(
        CONNECTIONS_QUEUED_TOTAL,
        "Connections that found every allowed connection open and waited in the listen backlog."
    );
    describe_counter!(
        CONNECTIONS_EVICTED_TOTAL,
        "Connections waiting for a request head, closed (oldest first) to make room for a new one."
    );
    describe_counter!(
        MEMORY_RELEASES_TOTAL,
        "Times every worker's heap was collected after the open client connections fell to half their peak."
    );
    describe_counter!(
        CONNECTIONS_IDLE_CLOSED_TOTAL,
        "Connections closed for sending nothing within the keep-alive timeout (new ones: the shorter of it and the header timeout)."
    );
    describe_gauge!(BUILD_INFO, "Constant 1, labelled with the fulcrum version.");
}

/// Record the outcome of a configuration load: the start-up load and every reload.
pub fn record_config_load(ok: bool) {
    metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(if ok { 1.0 } else { 0.0 });
    if ok {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(CONFIG_LAST_RELOAD_TIMESTAMP_SECONDS).set(now);
    }
}

/// Handles for one backend of one pool.
#[derive(Debug)]
pub struct BackendMetrics {
    requests: [Counter; 6],
    /// Request duration histogram.
    pub duration: Arc<DurationHistogram>,
    /// Retries that left this backend.
    pub retries: Counter,
    /// Failed active health checks.
    pub health_check_failures: Counter,
    /// Passive ejections.
    pub passive_ejections: Counter,
    in_flight: Gauge,
    up: Gauge,
    weight: Gauge,
    slow_start: Gauge,
}

impl BackendMetrics {
    /// Register every handle for `backend` in `pool`.
    pub fn register(pool: &str, backend: &str, weight_source: &'static str) -> Self {
        let p = pool.to_string();
        let b = backend.to_string();
        let requests = CODE_CLASSES.map(|class| {
            metrics::counter!(REQUESTS_TOTAL, "pool" => p.clone(), "backend" => b.clone(), "code_class" => class)
        });
        BackendMetrics {
            requests,
            duration: durations()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((p.clone(), b.clone()))
                .or_default()
                .clone(),
            retries: metrics::counter!(RETRIES_TOTAL, "pool" => p.clone(), "backend" => b.clone()),
            health_check_failures: metrics::counter!(HEALTH_CHECK_FAILURES_TOTAL, "pool" => p.clone(), "backend" => b.clone()),
            passive_ejections: metrics::counter!(PASSIVE_EJECTIONS_TOTAL, "pool" => p.clone(), "backend" => b.clone()),
            in_flight: metrics::gauge!(BACKEND_IN_FLIGHT, "pool" => p.clone(), "backend" => b.clone()),
            up: metrics::gauge!(BACKEND_UP, "pool" => p.clone(), "backend" => b.clone()),
            slow_start: metrics::gauge!(BACKEND_SLOW_START, "pool" => p.clone(), "backend" => b.clone()),
            weight: metrics::gauge!(BACKEND_WEIGHT, "pool" => p, "backend" => b, "source" => weight_source),
        }
    }

    /// Count one answered request with `status` (0 = no response was sent).
    pub fn count_response(&self, status: u16) {
        self.requests[code_class_index(status)].increment(1);
    }

    /// Mirror live state into the gauges (called before a scrape).
    pub fn refresh(&self, in_flight: u64, up: bool, weight: f64, slow_start: bool) {
        self.in_flight.set(in_flight as f64);
        self.up.set(if up { 1.0 } else { 0.0 });
        self.weight.set(weight);
        self.slow_start.set(if slow_start { 1.0 } else { 0.0 });
    }
}

/// Index into [`CODE_CLASSES`] for a status code.
pub fn code_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// Handles for requests that never reached a pool's backends.
#[derive(Debug)]
pub struct PoolMetrics {
    /// Requests answered without a backend (no healthy backend: 503), by class.
    requests_without_backend: [Counter; 6],
}

impl PoolMetrics {
    /// Register the pool-level handles.
    pub fn register(pool: &str) -> Self {
        let p = pool.to_string();
        PoolMetrics {
            requests_without_backend: CODE_CLASSES.map(|class| {
                metrics::counter!(REQUESTS_TOTAL, "pool" => p.clone(), "backend" => "none", "code_class" => class)
            }),
        }
    }

    /// Count a request that was answered without a backend.
    pub fn count_response(&self, status: u16) {
        self.requests_without_backend[code_class_index(status)].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_histogram_is_cumulative() {
        let h = DurationHistogram::default();
        h.record_ns(400_000);
        h.record_ns(3_000_000);
        h.record_ns(40_000_000_000);
        let mut out = String::new();
        h.render(&mut out, "pool=\"p\",backend=\"b\"");
        assert!(
            out.contains("_bucket{pool=\"p\",backend=\"b\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("le=\"30\"} 2\n"), "{out}");
        assert!(out.contains("le=\"+Inf\"} 3\n"), "{out}");
        assert!(
            out.contains("_count{pool=\"p\",backend=\"b\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("_sum{pool=\"p\",backend=\"b\"} 40.0034\n"),
            "{out}"
        );
        assert_eq!(escape_label("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn code_classes() {
        assert_eq!(CODE_CLASSES[code_class_index(101)], "1xx");
        assert_eq!(CODE_CLASSES[code_class_index(200)], "2xx");
        assert_eq!(CODE_CLASSES[code_class_index(404)], "4xx");
        assert_eq!(CODE_CLASSES[code_class_index(503)], "5xx");
        assert_eq!(CODE_CLASSES[code_class_index(0)], "error");
    }
}
