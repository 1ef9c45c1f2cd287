//! TLS at the edge: the certificates chosen by SNI (a snapshot swapped whole on reload, so new
//! handshakes get new certificates while open connections keep theirs), the ClientHello check
//! that holds the oldest TLS version, the handshake metrics, and the TLS clients that reach a
//! pool's backends.
//!
//! How it plugs into pingora's rustls listener: [`SniResolver`] is the listener's
//! `ResolvesServerCert` and reads the live [`CertificateSet`] on every handshake;
//! [`ClientHelloCheck`] is the listener's pre-TLS hook, which reads the first record of a
//! connection, refuses a client that offers no version we accept (with a `protocol_version`
//! alert, before rustls runs) and hands the bytes back; [`HandshakeRecorder`] is the listener's
//! post-handshake callback and counts completed handshakes by version. Failures rustls itself
//! finds in the middle of a handshake (a client refusing our certificate, say) reach no hook of
//! pingora 0.9.1: it logs them with the client's address. The process logger hands those
//! records to [`handshake_failure_logged`], which finds the listener from the address the
//! ClientHello check noted and counts the failure by reason.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use fulcrum_config::tls::KeyPair;
use fulcrum_config::{Config, PoolTlsConfig, TlsVersion};
use metrics::Counter;
use pingora_core::listeners::{PreTlsProcess, TlsAccept};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::GetSocketDigest;
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use pingora_error::{Error, ErrorType, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Completed TLS handshakes, by listener and version.
pub const HANDSHAKES_TOTAL: &str = "fulcrum_tls_handshakes_total";
/// TLS handshakes refused, by listener and reason.
pub const HANDSHAKE_FAILURES_TOTAL: &str = "fulcrum_tls_handshake_failures_total";
/// When each served certificate stops being valid, in Unix seconds.
pub const CERTIFICATE_NOT_AFTER_SECONDS: &str = "fulcrum_tls_certificate_not_after_seconds";

/// The certificates of the TLS listeners, indexed by the names they serve.
#[derive(Debug, Default)]
pub struct CertificateSet {
    pairs: Vec<KeyPair>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is kept under `example.com`: it serves exactly one label more.
    wildcard: HashMap<String, usize>,
}

impl CertificateSet {
    /// Index `pairs`; a name served by two certificates goes to the first one, which is also
    /// the default for clients that send no name or one no certificate serves.
    pub fn new(pairs: Vec<KeyPair>) -> Self {
        let mut set = CertificateSet {
            pairs,
            ..CertificateSet::default()
        };
        for (i, pair) in set.pairs.iter().enumerate() {
            for name in pair.names() {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut set.wildcard, parent),
                    None => (&mut set.exact, name.as_str()),
                };
                map.entry(key.to_string()).or_insert(i);
            }
        }
        set
    }

    /// The certificates of a validated configuration, in configuration order. A configuration
    /// built in code without its files read gets them read here, by the same rules.
    pub fn from_config(config: &Config) -> std::result::Result<Self, String> {
        let mut pairs = Vec::new();
        for c in &config.server.certificates {
            let pair = match &c.pair {
                Some(p) => p.clone(),
                None => {
                    fulcrum_config::tls::load_key_pair(
                        &c.cert,
                        &c.key,
                        fulcrum_config::tls::unix_now(),
                    )
                    .map_err(|problems| {
                        let all: Vec<String> = problems.into_iter().map(|p| p.message).collect();
                        all.join("; ")
                    })?
                    .0
                }
            };
            pairs.push(pair);
        }
        Ok(CertificateSet::new(pairs))
    }

    /// The certificate for a client that asked for `server_name` (lowercase).
    pub fn choose(&self, server_name: Option<&str>) -> Option<&KeyPair> {
        let index = server_name.and_then(|name| {
            self.exact.get(name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        self.pairs.get(index.copied().unwrap_or(0))
    }

    /// `fulcrum_tls_certificate_not_after_seconds` for every certificate, with its help and
    /// type lines; empty when there is no certificate.
    pub fn render_not_after(&self) -> String {
        let mut out = String::new();
        if self.pairs.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "# HELP {CERTIFICATE_NOT_AFTER_SECONDS} When a served certificate stops being valid, in Unix seconds, by its first DNS name."
        );
        let _ = writeln!(out, "# TYPE {CERTIFICATE_NOT_AFTER_SECONDS} gauge");
        let mut seen = std::collections::HashSet::new();
        for pair in &self.pairs {
            let name = pair.label();
            // One series per name: the certificate that serves it.
            if seen.insert(name) {
                let _ = writeln!(
                    out,
                    "{CERTIFICATE_NOT_AFTER_SECONDS}{{name=\"{}\"}} {}",
                    crate::metrics::escape_label(name),
                    pair.not_after()
                );
            }
        }
        out
    }
}

/// Picks the certificate of every handshake from the live [`CertificateSet`].
#[derive(Debug)]
pub struct SniResolver {
    certificates: Arc<ArcSwap<CertificateSet>>,
}

impl SniResolver {
    /// A resolver reading `certificates`, which a reload replaces.
    pub fn new(certificates: Arc<ArcSwap<CertificateSet>>) -> Self {
        SniResolver { certificates }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.certificates.load();
        set.choose(hello.server_name())
            .map(|p| p.certified_key().clone())
    }
}

/// Why a handshake failed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client offers no TLS version we accept.
    ProtocolVersion,
    /// The client does not trust the issuer of our certificate (its `unknown_ca` alert).
    UnknownCa,
    /// The client refused our certificate itself: wrong name, expired, unsupported, revoked.
    BadCertificate,
    /// The handshake did not finish within pingora's 60 s.
    Timeout,
    /// Anything else, including bytes that are not TLS at all.
    Other,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::ProtocolVersion,
        Refusal::UnknownCa,
        Refusal::BadCertificate,
        Refusal::Timeout,
        Refusal::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::ProtocolVersion => "protocol_version",
            Refusal::UnknownCa => "unknown_ca",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::Timeout => "timeout",
            Refusal::Other => "other",
        }
    }
}

