//! DNS discovery: the backends of a pool with `discovery = "dns"` are every address its
//! `host:port` names resolve to (a Kubernetes headless Service), looked up again every
//! `dns_refresh_ms`.
//!
//! Lookups run on the admin runtime, never on the data-plane threads. A change of the resolved
//! set goes through the same path as a configuration reload: the running configuration with
//! the pool's backends replaced is built by the [`crate::UpstreamsBuilder`], so an added address
//! starts afresh (and ramps up when the pool has slow start), a kept one keeps its state and a
//! removed one gets no new request while the requests it holds finish. A lookup that fails or
//! finds no address keeps the last good set of that name: a resolver outage never empties a
//! pool (health checks still take a backend that is gone out of rotation).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fulcrum_config::{BackendConfig, Config, Discovery, DnsName, PoolConfig};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, ResolveErrorKind, TokioResolver};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Counter of DNS lookups by pool and result (`ok`, `empty`: no address, `error`).
pub const DNS_LOOKUPS_TOTAL: &str = "fulcrum_dns_lookups_total";

/// How long one lookup may take, retries at the nameserver included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Describe the discovery metrics to the exporter.
pub fn describe_metrics() {
    metrics::describe_counter!(
        DNS_LOOKUPS_TOTAL,
        "DNS lookups of the backend names of pools with discovery = \"dns\", by result (ok, empty, error)"
    );
}

/// How one lookup of a name went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name resolved to these addresses (sorted, at least one).
    Found(Vec<IpAddr>),
    /// The name does not exist or has no address.
    Empty,
    /// The nameserver could not be asked or did not answer.
    Error(String),
}

impl Lookup {
    /// The `result` label of [`DNS_LOOKUPS_TOTAL`].
    pub fn label(&self) -> &'static str {
        match self {
            Lookup::Found(_) => "ok",
            Lookup::Empty => "empty",
            Lookup::Error(_) => "error",
        }
    }
}

/// The last good addresses of every name of every DNS pool; read when a configuration is
/// built, written by the lookups.
#[derive(Debug, Default)]
pub struct Discovered {
    /// `(pool, host)` → addresses, sorted.
    sets: Mutex<HashMap<(String, String), Vec<IpAddr>>>,
}

impl Discovered {
    /// Nothing resolved yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn sets(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Vec<IpAddr>>> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record a good lookup of `host` for `pool`; true when its addresses changed.
    pub fn record(&self, pool: &str, host: &str, mut addrs: Vec<IpAddr>) -> bool {
        addrs.sort();
        addrs.dedup();
        let key = (pool.to_string(), host.to_string());
        let mut sets = self.sets();
        if sets.get(&key) == Some(&addrs) {
            return false;
        }
        sets.insert(key, addrs);
        true
    }

    /// Set the backends of every DNS pool of `config` to the last good addresses of its names
    /// (each address on its name's port, with its name's weight; an address two names share
    /// is listed once, under the first). Names no longer configured are forgotten.
    pub fn expand(&self, config: &mut Config) {
        let mut sets = self.sets();
        sets.retain(|(pool, host), _| {
            config
                .pool(pool)
                .is_some_and(|p| p.discovery.names().iter().any(|n| &n.host == host))
        });
        for pool in &mut config.pools {
            let Discovery::Dns { names, .. } = &pool.discovery else {
                continue;
            };
            let mut seen = BTreeSet::new();
            pool.backends = names
                .iter()
                .flat_map(|n| {
                    let key = (pool.name.clone(), n.host.clone());
                    let ips = sets.get(&key).cloned().unwrap_or_default();
                    ips.into_iter().map(move |ip| BackendConfig {
                        addr: SocketAddr::new(ip, n.port),
                        weight: n.weight,
                    })
                })
                .filter(|b| seen.insert(b.addr))
                .collect();
        }
    }

