//! fulcrum's control loop: every tick it turns a pool's live backend statistics into new
//! backend weights and installs them in the pool.
//!
//! The caller's [`TickObserver`] reports what each backend did in the last window
//! ([`observe`]); [`PoolController::tick`] turns that into the normalised feature matrix
//! ([`features`]), scores it with a [`Scorer`] (the ONNX [`model`] or the built-in
//! [`Heuristic`]), passes the scores through the [`guardrails`] (bad outputs reject the whole
//! tick, the rest are clamped and paced), installs the result with
//! [`fulcrum_balance::Pool::set_weights`], grants recovery probes to starved backends and
//! explains the tick in a [`decisions::Decision`]. The proxy runs the loop on wall-clock time,
//! the simulator on simulated time.
//!
//! Beside the weights, [`demand`] tracks each autoscaled pool's request rate, forecasts it (the
//! built-in forecaster of `fulcrum_forecast`, or the ONNX [`forecast_model`] with its own
//! schema and guardrails) and recommends a backend count.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod controller;
pub mod decisions;
pub mod demand;
pub mod features;
pub mod forecast_model;
pub mod guardrails;
pub mod history;
pub mod model;
pub mod observe;

pub use controller::{ControlSettings, Heuristic, PoolController, Scorer, TickOutcome};
pub use features::{extract, FEATURE_NAMES, FEATURE_SCHEMA, NUM_FEATURES};
pub use observe::{BackendObservation, TickObserver};
