//! How the process ends without losing a request: the drain on `SIGTERM` and the hand-over of
//! the listening sockets to a new binary on `SIGQUIT`.
//!
//! pingora on its own closes the listeners the moment `SIGTERM` arrives, then always sleeps the
//! whole grace period; on `SIGQUIT` it keeps accepting for a fixed 5 s and shuts down even when
//! no new process took the sockets. fulcrum watches the signals itself ([`Signals`], given to
//! `Server::run`) and drives three watches of its own:
//!
//! * `drain`, which the HTTP sessions see in place of pingora's shutdown watch ([`DrainingApp`]):
//!   from then on HTTP/1.1 answers carry `Connection: close` and HTTP/2 connections get GOAWAY;
//! * `stop_data`, which the data-plane accept loops see ([`Managed`]): they stop accepting;
//! * `stop_admin`, the same for the admin listener.
//!
//! Once the listeners have stopped, the process waits until no request is in flight (counted by
//! the [`InFlight`] guard each request holds) or `grace_period_s` has passed, and only then gives
//! control back to pingora, which is configured with no grace period of its own and stops the
//! runtimes at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use fulcrum_config::ServerConfig;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::{ListenFds, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::Service;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::limits::FIRST_REQUEST_GRACE;
use crate::metrics;

/// How often the process looks whether the last request in flight has finished.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// How long the old process keeps accepting beside the new one after handing its sockets over.
/// pingora's receiving side looks for the transfer once a second and then starts its services;
/// until it accepts, connections would only wait in the kernel's queue (never refused), and
/// this overlap keeps them from waiting at all.
const HANDOVER_OVERLAP: Duration = Duration::from_secs(2);

/// Where the process is in its life, shared by the signal handler, the listeners, the request
/// path (the in-flight count) and the admin API (`/readyz`, `fulcrum_draining`).
pub struct Lifecycle {
    draining: AtomicBool,
    /// Set with `drain`, for the request path (a load instead of the watch's lock).
    closing: AtomicBool,
    in_flight: AtomicUsize,
    /// Accepted connections still in their handshake (TLS).
    handshaking: AtomicUsize,
    drain: watch::Sender<bool>,
    stop_data: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    /// The listening sockets, as pingora's services registered them; sent on `SIGQUIT`.
    fds: OnceLock<ListenFds>,
    drain_delay: Duration,
    grace_period: Duration,
    upgrade_sock: PathBuf,
    draining_gauge: ::metrics::Gauge,
}

/// Which listener a [`Managed`] service is, so it stops with the right watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Client traffic: stops accepting after the drain delay (`SIGTERM`) or at once after the
    /// sockets were handed over (`SIGQUIT`).
    Data,
    /// The admin API: keeps answering (`/readyz` says `draining`) until the process exits, or
    /// stops at once after the sockets were handed over.
    Admin,
}

impl Lifecycle {
    /// The lifecycle of a process running `server`; registers `fulcrum_draining` at 0, so call
    /// it after the metrics recorder is installed.
    pub fn new(server: &ServerConfig) -> Lifecycle {
        let draining_gauge = ::metrics::gauge!(metrics::DRAINING);
        draining_gauge.set(0.0);
        Lifecycle {
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            drain: watch::channel(false).0,
            stop_data: watch::channel(false).0,
            stop_admin: watch::channel(false).0,
            fds: OnceLock::new(),
            drain_delay: Duration::from_secs(server.drain_delay_s),
            grace_period: Duration::from_secs(server.grace_period_s),
            upgrade_sock: server.upgrade_sock.clone(),
            draining_gauge,
        }
    }

