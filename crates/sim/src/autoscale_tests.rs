//! Scalers in the simulator: provisioning delay, Kubernetes' HPA formula on hand-computed
//! cases, and the forecast provisioning ahead of a periodic ramp where the HPA reacts.

use fulcrum_scenario::{parse_scenario, Scenario};

use crate::autoscale::{hpa_replicas, Hpa, HpaSettings, ScaleView, Scaler, ViaHpa};
use crate::{simulate_autoscaled, simulate_autoscaled_detailed, Policy, ScalerKind, SimOptions};

fn scenario(load: &str, duration_s: f64, provision_s: f64, max: u32) -> Scenario {
    let src = format!(
        r#"
name = "t"
seed = 5
duration_s = {duration_s}

[load]
{load}

[[backends]]
name = "web"
count = 1
concurrency = 4
service_ms = 20

[autoscale]
backend = "web"
min_backends = 1
max_backends = {max}
provision_s = {provision_s}

[slo]
p99_ms = 100
"#
    );
    parse_scenario(&src, "t.toml").unwrap().0
}

const HPA: HpaSettings = HpaSettings {
    target: 0.7,
    tolerance: 0.1,
    sync_period_s: 15.0,
    scale_up_window_s: 0.0,
    scale_down_window_s: 300.0,
    min_replicas: 1,
    max_replicas: 100,
};

/// A copy the HPA starts takes its first request no sooner than `provision_s` after the
/// decision, and does take traffic soon after.
#[test]
fn a_scaled_up_backend_takes_no_traffic_before_provision_s() {
    // One copy serves 200 rps; 320 rps overloads it, so the first sync (15 s) scales up.
    let sc = scenario("rate_rps = 320", 120.0, 40.0, 4);
    let mut first_request = [None::<f64>; 4];
    let run = simulate_autoscaled_detailed(
        &sc,
        &Policy::LeastConnections,
        ScalerKind::Hpa,
        &SimOptions::default(),
        &mut |tick| {
            for (i, b) in tick.pool.backends().iter().enumerate() {
                if b.stats.requests() > 0 && first_request[i].is_none() {
                    first_request[i] = Some(tick.t_s);
                }
            }
        },
    )
    .unwrap();
    let decided = run
        .autoscale
        .timeline
        .iter()
        .find(|s| s.desired > s.serving + s.provisioning)
        .expect("the HPA scaled up")
        .t_s;
    assert!((decided - 15.0).abs() < 1e-6, "decided at {decided} s");
    for (i, first) in first_request.iter().enumerate().skip(1) {
        let Some(first) = first else { continue };
        assert!(
            *first >= decided + 40.0,
            "web-{}: first request at {first} s, decided at {decided} s",
            i + 1
        );
    }
    let started = first_request[1].expect("web-2 took traffic");
    assert!(
        started <= decided + 41.0,
        "web-2 first served at {started} s"
    );
}

