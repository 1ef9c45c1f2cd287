//! Defaults of the `[server]` section, named once so the validator, the serialiser and the
//! documentation agree.

/// Data-plane worker threads (`threads`).
pub const THREADS: usize = 2;

/// Seconds in-flight requests get to finish once the listeners stop accepting
/// (`grace_period_s`).
pub const GRACE_PERIOD_S: u64 = 5;

/// Seconds the listeners keep serving after `SIGTERM`, while `/readyz` answers `draining`, so
/// that load balancers and Kubernetes endpoints stop sending traffic first (`drain_delay_s`).
pub const DRAIN_DELAY_S: u64 = 5;

/// The Unix socket through which a process started with `fulcrum run --upgrade` takes the
/// listening sockets of the running one (`upgrade_sock`).
///
/// It lives in a directory only fulcrum's user can enter: while an upgrade waits, whoever can
/// connect to the socket can hand the new process its listeners.
pub const UPGRADE_SOCK: &str = "/run/fulcrum/upgrade.sock";

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const UNIX_SOCKET_PATH_MAX: usize = 107;

/// Longest wait between two reads of a request body from the client, in milliseconds
/// (`body_timeout_ms`); a client that stops sending is answered 408 or cut.
pub const BODY_TIMEOUT_MS: u64 = 30_000;
