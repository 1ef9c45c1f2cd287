//! Exponential smoothing: Holt's damped trend, Holt-Winters with an additive season and
//! seasonal naive. A series whose rate is never zero is smoothed in log space, where a season
//! and a trend that scale with the level become additive. Parameters come from a small grid
//! search on the errors [`SCORE_STEPS`] ahead.

/// A forecasting method of the built-in forecaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Level and damped trend, no season.
    Holt,
    /// Level, damped trend and an additive season.
    HoltWinters,
    /// The value one season earlier.
    SeasonalNaive,
}

impl Method {
    /// Name used in reasoning and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Holt => "Holt (damped trend)",
            Method::HoltWinters => "Holt-Winters",
            Method::SeasonalNaive => "seasonal naive",
        }
    }
}

/// Smoothing parameters: level `alpha`, trend `beta`, season `gamma`, damping `phi`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Level smoothing, 0..=1.
    pub alpha: f64,
    /// Trend smoothing, 0..=1.
    pub beta: f64,
    /// Season smoothing, 0..=1.
    pub gamma: f64,
    /// Trend damping, 0..=1.
    pub phi: f64,
}

/// Candidates are scored on their forecasts this many steps ahead. One-step errors favour a
/// level that chases every step's noise, which forecasts minutes ahead pay for: on the forecast
/// pipeline's validation series (`models/forecast/`, the season given) the mean error 15
/// minutes ahead was 16.7 % scored one step ahead and 14.9 % scored six.
pub const SCORE_STEPS: usize = 6;

const HOLT_ALPHA: &[f64] = &[0.1, 0.2, 0.4, 0.6, 0.8, 1.0];
const HOLT_BETA: &[f64] = &[0.0, 0.05, 0.15, 0.3];
const HOLT_PHI: &[f64] = &[0.8, 0.9, 0.98];
const HW_ALPHA: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.5, 0.8];
const HW_BETA: &[f64] = &[0.0, 0.05, 0.2];
const HW_GAMMA: &[f64] = &[0.05, 0.15, 0.3, 0.5];
const HW_PHI: f64 = 0.95;
/// Log-space forecasts are capped here before `exp` (e^700 is still finite).
const MAX_LOG: f64 = 700.0;

/// A method fitted to one series: its states after every observation.
#[derive(Debug, Clone)]
pub struct Fit {
    /// The method.
    pub method: Method,
    /// Its parameters (unused ones are 0).
    pub params: Params,
    /// Season in steps (0 for Holt).
    pub season: usize,
    /// Whether the states are of the log of the rate.
    pub log: bool,
    /// Mean squared error, on the rate, of the forecasts [`SCORE_STEPS`] ahead over the
    /// scored range.
    pub mse: f64,
    y: Vec<f64>,
    level: Vec<f64>,
    trend: Vec<f64>,
    seas: Vec<f64>,
    /// First index at which a state exists.
    start: usize,
}

impl Fit {
    /// The first origin a forecast can be made from.
    pub fn first_origin(&self) -> usize {
        self.start
    }

    /// Observations the fit saw.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// The observation at index `t`.
    pub fn observed(&self, t: usize) -> f64 {
        self.y[t]
    }

    /// Whether the fit saw no observation.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The forecast made after observing index `t` for index `t + h` (`h >= 1`), never negative.
    pub fn point(&self, t: usize, h: usize) -> f64 {
        let m = self.season;
        let past = |j: usize| if m > 0 { j + h - m * h.div_ceil(m) } else { j };
        let f = match self.method {
            Method::SeasonalNaive => return self.y[past(t)].max(0.0),
            Method::Holt => self.level[t] + damp_sum(self.params.phi, h) * self.trend[t],
            Method::HoltWinters => {
                self.level[t] + damp_sum(self.params.phi, h) * self.trend[t] + self.seas[past(t)]
            }
        };
        let f = if self.log { f.min(MAX_LOG).exp() } else { f };
        if f.is_finite() {
            f.max(0.0)
        } else {
            0.0
        }
    }
}

