//! From a forecast to a number of backends, with the reasoning in words:
//! `ceil(p90 / (capacity per backend × target utilisation))`, clamped to `[min, max]`.

/// How a pool is sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// Share of a backend's capacity to plan for, in (0, 1].
    pub target_utilization: f64,
    /// Fewest backends.
    pub min_backends: u32,
    /// Most backends.
    pub max_backends: u32,
}

/// A recommended backend count and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// Backends to run.
    pub backends: u32,
    /// The reasoning, e.g. "highest p90 within 5 min: 1,840 rps; one backend serves ~210 rps at 70 %;
    /// 9 backends, 3 more than now".
    pub reason: String,
}

/// Backends needed for `p90_rps`, the highest demand expected from now until `horizon_s`
/// (the time a new backend needs to serve), when one backend serves
/// `capacity_per_backend` rps at full utilisation; `current` is the count running now.
pub fn recommend(
    p90_rps: f64,
    horizon_s: f64,
    capacity_per_backend: f64,
    sizing: Sizing,
    current: u32,
) -> Recommendation {
    let demand = finite_rate(p90_rps);
    recommend_for(
        demand,
        &format!(
            "highest p90 within {}: {} rps",
            duration_words(horizon_s),
            thousands(demand)
        ),
        capacity_per_backend,
        sizing,
        current,
        None,
    )
}

/// A count recommended recently that holds a scale-down back: the recommendation goes down
/// only once it has been lower for the whole window (Kubernetes' HPA `behavior.scaleDown`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hold {
    /// The highest count recommended within the window.
    pub backends: u32,
    /// The window, seconds.
    pub window_s: f64,
}

/// Backends needed for `demand_rps`, described by `basis` (what the demand is, in words, the
/// first clause of the reasoning), when one backend serves `capacity_per_backend` rps at full
/// utilisation; `current` is the count running now, and `hold` keeps a recent higher count.
pub fn recommend_for(
    demand_rps: f64,
    basis: &str,
    capacity_per_backend: f64,
    sizing: Sizing,
    current: u32,
    hold: Option<Hold>,
) -> Recommendation {
    let min = sizing.min_backends.max(1);
    let max = sizing.max_backends.max(min);
    let per_backend = capacity_per_backend * sizing.target_utilization;
    let demand = finite_rate(demand_rps);
    let (needed, sizing_words) = if per_backend.is_finite() && per_backend > 0.0 {
        let raw = (demand / per_backend).ceil();
        let backends = if raw >= f64::from(max) {
            max
        } else {
            (raw as u32).clamp(min, max)
        };
        let clamp_note = if raw > f64::from(max) {
            format!(
                " (capped at max_backends = {max}, {} needed)",
                thousands(raw)
            )
        } else if raw < f64::from(min) {
            format!(" (min_backends = {min})")
        } else {
            String::new()
        };
        (
            backends,
            format!(
                "one backend serves ~{} rps at {:.0} %; {}{clamp_note}",
                thousands(per_backend),
                sizing.target_utilization * 100.0,
                count_words(backends),
            ),
        )
    } else {
        let keep = current.clamp(min, max);
        (
            keep,
            format!("capacity per backend not known yet; {}", count_words(keep)),
        )
    };
    let Some(h) = hold.filter(|h| h.backends.min(max) > needed) else {
        if !(per_backend.is_finite() && per_backend > 0.0) {
            return Recommendation {
                backends: needed,
                reason: format!(
                    "{basis}; capacity per backend not known yet; keep {}",
                    count_words(needed)
                ),
            };
        }
        return Recommendation {
            backends: needed,
            reason: format!("{basis}; {sizing_words}, {}", change_words(needed, current)),
        };
    };
    let held = h.backends.min(max);
    Recommendation {
        backends: held,
        reason: format!(
            "{basis}; {sizing_words} would do, but {held} {} recommended within the last {} \
             (scale-down stabilisation): {}, {}",
            if held == 1 { "was" } else { "were" },
            duration_words(h.window_s),
            count_words(held),
            change_words(held, current),
        ),
    }
}

fn change_words(backends: u32, current: u32) -> String {
    match backends.cmp(&current) {
        std::cmp::Ordering::Greater => format!("{} more than now", backends - current),
        std::cmp::Ordering::Less => format!("{} fewer than now", current - backends),
        std::cmp::Ordering::Equal => "as many as now".to_string(),
    }
}

