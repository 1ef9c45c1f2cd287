//! Busy time of a backend's slots: busy slots integrated over wall time, as a CPU-time counter
//! integrates a process's running threads, and the utilisation of the last whole report window.
//!
//! An autoscaler reads utilisation as busy time over offered time between two of its looks
//! (Kubernetes' HPA: CPU seconds used over CPU seconds requested); [`BusyMeter::busy_seconds`]
//! is that counter. A backend that reports its own load (`x-backend-load`) the way a real one
//! reports `cpu_utilization` gives the mean over a recent window, not the slots busy at the
//! instant of one response (which always counts the response's own slot):
//! [`BusyMeter::window_utilisation`].

use std::time::{Duration, Instant};

/// Busy slots integrated over time, and the mean of the last whole report window.
#[derive(Debug)]
pub(crate) struct BusyMeter {
    busy: u32,
    since: Instant,
    /// Slot-seconds accumulated up to `since`.
    area_s: f64,
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    length: Duration,
    start: Instant,
    start_area_s: f64,
    last: Option<f64>,
}

impl BusyMeter {
    /// A meter with no slot busy from `now`; with `report_window`, it keeps the utilisation of
    /// the last window at least that long.
    pub(crate) fn new(now: Instant, report_window: Option<Duration>) -> Self {
        BusyMeter {
            busy: 0,
            since: now,
            area_s: 0.0,
            window: report_window.map(|length| Window {
                length,
                start: now,
                start_area_s: 0.0,
                last: None,
            }),
        }
    }

    fn advance(&mut self, now: Instant) {
        if now > self.since {
            self.area_s += f64::from(self.busy) * (now - self.since).as_secs_f64();
            self.since = now;
        }
    }

    /// A slot was taken (`+1`) or given back (`-1`) at `now`.
    pub(crate) fn change(&mut self, now: Instant, delta: i32) {
        self.advance(now);
        self.busy = self.busy.saturating_add_signed(delta);
    }

    /// Slot-seconds spent busy from the start until `now`.
    pub(crate) fn busy_seconds(&mut self, now: Instant) -> f64 {
        self.advance(now);
        self.area_s
    }

    /// Mean share of `concurrency` slots busy over the last window that has ended by `now`
    /// (over the time so far before the first one ends); `None` without a report window.
    pub(crate) fn window_utilisation(&mut self, now: Instant, concurrency: u32) -> Option<f64> {
        self.advance(now);
        let area = self.area_s;
        let w = self.window.as_mut()?;
        let elapsed = now.saturating_duration_since(w.start);
        let mean = |elapsed: Duration, start_area: f64| {
            let offered = f64::from(concurrency.max(1)) * elapsed.as_secs_f64();
            (offered > 0.0).then(|| ((area - start_area) / offered).clamp(0.0, 1.0))
        };
        if elapsed >= w.length {
            w.last = mean(elapsed, w.start_area_s);
            w.start = now;
            w.start_area_s = area;
            return w.last;
        }
        w.last.or_else(|| mean(elapsed, w.start_area_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn integrates_busy_slots_over_time() {
        let t0 = Instant::now();
        let mut m = BusyMeter::new(t0, None);
        m.change(t0, 1);
        m.change(t0 + ms(100), 1);
        m.change(t0 + ms(300), -1);
        // 1 slot for 100 ms, 2 for 200 ms, 1 for the next 100 ms: 0.6 slot-seconds.
        let s = m.busy_seconds(t0 + ms(400));
        assert!((s - 0.6).abs() < 1e-9, "{s}");
        m.change(t0 + ms(400), -1);
        let later = m.busy_seconds(t0 + ms(900));
        assert!(
            (later - 0.6).abs() < 1e-9,
            "idle time adds nothing: {later}"
        );
        assert_eq!(m.window_utilisation(t0 + ms(900), 2), None);
    }

    #[test]
    fn reports_the_last_whole_window() {
        let t0 = Instant::now();
        let mut m = BusyMeter::new(t0, Some(ms(100)));
        m.change(t0, 1);
        // Before a window has ended: the mean so far, 1 of 4 slots.
        let so_far = m.window_utilisation(t0 + ms(50), 4).unwrap();
        assert!((so_far - 0.25).abs() < 1e-9, "{so_far}");
        m.change(t0 + ms(60), 3);
        // The window [0, 120 ms]: 1 slot for 60 ms, 4 for 60 ms, of 4 × 120 slot-ms.
        let first = m.window_utilisation(t0 + ms(120), 4).unwrap();
        assert!((first - 300.0 / 480.0).abs() < 1e-9, "{first}");
        // Inside the next window the finished one stands, whatever happens meanwhile.
        m.change(t0 + ms(130), -4);
        assert_eq!(m.window_utilisation(t0 + ms(200), 4), Some(first));
        // [120, 240 ms]: 4 slots for 10 ms of 120.
        let second = m.window_utilisation(t0 + ms(240), 4).unwrap();
        assert!((second - 40.0 / 480.0).abs() < 1e-9, "{second}");
    }
}
