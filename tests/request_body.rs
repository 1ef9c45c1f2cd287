//! Request bodies through the real binary: small bodies are read whole before a backend is
//! picked, slow and broken bodies never reach a backend, large bodies stream, and a buffered
//! body is replayed byte for byte on a retry. Clients are raw sockets and real HTTP/2 frames;
//! the backend records exactly what reached it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fulcrum_testbed::recording::RecordingBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Pool `web` over `backends` with health checks off (the recording backend records only the
/// test's requests) and round robin, so the order of attempts is known.
fn recorded_pool(backends: &[SocketAddr]) -> PoolConfig {
    let addrs: Vec<(SocketAddr, u32)> = backends.iter().map(|a| (*a, 1)).collect();
    let mut p = pool("web", Algorithm::RoundRobin, &addrs);
    p.health_check.enabled = false;
    p.connect_timeout = Duration::from_millis(500);
    p.read_timeout = Duration::from_millis(5000);
    p
}

async fn start(pool: PoolConfig, body_timeout: Duration) -> Fulcrum {
    Fulcrum::start(move |p, a| {
        let mut config = single_pool(p, a, pool);
        config.server.body_timeout = body_timeout;
        config
    })
    .await
}

/// A raw HTTP/1.1 response: status and body (read by `Content-Length`).
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

/// Read one response from `s`, giving up after 10 s.
async fn read_response(s: &mut TcpStream) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.expect("read response");
            assert!(
                n > 0,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head[9..12].parse().expect("status code");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed inside the response body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        RawResponse { status, head, body }
    })
    .await
    .expect("a response within 10 s")
}

async fn connect(f: &Fulcrum) -> TcpStream {
    let s = TcpStream::connect(f.proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn post_head(len: usize) -> String {
    format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n")
}

/// Bytes 0, 1, ... 250, 0, 1, ...: a body whose every byte is checkable.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_slow_small_body_holds_no_backend_connection_until_it_is_complete() {
    let backend = RecordingBackend::start().await.unwrap();
    let f = start(recorded_pool(&[backend.addr()]), Duration::from_secs(10)).await;
    let body = pattern(4000);
    let mut s = connect(&f).await;
    s.write_all(post_head(body.len()).as_bytes()).await.unwrap();
    s.write_all(&body[..1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(&body[1000..3999]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.accepted_connections(),
        0,
        "a backend connection was taken before the body was complete"
    );
    assert!(backend.received().is_empty());
    s.write_all(&body[3999..]).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "received 4000 bytes\n");
    let got = backend.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].complete);
    assert_eq!(got[0].decoded_body(), body);
    assert_eq!(got[0].header_values("content-length"), ["4000"]);

    // The connection stays usable, and a chunked body is buffered the same way.
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.received().len(),
        1,
        "a partial chunked body reached the backend"
    );
    s.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(backend.received()[1].decoded_body(), b"hello world");
}

#[tokio::test]
async fn a_body_that_stops_coming_is_answered_408_and_reaches_no_backend() {
    let backend = RecordingBackend::start().await.unwrap();
    let f = start(recorded_pool(&[backend.addr()]), Duration::from_millis(400)).await;
    let mut s = connect(&f).await;
    s.write_all(post_head(100).as_bytes()).await.unwrap();
    s.write_all(b"only a part").await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        r.head.to_ascii_lowercase().contains("connection: close"),
        "{r:?}"
    );
    assert_eq!(backend.accepted_connections(), 0);
    assert!(backend.received().is_empty());
    assert_eq!(
        metric(&f, "fulcrum_client_timeouts_total{phase=\"body\"}").await,
        1.0
    );
    assert_eq!(
        metric(
            &f,
            "fulcrum_rejected_requests_total{reason=\"body_timeout\"}"
        )
        .await,
        1.0
    );
}

/// slowhttptest's slow-body attack in small: many clients each declare a body under
/// `request_buffer_bytes` and trickle it, one byte at a time within the body timeout, then stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_uploads_hold_no_backend_connection_until_the_body_timeout() {
    const CLIENTS: usize = 100;
    let backend = RecordingBackend::start().await.unwrap();
    let f = start(recorded_pool(&[backend.addr()]), Duration::from_millis(800)).await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut s = connect(&f).await;
        // Half announce a length, half send chunks.
        if i % 2 == 0 {
            s.write_all(post_head(4096).as_bytes()).await.unwrap();
            s.write_all(b"a").await.unwrap();
        } else {
            s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\na")
                .await
                .unwrap();
        }
        clients.push(s);
    }
    // Each keeps its body alive for 1.5 s: longer than the body timeout, never a gap as long.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for s in &mut clients {
            s.write_all(b"a").await.unwrap();
        }
    }
    assert_eq!(
        backend.accepted_connections(),
        0,
        "a slow upload took a backend connection"
    );
    // A well-behaved client is served meanwhile, on one backend connection.
    let mut good = connect(&f).await;
    good.write_all(post_head(5).as_bytes()).await.unwrap();
    good.write_all(b"hello").await.unwrap();
    assert_eq!(read_response(&mut good).await.status, 200);
    // Then the uploads stop: each is answered 408, none reached the backend.
    for s in &mut clients {
        let r = read_response(s).await;
        assert_eq!(r.status, 408, "{r:?}");
    }
    assert_eq!(backend.accepted_connections(), 1);
    let got = backend.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].decoded_body(), b"hello");
    assert_eq!(
        metric(&f, "fulcrum_client_timeouts_total{phase=\"body\"}").await,
        CLIENTS as f64
    );
}

