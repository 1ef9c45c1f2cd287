//! The pingora proxy service: routing, picking, retries, forwarded headers, accounting.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use fulcrum_balance::retry::{
    self, is_retryable_status, AttemptFailure, RetryContext, RetryDecision,
};
use fulcrum_balance::{now_ns, InFlightGuard, Outcome, Tried};
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{KnownHeaderName, RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::body::BodyFailure;
use crate::lifecycle::InFlight;
use crate::router::normalize_host;
use crate::state::Upstreams;
use crate::Shared;

/// Per-request state carried through pingora's phases.
pub struct RequestCtx {
    started_ns: u64,
    upstreams: Option<Arc<Upstreams>>,
    pool: Option<usize>,
    tried: Tried,
    attempts: u32,
    lease: Option<InFlightGuard>,
    attempt_started_ns: u64,
    attempt_recorded: bool,
    /// The current attempt ended in a 502/503/504 that will be replayed elsewhere.
    replay_response: bool,
    /// What was read of the request body before a backend was picked.
    body: crate::body::Buffered,
    /// Counts the request in flight, so a draining process exits once the last one is answered.
    _in_flight: InFlight,
}

/// Headers that describe one connection (RFC 9110 §7.6.1), removed from every forwarded
/// request. `Upgrade` is not listed: it goes through when the upgrade does.
static REQUEST_HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];
/// Headers that describe one connection, removed from every forwarded response. `Connection`
/// and `Upgrade` are not listed: a `101 Switching Protocols` keeps them, any other status loses
/// them too.
static RESPONSE_HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The headers fulcrum adds to every request, in the case they are sent in: inserted without
/// parsing or copying their names.
const XFF: KnownHeaderName = KnownHeaderName::new("X-Forwarded-For", "x-forwarded-for");
const XFP: KnownHeaderName = KnownHeaderName::new("X-Forwarded-Proto", "x-forwarded-proto");
const XFH: KnownHeaderName = KnownHeaderName::new("X-Forwarded-Host", "x-forwarded-host");
/// The load a backend reports on its answers: its own field, or ORCA's (Envoy's).
const X_BACKEND_LOAD: &str = "x-backend-load";
const ENDPOINT_LOAD_METRICS: &str = "endpoint-load-metrics";

/// The fulcrum proxy logic plugged into pingora.
pub struct FulcrumProxy {
    shared: Arc<Shared>,
    /// The port `redirect_https` sends clients to: the first TLS listener's, fixed at start
    /// like the listeners themselves.
    https_port: Option<u16>,
}

impl FulcrumProxy {
    /// A proxy serving the shared, swappable upstream state.
    pub fn new(shared: Arc<Shared>) -> Self {
        let https_port = shared
            .config
            .load()
            .server
            .tls_listen
            .first()
            .map(|a| a.port());
        FulcrumProxy { shared, https_port }
    }
}

/// Whether the client reached us over TLS.
fn over_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// `https://host[:port]/path?query` for a request to `host` (lowercase, no port); the port is
/// left out when it is HTTPS's own.
fn https_location(host: &str, port: u16, req: &RequestHeader) -> String {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    }
}

/// Keep one `Content-Length` line of several identical ones (RFC 9110 §8.6); pingora has
/// already refused a request whose values differ.
fn merge_content_length(req: &mut RequestHeader) -> Result<()> {
    let mut values = req.headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (values.next(), values.next()) {
        let first = first.clone();
        req.insert_header(header::CONTENT_LENGTH, first)?;
    }
    Ok(())
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The text form of `ip` in `buf`, as `Display` writes it; returns its length. IPv4 (nearly every
/// client of an edge proxy) is written digit by digit: going through `core::fmt` cost a
/// thousand instructions a request, a fifth of everything fulcrum adds to the upstream head.
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            // The longest IPv6 text form is 45 bytes.
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        }
    }
}

/// `X-Forwarded-For` with `ip` appended to `prev`, built in one allocation of the exact size
/// (the address is formatted on the stack, not through a `String` that grows).
fn forwarded_for(prev: Option<&[u8]>, ip: IpAddr) -> HeaderValue {
    let mut text = [0u8; 48];
    let len = ip_text(ip, &mut text);
    let ip = &text[..len];
    let value = match prev {
        Some(prev) => {
            let mut v = bytes::BytesMut::with_capacity(prev.len() + 2 + ip.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip);
            v.freeze()
        }
        None => Bytes::copy_from_slice(ip),
    };
    // Both parts are valid header bytes: `prev` came from a parsed header, `ip` is ASCII.
    HeaderValue::from_maybe_shared(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether the raw HTTP/1 request head carries a `Content-Length` header. pingora drops
/// `Content-Length` when `Transfer-Encoding` is present, so the raw bytes are the only witness.
fn raw_head_has_content_length(session: &Session) -> bool {
    session
        .as_downstream()
        .as_http1()
        .is_some_and(|h1| head_has_content_length(&h1.get_headers_raw_bytes()))
}

/// Whether a raw HTTP/1 request head (request line, header lines, blank line) has a
/// `Content-Length` header line. Public for the fuzz targets only.
#[doc(hidden)]
pub fn head_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// Why an HTTP/1 request head that pingora parsed is refused all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2: answered 400).
    MissingHost,
    /// `Transfer-Encoding` other than exactly one `chunked`: `chunked` twice, in one line or
    /// two, is a framing two parsers may read differently (RFC 9112 §6.1, §6.3).
    TransferEncoding,
}

impl HeadRefusal {
    /// The body of the 400 answer.
    fn message(self) -> &'static [u8] {
        match self {
            HeadRefusal::MissingHost => {
                b"bad request: an HTTP/1.1 request needs a Host header
"
            }
            HeadRefusal::TransferEncoding => {
                b"bad request: Transfer-Encoding must be exactly one chunked
"
            }
        }
    }
}

