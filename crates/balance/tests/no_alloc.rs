//! Asserts that picking never allocates, for every algorithm, at 100 backends (least
//! connections both sampled, as `new_picker` makes it at that size, and scanning exactly).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_balance::{
    new_picker, Algorithm, Backend, LeastConnections, Outcome, Picker, Pool, SlowStart, Tried,
};

/// Counts allocations made by the current thread while `COUNTING` is set, so allocations by the
/// test harness on other threads cannot cause false failures.
struct CountingAlloc;

thread_local! {
    // const-initialised, no destructor: accessing it from inside the allocator cannot allocate.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

// SAFETY: forwards every call unchanged to the system allocator; only bumps a counter.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations_during(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(|a| a.get())
}

fn pool(alg: Algorithm, picker: Box<dyn Picker>, slow_start: Option<SlowStart>) -> Arc<Pool> {
    let backends = (0..100)
        .map(|i| Backend::new(format!("10.0.0.{i}:80").parse().unwrap(), 1 + i % 4))
        .collect();
    let pool = Arc::new(
        Pool::with_picker("p", alg, backends, Duration::from_secs(10), 5, picker)
            .with_slow_start(slow_start),
    );
    for (i, b) in pool.backends().iter().enumerate() {
        // Varied latency state; some backends down so the skip paths run too.
        pool.record(i, 1_000_000 + (i as u64 % 7) * 100_000, Outcome::Success, 1);
        if i % 10 == 3 {
            b.stats.set_healthy(false);
        }
        // Some backends in slow start, so the ramp paths run when it is on.
        if i % 10 == 6 {
            b.stats.start_ramp(1);
        }
    }
    pool
}

/// Builds the picker a pool of the given algorithm is tested with.
type MakePicker = fn(Algorithm) -> Box<dyn Picker>;

#[test]
fn pick_does_not_allocate() {
    // Sanity check that the counter works at all.
    assert!(allocations_during(|| drop(std::hint::black_box(vec![1u8; 16]))) >= 1);

    const {
        assert!(
            100 > LeastConnections::EXACT_MAX,
            "least connections samples at 100"
        )
    };
    let ramp = SlowStart::new(Duration::from_secs(60), 10);
    let exact_lc = |_| Box::new(LeastConnections::with_exact_max(usize::MAX)) as Box<dyn Picker>;
    let pickers: [(Algorithm, MakePicker); 5] = [
        (Algorithm::RoundRobin, new_picker),
        (Algorithm::WeightedRoundRobin, new_picker),
        (Algorithm::LeastConnections, new_picker),
        (Algorithm::LeastConnections, exact_lc),
        (Algorithm::P2cEwma, new_picker),
    ];
    assert!(Algorithm::ALL
        .iter()
        .all(|a| pickers.iter().any(|(b, _)| a == b)));
    for (alg, picker, slow_start) in pickers
        .into_iter()
        .flat_map(|(alg, p)| [(alg, p, None), (alg, p, ramp)])
    {
        let pool = pool(alg, picker(alg), slow_start);
        // Leases held so least-connections has a real scan to do.
        let held: Vec<_> = (0..100).map(|i| pool.lease((i * 7) % 100)).collect();
        let mut tried = Tried::new();
        tried.insert(5);
        tried.insert(50);
        // Warm-up: arc-swap lazily registers a per-thread debt slot on first load.
        pool.pick(tried, 10);

        let mut picked = 0usize;
        let allocs = allocations_during(|| {
            for k in 0..10_000u64 {
                let t = if k % 2 == 0 { Tried::new() } else { tried };
                picked = picked.wrapping_add(pool.pick(t, 10 + k).unwrap());
                let g = pool.lease(k as usize % 100);
                drop(g);
            }
        });
        assert_eq!(
            allocs, 0,
            "{alg:?} (slow start {slow_start:?}) allocated {allocs} times in 10k picks"
        );
        std::hint::black_box(picked);
        drop(held);
    }
}
