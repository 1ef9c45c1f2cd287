//! Writing a [`Config`] back out as TOML in the format of `config/fulcrum.toml`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::model::{Config, ControlConfig, Discovery, WeightSource};
use crate::pool_defaults;

/// A TOML basic string literal for `s`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A table key, bare when possible and quoted otherwise.
fn key(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        s.to_string()
    } else {
        quote(s)
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// A TOML float literal that reads back as exactly `x` (always with a `.` or exponent).
fn float(x: f64) -> String {
    format!("{x:?}")
}

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

impl Config {
    /// Serialise into TOML that [`crate::parse`] reads back into an equal `Config`.
    ///
    /// Every setting is written explicitly, defaults included, but for the slow-start keys,
    /// written only when they differ from their defaults, and `[pools.NAME.tls]`, written for
    /// pools that speak TLS. A pool with `discovery = "dns"` is written with its names, not the
    /// addresses they resolved to. TLS material is written as its files' paths; reading the result
    /// back reads those files. Durations are written in whole
    /// milliseconds. The admin token is written as its file's path only, never as the secret;
    /// reading the result back reads that file. The `[control]` section is written when a pool
    /// uses `weights = "model"` or the control settings differ from the defaults.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let listen: Vec<String> = self
            .server
            .listen
            .iter()
            .map(|a| quote(&a.to_string()))
            .collect();
        let _ = writeln!(out, "[server]");
        let _ = writeln!(out, "listen = [{}]", listen.join(", "));
        let _ = writeln!(out, "threads = {}", self.server.threads);
        let _ = writeln!(out, "grace_period_s = {}", self.server.grace_period_s);
        let _ = writeln!(out, "drain_delay_s = {}", self.server.drain_delay_s);
        let _ = writeln!(out, "body_timeout_ms = {}", ms(self.server.body_timeout));
        let _ = writeln!(
            out,
            "upgrade_sock = {}",
            quote(&self.server.upgrade_sock.to_string_lossy())
        );
        let tls_listen: Vec<String> = self
            .server
            .tls_listen
            .iter()
            .map(|a| quote(&a.to_string()))
            .collect();
        let _ = writeln!(out, "tls_listen = [{}]", tls_listen.join(", "));
        let _ = writeln!(
            out,
            "tls_min_version = {}",
            quote(self.server.tls_min_version.as_str())
        );
        let limits = &self.server.limits;
        let _ = writeln!(out, "max_connections = {}", limits.max_connections);
        let _ = writeln!(
            out,
            "header_timeout_ms = {}",
            limits.header_timeout.as_millis()
        );
        let _ = writeln!(
            out,
            "keepalive_timeout_ms = {}",
            limits.keepalive_timeout.as_millis()
        );
        let _ = writeln!(out, "max_header_bytes = {}", limits.max_header_bytes);
        let _ = writeln!(
            out,
            "max_request_line_bytes = {}",
            limits.max_request_line_bytes
        );
        if let Some(resolver) = &self.server.dns_resolver {
            let _ = writeln!(out, "dns_resolver = {}", quote(&resolver.to_string()));
        }
        for c in &self.server.certificates {
            let _ = writeln!(out);
            let _ = writeln!(out, "[[server.certificates]]");
            let _ = writeln!(out, "cert = {}", path(&c.cert));
            let _ = writeln!(out, "key = {}", path(&c.key));
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "[admin]");
        let _ = writeln!(out, "listen = {}", quote(&self.admin.listen.to_string()));
        if let Some(token_file) = &self.admin.token_file {
            let _ = writeln!(out, "token_file = {}", path(token_file));
        }
        let _ = writeln!(out, "protect_metrics = {}", self.admin.protect_metrics);
        for route in &self.routes {
            let _ = writeln!(out);
            let _ = writeln!(out, "[[routes]]");
            let _ = writeln!(out, "host = {}", quote(&route.host.pattern()));
            let _ = writeln!(out, "path_prefix = {}", quote(&route.path_prefix));
            let _ = writeln!(out, "pool = {}", quote(&route.pool));
            let _ = writeln!(out, "redirect_https = {}", route.redirect_https);
        }
        for pool in &self.pools {
            let name = key(&pool.name);
            let _ = writeln!(out);
            let _ = writeln!(out, "[pools.{name}]");
            let _ = writeln!(out, "algorithm = {}", quote(pool.algorithm.as_str()));
            let _ = writeln!(out, "weights = {}", quote(pool.weights.as_str()));
            let _ = writeln!(out, "connect_timeout_ms = {}", ms(pool.connect_timeout));
            let _ = writeln!(out, "read_timeout_ms = {}", ms(pool.read_timeout));
            let _ = writeln!(out, "write_timeout_ms = {}", ms(pool.write_timeout));
            let _ = writeln!(out, "idle_timeout_ms = {}", ms(pool.idle_timeout));
            let _ = writeln!(out, "retries = {}", pool.retries);
            let _ = writeln!(out, "ewma_decay_ms = {}", ms(pool.ewma_decay));
            let _ = writeln!(
                out,
                "max_consecutive_failures = {}",
                pool.max_consecutive_failures
            );
            if let Discovery::Dns { refresh, .. } = &pool.discovery {
                let _ = writeln!(out, "discovery = \"dns\"");
                let _ = writeln!(out, "dns_refresh_ms = {}", ms(*refresh));
            }
            let _ = writeln!(out, "request_buffer_bytes = {}", pool.request_buffer_bytes);
            if !pool.slow_start.is_zero() {
                let _ = writeln!(out, "slow_start_ms = {}", ms(pool.slow_start));
            }
            if pool.slow_start_min_percent != pool_defaults::SLOW_START_MIN_PERCENT {
                let _ = writeln!(
                    out,
                    "slow_start_min_percent = {}",
                    pool.slow_start_min_percent
                );
            }
            let hc = &pool.health_check;
            let _ = writeln!(out);
            let _ = writeln!(out, "[pools.{name}.health_check]");
            let _ = writeln!(out, "enabled = {}", hc.enabled);
            let _ = writeln!(out, "path = {}", quote(&hc.path));
            if let Some(host) = &hc.host {
                let _ = writeln!(out, "host = {}", quote(host));
            }
            let _ = writeln!(out, "interval_ms = {}", ms(hc.interval));
            let _ = writeln!(out, "timeout_ms = {}", ms(hc.timeout));
            let _ = writeln!(out, "unhealthy_threshold = {}", hc.unhealthy_threshold);
            let _ = writeln!(out, "healthy_threshold = {}", hc.healthy_threshold);
            if let Some(tls) = &pool.tls {
                let _ = writeln!(out);
                let _ = writeln!(out, "[pools.{name}.tls]");
                if let Some(sni) = &tls.sni {
                    let _ = writeln!(out, "sni = {}", quote(sni));
                }
                if let Some(ca) = &tls.ca_file {
                    let _ = writeln!(out, "ca_file = {}", path(ca));
                }
                let _ = writeln!(out, "verify = {}", tls.verify);
                if let Some(cert) = &tls.client_cert {
                    let _ = writeln!(out, "client_cert = {}", path(cert));
                }
                if let Some(key) = &tls.client_key {
                    let _ = writeln!(out, "client_key = {}", path(key));
                }
            }
            if let Some(a) = &pool.autoscale {
                let _ = writeln!(out);
                let _ = writeln!(out, "[pools.{name}.autoscale]");
                let _ = writeln!(out, "target_utilization = {}", float(a.target_utilization));
                let _ = writeln!(out, "min_backends = {}", a.min_backends);
                let _ = writeln!(out, "max_backends = {}", a.max_backends);
                let _ = writeln!(out, "horizon_s = {}", float(a.horizon.as_secs_f64()));
                let _ = writeln!(out, "step_s = {}", float(a.step.as_secs_f64()));
                let _ = writeln!(
                    out,
                    "scale_down_stabilization_s = {}",
                    float(a.scale_down_stabilization.as_secs_f64())
                );
                let _ = writeln!(out, "spare_backends = {}", a.spare_backends);
                let _ = writeln!(out, "burst_spare_backends = {}", a.burst_spare_backends);
                let _ = writeln!(
                    out,
                    "burst_memory_s = {}",
                    float(a.burst_memory.as_secs_f64())
                );
                if let Some(m) = &a.forecast_model {
                    let _ = writeln!(out, "forecast_model = {}", path(m));
                }
                if let Some(h) = &a.history_file {
                    let _ = writeln!(out, "history_file = {}", path(h));
                }
                if let Some(p) = &a.history_prometheus {
                    let _ = writeln!(out, "history_prometheus = {}", quote(p));
                }
                if let Some(q) = &a.history_query {
                    let _ = writeln!(out, "history_query = {}", quote(q));
                }
                if let Some(c) = a.backend_capacity_rps {
                    let _ = writeln!(out, "backend_capacity_rps = {}", float(c));
                }
            }
            let backends: Vec<(String, u32)> = match &pool.discovery {
                Discovery::Static => pool
                    .backends
                    .iter()
                    .map(|b| (b.addr.to_string(), b.weight))
                    .collect(),
                Discovery::Dns { names, .. } => {
                    names.iter().map(|n| (n.to_string(), n.weight)).collect()
                }
            };
            for (addr, weight) in backends {
                let _ = writeln!(out);
                let _ = writeln!(out, "[[pools.{name}.backends]]");
                let _ = writeln!(out, "addr = {}", quote(&addr));
                let _ = writeln!(out, "weight = {weight}");
            }
        }
        let model_pools = self.pools.iter().any(|p| p.weights == WeightSource::Model);
        if model_pools || self.control != ControlConfig::default() {
            let c = &self.control;
            let _ = writeln!(out);
            let _ = writeln!(out, "[control]");
            let _ = writeln!(out, "tick_ms = {}", ms(c.tick));
            let _ = writeln!(out, "model = {}", path(&c.model));
            if let Some(lib) = &c.ort_library {
                let _ = writeln!(out, "ort_library = {}", path(lib));
            }
            let _ = writeln!(out, "inference_budget_ms = {}", ms(c.inference_budget));
            let _ = writeln!(out, "floor = {}", float(c.floor));
            let _ = writeln!(out, "ceiling = {}", float(c.ceiling));
            let _ = writeln!(out, "max_step = {}", float(c.max_step));
            let _ = writeln!(out, "probes = {}", c.probes);
            let _ = writeln!(out, "decisions = {}", c.decisions);
            if let Some(record) = &c.record {
                let _ = writeln!(out, "record = {}", path(record));
            }
            let _ = writeln!(out, "watch_model = {}", c.watch_model);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(key("web-1_x"), "web-1_x");
        assert_eq!(key("a b"), "\"a b\"");
        assert_eq!(float(8.0), "8.0");
        assert_eq!(float(0.05), "0.05");
        assert_eq!(float(1e-7), "1e-7");
    }
}
