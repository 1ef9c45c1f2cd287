//! fulcrum's data plane: a pingora HTTP proxy with per-pool balancing, health checks,
//! retries, TLS at the edge and to backends, Prometheus metrics and an admin API.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod body;
pub mod control;
pub mod discovery;
pub mod forecast;
pub mod forecast_history;
pub mod health;
pub mod lifecycle;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod router;
pub mod service;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fulcrum_config::Config;
use metrics_exporter_prometheus::PrometheusHandle;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::Listeners;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::listening::Service as ListeningService;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use lifecycle::{Lifecycle, Listener, Managed, Signals};
pub use service::FulcrumProxy;
pub use state::{Upstreams, UpstreamsBuilder};
pub use tls::CertificateSet;

/// Where the running configuration came from, so a reload knows what to read.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The configuration embedded in the binary; reloads re-read nothing.
    Embedded,
    /// A file on disk, re-read on `SIGHUP` or `POST /api/config/reload`.
    File(PathBuf),
}

/// State shared by the data plane, the admin API and the health checkers.
pub struct Shared {
    /// The live upstream state; swapped whole on reload.
    pub upstreams: ArcSwap<Upstreams>,
    /// Builds each new [`Upstreams`] and keeps the per-backend state that outlives them.
    pub builder: UpstreamsBuilder,
    /// The configuration the upstreams were built from.
    pub config: ArcSwap<Config>,
    /// The certificates the TLS listeners serve; swapped whole on reload.
    pub certificates: Arc<ArcSwap<CertificateSet>>,
    /// Where the configuration is reloaded from.
    pub source: ConfigSource,
    /// Renders the Prometheus exposition.
    pub metrics: PrometheusHandle,
    /// The control loop's recent decisions.
    pub decisions: fulcrum_control::decisions::DecisionLog,
    /// Asks the control thread to reload its model.
    pub model_reload: std::sync::mpsc::Sender<control::ModelReloadRequest>,
    /// Draining, the listeners' hand-over and the requests in flight.
    pub lifecycle: Arc<Lifecycle>,
    /// The last good addresses of the backend names of pools with `discovery = "dns"`.
    pub discovered: Arc<discovery::Discovered>,
    /// What scores the model pools (model or heuristic, and why), for the admin API.
    pub model: control::ModelStatus,
    /// The latest demand forecast of each pool with `[pools.NAME.autoscale]`.
    pub forecasts: forecast::ForecastStatus,
}

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metrics recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// A listener address is taken or not bindable.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The admin thread could not start.
    #[error("cannot start the admin runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// `--upgrade` cannot wait on `server.upgrade_sock`.
    #[error(transparent)]
    UpgradeSock(#[from] lifecycle::UpgradeSockError),
    /// A certificate of the TLS listeners cannot be used.
    #[error("cannot use the TLS certificates: {0}")]
    Certificates(String),
    /// A TLS listener could not be set up.
    #[error("cannot set up the TLS listener on {addr}: {message}")]
    TlsListener {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
}

/// How the process gets its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Bind every listener itself.
    Fresh,
    /// Take the listeners of the running process through `server.upgrade_sock`; that process
    /// sends them when it gets `SIGQUIT` (`fulcrum run --upgrade`).
    Upgrade,
}

/// Fail early and clearly if a listening address is taken; pingora would panic instead.
fn check_bindable(config: &Config) -> Result<(), StartError> {
    let admin = std::iter::once((config.admin.listen, "admin"));
    let data = config.server.listen.iter().map(|a| (*a, "proxy"));
    let tls = config.server.tls_listen.iter().map(|a| (*a, "proxy TLS"));
    for (addr, what) in admin.chain(data).chain(tls) {
        std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind {
            addr,
            what,
            source,
        })?;
    }
    Ok(())
}

