//! A loopback backend that records the raw bytes it receives, for tests that must show what a
//! proxy forwarded (or that it forwarded nothing).
//!
//! [`RecordingBackend`] speaks just enough HTTP/1.1 to keep a proxy working: it splits what a
//! connection sends into requests by `Content-Length` or chunked framing and answers each
//! with `200` and the body `received N bytes\n` (N: the body's decoded length). It keeps every
//! request's bytes exactly as they arrived, and whatever a connection sent that did not make up
//! a whole request (a head without its end, a body shorter than announced or still arriving,
//! framing it cannot read) as a fragment, so a test can assert "nothing reached the backend",
//! "the head had exactly one `Content-Length` line" or "the body was streaming before the client
//! finished". It also counts the connections it accepted and holds open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The answer to a request whose decoded body is `len` bytes long.
fn response(len: usize) -> Vec<u8> {
    let body = format!("received {len} bytes\n");
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: recording\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// How long a connection may pause in the middle of a request before what it sent so far is
/// recorded as a fragment. The request still completes if the rest arrives later.
const FRAGMENT_AFTER: Duration = Duration::from_millis(300);

/// What one backend connection sent, in the order it arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// The index of the connection among those the backend accepted, from 0.
    pub connection: usize,
    /// The raw bytes: a whole request (head and body), or an incomplete fragment.
    pub bytes: Vec<u8>,
    /// Whether `bytes` is a whole request the backend answered.
    pub complete: bool,
}

