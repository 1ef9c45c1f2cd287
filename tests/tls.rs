//! End-to-end tests of TLS: certificates made here (a local CA and leaves signed by it), the real
//! binary, real clients (curl, openssl s_client, nghttp, a rustls client) and real TLS backends on
//! loopback.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fulcrum_config::{CertificateConfig, PoolTlsConfig, TlsVersion};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A local certificate authority writing its certificates into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A leaf for `names` (DNS names or IP addresses) with common name `cn`, written as
    /// `stem.pem` and `stem.key`; returns the two paths.
    fn issue(&self, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.path(&format!("{stem}.pem")),
            self.path(&format!("{stem}.key")),
        );
        write_atomically(&c, cert.pem().as_bytes());
        write_atomically(&k, key.serialize_pem().as_bytes());
        (c, k)
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }
}

/// Replace `path` whole, as an operator's `mv` does, so a reload never reads half a file.
fn write_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn certificate(files: (PathBuf, PathBuf)) -> CertificateConfig {
    CertificateConfig {
        cert: files.0,
        key: files.1,
        pair: None,
    }
}

/// A loopback address that was free a moment ago, for a TLS listener.
fn free_addr() -> SocketAddr {
    let [port] = fulcrum_lab::harness::free_ports::<1>().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// fulcrum with pool `web` over `backends`, TLS on `tls` with `certs`, adjusted by `tweak`.
async fn start_tls(
    tls: SocketAddr,
    certs: Vec<CertificateConfig>,
    pool: PoolConfig,
    tweak: impl FnOnce(&mut Config),
) -> Fulcrum {
    let f = Fulcrum::start(move |p, a| {
        let mut c = single_pool(p, a, pool);
        c.server.tls_listen = vec![tls];
        c.server.certificates = certs;
        tweak(&mut c);
        c
    })
    .await;
    let up = eventually(Duration::from_secs(5), || async {
        TcpStream::connect(tls).await.is_ok()
    })
    .await;
    assert!(up.is_some(), "the TLS listener {tls} never accepted");
    f
}

/// Run a command to its end; its status, stdout and stderr.
async fn run(cmd: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} is required (scripts/setup.sh test installs it): {e}"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd} {args:?} did not finish"))
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subject of the certificate `openssl s_client` is served when it asks `tls` for
/// `server_name` (`None`: no SNI at all), with extra `args`; `None` if the handshake failed.
async fn served_subject(
    tls: SocketAddr,
    server_name: Option<&str>,
    args: &[&str],
) -> Option<String> {
    let connect = tls.to_string();
    let mut all = vec!["s_client", "-connect", connect.as_str()];
    match server_name {
        Some(name) => all.extend(["-servername", name]),
        None => all.push("-noservername"),
    }
    all.extend(args);
    let (ok, out, _) = run("openssl", &all, b"").await;
    if !ok {
        return None;
    }
    out.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(str::to_string)
}

/// A tiny keep-alive HTTP/1.1 origin, over TLS when given a rustls configuration. Every answer
/// is 200 and names the backend and the `X-Forwarded-Proto` it was sent.
struct Origin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    async fn start(name: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_http(stream, name).await,
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_http(s, name).await;
                            }
                        }
                    }
                });
            }
        });
        Origin { addr, task }
    }
}

