//! The bad-input table: malformed and ambiguous requests sent to the real `fulcrum` binary over
//! raw TCP (HTTP/1.x bytes as written, HTTP/2 frames on cleartext prior knowledge), each checked
//! on both sides: what the client got back, and what reached a backend that records the raw
//! bytes it receives.
//!
//! The expectations are what RFC 9110/9112/9113 require of an intermediary and what nginx and
//! HAProxy do, not what fulcrum happens to do: a request whose framing is ambiguous is refused
//! with 400 and the connection closed, and not one byte of it reaches a backend; a request that
//! is only unusual is forwarded once, cleaned (hop-by-hop headers gone, one `Content-Length`).
//! Where the RFC leaves a choice (obs-fold, bare LF, NUL in a value: refuse, or repair and
//! forward), either is accepted, but a repaired request must arrive repaired.
//!
//! A row marked `pending` describes behaviour that fulcrum does not have yet; it runs and its
//! outcome is printed, but it does not fail the test until the mark is removed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fulcrum_testbed::recording::{Received, RecordingBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The health-check path of the pool under test: requests to it are not the rows' doing.
const HEALTH: &str = "/__health";

/// How long the backend side gets to show what it received after the client side finished;
/// longer where the row expects nothing, so that a late fragment is not missed.
const SETTLE: Duration = Duration::from_millis(400);
const SETTLE_NOTHING: Duration = Duration::from_millis(1000);

/// What the client must get back.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// The first response has this status and the connection is closed after it.
    RefusedClosed(u16),
    /// The first response has one of these statuses (nginx and HAProxy differ: 400 or 501),
    /// and the connection is closed after it.
    RefusedOneOf(&'static [u16]),
    /// The first response has this status (the connection may stay open).
    Status(u16),
    /// HTTP/2: the stream ends without a 2xx response (RST_STREAM, GOAWAY, a 4xx answer or
    /// the connection closed), as RFC 9113 §8.1.1 has a malformed request treated.
    H2Refused,
    /// HTTP/2: the stream is answered with this status.
    H2Status(u16),
    /// Either the first response has this status and the connection closes after it, or the
    /// request is answered 200 (the RFC's "repair and forward" choice).
    RefusedOr200(u16),
}

/// A check of one request as the backend received it.
type Check = fn(&Received) -> Result<(), String>;

/// What must reach the backend.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// Not one byte.
    Nothing,
    /// Exactly one whole request, which passes the check.
    One(Check),
    /// Nothing if the client was refused, else exactly one whole request passing the check.
    NothingOrOne(Check),
    /// Any number of whole requests, each passing the check; no fragment.
    Each(Check),
}

/// What is sent.
#[derive(Debug, Clone)]
enum Input {
    /// Raw bytes on a new HTTP/1.x connection.
    H1(Vec<u8>),
    /// One HTTP/2 request on a new cleartext prior-knowledge connection: header fields
    /// encoded as given (any case, any order, duplicates kept), then DATA frames; the last
    /// frame sent ends the stream.
    H2 {
        headers: Vec<(&'static str, String)>,
        data: Vec<&'static [u8]>,
    },
}

/// One row of the table.
struct Row {
    name: &'static str,
    input: Input,
    client: Client,
    backend: Backend,
    /// Set while fulcrum does not behave so yet: why, or what is missing (no row is pending
    /// now; the mark stays for rows added before their fix).
    pending: Option<&'static str>,
}

fn h1(name: &'static str, bytes: impl AsRef<[u8]>, client: Client, backend: Backend) -> Row {
    Row {
        name,
        input: Input::H1(bytes.as_ref().to_vec()),
        client,
        backend,
        pending: None,
    }
}

fn h2(
    name: &'static str,
    headers: &[(&'static str, &str)],
    data: &[&'static [u8]],
    client: Client,
    backend: Backend,
) -> Row {
    Row {
        name,
        input: Input::H2 {
            headers: headers.iter().map(|&(n, v)| (n, v.to_string())).collect(),
            data: data.to_vec(),
        },
        client,
        backend,
        pending: None,
    }
}

impl Row {
    /// Mark a row whose behaviour fulcrum does not have yet, with the reason.
    #[allow(dead_code)]
    fn pending(mut self, by: &'static str) -> Row {
        self.pending = Some(by);
        self
    }
}

/// A POST whose head is `headers` (CRLF-terminated lines) and whose body is `body`.
fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /p HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}").into_bytes()
}

// ---------------------------------------------------------------- backend checks

/// Raw bytes for a message, cut short: a row may send 70 KB.
fn shown(bytes: &[u8]) -> String {
    let text = format!("{:?}", String::from_utf8_lossy(bytes));
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], bytes.len()),
        None => text,
    }
}

