//! Turning a spanned TOML document into a [`Config`], collecting every problem.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use crate::control_defaults as defaults;
use crate::pool_defaults as pool;
use crate::server_defaults as server_default;
use fulcrum_diagnostics::reader::{
    as_int, as_str, as_table, number, type_error, Ctx, Table, Value,
};
use fulcrum_diagnostics::{suggest, Diagnostic, Diagnostics};

use crate::admin_token::AdminToken;
use crate::model::{
    AdminConfig, Algorithm, AutoscaleConfig, BackendConfig, CertificateConfig, ClientLimits,
    Config, ControlConfig, Discovery, DnsName, HealthCheckConfig, HostMatch, PoolConfig,
    PoolTlsConfig, RouteConfig, ServerConfig, TlsVersion, WeightSource,
};
use crate::tls::{self, KeyPair, PairFile};

const TOP_KEYS: &[&str] = &["server", "admin", "routes", "pools", "control"];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "tls_listen",
    "tls_min_version",
    "certificates",
    "threads",
    "grace_period_s",
    "drain_delay_s",
    "upgrade_sock",
    "max_connections",
    "header_timeout_ms",
    "keepalive_timeout_ms",
    "max_header_bytes",
    "max_request_line_bytes",
    "dns_resolver",
    "body_timeout_ms",
];
const CERTIFICATE_KEYS: &[&str] = &["cert", "key"];
const ADMIN_KEYS: &[&str] = &["listen", "token_file", "protect_metrics"];
const ROUTE_KEYS: &[&str] = &["host", "path_prefix", "pool", "redirect_https"];
const POOL_KEYS: &[&str] = &[
    "algorithm",
    "weights",
    "connect_timeout_ms",
    "read_timeout_ms",
    "write_timeout_ms",
    "idle_timeout_ms",
    "retries",
    "ewma_decay_ms",
    "max_consecutive_failures",
    "slow_start_ms",
    "slow_start_min_percent",
    "health_check",
    "tls",
    "backends",
    "discovery",
    "dns_refresh_ms",
    "request_buffer_bytes",
    "autoscale",
];
const AUTOSCALE_KEYS: &[&str] = &[
    "target_utilization",
    "min_backends",
    "max_backends",
    "horizon_s",
    "forecast_model",
    "step_s",
    "backend_capacity_rps",
    "scale_down_stabilization_s",
    "spare_backends",
    "burst_spare_backends",
    "burst_memory_s",
    "history_file",
    "history_prometheus",
    "history_query",
];
const POOL_TLS_KEYS: &[&str] = &["sni", "ca_file", "verify", "client_cert", "client_key"];
const HEALTH_KEYS: &[&str] = &[
    "enabled",
    "path",
    "host",
    "interval_ms",
    "timeout_ms",
    "unhealthy_threshold",
    "healthy_threshold",
];
const BACKEND_KEYS: &[&str] = &["addr", "weight"];
const CONTROL_KEYS: &[&str] = &[
    "tick_ms",
    "model",
    "ort_library",
    "inference_budget_ms",
    "floor",
    "ceiling",
    "max_step",
    "probes",
    "decisions",
    "record",
    "watch_model",
];

/// Longest accepted duration for any `*_ms` key: one day.
const MAX_MS: i128 = 86_400_000;

/// An optional integer key bounded to `min..=max`, falling back to `default`.
fn bounded(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    key: &str,
    default: u64,
    min: i128,
    max: i128,
) -> u64 {
    let Some(v) = t.get(key) else {
        return default;
    };
    let path = t.child(key);
    match as_int(ctx, v, &path) {
        Some(n) if (min..=max).contains(&n) => n as u64,
        Some(n) => {
            ctx.error(
                Some(&v.span()),
                &path,
                format!("{key} must be between {min} and {max}, got {n}"),
            );
            default
        }
        None => default,
    }
}

fn millis(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, key: &str, default: u64, min: i128) -> Duration {
    Duration::from_millis(bounded(ctx, t, key, default, min, MAX_MS))
}

/// An optional number key (integers accepted) that must satisfy `valid`, described by
/// `range` in the error message. `None` when absent or invalid (the error is reported).
fn bounded_f64(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    key: &str,
    valid: impl Fn(f64) -> bool,
    range: &str,
) -> Option<f64> {
    let v = t.get(key)?;
    let path = t.child(key);
    let x = number(ctx, v, &path)?;
    if valid(x) {
        Some(x)
    } else {
        ctx.error(
            Some(&v.span()),
            &path,
            format!("{key} must be {range}, got {x}"),
        );
        None
    }
}

/// An optional file path key: a non-empty string. `None` when absent or invalid (the
/// error is reported); `hint` explains the key in the error message.
fn file_path(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, key: &str, hint: &str) -> Option<PathBuf> {
    let v = t.get(key)?;
    let path = t.child(key);
    let s = as_str(ctx, v, &path)?;
    if s.is_empty() {
        ctx.error(
            Some(&v.span()),
            &path,
            format!("{key} must not be empty: {hint}"),
        );
        return None;
    }
    if s.contains('\0') {
        ctx.error(
            Some(&v.span()),
            &path,
            format!("{key} {s:?} contains a NUL character, which no file path may contain"),
        );
        return None;
    }
    Some(PathBuf::from(s))
}

/// A required file path key: reported as missing with `hint` when absent.
fn required_file_path(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    key: &str,
    hint: &str,
) -> Option<PathBuf> {
    if t.get(key).is_none() {
        ctx.error(
            t.span.as_ref(),
            &t.child(key),
            format!("missing required key `{key}`: {hint}"),
        );
        return None;
    }
    file_path(ctx, t, key, hint)
}

/// Read and check the certificate/key pair named by keys `cert_key` and `key_key` of `t`,
/// reporting each problem at the key of the file it is about.
fn key_pair(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    (cert_key, cert): (&str, &std::path::Path),
    (key_key, key): (&str, &std::path::Path),
) -> Option<KeyPair> {
    let at = |which: PairFile| match which {
        PairFile::Cert => (t.get(cert_key).map(|v| v.span()), t.child(cert_key)),
        PairFile::Key => (t.get(key_key).map(|v| v.span()), t.child(key_key)),
    };
    match tls::load_key_pair(cert, key, tls::unix_now()) {
        Ok((pair, warnings)) => {
            let (span, path) = at(PairFile::Cert);
            for w in warnings {
                ctx.warning(span.as_ref(), &path, w);
            }
            Some(pair)
        }
        Err(problems) => {
            for p in problems {
                let (span, path) = at(p.file);
                ctx.error(span.as_ref(), &path, p.message);
            }
            None
        }
    }
}

fn as_bool(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, key: &str, default: bool) -> bool {
    match t.get(key) {
        None => default,
        Some(v) => match v.get_ref() {
            DeValue::Boolean(b) => *b,
            _ => {
                type_error(ctx, v, &t.child(key), "a boolean (true or false)");
                default
            }
        },
    }
}