/// Start the admin listener, health checks and the pingora data plane; blocks until the process
/// has drained (`SIGTERM`), handed its listeners to a new binary (`SIGQUIT`) or was interrupted.
pub fn serve(mut config: Config, source: ConfigSource, start: Start) -> Result<(), StartError> {
    let metrics = metrics::install()?;
    match start {
        Start::Fresh => check_bindable(&config)?,
        Start::Upgrade => lifecycle::check_upgrade_sock(&config.server.upgrade_sock)?,
    }
    let certificates = CertificateSet::from_config(&config).map_err(StartError::Certificates)?;
    let budget = connection_budget(&config);

    control::describe_metrics();
    forecast::describe_metrics();
    tls::describe_metrics();
    discovery::describe_metrics();
    // DNS pools start empty (not ready) until their names are first resolved.
    let discovered = Arc::new(discovery::Discovered::new());
    discovered.expand(&mut config);
    let (model_reload, model_reloads) = std::sync::mpsc::channel();
    let builder = UpstreamsBuilder::new();
    metrics::record_config_load(true);
    let lifecycle = Arc::new(Lifecycle::new(&config.server));
    let shared = Arc::new(Shared {
        upstreams: ArcSwap::from_pointee(builder.build(&config, None)),
        builder,
        config: ArcSwap::from_pointee(config.clone()),
        certificates: Arc::new(ArcSwap::from_pointee(certificates)),
        source,
        metrics,
        decisions: fulcrum_control::decisions::DecisionLog::new(config.control.decisions),
        model_reload,
        lifecycle: lifecycle.clone(),
        discovered,
        model: control::ModelStatus::default(),
        forecasts: forecast::ForecastStatus::default(),
    });
    control::spawn(shared.clone(), model_reloads).map_err(StartError::Runtime)?;

    let (reload_tx, reload_rx) = mpsc::channel::<admin::ReloadRequest>(4);
    let admin_shared = shared.clone();
    let admin_reload = reload_tx.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    // The admin thread also runs the memory housekeeping (see `memory`).
    let housekeeping = rt.handle().clone();
    std::thread::Builder::new()
        .name("fulcrum-admin".into())
        .spawn(move || rt.block_on(admin_main(admin_shared, admin_reload, reload_rx)))
        .map_err(StartError::Runtime)?;

    let mut conf = ServerConf {
        threads: config.server.threads,
        // fulcrum waits for in-flight requests itself (`lifecycle`) and gives control back
        // to pingora only when none is left, so pingora adds no grace period of its own.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.server.upgrade_sock.to_string_lossy().into_owned(),
        // fulcrum bounds attempts per pool itself; this is only pingora's outer safety cap.
        max_retries: 16,
        // With one worker there is nothing to steal: pingora's no-steal flavour runs it as a
        // single-threaded runtime, which schedules each wakeup without the cross-thread
        // bookkeeping of the multi-threaded one.
        work_stealing: config.server.threads > 1,
        ..ServerConf::default()
    };
    // Idle backend connections count against the same open files as the clients.
    conf.upstream_keepalive_pool_size = budget.effective.min(1024);
    let opt = Opt {
        upgrade: start == Start::Upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    let mut http =
        pingora_proxy::http_proxy(&server.configuration, FulcrumProxy::new(shared.clone()));
    let limits = config.server.limits;
    let mut opts = HttpServerOptions::default();
    // HTTP/2 with prior knowledge on cleartext listeners, beside HTTP/1.1; `limits` tells the
    // two apart from the first bytes.
    opts.h2c = true;
    opts.h2_idle_timeout =
        (!limits.keepalive_timeout.is_zero()).then_some(limits.keepalive_timeout);
    http.server_options = Some(opts);
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(limits.max_header_bytes as u32);
    http.h2_options = Some(h2);
    let gate = limits::ConnectionGate::new(budget.effective);
    let mut listeners = Listeners::new();
    for addr in &config.server.listen {
        // No L4 read buffer on cleartext listeners: every read already lands in a buffer of
        // the reader's own (the head in `limits`, then pingora's session and body buffers), so
        // pingora's default 64 KiB buffer only added a copy of every byte read and memory to
        // each open connection. TLS listeners keep it: rustls reads in small records.
        listeners.add_listener(
            pingora_core::listeners::ListenerConfig::tcp(addr.to_string())
                .l4_buffer(pingora_core::listeners::L4BufferSettings::default().read(0)),
        );
    }
    add_tls_listeners(&mut listeners, &config, &shared)?;
    let app = limits::LimitedApp::new(http, lifecycle.clone(), gate.clone(), limits, true);
    housekeeping.spawn(memory::housekeeping(gate.clone(), app.data_plane()));
    let mut proxy = ListeningService::with_listeners("fulcrum".into(), listeners, app);
    proxy.set_connection_filter(Arc::new(limits::GateFilter(gate)));
    server.add_service(Managed::new(proxy, Listener::Data, lifecycle.clone()));

    let mut admin = ListeningService::with_listeners(
        "fulcrum-admin".into(),
        Listeners::tcp(&config.admin.listen.to_string()),
        admin::AdminApp::new(shared, reload_tx, config.admin.listen),
    );
    admin.threads = Some(1);
    server.add_service(Managed::new(admin, Listener::Admin, lifecycle.clone()));

    // With `--upgrade` this waits until the running process sends its listening sockets.
    server.bootstrap();
    log::info!(
        "fulcrum {} proxying on {:?} and TLS {:?}, admin on http://{}",
        env!("CARGO_PKG_VERSION"),
        config.server.listen,
        config.server.tls_listen,
        config.admin.listen
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals(lifecycle)),
    });
    Ok(())
}