/// The checks fulcrum adds to pingora's on an HTTP/1 request head, as HAProxy and nginx make
/// them; `None` lets the request through. HTTP/2 requests are not checked here: the HTTP/2
/// layer refuses `transfer-encoding`, and `:authority` stands for `Host`. Public for the fuzz
/// targets only.
#[doc(hidden)]
pub fn head_refusal(req: &RequestHeader) -> Option<HeadRefusal> {
    if req.version > http::Version::HTTP_11 {
        return None;
    }
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(header::HOST) {
        return Some(HeadRefusal::MissingHost);
    }
    let mut codings = req
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|c| c.trim_ascii());
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(HeadRefusal::TransferEncoding),
    }
}

/// Answer from the proxy itself, keeping the client connection open (unlike pingora's error
/// responses, which always close it).
async fn respond_local(session: &mut Session, status: u16, body: &'static [u8]) -> Result<()> {
    respond_local_to(session, status, body, None).await
}

/// [`respond_local`] with a `Location` header when `location` is given.
async fn respond_local_to(
    session: &mut Session,
    status: u16,
    body: &'static [u8],
    location: Option<String>,
) -> Result<()> {
    // The unread request body must go before the connection can carry another request; a
    // small one is drained, anything larger or of unknown length closes the connection.
    let small_body = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len <= 64 * 1024);
    let no_body = !session
        .req_header()
        .headers
        .contains_key(header::CONTENT_LENGTH)
        && !session
            .req_header()
            .headers
            .contains_key(header::TRANSFER_ENCODING);
    if small_body {
        session.as_downstream_mut().drain_request_body().await?;
    } else if !no_body {
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(status, Some(5))?;
    if let Some(location) = location {
        resp.insert_header(header::LOCATION, location)?;
    }
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body)), true)
        .await
}

/// Headers named in `Connection`, to be removed too. The usual tokens (`keep-alive`, `close`,
/// and `upgrade` when the upgrade goes through) are skipped without parsing or allocating.
fn connection_named(headers: &http::HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !(t.eq_ignore_ascii_case("keep-alive")
                || t.eq_ignore_ascii_case("close")
                || t.is_empty()
                || (keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// Remove hop-by-hop headers from a request, including any the `Connection` header names.
/// Public for the fuzz targets only.
#[doc(hidden)]
pub fn strip_hop_by_hop_request(req: &mut RequestHeader, keep_upgrade: bool) {
    // Most requests carry none of these: look before touching the header maps.
    let (found, upgrade) = request_hop_by_hop_present(&req.headers);
    if found == 0 && !upgrade {
        return;
    }
    let named = connection_named(&req.headers, keep_upgrade);
    for n in named {
        req.remove_header(&n);
    }
    for (i, h) in REQUEST_HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            req.remove_header(h);
        }
    }
    if keep_upgrade {
        // An upgrade (e.g. WebSocket) needs `Connection: upgrade` to reach the backend.
        let _ = req.insert_header(header::CONNECTION, "upgrade");
    } else {
        req.remove_header(&header::UPGRADE);
    }
}

/// Remove hop-by-hop headers from a response, including any the `Connection` header names.
///
/// `connection_rewritten`: the writer of this response sets `Connection` itself, replacing
/// whatever the response holds (pingora's HTTP/1 server does for every final response, with
/// `keep-alive` or `close` as the client's connection goes on or not). Then the backend's
/// `Connection` is left for it to overwrite rather than removed first; the fields it names are
/// removed all the same. Public for the fuzz targets only.
#[doc(hidden)]
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader, connection_rewritten: bool) {
    let upgrade = resp.status.as_u16() == 101;
    // Most responses carry none of these but `Connection` (a kept-alive backend's
    // `Connection: keep-alive`): one pass over the fields finds what is there, and whether
    // `Connection` names anything beyond its usual tokens, before the maps are touched.
    let (mut found, mut has_connection, mut has_upgrade, mut names_fields) =
        (0u32, false, false, false);
    for (k, v) in resp.headers.iter() {
        match k.as_str() {
            "connection" => {
                has_connection = true;
                names_fields |= !only_usual_connection_tokens(v.as_bytes(), upgrade);
            }
            "upgrade" => has_upgrade = true,
            name => {
                if let Some(i) = response_hop_by_hop_index(name) {
                    found |= 1 << i;
                }
            }
        }
    }
    if found == 0 && !has_connection && !has_upgrade {
        return;
    }
    if names_fields {
        let named = connection_named(&resp.headers, upgrade);
        for n in named {
            resp.remove_header(&n);
        }
    }
    for (i, h) in RESPONSE_HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            resp.remove_header(h);
        }
    }
    if !upgrade {
        if has_connection && !connection_rewritten {
            resp.remove_header(&header::CONNECTION);
        }
        if has_upgrade {
            resp.remove_header(&header::UPGRADE);
        }
    }
}

