//! Client limits through the real binary and raw sockets: connection cap, head and keep-alive
//! timeouts, head and request-line sizes, and heads without header lines on an h2c listener.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use fulcrum_config::ClientLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any answer or close here may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(5);

/// Start fulcrum in front of one backend with `limits`.
async fn start(b: &BackendServer, limits: ClientLimits) -> Fulcrum {
    let pool = web_pool(Algorithm::RoundRobin, &[b]);
    Fulcrum::start(move |p, a| {
        let mut config = fulcrum_lab::harness::single_pool(p, a, pool);
        config.server.limits = limits;
        config
    })
    .await
}

/// Everything the server sends until it closes, and how long that took; `None` if it neither
/// closed nor stopped sending within [`HANG`].
async fn read_to_close(s: &mut TcpStream) -> Option<(Vec<u8>, Duration)> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at((start + HANG).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((out, start.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status line of a raw HTTP/1 answer.
fn status_line(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Send `raw` on a new connection and read the first answer's head (until the blank line).
async fn first_answer(proxy: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(HANG, read)
        .await
        .unwrap_or_else(|_| panic!("no answer to {:?}", String::from_utf8_lossy(raw)));
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_without_header_lines_are_answered_on_an_h2c_listener() {
    let b = backends(1).await;
    let f = start(&b[0], ClientLimits::default()).await;
    // HAProxy's default health check, and an HTTP/1.1 request without Host.
    let options = first_answer(f.proxy, b"OPTIONS / HTTP/1.0\r\n\r\n").await;
    assert!(options.starts_with("HTTP/1."), "{options}");
    let no_host = first_answer(f.proxy, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 "), "{no_host}");
    // HTTP/2 with prior knowledge still is: the server's first frame is SETTINGS.
    let mut s = TcpStream::connect(f.proxy).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(HANG, s.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[3], 0x4, "a SETTINGS frame: {frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickling_in_gets_408_after_the_header_timeout() {
    let b = backends(1).await;
    let limits = ClientLimits {
        header_timeout: Duration::from_millis(300),
        ..ClientLimits::default()
    };
    let f = start(&b[0], limits).await;
    let mut s = TcpStream::connect(f.proxy).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // One header line every 100 ms, for longer than the timeout allows.
    let trickle = async {
        for i in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(format!("X-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    tokio::time::timeout(HANG, trickle).await.ok();
    let (answer, _) = read_to_close(&mut s).await.expect("closed");
    assert_eq!(status_line(&answer), "HTTP/1.1 408 Request Timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(b[0].requests(), 0, "nothing reached the backend");
    assert_eq!(
        metric(
            &f,
            "fulcrum_rejected_requests_total{reason=\"head_timeout\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let b = backends(1).await;
    let limits = ClientLimits {
        header_timeout: Duration::from_millis(400),
        keepalive_timeout: Duration::from_millis(600),
        ..ClientLimits::default()
    };
    let f = start(&b[0], limits).await;
    // A connection that never sends a byte: closed, without an answer.
    let mut silent = TcpStream::connect(f.proxy).await.unwrap();
    let (answer, took) = read_to_close(&mut silent).await.expect("closed");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // A keep-alive connection idle after its answer: closed after the keep-alive timeout.
    let mut idle = TcpStream::connect(f.proxy).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(HANG, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let (rest, took) = read_to_close(&mut idle).await.expect("closed when idle");
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 408"),
        "an idle connection is closed quietly"
    );
    assert_eq!(
        metric(&f, "fulcrum_connections_idle_closed_total").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_request_lines_never_reach_the_backend() {
    let b = backends(1).await;
    let f = start(&b[0], ClientLimits::default()).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    assert_eq!(
        status_line(first_answer(f.proxy, big.as_bytes()).await.as_bytes()),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Many header lines adding up past the limit, sent slowly in pieces.
    let mut s = TcpStream::connect(f.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    for i in 0..80 {
        let line = format!("X-{i}: {}\r\n", "b".repeat(1000));
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    let (answer, _) = read_to_close(&mut s).await.expect("closed");
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9 * 1024));
    assert_eq!(
        status_line(first_answer(f.proxy, long.as_bytes()).await.as_bytes()),
        "HTTP/1.1 414 URI Too Long"
    );
    // Just inside both limits is proxied.
    let fits = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8000),
        "b".repeat(50 * 1024)
    );
    assert!(first_answer(f.proxy, fits.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(b[0].requests(), 1, "only the request within the limits");
    let rejected = |reason: &str| format!("fulcrum_rejected_requests_total{{reason=\"{reason}\"}}");
    assert_eq!(metric(&f, &rejected("head_too_large")).await, 2.0);
    assert_eq!(metric(&f, &rejected("request_line_too_long")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_a_connection_waits_and_health_checks_go_on() {
    let b = backends(1).await;
    let limits = ClientLimits {
        max_connections: 3,
        ..ClientLimits::default()
    };
    let f = start(&b[0], limits).await;
    let health_before = b[0].health_requests();
    // Three requests in flight hold every slot for 1.5 s.
    let held: Vec<_> = (0..3)
        .map(|_| {
            let proxy = f.proxy;
            tokio::spawn(async move { get(proxy, "/?delay_ms=1500").await })
        })
        .collect();
    // Wait until all three are at the backend: a connection accepted whose head has not
    // arrived yet is one the cap may close to make room.
    let opened = eventually(HANG, || async {
        metric(&f, "fulcrum_connections_open ").await == 3.0 && b[0].requests() == 3
    })
    .await;
    assert!(opened.is_some(), "three requests in flight");
    // The fourth is not served while they are...
    let fourth = tokio::spawn({
        let proxy = f.proxy;
        async move { get(proxy, "/").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!fourth.is_finished(), "the fourth waits for a free slot");
    assert_eq!(metric(&f, "fulcrum_connections_queued_total").await, 1.0);
    // ...while health checks and the admin API carry on.
    assert!(f.backend_healthy(b[0].addr()).await);
    assert!(b[0].health_requests() > health_before);
    // Then everyone is answered.
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(fourth.await.unwrap().unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_the_oldest_idle_connection_makes_room() {
    let b = backends(1).await;
    let limits = ClientLimits {
        max_connections: 2,
        ..ClientLimits::default()
    };
    let f = start(&b[0], limits).await;
    // Two keep-alive connections, idle after one answer each: the first is the oldest idler.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(f.proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(HANG, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
    }
    // A third client is served at once, and the oldest idle connection was closed for it.
    let r = get(f.proxy, "/").await.unwrap();
    assert_eq!(r.status, 200);
    let (rest, _) = read_to_close(&mut idle[0])
        .await
        .expect("the oldest closed");
    assert!(rest.is_empty());
    assert_eq!(metric(&f, "fulcrum_connections_evicted_total").await, 1.0);
    // The other one still works.
    idle[1]
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut idle[1]).await.expect("answered");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

/// Slow uploads cannot hold every slot: at the cap, the connection that has waited longest for
/// more of its buffered body is closed (with a 408) to make room, like an idle one.
#[tokio::test]
async fn at_max_connections_the_slowest_upload_makes_room() {
    let b = backends(1).await;
    let limits = ClientLimits {
        max_connections: 2,
        ..ClientLimits::default()
    };
    let f = start(&b[0], limits).await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(f.proxy).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx")
            .await
            .unwrap();
        slow.push(s);
        // The first upload is the older wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = get(f.proxy, "/").await.unwrap();
    assert_eq!(
        r.status, 200,
        "a new client is served while two uploads stall"
    );
    let (answer, _) = read_to_close(&mut slow[0])
        .await
        .expect("the oldest upload was closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(metric(&f, "fulcrum_connections_evicted_total").await, 1.0);
    // The other upload goes on and completes.
    slow[1].write_all(&[b'y'; 99]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(HANG, slow[1].read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// `fulcrum check` names every limit that is out of range by key path and line, and prints the
/// limits a valid configuration applies.
#[test]
fn check_validates_and_prints_every_limit() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, server: &str, pool: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:18080\"]\n{server}\n[admin]\nlisten = \"127.0.0.1:18090\"\n\n[[routes]]\npool = \"web\"\n\n[pools.web]\n{pool}\n[[pools.web.backends]]\naddr = \"127.0.0.1:18081\"\n"
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &std::path::Path| {
        std::process::Command::new(fulcrum_bin())
            .args(["check", "-c"])
            .arg(path)
            .output()
            .unwrap()
    };
    let bad = write(
        "bad.toml",
        "max_connections = 0\nheader_timeout_ms = 0\nkeepalive_timeout_ms = -1\nmax_header_bytes = 10\nmax_request_line_bytes = 10\nbody_timeout_ms = 0",
        "request_buffer_bytes = 65537",
    );
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (line, key) in [
        (3, "server.max_connections"),
        (4, "server.header_timeout_ms"),
        (5, "server.keepalive_timeout_ms"),
        (6, "server.max_header_bytes"),
        (7, "server.max_request_line_bytes"),
        (8, "server.body_timeout_ms"),
        (16, "pools.web.request_buffer_bytes"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("bad.toml:{line}:"))
                    && l.contains(&format!("error: {key}: "))),
            "{key} at line {line} not named in:\n{stderr}"
        );
    }
    let good = write(
        "good.toml",
        "max_connections = 100\nheader_timeout_ms = 2000\nkeepalive_timeout_ms = 3000\nmax_header_bytes = 4096\nmax_request_line_bytes = 1024\nbody_timeout_ms = 5000",
        "request_buffer_bytes = 1000",
    );
    let out = check(&good);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for shown in [
        "100 connections at once (max_connections 100",
        "head within 2000 ms",
        "keep-alive idle 3000 ms",
        "head up to 4096 bytes",
        "request line up to 1024 bytes",
        "body reads at most 5000 ms apart",
        "pool web: request bodies up to 1000 bytes are read whole",
    ] {
        assert!(stdout.contains(shown), "{shown:?} not in:\n{stdout}");
    }
}