/// `desired = ceil(current × utilisation / target)` with Kubernetes' tolerance, integer
/// percentages and unready pods, on cases worked by hand.
#[test]
fn hpa_reproduces_the_documented_formula() {
    // 4 pods at 90 %: 90 / 70 = 1.2857, ceil(4 × 1.2857) = ceil(5.14) = 6.
    assert_eq!(hpa_replicas(4, &[0.9, 0.95, 0.85, 0.9], 0, &HPA), 6);
    // 75 / 70 = 1.071: within the 0.1 tolerance, no change.
    assert_eq!(hpa_replicas(2, &[0.75, 0.75], 0, &HPA), 2);
    // 10 pods at 30 %: 30 / 70 = 0.4286, ceil(4.29) = 5.
    assert_eq!(hpa_replicas(10, &[0.3; 10], 0, &HPA), 5);
    // Utilisation is truncated to a whole percent: 62.9 % counts as 62 %, 62 / 70 = 0.886
    // (outside the tolerance), ceil(10 × 0.886) = 9.
    assert_eq!(hpa_replicas(10, &[0.629; 10], 0, &HPA), 9);
    // 4 ready at 100 % and 1 unready counted at 0 %: 400 / 5 = 80 %, 80 / 70 = 1.143,
    // ceil(5 × 1.143) = 6.
    assert_eq!(hpa_replicas(5, &[1.0; 4], 1, &HPA), 6);
    // 4 ready at 90 % and 2 unready: 360 / 6 = 60 %, below target once the new pods count:
    // no change while they start.
    assert_eq!(hpa_replicas(6, &[0.9; 4], 2, &HPA), 6);

    // Stabilisation: the highest recommendation of the last 300 s wins a scale-down, so the
    // HPA holds 10 pods at 30 % until the first recommendation leaves the window.
    let mut hpa = Hpa::new(HPA);
    let mut at = |t: f64, current: u32| hpa.sync(t, current, &vec![0.3; current as usize], 0);
    assert_eq!(at(0.0, 10), 10);
    assert_eq!(at(15.0, 10), 10);
    assert_eq!(at(285.0, 10), 10);
    assert_eq!(at(300.0, 10), 5);
    // Scale-up is immediate (window 0) but at most doubles (or +4) per sync.
    let mut hpa = Hpa::new(HPA);
    assert_eq!(hpa.sync(0.0, 2, &[1.0, 1.0], 0), 3);
    let mut hpa = Hpa::new(HPA);
    // 3 pods at 100 % with target 10 %: ceil(3 × 10) = 30, limited to max(6, 7) = 7.
    let low = HpaSettings { target: 0.1, ..HPA };
    let mut low_hpa = Hpa::new(low);
    assert_eq!(low_hpa.sync(0.0, 3, &[1.0; 3], 0), 7);
    assert_eq!(hpa.sync(0.0, 3, &[1.0; 3], 0), 5);
}

/// On a load that repeats every 1,200 s, the forecast scaler has found the cycle by the third
/// one and starts copies before the rise, while the HPA waits for utilisation to climb: on the
/// last rise the forecast has the copies the peak needs serving sooner, and misses the SLO in
/// fewer windows.
#[test]
fn forecast_provisions_ahead_of_a_periodic_ramp() {
    let sc = scenario(
        "rate_rps = 300\ndiurnal = { period_s = 1200, amplitude = 0.6 }",
        3900.0,
        60.0,
        8,
    );
    let run = |scaler| {
        let run = simulate_autoscaled(
            &sc,
            &Policy::LeastConnections,
            scaler,
            &SimOptions::default(),
        )
        .unwrap();
        // The last cycle's trough is at 2,400 + 900 s (120 rps, one copy); the HPA holds what
        // it had for 300 s after, so the rise counts from 3,420 s (150 rps), from where the
        // rate climbs to 480 rps at 3,900 s (4 copies at 70 % of 200 rps).
        let three_serving = run
            .autoscale
            .timeline
            .iter()
            .find(|s| s.t_s >= 3420.0 && s.serving >= 3)
            .map_or(f64::INFINITY, |s| s.t_s);
        (three_serving, run.autoscale.slo_violation_windows)
    };
    let (forecast, forecast_violations) = run(ScalerKind::Forecast(None, 0));
    let (hpa, hpa_violations) = run(ScalerKind::Hpa);
    assert!(
        forecast < hpa,
        "three copies serving on the last rise: forecast at {forecast} s, hpa at {hpa} s"
    );
    assert!(
        forecast_violations < hpa_violations,
        "SLO violations: forecast {forecast_violations}, hpa {hpa_violations}"
    );
}

