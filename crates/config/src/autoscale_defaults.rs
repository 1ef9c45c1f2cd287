//! Defaults of a `[pools.NAME.autoscale]` section, shared by the configuration and the
//! simulator's forecast scaler.

/// Share of a backend's capacity to plan for (`target_utilization`).
pub const TARGET_UTILIZATION: f64 = 0.7;

/// Fewest backends recommended (`min_backends`).
pub const MIN_BACKENDS: u32 = 1;

/// Most backends recommended (`max_backends`).
pub const MAX_BACKENDS: u32 = 100;

/// Provisioning horizon in seconds: the time a new backend needs to take traffic (`horizon_s`).
pub const HORIZON_S: u64 = 300;

/// Backends recommended beyond what the demand needs (`spare_backends`): none.
pub const SPARE_BACKENDS: u32 = 0;

/// Backends recommended beyond what the demand needs for a while after the demand outran the
/// plan (`burst_spare_backends`): one. A burst nobody forecast is met by the backends already
/// serving until new ones take traffic, and pools that had one tend to have the next.
pub const BURST_SPARE_BACKENDS: u32 = 1;

/// How long the burst spare is kept after the demand last outran the plan, seconds
/// (`burst_memory_s`): an hour.
pub const BURST_MEMORY_S: u64 = 3600;

/// Step of the rate series in seconds (`step_s`).
pub const STEP_S: u64 = 10;

/// Steps the recommendation must have been lower before it goes down: the default
/// `scale_down_stabilization_s` is this many `step_s` (20 s at the default step). Kubernetes'
/// HPA holds a scale-down for 300 s because it cannot see the demand coming back; the
/// recommendation already covers the highest p90 forecast until a new backend would serve
/// (`horizon_s`), so its own window only has to keep one step's noise from removing a backend
/// the next step adds again. `benches/results/autoscale.md` measures 0 s to 300 s.
pub const SCALE_DOWN_STABILIZATION_STEPS: u32 = 2;

/// Horizons every pool is forecast at, in seconds, beside its own `horizon_s`.
pub const REPORTED_HORIZONS_S: [u64; 3] = [60, 300, 900];
