//! The runtime image without a container engine: the `COPY` lines of `docker/Dockerfile`'s
//! runtime stage are laid out in a temporary directory (binary, ONNX Runtime, model,
//! configuration at the image's paths), made read-only, and run as the image's non-root user
//! with the image's configuration (listen addresses, backends and the image's absolute paths
//! moved into the directory). The model must load, the image's `HEALTHCHECK` command must pass,
//! and nothing may be written inside the layout. hadolint must find nothing in the Dockerfile,
//! and the compose file must fit the image and the files it mounts.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;

/// One `COPY [--from=STAGE] SRC DST` of the runtime stage.
#[derive(Debug)]
struct CopyLine {
    from: Option<String>,
    src: String,
    dst: String,
}

/// What the test needs to know of the Dockerfile's last stage.
#[derive(Debug, Default)]
struct RuntimeStage {
    copies: Vec<CopyLine>,
    user: Option<String>,
    healthcheck: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

/// Instructions with their continuation lines joined, comments dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

fn json_array(text: &str, what: &str) -> Vec<String> {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{what} is not in exec (JSON array) form: {text}: {e}"))
}

fn runtime_stage(dockerfile: &str) -> RuntimeStage {
    let mut stage = RuntimeStage::default();
    for ins in instructions(dockerfile) {
        let (word, rest) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
        let rest = rest.trim();
        match word.to_ascii_uppercase().as_str() {
            "FROM" => stage = RuntimeStage::default(),
            "COPY" => {
                let mut from = None;
                let mut args = Vec::new();
                for a in rest.split_whitespace() {
                    match a.strip_prefix("--from=") {
                        Some(f) => from = Some(f.to_string()),
                        None if a.starts_with("--") => {
                            panic!("COPY option {a} is not understood: {ins}")
                        }
                        None => args.push(a.to_string()),
                    }
                }
                assert_eq!(
                    args.len(),
                    2,
                    "COPY with one source and one destination: {ins}"
                );
                stage.copies.push(CopyLine {
                    from,
                    src: args[0].clone(),
                    dst: args[1].clone(),
                });
            }
            "USER" => stage.user = Some(rest.to_string()),
            "HEALTHCHECK" => {
                let (_, cmd) = rest
                    .split_once("CMD")
                    .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {ins}"));
                stage.healthcheck = json_array(cmd, "HEALTHCHECK CMD");
            }
            "ENTRYPOINT" => stage.entrypoint = json_array(rest, "ENTRYPOINT"),
            "CMD" => stage.cmd = json_array(rest, "CMD"),
            _ => {}
        }
    }
    stage
}

/// The ONNX Runtime library of the project's venv, which must be the version
/// `models/requirements.txt` pins: the image takes its library from that same wheel.
fn venv_onnxruntime() -> PathBuf {
    let pinned = std::fs::read_to_string(repo_root().join("models/requirements.txt"))
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("onnxruntime==").map(str::to_string))
        .expect("models/requirements.txt pins onnxruntime==VERSION");
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/onnxruntime/capi"))
        .find(|capi| capi.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "no onnxruntime wheel in {}; scripts/setup.sh installs models/requirements.txt",
                lib.display()
            )
        });
    let so = found.join(format!("libonnxruntime.so.{pinned}"));
    assert!(
        so.is_file(),
        "{} is missing: the venv's onnxruntime is not the pinned {pinned}",
        so.display()
    );
    so
}

/// Where the file a `COPY` line takes comes from on this machine: the build context is the
/// repository; the `build` stage's binary is the one cargo built; the `ort` stage's library is
/// the venv's copy of the same wheel.
fn source_of(copy: &CopyLine) -> PathBuf {
    match copy.from.as_deref() {
        None => repo_root().join(&copy.src),
        Some("build") if copy.src.ends_with("/fulcrum") => PathBuf::from(fulcrum_bin()),
        Some("ort") if copy.src.contains("libonnxruntime.so") => venv_onnxruntime(),
        Some(stage) => panic!(
            "COPY --from={stage} {} {}: this test does not know what that stage builds; teach source_of",
            copy.src, copy.dst
        ),
    }
}

