//! The scenario format: backends, their events and the load, as validated by
//! [`parse_scenario`](crate::parse_scenario), with `count` expanded.

/// One scenario file, with `count` expanded (a backend with `count = 4` named `b` becomes
/// `b-1` .. `b-4`, each with its own copy of the events that apply to it).
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// `name`: short identifier used in reports.
    pub name: String,
    /// `description`: one sentence for reports.
    pub description: String,
    /// `seed`: makes the simulator deterministic.
    pub seed: u64,
    /// `duration_s`: total length, warm-up included.
    pub duration_s: f64,
    /// `warmup_s`: excluded from results (default 0).
    pub warmup_s: f64,
    /// `[load]`.
    pub load: Load,
    /// `[[backends]]`, expanded.
    pub backends: Vec<ScenarioBackend>,
    /// `[autoscale]`: which backend's count a scaler may change.
    pub autoscale: Option<Autoscale>,
    /// `[slo]`: the latency objective windows are judged against.
    pub slo: Option<Slo>,
}

/// The `[autoscale]` table: the backend entry whose copies a scaler adds and removes.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscale {
    /// `backend`: the `[[backends]]` entry's name, as written.
    pub backend: String,
    /// Index in [`Scenario::backends`] of its first copy; its copies are contiguous.
    pub first: usize,
    /// Its `count`: backends running at time 0.
    pub initial: u32,
    /// `min_backends`.
    pub min_backends: u32,
    /// `max_backends`.
    pub max_backends: u32,
    /// `provision_s`: from a scale-up decision until the new backend takes traffic.
    pub provision_s: f64,
    /// `target_utilization`: share of a backend's capacity the scalers plan for (default 0.7).
    pub target_utilization: f64,
}

/// The `[slo]` table: a window whose p99 latency is above `p99_ms` is a violation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    /// `p99_ms`.
    pub p99_ms: f64,
    /// `window_s`.
    pub window_s: f64,
}

/// `diurnal`: the rate is multiplied by `1 + amplitude·sin(2πt/period_s)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diurnal {
    /// `period_s`: length of one cycle.
    pub period_s: f64,
    /// `amplitude`: relative swing, in [0, 1).
    pub amplitude: f64,
}

/// One of `bursts`: from `at_s` for `duration_s` the rate is multiplied by `factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    /// Start, seconds.
    pub at_s: f64,
    /// Length, seconds.
    pub duration_s: f64,
    /// Rate multiplier.
    pub factor: f64,
}

/// A smooth `diurnal` rate is applied as constant over slices of this many seconds.
pub const DIURNAL_SLICE_S: f64 = 1.0;

/// The `[load]` table: open-loop Poisson arrivals.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// `rate_rps`: mean arrival rate at time 0.
    pub rate_rps: f64,
    /// `steps`: `[at_s, rate_rps]` changes, sorted by time.
    pub steps: Vec<(f64, f64)>,
    /// `non_idempotent_fraction`: share of requests sent as POST (default 0).
    pub non_idempotent_fraction: f64,
    /// `diurnal`: a daily cycle over the rate (optional).
    pub diurnal: Option<Diurnal>,
    /// `bursts`: temporary multipliers over the rate, sorted by start.
    pub bursts: Vec<Burst>,
}

impl Load {
    /// The same load at `factor` times the rate (steps' rates included; the diurnal cycle and
    /// the bursts are multipliers and stay): the share of one of several proxies.
    pub fn scaled(&self, factor: f64) -> Load {
        Load {
            rate_rps: self.rate_rps * factor,
            steps: self.steps.iter().map(|&(at, r)| (at, r * factor)).collect(),
            ..self.clone()
        }
    }