    /// True from the moment `SIGTERM` asked the process to stop (`/readyz` answers 503).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// True from the moment clients are told to reconnect: the drain on `SIGTERM`, or the
    /// hand-over to a new process on `SIGQUIT` (which keeps `/readyz` at 200).
    pub fn closing_connections(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Tell clients to reconnect from now on (see [`Self::closing_connections`]).
    fn close_connections(&self) {
        self.closing.store(true, Ordering::Release);
        self.drain.send_replace(true);
    }

    /// Requests between their first byte read and their last byte answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Count one request in flight until the guard is dropped.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Count one accepted connection in its handshake until the guard is dropped.
    pub fn handshake_started(self: &Arc<Self>) -> Handshaking {
        self.handshaking.fetch_add(1, Ordering::AcqRel);
        Handshaking(self.clone())
    }

    /// What the HTTP sessions see in place of pingora's shutdown watch.
    pub fn drain_watch(&self) -> ShutdownWatch {
        self.drain.subscribe()
    }

    fn stop_watch(&self, listener: Listener) -> ShutdownWatch {
        match listener {
            Listener::Data => self.stop_data.subscribe(),
            Listener::Admin => self.stop_admin.subscribe(),
        }
    }

    fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.draining_gauge.set(1.0);
        self.close_connections();
    }

    /// `SIGTERM`: answer `draining` on `/readyz`, keep serving for the drain delay while telling
    /// clients to reconnect elsewhere, stop accepting, then wait for what is in flight.
    async fn drain_and_stop(&self) {
        log::info!(
            "SIGTERM: draining; /readyz answers 503, the listeners keep serving for {}s",
            self.drain_delay.as_secs()
        );
        self.start_draining();
        tokio::time::sleep(self.drain_delay).await;
        log::info!("the data-plane listeners stop accepting");
        self.stop_data.send_replace(true);
        self.wait_idle().await;
        self.stop_admin.send_replace(true);
    }

    /// `SIGQUIT`: send the listening sockets to the process started with `--upgrade`, keep
    /// accepting beside it for [`HANDOVER_OVERLAP`] while closing keep-alive connections, stop
    /// accepting (the sockets stay open in the new process, so nothing is refused), then wait
    /// for what is in flight.
    async fn hand_over(self: &Arc<Self>) -> Result<(), String> {
        let Some(fds) = self.fds.get().cloned() else {
            return Err("no listening socket is open yet".into());
        };
        let Some(path) = self.upgrade_sock.to_str().map(str::to_owned) else {
            return Err(format!("{} is not UTF-8", self.upgrade_sock.display()));
        };
        // pingora's transfer blocks, retrying for a few seconds while the new process is not
        // yet listening on the socket.
        let sent = tokio::task::spawn_blocking(move || fds.lock().send_to_sock(path.as_str()))
            .await
            .map_err(|e| format!("the transfer task failed: {e}"))?;
        sent.map_err(|e| {
            format!(
                "cannot send the listening sockets through {}: {e}; is `fulcrum run --upgrade` running with the same server.upgrade_sock?",
                self.upgrade_sock.display()
            )
        })?;
        log::info!(
            "SIGQUIT: listening sockets handed over through {}; accepting beside the new process for {}s",
            self.upgrade_sock.display(),
            HANDOVER_OVERLAP.as_secs()
        );
        // Clients are told to reconnect, but `/readyz` stays 200: the address is not going away,
        // and the admin listener answers from both processes during the overlap.
        self.close_connections();
        tokio::time::sleep(HANDOVER_OVERLAP).await;
        log::info!(
            "the listeners stop accepting; {} request(s) in flight",
            self.in_flight()
        );
        self.stop_data.send_replace(true);
        self.stop_admin.send_replace(true);
        self.wait_idle().await;
        Ok(())
    }

    /// Wait until nothing is in flight, or the grace period has passed. A connection accepted
    /// before the listeners stopped and still in its handshake is waited for
    /// [`FIRST_REQUEST_GRACE`] (then its request is in flight): its client connected to send
    /// one, but one that never finishes its handshake does not hold the process.
    async fn wait_idle(&self) {
        let stopped = tokio::time::Instant::now();
        let idle = async {
            // Twice in a row, so a request whose head was just read but not yet counted is seen.
            let mut idle_polls = 0;
            while idle_polls < 2 {
                let handshakes_done = self.handshaking.load(Ordering::Acquire) == 0
                    || stopped.elapsed() >= FIRST_REQUEST_GRACE;
                idle_polls = if self.in_flight() == 0 && handshakes_done {
                    idle_polls + 1
                } else {
                    0
                };
                tokio::time::sleep(IDLE_POLL).await;
            }
        };
        if tokio::time::timeout(self.grace_period, idle).await.is_err() {
            log::warn!(
                "grace period of {}s over with {} request(s) still in flight; they are cut",
                self.grace_period.as_secs(),
                self.in_flight()
            );
        } else {
            log::info!("nothing in flight; exiting");
        }
    }
}

