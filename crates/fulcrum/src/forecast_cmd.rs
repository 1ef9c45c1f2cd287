//! `fulcrum forecast`: rolling-origin forecasts of a request-rate series read from CSV, with
//! the forecaster the proxy uses, and the feature matrix a forecast model would be trained on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fulcrum_forecast::builtin::horizon_steps;
use fulcrum_forecast::features::{feature_names, feature_row};
use fulcrum_forecast::{Forecast, RateRing, Tracker};

/// Input data is not a valid series (sysexits EX_DATAERR).
pub const EXIT_DATA: u8 = 65;
/// The input cannot be opened (sysexits EX_NOINPUT).
pub const EXIT_NO_INPUT: u8 = 66;
/// A flag has an invalid value (EX_CONFIG, as for a bad configuration).
pub const EXIT_USAGE: u8 = fulcrum_config::EXIT_CONFIG as u8;
/// Steps kept for fitting: three 24-hour days at 10-second steps. Older rows are forgotten,
/// as the proxy's ring forgets them.
const MAX_HISTORY: usize = 3 * 8640;
/// Relative tolerance on the step between two rows.
const STEP_TOLERANCE: f64 = 1e-6;

/// `fulcrum forecast` arguments.
#[derive(Debug, clap::Args)]
pub struct ForecastArgs {
    /// Series to forecast: CSV rows `t_s,rps` at a fixed step (a `t_s,rps` header is allowed).
    #[arg(long)]
    input: PathBuf,
    /// How far ahead each forecast looks, in seconds.
    #[arg(long, default_value_t = 300.0)]
    horizon_s: f64,
    /// Where to write rows `t_s,horizon_s,p50,p90` (the forecast made at `t_s`).
    #[arg(long)]
    output: Option<PathBuf>,
    /// The season in seconds; without it the season is found in the series.
    #[arg(long)]
    season_s: Option<f64>,
    /// Write the forecast model's feature matrix for the series here (CSV with a header).
    #[arg(long)]
    dump_features: Option<PathBuf>,
}

/// Why a series cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A row is not a valid sample.
    #[error("{path}:{line}: {message}")]
    Row {
        /// The file.
        path: String,
        /// 1-based line.
        line: u64,
        /// What is wrong and what would be valid.
        message: String,
    },
}

/// A series read from CSV: times and rates, at `step_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Seconds, strictly increasing by `step_s`.
    pub t_s: Vec<f64>,
    /// Requests per second.
    pub rps: Vec<f64>,
    /// Seconds between rows.
    pub step_s: f64,
}

/// Read and validate a series: two numeric columns, finite, `rps >= 0`, times increasing by a
/// fixed step; every error names its line.
pub fn read_series(path: &Path) -> Result<Series, SeriesError> {
    let name = path.display().to_string();
    let io = |source| SeriesError::Io {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(file);
    let row_err = |line: u64, message: String| SeriesError::Row {
        path: name.clone(),
        line,
        message,
    };
    let mut s = Series {
        t_s: Vec::new(),
        rps: Vec::new(),
        step_s: 0.0,
    };
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| match e.kind() {
            csv::ErrorKind::Io(_) => row_err(0, format!("read error: {e}")),
            _ => row_err(e.position().map_or(0, |p| p.line()), e.to_string()),
        })?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        if record.len() != 2 {
            return Err(row_err(
                line,
                format!("expected 2 columns `t_s,rps`, got {}", record.len()),
            ));
        }
        let (t_raw, r_raw) = (&record[0], &record[1]);
        if s.t_s.is_empty() && t_raw == "t_s" {
            continue;
        }
        let num = |raw: &str, what: &str| -> Result<f64, SeriesError> {
            match raw.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => Err(row_err(
                    line,
                    format!("{what} must be a finite number, got {raw:?}"),
                )),
            }
        };
        let (t, r) = (num(t_raw, "t_s")?, num(r_raw, "rps")?);
        if r < 0.0 {
            return Err(row_err(line, format!("rps must be >= 0, got {r}")));
        }
        if let Some(&prev) = s.t_s.last() {
            let step = t - prev;
            if step <= 0.0 {
                return Err(row_err(
                    line,
                    format!("t_s must increase: {t} after {prev}"),
                ));
            }
            if s.step_s == 0.0 {
                s.step_s = step;
            } else if (step - s.step_s).abs() > STEP_TOLERANCE * s.step_s.max(1.0) {
                return Err(row_err(
                    line,
                    format!(
                        "rows must be a fixed step apart: {step} s after {prev}, the series' step is {} s (fill gaps with the observed rate, 0 when idle)",
                        s.step_s
                    ),
                ));
            }
        }
        s.t_s.push(t);
        s.rps.push(r);
    }
    if s.t_s.len() < 2 {
        return Err(row_err(
            0,
            format!("need at least 2 rows `t_s,rps`, got {}", s.t_s.len()),
        ));
    }
    Ok(s)
}

/// One forecast row: made at `t_s` for `t_s + horizon_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastRow {
    /// Origin.
    pub t_s: f64,
    /// Horizon.
    pub horizon_s: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
}

/// Rolling-origin forecasts: the forecast at row `i` sees rows `..=i` only.
pub fn rolling_forecasts(
    series: &Series,
    horizon_s: f64,
    season_s: Option<f64>,
    mut on_origin: impl FnMut(usize, &Tracker, Option<Forecast>),
) -> Vec<ForecastRow> {
    let mut tracker = Tracker::new(RateRing::new(series.step_s, MAX_HISTORY), season_s);
    let mut out = Vec::new();
    for (i, (&t, &r)) in series.t_s.iter().zip(&series.rps).enumerate() {
        tracker.push(r);
        let forecast = tracker.forecast(&[horizon_s]).map(|f| f[0]);
        if let Some(f) = forecast {
            out.push(ForecastRow {
                t_s: t,
                horizon_s,
                p50: f.p50,
                p90: f.p90,
            });
        }
        on_origin(i, &tracker, forecast);
    }
    out
}

