//! The weight model: an ONNX graph run by ONNX Runtime, loaded at run time.
//!
//! The runtime library is found through, in order: an explicit path (config), the
//! `ORT_DYLIB_PATH` environment variable, or the `onnxruntime` Python wheel in the project's
//! `.venv`. A model is accepted only if its metadata names the feature schema this build
//! produces, its input is `features` `[N, F]` float32, and a probe inference returns one finite
//! score per backend; otherwise it is refused with a message and the previous model stays.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;

use crate::features::{FEATURE_SCHEMA, NUM_FEATURES};

/// Metadata key naming the feature schema a model was trained on.
pub const SCHEMA_KEY: &str = "fulcrum_feature_schema";
/// The model's input name.
pub const INPUT_NAME: &str = "features";

/// Why a runtime or model could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No ONNX Runtime library was found or it failed to load.
    #[error("ONNX Runtime is not available: {0}")]
    Runtime(String),
    /// The file could not be read or parsed as an ONNX model.
    #[error("cannot load model {path}: {reason}")]
    Load {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The model's schema, inputs or outputs do not match what fulcrum feeds it.
    #[error("model {path} is incompatible: {reason}")]
    Incompatible {
        /// The model file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// Inference failed or returned an unusable shape.
    #[error("inference failed: {0}")]
    Inference(String),
}

static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Candidate locations of the ONNX Runtime shared library, most specific first.
pub fn runtime_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    // A library named in the configuration is the only candidate: silently using another
    // runtime than the one the operator chose would be a surprise.
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    // The project venv: the nearest `.venv` above the working directory or the executable
    // (target/{debug,release}/fulcrum sits below the repository).
    let mut roots: Vec<PathBuf> = Vec::new();
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf)),
    ];
    for start in starts.into_iter().flatten() {
        if let Some(dir) = start.ancestors().find(|d| d.join(".venv").is_dir()) {
            if !roots.iter().any(|r| r == dir) {
                roots.push(dir.to_path_buf());
            }
        }
    }
    for root in roots {
        let lib = root.join(".venv/lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        for entry in entries.flatten() {
            let capi = entry.path().join("site-packages/onnxruntime/capi");
            let Ok(files) = std::fs::read_dir(&capi) else {
                continue;
            };
            let mut libs: Vec<PathBuf> = files
                .flatten()
                .map(|f| f.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
                .collect();
            libs.sort();
            out.extend(libs.into_iter().rev());
        }
    }
    out
}

/// Load ONNX Runtime once per process from the first candidate that exists.
///
/// The library can be loaded only once; later calls return the first outcome.
pub fn runtime(explicit: Option<&Path>) -> Result<&'static Environment, ModelError> {
    let result = RUNTIME.get_or_init(|| {
        let candidates = runtime_candidates(explicit);
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(format!(
                "no libonnxruntime found (looked in: {}); set ORT_DYLIB_PATH or [control] ort_library, \
                 or install the onnxruntime wheel into .venv",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let builder = ort::init_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
        builder
            .with_name("fulcrum")
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))
    });
    result.as_ref().map_err(|e| ModelError::Runtime(e.clone()))
}

/// A loaded, validated model.
pub struct OnnxModel {
    session: Session,
    path: PathBuf,
    output_name: String,
    description: String,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("description", &self.description)
            .finish()
    }
}