/// Whether a `Connection` value holds only the tokens [`connection_named`] skips (`keep-alive`,
/// `close`, and `upgrade` when the upgrade goes through), so that it names no field to remove.
/// `false` only means "parse it": [`connection_named`] decides.
fn only_usual_connection_tokens(value: &[u8], keep_upgrade: bool) -> bool {
    value.split(|&b| b == b',').all(|t| {
        let t = t.trim_ascii();
        t.is_empty()
            || t.eq_ignore_ascii_case(b"keep-alive")
            || t.eq_ignore_ascii_case(b"close")
            || (keep_upgrade && t.eq_ignore_ascii_case(b"upgrade"))
    })
}

/// Which of [`REQUEST_HOP_BY_HOP`] (as bits, entry `i` is bit `i`) and whether `Upgrade` a
/// request holds, from one pass over its names: a request carries few headers, so this is
/// cheaper than a hashed lookup per name.
fn request_hop_by_hop_present(headers: &http::HeaderMap) -> (u32, bool) {
    let (mut found, mut upgrade) = (0u32, false);
    for k in headers.keys() {
        match k.as_str() {
            "upgrade" => upgrade = true,
            name => {
                if let Some(i) = request_hop_by_hop_index(name) {
                    found |= 1 << i;
                }
            }
        }
    }
    (found, upgrade)
}

/// The index of `name` in [`REQUEST_HOP_BY_HOP`]. One `match` on the text of a name sorts
/// most names out by their length alone, where comparing a name with each entry in turn
/// cost several comparisons for every field of every request (test:
/// `hop_by_hop_indexes_follow_their_lists`).
fn request_hop_by_hop_index(name: &str) -> Option<usize> {
    match name {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "proxy-authenticate" => Some(5),
        "proxy-authorization" => Some(6),
        _ => None,
    }
}

/// The index of `name` in [`RESPONSE_HOP_BY_HOP`], as [`request_hop_by_hop_index`].
fn response_hop_by_hop_index(name: &str) -> Option<usize> {
    match name {
        "keep-alive" => Some(0),
        "proxy-connection" => Some(1),
        "te" => Some(2),
        "trailer" => Some(3),
        "proxy-authenticate" => Some(4),
        _ => None,
    }
}

impl RequestCtx {
    fn pool(&self) -> Option<&crate::state::PoolRuntime> {
        Some(&self.upstreams.as_ref()?.pools[self.pool?])
    }

    /// Record the current attempt's outcome once; returns the backend index it ran on.
    fn record_attempt(&mut self, outcome: Outcome) -> Option<usize> {
        let idx = self.lease.as_ref()?.backend_index();
        if !self.attempt_recorded {
            self.attempt_recorded = true;
            let now = now_ns();
            let latency = now.saturating_sub(self.attempt_started_ns);
            let pool = self.pool()?;
            if pool.pool.record(idx, latency, outcome, now) {
                pool.backend_metrics[idx].passive_ejections.increment(1);
                log::warn!(
                    "pool {}: backend {} ejected after {} consecutive failures",
                    pool.config.name,
                    pool.pool.backends()[idx].name,
                    pool.config.max_consecutive_failures
                );
            }
        }
        Some(idx)
    }

    /// The retry rule's view of this request after its current attempt failed.
    fn retry_context(&self, session: &Session, response_started: bool) -> RetryContext {
        RetryContext {
            idempotent: session.req_header().method.is_idempotent(),
            body_replayable: !session.as_ref().retry_buffer_truncated(),
            response_started,
            attempts: self.attempts,
            retries: self.pool().map_or(0, |p| p.config.retries),
        }
    }

    /// Apply the retry rule to the current attempt's failure; counts the retry it allows.
    fn decide_retry(
        &self,
        session: &Session,
        failure: AttemptFailure,
        response_started: bool,
    ) -> bool {
        let ctx = self.retry_context(session, response_started);
        let retry = retry::decide(failure, &ctx) == RetryDecision::RetryElsewhere;
        if let (true, Some(idx)) = (retry, self.lease.as_ref().map(|l| l.backend_index())) {
            self.count_retry(idx);
        }
        retry
    }