/// With a forecast model (the shipped `models/forecast.onnx`, through the real ONNX Runtime)
/// the forecast scaler plans from the model's forecasts, as a pool with `forecast_model` does:
/// the same run for the same seed, a plan that differs from the built-in forecaster's, and
/// still the copies of the periodic ramp serving before the HPA has them.
#[test]
fn a_forecast_model_drives_the_forecast_scaler() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/forecast.onnx");
    let with_model = SimOptions {
        forecast_model: Some(
            crate::control::forecast_model_factory(model)
                .expect("ONNX Runtime from .venv (./test.sh installs it) and models/forecast.onnx"),
        ),
        ..SimOptions::default()
    };
    let sc = scenario(
        "rate_rps = 300\ndiurnal = { period_s = 1200, amplitude = 0.6 }",
        3900.0,
        60.0,
        8,
    );
    let run = |scaler, opts: &SimOptions| {
        simulate_autoscaled(&sc, &Policy::LeastConnections, scaler, opts)
            .unwrap()
            .autoscale
    };
    let forecast = ScalerKind::Forecast(None, 0);
    let a = run(forecast, &with_model);
    let b = run(forecast, &with_model);
    let plans = |r: &crate::AutoscaleStats| -> Vec<Option<f64>> {
        r.timeline.iter().map(|s| s.planned_rps).collect()
    };
    assert_eq!(plans(&a), plans(&b), "the same run for the same seed");
    assert_eq!(a.backend_seconds, b.backend_seconds);
    let builtin = run(forecast, &SimOptions::default());
    let differ = plans(&a)
        .iter()
        .zip(plans(&builtin))
        .filter(|(x, y)| **x != *y)
        .count();
    assert!(
        differ > 100,
        "{differ} of {} steps planned differently",
        a.timeline.len()
    );
    let three_serving = |r: &crate::AutoscaleStats| {
        r.timeline
            .iter()
            .find(|s| s.t_s >= 3420.0 && s.serving >= 3)
            .map_or(f64::INFINITY, |s| s.t_s)
    };
    let hpa = run(ScalerKind::Hpa, &SimOptions::default());
    assert!(
        three_serving(&a) < three_serving(&hpa),
        "three copies serving on the last rise: forecast with the model at {} s, hpa at {} s",
        three_serving(&a),
        three_serving(&hpa)
    );
}

/// The forecast scaler runs the proxy's own scale-down stabilisation: after the demand falls,
/// a 300 s window (Kubernetes' HPA default) keeps the copies for that long, while the proxy's
/// default (two steps) lets them go as soon as the forecast follows the fall.
#[test]
fn the_forecast_scaler_holds_a_scale_down_for_the_proxys_window() {
    // 600 rps (5 copies at 70 % of 200 rps) until 600 s, then 150 rps (2 copies).
    let sc = scenario("rate_rps = 600\nsteps = [[600, 150]]", 1200.0, 30.0, 8);
    let desired_at = |run: &crate::AutoscaleRun, from: f64, to: f64| -> Vec<u32> {
        run.autoscale
            .timeline
            .iter()
            .filter(|s| s.t_s > from && s.t_s <= to)
            .map(|s| s.desired)
            .collect()
    };
    let run = |kind| {
        simulate_autoscaled(&sc, &Policy::LeastConnections, kind, &SimOptions::default()).unwrap()
    };
    let held = run(ScalerKind::Forecast(Some(300.0), 0));
    let before = *desired_at(&held, 500.0, 600.0).iter().max().unwrap();
    assert!(before >= 5, "{before} copies for 600 rps");
    let during = desired_at(&held, 600.0, 880.0);
    assert!(
        during.iter().all(|&d| d >= before),
        "held at {before} for 300 s after the fall: {during:?}"
    );
    let after = desired_at(&held, 1000.0, 1200.0);
    assert!(after.iter().all(|&d| d <= 3), "down once held: {after:?}");
    let follow = run(ScalerKind::Forecast(None, 0));
    let during = desired_at(&follow, 600.0, 880.0);
    assert!(
        during.iter().any(|&d| d < before),
        "with the default window the count falls within 300 s: {during:?}"
    );
    assert!(follow.autoscale.backend_seconds < held.autoscale.backend_seconds);
}