#[derive(Debug)]
struct Failure(u8, String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.1)
    }
}

/// Run `fulcrum forecast`.
pub fn run(args: ForecastArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(rows) => {
            eprintln!(
                "fulcrum forecast: {rows} forecasts of {} s ahead",
                args.horizon_s
            );
            ExitCode::SUCCESS
        }
        Err(Failure(code, message)) => {
            eprintln!("fulcrum forecast: {message}");
            ExitCode::from(code)
        }
    }
}

fn run_inner(args: &ForecastArgs) -> Result<usize, Failure> {
    if !(args.horizon_s.is_finite() && args.horizon_s > 0.0) {
        return Err(Failure(
            EXIT_USAGE,
            format!(
                "--horizon-s must be a positive number of seconds, got {}",
                args.horizon_s
            ),
        ));
    }
    if let Some(s) = args.season_s {
        if !(s.is_finite() && s > 0.0) {
            return Err(Failure(
                EXIT_USAGE,
                format!("--season-s must be a positive number of seconds, got {s}"),
            ));
        }
    }
    if args.output.is_none() && args.dump_features.is_none() {
        return Err(Failure(
            EXIT_USAGE,
            "nothing to write: give --output and/or --dump-features".into(),
        ));
    }
    let series = read_series(&args.input).map_err(|e| match e {
        SeriesError::Io { .. } => Failure(EXIT_NO_INPUT, e.to_string()),
        SeriesError::Row { .. } => Failure(EXIT_DATA, e.to_string()),
    })?;
    if let Some(s) = args.season_s {
        if s < 2.0 * series.step_s {
            return Err(Failure(
                EXIT_USAGE,
                format!(
                    "--season-s {s} must be at least two steps of the series ({} s)",
                    2.0 * series.step_s
                ),
            ));
        }
    }
    let h = horizon_steps(series.step_s, args.horizon_s);
    let mut features = Vec::new();
    let rows = rolling_forecasts(&series, args.horizon_s, args.season_s, |i, tracker, f| {
        let (Some(_), Some(builtin)) = (&args.dump_features, f) else {
            return;
        };
        let history = &series.rps[..=i];
        if let Some((row, mean)) = feature_row(history, tracker.season_steps(), h, builtin) {
            let target = series.rps.get(i + h).map(|y| y / mean);
            features.push((series.t_s[i], row, target));
        }
    });
    let write_err =
        |p: &Path, e: &dyn fmt::Display| Failure(1, format!("cannot write {}: {e}", p.display()));
    if let Some(path) = &args.output {
        write_csv(path, |w| {
            w.write_record(["t_s", "horizon_s", "p50", "p90"])?;
            for r in &rows {
                w.write_record([
                    r.t_s.to_string(),
                    r.horizon_s.to_string(),
                    format!("{:.3}", r.p50),
                    format!("{:.3}", r.p90),
                ])?;
            }
            Ok(())
        })
        .map_err(|e| write_err(path, &e))?;
    }
    if let Some(path) = &args.dump_features {
        write_csv(path, |w| {
            let mut header = vec!["t_s".to_string(), "horizon_s".to_string()];
            header.extend(feature_names());
            header.push("target_ratio".into());
            w.write_record(&header)?;
            for (t, row, target) in &features {
                let mut rec = vec![t.to_string(), args.horizon_s.to_string()];
                rec.extend(row.iter().map(|x| format!("{x:.6}")));
                rec.push(target.map(|y| format!("{y:.6}")).unwrap_or_default());
                w.write_record(&rec)?;
            }
            Ok(())
        })
        .map_err(|e| write_err(path, &e))?;
    }
    Ok(rows.len())
}

fn write_csv(
    path: &Path,
    body: impl FnOnce(&mut csv::Writer<std::fs::File>) -> Result<(), csv::Error>,
) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_path(path)?;
    body(&mut w)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn series_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn reads_a_series_with_or_without_header() {
        let f = series_file("t_s,rps\n0,10\n10, 12\n20,11.5\n");
        let s = read_series(f.path()).unwrap();
        assert_eq!((s.rps.len(), s.step_s), (3, 10.0));
    }

    #[test]
    fn every_bad_row_names_its_line() {
        for (text, line, needle) in [
            ("0,10\n10,x\n", 2, "rps must be a finite number"),
            ("0,10\n10,5\n5,5\n", 3, "t_s must increase"),
            ("0,10\n10,5\n25,5\n", 3, "fixed step"),
            ("0,10\n10,-1\n", 2, "rps must be >= 0"),
            ("0,10\n10,5,3\n", 2, "expected 2 columns"),
            ("0,10\n10,NaN\n", 2, "finite"),
        ] {
            let f = series_file(text);
            let e = read_series(f.path()).unwrap_err().to_string();
            assert!(e.contains(&format!(":{line}: ")), "{text:?}: {e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn forecasts_use_only_the_past() {
        let y: Vec<f64> = (0..80).map(|i| 100.0 + (i % 20) as f64).collect();
        let s = Series {
            t_s: (0..80).map(|i| i as f64 * 10.0).collect(),
            rps: y.clone(),
            step_s: 10.0,
        };
        let full = rolling_forecasts(&s, 50.0, None, |_, _, _| {});
        let mut cut = s.clone();
        cut.t_s.truncate(60);
        cut.rps.truncate(60);
        let part = rolling_forecasts(&cut, 50.0, None, |_, _, _| {});
        assert_eq!(&full[..part.len()], &part[..]);
    }
}
