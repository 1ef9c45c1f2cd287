//! What one client may hold: a connection slot, time and bytes before its request head is read.
//!
//! pingora on its own accepts every connection, waits for the whole 24-byte HTTP/2 preface
//! before choosing the protocol on an h2c listener (so `GET / HTTP/1.1\r\n\r\n` hangs), lets a
//! head take 60 s per read and grow to 1 MiB, and keeps a silent connection open for as long as
//! it stays silent. fulcrum therefore reads each HTTP/1 request head itself, before pingora sees
//! the connection ([`LimitedApp`]):
//!
//! * the head must arrive within `header_timeout_ms`, counted from the accept for the first
//!   request and from its first byte for later ones on a keep-alive connection; an idle
//!   keep-alive connection waits at most `keepalive_timeout_ms` for that first byte. On expiry
//!   the connection closes, with a 408 if part of a head had arrived (as HAProxy does);
//! * a request line longer than `max_request_line_bytes` is answered 414 and a head larger than
//!   `max_header_bytes` 431, without reading further and without a byte reaching a backend;
//! * the protocol is told from the first bytes: anything that stops matching the HTTP/2
//!   preface is HTTP/1.
//!
//! The complete head is then handed to pingora as the start of the connection's input, so
//! pingora parses it without reading from the socket again.
//!
//! The number of client connections is capped by a semaphore ([`ConnectionGate`]). While every
//! slot is taken, the accept loops stop accepting (connections wait in the kernel's backlog,
//! [`GateFilter`]) and each held-back connection closes the connection that has waited longest
//! for a request head, oldest first, the way nginx reuses idle keep-alive connections when it
//! runs out: a slow client cannot keep a well-behaved one out. The cap is bounded by the
//! open-file limit ([`ConnectionBudget`]), which the process raises to its hard limit at start
//! ([`raise_open_file_limit`]), so that backend connections and health checks always find a
//! file descriptor.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use fulcrum_config::ClientLimits;
use metrics::{Counter, Gauge};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use crate::metrics as names;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes a head buffer grows by when the first read did not hold the whole head.
const HEAD_READ_STEP: usize = 4096;
/// The first read of a head, into an array in the connection's future (a head that is longer
/// takes a second read, into a buffer).
const FIRST_READ: usize = 1024;

/// File descriptors kept out of the client budget whatever the configuration: listeners, the
/// admin API and its clients, logs, the epoll and timer descriptors of the runtimes, the model
/// file and the upgrade socket.
pub const FD_RESERVE_BASE: u64 = 64;

/// How long a refused head's connection is read and discarded after the answer, so that the
/// client reads the answer instead of a reset caused by unread bytes (nginx's lingering close).
const LINGER: Duration = Duration::from_millis(500);

/// The most bytes discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// How long a connection that has not sent its first request yet still waits for it once the
/// listeners have stopped (a drain or a hand-over). It was accepted, so its client connected to
/// send a request, which is usually on its way: closed at once, that request would be lost.
/// Idle keep-alive connections close at once, as their clients were told to.
pub(crate) const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);

/// How often a held-back accept looks again for a connection to close when none was waiting
/// for a head.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// The client-connection cap the process can honour, from the configuration and the
/// open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// `server.max_connections` as configured.
    pub configured: usize,
    /// The cap applied: the configured one, or fewer when the open-file limit cannot hold it.
    pub effective: usize,
    /// The open-file limit the budget was computed for.
    pub open_files: u64,
    /// File descriptors kept for everything but client connections and their backend
    /// connections.
    pub reserve: u64,
}

impl ConnectionBudget {
    /// The budget for `limits` with `backends` health-checked backends under an open-file
    /// limit of `open_files`: every client connection may hold a backend connection as well,
    /// so each counts twice, after a reserve for the fixed descriptors and one health-check
    /// connection per backend.
    pub fn new(limits: &ClientLimits, backends: usize, open_files: u64) -> Self {
        let reserve = FD_RESERVE_BASE + backends as u64;
        let by_fds = (open_files.saturating_sub(reserve) / 2).max(1);
        let effective = (limits.max_connections as u64).min(by_fds) as usize;
        ConnectionBudget {
            configured: limits.max_connections,
            effective,
            open_files,
            reserve,
        }
    }

    /// A warning to print when the configured cap cannot be honoured, else `None`.
    pub fn warning(&self) -> Option<String> {
        (self.effective < self.configured).then(|| {
            format!(
                "server.max_connections = {} needs {} open files (two per connection and {} in reserve), but the open-file limit is {}: at most {} client connections are accepted at once; raise the hard limit (LimitNOFILE= in a systemd unit, ulimit -Hn) to honour it",
                self.configured,
                self.configured as u64 * 2 + self.reserve,
                self.reserve,
                self.open_files,
                self.effective
            )
        })
    }
}

