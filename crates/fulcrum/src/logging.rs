//! The process log: `env_logger`, with clients that leave before their request head is complete,
//! and clients that fail their TLS handshake, counted and logged at debug level instead of as
//! errors.
//!
//! pingora reads the request head before any proxy hook runs, and logs every failed read as an
//! error (`Fail to proxy: Downstream ConnectionClosed …, downstream session type: …`). At an
//! edge proxy a client hanging up, resetting or stalling mid-head is routine, and one error line
//! each lets a slowloris run flood the log. That record is recognised here, the only place it
//! passes through fulcrum. So is pingora's error for a failed downstream TLS handshake (a
//! scanner, an old client, a client that does not trust the certificate), which no other hook
//! of pingora reports: `fulcrum_proxy::tls::handshake_failure_logged` counts it by listener and
//! reason.

use log::{Level, Log, Metadata, Record};

/// Start of pingora-proxy's message for a failed request-head read; the error follows.
const HEAD_READ_FAILED: &str = "Fail to proxy: Downstream ";
/// What only the request-head message carries (the later "Fail to proxy" lines name a status).
const HEAD_READ_MARKER: &str = ", downstream session type: ";
/// Error types of a head read that the client caused: it hung up, reset, or was too slow.
const CLIENT_SIDE: [&str; 3] = ["ConnectionClosed", "ReadError", "ReadTimedout"];

/// Whether `record` is pingora's error for a client that left before its request head was
/// complete.
fn is_client_abort_in_head(record: &Record<'_>) -> bool {
    if record.level() != Level::Error || !record.target().starts_with("pingora_proxy") {
        return false;
    }
    // Only error records from pingora-proxy get this far, so formatting them costs nothing
    // on the request path of a healthy exchange.
    let message = record.args().to_string();
    message.strip_prefix(HEAD_READ_FAILED).is_some_and(|rest| {
        CLIENT_SIDE.iter().any(|t| {
            rest.strip_prefix(t)
                .is_some_and(|after| after.starts_with([' ', ',']))
        })
    }) && message.contains(HEAD_READ_MARKER)
}

/// Whether `record` is an error of pingora's listening service about a downstream handshake,
/// which `on_handshake` then counts (it returns whether it recognised the message).
fn is_handshake_failure(record: &Record<'_>, on_handshake: fn(&str) -> bool) -> bool {
    record.level() == Level::Error
        && record.target().starts_with("pingora_core")
        && on_handshake(&record.args().to_string())
}

/// A logger that demotes client aborts in the request head and failed downstream handshakes to
/// debug, counting each with `on_abort` or `on_handshake`; every other record goes to `inner`
/// unchanged.
pub struct ClientAbortFilter<L> {
    inner: L,
    on_abort: fn(),
    on_handshake: fn(&str) -> bool,
}

impl<L: Log> ClientAbortFilter<L> {
    /// Wrap `inner`, calling `on_abort` once for every client abort it demotes, and
    /// `on_handshake` with every error message of pingora-core (which counts and returns
    /// `true` for a failed downstream handshake, and the record is demoted).
    pub fn new(inner: L, on_abort: fn(), on_handshake: fn(&str) -> bool) -> Self {
        Self {
            inner,
            on_abort,
            on_handshake,
        }
    }
}

