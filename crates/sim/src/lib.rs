//! fulcrum's policy laboratory: a deterministic discrete-event simulator that drives the
//! proxy's own pickers ([`fulcrum_balance::Pool`]) on simulated time, the result types shared
//! with the real-socket lab, report writers (JSON, Markdown, SVG) and training-data export.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod control;
pub mod features;
pub mod policy;
pub mod report;
pub mod sim;
pub mod write;

#[cfg(test)]
mod tests;

pub use features::{export_features, features_header, write_feature_rows, FeatureExport};
pub use policy::{ParsePolicyError, Policy};
pub use report::{BackendResult, PolicyResult, RequestRecord, RunReport, ShareTimeline};
pub use sim::{
    simulate, simulate_all, simulate_detailed, BackendTruth, ControllerFactory, SimError,
    SimOptions, SimOutput, SimStats, TickSnapshot, WeightController,
};
pub use write::{write_json, write_report};
