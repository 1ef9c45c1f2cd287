//! The policies a scenario can be run with: the proxy's four algorithms, the simulator-only
//! `oracle`, `capacity_oracle` (the lab's reference limit) and `ALGO+model` (an algorithm
//! whose weights a control loop sets every tick).

use std::fmt;
use std::str::FromStr;

use fulcrum_config::{Algorithm, WeightSource};

/// A load-balancing policy, as named on the command line and in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `round_robin`.
    RoundRobin,
    /// `weighted_round_robin` with the scenario's static weights.
    WeightedRoundRobin,
    /// `least_connections` (weighted by the static weights).
    LeastConnections,
    /// `p2c_ewma`: power of two choices over Peak-EWMA.
    P2cEwma,
    /// `oracle`: simulator only; knows every backend's true queue, speed and error rate.
    Oracle,
    /// `capacity_oracle`: weighted least connections whose weights follow every backend's true
    /// capacity the moment it changes (`Scenario::capacity_weights`); the limit the lab can
    /// measure, since it needs no per-request knowledge of the backends' queues.
    CapacityOracle,
    /// `ALGO+model`: the algorithm with weights set by a control loop.
    Model(Algorithm),
}

impl Policy {
    /// The policies that need nothing beyond the scenario: the four algorithms and `oracle`.
    pub const BASELINES: [Policy; 5] = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin,
        Policy::LeastConnections,
        Policy::P2cEwma,
        Policy::Oracle,
    ];

    /// The proxy algorithm this policy picks with (`None` for `oracle`).
    pub fn algorithm(&self) -> Option<Algorithm> {
        match *self {
            Policy::RoundRobin => Some(Algorithm::RoundRobin),
            Policy::WeightedRoundRobin => Some(Algorithm::WeightedRoundRobin),
            Policy::LeastConnections => Some(Algorithm::LeastConnections),
            Policy::P2cEwma => Some(Algorithm::P2cEwma),
            Policy::Oracle => None,
            Policy::CapacityOracle => Some(Algorithm::LeastConnections),
            Policy::Model(a) => Some(a),
        }
    }

    /// Whether this policy needs a weight controller (`ALGO+model`).
    pub fn needs_model(&self) -> bool {
        matches!(self, Policy::Model(_))
    }

    /// How the proxy is configured to play this policy: its algorithm and where its weights come
    /// from. `None` for `oracle`, which needs every backend's queue and exists only in the
    /// simulator; `capacity_oracle` is least connections with static weights that its driver
    /// sets at every change.
    pub fn proxy_settings(&self) -> Option<(Algorithm, WeightSource)> {
        match self {
            Policy::Oracle => None,
            Policy::Model(a) => Some((*a, WeightSource::Model)),
            p => p.algorithm().map(|a| (a, WeightSource::Static)),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Policy::Oracle => f.write_str("oracle"),
            Policy::CapacityOracle => f.write_str("capacity_oracle"),
            Policy::Model(a) => write!(f, "{a}+model"),
            p => f.write_str(p.algorithm().unwrap_or(Algorithm::RoundRobin).as_str()),
        }
    }
}

/// A policy name that is not one of the known forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePolicyError {
    /// The rejected text.
    pub input: String,
}

impl fmt::Display for ParsePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown policy `{}` (expected round_robin, weighted_round_robin, least_connections, \
             p2c_ewma, oracle, capacity_oracle, or ALGO+model)",
            self.input
        )
    }
}

impl std::error::Error for ParsePolicyError {}

impl FromStr for Policy {
    type Err = ParsePolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || ParsePolicyError {
            input: s.to_string(),
        };
        if let Some(base) = t.strip_suffix("+model") {
            return base.parse().map(Policy::Model).map_err(|_| err());
        }
        match t {
            "oracle" => Ok(Policy::Oracle),
            "capacity_oracle" => Ok(Policy::CapacityOracle),
            _ => match t.parse().map_err(|_| err())? {
                Algorithm::RoundRobin => Ok(Policy::RoundRobin),
                Algorithm::WeightedRoundRobin => Ok(Policy::WeightedRoundRobin),
                Algorithm::LeastConnections => Ok(Policy::LeastConnections),
                Algorithm::P2cEwma => Ok(Policy::P2cEwma),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut all = Policy::BASELINES.to_vec();
        all.push(Policy::CapacityOracle);
        for a in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::P2cEwma,
        ] {
            all.push(Policy::Model(a));
        }
        for p in all {
            let s = p.to_string();
            assert_eq!(s.parse::<Policy>(), Ok(p), "{s}");
        }
        assert_eq!(
            "p2c_ewma+model".parse::<Policy>(),
            Ok(Policy::Model(Algorithm::P2cEwma))
        );
        assert!(Policy::Model(Algorithm::P2cEwma).needs_model());
        assert!(!Policy::Oracle.needs_model());
        assert_eq!(
            Policy::CapacityOracle.proxy_settings(),
            Some((Algorithm::LeastConnections, WeightSource::Static))
        );
        assert_eq!(
            Policy::Model(Algorithm::P2cEwma).proxy_settings(),
            Some((Algorithm::P2cEwma, WeightSource::Model))
        );
        assert_eq!(Policy::Oracle.proxy_settings(), None);
        for bad in ["", "oracle+model", "random", "least_connections+", "+model"] {
            let e = bad.parse::<Policy>().unwrap_err();
            assert!(e.to_string().contains("unknown policy"), "{bad}");
        }
    }
}