fn ok(_: &Received) -> Result<(), String> {
    Ok(())
}

/// Exactly one `Host` line: a request that came without one (HTTP/1.0) goes upstream as
/// HTTP/1.1, which must carry one.
fn one_host(r: &Received) -> Result<(), String> {
    expect(
        r.header_values("host").len() == 1,
        "the backend must get exactly one Host",
        r,
    )
}

fn expect(cond: bool, what: &str, r: &Received) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("{what}; backend got {}", shown(&r.bytes)))
    }
}

/// Exactly one `Content-Length: 4` line, no `Transfer-Encoding`, body `abcd`.
fn one_cl_4_abcd(r: &Received) -> Result<(), String> {
    expect(
        r.header_values("content-length") == ["4"]
            && r.header_values("transfer-encoding").is_empty()
            && r.body() == b"abcd",
        "expected one Content-Length: 4 line, no Transfer-Encoding and the body abcd",
        r,
    )
}

/// The body `abcd`, framed by one `Content-Length` or by chunked coding (not both).
fn body_abcd(r: &Received) -> Result<(), String> {
    let cl = r.header_values("content-length");
    let te = r.header_values("transfer-encoding");
    let framed = match (cl.as_slice(), te.as_slice()) {
        ([len], []) => len == "4" && r.body() == b"abcd",
        ([], [te]) => te.eq_ignore_ascii_case("chunked") && r.decoded_body() == b"abcd",
        _ => false,
    };
    expect(
        framed,
        "expected the body abcd under one framing (Content-Length or chunked)",
        r,
    )
}

/// No body at all.
fn no_body(r: &Received) -> Result<(), String> {
    let cl = r.header_values("content-length");
    expect(
        r.body().is_empty()
            && r.header_values("transfer-encoding").is_empty()
            && (cl.is_empty() || cl == ["0"]),
        "expected no body",
        r,
    )
}

/// Every line of the head ends in CRLF, and none starts with whitespace (no obs-fold).
fn clean_lines(r: &Received) -> Result<(), String> {
    let head = &r.bytes[..r.bytes.len() - r.body().len()];
    let bare_lf = head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
    let folded = head
        .windows(3)
        .any(|w| w[..2] == *b"\r\n" && (w[2] == b' ' || w[2] == b'\t'));
    expect(
        !bare_lf && !folded,
        "expected CRLF line ends and no folded line",
        r,
    )
}

/// No NUL and no CR other than in CRLF.
fn no_nul_or_bare_cr(r: &Received) -> Result<(), String> {
    let b = &r.bytes;
    let bad = b
        .iter()
        .enumerate()
        .any(|(i, &c)| c == 0 || (c == b'\r' && b.get(i + 1) != Some(&b'\n')));
    expect(!bad, "expected no NUL and no bare CR", r)
}

/// None of the hop-by-hop headers of the hop-by-hop row.
fn no_hop_by_hop(r: &Received) -> Result<(), String> {
    let leaked: Vec<&str> = [
        "x-private",
        "keep-alive",
        "te",
        "proxy-connection",
        "x-also",
    ]
    .into_iter()
    .filter(|h| !r.header_values(h).is_empty())
    .collect();
    let conn = r.header_values("connection").join(",").to_ascii_lowercase();
    expect(
        leaked.is_empty() && !conn.contains("x-private") && !conn.contains("x-also"),
        &format!("hop-by-hop headers reached the backend: {leaked:?}, connection: {conn:?}"),
        r,
    )
}

/// A request for `/smuggled` reaches the backend only as a request of its own that went
/// through the proxy (it carries `X-Forwarded-For`), never as raw tunnel data.
fn smuggled_only_as_proxied(r: &Received) -> Result<(), String> {
    let raw = String::from_utf8_lossy(&r.bytes);
    if !raw.contains("/smuggled") {
        return Ok(());
    }
    expect(
        r.request_line().starts_with("GET /smuggled ")
            && !r.header_values("x-forwarded-for").is_empty()
            && raw.matches("/smuggled").count() == 1,
        "the pipelined request reached the backend without passing through the proxy",
        r,
    )
}

/// Exactly one `Content-Length: 4`, body `abcd`, and no `te` header (HTTP/2 → HTTP/1.1).
fn h2_post_abcd(r: &Received) -> Result<(), String> {
    one_cl_4_abcd(r)?;
    expect(
        r.header_values("te").is_empty(),
        "te must not be forwarded",
        r,
    )
}

