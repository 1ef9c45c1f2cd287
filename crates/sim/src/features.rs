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
    let (policy_name, seed) = (policy.to_string(), seed.to_string());
    let key = [scenario.name.as_str(), &policy_name, &seed];
    let mut record = csv::Writer::from_writer(out);
    let mut number = String::with_capacity(32);
    let mut rows = 0u64;
    let mut error: Option<io::Error> = None;
    let mut on_tick = |tick: &TickSnapshot<'_>| {
        if error.is_some() || tick.t_s < scenario.warmup_s {
            return;
        }
        let features = extract(tick.observations);
        for (i, truth) in tick.truth.iter().enumerate() {
            let truth: [&dyn std::fmt::Display; TRUTH_COLUMNS.len()] = [
                &truth.concurrency,
                &truth.service_ms,
                &truth.error_rate,
                &u8::from(truth.down),
                &truth.queue_len,
                &truth.busy,
            ];
            let row = Row {
                key: &key,
                t_s: tick.t_s,
                backend: &scenario.backends[i].name,
                features: &features[i * NUM_FEATURES..(i + 1) * NUM_FEATURES],
                truth: &truth,
            };
            if let Err(e) = row.write(&mut record, &mut number) {
                error = Some(e.into());
                return;
            }
            rows += 1;
        }
    };
    let output = simulate_detailed(scenario, policy, opts, &mut on_tick)?;
    if let Some(e) = error {
        return Err(SimError::Io(e));
    }
    record.flush()?;
    Ok(FeatureExport {
        result: output.result,
        rows,
    })
}

/// One data row: numbers as `Display` writes them (the shortest exact form, which the
/// training scripts parse), names quoted when they hold a comma, quote or line break.
struct Row<'a> {
    key: &'a [&'a str; 3],
    t_s: f64,
    backend: &'a str,
    features: &'a [f32],
    truth: &'a [&'a dyn std::fmt::Display; TRUTH_COLUMNS.len()],
}

impl Row<'_> {
    /// Write the row's fields and end the record; `number` is a reused formatting buffer.
    fn write<W: Write>(&self, record: &mut csv::Writer<W>, number: &mut String) -> csv::Result<()> {
        let mut field = |record: &mut csv::Writer<W>, value: &dyn std::fmt::Display| {
            use std::fmt::Write as _;
            number.clear();
            let _ = write!(number, "{value}");
            record.write_field(number.as_bytes())
        };
        for k in self.key {
            record.write_field(k)?;
        }
        field(record, &self.t_s)?;
        record.write_field(self.backend)?;
        for v in self.features {
            field(record, v)?;
        }
        for v in self.truth {
            field(record, v)?;
        }
        record.write_record(None::<&[u8]>)
    }
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
    fn names_with_commas_and_quotes_round_trip() {
        let name = "edge \"east\", rack 2";
        let mut sc = scenario(
            5,
            4.0,
            2.0,
            200.0,
            vec![backend(name, 4, 5.0, 0.2), backend("b", 4, 5.0, 0.2)],
        );
        sc.name = "mix, \"quoted\"".into();
        let mut out = Vec::new();
        out.extend_from_slice(features_header().as_bytes());
        let export =
            write_feature_rows(&sc, &Policy::P2cEwma, &SimOptions::default(), &mut out).unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let width = reader.headers().unwrap().len();
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len() as u64, export.rows);
        assert!(rows.iter().all(|r| r.len() == width));
        assert_eq!(&rows[0][0], sc.name);
        assert_eq!(&rows[0][4], name);
        assert_eq!(&rows[1][4], "b");
    }
}
