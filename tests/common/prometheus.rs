//! A real Prometheus server for end-to-end tests, scraping a fulcrum.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fulcrum_lab::harness::{eventually, get};
use serde_json::Value;

/// A real Prometheus, killed on drop.
pub struct Prometheus {
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Start Prometheus scraping `target`'s `/metrics` every second.
    pub async fn scraping(target: SocketAddr) -> Prometheus {
        Prometheus::scraping_every(target, "1s").await
    }

    /// Start Prometheus scraping `target`'s `/metrics` every `interval` (a Prometheus
    /// duration).
    pub async fn scraping_every(target: SocketAddr, interval: &str) -> Prometheus {
        let version = Command::new("prometheus").arg("--version").output();
        assert!(
            matches!(&version, Ok(o) if o.status.success()),
            "the `prometheus` server (Debian package `prometheus`) is required to test the \
             dashboard; scripts/setup.sh test installs it: {version:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {interval}\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: fulcrum\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let [port] = fulcrum_lab::harness::free_ports::<1>().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus");
        let p = Prometheus {
            addr,
            child,
            _dir: dir,
        };
        let ready = eventually(Duration::from_secs(30), || async {
            matches!(get(addr, "/-/ready").await, Ok(r) if r.status == 200)
        })
        .await;
        assert!(
            ready.is_some(),
            "prometheus did not become ready:\n{}",
            p.log()
        );
        p
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path?params` on the HTTP API; the `data` of a success, or the error text.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let r = get(self.addr, &format!("{path}?{query}"))
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = serde_json::from_str(&r.body)
            .map_err(|e| format!("HTTP {}: not JSON ({e}): {}", r.status, r.body))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!(
                "HTTP {}: {}: {}",
                r.status, body["errorType"], body["error"]
            ))
        }
    }

    /// The label sets of the series `expr` answers now, or the error.
    pub async fn series(&self, expr: &str) -> Result<Vec<serde_json::Map<String, Value>>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await?;
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["metric"].as_object().cloned().unwrap_or_default())
                .collect()),
            Some("scalar") => Ok(vec![serde_json::Map::new()]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }
}
