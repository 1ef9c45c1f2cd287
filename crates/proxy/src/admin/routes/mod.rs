//! One module per group of admin endpoints; each endpoint is one function.

pub(super) mod decisions;
pub(super) mod forecast;
pub(super) mod health;
pub(super) mod metrics;
pub(super) mod pools;
pub(super) mod reload;
pub(super) mod status;