/// Open the ONNX model at `path` for the control thread (one thread, no spinning: a model this
/// small gains nothing from a thread pool, and pool threads spinning after each inference
/// would take CPU from the data plane), and check what every fulcrum model must have: the
/// schema `expected` under the metadata key `schema_key` (`mismatch` words a different one),
/// and exactly one input `input` of shape `[N, width]`. Returns the session and the model's
/// description.
pub(crate) fn open_checked(
    env: &Environment,
    path: &Path,
    schema_key: &str,
    expected: &str,
    mismatch: impl FnOnce(&str) -> String,
    input: &str,
    width: usize,
) -> Result<(Session, String), ModelError> {
    let load_err = |reason: String| ModelError::Load {
        path: path.to_path_buf(),
        reason,
    };
    let incompatible = |reason: String| ModelError::Incompatible {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| load_err(e.to_string()))?;
    let builder_err =
        |e: ort::Error<ort::session::builder::SessionBuilder>| load_err(e.to_string());
    let session = Session::builder(env)
        .map_err(|e| load_err(e.to_string()))?
        .with_intra_threads(1)
        .map_err(builder_err)?
        .with_inter_threads(1)
        .map_err(builder_err)?
        .with_config_entry("session.intra_op.allow_spinning", "0")
        .map_err(builder_err)?
        .with_config_entry("session.inter_op.allow_spinning", "0")
        .map_err(builder_err)?
        .commit_from_memory(&bytes)
        .map_err(|e| load_err(e.to_string()))?;
    let metadata = session.metadata().map_err(|e| load_err(e.to_string()))?;
    let schema = metadata.custom(schema_key);
    let description = metadata.description().unwrap_or_default();
    drop(metadata);
    match schema.as_deref() {
        Some(s) if s == expected => {}
        Some(s) => return Err(incompatible(mismatch(s))),
        None => {
            return Err(incompatible(format!(
                "its metadata has no {schema_key:?} entry; expected {expected:?}"
            )))
        }
    }
    let inputs = session.inputs();
    if inputs.len() != 1 || inputs[0].name() != input {
        let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
        return Err(incompatible(format!(
            "expected exactly one input named {input:?}, found {names:?}"
        )));
    }
    if let Some(shape) = inputs[0].dtype().tensor_shape() {
        let dims: &[i64] = shape;
        if dims.len() != 2 || (dims[1] >= 0 && dims[1] != width as i64) {
            return Err(incompatible(format!(
                "input {input:?} has shape {dims:?}; expected [N, {width}]"
            )));
        }
    }
    Ok((session, description))
}

impl OnnxModel {
    /// Load `path`, check its schema and shapes, and run a probe inference.
    pub fn load(env: &Environment, path: &Path) -> Result<OnnxModel, ModelError> {
        let incompatible = |reason: String| ModelError::Incompatible {
            path: path.to_path_buf(),
            reason,
        };
        let (session, description) = open_checked(
            env,
            path,
            SCHEMA_KEY,
            FEATURE_SCHEMA,
            |s| {
                format!("it was trained on feature schema {s:?}, this fulcrum produces {FEATURE_SCHEMA:?}")
            },
            INPUT_NAME,
            NUM_FEATURES,
        )?;
        let outputs = session.outputs();
        if outputs.is_empty() {
            return Err(incompatible("the model has no output".into()));
        }
        let output_name = outputs[0].name().to_string();
        let mut model = OnnxModel {
            session,
            path: path.to_path_buf(),
            output_name,
            description,
        };
        // A probe on a plausible pool: three average backends.
        let mut probe = Vec::with_capacity(3 * NUM_FEATURES);
        for _ in 0..3 {
            probe.extend_from_slice(&crate::features::neutral_row(3));
        }
        let scores = model
            .scores(&probe, 3)
            .map_err(|e| incompatible(format!("probe inference failed: {e}")))?;
        if scores.iter().any(|s| !s.is_finite()) {
            return Err(incompatible(format!(
                "probe inference returned non-finite scores {scores:?}"
            )));
        }
        Ok(model)
    }

    /// The file the model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's own description from its metadata.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Score `n` backends from the row-major `[n, F]` feature matrix; one score per backend.
    pub fn scores(&mut self, features: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        if features.len() != n * NUM_FEATURES {
            return Err(ModelError::Inference(format!(
                "feature matrix has {} values, expected {n} x {NUM_FEATURES}",
                features.len()
            )));
        }
        let input = TensorRef::from_array_view(([n, NUM_FEATURES], features))
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![INPUT_NAME => input])
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| ModelError::Inference(format!("no output {:?}", self.output_name)))?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        let dims: &[i64] = shape;
        let ok_shape =
            matches!(dims, [d] if *d == n as i64) || matches!(dims, [d, 1] if *d == n as i64);
        if !ok_shape || data.len() != n {
            return Err(ModelError::Inference(format!(
                "output has shape {dims:?}; expected [{n}] or [{n}, 1]"
            )));
        }
        Ok(data.to_vec())
    }
}