/// The metric handles of one TLS listener.
#[derive(Debug)]
struct ListenerMetrics {
    tls12: Counter,
    tls13: Counter,
    /// One counter per [`Refusal`], in [`Refusal::ALL`] order.
    refused: [Counter; 5],
}

impl ListenerMetrics {
    fn register(listener: &str) -> Self {
        let l = listener.to_string();
        ListenerMetrics {
            tls12: metrics::counter!(HANDSHAKES_TOTAL, "listener" => l.clone(), "version" => "1.2"),
            tls13: metrics::counter!(HANDSHAKES_TOTAL, "listener" => l.clone(), "version" => "1.3"),
            refused: Refusal::ALL.map(|r| {
                metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "listener" => l.clone(), "reason" => r.label())
            }),
        }
    }

    fn refused(&self, why: Refusal) {
        self.refused[why as usize].increment(1);
    }
}

/// The TLS listeners of the process, and the listener of each recent handshake by the client's
/// address, so that a failure pingora reports only by that address is counted where it belongs.
#[derive(Debug)]
struct Attribution {
    listeners: Vec<(SocketAddr, Arc<ListenerMetrics>)>,
    /// Recent handshakes, overwritten in turn: the client address's hash with its low 16 bits
    /// replaced by the listener's index + 1 (0 = empty). Lock-free, so noting a handshake costs
    /// one atomic add and one store; a lookup scans the ring, which happens only on a failure.
    recent: Box<[AtomicU64]>,
    next: AtomicUsize,
}

/// How many handshakes under way [`Attribution`] remembers.
const RECENT_HANDSHAKES: usize = 4096;

/// The attribution of the running process, set when its TLS listeners are built.
static ATTRIBUTION: ArcSwapOption<Attribution> = ArcSwapOption::const_empty();