/// The reference scalers read the scenario's true rate: `oracle` has the copies a rise needs
/// serving when it arrives (it started them `provision_s` earlier), `oracle-now` starts them
/// when the rise arrives and has them `provision_s` later, missing the SLO meanwhile.
#[test]
fn the_oracles_read_the_true_rate_ahead_or_now() {
    // 120 rps (one copy of 200 rps at 70 %) until 300 s, then 600 rps (five copies).
    let sc = scenario("rate_rps = 120\nsteps = [[300, 600]]", 600.0, 60.0, 8);
    let run = |kind| {
        simulate_autoscaled(&sc, &Policy::LeastConnections, kind, &SimOptions::default()).unwrap()
    };
    let serving_at = |run: &crate::AutoscaleRun, t: f64| {
        run.autoscale
            .timeline
            .iter()
            .rfind(|s| s.t_s <= t)
            .map_or(0, |s| s.serving)
    };
    let ahead = run(ScalerKind::Oracle(true));
    assert_eq!(
        serving_at(&ahead, 250.0),
        1,
        "one copy until the rise is near"
    );
    assert!(
        serving_at(&ahead, 310.0) >= 5,
        "{}",
        serving_at(&ahead, 310.0)
    );
    assert_eq!(ahead.autoscale.slo_violation_windows, 0);
    let now = run(ScalerKind::Oracle(false));
    assert_eq!(
        serving_at(&now, 350.0),
        1,
        "started at 300 s, serving at 360 s"
    );
    assert!(serving_at(&now, 370.0) >= 5);
    assert!(
        now.autoscale.slo_violation_windows >= 3,
        "{} windows",
        now.autoscale.slo_violation_windows
    );
    assert_eq!(
        "oracle-now".parse::<ScalerKind>(),
        Ok(ScalerKind::Oracle(false))
    );
    assert_eq!(ScalerKind::Oracle(true).to_string(), "oracle");
}

#[test]
fn scaler_names_parse_and_print_back() {
    for (name, kind) in [
        ("forecast", ScalerKind::Forecast(None, 0)),
        ("forecast:300", ScalerKind::Forecast(Some(300.0), 0)),
        ("forecast+1", ScalerKind::Forecast(None, 1)),
        ("forecast:60+2", ScalerKind::Forecast(Some(60.0), 2)),
        ("static:4", ScalerKind::Static(Some(4))),
        ("oracle", ScalerKind::Oracle(true)),
        ("forecast@hpa", ScalerKind::ForecastViaHpa(0.1)),
        ("forecast@hpa:0", ScalerKind::ForecastViaHpa(0.0)),
        ("forecast@hpa:0.05", ScalerKind::ForecastViaHpa(0.05)),
    ] {
        assert_eq!(name.parse::<ScalerKind>(), Ok(kind), "{name}");
        assert_eq!(kind.to_string(), name);
    }
    for bad in [
        "forecast:",
        "forecast+",
        "forecast+x",
        "forecastx",
        "forecast:-1",
        "static:0",
        "forecast@hpa:1",
        "forecast@hpa:-0.1",
        "forecast@",
    ] {
        assert!(bad.parse::<ScalerKind>().is_err(), "{bad}");
    }
}

/// `sc` under the forecast scaler with the proxy's defaults, least connections.
fn forecast_run(sc: &Scenario, opts: &SimOptions) -> crate::AutoscaleRun {
    simulate_autoscaled(
        sc,
        &Policy::LeastConnections,
        ScalerKind::Forecast(None, 0),
        opts,
    )
    .unwrap()
}

