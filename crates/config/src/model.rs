//! The validated configuration model.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::admin_token::AdminToken;
use crate::control_defaults as defaults;
use crate::tls::{CaBundle, KeyPair};
use fulcrum_diagnostics::suggest;

/// A complete, validated fulcrum configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Data-plane listener settings (`[server]`).
    pub server: ServerConfig,
    /// Admin/observability listener settings (`[admin]`).
    pub admin: AdminConfig,
    /// Routing rules (`[[routes]]`), in file order.
    pub routes: Vec<RouteConfig>,
    /// Upstream pools (`[pools.NAME]`), in file order.
    pub pools: Vec<PoolConfig>,
    /// The control loop tuning the weights of `weights = "model"` pools (`[control]`);
    /// the defaults when the section is absent.
    pub control: ControlConfig,
}

impl Config {
    /// The pool with the given name, if defined.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// Data-plane listener settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Addresses the proxy accepts client traffic on (non-empty).
    pub listen: Vec<SocketAddr>,
    /// Number of data-plane worker threads (1..=1024, default 2).
    pub threads: usize,
    /// Seconds in-flight requests get to finish once the listeners stop accepting, on
    /// `SIGTERM` and on a binary upgrade (0..=3600, default 5).
    pub grace_period_s: u64,
    /// Seconds the listeners keep serving after `SIGTERM` while `/readyz` answers 503
    /// `draining` (0..=3600, default 5).
    pub drain_delay_s: u64,
    /// The Unix socket a process started with `fulcrum run --upgrade` takes the listeners
    /// through (an absolute path; default `/run/fulcrum/upgrade.sock`).
    pub upgrade_sock: PathBuf,
    /// The nameserver pools with `discovery = "dns"` ask (`dns_resolver`, `IP:PORT`); `None`
    /// reads the system's `/etc/resolv.conf`.
    pub dns_resolver: Option<SocketAddr>,
    /// Addresses the proxy accepts TLS on, HTTP/1.1 and HTTP/2 chosen by ALPN (`tls_listen`,
    /// default none).
    pub tls_listen: Vec<SocketAddr>,
    /// The oldest TLS version the TLS listeners accept (`tls_min_version`, default 1.2).
    pub tls_min_version: TlsVersion,
    /// The certificates served on the TLS listeners (`[[server.certificates]]`), chosen by SNI;
    /// the first is the default. Required when `tls_listen` is set.
    pub certificates: Vec<CertificateConfig>,
    /// What one client may hold: connections, time and bytes before its request is read.
    pub limits: ClientLimits,
    /// Longest wait between two reads of a request body from the client (`body_timeout_ms`,
    /// default 30000).
    pub body_timeout: Duration,
}

/// The limits a client meets before its request reaches a pool (`[server]` keys
/// `max_connections`, `header_timeout_ms`, `keepalive_timeout_ms`, `max_header_bytes`,
/// `max_request_line_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Client connections open at once, per process (1..=1000000, default 10000).
    pub max_connections: usize,
    /// The whole request head must arrive within this, counted from the connection's accept
    /// for its first request and from the first byte for later ones (default 10 s).
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for the first byte of its next request
    /// (default 60 s); zero closes every connection after one response.
    pub keepalive_timeout: Duration,
    /// The largest request head, request line and final blank line included (default 65536);
    /// larger is answered 431.
    pub max_header_bytes: usize,
    /// The longest request line without its line ending (default 8192); longer is
    /// answered 414.
    pub max_request_line_bytes: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        use crate::server_defaults as d;
        ClientLimits {
            max_connections: d::MAX_CONNECTIONS,
            header_timeout: Duration::from_millis(d::HEADER_TIMEOUT_MS),
            keepalive_timeout: Duration::from_millis(d::KEEPALIVE_TIMEOUT_MS),
            max_header_bytes: d::MAX_HEADER_BYTES,
            max_request_line_bytes: d::MAX_REQUEST_LINE_BYTES,
        }
    }
}

impl ServerConfig {
    /// Whether going from `self` to `new` changes a setting that only a restart applies: the
    /// listeners, their TLS versions, the worker threads, the grace period. The certificates
    /// are not among them: a reload swaps them in.
    pub fn restart_needed_for(&self, new: &ServerConfig) -> bool {
        self.listen != new.listen
            || self.tls_listen != new.tls_listen
            || self.tls_min_version != new.tls_min_version
            || self.threads != new.threads
            || self.grace_period_s != new.grace_period_s
            || self.drain_delay_s != new.drain_delay_s
            || self.upgrade_sock != new.upgrade_sock
            || self.limits != new.limits
    }
}

