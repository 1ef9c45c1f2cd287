//! Who may call which admin endpoint, decided in one place before any route runs.
//!
//! - With `admin.token_file`, every `/api/*` request (and `/metrics` with
//!   `admin.protect_metrics`) needs `Authorization: Bearer <token>`; the health probes never do.
//! - Without a token, a listener on a non-loopback address is read-only: the endpoints that
//!   change state answer 403 naming `token_file`.
//! - The endpoints that change state take only `Content-Type: application/json`, even with an
//!   empty body, and refuse an `Origin` other than the listener's own. A page on another site
//!   can then neither submit a form to them (forms send only `text/plain`, urlencoded or
//!   multipart bodies) nor script them (a JSON request from another origin needs a CORS
//!   preflight, which this listener never grants), and a DNS-rebound name is not the listener's
//!   origin either.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fulcrum_config::AdminConfig;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::HeaderMap;

use crate::admin::response::{forbidden, unauthorized, unsupported_media_type, Reply};

/// What an endpoint asks of a request before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Health probes (and unknown paths outside `/api`): always answered.
    Open,
    /// `/metrics`: needs the token only with `admin.protect_metrics`.
    Metrics,
    /// A read under `/api`: needs the token when one is set.
    Read,
    /// An endpoint that changes state: the token (or, without one, a loopback listener), a
    /// JSON body and no foreign `Origin`.
    Change,
}

impl Access {
    /// What reading `path` needs, whatever the route behind it.
    pub(crate) fn of_path(path: &str) -> Access {
        if path == "/api" || path.starts_with("/api/") {
            Access::Read
        } else if path == "/metrics" {
            Access::Metrics
        } else {
            Access::Open
        }
    }
}

/// Why a request was refused; [`Refusal::reply`] says it to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No bearer token was sent (401).
    NoToken,
    /// A bearer token was sent and is not the configured one (401).
    WrongToken,
    /// A state change on a non-loopback listener that has no token (403).
    ReadOnly,
    /// A state change from a page of another origin (403).
    ForeignOrigin,
    /// A state change whose body is not declared as JSON (415).
    NotJson,
}

impl Refusal {
    /// The answer: its status, the reason, and what would be accepted.
    pub(crate) fn reply(self) -> Reply {
        match self {
            Refusal::NoToken => unauthorized(
                "this endpoint needs Authorization: Bearer <the token in admin.token_file>\n",
                false,
            ),
            Refusal::WrongToken => unauthorized(
                "the bearer token is not the one in admin.token_file\n",
                true,
            ),
            Refusal::ReadOnly => forbidden(
                "this admin listener is not on a loopback address and has no admin.token_file, \
                 so it is read-only; set admin.token_file to change state through it\n",
            ),
            Refusal::ForeignOrigin => forbidden(
                "cross-origin request refused: Origin must be the admin listener's own \
                 (http://<admin.listen>, or http://localhost:PORT or http://IP:PORT as sent in \
                 Host); scripts should send no Origin\n",
            ),
            Refusal::NotJson => unsupported_media_type(
                "send Content-Type: application/json (reloads too, with an empty body); form and \
                 text bodies are refused so that no web page can submit this request\n",
            ),
        }
    }
}

/// Admit a request that needs `access`, on the listener bound to `listen` and configured by
/// `admin`, or say why not: no or a wrong token, a state change on an exposed listener without
/// a token or from a foreign origin, a body that is not JSON.
pub(crate) fn check(
    access: Access,
    headers: &HeaderMap,
    listen: SocketAddr,
    admin: &AdminConfig,
) -> Result<(), Refusal> {
    let needs_token = match access {
        Access::Open => false,
        Access::Metrics => admin.protect_metrics,
        Access::Read | Access::Change => true,
    };
    if let (true, Some(token)) = (needs_token, &admin.token) {
        match bearer(headers) {
            None => return Err(Refusal::NoToken),
            Some(presented) if !token.matches(presented) => return Err(Refusal::WrongToken),
            Some(_) => {}
        }
    }
    if access != Access::Change {
        return Ok(());
    }
    if admin.token.is_none() && !listen.ip().is_loopback() {
        return Err(Refusal::ReadOnly);
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        if !same_origin(origin.to_str().unwrap_or(""), host, listen) {
            return Err(Refusal::ForeignOrigin);
        }
    }
    if !is_json(headers) {
        return Err(Refusal::NotJson);
    }
    Ok(())
}

/// The credentials of an `Authorization` header with the `Bearer` scheme (any case).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[start..])
}

