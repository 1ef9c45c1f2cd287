//! Validation: every problem is reported, located and explained.

use std::path::Path;

use fulcrum_config::{parse, Diagnostic, Diagnostics, Severity};

const VALID_TAIL: &str = r#"
[[routes]]
pool = "web"

[pools.web]
[[pools.web.backends]]
addr = "127.0.0.1:9001"
"#;

fn errors(src: &str) -> Diagnostics {
    match parse(src, "test.toml") {
        Ok((config, _)) => panic!("expected errors, parsed {config:?}"),
        Err(d) => d,
    }
}

/// The only error of `src`.
fn single_error(src: &str) -> Diagnostic {
    let d = errors(src);
    assert_eq!(d.errors.len(), 1, "{d}");
    d.errors.into_iter().next().unwrap()
}

fn with_server(rest: &str) -> String {
    format!("[server]\nlisten = [\"127.0.0.1:8080\"]\n{rest}")
}

#[test]
fn reports_all_mistakes_at_once() {
    let src = r#"[server]
listen = ["127.0.0.1:8080", "127.0.0.1:8080"]
threads = 0

[admin]
listen = "localhost:9900"

[[routes]]
host = "*"
path_prefix = "api"
pool = "web"

[[routes]]
host = "example.com"
pool = "wbe"

[pools.web]
algoritm = "round_robin"
retries = "5"

[pools.web.health_check]
healthy_threshold = 0
interval_ms = 1000
timeout_ms = 1500

[[pools.web.backends]]
addr = "127.0.0.1:9001"
weight = -3
"#;
    let d = errors(src);
    let got: Vec<(&str, usize)> = d
        .errors
        .iter()
        .map(|e| (e.key_path.as_str(), e.line))
        .collect();
    assert_eq!(
        got,
        [
            ("server.listen[1]", 2),
            ("server.threads", 3),
            ("admin.listen", 6),
            ("routes[0].path_prefix", 10),
            ("routes[1].pool", 15),
            ("pools.web.algoritm", 18),
            ("pools.web.retries", 19),
            ("pools.web.health_check.healthy_threshold", 22),
            ("pools.web.health_check.timeout_ms", 24),
            ("pools.web.backends[0].weight", 28),
        ],
        "{d}"
    );
    assert!(d.warnings.is_empty(), "{d}");
    let text = d.to_string();
    assert!(text.ends_with("\n10 errors, 0 warnings"), "{text}");
    assert!(text.contains("test.toml:2:29: error: server.listen[1]: duplicate listen address 127.0.0.1:8080 (already listed as server.listen[0])"), "{text}");
    assert!(text.contains("admin.listen: \"localhost:9900\" is not a valid socket address (expected IP:PORT, e.g. 127.0.0.1:8080); host names are not resolved"), "{text}");
    assert!(
        text.contains("routes[0].path_prefix: path_prefix must start with '/', got \"api\""),
        "{text}"
    );
    assert!(
        text.contains("pools.web.retries: expected an integer, got string \"5\""),
        "{text}"
    );
    assert!(
        text.contains("server.threads: threads must be between 1 and 1024, got 0"),
        "{text}"
    );
    assert!(
        text.contains("pools.web.backends[0].weight: weight must be between 1 and 10000, got -3"),
        "{text}"
    );
}

