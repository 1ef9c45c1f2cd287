//! `fulcrum history`: a pool's request-rate series read from Prometheus and written as CSV rows
//! `t_s,rps` at a fixed step — what `fulcrum forecast --input` reads and a scenario's
//! `load.trace` replays in the simulator, so an operator can ask how the recommendation would
//! have sized the pool before it drives the backends. The query runs through the same client
//! as a pool's `history_prometheus`, and steps without a sample are filled as a restarted pool
//! fills the steps nobody counted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use fulcrum_control::history::assemble;
use fulcrum_proxy::forecast_history::fetch_blocking;

/// A flag has an invalid value (EX_CONFIG, as for a bad configuration).
const EXIT_USAGE: u8 = fulcrum_config::EXIT_CONFIG as u8;
/// Prometheus could not be asked, or refused the query (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// The answer holds no usable series (sysexits EX_DATAERR).
const EXIT_DATA: u8 = 65;
/// The output cannot be written (sysexits EX_CANTCREAT).
const EXIT_CANT_CREATE: u8 = 73;
/// Most steps one export writes: a year at 10 s.
const MAX_STEPS: f64 = 3_153_600.0;

/// `fulcrum history` arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Prometheus to ask, `http://HOST:PORT[/PREFIX]` (plain HTTP, as for `history_prometheus`).
    #[arg(long)]
    prometheus: String,
    /// The pool whose rate to export: the query is then
    /// `sum(fulcrum_pool_requests_per_second{pool="POOL"})`, every fulcrum pod's count added
    /// up (the whole pool's rate, where a pod's own `history_prometheus` takes the average).
    #[arg(long, required_unless_present = "query")]
    pool: Option<String>,
    /// PromQL answering one series of requests per second, instead of the pool's.
    #[arg(long)]
    query: Option<String>,
    /// How far back to read, in hours, up to `--end`.
    #[arg(long, default_value_t = 48.0)]
    hours: f64,
    /// Unix time of the last step (default: now).
    #[arg(long)]
    end: Option<f64>,
    /// Seconds between rows (the pools' default step is 10).
    #[arg(long, default_value_t = 10.0)]
    step_s: f64,
    /// Where to write the rows `t_s,rps` (with a header).
    #[arg(long)]
    output: PathBuf,
}

/// What was written.
struct Written {
    rows: usize,
    filled: usize,
    first_s: f64,
    last_s: f64,
}

/// Run `fulcrum history`.
pub fn run(args: HistoryArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(w) => {
            eprintln!(
                "fulcrum history: {} rows of {} s from {:.0} to {:.0} ({} without a sample, filled) in {}",
                w.rows,
                args.step_s,
                w.first_s,
                w.last_s,
                w.filled,
                args.output.display()
            );
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("fulcrum history: {message}");
            ExitCode::from(code)
        }
    }
}

fn run_inner(args: &HistoryArgs) -> Result<Written, (u8, String)> {
    let usage = |m: String| (EXIT_USAGE, m);
    if !(args.step_s.is_finite() && args.step_s > 0.0) {
        return Err(usage(format!(
            "--step-s must be a positive number of seconds, got {}",
            args.step_s
        )));
    }
    if !(args.hours.is_finite() && args.hours > 0.0) {
        return Err(usage(format!(
            "--hours must be a positive number, got {}",
            args.hours
        )));
    }
    let steps = (args.hours * 3600.0 / args.step_s).ceil();
    if steps > MAX_STEPS {
        return Err(usage(format!(
            "--hours {} at --step-s {} is {steps:.0} rows, more than {MAX_STEPS:.0}: take a longer step",
            args.hours, args.step_s
        )));
    }
    let end = match args.end {
        Some(e) if e.is_finite() && e > 0.0 => e,
        Some(e) => return Err(usage(format!("--end must be a Unix time, got {e}"))),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    };
    let end = (end / args.step_s).floor() * args.step_s;
    let query = match (&args.query, &args.pool) {
        (Some(q), _) => q.clone(),
        (None, Some(pool)) => format!("sum(fulcrum_pool_requests_per_second{{pool=\"{pool}\"}})"),
        (None, None) => return Err(usage("give --pool or --query".into())),
    };
    let start = end - (steps - 1.0) * args.step_s;
    let points = fetch_blocking(&args.prometheus, &query, start, end, args.step_s)
        .map_err(|e| (EXIT_UNAVAILABLE, format!("{}: {e}", args.prometheus)))?;
    if points.is_empty() {
        return Err((
            EXIT_DATA,
            format!(
                "`{query}` has no sample between {start:.0} and {end:.0} on {} (is the pool autoscaled, and scraped?)",
                args.prometheus
            ),
        ));
    }
    // Prometheus answers each point at `start + k·step`, the last sample within its lookback;
    // a row is the step that ends at its time, as a pool's history_file writes it. The series
    // ends at the last point: steps after it are not filled in.
    let last_s = points.iter().map(|p| p.0).fold(f64::MIN, f64::max);
    let a = assemble(&points, args.step_s, last_s, steps as usize).map_err(|e| {
        (
            EXIT_DATA,
            format!("the answer to `{query}` is not a series: {e}"),
        )
    })?;
    let n = a.rates.len();
    let first_s = last_s - (n as f64 - 1.0) * args.step_s;
    let write = || -> Result<(), csv::Error> {
        let mut w = csv::Writer::from_path(&args.output)?;
        w.write_record(["t_s", "rps"])?;
        for (i, r) in a.rates.iter().enumerate() {
            w.write_record([
                format!("{}", first_s + i as f64 * args.step_s),
                format!("{r:.3}"),
            ])?;
        }
        w.flush()?;
        Ok(())
    };
    write().map_err(|e| (EXIT_CANT_CREATE, format!("{}: {e}", args.output.display())))?;
    Ok(Written {
        rows: n,
        filled: a.filled,
        first_s,
        last_s,
    })
}
