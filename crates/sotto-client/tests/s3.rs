//! Attachment blobs on an S3-compatible store: a real S3 server (moto's server mode, which
//! `.ci/run` starts on 127.0.0.1:5055; `SOTTO_TEST_S3` names another), a real sottod, real
//! clients. Files round-trip, no plaintext reaches the bucket, and an unsend removes the objects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sotto_client::{FileToSend, Progress};
use support::{registered, Server};

/// The S3 endpoint, or `None` with a skip line (under CI it is required).
async fn s3_endpoint() -> Option<String> {
    let ep = std::env::var("SOTTO_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:5055".into());
    let host = ep.trim_start_matches("http://").to_owned();
    if tokio::net::TcpStream::connect(&host).await.is_ok() {
        return Some(ep);
    }
    if std::env::var_os("CI").is_some() {
        panic!("the S3 tests need an S3-compatible server under CI (none at {ep}); .ci/run starts moto");
    }
    eprintln!("SKIPPED: S3 blob-store test needs an S3-compatible server at {ep} (`moto_server -p 5055`; .ci/run starts one)");
    None
}

/// Creates `bucket` (moto takes an unsigned CreateBucket).
async fn create_bucket(ep: &str, bucket: &str) {
    let resp = support::http()
        .put(format!("{ep}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "creating the bucket: {}",
        resp.status()
    );
}

#[tokio::test]
async fn files_live_in_an_s3_bucket_without_plaintext_and_go_on_unsend() {
    let Some(ep) = s3_endpoint().await else {
        return;
    };
    let bucket = format!(
        "sotto-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    create_bucket(&ep, &bucket).await;
    let s3: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&ep)
            .with_allow_http(true)
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap(),
    );
    let blobs = sotto_server::blobs::Blobs::new(s3.clone(), 100 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_blobs(
        &dir.path().join("server"),
        sotto_server::Config::default(),
        blobs,
    )
    .await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let b = registered(&dir.path().join("b"), &server.url, "bob").await;
    let marker = b"SOTTO-PLAINTEXT-MARKER-";
    let bytes: Vec<u8> = marker
        .iter()
        .cycle()
        .take(12 * 1024 * 1024)
        .copied()
        .collect();
    let path = dir.path().join("big.txt");
    std::fs::write(&path, &bytes).unwrap();
    let file = FileToSend {
        path: path.clone(),
        ..FileToSend::default()
    };
    let (m, _) = a
        .dm("bob")
        .send_file(&file, &mut |_: Progress| {})
        .await
        .unwrap();
    b.sync().await.unwrap();
    let out = dir.path().join("got.txt");
    b.download(&m.id, Some(&out), &mut |_: Progress| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // Everything in the bucket, read back: no marker anywhere; the blob is there.
    let (_, rec) = b.engine().attachment(&m.id).unwrap().unwrap();
    let mut keys = Vec::new();
    let mut list = s3.list(None);
    while let Some(o) = list.next().await {
        keys.push(o.unwrap().location);
    }
    let pieces = keys
        .iter()
        .filter(|k| k.as_ref().starts_with(&format!("part/{}/", rec.blob)))
        .count();
    assert_eq!(pieces, 2, "a 12 MiB file is two 8 MiB PATCHes: {keys:?}");
    for k in &keys {
        let body = s3.get(k).await.unwrap().bytes().await.unwrap();
        assert!(
            !body.windows(marker.len()).any(|w| w == marker),
            "{k} holds the plaintext marker"
        );
    }
    // No blob went to the local data dir.
    assert!(!dir.path().join("server/blobs").exists());

    a.act(&m.id, sotto_client::Action::Unsend).await.unwrap();
    let mut left = Vec::new();
    let mut list = s3.list(None);
    while let Some(o) = list.next().await {
        left.push(o.unwrap().location.to_string());
    }
    assert!(left.iter().all(|k| !k.contains(&rec.blob)), "{left:?}");
    server.stop().await;
}