    /// The name (`host:port`) backend `addr` of `pool` was resolved from; `None` for a static
    /// pool or an address no name holds.
    pub fn origin(&self, pool: &PoolConfig, addr: SocketAddr) -> Option<String> {
        let sets = self.sets();
        pool.discovery
            .names()
            .iter()
            .find(|n| {
                n.port == addr.port()
                    && sets
                        .get(&(pool.name.clone(), n.host.clone()))
                        .is_some_and(|ips| ips.contains(&addr.ip()))
            })
            .map(DnsName::to_string)
    }
}

/// A resolver asking `nameserver`, or the system's nameservers (`/etc/resolv.conf`) when
/// `None`. Answers are not cached: every refresh asks the nameserver.
pub fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, ResolveError> {
    let mut builder = match nameserver {
        Some(ns) => {
            let group = NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = Duration::from_millis(500);
    opts.attempts = 2;
    Ok(builder.build())
}

/// Look `host` up once.
pub async fn lookup(resolver: &TokioResolver, host: &str) -> Lookup {
    // An absolute name: the search list of resolv.conf is for short names only.
    let fqdn = if host.contains('.') {
        format!("{host}.")
    } else {
        host.to_string()
    };
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(fqdn)).await {
        Err(_) => Lookup::Error(format!(
            "no answer within {} ms",
            LOOKUP_TIMEOUT.as_millis()
        )),
        Ok(Ok(found)) => {
            let mut ips: Vec<IpAddr> = found.iter().collect();
            ips.sort();
            ips.dedup();
            if ips.is_empty() {
                Lookup::Empty
            } else {
                Lookup::Found(ips)
            }
        }
        Ok(Err(e)) if no_such_name(&e) => Lookup::Empty,
        Ok(Err(e)) => Lookup::Error(e.to_string()),
    }
}

/// Whether a lookup failed because the name has no address (NXDOMAIN, or NOERROR without
/// records), rather than because the nameserver failed.
fn no_such_name(e: &ResolveError) -> bool {
    let ResolveErrorKind::Proto(p) = e.kind() else {
        return false;
    };
    matches!(
        p.kind(),
        ProtoErrorKind::NoRecordsFound { response_code, .. }
            if matches!(*response_code, ResponseCode::NoError | ResponseCode::NXDomain)
    )
}

/// Start one lookup loop per DNS pool of `config` on the current runtime; each looks its
/// names up at once, then every `dns_refresh_ms`, records good answers in `discovered` and
/// sends on `changed` when a pool's addresses changed. Aborting the set stops them.
pub fn spawn_all(
    config: &Config,
    discovered: &Arc<Discovered>,
    changed: &mpsc::Sender<()>,
    tasks: &mut JoinSet<()>,
) {
    let dns_pools: Vec<(String, Duration, Vec<DnsName>)> = config
        .pools
        .iter()
        .filter_map(|p| match &p.discovery {
            Discovery::Dns { refresh, names } => Some((p.name.clone(), *refresh, names.clone())),
            Discovery::Static => None,
        })
        .collect();
    if dns_pools.is_empty() {
        return;
    }
    let resolver = match resolver(config.server.dns_resolver) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            log::error!("DNS discovery cannot start: no resolver: {e}");
            for (pool, ..) in &dns_pools {
                metrics::counter!(DNS_LOOKUPS_TOTAL, "pool" => pool.clone(), "result" => "error")
                    .increment(1);
            }
            return;
        }
    };
    for (pool, refresh, names) in dns_pools {
        let (resolver, discovered, changed) =
            (resolver.clone(), discovered.clone(), changed.clone());
        tasks.spawn(async move {
            let mut interval = tokio::time::interval(refresh);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                resolver.clear_cache();
                let mut any_changed = false;
                for name in &names {
                    let result = lookup(&resolver, &name.host).await;
                    metrics::counter!(DNS_LOOKUPS_TOTAL, "pool" => pool.clone(), "result" => result.label())
                        .increment(1);
                    match result {
                        Lookup::Found(ips) => {
                            if discovered.record(&pool, &name.host, ips.clone()) {
                                log::info!("pool {pool}: {name} resolves to {ips:?}");
                                any_changed = true;
                            }
                        }
                        Lookup::Empty => log::warn!(
                            "pool {pool}: {name} has no address; its last good addresses stay"
                        ),
                        Lookup::Error(e) => log::warn!(
                            "pool {pool}: looking up {name} failed ({e}); its last good addresses stay"
                        ),
                    }
                }
                // A full channel already asks for a rebuild, which reads the latest sets.
                if any_changed && changed.try_send(()).is_err() && changed.is_closed() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn dns_config() -> Config {
        let src = "[server]\nlisten = [\"127.0.0.1:8080\"]\n[[routes]]\npool = \"web\"\n\
                   [pools.web]\ndiscovery = \"dns\"\n\
                   [[pools.web.backends]]\naddr = \"web.svc:8080\"\nweight = 2\n\
                   [[pools.web.backends]]\naddr = \"api.svc:9000\"\n";
        fulcrum_config::parse(src, "t.toml").unwrap().0
    }

    #[test]
    fn expand_lists_every_address_once_with_its_names_port_and_weight() {
        let d = Discovered::new();
        let mut c = dns_config();
        d.expand(&mut c);
        assert!(c.pools[0].backends.is_empty());
        assert!(d.record("web", "web.svc", vec![ip("10.0.0.2"), ip("10.0.0.1")]));
        assert!(!d.record("web", "web.svc", vec![ip("10.0.0.1"), ip("10.0.0.2")]));
        assert!(d.record("web", "api.svc", vec![ip("10.0.0.1")]));
        d.expand(&mut c);
        let got: Vec<(String, u32)> = c.pools[0]
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:8080".to_string(), 2),
                ("10.0.0.2:8080".to_string(), 2),
                ("10.0.0.1:9000".to_string(), 1)
            ]
        );
        let pool = &c.pools[0];
        let origin = |a: &str| d.origin(pool, a.parse().unwrap());
        assert_eq!(origin("10.0.0.2:8080").as_deref(), Some("web.svc:8080"));
        assert_eq!(origin("10.0.0.1:9000").as_deref(), Some("api.svc:9000"));
        assert_eq!(origin("10.0.0.3:8080"), None);
    }

    #[test]
    fn names_no_longer_configured_are_forgotten() {
        let d = Discovered::new();
        let mut c = dns_config();
        d.record("web", "web.svc", vec![ip("10.0.0.1")]);
        d.record("web", "gone.svc", vec![ip("10.0.0.9")]);
        d.record("old-pool", "web.svc", vec![ip("10.0.0.9")]);
        d.expand(&mut c);
        assert_eq!(d.sets().len(), 1);
        assert_eq!(c.pools[0].backends.len(), 1);
    }

    #[test]
    fn an_empty_dns_pool_builds_and_picks_nothing() {
        let mut c = dns_config();
        Discovered::new().expand(&mut c);
        for algorithm in fulcrum_config::Algorithm::ALL {
            c.pools[0].algorithm = algorithm;
            let up = crate::UpstreamsBuilder::new().build(&c, None);
            let pool = &up.pools[0].pool;
            assert!(pool.backends().is_empty());
            assert_eq!(pool.pick(fulcrum_balance::Tried::new(), 0), None);
            assert!(!up.ready(), "an empty pool is not ready");
        }
    }

    #[tokio::test]
    async fn a_nameserver_that_is_not_there_is_an_error() {
        // A bound but silent UDP socket: the query gets no answer.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = resolver(Some(silent.local_addr().unwrap())).unwrap();
        let got = lookup(&r, "web.svc").await;
        assert!(matches!(got, Lookup::Error(_)), "{got:?}");
        assert_eq!(got.label(), "error");
    }
}