/// Whether the request has exactly one `Content-Type`, of media type `application/json`
/// (parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let media_type = value.to_str().unwrap_or("").split(';').next().unwrap_or("");
    media_type.trim().eq_ignore_ascii_case("application/json")
}

/// Whether the `Origin` value `origin` is the admin listener's own origin.
///
/// Two origins qualify. `http://<admin.listen>` itself. And `http://<Host>`, the address the
/// client used to reach this listener, when that host is an IP address or `localhost`: so
/// `http://localhost:9900` works on a listener bound to `127.0.0.1:9900`, as do
/// `http://10.0.0.5:9900` on one bound to `0.0.0.0:9900` and a port forwarded to it. A host
/// *name* from `Host` is never trusted: an attacker's page at `http://evil.example:9900` whose
/// name they re-point at this machine (DNS rebinding) sends exactly that `Host` and `Origin`.
fn same_origin(origin: &str, host: Option<&str>, listen: SocketAddr) -> bool {
    let Some(origin) = origin
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .and_then(|_| Authority::parse(&origin[7..]))
    else {
        return false;
    };
    let own = Authority {
        host: Host::Ip(listen.ip()),
        port: listen.port(),
    };
    if origin == own {
        return true;
    }
    host.and_then(Authority::parse)
        .is_some_and(|host| host == origin && host.cannot_be_rebound())
}

/// A host and port as written in `Origin` (after the scheme) or `Host`.
#[derive(Debug, PartialEq, Eq)]
struct Authority {
    host: Host,
    /// The port; 80 when none is written.
    port: u16,
}

#[derive(Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    /// A DNS name, lowercased.
    Name(String),
}

