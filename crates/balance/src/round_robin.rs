//! Plain round robin: rotate over healthy backends, ignoring weights entirely.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use crate::{Backend, Picker, Tried, WeightTable};

/// CAS attempts before accepting a pick without advancing the shared cursor; bounds the loop
/// under contention (the cost of giving up is a slightly uneven rotation, never a wrong pick).
pub(crate) const CURSOR_CAS_RETRIES: usize = 4;

/// Move a shared rotation cursor past the pick made `step` places after `cursor`.
///
/// `None` when the pick stands: the cursor moved, or this was the last allowed attempt (under
/// contention a pick is returned anyway rather than spinning). `Some(actual)` asks the caller to
/// pick again from the cursor another thread just set.
pub(crate) fn advance_cursor(
    next: &AtomicUsize,
    cursor: usize,
    step: usize,
    attempt: usize,
) -> Option<usize> {
    match next.compare_exchange_weak(cursor, cursor.wrapping_add(step + 1), Relaxed, Relaxed) {
        Ok(_) => None,
        Err(_) if attempt + 1 == CURSOR_CAS_RETRIES => None,
        Err(actual) => Some(actual),
    }
}

/// Round robin over healthy backends; weights (including 0) are ignored.
///
/// The cursor is advanced past skipped (unhealthy/tried) backends with a CAS so that the
/// remaining healthy ones share load exactly evenly (a blind `fetch_add` would hand the skipped
/// backend's turns to its successor).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A picker starting at backend 0.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Picker for RoundRobin {
    fn pick(
        &self,
        backends: &[Backend],
        _weights: &WeightTable,
        tried: Tried,
        _now_ns: u64,
    ) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let mut cursor = self.next.load(Relaxed);
        for attempt in 0..CURSOR_CAS_RETRIES {
            // One bounded pass: first healthy untried wins; remember the first healthy tried one
            // as the fallback for a retry when everything healthy was already tried.
            let mut found = None;
            let mut fallback = None;
            let mut i = cursor % n;
            for step in 0..n {
                if backends[i].stats.is_healthy() {
                    if !tried.contains(i) {
                        found = Some((i, step));
                        break;
                    }
                    if fallback.is_none() {
                        fallback = Some((i, step));
                    }
                }
                i += 1;
                if i == n {
                    i = 0;
                }
            }
            let (idx, step) = found.or(fallback)?;
            match advance_cursor(&self.next, cursor, step, attempt) {
                None => return Some(idx),
                Some(actual) => cursor = actual,
            }
        }
        unreachable!("the last CAS attempt always returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{backends, histogram, table};

    #[test]
    fn exact_rotation() {
        let b = backends(&[1, 1, 1]);
        let t = table(&b);
        let rr = RoundRobin::new();
        let seq: Vec<_> = (0..7)
            .map(|_| rr.pick(&b, &t, Tried::new(), 0).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn even_distribution_ignores_weights() {
        let b = backends(&[5, 1, 0]);
        let t = table(&b);
        assert_eq!(
            histogram(&RoundRobin::new(), &b, &t, 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn unhealthy_skipped_and_load_split_evenly() {
        let b = backends(&[1, 1, 1]);
        let t = table(&b);
        b[1].stats.set_healthy(false);
        assert_eq!(
            histogram(&RoundRobin::new(), &b, &t, 300),
            vec![150, 0, 150]
        );
    }

    #[test]
    fn tried_is_avoided_then_allowed() {
        let b = backends(&[1, 1, 1]);
        let t = table(&b);
        let rr = RoundRobin::new();
        let mut tried = Tried::new();
        tried.insert(0);
        for _ in 0..10 {
            assert_ne!(rr.pick(&b, &t, tried, 0), Some(0));
        }
        tried.insert(1);
        tried.insert(2);
        // All tried: still returns a healthy one.
        assert!(rr.pick(&b, &t, tried, 0).is_some());
        b[0].stats.set_healthy(false);
        b[1].stats.set_healthy(false);
        assert_eq!(rr.pick(&b, &t, tried, 0), Some(2));
    }

    #[test]
    fn none_only_when_nothing_healthy() {
        let b = backends(&[1, 1]);
        let t = table(&b);
        let rr = RoundRobin::new();
        b[0].stats.set_healthy(false);
        assert_eq!(rr.pick(&b, &t, Tried::new(), 0), Some(1));
        b[1].stats.set_healthy(false);
        assert_eq!(rr.pick(&b, &t, Tried::new(), 0), None);
        assert_eq!(
            rr.pick(&[], &WeightTable::new(vec![]), Tried::new(), 0),
            None
        );
    }

    #[test]
    fn concurrent_picks_stay_balanced() {
        let b = backends(&[1, 1, 1, 1]);
        let t = table(&b);
        let rr = RoundRobin::new();
        let counts: Vec<_> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2_500 {
                        let i = rr.pick(&b, &t, Tried::new(), 0).unwrap();
                        counts[i].fetch_add(1, Relaxed);
                    }
                });
            }
        });
        for c in &counts {
            // CAS give-ups may skew slightly under contention; it must stay near 2500.
            let c = c.load(Relaxed);
            assert!((2_000..=3_000).contains(&c), "{c}");
        }
    }
}
