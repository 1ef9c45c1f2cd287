//! `GET /` and `GET /status`: the live status page, one self-contained HTML file (inline
//! script and style, nothing fetched from elsewhere) that polls `/api/pools` and
//! `/api/decisions` on the same origin and only ever reads.

use std::sync::OnceLock;

use base64::Engine as _;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;

use crate::admin::response::{with_type, Reply};

/// The page, embedded at build time.
const PAGE: &str = include_str!("../status.html");

/// The SHA-256 of every `<tag>` element's content, as CSP sources (`'sha256-…'`).
fn hashes(page: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = ring::digest::digest(&ring::digest::SHA256, &body.as_bytes()[..end]);
        out.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
        ));
        rest = &body[end + close.len()..];
    }
    out
}

/// The page's policy: its own inline script and style (by hash), requests to its own origin,
/// nothing else — no other script, no frames, no forms, no plugins.
fn content_security_policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes(page, "script").join(" "),
        hashes(page, "style").join(" ")
    )
}

/// The status page with its security headers; never cached, since it shows live state.
pub(crate) fn get() -> Reply {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    let csp = CSP.get_or_init(|| {
        HeaderValue::from_str(&content_security_policy(PAGE))
            .expect("hashes and fixed text are valid header characters")
    });
    let mut reply = with_type(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    let headers = reply.headers_mut();
    headers.insert("content-security-policy", csp.clone());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_one_hash_per_inline_block() {
        let page = "<style>a{}</style><script>1</script><script>2</script>";
        let csp = content_security_policy(page);
        assert_eq!(csp.matches("'sha256-").count(), 3, "{csp}");
        assert!(!csp.contains("unsafe-inline"));
        // echo -n 1 | openssl dgst -sha256 -binary | base64
        assert!(csp.contains("'sha256-a4ayc/80/OGda4BO/1o/V0etpOqiLx1JwB5S3beHW0s='"));
    }

    #[test]
    fn the_page_is_self_contained_and_read_only() {
        let csp = content_security_policy(PAGE);
        assert_eq!(hashes(PAGE, "script").len(), 1, "one inline script");
        assert_eq!(hashes(PAGE, "style").len(), 1, "one inline style");
        assert!(csp.contains("connect-src 'self'"));
        // Nothing from elsewhere, and no request but reads.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "SVG_NS");
        for banned in [
            "http://", "https://", "src=", "method:", "POST", "PUT", "DELETE",
        ] {
            assert!(!page.contains(banned), "the page contains {banned:?}");
        }
    }
}