/// Raise the soft open-file limit to the hard one and size the client-connection cap to it,
/// saying so in the log.
fn connection_budget(config: &Config) -> limits::ConnectionBudget {
    let backends = config.pools.iter().map(|p| p.backends.len()).sum();
    let open_files = match limits::raise_open_file_limit() {
        Ok(l) => {
            if l.soft > l.before {
                log::info!(
                    "open-file limit raised from {} to {} (the hard limit is {})",
                    l.before,
                    l.soft,
                    l.hard
                );
            }
            l.soft
        }
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}");
            limits::open_file_limit().map(|l| l.soft).unwrap_or(1024)
        }
    };
    let budget = limits::ConnectionBudget::new(&config.server.limits, backends, open_files);
    if let Some(w) = budget.warning() {
        log::warn!("{w}");
    }
    log::info!(
        "accepting up to {} client connections at once ({} open files, {} in reserve)",
        budget.effective,
        budget.open_files,
        budget.reserve
    );
    budget
}

/// One pingora TLS listener per `tls_listen` address: HTTP/2 and HTTP/1.1 by ALPN, the
/// certificate chosen by SNI from the live set, the oldest version held by the ClientHello check.
fn add_tls_listeners(
    listeners: &mut Listeners,
    config: &Config,
    shared: &Arc<Shared>,
) -> Result<(), StartError> {
    if config.server.tls_listen.is_empty() {
        return Ok(());
    }
    // rustls needs a process-wide crypto provider; pingora's is `ring`.
    pingora_rustls::install_default_crypto_provider();
    let edge = tls::EdgeTls::new(config);
    for addr in &config.server.tls_listen {
        let mut settings =
            TlsSettings::with_callbacks(Box::new(edge.recorder(*addr))).map_err(|e| {
                StartError::TlsListener {
                    addr: *addr,
                    message: e.to_string(),
                }
            })?;
        settings.set_cert_resolver(Arc::new(tls::SniResolver::new(shared.certificates.clone())));
        settings.enable_h2();
        listeners.add_tls_with_settings(&addr.to_string(), None, settings);
    }
    listeners.set_pre_tls_callback(Arc::new(edge.client_hello_check()));
    Ok(())
}