/// The oldest TLS version a TLS listener accepts. Nothing older than 1.2 is ever spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (`"1.2"`, the default).
    Tls12,
    /// TLS 1.3 only (`"1.3"`).
    Tls13,
}

impl TlsVersion {
    /// Every accepted minimum version.
    pub const ALL: [TlsVersion; 2] = [TlsVersion::Tls12, TlsVersion::Tls13];

    /// The config-file spelling, `"1.2"` or `"1.3"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TlsVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TlsVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let mut msg = unknown_value("TLS version", s, TlsVersion::ALL.map(|v| v.as_str()));
                if matches!(s, "1.0" | "1.1" | "1" | "1.0.0") {
                    msg.push_str("; TLS 1.0 and 1.1 are broken and never spoken");
                }
                msg
            })
    }
}

/// One certificate of the TLS listeners (`[[server.certificates]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first (`cert`); a relative path is taken from the working
    /// directory.
    pub cert: PathBuf,
    /// PEM private key of the leaf (`key`): PKCS#8, RSA or EC.
    pub key: PathBuf,
    /// The chain and key read and checked when the configuration was parsed. A configuration
    /// built in code may leave this `None`; [`Config::to_toml`] writes only the paths.
    pub pair: Option<KeyPair>,
}

/// Admin listener settings: `/metrics`, `/healthz`, `/readyz`, `/api/pools`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener (default `127.0.0.1:9900`).
    pub listen: SocketAddr,
    /// File holding the bearer token every `/api/*` request must carry (`admin.token_file`);
    /// `None` leaves the API open on loopback and read-only elsewhere.
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` when the configuration was parsed. [`Config::to_toml`]
    /// writes only the path, so a configuration built in code may leave this `None` and let
    /// the process that loads the file read it.
    pub token: Option<AdminToken>,
    /// Whether `/metrics` needs the token too (`admin.protect_metrics`, default false); the
    /// health probes never do.
    pub protect_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
            token_file: None,
            token: None,
            protect_metrics: false,
        }
    }
}

/// One routing rule: requests whose host and path match are sent to `pool`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Which `Host` values this route accepts.
    pub host: HostMatch,
    /// Path prefix the request path must start with (always starts with `/`).
    pub path_prefix: String,
    /// Name of the pool serving matching requests.
    pub pool: String,
    /// Whether a request that came in cleartext is answered `308` to the same host, path and
    /// query over HTTPS instead of being proxied (`redirect_https`, default false).
    pub redirect_https: bool,
}

/// A host pattern of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `"*"`: any host.
    Any,
    /// An exact host name, lowercased, without port.
    Exact(String),
    /// `"*.example.com"`, stored as `".example.com"` (lowercased): any subdomain.
    Suffix(String),
}

impl HostMatch {
    /// Whether `host` (already lowercased, port stripped) matches this pattern.
    ///
    /// A suffix pattern matches subdomains at any depth but not the bare domain:
    /// `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host == h,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }

    /// Ranking used to prefer the most specific route: `Exact` = 2, `Suffix` = 1, `Any` = 0.
    pub fn specificity(&self) -> u8 {
        match self {
            HostMatch::Exact(_) => 2,
            HostMatch::Suffix(_) => 1,
            HostMatch::Any => 0,
        }
    }

    /// Parse a host pattern as written in a config file (`"*"`, `"*.example.com"`,
    /// `"api.example.com"`, `"[::1]"`). The result is lowercased.
    pub fn parse(pattern: &str) -> Result<HostMatch, String> {
        if pattern.is_empty() {
            return Err(
                "host pattern must not be empty; use \"*\" to match any host, \"*.example.com\" for subdomains or an exact host name"
                    .to_string(),
            );
        }
        if pattern == "*" {
            return Ok(HostMatch::Any);
        }
        let lower = pattern.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(wildcard_error(pattern));
            }
            validate_host_name(pattern, rest)?;
            return Ok(HostMatch::Suffix(format!(".{rest}")));
        }
        if lower.contains('*') {
            return Err(wildcard_error(pattern));
        }
        if let Some(inner) = lower.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if inner.parse::<std::net::Ipv6Addr>().is_ok() {
                return Ok(HostMatch::Exact(lower));
            }
        }
        validate_host_name(pattern, &lower)?;
        Ok(HostMatch::Exact(lower))
    }

    /// The pattern as written in a config file (`"*"`, `"*.example.com"`, `"example.com"`).
    pub fn pattern(&self) -> String {
        match self {
            HostMatch::Any => "*".to_string(),
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Suffix(s) => format!("*{s}"),
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern())
    }
}

