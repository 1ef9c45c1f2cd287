//! Scenario backends: loopback servers that behave like the `[[backends]]` of a lab scenario.
//!
//! A [`ScenarioServer`] serves at most `concurrency` requests at a time (the rest wait in FIFO
//! order), sleeps a lognormal service time around `service_ms` (scaled by the slowdown of any
//! active event), fails with 503 after `error_ms` with the probability in force, and closes its
//! listener and every open connection while a `down` event is active.
//!
//! Scenario time is derived from wall time by a [`LabClock`]: event times are compressed or
//! stretched by `time_scale`, service times are not.
//!
//! Request surface:
//! - `GET /healthz` answers 200 at once, without taking a slot.
//! - anything else takes a slot and answers 200 (the backend's name) or 503.
//! - every response carries `x-backend: NAME` and `x-backend-load: U`, where `U` is the
//!   share of busy slots (0 to 1) when the response is written, or, for a server started with
//!   a report window ([`ScenarioServer::start_with_load_window`]), the mean share over the last
//!   whole window, as a backend reporting its CPU utilisation would.
//!
//! Each server counts its busy time ([`ScenarioServer::busy_seconds`], slot-seconds) and the
//! requests it holds ([`ScenarioServer::in_flight`]), for autoscalers and for draining.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fulcrum_scenario::rng::{stream_seed, Rng, Stream};
use fulcrum_scenario::{Scenario, ScenarioBackend};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::busy::BusyMeter;

/// Maps wall-clock time to scenario time: `t_scenario = elapsed / time_scale`.
///
/// A `time_scale` of 0.25 plays a 120 s scenario in 30 s of wall time. Only the timeline
/// (load steps, event windows) is scaled; service times are real milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabClock {
    /// Wall-clock instant of scenario time 0.
    pub start: Instant,
    /// Wall seconds per scenario second (> 0).
    pub time_scale: f64,
}

impl LabClock {
    /// A clock whose scenario time 0 is now.
    pub fn new(time_scale: f64) -> LabClock {
        LabClock {
            start: Instant::now(),
            time_scale,
        }
    }

    fn scale(&self) -> f64 {
        if self.time_scale > 0.0 {
            self.time_scale
        } else {
            1.0
        }
    }

    /// Scenario seconds elapsed now (0 before `start`).
    pub fn scenario_time(&self) -> f64 {
        self.scenario_time_at(Instant::now())
    }

    /// Scenario seconds at the wall-clock instant `at` (0 before `start`).
    pub fn scenario_time_at(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64() / self.scale()
    }

    /// The wall-clock instant of scenario time `t` (seconds, clamped at 0).
    pub fn wall_at(&self, t: f64) -> Instant {
        self.start + Duration::from_secs_f64((t * self.scale()).max(0.0))
    }
}

/// State shared by a scenario server's accept loop and request handlers.
#[derive(Debug)]
struct Shared {
    backend: ScenarioBackend,
    slots: Semaphore,
    busy: AtomicU32,
    max_busy: AtomicU32,
    meter: Mutex<BusyMeter>,
    in_flight: AtomicU32,
    requests: AtomicU64,
    errors: AtomicU64,
    health_requests: AtomicU64,
    listening: AtomicBool,
    rng: Mutex<Rng>,
    clock: watch::Sender<LabClock>,
}

impl Shared {
    fn meter(&self) -> std::sync::MutexGuard<'_, BusyMeter> {
        self.meter.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self) -> f64 {
        let c = self.backend.concurrency.max(1);
        if let Some(u) = self.meter().window_utilisation(Instant::now(), c) {
            return u;
        }
        f64::from(self.busy.load(Ordering::Relaxed).min(c)) / f64::from(c)
    }
}

/// Counts a busy slot for as long as it lives.
struct Busy<'a>(&'a Shared);

impl<'a> Busy<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.busy.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_busy.fetch_max(now, Ordering::Relaxed);
        shared.meter().change(Instant::now(), 1);
        Busy(shared)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.meter().change(Instant::now(), -1);
    }
}

/// Counts a request held (waiting for a slot or in one) for as long as it lives.
struct Held<'a>(&'a Shared);

impl<'a> Held<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Held(shared)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running backend that plays one [`ScenarioBackend`].
#[derive(Debug)]
pub struct ScenarioServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ScenarioServer {
    /// Bind `addr` (port 0 picks a free port) and serve `backend` with scenario time from
    /// `clock`. `seed` drives service-time and failure sampling.
    ///
    /// Must be called within a tokio runtime; the server runs until dropped.
    pub async fn start(
        backend: &ScenarioBackend,
        addr: SocketAddr,
        seed: u64,
        clock: LabClock,
    ) -> io::Result<ScenarioServer> {
        Self::start_inner(backend, addr, seed, clock, None).await
    }

