//! Per-backend identity, lock-free live statistics (incl. Peak-EWMA latency) and the RAII in-flight lease.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};
use std::sync::Arc;

use crate::histogram::LatencyHistogram;
use crate::{HealthRule, Outcome, Pool};

/// EWMA decay used by `ewma_ns` before the first `record` supplies one (10 s, as in Finagle).
pub const DEFAULT_EWMA_DECAY_NS: f64 = 10e9;

/// Health bit: the active checker marked the backend down.
const ACTIVE_DOWN: u8 = 1;
/// Health bit: passive ejection after too many consecutive failures.
const EJECTED: u8 = 2;
/// Bound on the CAS loop updating the EWMA; under pathological contention a sample is dropped
/// rather than spinning forever (one lost latency sample is statistically irrelevant).
const MAX_CAS_RETRIES: usize = 16;

/// One upstream server in a pool.
#[derive(Debug)]
pub struct Backend {
    /// Display name; the address string, e.g. `"127.0.0.1:9001"`.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Configured weight; the pool's initial weight table is built from it.
    pub static_weight: u32,
    /// Live counters shared between the data plane and control/admin readers, and between the
    /// pools built for successive configurations that keep this backend.
    pub stats: Arc<BackendStats>,
}

impl Backend {
    /// A healthy backend with zeroed stats, named after its address.
    pub fn new(addr: SocketAddr, static_weight: u32) -> Self {
        Self {
            name: addr.to_string(),
            addr,
            static_weight,
            stats: Arc::new(BackendStats::new()),
        }
    }

    /// A backend that goes on with `stats` gathered under an earlier configuration, so health,
    /// latency estimates, counters and in-flight leases stay continuous across a reload.
    pub fn with_stats(addr: SocketAddr, static_weight: u32, stats: Arc<BackendStats>) -> Self {
        Self {
            name: addr.to_string(),
            addr,
            static_weight,
            stats,
        }
    }
}

/// Live per-backend counters; all lock-free atomics, shared between data plane and control/admin readers.
///
/// All accesses are `Relaxed`: each counter is an independent statistic and none of them is used
/// to publish other memory, so no ordering between them is needed.
pub struct BackendStats {
    in_flight: AtomicU64,
    /// Bitset of `ACTIVE_DOWN | EJECTED`; a single atomic so `is_healthy` is one load on the hot path.
    health: AtomicU8,
    consecutive_failures: AtomicU32,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Peak-EWMA estimate (f64 bits) as of `last_ns`.
    ewma_bits: AtomicU64,
    last_ns: AtomicU64,
    /// Decay (f64 bits) last passed to `record`; `ewma_ns` has no decay parameter so it is kept here.
    decay_bits: AtomicU64,
    /// Latency of every recorded attempt, for windowed percentiles.
    latency: LatencyHistogram,
    /// Highest in-flight count since the last `take_max_in_flight`.
    max_in_flight: AtomicU64,
    /// Load the backend reported about itself (f64 bits, utilisation 0–1); NaN when never reported.
    reported_load_bits: AtomicU64,
    /// Weight last installed through [`Pool::set_weights`] (f64 bits); NaN when never set, i.e.
    /// the configured weight is in force. Read when a reload rebuilds the pool.
    assigned_weight_bits: AtomicU64,
    /// When the backend's slow-start ramp began ([`crate::now_ns`] time); 0 when it has none.
    ramp_start_ns: AtomicU64,
}

impl Default for BackendStats {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for BackendStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendStats")
            .field("in_flight", &self.in_flight())
            .field("healthy", &self.is_healthy())
            .field("consecutive_failures", &self.consecutive_failures())
            .field("requests", &self.requests())
            .field("errors", &self.errors())
            .field("ewma_ns", &f64::from_bits(self.ewma_bits.load(Relaxed)))
            .field("last_ns", &self.last_ns.load(Relaxed))
            .finish()
    }
}