// ---------------------------------------------------------------- the table

fn table() -> Vec<Row> {
    use Backend::*;
    use Client::*;
    let cl_te = |te_line: &str| post(&format!("{te_line}\r\nContent-Length: 4\r\n"), "0\r\n\r\n");
    let chunked = |chunks: &str| post("Transfer-Encoding: chunked\r\n", chunks);
    let big_value = "a".repeat(70 * 1024);
    let long_path = format!("/{}", "a".repeat(9 * 1024));
    let long_ext = format!("4;{}\r\nabcd\r\n0\r\n\r\n", "x".repeat(100 * 1024));
    vec![
        // Controls: well-formed requests go through once, as sent.
        h1("control: GET", "GET /g HTTP/1.1\r\nHost: x\r\n\r\n", Status(200), One(clean_lines)),
        h1("control: POST with Content-Length", post("Content-Length: 4\r\n", "abcd"), Status(200), One(one_cl_4_abcd)),
        h1("control: POST chunked", chunked("2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"), Status(200), One(body_abcd)),
        h1("control: chunk extension", chunked("4;name=value\r\nabcd\r\n0\r\n\r\n"), Status(200), One(body_abcd)),
        // Content-Length and Transfer-Encoding together, in every spelling (RFC 9112 §6.1, §6.3).
        h1("CL+TE: Transfer-Encoding: chunked", cl_te("Transfer-Encoding: chunked"), RefusedClosed(400), Nothing),
        h1("CL+TE: TE after CL", post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), RefusedClosed(400), Nothing),
        h1("CL+TE: space before the colon", cl_te("Transfer-Encoding : chunked"), RefusedClosed(400), Nothing),
        h1("TE: space before the colon, no CL", post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"), RefusedClosed(400), Nothing),
        h1("CL+TE: xchunked", cl_te("Transfer-Encoding: xchunked"), RefusedClosed(400), Nothing),
        h1("CL+TE: chunked, identity", cl_te("Transfer-Encoding: chunked, identity"), RefusedClosed(400), Nothing),
        h1("CL+TE: tab before the value", cl_te("Transfer-Encoding:\tchunked"), RefusedClosed(400), Nothing),
        h1("CL+TE: vertical tab before the value", cl_te("Transfer-Encoding:\x0bchunked"), RefusedClosed(400), Nothing),
        h1("CL+TE: no space", cl_te("Transfer-Encoding:chunked"), RefusedClosed(400), Nothing),
        h1("CL+TE: uppercase", cl_te("TRANSFER-ENCODING: CHUNKED"), RefusedClosed(400), Nothing),
        h1("CL+TE: TE twice", cl_te("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"), RefusedClosed(400), Nothing),
        h1("CL+TE: quoted chunked", cl_te("Transfer-Encoding: \"chunked\""), RefusedClosed(400), Nothing),
        h1("CL+TE: bare LF", b"POST /p HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nContent-Length: 4\n\n0\r\n\r\n", RefusedClosed(400), Nothing),
        // Transfer-Encoding alone, obfuscated (RFC 9112 §6.1: chunked once, and last).
        h1("TE: xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), RefusedOneOf(&[400, 501]), Nothing),
        h1("TE: chunked, identity", post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"), RefusedOneOf(&[400, 501]), Nothing),
        h1("TE: identity", post("Transfer-Encoding: identity\r\n", "abcd"), RefusedOneOf(&[400, 501]), Nothing),
        h1("TE: chunked twice in two lines", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), RefusedOneOf(&[400, 501]), Nothing),
        h1("TE: chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), RefusedOneOf(&[400, 501]), Nothing),
        h1("TE: vertical tab", post("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"), RefusedOneOf(&[400, 501]), Nothing),
        h1("TE in HTTP/1.0", b"POST /p HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", RefusedClosed(400), Nothing),
        // Content-Length: duplicated, conflicting, not a number (RFC 9110 §8.6, RFC 9112 §6.3).
        h1("CL twice, identical", post("Content-Length: 4\r\nContent-Length: 4\r\n", "abcd"), Status(200), One(one_cl_4_abcd)),
        h1("CL twice, conflicting", post("Content-Length: 4\r\nContent-Length: 5\r\n", "abcde"), RefusedClosed(400), Nothing),
        h1("CL list, conflicting", post("Content-Length: 4, 5\r\n", "abcde"), RefusedClosed(400), Nothing),
        h1("CL negative", post("Content-Length: -1\r\n", "abcd"), RefusedClosed(400), Nothing),
        h1("CL with a plus sign", post("Content-Length: +4\r\n", "abcd"), RefusedClosed(400), Nothing),
        h1("CL hex", post("Content-Length: 0x4\r\n", "abcd"), RefusedClosed(400), Nothing),
        h1("CL overflowing u64", post("Content-Length: 99999999999999999999999\r\n", "abcd"), RefusedClosed(400), Nothing),
        h1("CL space before the colon", post("Content-Length : 4\r\n", "abcd"), RefusedClosed(400), Nothing),
        // Line structure: obs-fold, bare LF, NUL and bare CR (RFC 9112 §2.2, §5.2; RFC 9110 §5.5).
        h1("obs-fold: space", post("X-Folded: a\r\n b\r\nContent-Length: 4\r\n", "abcd"), RefusedOr200(400), NothingOrOne(clean_lines)),
        h1("obs-fold: tab", post("X-Folded: a\r\n\tb\r\nContent-Length: 4\r\n", "abcd"), RefusedOr200(400), NothingOrOne(clean_lines)),
        h1("obs-fold: folded Transfer-Encoding", post("Content-Length: 4\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n", "abcd"), RefusedOr200(400), NothingOrOne(one_cl_4_abcd)),
        h1("obs-fold: first header line", "GET /g HTTP/1.1\r\n Host: x\r\n\r\n", RefusedClosed(400), Nothing),
        h1("bare LF line ends", "GET /g HTTP/1.1\nHost: x\nX-A: 1\n\n", RefusedOr200(400), NothingOrOne(clean_lines)),
        h1("NUL in a header value", post("X-Nul: a\0b\r\nContent-Length: 4\r\n", "abcd"), RefusedOr200(400), NothingOrOne(no_nul_or_bare_cr)),
        h1("NUL in a header name", post("X-N\0ul: a\r\nContent-Length: 4\r\n", "abcd"), RefusedClosed(400), Nothing),
        h1("bare CR in a header value", post("X-Cr: a\rb\r\nContent-Length: 4\r\n", "abcd"), RefusedOr200(400), NothingOrOne(no_nul_or_bare_cr)),
        h1("bare CR in a header name", post("X-C\rr: a\r\nContent-Length: 4\r\n", "abcd"), RefusedClosed(400), Nothing),
        h1("bare CR ending a line", post("X-Cr: a\rContent-Length: 4\r\n", "abcd"), RefusedClosed(400), Nothing),
        h1("bare CR and no line end ever", "GET / HTTP/1.1\rHost: x", RefusedClosed(400), Nothing),
        // Chunk sizes: nothing of a body that cannot be framed reaches a backend.
        h1("chunk size: huge hex", chunked("FFFFFFFFFFFFFFFFFFFFFF\r\nabcd\r\n0\r\n\r\n"), RefusedClosed(400), Nothing),
        h1("chunk size: negative", chunked("-4\r\nabcd\r\n0\r\n\r\n"), RefusedClosed(400), Nothing),
        h1("chunk size: 0x prefix", chunked("0x4\r\nabcd\r\n0\r\n\r\n"), RefusedClosed(400), Nothing),
        h1("chunk size: not hex", chunked("zz\r\nabcd\r\n0\r\n\r\n"), RefusedClosed(400), Nothing),
        h1("chunk extension of 100 KB", chunked(&long_ext), RefusedClosed(400), Nothing),
        h1("chunk data without its CRLF", chunked("4\r\nabcdX\r\n0\r\n\r\n"), RefusedClosed(400), Nothing),
        // Size limits (defaults: 64 KiB head → 431, 8 KiB request line → 414).
        h1("head over 64 KiB", format!("GET /g HTTP/1.1\r\nHost: x\r\nX-Big: {big_value}\r\n\r\n"), RefusedClosed(431), Nothing),
        h1("request line over 8 KiB", format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n"), RefusedClosed(414), Nothing),
        // Heads without header lines (RFC 9112 §3.2: HTTP/1.1 needs Host).
        h1("HTTP/1.1 head without header lines", "GET / HTTP/1.1\r\n\r\n", RefusedClosed(400), Nothing),
        h1("HTTP/1.0 head without header lines", "OPTIONS / HTTP/1.0\r\n\r\n", Status(200), One(one_host)),
        h1("HTTP/1.1 without Host", "GET /g HTTP/1.1\r\nX-A: 1\r\n\r\n", RefusedClosed(400), Nothing),
        h1("two Host headers", "GET /g HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", RefusedClosed(400), Nothing),
        // HTTP/1.0 bodies: Content-Length frames them; without it there is none (RFC 9112 §6.3).
        h1("HTTP/1.0 with Content-Length", "POST /p HTTP/1.0\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd", Status(200), One(one_cl_4_abcd)),
        h1("HTTP/1.0 with an unframed body", "POST /p HTTP/1.0\r\nHost: x\r\n\r\nabcd", Status(200), One(no_body)),
        // Hop-by-hop headers, including those the Connection header names (RFC 9110 §7.6.1).
        h1("hop-by-hop named in Connection", "GET /g HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Private\r\nConnection: x-also\r\nX-Private: secret\r\nX-Also: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\r\n", Status(200), One(no_hop_by_hop)),
        h1("Connection names Content-Length", post("Connection: Content-Length\r\nContent-Length: 4\r\n", "abcd"), RefusedOr200(400), NothingOrOne(body_abcd)),
        h1("Connection names Transfer-Encoding", post("Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", "4\r\nabcd\r\n0\r\n\r\n"), RefusedOr200(400), NothingOrOne(body_abcd)),
        // An Upgrade the backend does not accept (no 101): what follows is a new request.
        h1("Upgrade refused, then a pipelined request", "GET /g HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Status(200), Each(smuggled_only_as_proxied)),
        h1("Upgrade with a body, then a pipelined request", post("Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 4\r\n", "abcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"), Status(200), Each(smuggled_only_as_proxied)),
        // HTTP/2 (RFC 9113 §8.1.1, §8.2, §8.3): malformed requests are never forwarded.
        h2("h2 control: GET", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g")], &[], H2Status(200), One(ok)),
        h2("h2 control: POST with content-length", &[(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/p"), ("content-length", "4")], &[b"abcd"], H2Status(200), One(h2_post_abcd)),
        h2("h2: te: trailers is allowed", &[(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/p"), ("te", "trailers"), ("content-length", "4")], &[b"ab", b"cd"], H2Status(200), One(h2_post_abcd)),
        h2("h2: missing :path", &[(":method", "GET"), (":scheme", "http"), (":authority", "x")], &[], H2Refused, Nothing),
        h2("h2: missing :method", &[(":scheme", "http"), (":authority", "x"), (":path", "/g")], &[], H2Refused, Nothing),
        h2("h2: duplicate :method", &[(":method", "GET"), (":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/g")], &[], H2Refused, Nothing),
        h2("h2: duplicate :path", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g"), (":path", "/h")], &[], H2Refused, Nothing),
        h2("h2: pseudo-header after a regular one", &[(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":authority", "x"), (":path", "/g")], &[], H2Refused, Nothing),
        h2("h2: unknown pseudo-header", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g"), (":evil", "1")], &[], H2Refused, Nothing),
        h2("h2: empty :path", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "")], &[], H2Refused, Nothing),
        h2("h2: uppercase header name", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g"), ("X-Upper", "1")], &[], H2Refused, Nothing),
        h2("h2: connection header", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g"), ("connection", "keep-alive")], &[], H2Refused, Nothing),
        h2("h2: keep-alive header", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g"), ("keep-alive", "timeout=5")], &[], H2Refused, Nothing),
        h2("h2: te: gzip", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g"), ("te", "gzip")], &[], H2Refused, Nothing),
        h2("h2: transfer-encoding", &[(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/p"), ("transfer-encoding", "chunked")], &[b"4\r\nabcd\r\n0\r\n\r\n"], H2Refused, Nothing),
        h2("h2: upgrade header", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g"), ("upgrade", "websocket")], &[], H2Refused, Nothing),
        h2("h2: CR LF in a value", &[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/g"), ("x-a", "1\r\nx-injected: 1")], &[], H2Refused, Nothing),
        h2("h2: content-length 0 with DATA", &[(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/p"), ("content-length", "0")], &[b"abcd"], H2Refused, Nothing),
        h2("h2: content-length above the DATA", &[(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/p"), ("content-length", "8")], &[b"abcd"], H2Refused, Nothing),
        h2("h2: content-length below the DATA", &[(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/p"), ("content-length", "2")], &[b"abcd"], H2Refused, Nothing),
    ]
}

// ---------------------------------------------------------------- HTTP/1.x client side

/// What came back on an HTTP/1.x connection.
#[derive(Debug, Default)]
struct H1Outcome {
    /// The status of each whole response, in order.
    statuses: Vec<u16>,
    /// Whether the proxy closed the connection (within 0.7 s of its last byte).
    closed: bool,
}

async fn h1_exchange(addr: SocketAddr, bytes: &[u8]) -> H1Outcome {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A proxy may answer and close before it has read everything (oversized heads): a
    // failed write is part of the outcome, not a test error.
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut closed = false;
    loop {
        // Wait long for the first byte, then a second for more (or for the close).
        let wait = if got.is_empty() {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(700)
        };
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    H1Outcome {
        statuses: response_statuses(&got),
        closed,
    }
}

/// The statuses of the whole responses in `raw`, in order.
fn response_statuses(mut raw: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = resp.parse(raw) else {
            return statuses;
        };
        let Some(code) = resp.code else {
            return statuses;
        };
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
        let chunked = resp.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && h.value.eq_ignore_ascii_case(b"chunked")
        });
        statuses.push(code);
        let rest = &raw[head..];
        let body_len = if chunked {
            match rest.windows(5).position(|w| w == b"0\r\n\r\n") {
                Some(p) => p + 5,
                None => return statuses,
            }
        } else {
            length.unwrap_or(0)
        };
        if rest.len() < body_len {
            return statuses;
        }
        raw = &rest[body_len..];
    }
}

// ---------------------------------------------------------------- HTTP/2 client side

/// How an HTTP/2 stream ended.
#[derive(Debug)]
enum H2Outcome {
    /// Response headers with this status.
    Status(u16),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection closed without either.
    Closed,
    /// Nothing within the wait.
    Silent,
}

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits being `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// Header fields as HPACK "literal, never indexed, new name" entries, bytes exactly as given
/// (no Huffman coding, no lower-casing).
fn hpack_literal(headers: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x10);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The `:status` of the first response header block on a connection (its first field, per
/// RFC 9113 §8.3): static-table indexed, or a literal with the `:status` name and a plain or
/// Huffman-coded value of digits (RFC 7541 §6, Appendix B). Enough for a response to a
/// request on a new connection, where the dynamic table is still empty.
fn hpack_status(block: &[u8]) -> Option<u16> {
    let mut at = 0;
    // Dynamic table size updates may come first.
    while block.get(at)? & 0xe0 == 0x20 {
        let full_prefix = block[at] & 0x1f == 0x1f;
        at += 1;
        if full_prefix {
            while block.get(at)? & 0x80 != 0 {
                at += 1;
            }
            at += 1;
        }
    }
    let first = *block.get(at)?;
    if first & 0x80 != 0 {
        // Indexed: the static table's :status entries are 8..=14.
        let codes = [200, 204, 206, 304, 400, 404, 500];
        return codes
            .get(usize::from(first & 0x7f).checked_sub(8)?)
            .copied();
    }
    // Literal with the static :status name (index 8), any indexing mode.
    let name_index = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if name_index != 8 {
        return None;
    }
    let len_byte = *block.get(at + 1)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(at + 2..at + 2 + len)?;
    let digits = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// Decode a Huffman-coded string of ASCII digits (codes from RFC 7541 Appendix B).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    while bits.len() - at >= 5 {
        let five = bits[at..at + 5].iter().fold(0u8, |v, b| v << 1 | b);
        if five <= 2 {
            // '0' 00000, '1' 00001, '2' 00010
            out.push(char::from(b'0' + five));
            at += 5;
        } else if bits.len() - at >= 6 {
            let six = bits[at..at + 6].iter().fold(0u8, |v, b| v << 1 | b);
            match six {
                // '3' 011001 ... '9' 011111
                0b011001..=0b011111 => out.push(char::from(b'3' + six - 0b011001)),
                _ if bits[at..].iter().all(|&b| b == 1) => break,
                _ => return None,
            }
            at += 6;
        } else if bits[at..].iter().all(|&b| b == 1) {
            break;
        } else {
            return None;
        }
    }
    // What is left is padding: fewer than 8 bits, all ones.
    (bits.len() - at < 8 && bits[at..].iter().all(|&b| b == 1)).then_some(out)
}

async fn h2_exchange(
    addr: SocketAddr,
    headers: &[(&'static str, String)],
    data: &[&[u8]],
) -> H2Outcome {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    let end = if data.is_empty() { FLAG_END_STREAM } else { 0 };
    out.extend(frame(
        FRAME_HEADERS,
        FLAG_END_HEADERS | end,
        1,
        &hpack_literal(headers),
    ));
    for (i, d) in data.iter().enumerate() {
        let end = if i + 1 == data.len() {
            FLAG_END_STREAM
        } else {
            0
        };
        out.extend(frame(FRAME_DATA, end, 1, d));
    }
    if s.write_all(&out).await.is_err() {
        return H2Outcome::Closed;
    }
    let mut buf: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Handle every whole frame buffered.
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]);
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                FRAME_SETTINGS if flags & FLAG_ACK == 0 => {
                    let _ = s.write_all(&frame(FRAME_SETTINGS, FLAG_ACK, 0, &[])).await;
                }
                FRAME_PING if flags & FLAG_ACK == 0 => {
                    let _ = s.write_all(&frame(FRAME_PING, FLAG_ACK, 0, &payload)).await;
                }
                FRAME_HEADERS if stream == 1 => {
                    return hpack_status(&payload).map_or(H2Outcome::Closed, H2Outcome::Status);
                }
                FRAME_RST_STREAM if stream == 1 && payload.len() >= 4 => {
                    return H2Outcome::Reset(u32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                }
                FRAME_GOAWAY if payload.len() >= 8 => {
                    return H2Outcome::GoAway(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return H2Outcome::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return H2Outcome::Silent,
        }
    }
}

// ---------------------------------------------------------------- judging a row

/// What the client got, as text, and whether it was a refusal (no 2xx).
enum Seen {
    H1(H1Outcome),
    H2(H2Outcome),
}

impl Seen {
    fn refused(&self) -> bool {
        match self {
            Seen::H1(o) => o.statuses.first().is_none_or(|&s| s >= 400),
            Seen::H2(o) => !matches!(o, H2Outcome::Status(s) if *s < 400),
        }
    }
}

fn judge_client(expected: Client, seen: &Seen) -> Result<(), String> {
    let good = match (expected, seen) {
        (Client::RefusedClosed(code), Seen::H1(o)) => o.statuses.first() == Some(&code) && o.closed,
        (Client::RefusedOneOf(codes), Seen::H1(o)) => {
            o.statuses.first().is_some_and(|s| codes.contains(s)) && o.closed
        }
        (Client::Status(code), Seen::H1(o)) => o.statuses.first() == Some(&code),
        (Client::RefusedOr200(code), Seen::H1(o)) => match o.statuses.first() {
            Some(&200) => true,
            Some(&s) => s == code && o.closed,
            None => false,
        },
        (Client::H2Refused, Seen::H2(o)) => match o {
            H2Outcome::Status(s) => (400..500).contains(s),
            H2Outcome::Reset(_) | H2Outcome::GoAway(_) | H2Outcome::Closed => true,
            H2Outcome::Silent => false,
        },
        (Client::H2Status(code), Seen::H2(H2Outcome::Status(s))) => *s == code,
        _ => false,
    };
    if good {
        Ok(())
    } else {
        Err(format!(
            "client: expected {expected:?}, got {}",
            describe(seen)
        ))
    }
}

fn describe(seen: &Seen) -> String {
    match seen {
        Seen::H1(o) => format!(
            "statuses {:?}, connection {}",
            o.statuses,
            if o.closed { "closed" } else { "open" }
        ),
        Seen::H2(H2Outcome::Status(s)) => format!("HTTP/2 status {s}"),
        Seen::H2(H2Outcome::Reset(code)) => format!("RST_STREAM with error code {code}"),
        Seen::H2(H2Outcome::GoAway(code)) => format!("GOAWAY with error code {code}"),
        Seen::H2(H2Outcome::Closed) => "connection closed".to_string(),
        Seen::H2(H2Outcome::Silent) => "no answer within 5 s".to_string(),
    }
}

fn judge_backend(expected: Backend, refused: bool, got: &[Received]) -> Result<(), String> {
    let all = || {
        got.iter()
            .map(|r| shown(&r.bytes))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let one = |check: Check| match got {
        [r] if r.complete => check(r).map_err(|e| format!("backend: {e}")),
        _ => Err(format!(
            "backend: expected exactly one whole request, got {}: {}",
            got.len(),
            all()
        )),
    };
    match expected {
        Backend::Nothing | Backend::NothingOrOne(_) if got.is_empty() => Ok(()),
        Backend::Nothing => Err(format!("backend: expected nothing, got {}", all())),
        Backend::NothingOrOne(_) if refused => Err(format!(
            "backend: the client was refused but the backend got {}",
            all()
        )),
        Backend::NothingOrOne(check) | Backend::One(check) => one(check),
        Backend::Each(check) => {
            for r in got {
                if !r.complete {
                    return Err(format!("backend: got a fragment: {}", all()));
                }
                check(r).map_err(|e| format!("backend: {e}"))?;
            }
            Ok(())
        }
    }
}

async fn run_row(
    proxy: SocketAddr,
    backend: &RecordingBackend,
    row: &Row,
) -> Result<String, String> {
    backend.clear();
    let seen = match &row.input {
        Input::H1(bytes) => Seen::H1(h1_exchange(proxy, bytes).await),
        Input::H2 { headers, data } => Seen::H2(h2_exchange(proxy, headers, data).await),
    };
    // Give a forwarded request (or a fragment of one) time to show at the backend.
    let settle = match row.backend {
        Backend::Nothing | Backend::NothingOrOne(_) => SETTLE_NOTHING,
        _ => SETTLE,
    };
    tokio::time::sleep(settle).await;
    let got = backend.received_except(&format!("GET {HEALTH} "));
    let client = judge_client(row.client, &seen);
    let back = judge_backend(row.backend, seen.refused(), &got);
    let summary = format!("{}; backend got {} request(s)", describe(&seen), got.len());
    match (client, back) {
        (Ok(()), Ok(())) => Ok(summary),
        (c, b) => Err([c.err(), b.err()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

#[test]
fn hpack_status_reads_indexed_and_literal_statuses() {
    assert_eq!(hpack_status(&[0x88]), Some(200));
    assert_eq!(hpack_status(&[0x3f, 0xe1, 0x1f, 0x8d]), Some(404));
    assert_eq!(hpack_status(&[0x08, 0x03, b'4', b'3', b'1']), Some(431));
    // "431" Huffman-coded: 011010 011001 00001, padded with ones.
    assert_eq!(
        hpack_status(&[0x48, 0x82, 0b0110_1001, 0b1001_0000, 0b1111_1111][..4]),
        None
    );
    assert_eq!(
        hpack_status(&[0x48, 0x83, 0b0110_1001, 0b1001_0000, 0b1111_1111]),
        Some(431)
    );
    assert_eq!(hpack_status(&[0x48, 0x82, 0b0110_1001, 0b1001_0000]), None);
}

/// Rows run on this many proxies at once, each with its own recording backend, so that the
/// waits of one row (the backend settling, the proxy closing) overlap with the others'.
const LANES: usize = 4;

/// A proxy in front of a recording backend, for one lane of rows.
async fn lane() -> (Fulcrum, RecordingBackend) {
    let backend = RecordingBackend::start().await.unwrap();
    let mut web = pool("web", Algorithm::RoundRobin, &[(backend.addr(), 1)]);
    web.retries = 0;
    web.health_check.path = HEALTH.to_string();
    web.health_check.interval = Duration::from_secs(30);
    (Fulcrum::web(web).await, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table() {
    let rows = std::sync::Arc::new(table());
    let lanes = (0..LANES).map(|n| {
        let rows = rows.clone();
        tokio::spawn(async move {
            let (mut fulcrum, backend) = lane().await;
            let mut results = Vec::new();
            for (i, row) in rows.iter().enumerate().skip(n).step_by(LANES) {
                results.push((i, run_row(fulcrum.proxy, &backend, row).await));
            }
            assert!(fulcrum.running(), "fulcrum exited: {}", fulcrum.log_tail());
            // The proxy still serves a well-formed request after its rows.
            let after = h1_exchange(fulcrum.proxy, b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(after.statuses.first(), Some(&200), "{after:?}");
            results
        })
    });
    let mut results = Vec::new();
    for lane in lanes.collect::<Vec<_>>() {
        results.extend(lane.await.expect("a lane of rows panicked"));
    }
    results.sort_by_key(|(i, _)| *i);
    let mut failed = Vec::new();
    for (i, result) in results {
        let row = &rows[i];
        match (&result, row.pending) {
            (Ok(summary), None) => println!("ok       {}: {summary}", row.name),
            (Err(why), None) => {
                println!("FAILED   {}: {why}", row.name);
                failed.push(format!("{}: {why}", row.name));
            }
            (Ok(summary), Some(by)) => println!(
                "PASSES   {} (marked pending on {by}: the mark can go): {summary}",
                row.name
            ),
            (Err(why), Some(by)) => {
                println!("skipped  {} (pending on {by}): {why}", row.name)
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} rows failed:\n{}",
        failed.len(),
        rows.len(),
        failed.join("\n")
    );
}
