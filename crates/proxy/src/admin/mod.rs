//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/api/pools`, `/api/decisions`,
//! `PUT /api/pools/{pool}/weights`, `POST /api/config/reload`, `POST /api/model/reload`, and
//! the status page at `/` and `/status`.
//!
//! It runs as a pingora service with its own one-thread runtime, apart from the data plane, so
//! a slow scrape can never take a worker from client traffic; being a pingora listener, it moves
//! to the new process on a binary upgrade. This file accepts connections and dispatches by method
//! and path; `access` admits or refuses each request first (token, read-only exposed listener,
//! JSON bodies and same origin for changes), each route is a small function in `routes`, and
//! the answers share the helpers in `response`.

use std::convert::Infallible;
use std::net::SocketAddr;
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

mod access;
mod response;
mod routes;
mod snapshot;
mod window;

use access::Access;
use response::Reply;
pub use snapshot::{pools_snapshot, BackendSnapshot, PoolSnapshot, PoolsSnapshot};

/// A request to reload the configuration, answered with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What every route may read: the live state and the way to ask for a configuration reload.
#[derive(Clone)]
struct Admin {
    /// State shared with the data plane; its configuration's `[admin]` table holds the token,
    /// so a reload that rotates the token applies to the next request.
    shared: Arc<Shared>,
    /// Asks the reloader (on the admin runtime) to re-read the configuration.
    reload: mpsc::Sender<ReloadRequest>,
    /// The address the listener is bound to: whether it is loopback, and its own origin.
    listen: SocketAddr,
    /// Histogram snapshots for the recent p50 and p99 of `/api/pools`.
    windows: Arc<window::LatencyWindows>,
}

/// The admin API as a pingora application: its listener is one of the process's listening
/// sockets, so a binary upgrade hands it to the new process with the data-plane ones.
pub struct AdminApp {
    admin: Admin,
}

impl AdminApp {
    /// The admin API over `shared`, asking `reload` for configuration reloads.
    ///
    /// `listen` is the listener's address: whether it is loopback, and its own origin.
    pub fn new(
        shared: Arc<Shared>,
        reload: mpsc::Sender<ReloadRequest>,
        listen: SocketAddr,
    ) -> Self {
        AdminApp {
            admin: Admin {
                shared,
                reload,
                listen,
                windows: Arc::default(),
            },
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

/// The admin paths, each answering one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Readyz,
    Pools,
    Weights,
    Decisions,
    Forecast,
    ConfigReload,
    ModelReload,
    StatusPage,
    Status,
}

impl Route {
    const ALL: [Route; 11] = [
        Route::Metrics,
        Route::Healthz,
        Route::Readyz,
        Route::Pools,
        Route::Weights,
        Route::Decisions,
        Route::Forecast,
        Route::ConfigReload,
        Route::ModelReload,
        Route::StatusPage,
        Route::Status,
    ];

    /// The path, or for `Weights` its pattern (which matches itself).
    fn path(self) -> &'static str {
        match self {
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Pools => "/api/pools",
            Route::Weights => "/api/pools/{pool}/weights",
            Route::Decisions => "/api/decisions",
            Route::Forecast => "/api/forecast",
            Route::ConfigReload => "/api/config/reload",
            Route::ModelReload => "/api/model/reload",
            Route::StatusPage => "/",
            Route::Status => "/status",
        }
    }

    fn method(self) -> Method {
        match self {
            Route::Weights => Method::PUT,
            Route::ConfigReload | Route::ModelReload => Method::POST,
            _ => Method::GET,
        }
    }

    /// Whether the route changes the proxy's state, and so is guarded as [`Access::Change`].
    fn changes_state(self) -> bool {
        matches!(
            self,
            Route::Weights | Route::ConfigReload | Route::ModelReload
        )
    }

    /// What a request must show before this route runs.
    fn access(self) -> Access {
        if self.changes_state() {
            Access::Change
        } else {
            Access::of_path(self.path())
        }
    }

    fn find(path: &str) -> Option<Route> {
        if routes::pools::weights_path(path).is_some() {
            return Some(Route::Weights);
        }
        Route::ALL.into_iter().find(|r| r.path() == path)
    }
}

/// Answer one request: find its route by path, admit or refuse it, check the method, run the
/// route.
async fn dispatch(req: Request<Incoming>, admin: &Admin) -> Reply {
    let route = Route::find(req.uri().path());
    let access = match route {
        Some(r) if r.method() == req.method() => r.access(),
        // A wrong method or an unknown path is told so only to whom may read the path.
        _ => Access::of_path(req.uri().path()),
    };
    // The configuration is read for this statement only: no snapshot is held while a route
    // awaits a slow client.
    let admitted = access::check(
        access,
        req.headers(),
        admin.listen,
        &admin.shared.config.load().admin,
    );
    if let Err(refusal) = admitted {
        return refusal.reply();
    }
    let Some(route) = route else {
        return response::not_found(
            "not found; try / (status page) /metrics /healthz /readyz /api/pools /api/decisions /api/forecast?pool=NAME\n",
        );
    };
    if req.method() != route.method() {
        return response::method_not_allowed(match route {
            Route::Weights => {
                "method not allowed; PUT a JSON object of backend address to weight\n"
            }
            _ => "method not allowed\n",
        });
    }
    match route {
        Route::Metrics => routes::metrics::get(&admin.shared),
        Route::Healthz => routes::health::healthz(),
        Route::Readyz => routes::health::readyz(&admin.shared),
        Route::Pools => routes::pools::get(&admin.shared, &admin.windows),
        Route::Weights => {
            let pool = routes::pools::weights_path(req.uri().path())
                .unwrap_or_default()
                .to_owned();
            routes::pools::put_weights(req, &admin.shared, &pool).await
        }
        Route::Decisions => routes::decisions::get(&admin.shared, req.uri().query()),
        Route::Forecast => routes::forecast::get(&admin.shared, req.uri().query()),
        Route::ConfigReload => routes::reload::config(&admin.reload).await,
        Route::ModelReload => routes::reload::model(&admin.shared).await,
        Route::StatusPage | Route::Status => routes::status::get(),
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

    #[test]
    fn every_route_that_is_not_a_get_changes_state_and_is_guarded() {
        for route in Route::ALL {
            assert_eq!(
                route.changes_state(),
                route.method() != Method::GET,
                "{route:?}"
            );
            assert_eq!(route.access() == Access::Change, route.changes_state());
        }
        assert_eq!(Route::Metrics.access(), Access::Metrics);
        assert_eq!(Route::Healthz.access(), Access::Open);
        assert_eq!(Route::Readyz.access(), Access::Open);
        assert_eq!(Route::Pools.access(), Access::Read);
        assert_eq!(Route::Decisions.access(), Access::Read);
        assert_eq!(Route::Forecast.access(), Access::Read);
        // The page holds no data: what it shows comes from the /api reads it makes.
        assert_eq!(Route::StatusPage.access(), Access::Open);
        assert_eq!(Route::Status.access(), Access::Open);
    }
}
