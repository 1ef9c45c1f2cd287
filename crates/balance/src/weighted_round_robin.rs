//! Smooth (nginx-style) weighted round robin over the sequence precomputed in the weight table.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use crate::round_robin::{advance_cursor, CURSOR_CAS_RETRIES};
use crate::slow_start::mix;
use crate::{fallback_pick, Backend, Picker, SlowStart, Tried, WeightTable};

/// Smooth weighted round robin: 5:1:1 yields `a a b a c a a` per cycle.
///
/// Lock-free: the interleaved cycle is built once per weight change in [`WeightTable`] and a
/// shared cursor walks it. Unhealthy/tried slots are skipped and the cursor is CAS-advanced past
/// them, so the remaining backends keep their exact relative weights. Last-resort picks (weight
/// 0, or everything untried down) take turns on a counter of their own, so they neither all land
/// on one backend nor shift the cycle.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    next: AtomicUsize,
    last_resort: AtomicUsize,
}

impl WeightedRoundRobin {
    /// A picker starting at the beginning of the sequence.
    pub fn new() -> Self {
        Self::default()
    }

    fn last_resort(
        &self,
        backends: &[Backend],
        weights: &WeightTable,
        tried: Tried,
    ) -> Option<usize> {
        let ticket = self.last_resort.fetch_add(1, Relaxed);
        fallback_pick(backends, weights, tried, ticket)
    }
}