/// Failures whose listener is no longer known: several listeners, and the handshake was
/// overwritten in the ring by newer ones, or pingora did not print the client's address.
fn unattributed() -> &'static ListenerMetrics {
    static UNKNOWN: std::sync::OnceLock<ListenerMetrics> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| ListenerMetrics::register("unknown"))
}

impl Attribution {
    fn new(listeners: Vec<(SocketAddr, Arc<ListenerMetrics>)>) -> Self {
        Attribution {
            listeners,
            recent: (0..RECENT_HANDSHAKES).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The ring's key of a client address as pingora prints it (`ip:port`).
    fn key(peer: &str) -> u64 {
        BuildHasherDefault::<DefaultHasher>::default().hash_one(peer) & !0xffff
    }

    /// The listener that accepted a connection to `local`: exact, else a wildcard on its port.
    fn index_of(&self, local: SocketAddr) -> Option<usize> {
        self.listeners
            .iter()
            .position(|(a, _)| *a == local)
            .or_else(|| {
                self.listeners
                    .iter()
                    .position(|(a, _)| a.port() == local.port() && a.ip().is_unspecified())
            })
    }

    fn metrics(&self, index: usize) -> &ListenerMetrics {
        &self.listeners[index].1
    }

    /// Note that `listener` is handshaking with `peer`. Only needed with several listeners.
    fn note(&self, peer: SocketAddr, listener: usize) {
        if self.listeners.len() < 2 {
            return;
        }
        let slot = self.next.fetch_add(1, Relaxed) % self.recent.len();
        let tag = (listener as u64 + 1) & 0xffff;
        self.recent[slot].store(Self::key(&peer.to_string()) | tag, Relaxed);
    }

    /// The metrics of the listener that accepted `peer` (as pingora prints it), if known.
    fn metrics_of(&self, peer: Option<&str>) -> &ListenerMetrics {
        if let [(_, only)] = self.listeners.as_slice() {
            return only;
        }
        let Some(peer) = peer else {
            return unattributed();
        };
        let key = Self::key(peer);
        self.recent
            .iter()
            .map(|slot| slot.load(Relaxed))
            .find(|v| *v != 0 && v & !0xffff == key)
            .and_then(|v| self.listeners.get((v & 0xffff) as usize - 1))
            .map_or_else(|| unattributed(), |(_, m)| m.as_ref())
    }
}

/// Start of pingora's log message for a failed downstream handshake; the client's address and
/// the error follow.
const HANDSHAKE_FAILED: &str = "Downstream handshake error from ";
/// The same, when pingora does not know the client's address.
const HANDSHAKE_FAILED_NO_PEER: &str = "Downstream handshake error: ";
/// pingora's log message when a downstream handshake outlasts its 60 s.
const HANDSHAKE_TIMED_OUT: &str = "Downstream handshake timeout";
/// The ClientHello check's own error, already counted when it was raised.
const NO_SHARED_VERSION: &str = "client offers no TLS version";
/// The ClientHello check's error for a client that left before a full ClientHello.
const CLOSED_BEFORE_HELLO: &str = "closed before a ClientHello";

/// Whether `message` is pingora's log record of a failed downstream TLS handshake; if so, the
/// failure is counted in `fulcrum_tls_handshake_failures_total` under its listener and reason.
/// The process logger calls this for pingora's error records: a client failing its handshake
/// is routine at an edge and is reported by the metric, not by an error line.
pub fn handshake_failure_logged(message: &str) -> bool {
    let (peer, reason) = if let Some(rest) = message.strip_prefix(HANDSHAKE_FAILED) {
        match rest.split_once(": ") {
            Some((peer, error)) => (Some(peer), failure_reason(error)),
            None => (None, failure_reason(rest)),
        }
    } else if let Some(error) = message.strip_prefix(HANDSHAKE_FAILED_NO_PEER) {
        (None, failure_reason(error))
    } else if message.starts_with(HANDSHAKE_TIMED_OUT) {
        (None, Some(Refusal::Timeout))
    } else {
        return false;
    };
    if let (Some(reason), Some(attribution)) = (reason, ATTRIBUTION.load().as_ref()) {
        attribution.metrics_of(peer).refused(reason);
    }
    true
}

/// The reason a handshake failed, from the error pingora reports; `None` when there is nothing
/// more to count (the ClientHello check counted it already, or the client left before it sent
/// a ClientHello).
fn failure_reason(error: &str) -> Option<Refusal> {
    if error.contains(NO_SHARED_VERSION) || error.contains(CLOSED_BEFORE_HELLO) {
        return None;
    }
    // rustls prints an alert from the client as `received fatal alert: UnknownCA`.
    let Some((_, alert)) = error.split_once("received fatal alert: ") else {
        // rustls: `peer is incompatible: SupportedVersionsExtensionRequired`, `Tls12NotOffered`…
        let incompatible_version = error
            .split_once("peer is incompatible: ")
            .is_some_and(|(_, why)| why.contains("Version") || why.contains("NotOffered"));
        return Some(if incompatible_version {
            Refusal::ProtocolVersion
        } else {
            Refusal::Other
        });
    };
    let alert = alert
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    Some(match alert {
        "UnknownCA" => Refusal::UnknownCa,
        "BadCertificate"
        | "CertificateUnknown"
        | "UnsupportedCertificate"
        | "CertificateExpired"
        | "CertificateRevoked"
        | "BadCertificateStatusResponse" => Refusal::BadCertificate,
        "ProtocolVersion" => Refusal::ProtocolVersion,
        _ => Refusal::Other,
    })
}

/// Describe the TLS metrics; call once after the recorder is installed.
pub fn describe_metrics() {
    metrics::describe_counter!(
        HANDSHAKES_TOTAL,
        "Completed TLS handshakes, by listener and TLS version."
    );
    metrics::describe_counter!(
        HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed, by listener and reason: protocol_version (no TLS version in common), unknown_ca and bad_certificate (the client refused our certificate), timeout, other (not TLS, or any other failure)."
    );
}

/// Counts completed handshakes of one TLS listener by version (pingora's post-handshake hook).
pub struct HandshakeRecorder {
    metrics: Arc<ListenerMetrics>,
}

#[async_trait]
impl TlsAccept for HandshakeRecorder {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        match tls.version() {
            Some("TLSv1_3") => self.metrics.tls13.increment(1),
            Some("TLSv1_2") => self.metrics.tls12.increment(1),
            _ => {}
        }
        None
    }
}

/// The TLS side of the data plane: one recorder per TLS listener and the ClientHello check
/// they share.
pub struct EdgeTls {
    attribution: Arc<Attribution>,
    min_version: TlsVersion,
}

impl EdgeTls {
    /// Register the metrics of every TLS listener of `config` (exported at 0 from the start),
    /// and make them the ones [`handshake_failure_logged`] counts into.
    pub fn new(config: &Config) -> Self {
        let listeners = config
            .server
            .tls_listen
            .iter()
            .map(|a| (*a, Arc::new(ListenerMetrics::register(&a.to_string()))))
            .collect();
        let attribution = Arc::new(Attribution::new(listeners));
        ATTRIBUTION.store(Some(attribution.clone()));
        EdgeTls {
            attribution,
            min_version: config.server.tls_min_version,
        }
    }