impl Received {
    /// The request line (the bytes before the first line end), lossily decoded.
    pub fn request_line(&self) -> String {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.bytes.len());
        String::from_utf8_lossy(&self.bytes[..end])
            .trim_end_matches('\r')
            .to_string()
    }

    /// The header lines of the head (lossily decoded, line ends removed), in order.
    pub fn header_lines(&self) -> Vec<String> {
        let head_len = head_end(&self.bytes).unwrap_or(self.bytes.len());
        String::from_utf8_lossy(&self.bytes[..head_len])
            .split('\n')
            .skip(1)
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The values of every header line named `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.header_lines()
            .iter()
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .collect()
    }

    /// The bytes after the head as they arrived, chunk framing included (none for a fragment
    /// without a whole head).
    pub fn body(&self) -> &[u8] {
        head_end(&self.bytes).map_or(&[][..], |end| &self.bytes[end..])
    }

    /// The body with chunked framing removed when the head declares it (as much of it as
    /// arrived, for a fragment); the raw body otherwise.
    pub fn decoded_body(&self) -> Vec<u8> {
        let chunked = self
            .header_values("transfer-encoding")
            .last()
            .is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked"));
        if chunked {
            dechunk(self.body())
        } else {
            self.body().to_vec()
        }
    }
}

/// The data of the chunks in `body`, up to the last chunk or the first one not whole.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok());
        let Some(size) = size.filter(|&s| s > 0 && body.len() >= eol + 2 + s) else {
            break;
        };
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[(eol + 4 + size).min(body.len())..];
    }
    out
}

type Log = Arc<Mutex<Vec<Received>>>;

/// Connections accepted since the start, and open now.
#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// A running recording backend; it stops when dropped.
#[derive(Debug)]
pub struct RecordingBackend {
    addr: SocketAddr,
    log: Log,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingBackend {
    /// Listen on `127.0.0.1` on a free port.
    pub async fn start() -> std::io::Result<RecordingBackend> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let log: Log = Arc::default();
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn(accept_loop(listener, log.clone(), counts.clone()));
        Ok(RecordingBackend {
            addr,
            log,
            counts,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received so far: whole requests and fragments, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.log).clone()
    }

    /// What was received so far, except requests whose request line starts with
    /// `skip_prefix` (for example `"GET /healthz "`, a proxy's health checks).
    pub fn received_except(&self, skip_prefix: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| !r.bytes.starts_with(skip_prefix.as_bytes()))
            .collect()
    }

    /// Forget everything received so far.
    pub fn clear(&self) {
        lock(&self.log).clear();
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Connections open to it right now.
    pub fn open_connections(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(log: &Log) -> MutexGuard<'_, Vec<Received>> {
    // A panicking connection task cannot leave the log half-written: pushes are atomic.
    log.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, log: Log, counts: Arc<Counts>) {
    let mut connections = JoinSet::new();
    let mut index = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    counts.accepted.fetch_add(1, Ordering::SeqCst);
                    counts.open.fetch_add(1, Ordering::SeqCst);
                    let (log, counts) = (log.clone(), counts.clone());
                    connections.spawn(async move {
                        serve(stream, index, log).await;
                        counts.open.fetch_sub(1, Ordering::SeqCst);
                    });
                    index += 1;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serve one connection: answer each whole request, record everything.
async fn serve(mut stream: TcpStream, connection: usize, log: Log) {
    let mut buf: Vec<u8> = Vec::new();
    // Index into `log` of the fragment recorded for the bytes now in `buf`, if any.
    let mut fragment: Option<usize> = None;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Answer every whole request already buffered (pipelining).
        while let Some(len) = request_len(&buf) {
            let bytes: Vec<u8> = buf.drain(..len).collect();
            let close = wants_close(&bytes);
            let entry = Received {
                connection,
                bytes,
                complete: true,
            };
            let answer = response(entry.decoded_body().len());
            record(&log, &mut fragment, entry);
            if stream.write_all(&answer).await.is_err() || close {
                record_rest(&log, &mut fragment, connection, &buf);
                return;
            }
        }
        let read = if buf.is_empty() {
            stream.read(&mut chunk).await.map(Some)
        } else {
            match tokio::time::timeout(FRAGMENT_AFTER, stream.read(&mut chunk)).await {
                Ok(r) => r.map(Some),
                Err(_) => Ok(None),
            }
        };
        match read {
            Ok(Some(0)) | Err(_) => {
                record_rest(&log, &mut fragment, connection, &buf);
                return;
            }
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            // A pause mid-request: show what arrived so far, keep waiting for the rest.
            Ok(None) => record_rest(&log, &mut fragment, connection, &buf),
        }
    }
}

/// Record `entry`, replacing the fragment recorded earlier for the same bytes, if any.
fn record(log: &Log, fragment: &mut Option<usize>, entry: Received) {
    let complete = entry.complete;
    let mut log = lock(log);
    match fragment.take() {
        Some(i) if i < log.len() => log[i] = entry,
        _ => log.push(entry),
    }
    if !complete {
        *fragment = Some(log.len() - 1);
    }
}

fn record_rest(log: &Log, fragment: &mut Option<usize>, connection: usize, buf: &[u8]) {
    if !buf.is_empty() {
        let entry = Received {
            connection,
            bytes: buf.to_vec(),
            complete: false,
        };
        record(log, fragment, entry);
    }
}

/// The length of the head (through its blank line), if it is all there. A bare-LF blank line
/// counts, so a head the proxy should have refused is still split out and recorded.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The length of the first whole request in `buf`, if it is all there.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head = head_end(buf)?;
    let lines = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    let header = |name: &str| {
        lines.split('\n').skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        return chunked_len(&buf[head..]).map(|n| head + n);
    }
    let length = match header("content-length") {
        Some(v) => v.parse::<usize>().ok()?,
        None => 0,
    };
    (buf.len() >= head + length).then_some(head + length)
}

/// The length of a whole chunked body (through the last chunk and the trailer section).
fn chunked_len(body: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + body[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&body[at..line_end]).ok()?;
        let size_hex = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines, then the blank line.
            loop {
                let end = at + body[at..].windows(2).position(|w| w == b"\r\n")?;
                let blank = end == at;
                at = end + 2;
                if blank {
                    return Some(at);
                }
            }
        }
        at = at.checked_add(size)?.checked_add(2)?;
        if body.len() < at {
            return None;
        }
    }
}

/// Whether the client asked to close the connection after this request (HTTP/1.0 without
/// keep-alive is treated as asking, which is all a proxy's HTTP/1.0 forwarding needs).
fn wants_close(request: &[u8]) -> bool {
    let head = head_end(request).unwrap_or(request.len());
    let lower = String::from_utf8_lossy(&request[..head]).to_ascii_lowercase();
    let http10 = lower
        .lines()
        .next()
        .is_some_and(|l| l.trim_end().ends_with("http/1.0"));
    (http10 && !lower.contains("\nconnection: keep-alive")) || lower.contains("\nconnection: close")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_split_by_their_framing() {
        let two = b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhiGET / HTTP/1.1\r\n\r\n";
        assert_eq!(request_len(two), Some(40));
        let chunked =
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nhi\r\n0\r\nt: 1\r\n\r\nX";
        assert_eq!(request_len(chunked), Some(chunked.len() - 1));
        assert_eq!(
            request_len(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhi"),
            None
        );
        assert_eq!(request_len(b"GET / HTTP/1.1\r\nhost: x\r\n"), None);
    }

    #[tokio::test]
    async fn records_requests_and_fragments() {
        let b = RecordingBackend::start().await.unwrap();
        let mut s = TcpStream::connect(b.addr()).await.unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nX-One: 1\r\nx-one: 2\r\n\r\nGET /b HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; response(0).len()];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, response(0));
        drop(s);
        let mut got = Vec::new();
        for _ in 0..100 {
            got = b.received();
            if got.len() == 2 && b.open_connections() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].complete);
        assert_eq!(got[0].request_line(), "GET /a HTTP/1.1");
        assert_eq!(got[0].header_values("x-one"), vec!["1", "2"]);
        assert!(!got[1].complete);
        assert_eq!(got[1].bytes, b"GET /b HTTP/1.1\r\n");
        assert_eq!(b.received_except("GET /a ").len(), 1);
        assert_eq!((b.accepted_connections(), b.open_connections()), (1, 0));
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let r = Received {
            connection: 0,
            bytes: b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
                .to_vec(),
            complete: true,
        };
        assert_eq!(r.decoded_body(), b"abcde");
        let partial = Received {
            bytes: b"POST / HTTP/1.1\r\ncontent-length: 9\r\n\r\nabc".to_vec(),
            ..r
        };
        assert_eq!(partial.decoded_body(), b"abc");
    }
}