fn socket_addr(ctx: &mut Ctx<'_>, v: &Value<'_>, path: &str) -> Option<SocketAddr> {
    let s = as_str(ctx, v, path)?;
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let mut msg = format!(
                "{s:?} is not a valid socket address (expected IP:PORT, e.g. 127.0.0.1:8080)"
            );
            if let Some((host, port)) = s.rsplit_once(':') {
                let is_name = host.chars().any(|c| c.is_ascii_alphabetic()) && !host.contains(':');
                if is_name && port.parse::<u16>().is_ok() {
                    if path.contains(".backends[") {
                        msg.push_str(
                            "; host names are not resolved in a static pool: use an IP address, or set discovery = \"dns\" on the pool",
                        );
                    } else {
                        msg.push_str("; host names are not resolved, use an IP address");
                    }
                }
            }
            ctx.error(Some(&v.span()), path, msg);
            None
        }
    }
}

fn path_value(ctx: &mut Ctx<'_>, v: &Value<'_>, path: &str, what: &str) -> Option<String> {
    let s = as_str(ctx, v, path)?;
    if !s.starts_with('/') {
        ctx.error(
            Some(&v.span()),
            path,
            format!(
                "{what} must start with '/', got {s:?} (e.g. \"/{}\")",
                s.trim_start_matches('/')
            ),
        );
        return None;
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        ctx.error(
            Some(&v.span()),
            path,
            format!("{what} {s:?} contains the character {c:?}; it must be a plain URL path"),
        );
        return None;
    }
    Some(s.to_string())
}

