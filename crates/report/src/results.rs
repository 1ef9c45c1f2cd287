//! Result types shared by the simulator (`mode = "sim"`) and the real-socket lab
//! (`mode = "lab"`), and their construction from per-request records.
//!
//! Nothing here depends on how the requests were produced: the lab measures
//! [`RequestRecord`]s from sockets and calls [`PolicyResult::from_records`]; the simulator feeds
//! the same [`Accumulator`] directly, so both modes compute every figure the same way.

use serde::{Deserialize, Serialize};

/// Results of every policy run against one scenario.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed the scenario ran with.
    pub seed: u64,
    /// `"sim"` (discrete-event simulator) or `"lab"` (real sockets on loopback).
    pub mode: String,
    /// One entry per policy, in the order they were run.
    pub results: Vec<PolicyResult>,
}

/// What one policy achieved on one scenario.
///
/// `requests` and all latency figures cover every request that arrived after warm-up, failed
/// ones included (a failed request's latency is the time until the client got its error).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PolicyResult {
    /// Policy name, e.g. `least_connections` or `p2c_ewma+model`.
    pub policy: String,
    /// Client requests that arrived after warm-up.
    pub requests: u64,
    /// Of those, requests whose final answer was an error.
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Extra attempts (retries) made for those requests.
    pub retries: u64,
    /// Mean client latency, ms.
    pub mean_ms: f64,
    /// Median client latency, ms (exact order statistic).
    pub p50_ms: f64,
    /// 99th percentile client latency, ms (exact order statistic).
    pub p99_ms: f64,
    /// 99.9th percentile client latency, ms (exact order statistic).
    pub p999_ms: f64,
    /// Attempts and failed attempts per backend.
    pub backends: Vec<BackendResult>,
    /// Per-backend share of attempts over time.
    pub share_timeline: ShareTimeline,
    /// `[ms, quantile]` pairs of the client latency distribution, about 100 points spaced
    /// logarithmically in `1 - quantile`, so the tail is densely sampled.
    pub latency_cdf: Vec<[f64; 2]>,
}

/// Attempts one backend received.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BackendResult {
    /// Backend name.
    pub name: String,
    /// Attempts sent to this backend (retries included).
    pub requests: u64,
    /// Attempts that failed (refused, 5xx, or no answer).
    pub errors: u64,
}

/// Each backend's share of attempts, per time bucket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ShareTimeline {
    /// Start of the first bucket, seconds since the start of the scenario (the end of warm-up).
    #[serde(default)]
    pub start_s: f64,
    /// Bucket width in seconds.
    pub bucket_s: f64,
    /// Backend names, in column order.
    pub backends: Vec<String>,
    /// `shares[bucket][backend]`: share of that bucket's attempts (each row sums to 1, or is
    /// all zeros when the bucket saw no attempt). Attempts are attributed to the bucket of
    /// their request's arrival.
    pub shares: Vec<Vec<f64>>,
}

/// One client request as measured (the lab produces these from real sockets).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// Arrival time, seconds since the start of the scenario.
    pub arrival_s: f64,
    /// Time from arrival to the final answer, ms.
    pub latency_ms: f64,
    /// Whether the final answer was a success.
    pub ok: bool,
    /// Backend indices tried, in order; may be empty if unknown.
    pub attempts: Vec<usize>,
    /// Extra attempts after the first.
    pub retries: u32,
}

impl PolicyResult {
    /// Aggregate per-request records into a policy result.
    ///
    /// Only requests with `arrival_s >= warmup_s` count. Every attempt but the last of a
    /// request is counted as a failed attempt of its backend (it was retried); the last one
    /// failed iff the request did. Attempt indices outside `backend_names` are ignored.
    pub fn from_records(
        policy: &str,
        records: &[RequestRecord],
        backend_names: &[String],
        warmup_s: f64,
        duration_s: f64,
    ) -> PolicyResult {
        let mut acc = Accumulator::new(backend_names, warmup_s, duration_s);
        for r in records {
            if !acc.counts(r.arrival_s) {
                continue;
            }
            let last = r.attempts.len().saturating_sub(1);
            for (i, &b) in r.attempts.iter().enumerate() {
                acc.attempt(r.arrival_s, b, i < last || !r.ok);
            }
            acc.request(r.latency_ms, r.ok, r.retries);
        }
        acc.finish(policy)
    }
}