    /// The post-handshake callback of the listener on `addr`.
    pub fn recorder(&self, addr: SocketAddr) -> HandshakeRecorder {
        let metrics = self
            .attribution
            .listeners
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| Arc::new(ListenerMetrics::register(&addr.to_string())));
        HandshakeRecorder { metrics }
    }

    /// The pre-handshake check shared by every TLS listener.
    pub fn client_hello_check(&self) -> ClientHelloCheck {
        ClientHelloCheck {
            attribution: self.attribution.clone(),
            min_version: self.min_version,
        }
    }
}

/// Refuses, before rustls runs, a client whose ClientHello offers no TLS version we accept.
///
/// rustls already never speaks TLS 1.0 or 1.1; the check adds `tls_min_version = "1.3"`
/// (rustls takes one version set for all listeners from pingora) and counts the refusals.
pub struct ClientHelloCheck {
    attribution: Arc<Attribution>,
    min_version: TlsVersion,
}

/// The largest record a ClientHello may come in (2^14 plus room for padding).
const MAX_RECORD: usize = 16_384 + 2_048;
/// The fatal `protocol_version` alert in a TLS record.
const PROTOCOL_VERSION_ALERT: [u8; 7] = [21, 3, 1, 0, 2, 2, 70];

impl ClientHelloCheck {
    fn wire_minimum(&self) -> u16 {
        match self.min_version {
            TlsVersion::Tls12 => 0x0303,
            TlsVersion::Tls13 => 0x0304,
        }
    }
}

