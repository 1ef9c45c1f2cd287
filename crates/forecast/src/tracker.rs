//! A pool's rate series and its forecasts, step after step: the ring, the season found in it
//! (looked for again every few steps, not at every forecast) and the forecaster in use.

use std::sync::Arc;

use crate::builtin::{Builtin, Season, WARMUP_STEPS};
use crate::ring::RateRing;
use crate::season::detect_season;
use crate::{Forecast, Forecaster};

/// Steps between two searches for the season.
pub const DETECT_EVERY: usize = 30;

/// The rate series of one pool and what forecasts it.
#[derive(Clone)]
pub struct Tracker {
    ring: RateRing,
    /// An operator's season, in steps; `None` means find it.
    fixed_season: Option<usize>,
    detected: Option<usize>,
    pushes_since_detect: usize,
    model: Option<Arc<dyn Forecaster>>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("steps", &self.ring.len())
            .field("step_s", &self.ring.step_s())
            .field("season_steps", &self.season_steps())
            .field("model", &self.model.as_ref().map(|m| m.name().to_string()))
            .finish()
    }
}

impl Tracker {
    /// A tracker over `ring`; `season_s` fixes the season instead of finding it.
    pub fn new(ring: RateRing, season_s: Option<f64>) -> Self {
        let fixed_season = season_s.map(|s| ((s / ring.step_s()).round() as usize).max(2));
        Self {
            ring,
            fixed_season,
            detected: None,
            pushes_since_detect: DETECT_EVERY,
            model: None,
        }
    }

    /// Forecast with `model` instead of the built-in forecaster.
    pub fn with_model(mut self, model: Arc<dyn Forecaster>) -> Self {
        self.model = Some(model);
        self
    }

    /// Record the next step's rate.
    pub fn push(&mut self, rps: f64) {
        self.ring.push(rps);
        self.pushes_since_detect += 1;
    }

    /// The series held.
    pub fn ring(&self) -> &RateRing {
        &self.ring
    }

    /// The season in use, in steps.
    pub fn season_steps(&self) -> Option<usize> {
        self.fixed_season.or(self.detected)
    }

    /// Whether enough steps are held to forecast.
    pub fn warm(&self) -> bool {
        self.ring.len() >= WARMUP_STEPS
    }

    /// Name of the forecaster in use.
    pub fn model_name(&self) -> String {
        match &self.model {
            Some(m) => m.name().to_string(),
            None => "builtin".to_string(),
        }
    }

    /// Forecasts for each horizon from the series held, or `None` during warm-up.
    pub fn forecast(&mut self, horizons_s: &[f64]) -> Option<Vec<Forecast>> {
        if !self.warm() {
            return None;
        }
        if self.fixed_season.is_none() && self.pushes_since_detect >= DETECT_EVERY {
            self.detected = detect_season(self.ring.as_slice());
            self.pushes_since_detect = 0;
        }
        let step_s = self.ring.step_s();
        let season = match self.season_steps() {
            Some(m) => Season::Steps(m),
            None => Season::None,
        };
        let history = self.ring.as_slice();
        Some(match &self.model {
            Some(m) => m.forecast_horizons(history, step_s, horizons_s),
            None => Builtin::with_season(season).forecast_horizons(history, step_s, horizons_s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecasts_after_warm_up_and_finds_the_season() {
        let mut t = Tracker::new(RateRing::new(10.0, 400), None);
        for i in 0..300 {
            assert_eq!(t.forecast(&[60.0]).is_some(), i >= WARMUP_STEPS);
            t.push(100.0 + 50.0 * (i as f64 * std::f64::consts::TAU / 60.0).sin());
        }
        t.forecast(&[60.0]);
        assert_eq!(t.season_steps(), Some(60));
        let fixed = Tracker::new(RateRing::new(10.0, 10), Some(600.0));
        assert_eq!(fixed.season_steps(), Some(60));
    }
}
