//! Scenarios: the public format that describes backends and load for the simulator, the loopback
//! testbed and the lab, and the seeded random streams all three draw from.
//!
//! A scenario file (see `benches/scenarios/README.md`) names the backends (concurrency,
//! service time, errors, and events that slow them down, make them fail or take them down for
//! a while) and an open-loop load. [`parse_scenario`] validates a whole file and reports every
//! problem at once as [`Diagnostic`]s; the capacity oracle ([`Scenario::capacity_weights`],
//! [`Scenario::capacity_rps_at`]) says what each backend can really serve at any instant.
//!
//! ```
//! let src = r#"
//! name = "tiny"
//! duration_s = 60
//! [load]
//! rate_rps = 100
//! [[backends]]
//! name = "b"
//! count = 2
//! concurrency = 4
//! service_ms = 10
//! "#;
//! let (scenario, warnings) = fulcrum_scenario::parse_scenario(src, "tiny.toml").unwrap();
//! assert!(warnings.is_empty());
//! assert_eq!(scenario.backends[1].name, "b-2");
//! assert_eq!(scenario.capacity_rps_at(0.0), 800.0);
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod capacity;
mod format;
mod parse;
pub mod policy;
pub mod rng;

pub use format::{
    Autoscale, BackendEvent, BackendState, Burst, Diurnal, Load, Scenario, ScenarioBackend, Slo,
    DIURNAL_SLICE_S,
};
pub use fulcrum_diagnostics::{Diagnostic, Diagnostics, Severity};
pub use parse::{load_scenario, parse_scenario};
pub use policy::{ParsePolicyError, Policy};
