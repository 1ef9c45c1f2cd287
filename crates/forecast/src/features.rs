//! The features a forecast model sees, built once here so a training pipeline can learn on
//! exactly what the proxy will feed it (see the crate documentation for the schema).

use crate::Forecast;

/// Steps of recent history in a feature row.
pub const WINDOW: usize = 32;
/// Values around the target one season earlier: target − season + k for k in −SPAN..=SPAN.
pub const SEASON_SPAN: usize = 2;
/// Width of a feature row: the window, the seasonal values, the built-in forecaster's p50 and
/// p90, `has_season`, `horizon_steps`.
pub const NUM_FEATURES: usize = WINDOW + 2 * SEASON_SPAN + 1 + 2 + 2;
/// The schema a forecast model names in its metadata under [`SCHEMA_KEY`].
pub const SCHEMA: &str = "window32-season5-builtin2-v2";
/// Metadata key of a forecast model's schema.
pub const SCHEMA_KEY: &str = "fulcrum.forecast.schema";
/// Name of a forecast model's input, `float32[N, NUM_FEATURES]`.
pub const INPUT_NAME: &str = "features";
/// Name of a forecast model's output, `float32[N, 2]`: p50 and p90 as ratios to the window's
/// mean.
pub const OUTPUT_NAME: &str = "quantiles";

/// Column names of a feature row, in order.
pub fn feature_names() -> Vec<String> {
    let mut names: Vec<String> = (0..WINDOW)
        .map(|i| format!("w{}", WINDOW - 1 - i))
        .collect();
    let span = SEASON_SPAN as isize;
    names.extend((-span..=span).map(|k| format!("s{k:+}")));
    names.push("b50".into());
    names.push("b90".into());
    names.push("has_season".into());
    names.push("horizon_steps".into());
    names
}

/// One feature row for a forecast made after the last value of `history`, `h` steps ahead,
/// with season `season_steps` and the built-in forecaster's forecast `builtin` for the same
/// target, and the scale it was normalised by (the window's mean); `None` until [`WINDOW`]
/// steps are held or when the window's mean is 0.
///
/// `w0` is the latest value, `w{WINDOW-1}` the oldest; `s{k}` is the value one season before
/// the target, shifted by `k` steps, or 1 when that lies in the future or no season is known;
/// `b50` and `b90` are the built-in forecast's quantiles. A model thus starts from the built-in
/// forecast and learns where to correct it.
pub fn feature_row(
    history: &[f64],
    season_steps: Option<usize>,
    h: usize,
    builtin: Forecast,
) -> Option<(Vec<f64>, f64)> {
    let n = history.len();
    if n < WINDOW {
        return None;
    }
    let window = &history[n - WINDOW..];
    let mean = window.iter().sum::<f64>() / WINDOW as f64;
    if !(mean.is_finite() && mean > 0.0) {
        return None;
    }
    let mut row: Vec<f64> = window.iter().map(|v| v / mean).collect();
    let target = (n - 1 + h) as isize;
    let span = SEASON_SPAN as isize;
    for k in -span..=span {
        let v = season_steps.and_then(|m| {
            let j = target - m as isize + k;
            (j >= 0 && (j as usize) < n).then(|| history[j as usize] / mean)
        });
        row.push(v.unwrap_or(1.0));
    }
    row.push(builtin.p50 / mean);
    row.push(builtin.p90 / mean);
    row.push(f64::from(u8::from(season_steps.is_some())));
    row.push(h as f64);
    Some((row, mean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_normalised_and_look_one_season_back() {
        let y: Vec<f64> = (0..100).map(|i| 10.0 + (i % 10) as f64).collect();
        let b = Forecast::new(15.0, 18.0);
        assert!(feature_row(&y[..WINDOW - 1], None, 1, b).is_none());
        let (row, mean) = feature_row(&y, Some(10), 3, b).unwrap();
        assert_eq!(row.len(), feature_names().len());
        assert_eq!(row.len(), NUM_FEATURES);
        assert!((mean - 14.5 - 0.1).abs() < 0.2, "{mean}");
        // Target index 102; one season back is 92 (value 12).
        assert!((row[WINDOW + SEASON_SPAN] - 12.0 / mean).abs() < 1e-12);
        assert_eq!(row[WINDOW - 1], 19.0 / mean);
        let names = feature_names();
        let at = |name: &str| names.iter().position(|n| n == name).unwrap();
        assert_eq!(row[at("b50")], 15.0 / mean);
        assert_eq!(row[at("b90")], 18.0 / mean);
        // The last two columns stay where a model's graph reads them.
        assert_eq!(
            (at("has_season"), at("horizon_steps")),
            (NUM_FEATURES - 2, NUM_FEATURES - 1)
        );
        assert_eq!(row[NUM_FEATURES - 1], 3.0);
    }
}
