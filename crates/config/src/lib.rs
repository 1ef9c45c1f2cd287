//! Configuration for fulcrum: the schema, loading, validation and serialisation.
//!
//! A configuration is a TOML file with these sections:
//!
//! * `[server]` — data-plane listen addresses (cleartext and TLS), the TLS certificates
//!   (`[[server.certificates]]`) and oldest TLS version, worker threads, the drain on `SIGTERM`
//!   (`drain_delay_s`, `grace_period_s`), the binary-upgrade socket (`upgrade_sock`) and what
//!   one client may hold ([`ClientLimits`]: `max_connections`, `header_timeout_ms`,
//!   `keepalive_timeout_ms`, `max_header_bytes`, `max_request_line_bytes`);
//! * `[admin]` — the admin listener serving `/metrics`, `/healthz`, `/readyz`, `/api/pools`,
//!   and the file holding the bearer token its `/api/*` endpoints require;
//! * `[[routes]]` — host/path-prefix rules mapping requests to pools;
//! * `[pools.NAME]` — upstream pools with their algorithm, timeouts, health checks,
//!   TLS to their backends (`[pools.NAME.tls]`), `[[pools.NAME.backends]]` and, optionally,
//!   demand forecasts with a recommended backend count (`[pools.NAME.autoscale]`);
//! * `[control]` (optional) — the control loop that tunes the backend weights of pools
//!   with `weights = "model"` using an ONNX model: tick period, model file, inference
//!   budget, weight bounds, decision history and feature recording.
//!
//! [`parse`] validates the whole file and reports every problem at once as
//! [`Diagnostic`]s carrying `file:line:column`, the key path of the offending
//! value, the bad value and what would be valid, with "did you mean"
//! suggestions for misspelt keys, enum values and pool names.
//!
//! ```
//! let (config, warnings) = fulcrum_config::parse(
//!     fulcrum_config::DEFAULT_CONFIG,
//!     fulcrum_config::DEFAULT_CONFIG_NAME,
//! )
//! .unwrap();
//! assert!(warnings.is_empty());
//! assert_eq!(config.pool("web").unwrap().backends.len(), 2);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod admin_token;
pub mod autoscale_defaults;
pub mod control_defaults;
mod emit;
mod http_url;
mod model;
pub mod pool_defaults;
pub mod server_defaults;
pub mod tls;
mod validate;

use std::path::Path;

pub use admin_token::{AdminToken, MAX_TOKEN_LEN};
pub use fulcrum_diagnostics::{Diagnostic, Diagnostics, Severity};
pub use http_url::split_http_url;
pub use model::{
    AdminConfig, Algorithm, AutoscaleConfig, BackendConfig, CertificateConfig, ClientLimits,
    Config, ControlConfig, Discovery, DnsName, HealthCheckConfig, HostMatch, PoolConfig,
    PoolTlsConfig, RouteConfig, ServerConfig, TlsVersion, WeightSource,
};

/// The default configuration shipped with fulcrum (`config/fulcrum.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/fulcrum.toml");

/// The file name used in diagnostics about [`DEFAULT_CONFIG`].
pub const DEFAULT_CONFIG_NAME: &str = "<embedded fulcrum.toml>";

/// The process exit code for configuration errors (`EX_CONFIG` from `sysexits.h`).
pub const EXIT_CONFIG: i32 = 78;

/// Parse and validate a configuration.
///
/// `file_name` is only used to label diagnostics. On success the config is
/// returned together with any warnings (possibly none); on failure every error
/// found is returned, along with any warnings.
///
/// The files read here are `admin.token_file` and the TLS material (certificates, keys, CA
/// bundles), when set; a relative path is taken from the working directory. An unreadable or
/// empty token file is an error, one that group or others may read is a warning; TLS files are
/// checked by [`tls`]'s rules.
pub fn parse(source: &str, file_name: &str) -> Result<(Config, Vec<Diagnostic>), Diagnostics> {
    validate::parse(source, file_name)
}

/// Read the file at `path` and [`parse`] it; an unreadable file is a single diagnostic.
pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), Diagnostics> {
    fulcrum_diagnostics::load_with(path, "configuration", parse)
}

/// The embedded default configuration, parsed.
///
/// # Panics
///
/// Panics if [`DEFAULT_CONFIG`] is invalid, which the crate's tests rule out.
pub fn load_default() -> Config {
    match parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME) {
        Ok((config, _)) => config,
        Err(diags) => panic!("the embedded default configuration is invalid:\n{diags}"),
    }
}
