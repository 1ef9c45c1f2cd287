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

/// Client connections the data plane holds open at once, per process (`max_connections`).
/// Beyond it new connections wait in the listen backlog; the cap actually applied is also
/// bounded by the open-file limit (each client connection may need a backend connection too).
pub const MAX_CONNECTIONS: usize = 10_000;

/// Milliseconds a client has to send a whole request head (`header_timeout_ms`), as HAProxy's
/// `timeout http-request`.
pub const HEADER_TIMEOUT_MS: u64 = 10_000;

/// Milliseconds a keep-alive connection may stay idle before the first byte of its next
/// request (`keepalive_timeout_ms`); 0 closes each connection after one response.
pub const KEEPALIVE_TIMEOUT_MS: u64 = 60_000;

/// The largest request head, request line and final blank line included
/// (`max_header_bytes`); a larger one is answered 431.
pub const MAX_HEADER_BYTES: usize = 65_536;

/// The longest request line, without its line ending (`max_request_line_bytes`); a longer one
/// is answered 414.
pub const MAX_REQUEST_LINE_BYTES: usize = 8_192;

/// The largest `max_header_bytes` accepted: the HTTP/1 parser underneath never buffers more.
pub const MAX_HEADER_BYTES_LIMIT: usize = 1_048_575;

/// Longest wait between two reads of a request body from the client, in milliseconds
/// (`body_timeout_ms`); a client that stops sending is answered 408 or cut.
pub const BODY_TIMEOUT_MS: u64 = 30_000;
