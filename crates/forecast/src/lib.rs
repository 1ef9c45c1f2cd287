//! Forecasting a pool's request rate and recommending how many backends it needs.
//!
//! The control thread keeps each pool's rate in a [`RateRing`] (fixed steps, long enough for the
//! longest season in use); a [`Tracker`] finds the season in the series itself
//! ([`detect_season`]: autocorrelation over candidate lags with a significance threshold, so a
//! 15-minute test "day" is found as well as a 24-hour one) and forecasts with a [`Forecaster`]:
//! the built-in one ([`Builtin`]: Holt-Winters or seasonal naive when a season is found, damped
//! Holt otherwise, in log space when the rate is never zero, parameters from a small grid
//! search on the errors six steps ahead, and p50/p90 from the
//! empirical distribution of its own recent h-step errors so that the p90 covers about nine
//! outcomes in ten), or a model plugged in behind the same trait. [`recommend`] turns the p90
//! at the provisioning horizon into a backend count with the reasoning in words; the simulator
//! and the proxy both call it.
//!
//! # A forecast model
//!
//! A model replaces [`Builtin`] by implementing [`Forecaster`] (for instance an ONNX session
//! run through the same runtime as the balancer model). The input it is expected to take is
//! what [`features::feature_row`] builds, and `fulcrum forecast --dump-features` writes for any
//! series, so a training pipeline learns on exactly these features:
//!
//! - input `features`, `float32[N, F]` with `F = WINDOW + 2·SEASON_SPAN + 1 + 2 + 2` (41):
//!   the last `WINDOW` (32) steps divided by their mean (`w31` oldest .. `w0` latest); the
//!   values one detected season before the target, at offsets −2..=+2 steps, divided by the
//!   same mean (1 when unknown or in the future); the built-in forecaster's p50 and p90 for
//!   the same target over the same mean (`b50`, `b90`: a model corrects the built-in forecast
//!   rather than starting from nothing); `has_season` (0/1); `horizon_steps`;
//! - output `quantiles`, `float32[N, 2]`: the p50 and p90 of the rate at the target divided
//!   by the window's mean (ratios, so one model serves pools of any size);
//! - the model's metadata names its schema
//!   (`fulcrum.forecast.schema = "window32-season5-builtin2-v2"`),
//!   and a model whose input width or output shape does not match is refused at load; outputs
//!   that are not finite, negative, or with p90 < p50 fall back to [`Builtin`] for that step.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod builtin;
pub mod features;
pub mod recommend;
pub mod ring;
pub mod season;
pub mod series;
pub mod smoothing;
pub mod tracker;

pub use builtin::{Builtin, Season};
pub use recommend::{capacity_per_backend, recommend, recommend_for, Hold, Recommendation, Sizing};
pub use ring::RateRing;
pub use season::detect_season;
pub use tracker::Tracker;

/// The median and the 90th percentile of the rate at a horizon, requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Median.
    pub p50: f64,
    /// 90th percentile (never below the median).
    pub p90: f64,
}

impl Forecast {
    /// A forecast with both quantiles made finite, non-negative and ordered.
    pub fn new(p50: f64, p90: f64) -> Self {
        let clean = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
        let (p50, p90) = (clean(p50), clean(p90));
        Self {
            p50,
            p90: p90.max(p50),
        }
    }
}

/// Forecasts a rate series: the built-in [`Builtin`] or a loaded model.
pub trait Forecaster: Send + Sync {
    /// Short name for reports and `/api/forecast` ("builtin", a model's file name).
    fn name(&self) -> &str;

    /// The rate `horizon_s` after the last value of `history` (rates `step_s` apart, oldest
    /// first), from that history alone.
    fn forecast(&self, history: &[f64], step_s: f64, horizon_s: f64) -> Forecast;

    /// [`Forecaster::forecast`] for several horizons; override to fit once for all.
    fn forecast_horizons(&self, history: &[f64], step_s: f64, horizons_s: &[f64]) -> Vec<Forecast> {
        horizons_s
            .iter()
            .map(|h| self.forecast(history, step_s, *h))
            .collect()
    }
}
