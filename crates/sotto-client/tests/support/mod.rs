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
        let store = SqliteStore::open(data_dir).unwrap();
        let (state, stop_push) = AppState::single_node(Arc::new(store), Config::default());
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

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

pub fn client(home: &Path, server: &str) -> Client {
    Client::open(home, Some(server)).unwrap()
}

pub async fn registered(home: &Path, server: &str, user: &str) -> Client {
    let mut c = client(home, server);
    c.register(user).await.unwrap();
    c
}

pub async fn linked(from: &Client, home: &Path, server: &str) -> Client {
    let code = from.create_link_code().await.unwrap();
    let mut c = client(home, server);
    c.link(&code).await.unwrap();
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
