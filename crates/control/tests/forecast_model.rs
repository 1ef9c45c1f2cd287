//! Loading ONNX forecast models through the real ONNX Runtime (from the project's `.venv`),
//! and their guardrails in a pool's demand tracking.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fulcrum_balance::{Algorithm, Backend, Outcome, Pool};
use fulcrum_control::demand::{DemandSettings, PoolDemand};
use fulcrum_control::forecast_model::{ForecastRefused, OnnxForecaster};
use fulcrum_control::model::{runtime, ModelError};
use fulcrum_forecast::Sizing;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn env() -> &'static ort::environment::Environment {
    runtime(None).expect("ONNX Runtime from .venv (./test.sh installs it)")
}

#[test]
fn a_good_model_forecasts_every_horizon_in_requests_per_second() {
    let mut m = OnnxForecaster::load(env(), &fixture("forecast_last_value.onnx")).unwrap();
    assert_eq!(m.name(), "forecast_last_value.onnx");
    let history: Vec<f64> = (0..40).map(|i| 100.0 + i as f64).collect();
    let f = m
        .forecast(&history, 10.0, &[60.0, 300.0, 900.0], None)
        .unwrap();
    assert_eq!(f.len(), 3);
    for q in &f {
        // The model answers the latest value (139) and 1.25 times it, as ratios to the mean.
        assert!((q.p50 - 139.0).abs() < 1e-3, "{q:?}");
        assert!((q.p90 - 139.0 * 1.25).abs() < 1e-3, "{q:?}");
    }
    assert!(matches!(
        m.forecast(&history[..20], 10.0, &[60.0], None),
        Err(ForecastRefused::NoInput(_))
    ));
    assert!(matches!(
        m.forecast(&[0.0; 40], 10.0, &[60.0], None),
        Err(ForecastRefused::NoInput(_))
    ));
}

#[test]
fn a_model_sees_the_builtin_forecast_for_its_target() {
    use fulcrum_forecast::{Builtin, Forecaster, Season};
    // A model that answers the built-in forecast as it is (p50 = b50, p90 = b90).
    let mut m = OnnxForecaster::load(env(), &fixture("forecast_builtin_as_is.onnx")).unwrap();
    let history: Vec<f64> = (0..400)
        .map(|i| 300.0 + 120.0 * (i as f64 * std::f64::consts::TAU / 90.0).sin())
        .collect();
    let horizons = [60.0, 300.0, 900.0];
    for season in [Some(90), None] {
        let got = m.forecast(&history, 10.0, &horizons, season).unwrap();
        let want = Builtin::with_season(season.map_or(Season::None, Season::Steps))
            .forecast_horizons(&history, 10.0, &horizons);
        for (g, w) in got.iter().zip(&want) {
            // float32 features and outputs: equal to a few parts in a million.
            assert!(
                (g.p50 - w.p50).abs() <= 1e-5 * w.p50.max(1.0),
                "{season:?}: {g:?} vs {w:?}"
            );
            assert!(
                (g.p90 - w.p90).abs() <= 1e-5 * w.p90.max(1.0),
                "{season:?}: {g:?} vs {w:?}"
            );
        }
    }
}

#[test]
fn models_that_do_not_fit_are_refused_at_load_with_a_reason() {
    let cases = [
        ("forecast_wrong_schema.onnx", "\"window32-season5-v1\""),
        ("forecast_no_schema.onnx", "fulcrum.forecast.schema"),
        ("forecast_wrong_width.onnx", "expected [N, 41]"),
        ("forecast_wrong_output.onnx", "expected [N, 2]"),
        ("forecast_negative.onnx", "negative quantiles"),
        ("prefer_low_p99.onnx", "fulcrum.forecast.schema"),
        ("corrupt.onnx", "cannot load model"),
        ("does_not_exist.onnx", "cannot load model"),
    ];
    for (file, needle) in cases {
        let err = OnnxForecaster::load(env(), &fixture(file)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(needle), "{file}: {text}");
        assert!(!matches!(err, ModelError::Runtime(_)), "{file}: {text}");
    }
}

#[test]
fn a_bad_answer_falls_back_to_the_builtin_forecast_for_that_step_only() {
    let mut m =
        OnnxForecaster::load(env(), &fixture("forecast_inverted_when_rising.onnx")).unwrap();
    let pool = Pool::new(
        "web",
        Algorithm::RoundRobin,
        vec![Backend::new(SocketAddr::from(([127, 0, 0, 1], 1)), 1)],
        Duration::from_secs(10),
        5,
    );
    let settings = DemandSettings {
        step_s: 1.0,
        horizon_s: 5.0,
        sizing: Sizing {
            target_utilization: 0.5,
            min_backends: 1,
            max_backends: 100,
        },
        backend_capacity_rps: Some(10.0),
        scale_down_stabilization_s: 0.0,
        spare_backends: 0,
        burst_spare_backends: 0,
        burst_memory_s: 3600.0,
    };
    let mut d = PoolDemand::new(&pool, settings, 0);
    let serve = |n: u64| {
        for _ in 0..n {
            pool.record(0, 1_000_000, Outcome::Success, 0);
        }
    };
    let mut t = 0;
    // A flat rate: the model's answer is used.
    for _ in 0..40 {
        serve(50);
        t += 1_000_000_000;
        d.step(&pool, t, Some(&mut m));
    }
    let r = d.latest().unwrap();
    assert_eq!(r.forecaster, "forecast_inverted_when_rising.onnx", "{r:?}");
    assert_eq!(r.model_fallback, None);
    assert!((r.forecasts[0].p50 - 50.0).abs() < 1e-3, "{r:?}");
    // A rising rate: p90 below p50, so the built-in forecast is used and the reason kept.
    serve(80);
    t += 1_000_000_000;
    let r = d.step(&pool, t, Some(&mut m));
    assert_eq!(r.forecaster, "builtin", "{r:?}");
    let why = r.model_fallback.as_deref().unwrap();
    assert!(why.contains("below p50"), "{why}");
    assert!(r.forecasts.iter().all(|f| f.p90 >= f.p50 && f.p50 > 0.0));
}

/// The model `models/forecast/run.sh` ships: accepted by the loader, and on a clean daily
/// cycle its forecasts follow the cycle (ahead of a rise it forecasts more than now).
#[test]
fn the_shipped_forecast_model_loads_and_follows_a_season() {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/forecast.onnx");
    let mut m = OnnxForecaster::load(env(), &shipped).expect("models/forecast.onnx is accepted");
    // A 60-step season (10 min at 10 s steps), three cycles, ending at the trough: the rate
    // rises from here on.
    let season = 60usize;
    let rate = |i: usize| {
        let phase = (i % season) as f64 / season as f64 * std::f64::consts::TAU;
        500.0 - 300.0 * phase.cos()
    };
    let history: Vec<f64> = (0..3 * season).map(rate).collect();
    let now = *history.last().unwrap();
    let f = m
        .forecast(&history, 10.0, &[60.0, 150.0, 300.0], Some(season))
        .unwrap();
    for (q, h) in f.iter().zip([60.0, 150.0, 300.0]) {
        assert!(q.p50.is_finite() && q.p90 >= q.p50, "{h} s: {q:?}");
        let truth = rate(3 * season - 1 + (h / 10.0) as usize);
        assert!(
            (q.p50 - truth).abs() < 0.35 * truth,
            "{h} s ahead: p50 {:.0} rps, the cycle says {truth:.0}",
            q.p50
        );
    }
    assert!(
        f[2].p50 > 1.5 * now,
        "half a season ahead of the trough ({now:.0} rps) the forecast must rise: {:?}",
        f[2]
    );
}
