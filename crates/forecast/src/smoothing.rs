//! Exponential smoothing: Holt's damped trend, Holt-Winters (additive and multiplicative) and
//! seasonal naive, with parameters chosen by a small grid search on one-step errors.

/// A forecasting method of the built-in forecaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Level and damped trend, no season.
    Holt,
    /// Level, damped trend and an additive season.
    HoltWintersAdditive,
    /// Level, damped trend and a multiplicative season (rates that are never zero).
    HoltWintersMultiplicative,
    /// The value one season earlier.
    SeasonalNaive,
}

impl Method {
    /// Name used in reasoning and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Holt => "Holt (damped trend)",
            Method::HoltWintersAdditive => "Holt-Winters (additive)",
            Method::HoltWintersMultiplicative => "Holt-Winters (multiplicative)",
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

const HOLT_ALPHA: &[f64] = &[0.1, 0.2, 0.4, 0.6, 0.8, 1.0];
const HOLT_BETA: &[f64] = &[0.0, 0.05, 0.15, 0.3];
const HOLT_PHI: &[f64] = &[0.8, 0.9, 0.98];
const HW_ALPHA: &[f64] = &[0.1, 0.3, 0.5, 0.8];
const HW_BETA: &[f64] = &[0.0, 0.05, 0.2];
const HW_GAMMA: &[f64] = &[0.05, 0.15, 0.3, 0.5];
const HW_PHI: f64 = 0.95;
/// Levels and seasonal factors are kept above this to keep the multiplicative model finite.
const TINY: f64 = 1e-9;

/// A method fitted to one series: its states after every observation.
#[derive(Debug, Clone)]
pub struct Fit {
    /// The method.
    pub method: Method,
    /// Its parameters (unused ones are 0).
    pub params: Params,
    /// Season in steps (0 for Holt).
    pub season: usize,
    /// Sum of squared one-step errors over the evaluated range, divided by its length.
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
            Method::SeasonalNaive => self.y[past(t)],
            Method::Holt => self.level[t] + damp_sum(self.params.phi, h) * self.trend[t],
            Method::HoltWintersAdditive => {
                self.level[t] + damp_sum(self.params.phi, h) * self.trend[t] + self.seas[past(t)]
            }
            Method::HoltWintersMultiplicative => {
                (self.level[t] + damp_sum(self.params.phi, h) * self.trend[t]) * self.seas[past(t)]
            }
        };
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

/// The best Holt fit of `y` (at least 3 points).
pub fn fit_holt(y: &[f64]) -> Option<Fit> {
    if y.len() < 3 {
        return None;
    }
    let mut best: Option<(f64, Params)> = None;
    for &alpha in HOLT_ALPHA {
        for &beta in HOLT_BETA {
            for &phi in HOLT_PHI {
                let p = Params {
                    alpha,
                    beta,
                    gamma: 0.0,
                    phi,
                };
                let mse = run(y, Method::Holt, p, 0, false).mse;
                if best.is_none_or(|(b, _)| mse < b) {
                    best = Some((mse, p));
                }
            }
        }
    }
    best.map(|(_, p)| run(y, Method::Holt, p, 0, true))
}

/// The best seasonal fit of `y` with season `m` (needs two seasons): Holt-Winters additive,
/// multiplicative when every rate is positive, or seasonal naive, by one-step error.
pub fn fit_seasonal(y: &[f64], m: usize) -> Option<Fit> {
    if m < 2 || y.len() < 2 * m + 1 {
        return None;
    }
    let mut methods = vec![Method::HoltWintersAdditive];
    if y.iter().all(|v| *v > 0.0) {
        methods.push(Method::HoltWintersMultiplicative);
    }
    let mut best: Option<(f64, Method, Params)> = None;
    for method in methods {
        for &alpha in HW_ALPHA {
            for &beta in HW_BETA {
                for &gamma in HW_GAMMA {
                    let p = Params {
                        alpha,
                        beta,
                        gamma,
                        phi: HW_PHI,
                    };
                    let mse = run(y, method, p, m, false).mse;
                    if best.is_none_or(|(b, _, _)| mse < b) {
                        best = Some((mse, method, p));
                    }
                }
            }
        }
    }
    let naive = Params {
        alpha: 0.0,
        beta: 0.0,
        gamma: 0.0,
        phi: 0.0,
    };
    let sn = run(y, Method::SeasonalNaive, naive, m, false).mse;
    match best {
        Some((mse, method, p)) if mse <= sn => Some(run(y, method, p, m, true)),
        _ => Some(run(y, Method::SeasonalNaive, naive, m, true)),
    }
}

/// Filter `y` with `method`; one-step errors are scored from index `2m` (seasonal) or 2 (Holt),
/// so every seasonal candidate is judged on the same points.
fn run(y: &[f64], method: Method, p: Params, m: usize, store: bool) -> Fit {
    let n = y.len();
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
            for i in 0..m {
                let base = m1 + (i as f64 - half) * b0;
                seas[i] = if method == Method::HoltWintersMultiplicative {
                    (y[i] / base.max(TINY)).max(TINY)
                } else {
                    y[i] - base
                };
            }
            (m - 1, m1 + half * b0, b0)
        }
    };
    let score_from = if method == Method::Holt { 2 } else { 2 * m };
    if store {
        level[start] = l;
        trend[start] = b;
    }
    let (mut sse, mut count) = (0.0, 0usize);
    for t in start + 1..n {
        let yt = y[t];
        let s_prev = if m > 0 { seas[t - m] } else { 0.0 };
        let forecast = match method {
            Method::Holt => l + p.phi * b,
            Method::HoltWintersAdditive => l + p.phi * b + s_prev,
            Method::HoltWintersMultiplicative => (l + p.phi * b) * s_prev,
            Method::SeasonalNaive => y[t - m],
        };
        if t >= score_from {
            let e = yt - forecast;
            sse += e * e;
            count += 1;
        }
        let prev_l = l;
        match method {
            Method::Holt => {
                l = p.alpha * yt + (1.0 - p.alpha) * (l + p.phi * b);
                b = p.beta * (l - prev_l) + (1.0 - p.beta) * p.phi * b;
            }
            Method::HoltWintersAdditive => {
                l = p.alpha * (yt - s_prev) + (1.0 - p.alpha) * (l + p.phi * b);
                b = p.beta * (l - prev_l) + (1.0 - p.beta) * p.phi * b;
                seas[t] = p.gamma * (yt - l) + (1.0 - p.gamma) * s_prev;
            }
            Method::HoltWintersMultiplicative => {
                l = (p.alpha * yt / s_prev + (1.0 - p.alpha) * (l + p.phi * b)).max(TINY);
                b = p.beta * (l - prev_l) + (1.0 - p.beta) * p.phi * b;
                seas[t] = (p.gamma * yt / l + (1.0 - p.gamma) * s_prev).max(TINY);
            }
            Method::SeasonalNaive => {}
        }
        if store {
            level[t] = l;
            trend[t] = b;
        }
    }
    Fit {
        method,
        params: p,
        season: m,
        mse: if count > 0 {
            sse / count as f64
        } else {
            f64::INFINITY
        },
        y: if store { y.to_vec() } else { Vec::new() },
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
