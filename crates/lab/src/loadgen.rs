//! Open-loop load generation: Poisson arrivals sent at their scheduled times.
//!
//! Arrivals follow `load.rate_at(t)` (requests per wall second, with `t` in scenario time from
//! the [`LabClock`]). Every request is sent on its own task at its scheduled instant, whatever
//! happened to earlier requests, and its latency is measured from that scheduled instant: a
//! queue anywhere between the generator and the backends shows up in the latencies instead of
//! silently lowering the offered rate. Sends are timed by a [`PreciseTimer`] thread, not
//! tokio's millisecond timer wheel, so a send leaves within tens of µs of its instant.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fulcrum_report::RequestRecord;
use fulcrum_scenario::rng::{Rng, Stream};
use fulcrum_scenario::Load;
use fulcrum_testbed::scenario::LabClock;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::timer::PreciseTimer;

/// Body of the POST requests sent as the non-idempotent share of the load.
const POST_BODY: &[u8] = b"{\"lab\":\"non-idempotent\"}";

/// What to send, where, and for how long.
#[derive(Debug, Clone)]
pub struct LoadGenConfig {
    /// Address of the server under load (usually the proxy).
    pub target: SocketAddr,
    /// Arrival rates and the POST share.
    pub load: Load,
    /// Scenario seconds to generate arrivals for.
    pub duration_s: f64,
    /// Scenario time; arrivals are scheduled from `clock.start`.
    pub clock: LabClock,
    /// Backend names, in index order, to map the `x-backend` response header to indices.
    pub backend_names: Vec<String>,
    /// The scenario's seed; arrivals draw from its [`Stream::Arrivals`], as the simulator's do.
    pub seed: u64,
    /// After the last arrival, requests still outstanding get this long to finish before
    /// they are recorded as errors.
    pub drain_timeout: Duration,
    /// At most this many connections (and so requests under way) at once; a request that finds
    /// them all busy waits for one, its latency still counted from its scheduled instant.
    /// `None`: a new connection for every request that finds none idle, as a population of
    /// independent clients would open.
    pub max_connections: Option<usize>,
}

/// Live counters of a running load generator, for progress displays.
#[derive(Debug, Default)]
pub struct LoadStats {
    sent: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
}

impl LoadStats {
    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Requests answered (or given up on) so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Completed requests that were not a 2xx answer.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// A keep-alive HTTP/1.1 connection pool to one address.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// One permit per connection allowed, held by a request while it uses one.
    slots: Option<tokio::sync::Semaphore>,
}

/// A response's status and `x-backend` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The `x-backend` header, if any.
    pub backend: Option<String>,
}

impl Pool {
    /// An empty pool for `addr`; connections are opened on demand, never more than
    /// `max_connections` of them (requests beyond wait for one to be free).
    pub fn new(addr: SocketAddr, max_connections: Option<usize>) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
            slots: max_connections.map(|max| tokio::sync::Semaphore::new(max.max(1))),
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        if !sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sender);
        }
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr).await?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Send one request, read the whole response and return its status and backend.
    ///
    /// A pooled connection that turns out to be closed before the request was written is
    /// replaced by a fresh one; any other failure is returned.
    pub async fn send(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<Answer> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "lab")
            .header("content-length", body.len())
            .body(Full::new(body))?;
        // Held until the connection is back in the idle list (or dropped), so the connections
        // open never outnumber the permits.
        let _slot = match &self.slots {
            Some(slots) => Some(slots.acquire().await?),
            None => None,
        };
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                anyhow::bail!("connection to {} closed before use", self.addr);
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let backend = resp
                        .headers()
                        .get("x-backend")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    resp.into_body().collect().await?;
                    self.put_idle(sender);
                    return Ok(Answer { status, backend });
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

