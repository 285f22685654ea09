//! `/metrics` after real traffic (its own test binary: the recorder is per process): the counters
//! move, and no label or value names an account, a device, a conversation or a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use sotto_client::FileToSend;
use support::{http, push_request, registered, Server};

/// The value of the first sample line starting with `series`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs of `n` or more hex digits with a letter among them (ids look like that; the digits of a
/// long decimal fraction do not).
fn hex_runs(page: &str, n: usize) -> Vec<String> {
    page.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() >= n && w.chars().any(|c| c.is_ascii_alphabetic()))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic_and_name_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let a = registered(&dir.path().join("a"), &url, "alice").await;
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    for i in 0..3 {
        a.dm("bob").send(&format!("hello {i}")).await.unwrap();
    }
    let file = dir.path().join("note.txt");
    std::fs::write(&file, b"some file bytes".repeat(100)).unwrap();
    a.dm("bob")
        .send_file(
            &FileToSend {
                path: file,
                ..FileToSend::default()
            },
            &mut |_| {},
        )
        .await
        .unwrap();
    b.sync().await.unwrap();
    // bob's push connection stays open while the page is read.
    let req = push_request(&url, &dir.path().join("b"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let _ready = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    // Histogram samples reach their buckets at the maintenance loop's next upkeep (every 2 s):
    // read the page until the request-duration histogram shows the sends.
    let messages_histogram =
        "sotto_http_request_duration_seconds_bucket{route=\"/v1/conversations/{id}/messages\"";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let page = loop {
        let resp = http().get(format!("{url}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let page = resp.text().await.unwrap();
        if sample(&page, messages_histogram).is_some() {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no upkeep in 20 s: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        sample(&page, "sotto_messages_accepted_total").unwrap() >= 4.0,
        "{page}"
    );
    assert!(
        sample(&page, "sotto_commits_accepted_total").unwrap() >= 1.0,
        "{page}"
    );
    assert_eq!(sample(&page, "sotto_ws_connections"), Some(1.0), "{page}");
    assert!(
        sample(
            &page,
            "sotto_http_requests_total{route=\"/v1/conversations/{id}/messages\",method=\"POST\",status=\"200\"}"
        )
        .unwrap()
            >= 4.0,
        "{page}"
    );
    assert!(
        sample(&page, "sotto_store_batch_size_count").unwrap() > 0.0,
        "{page}"
    );
    assert!(
        sample(&page, "sotto_store_commit_seconds_count").unwrap() > 0.0,
        "{page}"
    );
    assert!(
        sample(&page, "sotto_blob_bytes_total{direction=\"in\"}").unwrap() >= 1500.0,
        "{page}"
    );
    // Nothing in it names anyone or anything.
    let dm = a.engine().dm_id("bob").unwrap().unwrap();
    for secret in [
        "alice",
        "bob",
        dm.as_str(),
        &a.device_id().unwrap(),
        &b.device_id().unwrap(),
    ] {
        assert!(!page.contains(secret), "{secret} in the metrics");
    }
    assert_eq!(hex_runs(&page, 16), Vec::<String>::new());
    drop(ws);
    server.stop().await;
}
