//! The forecast model: an ONNX graph that forecasts a pool's request rate, run by the same
//! ONNX Runtime as the weight model.
//!
//! Its contract is [`fulcrum_forecast::features`]: input `features` `float32[N, 41]` (one row
//! per horizon, built by [`feature_row`], the built-in forecaster's own forecast among them),
//! output `quantiles` `float32[N, 2]` (p50 and p90 as ratios to the window's mean), metadata
//! `fulcrum.forecast.schema = "window32-season5-builtin2-v2"`.
//! A model is accepted only if its schema, input and output fit and a probe inference gives
//! finite, non-negative, ordered quantiles. At run time, an answer that is not finite, negative
//! or with p90 below p50 is refused for that step, and the caller falls back to the built-in
//! forecaster.

use std::path::{Path, PathBuf};

use fulcrum_forecast::builtin::horizon_steps;
use fulcrum_forecast::features::{
    feature_row, INPUT_NAME, NUM_FEATURES, OUTPUT_NAME, SCHEMA, SCHEMA_KEY, WINDOW,
};
use fulcrum_forecast::Forecast;
use fulcrum_forecast::{Builtin, Forecaster, Season};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;

use crate::model::{open_checked, ModelError};

/// A loaded, validated forecast model.
pub struct OnnxForecaster {
    session: Session,
    path: PathBuf,
    name: String,
    description: String,
}

impl std::fmt::Debug for OnnxForecaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxForecaster")
            .field("path", &self.path)
            .field("description", &self.description)
            .finish()
    }
}

/// Why a forecast model's answer was not used for a step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastRefused {
    /// The history cannot make a feature row yet (too short, or an idle window).
    #[error("{0}")]
    NoInput(String),
    /// The model ran but its answer failed a guardrail, or it failed to run.
    #[error("{0}")]
    BadOutput(String),
}

impl OnnxForecaster {
    /// Load `path`, check its schema, input and output, and run a probe inference.
    pub fn load(env: &Environment, path: &Path) -> Result<OnnxForecaster, ModelError> {
        let incompatible = |reason: String| ModelError::Incompatible {
            path: path.to_path_buf(),
            reason,
        };
        let (session, description) = open_checked(
            env,
            path,
            SCHEMA_KEY,
            SCHEMA,
            |s| format!("its forecast schema is {s:?}, this fulcrum feeds {SCHEMA:?}"),
            INPUT_NAME,
            NUM_FEATURES,
        )?;
        let outputs = session.outputs();
        let Some(output) = outputs.iter().find(|o| o.name() == OUTPUT_NAME) else {
            let names: Vec<&str> = outputs.iter().map(|o| o.name()).collect();
            return Err(incompatible(format!(
                "expected an output named {OUTPUT_NAME:?}, found {names:?}"
            )));
        };
        if let Some(shape) = output.dtype().tensor_shape() {
            let dims: &[i64] = shape;
            if dims.len() != 2 || (dims[1] >= 0 && dims[1] != 2) {
                return Err(incompatible(format!(
                    "output {OUTPUT_NAME:?} has shape {dims:?}; expected [N, 2] (p50, p90)"
                )));
            }
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let mut model = OnnxForecaster {
            session,
            path: path.to_path_buf(),
            name,
            description,
        };
        // A probe on a flat series, one and thirty steps ahead: the answer must pass the same
        // guardrails as every step's.
        let mut probe = Vec::with_capacity(2 * NUM_FEATURES);
        for h in [1.0f32, 30.0] {
            probe.extend(std::iter::repeat_n(1.0f32, NUM_FEATURES - 2));
            probe.extend([0.0, h]);
        }
        model
            .ratios(&probe, 2)
            .map_err(|e| incompatible(format!("probe inference: {e}")))?;
        Ok(model)
    }

    /// The file the model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's file name, as `/api/forecast` names the forecaster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's own description from its metadata.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// p50 and p90 ratios for `n` rows of `[n, NUM_FEATURES]` features, each checked: finite,
    /// non-negative, p90 not below p50.
    fn ratios(&mut self, features: &[f32], n: usize) -> Result<Vec<(f64, f64)>, String> {
        let input =
            TensorRef::from_array_view(([n, NUM_FEATURES], features)).map_err(|e| e.to_string())?;
        let outputs = self
            .session
            .run(ort::inputs![INPUT_NAME => input])
            .map_err(|e| format!("inference failed: {e}"))?;
        let value = outputs
            .get(OUTPUT_NAME)
            .ok_or_else(|| format!("no output {OUTPUT_NAME:?}"))?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        let dims: &[i64] = shape;
        if dims != [n as i64, 2] || data.len() != 2 * n {
            return Err(format!("output has shape {dims:?}; expected [{n}, 2]"));
        }
        data.chunks_exact(2)
            .map(|q| {
                let (p50, p90) = (f64::from(q[0]), f64::from(q[1]));
                if !(p50.is_finite() && p90.is_finite()) {
                    Err(format!("non-finite quantiles p50 {p50}, p90 {p90}"))
                } else if p50 < 0.0 || p90 < 0.0 {
                    Err(format!("negative quantiles p50 {p50}, p90 {p90}"))
                } else if p90 < p50 {
                    Err(format!("p90 {p90} below p50 {p50}"))
                } else {
                    Ok((p50, p90))
                }
            })
            .collect()
    }

    /// Forecasts of the rate `horizons_s` after the last value of `history` (rates `step_s`
    /// apart, oldest first) with season `season_steps`, or why the model's answer cannot be
    /// used for this step. Runs the built-in forecaster for the model's `b50`/`b90` inputs; a
    /// caller that has its forecasts already passes them to [`Self::forecast_from_builtin`].
    pub fn forecast(
        &mut self,
        history: &[f64],
        step_s: f64,
        horizons_s: &[f64],
        season_steps: Option<usize>,
    ) -> Result<Vec<Forecast>, ForecastRefused> {
        let season = season_steps.map_or(Season::None, Season::Steps);
        let builtin = Builtin::with_season(season).forecast_horizons(history, step_s, horizons_s);
        self.forecast_from_builtin(history, step_s, horizons_s, season_steps, &builtin)
    }

    /// [`Self::forecast`] given the built-in forecaster's forecasts `builtin` for the same
    /// history, season and horizons (one per horizon).
    pub fn forecast_from_builtin(
        &mut self,
        history: &[f64],
        step_s: f64,
        horizons_s: &[f64],
        season_steps: Option<usize>,
        builtin: &[Forecast],
    ) -> Result<Vec<Forecast>, ForecastRefused> {
        debug_assert_eq!(builtin.len(), horizons_s.len());
        let mut features = Vec::with_capacity(horizons_s.len() * NUM_FEATURES);
        let mut scale = 0.0;
        for (h, b) in horizons_s.iter().zip(builtin) {
            let Some((row, mean)) =
                feature_row(history, season_steps, horizon_steps(step_s, *h), *b)
            else {
                return Err(ForecastRefused::NoInput(if history.len() < WINDOW {
                    format!("{} of {WINDOW} steps held", history.len())
                } else {
                    "no traffic in the window".to_string()
                }));
            };
            scale = mean;
            features.extend(row.iter().map(|v| *v as f32));
        }
        let ratios = self
            .ratios(&features, horizons_s.len())
            .map_err(ForecastRefused::BadOutput)?;
        Ok(ratios
            .into_iter()
            .map(|(p50, p90)| Forecast::new(p50 * scale, p90 * scale))
            .collect())
    }
}
