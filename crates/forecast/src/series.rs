//! A request-rate series as CSV rows `t_s,rps` at a fixed step: what `fulcrum forecast --input`
//! reads, what a pool's `history_file` holds, and what a scenario's `load.trace` replays.

use std::path::Path;

/// Relative tolerance on the step between two rows.
const STEP_TOLERANCE: f64 = 1e-6;

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
}