impl BackendStats {
    /// Zeroed counters, healthy, never observed.
    pub fn new() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            health: AtomicU8::new(0),
            consecutive_failures: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(0f64.to_bits()),
            last_ns: AtomicU64::new(0),
            decay_bits: AtomicU64::new(DEFAULT_EWMA_DECAY_NS.to_bits()),
            latency: LatencyHistogram::new(),
            max_in_flight: AtomicU64::new(0),
            reported_load_bits: AtomicU64::new(f64::NAN.to_bits()),
            assigned_weight_bits: AtomicU64::new(f64::NAN.to_bits()),
            ramp_start_ns: AtomicU64::new(0),
        }
    }

    /// Attempts currently in progress (outstanding [`InFlightGuard`]s).
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Completed attempts.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Completed attempts whose outcome was not [`Outcome::Success`].
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// Active and passive health combined; a new backend starts healthy.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.health.load(Relaxed) == 0
    }

    /// Set by the active health checker. `true` also clears a passive ejection and the
    /// consecutive-failure count, so a backend the checker has verified gets a clean slate.
    pub fn set_healthy(&self, up: bool) {
        if up {
            self.consecutive_failures.store(0, Relaxed);
            self.health.store(0, Relaxed);
        } else {
            self.health.fetch_or(ACTIVE_DOWN, Relaxed);
        }
    }

    /// Bring the backend back into service at `now_ns` (a health check or the ejection back-off
    /// verified it) as [`BackendStats::set_healthy`]`(true)` does; when it was down, its
    /// slow-start ramp begins now. Returns whether it was down.
    pub fn recover(&self, now_ns: u64) -> bool {
        self.consecutive_failures.store(0, Relaxed);
        let was_down = self.health.swap(0, Relaxed) != 0;
        if was_down {
            self.start_ramp(now_ns);
        }
        was_down
    }

    /// Begin a slow-start ramp at `now_ns`; it only shapes traffic in a pool configured with a
    /// [`crate::SlowStart`].
    pub fn start_ramp(&self, now_ns: u64) {
        // 0 means "no ramp", so a ramp begun at the clock's epoch is recorded 1 ns later.
        self.ramp_start_ns.store(now_ns.max(1), Relaxed);
    }

    /// When the current slow-start ramp began, if one was ever begun.
    #[inline]
    pub fn ramp_start_ns(&self) -> Option<u64> {
        match self.ramp_start_ns.load(Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// The weight last installed through [`Pool::set_weights`] (by the control loop or the
    /// admin API); `None` while the configured weight is in force.
    pub fn assigned_weight(&self) -> Option<f64> {
        let w = f64::from_bits(self.assigned_weight_bits.load(Relaxed));
        (!w.is_nan()).then_some(w)
    }

    pub(crate) fn set_assigned_weight(&self, weight: f64) {
        self.assigned_weight_bits.store(weight.to_bits(), Relaxed);
    }

    /// The latency histogram of every recorded attempt (snapshot and diff it for a window).
    pub fn latency_histogram(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// The highest in-flight count since the previous call, then restart the window at the
    /// current count.
    pub fn take_max_in_flight(&self) -> u64 {
        let current = self.in_flight();
        self.max_in_flight.swap(current, Relaxed).max(current)
    }

    /// Store the utilisation (0–1) the backend reported in a response header.
    pub fn set_reported_load(&self, load: f64) {
        if load.is_finite() {
            self.reported_load_bits
                .store(load.clamp(0.0, 1.0).to_bits(), Relaxed);
        }
    }

    /// The last utilisation the backend reported, if it ever did.
    pub fn reported_load(&self) -> Option<f64> {
        let v = f64::from_bits(self.reported_load_bits.load(Relaxed));
        (!v.is_nan()).then_some(v)
    }

    /// Failures recorded since the last success (or `set_healthy(true)`).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// Peak-EWMA latency estimate in nanoseconds as of `now_ns`, decayed toward 0 by the time
    /// elapsed since the last observation: `est * exp(-elapsed / decay)`. 0.0 when never observed.
    #[inline]
    pub fn ewma_ns(&self, now_ns: u64) -> f64 {
        let est = f64::from_bits(self.ewma_bits.load(Relaxed));
        if est == 0.0 {
            return 0.0;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns.load(Relaxed));
        if elapsed == 0 {
            return est;
        }
        let decay = f64::from_bits(self.decay_bits.load(Relaxed));
        est * (-(elapsed as f64) / decay).exp()
    }

    /// Record one finished attempt.
    ///
    /// Peak rule: if `latency_ns` exceeds the current (decayed) estimate it replaces it at once;
    /// otherwise `est = est*w + latency*(1-w)` with `w = exp(-elapsed/decay)`. A failed attempt
    /// only ever raises the estimate (a fast connect-refused must not make a broken backend look
    /// attractive). Updates requests/errors and the consecutive-failure count (reset on success).
    ///
    /// Returns `true` if this call passively ejected the backend: consecutive failures reached
    /// `max_consecutive_failures` (0 disables passive ejection); it then stays unhealthy until
    /// `set_healthy(true)`.
    pub fn record(
        &self,
        latency_ns: u64,
        outcome: Outcome,
        now_ns: u64,
        decay_ns: f64,
        max_consecutive_failures: u32,
    ) -> bool {
        // A non-positive or NaN decay would make exp(-x/decay) meaningless; 1 ns ≈ "no memory".
        let decay = if decay_ns > 0.0 { decay_ns } else { 1.0 };
        self.decay_bits.store(decay.to_bits(), Relaxed);
        self.observe(
            latency_ns as f64,
            outcome == Outcome::Success,
            now_ns,
            decay,
        );
        self.latency.record_ns(latency_ns);
        self.requests.fetch_add(1, Relaxed);
        if outcome == Outcome::Success {
            self.consecutive_failures.store(0, Relaxed);
            return false;
        }
        self.errors.fetch_add(1, Relaxed);
        let failures = self
            .consecutive_failures
            .fetch_add(1, Relaxed)
            .saturating_add(1);
        if HealthRule::passive(max_consecutive_failures).goes_down(failures) {
            // fetch_or tells us whether *this* call made the transition, so exactly one caller
            // sees `true` (the one that should log / emit the ejection event).
            return self.health.fetch_or(EJECTED, Relaxed) & EJECTED == 0;
        }
        false
    }

    /// Fold one latency sample into the Peak-EWMA estimate.
    fn observe(&self, latency: f64, success: bool, now_ns: u64, decay: f64) {
        for _ in 0..MAX_CAS_RETRIES {
            let old_bits = self.ewma_bits.load(Relaxed);
            let old = f64::from_bits(old_bits);
            let elapsed = now_ns.saturating_sub(self.last_ns.load(Relaxed)) as f64;
            let w = (-elapsed / decay).exp();
            let new = if latency > old * w {
                latency
            } else if success {
                old * w + latency * (1.0 - w)
            } else {
                return;
            };
            // Estimate and timestamp are two words; the CAS serialises estimate updates and the
            // timestamp only moves forward. A reader between the two stores may briefly decay the
            // new estimate by the old elapsed time, which only underestimates for nanoseconds.
            if self
                .ewma_bits
                .compare_exchange_weak(old_bits, new.to_bits(), Relaxed, Relaxed)
                .is_ok()
            {
                self.last_ns.fetch_max(now_ns, Relaxed);
                return;
            }
        }
    }

    #[inline]
    fn acquire(&self) {
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Relaxed);
    }

    #[inline]
    fn release(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Pretend `n` requests are in flight without a pool (picker unit tests only).
    #[cfg(test)]
    pub(crate) fn acquire_for_test(&self, n: u64) {
        self.in_flight.fetch_add(n, Relaxed);
    }
}

/// RAII lease on a backend: increments `in_flight` on creation and decrements it exactly once on
/// drop, so errors, timeouts, panics and cancelled futures cannot leak a count.
pub struct InFlightGuard {
    /// Holding the pool keeps the backend alive even if the pool is swapped out by a reload.
    pool: Arc<Pool>,
    index: usize,
}

impl InFlightGuard {
    /// Increment `in_flight` of `pool.backends()[index]`; panics (before counting) if out of range.
    pub(crate) fn new(pool: Arc<Pool>, index: usize) -> Self {
        pool.backends()[index].stats.acquire();
        Self { pool, index }
    }

    /// Index of the leased backend within its pool.
    pub fn backend_index(&self) -> usize {
        self.index
    }

    /// The leased backend.
    pub fn backend(&self) -> &Backend {
        &self.pool.backends()[self.index]
    }

    /// The pool the backend belongs to.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.backend().stats.release();
    }
}

impl fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightGuard")
            .field("pool", &self.pool.name())
            .field("backend", &self.backend().name)
            .field("index", &self.index)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Algorithm;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    const DECAY: f64 = 1_000_000_000.0; // 1 s

    fn stats() -> BackendStats {
        BackendStats::new()
    }

    fn pool() -> Arc<Pool> {
        let backends = crate::test_util::backends(&[1, 1]);
        Arc::new(Pool::new(
            "p",
            Algorithm::RoundRobin,
            backends,
            Duration::from_secs(1),
            3,
        ))
    }

    #[test]
    fn new_backend_is_named_after_addr_and_healthy() {
        let b = Backend::new("127.0.0.1:9001".parse().unwrap(), 3);
        assert_eq!(b.name, "127.0.0.1:9001");
        assert_eq!(b.static_weight, 3);
        assert!(b.stats.is_healthy());
        assert_eq!(b.stats.in_flight(), 0);
        assert_eq!(b.stats.ewma_ns(123), 0.0);
    }

    #[test]
    fn never_observed_is_zero() {
        assert_eq!(stats().ewma_ns(0), 0.0);
        assert_eq!(stats().ewma_ns(u64::MAX), 0.0);
    }

    #[test]
    fn peak_sample_replaces_estimate_immediately() {
        let s = stats();
        s.record(1_000, Outcome::Success, 1_000, DECAY, 0);
        assert_eq!(s.ewma_ns(1_000), 1_000.0);
        // Higher sample, even an instant later: estimate jumps to it.
        s.record(50_000, Outcome::Success, 1_001, DECAY, 0);
        assert_eq!(s.ewma_ns(1_001), 50_000.0);
    }

    #[test]
    fn low_sample_moves_estimate_only_partially() {
        let s = stats();
        s.record(100_000, Outcome::Success, 0, DECAY, 0);
        // 0.1 decay-times later a 10 µs sample arrives.
        let t = (DECAY * 0.1) as u64;
        s.record(10_000, Outcome::Success, t, DECAY, 0);
        let w = (-0.1f64).exp();
        let expected = 100_000.0 * w + 10_000.0 * (1.0 - w);
        let got = s.ewma_ns(t);
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        assert!(got > 90_000.0 && got < 100_000.0);
    }

    #[test]
    fn estimate_decays_toward_zero() {
        let s = stats();
        s.record(1_000_000, Outcome::Success, 0, DECAY, 0);
        let one = s.ewma_ns(DECAY as u64);
        assert!((one - 1_000_000.0 * (-1.0f64).exp()).abs() < 1e-6);
        let five = s.ewma_ns(5 * DECAY as u64);
        assert!(five < 1_000_000.0 * 0.01, "{five}");
        let twenty = s.ewma_ns(20 * DECAY as u64);
        assert!(twenty < 1.0, "{twenty}");
        // Time running backwards (racing callers) must not inflate the estimate.
        assert_eq!(s.ewma_ns(0), 1_000_000.0);
    }

    #[test]
    fn failure_never_lowers_estimate_but_can_raise_it() {
        let s = stats();
        s.record(100_000, Outcome::Success, 0, DECAY, 0);
        s.record(10, Outcome::ConnectFailure, 1_000_000, DECAY, 0);
        assert_eq!(s.ewma_ns(0), 100_000.0);
        s.record(500_000, Outcome::Timeout, 2_000_000, DECAY, 0);
        assert_eq!(s.ewma_ns(2_000_000), 500_000.0);
    }

    #[test]
    fn counters_and_passive_ejection() {
        let s = stats();
        assert!(!s.record(1, Outcome::Success, 0, DECAY, 3));
        assert!(!s.record(1, Outcome::ServerError, 0, DECAY, 3));
        assert!(!s.record(1, Outcome::Timeout, 0, DECAY, 3));
        assert_eq!(s.consecutive_failures(), 2);
        assert!(s.is_healthy());
        // Third consecutive failure ejects; only this call reports it.
        assert!(s.record(1, Outcome::ConnectFailure, 0, DECAY, 3));
        assert!(!s.is_healthy());
        assert!(!s.record(1, Outcome::OtherFailure, 0, DECAY, 3));
        assert_eq!(s.requests(), 5);
        assert_eq!(s.errors(), 4);
        assert_eq!(s.consecutive_failures(), 4);
        // A success does not un-eject (only the active checker can), but resets the streak.
        s.record(1, Outcome::Success, 0, DECAY, 3);
        assert!(!s.is_healthy());
        assert_eq!(s.consecutive_failures(), 0);
        s.set_healthy(true);
        assert!(s.is_healthy());
    }

    #[test]
    fn set_healthy_true_clears_streak_and_ejection() {
        let s = stats();
        s.record(1, Outcome::ServerError, 0, DECAY, 2);
        assert!(s.record(1, Outcome::ServerError, 0, DECAY, 2));
        s.set_healthy(true);
        assert!(s.is_healthy());
        assert_eq!(s.consecutive_failures(), 0);
        // Active down is independent of passive state.
        s.set_healthy(false);
        assert!(!s.is_healthy());
        s.set_healthy(true);
        assert!(s.is_healthy());
    }

    #[test]
    fn zero_threshold_disables_ejection() {
        let s = stats();
        for _ in 0..100 {
            assert!(!s.record(1, Outcome::ServerError, 0, DECAY, 0));
        }
        assert!(s.is_healthy());
    }

    #[test]
    fn guard_counts_up_and_down() {
        let p = pool();
        let a = p.lease(0);
        let b = p.lease(0);
        let c = p.lease(1);
        assert_eq!(a.backend_index(), 0);
        assert_eq!(c.backend().name, "127.0.0.1:9002");
        assert_eq!(p.backends()[0].stats.in_flight(), 2);
        assert_eq!(p.backends()[1].stats.in_flight(), 1);
        drop(a);
        assert_eq!(p.backends()[0].stats.in_flight(), 1);
        drop((b, c));
        assert_eq!(p.backends()[0].stats.in_flight(), 0);
        assert_eq!(p.backends()[1].stats.in_flight(), 0);
    }

    #[test]
    fn guard_released_on_panic_unwind() {
        let p = pool();
        let p2 = Arc::clone(&p);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _g = p2.lease(1);
            assert_eq!(p2.backends()[1].stats.in_flight(), 1);
            panic!("upstream handler blew up");
        }));
        assert!(r.is_err());
        assert_eq!(p.backends()[1].stats.in_flight(), 0);
    }

    #[test]
    fn out_of_range_lease_panics_without_counting() {
        let p = pool();
        let p2 = Arc::clone(&p);
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || p2.lease(7))).is_err()
        );
        assert!(p.backends().iter().all(|b| b.stats.in_flight() == 0));
    }

    /// A future that holds a lease and never completes on its own (like a stalled upstream read).
    struct Stalled {
        _guard: InFlightGuard,
        polls: u32,
    }

    impl Future for Stalled {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            Poll::Pending
        }
    }

    #[test]
    fn guard_released_when_future_cancelled() {
        let p = pool();
        // Never polled.
        let fut: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(Stalled {
            _guard: p.lease(0),
            polls: 0,
        });
        assert_eq!(p.backends()[0].stats.in_flight(), 1);
        drop(fut);
        assert_eq!(p.backends()[0].stats.in_flight(), 0);

        // Polled a few times (pending), then dropped: the cancellation path of a timeout.
        let mut fut = Box::pin(Stalled {
            _guard: p.lease(0),
            polls: 0,
        });
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..3 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(fut.polls, 3);
        assert_eq!(p.backends()[0].stats.in_flight(), 1);
        drop(fut);
        assert_eq!(p.backends()[0].stats.in_flight(), 0);
    }

    #[test]
    fn guard_keeps_pool_alive() {
        let p = pool();
        let g = p.lease(1);
        drop(p);
        assert_eq!(g.backend().stats.in_flight(), 1);
        assert_eq!(g.pool().name(), "p");
    }

    #[test]
    fn concurrent_leases_balance_out() {
        let p = pool();
        std::thread::scope(|s| {
            for t in 0..4 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..10_000 {
                        let _g = p.lease(t % 2);
                    }
                });
            }
        });
        assert!(p.backends().iter().all(|b| b.stats.in_flight() == 0));
    }
}