#[test]
fn unknown_key_suggests_nearest() {
    let src = with_server(&format!("{VALID_TAIL}algoritm = \"p2c_ewma\"\n"));
    let e = single_error(&src);
    assert_eq!(e.key_path, "pools.web.backends[0].algoritm");
    let src =
        with_server(&VALID_TAIL.replace("[pools.web]\n", "[pools.web]\nalgoritm = \"p2c_ewma\"\n"));
    let e = single_error(&src);
    assert_eq!(e.severity, Severity::Error);
    assert_eq!(e.key_path, "pools.web.algoritm");
    assert_eq!((e.line, e.column), (8, 1));
    assert!(
        e.message.contains("unknown key `algoritm`"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("did you mean `algorithm`?"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("valid keys: algorithm, weights"),
        "{}",
        e.message
    );
}

#[test]
fn unknown_top_level_table_suggests_nearest() {
    let src = with_server(&format!("{VALID_TAIL}\n[pool.extra]\nx = 1\n"));
    let e = single_error(&src);
    assert_eq!(e.key_path, "pool");
    assert!(e.message.contains("did you mean `pools`?"), "{}", e.message);
}

#[test]
fn unknown_algorithm_suggests_nearest() {
    let src = with_server(
        &VALID_TAIL.replace("[pools.web]\n", "[pools.web]\nalgorithm = \"least_conn\"\n"),
    );
    let e = single_error(&src);
    assert_eq!(e.key_path, "pools.web.algorithm");
    assert_eq!((e.line, e.column), (8, 13));
    assert_eq!(
        e.message,
        "unknown algorithm \"least_conn\"; valid: round_robin, weighted_round_robin, least_connections, p2c_ewma (did you mean \"least_connections\"?)"
    );
}

#[test]
fn unknown_weight_source() {
    let src =
        with_server(&VALID_TAIL.replace("[pools.web]\n", "[pools.web]\nweights = \"modle\"\n"));
    let e = single_error(&src);
    assert_eq!(e.key_path, "pools.web.weights");
    assert!(
        e.message
            .contains("valid: static, model (did you mean \"model\"?)"),
        "{}",
        e.message
    );
}

#[test]
fn syntax_error_has_position() {
    let src = "[server]\nlisten = [\"127.0.0.1:8080\"\nthreads = 2\n";
    let e = single_error(src);
    assert_eq!(e.key_path, "");
    assert_eq!(e.line, 3, "{e}");
    assert!(e.column >= 1);
    assert!(e.message.starts_with("invalid TOML: "), "{}", e.message);
    assert!(e.to_string().starts_with("test.toml:3:"), "{e}");

    let e = single_error("[server]\nthreads = = 2\n");
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn route_to_missing_pool() {
    let src = with_server(&VALID_TAIL.replace("pool = \"web\"", "pool = \"wbe\""));
    let e = single_error(&src);
    assert_eq!(e.key_path, "routes[0].pool");
    assert_eq!((e.line, e.column), (5, 8));
    assert_eq!(
        e.message,
        "unknown pool \"wbe\"; defined pools: web (did you mean \"web\"?)"
    );
}

#[test]
fn duplicate_backend_points_at_second() {
    let src = with_server(&format!(
        "{VALID_TAIL}\n[[pools.web.backends]]\naddr = \"127.0.0.1:9001\"\n"
    ));
    let e = single_error(&src);
    assert_eq!(e.key_path, "pools.web.backends[1].addr");
    assert_eq!(e.line, 12);
    assert!(
        e.message
            .contains("already used by pools.web.backends[0].addr"),
        "{}",
        e.message
    );
}

#[test]
fn zero_weight() {
    let src = with_server(&format!("{VALID_TAIL}weight = 0\n"));
    let e = single_error(&src);
    assert_eq!(e.key_path, "pools.web.backends[0].weight");
    assert_eq!((e.line, e.column), (10, 10));
    assert_eq!(e.message, "weight must be between 1 and 10000, got 0");
}

#[test]
fn zero_thresholds() {
    let src = with_server(&format!(
        "{VALID_TAIL}\n[pools.web.health_check]\nunhealthy_threshold = 0\nhealthy_threshold = 0\n"
    ));
    let d = errors(&src);
    let paths: Vec<&str> = d.errors.iter().map(|e| e.key_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "pools.web.health_check.unhealthy_threshold",
            "pools.web.health_check.healthy_threshold"
        ]
    );
    assert!(d.errors[0].message.ends_with("got 0"));
}

#[test]
fn zero_max_consecutive_failures() {
    let src = with_server(&VALID_TAIL.replace(
        "[pools.web]\n",
        "[pools.web]\nmax_consecutive_failures = 0\n",
    ));
    let e = single_error(&src);
    assert_eq!(e.key_path, "pools.web.max_consecutive_failures");
}

#[test]
fn bad_listen_address() {
    let src = format!("[server]\nlisten = [\"127.0.0.1:80800\"]\n{VALID_TAIL}");
    let e = single_error(&src);
    assert_eq!(e.key_path, "server.listen[0]");
    assert_eq!((e.line, e.column), (2, 11));
    assert_eq!(
        e.to_string(),
        "test.toml:2:11: error: server.listen[0]: \"127.0.0.1:80800\" is not a valid socket address (expected IP:PORT, e.g. 127.0.0.1:8080)"
    );
}

#[test]
fn listen_must_be_a_non_empty_array() {
    let e = single_error(&format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n{VALID_TAIL}"
    ));
    assert_eq!(e.key_path, "server.listen");
    assert!(
        e.message
            .starts_with("expected an array of \"IP:PORT\" strings"),
        "{}",
        e.message
    );
    assert!(
        e.message.ends_with("got string \"127.0.0.1:8080\""),
        "{}",
        e.message
    );

    let e = single_error(&format!("[server]\nlisten = []\n{VALID_TAIL}"));
    assert_eq!(e.key_path, "server.listen");
    assert!(
        e.message.contains("at least one listen address"),
        "{}",
        e.message
    );
}

#[test]
fn admin_listen_conflicts_with_data_listener() {
    let src = format!(
        "[server]\nlisten = [\"0.0.0.0:8080\"]\n[admin]\nlisten = \"127.0.0.1:8080\"\n{VALID_TAIL}"
    );
    let e = single_error(&src);
    assert_eq!(e.key_path, "admin.listen");
    assert!(
        e.message
            .contains("conflicts with data-plane listener 0.0.0.0:8080 (server.listen[0])"),
        "{}",
        e.message
    );
}

#[test]
fn missing_required_sections() {
    let d = errors("");
    let got: Vec<(&str, usize, usize)> = d
        .errors
        .iter()
        .map(|e| (e.key_path.as_str(), e.line, e.column))
        .collect();
    assert_eq!(
        got,
        [("server.listen", 1, 1), ("pools", 1, 1), ("routes", 1, 1)],
        "{d}"
    );

    let e = single_error(&format!("\n[server]\nthreads = 4\n{VALID_TAIL}"));
    assert_eq!(
        (e.key_path.as_str(), e.line, e.column),
        ("server.listen", 2, 1)
    );
}

#[test]
fn pool_without_backends() {
    let src = with_server("[[routes]]\npool = \"web\"\n\n[pools.web]\nretries = 1\n");
    let e = single_error(&src);
    assert_eq!(e.key_path, "pools.web.backends");
    assert_eq!(e.line, 6);
    assert!(
        e.message.starts_with("at least one backend is required"),
        "{}",
        e.message
    );

    let src = with_server("[[routes]]\npool = \"web\"\n\n[pools.web]\nbackends = []\n");
    let e = single_error(&src);
    assert_eq!(
        (e.key_path.as_str(), e.line, e.column),
        ("pools.web.backends", 7, 12)
    );
}

#[test]
fn invalid_host_patterns() {
    for (host, needle) in [
        ("foo.*.com", "wildcard"),
        ("", "must not be empty"),
        ("example.com:8080", "port"),
        ("a..b", "empty label"),
    ] {
        let src = with_server(&VALID_TAIL.replace(
            "pool = \"web\"",
            &format!("host = {host:?}\npool = \"web\""),
        ));
        let e = single_error(&src);
        assert_eq!(e.key_path, "routes[0].host");
        assert_eq!(e.line, 5);
        assert!(e.message.contains(needle), "{host:?}: {}", e.message);
        assert!(
            e.message.contains(&format!("{host:?}")) || host.is_empty(),
            "{}",
            e.message
        );
    }
}

#[test]
fn duplicate_routes_are_errors() {
    let src = with_server(&format!(
        "{VALID_TAIL}\n[[routes]]\nhost = \"*\"\npath_prefix = \"/\"\npool = \"web\"\n"
    ));
    let e = single_error(&src);
    assert_eq!(e.key_path, "routes[1]");
    assert_eq!(e.line, 11);
    assert!(
        e.message.contains("already routed by routes[0]"),
        "{}",
        e.message
    );
}

#[test]
fn timeout_longer_than_interval() {
    let src = with_server(&format!(
        "{VALID_TAIL}\n[pools.web.health_check]\ninterval_ms = 100\ntimeout_ms = 200\n"
    ));
    let e = single_error(&src);
    assert_eq!(e.key_path, "pools.web.health_check.timeout_ms");
    assert_eq!(
        e.message,
        "timeout_ms (200) must not exceed interval_ms (100)"
    );
}

#[test]
fn unused_pool_is_a_warning() {
    let src = with_server(&format!(
        "{VALID_TAIL}\n[pools.spare]\n[[pools.spare.backends]]\naddr = \"127.0.0.1:9100\"\n"
    ));
    let (config, warnings) = parse(&src, "test.toml").unwrap();
    assert_eq!(config.pools.len(), 2);
    assert_eq!(warnings.len(), 1);
    let w = &warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(
        (w.key_path.as_str(), w.line, w.column),
        ("pools.spare", 11, 1)
    );
    assert_eq!(
        w.to_string(),
        "test.toml:11:1: warning: pools.spare: pool \"spare\" is not used by any route"
    );
}

#[test]
fn round_robin_with_weights_warns() {
    let src = with_server(&format!(
        "{}\n[[pools.web.backends]]\naddr = \"127.0.0.1:9002\"\nweight = 4\n",
        VALID_TAIL.replace(
            "[pools.web]\n",
            "[pools.web]\nalgorithm = \"round_robin\"\n"
        )
    ));
    let (_, warnings) = parse(&src, "test.toml").unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key_path, "pools.web.algorithm");
}