#[tokio::test]
async fn a_body_above_the_buffer_streams_to_the_backend() {
    let backend = RecordingBackend::start().await.unwrap();
    let mut pool = recorded_pool(&[backend.addr()]);
    pool.request_buffer_bytes = 1024;
    let f = start(pool, Duration::from_secs(10)).await;
    let body = pattern(200_000);
    let mut s = connect(&f).await;
    s.write_all(post_head(body.len()).as_bytes()).await.unwrap();
    s.write_all(&body[..50_000]).await.unwrap();
    // The head reaches the backend while the client is still sending.
    let streamed = eventually(Duration::from_secs(5), || async {
        backend
            .received()
            .first()
            .is_some_and(|r| !r.body().is_empty())
    })
    .await;
    assert!(streamed.is_some(), "the body did not start streaming");
    assert!(!backend.received()[0].complete);
    s.write_all(&body[50_000..]).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(backend.received()[0].decoded_body(), body);
}

#[tokio::test]
async fn a_chunked_body_that_outgrows_the_buffer_arrives_whole() {
    // Chunks of 40 KiB: the second one carries what was read ahead past the 64 KiB replay
    // buffer, so those bytes must be sent in front of the rest.
    let backend = RecordingBackend::start().await.unwrap();
    let f = start(recorded_pool(&[backend.addr()]), Duration::from_secs(10)).await;
    let body = pattern(3 * 40_960);
    let mut s = connect(&f).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for part in body.chunks(40_960) {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(part).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = backend.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].decoded_body().len(), body.len());
    assert!(got[0].decoded_body() == body, "the body arrived altered");
}

#[tokio::test]
async fn invalid_chunked_framing_is_refused_before_any_backend_byte() {
    let backend = RecordingBackend::start().await.unwrap();
    let f = start(recorded_pool(&[backend.addr()]), Duration::from_secs(10)).await;
    let mut s = connect(&f).await;
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(backend.accepted_connections(), 0);
    assert!(backend.received().is_empty());
    assert_eq!(
        metric(
            &f,
            "fulcrum_request_framing_errors_total{stage=\"buffered\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &f,
            "fulcrum_rejected_requests_total{reason=\"malformed_body\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn identical_content_length_lines_reach_the_backend_as_one() {
    let backend = RecordingBackend::start().await.unwrap();
    let f = start(recorded_pool(&[backend.addr()]), Duration::from_secs(10)).await;
    let mut s = connect(&f).await;
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = backend.received();
    assert_eq!(got[0].header_values("content-length"), ["5"]);
    assert_eq!(got[0].decoded_body(), b"hello");
}

#[tokio::test]
async fn a_post_retried_after_a_connect_failure_sends_the_same_bytes() {
    let backend = RecordingBackend::start().await.unwrap();
    let dead = dead_addr();
    let mut pool = recorded_pool(&[dead, backend.addr()]);
    pool.retries = 1;
    let f = start(pool, Duration::from_secs(10)).await;
    let mut bodies = Vec::new();
    for i in 0..4 {
        let body: Vec<u8> = pattern(30_000 + i);
        let mut s = connect(&f).await;
        s.write_all(post_head(body.len()).as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        bodies.push(body);
    }
    assert!(metric(&f, "fulcrum_retries_total").await >= 1.0);
    let got: Vec<Vec<u8>> = backend
        .received()
        .into_iter()
        .map(|r| r.decoded_body())
        .collect();
    assert!(got == bodies, "the backend did not get every body intact");
}

/// An h2c connection to the proxy (HTTP/2 with prior knowledge).
async fn h2c(f: &Fulcrum) -> h2::client::SendRequest<Bytes> {
    let (client, conn) = h2::client::handshake(connect(f).await).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Send a POST with `content-length: declared` and then `data` in one DATA frame; the
/// response status, or `None` when the stream was reset.
async fn h2_post(f: &Fulcrum, declared: &str, data: &'static [u8]) -> Option<u16> {
    let client = h2c(f).await;
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost:{}/upload", f.proxy.port()))
        .header("content-length", declared)
        .body(())
        .unwrap();
    let (resp, mut stream) = client.send_request(req, false).unwrap();
    // Give the proxy the head alone first, as a client that streams would.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stream.send_data(Bytes::from_static(data), true);
    match tokio::time::timeout(Duration::from_secs(5), resp).await {
        Ok(Ok(r)) => Some(r.status().as_u16()),
        Ok(Err(_)) => None,
        Err(_) => panic!("no answer and no reset within 5 s"),
    }
}

#[tokio::test]
async fn h2_data_that_disagrees_with_content_length_never_reaches_a_backend() {
    let backend = RecordingBackend::start().await.unwrap();
    let f = start(recorded_pool(&[backend.addr()]), Duration::from_secs(10)).await;
    for (declared, data) in [("0", &b"smuggled"[..]), ("5", b"abc"), ("3", b"abcdef")] {
        let answer = h2_post(&f, declared, data).await;
        assert!(
            answer.is_none_or(|s| s == 400),
            "content-length {declared} with {} bytes: {answer:?}",
            data.len()
        );
    }
    assert!(backend.received().is_empty(), "{:?}", backend.received());
    // A stream the HTTP/2 layer resets itself reaches the client before fulcrum has counted
    // its failure.
    let counted = eventually(Duration::from_secs(5), || async {
        metric(
            &f,
            "fulcrum_request_framing_errors_total{stage=\"buffered\"}",
        )
        .await
            == 3.0
    })
    .await;
    assert!(
        counted.is_some(),
        "framing errors counted: {}",
        metric(
            &f,
            "fulcrum_request_framing_errors_total{stage=\"buffered\"}"
        )
        .await
    );
    // A well-formed h2 POST still goes through.
    assert_eq!(h2_post(&f, "5", b"hello").await, Some(200));
    assert_eq!(backend.received()[0].decoded_body(), b"hello");
}
