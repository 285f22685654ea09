//! The load generator itself works: every accepted message reaches its receiver (no time asserted).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use sotto_server::{AppState, Config, SqliteStore};

async fn relay_delivers_every_accepted_message(over: sotto_bench::relay::SendOver) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let (state, stop) = AppState::single_node(Arc::new(store), Config::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sotto_server::serve(
        listener,
        state,
        stop,
        std::future::pending(),
    ));
    let r = sotto_bench::relay::run(&url, &url, 6, 60, Duration::from_secs(1), &[], over)
        .await
        .unwrap();
    assert_eq!(r.accepted, 60);
    assert_eq!(r.delivered, 60);
    assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms);
    assert!(r.cpu_us_per_msg.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_websocket_sends_delivers_every_accepted_message() {
    relay_delivers_every_accepted_message(sotto_bench::relay::SendOver::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_http_sends_delivers_every_accepted_message() {
    relay_delivers_every_accepted_message(sotto_bench::relay::SendOver::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_connection_and_measures_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let config = Config {
        limits: sotto_server::limits::Limits::none(),
        ..Config::default()
    };
    let (state, stop) = AppState::single_node(Arc::new(store), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sotto_server::serve(
        listener,
        state,
        stop,
        std::future::pending(),
    ));
    // The server runs in this process: its RSS is ours.
    let r = sotto_bench::idle::run(&url, 40, 3, 8, Some(std::process::id()))
        .await
        .unwrap();
    assert_eq!((r.connections, r.devices), (40, 3));
    assert!(r.rss_base_kb.is_some() && r.rss_full_kb.is_some() && r.rss_kb_per_conn.is_some());
    assert!(r.connects_per_sec > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_member_with_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let config = Config {
        limits: sotto_server::limits::Limits::none(),
        ..Config::default()
    };
    let (state, stop) = AppState::single_node(Arc::new(store), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sotto_server::serve(
        listener,
        state,
        stop,
        std::future::pending(),
    ));
    // `run` fails unless every member device gets every message.
    let r = sotto_bench::fanout::run(&url, 6, 3, &[]).await.unwrap();
    assert_eq!((r.members, r.messages), (6, 3));
    assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms);
    assert!(r.cpu_us_per_delivery.is_none());
}
