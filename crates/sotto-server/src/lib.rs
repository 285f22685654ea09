//! `sotto-server`: the Sotto delivery service, as a library (`app`, `serve`) and the `sottod` binary.
//!
//! ```text
//! http     thin axum handlers: authenticate, parse, call ds
//! ds       the delivery-service rules (commit rule, membership, key packages, links), no HTTP
//! store    the Store trait and its SQLite backend (PostgreSQL is planned)
//! bus      wake-ups: the local Hub of WebSocket connections and the Bus that reaches it
//! ws       the push channel
//! openapi  the OpenAPI document of the HTTP API
//! ```
//! The server holds no key that can read a message: it sees MLS ciphertext, public keys and
//! certificates, and stores only hashes of device tokens.
#![deny(missing_docs)]

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod bus;
pub mod ds;
pub mod error;
pub mod http;
pub mod migrate;
pub mod openapi;
pub mod store;
pub mod ws;

pub use bus::{Bus, Hub, LocalBus, NatsBus};
pub use store::{postgres::PostgresStore, sqlite::SqliteStore, Store};

/// Tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a device link code stays valid, in seconds.
    pub link_ttl_secs: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            link_ttl_secs: 600,
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Wake-ups to all nodes.
    pub bus: Arc<dyn Bus>,
    /// This node's connections.
    pub hub: Arc<Hub>,
    /// Tunables.
    pub config: Arc<Config>,
    /// Flips to `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `store`, with wake-ups carried by `bus` to `hub` (this node's connections).
    /// Returns the sender that shuts down push connections.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        config: Config,
    ) -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (
            Self {
                store,
                bus,
                hub,
                config: Arc::new(config),
                shutdown: rx,
            },
            tx,
        )
    }

    /// Single-node state over `store` with the in-process bus.
    pub fn single_node(store: Arc<dyn Store>, config: Config) -> (Self, watch::Sender<bool>) {
        let hub = Arc::new(Hub::default());
        Self::new(store, Arc::new(LocalBus::new(hub.clone())), hub, config)
    }
}

/// The application router.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    http::router(state)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                use axum::response::IntoResponse;
                tracing::error!("handler panicked");
                error::ApiError::new(sotto_api::ErrorCode::Internal, "internal error")
                    .into_response()
            },
        ))
}

/// Serves `state` on `listener` until `shutdown` completes, then closes push connections and waits
/// for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    stop_push: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_push.send(true);
        })
        .await
}
