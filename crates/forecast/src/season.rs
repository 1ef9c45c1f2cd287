//! Finding a series' season from the series itself: the autocorrelation of the detrended
//! series over candidate lags, with a significance threshold, so a compressed 15-minute "day"
//! is found as well as a 24-hour one, and a series without a cycle gets none.

/// Autocorrelation a season's lag must reach, and more than noise of the series' length reaches.
pub const MIN_AUTOCORRELATION: f64 = 0.3;
/// Depth of the dip that must precede a peak: a level shift or a trend left after detrending
/// gives an autocorrelation that only decays, without a trough and a rise.
const MIN_PROMINENCE: f64 = 0.2;
/// Shortest season, in steps.
const MIN_PERIOD_STEPS: usize = 4;
/// The series is averaged into at most this many buckets before the coarse search.
const COARSE_POINTS: usize = 720;

/// The season of `series` in steps, or `None` when no lag's autocorrelation is significant.
///
/// A season is only reported when the series holds at least two of its cycles. Among the
/// significant peaks the shortest whose autocorrelation is within 85 % of the strongest wins,
/// so a 24-hour cycle is not reported as 48 hours (its multiple), and a daily cycle inside a
/// weekly one is found as the day.
pub fn detect_season(series: &[f64]) -> Option<usize> {
    let cleaned = despike(series);
    let series = &cleaned[..];
    let n = series.len();
    if n < 2 * MIN_PERIOD_STEPS + 2 {
        return None;
    }
    let factor = n.div_ceil(COARSE_POINTS).max(1);
    let coarse: Vec<f64> = series
        .chunks(factor)
        .filter(|c| c.len() == factor)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    let x = detrend(&coarse);
    let m = x.len();
    let min_lag = MIN_PERIOD_STEPS.div_ceil(factor).max(2);
    let max_lag = m / 2;
    if max_lag <= min_lag + 1 {
        return None;
    }
    let acf: Vec<f64> = (0..=max_lag + 1).map(|k| autocorrelation(&x, k)).collect();
    let threshold = MIN_AUTOCORRELATION.max(3.0 / (m as f64).sqrt());
    let mut peaks = Vec::new();
    let mut trough = f64::INFINITY;
    for k in 1..=max_lag {
        trough = trough.min(acf[k]);
        if k >= min_lag
            && acf[k] >= acf[k - 1]
            && acf[k] >= acf[k + 1]
            && acf[k] > threshold
            && acf[k] - trough >= MIN_PROMINENCE
        {
            peaks.push((k, acf[k]));
        }
    }
    let best = peaks.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (coarse_lag, _) = peaks.into_iter().find(|p| p.1 >= 0.85 * best)?;
    // Noise can put a small local maximum on the flank of the true peak: climb to the top of
    // the peak, which lies well within a fifth of the lag (the next peak is at twice the lag).
    let coarse_lag = (coarse_lag..=(coarse_lag + coarse_lag / 5).min(max_lag))
        .max_by(|a, b| acf[*a].total_cmp(&acf[*b]))
        .unwrap_or(coarse_lag);
    // The least-squares line leans on the season itself; detrend again by whole cycles.
    let cyc = detrend_by_cycles(&coarse, coarse_lag);
    let coarse_lag = (coarse_lag - coarse_lag / 10..=(coarse_lag + coarse_lag / 10).min(max_lag))
        .max_by(|a, b| autocorrelation(&cyc, *a).total_cmp(&autocorrelation(&cyc, *b)))
        .unwrap_or(coarse_lag);
    // Refine on the full series around the coarse lag. Near its top the autocorrelation is
    // flat and noise moves the peak by a step; the multiples of the lag are sharper, so each
    // candidate is scored over its multiples that the series still covers two thirds of.
    let full = detrend_by_cycles(series, coarse_lag * factor);
    let lo = ((coarse_lag.saturating_sub(1)) * factor).max(MIN_PERIOD_STEPS);
    let hi = ((coarse_lag + 1) * factor).min(n / 2);
    let multiples = (2 * n / 3 / hi.max(1)).max(1);
    (lo..=hi)
        .map(|k| {
            let score: f64 = (1..=multiples).map(|j| autocorrelation(&full, j * k)).sum();
            (k, score)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

/// Half-width of the running median bursts are measured against: bursts up to this many
/// steps long are taken out.
const DESPIKE_HALF_WIDTH: usize = 20;
/// A step more than this many robust standard deviations above the running median is a burst.
const DESPIKE_SIGMAS: f64 = 6.0;

/// The series as the season search sees it: the log of the rate when it is never zero (a
/// season scales with the level), with bursts replaced by the running median around them (a
/// one-sided Hampel filter), so that a few bursts do not make their own spacing a season. Only
/// rises are taken out: in log space a season's troughs fall further below a running median
/// than its peaks rise above it, and clipping them moved a 90-step season to 91.
fn despike(series: &[f64]) -> Vec<f64> {
    let x: Vec<f64> = if series.iter().all(|v| *v > 0.0) {
        series.iter().map(|v| v.ln()).collect()
    } else {
        series.to_vec()
    };
    let n = x.len();
    if n < 2 * DESPIKE_HALF_WIDTH + 1 {
        return x;
    }
    let mut window = Vec::with_capacity(2 * DESPIKE_HALF_WIDTH + 1);
    let med: Vec<f64> = (0..n)
        .map(|i| {
            let lo = i.saturating_sub(DESPIKE_HALF_WIDTH);
            let hi = (i + DESPIKE_HALF_WIDTH + 1).min(n);
            window.clear();
            window.extend_from_slice(&x[lo..hi]);
            median(&mut window)
        })
        .collect();
    let mut dev: Vec<f64> = x.iter().zip(&med).map(|(v, m)| (v - m).abs()).collect();
    let sigma = 1.4826 * median(&mut dev);
    if sigma <= 0.0 || !sigma.is_finite() {
        return x;
    }
    x.iter()
        .zip(&med)
        .map(|(v, m)| {
            if v - m > DESPIKE_SIGMAS * sigma {
                *m
            } else {
                *v
            }
        })
        .collect()
}

/// The median of `v` (reordered).
fn median(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// `x` minus the line through the means of its first and last whole cycles of `period` steps:
/// a least-squares line correlates with the season itself (a sine over whole cycles has a
/// slope), which moves the autocorrelation's peak.
fn detrend_by_cycles(x: &[f64], period: usize) -> Vec<f64> {
    let cycles = x.len() / period.max(1);
    if cycles < 2 {
        return detrend(x);
    }
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let first = mean(&x[..period]);
    let last = mean(&x[(cycles - 1) * period..cycles * period]);
    let slope = (last - first) / ((cycles - 1) * period) as f64;
    let centre = (period as f64 - 1.0) / 2.0;
    x.iter()
        .enumerate()
        .map(|(i, v)| v - first - slope * (i as f64 - centre))
        .collect()
}

/// `x` minus its least-squares line.
fn detrend(x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean_t = (n - 1.0) / 2.0;
    let mean_x = x.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let dt = i as f64 - mean_t;
        sxy += dt * (v - mean_x);
        sxx += dt * dt;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    x.iter()
        .enumerate()
        .map(|(i, v)| v - mean_x - slope * (i as f64 - mean_t))
        .collect()
}

/// Correlation of the series with itself `k` steps later: Pearson's correlation of `x[..n-k]`
/// and `x[k..]`. The textbook estimator (one mean and variance for the whole series) is biased
/// by where the overlap cuts a cycle, enough to move a 24-hour peak by a percent.
fn autocorrelation(x: &[f64], k: usize) -> f64 {
    let n = x.len();
    if k + 2 > n {
        return 0.0;
    }
    let (a, b) = (&x[..n - k], &x[k..]);
    let len = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / len, b.iter().sum::<f64>() / len);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (u, v) in a.iter().zip(b) {
        let (du, dv) = (u - ma, v - mb);
        sab += du * dv;
        saa += du * du;
        sbb += dv * dv;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_scenario::rng::Rng;

    fn sine(n: usize, period: f64, noise: f64, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|i| {
                100.0
                    + 40.0 * (2.0 * std::f64::consts::PI * i as f64 / period).sin()
                    + noise * rng.normal()
            })
            .collect()
    }

    #[test]
    fn finds_a_compressed_day_and_a_full_day() {
        // A 15-minute "day" at 10 s steps: 90 steps.
        for seed in 1..=5 {
            let s = detect_season(&sine(300, 90.0, 5.0, seed)).unwrap();
            assert!((89..=91).contains(&s), "seed {seed}: {s}");
        }
        // A 24-hour day at 10 s steps over three days, within 1 %.
        let s = detect_season(&sine(3 * 8640, 8640.0, 5.0, 2)).unwrap();
        assert!((8554..=8726).contains(&s), "{s}");
    }

    #[test]
    fn finds_the_day_under_a_trend() {
        let x: Vec<f64> = sine(400, 60.0, 3.0, 3)
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.5 * i as f64)
            .collect();
        assert_eq!(detect_season(&x), Some(60));
    }

    #[test]
    fn bursts_at_their_own_spacing_do_not_make_a_season() {
        // Seven 24-minute days (144 steps) with a burst of 2.5x every 295 steps: on the raw
        // rates the bursts' spacing outscores the day.
        for seed in 1..=3 {
            let mut x = sine(1008, 144.0, 3.0, seed);
            for start in (150..1000).step_by(295) {
                for v in x.iter_mut().skip(start).take(12) {
                    *v *= 2.5;
                }
            }
            assert_eq!(detect_season(&x), Some(144), "seed {seed}");
        }
    }

    #[test]
    fn none_for_noise_a_level_shift_or_a_trend() {
        let mut rng = Rng::new(4);
        let noise: Vec<f64> = (0..500).map(|_| 100.0 + 10.0 * rng.normal()).collect();
        assert_eq!(detect_season(&noise), None);
        let shift: Vec<f64> = (0..500)
            .map(|i| if i < 250 { 100.0 } else { 180.0 } + 5.0 * rng.normal())
            .collect();
        assert_eq!(detect_season(&shift), None);
        let trend: Vec<f64> = (0..500).map(|i| i as f64 + 5.0 * rng.normal()).collect();
        assert_eq!(detect_season(&trend), None);
        assert_eq!(detect_season(&[1.0; 5]), None);
    }
}