#[test]
fn wrong_types_name_expected_and_actual() {
    let src = with_server(&VALID_TAIL.replace(
        "[pools.web]\n",
        "[pools.web]\nconnect_timeout_ms = 1.5\nalgorithm = 3\n[pools.web.health_check]\nenabled = \"yes\"\n",
    ));
    let d = errors(&src);
    let msgs: Vec<&str> = d.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        msgs,
        [
            "expected an integer, got float 1.5",
            "expected a string, got integer 3",
            "expected a boolean (true or false), got string \"yes\"",
        ],
        "{d}"
    );
}

#[test]
fn unicode_columns_count_characters() {
    let src =
        with_server(&VALID_TAIL.replace("[pools.web]\n", "[pools.web]\nweights = \"é\" ; x = 1\n"));
    // `;` is not valid TOML after a value: a syntax error located on that line.
    let e = single_error(&src);
    assert_eq!(e.line, 8);
    assert_eq!(e.column, 15, "{e}");
}

#[test]
fn slow_start_keys_parse_and_bad_values_name_their_key() {
    let pool = |keys: &str| {
        with_server(&format!(
            "[[routes]]\npool = \"web\"\n\n[pools.web]\nalgorithm = \"weighted_round_robin\"\n{keys}\n[[pools.web.backends]]\naddr = \"127.0.0.1:9001\"\n"
        ))
    };
    let (config, warnings) = parse(&pool(""), "test.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.pools[0].slow_start, std::time::Duration::ZERO);
    assert_eq!(config.pools[0].slow_start_min_percent, 10);
    let (config, _) = parse(
        &pool("slow_start_ms = 30000\nslow_start_min_percent = 100"),
        "test.toml",
    )
    .unwrap();
    assert_eq!(config.pools[0].slow_start.as_millis(), 30_000);
    assert_eq!(config.pools[0].slow_start_min_percent, 100);

    let d = errors(&pool(
        "slow_start_ms = -1\nslow_start_min_percent = 0\nslow_start_mn_percent = 5",
    ));
    let text = d.to_string();
    assert_eq!(d.errors.len(), 3, "{text}");
    assert!(
        text.contains("test.toml:8:17: error: pools.web.slow_start_ms: slow_start_ms must be between 0 and 86400000, got -1"),
        "{text}"
    );
    assert!(
        text.contains("pools.web.slow_start_min_percent: slow_start_min_percent must be between 1 and 100, got 0"),
        "{text}"
    );
    assert!(
        text.contains("unknown key `slow_start_mn_percent` in `pools.web` (did you mean `slow_start_min_percent`?)"),
        "{text}"
    );
}

#[test]
fn slow_start_with_round_robin_warns() {
    let src = with_server(
        "[[routes]]\npool = \"web\"\n\n[pools.web]\nalgorithm = \"round_robin\"\nslow_start_ms = 1000\n[[pools.web.backends]]\naddr = \"127.0.0.1:9001\"\n",
    );
    let (_, warnings) = parse(&src, "test.toml").unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key_path, "pools.web.slow_start_ms");
    assert!(
        warnings[0].to_string().contains("slow start has no effect"),
        "{}",
        warnings[0]
    );
}