#[async_trait]
impl PreTlsProcess for ClientHelloCheck {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let listener = local.and_then(|l| self.attribution.index_of(l));
        if let (Some(index), Some(peer)) = (
            listener,
            digest.and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied()),
        ) {
            self.attribution.note(peer, index);
        }
        let mut record = vec![0u8; 5];
        if stream.read_exact(&mut record).await.is_err() {
            // Gone before saying anything: not a handshake attempt, nothing to count.
            return Error::e_explain(ErrorType::ConnectionClosed, "closed before a ClientHello");
        }
        let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        let verdict = if record[0] != 22 || len > MAX_RECORD {
            Some(Refusal::Other)
        } else {
            record.resize(5 + len, 0);
            if stream.read_exact(&mut record[5..]).await.is_err() {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "closed inside a ClientHello",
                );
            }
            match highest_offered_version(&record[5..]) {
                Some(v) if v < self.wire_minimum() => Some(Refusal::ProtocolVersion),
                _ => None,
            }
        };
        match verdict {
            Some(Refusal::ProtocolVersion) => {
                if let Some(i) = listener {
                    self.attribution
                        .metrics(i)
                        .refused(Refusal::ProtocolVersion);
                }
                let _ = stream.write_all(&PROTOCOL_VERSION_ALERT).await;
                let _ = stream.flush().await;
                Error::e_explain(
                    ErrorType::HandshakeError,
                    format!(
                        "client offers no TLS version at or above {}",
                        self.min_version
                    ),
                )
            }
            // Not TLS: rustls refuses it, and its failure is counted from pingora's report.
            _ => {
                stream.rewind(&record);
                Ok(())
            }
        }
    }
}

/// The highest TLS version a ClientHello handshake message offers (`0x0303` = 1.2,
/// `0x0304` = 1.3): the largest of its `supported_versions`, else its `legacy_version`.
/// `None` when the message is cut short or is no ClientHello: rustls then judges it.
fn highest_offered_version(msg: &[u8]) -> Option<u16> {
    fn u16_at(b: &[u8], i: usize) -> Option<u16> {
        Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
    }
    if *msg.first()? != 1 {
        return None;
    }
    let len = (usize::from(*msg.get(1)?) << 16)
        | (usize::from(*msg.get(2)?) << 8)
        | usize::from(*msg.get(3)?);
    let hello = msg.get(4..4 + len)?;
    let legacy = u16_at(hello, 0)?;
    let mut pos = 2 + 32;
    pos += 1 + usize::from(*hello.get(pos)?);
    pos += 2 + usize::from(u16_at(hello, pos)?);
    pos += 1 + usize::from(*hello.get(pos)?);
    if pos == hello.len() {
        return Some(legacy);
    }
    let end = pos + 2 + usize::from(u16_at(hello, pos)?);
    let extensions = hello.get(pos + 2..end)?;
    let mut at = 0;
    while at + 4 <= extensions.len() {
        let kind = u16_at(extensions, at)?;
        let size = usize::from(u16_at(extensions, at + 2)?);
        let data = extensions.get(at + 4..at + 4 + size)?;
        if kind == 43 {
            let list = data.get(1..1 + usize::from(*data.first()?))?;
            return list
                .chunks_exact(2)
                .map(|v| u16::from_be_bytes([v[0], v[1]]))
                // GREASE values (0x?a?a) are no versions.
                .filter(|v| v & 0x0f0f != 0x0a0a)
                .max()
                .or(Some(0));
        }
        at += 4 + size;
    }
    Some(legacy)
}