/// Answer every request head on `stream` until the client closes it.
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, name: &str) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        buf.drain(..head_end);
        let proto = head
            .lines()
            .find_map(|l| l.strip_prefix("x-forwarded-proto:"))
            .map_or("none", str::trim)
            .to_string();
        let body = format!("{name}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {name}\r\nx-seen-proto: {proto}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A rustls server configuration serving `cert`/`key`, asking clients for a certificate that
/// chains to `client_ca` when given.
fn origin_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<CertificateDer<'static>>,
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

/// A TLS connection to fulcrum, trusting `ca`, asking for `server_name`, speaking HTTP/1.1.
struct TlsClient {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
}

impl TlsClient {
    async fn connect(tls: SocketAddr, server_name: &str, ca: CertificateDer<'static>) -> TlsClient {
        let stream = Self::handshake(tls, server_name, ca).await.unwrap();
        TlsClient { stream }
    }

    /// A TLS handshake with `tls` by a client trusting only `ca`.
    async fn handshake(
        tls: SocketAddr,
        server_name: &str,
        ca: CertificateDer<'static>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        Self::handshake_over(TcpStream::connect(tls).await?, server_name, ca).await
    }

    /// A TLS handshake over the connection `tcp` by a client trusting only `ca`.
    async fn handshake_over(
        tcp: TcpStream,
        server_name: &str,
        ca: CertificateDer<'static>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// The common name of the certificate the server presented.
    fn peer_subject(&self) -> String {
        let (_, conn) = self.stream.get_ref();
        let der = conn.peer_certificates().unwrap()[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.subject().to_string()
    }

    /// `GET path` on this connection: the status and the body.
    async fn get(&mut self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nhost: a.example\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed inside a body");
            buf.extend_from_slice(&chunk[..n]);
        }
        (
            status,
            String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
        )
    }
}

/// fulcrum terminating TLS in front of one cleartext origin, serving the certificates a fresh
/// CA issues for `(file stem, common name, names)`, in that order.
struct Edge {
    f: Fulcrum,
    tls: SocketAddr,
    files: Vec<(PathBuf, PathBuf)>,
    pki: Pki,
    origin: Origin,
}

impl Edge {
    async fn start(certs: &[(&str, &str, &[&str])], tweak: impl FnOnce(&mut Config)) -> Edge {
        let pki = Pki::new("fulcrum test CA");
        let files: Vec<(PathBuf, PathBuf)> = certs
            .iter()
            .map(|(stem, cn, names)| pki.issue(stem, cn, names))
            .collect();
        let origin = Origin::start("o1", None).await;
        let tls = free_addr();
        let served = files.iter().cloned().map(certificate).collect();
        let f = start_tls(tls, served, plain_pool(&[&origin]), tweak).await;
        Edge {
            f,
            tls,
            files,
            pki,
            origin,
        }
    }
}

/// Pool `web` over plain origins.
fn plain_pool(origins: &[&Origin]) -> PoolConfig {
    let addrs: Vec<(SocketAddr, u32)> = origins.iter().map(|o| (o.addr, 1)).collect();
    let mut p = pool("web", Algorithm::RoundRobin, &addrs);
    p.health_check.enabled = false;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_exact_wildcard_and_default_certificates() {
    let certs: [(&str, &str, &[&str]); 2] = [
        ("a", "a-cert", &["a.example"]),
        ("b", "wild-cert", &["*.b.example"]),
    ];
    let Edge { tls, .. } = &Edge::start(&certs, |_| {}).await;
    let tls = *tls;

    let subject = |name| served_subject(tls, name, &[]);
    assert!(subject(Some("a.example")).await.unwrap().contains("a-cert"));
    assert!(subject(Some("x.b.example"))
        .await
        .unwrap()
        .contains("wild-cert"));
    // A wildcard covers one label only; unknown names and no name get the first certificate.
    assert!(subject(Some("y.x.b.example"))
        .await
        .unwrap()
        .contains("a-cert"));
    assert!(subject(Some("unknown.example"))
        .await
        .unwrap()
        .contains("a-cert"));
    assert!(subject(None).await.unwrap().contains("a-cert"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_speaks_h2_and_http11_and_backends_see_https() {
    let Edge { f, tls, pki, .. } = &Edge::start(&[("a", "a-cert", &["a.example"])], |_| {}).await;
    let tls = *tls;
    let url = format!("https://a.example:{}/hello", tls.port());
    let resolve = format!("a.example:{}:127.0.0.1", tls.port());
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out, err) = run(
            "curl",
            &[
                "-sS",
                flag,
                "--cacert",
                ca,
                "--resolve",
                resolve.as_str(),
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-w",
                "version=%{http_version}",
                url.as_str(),
            ],
            b"",
        )
        .await;
        assert!(ok, "curl {flag} failed: {err}");
        assert!(out.contains(&format!("version={version}")), "{flag}: {out}");
        assert!(out.contains("x-seen-proto: https"), "{flag}: {out}");
    }
    // nghttp speaks only HTTP/2, chosen by ALPN.
    let h2_url = format!("https://127.0.0.1:{}/", tls.port());
    let (ok, out, err) = run("nghttp", &["-v", h2_url.as_str()], b"").await;
    assert!(ok, "nghttp failed: {out}{err}");
    assert!(out.contains(":status: 200"), "{out}");
    // Cleartext requests still say http.
    let r = get(f.proxy, "/").await.unwrap();
    assert_eq!(r.header("x-seen-proto"), Some("http"), "{r:?}");

    let listener = format!("listener=\"{tls}\"");
    let handshakes = metric(
        f,
        &format!("fulcrum_tls_handshakes_total{{{listener},version=\"1.3\"}}"),
    )
    .await;
    assert!(handshakes >= 3.0, "handshakes counted: {handshakes}");
    let body = get(f.admin, "/metrics").await.unwrap().body;
    assert!(
        body.contains("fulcrum_tls_certificate_not_after_seconds{name=\"a.example\"} "),
        "{body}"
    );
    let (ok, out, err) = run("promtool", &["check", "metrics"], body.as_bytes()).await;
    assert!(ok, "promtool check metrics failed:\n{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_versions_are_refused_and_the_minimum_holds() {
    // OpenSSL's own floor would refuse TLS 1.1 before sending it; lower it so fulcrum decides.
    let legacy = ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"];
    let edge = Edge::start(&[("a", "a-cert", &["a.example"])], |_| {}).await;
    let (f, tls) = (&edge.f, edge.tls);
    assert!(served_subject(tls, Some("a.example"), &["-tls1_2"])
        .await
        .is_some());
    assert!(served_subject(tls, Some("a.example"), &["-tls1_3"])
        .await
        .is_some());
    assert_eq!(served_subject(tls, Some("a.example"), &legacy).await, None);
    let refused = format!(
        "fulcrum_tls_handshake_failures_total{{listener=\"{tls}\",reason=\"protocol_version\"}}"
    );
    assert_eq!(metric(f, &refused).await, 1.0);
    let tls12 = format!("fulcrum_tls_handshakes_total{{listener=\"{tls}\",version=\"1.2\"}}");
    assert_eq!(metric(f, &tls12).await, 1.0);

    let tls13_only = free_addr();
    let g = start_tls(
        tls13_only,
        vec![certificate(edge.files[0].clone())],
        plain_pool(&[&edge.origin]),
        |c| {
            c.server.tls_min_version = TlsVersion::Tls13;
        },
    )
    .await;
    assert_eq!(
        served_subject(tls13_only, Some("a.example"), &["-tls1_2"]).await,
        None
    );
    assert!(served_subject(tls13_only, Some("a.example"), &["-tls1_3"])
        .await
        .is_some());
    let refused =
        format!("fulcrum_tls_handshake_failures_total{{listener=\"{tls13_only}\",reason=\"protocol_version\"}}");
    assert_eq!(metric(&g, &refused).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_keeps_host_path_and_query() {
    let Edge { f, tls, pki, .. } = &Edge::start(&[("a", "a-cert", &["shop.example"])], |c| {
        c.routes[0].redirect_https = true;
    })
    .await;
    let tls = *tls;
    let r = request(
        f.proxy,
        "GET",
        "/cart/1?item=7&q=a%20b",
        &[("host", "Shop.Example:8080")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("https://shop.example:{}/cart/1?item=7&q=a%20b", tls.port()).as_str())
    );
    // Over TLS the same route is proxied.
    let mut c = TlsClient::connect(tls, "shop.example", pki.ca_der()).await;
    assert_eq!(c.get("/cart/1").await, (200, "o1\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_certificates_and_keeps_open_connections() {
    let Edge { f, tls, pki, .. } = &Edge::start(&[("a", "cert-v1", &["a.example"])], |_| {}).await;
    let tls = *tls;
    let mut open = TlsClient::connect(tls, "a.example", pki.ca_der()).await;
    assert!(open.peer_subject().contains("cert-v1"));
    assert_eq!(open.get("/").await.0, 200);

    // Replace the files in place, then reload by signal.
    pki.issue("a", "cert-v2", &["a.example"]);
    let before = metric(f, "fulcrum_config_reloads_total{result=\"ok\"}").await;
    f.sighup();
    let reloaded = eventually(Duration::from_secs(5), || async {
        metric(f, "fulcrum_config_reloads_total{result=\"ok\"}").await > before
    })
    .await;
    assert!(
        reloaded.is_some(),
        "the reload after SIGHUP never completed"
    );
    let fresh = TlsClient::connect(tls, "a.example", pki.ca_der()).await;
    assert!(
        fresh.peer_subject().contains("cert-v2"),
        "{}",
        fresh.peer_subject()
    );
    assert_eq!(
        open.get("/").await.0,
        200,
        "the connection made before the reload broke"
    );

    // And again through the admin API.
    pki.issue("a", "cert-v3", &["a.example"]);
    let r = request(f.admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let fresh = TlsClient::connect(tls, "a.example", pki.ca_der()).await;
    assert!(
        fresh.peer_subject().contains("cert-v3"),
        "{}",
        fresh.peer_subject()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_bad_certificates_is_refused_and_the_old_ones_stay() {
    let certs: [(&str, &str, &[&str]); 2] = [
        ("a", "a-cert", &["a.example"]),
        ("b", "b-cert", &["b.example"]),
    ];
    let Edge {
        f, tls, pki, files, ..
    } = &Edge::start(&certs, |_| {}).await;
    let (tls, a, b) = (*tls, &files[0], &files[1]);
    // a's key no longer fits its certificate, b's certificate is no PEM at all.
    let other = pki.issue("other", "other", &["a.example"]);
    std::fs::copy(&other.1, &a.1).unwrap();
    write_atomically(&b.0, b"not a certificate\n");
    let r = request(f.admin, "POST", "/api/config/reload", JSON, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("server.certificates[0].key"), "{}", r.body);
    assert!(r.body.contains("does not match"), "{}", r.body);
    assert!(r.body.contains("server.certificates[1].cert"), "{}", r.body);
    assert!(r.body.contains("holds no PEM certificate"), "{}", r.body);
    let c = TlsClient::connect(tls, "b.example", pki.ca_der()).await;
    assert!(c.peer_subject().contains("b-cert"), "{}", c.peer_subject());
}

/// Pool `web` speaking TLS to `origins` with `tls`, health checks every 100 ms.
fn tls_pool(origins: &[&Origin], tls: PoolTlsConfig) -> PoolConfig {
    let addrs: Vec<(SocketAddr, u32)> = origins.iter().map(|o| (o.addr, 1)).collect();
    let mut p = pool("web", Algorithm::RoundRobin, &addrs);
    p.tls = Some(tls);
    p.retries = 2;
    p.health_check.interval = Duration::from_millis(100);
    p.health_check.timeout = Duration::from_millis(90);
    p.health_check.unhealthy_threshold = 1;
    p.health_check.healthy_threshold = 1;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_verified_against_ca_file_and_a_bad_one_is_never_served() {
    let pki = Pki::new("backend CA");
    let rogue = Pki::new("rogue CA");
    let (gc, gk) = pki.issue("good", "good", &["backend.internal"]);
    let (rc, rk) = rogue.issue("bad", "bad", &["backend.internal"]);
    let good = Origin::start("good", Some(origin_tls(&gc, &gk, None))).await;
    let bad = Origin::start("bad", Some(origin_tls(&rc, &rk, None))).await;
    let tls = PoolTlsConfig {
        sni: Some("backend.internal".into()),
        ca_file: Some(pki.path("ca.pem")),
        ..PoolTlsConfig::default()
    };
    let f = Fulcrum::web(tls_pool(&[&good, &bad], tls)).await;
    for _ in 0..20 {
        let r = get(f.proxy, "/").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-backend"), Some("good"));
    }
    // Health checks speak TLS too: the good backend is up, the rogue one down.
    let down = eventually(Duration::from_secs(5), || async {
        !f.backend_healthy(bad.addr).await
    })
    .await;
    assert!(
        down.is_some(),
        "the backend with a rogue certificate stayed up"
    );
    assert!(f.backend_healthy(good.addr).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_a_backend_that_requires_a_client_certificate() {
    let pki = Pki::new("internal CA");
    let (sc, sk) = pki.issue("server", "server", &["127.0.0.1"]);
    let (cc, ck) = pki.issue("client", "fulcrum", &["fulcrum.internal"]);
    let origin = Origin::start("mtls", Some(origin_tls(&sc, &sk, Some(pki.ca_der())))).await;

    let with_cert = PoolTlsConfig {
        ca_file: Some(pki.path("ca.pem")),
        client_cert: Some(cc),
        client_key: Some(ck),
        ..PoolTlsConfig::default()
    };
    let f = Fulcrum::web(tls_pool(&[&origin], with_cert.clone())).await;
    let r = get(f.proxy, "/").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("mtls"));

    let without = PoolTlsConfig {
        client_cert: None,
        client_key: None,
        ..with_cert
    };
    let g = Fulcrum::web(tls_pool(&[&origin], without)).await;
    let r = get(g.proxy, "/").await.unwrap();
    // 502 when the request reaches it, 503 once the health checks have marked it down.
    assert!(
        matches!(r.status, 502 | 503),
        "a backend requiring a client certificate answered: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_tls_problems_with_key_paths_and_lines() {
    let pki = Pki::new("fulcrum test CA");
    let (cert, _) = pki.issue("a", "a-cert", &["a.example"]);
    let (_, other_key) = pki.issue("b", "b-cert", &["b.example"]);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:8080"]
tls_listen = ["127.0.0.1:8443"]

[[server.certificates]]
cert = "{cert}"
key = "{other_key}"

[[server.certificates]]
cert = "{missing}"
key = "{other_key}"

[[routes]]
pool = "api"

[pools.api.tls]
verify = false

[[pools.api.backends]]
addr = "127.0.0.1:9001"
"#,
        cert = cert.display(),
        other_key = other_key.display(),
        missing = dir.path().join("missing.pem").display(),
    );
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(fulcrum_bin())
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    let file = path.display().to_string();
    for expected in [
        format!("{file}:7:7: error: server.certificates[0].key: the private key"),
        format!(
            "{file}:10:8: error: server.certificates[1].cert: cannot read the certificate file"
        ),
        format!("{file}:17:10: warning: pools.api.tls.verify: verify = false"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
    }

    let bare = "[server]\nlisten = [\"127.0.0.1:8080\"]\ntls_listen = [\"127.0.0.1:8443\"]\n\n[[routes]]\npool = \"api\"\n\n[[pools.api.backends]]\naddr = \"127.0.0.1:9001\"\n";
    std::fs::write(&path, bare).unwrap();
    let out = std::process::Command::new(fulcrum_bin())
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains(&format!(
            "{file}:3:14: error: server.tls_listen: tls_listen needs at least one certificate"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_refusing_the_certificate_are_counted_by_reason_not_logged_as_errors() {
    let edge = Edge::start(&[("a", "a-cert", &["a.example"])], |_| {}).await;
    let (f, tls) = (&edge.f, edge.tls);
    // A client trusting another CA: OpenSSL sends `unknown_ca` and gives up.
    let stranger = Pki::new("another CA");
    let ca_file = stranger.path("ca.pem");
    let args = ["-CAfile", ca_file.to_str().unwrap(), "-verify_return_error"];
    assert_eq!(served_subject(tls, Some("a.example"), &args).await, None);
    // A client trusting our CA but asking for a name the certificate does not carry: rustls
    // sends `bad_certificate`.
    let refused = TlsClient::handshake(tls, "b.example", edge.pki.ca_der()).await;
    assert!(refused.is_err(), "the name check must fail");

    let counter = |reason: &str| {
        format!("fulcrum_tls_handshake_failures_total{{listener=\"{tls}\",reason=\"{reason}\"}}")
    };
    let (unknown_ca, bad_certificate) = (counter("unknown_ca"), counter("bad_certificate"));
    let counted = eventually(Duration::from_secs(5), || async {
        metric(f, &unknown_ca).await == 1.0 && metric(f, &bad_certificate).await == 1.0
    })
    .await;
    assert!(
        counted.is_some(),
        "unknown_ca {}, bad_certificate {}",
        metric(f, &unknown_ca).await,
        metric(f, &bad_certificate).await
    );
    assert_eq!(metric(f, &counter("other")).await, 0.0);
    // A trusting client still gets through, and is counted as a handshake, not a failure.
    let mut ok = TlsClient::connect(tls, "a.example", edge.pki.ca_der()).await;
    assert_eq!(ok.get("/").await.0, 200);
    let log = f.log_tail();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("handshake")),
        "a refused certificate is logged as an error:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_in_its_handshake_when_the_listeners_stop_is_answered() {
    let mut edge = Edge::start(&[("a", "a.example", &["a.example"])], |c| {
        c.server.drain_delay_s = 1;
        c.server.grace_period_s = 30;
    })
    .await;
    // Both accepted before the drain. One client starts its handshake only once the listeners
    // have stopped, as one whose connect raced the stop would; the other never starts it.
    let late = TcpStream::connect(edge.tls).await.unwrap();
    let _silent = TcpStream::connect(edge.tls).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = std::time::Instant::now();
    edge.f.signal("TERM");
    let refused = eventually(Duration::from_secs(5), || async {
        TcpStream::connect(edge.tls).await.is_err()
    })
    .await;
    assert!(
        refused.is_some(),
        "the listeners did not stop after the 1 s drain delay"
    );
    let stream = TlsClient::handshake_over(late, "a.example", edge.pki.ca_der())
        .await
        .unwrap_or_else(|e| panic!("the handshake was cut: {e}"));
    let (status, body) = TlsClient { stream }.get("/").await;
    assert_eq!((status, body.as_str()), (200, "o1\n"));
    // The silent connection does not hold the process for the grace period.
    let exit = edge.f.wait_exit(Duration::from_secs(10)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "the process did not exit cleanly: {exit:?}\n{}",
        edge.f.log_tail()
    );
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} of a 30 s grace period"
    );
}
