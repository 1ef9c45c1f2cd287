//! The process log: `env_logger`, with clients that leave before their request head is complete
//! or before their answer is written, and clients that fail their TLS handshake, counted and
//! logged at debug level instead of as errors.
//!
//! pingora reads the request head before any proxy hook runs, and logs every failed read as an
//! error (`Fail to proxy: Downstream ConnectionClosed …, downstream session type: …`). At an
//! edge proxy a client hanging up, resetting or stalling mid-head is routine, and one error line
//! each lets a slowloris run flood the log. That record is recognised here, the only place it
//! passes through fulcrum. So are pingora's errors for an answer it could not finish writing
//! because the client had gone (`failed to send error response to downstream: …`, `Error finish
//! sending body to downstream: …`: a client that sent a malformed head and reset, a slow reader
//! that gave up), and pingora's error for a failed downstream TLS handshake (a
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

/// Starts of pingora-proxy's messages for an answer it could not finish writing downstream;
/// the error follows.
const WRITE_FAILED: [&str; 2] = [
    "failed to send error response to downstream: ",
    "Error finish sending body to downstream: ",
];
/// Error types of a failed write to a client that went away.
const CLIENT_GONE: [&str; 4] = [
    "WriteError",
    "ConnectionClosed",
    "ReadError",
    "WriteTimedout",
];

/// Whether `error` (pingora's rendering of an error) starts with one of `types`, after the
/// `Downstream` source if it names one; an error of another source is never the client's.
fn names_client_error(error: &str, types: &[&str]) -> bool {
    let error = error.trim_start();
    let error = error.strip_prefix("Downstream ").unwrap_or(error);
    types.iter().any(|t| {
        error
            .strip_prefix(t)
            .is_some_and(|after| after.is_empty() || after.starts_with([' ', ',']))
    })
}

/// Where a client that went away was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortPhase {
    /// Before its request head was complete.
    Head,
    /// After its request, before its answer was written whole.
    Answer,
}

/// Whether `record` is pingora's error for a client that left before its request head was
/// complete, or before the answer to it was written, and which.
fn client_abort(record: &Record<'_>) -> Option<AbortPhase> {
    if record.level() != Level::Error || !record.target().starts_with("pingora_proxy") {
        return None;
    }
    // Only error records from pingora-proxy get this far, so formatting them costs nothing
    // on the request path of a healthy exchange.
    let message = record.args().to_string();
    let in_head = message
        .strip_prefix(HEAD_READ_FAILED)
        .is_some_and(|rest| names_client_error(rest, &CLIENT_SIDE))
        && message.contains(HEAD_READ_MARKER);
    let in_answer = WRITE_FAILED.iter().any(|start| {
        message
            .strip_prefix(start)
            .is_some_and(|rest| names_client_error(rest, &CLIENT_GONE))
    });
    match (in_head, in_answer) {
        (true, _) => Some(AbortPhase::Head),
        (false, true) => Some(AbortPhase::Answer),
        (false, false) => None,
    }
}

/// Whether `record` is an error of pingora's listening service about a downstream handshake,
/// which `on_handshake` then counts (it returns whether it recognised the message).
fn is_handshake_failure(record: &Record<'_>, on_handshake: fn(&str) -> bool) -> bool {
    record.level() == Level::Error
        && record.target().starts_with("pingora_core")
        && on_handshake(&record.args().to_string())
}

/// A logger that demotes client aborts (in the request head, or while their answer is written)
/// and failed downstream handshakes to debug, counting each with `on_abort` or `on_handshake`; every other record goes to `inner`
/// unchanged.
pub struct ClientAbortFilter<L> {
    inner: L,
    on_abort: fn(AbortPhase),
    on_handshake: fn(&str) -> bool,
}

impl<L: Log> ClientAbortFilter<L> {
    /// Wrap `inner`, calling `on_abort` once for every client abort it demotes, and
    /// `on_handshake` with every error message of pingora-core (which counts and returns
    /// `true` for a failed downstream handshake, and the record is demoted).
    pub fn new(inner: L, on_abort: fn(AbortPhase), on_handshake: fn(&str) -> bool) -> Self {
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
        if let Some(phase) = client_abort(record) {
            (self.on_abort)(phase);
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

/// Install the process logger: `RUST_LOG` (default `info`), client aborts counted in
/// `fulcrum_client_aborts_total{phase="head"}` (those in the answer with the request's phase) and failed downstream handshakes in
/// `fulcrum_tls_handshake_failures_total`, both logged at debug level.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    let count = |phase| {
        let aborts = fulcrum_proxy::metrics::client_aborts();
        match phase {
            AbortPhase::Head => aborts.head.increment(1),
            AbortPhase::Answer => aborts.request.increment(1),
        }
    };
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
            |phase| {
                assert_eq!(phase, AbortPhase::Head);
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

    static WRITE_ABORTS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn clients_gone_before_their_answer_is_written_are_counted_and_demoted() {
        let logger = ClientAbortFilter::new(
            Capture::default(),
            |phase| {
                assert_eq!(phase, AbortPhase::Answer);
                WRITE_ABORTS.fetch_add(1, Relaxed);
            },
            |_| false,
        );
        let gone = [
            "failed to send error response to downstream:  WriteError context: writing response header cause: Broken pipe (os error 32)",
            "failed to send error response to downstream: Downstream WriteError cause: Connection reset by peer (os error 104)",
            "Error finish sending body to downstream:  WriteError context: while writing body cause: Broken pipe (os error 32)",
            "Error finish sending body to downstream: ConnectionClosed",
            "Error finish sending body to downstream:  WriteTimedout context: writing body",
        ];
        let kept = [
            // Another source, another type, another message.
            "failed to send error response to downstream: Upstream WriteError context: x",
            "Error finish sending body to downstream: InternalError context: x",
            "Error finish sending body to downstream: WriteErrorish",
            "Encountered error while filtering upstream trailers WriteError",
        ];
        for m in gone.iter().chain(&kept) {
            send(&logger, Level::Error, "pingora_proxy::proxy_h1", m);
        }
        assert_eq!(WRITE_ABORTS.load(Relaxed), gone.len());
        let seen = logger.inner.0.lock().unwrap();
        let levels: Vec<Level> = seen.iter().map(|(l, _)| *l).collect();
        let mut want = vec![Level::Debug; gone.len()];
        want.extend([Level::Error; 4]);
        assert_eq!(levels, want);
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
        let logger = ClientAbortFilter::new(ErrorsOnly(AtomicUsize::new(0)), |_| {}, |_| false);
        let abort = "Fail to proxy: Downstream ConnectionClosed, downstream session type: HTTP/1.1";
        send(&logger, Level::Error, "pingora_proxy", abort);
        assert_eq!(logger.inner.0.load(Relaxed), 0);
    }

    #[test]
    fn failed_handshakes_are_handed_over_and_demoted() {
        let logger = ClientAbortFilter::new(
            Capture::default(),
            |_| {},
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