/// The open-file limits of the process: soft (applied) and hard (the ceiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit before the start.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// The largest number of open files the kernel lets a process have (`fs.nr_open`).
fn kernel_open_file_ceiling() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// The open-file limits as they are, without changing them.
pub fn open_file_limit() -> std::io::Result<OpenFileLimit> {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    Ok(OpenFileLimit {
        before: soft,
        soft,
        hard,
    })
}

/// Raise the soft open-file limit to the hard limit (or the kernel's ceiling, if lower), as
/// nginx's `worker_rlimit_nofile` and HAProxy do at start.
pub fn raise_open_file_limit() -> std::io::Result<OpenFileLimit> {
    use nix::sys::resource::{setrlimit, Resource};
    let mut limit = open_file_limit()?;
    let target = limit.hard.min(kernel_open_file_ceiling());
    if target > limit.soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, limit.hard).map_err(std::io::Error::from)?;
        limit.soft = target;
    }
    Ok(limit)
}

/// Metric handles of the limits, registered once.
struct GateMetrics {
    open: Gauge,
    queued: Counter,
    evicted: Counter,
    idle_closed: Counter,
    head_timeout: Counter,
    head_too_large: Counter,
    line_too_long: Counter,
    bare_cr: Counter,
}

/// The client-connection slots and the connections waiting for their client (a request head,
/// or more of a buffered body), oldest first.
pub struct ConnectionGate {
    slots: Arc<Semaphore>,
    size: usize,
    /// Connections closed at once when the cap is reached: one per 32 slots, 1 to 32, as
    /// nginx drains up to 32 reusable connections when it runs out. Closing one per accept
    /// lets a slow client that reconnects as fast as it is closed keep the backlog full: a
    /// well-behaved connection then waits behind every slow one queued before it, one
    /// eviction at a time.
    evict_batch: usize,
    waiting: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next_wait: AtomicU64,
    metrics: GateMetrics,
}

impl std::fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("free", &self.slots.available_permits())
            .finish()
    }
}

/// One client connection's slot; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// A connection's place among those waiting for a request head; dropping it leaves the queue.
struct Waiting<'a> {
    gate: &'a ConnectionGate,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.gate.waiting.lock() {
            waiting.remove(&self.id);
        }
    }
}

impl ConnectionGate {
    /// A gate of `slots` client connections; registers the limits' metrics, so call it after
    /// the metrics recorder is installed.
    pub fn new(slots: usize) -> Arc<Self> {
        ::metrics::gauge!(names::CONNECTIONS_MAX).set(slots as f64);
        let reason =
            |r: &'static str| ::metrics::counter!(names::REJECTED_REQUESTS_TOTAL, "reason" => r);
        let metrics = GateMetrics {
            open: ::metrics::gauge!(names::CONNECTIONS_OPEN),
            queued: ::metrics::counter!(names::CONNECTIONS_QUEUED_TOTAL),
            evicted: ::metrics::counter!(names::CONNECTIONS_EVICTED_TOTAL),
            idle_closed: ::metrics::counter!(names::CONNECTIONS_IDLE_CLOSED_TOTAL),
            head_timeout: reason("head_timeout"),
            head_too_large: reason("head_too_large"),
            line_too_long: reason("request_line_too_long"),
            bare_cr: reason("bare_cr"),
        };
        metrics.open.set(0.0);
        Arc::new(ConnectionGate {
            slots: Arc::new(Semaphore::new(slots)),
            size: slots,
            evict_batch: (slots / 32).clamp(1, 32),
            waiting: Mutex::new(BTreeMap::new()),
            next_wait: AtomicU64::new(0),
            metrics,
        })
    }