/// Whether two listeners would compete for the same port.
fn addrs_conflict(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Parse and validate a configuration source, reporting every problem found.
pub(crate) fn parse(
    source: &str,
    file_name: &str,
) -> Result<(Config, Vec<Diagnostic>), Diagnostics> {
    let mut ctx = Ctx::new(source, file_name);
    let Some(doc) = ctx.parse_document(source) else {
        return Err(ctx.finish());
    };
    let root = Table::new(doc.get_ref(), String::new(), None);
    root.check_keys(&mut ctx, TOP_KEYS);

    let server = read_server(&mut ctx, &root);
    let admin = read_admin(&mut ctx, &root, &server);
    let pools = read_pools(&mut ctx, &root);
    let routes = read_routes(&mut ctx, &root, &pools, !server.tls_listen.is_empty());
    let control = read_control(&mut ctx, &root, &pools);

    let diags = ctx.finish();
    if !diags.errors.is_empty() {
        return Err(diags);
    }
    let config = Config {
        server: ServerConfig {
            listen: server.listen.into_iter().map(|(a, _, _)| a).collect(),
            threads: server.threads,
            grace_period_s: server.grace_period_s,
            drain_delay_s: server.drain_delay_s,
            upgrade_sock: server.upgrade_sock,
            dns_resolver: server.dns_resolver,
            tls_listen: server.tls_listen.into_iter().map(|(a, _, _)| a).collect(),
            tls_min_version: server.tls_min_version,
            certificates: server.certificates,
            limits: server.limits,
            body_timeout: server.body_timeout,
        },
        admin,
        routes,
        pools: pools.into_iter().map(|p| p.config).collect(),
        control,
    };
    Ok((config, diags.warnings))
}

struct ServerParts {
    /// Each listen address with its key path and span.
    listen: Vec<(SocketAddr, String, Range<usize>)>,
    /// Each TLS listen address with its key path and span.
    tls_listen: Vec<(SocketAddr, String, Range<usize>)>,
    tls_min_version: TlsVersion,
    certificates: Vec<CertificateConfig>,
    threads: usize,
    grace_period_s: u64,
    drain_delay_s: u64,
    upgrade_sock: PathBuf,
    limits: ClientLimits,
    dns_resolver: Option<SocketAddr>,
    body_timeout: Duration,
}

impl ServerParts {
    /// Every data-plane address, cleartext and TLS, with its key path and span.
    fn all_listeners(&self) -> impl Iterator<Item = &(SocketAddr, String, Range<usize>)> {
        self.listen.iter().chain(&self.tls_listen)
    }
}

fn read_server(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> ServerParts {
    let mut parts = ServerParts {
        listen: Vec::new(),
        tls_listen: Vec::new(),
        tls_min_version: TlsVersion::Tls12,
        certificates: Vec::new(),
        threads: server_default::THREADS,
        grace_period_s: server_default::GRACE_PERIOD_S,
        drain_delay_s: server_default::DRAIN_DELAY_S,
        upgrade_sock: PathBuf::from(server_default::UPGRADE_SOCK),
        limits: ClientLimits::default(),
        dns_resolver: None,
        body_timeout: Duration::from_millis(server_default::BODY_TIMEOUT_MS),
    };
    let missing_listen = "missing required key `listen`: the data-plane listen addresses, e.g. listen = [\"127.0.0.1:8080\"]";
    let Some(v) = root.get("server") else {
        ctx.error(
            None,
            "server.listen",
            format!("{missing_listen} in a [server] table"),
        );
        return parts;
    };
    let Some(t) = as_table(ctx, v, "server".into(), "a table ([server])") else {
        return parts;
    };
    t.check_keys(ctx, SERVER_KEYS);
    match t.get("listen") {
        None => ctx.error(t.span.as_ref(), "server.listen", missing_listen),
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => {
                if items.is_empty() {
                    ctx.error(
                        Some(&v.span()),
                        "server.listen",
                        "at least one listen address is required, e.g. listen = [\"127.0.0.1:8080\"]",
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    let path = format!("server.listen[{i}]");
                    let Some(addr) = socket_addr(ctx, item, &path) else {
                        continue;
                    };
                    if let Some((_, first, _)) = parts.listen.iter().find(|(a, _, _)| *a == addr) {
                        let msg =
                            format!("duplicate listen address {addr} (already listed as {first})");
                        ctx.error(Some(&item.span()), &path, msg);
                        continue;
                    }
                    parts.listen.push((addr, path, item.span()));
                }
            }
            _ => type_error(
                ctx,
                v,
                "server.listen",
                "an array of \"IP:PORT\" strings, e.g. [\"127.0.0.1:8080\"]",
            ),
        },
    }
    if let Some(v) = t.get("dns_resolver") {
        parts.dns_resolver = socket_addr(ctx, v, "server.dns_resolver");
    }
    parts.threads = bounded(ctx, &t, "threads", server_default::THREADS as u64, 1, 1024) as usize;
    parts.grace_period_s = bounded(
        ctx,
        &t,
        "grace_period_s",
        server_default::GRACE_PERIOD_S,
        0,
        3600,
    );
    parts.drain_delay_s = bounded(
        ctx,
        &t,
        "drain_delay_s",
        server_default::DRAIN_DELAY_S,
        0,
        3600,
    );
    let hint = "the Unix socket a process started with `fulcrum run --upgrade` takes the listeners through, e.g. \"/run/fulcrum/upgrade.sock\"";
    if let Some(sock) = file_path(ctx, &t, "upgrade_sock", hint) {
        let span = t.get("upgrade_sock").map(|v| v.span());
        if let Err(problem) = check_upgrade_sock(&sock) {
            match problem {
                SockProblem::Error(msg) => ctx.error(span.as_ref(), "server.upgrade_sock", msg),
                SockProblem::Warning(msg) => {
                    ctx.warning(span.as_ref(), "server.upgrade_sock", msg);
                    parts.upgrade_sock = sock;
                }
            }
        } else {
            parts.upgrade_sock = sock;
        }
    }
    parts.body_timeout = millis(
        ctx,
        &t,
        "body_timeout_ms",
        server_default::BODY_TIMEOUT_MS,
        1,
    );
    read_server_tls(ctx, &t, &mut parts);
    parts.limits = read_client_limits(ctx, &t);
    parts
}

/// `max_connections`, `header_timeout_ms`, `keepalive_timeout_ms`, `max_header_bytes` and
/// `max_request_line_bytes`.
fn read_client_limits(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> ClientLimits {
    let max_connections = bounded(
        ctx,
        t,
        "max_connections",
        server_default::MAX_CONNECTIONS as u64,
        1,
        1_000_000,
    ) as usize;
    let header_timeout = millis(
        ctx,
        t,
        "header_timeout_ms",
        server_default::HEADER_TIMEOUT_MS,
        1,
    );
    let keepalive_timeout = millis(
        ctx,
        t,
        "keepalive_timeout_ms",
        server_default::KEEPALIVE_TIMEOUT_MS,
        0,
    );
    let max_header_bytes = bounded(
        ctx,
        t,
        "max_header_bytes",
        server_default::MAX_HEADER_BYTES as u64,
        1024,
        server_default::MAX_HEADER_BYTES_LIMIT as i128,
    ) as usize;
    let mut max_request_line_bytes = bounded(
        ctx,
        t,
        "max_request_line_bytes",
        server_default::MAX_REQUEST_LINE_BYTES as u64,
        64,
        server_default::MAX_HEADER_BYTES_LIMIT as i128,
    ) as usize;
    if max_request_line_bytes > max_header_bytes {
        let span = t
            .get("max_request_line_bytes")
            .or_else(|| t.get("max_header_bytes"))
            .map(|v| v.span());
        ctx.error(
            span.as_ref(),
            "server.max_request_line_bytes",
            format!(
                "max_request_line_bytes ({max_request_line_bytes}) must not exceed max_header_bytes ({max_header_bytes}): the request line is part of the head"
            ),
        );
        max_request_line_bytes = max_header_bytes;
    }
    ClientLimits {
        max_connections,
        header_timeout,
        keepalive_timeout,
        max_header_bytes,
        max_request_line_bytes,
    }
}

/// What is wrong with an upgrade socket path: refused, or accepted with a warning.
#[derive(Debug, PartialEq, Eq)]
enum SockProblem {
    Error(String),
    Warning(String),
}

/// Check an upgrade socket path: absolute, short enough for a Unix socket address, and in a
/// directory other users cannot write to. pingora makes the socket mode 0666 while a new
/// process waits on it, so the directory is the only thing keeping other local users from
/// connecting and handing fulcrum listeners of their own. A sticky bit does not help: it stops
/// others from removing the socket, not from connecting to it.
fn check_upgrade_sock(sock: &std::path::Path) -> Result<(), SockProblem> {
    let shown = sock.display();
    if !sock.is_absolute() {
        return Err(SockProblem::Error(format!(
            "upgrade_sock {shown:?} must be an absolute path, so the running process and the one started with --upgrade find the same socket whatever their working directory (e.g. \"{}\")",
            server_default::UPGRADE_SOCK
        )));
    }
    let len = sock.as_os_str().len();
    if len > server_default::UNIX_SOCKET_PATH_MAX {
        return Err(SockProblem::Error(format!(
            "upgrade_sock {shown:?} is {len} bytes long; a Unix socket path holds at most {} bytes",
            server_default::UNIX_SOCKET_PATH_MAX
        )));
    }
    let Some(dir) = sock.parent().filter(|_| sock.file_name().is_some()) else {
        return Err(SockProblem::Error(format!(
            "upgrade_sock {shown:?} must name a socket file inside a directory, e.g. \"{}\"",
            server_default::UPGRADE_SOCK
        )));
    };
    // A directory that does not exist yet is checked when `fulcrum run --upgrade` starts.
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Err(SockProblem::Error(format!(
            "upgrade_sock {shown:?}: {} is not a directory",
            dir.display()
        )));
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
    if mode & 0o002 != 0 {
        return Err(SockProblem::Error(format!(
            "upgrade_sock {shown:?} is in {}, which every user can write to (mode {mode:04o}): any local user could take the socket's place or connect to it and hand fulcrum listeners of their own; use a directory only fulcrum's user can write to, e.g. \"{}\" (sudo install -d -m 0750 -o $USER /run/fulcrum)",
            dir.display(),
            server_default::UPGRADE_SOCK
        )));
    }
    if mode & 0o001 != 0 {
        return Err(SockProblem::Warning(format!(
            "upgrade_sock {shown:?} is in {}, which every user can enter (mode {mode:04o}); the socket is mode 0666 while an upgrade waits, so any local user could connect to it; use a directory of mode 0750 or 0700",
            dir.display()
        )));
    }
    Ok(())
}

/// `tls_listen`, `tls_min_version` and `[[server.certificates]]`.
fn read_server_tls(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, parts: &mut ServerParts) {
    if let Some(v) = t.get("tls_listen") {
        match v.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("server.tls_listen[{i}]");
                    let Some(addr) = socket_addr(ctx, item, &path) else {
                        continue;
                    };
                    if let Some((other, first, _)) = parts
                        .all_listeners()
                        .find(|(a, _, _)| addrs_conflict(a, &addr))
                    {
                        let msg = format!(
                            "TLS listen address {addr} conflicts with {other} ({first}); each listener needs its own port"
                        );
                        ctx.error(Some(&item.span()), &path, msg);
                        continue;
                    }
                    parts.tls_listen.push((addr, path, item.span()));
                }
            }
            _ => type_error(
                ctx,
                v,
                "server.tls_listen",
                "an array of \"IP:PORT\" strings, e.g. [\"0.0.0.0:8443\"]",
            ),
        }
    }
    if let Some(v) = t.get("tls_min_version") {
        let path = t.child("tls_min_version");
        match as_str(ctx, v, &path).map(str::parse::<TlsVersion>) {
            Some(Ok(version)) => parts.tls_min_version = version,
            Some(Err(msg)) => ctx.error(Some(&v.span()), &path, msg),
            None => {}
        }
    }
    if let Some(v) = t.get("certificates") {
        match v.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("server.certificates[{i}]");
                    let Some(ct) = as_table(
                        ctx,
                        item,
                        path,
                        "a table ([[server.certificates]]) with `cert` and `key`",
                    ) else {
                        continue;
                    };
                    if let Some(c) = read_certificate(ctx, &ct, &parts.certificates) {
                        parts.certificates.push(c);
                    }
                }
            }
            _ => type_error(
                ctx,
                v,
                "server.certificates",
                "an array of tables ([[server.certificates]] with `cert` and `key`)",
            ),
        }
    }
    let tls_listen_set = t
        .get("tls_listen")
        .is_some_and(|v| matches!(v.get_ref(), DeValue::Array(a) if !a.is_empty()));
    let certificates_given = t.get("certificates").is_some();
    if tls_listen_set && !certificates_given {
        let span = t.get("tls_listen").map(|v| v.span());
        ctx.error(
            span.as_ref(),
            "server.tls_listen",
            "tls_listen needs at least one certificate: add a [[server.certificates]] table with \
             cert = \"server.pem\" and key = \"server.key\"",
        );
    } else if !tls_listen_set && certificates_given {
        let span = t.get("certificates").map(|v| v.span());
        ctx.warning(
            span.as_ref(),
            "server.certificates",
            "certificates are served only on TLS listeners, and server.tls_listen names none",
        );
    }
}