impl Picker for WeightedRoundRobin {
    fn pick(
        &self,
        backends: &[Backend],
        weights: &WeightTable,
        tried: Tried,
        now_ns: u64,
    ) -> Option<usize> {
        let seq = weights.wrr_sequence();
        let len = seq.len();
        let mut cursor = self.next.load(Relaxed);
        if len == 0 {
            // No positive weight at all: any healthy backend (weight 0 = "only if nothing else").
            return self.last_resort(backends, weights, tried);
        }
        for attempt in 0..CURSOR_CAS_RETRIES {
            let mut found = None;
            let mut pos = cursor % len;
            // Bounded by one full cycle of the sequence.
            for step in 0..len {
                let i = seq[pos] as usize;
                if let Some(b) = backends.get(i) {
                    if b.stats.is_healthy()
                        && !tried.contains(i)
                        && weights.slow_start().is_none_or(|s| {
                            // A ramping backend keeps a slot with probability f; the draw is
                            // keyed by the slot's position in the endless walk, so it is
                            // deterministic and needs no shared RNG.
                            let position = cursor.wrapping_add(step) as u64;
                            SlowStart::admits(s.factor(&b.stats, now_ns), mix(position))
                        })
                    {
                        found = Some((i, step));
                        break;
                    }
                }
                pos += 1;
                if pos == len {
                    pos = 0;
                }
            }
            let Some((idx, step)) = found else {
                return self.last_resort(backends, weights, tried);
            };
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
    fn exact_smooth_sequence_5_1_1() {
        let b = backends(&[5, 1, 1]);
        let t = table(&b);
        let p = WeightedRoundRobin::new();
        let picks: Vec<_> = (0..14)
            .map(|_| p.pick(&b, &t, Tried::new(), 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn distribution_700_picks() {
        let b = backends(&[5, 1, 1]);
        let t = table(&b);
        assert_eq!(
            histogram(&WeightedRoundRobin::new(), &b, &t, 700),
            vec![500, 100, 100]
        );
    }

    #[test]
    fn distribution_3_1_1_over_100() {
        let b = backends(&[3, 1, 1]);
        let t = table(&b);
        assert_eq!(
            histogram(&WeightedRoundRobin::new(), &b, &t, 100),
            vec![60, 20, 20]
        );
    }

    #[test]
    fn unhealthy_skipped_keeping_relative_weights() {
        let b = backends(&[5, 1, 1]);
        let t = table(&b);
        b[2].stats.set_healthy(false);
        // Cycle becomes a a b a a a: 5:1 exactly.
        assert_eq!(
            histogram(&WeightedRoundRobin::new(), &b, &t, 600),
            vec![500, 100, 0]
        );
    }

    #[test]
    fn zero_weight_only_as_last_resort() {
        let b = backends(&[0, 1]);
        let t = table(&b);
        let p = WeightedRoundRobin::new();
        assert_eq!(histogram(&p, &b, &t, 10), vec![0, 10]);
        b[1].stats.set_healthy(false);
        assert_eq!(p.pick(&b, &t, Tried::new(), 0), Some(0));
        let all_zero = WeightTable::new(vec![0.0, 0.0]);
        b[1].stats.set_healthy(true);
        assert!(p.pick(&b, &all_zero, Tried::new(), 0).is_some());
    }

    #[test]
    fn last_resort_picks_take_turns() {
        // Every positive-weight backend down: the weight-0 spares share evenly, the one after
        // the down backends included.
        let b = backends(&[1, 0, 1, 0, 0]);
        let t = table(&b);
        b[0].stats.set_healthy(false);
        b[2].stats.set_healthy(false);
        let p = WeightedRoundRobin::new();
        assert_eq!(histogram(&p, &b, &t, 300), vec![0, 100, 0, 100, 100]);
        // No positive weight at all: the same.
        let all_zero = WeightTable::new(vec![0.0; 5]);
        b[0].stats.set_healthy(true);
        assert_eq!(
            histogram(&p, &b, &all_zero, 400),
            vec![100, 100, 0, 100, 100]
        );
    }

    #[test]
    fn tried_avoided_then_allowed() {
        let b = backends(&[5, 1, 1]);
        let t = table(&b);
        let p = WeightedRoundRobin::new();
        let mut tried = Tried::new();
        tried.insert(0);
        for _ in 0..20 {
            let i = p.pick(&b, &t, tried, 0).unwrap();
            assert_ne!(i, 0);
        }
        tried.insert(1);
        tried.insert(2);
        assert!(p.pick(&b, &t, tried, 0).is_some());
    }

    #[test]
    fn none_only_when_nothing_healthy() {
        let b = backends(&[1, 2]);
        let t = table(&b);
        let p = WeightedRoundRobin::new();
        b[0].stats.set_healthy(false);
        b[1].stats.set_healthy(false);
        assert_eq!(p.pick(&b, &t, Tried::new(), 0), None);
    }

    #[test]
    fn new_table_takes_effect() {
        let b = backends(&[1, 1]);
        let p = WeightedRoundRobin::new();
        let t = WeightTable::new(vec![0.0, 1.0]);
        assert_eq!(histogram(&p, &b, &t, 10), vec![0, 10]);
        let t = WeightTable::new(vec![3.0, 1.0]);
        assert_eq!(histogram(&p, &b, &t, 400), vec![300, 100]);
    }

    #[test]
    fn slow_start_scales_a_ramping_backend_share() {
        let b = backends(&[1, 1]);
        let ramp = crate::SlowStart::new(std::time::Duration::from_secs(1), 50);
        let t = table(&b).with_slow_start(ramp);
        b[1].stats.start_ramp(0);
        let p = WeightedRoundRobin::new();
        // Half its weight: 1 × 0.5 against 1, a third of the picks.
        let ramping: Vec<usize> = (0..3000)
            .map(|_| p.pick(&b, &t, Tried::new(), 1).unwrap())
            .collect();
        let share = ramping.iter().filter(|&&i| i == 1).count();
        assert!((900..=1100).contains(&share), "{share}");
        // After the window, 1:1 exactly again.
        let after = 2_000_000_000;
        let full: Vec<usize> = (0..3000)
            .map(|_| p.pick(&b, &t, Tried::new(), after).unwrap())
            .collect();
        assert_eq!(full.iter().filter(|&&i| i == 1).count(), 1500);
        // A ramping backend alone still takes every pick.
        b[0].stats.set_healthy(false);
        assert_eq!(histogram(&p, &b, &t, 10), vec![0, 10]);
    }
}
