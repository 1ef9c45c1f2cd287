//! The request-head checks fulcrum adds on top of pingora, on arbitrary bytes.
//!
//! - The raw `Content-Length` witness agrees with what an HTTP/1 parser reads from the same
//!   head (pingora reads heads with httparse's defaults), so `Content-Length` beside
//!   `Transfer-Encoding` is refused however it is spelled.
//! - A head is refused for a missing `Host` exactly when it is HTTP/1.1 without one, and for its
//!   `Transfer-Encoding` exactly when the codings of all its lines are not one `chunked`.
//! - Hop-by-hop stripping leaves no hop-by-hop header and none that `Connection` names, keeps
//!   every other header, and changes nothing when applied twice.
#![no_main]

use http::header::{self, HeaderName};
use libfuzzer_sys::fuzz_target;
use pingora_http::{RequestHeader, ResponseHeader};

use fulcrum_proxy::service::{
    head_has_content_length, head_refusal, strip_hop_by_hop_request, strip_hop_by_hop_response,
    HeadRefusal,
};

/// pingora's limit on header lines in a request head.
const MAX_HEADERS: usize = 256;

/// Removed from every forwarded request and response (`Connection` and `Upgrade` aside).
const ALWAYS_HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
];

fuzz_target!(|data: &[u8]| {
    let raw_says = head_has_content_length(data);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(data) else {
        return;
    };
    let parsed_says = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length"));
    assert_eq!(
        head_has_content_length(&data[..len]),
        parsed_says,
        "raw witness and parser disagree on {:?}",
        String::from_utf8_lossy(&data[..len])
    );
    // Bytes after the head cannot hide a header line from the witness's view of the head.
    assert!(raw_says || !parsed_says);

    let Ok(mut request) = RequestHeader::build(
        req.method.unwrap_or(""),
        req.path.unwrap_or("").as_bytes(),
        Some(req.headers.len()),
    ) else {
        return;
    };
    let mut response = ResponseHeader::build(if data[0] & 1 == 0 { 200u16 } else { 101u16 }, None)
        .expect("a valid status");
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        request.append_header(name.clone(), value.clone()).unwrap();
        response.append_header(name, value).unwrap();
    }
    check_refusal(&mut request, &req);
    for keep_upgrade in [false, true] {
        let mut once = request.clone();
        strip_hop_by_hop_request(&mut once, keep_upgrade);
        check_stripped(&request.headers, &once.headers, keep_upgrade, true);
        let mut twice = once.clone();
        strip_hop_by_hop_request(&mut twice, keep_upgrade);
        assert_eq!(
            once.headers, twice.headers,
            "request stripping is not idempotent"
        );
    }
    let upgrade = response.status.as_u16() == 101;
    let mut once = response.clone();
    strip_hop_by_hop_response(&mut once, false);
    check_stripped(&response.headers, &once.headers, upgrade, false);
    let mut twice = once.clone();
    strip_hop_by_hop_response(&mut twice, false);
    assert_eq!(
        once.headers, twice.headers,
        "response stripping is not idempotent"
    );
});

/// `head_refusal` against the rule read straight from httparse's view of the head.
fn check_refusal(request: &mut RequestHeader, req: &httparse::Request<'_, '_>) {
    let http11 = req.version == Some(1);
    request.set_version(if http11 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    });
    let codings: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|c| c.trim_ascii())
        .collect();
    let has_host = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("host"));
    let expected = if http11 && !has_host {
        Some(HeadRefusal::MissingHost)
    } else if codings.is_empty()
        || (codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked"))
    {
        None
    } else {
        Some(HeadRefusal::TransferEncoding)
    };
    assert_eq!(head_refusal(request), expected, "{request:?}");
}

/// Header names listed in `Connection` values, lower-cased.
fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn check_stripped(
    before: &http::HeaderMap,
    after: &http::HeaderMap,
    upgrade: bool,
    is_request: bool,
) {
    for name in ALWAYS_HOP_BY_HOP {
        assert!(!after.contains_key(name), "{name} survived: {after:?}");
    }
    if is_request {
        assert!(
            !after.contains_key(header::PROXY_AUTHORIZATION),
            "{after:?}"
        );
    }
    if !upgrade {
        assert!(!after.contains_key(header::CONNECTION), "{after:?}");
        assert!(!after.contains_key(header::UPGRADE), "{after:?}");
    }
    let named = connection_tokens(before);
    for token in &named {
        let kept_for_upgrade = upgrade && (token == "upgrade" || token == "connection");
        if !kept_for_upgrade && token != "keep-alive" && token != "close" {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                assert!(
                    !after.contains_key(&name),
                    "{token} named in Connection survived"
                );
            }
        }
    }
    // Nothing else is touched.
    for (name, value) in before {
        let hop = ALWAYS_HOP_BY_HOP.contains(&name.as_str())
            || name == header::CONNECTION
            || name == header::UPGRADE
            || (is_request && name == header::PROXY_AUTHORIZATION)
            || named.iter().any(|t| t == name.as_str());
        if !hop {
            assert!(
                after.get_all(name).iter().any(|v| v == value),
                "{name}: {value:?} was removed"
            );
        }
    }
}
