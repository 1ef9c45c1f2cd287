//! Request bodies: small ones read whole before a backend is picked, and the body failures
//! (a client that stops sending, broken framing) told apart from a client that hung up.
//!
//! Reading a small body first (nginx's `proxy_request_buffering`, HAProxy's
//! `http-buffer-request`) means a slow client holds a client connection only, never a backend
//! connection, and a body whose framing is broken (invalid chunks, an HTTP/2 `content-length`
//! the DATA frames disagree with) is refused before any byte reaches a backend.
//!
//! The body is read into pingora's replay buffer, the one a retry sends again: pingora sends that
//! buffer as the body of the first attempt and of every retry, so a buffered body is replayed
//! byte for byte. The buffer holds 64 KiB, which bounds `request_buffer_bytes`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// pingora's replay buffer: a body read beyond it is no longer replayable.
const REPLAY_BUFFER_BYTES: usize = fulcrum_config::pool_defaults::REQUEST_BUFFER_BYTES_MAX;

/// The most an HTTP/2 DATA frame carries: `SETTINGS_MAX_FRAME_SIZE`'s default, which fulcrum
/// does not raise. One read of an HTTP/2 body returns at most one frame.
const H2_MAX_FRAME_BYTES: usize = 16_384;

/// What reading the body ahead of the backend left behind.
#[derive(Debug, Default)]
pub enum Buffered {
    /// Nothing was read: buffering is off, the request is an upgrade, or its `Content-Length`
    /// is above the limit. The body streams as it arrives.
    #[default]
    NotRead,
    /// The whole body was read; pingora sends it from its replay buffer.
    Whole,
    /// The body passed the limit: what was read goes first and the rest streams. `Some` holds
    /// the bytes read when they outgrew pingora's replay buffer, to be sent before the rest.
    Partial(Option<Bytes>),
}

impl Buffered {
    /// Whether the whole body was read before the backend was picked.
    pub fn is_whole(&self) -> bool {
        matches!(self, Buffered::Whole)
    }

    /// Put the bytes read ahead, if pingora does not hold them, in front of the first piece
    /// of body pingora sends upstream. Call from `request_body_filter`.
    pub fn restore_prefix(&mut self, body: &mut Option<Bytes>) {
        let Buffered::Partial(prefix) = self else {
            return;
        };
        let Some(prefix) = prefix.take() else { return };
        *body = Some(match body.take() {
            Some(rest) if !rest.is_empty() => {
                let mut joined = BytesMut::with_capacity(prefix.len() + rest.len());
                joined.extend_from_slice(&prefix);
                joined.extend_from_slice(&rest);
                joined.freeze()
            }
            _ => prefix,
        });
    }
}

/// The request's `Content-Length`, when it has one fulcrum can read. pingora has already
/// refused conflicting values.
fn declared_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether an HTTP/1.1 client waits for `100 Continue` before it sends the body.
fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Read the request body ahead of the backend when it is at most `limit` bytes, waiting at
/// most `timeout` for each piece of it.
///
/// A body declared larger than `limit` is not read at all. A body of unknown length (chunked,
/// or HTTP/2 without `content-length`) is read until it ends or passes `limit`; past the limit
/// the rest streams. Errors are the client's: a timeout is `ReadTimedout`, broken framing keeps
/// pingora's error type (see [`failure`]); all are marked as coming from the client.
pub async fn read_ahead(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
) -> Result<Buffered> {
    let limit = limit.min(REPLAY_BUFFER_BYTES);
    if limit == 0 || session.is_upgrade_req() {
        return Ok(Buffered::NotRead);
    }
    let h2 = session.as_downstream().is_http2();
    if !h2 && session.as_downstream_mut().is_body_empty() {
        return Ok(Buffered::NotRead);
    }
    // An HTTP/2 `content-length: 0` still has to be read: DATA frames after it make the request
    // malformed (RFC 9113 §8.1.1), and only reading finds them.
    let declared = declared_length(session.req_header());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Buffered::NotRead);
    }
    // A declared length bounds what is read. An unknown one is read until it passes the limit;
    // on HTTP/2 a frame early, so that what was read always fits the replay buffer.
    let stop_after = match (declared, h2) {
        (Some(_), _) => usize::MAX,
        (None, true) => limit.saturating_sub(H2_MAX_FRAME_BYTES),
        (None, false) => limit,
    };
    if !h2 && expects_continue(session.req_header()) {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|e| e.into_down())?;
    }
    session.as_downstream_mut().enable_retry_buffering();
    let mut read = Vec::new();
    let mut total = 0usize;
    loop {
        let next = tokio::time::timeout(timeout, session.as_downstream_mut().read_request_body());
        let piece = crate::limits::evictable(next)
            .await
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::ReadTimedout,
                    "the connection cap was reached while the client was still sending a body \
                     that fulcrum buffers; its connection was closed to make room",
                )
                .into_down()
            })?
            .map_err(|_| {
                Error::explain(
                    ErrorType::ReadTimedout,
                    format!("client sent no request body bytes for {timeout:?}"),
                )
                .into_down()
            })?
            .map_err(|e| e.into_down())?;
        let Some(piece) = piece else {
            return Ok(Buffered::Whole);
        };
        total += piece.len();
        read.push(piece);
        if session.as_downstream_mut().is_body_done() {
            return Ok(Buffered::Whole);
        }
        if total > stop_after {
            break;
        }
    }
    // Only an HTTP/1.1 chunk can carry the total past the replay buffer, and a chunk never ends
    // the body by itself (the last chunk is a read of its own), so pingora still reads the
    // rest and the bytes read here go in front of it.
    let prefix = session.as_ref().retry_buffer_truncated().then(|| {
        let mut joined = BytesMut::with_capacity(total);
        for piece in &read {
            joined.extend_from_slice(piece);
        }
        joined.freeze()
    });
    Ok(Buffered::Partial(prefix))
}

