//! `discovery = "dns"`: names as backends, their checks, and how they are written back.

use std::time::Duration;

use fulcrum_config::{parse, pool_defaults, Discovery, DnsName};

fn config(pool: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\ndns_resolver = \"127.0.0.1:5353\"\n\n\
         [[routes]]\npool = \"web\"\n\n[pools.web]\n{pool}"
    )
}

#[test]
fn names_become_a_dns_pool_with_the_default_refresh() {
    let src = config(
        "discovery = \"dns\"\n\
         [[pools.web.backends]]\naddr = \"Web.Default.svc.cluster.local.:8080\"\nweight = 3\n\
         [[pools.web.backends]]\naddr = \"api:9000\"\n",
    );
    let (c, warnings) = parse(&src, "t.toml").unwrap_or_else(|d| panic!("{d}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        c.server.dns_resolver,
        Some("127.0.0.1:5353".parse().unwrap())
    );
    let pool = c.pool("web").unwrap();
    assert!(
        pool.backends.is_empty(),
        "nothing is resolved while parsing"
    );
    assert_eq!(
        pool.discovery,
        Discovery::Dns {
            refresh: Duration::from_millis(pool_defaults::DNS_REFRESH_MS),
            names: vec![
                DnsName {
                    host: "web.default.svc.cluster.local".into(),
                    port: 8080,
                    weight: 3
                },
                DnsName {
                    host: "api".into(),
                    port: 9000,
                    weight: 1
                },
            ],
        }
    );
    // Written back with its names, and read back the same.
    let again = parse(&c.to_toml(), "again.toml").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(again.0, c);
}

#[test]
fn a_static_pool_is_unchanged_and_refuses_names() {
    let (c, _) = parse(
        &config("[[pools.web.backends]]\naddr = \"127.0.0.1:9001\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.pools[0].discovery, Discovery::Static);
    assert!(!c.to_toml().contains("discovery"), "{}", c.to_toml());

    let err = parse(
        &config("[[pools.web.backends]]\naddr = \"web.default.svc:8080\"\n"),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err}");
    let e = &err.errors[0];
    assert_eq!(e.key_path, "pools.web.backends[0].addr");
    assert_eq!(e.line, 10, "{e}");
    assert!(e.message.contains("not a valid socket address"), "{e}");
    assert!(e.message.contains("discovery = \"dns\""), "{e}");
}

#[test]
fn bad_dns_settings_are_each_located() {
    let src = config(
        "discovery = \"dnss\"\n\
         [[pools.web.backends]]\naddr = \"web:80\"\n",
    );
    let err = parse(&src, "t.toml").unwrap_err();
    let e = &err.errors[0];
    assert_eq!(
        (e.key_path.as_str(), e.line),
        ("pools.web.discovery", 9),
        "{err}"
    );
    assert!(e.message.contains("did you mean \"dns\""), "{e}");

    let src = config(
        "discovery = \"dns\"\ndns_refresh_ms = 10\n\
         [[pools.web.backends]]\naddr = \"10.0.0.1:80\"\n\
         [[pools.web.backends]]\naddr = \"web\"\n\
         [[pools.web.backends]]\naddr = \"web:0\"\n\
         [[pools.web.backends]]\naddr = \"we b:80\"\n\
         [[pools.web.backends]]\naddr = \"ok.svc:80\"\n\
         [[pools.web.backends]]\naddr = \"OK.svc.:80\"\n",
    );
    let err = parse(&src, "t.toml").unwrap_err();
    let found: Vec<(&str, usize)> = err
        .errors
        .iter()
        .map(|e| (e.key_path.as_str(), e.line))
        .collect();
    assert_eq!(
        found,
        [
            ("pools.web.dns_refresh_ms", 10),
            ("pools.web.backends[0].addr", 12),
            ("pools.web.backends[1].addr", 14),
            ("pools.web.backends[2].addr", 16),
            ("pools.web.backends[3].addr", 18),
            ("pools.web.backends[5].addr", 22),
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("is an IP address, but discovery = \"dns\""),
        "{text}"
    );
    assert!(text.contains("\"web\" has no port"), "{text}");
    assert!(text.contains("duplicate backend name ok.svc:80"), "{text}");
}

#[test]
fn a_refresh_without_dns_is_a_warning() {
    let (_, warnings) = parse(
        &config("dns_refresh_ms = 1000\n[[pools.web.backends]]\naddr = \"127.0.0.1:9001\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key_path, "pools.web.dns_refresh_ms");
}