    /// Take a slot for a connection just accepted, waiting for one if another accept loop
    /// took the last free one first.
    pub async fn enter(&self) -> Option<Slot> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self.slots.clone().acquire_owned().await.ok()?,
        };
        self.metrics.open.increment(1.0);
        Some(Slot {
            _permit: permit,
            open: self.metrics.open.clone(),
        })
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.slots.available_permits()
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.size.saturating_sub(self.free())
    }

    /// Count a connection as waiting for its client (a head, or more of a buffered body) until
    /// the returned guard drops: the gate may close it with `kill` to make room.
    fn wait_for_client(&self, kill: &Arc<Notify>) -> Waiting<'_> {
        let id = self.next_wait.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(id, kill.clone());
        }
        Waiting { gate: self, id }
    }

    /// Close the `n` connections that have waited longest for their client (fewer if fewer
    /// wait); how many were closed.
    fn evict_oldest(&self, n: usize) -> usize {
        let oldest: Vec<Arc<Notify>> = match self.waiting.lock() {
            Ok(mut waiting) => (0..n)
                .map_while(|_| waiting.pop_first())
                .map(|(_, k)| k)
                .collect(),
            Err(_) => Vec::new(),
        };
        for kill in &oldest {
            kill.notify_one();
        }
        self.metrics.evicted.increment(oldest.len() as u64);
        oldest.len()
    }

    /// Wait until a slot is free, closing idle connections to free one.
    async fn admit(&self) -> bool {
        if self.slots.available_permits() > 0 {
            return true;
        }
        self.metrics.queued.increment(1);
        loop {
            self.evict_oldest(self.evict_batch);
            match tokio::time::timeout(EVICT_RETRY, self.slots.acquire()).await {
                Ok(Ok(_free)) => return true,
                Ok(Err(_closed)) => return false,
                Err(_) => continue,
            }
        }
    }
}

/// The accept loops' filter: while every slot is taken, an accept waits here (later
/// connections stay in the kernel's backlog) until a slot frees.
#[derive(Debug)]
pub struct GateFilter(pub Arc<ConnectionGate>);

#[async_trait]
impl ConnectionFilter for GateFilter {
    async fn should_accept(&self, _addr: Option<&SocketAddr>) -> bool {
        self.0.admit().await
    }
}

tokio::task_local! {
    /// The HTTP/1 connection whose request is being served, so that a wait for more of its
    /// request (a slow body) can be closed by the gate like a wait for a head.
    static CONNECTION: Connection;
}

/// The gate a connection holds its slot in, and how the gate closes it.
#[derive(Clone)]
struct Connection {
    gate: Arc<ConnectionGate>,
    kill: Arc<Notify>,
}

/// Wait for more of a request from its client (`read`), as a connection the gate may close to
/// make room when every slot is taken: the longest such wait goes first, with the connections
/// waiting for a head. `None` when the connection was chosen. A slow upload then cannot hold
/// a slot that a new client needs, which is what the cap protects (HAProxy bounds the same
/// phase with `timeout http-request`). Outside an HTTP/1 connection of the gate (HTTP/2,
/// tests), `read` is simply awaited.
pub async fn evictable<F: std::future::Future>(read: F) -> Option<F::Output> {
    let Ok(connection) = CONNECTION.try_with(Connection::clone) else {
        return Some(read.await);
    };
    let _waiting = connection.gate.wait_for_client(&connection.kill);
    tokio::select! {
        r = read => Some(r),
        _ = connection.kill.notified() => None,
    }
}

/// What reading a request head came to.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A complete HTTP/1 head (and whatever followed it).
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// More bytes are needed.
    Partial,
    /// The request line is longer than allowed.
    LineTooLong,
    /// The head is larger than allowed.
    TooLarge,
    /// A CR not followed by LF.
    BareCr,
}

/// Incremental scan of a head being read: where the request line and the head end, looked for
/// only in the bytes not yet seen, so a head sent a byte at a time costs linear time.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes already scanned for the end of the head.
    scanned: usize,
    /// Whether the request line's end was found (and was short enough).
    line_done: bool,
}

impl HeadScan {
    fn classify(&mut self, buf: &[u8], limits: &ClientLimits, h2c: bool) -> Head {
        if h2c {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] == H2_PREFACE[..n] {
                return if n == H2_PREFACE.len() {
                    Head::Http2
                } else {
                    Head::Partial
                };
            }
        }
        let from = match self.unscanned(buf, limits) {
            Ok(from) => from,
            Err(refused) => return refused,
        };
        // One pass over the line ends (SIMD-searched, as a head is mostly other bytes): the head
        // ends at an empty line. A CR ends a line or nothing (RFC 9112 §2.2): a head with a bare
        // CR is refused at once, as nginx and HAProxy do, rather than waited on until its time
        // runs out. Only the head is looked at: a body read with it may hold any byte.
        let mut end = None;
        for i in memchr::memchr2_iter(b'\r', b'\n', &buf[from..]) {
            let i = from + i;
            if buf[i] == b'\r' {
                if buf.get(i + 1).is_some_and(|&b| b != b'\n') {
                    return Head::BareCr;
                }
                continue;
            }
            match &buf[i + 1..] {
                [b'\n', ..] => end = Some(i + 2),
                [b'\r', b'\n', ..] => end = Some(i + 3),
                _ => continue,
            }
            break;
        }
        head_size(end, buf.len(), limits)
    }

    /// Check the request line (once its end has come) and return where the bytes not yet
    /// scanned for the head's end start; or the refusal of a request line that is too long.
    fn unscanned(&mut self, buf: &[u8], limits: &ClientLimits) -> Result<usize, Head> {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        let start = buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(buf.len());
        let head = &buf[start..];
        if !self.line_done {
            match memchr::memchr(b'\n', head) {
                Some(i) => {
                    let line = if i > 0 && head[i - 1] == b'\r' {
                        i - 1
                    } else {
                        i
                    };
                    if line > limits.max_request_line_bytes {
                        return Err(Head::LineTooLong);
                    }
                    self.line_done = true;
                }
                // One more byte may still be the `\r` of a line exactly at the limit.
                None if head.len() > limits.max_request_line_bytes + 1 => {
                    return Err(Head::LineTooLong)
                }
                None => {}
            }
        }
        let from = self.scanned.saturating_sub(2).max(start);
        self.scanned = buf.len();
        Ok(from)
    }
}

