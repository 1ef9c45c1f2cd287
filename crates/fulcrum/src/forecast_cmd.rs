//! `fulcrum forecast`: rolling-origin forecasts of a request-rate series read from CSV, with
//! the forecaster the proxy uses, and the feature matrix a forecast model would be trained on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fulcrum_forecast::builtin::horizon_steps;
use fulcrum_forecast::features::{feature_names, feature_row};
use fulcrum_forecast::series::{read_series, Series, SeriesError};
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
