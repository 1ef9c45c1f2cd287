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
//! pingora 0.9.1 (it only logs them), so they are not counted.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
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

/// Why a handshake was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client offers no TLS version we accept.
    ProtocolVersion,
    /// The first bytes are not a TLS ClientHello at all.
    Other,
}

/// The metric handles of one TLS listener.
#[derive(Debug)]
struct ListenerMetrics {
    tls12: Counter,
    tls13: Counter,
    protocol_version: Counter,
    other: Counter,
}

impl ListenerMetrics {
    fn register(listener: &str) -> Self {
        let l = listener.to_string();
        ListenerMetrics {
            tls12: metrics::counter!(HANDSHAKES_TOTAL, "listener" => l.clone(), "version" => "1.2"),
            tls13: metrics::counter!(HANDSHAKES_TOTAL, "listener" => l.clone(), "version" => "1.3"),
            protocol_version: metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "listener" => l.clone(), "reason" => "protocol_version"),
            other: metrics::counter!(HANDSHAKE_FAILURES_TOTAL, "listener" => l, "reason" => "other"),
        }
    }

    fn refused(&self, why: Refusal) {
        match why {
            Refusal::ProtocolVersion => self.protocol_version.increment(1),
            Refusal::Other => self.other.increment(1),
        }
    }
}

/// Describe the TLS metrics; call once after the recorder is installed.
pub fn describe_metrics() {
    metrics::describe_counter!(
        HANDSHAKES_TOTAL,
        "Completed TLS handshakes, by listener and TLS version."
    );
    metrics::describe_counter!(
        HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes refused before they began, by listener and reason: protocol_version (no TLS version in common), other (not a TLS ClientHello)."
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
    listeners: Vec<(SocketAddr, Arc<ListenerMetrics>)>,
    min_version: TlsVersion,
}

impl EdgeTls {
    /// Register the metrics of every TLS listener of `config` (exported at 0 from the start).
    pub fn new(config: &Config) -> Self {
        EdgeTls {
            listeners: config
                .server
                .tls_listen
                .iter()
                .map(|a| (*a, Arc::new(ListenerMetrics::register(&a.to_string()))))
                .collect(),
            min_version: config.server.tls_min_version,
        }
    }

    /// The post-handshake callback of the listener on `addr`.
    pub fn recorder(&self, addr: SocketAddr) -> HandshakeRecorder {
        let metrics = self
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
            listeners: self.listeners.clone(),
            min_version: self.min_version,
        }
    }
}

/// Refuses, before rustls runs, a client whose ClientHello offers no TLS version we accept.
///
/// rustls already never speaks TLS 1.0 or 1.1; the check adds `tls_min_version = "1.3"`
/// (rustls takes one version set for all listeners from pingora) and counts the refusals.
pub struct ClientHelloCheck {
    listeners: Vec<(SocketAddr, Arc<ListenerMetrics>)>,
    min_version: TlsVersion,
}

/// The largest record a ClientHello may come in (2^14 plus room for padding).
const MAX_RECORD: usize = 16_384 + 2_048;
/// The fatal `protocol_version` alert in a TLS record.
const PROTOCOL_VERSION_ALERT: [u8; 7] = [21, 3, 1, 0, 2, 2, 70];

impl ClientHelloCheck {
    /// The metrics of the listener that accepted a connection to `local`.
    fn metrics_for(&self, local: Option<SocketAddr>) -> Option<&ListenerMetrics> {
        let local = local?;
        self.listeners
            .iter()
            .find(|(a, _)| *a == local)
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|(a, _)| a.port() == local.port() && a.ip().is_unspecified())
            })
            .map(|(_, m)| m.as_ref())
    }

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
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
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
                if let Some(m) = self.metrics_for(local) {
                    m.refused(Refusal::ProtocolVersion);
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
            Some(Refusal::Other) => {
                if let Some(m) = self.metrics_for(local) {
                    m.refused(Refusal::Other);
                }
                // rustls answers it as it does any bytes that are not TLS.
                stream.rewind(&record);
                Ok(())
            }
            None => {
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