#[test]
fn drain_and_upgrade_keys_have_defaults_and_bounds() {
    let (config, _) = parse(&with_server(VALID_TAIL), "test.toml").unwrap();
    assert_eq!(config.server.drain_delay_s, 5);
    assert_eq!(
        config.server.upgrade_sock,
        std::path::Path::new(fulcrum_config::server_defaults::UPGRADE_SOCK)
    );
    let e = single_error(&with_server(&format!("drain_delay_s = 3601\n{VALID_TAIL}")));
    assert_eq!((e.key_path.as_str(), e.line), ("server.drain_delay_s", 3));
    assert!(e.message.contains("between 0 and 3600"), "{e}");
}

fn upgrade_sock_config(sock: &str) -> String {
    with_server(&format!("upgrade_sock = {sock:?}\n{VALID_TAIL}"))
}

/// A temporary directory of permissions `mode`, and a socket path inside it.
fn sock_dir(mode: u32) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    let sock = dir.path().join("upgrade.sock").to_str().unwrap().to_owned();
    (dir, sock)
}

#[test]
fn upgrade_sock_in_a_private_directory_is_accepted() {
    let (_dir, sock) = sock_dir(0o700);
    let (config, warnings) = parse(&upgrade_sock_config(&sock), "t.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.server.upgrade_sock, std::path::Path::new(&sock));
    let back = parse(&config.to_toml(), "again.toml").unwrap().0;
    assert_eq!(back, config);
}

#[test]
fn upgrade_sock_in_a_world_writable_directory_is_refused() {
    // A sticky bit, as on /tmp, does not keep others from connecting to the socket.
    let (_dir, sock) = sock_dir(0o1777);
    let e = single_error(&upgrade_sock_config(&sock));
    assert_eq!((e.key_path.as_str(), e.line), ("server.upgrade_sock", 3));
    assert!(
        e.message.contains("every user can write to (mode 1777)"),
        "{e}"
    );
    assert!(e.message.contains("/run/fulcrum"), "{e}");
}

#[test]
fn upgrade_sock_in_a_directory_everyone_can_enter_warns() {
    let (_dir, sock) = sock_dir(0o755);
    let (_, warnings) = parse(&upgrade_sock_config(&sock), "t.toml").unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].key_path, "server.upgrade_sock");
    assert!(
        warnings[0].message.contains("0750 or 0700"),
        "{}",
        warnings[0]
    );
}