/// A head of `len` bytes so far, complete at `end` if that was found, against the size limit.
fn head_size(end: Option<usize>, len: usize, limits: &ClientLimits) -> Head {
    match end {
        Some(end) if end > limits.max_header_bytes => Head::TooLarge,
        Some(_) => Head::Http1,
        None if len >= limits.max_header_bytes => Head::TooLarge,
        None => Head::Partial,
    }
}

/// Why no head came.
#[derive(Debug)]
enum NoHead {
    /// The client closed, or the read failed; `partial` when part of a head had arrived.
    Closed { partial: bool },
    /// The time ran out; `partial` as above.
    TimedOut { partial: bool },
    /// The connection was closed to make room for a new one.
    Evicted,
}

/// When the bytes of one head must arrive.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// The first byte.
    first_byte: Instant,
    /// The whole head, when fixed in advance (first request: counted from the accept).
    head: Option<Instant>,
}

/// What one connection's waits for a request head share: the timer of their deadlines, the
/// eviction signal and the listeners' stop.
struct ConnWait<'a> {
    timer: std::pin::Pin<&'a mut tokio::time::Sleep>,
    kill: &'a Arc<Notify>,
    stopped: tokio::sync::watch::Receiver<bool>,
}

/// fulcrum's HTTP application: the limits of this module in front of pingora's HTTP proxy,
/// whose sessions see the drain watch as their shutdown signal (see [`crate::lifecycle`]).
pub struct LimitedApp<A> {
    inner: Arc<A>,
    drain: ShutdownWatch,
    gate: Arc<ConnectionGate>,
    limits: ClientLimits,
    h2c: bool,
    /// Set once the listeners have stopped: idle keep-alive connections close then, as
    /// pingora's own sessions do.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Where the housekeeping finds the workers that serve these connections.
    data_plane: Arc<crate::memory::DataPlane>,
    /// The process's life: a connection counts as a request in flight until its first request
    /// is answered, so that the process does not end between its accept and its request.
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

impl<A> LimitedApp<A> {
    /// `inner` behind `gate` and `limits`, draining and ending with `lifecycle`; `h2c` accepts
    /// HTTP/2 with prior knowledge on cleartext connections.
    pub fn new(
        inner: A,
        lifecycle: Arc<crate::lifecycle::Lifecycle>,
        gate: Arc<ConnectionGate>,
        limits: ClientLimits,
        h2c: bool,
    ) -> Self {
        LimitedApp {
            inner: Arc::new(inner),
            drain: lifecycle.drain_watch(),
            lifecycle,
            gate,
            limits,
            h2c,
            stopped: tokio::sync::watch::channel(false).0,
            data_plane: Arc::default(),
        }
    }

    /// The runtime of the connections, once the first has come (see [`crate::memory`]).
    pub fn data_plane(&self) -> Arc<crate::memory::DataPlane> {
        self.data_plane.clone()
    }

    /// The keep-alive time pingora's sessions are told, in whole seconds (at least 1), or
    /// `None` when keep-alive is off; fulcrum enforces the exact time itself.
    fn pingora_keepalive(&self) -> Option<u64> {
        let ms = self.limits.keepalive_timeout.as_millis() as u64;
        (ms > 0).then(|| ms.div_ceil(1000))
    }

