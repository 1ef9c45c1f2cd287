//! Answers shared by the admin routes: plain text, JSON, and the usual refusals.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;

/// Every admin answer: a whole body, known before the head is sent.
pub(crate) type Reply = Response<Full<Bytes>>;

/// An answer with `status`, `content_type` and `body`.
pub(crate) fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// A `text/plain` answer.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    with_type(status, "text/plain", body)
}

/// A 200 answer with `doc` as pretty-printed JSON.
pub(crate) fn json(doc: &impl Serialize) -> Reply {
    let body = serde_json::to_vec_pretty(doc).unwrap_or_default();
    with_type(StatusCode::OK, "application/json", body)
}

/// 404 with `body`.
pub(crate) fn not_found(body: impl Into<Bytes>) -> Reply {
    text(StatusCode::NOT_FOUND, body)
}

/// 405 with `body`, which says what the path does accept.
pub(crate) fn method_not_allowed(body: &'static str) -> Reply {
    text(StatusCode::METHOD_NOT_ALLOWED, body)
}

/// 422: the request was understood and refused for the reasons in `body`.
pub(crate) fn unprocessable(body: impl Into<Bytes>) -> Reply {
    text(StatusCode::UNPROCESSABLE_ENTITY, body)
}

/// 503: the part of the proxy that would answer is not running.
pub(crate) fn unavailable(body: &'static str) -> Reply {
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// 401 with `WWW-Authenticate: Bearer`; `invalid` adds `error="invalid_token"` (RFC 6750) for
/// a token that was sent and is wrong.
pub(crate) fn unauthorized(body: &'static str, invalid: bool) -> Reply {
    let challenge = if invalid {
        r#"Bearer realm="fulcrum admin", error="invalid_token""#
    } else {
        r#"Bearer realm="fulcrum admin""#
    };
    let mut reply = text(StatusCode::UNAUTHORIZED, body);
    reply.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static(challenge),
    );
    reply
}

/// 403 with `body`, which says what would be allowed.
pub(crate) fn forbidden(body: &'static str) -> Reply {
    text(StatusCode::FORBIDDEN, body)
}

/// 415 with `body`, which names the accepted media type.
pub(crate) fn unsupported_media_type(body: &'static str) -> Reply {
    text(StatusCode::UNSUPPORTED_MEDIA_TYPE, body)
}