    /// [`ScenarioServer::start`], reporting in `x-backend-load` the mean share of busy slots
    /// over the last whole `window` (wall time) instead of the share at the response.
    pub async fn start_with_load_window(
        backend: &ScenarioBackend,
        addr: SocketAddr,
        seed: u64,
        clock: LabClock,
        window: Duration,
    ) -> io::Result<ScenarioServer> {
        Self::start_inner(backend, addr, seed, clock, Some(window)).await
    }

    async fn start_inner(
        backend: &ScenarioBackend,
        addr: SocketAddr,
        seed: u64,
        clock: LabClock,
        load_window: Option<Duration>,
    ) -> io::Result<ScenarioServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let concurrency = backend.concurrency.max(1);
        let (clock_tx, _) = watch::channel(clock);
        let shared = Arc::new(Shared {
            backend: backend.clone(),
            slots: Semaphore::new(concurrency as usize),
            busy: AtomicU32::new(0),
            max_busy: AtomicU32::new(0),
            meter: Mutex::new(BusyMeter::new(Instant::now(), load_window)),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            health_requests: AtomicU64::new(0),
            listening: AtomicBool::new(true),
            rng: Mutex::new(Rng::new(seed)),
            clock: clock_tx,
        });
        let task = tokio::spawn(serve(listener, addr, shared.clone()));
        Ok(ScenarioServer { addr, shared, task })
    }

    /// The bound address (kept across `down` windows).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend's name, sent in `x-backend`.
    pub fn name(&self) -> &str {
        &self.shared.backend.name
    }

    /// The scenario backend this server plays.
    pub fn backend(&self) -> &ScenarioBackend {
        &self.shared.backend
    }

    /// The clock in force.
    pub fn clock(&self) -> LabClock {
        *self.shared.clock.borrow()
    }

    /// Re-anchor scenario time, e.g. to make scenario time 0 the moment load starts.
    pub fn set_clock(&self, clock: LabClock) {
        self.shared.clock.send_replace(clock);
    }

    /// Requests answered (200 or 503), health checks excluded.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests answered with 503.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// Health-check requests answered.
    pub fn health_requests(&self) -> u64 {
        self.shared.health_requests.load(Ordering::Relaxed)
    }

    /// Slots busy right now.
    pub fn busy(&self) -> u32 {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Slot-seconds spent busy since the server started: divided by `concurrency` × an
    /// interval's length, the difference of two readings is the utilisation over it.
    pub fn busy_seconds(&self) -> f64 {
        self.shared.meter().busy_seconds(Instant::now())
    }

    /// Requests held right now, waiting for a slot or in one (health checks excluded).
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The most slots ever busy at once.
    pub fn max_busy(&self) -> u32 {
        self.shared.max_busy.load(Ordering::Relaxed)
    }

    /// Whether the listener is open (false during a `down` window).
    pub fn is_listening(&self) -> bool {
        self.shared.listening.load(Ordering::Relaxed)
    }
}

impl Drop for ScenarioServer {
    fn drop(&mut self) {
        // Aborting the server task drops the listener and every connection task with it.
        self.task.abort();
    }
}

/// The first event boundary strictly after `t`, if any.
fn next_boundary(backend: &ScenarioBackend, t: f64) -> Option<f64> {
    backend
        .events
        .iter()
        .flat_map(|e| [e.at_s, e.until_s])
        .filter(|b| b.is_finite() && *b > t)
        .min_by(f64::total_cmp)
}

async fn accept(listener: &Option<TcpListener>) -> io::Result<tokio::net::TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Accepts connections and opens or closes the listener as `down` windows start and end.
async fn serve(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    let mut clock_rx = shared.clock.subscribe();
    let mut rebind_at: Option<tokio::time::Instant> = None;
    loop {
        let clock = *clock_rx.borrow_and_update();
        let t = clock.scenario_time();
        let down = shared.backend.state_at(t).down;
        if down && listener.is_some() {
            // Closing the listener and aborting connections makes peers see refusals and
            // resets, as with a crashed backend.
            listener = None;
            conns.abort_all();
            shared.listening.store(false, Ordering::Relaxed);
        } else if !down && listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    rebind_at = None;
                    shared.listening.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    log::warn!("{}: cannot rebind {addr}: {e}", shared.backend.name);
                    rebind_at = Some(tokio::time::Instant::now() + Duration::from_millis(20));
                }
            }
        }
        let wake = rebind_at.unwrap_or_else(|| {
            next_boundary(&shared.backend, t).map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                |b| (clock.wall_at(b) + Duration::from_millis(1)).into(),
            )
        });
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            changed = clock_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = accept(&listener) => {
                let Ok(stream) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(req, shared.clone()));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn reply(shared: &Shared, status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("x-backend", shared.backend.name.as_str())
        .header("x-backend-load", format!("{:.3}", shared.load()))
        .header("content-type", "text/plain")
        .body(Full::new(body))
        .expect("static response parts are valid")
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        shared.health_requests.fetch_add(1, Ordering::Relaxed);
        return Ok(reply(&shared, StatusCode::OK, Bytes::from_static(b"ok\n")));
    }
    let _held = Held::new(&shared);
    // Read the whole request before queueing, as a real server would.
    let _ = req.into_body().collect().await;

    let _permit = shared
        .slots
        .acquire()
        .await
        .expect("the slot semaphore is never closed");
    let _busy = Busy::new(&shared);
    let state = shared
        .backend
        .state_at(shared.clock.borrow().scenario_time());
    let (fail, ms) = {
        let mut rng = shared.rng.lock().unwrap_or_else(|e| e.into_inner());
        if rng.uniform() < state.error_rate {
            (true, shared.backend.error_ms)
        } else {
            let median = shared.backend.service_ms * state.slowdown;
            (false, rng.lognormal(median, shared.backend.service_jitter))
        }
    };
    if ms > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    Ok(if fail {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        reply(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"unavailable\n"),
        )
    } else {
        reply(
            &shared,
            StatusCode::OK,
            Bytes::from(format!("{}\n", shared.backend.name)),
        )
    })
}

