//! Host and path-prefix routing: the most specific route wins.
//!
//! Routes are sorted once when the configuration is loaded — exact host before
//! `*.suffix` before `*`, then the longest path prefix — so matching is a linear scan that
//! stops at the first hit.

use fulcrum_config::{HostMatch, RouteConfig};

/// One compiled route.
#[derive(Debug, Clone)]
struct Route {
    host: HostMatch,
    path_prefix: String,
    pool: usize,
    redirect_https: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// The index of the pool serving it.
    pub pool: usize,
    /// Whether a cleartext request is redirected to HTTPS instead (`redirect_https`).
    pub redirect_https: bool,
}

/// The routing table for one configuration.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Compile `routes`; `pool_index` maps a pool name to its index (validated configs only).
    pub fn new(routes: &[RouteConfig], pool_index: impl Fn(&str) -> Option<usize>) -> Self {
        let mut compiled: Vec<Route> = routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    pool: pool_index(&r.pool)?,
                    redirect_https: r.redirect_https,
                })
            })
            .collect();
        // Stable sort keeps file order among equally specific routes.
        compiled.sort_by(|a, b| {
            b.host
                .specificity()
                .cmp(&a.host.specificity())
                .then_with(|| suffix_len(&b.host).cmp(&suffix_len(&a.host)))
                .then_with(|| b.path_prefix.len().cmp(&a.path_prefix.len()))
        });
        Router { routes: compiled }
    }

    /// The pool index for a request; `host` is lowercase without a port.
    pub fn route(&self, host: &str, path: &str) -> Option<usize> {
        self.find(host, path).map(|r| r.pool)
    }

    /// The route a request takes; `host` is lowercase without a port.
    pub fn find(&self, host: &str, path: &str) -> Option<Routed> {
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && path_matches(&r.path_prefix, path))
            .map(|r| Routed {
                pool: r.pool,
                redirect_https: r.redirect_https,
            })
    }
}

fn suffix_len(host: &HostMatch) -> usize {
    match host {
        HostMatch::Suffix(s) => s.len(),
        _ => 0,
    }
}

/// A prefix matches the path itself and anything below it; `/api` matches `/api`, `/api/x` and
/// `/api?x`, but a prefix without a trailing slash also matches `/apix`, as in nginx.
fn path_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
}

/// Normalise a Host header value: strip the port, lowercase. Borrows when already clean.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep through the closing bracket.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(i) => &raw[..i],
            None => raw,
        }
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, prefix: &str, pool: &str) -> RouteConfig {
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(s) = host.strip_prefix('*') {
            HostMatch::Suffix(s.to_string())
        } else {
            HostMatch::Exact(host.to_string())
        };
        RouteConfig {
            host,
            path_prefix: prefix.to_string(),
            pool: pool.to_string(),
            redirect_https: false,
        }
    }

    fn router() -> Router {
        let routes = vec![
            route("*", "/", "default"),
            route("*", "/api", "api"),
            route("*.example.com", "/", "wild"),
            route("shop.example.com", "/", "shop"),
            route("shop.example.com", "/cart", "cart"),
        ];
        let names = ["default", "api", "wild", "shop", "cart"];
        Router::new(&routes, |n| names.iter().position(|x| *x == n))
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router();
        assert_eq!(r.route("other.org", "/"), Some(0));
        assert_eq!(r.route("other.org", "/api/v1"), Some(1));
        assert_eq!(r.route("a.example.com", "/api"), Some(2));
        assert_eq!(r.route("shop.example.com", "/"), Some(3));
        assert_eq!(r.route("shop.example.com", "/cart/1"), Some(4));
        assert_eq!(r.route("example.com", "/x"), Some(0));
    }

    #[test]
    fn no_route_is_none() {
        let routes = vec![route("api.example.com", "/v1", "api")];
        let r = Router::new(&routes, |_| Some(0));
        assert_eq!(r.route("api.example.com", "/v2"), None);
        assert_eq!(r.route("other", "/v1"), None);
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
    }
}