/// One accepted connection in its handshake; dropping it uncounts it.
pub struct Handshaking(Arc<Lifecycle>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request in flight; dropping it (answered, failed or abandoned) uncounts it.
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The process's signal handling, given to pingora's `Server::run`:
/// `SIGTERM` drains, `SIGQUIT` hands the listeners over, `SIGINT` stops at once.
pub struct Signals(pub Arc<Lifecycle>);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let registered = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        );
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = registered else {
            log::error!("cannot watch SIGTERM, SIGQUIT and SIGINT; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let lifecycle = &self.0;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    return match interruptible(lifecycle.drain_and_stop(), &mut int).await {
                        Ok(()) => ShutdownSignal::GracefulTerminate,
                        Err(fast) => fast,
                    };
                }
                _ = quit.recv() => {
                    let handed = interruptible(
                        async {
                            match lifecycle.hand_over().await {
                                Ok(()) => true,
                                Err(e) => {
                                    log::error!("SIGQUIT: {e}; this process keeps serving");
                                    false
                                }
                            }
                        },
                        &mut int,
                    );
                    match handed.await {
                        Ok(false) => continue,
                        Ok(true) => return ShutdownSignal::GracefulTerminate,
                        Err(fast) => return fast,
                    }
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}

/// Run `step`, unless `SIGINT` asks for a fast stop first.
async fn interruptible<T>(
    step: impl std::future::Future<Output = T>,
    int: &mut Signal,
) -> Result<T, ShutdownSignal> {
    tokio::select! {
        out = step => Ok(out),
        _ = int.recv() => {
            log::warn!("SIGINT: stopping at once");
            Err(ShutdownSignal::FastShutdown)
        }
    }
}

/// A pingora service whose listeners stop on fulcrum's watch instead of pingora's, and which
/// hands the listening sockets pingora registered to the [`Lifecycle`] for a later upgrade.
pub struct Managed<S> {
    inner: S,
    listener: Listener,
    lifecycle: Arc<Lifecycle>,
}

impl<S> Managed<S> {
    /// `inner`, stopped as `listener`.
    pub fn new(inner: S, listener: Listener, lifecycle: Arc<Lifecycle>) -> Self {
        Managed {
            inner,
            listener,
            lifecycle,
        }
    }
}

#[async_trait]
impl<S: Service> Service for Managed<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        _shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(fds) = &fds {
            // Every service is handed the same table; the first one to start records it.
            let _ = self.lifecycle.fds.set(fds.clone());
        }
        let stop = self.lifecycle.stop_watch(self.listener);
        self.inner.start_service(fds, stop, listeners_per_fd).await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// An application whose sessions see the drain watch as their shutdown signal, so that they
/// close keep-alive connections and send GOAWAY from the start of the drain, while the accept
/// loop keeps going until the listeners stop.
pub struct DrainingApp<A> {
    inner: Arc<A>,
    drain: ShutdownWatch,
}

impl<A> DrainingApp<A> {
    /// `inner`, draining with `lifecycle`.
    pub fn new(inner: A, lifecycle: &Lifecycle) -> Self {
        DrainingApp {
            inner: Arc::new(inner),
            drain: lifecycle.drain_watch(),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for DrainingApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, &self.drain).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }

    fn handshake_started(&self) -> Option<Box<dyn Send>> {
        self.inner.handshake_started()
    }
}