/// The admin thread: health checks, DNS discovery, and configuration reloads asked for by
/// `SIGHUP` or the admin API, one at a time.
async fn admin_main(
    shared: Arc<Shared>,
    reload_tx: mpsc::Sender<admin::ReloadRequest>,
    mut reload_rx: mpsc::Receiver<admin::ReloadRequest>,
) {
    let mut health_tasks = JoinSet::new();
    health::spawn_all(&shared.upstreams.load_full(), &mut health_tasks);
    let (dns_changed, mut dns_changes) = mpsc::channel::<()>(1);
    let mut dns_tasks = JoinSet::new();
    discovery::spawn_all(
        &shared.config.load(),
        &shared.discovered,
        &dns_changed,
        &mut dns_tasks,
    );

    // SIGHUP asks for a reload, as with nginx and HAProxy.
    let sighup_tx = reload_tx;
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if sighup_tx.send(tx).await.is_err() {
                return;
            }
            let _ = rx.await;
        }
    });

    loop {
        let reply = tokio::select! {
            reply = reload_rx.recv() => match reply {
                Some(reply) => reply,
                None => return,
            },
            Some(()) = dns_changes.recv() => {
                apply_discovered(&shared, &mut health_tasks);
                continue;
            }
        };
        let result = reload(&shared, &mut health_tasks);
        if result.is_ok() {
            // The names, their refresh and the nameserver may have changed.
            dns_tasks.abort_all();
            discovery::spawn_all(
                &shared.config.load(),
                &shared.discovered,
                &dns_changed,
                &mut dns_tasks,
            );
        }
        let label = if result.is_ok() { "ok" } else { "error" };
        ::metrics::counter!(metrics::CONFIG_RELOADS_TOTAL, "result" => label).increment(1);
        metrics::record_config_load(result.is_ok());
        match &result {
            Ok(msg) => log::info!("{}", msg.trim_end()),
            Err(msg) => log::error!(
                "configuration reload refused, the running configuration stays:\n{}",
                msg.trim_end()
            ),
        }
        let _ = reply.send(result);
    }
}

/// Re-read and validate the configuration; swap it in only when it is valid.
fn reload(shared: &Shared, health_tasks: &mut JoinSet<()>) -> Result<String, String> {
    let path = match &shared.source {
        ConfigSource::Embedded => {
            return Err("running on the embedded configuration; nothing to reload\n".into())
        }
        ConfigSource::File(p) => p,
    };
    let (mut config, warnings) = fulcrum_config::load(path).map_err(|d| d.to_string())?;
    shared.discovered.expand(&mut config);
    let old = shared.config.load();
    let mut notes = String::new();
    for w in &warnings {
        notes.push_str(&format!("{w}\n"));
    }
    // The admin token and protect_metrics apply from the next request; the sockets do not move.
    if old.server.restart_needed_for(&config.server) || config.admin.listen != old.admin.listen {
        notes.push_str(
            "note: changes to the listeners, tls_min_version, threads, grace_period_s, the \
             client limits (max_connections, *_timeout_ms, max_*_bytes) and admin.listen take \
             effect on restart\n",
        );
    }
    // Certificates are checked by the parse above; new handshakes get them from the next one,
    // while connections already open keep the certificate they were made with.
    let certificates = CertificateSet::from_config(&config)?;
    let upstreams = Arc::new(shared.builder.build(&config, Some(&old)));
    health_tasks.abort_all();
    health::spawn_all(&upstreams, health_tasks);
    // Configuration first: a reader that sees the new upstreams then sees their configuration.
    shared.config.store(Arc::new(config));
    shared.upstreams.store(upstreams);
    shared.certificates.store(Arc::new(certificates));
    Ok(format!(
        "configuration reloaded from {}\n{notes}",
        path.display()
    ))
}

/// Rebuild the upstreams with the addresses DNS discovery found now, through the same builder
/// as a reload: added backends start afresh (slow start included), removed ones get no new
/// request. Nothing happens when no pool's backends changed.
fn apply_discovered(shared: &Shared, health_tasks: &mut JoinSet<()>) {
    let old = shared.config.load_full();
    let mut config = Config::clone(&old);
    shared.discovered.expand(&mut config);
    let changed: Vec<&str> = config
        .pools
        .iter()
        .zip(&old.pools)
        .filter(|(new, old)| new.backends != old.backends)
        .map(|(new, _)| new.name.as_str())
        .collect();
    if changed.is_empty() {
        return;
    }
    log::info!("DNS discovery changed the backends of pools {changed:?}");
    let upstreams = Arc::new(shared.builder.build(&config, Some(&old)));
    health_tasks.abort_all();
    health::spawn_all(&upstreams, health_tasks);
    shared.config.store(Arc::new(config));
    shared.upstreams.store(upstreams);
}
