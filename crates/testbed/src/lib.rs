//! Real loopback HTTP backends: the demo's upstreams, the end-to-end tests' origins.
//!
//! Each [`BackendServer`] is a small hyper HTTP/1.1 server bound to a real TCP port. Its
//! behaviour can be changed while it runs (added latency, failing health checks, stopped and
//! restarted on the same port) so tests and demos can show how the proxy reacts.
//!
//! Request surface:
//! - `GET /healthz` answers 200 `ok`, or 503 while the server is marked unhealthy.
//! - `GET /echo` answers with the request line and headers as seen by the backend.
//! - any other path answers 200 with the backend's name; `?delay_ms=N` adds latency and
//!   `?status=N` picks the status code for that request.
//! - every response carries `x-backend: NAME`.
//!
//! The [`scenario`] module holds backends that play a lab scenario's `[[backends]]`; the
//! [`recording`] module holds one that records the raw requests it receives.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod busy;
pub mod recording;
pub mod scenario;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Live, adjustable behaviour shared by a server's connections.
#[derive(Debug)]
struct State {
    name: String,
    delay_ms: AtomicU64,
    status: std::sync::atomic::AtomicU16,
    healthy: AtomicBool,
    requests: AtomicU64,
    health_requests: AtomicU64,
    /// Connections that carried at least one non-health request.
    request_connections: AtomicU64,
}

/// A running loopback backend.
#[derive(Debug)]
pub struct BackendServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop_tx: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl BackendServer {
    /// Bind `addr` (port 0 picks a free port) and serve until stopped or dropped.
    pub async fn start(addr: SocketAddr, name: impl Into<String>) -> std::io::Result<Self> {
        let state = Arc::new(State {
            name: name.into(),
            delay_ms: AtomicU64::new(0),
            status: std::sync::atomic::AtomicU16::new(200),
            healthy: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            health_requests: AtomicU64::new(0),
            request_connections: AtomicU64::new(0),
        });
        let mut server = BackendServer {
            addr,
            state,
            stop_tx: None,
            task: None,
        };
        server.listen(addr).await?;
        Ok(server)
    }

    async fn listen(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        self.addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = self.state.clone();
        self.task = Some(tokio::spawn(accept_loop(listener, state, stop_rx)));
        self.stop_tx = Some(stop_tx);
        Ok(())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend's name, sent in `x-backend` and as the body.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Add this much latency to every non-health request.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Answer every non-health request with this status (200 by default; `?status=` overrides).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// Make `/healthz` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Requests served, health checks excluded.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Health-check requests served.
    pub fn health_requests(&self) -> u64 {
        self.state.health_requests.load(Ordering::Relaxed)
    }

    /// Connections that carried at least one non-health request: how many a client opened for
    /// its [`requests`](Self::requests), and so how well it keeps them alive.
    pub fn request_connections(&self) -> u64 {
        self.state.request_connections.load(Ordering::Relaxed)
    }

    /// Whether the server is currently accepting connections.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Close the listener and every open connection, as a crashed backend would.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Listen again on the same address after [`stop`](Self::stop).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let addr = self.addr;
        // The old socket may linger briefly; retry the bind for a short while.
        let mut last_err = None;
        for _ in 0..50 {
            match self.listen(addr).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("bind failed")))
    }
}

impl Drop for BackendServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(true);
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop_rx: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop_rx.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let first = Arc::new(AtomicBool::new(true));
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        if req.uri().path() != "/healthz" && first.swap(false, Ordering::Relaxed) {
                            state.request_connections.fetch_add(1, Ordering::Relaxed);
                        }
                        handle(req, state.clone())
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
    // Dropping the listener and aborting connections makes peers see resets, like a crash.
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let name = state.name.clone();
    let reply = |status: StatusCode, body: Bytes| {
        Response::builder()
            .status(status)
            .header("x-backend", name.as_str())
            .header("content-type", "text/plain")
            .body(Full::new(body))
            .expect("static response parts are valid")
    };

    if path == "/healthz" {
        state.health_requests.fetch_add(1, Ordering::Relaxed);
        return Ok(if state.healthy.load(Ordering::Relaxed) {
            reply(StatusCode::OK, Bytes::from_static(b"ok\n"))
        } else {
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b"unhealthy\n"),
            )
        });
    }
    state.requests.fetch_add(1, Ordering::Relaxed);

    let mut delay = state.delay_ms.load(Ordering::Relaxed);
    if let Some(ms) = query_param(&query, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        delay += ms;
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = query_param(&query, "status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .or_else(|| StatusCode::from_u16(state.status.load(Ordering::Relaxed)).ok())
        .unwrap_or(StatusCode::OK);

    if path == "/echo" {
        let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<binary>")));
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        text.push_str(&format!("body-bytes: {}\n", body.len()));
        return Ok(reply(status, Bytes::from(text)));
    }
    Ok(reply(status, Bytes::from(format!("{}\n", state.name))))
}

/// Run backends on the given addresses until the process ends (the demo's upstreams).
pub async fn serve_forever(addrs: &[SocketAddr]) -> std::io::Result<Vec<BackendServer>> {
    let mut servers = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        servers.push(BackendServer::start(*addr, format!("backend-{}", i + 1)).await?);
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_name_health_and_status() {
        let mut b = BackendServer::start("127.0.0.1:0".parse().unwrap(), "b1")
            .await
            .unwrap();
        let addr = b.addr();
        assert!(get(addr, "/").await.ends_with("b1\n"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        b.set_healthy(false);
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/x?status=502").await.starts_with("HTTP/1.1 502"));
        assert_eq!(b.requests(), 2);
        assert_eq!(b.health_requests(), 2);
        b.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        b.restart().await.unwrap();
        assert!(get(addr, "/").await.ends_with("b1\n"));
    }
}