    /// Read one request head into a new buffer, within `deadlines` kept by `conn`'s timer;
    /// `pipelined` holds bytes of it the client sent before the previous answer; `fresh` when it
    /// is the connection's first request, the only one that may open with the HTTP/2 preface
    /// when `h2c` (the listener takes HTTP/2 with prior knowledge).
    async fn read_head(
        &self,
        stream: &mut Stream,
        deadlines: Deadlines,
        conn: &mut ConnWait<'_>,
        h2c: bool,
        fresh: bool,
        pipelined: Option<BytesMut>,
    ) -> Result<(Head, BytesMut), NoHead> {
        let h2c = h2c && fresh;
        let mut scan = HeadScan::default();
        let mut head_deadline = deadlines.head;
        // A pipelined head goes through the same checks as one read here.
        let mut buf = match pipelined {
            Some(bytes) if !bytes.is_empty() => {
                match scan.classify(&bytes, &self.limits, h2c) {
                    Head::Partial => {}
                    done => return Ok((done, bytes)),
                }
                head_deadline.get_or_insert(Instant::now() + self.limits.header_timeout);
                bytes
            }
            // No buffer while the connection waits: an idle keep-alive connection holds none.
            // The first read goes to a small array in this future and the buffer is made of
            // what came.
            _ => BytesMut::new(),
        };
        let _waiting = self.gate.wait_for_client(conn.kill);
        let mut first_byte = deadlines.first_byte;
        let grace = |until: Instant| until.min(Instant::now() + FIRST_REQUEST_GRACE);
        if *conn.stopped.borrow() {
            if !fresh {
                return Err(NoHead::Closed { partial: false });
            }
            first_byte = grace(first_byte);
        }
        loop {
            let deadline = match head_deadline {
                Some(d) if !buf.is_empty() => d,
                _ => first_byte,
            };
            // A later deadline only moves the timer's expiry (tokio re-files it in its wheel
            // when the old one passes); an earlier one re-registers it.
            if conn.timer.deadline() != deadline {
                conn.timer.as_mut().reset(deadline);
            }
            // At most one byte past the head limit is ever buffered.
            let room = self.limits.max_header_bytes + 1 - buf.len();
            let partial = !buf.is_empty();
            let read = {
                let step = async {
                    if buf.capacity() == 0 {
                        let mut first = [0u8; FIRST_READ];
                        let n = stream.read(&mut first[..room.min(FIRST_READ)]).await?;
                        buf.extend_from_slice(&first[..n]);
                        Ok(n)
                    } else {
                        buf.reserve(room.min(HEAD_READ_STEP));
                        stream.read_buf(&mut (&mut buf).limit(room)).await
                    }
                };
                tokio::select! {
                    // Bytes that are already there win over the timer, as in `timeout_at`.
                    biased;
                    r = step => r,
                    () = conn.timer.as_mut() => return Err(NoHead::TimedOut { partial }),
                    _ = conn.kill.notified() => return Err(NoHead::Evicted),
                    _ = conn.stopped.changed(), if !partial => {
                        if !fresh {
                            return Err(NoHead::Closed { partial });
                        }
                        first_byte = grace(first_byte);
                        continue;
                    }
                }
            };
            match read {
                Err(_) | Ok(0) => return Err(NoHead::Closed { partial }),
                Ok(_) => {}
            }
            match scan.classify(&buf, &self.limits, h2c) {
                Head::Partial => {
                    // The head's time runs from its first byte, read just now.
                    if head_deadline.is_none() {
                        head_deadline = Some(Instant::now() + self.limits.header_timeout);
                    }
                    continue;
                }
                done => return Ok((done, buf)),
            }
        }
    }