fn wildcard_error(pattern: &str) -> String {
    format!(
        "invalid host pattern {pattern:?}: a wildcard is only allowed as the whole pattern (\"*\") or as the leading label (\"*.example.com\")"
    )
}

fn validate_host_name(pattern: &str, name: &str) -> Result<(), String> {
    if name.contains(':') {
        return Err(format!(
            "invalid host pattern {pattern:?}: must not include a port (the port is ignored when matching)"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "invalid host pattern {pattern:?}: empty label (expected e.g. \"example.com\", \"*.example.com\" or \"*\")"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "invalid host pattern {pattern:?}: character {c:?} is not allowed (use letters, digits, '-', '_' and '.')"
            ));
        }
    }
    Ok(())
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Cycle through healthy backends, ignoring weights.
    RoundRobin,
    /// Cycle through healthy backends in proportion to their weights.
    WeightedRoundRobin,
    /// Pick the backend with the fewest in-flight requests (relative to weight).
    LeastConnections,
    /// Power of two choices over a peak-EWMA latency estimate.
    P2cEwma,
}

impl Algorithm {
    /// Every algorithm, in documentation order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::P2cEwma,
    ];

    /// The config-file spelling, e.g. `"round_robin"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::P2cEwma => "p2c_ewma",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| unknown_value("algorithm", s, Algorithm::ALL.map(|a| a.as_str())))
    }
}

/// Where backend weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSource {
    /// The weights written in the config file.
    Static,
    /// Weights tuned live by the control loop (starting from the configured ones).
    Model,
}

impl WeightSource {
    /// Every weight source.
    pub const ALL: [WeightSource; 2] = [WeightSource::Static, WeightSource::Model];

    /// The config-file spelling, `"static"` or `"model"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            WeightSource::Static => "static",
            WeightSource::Model => "model",
        }
    }
}

impl fmt::Display for WeightSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WeightSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WeightSource::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| unknown_value("weight source", s, WeightSource::ALL.map(|w| w.as_str())))
    }
}

fn unknown_value<const N: usize>(what: &str, value: &str, valid: [&str; N]) -> String {
    let mut msg = format!("unknown {what} {value:?}; valid: {}", valid.join(", "));
    if let Some(s) = suggest(value, valid) {
        msg.push_str(&format!(" (did you mean {s:?}?)"));
    }
    msg
}

/// An upstream pool: a set of backends plus how to balance and probe them.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Pool name (the `NAME` in `[pools.NAME]`).
    pub name: String,
    /// Balancing algorithm (default `least_connections`).
    pub algorithm: Algorithm,
    /// Where backend weights come from (default `static`).
    pub weights: WeightSource,
    /// Upstream TCP connect timeout (`connect_timeout_ms`, default 1000).
    pub connect_timeout: Duration,
    /// Upstream read timeout (`read_timeout_ms`, default 30000).
    pub read_timeout: Duration,
    /// Upstream write timeout (`write_timeout_ms`, default 30000).
    pub write_timeout: Duration,
    /// Idle time before a kept-alive upstream connection is closed (`idle_timeout_ms`, default 60000).
    pub idle_timeout: Duration,
    /// Retries on another backend after a connect failure (0..=10, default 2).
    pub retries: u32,
    /// Peak-EWMA latency decay time (`ewma_decay_ms`, default 10000).
    pub ewma_decay: Duration,
    /// Passive ejection after this many consecutive connect failures or 5xx responses (default 5, >= 1).
    pub max_consecutive_failures: u32,
    /// Window over which a backend that joins the pool or comes back healthy ramps up to its
    /// full weight (`slow_start_ms`, default 0 = off).
    pub slow_start: Duration,
    /// Share of its weight a ramping backend starts with (`slow_start_min_percent`, 1..=100,
    /// default 10).
    pub slow_start_min_percent: u32,
    /// Active health checking.
    pub health_check: HealthCheckConfig,
    /// TLS to the backends (`[pools.NAME.tls]`); `None` speaks cleartext HTTP to them.
    pub tls: Option<PoolTlsConfig>,
    /// How the pool finds its backends (`discovery`, default static).
    pub discovery: Discovery,
    /// The backends of the pool: as configured for a static pool (at least one); for a pool
    /// with `discovery = "dns"`, the addresses its names resolved to (none as parsed).
    pub backends: Vec<BackendConfig>,
    /// Request bodies up to this size are read whole before a backend is picked
    /// (`request_buffer_bytes`, 0..=65536, default 65536; 0 streams every body).
    pub request_buffer_bytes: usize,
    /// Demand forecasts and a recommended backend count (`[pools.NAME.autoscale]`); `None`
    /// leaves the pool unforecast.
    pub autoscale: Option<AutoscaleConfig>,
}