/// `path` of the image, inside the layout at `root`.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Every file and directory under `root` with its size and modification time.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.insert(entry.path(), (meta.len(), meta.modified().ok()));
        }
    }
    out
}

/// Set the permission bits of everything under `root`: `dirs` for directories; files keep their
/// execute bits and take `files` for the rest.
fn chmod_tree(root: &Path, dirs: u32, files: u32) {
    for path in snapshot(root).keys().chain([&root.to_path_buf()]) {
        let meta = std::fs::metadata(path).unwrap();
        let mode = if meta.is_dir() {
            dirs
        } else if meta.permissions().mode() & 0o111 != 0 {
            files | 0o111
        } else {
            files
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// `program args` as the image's user: through `setpriv` when the test runs as root, as is
/// otherwise (any other user is already not root).
fn as_image_user(uid: u32, program: &Path, args: &[String]) -> Command {
    let root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if root.unwrap_or(false) {
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_string(),
            "--inh-caps=-all".to_string(),
            "--".to_string(),
        ])
        .arg(program)
        .args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// The process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_image_layout_runs_as_non_root_with_the_model_loaded() {
    let dockerfile = std::fs::read_to_string(repo_root().join("docker/Dockerfile")).unwrap();
    let stage = runtime_stage(&dockerfile);
    let uid: u32 = stage
        .user
        .as_deref()
        .expect("the runtime stage sets USER")
        .parse()
        .expect("USER is a numeric uid, so runAsNonRoot can verify it");
    assert_ne!(uid, 0, "the image runs as root");

    // The layout: every COPY of the runtime stage at its path.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("image");
    for copy in &stage.copies {
        let src = source_of(copy);
        let dst = if copy.dst.ends_with('/') {
            inside(&root, &copy.dst).join(Path::new(&copy.src).file_name().unwrap())
        } else {
            inside(&root, &copy.dst)
        };
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
    }

    // The entry point and its `-c` file are the image's.
    let argv: Vec<String> = stage.entrypoint.iter().chain(&stage.cmd).cloned().collect();
    assert!(argv.len() >= 2, "ENTRYPOINT + CMD: {argv:?}");
    let binary = inside(&root, &argv[0]);
    assert!(
        binary.is_file(),
        "the entry point {} is not in the image",
        argv[0]
    );
    let config_at = argv
        .iter()
        .position(|a| a == "-c" || a == "--config")
        .map(|i| argv[i + 1].clone())
        .expect("CMD names the configuration with -c");
    let config_file = inside(&root, &config_at);

    // The image's configuration, with what differs outside a container moved: ephemeral
    // loopback ports, backends started here, and the image's absolute paths inside the layout.
    let (mut config, _) = fulcrum_config::load(&config_file).unwrap_or_else(|d| panic!("{d}"));
    assert!(
        config
            .pools
            .iter()
            .any(|p| p.weights == WeightSource::Model),
        "the image's configuration has no model pool"
    );
    let b = backends(config.pools[0].backends.len()).await;
    let (proxy, admin) = fulcrum_lab::harness::loopback_pair().unwrap();
    config.server.listen = vec![proxy];
    config.admin.listen = admin;
    config.pools.truncate(1);
    config.routes.retain(|r| r.pool == config.pools[0].name);
    for (backend, server) in config.pools[0].backends.iter_mut().zip(&b) {
        backend.addr = server.addr();
    }
    let model = config.control.model.to_str().unwrap().to_string();
    let library = config
        .control
        .ort_library
        .as_ref()
        .expect("the image's configuration names [control] ort_library")
        .to_str()
        .unwrap()
        .to_string();
    for path in [&model, &library] {
        assert!(path.starts_with('/'), "{path} is not absolute");
        assert!(
            inside(&root, path).is_file(),
            "{path} is named by the configuration but no COPY puts it in the image"
        );
    }
    config.control.model = inside(&root, &model);
    config.control.ort_library = Some(inside(&root, &library));
    std::fs::write(&config_file, config.to_toml()).unwrap();

    // Read-only for everyone, root of the layout included.
    chmod_tree(&root, 0o555, 0o444);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = snapshot(&root);

    let log_path = dir.path().join("fulcrum.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // The layout's own configuration path, not the image's.
    let args: Vec<String> = argv[1..]
        .iter()
        .map(|a| {
            if *a == config_at {
                config_file.to_string_lossy().into_owned()
            } else {
                a.clone()
            }
        })
        .collect();
    let mut run = as_image_user(uid, &binary, &args);
    run.current_dir(&root)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut process = Running(run.spawn().expect("cannot start the image's entry point"));
    let log_tail = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let up = eventually(Duration::from_secs(20), || async {
        matches!(get(admin, "/healthz").await, Ok(r) if r.status == 200)
    })
    .await;
    assert!(
        up.is_some(),
        "the image's entry point did not come up (exit: {:?}):\n{}",
        process.0.try_wait(),
        log_tail()
    );
    let metrics = get(admin, "/metrics").await.unwrap().body;
    assert!(
        metrics.lines().any(|l| l == "fulcrum_model_loaded 1"),
        "the model did not load inside the image layout:\n{}\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("fulcrum_model"))
            .collect::<Vec<_>>()
            .join("\n"),
        log_tail()
    );
    // Traffic flows through it to every backend's pool.
    let ready = eventually(Duration::from_secs(10), || async {
        matches!(get(proxy, "/").await, Ok(r) if r.status == 200)
    })
    .await;
    assert!(
        ready.is_some(),
        "no answer through the proxy:\n{}",
        log_tail()
    );

    // The HEALTHCHECK command, as the image's user, pointed at this admin port.
    let health = |admin: SocketAddr| {
        let mut cmd = stage.healthcheck.clone();
        assert!(!cmd.is_empty(), "the runtime stage has no HEALTHCHECK CMD");
        if let Some(i) = cmd.iter().position(|a| a == "--admin") {
            cmd[i + 1] = admin.to_string();
        } else {
            cmd.extend(["--admin".to_string(), admin.to_string()]);
        }
        as_image_user(uid, &inside(&root, &cmd[0]), &cmd[1..])
            .env_clear()
            .current_dir(&root)
            .output()
            .expect("cannot run the HEALTHCHECK command")
    };
    let ok = health(admin);
    assert!(
        ok.status.success(),
        "HEALTHCHECK failed against a running fulcrum: {ok:?}"
    );
    let down = health(dead_addr());
    assert_eq!(
        down.status.code(),
        Some(1),
        "HEALTHCHECK passed with nothing listening: {down:?}"
    );

    // SIGTERM drains and exits 0 (the image's drain delay may take a few seconds).
    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let limit =
        Duration::from_secs(config.server.drain_delay_s + config.server.grace_period_s + 10);
    let exited = eventually(limit, || {
        let done = matches!(process.0.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited.is_some(), "no exit within {limit:?} of SIGTERM");
    let code = process.0.wait().unwrap();
    assert!(code.success(), "exit after SIGTERM: {code}\n{}", log_tail());

    // Read-only root filesystem friendly: nothing was created, removed or changed.
    let after = snapshot(&root);
    assert_eq!(
        before,
        after,
        "the process wrote inside the image layout:\n{}",
        log_tail()
    );
    chmod_tree(&root, 0o755, 0o644);
}

#[test]
fn the_dockerfile_is_read_as_the_image_is_built() {
    let stage = runtime_stage(
        "FROM a AS build\nCOPY x /y\nFROM b\nRUN echo \\\n  two lines\n# COPY not /this\n\
         COPY --from=build /bin/f /usr/bin/f\nUSER 10001\n\
         HEALTHCHECK --interval=5s CMD [\"/usr/bin/f\", \"probe\"]\nENTRYPOINT [\"/usr/bin/f\"]\nCMD [\"run\"]\n",
    );
    assert_eq!(stage.copies.len(), 1, "{stage:?}");
    assert_eq!(stage.copies[0].from.as_deref(), Some("build"));
    assert_eq!(stage.copies[0].dst, "/usr/bin/f");
    assert_eq!(stage.user.as_deref(), Some("10001"));
    assert_eq!(stage.healthcheck, ["/usr/bin/f", "probe"]);
    assert_eq!(stage.entrypoint, ["/usr/bin/f"]);
    assert_eq!(stage.cmd, ["run"]);
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let out = Command::new(venv_tool("hadolint"))
        .arg("--no-color")
        .arg(repo_root().join("docker/Dockerfile"))
        .output()
        .expect("cannot run hadolint");
    assert!(
        out.status.success(),
        "hadolint on docker/Dockerfile ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compose file cannot run here (no container engine), so what would make it fail at
/// `up` is checked: every mounted file exists, the ports are the image configuration's, the
/// image configuration's backends are the testbed service's, Prometheus scrapes fulcrum's admin
/// port, and Grafana finds its data source and the dashboard where they are mounted.
#[test]
fn the_compose_file_fits_the_image_and_its_files() {
    let docker = repo_root().join("docker");
    let text = std::fs::read_to_string(docker.join("compose.yaml")).unwrap();
    let compose: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let services = compose["services"].as_object().expect("services");
    for name in ["fulcrum", "backends", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "no service {name}");
    }

    // Bind mounts: `SOURCE:TARGET[:ro]`, sources relative to docker/.
    let mut mounts: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().expect("short volume syntax");
            let mut parts = v.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
            let src = docker.join(src);
            assert!(
                src.exists(),
                "service {name} mounts {} which is missing",
                src.display()
            );
            mounts.insert(format!("{name}:{dst}"), src);
        }
    }

    // The image's configuration: its ports are published, its backends are the testbed's.
    let (config, _) =
        fulcrum_config::load(&docker.join("fulcrum.toml")).unwrap_or_else(|d| panic!("{d}"));
    let published: Vec<String> = services["fulcrum"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for port in [config.server.listen[0].port(), config.admin.listen.port()] {
        assert!(
            published.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "port {port} of docker/fulcrum.toml is not published: {published:?}"
        );
    }
    let testbed = &services["backends"];
    let args: Vec<&str> = testbed["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    let scenario_path = mounts[&format!("backends:{}", arg("--scenario"))].clone();
    let scenario = fulcrum_scenario::parse_scenario(
        &std::fs::read_to_string(&scenario_path).unwrap(),
        "backends.toml",
    )
    .unwrap_or_else(|d| panic!("{d}"))
    .0;
    let first: SocketAddr = arg("--listen").parse().unwrap();
    let ip = testbed["networks"]["fulcrum"]["ipv4_address"]
        .as_str()
        .expect("the testbed has a fixed address");
    let expected: Vec<String> = (0..scenario.backends.len())
        .map(|i| format!("{ip}:{}", first.port() + i as u16))
        .collect();
    let configured: Vec<String> = config.pools[0]
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    assert_eq!(
        configured, expected,
        "docker/fulcrum.toml's backends are not the testbed's"
    );

    // Prometheus scrapes fulcrum's admin port; Grafana's data source is that Prometheus.
    let prometheus = std::fs::read_to_string(docker.join("prometheus.yml")).unwrap();
    let target = format!("fulcrum:{}", config.admin.listen.port());
    assert!(
        prometheus.contains(&format!("\"{target}\"")),
        "prometheus.yml does not scrape {target}"
    );
    let datasources: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(docker.join("grafana/provisioning/datasources/prometheus.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        datasources["datasources"][0]["url"],
        "http://prometheus:9090"
    );

    // Grafana loads the dashboard from the directory it is mounted in.
    let (dashboard_at, _) = mounts
        .iter()
        .find(|(k, src)| k.starts_with("grafana:") && src.ends_with("grafana/fulcrum.json"))
        .expect("grafana mounts grafana/fulcrum.json");
    let dashboard_at = dashboard_at.trim_start_matches("grafana:");
    let providers: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(docker.join("grafana/provisioning/dashboards/fulcrum.yaml"))
            .unwrap(),
    )
    .unwrap();
    let dir = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(
        Path::new(dashboard_at).parent(),
        Some(Path::new(dir)),
        "the dashboard provider reads {dir}, the dashboard is mounted at {dashboard_at}"
    );
    assert_eq!(
        services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"],
        dashboard_at
    );
}
