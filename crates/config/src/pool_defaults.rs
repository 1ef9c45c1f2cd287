//! Defaults of a `[pools.NAME]` section, shared by the configuration and the simulator so that
//! a simulated pool behaves as a configured one that leaves the keys out.

/// Time to establish a backend connection, in milliseconds (`connect_timeout_ms`).
pub const CONNECT_TIMEOUT_MS: u64 = 1000;

/// Longest wait for a backend's response bytes, in milliseconds (`read_timeout_ms`).
pub const READ_TIMEOUT_MS: u64 = 30_000;

/// Longest wait to send request bytes to a backend, in milliseconds (`write_timeout_ms`).
pub const WRITE_TIMEOUT_MS: u64 = 30_000;

/// How long an idle backend connection is kept for reuse, in milliseconds (`idle_timeout_ms`).
pub const IDLE_TIMEOUT_MS: u64 = 60_000;

/// Attempts allowed beyond the first (`retries`).
pub const RETRIES: u32 = 2;

/// Peak-EWMA decay time constant, in milliseconds (`ewma_decay_ms`).
pub const EWMA_DECAY_MS: u64 = 10_000;

/// Consecutive failed requests that passively eject a backend (`max_consecutive_failures`).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// Slow-start window in milliseconds (`slow_start_ms`); 0 turns slow start off.
pub const SLOW_START_MS: u64 = 0;

/// Share of its weight a backend starts its slow-start ramp with, in percent
/// (`slow_start_min_percent`).
pub const SLOW_START_MIN_PERCENT: u32 = 10;

/// Time between DNS lookups of a pool with `discovery = "dns"`, in milliseconds
/// (`dns_refresh_ms`).
pub const DNS_REFRESH_MS: u64 = 5000;

/// Request bodies up to this many bytes are read whole from the client before a backend is
/// picked (`request_buffer_bytes`); 0 streams every body.
pub const REQUEST_BUFFER_BYTES: usize = 64 * 1024;

/// The largest `request_buffer_bytes`: the size of the buffer from which a request body is
/// replayed to the backend (and to the next one on a retry).
pub const REQUEST_BUFFER_BYTES_MAX: usize = 64 * 1024;
