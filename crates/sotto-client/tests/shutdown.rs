//! Health, readiness and an orderly shutdown, against a real sottod on a real socket: on the
//! shutdown signal `/readyz` answers 503 and push connections close with 1001 "going away"; the
//! node goes on serving for its drain time, then stops accepting, and nothing it acknowledged is
//! lost (the same data, served again, has it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sotto_server::Config;
use support::{http, push_request, registered, sync_texts, Server};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn get(url: &str) -> (u16, String) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_closes_push_with_going_away_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let config = Config {
        drain: Duration::from_millis(1500),
        ..Config::default()
    };
    let mut server = Server::start_with(&data, "127.0.0.1:0", config.clone()).await;
    let url = server.url.clone();
    let a = registered(&dir.path().join("a"), &url, "alice").await;
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    a.dm("bob").send("before the shutdown").await.unwrap();

    assert_eq!(get(&format!("{url}/healthz")).await, (200, "ok".into()));
    assert_eq!(get(&format!("{url}/readyz")).await, (200, "ready".into()));

    // bob's push connection, as the SDK holds it.
    let req = push_request(&url, &dir.path().join("b"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req.clone()).await.unwrap();

    let asked = Instant::now();
    server.begin_stop();
    // The push connection goes at once, with "going away".
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Message::Close(frame) = m.unwrap() {
                return frame;
            }
        }
        None
    })
    .await
    .expect("closed within the drain")
    .expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
    // Draining: not ready, still serving.
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);
    // A new push connection is sent elsewhere rather than opened and closed.
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    a.dm("bob")
        .send("acknowledged while draining")
        .await
        .unwrap();
    // Then it stops accepting, after the drain time.
    server.finish().await;
    assert!(asked.elapsed() >= config.drain);
    assert!(
        http().get(format!("{url}/healthz")).send().await.is_err(),
        "no longer accepting"
    );

    // Served again from the same data: everything acknowledged is there.
    let again = Server::start_with(&data, "127.0.0.1:0", Config::default()).await;
    drop((a, b));
    let b = sotto_client::Client::open(&dir.path().join("b"), Some(&again.url)).unwrap();
    let texts: Vec<String> = sync_texts(&b).await.into_iter().map(|(_, t)| t).collect();
    assert!(
        texts.contains(&"before the shutdown".to_owned())
            && texts.contains(&"acknowledged while draining".to_owned()),
        "{texts:?}"
    );
    again.stop().await;
}
