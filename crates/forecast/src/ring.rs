//! The request-rate series of a pool: a ring of fixed-step rates.

use std::collections::VecDeque;

/// Rates (requests per second) at a fixed step, oldest first, keeping the last `capacity`.
#[derive(Debug, Clone)]
pub struct RateRing {
    step_s: f64,
    capacity: usize,
    rates: VecDeque<f64>,
}

impl RateRing {
    /// An empty ring of `capacity` steps of `step_s` seconds (both at least 1 / positive).
    pub fn new(step_s: f64, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            step_s: if step_s > 0.0 { step_s } else { 1.0 },
            capacity,
            rates: VecDeque::with_capacity(capacity),
        }
    }

    /// A ring long enough for `seasons` cycles of the longest season `longest_season_s` (and at
    /// least `min_steps` steps).
    pub fn for_season(
        step_s: f64,
        longest_season_s: f64,
        seasons: usize,
        min_steps: usize,
    ) -> Self {
        let steps = (longest_season_s / step_s).ceil().max(0.0) as usize * seasons;
        Self::new(step_s, steps.max(min_steps))
    }

    /// Seconds per step.
    pub fn step_s(&self) -> f64 {
        self.step_s
    }

    /// Steps kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Steps held.
    pub fn len(&self) -> usize {
        self.rates.len()
    }

    /// No step recorded yet.
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }

    /// Record the next step's rate; a non-finite or negative rate is stored as 0.
    pub fn push(&mut self, rps: f64) {
        if self.rates.len() == self.capacity {
            self.rates.pop_front();
        }
        self.rates.push_back(if rps.is_finite() && rps > 0.0 {
            rps
        } else {
            0.0
        });
    }

    /// The latest rate.
    pub fn last(&self) -> Option<f64> {
        self.rates.back().copied()
    }

    /// The series, oldest first, as one contiguous slice.
    pub fn as_slice(&mut self) -> &[f64] {
        self.rates.make_contiguous()
    }

    /// The highest of the last `n` rates (0 when none is held).
    pub fn highest_of_last(&self, n: usize) -> f64 {
        self.rates.iter().rev().take(n).copied().fold(0.0, f64::max)
    }

    /// A copy of the series, oldest first.
    pub fn to_vec(&self) -> Vec<f64> {
        self.rates.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_capacity_steps_in_order() {
        let mut r = RateRing::new(10.0, 3);
        for x in [1.0, 2.0, 3.0, 4.0, f64::NAN, -1.0] {
            r.push(x);
        }
        assert_eq!(r.as_slice(), &[4.0, 0.0, 0.0]);
        assert_eq!(r.highest_of_last(2), 0.0);
        assert_eq!(r.highest_of_last(3), 4.0);
        assert_eq!(r.highest_of_last(99), 4.0);
        assert_eq!(RateRing::new(10.0, 3).highest_of_last(3), 0.0);
        let r = RateRing::for_season(10.0, 900.0, 3, 10);
        assert_eq!(r.capacity(), 270);
    }
}