/// One `[[server.certificates]]` table; `earlier` are the certificates before it, which win
/// the names they share with it.
fn read_certificate(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    earlier: &[CertificateConfig],
) -> Option<CertificateConfig> {
    t.check_keys(ctx, CERTIFICATE_KEYS);
    let cert = required_file_path(
        ctx,
        t,
        "cert",
        "the PEM certificate chain, leaf first, e.g. cert = \"/etc/fulcrum/example.pem\"",
    );
    let key = required_file_path(
        ctx,
        t,
        "key",
        "the PEM private key of the certificate, e.g. key = \"/etc/fulcrum/example.key\"",
    );
    let (cert, key) = (cert?, key?);
    let pair = key_pair(ctx, t, ("cert", &cert), ("key", &key));
    if let Some(pair) = &pair {
        for name in pair.names() {
            let first = earlier.iter().position(|c| {
                c.pair
                    .as_ref()
                    .is_some_and(|p| p.names().iter().any(|n| n == name))
            });
            if let Some(i) = first {
                let span = t.get("cert").map(|v| v.span());
                ctx.warning(
                    span.as_ref(),
                    &t.child("cert"),
                    format!(
                        "{name} is also served by server.certificates[{i}], which comes first and wins it"
                    ),
                );
            }
        }
    }
    Some(CertificateConfig { cert, key, pair })
}

fn read_admin(ctx: &mut Ctx<'_>, root: &Table<'_, '_>, server: &ServerParts) -> AdminConfig {
    let mut admin = AdminConfig::default();
    let Some(v) = root.get("admin") else {
        return admin;
    };
    let Some(t) = as_table(ctx, v, "admin".into(), "a table ([admin])") else {
        return admin;
    };
    t.check_keys(ctx, ADMIN_KEYS);
    if let Some(v) = t.get("listen") {
        if let Some(addr) = socket_addr(ctx, v, "admin.listen") {
            if let Some((data, path, _)) = server
                .all_listeners()
                .find(|(a, _, _)| addrs_conflict(a, &addr))
            {
                ctx.error(
                    Some(&v.span()),
                    "admin.listen",
                    format!(
                        "admin listen address {addr} conflicts with data-plane listener {data} ({path}); use a different port"
                    ),
                );
            }
            admin.listen = addr;
        }
    }
    admin.token_file = file_path(
        ctx,
        &t,
        "token_file",
        "the file holding the admin API's bearer token, e.g. \"/run/secrets/fulcrum-admin-token\"",
    );
    if let (Some(path), Some(v)) = (&admin.token_file, t.get("token_file")) {
        match AdminToken::read(path) {
            Ok((token, warnings)) => {
                for w in warnings {
                    ctx.warning(Some(&v.span()), "admin.token_file", w);
                }
                admin.token = Some(token);
            }
            Err(e) => ctx.error(Some(&v.span()), "admin.token_file", e),
        }
    }
    admin.protect_metrics = as_bool(ctx, &t, "protect_metrics", false);
    if admin.protect_metrics && admin.token_file.is_none() {
        let span = t.get("protect_metrics").map(|v| v.span());
        ctx.warning(
            span.as_ref(),
            "admin.protect_metrics",
            "protect_metrics = true does nothing without admin.token_file: /metrics stays open",
        );
    }
    if !admin.listen.ip().is_loopback() && admin.token_file.is_none() {
        let span = t.get("listen").map(|v| v.span());
        ctx.warning(
            span.as_ref(),
            "admin.listen",
            format!(
                "admin API on {} (not loopback) without admin.token_file: anyone who can reach it \
                 can read pool state and metrics, and the endpoints that change state answer 403 \
                 until a token_file is set",
                admin.listen
            ),
        );
    }
    admin
}

fn read_control(ctx: &mut Ctx<'_>, root: &Table<'_, '_>, pools: &[PoolParts]) -> ControlConfig {
    let mut control = ControlConfig::default();
    let Some(v) = root.get("control") else {
        return control;
    };
    let Some(t) = as_table(ctx, v, "control".into(), "a table ([control])") else {
        return control;
    };
    t.check_keys(ctx, CONTROL_KEYS);
    control.tick =
        Duration::from_millis(bounded(ctx, &t, "tick_ms", defaults::TICK_MS, 50, 60_000));
    let model_hint = format!("the path of the ONNX model, e.g. {:?}", defaults::MODEL);
    if let Some(p) = file_path(ctx, &t, "model", &model_hint) {
        control.model = p;
    }
    control.ort_library = file_path(
        ctx,
        &t,
        "ort_library",
        "the path of the ONNX Runtime library (omit the key to use ORT_DYLIB_PATH or the project's .venv)",
    );
    control.inference_budget = Duration::from_millis(bounded(
        ctx,
        &t,
        "inference_budget_ms",
        defaults::INFERENCE_BUDGET_MS,
        1,
        10_000,
    ));
    let floor = bounded_f64(
        ctx,
        &t,
        "floor",
        |x| x > 0.0 && x <= 1.0,
        "greater than 0 and at most 1 (a fraction of the pool's average weight)",
    );
    let ceiling = bounded_f64(
        ctx,
        &t,
        "ceiling",
        |x| (1.0..=1000.0).contains(&x),
        "between 1 and 1000 (a multiple of the pool's average weight)",
    );
    control.floor = floor.unwrap_or(control.floor);
    control.ceiling = ceiling.unwrap_or(control.ceiling);
    let bounds_valid = floor.is_some() == t.get("floor").is_some()
        && ceiling.is_some() == t.get("ceiling").is_some();
    if bounds_valid && control.ceiling <= control.floor {
        let span = t.get("ceiling").or(t.get("floor")).map(|v| v.span());
        ctx.error(
            span.as_ref(),
            &t.child("ceiling"),
            format!(
                "ceiling ({}) must be greater than floor ({})",
                control.ceiling, control.floor
            ),
        );
    }
    if let Some(x) = bounded_f64(
        ctx,
        &t,
        "max_step",
        |x| x > 1.0 && x <= 100.0,
        "greater than 1 and at most 100 (the largest factor a weight may change by per tick)",
    ) {
        control.max_step = x;
    }
    control.probes = bounded(ctx, &t, "probes", defaults::PROBES.into(), 0, 100) as u32;
    control.decisions =
        bounded(ctx, &t, "decisions", defaults::DECISIONS as u64, 1, 100_000) as usize;
    control.record = file_path(
        ctx,
        &t,
        "record",
        "a CSV file to append per-tick features to (omit the key to record nothing)",
    );
    control.watch_model = as_bool(ctx, &t, "watch_model", defaults::WATCH_MODEL);
    if !pools
        .iter()
        .any(|p| p.config.weights == WeightSource::Model)
    {
        ctx.warning(
            t.span.as_ref(),
            "control",
            "no pool uses weights = \"model\"; the control loop only tunes pools with weights = \"model\"",
        );
    }
    control
}

