//! fulcrum's policy laboratory: a deterministic discrete-event simulator that drives the
//! proxy's own pickers ([`fulcrum_balance::Pool`]) on simulated time, and training-data export.
//! Its results are [`fulcrum_report`] types, the same the real-socket lab produces.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod autoscale;
pub mod control;
pub mod features;
pub mod sim;

#[cfg(test)]
mod autoscale_tests;
#[cfg(test)]
mod tests;

pub use autoscale::{
    AutoscaleStats, Combine, ProxyView, ScaleSample, ScaleView, Scaler, ScalerKind,
};
pub use features::{export_features, features_header, write_feature_rows, FeatureExport};
pub use fulcrum_scenario::{ParsePolicyError, Policy};
pub use sim::{
    peak_sized_count, simulate, simulate_all, simulate_autoscaled, simulate_autoscaled_detailed,
    simulate_detailed, with_every_copy, AutoscaleRun, BackendTruth, ControllerFactory,
    ForecastModelFactory, ForecastRestart, ProxySplit, SimError, SimOptions, SimOutput, SimStats,
    TickSnapshot, WeightController, AUTOSCALE_TABLE_HEADER,
};
