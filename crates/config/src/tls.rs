//! TLS material named by a configuration — certificate chains with their private keys, and CA
//! bundles — read and checked by one set of rules, which `fulcrum check`, start-up and every
//! reload all go through.
//!
//! A [`KeyPair`] is only made from files that parse as PEM, whose leaf certificate parses as
//! X.509, has not expired, and whose key fits it: what a TLS handshake would otherwise find out
//! one client at a time.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A certificate whose end is closer than this many days draws a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

const DAY_S: i64 = 86_400;

/// Which file of a certificate/key pair a [`PairProblem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    /// The certificate chain file.
    Cert,
    /// The private key file.
    Key,
}

/// One problem with a certificate/key pair, and the file it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairProblem {
    /// The file the problem is about.
    pub file: PairFile,
    /// What is wrong and what would be right.
    pub message: String,
}

impl PairProblem {
    fn cert(message: String) -> Self {
        PairProblem {
            file: PairFile::Cert,
            message,
        }
    }

    fn key(message: String) -> Self {
        PairProblem {
            file: PairFile::Key,
            message,
        }
    }
}

/// A certificate chain and the private key that fits its leaf, ready for rustls.
///
/// Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct KeyPair {
    certified: Arc<CertifiedKey>,
    key: Arc<PrivateKeyDer<'static>>,
    names: Vec<String>,
    not_after: i64,
    subject: String,
}