struct PoolParts {
    config: PoolConfig,
    span: Option<Range<usize>>,
}

fn valid_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn read_pools(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Vec<PoolParts> {
    let missing = "at least one pool is required, e.g. a [pools.web] table with [[pools.web.backends]] entries";
    let Some(v) = root.get("pools") else {
        ctx.error(None, "pools", missing);
        return Vec::new();
    };
    let Some(t) = as_table(ctx, v, "pools".into(), "a table of pools ([pools.NAME])") else {
        return Vec::new();
    };
    if t.entries.is_empty() {
        ctx.error(t.span.as_ref(), "pools", missing);
    }
    let mut pools = Vec::new();
    let mut histories: HashMap<PathBuf, String> = HashMap::new();
    for (key, value) in &t.entries {
        let name: &str = key.get_ref().as_ref();
        let path = t.child(name);
        if !valid_pool_name(name) {
            ctx.error(
                Some(&key.span()),
                &path,
                format!("invalid pool name {name:?}: use only letters, digits, '-' and '_'"),
            );
        }
        let Some(pt) = as_table(ctx, value, path, "a table ([pools.NAME])") else {
            continue;
        };
        let config = read_pool(ctx, &pt, name);
        if let Some(file) = config
            .autoscale
            .as_ref()
            .and_then(|a| a.history_file.as_ref())
        {
            if let Some(first) = histories.get(file) {
                let span = match pt.get("autoscale").map(|v| v.get_ref()) {
                    Some(DeValue::Table(a)) => Table::new(a, String::new(), None)
                        .get("history_file")
                        .map(|v| v.span()),
                    _ => None,
                };
                ctx.error(
                    span.as_ref(),
                    &format!("pools.{name}.autoscale.history_file"),
                    format!(
                        "history_file {} is already pool {first}'s: each pool keeps its own series",
                        file.display()
                    ),
                );
            } else {
                histories.insert(file.clone(), name.to_string());
            }
        }
        pools.push(PoolParts {
            config,
            span: pt.span.clone(),
        });
    }
    pools
}

fn read_pool(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, name: &str) -> PoolConfig {
    t.check_keys(ctx, POOL_KEYS);
    let algorithm = match t.get("algorithm") {
        None => Algorithm::LeastConnections,
        Some(v) => {
            let path = t.child("algorithm");
            match as_str(ctx, v, &path).map(str::parse::<Algorithm>) {
                Some(Ok(a)) => a,
                Some(Err(msg)) => {
                    ctx.error(Some(&v.span()), &path, msg);
                    Algorithm::LeastConnections
                }
                None => Algorithm::LeastConnections,
            }
        }
    };
    let weights = match t.get("weights") {
        None => WeightSource::Static,
        Some(v) => {
            let path = t.child("weights");
            match as_str(ctx, v, &path).map(str::parse::<WeightSource>) {
                Some(Ok(w)) => w,
                Some(Err(msg)) => {
                    ctx.error(Some(&v.span()), &path, msg);
                    WeightSource::Static
                }
                None => WeightSource::Static,
            }
        }
    };
    let connect_timeout = millis(ctx, t, "connect_timeout_ms", pool::CONNECT_TIMEOUT_MS, 1);
    let read_timeout = millis(ctx, t, "read_timeout_ms", pool::READ_TIMEOUT_MS, 1);
    let write_timeout = millis(ctx, t, "write_timeout_ms", pool::WRITE_TIMEOUT_MS, 1);
    let idle_timeout = millis(ctx, t, "idle_timeout_ms", pool::IDLE_TIMEOUT_MS, 1);
    let retries = bounded(ctx, t, "retries", u64::from(pool::RETRIES), 0, 10) as u32;
    let ewma_decay = millis(ctx, t, "ewma_decay_ms", pool::EWMA_DECAY_MS, 1);
    let max_consecutive_failures = bounded(
        ctx,
        t,
        "max_consecutive_failures",
        u64::from(pool::MAX_CONSECUTIVE_FAILURES),
        1,
        1000,
    ) as u32;
    let slow_start = millis(ctx, t, "slow_start_ms", pool::SLOW_START_MS, 0);
    let slow_start_min_percent = bounded(
        ctx,
        t,
        "slow_start_min_percent",
        u64::from(pool::SLOW_START_MIN_PERCENT),
        1,
        100,
    ) as u32;
    if algorithm == Algorithm::RoundRobin && !slow_start.is_zero() {
        let span = t.get("slow_start_ms").map(|v| v.span());
        ctx.warning(
            span.as_ref(),
            &t.child("slow_start_ms"),
            "round_robin ignores backend weights, so slow start has no effect; use \"weighted_round_robin\" or another weighted algorithm",
        );
    }
    let health_check = match t.get("health_check") {
        None => HealthCheckConfig::default(),
        Some(v) => match as_table(ctx, v, t.child("health_check"), "a table") {
            Some(ht) => read_health(ctx, &ht),
            None => HealthCheckConfig::default(),
        },
    };
    let tls = match t.get("tls") {
        None => None,
        Some(v) => as_table(ctx, v, t.child("tls"), "a table ([pools.NAME.tls])")
            .map(|tt| read_pool_tls(ctx, &tt, name)),
    };
    let autoscale = match t.get("autoscale") {
        None => None,
        Some(v) => as_table(
            ctx,
            v,
            t.child("autoscale"),
            "a table ([pools.NAME.autoscale])",
        )
        .map(|at| read_autoscale(ctx, &at)),
    };
    let dns = read_discovery(ctx, t);
    let (backends, names) = read_backends(ctx, t, dns.is_some());
    let discovery = match dns {
        Some(refresh) => Discovery::Dns { refresh, names },
        None => Discovery::Static,
    };
    let request_buffer_bytes = bounded(
        ctx,
        t,
        "request_buffer_bytes",
        pool::REQUEST_BUFFER_BYTES as u64,
        0,
        pool::REQUEST_BUFFER_BYTES_MAX as i128,
    ) as usize;
    if algorithm == Algorithm::RoundRobin
        && weights == WeightSource::Static
        && backends.windows(2).any(|w| w[0].weight != w[1].weight)
    {
        let span = t.get("algorithm").map(|v| v.span());
        ctx.warning(
            span.as_ref(),
            &t.child("algorithm"),
            "round_robin ignores backend weights; use \"weighted_round_robin\" to honour them",
        );
    }
    PoolConfig {
        name: name.to_string(),
        algorithm,
        weights,
        connect_timeout,
        read_timeout,
        write_timeout,
        idle_timeout,
        retries,
        ewma_decay,
        max_consecutive_failures,
        slow_start,
        slow_start_min_percent,
        health_check,
        tls,
        discovery,
        backends,
        request_buffer_bytes,
        autoscale,
    }
}

/// `[pools.NAME.autoscale]`: demand forecasts and the recommended backend count.
fn read_autoscale(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> AutoscaleConfig {
    use crate::autoscale_defaults as d;
    t.check_keys(ctx, AUTOSCALE_KEYS);
    let mut a = AutoscaleConfig::default();
    if let Some(x) = bounded_f64(
        ctx,
        t,
        "target_utilization",
        |x| x > 0.0 && x <= 1.0,
        "greater than 0 and at most 1 (the share of a backend's capacity to plan for)",
    ) {
        a.target_utilization = x;
    }
    a.min_backends = bounded(ctx, t, "min_backends", d::MIN_BACKENDS.into(), 1, 100_000) as u32;
    a.max_backends = bounded(ctx, t, "max_backends", d::MAX_BACKENDS.into(), 1, 100_000) as u32;
    if a.max_backends < a.min_backends {
        let span = t
            .get("max_backends")
            .or(t.get("min_backends"))
            .map(|v| v.span());
        ctx.error(
            span.as_ref(),
            &t.child("max_backends"),
            format!(
                "max_backends ({}) must be at least min_backends ({})",
                a.max_backends, a.min_backends
            ),
        );
    }
    if let Some(x) = bounded_f64(
        ctx,
        t,
        "horizon_s",
        |x| (1.0..=86_400.0).contains(&x),
        "between 1 and 86400 seconds (the time a new backend needs to take traffic)",
    ) {
        a.horizon = Duration::from_secs_f64(x);
    }
    if let Some(x) = bounded_f64(
        ctx,
        t,
        "step_s",
        |x| (0.1..=3600.0).contains(&x),
        "between 0.1 and 3600 seconds (one rate and one forecast per step)",
    ) {
        a.step = Duration::from_secs_f64(x);
    }
    a.forecast_model = file_path(
        ctx,
        t,
        "forecast_model",
        "the path of an ONNX forecast model, e.g. \"models/forecast.onnx\" (omit the key to use the built-in forecaster)",
    );
    a.history_file = file_path(
        ctx,
        t,
        "history_file",
        "a CSV file to keep the pool's rate series in across restarts, e.g. \"/var/lib/fulcrum/web.csv\" (omit the key to keep it in memory only)",
    );
    if let Some(v) = t.get("history_prometheus") {
        let path = t.child("history_prometheus");
        if let Some(s) = as_str(ctx, v, &path) {
            if crate::split_http_url(s).is_ok() {
                a.history_prometheus = Some(s.to_string());
            } else {
                ctx.error(
                    Some(&v.span()),
                    &path,
                    format!(
                        "history_prometheus {s:?} is not an http:// URL of a Prometheus server, \
                         e.g. \"http://prometheus.monitoring.svc:9090\" (https is not supported)"
                    ),
                );
            }
        }
    }
    if let Some(v) = t.get("history_query") {
        let path = t.child("history_query");
        if let Some(s) = as_str(ctx, v, &path) {
            if s.trim().is_empty() {
                ctx.error(
                    Some(&v.span()),
                    &path,
                    "history_query must not be empty: a PromQL expression answering the pool's \
                     rate as one series (omit the key for the average of \
                     fulcrum_pool_requests_per_second over fulcrum's processes)",
                );
            } else if t.get("history_prometheus").is_none() {
                ctx.warning(
                    Some(&v.span()),
                    &path,
                    "history_query has no effect without history_prometheus",
                );
                a.history_query = Some(s.to_string());
            } else {
                a.history_query = Some(s.to_string());
            }
        }
    }
    a.backend_capacity_rps = bounded_f64(
        ctx,
        t,
        "backend_capacity_rps",
        |x| x > 0.0 && x.is_finite(),
        "a positive number of requests per second (omit the key to estimate it from the traffic)",
    );
    if let Some(x) = bounded_f64(
        ctx,
        t,
        "scale_down_stabilization_s",
        |x| (0.0..=86_400.0).contains(&x),
        "between 0 and 86400 seconds (how long the recommendation must have been lower before \
         it goes down; 0 follows every step)",
    ) {
        a.scale_down_stabilization = Duration::from_secs_f64(x);
    } else if t.get("scale_down_stabilization_s").is_none() {
        // The default follows the step: a number of steps, not of seconds.
        a.scale_down_stabilization = a.step * d::SCALE_DOWN_STABILIZATION_STEPS;
    }
    a.spare_backends = bounded(ctx, t, "spare_backends", d::SPARE_BACKENDS.into(), 0, 1000) as u32;
    a.burst_spare_backends = bounded(
        ctx,
        t,
        "burst_spare_backends",
        d::BURST_SPARE_BACKENDS.into(),
        0,
        1000,
    ) as u32;
    if let Some(x) = bounded_f64(
        ctx,
        t,
        "burst_memory_s",
        |x| (0.0..=172_800.0).contains(&x),
        "between 0 and 172800 seconds (how long the burst spare is kept after the demand last \
         outran the plan)",
    ) {
        a.burst_memory = Duration::from_secs_f64(x);
    }
    if a.step > a.horizon {
        let span = t.get("step_s").map(|v| v.span());
        ctx.warning(
            span.as_ref(),
            &t.child("step_s"),
            format!(
                "step_s ({} s) is longer than horizon_s ({} s): the forecast looks one step ahead, \
                 further than the provisioning horizon",
                a.step.as_secs_f64(),
                a.horizon.as_secs_f64()
            ),
        );
    }
    if a.burst_spare_backends > 0 && !a.burst_memory.is_zero() && a.burst_memory < a.step {
        let span = t.get("burst_memory_s").map(|v| v.span());
        ctx.warning(
            span.as_ref(),
            &t.child("burst_memory_s"),
            format!(
                "burst_memory_s ({} s) is shorter than step_s ({} s): the burst spare is kept for \
                 the step the demand outran the plan only (0 says so; a multiple of step_s keeps it)",
                a.burst_memory.as_secs_f64(),
                a.step.as_secs_f64()
            ),
        );
    }
    a
}

/// `discovery` and `dns_refresh_ms`: `Some(refresh)` for a pool whose backends are found by
/// DNS, `None` for a static one.
fn read_discovery(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> Option<Duration> {
    let dns = match t.get("discovery") {
        None => false,
        Some(v) => {
            let path = t.child("discovery");
            match as_str(ctx, v, &path) {
                Some("static") | None => false,
                Some("dns") => true,
                Some(other) => {
                    let mut msg = format!("unknown discovery {other:?}; valid: static, dns");
                    if let Some(s) = suggest(other, ["static", "dns"]) {
                        msg.push_str(&format!(" (did you mean {s:?}?)"));
                    }
                    ctx.error(Some(&v.span()), &path, msg);
                    false
                }
            }
        }
    };
    let refresh = millis(ctx, t, "dns_refresh_ms", pool::DNS_REFRESH_MS, 100);
    if !dns {
        if let Some(v) = t.get("dns_refresh_ms") {
            ctx.warning(
                Some(&v.span()),
                &t.child("dns_refresh_ms"),
                "dns_refresh_ms has no effect without discovery = \"dns\"",
            );
        }
    }
    dns.then_some(refresh)
}

/// A backend `addr` of a pool with `discovery = "dns"`: `host:port` with a host name.
fn dns_name(s: &str) -> Result<(String, u16), String> {
    let example =
        "expected HOST:PORT with a host name, e.g. \"web.default.svc.cluster.local:8080\"";
    if s.parse::<SocketAddr>().is_ok() {
        return Err(format!(
            "{s:?} is an IP address, but discovery = \"dns\" resolves host names ({example}); list IP addresses in a pool with discovery = \"static\""
        ));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port ({example})"));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(format!(
                "{s:?} has no valid port: {port:?} is not 1-65535 ({example})"
            ))
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let labels_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !labels_ok || host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{s:?} is not a valid host name ({example})"));
    }
    Ok((host, port))
}

/// `[pools.NAME.tls]`: TLS to the backends of pool `pool`.
fn read_pool_tls(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, pool: &str) -> PoolTlsConfig {
    t.check_keys(ctx, POOL_TLS_KEYS);
    let mut cfg = PoolTlsConfig {
        verify: as_bool(ctx, t, "verify", true),
        ..PoolTlsConfig::default()
    };
    if let Some(v) = t.get("sni") {
        let path = t.child("sni");
        if let Some(name) = as_str(ctx, v, &path) {
            match rustls::pki_types::ServerName::try_from(name) {
                Ok(_) if !name.is_empty() => cfg.sni = Some(name.to_ascii_lowercase()),
                _ => ctx.error(
                    Some(&v.span()),
                    &path,
                    format!(
                        "{name:?} is not a server name: expected a DNS name such as \"api.internal\" or an IP address (omit the key to use each backend's address)"
                    ),
                ),
            }
        }
    }
    cfg.ca_file = file_path(
        ctx,
        t,
        "ca_file",
        "a PEM bundle of the CAs backend certificates chain to (omit the key to trust the system's roots)",
    );
    if let (Some(path), Some(v)) = (&cfg.ca_file, t.get("ca_file")) {
        match tls::load_ca_bundle(path) {
            Ok(bundle) => cfg.ca = Some(bundle),
            Err(e) => ctx.error(Some(&v.span()), &t.child("ca_file"), e),
        }
    }
    if !cfg.verify {
        let span = t.get("verify").map(|v| v.span());
        ctx.warning(
            span.as_ref(),
            &t.child("verify"),
            format!(
                "verify = false: the certificates of pool {pool:?}'s backends are not checked, so \
                 anyone on the way to them can read and change its traffic; trust a private CA \
                 with ca_file instead"
            ),
        );
    }
    cfg.client_cert = file_path(
        ctx,
        t,
        "client_cert",
        "the PEM certificate chain presented to backends",
    );
    cfg.client_key = file_path(ctx, t, "client_key", "the PEM private key of client_cert");
    match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            cfg.client = key_pair(ctx, t, ("client_cert", cert), ("client_key", key));
        }
        (Some(_), None) => {
            let span = t.get("client_cert").map(|v| v.span());
            ctx.error(
                span.as_ref(),
                &t.child("client_key"),
                "client_cert needs client_key: the PEM private key of the client certificate",
            );
        }
        (None, Some(_)) => {
            let span = t.get("client_key").map(|v| v.span());
            ctx.error(
                span.as_ref(),
                &t.child("client_cert"),
                "client_key needs client_cert: the PEM certificate chain it belongs to",
            );
        }
        (None, None) => {}
    }
    cfg
}

