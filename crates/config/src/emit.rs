//! Writing a [`Config`] back out as TOML in the format of `config/fulcrum.toml`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::Config;

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

impl Config {
    /// Serialise into TOML that [`crate::parse`] reads back into an equal `Config`.
    ///
    /// Every setting is written explicitly, defaults included. Durations are
    /// written in whole milliseconds.
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
        let _ = writeln!(out);
        let _ = writeln!(out, "[admin]");
        let _ = writeln!(out, "listen = {}", quote(&self.admin.listen.to_string()));
        for route in &self.routes {
            let _ = writeln!(out);
            let _ = writeln!(out, "[[routes]]");
            let _ = writeln!(out, "host = {}", quote(&route.host.pattern()));
            let _ = writeln!(out, "path_prefix = {}", quote(&route.path_prefix));
            let _ = writeln!(out, "pool = {}", quote(&route.pool));
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
            for b in &pool.backends {
                let _ = writeln!(out);
                let _ = writeln!(out, "[[pools.{name}.backends]]");
                let _ = writeln!(out, "addr = {}", quote(&b.addr.to_string()));
                let _ = writeln!(out, "weight = {}", b.weight);
            }
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
    }
}