    /// Answer a refused head and close: the answer, then a short lingering read so that it is
    /// not lost to a reset.
    async fn refuse(&self, mut stream: Stream, status: &str, counter: &Counter) {
        counter.increment(1);
        let body = format!("{status}\n");
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        let _ = AsyncWriteExt::shutdown(&mut stream).await;
        let until = Instant::now() + LINGER;
        // On the heap: an array here would make every connection's future (refused or not)
        // this much larger.
        let mut sink = vec![0u8; 4096];
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match timeout_at(until, stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }
}

#[async_trait]
impl<A> ServerApp for LimitedApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    fn handshake_started(&self) -> Option<Box<dyn Send>> {
        // A TLS connection accepted before the listeners stop may still be in its handshake
        // when they do: the drain waits for it a moment (`FIRST_REQUEST_GRACE`).
        Some(Box::new(self.lifecycle.handshake_started()))
    }

    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        // Until its first request is answered the connection counts as a request in flight, so
        // that a drain or a hand-over does not end the process between its accept and its
        // request (which then has `FIRST_REQUEST_GRACE` to come once the listeners stop). It
        // is counted before anything here waits: the count of its handshake ends after this
        // function's first pause.
        let mut opening = Some(self.lifecycle.request_started());
        let _slot = self.gate.enter().await?;
        self.data_plane.note_current();
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 chosen by ALPN: pingora's HTTP/2 server, its idle timeout and header limit;
            // its streams are counted one by one as they come.
            drop(opening);
            return self.inner.process_new(stream, &self.drain).await;
        }
        let h2c = self.h2c && stream.get_ssl_digest().is_none();
        let kill = Arc::new(Notify::new());
        let keepalive = self.limits.keepalive_timeout;
        let header = self.limits.header_timeout;
        // A new connection gets the first byte's wait of an idle one, within the head's time.
        let first_wait = if keepalive.is_zero() {
            header
        } else {
            keepalive.min(header)
        };
        let mut deadlines = Deadlines {
            first_byte: accepted + first_wait,
            head: Some(accepted + header),
        };
        // One timer and one stop subscription for the connection's life, not one per request.
        let timer = tokio::time::sleep_until(deadlines.first_byte);
        tokio::pin!(timer);
        let mut conn = ConnWait {
            timer,
            kill: &kill,
            stopped: self.stopped.subscribe(),
        };
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            // Bytes of the next request that came before the previous answer (pipelining).
            let pipelined = settings.as_mut().and_then(|s| s.take_pipelined_prefix());
            let (head, buf) = match self
                .read_head(&mut stream, deadlines, &mut conn, h2c, first, pipelined)
                .await
            {
                Ok(read) => read,
                Err(NoHead::TimedOut { partial: true }) => {
                    self.refuse(
                        stream,
                        "408 Request Timeout",
                        &self.gate.metrics.head_timeout,
                    )
                    .await;
                    return None;
                }
                Err(NoHead::Closed { partial: true }) => {
                    crate::metrics::client_aborts().head.increment(1);
                    return None;
                }
                Err(NoHead::TimedOut { partial: false }) => {
                    self.gate.metrics.idle_closed.increment(1);
                    return None;
                }
                // Closed at once, without an answer and its lingering read: the slot is wanted
                // now, by a connection waiting in the backlog. Every connection a slow client
                // opens past the cap would otherwise cost a slot for the linger time, and the
                // accepts (a well-behaved client's among them) would queue behind them.
                Err(NoHead::Closed { partial: false } | NoHead::Evicted) => return None,
            };
            match head {
                Head::Http1 => {}
                Head::Http2 => {
                    // An HTTP/2 connection lives on: its streams count themselves.
                    drop(opening.take());
                    return self.serve_h2c(stream, buf).await;
                }
                Head::LineTooLong => {
                    self.refuse(stream, "414 URI Too Long", &self.gate.metrics.line_too_long)
                        .await;
                    return None;
                }
                Head::BareCr => {
                    self.refuse(stream, "400 Bad Request", &self.gate.metrics.bare_cr)
                        .await;
                    return None;
                }
                Head::TooLarge | Head::Partial => {
                    self.refuse(
                        stream,
                        "431 Request Header Fields Too Large",
                        &self.gate.metrics.head_too_large,
                    )
                    .await;
                    return None;
                }
            }
            first = false;
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => session.set_keepalive(self.pingora_keepalive()),
            }
            // HTTP/1.1 pipelining (RFC 9112 §9.3.2): a request that comes before the previous
            // answer is kept for the next turn of this loop, and answered in order.
            session.set_pipelining_enabled(true);
            if *self.drain.borrow() {
                session.set_keepalive(None);
            }
            session.set_pipelined_prefix(buf);
            let connection = Connection {
                gate: self.gate.clone(),
                kill: kill.clone(),
            };
            let reused = CONNECTION
                .scope(
                    connection,
                    self.inner.process_new_http(session, &self.drain),
                )
                .await?;
            drop(opening.take());
            let (next, next_settings) = reused.consume();
            stream = next;
            settings = next_settings;
            if keepalive.is_zero() {
                return None;
            }
            // pingora handed the connection back, so its answer did not say `Connection: close`
            // (the drain began while this request was under way). The client will reuse the
            // connection: its next request is read and answered with `Connection: close`, as
            // every request is once the drain has begun. Closing it here instead would race
            // that request, which a client cannot tell from a lost one. Until then it waits as
            // an idle connection does, and closes when the listeners stop.
            let now = Instant::now();
            deadlines = Deadlines {
                first_byte: now + keepalive,
                head: None,
            };
        }
    }

    async fn cleanup(&self) {
        self.stopped.send_replace(true);
        ServerApp::cleanup(&*self.inner).await;
    }
}