fn read_health(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> HealthCheckConfig {
    t.check_keys(ctx, HEALTH_KEYS);
    let mut hc = HealthCheckConfig {
        enabled: as_bool(ctx, t, "enabled", true),
        ..HealthCheckConfig::default()
    };
    if let Some(v) = t.get("path") {
        if let Some(p) = path_value(ctx, v, &t.child("path"), "health check path") {
            hc.path = p;
        }
    }
    if let Some(v) = t.get("host") {
        let path = t.child("host");
        if let Some(h) = as_str(ctx, v, &path) {
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
                ctx.error(
                    Some(&v.span()),
                    &path,
                    format!("invalid Host header value {h:?}: expected a host name such as \"app.internal\" (omit the key to use the backend address)"),
                );
            } else {
                hc.host = Some(h.to_string());
            }
        }
    }
    hc.interval = millis(ctx, t, "interval_ms", 1000, 10);
    hc.timeout = millis(ctx, t, "timeout_ms", 500, 1);
    hc.unhealthy_threshold = bounded(ctx, t, "unhealthy_threshold", 3, 1, 1000) as u32;
    hc.healthy_threshold = bounded(ctx, t, "healthy_threshold", 2, 1, 1000) as u32;
    if hc.timeout > hc.interval {
        let span = t
            .get("timeout_ms")
            .or(t.get("interval_ms"))
            .map(|v| v.span());
        ctx.error(
            span.as_ref(),
            &t.child("timeout_ms"),
            format!(
                "timeout_ms ({}) must not exceed interval_ms ({})",
                hc.timeout.as_millis(),
                hc.interval.as_millis()
            ),
        );
    }
    hc
}

