//! The proxy's control loop on simulated time: `ALGO+model` policies.

use std::path::PathBuf;
use std::sync::Arc;

use fulcrum_balance::Pool;
use fulcrum_control::forecast_model::OnnxForecaster;
use fulcrum_control::model::{runtime, OnnxModel};
use fulcrum_control::{BackendObservation, ControlSettings, Heuristic, PoolController, Scorer};
use fulcrum_scenario::Scenario;

use crate::sim::{ControllerFactory, ForecastModelFactory, WeightController};

/// The control loop driving one simulated pool.
pub struct LoopController {
    controller: Option<PoolController>,
    scorer: Scorer,
    settings: ControlSettings,
}

impl WeightController for LoopController {
    fn tick(&mut self, pool: &Pool, observations: &[BackendObservation], now_ns: u64) {
        let controller = self
            .controller
            .get_or_insert_with(|| PoolController::simulated(pool, self.settings.clone(), now_ns));
        let _ = controller.tick(pool, observations, &mut self.scorer, now_ns);
    }
}

/// Where `ALGO+model` policies get their scores.
#[derive(Debug, Clone)]
pub enum ScorerSource {
    /// An ONNX model file run by ONNX Runtime.
    Model(PathBuf),
    /// The built-in heuristic controller.
    Heuristic,
}

/// A factory loading the forecast model at `path` for each run of a `forecast` scaler. A model
/// that cannot be loaded is an error here, before any run starts.
pub fn forecast_model_factory(path: PathBuf) -> Result<Arc<ForecastModelFactory>, String> {
    let env = runtime(None).map_err(|e| e.to_string())?;
    OnnxForecaster::load(env, &path).map_err(|e| e.to_string())?;
    Ok(Arc::new(move || {
        let env = runtime(None).expect("runtime was loaded when the factory was built");
        OnnxForecaster::load(env, &path).expect("model was validated when the factory was built")
    }))
}

/// A factory building a fresh control loop per run. A model that cannot be loaded is an error
/// here, before any run starts.
pub fn loop_factory(
    source: ScorerSource,
    settings: ControlSettings,
) -> Result<Arc<ControllerFactory>, String> {
    if let ScorerSource::Model(path) = &source {
        let env = runtime(None).map_err(|e| e.to_string())?;
        OnnxModel::load(env, path).map_err(|e| e.to_string())?;
    }
    Ok(Arc::new(move |_: &Scenario| {
        let scorer = match &source {
            ScorerSource::Model(path) => {
                let env = runtime(None).expect("runtime was loaded when the factory was built");
                Scorer::Model(
                    OnnxModel::load(env, path)
                        .expect("model was validated when the factory was built"),
                )
            }
            ScorerSource::Heuristic => Scorer::Heuristic(Heuristic::default()),
        };
        Box::new(LoopController {
            controller: None,
            scorer,
            settings: settings.clone(),
        }) as Box<dyn WeightController>
    }))
}