    fn count_retry(&self, idx: usize) {
        if let Some(p) = self.pool() {
            p.backend_metrics[idx].retries.increment(1);
        }
    }
}

/// Utilisation (0–1) a backend reports about itself: `X-Backend-Load: 0.42`, or the ORCA-style
/// text form `Endpoint-Load-Metrics: TEXT cpu_utilization=0.42, ...`.
fn reported_load(resp: &ResponseHeader) -> Option<f64> {
    // One pass over the answer's names, and a lookup only for a name that is there: two hash
    // lookups of names that are almost never there cost a model pool 1 % of a request, and a
    // walk over every value nearly as much.
    let (mut own, mut orca) = (false, false);
    for name in resp.headers.keys() {
        match name.as_str() {
            X_BACKEND_LOAD => own = true,
            ENDPOINT_LOAD_METRICS => orca = true,
            _ => {}
        }
    }
    if own {
        let v = resp.headers.get(X_BACKEND_LOAD)?;
        return v.to_str().ok()?.trim().parse().ok();
    }
    if !orca {
        return None;
    }
    let v = resp.headers.get(ENDPOINT_LOAD_METRICS)?.to_str().ok()?;
    let fields = v.trim().strip_prefix("TEXT").unwrap_or(v);
    fields.split(',').find_map(|kv| {
        let (k, val) = kv.split_once('=')?;
        matches!(k.trim(), "cpu_utilization" | "application_utilization")
            .then(|| val.trim().parse().ok())
            .flatten()
    })
}

fn failure_outcome(e: &Error) -> Outcome {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Outcome::Timeout
        }
        ErrorType::HTTPStatus(code) if *code >= 500 => Outcome::ServerError,
        _ => Outcome::OtherFailure,
    }
}

impl ProxyHttp for FulcrumProxy {
    type CTX = RequestCtx;

