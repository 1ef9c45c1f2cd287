//! fulcrum's control loop: turns live backend statistics into per-tick observations and a
//! feature matrix, the input of the weight model.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod controller;
pub mod decisions;
pub mod features;
pub mod guardrails;
pub mod model;
pub mod observe;

pub use controller::{ControlSettings, Heuristic, PoolController, Scorer, TickOutcome};
pub use features::{extract, FEATURE_NAMES, FEATURE_SCHEMA, NUM_FEATURES};
pub use observe::{BackendObservation, TickObserver};