/// Errors found before `fulcrum run --upgrade` starts waiting for the listening sockets.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeSockError {
    /// The socket's directory does not exist.
    #[error("the directory of server.upgrade_sock {sock} does not exist; create it for the user fulcrum runs as (sudo install -d -m 0750 -o \"$(id -un)\" {dir}, or RuntimeDirectory=fulcrum in a systemd unit), or set server.upgrade_sock to a path in a directory only that user can write to")]
    NoDirectory {
        /// The configured socket path.
        sock: String,
        /// Its directory.
        dir: String,
    },
    /// A socket cannot be created there.
    #[error("cannot create server.upgrade_sock {sock}: {source}; the user fulcrum runs as needs write access to {dir} (sudo chown \"$(id -un)\" {dir}; creating it under /run needs root)")]
    NotWritable {
        /// The configured socket path.
        sock: String,
        /// Its directory.
        dir: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Check that a process can listen on `sock` to receive the listening sockets, before it
/// waits there: pingora would panic on a missing or unwritable directory.
pub fn check_upgrade_sock(sock: &Path) -> Result<(), UpgradeSockError> {
    let dir = sock.parent().unwrap_or(Path::new("/"));
    let names = || (sock.display().to_string(), dir.display().to_string());
    if !dir.is_dir() {
        let (sock, dir) = names();
        return Err(UpgradeSockError::NoDirectory { sock, dir });
    }
    // A socket left from an earlier upgrade is removed by the transfer itself.
    if std::fs::symlink_metadata(sock).is_ok() {
        return Ok(());
    }
    match std::os::unix::net::UnixListener::bind(sock) {
        Ok(probe) => {
            drop(probe);
            let _ = std::fs::remove_file(sock);
            Ok(())
        }
        Err(source) => {
            let (sock, dir) = names();
            Err(UpgradeSockError::NotWritable { sock, dir, source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(drain_delay_s: u64, grace_period_s: u64) -> ServerConfig {
        ServerConfig {
            listen: vec!["127.0.0.1:1".parse().unwrap()],
            threads: 1,
            grace_period_s,
            drain_delay_s,
            upgrade_sock: "/nonexistent/upgrade.sock".into(),
            dns_resolver: None,
            tls_listen: Vec::new(),
            tls_min_version: fulcrum_config::TlsVersion::Tls12,
            certificates: Vec::new(),
            limits: Default::default(),
            body_timeout: std::time::Duration::from_secs(30),
        }
    }

    #[test]
    fn in_flight_is_counted_until_the_guard_drops() {
        let lc = Arc::new(Lifecycle::new(&server(0, 0)));
        let a = lc.request_started();
        let b = lc.request_started();
        assert_eq!(lc.in_flight(), 2);
        drop(a);
        assert_eq!(lc.in_flight(), 1);
        drop(b);
        assert_eq!(lc.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_the_delay_then_stops_accepting_then_waits_for_requests() {
        let lc = Arc::new(Lifecycle::new(&server(5, 30)));
        let (drain, data, admin) = (
            lc.drain_watch(),
            lc.stop_watch(Listener::Data),
            lc.stop_watch(Listener::Admin),
        );
        let request = lc.request_started();
        let start = tokio::time::Instant::now();
        let run = tokio::spawn({
            let lc = lc.clone();
            async move { lc.drain_and_stop().await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(lc.draining() && *drain.borrow(), "draining at once");
        assert!(!*data.borrow(), "still accepting during the drain delay");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(*data.borrow(), "accepting stopped after the delay");
        assert!(
            !*admin.borrow(),
            "admin answers while a request is in flight"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(request);
        run.await.unwrap();
        assert!(*admin.borrow());
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(7100),
            "exits right after the last request, not after the grace period: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_ends_is_cut_after_the_grace_period() {
        let lc = Arc::new(Lifecycle::new(&server(0, 3)));
        let _stuck = lc.request_started();
        let start = tokio::time::Instant::now();
        lc.drain_and_stop().await;
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(3) && took < Duration::from_millis(3100));
    }

    #[tokio::test]
    async fn hand_over_without_sockets_keeps_serving() {
        let lc = Arc::new(Lifecycle::new(&server(0, 0)));
        assert!(lc.hand_over().await.is_err());
        assert!(!lc.draining());
    }

    #[test]
    fn upgrade_sock_directory_must_exist() {
        let err = check_upgrade_sock(Path::new("/nonexistent-fulcrum/upgrade.sock")).unwrap_err();
        assert!(err.to_string().contains("install -d -m 0750"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("upgrade.sock");
        check_upgrade_sock(&sock).unwrap();
        assert!(!sock.exists(), "the probe is removed");
    }
}