    /// No downstream modules. pingora's default adds its response compression module switched
    /// off (level 0); fulcrum never switches it on, and even off it costs every request a
    /// context to build and a filter call per phase.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            started_ns: now_ns(),
            upstreams: None,
            pool: None,
            tried: Tried::default(),
            attempts: 0,
            lease: None,
            attempt_started_ns: 0,
            attempt_recorded: true,
            replay_response: false,
            body: crate::body::Buffered::NotRead,
            _in_flight: self.shared.lifecycle.request_started(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let req = session.req_header();
        if req.headers.contains_key(header::TRANSFER_ENCODING)
            && raw_head_has_content_length(session)
        {
            // Both framings at once is the classic request-smuggling vector: refuse it.
            crate::metrics::rejections().both_framings.increment(1);
            session.set_keepalive(None);
            session
                .respond_error_with_body(
                    400,
                    Bytes::from_static(b"bad request: both Content-Length and Transfer-Encoding\n"),
                )
                .await?;
            return Ok(true);
        }
        if let Some(refusal) = head_refusal(session.req_header()) {
            let rejections = crate::metrics::rejections();
            match refusal {
                HeadRefusal::MissingHost => rejections.missing_host.increment(1),
                HeadRefusal::TransferEncoding => rejections.transfer_encoding.increment(1),
            }
            session.set_keepalive(None);
            session
                .respond_error_with_body(400, Bytes::from_static(refusal.message()))
                .await?;
            return Ok(true);
        }
        let req = session.req_header();
        let host_value = req
            .headers
            .get(header::HOST)
            .map(|v| v.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
        let host = host_value
            .and_then(|h| std::str::from_utf8(h).ok())
            .map(normalize_host)
            .unwrap_or_default();
        let upstreams = self.shared.upstreams.load_full();
        let routed = upstreams.router.find(&host, req.uri.path());
        match routed {
            Some(routed) if routed.redirect_https && !over_tls(session) => {
                match (self.https_port, host.is_empty()) {
                    (Some(port), false) => {
                        let location = https_location(&host, port, req);
                        respond_local_to(
                            session,
                            308,
                            b"this resource is served over HTTPS\n",
                            Some(location),
                        )
                        .await?;
                    }
                    _ => {
                        respond_local(session, 400, b"bad request: no Host to redirect to\n")
                            .await?
                    }
                }
                Ok(true)
            }
            Some(routed) => {
                let limit = upstreams.pools[routed.pool].config.request_buffer_bytes;
                ctx.pool = Some(routed.pool);
                ctx.upstreams = Some(upstreams);
                // Between reads of a streamed HTTP/1.1 body too: pingora applies it to every
                // body read of this request.
                let body_timeout = self.shared.config.load().server.body_timeout;
                session.set_read_timeout(Some(body_timeout));
                ctx.body = crate::body::read_ahead(session, limit, body_timeout).await?;
                Ok(false)
            }
            None => {
                metrics::counter!(crate::metrics::UNROUTED_REQUESTS_TOTAL).increment(1);
                respond_local(session, 404, b"no route for this host and path\n").await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.body.restore_prefix(body);
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // A previous attempt's lease ends here; its outcome was recorded by the failure hook.
        ctx.lease = None;
        ctx.attempts += 1;
        let Some(pool) = ctx.pool() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "request reached upstream selection without a pool",
            );
        };
        // A first attempt whose body was not read ahead starts when the request did: only
        // routing ran in between (well under a microsecond), so the clock is not read again.
        let now = if ctx.attempts == 1 && matches!(ctx.body, crate::body::Buffered::NotRead) {
            ctx.started_ns
        } else {
            now_ns()
        };
        let Some(idx) = pool.pool.pick(ctx.tried, now) else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy backend in pool");
        };
        let peer = Box::new(pool.peers[idx].clone());
        let lease = pool.pool.lease(idx);
        ctx.tried.insert(idx);
        ctx.lease = Some(lease);
        ctx.attempt_started_ns = now;
        ctx.attempt_recorded = false;
        Ok(peer)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        if crate::body::failure(error).is_some() {
            // A client's slow or broken body is counted in `fail_to_proxy`, not logged as ours.
            log::debug!("request body refused: {error}");
            return true;
        }
        // A client that hangs up is routine at an edge proxy, not an error of ours.
        let client_gone = *error.esource() == ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if client_gone {
            log::debug!("client went away: {error}");
            crate::metrics::client_aborts().request.increment(1);
        }
        client_gone
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        error: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        // Retries are counted in `fulcrum_retries_total`; a log line each would flood under a
        // backend outage. The final failure, if any, is still logged.
        log::debug!("retrying after: {error}");
        true
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let outcome = if matches!(e.etype(), ErrorType::ConnectTimedout) {
            Outcome::Timeout
        } else {
            Outcome::ConnectFailure
        };
        if ctx.record_attempt(outcome).is_some() {
            e.set_retry(ctx.decide_retry(session, AttemptFailure::Connect, false));
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if std::mem::take(&mut ctx.replay_response) {
            // `upstream_response_filter` already decided to replay this answer elsewhere.
            e.set_retry(true);
            if let Some(idx) = ctx.lease.as_ref().map(|l| l.backend_index()) {
                ctx.count_retry(idx);
            }
            return e;
        }
        if *e.esource() == ErrorSource::Downstream {
            // The client went away or misbehaved: nothing to hold against the backend, and
            // nobody left to retry for.
            ctx.attempt_recorded = true;
            e.set_retry(false);
            return e;
        }
        // A recorded attempt had its response head accepted before this failure.
        let response_started = ctx.attempt_recorded || session.response_written().is_some();
        ctx.record_attempt(failure_outcome(&e));
        let retry = ctx.decide_retry(session, AttemptFailure::AfterRequestSent, response_started);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let keep_upgrade = session.is_upgrade_req();
        strip_hop_by_hop_request(upstream_request, keep_upgrade);
        merge_content_length(upstream_request)?;
        if ctx.body.is_whole() {
            // fulcrum answered `100 Continue` itself and holds the whole body: nothing is left
            // for the backend to approve.
            upstream_request.remove_header(&header::EXPECT);
        }
        // The head is a clone of the client's, with no room to spare: one growth for the three
        // headers below (or the Host of an HTTP/1.0 request), not one or two per insert.
        upstream_request.reserve(3)?;
        if let Some(ip) = client_ip(session) {
            let prev = upstream_request
                .headers
                .get(&X_FORWARDED_FOR)
                .filter(|v| !v.is_empty());
            let xff = forwarded_for(prev.map(HeaderValue::as_bytes), ip);
            upstream_request.insert_header(XFF, xff)?;
        }
        let proto = if over_tls(session) { "https" } else { "http" };
        upstream_request.insert_header(XFP, HeaderValue::from_static(proto))?;
        // The client's own request head is still intact in the session.
        let req = session.req_header();
        let host = req.headers.get(header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        match host {
            Some(host) => upstream_request.insert_header(XFH, host)?,
            // Only HTTP/1.0 comes without a host, and it goes upstream as HTTP/1.1, which must
            // carry one (RFC 9112 §3.2): the backend's address, as nginx's `$proxy_host`.
            None => {
                let backend = ctx.lease.as_ref().and_then(|l| {
                    Some(
                        ctx.pool()?
                            .peers
                            .get(l.backend_index())?
                            ._address
                            .to_string(),
                    )
                });
                if let Some(addr) = backend {
                    upstream_request.insert_header(header::HOST, addr)?;
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        // Only the control loop reads self-reported load: the model's features, and the
        // capacity per backend an autoscaled pool's recommendation rests on (without it the
        // capacity is inferred from latency alone).
        if let (Some(pool), Some(idx)) = (ctx.pool(), ctx.lease.as_ref().map(|l| l.backend_index()))
        {
            if pool.config.weights == fulcrum_config::WeightSource::Model
                || pool.config.autoscale.is_some()
            {
                if let Some(load) = reported_load(upstream_response) {
                    pool.pool.backends()[idx].stats.set_reported_load(load);
                }
            }
        }
        if is_retryable_status(status)
            && retry::decide(
                AttemptFailure::RetryableStatus,
                &ctx.retry_context(session, false),
            ) == RetryDecision::RetryElsewhere
        {
            // Nothing has reached the client yet: the request tries another backend instead of
            // passing the failure on. The last attempt's answer goes through. The retry is
            // counted when pingora hands the error back to `error_while_proxy`.
            ctx.record_attempt(Outcome::ServerError);
            ctx.replay_response = true;
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                "upstream answered with a retryable status",
            );
        }
        if status >= 200 || status == 101 {
            let outcome = if status >= 500 {
                Outcome::ServerError
            } else {
                Outcome::Success
            };
            ctx.record_attempt(outcome);
        }
        // pingora's HTTP/1 server writes `Connection` into every final response it sends.
        let connection_rewritten =
            !session.is_http2() && !upstream_response.status.is_informational();
        strip_hop_by_hop_response(upstream_response, connection_rewritten);
        if self.shared.lifecycle.closing_connections() {
            // A request that began before the drain or the hand-over: its connection closes
            // after this answer (HTTP/1.1 `Connection: close`), so the client reconnects to a
            // process that stays.
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let body_failure = crate::body::failure(e);
        match body_failure {
            Some(BodyFailure::TimedOut) => {
                crate::metrics::client_timeouts().body.increment(1);
                crate::metrics::rejections().body_timeout.increment(1);
            }
            Some(BodyFailure::Malformed) if ctx.attempts == 0 => {
                crate::metrics::framing_errors().buffered.increment(1);
                crate::metrics::rejections().malformed_body.increment(1);
            }
            Some(BodyFailure::Malformed) => crate::metrics::framing_errors().streaming.increment(1),
            None => {}
        }
        let (code, body): (u16, &'static [u8]) = match e.etype() {
            _ if body_failure == Some(BodyFailure::TimedOut) => (408, b"request body timed out\n"),
            _ if body_failure == Some(BodyFailure::Malformed) => {
                (400, b"bad request: malformed request body\n")
            }
            ErrorType::HTTPStatus(503) => (503, b"no healthy backend available\n"),
            ErrorType::HTTPStatus(code) => (*code, b"request failed\n"),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if *e.esource() == ErrorSource::Upstream =>
            {
                (504, b"upstream timed out\n")
            }
            _ => match e.esource() {
                ErrorSource::Upstream => (502, b"upstream failed\n"),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, b"")
                    }
                    _ => (400, b"bad request\n"),
                },
                ErrorSource::Internal | ErrorSource::Unset => (500, b"internal error\n"),
            },
        };
        if code > 0 && session.response_written().is_none() {
            if let Err(err) = session
                .respond_error_with_body(code, Bytes::from_static(body))
                .await
            {
                log::debug!("could not send the {code} error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let Some(pool) = ctx.pool() else { return };
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed_ns = now_ns().saturating_sub(ctx.started_ns);
        match ctx.lease.as_ref().map(|l| l.backend_index()) {
            Some(idx) => {
                let m = &pool.backend_metrics[idx];
                m.count_response(status);
                m.duration.record_ns(elapsed_ns);
            }
            None => pool.metrics.count_response(status),
        }
        // If the response ended without the header hook seeing it (e.g. a broken body), the
        // attempt still counts — against the backend only when the failure was on its side.
        if !ctx.attempt_recorded {
            let client_side = e.is_some_and(|e| *e.esource() == ErrorSource::Downstream);
            if status == 0 && client_side {
                ctx.attempt_recorded = true;
            } else {
                ctx.record_attempt(if status == 0 {
                    Outcome::OtherFailure
                } else if status >= 500 {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                });
            }
        }
        ctx.lease = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_client_address() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(forwarded_for(None, v4), "203.0.113.7");
        assert_eq!(
            forwarded_for(Some(b"198.51.100.1, 10.0.0.1"), v4),
            "198.51.100.1, 10.0.0.1, 203.0.113.7"
        );
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        let text = longest.to_string();
        assert_eq!(forwarded_for(None, longest), text.as_str());
    }

    #[test]
    fn client_addresses_are_written_as_their_display_form() {
        let mut buf = [0u8; 48];
        // Every octet value in every position, and the edges.
        let mut addrs: Vec<IpAddr> = (0..=255u8)
            .flat_map(|o| {
                [
                    std::net::Ipv4Addr::new(o, 0, 9, 255),
                    std::net::Ipv4Addr::new(10, o, 99, 100),
                    std::net::Ipv4Addr::new(255, 1, o, 10),
                    std::net::Ipv4Addr::new(127, 0, 0, o),
                ]
            })
            .map(IpAddr::V4)
            .collect();
        addrs.extend(
            [
                "0.0.0.0",
                "255.255.255.255",
                "::1",
                "::",
                "2001:db8::8a2e:370:7334",
                "::ffff:10.0.0.1",
            ]
            .iter()
            .map(|a| a.parse::<IpAddr>().unwrap()),
        );
        for ip in addrs {
            let len = ip_text(ip, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn https_locations_keep_path_and_query() {
        let req = RequestHeader::build("GET", b"/a/b?x=1&y=2", None).unwrap();
        assert_eq!(
            https_location("example.com", 8443, &req),
            "https://example.com:8443/a/b?x=1&y=2"
        );
        assert_eq!(
            https_location("example.com", 443, &req),
            "https://example.com/a/b?x=1&y=2"
        );
        let root = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(https_location("[::1]", 443, &root), "https://[::1]/");
    }

    #[test]
    fn hop_by_hop_indexes_follow_their_lists() {
        for (i, h) in REQUEST_HOP_BY_HOP.iter().enumerate() {
            assert_eq!(request_hop_by_hop_index(h.as_str()), Some(i), "{h}");
        }
        for (i, h) in RESPONSE_HOP_BY_HOP.iter().enumerate() {
            assert_eq!(response_hop_by_hop_index(h.as_str()), Some(i), "{h}");
        }
        for other in [
            "upgrade",
            "content-length",
            "x-connection",
            "tee",
            "t",
            "",
            "host",
        ] {
            assert_eq!(request_hop_by_hop_index(other), None, "{other}");
            assert_eq!(response_hop_by_hop_index(other), None, "{other}");
        }
        assert_eq!(response_hop_by_hop_index("connection"), None);
        assert_eq!(response_hop_by_hop_index("proxy-authorization"), None);
    }

    #[test]
    fn reported_load_headers() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        assert_eq!(reported_load(&r), None);
        r.insert_header(
            "endpoint-load-metrics",
            "TEXT rps_fractional=10, cpu_utilization=0.25",
        )
        .unwrap();
        assert_eq!(reported_load(&r), Some(0.25));
        r.insert_header("x-backend-load", "0.5").unwrap();
        assert_eq!(reported_load(&r), Some(0.5));
        // The first value of a name counts, whatever the order of the fields.
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("server", "nginx").unwrap();
        r.append_header("x-backend-load", "0.75").unwrap();
        r.append_header("content-length", "2").unwrap();
        r.append_header("X-Backend-Load", "0.1").unwrap();
        r.append_header("endpoint-load-metrics", "TEXT cpu_utilization=0.3")
            .unwrap();
        assert_eq!(reported_load(&r), Some(0.75));
        r.remove_header("x-backend-load");
        assert_eq!(reported_load(&r), Some(0.3));
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("endpoint-load-metrics", "TEXT rps_fractional=3")
            .unwrap();
        r.append_header("endpoint-load-metrics", "TEXT cpu_utilization=0.4")
            .unwrap();
        assert_eq!(reported_load(&r), None);
        r.append_header("x-backend-load", "not a number").unwrap();
        assert_eq!(reported_load(&r), None);
    }

    #[test]
    fn heads_pingora_lets_through_are_refused_here() {
        let head = |version: http::Version, lines: &[(&str, &str)]| {
            let mut req = RequestHeader::build("POST", b"/", None).unwrap();
            req.set_version(version);
            for (k, v) in lines {
                req.append_header(k.to_string(), *v).unwrap();
            }
            head_refusal(&req)
        };
        let v11 = http::Version::HTTP_11;
        assert_eq!(head(v11, &[("host", "a")]), None);
        assert_eq!(
            head(v11, &[("host", "a"), ("transfer-encoding", "Chunked")]),
            None
        );
        assert_eq!(head(v11, &[]), Some(HeadRefusal::MissingHost));
        assert_eq!(head(http::Version::HTTP_10, &[]), None);
        assert_eq!(head(http::Version::HTTP_2, &[]), None);
        for te in [
            &[("transfer-encoding", "chunked, chunked")][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "")],
        ] {
            let mut lines = vec![("host", "a")];
            lines.extend_from_slice(te);
            assert_eq!(
                head(v11, &lines),
                Some(HeadRefusal::TransferEncoding),
                "{te:?}"
            );
        }
    }

    #[test]
    fn content_length_lines_are_seen_in_any_spelling() {
        let has = |head: &str| head_has_content_length(head.as_bytes());
        assert!(has(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        ));
        assert!(has("POST / HTTP/1.1\r\ncontent-LENGTH:4\r\n\r\n"));
        // An empty value on a bare-LF line is still a Content-Length header to the parser.
        assert!(has(
            "POST / HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length:\n\n"
        ));
        assert!(!has("POST / HTTP/1.1\r\nX-Content-Length: 4\r\n\r\n"));
        assert!(!has("POST /content-length: HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn hop_by_hop_request_headers_are_removed() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, x-private")
            .unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("x-private", "secret").unwrap();
        req.insert_header("te", "trailers").unwrap();
        req.insert_header("upgrade", "h2c").unwrap();
        req.insert_header("x-kept", "yes").unwrap();
        strip_hop_by_hop_request(&mut req, false);
        for h in ["connection", "keep-alive", "x-private", "te", "upgrade"] {
            assert!(req.headers.get(h).is_none(), "{h} should be stripped");
        }
        assert_eq!(req.headers.get("x-kept").unwrap(), "yes");
    }

    #[test]
    fn websocket_upgrade_survives() {
        let mut req = RequestHeader::build("GET", b"/ws", None).unwrap();
        req.insert_header("connection", "Upgrade").unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        strip_hop_by_hop_request(&mut req, true);
        assert_eq!(req.headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(req.headers.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn te_and_trailer_are_stripped_from_responses() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("te", "trailers").unwrap();
        resp.insert_header("trailer", "x-checksum").unwrap();
        resp.insert_header("x-checksum", "abc").unwrap();
        strip_hop_by_hop_response(&mut resp, false);
        assert!(resp.headers.get("te").is_none());
        assert!(resp.headers.get("trailer").is_none());
        assert_eq!(resp.headers.get("x-checksum").unwrap(), "abc");
    }

    #[test]
    fn switching_protocols_keeps_only_its_upgrade() {
        let mut resp = ResponseHeader::build(101, None).unwrap();
        resp.insert_header("connection", "Upgrade, x-hop").unwrap();
        resp.insert_header("upgrade", "websocket").unwrap();
        resp.insert_header("x-hop", "1").unwrap();
        resp.insert_header("trailer", "x-checksum").unwrap();
        resp.insert_header("proxy-authenticate", "Basic").unwrap();
        strip_hop_by_hop_response(&mut resp, false);
        assert!(resp.headers.get("connection").is_some());
        assert_eq!(resp.headers.get("upgrade").unwrap(), "websocket");
        for h in ["x-hop", "trailer", "proxy-authenticate"] {
            assert!(resp.headers.get(h).is_none(), "{h} should be stripped");
        }
    }

    #[test]
    fn both_directions_strip_the_same_connection_headers() {
        // Only requests lose `Connection` unconditionally (a 101 keeps it) and carry
        // `Proxy-Authorization`; every other name is stripped both ways.
        let request_only: Vec<&HeaderName> = REQUEST_HOP_BY_HOP
            .iter()
            .filter(|h| !RESPONSE_HOP_BY_HOP.contains(h))
            .collect();
        assert_eq!(
            request_only,
            [&header::CONNECTION, &header::PROXY_AUTHORIZATION]
        );
        for h in &RESPONSE_HOP_BY_HOP {
            assert!(
                REQUEST_HOP_BY_HOP.contains(h),
                "{h} is stripped one way only"
            );
        }
    }

    #[test]
    fn hop_by_hop_response_headers_are_removed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "close, x-hop").unwrap();
        resp.insert_header("x-hop", "1").unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("content-type", "text/plain").unwrap();
        strip_hop_by_hop_response(&mut resp, false);
        assert!(resp.headers.get("connection").is_none());
        assert!(resp.headers.get("x-hop").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("content-type").is_some());
    }

    #[test]
    fn a_connection_its_writer_rewrites_is_left_but_what_it_names_goes() {
        for rewritten in [false, true] {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            resp.append_header("connection", "keep-alive").unwrap();
            resp.append_header("connection", "x-hop").unwrap();
            resp.insert_header("x-hop", "1").unwrap();
            resp.insert_header("keep-alive", "timeout=5").unwrap();
            resp.insert_header("x-kept", "1").unwrap();
            strip_hop_by_hop_response(&mut resp, rewritten);
            assert_eq!(resp.headers.get("connection").is_some(), rewritten);
            assert!(resp.headers.get("x-hop").is_none(), "{rewritten}");
            assert!(resp.headers.get("keep-alive").is_none(), "{rewritten}");
            assert!(resp.headers.get("x-kept").is_some(), "{rewritten}");
        }
    }

    #[test]
    fn a_field_named_on_any_connection_line_is_removed() {
        // The usual tokens on the first line must not hide a name on the second.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("connection", "keep-alive").unwrap();
        resp.append_header("connection", " Close ,X-Hop").unwrap();
        resp.insert_header("x-hop", "1").unwrap();
        resp.insert_header("x-kept", "1").unwrap();
        strip_hop_by_hop_response(&mut resp, false);
        assert!(resp.headers.get("connection").is_none());
        assert!(resp.headers.get("x-hop").is_none());
        assert!(resp.headers.get("x-kept").is_some());
        assert!(only_usual_connection_tokens(b"keep-alive, close,, ", false));
        assert!(!only_usual_connection_tokens(b"upgrade", false));
        assert!(only_usual_connection_tokens(b"Upgrade", true));
        assert!(!only_usual_connection_tokens(b"keep-alive, x", true));
    }
}