/// `[pools.NAME.autoscale]`: how a pool's demand is forecast and its backends counted.
///
/// Every `step` the control thread records the pool's request rate, forecasts it and
/// recommends `ceil(p90 at horizon / (capacity per backend × target_utilization))` backends,
/// clamped to `min_backends..=max_backends`; it goes down only to the highest count of the
/// last `scale_down_stabilization` (as Kubernetes' HPA `behavior` does, over a shorter window:
/// the forecast already looks ahead).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    /// Share of a backend's capacity to plan for (0 < x <= 1, default
    /// [`crate::autoscale_defaults::TARGET_UTILIZATION`]).
    pub target_utilization: f64,
    /// Fewest backends to recommend (1..=100000, default 1).
    pub min_backends: u32,
    /// Most backends to recommend (at least `min_backends`, default 100).
    pub max_backends: u32,
    /// Provisioning horizon: the time a new backend needs to take traffic; the recommendation
    /// covers the p90 forecast this far ahead (`horizon_s`, 1..=86400, default 300).
    pub horizon: Duration,
    /// An ONNX forecast model; `None` forecasts with the built-in Holt-Winters / seasonal
    /// naive forecaster.
    pub forecast_model: Option<PathBuf>,
    /// Step of the rate series: one rate per step, one forecast per step (`step_s`,
    /// 0.1..=3600, default 10).
    pub step: Duration,
    /// Requests per second one backend serves at full utilisation, when the operator knows it
    /// (`backend_capacity_rps`); `None` estimates it from the traffic.
    pub backend_capacity_rps: Option<f64>,
    /// The recommendation goes down only to the highest count recommended over this window, so
    /// a backend is given up once the demand has been lower for that long
    /// (`scale_down_stabilization_s`, 0..=86400; by default
    /// [`crate::autoscale_defaults::SCALE_DOWN_STABILIZATION_STEPS`] steps; 0 follows every
    /// step).
    pub scale_down_stabilization: Duration,
    /// Backends recommended beyond what the demand needs, for bursts nobody forecasts or a
    /// backend lost (N+1 when 1) (`spare_backends`, 0..=1000, default 0).
    pub spare_backends: u32,
    /// Backends recommended beyond what the demand needs for `burst_memory` after the demand
    /// outran the plan: arrived at a rate that would have loaded the backends sized for the
    /// previous step's plan to 90 % of their capacity or more (`burst_spare_backends`,
    /// 0..=1000, default 1; 0 turns it off).
    pub burst_spare_backends: u32,
    /// How long the burst spare is kept after the demand last outran the plan
    /// (`burst_memory_s`, 0..=172800, default 3600; 0 keeps it for that step only).
    pub burst_memory: Duration,
    /// A CSV file the pool's rate series is appended to every step and read back at start, so
    /// a restart or an upgrade keeps the forecast's history (`history_file`); `None` keeps it
    /// in memory only.
    pub history_file: Option<PathBuf>,
    /// A Prometheus (`http://host:port[/prefix]`) whose record of the pool's rate fills the
    /// series at start when no history file did (`history_prometheus`): a new pod.
    pub history_prometheus: Option<String>,
    /// The PromQL answering the pool's rate as one series (`history_query`); `None` averages
    /// `fulcrum_pool_requests_per_second{pool="NAME"}` over the processes that exported it.
    pub history_query: Option<String>,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        use crate::autoscale_defaults as d;
        AutoscaleConfig {
            target_utilization: d::TARGET_UTILIZATION,
            min_backends: d::MIN_BACKENDS,
            max_backends: d::MAX_BACKENDS,
            horizon: Duration::from_secs(d::HORIZON_S),
            forecast_model: None,
            step: Duration::from_secs(d::STEP_S),
            backend_capacity_rps: None,
            scale_down_stabilization: Duration::from_secs(
                d::STEP_S * u64::from(d::SCALE_DOWN_STABILIZATION_STEPS),
            ),
            spare_backends: d::SPARE_BACKENDS,
            burst_spare_backends: d::BURST_SPARE_BACKENDS,
            burst_memory: Duration::from_secs(d::BURST_MEMORY_S),
            history_file: None,
            history_prometheus: None,
            history_query: None,
        }
    }
}