// The `[admin]` access keys: the token file is read and checked at load time, and exposed or
// pointless settings are warned about.

/// A configuration whose `[admin]` table (line 4) holds `admin`, one key per line from line 5.
fn with_admin(admin: &str) -> String {
    with_server(&format!("\n[admin]\n{admin}\n{VALID_TAIL}"))
}

fn write_token_file(dir: &Path, contents: &str, mode: u32) -> String {
    let path = dir.join("token");
    std::fs::write(&path, contents).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = mode;
    path.to_str().unwrap().to_string()
}

fn admin_warnings(src: &str) -> Vec<Diagnostic> {
    match parse(src, "test.toml") {
        Ok((_, warnings)) => warnings,
        Err(d) => panic!("expected a valid configuration:\n{d}"),
    }
}

#[test]
fn token_is_read_from_its_file_without_the_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_token_file(dir.path(), "0123456789abcdef0123456789abcdef\n", 0o600);
    let src = with_admin(&format!("token_file = {path:?}\nprotect_metrics = true"));
    let (config, warnings) = parse(&src, "test.toml").unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let token = config.admin.token.as_ref().unwrap();
    assert!(token.matches(b"0123456789abcdef0123456789abcdef"));
    assert!(config.admin.protect_metrics);
    assert!(!format!("{config:?}").contains("0123456789abcdef"));

    // Written back, the configuration names the file and never the secret.
    let text = config.to_toml();
    assert!(text.contains(&format!("token_file = {path:?}")), "{text}");
    assert!(!text.contains("0123456789abcdef"), "{text}");
    assert_eq!(parse(&text, "back.toml").unwrap().0, config);
}

