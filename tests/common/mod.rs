//! Helpers for end-to-end tests: ephemeral ports, the real `fulcrum` binary, a small client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use fulcrum_testbed::BackendServer;

/// The binary under test.
pub fn fulcrum_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fulcrum")
}

/// The repository root (for example configs).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports that were free a moment ago: all are held open until every one is
/// chosen, so the OS cannot hand the same port out twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Start `n` loopback backends named b1..bn on ephemeral ports.
pub async fn backends(n: usize) -> Vec<BackendServer> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            BackendServer::start("127.0.0.1:0".parse().unwrap(), format!("b{}", i + 1))
                .await
                .unwrap(),
        );
    }
    v
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "fulcrum-test-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `fulcrum run` process, killed on drop.
pub struct Fulcrum {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    _dir: TempDir,
}

/// Options for the generated pool.
pub struct PoolSpec<'a> {
    pub algorithm: &'a str,
    pub backends: Vec<(SocketAddr, u32)>,
    pub extra: &'a str,
    pub health: &'a str,
}

impl<'a> PoolSpec<'a> {
    pub fn new(algorithm: &'a str, backends: &[&BackendServer]) -> Self {
        PoolSpec {
            algorithm,
            backends: backends.iter().map(|b| (b.addr(), 1)).collect(),
            extra: "",
            health: "interval_ms = 200\ntimeout_ms = 150\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
        }
    }
}

/// A single-pool configuration on fresh ports.
pub fn config_text(proxy: SocketAddr, admin: SocketAddr, spec: &PoolSpec<'_>) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"{proxy}\"]\nthreads = 1\ngrace_period_s = 0\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [[routes]]\nhost = \"*\"\npath_prefix = \"/\"\npool = \"web\"\n\n\
         [pools.web]\nalgorithm = \"{}\"\nconnect_timeout_ms = 500\nread_timeout_ms = 5000\nretries = 2\n{}\n\n\
         [pools.web.health_check]\npath = \"/healthz\"\n{}\n",
        spec.algorithm, spec.extra, spec.health
    );
    for (addr, weight) in &spec.backends {
        s.push_str(&format!(
            "[[pools.web.backends]]\naddr = \"{addr}\"\nweight = {weight}\n\n"
        ));
    }
    s
}

impl Fulcrum {
    /// Start the proxy on `config` (a function of the proxy and admin addresses).
    pub async fn start(config: impl Fn(SocketAddr, SocketAddr) -> String) -> Fulcrum {
        let [proxy_port, admin_port] = free_ports::<2>();
        let proxy = SocketAddr::from(([127, 0, 0, 1], proxy_port));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let dir = TempDir::new("proxy");
        let config_path = dir.0.join("fulcrum.toml");
        std::fs::write(&config_path, config(proxy, admin)).unwrap();
        let child = Command::new(fulcrum_bin())
            .args(["run", "-c"])
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fulcrum");
        let f = Fulcrum {
            child,
            proxy,
            admin,
            config_path,
            _dir: dir,
        };
        f.wait_ready().await;
        f
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let admin_ok = get(self.admin, "/healthz")
                .await
                .map(|r| r.status == 200)
                .unwrap_or(false);
            let proxy_ok = TcpStream::connect(self.proxy).await.is_ok();
            if admin_ok && proxy_ok {
                return;
            }
            assert!(Instant::now() < deadline, "fulcrum did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/api/pools` as JSON.
    pub async fn pools(&self) -> serde_json::Value {
        let r = get(self.admin, "/api/pools").await.unwrap();
        serde_json::from_str(&r.body).unwrap()
    }

    /// Health of the backend at `addr` in pool `web`, per `/api/pools`.
    pub async fn backend_healthy(&self, addr: SocketAddr) -> bool {
        let pools = self.pools().await;
        pools["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr.to_string())
            .map(|b| b["healthy"].as_bool().unwrap())
            .unwrap()
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, body as text.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Resp {
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
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, addr })
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut b = hyper::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", "localhost");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        self.sender.ready().await.map_err(std::io::Error::other)?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Send, reconnecting once if the server closed the idle connection.
    pub async fn send_retry_closed(&mut self, method: &str, path: &str) -> std::io::Result<Resp> {
        if self.sender.is_closed() {
            *self = Conn::open(self.addr).await?;
        }
        self.send(method, path, &[], b"").await
    }
}

/// One request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    Conn::open(addr)
        .await?
        .send(method, path, headers, body)
        .await
}

/// `GET path` on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Resp> {
    request(addr, "GET", path, &[], b"").await
}

/// Poll `cond` every 50 ms until it holds or `limit` passes; returns the time it took.
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