/// How a pool finds its backends.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Discovery {
    /// The `IP:PORT` addresses written in `backends` (`discovery = "static"`, the default).
    #[default]
    Static,
    /// Every address the `host:port` names in `backends` resolve to is a backend, re-resolved
    /// every `refresh` (`discovery = "dns"`, as a Kubernetes headless Service publishes).
    Dns {
        /// Time between lookups (`dns_refresh_ms`, default
        /// [`crate::pool_defaults::DNS_REFRESH_MS`]).
        refresh: Duration,
        /// The names, in configuration order (at least one).
        names: Vec<DnsName>,
    },
}

impl Discovery {
    /// The config-file spelling, `"static"` or `"dns"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Discovery::Static => "static",
            Discovery::Dns { .. } => "dns",
        }
    }

    /// The names of a DNS pool (none for a static one).
    pub fn names(&self) -> &[DnsName] {
        match self {
            Discovery::Static => &[],
            Discovery::Dns { names, .. } => names,
        }
    }
}

/// A backend named by DNS: every address `host` resolves to, on `port`, with `weight`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsName {
    /// The host name, lowercased, without a trailing dot.
    pub host: String,
    /// The port of every resolved address.
    pub port: u16,
    /// The weight of every resolved address (1..=10000).
    pub weight: u32,
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// TLS from the proxy to a pool's backends; health checks of the pool use it too.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolTlsConfig {
    /// Server name sent to the backends and checked against their certificates (`sni`);
    /// `None` uses each backend's IP address.
    pub sni: Option<String>,
    /// PEM bundle of the CAs backend certificates must chain to (`ca_file`); `None` trusts the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// Whether backend certificates are checked at all (`verify`, default true).
    pub verify: bool,
    /// PEM certificate chain presented to backends that ask for one (`client_cert`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (`client_key`).
    pub client_key: Option<PathBuf>,
    /// The CA bundle read from `ca_file` when the configuration was parsed.
    pub ca: Option<CaBundle>,
    /// The client certificate and key read when the configuration was parsed.
    pub client: Option<KeyPair>,
}

impl Default for PoolTlsConfig {
    fn default() -> Self {
        PoolTlsConfig {
            sni: None,
            ca_file: None,
            verify: true,
            client_cert: None,
            client_key: None,
            ca: None,
            client: None,
        }
    }
}