/// What a pool's peers need to speak TLS to its backends, shared by every backend's peer.
pub struct UpstreamTls {
    /// The trust anchors of `ca_file`, in pingora's form.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// The client certificate and key of `client_cert`/`client_key`.
    pub client: Option<Arc<CertKey>>,
    /// The client that health checks of the pool use.
    pub probe: Arc<rustls::ClientConfig>,
}

impl UpstreamTls {
    /// Build from a validated `[pools.NAME.tls]`.
    pub fn new(cfg: &PoolTlsConfig) -> Self {
        let ca = cfg.ca.as_ref().map(|bundle| {
            let certs: Vec<WrappedX509> = bundle
                .certificates()
                .iter()
                .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
                .collect();
            Arc::<[WrappedX509]>::from(certs)
        });
        let client = cfg.client.as_ref().map(|pair| {
            Arc::new(CertKey::new(
                pair.chain().iter().map(|c| c.to_vec()).collect(),
                pair.key_der().secret_der().to_vec(),
            ))
        });
        UpstreamTls {
            ca,
            client,
            probe: Arc::new(probe_client(cfg)),
        }
    }
}

/// The server name a backend at `addr` is asked for and checked against.
pub fn backend_server_name(cfg: &PoolTlsConfig, addr: SocketAddr) -> String {
    cfg.sni.clone().unwrap_or_else(|| addr.ip().to_string())
}