#[test]
fn unreadable_or_empty_token_files_are_errors_at_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").to_str().unwrap().to_string();
    let e = single_error(&with_admin(&format!("token_file = {missing:?}")));
    assert_eq!(e.key_path, "admin.token_file");
    assert_eq!((e.line, e.column), (5, 14));
    assert!(
        e.message.contains("cannot read the admin token file"),
        "{}",
        e.message
    );

    let empty = write_token_file(dir.path(), "\n", 0o600);
    let e = single_error(&with_admin(&format!("token_file = {empty:?}")));
    assert_eq!(e.key_path, "admin.token_file");
    assert!(e.message.contains("is empty"), "{}", e.message);

    let e = single_error(&with_admin("token_file = \"\""));
    assert!(e.message.contains("must not be empty"), "{}", e.message);
}

#[cfg(unix)]
#[test]
fn a_token_file_others_can_read_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_token_file(dir.path(), "0123456789abcdef0123456789abcdef", 0o644);
    let w = admin_warnings(&with_admin(&format!("token_file = {path:?}")));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].severity, Severity::Warning);
    assert_eq!(w[0].key_path, "admin.token_file");
    assert!(w[0].message.contains("mode 0644"), "{}", w[0].message);
}

#[test]
fn an_exposed_listener_without_a_token_is_a_warning() {
    let w = admin_warnings(&with_admin("listen = \"0.0.0.0:9900\""));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key_path, "admin.listen");
    assert_eq!(w[0].line, 5);
    assert!(w[0].message.contains("not loopback"), "{}", w[0].message);
    assert!(w[0].message.contains("token_file"), "{}", w[0].message);

    assert!(admin_warnings(&with_admin("listen = \"127.0.0.1:9900\"")).is_empty());
    assert!(admin_warnings(&with_admin("listen = \"[::1]:9900\"")).is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = write_token_file(dir.path(), "0123456789abcdef0123456789abcdef", 0o600);
    let src = with_admin(&format!("listen = \"0.0.0.0:9900\"\ntoken_file = {path:?}"));
    assert!(admin_warnings(&src).is_empty());
}

#[test]
fn protect_metrics_without_a_token_is_a_warning() {
    let w = admin_warnings(&with_admin("protect_metrics = true"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key_path, "admin.protect_metrics");
    assert!(
        w[0].message.contains("/metrics stays open"),
        "{}",
        w[0].message
    );

    let e = single_error(&with_admin("protect_metrics = \"yes\""));
    assert_eq!(e.key_path, "admin.protect_metrics");
}

#[test]
fn upgrade_sock_must_be_absolute_and_short() {
    let e = single_error(&upgrade_sock_config("run/upgrade.sock"));
    assert!(e.message.contains("must be an absolute path"), "{e}");
    let long = format!("/run/{}.sock", "x".repeat(120));
    let e = single_error(&upgrade_sock_config(&long));
    assert!(e.message.contains("at most 107 bytes"), "{e}");
    let e = single_error(&upgrade_sock_config(""));
    assert!(e.message.contains("must not be empty"), "{e}");
}

#[test]
fn client_limits_have_defaults() {
    let (config, _) = parse(&with_server(VALID_TAIL), "test.toml").unwrap();
    assert_eq!(
        config.server.limits,
        fulcrum_config::ClientLimits::default()
    );
    let l = config.server.limits;
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.header_timeout.as_millis(), 10_000);
    assert_eq!(l.keepalive_timeout.as_millis(), 60_000);
    assert_eq!(
        (l.max_header_bytes, l.max_request_line_bytes),
        (65_536, 8_192)
    );
    let src = with_server(&format!(
        "max_connections = 5\nheader_timeout_ms = 300\nkeepalive_timeout_ms = 0\nmax_header_bytes = 4096\nmax_request_line_bytes = 1024\n{VALID_TAIL}"
    ));
    let (config, _) = parse(&src, "test.toml").unwrap();
    let l = config.server.limits;
    assert_eq!(l.max_connections, 5);
    assert_eq!(l.header_timeout.as_millis(), 300);
    assert!(l.keepalive_timeout.is_zero());
    assert_eq!((l.max_header_bytes, l.max_request_line_bytes), (4096, 1024));
}

