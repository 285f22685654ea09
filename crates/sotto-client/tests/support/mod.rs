//! Shared test support: a real sottod on a real socket, and real clients.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sotto_client::Client;
use sotto_server::{AppState, Config, SqliteStore};

/// A running in-process server.
pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0").await
    }

    pub async fn start_on(data_dir: &Path, addr: &str) -> Self {
        Self::start_with(data_dir, addr, Config::default()).await
    }

    pub async fn start_with(data_dir: &Path, addr: &str, config: Config) -> Self {
        Self::start_capped(data_dir, addr, config, None).await
    }

    /// A server whose database refuses to grow past `max_bytes`.
    pub async fn start_capped(
        data_dir: &Path,
        addr: &str,
        config: Config,
        max_bytes: Option<u64>,
    ) -> Self {
        let options = sotto_server::store::sqlite::SqliteOptions {
            max_bytes,
            ..Default::default()
        };
        let store = SqliteStore::open_with(data_dir, options).unwrap();
        let (state, stop_push) = AppState::single_node(Arc::new(store), config);
        let blobs = sotto_server::blobs::Blobs::local(
            &data_dir.join("blobs"),
            sotto_server::blobs::DEFAULT_MAX_FILE_BYTES,
        )
        .unwrap();
        Self::serve(state.with_blobs(blobs), stop_push, data_dir, addr).await
    }

    /// A server (SQLite under `data_dir`) whose attachment blobs go to `blobs`.
    pub async fn start_with_blobs(
        data_dir: &Path,
        config: Config,
        blobs: sotto_server::blobs::Blobs,
    ) -> Self {
        let store = SqliteStore::open(data_dir).unwrap();
        let (state, stop_push) = AppState::single_node(Arc::new(store), config);
        Self::serve(state.with_blobs(blobs), stop_push, data_dir, "127.0.0.1:0").await
    }

    /// A node over PostgreSQL (schema `schema`) with wake-ups over NATS.
    pub async fn start_node(pg_url: &str, schema: &str, nats: &str, addr: &str) -> Self {
        Self::start_node_with(pg_url, schema, nats, addr, Config::default()).await
    }

    /// [`Server::start_node`] with `config`.
    pub async fn start_node_with(
        pg_url: &str,
        schema: &str,
        nats: &str,
        addr: &str,
        config: Config,
    ) -> Self {
        let store = sotto_server::PostgresStore::connect(pg_url, Some(schema))
            .await
            .unwrap();
        let hub = Arc::new(sotto_server::Hub::default());
        let bus = sotto_server::NatsBus::connect(nats, hub.clone())
            .await
            .unwrap();
        let (state, stop_push) = AppState::new(Arc::new(store), Arc::new(bus), hub, config);
        Self::serve(state, stop_push, Path::new("/nonexistent"), addr).await
    }

    async fn serve(
        state: AppState,
        stop_push: tokio::sync::watch::Sender<bool>,
        data_dir: &Path,
        addr: &str,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            sotto_server::serve(listener, state, stop_push, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            url,
            data_dir: data_dir.to_owned(),
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// Starts the server's shutdown without waiting for it (see [`Server::finish`]).
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the server has shut down.
    pub async fn finish(mut self) {
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

/// Every file under `dir` (recursively), read whole: (path, bytes).
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// A plain HTTP client for calling the API directly (reqwest is built with rustls and no default
/// crypto provider: install ring's, as sotto-client uses).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The request that opens the push connection of `home`'s device on `server`.
pub fn push_request(
    server: &str,
    home: &Path,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws{}/v1/ws", server.trim_start_matches("http")),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token_of(home)).parse().unwrap(),
    );
    req
}

/// The device's bearer token, read from its local store (tests only: to call the API as it).
pub fn token_of(home: &std::path::Path) -> String {
    let db = rusqlite::Connection::open(home.join("sotto.db")).unwrap();
    let v: Vec<u8> = db
        .query_row(
            "SELECT value FROM sotto_config WHERE key = 'token'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    String::from_utf8(v).unwrap()
}

pub fn client(home: &Path, server: &str) -> Client {
    Client::open(home, Some(server)).unwrap()
}

pub async fn registered(home: &Path, server: &str, user: &str) -> Client {
    let c = client(home, server);
    c.account().register(user).await.unwrap();
    c
}

pub async fn linked(from: &Client, home: &Path, server: &str) -> Client {
    let code = from.account().create_link_code().await.unwrap();
    let c = client(home, server);
    c.account().link(&code).await.unwrap();
    c
}

/// Syncs and returns the texts of new messages with their senders.
pub async fn sync_texts(c: &Client) -> Vec<(String, String)> {
    let report = c.sync().await.unwrap();
    assert!(
        report.warnings.is_empty(),
        "unexpected warnings: {:?}",
        report.warnings
    );
    c.take_unshown()
        .unwrap()
        .into_iter()
        .map(|m| (m.sender, m.text))
        .collect()
}

/// PostgreSQL and NATS for multi-node tests: `Some((pg_url, nats_url))`, or `None` with a skip
/// message when they are not running (under CI, `CI` set, they are required).
#[allow(unused_imports)] // not every test binary runs multi-node tests
pub use sotto_server::testkit::{drop_schema, postgres_and_nats as services, schema_name};

/// A TCP proxy in front of a server that, while `drop_answers` is set, forwards requests but
/// replaces the server's answer with `502 Bad Gateway` and closes: the request took effect, the
/// client only learns that something failed (what a load balancer says when it loses a backend
/// mid-answer).
pub struct AnswerDropper {
    pub url: String,
    pub drop_answers: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerDropper {
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = target.trim_start_matches("http://").to_owned();
        let drop_answers = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = drop_answers.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, flag) = (target.clone(), flag.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if flag.load(std::sync::atomic::Ordering::SeqCst) {
                            let _ = cw
                                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            break; // the real answer is lost
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Self {
            url,
            drop_answers,
            task,
        }
    }
}

impl Drop for AnswerDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
