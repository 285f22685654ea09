//! `sotto-server`: the Sotto delivery service, as a library (`app`, `serve`) and the `sottod` binary.
//!
//! ```text
//! http     thin axum handlers: authenticate, parse, call ds
//! ds       the delivery-service rules (commit rule, membership, key packages, links), no HTTP
//! store    the Store contract (six traits by resource) and its SQLite and PostgreSQL backends
//! backup   online copies of the embedded database
//! blobs    attachment blobs: resumable uploads (tus) and ranged downloads, in an object store
//! bus      wake-ups: the local Hub of WebSocket connections and the Bus that reaches it
//! ws       the push channel
//! openapi  the OpenAPI document of the HTTP API
//! telemetry  Prometheus metrics (no id is ever a label)
//! ```
//! The server holds no key that can read a message: it sees MLS ciphertext, public keys and
//! certificates, and stores only hashes of device tokens.
#![deny(missing_docs)]

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::serve::Listener;
use axum::Router;
use tokio::sync::watch;

pub mod auth;
pub mod backup;
pub mod blobs;
pub mod bus;
pub mod ds;
pub mod error;
pub mod http;
pub mod limits;
pub mod migrate;
pub mod net;
pub mod openapi;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
pub mod web;
pub mod ws;

pub use auth::AuthCache;
pub use bus::{Bus, Hub, LocalBus, NatsBus};
pub use store::{postgres::PostgresStore, sqlite::SqliteStore, Store};

/// Tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a device link code stays valid, in seconds.
    pub link_ttl_secs: i64,
    /// Log entries and welcomes older than this (seconds) are dropped even if a device has not
    /// fetched them yet.
    pub retention_secs: i64,
    /// How often read positions are saved and the log pruned, in seconds.
    pub prune_interval_secs: u64,
    /// Abuse limits.
    pub limits: limits::Limits,
    /// A connection that sends nothing for this long is closed (idle keep-alive, half-open, or a
    /// request that never finishes arriving).
    pub read_idle: std::time::Duration,
    /// On shutdown: how long the node keeps serving with `/readyz` answering 503 (so a load
    /// balancer stops sending it new clients) before it stops accepting connections.
    pub drain: std::time::Duration,
    /// On shutdown, after it stops accepting: the most it waits for requests in flight.
    pub shutdown_timeout: std::time::Duration,
    /// Whether `/metrics` is served with the API (off when it has an address of its own).
    pub metrics_on_api: bool,
    /// The web client's bundle, served at `/` (`None`: not served; `/` is a 404).
    pub web_dir: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            link_ttl_secs: 600,
            retention_secs: 30 * 24 * 3600,
            prune_interval_secs: 60,
            limits: limits::Limits::default(),
            read_idle: net::READ_IDLE,
            drain: std::time::Duration::ZERO,
            shutdown_timeout: std::time::Duration::from_secs(10),
            metrics_on_api: true,
            web_dir: None,
        }
    }
}

/// Read positions reported by log fetches (a device asking for entries after `n` has applied
/// everything up to `n`), kept in memory and saved in batches: they only decide when entries can
/// be dropped, so losing the last few seconds of them in a crash only delays pruning.
#[derive(Debug, Default)]
pub struct Cursors(std::sync::Mutex<std::collections::HashMap<(String, String), u64>>);

impl Cursors {
    const MAX: usize = 1_000_000;

    /// Notes that `device` has read `conversation` up to `seq`.
    pub fn note(&self, conversation: &str, device: &str, seq: u64) {
        if seq == 0 {
            return;
        }
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::MAX {
                return; // only delays pruning until the next save empties the map
            }
            let e = m
                .entry((conversation.to_owned(), device.to_owned()))
                .or_insert(0);
            *e = (*e).max(seq);
        }
    }

    /// The read position noted for `device` in `conversation` and not yet saved.
    pub fn get(&self, conversation: &str, device: &str) -> Option<u64> {
        let m = self.0.lock().ok()?;
        m.get(&(conversation.to_owned(), device.to_owned()))
            .copied()
    }

    fn take(&self) -> Vec<(String, String, u64)> {
        match self.0.lock() {
            Ok(mut m) => m.drain().map(|((c, d), s)| (c, d, s)).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Saves read positions and prunes the log: every few seconds, and once more at shutdown.
async fn maintenance(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    let mut flush = tokio::time::interval(std::time::Duration::from_secs(2));
    // The first prune comes one interval after start, not at once: a node that starts (or
    // restarts while clients reconnect) serves first, and deletes a backlog a period later.
    let every = std::time::Duration::from_secs(state.ds.config.prune_interval_secs.max(1));
    let mut prune = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = flush.tick() => {
                save_cursors(&state).await;
                state.ds.limiter.sweep();
                telemetry::upkeep();
            }
            _ = prune.tick() => {
                save_cursors(&state).await;
                // The store's clock (the database's, with PostgreSQL), not this node's: what is
                // due is the same whichever node's maintenance finds it.
                let now = match state.ds.store.clock().await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "the store's clock does not answer");
                        continue;
                    }
                };
                let started = std::time::Instant::now();
                match state.ds.store.expire(now).await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics::counter!("sotto_expired_entries_total").increment(n);
                        tracing::info!(
                            entries = n,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "deleted expired messages"
                        )
                    }
                    Err(e) => tracing::warn!(error = %e, "deleting expired messages failed"),
                }
                let cutoff = now - state.ds.config.retention_secs;
                let started = std::time::Instant::now();
                match state.ds.store.prune(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics::counter!("sotto_pruned_entries_total").increment(n);
                        tracing::info!(
                            entries = n,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "pruned the log"
                        )
                    }
                    Err(e) => tracing::warn!(error = %e, "pruning failed"),
                }
                match state.ds.blobs.sweep(now, cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(blobs = n, "removed expired and orphaned blobs"),
                    Err(e) => tracing::warn!(error = %e.message, "sweeping blobs failed"),
                }
            }
            _ = shutdown.changed() => {
                save_cursors(&state).await;
                return;
            }
        }
    }
}