#[test]
fn client_limits_out_of_range_name_key_and_line() {
    for (line, key, expected) in [
        (
            "max_connections = 0",
            "server.max_connections",
            "between 1 and 1000000",
        ),
        (
            "header_timeout_ms = 0",
            "server.header_timeout_ms",
            "between 1 and 86400000",
        ),
        (
            "keepalive_timeout_ms = -1",
            "server.keepalive_timeout_ms",
            "between 0 and 86400000",
        ),
        (
            "max_header_bytes = 100",
            "server.max_header_bytes",
            "between 1024 and 1048575",
        ),
        (
            "max_header_bytes = 2000000",
            "server.max_header_bytes",
            "between 1024 and 1048575",
        ),
        (
            "max_request_line_bytes = 10",
            "server.max_request_line_bytes",
            "between 64 and 1048575",
        ),
        ("max_connections = \"many\"", "server.max_connections", ""),
    ] {
        let e = single_error(&with_server(&format!("{line}\n{VALID_TAIL}")));
        assert_eq!((e.key_path.as_str(), e.line), (key, 3), "{line}: {e}");
        assert!(e.message.contains(expected), "{line}: {e}");
    }
}

#[test]
fn request_line_limit_cannot_exceed_the_head_limit() {
    let e = single_error(&with_server(&format!(
        "max_header_bytes = 2048\nmax_request_line_bytes = 4096\n{VALID_TAIL}"
    )));
    assert_eq!(
        (e.key_path.as_str(), e.line),
        ("server.max_request_line_bytes", 4)
    );
    assert!(
        e.message
            .contains("must not exceed max_header_bytes (2048)"),
        "{e}"
    );
}

#[test]
fn request_body_keys_parse_and_bad_values_name_their_key() {
    let src = |server: &str, pool: &str| {
        with_server(&format!(
            "{server}\n[[routes]]\npool = \"web\"\n\n[pools.web]\n{pool}\n[[pools.web.backends]]\naddr = \"127.0.0.1:9001\"\n"
        ))
    };
    let (config, _) = parse(&src("", ""), "test.toml").unwrap();
    assert_eq!(config.server.body_timeout.as_millis(), 30_000);
    assert_eq!(config.pools[0].request_buffer_bytes, 65_536);
    let (config, _) = parse(
        &src("body_timeout_ms = 500", "request_buffer_bytes = 0"),
        "test.toml",
    )
    .unwrap();
    assert_eq!(config.server.body_timeout.as_millis(), 500);
    assert_eq!(config.pools[0].request_buffer_bytes, 0);

    let d = errors(&src("body_timeout_ms = 0", "request_buffer_bytes = 65537"));
    let text = d.to_string();
    assert_eq!(d.errors.len(), 2, "{text}");
    assert!(
        text.contains("test.toml:3:19: error: server.body_timeout_ms: body_timeout_ms must be between 1 and 86400000, got 0"),
        "{text}"
    );
    assert!(
        text.contains("test.toml:8:24: error: pools.web.request_buffer_bytes: request_buffer_bytes must be between 0 and 65536, got 65537"),
        "{text}"
    );
    let d = errors(&src("", "request_buffer_bytes = \"64k\""));
    assert!(
        d.to_string().contains("pools.web.request_buffer_bytes"),
        "{d}"
    );
}