    /// The arrival rate in force at `t` seconds: the step's rate, times the diurnal cycle at
    /// the start of `t`'s slice, times every burst in force.
    pub fn rate_at(&self, t: f64) -> f64 {
        // Steps are sorted by time (a replayed trace holds thousands): search, not scan.
        let i = self.steps.partition_point(|(at, _)| *at <= t);
        let mut rate = i.checked_sub(1).map_or(self.rate_rps, |i| self.steps[i].1);
        if let Some(d) = self.diurnal {
            let slice = (t / DIURNAL_SLICE_S).floor() * DIURNAL_SLICE_S;
            rate *= 1.0 + d.amplitude * (std::f64::consts::TAU * slice / d.period_s).sin();
        }
        for b in &self.bursts {
            if b.at_s <= t && t < b.at_s + b.duration_s {
                rate *= b.factor;
            }
        }
        rate
    }

    /// The first time after `t` (capped at `end`) at which [`Load::rate_at`] may change.
    pub fn next_change(&self, t: f64, end: f64) -> f64 {
        let mut next = self
            .steps
            .get(self.steps.partition_point(|(at, _)| *at <= t))
            .map_or(end, |s| s.0.min(end));
        if self.diurnal.is_some() {
            next = next.min(((t / DIURNAL_SLICE_S).floor() + 1.0) * DIURNAL_SLICE_S);
        }
        for b in &self.bursts {
            for edge in [b.at_s, b.at_s + b.duration_s] {
                if edge > t {
                    next = next.min(edge);
                }
            }
        }
        next
    }
}

/// One backend after `count` expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioBackend {
    /// `name`, or `name-i` when `count` > 1.
    pub name: String,
    /// `concurrency`: requests served in parallel; the rest wait in FIFO order.
    pub concurrency: u32,
    /// `service_ms`: median service time.
    pub service_ms: f64,
    /// `service_jitter`: lognormal sigma (0 = fixed).
    pub service_jitter: f64,
    /// `error_rate`: probability that a request fails with 503.
    pub error_rate: f64,
    /// `error_ms`: service time of a failed request.
    pub error_ms: f64,
    /// `weight`: the static weight an operator would configure.
    pub weight: u32,
    /// `[[backends.events]]` that apply to this backend, sorted by `at_s`.
    pub events: Vec<BackendEvent>,
}

/// A time window during which a backend behaves differently.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendEvent {
    /// `at_s`: start.
    pub at_s: f64,
    /// `until_s`: end (default: the end of the scenario).
    pub until_s: f64,
    /// `slowdown`: service time multiplier while active (default 1).
    pub slowdown: f64,
    /// `error_rate`: replaces the backend's error rate while active.
    pub error_rate: Option<f64>,
    /// `down`: connections are refused while active.
    pub down: bool,
}

/// A backend's effective behaviour at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendState {
    /// Service time multiplier.
    pub slowdown: f64,
    /// Failure probability.
    pub error_rate: f64,
    /// Refusing connections.
    pub down: bool,
}

impl ScenarioBackend {
    /// The behaviour in force at `t` seconds (overlapping events compose: slowdowns multiply,
    /// the latest-starting error rate wins, any `down` wins).
    pub fn state_at(&self, t: f64) -> BackendState {
        let mut s = BackendState {
            slowdown: 1.0,
            error_rate: self.error_rate,
            down: false,
        };
        for e in self.events.iter().filter(|e| e.at_s <= t && t < e.until_s) {
            s.slowdown *= e.slowdown;
            if let Some(r) = e.error_rate {
                s.error_rate = r;
            }
            s.down |= e.down;
        }
        s
    }
}

impl Scenario {
    /// Times (s) strictly inside the run at which some backend's behaviour changes, in order.
    pub fn change_times(&self) -> Vec<f64> {
        let mut times: Vec<f64> = self
            .backends
            .iter()
            .flat_map(|b| b.events.iter().flat_map(|e| [e.at_s, e.until_s]))
            .filter(|t| *t > 0.0 && *t < self.duration_s)
            .collect();
        times.sort_by(f64::total_cmp);
        times.dedup();
        times
    }
}