/// The backends of a pool: `IP:PORT` addresses, or with `dns` the `host:port` names to resolve.
fn read_backends(
    ctx: &mut Ctx<'_>,
    pool: &Table<'_, '_>,
    dns: bool,
) -> (Vec<BackendConfig>, Vec<DnsName>) {
    let path = pool.child("backends");
    let required = "at least one backend is required, e.g. [[pools.NAME.backends]] with addr = \"127.0.0.1:9001\"";
    let required = required.replace("NAME", pool.path.trim_start_matches("pools."));
    let Some(v) = pool.get("backends") else {
        ctx.error(pool.span.as_ref(), &path, required);
        return (Vec::new(), Vec::new());
    };
    let DeValue::Array(items) = v.get_ref() else {
        type_error(ctx, v, &path, "an array of tables ([[...backends]])");
        return (Vec::new(), Vec::new());
    };
    if items.is_empty() {
        ctx.error(Some(&v.span()), &path, required);
    }
    let mut backends = Vec::new();
    let mut names: Vec<(DnsName, String)> = Vec::new();
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let bpath = format!("{path}[{i}]");
        let Some(bt) = as_table(ctx, item, bpath.clone(), "a table with `addr` and `weight`")
        else {
            continue;
        };
        bt.check_keys(ctx, BACKEND_KEYS);
        let addr_path = bt.child("addr");
        let addr = match bt.get("addr") {
            None => {
                ctx.error(
                    bt.span.as_ref(),
                    &addr_path,
                    "missing required key `addr`: the backend address, e.g. addr = \"127.0.0.1:9001\"",
                );
                None
            }
            Some(av) if dns => {
                let weight = bounded(ctx, &bt, "weight", 1, 1, 10_000) as u32;
                match as_str(ctx, av, &addr_path).map(dns_name) {
                    Some(Ok((host, port))) => {
                        let name = DnsName { host, port, weight };
                        let first = names
                            .iter()
                            .find(|(n, _)| n.host == name.host && n.port == name.port);
                        if let Some((_, first)) = first {
                            let msg =
                                format!("duplicate backend name {name} (already used by {first})");
                            ctx.error(Some(&av.span()), &addr_path, msg);
                        } else {
                            names.push((name, addr_path.clone()));
                        }
                    }
                    Some(Err(msg)) => ctx.error(Some(&av.span()), &addr_path, msg),
                    None => {}
                }
                continue;
            }
            Some(av) => {
                let addr = socket_addr(ctx, av, &addr_path);
                if let Some(a) = addr {
                    if let Some(first) = seen.get(&a) {
                        let msg =
                            format!("duplicate backend address {a} (already used by {first})");
                        ctx.error(Some(&av.span()), &addr_path, msg);
                    } else {
                        seen.insert(a, addr_path.clone());
                    }
                }
                addr
            }
        };
        let weight = bounded(ctx, &bt, "weight", 1, 1, 10_000) as u32;
        if let Some(addr) = addr {
            backends.push(BackendConfig { addr, weight });
        }
    }
    (backends, names.into_iter().map(|(n, _)| n).collect())
}