fn finite_rate(x: f64) -> f64 {
    if x.is_finite() {
        x.max(0.0)
    } else {
        0.0
    }
}

/// `1` -> `"1 backend"`, `9` -> `"9 backends"`.
fn count_words(n: u32) -> String {
    format!("{n} backend{}", plural(n))
}

/// The plural ending of a count's noun: `""` for 1, `"s"` otherwise.
pub fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A backend's capacity (rps at full utilisation) from what a pool served: `throughput_rps`
/// completed while its `backends` were busy `utilization` of the time on average; `None` when
/// the pool is too idle for the ratio to mean anything.
pub fn capacity_per_backend(throughput_rps: f64, utilization: f64, backends: u32) -> Option<f64> {
    (utilization >= 0.05 && backends > 0 && throughput_rps > 0.0)
        .then(|| throughput_rps / (utilization.min(1.0) * f64::from(backends)))
}

/// `1840.2` -> `"1,840"`.
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `300` -> `"5 min"`, `45` -> `"45 s"`, `5400` -> `"1.5 h"`.
pub fn duration_words(s: f64) -> String {
    if s >= 3600.0 {
        format!("{} h", trim(s / 3600.0))
    } else if s >= 60.0 {
        format!("{} min", trim(s / 60.0))
    } else {
        format!("{} s", trim(s))
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZING: Sizing = Sizing {
        target_utilization: 0.7,
        min_backends: 1,
        max_backends: 100,
    };

    #[test]
    fn explains_in_words() {
        let r = recommend(1840.0, 300.0, 300.0, SIZING, 6);
        // 1840 / (300 * 0.7 = 210) = 8.76 -> 9.
        assert_eq!(r.backends, 9);
        assert_eq!(
            r.reason,
            "highest p90 within 5 min: 1,840 rps; one backend serves ~210 rps at 70 %; 9 backends, 3 more than now"
        );
    }

    #[test]
    fn clamps_and_handles_unknown_capacity() {
        let small = Sizing {
            max_backends: 4,
            min_backends: 2,
            ..SIZING
        };
        let r = recommend(5000.0, 60.0, 100.0, small, 3);
        assert_eq!(r.backends, 4);
        assert!(
            r.reason.contains("capped at max_backends = 4"),
            "{}",
            r.reason
        );
        assert_eq!(recommend(0.0, 60.0, 100.0, small, 3).backends, 2);
        let r = recommend(500.0, 60.0, f64::NAN, small, 3);
        assert_eq!(r.backends, 3);
        assert!(r.reason.contains("not known"));
        assert_eq!(capacity_per_backend(700.0, 0.5, 7), Some(200.0));
        assert_eq!(capacity_per_backend(700.0, 0.01, 7), None);
        assert_eq!(thousands(1234567.4), "1,234,567");
    }

    #[test]
    fn a_recent_higher_count_holds_a_scale_down_and_says_so() {
        let hold = Some(Hold {
            backends: 9,
            window_s: 300.0,
        });
        // 1000 / 210 = 4.76 -> 5 would do; 9 were recommended within the window.
        let r = recommend_for(1000.0, "demand 1,000 rps", 300.0, SIZING, 10, hold);
        assert_eq!(r.backends, 9);
        assert_eq!(
            r.reason,
            "demand 1,000 rps; one backend serves ~210 rps at 70 %; 5 backends would do, but 9 \
             were recommended within the last 5 min (scale-down stabilisation): 9 backends, 1 \
             fewer than now"
        );
        // A scale-up is never held back, and a hold above max_backends is capped.
        let r = recommend_for(3000.0, "d", 300.0, SIZING, 10, hold);
        assert_eq!(r.backends, 15);
        assert_eq!(
            r.reason,
            "d; one backend serves ~210 rps at 70 %; 15 backends, 5 more than now"
        );
        let small = Sizing {
            max_backends: 6,
            ..SIZING
        };
        assert_eq!(recommend_for(100.0, "d", 300.0, small, 6, hold).backends, 6);
        // The unknown capacity keeps the current count, or the held one if higher.
        let r = recommend_for(100.0, "d", f64::NAN, SIZING, 3, hold);
        assert_eq!(r.backends, 9);
        assert!(
            r.reason
                .contains("not known yet; 3 backends would do, but 9"),
            "{}",
            r.reason
        );
    }
}
