//! The load generator itself works: every accepted message reaches its receiver (no time asserted).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use sotto_server::{AppState, Config, SqliteStore};

/// A sottod on a real listener, in this process, over SQLite in `dir`; `config` as given.
async fn serve(dir: &std::path::Path, config: Config) -> String {
    let store = SqliteStore::open(dir).unwrap();
    let (state, stop) = AppState::single_node(Arc::new(store), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sotto_server::serve(
        listener,
        state,
        stop,
        std::future::pending(),
    ));
    url
}

/// [`Config::default`] without rate limits (one address drives every device).
fn unlimited() -> Config {
    Config {
        limits: sotto_server::limits::Limits::none(),
        ..Config::default()
    }
}

async fn relay_delivers_every_accepted_message(
    over: sotto_bench::relay::SendOver,
    timer: Option<u32>,
) {
    let dir = tempfile::tempdir().unwrap();
    let url = serve(dir.path(), Config::default()).await;
    let plan = sotto_bench::relay::RelayPlan {
        devices: 6,
        rate: 60,
        duration: Duration::from_secs(1),
        over,
        timer,
    };
    let r = sotto_bench::relay::run(&url, &url, &plan, &[])
        .await
        .unwrap();
    assert_eq!(r.accepted, 60);
    assert_eq!(r.delivered, 60);
    assert_eq!(r.samples.len(), 60);
    assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms);
    assert!(r.cpu_us_per_msg.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_websocket_sends_delivers_every_accepted_message() {
    relay_delivers_every_accepted_message(sotto_bench::relay::SendOver::Ws, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_http_sends_delivers_every_accepted_message() {
    relay_delivers_every_accepted_message(sotto_bench::relay::SendOver::Http, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_a_timer_in_every_dm_delivers_every_accepted_message() {
    relay_delivers_every_accepted_message(sotto_bench::relay::SendOver::Ws, Some(3600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_backlog_lands_with_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let url = serve(dir.path(), unlimited()).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let latest = sotto_bench::relay::fill(&url, 1000, Some(30))
        .await
        .unwrap();
    assert!(
        latest >= before + 30 && latest <= before + 30 + 60,
        "{latest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_connection_and_measures_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let url = serve(dir.path(), unlimited()).await;
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
    let url = serve(dir.path(), unlimited()).await;
    // `run` fails unless every member device gets every message.
    let r = sotto_bench::fanout::run(&url, 6, 3, &[]).await.unwrap();
    assert_eq!((r.members, r.messages), (6, 3));
    assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms);
    assert!(r.cpu_us_per_delivery.is_none());
}
