//! Memory given back after a surge of client connections has gone.
//!
//! A burst of held request heads (up to `max_header_bytes` each) or of slow clients grows the
//! heap by tens of MB. The allocator keeps what was freed for reuse: mimalloc keeps each page in
//! the heap of the thread that allocated it until that thread collects, and a block freed by
//! another worker (a connection's task moves between the data plane's work-stealing workers)
//! only marks its page; the page goes back to the OS once its owner next allocates enough to
//! look at it. A proxy that falls quiet after an attack therefore kept the attack's peak
//! resident (benches/results/hardening.md, "header hold": 45 MB before, 89 MB after).
//!
//! So, like Envoy's allocator manager releasing free memory from a background timer, a
//! housekeeping task on the admin thread watches the open client connections once a second.
//! When they have fallen to half of their peak or less, by at least [`MIN_DROP`], and stopped
//! falling ([`ReleasePolicy`]), it asks every data-plane worker to collect its heap once (the
//! binary supplies the collecting function, since it chose the allocator: [`set_release`]).
//! Nothing of this runs per request: a connection only checks that the data plane's runtime
//! is known.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::limits::ConnectionGate;

/// How often the open connections are looked at.
pub const TICK: Duration = Duration::from_secs(1);

/// The least fall in open connections (from their peak) worth a collection: at the default
/// head limit, 64 held heads are 4 MiB.
pub const MIN_DROP: usize = 64;

/// The least time between two collections.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// How long a worker waits for the others to take their collection task, so that each worker
/// takes exactly one (a worker busy for longer is left out this time).
const RENDEZVOUS: Duration = Duration::from_millis(200);

/// Rounds of one task per worker before the workers not reached are left out this time.
const ROUNDS: usize = 3;

/// Gives the calling thread's free memory back to the OS (for mimalloc, `mi_collect(true)`).
pub type ReleaseFn = fn();

static RELEASE: OnceLock<ReleaseFn> = OnceLock::new();

/// Install how a thread gives its free memory back; the binary calls this before
/// [`crate::serve`]. Without it the housekeeping does nothing. Later calls are ignored.
pub fn set_release(release: ReleaseFn) {
    let _ = RELEASE.set(release);
}

fn release_fn() -> Option<ReleaseFn> {
    RELEASE.get().copied()
}

/// The data plane's runtime, learnt from its first connection.
#[derive(Debug, Default)]
pub struct DataPlane {
    handle: OnceLock<Handle>,
}

impl DataPlane {
    /// Remember the runtime the calling task runs on (once; later calls only read a flag).
    pub fn note_current(&self) {
        if self.handle.get().is_none() {
            if let Ok(h) = Handle::try_current() {
                let _ = self.handle.set(h);
            }
        }
    }
}

/// When a fall in open connections is worth a collection: once they have fallen to half their
/// peak or less, by at least [`MIN_DROP`], and have stopped falling (a collection while they
/// still close would miss the memory of those closing next), at most once per
/// [`MIN_INTERVAL`].
#[derive(Debug, Default)]
pub struct ReleasePolicy {
    peak: usize,
    previous: usize,
    last: Option<Instant>,
}

impl ReleasePolicy {
    /// Look at `open` connections at `now`; true when the heap should be collected now.
    pub fn observe(&mut self, open: usize, now: Instant) -> bool {
        let settled = open >= self.previous;
        self.previous = open;
        self.peak = self.peak.max(open);
        let fell = self.peak - open >= MIN_DROP && open <= self.peak / 2;
        let rested = self
            .last
            .is_none_or(|t| now.duration_since(t) >= MIN_INTERVAL);
        if fell && settled && rested {
            self.peak = open;
            self.last = Some(now);
            true
        } else {
            false
        }
    }
}