async fn save_cursors(state: &AppState) {
    let batch = state.ds.cursors.take();
    if batch.is_empty() {
        return;
    }
    if let Err(e) = state.ds.store.save_cursors(batch).await {
        tracing::warn!(error = %e, "could not save read positions");
    }
}

/// Shared state of every handler: the delivery service, and the signal that shuts the node down.
#[derive(Clone)]
pub struct AppState {
    /// The delivery service, with the store, bus, limits and blobs it works with.
    pub ds: ds::DeliveryService,
    /// Flips to `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("ds", &self.ds)
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
        let ds = ds::DeliveryService {
            store,
            bus,
            hub,
            limiter: Arc::new(limits::RateLimiter::new(config.limits.clone())),
            blobs: Arc::new(blobs::Blobs::memory(blobs::DEFAULT_MAX_FILE_BYTES)),
            config: Arc::new(config),
            cursors: Arc::new(Cursors::default()),
        };
        (Self { ds, shutdown: rx }, tx)
    }

    /// Whether the node is shutting down (`/readyz` then answers 503).
    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The same state with its blobs kept in `blobs`.
    pub fn with_blobs(mut self, blobs: blobs::Blobs) -> Self {
        self.ds.blobs = Arc::new(blobs);
        self
    }

    /// The same state with its rate limits checked by `limiter`.
    pub fn with_limiter(mut self, limiter: limits::RateLimiter) -> Self {
        self.ds.limiter = Arc::new(limiter);
        self
    }

    /// Single-node state over `store` with the in-process bus.
    pub fn single_node(store: Arc<dyn Store>, config: Config) -> (Self, watch::Sender<bool>) {
        let hub = Arc::new(Hub::default());
        Self::new(store, Arc::new(LocalBus::new(hub.clone())), hub, config)
    }
}

/// The application router.
pub fn app(state: AppState) -> Router {
    let limit = state.ds.config.max_body_bytes;
    telemetry::handle();
    http::router(state)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(telemetry::track))
        .layer(axum::middleware::from_fn(net::linger))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                use axum::response::IntoResponse;
                tracing::error!("handler panicked");
                ds::DsError::internal("internal error").into_response()
            },
        ))
}

/// The remote address of a connection (for per-IP limits), available to handlers as
/// `ConnectInfo<Peer>`.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Serves `state` on `listener` (plain TCP, or [`tls::TlsListener`]) until `shutdown` completes,
/// then shuts down in order:
/// 1. `/readyz` answers 503, and push connections close with 1001 "going away" (after answering
///    the sends they had taken), so clients reconnect, through the load balancer, elsewhere;
/// 2. for [`Config::drain`] the node still serves requests;
/// 3. it stops accepting connections and waits for the requests in flight, at most
///    [`Config::shutdown_timeout`] (a message is acknowledged only once durable, so one cut off
///    there was never acknowledged, and its client sends it again);
/// 4. the last read positions are saved.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    stop_push: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = std::net::SocketAddr>,
{
    let upkeep = tokio::spawn(maintenance(state.clone()));
    let listener = net::IdleListener::new(listener, state.ds.config.read_idle);
    let (drain, timeout) = (state.ds.config.drain, state.ds.config.shutdown_timeout);
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let router = app(state).into_make_service_with_connect_info::<Peer>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        // From here `AppState::draining` is true: `/readyz` and new push connections answer
        // 503, open ones close.
        let _ = stop_push.send(true);
        metrics::gauge!("sotto_draining").set(1.0);
        tracing::info!(drain_ms = drain.as_millis() as u64, "draining");
        tokio::time::sleep(drain).await;
        let _ = stopping_tx.send(());
    });
    let server = server.into_future();
    tokio::pin!(server);
    let out = tokio::select! {
        out = &mut server => out,
        _ = stopping => match tokio::time::timeout(timeout, &mut server).await {
            Ok(out) => out,
            Err(_) => {
                tracing::warn!("requests still in flight at the shutdown timeout; stopping anyway");
                Ok(())
            }
        },
    };
    // The final save of read positions runs when the shutdown signal flips; bounded wait.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), upkeep).await;
    out
}