/// Candidate bucket widths for the share timeline, in seconds.
const NICE_BUCKETS: [f64; 15] = [
    0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 3600.0,
];
/// At most this many buckets in a share timeline (unless the span exceeds an hour per bucket).
const MAX_BUCKETS: f64 = 60.0;
/// Number of points in a latency CDF.
const CDF_POINTS: usize = 100;
/// The CDF's tail stops at `1 - 10^-CDF_MAX_NINES` (or `1 - 1/n` if that is nearer).
const CDF_MAX_NINES: f64 = 5.0;

/// Incremental aggregation of requests and attempts into a [`PolicyResult`].
///
/// The simulator feeds it as requests complete; [`PolicyResult::from_records`] feeds it from
/// measured records, so both compute every figure the same way.
#[derive(Debug)]
pub struct Accumulator {
    names: Vec<String>,
    warmup_s: f64,
    bucket_s: f64,
    latencies_ms: Vec<f64>,
    errors: u64,
    retries: u64,
    per_backend: Vec<(u64, u64)>,
    /// Attempts per bucket, flattened `[bucket][backend]`.
    bucket_attempts: Vec<u64>,
    buckets: usize,
}

impl Accumulator {
    /// An empty accumulator for `backend_names` (in pick order) over a run of `duration_s`
    /// seconds whose first `warmup_s` seconds are left out of the results.
    pub fn new(backend_names: &[String], warmup_s: f64, duration_s: f64) -> Self {
        let span = (duration_s - warmup_s).max(0.0);
        let bucket_s = NICE_BUCKETS
            .iter()
            .copied()
            .find(|b| span / b <= MAX_BUCKETS)
            .unwrap_or(NICE_BUCKETS[NICE_BUCKETS.len() - 1]);
        let buckets = ((span / bucket_s).ceil() as usize).max(1);
        let n = backend_names.len();
        Self {
            names: backend_names.to_vec(),
            warmup_s,
            bucket_s,
            latencies_ms: Vec::new(),
            errors: 0,
            retries: 0,
            per_backend: vec![(0, 0); n],
            bucket_attempts: vec![0; buckets * n],
            buckets,
        }
    }

    /// Make room for `requests` latencies up front.
    pub fn reserve(&mut self, requests: usize) {
        self.latencies_ms.reserve(requests);
    }

    /// Whether a request arriving at `arrival_s` is part of the results.
    #[inline]
    pub fn counts(&self, arrival_s: f64) -> bool {
        arrival_s >= self.warmup_s
    }

    /// One attempt of a counted request.
    #[inline]
    pub fn attempt(&mut self, arrival_s: f64, backend: usize, failed: bool) {
        let n = self.names.len();
        if backend >= n {
            return;
        }
        let e = &mut self.per_backend[backend];
        e.0 += 1;
        e.1 += u64::from(failed);
        let k =
            (((arrival_s - self.warmup_s) / self.bucket_s).max(0.0) as usize).min(self.buckets - 1);
        self.bucket_attempts[k * n + backend] += 1;
    }

    /// One counted request's final outcome.
    #[inline]
    pub fn request(&mut self, latency_ms: f64, ok: bool, retries: u32) {
        self.latencies_ms.push(latency_ms);
        self.errors += u64::from(!ok);
        self.retries += u64::from(retries);
    }

    /// The result of policy `policy` over every counted request.
    pub fn finish(mut self, policy: &str) -> PolicyResult {
        let lat = &mut self.latencies_ms;
        lat.sort_unstable_by(f64::total_cmp);
        let requests = lat.len() as u64;
        let mean_ms = if lat.is_empty() {
            0.0
        } else {
            lat.iter().sum::<f64>() / lat.len() as f64
        };
        let n = self.names.len();
        let shares = (0..self.buckets)
            .map(|k| {
                let row = &self.bucket_attempts[k * n..(k + 1) * n];
                let total: u64 = row.iter().sum();
                row.iter()
                    .map(|&c| {
                        if total == 0 {
                            0.0
                        } else {
                            c as f64 / total as f64
                        }
                    })
                    .collect()
            })
            .collect();
        PolicyResult {
            policy: policy.to_string(),
            requests,
            errors: self.errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                self.errors as f64 / requests as f64
            },
            retries: self.retries,
            mean_ms,
            p50_ms: quantile(lat, 0.5),
            p99_ms: quantile(lat, 0.99),
            p999_ms: quantile(lat, 0.999),
            backends: self
                .names
                .iter()
                .zip(&self.per_backend)
                .map(|(name, &(requests, errors))| BackendResult {
                    name: name.clone(),
                    requests,
                    errors,
                })
                .collect(),
            share_timeline: ShareTimeline {
                start_s: self.warmup_s,
                bucket_s: self.bucket_s,
                backends: self.names.clone(),
                shares,
            },
            latency_cdf: cdf(lat),
        }
    }
}

