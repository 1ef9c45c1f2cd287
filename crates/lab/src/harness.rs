//! Starting the real `fulcrum` binary on loopback, for the lab and the end-to-end tests.
//!
//! [`loopback_pair`] picks the data-plane and admin addresses together, so the OS cannot hand
//! out the same port twice; [`single_pool`] and [`pool`] build a [`Config`] in code (every
//! setting not named at its default), [`with_pool_toml`] lays extra TOML over one pool, and
//! [`Proxy::start`] writes the configuration with [`Config::to_toml`] into a temporary
//! directory, starts `fulcrum run` on it and waits until it answers. Dropping the [`Proxy`]
//! kills the process and removes the directory. [`Conn`], [`request`] and [`get`] are a small
//! HTTP/1.1 client for talking to it.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use fulcrum_config::{Algorithm, BackendConfig, Config, PoolConfig};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long the proxy may take to answer on both ports after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`request`] waits for a whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often readiness and [`eventually`] look again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The smallest valid configuration: what the parser fills in for every setting left out is
/// the harness's starting point, so the defaults stay where the validator keeps them.
const SKELETON: &str = r#"
[server]
listen = ["127.0.0.1:1"]

[[routes]]
host = "*"
path_prefix = "/"
pool = "p"

[pools.p]

[[pools.p.backends]]
addr = "127.0.0.1:2"
"#;

fn skeleton() -> Config {
    match fulcrum_config::parse(SKELETON, "<harness skeleton>") {
        Ok((config, _)) => config,
        Err(diags) => panic!("the harness skeleton configuration is invalid:\n{diags}"),
    }
}

/// `N` distinct loopback ports that were free a moment ago: all are held open until every one
/// is chosen, so the OS cannot hand the same port out twice.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let held = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    let ports = held
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<io::Result<Vec<u16>>>()?;
    Ok(std::array::from_fn(|i| ports[i]))
}

/// A data-plane and an admin address on loopback, on two distinct free ports.
pub fn loopback_pair() -> io::Result<(SocketAddr, SocketAddr)> {
    let [listen, admin] = free_ports::<2>()?;
    Ok((
        SocketAddr::from(([127, 0, 0, 1], listen)),
        SocketAddr::from(([127, 0, 0, 1], admin)),
    ))
}

/// A pool named `name` balancing over `backends` (`(address, weight)`) with `algorithm`;
/// every other setting at its default.
pub fn pool(name: &str, algorithm: Algorithm, backends: &[(SocketAddr, u32)]) -> PoolConfig {
    let mut pool = skeleton().pools.remove(0);
    pool.name = name.to_string();
    pool.algorithm = algorithm;
    pool.backends = backends
        .iter()
        .map(|&(addr, weight)| BackendConfig { addr, weight })
        .collect();
    pool
}

/// A configuration serving `pool` for every host and path on `listen`, with the admin API on
/// `admin`, one data-plane thread and neither drain delay nor grace period on shutdown;
/// everything else at its default.
pub fn single_pool(listen: SocketAddr, admin: SocketAddr, pool: PoolConfig) -> Config {
    let mut config = skeleton();
    config.server.listen = vec![listen];
    config.server.threads = 1;
    config.server.grace_period_s = 0;
    config.server.drain_delay_s = 0;
    config.admin.listen = admin;
    config.routes[0].pool = pool.name.clone();
    config.pools = vec![pool];
    config
}

/// `config` with the TOML `fragment` laid over the table of pool `pool`: keys of the fragment
/// replace those of the pool, tables (`health_check.interval_ms = 100`) are merged key by key.
/// The result is validated as a whole; every problem is reported at once.
pub fn with_pool_toml(config: &Config, pool: &str, fragment: &str) -> anyhow::Result<Config> {
    if fragment.trim().is_empty() {
        return Ok(config.clone());
    }
    let extra: toml::Table = fragment
        .parse()
        .with_context(|| format!("the TOML for pool {pool} is not valid TOML:\n{fragment}"))?;
    let mut doc: toml::Table = config
        .to_toml()
        .parse()
        .context("the configuration's own TOML does not read back")?;
    let target = doc
        .get_mut("pools")
        .and_then(|p| p.get_mut(pool))
        .and_then(toml::Value::as_table_mut)
        .with_context(|| format!("the configuration has no pool {pool}"))?;
    merge(target, extra);
    let text = doc.to_string();
    match fulcrum_config::parse(&text, "<generated>") {
        Ok((config, _)) => Ok(config),
        Err(diags) => {
            anyhow::bail!("with the TOML for pool {pool} the configuration is invalid:\n{diags}")
        }
    }
}

