//! A loopback backend that records the raw bytes of every request it receives, for tests that
//! check what reached a backend (and what did not).
//!
//! It speaks just enough HTTP/1.1 to keep a proxy's connection alive: it reads a head up to the
//! blank line, then a `Content-Length` or chunked body, and answers `200` with
//! `received N bytes` (the body's decoded length). A request is recorded as soon as its head is
//! complete and its body bytes are appended as they arrive, so a test sees a head whose body
//! never came. Anything it cannot parse ends the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request as it reached the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The head exactly as received: request line, header lines, blank line.
    pub head: Vec<u8>,
    /// The body bytes as received on the wire (chunk framing included).
    pub raw_body: Vec<u8>,
    /// The body after chunked decoding (the same as `raw_body` for a `Content-Length` body).
    pub body: Vec<u8>,
    /// Whether the body was received whole, as its framing declared.
    pub complete: bool,
}

impl RecordedRequest {
    /// The head as text (lossy).
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    /// The request line's method and target, e.g. `("POST", "/upload")`.
    pub fn request_line(&self) -> (String, String) {
        let text = self.head_text();
        let mut parts = text.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        (method, target)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.head_text()
            .split("\r\n")
            .skip(1)
            .filter_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    open: AtomicUsize,
    accepted: AtomicUsize,
}

/// A running recording backend; stops when dropped.
#[derive(Debug)]
pub struct RecordingBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl RecordingBackend {
    /// Listen on `127.0.0.1:0` and record until dropped.
    pub async fn start() -> std::io::Result<RecordingBackend> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(RecordingBackend { addr, shared, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Received requests whose target starts with `prefix` (e.g. leaving out health checks).
    pub fn requests_to(&self, prefix: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.request_line().1.starts_with(prefix))
            .collect()
    }

    /// Connections open to it right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since it started.
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Vec<RecordedRequest>>) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                shared.open.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                conns.spawn(async move {
                    let _ = serve(stream, &shared).await;
                    shared.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Bytes read from the connection but not yet consumed.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    /// Read more bytes; false at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Take `n` bytes, reading as needed; `None` if the stream ends first.
    async fn take(&mut self, n: usize) -> std::io::Result<Option<Vec<u8>>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf.drain(..n).collect()))
    }

    /// Take up to and including the first `CRLF`; `None` if the stream ends first.
    async fn line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(Some(self.buf.drain(..i + 2).collect()));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

async fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut r = Reader {
        stream,
        buf: Vec::new(),
    };
    loop {
        let head = loop {
            if let Some(i) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break r.buf.drain(..i + 4).collect::<Vec<u8>>();
            }
            if !r.fill().await? {
                return Ok(());
            }
        };
        let index = {
            let mut requests = lock(&shared.requests);
            requests.push(RecordedRequest {
                head,
                ..RecordedRequest::default()
            });
            requests.len() - 1
        };
        let record = |f: &dyn Fn(&mut RecordedRequest)| f(&mut lock(&shared.requests)[index]);
        let req = lock(&shared.requests)[index].clone();
        let chunked = req
            .header_values("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let length = req
            .header_values("content-length")
            .first()
            .and_then(|v| v.parse::<usize>().ok());
        let mut received = 0usize;
        if chunked {
            loop {
                let Some(size_line) = r.line().await? else {
                    return Ok(());
                };
                record(&|q| q.raw_body.extend_from_slice(&size_line));
                let text = String::from_utf8_lossy(&size_line);
                let size_hex = text.trim_end().split(';').next().unwrap_or_default();
                let Ok(size) = usize::from_str_radix(size_hex, 16) else {
                    return Ok(());
                };
                let Some(data) = r.take(size + 2).await? else {
                    return Ok(());
                };
                record(&|q| {
                    q.raw_body.extend_from_slice(&data);
                    q.body.extend_from_slice(&data[..size]);
                });
                received += size;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(length) = length {
            while received < length {
                if r.buf.is_empty() && !r.fill().await? {
                    return Ok(());
                }
                let n = r.buf.len().min(length - received);
                let data: Vec<u8> = r.buf.drain(..n).collect();
                record(&|q| {
                    q.raw_body.extend_from_slice(&data);
                    q.body.extend_from_slice(&data);
                });
                received += n;
            }
        }
        record(&|q| q.complete = true);
        let body = format!("received {received} bytes\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        r.stream.write_all(resp.as_bytes()).await?;
    }
}