fn read_routes(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    pools: &[PoolParts],
    has_tls: bool,
) -> Vec<RouteConfig> {
    let required = "at least one route is required, e.g. [[routes]] with host = \"*\", path_prefix = \"/\" and pool = \"web\"";
    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut used = vec![false; pools.len()];
    match root.get("routes") {
        None => ctx.error(None, "routes", required),
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => {
                if items.is_empty() {
                    ctx.error(Some(&v.span()), "routes", required);
                }
                for (i, item) in items.iter().enumerate() {
                    let path = format!("routes[{i}]");
                    let Some(t) = as_table(ctx, item, path, "a table ([[routes]])") else {
                        continue;
                    };
                    if let Some(route) = read_route(ctx, &t, pools, &mut used, has_tls) {
                        if let Some(j) = routes.iter().position(|r| {
                            r.host == route.host && r.path_prefix == route.path_prefix
                        }) {
                            ctx.error(
                                t.span.as_ref(),
                                &t.path,
                                format!(
                                    "duplicate route: host {:?} with path_prefix {:?} is already routed by routes[{j}]; this route would never match",
                                    route.host.pattern(),
                                    route.path_prefix
                                ),
                            );
                        }
                        routes.push(route);
                    } else {
                        // Keep indices aligned for duplicate detection messages.
                        routes.push(RouteConfig {
                            host: HostMatch::Exact(String::new()),
                            path_prefix: String::new(),
                            pool: String::new(),
                            redirect_https: false,
                        });
                    }
                }
            }
            _ => type_error(ctx, v, "routes", "an array of tables ([[routes]])"),
        },
    }
    if !routes.is_empty() {
        for (pool, used) in pools.iter().zip(&used) {
            if !used {
                let name = &pool.config.name;
                ctx.warning(
                    pool.span.as_ref(),
                    &format!("pools.{name}"),
                    format!("pool {name:?} is not used by any route"),
                );
            }
        }
    }
    routes
}

fn read_route(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    pools: &[PoolParts],
    used: &mut [bool],
    has_tls: bool,
) -> Option<RouteConfig> {
    t.check_keys(ctx, ROUTE_KEYS);
    let redirect_https = as_bool(ctx, t, "redirect_https", false);
    if redirect_https && !has_tls {
        let span = t.get("redirect_https").map(|v| v.span());
        ctx.error(
            span.as_ref(),
            &t.child("redirect_https"),
            "redirect_https = true needs an HTTPS listener to send clients to: set server.tls_listen and [[server.certificates]]",
        );
    }
    let mut ok = true;
    let host = match t.get("host") {
        None => HostMatch::Any,
        Some(v) => {
            let path = t.child("host");
            match as_str(ctx, v, &path).map(HostMatch::parse) {
                Some(Ok(h)) => h,
                Some(Err(msg)) => {
                    ctx.error(Some(&v.span()), &path, msg);
                    ok = false;
                    HostMatch::Any
                }
                None => {
                    ok = false;
                    HostMatch::Any
                }
            }
        }
    };
    let path_prefix = match t.get("path_prefix") {
        None => "/".to_string(),
        Some(v) => match path_value(ctx, v, &t.child("path_prefix"), "path_prefix") {
            Some(p) => p,
            None => {
                ok = false;
                "/".to_string()
            }
        },
    };
    let pool_path = t.child("pool");
    let pool = match t.get("pool") {
        None => {
            ctx.error(
                t.span.as_ref(),
                &pool_path,
                "missing required key `pool`: the name of the pool serving this route, e.g. pool = \"web\"",
            );
            None
        }
        Some(v) => {
            let name = as_str(ctx, v, &pool_path);
            if let Some(name) = name {
                if let Some(idx) = pools.iter().position(|p| p.config.name == name) {
                    used[idx] = true;
                } else {
                    let names: Vec<&str> = pools.iter().map(|p| p.config.name.as_str()).collect();
                    let mut msg = format!("unknown pool {name:?}; ");
                    if names.is_empty() {
                        msg.push_str("no pools are defined");
                    } else {
                        msg.push_str(&format!("defined pools: {}", names.join(", ")));
                        if let Some(s) = suggest(name, names.iter().copied()) {
                            msg.push_str(&format!(" (did you mean {s:?}?)"));
                            // The misspelt reference is reported here; do not also
                            // call the intended pool unused.
                            if let Some(idx) = names.iter().position(|n| *n == s) {
                                used[idx] = true;
                            }
                        }
                    }
                    ctx.error(Some(&v.span()), &pool_path, msg);
                }
            }
            name
        }
    };
    let pool = pool?;
    ok.then(|| RouteConfig {
        host,
        path_prefix,
        pool: pool.to_string(),
        redirect_https,
    })
}