/// Lay `extra` over `into`: tables merge recursively, anything else replaces.
fn merge(into: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A running `fulcrum run` process with its own temporary directory (configuration and log),
/// killed and removed on drop.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
    upgrade_sock: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// A temporary directory only this user can enter (mode 0700), for an upgrade socket: the
/// configuration refuses one in a directory others can write to.
pub fn private_dir() -> io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("fulcrum-sock-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// A fresh temporary directory for one process's configuration and log.
fn process_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("fulcrum-")
        .tempdir()
        .context("cannot create a temporary directory")
}

/// Start `bin run` with `args`, its output going to `log_path`.
fn spawn_run(bin: &Path, args: &[&std::ffi::OsStr], log_path: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log_path)?;
    Command::new(bin)
        .arg("run")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

impl Proxy {
    /// Write `config` (through [`Config::to_toml`]) into a fresh temporary directory, start
    /// `bin run -c` on it, and wait up to [`READY_TIMEOUT`] until the admin API answers
    /// `/healthz` and the first data-plane address accepts connections.
    ///
    /// Fails, with the end of the proxy's log, if the process exits or does not become ready.
    pub async fn start(bin: &Path, config: &Config) -> anyhow::Result<Proxy> {
        let listen = *config
            .server
            .listen
            .first()
            .context("the configuration has no data-plane address")?;
        let admin = config.admin.listen;
        let dir = process_dir()?;
        let config_path = dir.path().join("fulcrum.toml");
        std::fs::write(&config_path, config.to_toml())
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log_path = dir.path().join("fulcrum.log");
        let child = spawn_run(bin, &["-c".as_ref(), config_path.as_ref()], &log_path)?;
        let mut proxy = Proxy {
            child,
            listen,
            admin,
            config_path,
            upgrade_sock: config.server.upgrade_sock.clone(),
            log_path,
            _dir: dir,
        };
        proxy.wait_ready().await?;
        Ok(proxy)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "fulcrum exited during start-up ({status}):\n{}",
                    self.log_tail()
                );
            }
            let admin_ok = matches!(get(self.admin, "/healthz").await, Ok(r) if r.status == 200);
            if admin_ok && TcpStream::connect(self.listen).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "fulcrum did not answer on {} and {} within {READY_TIMEOUT:?}:\n{}",
                    self.listen,
                    self.admin,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The first data-plane address.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The configuration file the process was started on (rewrite it to test reloads).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Start `bin run --upgrade` on this process's configuration and wait until it listens on
    /// `server.upgrade_sock`, ready to take the listeners when this process gets `SIGQUIT`.
    /// The new process answers only once it has them, so it is not waited for otherwise.
    pub async fn start_upgrade(&self, bin: &Path) -> anyhow::Result<Proxy> {
        let dir = process_dir()?;
        let config_path = dir.path().join("fulcrum.toml");
        std::fs::copy(&self.config_path, &config_path)?;
        let log_path = dir.path().join("fulcrum.log");
        let args: [&std::ffi::OsStr; 3] =
            ["--upgrade".as_ref(), "-c".as_ref(), config_path.as_ref()];
        let child = spawn_run(bin, &args, &log_path)?;
        let mut proxy = Proxy {
            child,
            listen: self.listen,
            admin: self.admin,
            config_path,
            upgrade_sock: self.upgrade_sock.clone(),
            log_path,
            _dir: dir,
        };
        let waiting = eventually(READY_TIMEOUT, || {
            let sock = proxy.upgrade_sock.clone();
            async move { sock.exists() }
        });
        if waiting.await.is_none() || !proxy.running() {
            anyhow::bail!(
                "fulcrum run --upgrade did not listen on {} within {READY_TIMEOUT:?}:\n{}",
                proxy.upgrade_sock.display(),
                proxy.log_tail()
            );
        }
        Ok(proxy)
    }

    /// Send `signal` (a name such as `TERM`, `QUIT` or `HUP`) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .context("cannot run kill")?;
        anyhow::ensure!(
            status.success(),
            "kill -s {signal} {} failed",
            self.child.id()
        );
        Ok(())
    }

    /// Wait up to `limit` for the process to exit; its exit status, `None` if it still runs.
    pub async fn wait_exit(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last 20 lines the process wrote to stdout and stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kill the process, reap it and remove its directory (what dropping it does, said aloud).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the proxy said before its directory goes.
        if std::thread::panicking() {
            eprintln!("fulcrum log (last lines):\n{}", self.log_tail());
        }
    }
}