impl<L: Log> Log for ClientAbortFilter<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if is_client_abort_in_head(record) {
            (self.on_abort)();
        } else if !is_handshake_failure(record, self.on_handshake) {
            self.inner.log(record);
            return;
        }
        let demoted = Record::builder()
            .args(*record.args())
            .level(Level::Debug)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        if self.inner.enabled(demoted.metadata()) {
            self.inner.log(&demoted);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Install the process logger: `RUST_LOG` (default `info`), client aborts in the request head
/// counted in `fulcrum_client_aborts_total{phase="head"}` and failed downstream handshakes in
/// `fulcrum_tls_handshake_failures_total`, both logged at debug level.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    let count = || fulcrum_proxy::metrics::client_aborts().head.increment(1);
    let filter = ClientAbortFilter::new(inner, count, fulcrum_proxy::tls::handshake_failure_logged);
    if log::set_boxed_logger(Box::new(filter)).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::LevelFilter;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Mutex;

    /// Keeps what reaches it, as `(level, message)`, from `Debug` up.
    #[derive(Default)]
    struct Capture(Mutex<Vec<(Level, String)>>);

    impl Log for Capture {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.level() <= LevelFilter::Debug
        }
        fn log(&self, record: &Record<'_>) {
            let line = (record.level(), record.args().to_string());
            self.0.lock().unwrap().push(line);
        }
        fn flush(&self) {}
    }

    fn send(logger: &impl Log, level: Level, target: &str, message: &str) {
        logger.log(
            &Record::builder()
                .args(format_args!("{message}"))
                .level(level)
                .target(target)
                .build(),
        );
    }

    static ABORTS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn client_aborts_in_the_head_are_counted_and_demoted() {
        let logger = ClientAbortFilter::new(
            Capture::default(),
            || {
                ABORTS.fetch_add(1, Relaxed);
            },
            |_| false,
        );
        let session = ", downstream session type: HTTP/1.1";
        let aborts = [
            "Downstream ConnectionClosed context: while reading request headers, bytes already read: 24",
            "Downstream ReadError context: while reading request headers cause: Connection reset by peer (os error 104)",
            "Downstream ReadTimedout context: timeout: 10s",
        ];
        for e in aborts {
            send(
                &logger,
                Level::Error,
                "pingora_proxy",
                &format!("Fail to proxy: {e}{session}"),
            );
        }
        let kept = [
            // Not a client abort: other error types, other phases, other crates, other levels.
            (
                Level::Error,
                "pingora_proxy",
                format!("Fail to proxy: Downstream H2Error{session}"),
            ),
            (
                Level::Error,
                "pingora_proxy",
                "Fail to proxy: Upstream ConnectionClosed, status: 502, tries: 1".to_string(),
            ),
            (
                Level::Error,
                "pingora_core::apps::http_app",
                format!("Fail to proxy: Downstream ConnectionClosed{session}"),
            ),
            (
                Level::Warn,
                "pingora_proxy",
                format!("Fail to proxy: Downstream ConnectionClosed{session}"),
            ),
        ];
        for (level, target, message) in &kept {
            send(&logger, *level, target, message);
        }
        assert_eq!(ABORTS.load(Relaxed), aborts.len());
        let seen = logger.inner.0.lock().unwrap();
        assert_eq!(seen.len(), aborts.len() + kept.len());
        for (level, message) in &seen[..aborts.len()] {
            assert_eq!(*level, Level::Debug, "{message}");
        }
        for ((level, message), (want_level, _, want)) in seen[aborts.len()..].iter().zip(&kept) {
            assert_eq!((level, message), (want_level, want));
        }
    }

    #[test]
    fn a_demoted_record_is_dropped_when_debug_is_off() {
        struct ErrorsOnly(AtomicUsize);
        impl Log for ErrorsOnly {
            fn enabled(&self, metadata: &Metadata<'_>) -> bool {
                metadata.level() <= LevelFilter::Error
            }
            fn log(&self, _: &Record<'_>) {
                self.0.fetch_add(1, Relaxed);
            }
            fn flush(&self) {}
        }
        let logger = ClientAbortFilter::new(ErrorsOnly(AtomicUsize::new(0)), || {}, |_| false);
        let abort = "Fail to proxy: Downstream ConnectionClosed, downstream session type: HTTP/1.1";
        send(&logger, Level::Error, "pingora_proxy", abort);
        assert_eq!(logger.inner.0.load(Relaxed), 0);
    }

    #[test]
    fn failed_handshakes_are_handed_over_and_demoted() {
        let logger = ClientAbortFilter::new(
            Capture::default(),
            || {},
            |m| m.starts_with("Downstream handshake"),
        );
        let failed = "Downstream handshake error from 127.0.0.1:5000: TLSHandshakeFailure context: TLS accept() failed: received fatal alert: UnknownCA";
        send(
            &logger,
            Level::Error,
            "pingora_core::services::listening",
            failed,
        );
        // The same words from another crate, and other pingora-core errors, pass unchanged.
        send(&logger, Level::Error, "pingora_proxy", failed);
        send(
            &logger,
            Level::Error,
            "pingora_core::services::listening",
            "Accept() failed",
        );
        let seen = logger.inner.0.lock().unwrap();
        let levels: Vec<Level> = seen.iter().map(|(l, _)| *l).collect();
        assert_eq!(levels, [Level::Debug, Level::Error, Level::Error]);
    }
}
