//! Results of running balancing policies against a scenario, shared by the simulator
//! (`fulcrum sim`) and the real-socket lab (`fulcrum lab`), and the reports written from them.
//!
//! A [`RunReport`] holds one [`PolicyResult`] per policy: request and error counts, latency
//! quantiles and CDF, per-backend counts and a [`ShareTimeline`] of each backend's share of
//! attempts. Both modes build them the same way — the lab from measured [`RequestRecord`]s
//! through [`PolicyResult::from_records`], the simulator by feeding an [`Accumulator`]
//! directly. [`write_json`], [`markdown`] and [`write_report`] (JSON, Markdown and SVG plots)
//! turn a report into files.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod results;
mod write;

pub use results::{
    Accumulator, BackendResult, PolicyResult, RequestRecord, RunReport, ShareTimeline,
};
pub use write::{latency_cdf_svg, markdown, share_file_name, share_svg, write_json, write_report};
