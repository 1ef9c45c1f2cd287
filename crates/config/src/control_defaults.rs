//! Defaults of the `[control]` section, shared by the configuration, the control loop and
//! the simulator so that every place starting a control loop without a file agrees with it.

/// Control tick period in milliseconds (`tick_ms`).
pub const TICK_MS: u64 = 500;

/// The ONNX model file (`model`), relative to the working directory.
pub const MODEL: &str = "models/balancer.onnx";

/// Longest an inference may take, in milliseconds, before its tick is skipped
/// (`inference_budget_ms`).
pub const INFERENCE_BUDGET_MS: u64 = 20;

/// Lowest weight of a healthy backend, as a fraction of the pool's average weight (`floor`).
pub const FLOOR: f64 = 0.05;

/// Highest weight, as a multiple of the pool's average weight (`ceiling`).
pub const CEILING: f64 = 8.0;

/// Largest factor a weight may change by in one tick (`max_step`).
pub const MAX_STEP: f64 = 2.0;

/// Recovery probes per tick for a healthy backend that got no traffic of its own (`probes`).
pub const PROBES: u32 = 1;

/// Recent decisions kept for `/api/decisions` (`decisions`).
pub const DECISIONS: usize = 256;

/// Whether the model is reloaded when its file changes (`watch_model`).
pub const WATCH_MODEL: bool = true;
