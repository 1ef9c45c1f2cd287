//! The live upstream state built from one configuration: router, pools, peers, metric handles.
//!
//! A whole [`Upstreams`] is swapped at once on reload; requests already in flight keep the
//! snapshot (and the pools) they started with, so their in-flight leases stay balanced.

use std::sync::Arc;

use fulcrum_balance::{Backend, Pool};
use fulcrum_config::{Config, PoolConfig};
use pingora_core::upstreams::peer::HttpPeer;

use crate::metrics::{BackendMetrics, PoolMetrics};
use crate::router::Router;

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
}

/// Everything built from one configuration.
pub struct Upstreams {
    /// Host/path routing to pool indices.
    pub router: Router,
    /// Pools in configuration order.
    pub pools: Vec<PoolRuntime>,
}

impl PoolRuntime {
    fn build(cfg: &PoolConfig) -> Self {
        let backends = cfg
            .backends
            .iter()
            .map(|b| Backend::new(b.addr, b.weight))
            .collect();
        let pool = Arc::new(Pool::new(
            cfg.name.clone(),
            cfg.algorithm,
            backends,
            cfg.ewma_decay,
            cfg.max_consecutive_failures,
        ));
        let peers = cfg
            .backends
            .iter()
            .map(|b| {
                let mut peer = HttpPeer::new(b.addr, false, String::new());
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
        }
    }

    /// Mirror live backend state into the metric gauges.
    pub fn refresh_gauges(&self) {
        let weights = self.pool.weights();
        for (i, b) in self.pool.backends().iter().enumerate() {
            self.backend_metrics[i].refresh(
                b.stats.in_flight(),
                b.stats.is_healthy(),
                weights.weights().get(i).copied().unwrap_or(0.0),
            );
        }
    }
}

impl Upstreams {
    /// Build pools, peers, metric handles and the router for a validated configuration.
    pub fn build(config: &Config) -> Self {
        let pools: Vec<PoolRuntime> = config.pools.iter().map(PoolRuntime::build).collect();
        let router = Router::new(&config.routes, |name| {
            pools.iter().position(|p| p.config.name == name)
        });
        Upstreams { router, pools }
    }

    /// True when every pool has at least one healthy backend.
    pub fn ready(&self) -> bool {
        self.pools.iter().all(|p| p.pool.healthy_count() > 0)
    }
}
