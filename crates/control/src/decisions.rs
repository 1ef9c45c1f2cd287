//! A bounded log of the control loop's recent decisions, for `/api/decisions`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::features::NUM_FEATURES;

/// One tick for one pool, explained.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Tick counter since start.
    pub tick: u64,
    /// Seconds since the control loop started.
    pub t_s: f64,
    /// The pool.
    pub pool: String,
    /// What produced the scores: `model` or `heuristic`.
    pub source: &'static str,
    /// Backend names, in row order (shared between the decisions of a pool).
    pub backends: Arc<[String]>,
    /// The feature matrix, row-major with [`NUM_FEATURES`] columns; serialised as one array
    /// per backend.
    #[serde(serialize_with = "as_rows")]
    pub features: Vec<f32>,
    /// Raw scores as returned.
    pub raw_scores: Vec<f32>,
    /// Weights in force before this tick.
    pub previous_weights: Vec<f64>,
    /// Weights in force after this tick (unchanged when rejected or skipped).
    pub weights: Vec<f64>,
    /// Guardrails that changed something, and how.
    pub guardrails: Vec<String>,
    /// Why the whole tick was rejected or skipped, if it was.
    pub rejected: Option<String>,
    /// Time spent in inference on the wall clock, microseconds (zero on simulated time).
    pub inference_us: f64,
}

impl Decision {
    /// The feature rows, one per backend.
    pub fn feature_rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.features.chunks_exact(NUM_FEATURES)
    }
}

fn as_rows<S: Serializer>(features: &[f32], s: S) -> Result<S::Ok, S::Error> {
    let rows = features.chunks_exact(NUM_FEATURES);
    let mut seq = s.serialize_seq(Some(rows.len()))?;
    for row in rows {
        seq.serialize_element(row)?;
    }
    seq.end()
}

/// The last `capacity` decisions; the control thread writes, the admin API reads.
#[derive(Debug)]
pub struct DecisionLog {
    capacity: usize,
    entries: Mutex<VecDeque<Decision>>,
}

impl DecisionLog {
    /// An empty log keeping at most `capacity` decisions.
    pub fn new(capacity: usize) -> Self {
        DecisionLog {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Append, dropping the oldest when full.
    pub fn push(&self, d: Decision) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() == self.capacity {
            e.pop_front();
        }
        e.push_back(d);
    }

    /// The newest `limit` decisions, newest first, optionally for one pool only.
    pub fn recent(&self, limit: usize, pool: Option<&str>) -> Vec<Decision> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.iter()
            .rev()
            .filter(|d| pool.is_none_or(|p| d.pool == p))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(tick: u64, pool: &str) -> Decision {
        Decision {
            tick,
            t_s: 0.0,
            pool: pool.into(),
            source: "model",
            backends: Arc::from(Vec::new()),
            features: vec![0.5; 2 * NUM_FEATURES],
            raw_scores: vec![],
            previous_weights: vec![],
            weights: vec![],
            guardrails: vec![],
            rejected: None,
            inference_us: 0.0,
        }
    }

    #[test]
    fn ring_keeps_the_newest() {
        let log = DecisionLog::new(3);
        for i in 0..5 {
            log.push(d(i, if i % 2 == 0 { "a" } else { "b" }));
        }
        let all: Vec<u64> = log.recent(10, None).iter().map(|d| d.tick).collect();
        assert_eq!(all, vec![4, 3, 2]);
        let a: Vec<u64> = log.recent(10, Some("a")).iter().map(|d| d.tick).collect();
        assert_eq!(a, vec![4, 2]);
    }

    #[test]
    fn features_serialise_as_one_row_per_backend() {
        let json = serde_json::to_value(d(1, "a")).unwrap();
        let rows = json["features"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].as_array().unwrap().len(), NUM_FEATURES);
        assert_eq!(d(1, "a").feature_rows().len(), 2);
    }
}
