//! Consecutive results → up or down: the one health rule of active checks, passive ejection and
//! the simulator.

/// How many consecutive results change a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRule {
    /// Consecutive failures that take a healthy backend down; 0 never does.
    pub unhealthy_after: u32,
    /// Consecutive successes that bring a down backend back.
    pub healthy_after: u32,
}

impl HealthRule {
    /// Passive ejection: `eject_after` consecutive failed requests take a backend down (0
    /// never does). It comes back through the active checks, not through this rule.
    pub const fn passive(eject_after: u32) -> Self {
        HealthRule {
            unhealthy_after: eject_after,
            healthy_after: 1,
        }
    }

    /// Whether a run of `consecutive_failures` takes a backend down.
    #[inline]
    pub fn goes_down(&self, consecutive_failures: u32) -> bool {
        self.unhealthy_after > 0 && consecutive_failures >= self.unhealthy_after
    }

    /// Whether a run of `consecutive_successes` brings a backend back.
    #[inline]
    pub fn comes_up(&self, consecutive_successes: u32) -> bool {
        consecutive_successes >= self.healthy_after
    }
}

/// A change of health decided by [`HealthTracker::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// The backend is healthy again.
    Up,
    /// The backend is down.
    Down,
}

/// The runs of consecutive check results of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTracker {
    rule: HealthRule,
    successes: u32,
    failures: u32,
}

impl HealthTracker {
    /// A tracker with no results yet.
    pub fn new(rule: HealthRule) -> Self {
        HealthTracker {
            rule,
            successes: 0,
            failures: 0,
        }
    }

    /// Count one result for a backend that is `healthy` now; returns the change it makes, if any.
    ///
    /// A success ends the failure run and a failure ends the success run, so only consecutive
    /// results count.
    pub fn observe(&mut self, ok: bool, healthy: bool) -> Option<HealthChange> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (!healthy && self.rule.comes_up(self.successes)).then_some(HealthChange::Up)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (healthy && self.rule.goes_down(self.failures)).then_some(HealthChange::Down)
        }
    }

    /// Length of the current run of failures.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: HealthRule = HealthRule {
        unhealthy_after: 3,
        healthy_after: 2,
    };

    #[test]
    fn goes_down_after_the_failure_run_and_up_after_the_success_run() {
        let mut t = HealthTracker::new(RULE);
        assert_eq!(t.observe(false, true), None);
        assert_eq!(t.observe(false, true), None);
        assert_eq!(t.observe(false, true), Some(HealthChange::Down));
        assert_eq!(t.consecutive_failures(), 3);
        assert_eq!(t.observe(true, false), None);
        assert_eq!(t.observe(true, false), Some(HealthChange::Up));
    }

    #[test]
    fn only_consecutive_results_count() {
        let mut t = HealthTracker::new(RULE);
        for _ in 0..10 {
            assert_eq!(t.observe(false, true), None);
            assert_eq!(t.observe(false, true), None);
            assert_eq!(t.observe(true, true), None);
        }
        let mut t = HealthTracker::new(RULE);
        for _ in 0..3 {
            t.observe(false, true);
        }
        for _ in 0..10 {
            assert_eq!(t.observe(true, false), None);
            assert_eq!(t.observe(false, false), None);
        }
    }

    #[test]
    fn no_change_reported_for_the_state_already_held() {
        let mut t = HealthTracker::new(RULE);
        for _ in 0..5 {
            assert_eq!(t.observe(true, true), None);
        }
        for _ in 0..5 {
            t.observe(false, false);
        }
        assert_eq!(t.observe(false, false), None);
    }

    #[test]
    fn a_zero_failure_threshold_never_goes_down() {
        let rule = HealthRule {
            unhealthy_after: 0,
            healthy_after: 1,
        };
        assert!(!rule.goes_down(u32::MAX));
        assert!(RULE.goes_down(3) && !RULE.goes_down(2));
    }
}
