//! The live upstream state built from one configuration: router, pools, peers, metric handles.
//!
//! A whole [`Upstreams`] is swapped at once on reload; requests already in flight keep the
//! snapshot (and the pools) they started with. What must outlive a snapshot — every backend's
//! statistics, health and weight in force, keyed by pool and address — is kept by the
//! [`UpstreamsBuilder`], so the pools of the new snapshot share it with those of the old one and
//! a lease taken through either is released on the counter both read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fulcrum_balance::{now_ns, BackendRegistry, Pool, PoolSpec, SlowStart};
use fulcrum_config::{Config, PoolConfig};
use pingora_core::upstreams::peer::HttpPeer;

use crate::metrics::{BackendMetrics, PoolMetrics};
use crate::router::Router;
use crate::tls::{backend_server_name, UpstreamTls};

/// One pool with everything the request path needs.
pub struct PoolRuntime {
    /// The pool's configuration.
    pub config: PoolConfig,
    /// Backends, stats, weights and picker.
    pub pool: Arc<Pool>,
    /// A prepared peer per backend (timeouts set), cloned per attempt.
    pub peers: Vec<HttpPeer>,
    /// Metric handles per backend, same order as the backends.
    pub backend_metrics: Vec<BackendMetrics>,
    /// Metric handles for requests answered without a backend.
    pub metrics: PoolMetrics,
    /// TLS to the backends, when the pool speaks it (`[pools.NAME.tls]`).
    pub tls: Option<Arc<UpstreamTls>>,
}

/// Everything built from one configuration.
pub struct Upstreams {
    /// Counts the snapshots built by one [`UpstreamsBuilder`] (1 for the first): a reader that
    /// keeps per-pool state of its own (the control loop) notices a reload by its change.
    pub generation: u64,
    /// Host/path routing to pool indices.
    pub router: Router,
    /// Pools in configuration order.
    pub pools: Vec<PoolRuntime>,
}

impl PoolRuntime {
    fn build(cfg: &PoolConfig, pool: Arc<Pool>) -> Self {
        let tls = cfg.tls.as_ref().map(|t| (t, Arc::new(UpstreamTls::new(t))));
        let peers = cfg
            .backends
            .iter()
            .map(|b| {
                let mut peer = match &tls {
                    Some((t, upstream)) => {
                        let mut peer = HttpPeer::new(b.addr, true, backend_server_name(t, b.addr));
                        peer.options.verify_cert = t.verify;
                        peer.options.verify_hostname = t.verify;
                        peer.options.ca = upstream.ca.clone();
                        peer.client_cert_key = upstream.client.clone();
                        peer
                    }
                    None => HttpPeer::new(b.addr, false, String::new()),
                };
                peer.options.connection_timeout = Some(cfg.connect_timeout);
                peer.options.read_timeout = Some(cfg.read_timeout);
                peer.options.write_timeout = Some(cfg.write_timeout);
                peer.options.idle_timeout = Some(cfg.idle_timeout);
                peer
            })
            .collect();
        let source = cfg.weights.as_str();
        let backend_metrics = pool
            .backends()
            .iter()
            .map(|b| BackendMetrics::register(&cfg.name, &b.name, source))
            .collect();
        PoolRuntime {
            config: cfg.clone(),
            pool,
            peers,
            backend_metrics,
            metrics: PoolMetrics::register(&cfg.name),
            tls: tls.map(|(_, upstream)| upstream),
        }
    }

    /// Mirror live backend state into the metric gauges.
    pub fn refresh_gauges(&self) {
        let weights = self.pool.weights();
        let now = now_ns();
        for (i, b) in self.pool.backends().iter().enumerate() {
            self.backend_metrics[i].refresh(
                b.stats.in_flight(),
                b.stats.is_healthy(),
                weights.weights().get(i).copied().unwrap_or(0.0),
                self.pool.ramp_factor(i, now) < 1.0,
            );
        }
    }
}

/// The pool's slow-start setting as the balancer takes it (`None` when off).
pub fn slow_start(cfg: &PoolConfig) -> Option<SlowStart> {
    SlowStart::new(cfg.slow_start, cfg.slow_start_min_percent)
}

/// Builds [`Upstreams`] from successive configurations, carrying every backend's state from
/// one to the next (see [`BackendRegistry`]). One lives as long as the process.
#[derive(Debug, Default)]
pub struct UpstreamsBuilder {
    registry: BackendRegistry,
    generation: AtomicU64,
}

impl UpstreamsBuilder {
    /// A builder whose first snapshot starts every backend afresh.
    pub fn new() -> Self {
        Self::default()
    }

    /// Build pools, peers, metric handles and the router for a validated configuration.
    ///
    /// `previous` is the configuration the snapshot replaces (`None` at start-up): a pool whose
    /// `weights` source changed takes its configured weights again; otherwise backends kept
    /// from it keep their state and their weight in force (see [`BackendRegistry::build_pool`]).
    pub fn build(&self, config: &Config, previous: Option<&Config>) -> Upstreams {
        let now = now_ns();
        let pools: Vec<PoolRuntime> = config
            .pools
            .iter()
            .map(|cfg| {
                let backends: Vec<_> = cfg.backends.iter().map(|b| (b.addr, b.weight)).collect();
                let keep_weights = previous
                    .and_then(|p| p.pools.iter().find(|old| old.name == cfg.name))
                    .is_none_or(|old| old.weights == cfg.weights);
                let spec = PoolSpec {
                    name: &cfg.name,
                    algorithm: cfg.algorithm,
                    backends: &backends,
                    ewma_decay: cfg.ewma_decay,
                    max_consecutive_failures: cfg.max_consecutive_failures,
                    slow_start: slow_start(cfg),
                    keep_weights,
                };
                PoolRuntime::build(cfg, self.registry.build_pool(&spec, now))
            })
            .collect();
        let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        self.registry.retain_pools(&names);
        let router = Router::new(&config.routes, |name| {
            pools.iter().position(|p| p.config.name == name)
        });
        Upstreams {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            router,
            pools,
        }
    }
}

impl Upstreams {
    /// True when every pool has at least one healthy backend.
    pub fn ready(&self) -> bool {
        self.pools.iter().all(|p| p.pool.healthy_count() > 0)
    }
}
