//! Guardrails between a model's raw scores and the weights the pickers use.
//!
//! A model may be wrong; the data plane must stay safe. Whole-tick rejections (non-finite,
//! negative, all-zero or wrong-length outputs) keep the previous weights. Otherwise scores are
//! normalised around [`BASE_WEIGHT`], clamped to a floor (so no backend is starved of the
//! traffic needed to see it recover) and a ceiling, limited in how far they move per tick, and
//! unhealthy backends get zero whatever the model says.

use fulcrum_balance::WeightError;
use fulcrum_config::control_defaults as defaults;

/// The weight of an average backend after normalisation.
pub const BASE_WEIGHT: f64 = 100.0;

/// Limits applied to every tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Lowest weight for a healthy backend, as a fraction of the pool's average (e.g. 0.05).
    pub floor: f64,
    /// Highest weight, as a multiple of the pool's average (e.g. 8).
    pub ceiling: f64,
    /// Largest factor by which a weight may grow or shrink in one tick (e.g. 2 = at most double or half).
    pub max_step: f64,
}

impl Default for Limits {
    /// The `[control]` defaults of [`fulcrum_config::control_defaults`].
    fn default() -> Self {
        Limits {
            floor: defaults::FLOOR,
            ceiling: defaults::CEILING,
            max_step: defaults::MAX_STEP,
        }
    }
}

/// The outcome of one guarded tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Guarded {
    /// Final weights, one per backend.
    pub weights: Vec<f64>,
    /// Which guardrails changed something, with the backends they touched.
    pub fired: Vec<String>,
}

/// Turn raw scores into safe weights, or reject the tick.
///
/// `previous` are the weights in force (same length as `healthy`).
pub fn apply(
    scores: &[f32],
    healthy: &[bool],
    previous: &[f64],
    limits: &Limits,
) -> Result<Guarded, WeightError> {
    let n = healthy.len();
    WeightError::check(n, scores.iter().map(|&s| f64::from(s)))?;
    let live: Vec<usize> = (0..n).filter(|&i| healthy[i]).collect();
    let mut fired = Vec::new();
    let mut weights = vec![0.0; n];
    if live.is_empty() {
        fired.push("health: no healthy backend, all weights 0".to_string());
        return Ok(Guarded { weights, fired });
    }
    let mean = live.iter().map(|&i| f64::from(scores[i])).sum::<f64>() / live.len() as f64;
    if mean <= 0.0 {
        return Err(WeightError::AllZero);
    }
    let (lo, hi) = (limits.floor * BASE_WEIGHT, limits.ceiling * BASE_WEIGHT);
    let mut floored = Vec::new();
    let mut capped = Vec::new();
    let mut stepped = Vec::new();
    for &i in &live {
        let mut w = f64::from(scores[i]) / mean * BASE_WEIGHT;
        if w < lo {
            w = lo;
            floored.push(i);
        } else if w > hi {
            w = hi;
            capped.push(i);
        }
        // A backend coming back from zero (unhealthy) restarts from the floor's side of the step.
        let prev = if previous[i] > 0.0 {
            previous[i]
        } else {
            lo.max(1e-9)
        };
        let (min, max) = (prev / limits.max_step, prev * limits.max_step);
        if w < min {
            w = min;
            stepped.push(i);
        } else if w > max {
            w = max;
            stepped.push(i);
        }
        weights[i] = w.clamp(lo, hi);
    }
    let unhealthy: Vec<usize> = (0..n).filter(|&i| !healthy[i]).collect();
    for (name, list) in [
        ("floor", &floored),
        ("ceiling", &capped),
        ("max_step", &stepped),
        ("unhealthy_zero", &unhealthy),
    ] {
        if !list.is_empty() {
            fired.push(format!("{name}: backends {list:?}"));
        }
    }
    Ok(Guarded { weights, fired })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn rejects_bad_outputs_whole() {
        let h = [true, true, true];
        let prev = [100.0, 100.0, 100.0];
        assert_eq!(
            apply(&[1.0, f32::NAN, 1.0], &h, &prev, &limits()),
            Err(WeightError::NotFinite { index: 1 })
        );
        assert_eq!(
            apply(&[1.0, 1.0, f32::INFINITY], &h, &prev, &limits()),
            Err(WeightError::NotFinite { index: 2 })
        );
        assert_eq!(
            apply(&[1.0, -0.5, 1.0], &h, &prev, &limits()),
            Err(WeightError::Negative { index: 1 })
        );
        assert_eq!(
            apply(&[0.0, 0.0, 0.0], &h, &prev, &limits()),
            Err(WeightError::AllZero)
        );
        assert_eq!(
            apply(&[1.0, 1.0], &h, &prev, &limits()),
            Err(WeightError::WrongLength {
                expected: 3,
                got: 2
            })
        );
    }

    #[test]
    fn normalises_floors_caps_and_zeroes_unhealthy() {
        let g = apply(
            &[1.0, 1.0, 0.0, 50.0],
            &[true, true, true, false],
            &[100.0, 100.0, 100.0, 100.0],
            &Limits {
                max_step: 1e9,
                ..limits()
            },
        )
        .unwrap();
        // Mean over healthy backends is 2/3: scores 1 -> 150.
        assert!((g.weights[0] - 150.0).abs() < 1e-9, "{g:?}");
        assert_eq!(g.weights[2], 5.0, "floored, never starved");
        assert_eq!(
            g.weights[3], 0.0,
            "unhealthy gets zero whatever the model says"
        );
        assert!(g.fired.iter().any(|f| f.starts_with("floor")));
        assert!(g.fired.iter().any(|f| f.starts_with("unhealthy_zero")));
        let mut many = vec![1.0f32; 20];
        many[0] = 100.0;
        let capped = apply(
            &many,
            &[true; 20],
            &[100.0; 20],
            &Limits {
                max_step: 1e9,
                ..limits()
            },
        )
        .unwrap();
        assert_eq!(capped.weights[0], 800.0);
    }

    #[test]
    fn bounds_the_change_per_tick() {
        let g = apply(&[10.0, 1.0, 1.0], &[true; 3], &[100.0; 3], &limits()).unwrap();
        assert_eq!(g.weights, vec![200.0, 50.0, 50.0]);
        assert!(g.fired.iter().any(|f| f.starts_with("max_step")));
    }
}