impl<A> LimitedApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Hand a connection that opened with the HTTP/2 preface to pingora's HTTP/2 server, with
    /// the bytes already read put back in front of the socket.
    async fn serve_h2c(self: &Arc<Self>, stream: Stream, read: BytesMut) -> Option<Stream> {
        use pingora_core::protocols::l4::stream::Stream as TcpStream;
        let mut tcp = match stream.into_any().downcast::<TcpStream>() {
            Ok(tcp) => tcp,
            Err(_) => {
                log::debug!("an h2c connection is not a plain TCP stream; closing it");
                return None;
            }
        };
        tcp.rewind(&read);
        self.inner.process_new(tcp, &self.drain).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(line: usize, head: usize) -> ClientLimits {
        ClientLimits {
            max_request_line_bytes: line,
            max_header_bytes: head,
            ..ClientLimits::default()
        }
    }

    fn classify(input: &[u8], l: &ClientLimits, h2c: bool) -> Head {
        HeadScan::default().classify(input, l, h2c)
    }

    #[test]
    fn a_bare_cr_is_refused_as_soon_as_the_byte_after_it_arrives() {
        let l = limits(64, 1024);
        assert_eq!(classify(b"GET / HTTP/1.1\r", &l, false), Head::Partial);
        assert_eq!(classify(b"GET / HTTP/1.1\rX", &l, false), Head::BareCr);
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\rb\r\n", &l, false),
            Head::BareCr
        );
        // Read in pieces: the CR at the end of one read, the byte after it in the next.
        for (next, expected) in [(&b"c"[..], Head::BareCr), (b"\n\r\n", Head::Http1)] {
            let mut scan = HeadScan::default();
            let first = b"GET / HTTP/1.1\r\nA: b\r";
            assert_eq!(scan.classify(first, &l, false), Head::Partial);
            assert_eq!(
                scan.classify(&[&first[..], next].concat(), &l, false),
                expected
            );
        }
    }

    #[test]
    fn heads_without_header_lines_are_complete() {
        let l = limits(64, 1024);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n\r\n", &l, true), Head::Http1);
        assert_eq!(
            classify(b"OPTIONS / HTTP/1.0\r\n\r\n", &l, true),
            Head::Http1
        );
        assert_eq!(classify(b"GET / HTTP/1.1\n\n", &l, true), Head::Http1);
        assert_eq!(
            classify(b"\r\nGET / HTTP/1.1\r\n\r\n", &l, false),
            Head::Http1
        );
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n", &l, true),
            Head::Partial
        );
    }

    #[test]
    fn the_preface_is_told_apart_from_the_first_bytes() {
        let l = limits(64, 1024);
        assert_eq!(classify(b"P", &l, true), Head::Partial);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\n", &l, true), Head::Partial);
        assert_eq!(classify(H2_PREFACE, &l, true), Head::Http2);
        assert_eq!(classify(b"POST / HTTP/1.1\r\n\r\n", &l, true), Head::Http1);
        // Without h2c the preface is just an odd HTTP/1 head, left to the parser.
        assert_eq!(classify(H2_PREFACE, &l, false), Head::Http1);
    }

    #[test]
    fn long_lines_and_large_heads_are_refused_without_waiting_for_their_end() {
        let l = limits(16, 1024);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20));
        assert_eq!(classify(long.as_bytes(), &l, true), Head::LineTooLong);
        assert_eq!(classify(&[b'a'; 18], &l, true), Head::LineTooLong);
        assert_eq!(classify(&[b'a'; 17], &l, true), Head::Partial);
        // A line of exactly the limit is allowed.
        assert_eq!(
            classify(b"GET /abcdefghijk\r\n\r\n", &l, true),
            Head::Http1,
            "16 bytes"
        );
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        while big.len() < 1024 {
            big.extend_from_slice(b"X-Filler: 0123456789\r\n");
        }
        assert_eq!(classify(&big, &l, true), Head::TooLarge);
        big.truncate(1000);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(classify(&big, &l, true), Head::Http1);
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_found() {
        let l = limits(64, 1024);
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut scan = HeadScan::default();
        for n in 1..input.len() {
            assert_eq!(scan.classify(&input[..n], &l, true), Head::Partial, "{n}");
        }
        assert_eq!(scan.classify(input, &l, true), Head::Http1);
    }

    /// The search for the head's end written byte by byte, as the definition the SIMD search
    /// must agree with (the request line is checked by the same code in both).
    #[derive(Default)]
    struct PlainScan(HeadScan);

    impl PlainScan {
        fn classify(&mut self, buf: &[u8], limits: &ClientLimits) -> Head {
            let from = match self.0.unscanned(buf, limits) {
                Ok(from) => from,
                Err(refused) => return refused,
            };
            let end = (from..buf.len())
                .filter(|&i| buf[i] == b'\n')
                .find_map(|i| match &buf[i + 1..] {
                    [b'\n', ..] => Some(i + 2),
                    [b'\r', b'\n', ..] => Some(i + 3),
                    _ => None,
                });
            if buf[from..end.unwrap_or(buf.len())]
                .windows(2)
                .any(|w| w[0] == b'\r' && w[1] != b'\n')
            {
                return Head::BareCr;
            }
            head_size(end, buf.len(), limits)
        }
    }

    #[test]
    fn the_head_scan_agrees_with_the_byte_by_byte_definition() {
        // Heads of line ends, letters and padding long enough to cross the SIMD search's
        // blocks, read whole and in pieces: every answer must be the plain scan's.
        let l = limits(40, 300);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut seen = [0usize; 5];
        for _ in 0..20_000 {
            let len = (next() % 600) as usize;
            // Per head, how often a CR and an LF come: from never to one byte in three.
            let (cr, lf) = ((next() % 4) * 3, 3 + next() % 30);
            let buf: Vec<u8> = (0..len)
                .map(|_| match next() % 100 {
                    n if n < cr => b'\r',
                    n if n < cr + lf => b'\n',
                    n if n % 7 == 0 => b':',
                    n => b"0123456789abcdef"[(n % 16) as usize],
                })
                .collect();
            let (mut fast, mut plain) = (HeadScan::default(), PlainScan::default());
            let mut at = 0;
            loop {
                at = (at + 1 + (next() % 64) as usize).min(buf.len());
                let (a, b) = (
                    fast.classify(&buf[..at], &l, false),
                    plain.classify(&buf[..at], &l),
                );
                assert_eq!(a, b, "{:?} read to {at}", String::from_utf8_lossy(&buf));
                if a != Head::Partial || at == buf.len() {
                    seen[match a {
                        Head::Http1 => 0,
                        Head::BareCr => 1,
                        Head::LineTooLong => 2,
                        Head::TooLarge => 3,
                        _ => 4,
                    }] += 1;
                    break;
                }
            }
        }
        // Every outcome came up often enough to be compared.
        assert!(seen.iter().all(|&n| n > 100), "outcomes {seen:?}");
    }

    #[test]
    fn the_budget_keeps_descriptors_for_backends_and_health_checks() {
        let l = ClientLimits::default();
        let b = ConnectionBudget::new(&l, 3, 1024);
        assert_eq!(b.reserve, FD_RESERVE_BASE + 3);
        assert_eq!(b.effective, (1024 - 67) / 2);
        assert!(b.warning().unwrap().contains("at most 478"));
        let b = ConnectionBudget::new(&l, 3, 1 << 20);
        assert_eq!(b.effective, l.max_connections);
        assert!(b.warning().is_none());
    }

    #[test]
    fn evictions_come_in_batches_on_large_gates() {
        let gate = ConnectionGate::new(100);
        assert_eq!(gate.evict_batch, 3);
        let kills: Vec<_> = (0..5).map(|_| Arc::new(Notify::new())).collect();
        let waits: Vec<_> = kills.iter().map(|k| gate.wait_for_client(k)).collect();
        assert_eq!(gate.evict_oldest(gate.evict_batch), 3);
        assert_eq!(gate.waiting.lock().unwrap().len(), 2);
        drop(waits);
        assert_eq!(ConnectionGate::new(2).evict_batch, 1);
        assert_eq!(ConnectionGate::new(100_000).evict_batch, 32);
    }

    #[tokio::test]
    async fn a_full_gate_closes_the_oldest_connection_waiting_for_a_head() {
        let gate = ConnectionGate::new(2);
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        assert_eq!(gate.free(), 0);
        assert_eq!(gate.open(), 2);
        let (old, new) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let old_wait = gate.wait_for_client(&old);
        let _new_wait = gate.wait_for_client(&new);
        let admitted = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit().await }
        });
        // The oldest waiter is told to close; it frees its slot.
        tokio::time::timeout(Duration::from_secs(1), old.notified())
            .await
            .unwrap();
        drop(old_wait);
        drop(a);
        assert!(admitted.await.unwrap());
        assert_eq!(gate.waiting.lock().unwrap().len(), 1);
    }
}
