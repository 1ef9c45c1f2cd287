//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/api/pools`, `/api/decisions`,
//! `PUT /api/pools/{pool}/weights`, `POST /api/config/reload`, `POST /api/model/reload`.
//!
//! It runs as a pingora service with its own one-thread runtime, apart from the data plane, so
//! a slow scrape can never take a worker from client traffic; being a pingora listener, it moves
//! to the new process on a binary upgrade. This file accepts connections and dispatches by method
//! and path; each route is a small function in `routes`, and the answers share the helpers in
//! `response`.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::sync::{mpsc, oneshot};

use crate::Shared;

mod response;
mod routes;
mod snapshot;

use response::Reply;
pub use snapshot::{pools_snapshot, BackendSnapshot, PoolSnapshot, PoolsSnapshot};

/// A request to reload the configuration, answered with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What every route may read: the live state and the way to ask for a configuration reload.
#[derive(Clone)]
struct Admin {
    /// State shared with the data plane.
    shared: Arc<Shared>,
    /// Asks the reloader (on the admin runtime) to re-read the configuration.
    reload: mpsc::Sender<ReloadRequest>,
}

/// The admin API as a pingora application: its listener is one of the process's listening
/// sockets, so a binary upgrade hands it to the new process with the data-plane ones.
pub struct AdminApp {
    admin: Admin,
}

impl AdminApp {
    /// The admin API over `shared`, asking `reload` for configuration reloads.
    pub fn new(shared: Arc<Shared>, reload: mpsc::Sender<ReloadRequest>) -> Self {
        AdminApp {
            admin: Admin { shared, reload },
        }
    }
}

#[async_trait::async_trait]
impl ServerApp for AdminApp {
    /// Serve one connection until it closes; when the listener stops, finish the request under
    /// way and close, so that keep-alive clients (Prometheus) reconnect to the process that
    /// took the listener over.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let admin = self.admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(dispatch(req, &admin).await) }
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        let mut shutdown = shutdown.clone();
        let stopped = async move { shutdown.wait_for(|stop| *stop).await.is_ok() };
        tokio::select! {
            _ = conn.as_mut() => {}
            true = stopped => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        None
    }
}

/// The fixed admin paths, each answering one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Readyz,
    Pools,
    Decisions,
    ConfigReload,
    ModelReload,
}

impl Route {
    const ALL: [Route; 7] = [
        Route::Metrics,
        Route::Healthz,
        Route::Readyz,
        Route::Pools,
        Route::Decisions,
        Route::ConfigReload,
        Route::ModelReload,
    ];

    fn path(self) -> &'static str {
        match self {
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Pools => "/api/pools",
            Route::Decisions => "/api/decisions",
            Route::ConfigReload => "/api/config/reload",
            Route::ModelReload => "/api/model/reload",
        }
    }

    fn method(self) -> Method {
        match self {
            Route::ConfigReload | Route::ModelReload => Method::POST,
            _ => Method::GET,
        }
    }

    fn find(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.path() == path)
    }
}

/// Answer one request: find its route by path, check the method, run the route.
async fn dispatch(req: Request<Incoming>, admin: &Admin) -> Reply {
    if let Some(pool) = routes::pools::weights_path(req.uri().path()) {
        let pool = pool.to_owned();
        return if req.method() == Method::PUT {
            routes::pools::put_weights(req, &admin.shared, &pool).await
        } else {
            response::method_not_allowed(
                "method not allowed; PUT a JSON object of backend address to weight\n",
            )
        };
    }
    let Some(route) = Route::find(req.uri().path()) else {
        return response::not_found(
            "not found; try /metrics /healthz /readyz /api/pools /api/decisions\n",
        );
    };
    if req.method() != route.method() {
        return response::method_not_allowed("method not allowed\n");
    }
    match route {
        Route::Metrics => routes::metrics::get(&admin.shared),
        Route::Healthz => routes::health::healthz(),
        Route::Readyz => routes::health::readyz(&admin.shared),
        Route::Pools => routes::pools::get(&admin.shared),
        Route::Decisions => routes::decisions::get(&admin.shared, req.uri().query()),
        Route::ConfigReload => routes::reload::config(&admin.reload).await,
        Route::ModelReload => routes::reload::model(&admin.shared).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_found_by_its_own_path() {
        for route in Route::ALL {
            assert_eq!(Route::find(route.path()), Some(route));
        }
        assert_eq!(Route::find("/nope"), None);
        assert_eq!(Route::find("/metrics/"), None);
    }

    #[test]
    fn only_the_reloads_are_posts() {
        let posts: Vec<Route> = Route::ALL
            .into_iter()
            .filter(|r| r.method() == Method::POST)
            .collect();
        assert_eq!(posts, [Route::ConfigReload, Route::ModelReload]);
    }
}
