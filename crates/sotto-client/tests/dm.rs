//! End to end: a real sottod on a real socket, real clients, real MLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

fn s(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

#[tokio::test]
async fn two_users_two_devices_each_exactly_once_in_order_and_no_plaintext_on_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let a1 = registered(&dir.path().join("a1"), &url, "alice").await;
    let a2 = linked(&a1, &dir.path().join("a2"), &url).await;
    let b1 = registered(&dir.path().join("b1"), &url, "bob").await;
    let b2 = linked(&b1, &dir.path().join("b2"), &url).await;
    assert_eq!(a2.username(), Some("alice"));
    assert_eq!(a1.devices().await.unwrap().len(), 2);

    a1.send_dm("bob", "hello bob, secret-plaintext-one")
        .await
        .unwrap();
    a1.send_dm("bob", "second from alice").await.unwrap();
    assert_eq!(
        sync_texts(&b1).await,
        vec![
            s("alice", "hello bob, secret-plaintext-one"),
            s("alice", "second from alice")
        ]
    );
    b2.send_dm("alice", "hi alice from bob's phone")
        .await
        .unwrap();
    assert_eq!(
        sync_texts(&b1).await,
        vec![s("bob", "hi alice from bob's phone")],
        "own account's message shows on the other device"
    );
    assert_eq!(
        sync_texts(&b2).await,
        vec![
            s("alice", "hello bob, secret-plaintext-one"),
            s("alice", "second from alice")
        ]
    );
    assert_eq!(
        sync_texts(&a2).await,
        vec![
            s("alice", "hello bob, secret-plaintext-one"),
            s("alice", "second from alice"),
            s("bob", "hi alice from bob's phone")
        ]
    );
    assert_eq!(
        sync_texts(&a1).await,
        vec![s("bob", "hi alice from bob's phone")]
    );
    // Nothing is delivered twice.
    for c in [&a1, &a2, &b1, &b2] {
        assert_eq!(sync_texts(c).await, vec![]);
    }
    server.stop().await;
    assert_no_plaintext(
        &dir.path().join("server"),
        &["secret-plaintext-one", "second from alice", "bob's phone"],
    );
}

fn assert_no_plaintext(dir: &std::path::Path, needles: &[&str]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                "server data contains plaintext {n:?}"
            );
        }
    }
}
