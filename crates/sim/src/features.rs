//! Training data for the weight model: one CSV row per control tick per backend (after
//! warm-up), holding the control loop's features next to the simulator's ground truth.
//!
//! Columns: `scenario,policy,seed,t_s,backend`, then [`fulcrum_control::FEATURE_NAMES`] (schema
//! [`fulcrum_control::FEATURE_SCHEMA`]), then [`TRUTH_COLUMNS`].

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use fulcrum_control::{extract, FEATURE_NAMES, NUM_FEATURES};
use fulcrum_report::PolicyResult;
use fulcrum_scenario::{Policy, Scenario};

use crate::sim::{simulate_detailed, SimError, SimOptions, TickSnapshot};

/// Identifying columns at the start of every row.
pub const KEY_COLUMNS: [&str; 5] = ["scenario", "policy", "seed", "t_s", "backend"];

/// Ground-truth columns at the end of every row.
pub const TRUTH_COLUMNS: [&str; 6] = [
    "true_concurrency",
    "true_service_ms",
    "true_error_rate",
    "true_down",
    "queue_len",
    "busy",
];

/// What an export produced.
#[derive(Debug, Clone)]
pub struct FeatureExport {
    /// The run's results.
    pub result: PolicyResult,
    /// Data rows written (header excluded).
    pub rows: u64,
}

/// The CSV header line (with trailing newline).
pub fn features_header() -> String {
    let cols: Vec<&str> = KEY_COLUMNS
        .iter()
        .chain(FEATURE_NAMES.iter())
        .chain(TRUTH_COLUMNS.iter())
        .copied()
        .collect();
    let mut s = cols.join(",");
    s.push('\n');
    s
}

/// Quote a CSV field when it contains a separator, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Simulate and write the header and one row per tick per backend to `path`.
pub fn export_features(
    scenario: &Scenario,
    policy: &Policy,
    opts: &SimOptions,
    path: &Path,
) -> Result<FeatureExport, SimError> {
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(features_header().as_bytes())?;
    let export = write_feature_rows(scenario, policy, opts, &mut out)?;
    out.flush()?;
    Ok(export)
}

/// Simulate and append data rows (no header) to `out`, e.g. to gather many scenarios and
/// policies in one file after a single [`features_header`].
pub fn write_feature_rows(
    scenario: &Scenario,
    policy: &Policy,
    opts: &SimOptions,
    out: &mut dyn Write,
) -> Result<FeatureExport, SimError> {
    let seed = opts.seed.unwrap_or(scenario.seed);
    let prefix = format!(
        "{},{},{}",
        csv_field(&scenario.name),
        csv_field(&policy.to_string()),
        seed
    );
    let names: Vec<String> = scenario
        .backends
        .iter()
        .map(|b| csv_field(&b.name))
        .collect();
    let mut rows = 0u64;
    let mut error: Option<io::Error> = None;
    let mut line = String::with_capacity(512);
    let mut on_tick = |tick: &TickSnapshot<'_>| {
        if error.is_some() || tick.t_s < scenario.warmup_s {
            return;
        }
        let features = extract(tick.observations);
        for (i, truth) in tick.truth.iter().enumerate() {
            use std::fmt::Write as _;
            line.clear();
            let _ = write!(line, "{prefix},{},{}", tick.t_s, names[i]);
            for v in &features[i * NUM_FEATURES..(i + 1) * NUM_FEATURES] {
                let _ = write!(line, ",{v}");
            }
            let _ = writeln!(
                line,
                ",{},{},{},{},{},{}",
                truth.concurrency,
                truth.service_ms,
                truth.error_rate,
                u8::from(truth.down),
                truth.queue_len,
                truth.busy
            );
            if let Err(e) = out.write_all(line.as_bytes()) {
                error = Some(e);
                return;
            }
            rows += 1;
        }
    };
    let output = simulate_detailed(scenario, policy, opts, &mut on_tick)?;
    if let Some(e) = error {
        return Err(SimError::Io(e));
    }
    Ok(FeatureExport {
        result: output.result,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{backend, scenario};
    use fulcrum_scenario::BackendEvent;

    #[test]
    fn one_row_per_tick_per_backend_after_warmup() {
        let mut sc = scenario(
            3,
            10.0,
            2.0,
            300.0,
            vec![backend("a,1", 4, 5.0, 0.2), backend("b", 8, 5.0, 0.2)],
        );
        sc.backends[0].events.push(BackendEvent {
            at_s: 5.0,
            until_s: 7.0,
            slowdown: 2.0,
            error_rate: Some(0.5),
            down: false,
        });
        let path =
            std::env::temp_dir().join(format!("fulcrum-sim-features-{}.csv", std::process::id()));
        let export = export_features(&sc, &Policy::P2cEwma, &SimOptions::default(), &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header.len(), 5 + NUM_FEATURES + 6);
        assert_eq!(&header[..5], &KEY_COLUMNS);
        assert_eq!(header[5], FEATURE_NAMES[0]);
        assert_eq!(header.last(), Some(&"busy"));
        // Ticks at 2.0, 2.5, ..., 10.0 → 17 ticks × 2 backends.
        assert_eq!(export.rows, 34);
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 34);
        assert!(
            rows[0].starts_with("test,p2c_ewma,3,2,\"a,1\","),
            "{}",
            rows[0]
        );
        let during = rows
            .iter()
            .find(|r| r.starts_with("test,p2c_ewma,3,6,\"a,1\""))
            .unwrap();
        let cols: Vec<&str> = during.rsplitn(7, ',').collect();
        // rsplitn yields the last columns first: busy, queue_len, down, error rate, service.
        assert_eq!(cols[2], "0");
        assert_eq!(cols[3], "0.5");
        let service: f64 = cols[4].parse().unwrap();
        assert!((service - 2.0 * sc.backends[0].mean_service_ms()).abs() < 1e-9);
        assert!(export.result.requests > 2000);
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