/// A response, its body as text.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: hyper::HeaderMap,
    /// The body, decoded as UTF-8 (lossily).
    pub body: String,
}

impl Response {
    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    /// Connect to `addr`.
    pub async fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, addr })
    }

    /// Send one request and read the whole response. `Host: localhost` is added unless
    /// `headers` names a host.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut b = hyper::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", "localhost");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(io::Error::other)?;
        self.sender.ready().await.map_err(io::Error::other)?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(io::Error::other)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Send a body-less request, reconnecting first if the server closed the idle connection.
    pub async fn send_retry_closed(&mut self, method: &str, path: &str) -> io::Result<Response> {
        if self.sender.is_closed() {
            *self = Conn::open(self.addr).await?;
        }
        self.send(method, path, &[], b"").await
    }
}

/// One request on a fresh connection, given up after [`REQUEST_TIMEOUT`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let exchange = async {
        Conn::open(addr)
            .await?
            .send(method, path, headers, body)
            .await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{method} {path} timed out"),
            )
        })?
}

/// `GET path` on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    request(addr, "GET", path, &[], b"").await
}

/// Poll `cond` until it holds or `limit` passes; returns how long it took, `None` on time-out.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports::<3>().unwrap();
        assert!(a != b && b != c && a != c);
        let (l, m) = loopback_pair().unwrap();
        assert_ne!(l, m);
    }

    #[test]
    fn single_pool_round_trips_through_the_serializer() {
        let mut p = pool(
            "lab",
            Algorithm::P2cEwma,
            &[(addr("127.0.0.1:7"), 3), (addr("127.0.0.1:8"), 1)],
        );
        p.retries = 1;
        let config = single_pool(addr("127.0.0.1:5"), addr("127.0.0.1:6"), p);
        let text = config.to_toml();
        let (back, warnings) = fulcrum_config::parse(&text, "<generated>").unwrap();
        assert_eq!(back, config, "{text}");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(back.routes[0].pool, "lab");
        assert_eq!(back.server.threads, 1);
        // Settings not named keep the parser's defaults.
        assert_eq!(back.pools[0].connect_timeout, Duration::from_millis(1000));
        assert_eq!(back.pools[0].max_consecutive_failures, 5);
    }

    /// Pool `lab`, round robin over one backend.
    fn one_backend() -> Config {
        single_pool(
            addr("127.0.0.1:5"),
            addr("127.0.0.1:6"),
            pool("lab", Algorithm::RoundRobin, &[(addr("127.0.0.1:7"), 1)]),
        )
    }

    #[test]
    fn pool_toml_overrides_and_merges() {
        let config = one_backend();
        let out = with_pool_toml(
            &config,
            "lab",
            "retries = 0\nmax_consecutive_failures = 3\nhealth_check.interval_ms = 100\n\
             health_check.timeout_ms = 50",
        )
        .unwrap();
        let p = &out.pools[0];
        assert_eq!(p.retries, 0);
        assert_eq!(p.max_consecutive_failures, 3);
        assert_eq!(p.health_check.interval, Duration::from_millis(100));
        assert_eq!(
            p.health_check.path, "/healthz",
            "other keys of the table stay"
        );
        assert_eq!(with_pool_toml(&config, "lab", "  \n").unwrap(), config);
    }

    #[test]
    fn bad_pool_toml_is_reported() {
        let config = one_backend();
        let err = with_pool_toml(&config, "lab", "max_consecutive_failure = 3").unwrap_err();
        assert!(
            err.to_string().contains("max_consecutive_failures"),
            "{err}"
        );
        assert!(with_pool_toml(&config, "lab", "retries = ").is_err());
        assert!(with_pool_toml(&config, "nope", "retries = 1").is_err());
    }
}
