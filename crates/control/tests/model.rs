//! Loading real ONNX models through the real ONNX Runtime (from the project's `.venv`).

use std::path::PathBuf;

use fulcrum_control::model::{runtime, ModelError, OnnxModel};
use fulcrum_control::NUM_FEATURES;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn env() -> &'static ort::environment::Environment {
    runtime(None).expect("ONNX Runtime from .venv (./test.sh installs it)")
}

#[test]
fn a_good_model_scores_each_backend() {
    let mut m = OnnxModel::load(env(), &fixture("prefer_low_p99.onnx")).unwrap();
    let mut features = vec![0f32; 3 * NUM_FEATURES];
    // p99_rel is column 5: backend 2 is three times slower than the others.
    features[5] = 0.5;
    features[NUM_FEATURES + 5] = 0.5;
    features[2 * NUM_FEATURES + 5] = 2.0;
    let s = m.scores(&features, 3).unwrap();
    assert_eq!(s.len(), 3);
    assert!(s.iter().all(|v| v.is_finite() && *v > 0.0), "{s:?}");
    assert!(s[2] < s[0] / 4.0, "{s:?}");
    assert!((s[0] - s[1]).abs() < 1e-6);
    // The same model serves pools of any size.
    assert_eq!(m.scores(&vec![0f32; 7 * NUM_FEATURES], 7).unwrap().len(), 7);
    assert!(
        m.scores(&features, 2).is_err(),
        "mismatched matrix length is refused"
    );
}

#[test]
fn bad_models_are_refused_with_a_reason() {
    let cases = [
        ("wrong_schema.onnx", "fulcrum-features-v0"),
        ("no_schema.onnx", "fulcrum_feature_schema"),
        ("wrong_width.onnx", "expected [N, 16]"),
        ("wrong_output.onnx", "expected [3] or [3, 1]"),
        ("nan_output.onnx", "non-finite"),
        ("corrupt.onnx", "cannot load model"),
        ("does_not_exist.onnx", "cannot load model"),
    ];
    for (file, needle) in cases {
        let err = OnnxModel::load(env(), &fixture(file)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(needle), "{file}: {text}");
        assert!(!matches!(err, ModelError::Runtime(_)), "{file}: {text}");
    }
}