/// `phi + phi^2 + ... + phi^h`.
fn damp_sum(phi: f64, h: usize) -> f64 {
    let mut s = 0.0;
    let mut p = 1.0;
    for _ in 0..h {
        p *= phi;
        s += p;
    }
    s
}

/// The series a method smooths: the log of `y` when every rate is positive, `y` otherwise.
fn smoothing_space(y: &[f64]) -> (Vec<f64>, bool) {
    if y.iter().all(|v| *v > 0.0) {
        (y.iter().map(|v| v.ln()).collect(), true)
    } else {
        (y.to_vec(), false)
    }
}

/// Every combination of the given values, `alpha` outermost and `phi` innermost.
fn grid<'a>(
    alphas: &'a [f64],
    betas: &'a [f64],
    gammas: &'a [f64],
    phis: &'a [f64],
) -> impl Iterator<Item = Params> + 'a {
    alphas.iter().flat_map(move |&alpha| {
        betas.iter().flat_map(move |&beta| {
            gammas.iter().flat_map(move |&gamma| {
                phis.iter().map(move |&phi| Params {
                    alpha,
                    beta,
                    gamma,
                    phi,
                })
            })
        })
    })
}

/// The candidate of `params` whose `method` fit scores best (the first of equals), with its score.
fn best_params(
    series: &Series<'_>,
    method: Method,
    m: usize,
    params: impl Iterator<Item = Params>,
) -> Option<(f64, Params)> {
    let mut best: Option<(f64, Params)> = None;
    for p in params {
        let mse = run(series, method, p, m, false).mse;
        if best.is_none_or(|(b, _)| mse < b) {
            best = Some((mse, p));
        }
    }
    best
}

/// The best Holt fit of `y` (at least 3 points).
pub fn fit_holt(y: &[f64]) -> Option<Fit> {
    if y.len() < 3 {
        return None;
    }
    let (z, log) = smoothing_space(y);
    let series = Series { y, z: &z, log };
    let params = grid(HOLT_ALPHA, HOLT_BETA, &[0.0], HOLT_PHI);
    best_params(&series, Method::Holt, 0, params)
        .map(|(_, p)| run(&series, Method::Holt, p, 0, true))
}

/// The best seasonal fit of `y` with season `m` (needs two seasons): Holt-Winters or seasonal
/// naive, whichever forecasts [`SCORE_STEPS`] ahead better.
pub fn fit_seasonal(y: &[f64], m: usize) -> Option<Fit> {
    if m < 2 || y.len() < 2 * m + 1 {
        return None;
    }
    let (z, log) = smoothing_space(y);
    let series = Series { y, z: &z, log };
    let params = grid(HW_ALPHA, HW_BETA, HW_GAMMA, &[HW_PHI]);
    let best = best_params(&series, Method::HoltWinters, m, params);
    let naive = Params {
        alpha: 0.0,
        beta: 0.0,
        gamma: 0.0,
        phi: 0.0,
    };
    let sn = run(&series, Method::SeasonalNaive, naive, m, false).mse;
    match best {
        Some((mse, p)) if mse <= sn => Some(run(&series, Method::HoltWinters, p, m, true)),
        _ => Some(run(&series, Method::SeasonalNaive, naive, m, true)),
    }
}

/// A series as the rate `y` and the values smoothed, `z` (its log when `log`).
struct Series<'a> {
    y: &'a [f64],
    z: &'a [f64],
    log: bool,
}

