//! The embedded default configuration and the example configurations.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fulcrum_config::{
    load, load_default, parse, AdminConfig, Algorithm, BackendConfig, Config, ControlConfig,
    Discovery, HealthCheckConfig, HostMatch, PoolConfig, RouteConfig, ServerConfig, TlsVersion,
    WeightSource, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn examples_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/examples"
    ))
}

fn expected_default() -> Config {
    Config {
        server: ServerConfig {
            listen: vec![addr("127.0.0.1:8080")],
            threads: 2,
            grace_period_s: 5,
            drain_delay_s: 5,
            upgrade_sock: "/run/fulcrum/upgrade.sock".into(),
            dns_resolver: None,
            tls_listen: Vec::new(),
            tls_min_version: TlsVersion::Tls12,
            certificates: Vec::new(),
            limits: Default::default(),
            body_timeout: Duration::from_millis(30_000),
        },
        admin: AdminConfig {
            listen: addr("127.0.0.1:9900"),
            ..AdminConfig::default()
        },
        routes: vec![RouteConfig {
            host: HostMatch::Any,
            path_prefix: "/".into(),
            pool: "web".into(),
            redirect_https: false,
        }],
        pools: vec![PoolConfig {
            name: "web".into(),
            algorithm: Algorithm::LeastConnections,
            weights: WeightSource::Static,
            connect_timeout: Duration::from_millis(1000),
            read_timeout: Duration::from_millis(30_000),
            write_timeout: Duration::from_millis(30_000),
            idle_timeout: Duration::from_millis(60_000),
            retries: 2,
            ewma_decay: Duration::from_millis(10_000),
            max_consecutive_failures: 5,
            slow_start: Duration::ZERO,
            slow_start_min_percent: 10,
            health_check: HealthCheckConfig {
                enabled: true,
                path: "/healthz".into(),
                host: None,
                interval: Duration::from_millis(1000),
                timeout: Duration::from_millis(500),
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            },
            tls: None,
            autoscale: None,
            discovery: Discovery::Static,
            backends: vec![
                BackendConfig {
                    addr: addr("127.0.0.1:9001"),
                    weight: 5,
                },
                BackendConfig {
                    addr: addr("127.0.0.1:9002"),
                    weight: 1,
                },
            ],
            request_buffer_bytes: 65_536,
        }],
        control: ControlConfig::default(),
    }
}

#[test]
fn default_config_parses_to_expected_values() {
    let (config, warnings) = parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config, expected_default());
    assert_eq!(load_default(), expected_default());
    assert_eq!(config.pool("web"), Some(&config.pools[0]));
    assert_eq!(config.pool("nope"), None);
}

#[test]
fn default_config_file_on_disk_matches_embedded() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/fulcrum.toml"
    ));
    let (config, _) = load(path).unwrap();
    assert_eq!(config, expected_default());
}

#[test]
fn to_toml_roundtrips() {
    for config in [
        load_default(),
        load(&examples_dir().join("multi-pool.toml")).unwrap().0,
    ] {
        let text = config.to_toml();
        let (back, warnings) = parse(&text, "<generated>")
            .unwrap_or_else(|d| panic!("generated TOML is invalid:\n{d}\n---\n{text}"));
        assert_eq!(back, config, "{text}");
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

#[test]
fn to_toml_roundtrips_unusual_values() {
    let mut config = load_default();
    config.pools[0].name = "web-2_x".into();
    config.routes[0].pool = "web-2_x".into();
    config.routes[0].host = HostMatch::Suffix(".example.com".into());
    config.routes[0].path_prefix = "/a\"b".into();
    config.pools[0].health_check.host = Some("internal.local".into());
    config.pools[0].health_check.enabled = false;
    config.pools[0].weights = WeightSource::Model;
    config.pools[0].slow_start = Duration::from_millis(2500);
    config.pools[0].slow_start_min_percent = 25;
    config.pools[0].backends[0].addr = addr("[::1]:9001");
    config.server.listen.push(addr("[::]:8443"));
    let text = config.to_toml();
    let (back, _) = parse(&text, "<generated>").unwrap_or_else(|d| panic!("{d}\n---\n{text}"));
    assert_eq!(back, config);
}

#[test]
fn multi_pool_example_parses() {
    let (config, warnings) = load(&examples_dir().join("multi-pool.toml")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.pools.len(), 4);
    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["web", "api", "search", "static"],
        "pools keep file order"
    );
    let mut algorithms: Vec<Algorithm> = config.pools.iter().map(|p| p.algorithm).collect();
    algorithms.sort_by_key(|a| a.as_str());
    let mut all = Algorithm::ALL.to_vec();
    all.sort_by_key(|a| a.as_str());
    assert_eq!(algorithms, all, "every algorithm is exercised");
    assert_eq!(config.routes.len(), 4);
    assert_eq!(
        config.routes[2].host,
        HostMatch::Suffix(".static.example.com".into())
    );
    let api = config.pool("api").unwrap();
    assert_eq!(api.weights, WeightSource::Model);
    assert_eq!(api.health_check.host.as_deref(), Some("api.internal"));
    assert_eq!(api.backends.iter().map(|b| b.weight).sum::<u32>(), 3);
    assert!(!config.pool("static").unwrap().health_check.enabled);
    assert_eq!(
        config.control,
        ControlConfig::default(),
        "the example's [control] section spells out the defaults"
    );
    let text = std::fs::read_to_string(examples_dir().join("multi-pool.toml")).unwrap();
    assert!(
        text.contains("\n[control]\n"),
        "the example shows [control]"
    );
}

#[test]
fn broken_example_reports_many_errors() {
    let diags = load(&examples_dir().join("broken.toml")).unwrap_err();
    println!("{diags}");
    assert!(diags.errors.len() >= 5, "{diags}");
    assert_eq!(diags.errors.len(), 12, "{diags}");
    assert_eq!(diags.warnings.len(), 1, "{diags}");
    let text = diags.to_string();
    assert!(text.ends_with("12 errors, 1 warning"), "{text}");
}

#[test]
fn unreadable_file_is_one_diagnostic() {
    let diags = load(Path::new("/nonexistent/fulcrum.toml")).unwrap_err();
    assert_eq!(diags.errors.len(), 1);
    assert_eq!(diags.errors[0].line, 0);
    let text = diags.to_string();
    assert!(
        text.starts_with("/nonexistent/fulcrum.toml: error: cannot read configuration file"),
        "{text}"
    );
}
