//! What the server deletes leaves its files: log entries every member device has read are
//! pruned, and their ciphertext is gone from the SQLite database, its WAL and its shared-memory
//! file (secure_delete, then a WAL checkpoint that truncates), not only from the tables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use sotto_server::Config;
use support::{http, registered, token_of, Server};

/// The ciphertexts of a conversation's log after its first entry, as the server serves them to
/// the device at `home` (without moving its read position).
async fn log_entries(server: &str, conv: &str, home: &std::path::Path) -> Vec<Vec<u8>> {
    let page: serde_json::Value = http()
        .get(format!("{server}/v1/conversations/{conv}/log?after=1"))
        .bearer_auth(token_of(home))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e["data"].as_str().unwrap())
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn pruned_ciphertext_is_gone_from_the_database_its_wal_and_shm() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        prune_interval_secs: 1,
        ..Config::default()
    };
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", config).await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let b = registered(&dir.path().join("b"), &server.url, "bob").await;
    a.dm("bob").send("hello").await.unwrap();
    b.sync().await.unwrap();
    for i in 0..20 {
        a.dm("bob")
            .send(&format!("message {i}: {}", "lorem ipsum ".repeat(150)))
            .await
            .unwrap();
    }
    // The ciphertexts as the server stores them, fetched without moving bob's read position.
    let conv = a.engine().dm_id("bob").unwrap().unwrap();
    let bob_home = dir.path().join("b");
    let log = || log_entries(&server.url, &conv, &bob_home);
    let stored: Vec<Vec<u8>> = log()
        .await
        .into_iter()
        // The 20 long texts (the log also holds the first message and receipts).
        .filter(|c| c.len() > 1500)
        .collect();
    assert_eq!(stored.len(), 20);
    let db = dir.path().join("server");
    let traces = || -> Vec<String> {
        let mut found = Vec::new();
        for name in ["sotto.db", "sotto.db-wal", "sotto.db-shm"] {
            let Ok(bytes) = std::fs::read(db.join(name)) else {
                continue;
            };
            for (i, c) in stored.iter().enumerate() {
                let probe = &c[c.len() / 2..c.len() / 2 + 64];
                if bytes.windows(probe.len()).any(|w| w == probe) {
                    found.push(format!("{name} holds entry {i}"));
                }
            }
        }
        found
    };
    assert!(
        !traces().is_empty(),
        "the probe finds the entries while they are stored"
    );
    // Every member device reads them; a device tells how far it read with its next fetch, so
    // one more message follows. The next prune deletes what both have read.
    b.sync().await.unwrap();
    a.dm("bob").send("the last word").await.unwrap();
    let mut left = traces();
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        b.sync().await.unwrap();
        a.sync().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = traces();
    }
    let rows: i64 = rusqlite::Connection::open(db.join("sotto.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
        .unwrap();
    assert!(
        left.is_empty(),
        "pruned ciphertext is still in the files ({rows} log rows): {left:?}"
    );
    // And the log no longer serves them (only what came after).
    for data in log().await {
        assert!(
            !stored.contains(&data),
            "the log still serves a pruned entry"
        );
    }
    server.stop().await;
}

/// The files of a device's home that hold its data.
fn holds(home: &std::path::Path, needle: &[u8]) -> Vec<String> {
    ["sotto.db", "sotto.db-wal", "sotto.db-shm"]
        .iter()
        .filter(|name| {
            std::fs::read(home.join(name))
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        })
        .map(|n| (*n).to_owned())
        .collect()
}

#[tokio::test]
async fn an_unsent_message_leaves_every_devices_files_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    let a = registered(&ha, &server.url, "alice").await;
    let b = registered(&hb, &server.url, "bob").await;
    let marker = b"SOTTO-UNSENT-MARKER-7f3a";
    let text = format!("{} and then some", String::from_utf8_lossy(marker));
    let (m, _) = a.dm("bob").send(&text).await.unwrap();
    b.sync().await.unwrap();
    // An edit's text is wiped with it.
    a.act(&m.id, sotto_client::Action::Edit(format!("{text}, edited")))
        .await
        .unwrap();
    b.sync().await.unwrap();
    assert!(
        !holds(&hb, marker).is_empty(),
        "the probe finds the text while it is stored"
    );
    assert!(!holds(&ha, marker).is_empty());
    a.act(&m.id, sotto_client::Action::Unsend).await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(b.dm("alice").history().unwrap()[0].text, None);
    for (who, home) in [("alice", &ha), ("bob", &hb)] {
        let left = holds(home, marker);
        assert!(
            left.is_empty(),
            "{who}'s {left:?} still hold the unsent text"
        );
    }
    server.stop().await;
}
