//! `fulcrum probe`: ask a running fulcrum's admin listener whether it is up, for a container's
//! `HEALTHCHECK` (no curl in the image) or any supervisor that runs a command.
//!
//! It sends one `GET` (default `/healthz`) over plain HTTP/1.1 and exits 0 on a 2xx answer, 1
//! on anything else: another status, a refused or timed-out connection, or an unreadable
//! answer. It reads no configuration unless `-c` is given, and then only to learn
//! `admin.listen`, so a probe asks the process, not the file.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What `fulcrum probe` takes.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Admin address to ask (`HOST:PORT`); default: `admin.listen` of the file given with
    /// `-c`, else 127.0.0.1:9900. An unspecified address (0.0.0.0, [::]) is asked on loopback.
    #[arg(long)]
    pub admin: Option<String>,
    /// Path to request.
    #[arg(default_value = "/healthz")]
    pub path: String,
    /// Give up after this many milliseconds (connect, send and read together).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The address does not parse or resolve.
    #[error("cannot resolve admin address {addr:?}: {source}")]
    Resolve {
        /// The address given.
        addr: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// The path is not an origin-form request target.
    #[error("path {0:?} must start with '/' and hold no spaces or control characters")]
    BadPath(String),
    /// Connecting, sending or reading failed.
    #[error("{addr}: {source}")]
    Io {
        /// The address asked.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not an HTTP/1.x status line.
    #[error("{addr}: not an HTTP answer: {line:?}")]
    NotHttp {
        /// The address asked.
        addr: SocketAddr,
        /// The first line received.
        line: String,
    },
    /// The answer's status is not 2xx.
    #[error("{addr}{path}: answered {status}")]
    Status {
        /// The address asked.
        addr: SocketAddr,
        /// The path requested.
        path: String,
        /// The status line's code.
        status: u16,
    },
}

/// Where to send the probe: `--admin` if given, else the configuration's `admin.listen`.
/// An unspecified address is replaced by loopback of the same family, since that is where a
/// process listening on every interface answers its own machine.
pub fn target(admin: Option<&str>, configured: SocketAddr) -> Result<SocketAddr, ProbeError> {
    let addr = match admin {
        Some(a) => a
            .to_socket_addrs()
            .and_then(|mut it| {
                it.next()
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
            })
            .map_err(|source| ProbeError::Resolve {
                addr: a.to_string(),
                source,
            })?,
        None => configured,
    };
    Ok(match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    })
}

/// `GET path` on `addr`; the status code when it is 2xx.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ProbeError::BadPath(path.to_string()));
    }
    let io = |source| ProbeError::Io { addr, source };
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left().map_err(io)?).map_err(io)?;
    stream
        .set_write_timeout(Some(left().map_err(io)?))
        .map_err(io)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fulcrum-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    // Only the status line matters: read until its end, the answer's end, or the deadline.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        stream
            .set_read_timeout(Some(left().map_err(io)?))
            .map_err(io)?;
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim_end().to_string();
    let status = parse_status(&line).ok_or_else(|| ProbeError::NotHttp {
        addr,
        line: line.clone(),
    })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::Status {
            addr,
            path: path.to_string(),
            status,
        })
    }
}

/// The code of an `HTTP/1.x NNN reason` status line.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn answer_once(reply: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
            s.write_all(reply).unwrap();
        });
        addr
    }

    #[test]
    fn a_2xx_answer_passes_and_anything_else_fails() {
        let t = Duration::from_secs(2);
        let ok = answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        assert_eq!(probe(ok, "/healthz", t).unwrap(), 200);
        let down = answer_once(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(
            probe(down, "/healthz", t),
            Err(ProbeError::Status { status: 503, .. })
        ));
        let junk = answer_once(b"SSH-2.0-OpenSSH\r\n");
        assert!(matches!(
            probe(junk, "/healthz", t),
            Err(ProbeError::NotHttp { .. })
        ));
    }

    #[test]
    fn nothing_listening_fails() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(
            probe(addr, "/healthz", Duration::from_secs(1)),
            Err(ProbeError::Io { .. })
        ));
    }

    #[test]
    fn bad_paths_are_refused_before_connecting() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        for p in ["healthz", "/a b", "/a\r\nX: y"] {
            assert!(matches!(
                probe(addr, p, Duration::from_millis(10)),
                Err(ProbeError::BadPath(_))
            ));
        }
    }

    #[test]
    fn unspecified_addresses_are_asked_on_loopback() {
        let any: SocketAddr = "0.0.0.0:9900".parse().unwrap();
        assert_eq!(
            target(None, any).unwrap(),
            "127.0.0.1:9900".parse().unwrap()
        );
        assert_eq!(
            target(Some("[::]:7"), any).unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(
            target(Some("10.1.2.3:80"), any).unwrap(),
            "10.1.2.3:80".parse().unwrap()
        );
        assert!(target(Some("no port"), any).is_err());
    }
}