/// A restart of the proxy loses what its demand tracking learnt: the forecast scaler then
/// plans from the rate arriving (its warm-up) and without the season, for as long as it takes
/// to count two cycles again. With its series kept (`history_file`), it plans on as before.
#[test]
fn a_restart_keeps_the_plan_only_with_the_series() {
    let sc = scenario(
        "rate_rps = 300\ndiurnal = { period_s = 1200, amplitude = 0.6 }",
        3900.0,
        60.0,
        8,
    );
    let run = |restart: Option<bool>| {
        let opts = SimOptions {
            forecast_restart: restart.map(|keep_series| crate::ForecastRestart {
                at_s: Some(2700.0),
                keep_series,
            }),
            ..SimOptions::default()
        };
        forecast_run(&sc, &opts).autoscale.timeline
    };
    let (none, lost, kept) = (run(None), run(Some(false)), run(Some(true)));
    let plans = |t: &[crate::autoscale::ScaleSample], from: f64, to: f64| -> Vec<f64> {
        t.iter()
            .filter(|s| s.t_s >= from && s.t_s < to)
            .map(|s| s.planned_rps.unwrap())
            .collect()
    };
    // The same until the restart.
    assert_eq!(plans(&none, 0.0, 2700.0), plans(&lost, 0.0, 2700.0));
    assert_eq!(plans(&none, 0.0, 2700.0), plans(&kept, 0.0, 2700.0));
    // Lost: the twelve steps of the warm-up plan for the rate that arrived in each.
    let warm_up: Vec<_> = lost
        .iter()
        .filter(|s| s.t_s >= 2700.0 && s.t_s < 2820.0)
        .collect();
    assert_eq!(warm_up.len(), 12);
    for s in &warm_up {
        assert!(
            (s.planned_rps.unwrap() - s.arrivals_rps).abs() < 0.05 * s.arrivals_rps,
            "{} s: planned {:?}, arrived {}",
            s.t_s,
            s.planned_rps,
            s.arrivals_rps
        );
    }
    // Kept: the plan goes on as without the restart (the season is found again at once);
    // lost: half the hour after it is planned otherwise.
    let after = |t| plans(t, 2700.0, 3900.0);
    let same = after(&none)
        .iter()
        .zip(after(&kept))
        .filter(|(a, b)| (**a - *b).abs() < 0.05 * **a)
        .count();
    let lost_same = after(&none)
        .iter()
        .zip(after(&lost))
        .filter(|(a, b)| (**a - *b).abs() < 0.05 * **a)
        .count();
    let n = after(&none).len();
    // Within 5 %: the season is searched for every 30 steps, counted from the restart, so
    // the kept series is sometimes read with a season a step longer or shorter.
    assert!(
        same * 10 >= n * 9,
        "kept: {same} of {n} steps planned as without a restart"
    );
    assert!(
        lost_same * 10 < n * 6,
        "lost: {lost_same} of {n} steps planned as without a restart"
    );
}

/// Two proxies share the backends, each arrival reaching one of them at random: each counts
/// half the requests but reads the load every request puts on the backends, so each estimates
/// half a backend's capacity for its half of the rate and recommends backends for the whole
/// pool. Following the higher of the two (the Kubernetes recipes' `max` over the pods) runs
/// the pool as one proxy seeing everything would.
#[test]
fn two_proxies_each_recommend_for_the_whole_pool() {
    let sc = scenario(
        "rate_rps = 600\ndiurnal = { period_s = 1200, amplitude = 0.5 }",
        3000.0,
        60.0,
        12,
    );
    let run = |replicas: u32| {
        let opts = SimOptions {
            replicas,
            split: crate::ProxySplit::Random,
            ..SimOptions::default()
        };
        forecast_run(&sc, &opts)
    };
    let (one, two) = (run(1), run(2));
    let desired = |r: &crate::AutoscaleRun| -> Vec<u32> {
        r.autoscale
            .timeline
            .iter()
            .filter(|s| s.t_s >= 600.0)
            .map(|s| s.desired)
            .collect()
    };
    let (d1, d2) = (desired(&one), desired(&two));
    assert_eq!(d1.len(), d2.len());
    // Sized for half the traffic, the pool would run about half as many copies (4–5 of 9 at
    // the peak): within one copy of the single proxy's count on nine steps in ten.
    let close = d1
        .iter()
        .zip(&d2)
        .filter(|(a, b)| a.abs_diff(**b) <= 1)
        .count();
    assert!(
        close * 10 >= d1.len() * 9,
        "{close} of {} steps within one copy: one proxy {d1:?}, two {d2:?}",
        d1.len()
    );
    let mean = |d: &[u32]| d.iter().map(|&x| f64::from(x)).sum::<f64>() / d.len() as f64;
    let ratio = mean(&d2) / mean(&d1);
    assert!(
        (0.95..1.15).contains(&ratio),
        "two proxies run {ratio:.2}x the copies of one"
    );
    // And the plan (the two proxies' added up) is the single proxy's, give or take the noise
    // of counting half the requests each.
    let plans = |r: &crate::AutoscaleRun| -> f64 {
        let t: Vec<f64> = r
            .autoscale
            .timeline
            .iter()
            .filter(|s| s.t_s >= 600.0)
            .map(|s| s.planned_rps.unwrap())
            .collect();
        t.iter().sum::<f64>() / t.len() as f64
    };
    let plan_ratio = plans(&two) / plans(&one);
    assert!(
        (0.95..1.1).contains(&plan_ratio),
        "plans {plan_ratio:.2}x one proxy's"
    );
}