/// Active HTTP health checking of a pool's backends.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// Whether probes are sent at all (default true).
    pub enabled: bool,
    /// Path probed with `GET` (default `/healthz`).
    pub path: String,
    /// `Host` header to send; `None` uses the backend address.
    pub host: Option<String>,
    /// Time between probes (`interval_ms`, default 1000, >= 10).
    pub interval: Duration,
    /// Probe timeout (`timeout_ms`, default 500, <= interval).
    pub timeout: Duration,
    /// Consecutive failed probes before a backend is marked down (default 3).
    pub unhealthy_threshold: u32,
    /// Consecutive successful probes before a backend is marked up again (default 2).
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enabled: true,
            path: "/healthz".to_string(),
            host: None,
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(500),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// The control loop that tunes backend weights of pools with `weights = "model"`.
///
/// Every tick the loop gathers per-backend features of each model pool, runs the ONNX
/// model and applies the resulting weights, clamped to `floor..=ceiling` times the
/// pool's average weight and changed by at most a factor of `max_step` per tick.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// Control tick period (`tick_ms`, 50..=60000, default [`defaults::TICK_MS`]).
    pub tick: Duration,
    /// The ONNX model (default [`defaults::MODEL`], non-empty); a relative path is
    /// relative to the working directory.
    pub model: PathBuf,
    /// The ONNX Runtime shared library; `None` uses `ORT_DYLIB_PATH`, else the
    /// project's `.venv`.
    pub ort_library: Option<PathBuf>,
    /// Longest an inference may take before its tick is skipped
    /// (`inference_budget_ms`, 1..=10000, default [`defaults::INFERENCE_BUDGET_MS`]).
    pub inference_budget: Duration,
    /// Lowest weight, as a fraction of the pool's average weight
    /// (0 < floor <= 1, default [`defaults::FLOOR`]).
    pub floor: f64,
    /// Highest weight, as a multiple of the pool's average weight
    /// (1..=1000 and greater than `floor`, default [`defaults::CEILING`]).
    pub ceiling: f64,
    /// Largest factor a weight may change by in one tick
    /// (1 < max_step <= 100, default [`defaults::MAX_STEP`]).
    pub max_step: f64,
    /// Recovery probes per tick sent to a healthy backend that got no traffic of its own in
    /// the last tick, so a backend turned down to the floor is seen when it recovers
    /// (0..=100, 0 disables, default [`defaults::PROBES`]).
    pub probes: u32,
    /// How many recent decisions are kept for `/api/decisions` (1..=100000,
    /// default [`defaults::DECISIONS`]).
    pub decisions: usize,
    /// A CSV file the per-tick features of model pools are appended to; `None` records nothing.
    pub record: Option<PathBuf>,
    /// Whether the model is reloaded when its file changes (default [`defaults::WATCH_MODEL`]).
    pub watch_model: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            tick: Duration::from_millis(defaults::TICK_MS),
            model: PathBuf::from(defaults::MODEL),
            ort_library: None,
            inference_budget: Duration::from_millis(defaults::INFERENCE_BUDGET_MS),
            floor: defaults::FLOOR,
            ceiling: defaults::CEILING,
            max_step: defaults::MAX_STEP,
            probes: defaults::PROBES,
            decisions: defaults::DECISIONS,
            record: None,
            watch_model: defaults::WATCH_MODEL,
        }
    }
}

/// One upstream server of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Address of the backend (`IP:PORT`).
    pub addr: SocketAddr,
    /// Relative weight (1..=10000, default 1).
    pub weight: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_matching() {
        let any = HostMatch::parse("*").unwrap();
        assert_eq!(any, HostMatch::Any);
        assert!(any.matches("anything.test"));
        assert!(any.matches(""));

        let exact = HostMatch::parse("API.Example.com").unwrap();
        assert_eq!(exact, HostMatch::Exact("api.example.com".into()));
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("www.example.com"));
        assert!(!exact.matches("a.api.example.com"));

        let suffix = HostMatch::parse("*.Example.com").unwrap();
        assert_eq!(suffix, HostMatch::Suffix(".example.com".into()));
        assert!(suffix.matches("a.example.com"));
        assert!(suffix.matches("a.b.example.com"));
        assert!(!suffix.matches("example.com"));
        assert!(!suffix.matches("badexample.com"));
        assert!(!suffix.matches(".example.com"));

        assert_eq!(exact.specificity(), 2);
        assert_eq!(suffix.specificity(), 1);
        assert_eq!(any.specificity(), 0);
        assert_eq!(suffix.pattern(), "*.example.com");

        let v6 = HostMatch::parse("[::1]").unwrap();
        assert!(v6.matches("[::1]"));
    }

    #[test]
    fn invalid_host_patterns() {
        for bad in [
            "",
            "foo.*.com",
            "*",
            "*.",
            "a..b",
            "example.com:80",
            "a b",
            "**.x",
        ] {
            if bad == "*" {
                continue;
            }
            assert!(HostMatch::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let err = HostMatch::parse("foo.*.com").unwrap_err();
        assert!(err.contains("\"foo.*.com\""), "{err}");
    }

    #[test]
    fn algorithm_names() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        }
        let err = "least_conn".parse::<Algorithm>().unwrap_err();
        assert_eq!(
            err,
            "unknown algorithm \"least_conn\"; valid: round_robin, weighted_round_robin, least_connections, p2c_ewma (did you mean \"least_connections\"?)"
        );
        assert_eq!("model".parse::<WeightSource>(), Ok(WeightSource::Model));
        assert!("modle"
            .parse::<WeightSource>()
            .unwrap_err()
            .contains("did you mean \"model\"?"));
    }
}