impl KeyPair {
    /// The chain and signing key in the form rustls serves them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The certificates, leaf first, in DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The private key in DER.
    pub fn key_der(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The DNS names of the leaf's subjectAltName, lowercased, wildcards (`*.example.com`)
    /// included, in certificate order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// When the leaf certificate stops being valid, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// A short name for the certificate: its first DNS name, else its subject.
    pub fn label(&self) -> &str {
        self.names.first().unwrap_or(&self.subject)
    }
}

impl PartialEq for KeyPair {
    fn eq(&self, other: &Self) -> bool {
        self.chain() == other.chain() && self.key.secret_der() == other.key.secret_der()
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("names", &self.names)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Read the PEM certificate chain at `cert` and the PEM private key at `key` and check them
/// against each other and against the clock (`now`, Unix seconds).
///
/// Returns the pair with warnings about the certificate (it ends within
/// [`EXPIRY_WARNING_DAYS`], it is not valid yet, it names no DNS name), or every problem found:
/// an unreadable or unparsable file, a chain that has expired, a key that does not fit it.
pub fn load_key_pair(
    cert: &Path,
    key: &Path,
    now: i64,
) -> Result<(KeyPair, Vec<String>), Vec<PairProblem>> {
    let mut problems = Vec::new();
    let chain = read_certificates(cert).map_err(PairProblem::cert);
    let key_der = read_key(key).map_err(PairProblem::key);
    let (chain, key_der) = match (chain, key_der) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => {
            problems.extend(c.err());
            problems.extend(k.err());
            return Err(problems);
        }
    };
    let shown = cert.display();
    let leaf = match parse_chain(&chain) {
        Ok(leaf) => leaf,
        Err(e) => return Err(vec![PairProblem::cert(format!("{shown}: {e}"))]),
    };
    let mut warnings = Vec::new();
    let dates = &leaf.validity;
    if leaf.not_after < now {
        problems.push(PairProblem::cert(format!(
            "the certificate in {shown} ({}) expired on {}; renew it",
            leaf.label(),
            dates.not_after
        )));
    } else if leaf.not_after - now < EXPIRY_WARNING_DAYS * DAY_S {
        warnings.push(format!(
            "the certificate in {shown} ({}) expires on {}, in {} days; renew it",
            leaf.label(),
            dates.not_after,
            (leaf.not_after - now) / DAY_S
        ));
    }
    if leaf.not_before > now {
        warnings.push(format!(
            "the certificate in {shown} ({}) is not valid before {}; clients refuse it until then",
            leaf.label(),
            dates.not_before
        ));
    }
    if leaf.names.is_empty() {
        warnings.push(format!(
            "the certificate in {shown} ({}) has no DNS name in its subjectAltName, so no SNI \
             name selects it and clients that check names refuse it",
            leaf.subject
        ));
    }
    let provider = rustls::crypto::ring::default_provider();
    let signing = match provider.key_provider.load_private_key(key_der.clone_key()) {
        Ok(s) => s,
        Err(e) => {
            problems.push(PairProblem::key(format!(
                "the private key in {} cannot sign TLS handshakes: {e}",
                key.display()
            )));
            return Err(problems);
        }
    };
    let certified = CertifiedKey::new(chain, signing);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        problems.push(PairProblem::key(format!(
            "the private key in {} does not match the certificate in {shown} ({}); \
             check that the two files belong together",
            key.display(),
            leaf.label()
        )));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let pair = KeyPair {
        certified: Arc::new(certified),
        key: Arc::new(key_der),
        names: leaf.names,
        not_after: leaf.not_after,
        subject: leaf.subject,
    };
    Ok((pair, warnings))
}

/// CA certificates from a PEM bundle: the trust anchors backend certificates are checked against.
#[derive(Clone, PartialEq)]
pub struct CaBundle {
    certs: Arc<Vec<CertificateDer<'static>>>,
}

impl CaBundle {
    /// The certificates, in file order, in DER.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaBundle({} certificates)", self.certs.len())
    }
}

/// Read the PEM CA bundle at `path`: at least one certificate, each one usable as a trust anchor.
pub fn load_ca_bundle(path: &Path) -> Result<CaBundle, String> {
    let certs = read_certificates(path)?;
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = X509Certificate::from_der(c) {
            return Err(format!(
                "certificate {} in {} cannot be parsed: {e}",
                i + 1,
                path.display()
            ));
        }
        if let Err(e) = store.add(c.clone()) {
            return Err(format!(
                "certificate {} in {} cannot be a trust anchor: {e}",
                i + 1,
                path.display()
            ));
        }
    }
    Ok(CaBundle {
        certs: Arc::new(certs),
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|e| match e {
            pem::Error::Io(e) => format!("cannot read the certificate file {shown}: {e}"),
            e => format!("{shown} is not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (a block starting -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let shown = path.display();
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::Io(e) => format!("cannot read the key file {shown}: {e}"),
        pem::Error::NoItemsFound => format!(
            "{shown} holds no PEM private key (-----BEGIN PRIVATE KEY-----, \
             -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)"
        ),
        e => format!("{shown} is not a PEM private key file: {e}"),
    })
}

/// What the checks need from a leaf certificate.
struct Leaf {
    names: Vec<String>,
    subject: String,
    not_before: i64,
    not_after: i64,
    validity: Validity,
}

/// The validity dates as the certificate writes them, for messages.
struct Validity {
    not_before: String,
    not_after: String,
}

impl Leaf {
    fn label(&self) -> &str {
        self.names.first().unwrap_or(&self.subject)
    }
}

/// Parse every certificate of a chain; describe the leaf.
fn parse_chain(chain: &[CertificateDer<'static>]) -> Result<Leaf, String> {
    let mut leaf = None;
    for (i, der) in chain.iter().enumerate() {
        let cert = match X509Certificate::from_der(der) {
            Ok((_, cert)) => cert,
            Err(e) => return Err(format!("certificate {} cannot be parsed: {e}", i + 1)),
        };
        if i == 0 {
            let names = match cert.subject_alternative_name() {
                Ok(Some(san)) => san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect(),
                Ok(None) => Vec::new(),
                Err(e) => {
                    return Err(format!(
                        "the certificate's subjectAltName cannot be parsed: {e}"
                    ))
                }
            };
            let v = cert.validity();
            leaf = Some(Leaf {
                names,
                subject: cert.subject().to_string(),
                not_before: v.not_before.timestamp(),
                not_after: v.not_after.timestamp(),
                validity: Validity {
                    not_before: v.not_before.to_string(),
                    not_after: v.not_after.to_string(),
                },
            });
        }
    }
    leaf.ok_or_else(|| "no certificate".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair as RcKey};
    use std::path::PathBuf;

    /// A self-signed certificate for `names`, valid from `days.0` to `days.1` days from now,
    /// written with its key into `dir` as `stem.pem` and `stem.key`; the two paths.
    fn write_cert(dir: &Path, stem: &str, names: &[&str], days: (i64, i64)) -> (PathBuf, PathBuf) {
        let now = unix_now();
        let at = |d: i64| time::OffsetDateTime::from_unix_timestamp(now + d * DAY_S).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_before = at(days.0);
        params.not_after = at(days.1);
        let key = RcKey::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn load((cert, key): &(PathBuf, PathBuf)) -> Result<(KeyPair, Vec<String>), Vec<PairProblem>> {
        load_key_pair(cert, key, unix_now())
    }

    #[test]
    fn a_good_pair_loads_with_its_names_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert(dir.path(), "a", &["A.example", "*.b.example"], (-1, 90));
        let (pair, warnings) = load(&a).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(pair.names(), ["a.example", "*.b.example"]);
        assert_eq!(pair.label(), "a.example");
        assert!((pair.not_after() - (unix_now() + 90 * DAY_S)).abs() <= 2);
        assert!(!format!("{pair:?}").contains("key:"));
    }

    #[test]
    fn expired_is_an_error_and_expiring_soon_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&write_cert(dir.path(), "old", &["old.example"], (-30, -1))).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].file, PairFile::Cert);
        assert!(err[0].message.contains("expired on"), "{err:?}");
        let soon = write_cert(dir.path(), "soon", &["soon.example"], (-1, 5));
        let (_, warnings) = load(&soon).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("expires on"), "{warnings:?}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = write_cert(dir.path(), "a", &["a.example"], (-1, 90));
        let (_, b_key) = write_cert(dir.path(), "b", &["b.example"], (-1, 90));
        let err = load(&(a, b_key)).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].file, PairFile::Key);
        assert!(err[0].message.contains("does not match"), "{err:?}");
    }

    #[test]
    fn missing_and_unparsable_files_are_each_reported() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let err = load(&(garbage, dir.path().join("missing.key"))).unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert_eq!(err[0].file, PairFile::Cert);
        assert!(
            err[0].message.contains("holds no PEM certificate"),
            "{err:?}"
        );
        assert_eq!(err[1].file, PairFile::Key);
        assert!(
            err[1].message.contains("cannot read the key file"),
            "{err:?}"
        );

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let (_, key) = write_cert(dir.path(), "a", &["a.example"], (-1, 90));
        let err = load(&(broken, key)).unwrap_err();
        assert!(err[0].message.contains("cannot be parsed"), "{err:?}");
    }

    #[test]
    fn ca_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = write_cert(dir.path(), "ca", &["ca.example"], (-1, 90));
        assert_eq!(load_ca_bundle(&ca).unwrap().certificates().len(), 1);
        let err = load_ca_bundle(&ca_key).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}