/// The next arrival after wall offset `w` seconds, or `None` past the end.
fn next_arrival(load: &Load, scale: f64, mut w: f64, end_w: f64, rng: &mut Rng) -> Option<f64> {
    loop {
        let t = w / scale;
        let rate = load.rate_at(t);
        let change_w =
            Some(load.next_change(t, f64::INFINITY) * scale).filter(|at| at.is_finite() && *at > w);
        if rate <= 0.0 || !rate.is_finite() {
            w = change_w?;
        } else {
            let next = w + rng.exp(rate);
            match change_w {
                // Arrivals are memoryless: past a rate change, draw again at the new rate.
                Some(c) if next > c => w = c,
                _ => w = next,
            }
            if w >= end_w {
                return None;
            }
            if change_w != Some(w) {
                return Some(w);
            }
        }
        if w >= end_w {
            return None;
        }
    }
}

/// Generate the load and return one record per request, in arrival order.
///
/// Returns once every request has been answered or given up on (at the end of the run plus
/// `drain_timeout`); unanswered requests count as errors with the latency they had reached.
pub async fn run(cfg: &LoadGenConfig, stats: Arc<LoadStats>) -> Vec<RequestRecord> {
    let scale = if cfg.clock.time_scale > 0.0 {
        cfg.clock.time_scale
    } else {
        1.0
    };
    let end_w = cfg.duration_s * scale;
    let deadline = cfg.clock.start + Duration::from_secs_f64(end_w.max(0.0)) + cfg.drain_timeout;
    let pool = Arc::new(Pool::new(cfg.target, cfg.max_connections));
    let names = Arc::new(cfg.backend_names.clone());
    let mut rng = Rng::stream(cfg.seed, Stream::Arrivals);
    let mut tasks = JoinSet::new();
    let mut records = Vec::new();
    let mut w = 0.0;
    let timer = PreciseTimer::start();
    while let Some(next) = next_arrival(&cfg.load, scale, w, end_w, &mut rng) {
        w = next;
        let post = rng.uniform() < cfg.load.non_idempotent_fraction;
        let scheduled = cfg.clock.start + Duration::from_secs_f64(w);
        timer.sleep_until(scheduled).await;
        while let Some(Ok(r)) = tasks.try_join_next() {
            records.push(r);
        }
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let (pool, names, stats) = (pool.clone(), names.clone(), stats.clone());
        let arrival_s = w / scale;
        tasks.spawn(async move {
            let (method, body) = if post {
                (Method::POST, Bytes::from_static(POST_BODY))
            } else {
                (Method::GET, Bytes::new())
            };
            let answer =
                tokio::time::timeout_at(deadline.into(), pool.send(method, "/lab", body)).await;
            let latency_ms = Instant::now()
                .saturating_duration_since(scheduled)
                .as_secs_f64()
                * 1000.0;
            let (ok, attempts) = match answer {
                Ok(Ok(a)) => (
                    a.status.is_success(),
                    a.backend
                        .and_then(|b| names.iter().position(|n| *n == b))
                        .into_iter()
                        .collect(),
                ),
                _ => (false, Vec::new()),
            };
            stats.completed.fetch_add(1, Ordering::Relaxed);
            if !ok {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            RequestRecord {
                arrival_s,
                latency_ms,
                ok,
                attempts,
                retries: 0,
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            records.push(r);
        }
    }
    records.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_rate_steps() {
        let load = Load {
            rate_rps: 100.0,
            steps: vec![(10.0, 0.0), (20.0, 400.0)],
            non_idempotent_fraction: 0.0,
            diurnal: None,
            bursts: Vec::new(),
        };
        let mut rng = Rng::new(9);
        let (mut w, mut counts) = (0.0, [0u32; 3]);
        while let Some(n) = next_arrival(&load, 1.0, w, 30.0, &mut rng) {
            assert!(n > w);
            w = n;
            counts[(w / 10.0) as usize] += 1;
        }
        assert!((900..1100).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[1], 0);
        assert!((3800..4200).contains(&counts[2]), "{counts:?}");

        // At time_scale 0.5 the same rates are offered over half the wall time.
        let mut rng = Rng::new(9);
        let (mut w, mut n) = (0.0, 0);
        while let Some(x) = next_arrival(&load, 0.5, w, 15.0, &mut rng) {
            w = x;
            n += 1;
        }
        assert!((2300..2700).contains(&n), "{n}");
    }
}
