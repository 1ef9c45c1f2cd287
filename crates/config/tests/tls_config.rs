//! The TLS keys of a configuration: read, checked with key paths and lines, written back.

use std::path::{Path, PathBuf};

use fulcrum_config::{parse, TlsVersion};

/// A self-signed certificate for `names` valid for `days` more days, written into `dir` as
/// `stem.pem` and `stem.key`.
fn cert(dir: &Path, stem: &str, names: &[&str], days: i64) -> (PathBuf, PathBuf) {
    let now = time::OffsetDateTime::now_utc();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn config(server_tls: &str, route_extra: &str, pool_tls: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n{server_tls}\n[[routes]]\npool = \"web\"\n{route_extra}\n{pool_tls}\n[[pools.web.backends]]\naddr = \"127.0.0.1:9001\"\n"
    )
}

#[test]
fn a_full_tls_configuration_reads_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ak) = cert(dir.path(), "a", &["a.example"], 90);
    let (b, bk) = cert(dir.path(), "b", &["*.b.example"], 90);
    let (c, ck) = cert(dir.path(), "client", &["fulcrum.internal"], 90);
    let server = format!(
        "tls_listen = [\"127.0.0.1:8443\"]\ntls_min_version = \"1.3\"\n\n[[server.certificates]]\ncert = {a:?}\nkey = {ak:?}\n\n[[server.certificates]]\ncert = {b:?}\nkey = {bk:?}\n"
    );
    let pool = format!(
        "[pools.web.tls]\nsni = \"API.internal\"\nca_file = {a:?}\nclient_cert = {c:?}\nclient_key = {ck:?}\n"
    );
    let text = config(&server, "redirect_https = true", &pool);
    let (config, warnings) = parse(&text, "tls.toml").unwrap_or_else(|d| panic!("{d}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.server.tls_min_version, TlsVersion::Tls13);
    assert_eq!(config.server.certificates.len(), 2);
    let pair = config.server.certificates[1].pair.as_ref().unwrap();
    assert_eq!(pair.names(), ["*.b.example"]);
    assert!(config.routes[0].redirect_https);
    let tls = config.pools[0].tls.as_ref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("api.internal"));
    assert!(tls.verify && tls.ca.is_some() && tls.client.is_some());

    let written = config.to_toml();
    let (back, _) = parse(&written, "<generated>").unwrap_or_else(|d| panic!("{d}\n{written}"));
    assert_eq!(back, config, "{written}");
}

#[test]
fn every_tls_problem_is_reported_with_its_key_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = cert(dir.path(), "a", &["a.example"], 90);
    let (_, bk) = cert(dir.path(), "b", &["b.example"], 90);
    let (old, oldk) = cert(dir.path(), "old", &["old.example"], -1);
    let (soon, soonk) = cert(dir.path(), "soon", &["soon.example"], 5);
    let missing = dir.path().join("missing.pem");
    let server = format!(
        "tls_listen = [\"127.0.0.1:8443\"]\ntls_min_version = \"1.1\"\n\n[[server.certificates]]\ncert = {a:?}\nkey = {bk:?}\n\n[[server.certificates]]\ncert = {missing:?}\nkey = {bk:?}\n\n[[server.certificates]]\ncert = {old:?}\nkey = {oldk:?}\n\n[[server.certificates]]\ncert = {soon:?}\nkey = {soonk:?}\n"
    );
    let pool = format!("[pools.web.tls]\nverify = false\nclient_cert = {a:?}\n");
    let text = config(&server, "", &pool);
    let diags = parse(&text, "tls.toml").unwrap_err();
    let errors: Vec<String> = diags.errors.iter().map(|d| d.to_string()).collect();
    let warnings: Vec<String> = diags.warnings.iter().map(|d| d.to_string()).collect();
    let expect = |list: &[String], prefix: &str, words: &str| {
        assert!(
            list.iter()
                .any(|d| d.starts_with(prefix) && d.contains(words)),
            "no {prefix:?} with {words:?} in {list:#?}"
        );
    };
    expect(
        &errors,
        "tls.toml:4:19: error: server.tls_min_version:",
        "never spoken",
    );
    expect(
        &errors,
        "tls.toml:8:7: error: server.certificates[0].key:",
        "does not match",
    );
    expect(
        &errors,
        "tls.toml:11:8: error: server.certificates[1].cert:",
        "cannot read",
    );
    expect(
        &errors,
        "tls.toml:15:8: error: server.certificates[2].cert:",
        "expired on",
    );
    expect(
        &warnings,
        "tls.toml:19:8: warning: server.certificates[3].cert:",
        "expires on",
    );
    expect(
        &errors,
        "tls.toml:27:15: error: pools.web.tls.client_key:",
        "client_cert needs client_key",
    );
    expect(
        &warnings,
        "tls.toml:26:10: warning: pools.web.tls.verify:",
        "verify = false",
    );
    assert_eq!(errors.len(), 5, "{errors:#?}");

    let bare = config(
        "tls_listen = [\"127.0.0.1:8443\"]\n",
        "redirect_https = true",
        "",
    );
    let diags = parse(&bare, "bare.toml").unwrap_err();
    let errors: Vec<String> = diags.errors.iter().map(|d| d.to_string()).collect();
    expect(
        &errors,
        "bare.toml:3:14: error: server.tls_listen:",
        "needs at least one certificate",
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");

    let no_tls = config("", "redirect_https = true", "");
    let diags = parse(&no_tls, "plain.toml").unwrap_err();
    let errors: Vec<String> = diags.errors.iter().map(|d| d.to_string()).collect();
    expect(
        &errors,
        "plain.toml:6:18: error: routes[0].redirect_https:",
        "needs an HTTPS listener",
    );
}