/// How reading a request body from the client failed, when it is the body's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// The client stopped sending body bytes for longer than `server.body_timeout_ms` (408).
    TimedOut,
    /// The body's framing is broken: invalid chunked encoding, or HTTP/2 DATA frames that
    /// disagree with `content-length` (400).
    Malformed,
}

/// Tell a body failure of the client's from any other error (a client that hung up, a
/// backend failure).
pub fn failure(e: &Error) -> Option<BodyFailure> {
    if *e.esource() != ErrorSource::Downstream {
        return None;
    }
    match e.etype() {
        ErrorType::ReadTimedout => Some(BodyFailure::TimedOut),
        // pingora's HTTP/1.1 body reader names these.
        ErrorType::Custom("InvalidChunk" | "InvalidTrailerEnd") => Some(BodyFailure::Malformed),
        // The h2 crate resets a stream whose DATA frames disagree with its `content-length`
        // with PROTOCOL_ERROR; a reset the client sent itself is the client leaving.
        ErrorType::ReadError => e
            .root_cause()
            .downcast_ref::<h2::Error>()
            .filter(|h2e| !h2e.is_remote() && h2e.reason() == Some(h2::Reason::PROTOCOL_ERROR))
            .map(|_| BodyFailure::Malformed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_goes_in_front_of_the_first_piece_only() {
        let mut b = Buffered::Partial(Some(Bytes::from_static(b"abc")));
        let mut body = Some(Bytes::from_static(b"def"));
        b.restore_prefix(&mut body);
        assert_eq!(body.as_deref(), Some(&b"abcdef"[..]));
        let mut body = Some(Bytes::from_static(b"ghi"));
        b.restore_prefix(&mut body);
        assert_eq!(body.as_deref(), Some(&b"ghi"[..]));
        // The end of the body may come as no bytes at all.
        let mut b = Buffered::Partial(Some(Bytes::from_static(b"abc")));
        let mut end = None;
        b.restore_prefix(&mut end);
        assert_eq!(end.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn body_failures_are_told_apart_from_hang_ups() {
        let down = |t: ErrorType| Error::explain(t, "x").into_down();
        assert_eq!(
            failure(&down(ErrorType::ReadTimedout)),
            Some(BodyFailure::TimedOut)
        );
        assert_eq!(
            failure(&down(ErrorType::Custom("InvalidChunk"))),
            Some(BodyFailure::Malformed)
        );
        assert_eq!(failure(&down(ErrorType::ConnectionClosed)), None);
        assert_eq!(failure(&down(ErrorType::ReadError)), None);
        let up = Error::explain(ErrorType::ReadTimedout, "x").into_up();
        assert_eq!(failure(&up), None);
    }
}
