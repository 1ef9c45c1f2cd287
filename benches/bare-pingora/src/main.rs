//! Baseline for `benches/peer-compare.sh`: the smallest useful pingora HTTP
//! load balancer (round robin, upstream keep-alive, plain HTTP), in the spirit
//! of pingora's own `load_balancer` example. It does no routing, health
//! checking, metrics or logging, so it marks the floor fulcrum is measured against. It is
//! built against crates.io's pingora, without the changes fulcrum carries in `vendor/`: it is
//! the proxy a pingora user gets today.
//!
//! Usage: bare_pingora LISTEN_ADDR THREADS UPSTREAM_ADDR [UPSTREAM_ADDR ...]
//!
//! With `BARE_TLS_CERT` and `BARE_TLS_KEY` set (PEM files), it terminates TLS on LISTEN_ADDR
//! with pingora's rustls listener instead, for the TLS runs of the comparison.

use async_trait::async_trait;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::{configuration::ServerConf, RunArgs, Server};
use std::sync::Arc;

struct Bare(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        let backend = self.0.select(b"", 256).expect("at least one upstream");
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: bare_pingora LISTEN_ADDR THREADS UPSTREAM_ADDR [UPSTREAM_ADDR ...]");
        std::process::exit(2);
    }
    let threads: usize = args[1].parse().expect("THREADS must be a number");
    let lb = LoadBalancer::try_from_iter(&args[2..]).expect("valid upstream addresses");

    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare(Arc::new(lb)));
    match (
        std::env::var("BARE_TLS_CERT"),
        std::env::var("BARE_TLS_KEY"),
    ) {
        (Ok(cert), Ok(key)) => proxy
            .add_tls(&args[0], &cert, &key)
            .expect("readable TLS certificate and key"),
        _ => proxy.add_tcp(&args[0]),
    }
    server.add_service(proxy);
    server.run(RunArgs::default());
}
