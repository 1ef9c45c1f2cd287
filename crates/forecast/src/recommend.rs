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
    let min = sizing.min_backends.max(1);
    let max = sizing.max_backends.max(min);
    let per_backend = capacity_per_backend * sizing.target_utilization;
    let demand = if p90_rps.is_finite() {
        p90_rps.max(0.0)
    } else {
        0.0
    };
    let when = format!(
        "highest p90 within {}: {} rps",
        duration_words(horizon_s),
        thousands(demand)
    );
    if !(per_backend.is_finite() && per_backend > 0.0) {
        return Recommendation {
            backends: current.clamp(min, max),
            reason: format!(
                "{when}; capacity per backend not known yet; keep {} backends",
                current.clamp(min, max)
            ),
        };
    }
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
    let change = match backends.cmp(&current) {
        std::cmp::Ordering::Greater => format!("{} more than now", backends - current),
        std::cmp::Ordering::Less => format!("{} fewer than now", current - backends),
        std::cmp::Ordering::Equal => "as many as now".to_string(),
    };
    Recommendation {
        backends,
        reason: format!(
            "{when}; one backend serves ~{} rps at {:.0} %; {backends} backend{}{clamp_note}, {change}",
            thousands(per_backend),
            sizing.target_utilization * 100.0,
            if backends == 1 { "" } else { "s" },
        ),
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
fn duration_words(s: f64) -> String {
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
}