/// Start one server per backend of `scenario`.
///
/// With port 0 in `base` every server gets an ephemeral port; otherwise backend `i` listens on
/// `base.port() + i`. Backend `i` draws from the scenario seed's [`Stream::Backend`] `i`, the
/// stream the simulator's backend `i` draws from.
pub async fn start_all(
    scenario: &Scenario,
    base: SocketAddr,
    clock: LabClock,
) -> io::Result<Vec<ScenarioServer>> {
    start_all_inner(scenario, base, clock, None).await
}

/// [`start_all`], each server reporting its load over `window` as
/// [`ScenarioServer::start_with_load_window`] does.
pub async fn start_all_with_load_window(
    scenario: &Scenario,
    base: SocketAddr,
    clock: LabClock,
    window: Duration,
) -> io::Result<Vec<ScenarioServer>> {
    start_all_inner(scenario, base, clock, Some(window)).await
}

async fn start_all_inner(
    scenario: &Scenario,
    base: SocketAddr,
    clock: LabClock,
    load_window: Option<Duration>,
) -> io::Result<Vec<ScenarioServer>> {
    let mut servers = Vec::with_capacity(scenario.backends.len());
    for (i, backend) in scenario.backends.iter().enumerate() {
        let mut addr = base;
        if base.port() != 0 {
            let port = u16::try_from(usize::from(base.port()) + i)
                .map_err(|_| io::Error::other("backend port out of range"))?;
            addr.set_port(port);
        }
        let seed = stream_seed(scenario.seed, Stream::Backend(i));
        servers.push(ScenarioServer::start_inner(backend, addr, seed, clock, load_window).await?);
    }
    Ok(servers)
}

/// Serve `scenario`'s backends on ephemeral loopback ports, print one `NAME ADDR` line per
/// backend on stdout, and run until Ctrl-C or the end of the scenario.
pub fn run_testbed(scenario: &Scenario, time_scale: f64) -> io::Result<()> {
    run_testbed_at(scenario, SocketAddr::from(([127, 0, 0, 1], 0)), time_scale)
}

/// [`run_testbed`] with the addresses chosen as in [`start_all`].
pub fn run_testbed_at(scenario: &Scenario, base: SocketAddr, time_scale: f64) -> io::Result<()> {
    use std::io::Write as _;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let clock = LabClock::new(time_scale);
        let servers = start_all(scenario, base, clock).await?;
        {
            let mut out = io::stdout().lock();
            for s in &servers {
                writeln!(out, "{} {}", s.name(), s.addr())?;
            }
            out.flush()?;
        }
        let end = clock.wall_at(scenario.duration_s);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => eprintln!("testbed: interrupted"),
            _ = tokio::time::sleep_until(end.into()) => {
                eprintln!("testbed: scenario {} ended", scenario.name);
            }
        }
        drop(servers);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_scenario::BackendEvent;

    fn backend() -> ScenarioBackend {
        ScenarioBackend {
            name: "b".into(),
            concurrency: 1,
            service_ms: 10.0,
            service_jitter: 0.0,
            error_rate: 0.0,
            error_ms: 1.0,
            weight: 1,
            events: vec![BackendEvent {
                at_s: 2.0,
                until_s: 5.0,
                slowdown: 1.0,
                error_rate: None,
                down: true,
            }],
        }
    }

    #[test]
    fn clock_maps_times() {
        let c = LabClock::new(0.25);
        let w = c.wall_at(8.0);
        assert_eq!(w - c.start, Duration::from_secs(2));
        assert!((c.scenario_time_at(w) - 8.0).abs() < 1e-9);
        assert_eq!(c.scenario_time_at(c.start - Duration::from_millis(1)), 0.0);
    }

    #[test]
    fn boundaries() {
        let b = backend();
        assert_eq!(next_boundary(&b, 0.0), Some(2.0));
        assert_eq!(next_boundary(&b, 2.0), Some(5.0));
        assert_eq!(next_boundary(&b, 5.0), None);
    }
}