impl Authority {
    /// `host[:port]`, `[v6]:port`; `None` for anything else (user info, paths, empty parts).
    fn parse(s: &str) -> Option<Authority> {
        let (host, port) = match s.strip_prefix('[') {
            Some(rest) => {
                let (ip, port) = rest.split_once(']')?;
                (Host::Ip(IpAddr::V6(ip.parse().ok()?)), port)
            }
            None => {
                let (name, port) = s.split_at(s.find(':').unwrap_or(s.len()));
                let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
                if name.is_empty() || !name.chars().all(valid) {
                    return None;
                }
                let host = match name.parse::<Ipv4Addr>() {
                    Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                    Err(_) => Host::Name(name.to_ascii_lowercase()),
                };
                (host, port)
            }
        };
        let port = match port {
            "" => 80,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        Some(Authority { host, port })
    }

    /// Whether no DNS answer can make this host lead somewhere else: an IP address, or
    /// `localhost`, which browsers resolve to loopback themselves.
    fn cannot_be_rebound(&self) -> bool {
        match &self.host {
            Host::Ip(_) => true,
            Host::Name(name) => name == "localhost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use hyper::StatusCode;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_listeners_own_origin_is_accepted() {
        let l = addr("127.0.0.1:9900");
        assert!(same_origin("http://127.0.0.1:9900", None, l));
        assert!(same_origin("HTTP://127.0.0.1:9900", None, l));
        assert!(same_origin("http://[::1]:9900", None, addr("[::1]:9900")));
        assert!(same_origin("http://127.0.0.1", None, addr("127.0.0.1:80")));
    }

    #[test]
    fn the_host_derived_origin_is_accepted_for_addresses_and_localhost() {
        let l = addr("127.0.0.1:9900");
        assert!(same_origin(
            "http://localhost:9900",
            Some("localhost:9900"),
            l
        ));
        assert!(same_origin(
            "http://LocalHost:9900",
            Some("localhost:9900"),
            l
        ));
        // A port forwarded to the listener.
        assert!(same_origin(
            "http://localhost:19900",
            Some("localhost:19900"),
            l
        ));
        let any = addr("0.0.0.0:9900");
        assert!(same_origin(
            "http://10.1.2.3:9900",
            Some("10.1.2.3:9900"),
            any
        ));
    }

    #[test]
    fn foreign_rebound_and_malformed_origins_are_refused() {
        let l = addr("127.0.0.1:9900");
        // Another site.
        assert!(!same_origin(
            "http://evil.example",
            Some("127.0.0.1:9900"),
            l
        ));
        // DNS rebinding: the attacker's name now points here, Host and Origin agree.
        assert!(!same_origin(
            "http://evil.example:9900",
            Some("evil.example:9900"),
            l
        ));
        // Another port on the same machine is another origin.
        assert!(!same_origin("http://127.0.0.1:8080", None, l));
        assert!(!same_origin(
            "http://localhost:8080",
            Some("localhost:9900"),
            l
        ));
        for bad in [
            "null",
            "",
            "https://127.0.0.1:9900",
            "http://127.0.0.1:9900/",
            "http://user@127.0.0.1:9900",
            "http://127.0.0.1:",
            "http://",
        ] {
            assert!(!same_origin(bad, Some("127.0.0.1:9900"), l), "{bad:?}");
        }
    }

    #[test]
    fn media_type_must_be_json_alone() {
        assert!(is_json(&headers(&[("content-type", "application/json")])));
        assert!(is_json(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )])));
        for form in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(&headers(&[("content-type", form)])), "{form}");
        }
        assert!(!is_json(&headers(&[])));
        assert!(!is_json(&headers(&[
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ])));
    }

    #[test]
    fn bearer_credentials_are_found_in_any_case() {
        let h = headers(&[("authorization", "bearer  abc")]);
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(bearer(&headers(&[])), None);
    }

    fn with_token() -> AdminConfig {
        let token = fulcrum_config::AdminToken::from_file_contents(b"t0ken-t0ken-t0ken");
        AdminConfig {
            token: Some(token.unwrap()),
            ..AdminConfig::default()
        }
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn without_a_token_loopback_is_open_and_other_addresses_read_only() {
        let open = AdminConfig::default();
        let lo = addr("127.0.0.1:9900");
        let any = addr("0.0.0.0:9900");
        let json = headers(&[JSON]);
        for access in [Access::Open, Access::Metrics, Access::Read] {
            assert_eq!(check(access, &json, any, &open), Ok(()));
        }
        assert_eq!(check(Access::Change, &json, lo, &open), Ok(()));
        assert_eq!(
            check(Access::Change, &json, any, &open),
            Err(Refusal::ReadOnly)
        );
        let text = headers(&[("content-type", "text/plain")]);
        assert_eq!(
            check(Access::Change, &text, lo, &open),
            Err(Refusal::NotJson)
        );
        let foreign = headers(&[JSON, ("origin", "http://evil.example")]);
        assert_eq!(
            check(Access::Change, &foreign, lo, &open),
            Err(Refusal::ForeignOrigin)
        );
    }

    #[test]
    fn with_a_token_the_api_needs_it_and_the_probes_do_not() {
        let admin = with_token();
        let any = addr("0.0.0.0:9900");
        let none = headers(&[JSON]);
        let wrong = headers(&[JSON, ("authorization", "Bearer t0ken-t0ken-t0keN")]);
        let right = headers(&[JSON, ("authorization", "Bearer t0ken-t0ken-t0ken")]);
        for access in [Access::Read, Access::Change] {
            assert_eq!(check(access, &none, any, &admin), Err(Refusal::NoToken));
            assert_eq!(check(access, &wrong, any, &admin), Err(Refusal::WrongToken));
            assert_eq!(check(access, &right, any, &admin), Ok(()));
        }
        assert_eq!(check(Access::Open, &none, any, &admin), Ok(()));
        assert_eq!(check(Access::Metrics, &none, any, &admin), Ok(()));
        let protected = AdminConfig {
            protect_metrics: true,
            ..with_token()
        };
        assert_eq!(
            check(Access::Metrics, &none, any, &protected),
            Err(Refusal::NoToken)
        );
        assert_eq!(check(Access::Metrics, &right, any, &protected), Ok(()));
        assert_eq!(check(Access::Open, &none, any, &protected), Ok(()));
    }

    #[test]
    fn refusals_answer_with_their_status_and_challenge() {
        let status = |r: Refusal| r.reply().status();
        assert_eq!(status(Refusal::NoToken), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Refusal::WrongToken), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Refusal::ReadOnly), StatusCode::FORBIDDEN);
        assert_eq!(status(Refusal::ForeignOrigin), StatusCode::FORBIDDEN);
        assert_eq!(status(Refusal::NotJson), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let challenge = |r: Refusal| {
            let reply = r.reply();
            reply.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            challenge(Refusal::NoToken),
            r#"Bearer realm="fulcrum admin""#
        );
        assert!(challenge(Refusal::WrongToken).contains(r#"error="invalid_token""#));
    }

    #[test]
    fn paths_under_api_are_reads_and_metrics_is_its_own() {
        assert_eq!(Access::of_path("/api/pools"), Access::Read);
        assert_eq!(Access::of_path("/api/unknown"), Access::Read);
        assert_eq!(Access::of_path("/api"), Access::Read);
        assert_eq!(Access::of_path("/apix"), Access::Open);
        assert_eq!(Access::of_path("/metrics"), Access::Metrics);
        assert_eq!(Access::of_path("/healthz"), Access::Open);
        assert_eq!(Access::of_path("/readyz"), Access::Open);
    }
}
