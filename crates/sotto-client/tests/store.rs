//! The SQLite backend of the client store: the conformance suite every backend passes, durability
//! across a reopen, and a device home written by the first client (schema 1, MLS state in
//! `openmls_sqlite_storage`'s tables) opening, migrated, and carrying on with its conversations;
//! and the same shell over the in-memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use sotto_client::sotto_engine::store::{conformance, ConversationKind, ConversationRecord, Store};
use sotto_client::SqliteStore;
use support::Server;

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    conformance::run(&|| {
        let home = dir
            .path()
            .join(n.fetch_add(1, Ordering::SeqCst).to_string());
        Box::new(SqliteStore::open(&home).unwrap()) as Box<dyn Store>
    });
}

#[test]
fn committed_writes_survive_a_reopen_and_uncommitted_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        let tx = s.begin(true).unwrap();
        tx.put_conversation(&ConversationRecord::new("c", ConversationKind::Group, None))
            .unwrap();
        tx.mls_put(b"k", b"v").unwrap();
        tx.commit().unwrap();
        let tx = s.begin(true).unwrap();
        tx.mls_put(b"lost", b"x").unwrap();
        drop(tx);
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    let tx = s.begin(false).unwrap();
    assert!(tx.conversation("c").unwrap().is_some());
    assert_eq!(tx.mls_get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(tx.mls_get(b"lost").unwrap(), None);
}

#[test]
fn a_home_from_a_newer_version_is_refused_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let db = rusqlite::Connection::open(dir.path().join("sotto.db")).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    let e = SqliteStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("newer version of Sotto") && !e.contains('\n'),
        "{e}"
    );
}

/// The fixture `legacy-home-v1.tar.gz` was made by the client as it was before the engine
/// (commit 041a89e): a server data dir and two homes, alice and bob, who exchanged a DM both ways
/// and a message in the group "oldies" (its id in `group_id`).
#[tokio::test]
async fn a_home_made_by_the_first_client_opens_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/legacy-home-v1.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let group = std::fs::read_to_string(dir.path().join("group_id")).unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let alice = support::client(&dir.path().join("alice"), &server.url);
    let bob = support::client(&dir.path().join("bob"), &server.url);
    assert_eq!(alice.username().as_deref(), Some("alice"));

    // The old messages are all there, in order.
    let texts = |c: &sotto_client::Client, peer: &str| -> Vec<String> {
        c.dm(peer)
            .history()
            .unwrap()
            .into_iter()
            .map(|m| m.text.unwrap_or_default())
            .collect()
    };
    assert_eq!(
        texts(&alice, "bob"),
        ["hello from the old client", "old reply"]
    );
    assert_eq!(
        texts(&bob, "alice"),
        ["hello from the old client", "old reply"]
    );
    let group_texts: Vec<String> = bob
        .group(&group)
        .history()
        .unwrap()
        .into_iter()
        .map(|m| m.text.unwrap_or_default())
        .collect();
    assert_eq!(group_texts, ["old group message"]);

    // The migrated MLS state keeps working both ways, in the DM and in the group.
    alice.dm("bob").send("after the upgrade").await.unwrap();
    assert_eq!(
        support::sync_texts(&bob).await,
        [("alice".to_owned(), "after the upgrade".to_owned())]
    );
    bob.dm("alice").send("still here").await.unwrap();
    assert_eq!(
        support::sync_texts(&alice).await,
        [("bob".to_owned(), "still here".to_owned())]
    );
    bob.group(&group)
        .send("group after the upgrade")
        .await
        .unwrap();
    assert_eq!(
        support::sync_texts(&alice).await,
        [("bob".to_owned(), "group after the upgrade".to_owned())]
    );
    // A commit in the migrated group, and the key packages the old client uploaded still open a
    // welcome: a new member joins.
    let carol = support::registered(&dir.path().join("carol"), &server.url, "carol").await;
    alice
        .group(&group)
        .add(&["carol".to_owned()])
        .await
        .unwrap();
    bob.group(&group).send("welcome carol").await.unwrap();
    assert_eq!(
        support::sync_texts(&carol).await,
        [("bob".to_owned(), "welcome carol".to_owned())]
    );
    assert_eq!(
        support::sync_texts(&alice).await,
        [("bob".to_owned(), "welcome carol".to_owned())]
    );

    // The old openmls tables are gone; the schema is current.
    let db = rusqlite::Connection::open(dir.path().join("alice/sotto.db")).unwrap();
    let old: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'openmls%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old, 0);
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 6);
    server.stop().await;
}

/// The same shell over the engine's in-memory store: two devices that keep nothing on disk set up
/// a DM and a group with a SQLite-backed device, against a real sottod.
#[tokio::test]
async fn devices_on_the_in_memory_store_talk_to_devices_on_sqlite() {
    use sotto_client::sotto_engine::MemoryStore;
    use sotto_client::{Client, ConnectOptions};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let memory = |name: &str| {
        Client::with_store(
            Box::new(MemoryStore::new()),
            std::path::Path::new(name),
            Some(&server.url),
            &ConnectOptions::default(),
        )
        .unwrap()
    };
    let alice = memory("alice-in-memory");
    alice.account().register("alice").await.unwrap();
    let bob = memory("bob-in-memory");
    bob.account().register("bob").await.unwrap();
    let carol = support::registered(&dir.path().join("carol"), &server.url, "carol").await;

    alice.dm("bob").send("from memory").await.unwrap();
    assert_eq!(
        support::sync_texts(&bob).await,
        [("alice".to_owned(), "from memory".to_owned())]
    );
    let (g, _) = bob
        .groups()
        .create("mixed", &["alice".to_owned(), "carol".to_owned()], 100)
        .await
        .unwrap();
    carol.group(&g).send("from sqlite").await.unwrap();
    assert_eq!(
        support::sync_texts(&alice).await,
        [("carol".to_owned(), "from sqlite".to_owned())]
    );
    assert_eq!(
        support::sync_texts(&bob).await,
        [("carol".to_owned(), "from sqlite".to_owned())]
    );
    server.stop().await;
}
