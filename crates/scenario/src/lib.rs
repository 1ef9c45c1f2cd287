//! Scenarios: the public format that describes backends and load for the simulator, the loopback
//! testbed and the lab, and the seeded random streams all three draw from.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod policy;
pub mod rng;

pub use policy::{ParsePolicyError, Policy};