/// A rustls client that checks backends as the data plane does: against `ca_file` or the
/// system's roots, unless `verify = false`; presenting the client certificate when set.
fn probe_client(cfg: &PoolTlsConfig) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .expect("the ring provider supports the default TLS versions");
    let builder = if cfg.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.ca {
            Some(bundle) => {
                let (_, ignored) = roots.add_parsable_certificates(bundle.certificates().to_vec());
                debug_assert_eq!(ignored, 0, "ca_file was checked when it was read");
            }
            None => {
                if let Err(e) = pingora_rustls::load_platform_certs_incl_env_into_store(&mut roots)
                {
                    log::warn!("cannot read the system's CA certificates for health checks: {e}");
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    match &cfg.client {
        Some(pair) => {
            let chain = pair.chain().to_vec();
            match builder.with_client_auth_cert(chain, pair.key_der().clone_key()) {
                Ok(config) => config,
                Err(e) => {
                    // The pair was checked when it was read; this is not expected.
                    log::error!("health checks cannot present the client certificate: {e}");
                    probe_client(&PoolTlsConfig {
                        client: None,
                        ..cfg.clone()
                    })
                }
            }
        }
        None => builder.with_no_client_auth(),
    }
}

/// `verify = false`: any certificate is taken, but handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_are_told_apart_by_the_alert_the_client_sent() {
        let accept = "TLSHandshakeFailure context: TLS accept() failed: ";
        let cases = [
            ("received fatal alert: UnknownCA", Some(Refusal::UnknownCa)),
            (
                "received fatal alert: BadCertificate",
                Some(Refusal::BadCertificate),
            ),
            (
                "received fatal alert: CertificateUnknown",
                Some(Refusal::BadCertificate),
            ),
            (
                "received fatal alert: CertificateExpired",
                Some(Refusal::BadCertificate),
            ),
            (
                "received fatal alert: ProtocolVersion",
                Some(Refusal::ProtocolVersion),
            ),
            ("received fatal alert: DecryptError", Some(Refusal::Other)),
            (
                "peer is incompatible: SupportedVersionsExtensionRequired",
                Some(Refusal::ProtocolVersion),
            ),
            (
                "peer is incompatible: Tls12NotOffered",
                Some(Refusal::ProtocolVersion),
            ),
            (
                "peer is incompatible: NoCipherSuitesInCommon",
                Some(Refusal::Other),
            ),
            (
                "received corrupt message of type InvalidContentType",
                Some(Refusal::Other),
            ),
        ];
        for (error, want) in cases {
            assert_eq!(failure_reason(&format!("{accept}{error}")), want, "{error}");
        }
        // Counted by the ClientHello check already, or no handshake at all.
        assert_eq!(
            failure_reason("HandshakeError context: client offers no TLS version at or above 1.3"),
            None
        );
        assert_eq!(
            failure_reason("ConnectionClosed context: closed before a ClientHello"),
            None
        );
        assert!(handshake_failure_logged(
            "Downstream handshake error from 127.0.0.1:4000: TLSHandshakeFailure"
        ));
        assert!(handshake_failure_logged("Downstream handshake timeout"));
        assert!(!handshake_failure_logged(
            "Accept() failed Too many open files"
        ));
    }

    #[test]
    fn with_several_listeners_a_failure_is_counted_where_its_handshake_was_accepted() {
        let a: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let b: SocketAddr = "0.0.0.0:9443".parse().unwrap();
        let attribution = Attribution::new(vec![
            (a, Arc::new(ListenerMetrics::register("a"))),
            (b, Arc::new(ListenerMetrics::register("b"))),
        ]);
        assert_eq!(attribution.index_of(a), Some(0));
        assert_eq!(
            attribution.index_of("10.0.0.1:9443".parse().unwrap()),
            Some(1)
        );
        assert_eq!(attribution.index_of("127.0.0.1:1".parse().unwrap()), None);
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        attribution.note(peer, 1);
        let found = attribution.metrics_of(Some("127.0.0.1:50000"));
        assert!(std::ptr::eq(found, attribution.metrics(1)));
        // Overwritten by newer handshakes, or never seen: counted as unknown.
        for port in 0..RECENT_HANDSHAKES as u16 {
            attribution.note(SocketAddr::from(([10, 0, 0, 1], port)), 0);
        }
        assert!(std::ptr::eq(
            attribution.metrics_of(Some("127.0.0.1:50000")),
            unattributed()
        ));
        assert!(std::ptr::eq(attribution.metrics_of(None), unattributed()));
    }

    /// A ClientHello handshake message offering `legacy` and, when given, `supported_versions`.
    fn client_hello(legacy: u16, versions: Option<&[u16]>) -> Vec<u8> {
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend([0u8; 32]);
        body.push(0); // no session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut exts = Vec::new();
        exts.extend([0, 0, 0, 0]); // an empty server_name extension first
        if let Some(vs) = versions {
            let list: Vec<u8> = vs.iter().flat_map(|v| v.to_be_bytes()).collect();
            exts.extend(43u16.to_be_bytes());
            exts.extend(((list.len() + 1) as u16).to_be_bytes());
            exts.push(list.len() as u8);
            exts.extend(list);
        }
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![1];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    #[test]
    fn the_highest_offered_version_is_read() {
        let both = client_hello(0x0303, Some(&[0x0a0a, 0x0304, 0x0303]));
        assert_eq!(highest_offered_version(&both), Some(0x0304));
        let tls12 = client_hello(0x0303, None);
        assert_eq!(highest_offered_version(&tls12), Some(0x0303));
        let tls10 = client_hello(0x0301, None);
        assert_eq!(highest_offered_version(&tls10), Some(0x0301));
        let old_list = client_hello(0x0303, Some(&[0x0302, 0x0301]));
        assert_eq!(highest_offered_version(&old_list), Some(0x0302));
        let grease_only = client_hello(0x0303, Some(&[0x1a1a]));
        assert_eq!(highest_offered_version(&grease_only), Some(0));
        // Cut short or not a ClientHello: no judgement.
        assert_eq!(highest_offered_version(&both[..both.len() - 3]), None);
        assert_eq!(highest_offered_version(&[2, 0, 0, 0]), None);
        assert_eq!(highest_offered_version(&[]), None);
    }
}