/// Filter the series with `method`. Forecasts [`SCORE_STEPS`] ahead are scored on the rate
/// from index `2m` (seasonal) or 2 (Holt) on, or as soon as such a forecast exists, so every
/// candidate of a method is judged on the same points.
fn run(s: &Series<'_>, method: Method, p: Params, m: usize, store: bool) -> Fit {
    let (y, n) = (s.z, s.z.len());
    let mut level = vec![0.0; if store { n } else { 0 }];
    let mut trend = vec![0.0; if store { n } else { 0 }];
    let mut seas = vec![0.0; if method == Method::Holt { 0 } else { n }];
    let (start, mut l, mut b) = match method {
        Method::Holt => (0, y[0], 0.0),
        _ => {
            let mean =
                |r: std::ops::Range<usize>| y[r.clone()].iter().sum::<f64>() / r.len() as f64;
            let (m1, m2) = (mean(0..m), mean(m..2 * m));
            let b0 = (m2 - m1) / m as f64;
            let half = (m as f64 - 1.0) / 2.0;
            for (i, v) in seas.iter_mut().enumerate().take(m) {
                *v = y[i] - (m1 + (i as f64 - half) * b0);
            }
            (m - 1, m1 + half * b0, b0)
        }
    };
    // The forecast for index t made SCORE_STEPS earlier needs that origin's level and trend
    // (kept in a ring) and the season value `back` steps before t.
    let h = SCORE_STEPS;
    let back = if m > 0 { m * h.div_ceil(m) } else { 0 };
    let score_from = if method == Method::Holt { 2 } else { 2 * m }
        .max(back)
        .max(start + h);
    let damp_h = damp_sum(p.phi, h);
    let (mut ring_l, mut ring_b) = ([0.0; SCORE_STEPS + 1], [0.0; SCORE_STEPS + 1]);
    ring_l[start % (h + 1)] = l;
    ring_b[start % (h + 1)] = b;
    if store {
        level[start] = l;
        trend[start] = b;
    }
    let (mut sse, mut count) = (0.0, 0usize);
    for t in start + 1..n {
        let yt = y[t];
        let s_prev = if m > 0 { seas[t - m] } else { 0.0 };
        if t >= score_from {
            let o = (t - h) % (h + 1);
            let f = match method {
                Method::Holt => ring_l[o] + damp_h * ring_b[o],
                Method::HoltWinters => ring_l[o] + damp_h * ring_b[o] + seas[t - back],
                Method::SeasonalNaive => y[t - back],
            };
            let f = if s.log {
                f.min(MAX_LOG).exp()
            } else {
                f.max(0.0)
            };
            let e = s.y[t] - f;
            sse += e * e;
            count += 1;
        }
        let prev_l = l;
        match method {
            Method::Holt => {
                l = p.alpha * yt + (1.0 - p.alpha) * (l + p.phi * b);
                b = p.beta * (l - prev_l) + (1.0 - p.beta) * p.phi * b;
            }
            Method::HoltWinters => {
                l = p.alpha * (yt - s_prev) + (1.0 - p.alpha) * (l + p.phi * b);
                b = p.beta * (l - prev_l) + (1.0 - p.beta) * p.phi * b;
                seas[t] = p.gamma * (yt - l) + (1.0 - p.gamma) * s_prev;
            }
            Method::SeasonalNaive => {}
        }
        ring_l[t % (h + 1)] = l;
        ring_b[t % (h + 1)] = b;
        if store {
            level[t] = l;
            trend[t] = b;
        }
    }
    Fit {
        method,
        params: p,
        season: m,
        log: s.log,
        mse: if count > 0 {
            sse / count as f64
        } else {
            f64::INFINITY
        },
        y: if store { s.y.to_vec() } else { Vec::new() },
        level,
        trend,
        seas,
        start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holt_follows_a_straight_line_exactly() {
        let y: Vec<f64> = (0..50).map(|i| 10.0 + 2.0 * i as f64).collect();
        let f = fit_holt(&y).unwrap();
        // Undamped enough that 1 step ahead lands within a fraction of the slope.
        assert!((f.point(49, 1) - 110.0).abs() < 1.0, "{}", f.point(49, 1));
    }

    #[test]
    fn holt_winters_repeats_a_clean_season() {
        let y: Vec<f64> = (0..120)
            .map(|i| [10.0, 20.0, 30.0, 20.0][i % 4] + 100.0)
            .collect();
        let f = fit_seasonal(&y, 4).unwrap();
        for h in 1..=8 {
            let want = [10.0, 20.0, 30.0, 20.0][(119 + h) % 4] + 100.0;
            assert!((f.point(119, h) - want).abs() < 1e-6, "h={h}");
        }
    }
}