/// Nearest-rank quantile of sorted data (0 when empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// About [`CDF_POINTS`] `[ms, quantile]` pairs with `1 - quantile` log-spaced down to the tail.
fn cdf(sorted: &[f64]) -> Vec<[f64; 2]> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let nines = (sorted.len() as f64).log10().min(CDF_MAX_NINES);
    let mut out: Vec<[f64; 2]> = Vec::with_capacity(CDF_POINTS);
    for i in 0..CDF_POINTS {
        let x = nines * i as f64 / (CDF_POINTS - 1) as f64;
        let q = 1.0 - 10f64.powf(-x);
        let point = [quantile(sorted, q), q];
        if out.last() != Some(&point) {
            out.push(point);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(arrival_s: f64, latency_ms: f64, ok: bool, attempts: &[usize]) -> RequestRecord {
        RequestRecord {
            arrival_s,
            latency_ms,
            ok,
            attempts: attempts.to_vec(),
            retries: attempts.len().saturating_sub(1) as u32,
        }
    }

    #[test]
    fn from_records_counts_after_warmup_only() {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut records = vec![rec(0.5, 1000.0, false, &[0])]; // warm-up: ignored
        for i in 0..1000 {
            let t = 1.0 + i as f64 * 0.009;
            records.push(rec(t, f64::from(i + 1), true, &[i as usize % 2]));
        }
        records.push(rec(5.0, 2000.0, false, &[0, 1, 0]));
        let r = PolicyResult::from_records("rr", &records, &names, 1.0, 10.0);
        assert_eq!(r.policy, "rr");
        assert_eq!(r.requests, 1001);
        assert_eq!(r.errors, 1);
        assert_eq!(r.retries, 2);
        assert!((r.error_rate - 1.0 / 1001.0).abs() < 1e-12);
        assert_eq!(r.p50_ms, 501.0);
        assert_eq!(r.p99_ms, 991.0);
        assert_eq!(r.p999_ms, 1000.0);
        assert_eq!(r.backends[0].requests, 502);
        assert_eq!(r.backends[0].errors, 2);
        assert_eq!(r.backends[1].requests, 501);
        assert_eq!(r.backends[1].errors, 1);
        let tl = &r.share_timeline;
        assert_eq!(tl.start_s, 1.0);
        assert!(tl.bucket_s > 0.0 && tl.shares.len() as f64 * tl.bucket_s >= 9.0);
        for row in &tl.shares {
            let s: f64 = row.iter().sum();
            assert!(s == 0.0 || (s - 1.0).abs() < 1e-9);
        }
        let cdf = &r.latency_cdf;
        assert!(cdf.len() > 50 && cdf.len() <= 100);
        assert!(cdf
            .windows(2)
            .all(|w| w[0][0] <= w[1][0] && w[0][1] < w[1][1]));
        assert_eq!(cdf[0][1], 0.0);
        assert!(cdf.last().unwrap()[1] > 0.99);
    }

    #[test]
    fn empty_records_give_zeros() {
        let r = PolicyResult::from_records("x", &[], &["a".to_string()], 0.0, 1.0);
        assert_eq!(r.requests, 0);
        assert_eq!(r.error_rate, 0.0);
        assert_eq!(r.p99_ms, 0.0);
        assert!(r.latency_cdf.is_empty());
        assert!(r.share_timeline.shares.iter().all(|row| row == &vec![0.0]));
    }

    #[test]
    fn json_shape_is_stable() {
        let r = PolicyResult::from_records(
            "least_connections",
            &[rec(0.0, 1.0, true, &[0])],
            &["a".to_string()],
            0.0,
            1.0,
        );
        let report = RunReport {
            scenario: "s".into(),
            seed: 7,
            mode: "sim".into(),
            results: vec![r],
        };
        let v: serde_json::Value = serde_json::to_value(&report).unwrap();
        for k in ["scenario", "seed", "mode", "results"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let p = &v["results"][0];
        for k in [
            "policy",
            "requests",
            "errors",
            "error_rate",
            "retries",
            "mean_ms",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "backends",
            "share_timeline",
            "latency_cdf",
        ] {
            assert!(p.get(k).is_some(), "{k}");
        }
        let back: RunReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.5), 5.0);
        assert_eq!(quantile(&v, 0.91), 10.0);
        assert_eq!(quantile(&v, 1.0), 10.0);
    }
}