/// The proxies that take arrivals are a subset of the replicas, never none of them.
#[test]
fn active_proxies_are_checked() {
    let sc = scenario("rate_rps = 100", 120.0, 30.0, 4);
    for (changes, ok) in [
        (vec![(0.0, 1), (60.0, 2)], true),
        (vec![(60.0, 0)], false),
        (vec![(60.0, 3)], false),
    ] {
        let opts = SimOptions {
            replicas: 2,
            active_proxies: changes.clone(),
            ..SimOptions::default()
        };
        match simulate_autoscaled(
            &sc,
            &Policy::LeastConnections,
            ScalerKind::Forecast(None, 0),
            &opts,
        ) {
            Ok(_) => assert!(ok, "{changes:?} accepted"),
            Err(e) => {
                assert!(!ok, "{changes:?}: {e}");
                assert!(e.to_string().contains("active proxies from 60 s"), "{e}");
            }
        }
    }
}

/// A scripted recommendation, answered at each of its steps.
struct Script(Vec<u32>, usize);

impl Scaler for Script {
    fn period_s(&self) -> f64 {
        10.0
    }
    fn desired(&mut self, v: &ScaleView) -> u32 {
        assert!(
            (v.period_s - 10.0).abs() < 1e-9,
            "a whole step: {}",
            v.period_s
        );
        self.1 += 1;
        self.0[(self.1 - 1).min(self.0.len() - 1)]
    }
}

fn view(t_s: f64, replicas: u32) -> ScaleView {
    ScaleView {
        t_s,
        period_s: 5.0,
        replicas,
        ready_utilisation: vec![0.5; replicas as usize],
        unready: 0,
        arrivals_rps: 100.0,
        completed_rps: 100.0,
        attempts_rps: 100.0,
        error_share: 0.0,
        mean_latency_ms: Some(20.0),
        pool_utilisation: 0.5,
        in_flight_growth_rps: 0.0,
        pool_backends: replicas,
        fixed_backends: 0,
        proxies: Vec::new(),
    }
}

/// The recommendation as the recipes' HPA follows it: scraped every 15 s, synced every 15 s
/// on the last scrape, and not followed while within the tolerance of the count.
#[test]
fn the_hpa_follows_the_recommendation_outside_its_tolerance_only() {
    // Replicas stay at 12 unless the HPA moves them; the recommendation is 13 (8 % more) for
    // a minute, then 14 (17 % more).
    let run = |tolerance: f64| {
        let script = Script([vec![13; 6], vec![14; 6]].concat(), 0);
        let mut hpa = ViaHpa::new(Box::new(script), tolerance, 2, 40);
        let mut replicas = 12;
        let mut changes = Vec::new();
        for k in 1..=24 {
            let t = 5.0 * f64::from(k);
            let d = hpa.desired(&view(t, replicas));
            if d != replicas {
                changes.push((t, d));
                replicas = d;
            }
        }
        changes
    };
    // At 10 %: 13 of 12 is within it, so nothing until the recommendation is 14 (published at
    // 70 s, scraped at 80 s, followed at the sync of 90 s).
    assert_eq!(run(0.1), vec![(90.0, 14)]);
    // At 0 (`tolerance: 0`): 13 at the first sync after the first scrape of it (published at
    // 10 s, scraped at 20 s, synced at 30 s), then 14.
    assert_eq!(run(0.0), vec![(30.0, 13), (90.0, 14)]);
    let hpa = ViaHpa::new(Box::new(Script(vec![1], 0)), 0.1, 2, 40);
    assert_eq!(hpa.follow(12, 9), 9, "25 % fewer: followed down at once");
    assert_eq!(hpa.follow(12, 11), 12, "8 % fewer: held");
    assert_eq!(hpa.follow(5, 30), 10, "at most double per sync");
    assert_eq!(hpa.follow(3, 1), 2, "min_replicas");
}