/// Spawn one task per worker of the runtime behind `handle`, from outside it, each running
/// `release` unless its thread is already in `done`.
///
/// A multi-threaded tokio runtime has no way to address one worker, so each task, after its
/// collection, waits (blocking its worker) until all have started or [`RENDEZVOUS`] has
/// passed: a waiting worker cannot take a second task, so the tasks spread over distinct
/// workers. Tasks are spawned from the admin thread, never from a worker, whose LIFO slot no
/// other worker could take from while it waits.
fn release_round(handle: &Handle, release: ReleaseFn, done: &Arc<Mutex<HashSet<ThreadId>>>) {
    let workers = handle.metrics().num_workers();
    let started = Arc::new((Mutex::new(0usize), Condvar::new()));
    for _ in 0..workers {
        let started = started.clone();
        let done = done.clone();
        handle.spawn(async move {
            let me = std::thread::current().id();
            let first = done.lock().is_ok_and(|mut d| d.insert(me));
            if first {
                release();
            }
            let (count, all) = &*started;
            let Ok(mut n) = count.lock() else { return };
            *n += 1;
            all.notify_all();
            let _ = all.wait_timeout_while(n, RENDEZVOUS, |n| *n < workers);
        });
    }
}

/// Run `release` once on each worker thread of the runtime behind `handle`: rounds of
/// [`release_round`] until every worker has run it, at most [`ROUNDS`]; how many did.
async fn on_every_worker(handle: &Handle, release: ReleaseFn) -> usize {
    let workers = handle.metrics().num_workers();
    let done = Arc::new(Mutex::new(HashSet::new()));
    for _ in 0..ROUNDS {
        release_round(handle, release, &done);
        tokio::time::sleep(RENDEZVOUS * 2).await;
        if done.lock().map_or(0, |d| d.len()) >= workers {
            break;
        }
    }
    done.lock().map_or(0, |d| d.len())
}

/// Watch the open connections of `gate` and collect every data-plane worker's heap (and the
/// admin thread's) when they have fallen; runs until the admin runtime stops.
pub async fn housekeeping(gate: Arc<ConnectionGate>, data_plane: Arc<DataPlane>) {
    let Some(release) = release_fn() else { return };
    let releases = ::metrics::counter!(crate::metrics::MEMORY_RELEASES_TOTAL);
    let mut policy = ReleasePolicy::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open = gate.open();
        if !policy.observe(open, Instant::now()) {
            continue;
        }
        let reached = match data_plane.handle.get() {
            Some(handle) => on_every_worker(handle, release).await,
            None => 0,
        };
        release();
        releases.increment(1);
        log::debug!(
            "memory: open client connections fell to {open}; heaps collected on {reached} workers"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_large_fall_from_the_peak_collects_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = ReleasePolicy::default();
        assert!(!p.observe(0, at(0)));
        assert!(!p.observe(300, at(1)));
        // Not yet half.
        assert!(!p.observe(200, at(2)));
        // Half, but still falling.
        assert!(!p.observe(100, at(3)));
        assert!(!p.observe(2, at(4)));
        // Settled.
        assert!(p.observe(2, at(5)));
        // The peak starts again from there.
        assert!(!p.observe(3, at(6)));
        assert!(!p.observe(1, at(20)));
        assert!(!p.observe(1, at(21)));
    }

    #[test]
    fn small_falls_and_quick_repeats_do_not_collect() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = ReleasePolicy::default();
        assert!(!p.observe(MIN_DROP - 1, at(0)));
        assert!(!p.observe(0, at(1)));
        assert!(!p.observe(0, at(2)), "a fall of fewer than MIN_DROP");
        assert!(!p.observe(1000, at(3)));
        assert!(!p.observe(400, at(4)));
        // Stopped falling: rising again counts as settled.
        assert!(p.observe(500, at(5)));
        assert!(!p.observe(1000, at(6)));
        assert!(!p.observe(0, at(7)));
        assert!(!p.observe(0, at(8)), "within MIN_INTERVAL of the last");
        assert!(p.observe(0, at(5 + MIN_INTERVAL.as_secs())));
    }

    static RAN: AtomicUsize = AtomicUsize::new(0);
    static THREADS: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());

    fn record() {
        RAN.fetch_add(1, Ordering::SeqCst);
        THREADS.lock().unwrap().push(std::thread::current().id());
    }

    #[test]
    fn every_worker_runs_the_release_once() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let outside = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reached = outside.block_on(on_every_worker(rt.handle(), record));
        assert_eq!(reached, 4);
        assert_eq!(RAN.load(Ordering::SeqCst), 4);
        let threads: HashSet<ThreadId> = THREADS.lock().unwrap().iter().copied().collect();
        assert_eq!(threads.len(), 4, "one run on each of the four workers");
    }
}
