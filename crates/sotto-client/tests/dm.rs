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
    assert_eq!(a2.username().as_deref(), Some("alice"));
    assert_eq!(a1.devices().list().await.unwrap().len(), 2);

    a1.dm("bob")
        .send("hello bob, secret-plaintext-one")
        .await
        .unwrap();
    a1.dm("bob").send("second from alice").await.unwrap();
    assert_eq!(
        sync_texts(&b1).await,
        vec![
            s("alice", "hello bob, secret-plaintext-one"),
            s("alice", "second from alice")
        ]
    );
    b2.dm("alice")
        .send("hi alice from bob's phone")
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
    for (_, bytes) in support::files(dir) {
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                "server data contains plaintext {n:?}"
            );
        }
    }
}

#[tokio::test]
async fn offline_device_catches_up_and_server_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(&data).await;
    let (url, addr) = (server.url.clone(), server.addr());
    let a = registered(&dir.path().join("a"), &url, "alice").await;
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    for i in 0..5 {
        a.dm("bob").send(&format!("m{i}")).await.unwrap();
    }
    // Kill the server (after every send was acknowledged) and start it again on the same data dir.
    server.stop().await;
    let server = Server::start_on(&data, &addr).await;
    let got = sync_texts(&b).await;
    assert_eq!(
        got,
        (0..5)
            .map(|i| s("alice", &format!("m{i}")))
            .collect::<Vec<_>>()
    );
    b.dm("alice").send("back").await.unwrap();
    assert_eq!(sync_texts(&a).await, vec![s("bob", "back")]);
    // Client state survives a restart of the client too.
    drop(b);
    let b = client(&dir.path().join("b"), &url);
    a.dm("bob").send("after restart").await.unwrap();
    assert_eq!(sync_texts(&b).await, vec![s("alice", "after restart")]);
    server.stop().await;
}

#[tokio::test]
async fn both_sides_starting_the_dm_at_once_converge_on_one_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let a = registered(&dir.path().join("a"), &url, "alice").await;
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    let (ra, rb) = tokio::join!(
        a.dm("bob").send("from alice"),
        b.dm("alice").send("from bob")
    );
    let (ma, _) = ra.unwrap();
    let (mb, _) = rb.unwrap();
    assert_eq!(ma.conversation, mb.conversation, "exactly one DM per pair");
    assert_eq!(sync_texts(&a).await, vec![s("bob", "from bob")]);
    assert_eq!(sync_texts(&b).await, vec![s("alice", "from alice")]);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_commits_from_two_devices_converge_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let a1 = registered(&dir.path().join("a1"), &url, "alice").await;
    let b1 = registered(&dir.path().join("b1"), &url, "bob").await;
    a1.dm("bob").send("before").await.unwrap();
    assert_eq!(sync_texts(&b1).await, vec![s("alice", "before")]);
    // Both accounts link a new device; a1 and b1 then race to add them (same epoch).
    let a2 = linked(&a1, &dir.path().join("a2"), &url).await;
    let b2 = linked(&b1, &dir.path().join("b2"), &url).await;
    let (ra, rb) = tokio::join!(a1.sync(), b1.sync());
    assert!(ra.unwrap().warnings.is_empty());
    assert!(rb.unwrap().warnings.is_empty());
    a1.take_unshown().unwrap();
    b1.take_unshown().unwrap();
    // Everyone converged: a message from each device reaches every other device exactly once.
    assert_eq!(sync_texts(&a2).await, vec![]);
    a2.dm("bob").send("a2 here").await.unwrap();
    assert_eq!(sync_texts(&b2).await, vec![s("alice", "a2 here")]);
    b2.dm("alice").send("b2 here").await.unwrap();
    assert_eq!(
        sync_texts(&a1).await,
        vec![s("alice", "a2 here"), s("bob", "b2 here")]
    );
    assert_eq!(
        sync_texts(&b1).await,
        vec![s("alice", "a2 here"), s("bob", "b2 here")]
    );
    assert_eq!(sync_texts(&a2).await, vec![s("bob", "b2 here")]);
    assert_eq!(sync_texts(&b2).await, vec![]);
    server.stop().await;
}

fn config_value(home: &std::path::Path, key: &str) -> String {
    let conn = rusqlite::Connection::open(home.join("sotto.db")).unwrap();
    let v: Vec<u8> = conn
        .query_row(
            "SELECT value FROM sotto_config WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .unwrap();
    String::from_utf8(v).unwrap()
}

#[tokio::test]
async fn device_slipped_in_by_the_server_is_refused_and_reported() {
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use sotto_proto::mls::DeviceKeys;
    use sotto_proto::{AccountIdentity, DeviceId, Username};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(&data).await;
    let url = server.url.clone();
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    let c = registered(&dir.path().join("c"), &url, "carol").await;
    // Carol pins bob's identity key on first contact.
    assert_eq!(
        c.dm("bob").send("hello").await.unwrap().1.warnings,
        Vec::<String>::new()
    );
    // A malicious server adds a device to bob's account, certified by a key that is not bob's.
    let mallory = AccountIdentity::generate();
    let p = OpenMlsRustCrypto::default();
    let fake = DeviceKeys::generate(
        &mallory,
        &Username::new("bob").unwrap(),
        DeviceId::random(),
        1,
    );
    let (kps, lr) = fake
        .key_packages(&p, sotto_proto::mls::DEFAULT_CIPHERSUITE, 1, true)
        .unwrap();
    let db = rusqlite::Connection::open(data.join("sotto.db")).unwrap();
    let dev = fake.certificate().device_id.to_hex();
    db.execute(
        "INSERT INTO devices (device_id, username, certificate, token_hash, created_at) VALUES (?1, 'bob', ?2, ?3, 0)",
        rusqlite::params![dev, fake.certificate().to_bytes(), vec![0u8; 32]],
    )
    .unwrap();
    for (kp, last) in [(&kps[0], 0), (lr.as_ref().unwrap(), 1)] {
        db.execute(
            "INSERT INTO key_packages (device_id, data, last_resort) VALUES (?1, ?2, ?3)",
            rusqlite::params![dev, kp, last],
        )
        .unwrap();
    }
    // Bob's own client shows it as unverified and does not add it anywhere.
    let devices = b.devices().list().await.unwrap();
    assert!(devices.iter().any(|d| d.device_id == dev && !d.verified));
    let report = b.sync().await.unwrap();
    assert!(
        report.warnings.iter().any(|w| w.contains(&dev)),
        "{:?}",
        report.warnings
    );
    // A new conversation with bob leaves the fake device out and says so.
    let d = registered(&dir.path().join("d"), &url, "dave").await;
    let (_, report) = d.dm("bob").send("hi bob").await.unwrap();
    assert!(
        report.warnings.iter().any(|w| w.contains(&dev)),
        "{:?}",
        report.warnings
    );
    let welcomes: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM inbox WHERE device_id = ?1",
            [&dev],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        welcomes, 0,
        "no welcome was ever addressed to the fake device"
    );
    let mut texts: Vec<String> = {
        b.sync().await.unwrap();
        b.take_unshown()
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect()
    };
    texts.sort();
    assert_eq!(texts, vec!["hello".to_owned(), "hi bob".to_owned()]);
    server.stop().await;
}

#[tokio::test]
async fn forged_ciphertext_in_the_log_is_reported_and_the_client_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let a = registered(&dir.path().join("a"), &url, "alice").await;
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    let (m, _) = a.dm("bob").send("genuine").await.unwrap();
    // Alice's device (or anyone holding its token) posts a tampered copy of a real message.
    let token = config_value(&dir.path().join("a"), "token");
    let http = http();
    let page: sotto_api::LogPage = http
        .get(format!("{url}/v1/conversations/{}/log", m.conversation))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut forged = page.entries.last().unwrap().data.0.clone();
    let n = forged.len();
    forged[n - 3] ^= 0x55;
    let resp = http
        .post(format!(
            "{url}/v1/conversations/{}/messages",
            m.conversation
        ))
        .bearer_auth(&token)
        .json(&sotto_api::SendRequest {
            message: sotto_api::B64(forged),
            attachments: Vec::new(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "well-formed framing: the server cannot tell"
    );
    let report = b.sync().await.unwrap();
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert_eq!(b.take_unshown().unwrap().len(), 1);
    a.dm("bob").send("still working").await.unwrap();
    assert_eq!(sync_texts(&b).await, vec![s("alice", "still working")]);
    server.stop().await;
}

#[tokio::test]
async fn a_send_whose_acknowledgement_was_lost_is_posted_again_and_received_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let a = registered(&dir.path().join("a"), &url, "alice").await;
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    a.dm("bob").send("one").await.unwrap();
    let (two, _) = a.dm("bob").send("two").await.unwrap();
    // The server stored "two", but pretend its answer never reached alice (process killed, network cut).
    {
        let conn = rusqlite::Connection::open(dir.path().join("a").join("sotto.db")).unwrap();
        let n = conn
            .execute(
                "UPDATE sotto_messages SET seq = NULL WHERE message_id = ?1",
                [&two.id],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    // Alice's next sync posts it again (same message id); the server now holds it twice.
    assert!(a.sync().await.unwrap().warnings.is_empty());
    let entries: i64 = rusqlite::Connection::open(dir.path().join("server").join("sotto.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM log WHERE kind = 2", [], |r| r.get(0))
        .unwrap();
    assert_eq!(entries, 3, "one + two, twice");
    // Bob keeps exactly one copy; so does alice.
    assert_eq!(
        sync_texts(&b).await,
        vec![s("alice", "one"), s("alice", "two")]
    );
    let texts: Vec<String> = a
        .dm("bob")
        .history()
        .unwrap()
        .into_iter()
        .map(|m| m.text.unwrap_or_default())
        .collect();
    assert_eq!(texts, ["one", "two"]);
    // And it is not posted a third time.
    a.sync().await.unwrap();
    assert_eq!(sync_texts(&b).await, vec![]);
    server.stop().await;
}

#[tokio::test]
async fn a_pin_that_cannot_be_read_refuses_the_account_instead_of_re_pinning() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let _b = registered(&dir.path().join("b"), &server.url, "bob").await;
    a.dm("bob").send("hello").await.unwrap();
    // The stored pin of bob's key is damaged on alice's disk.
    let db = rusqlite::Connection::open(dir.path().join("a/sotto.db")).unwrap();
    db.execute(
        "UPDATE sotto_pins SET identity_key = x'0102' WHERE username = 'bob'",
        [],
    )
    .unwrap();
    drop(db);
    let e = a.dm("bob").send("again").await.unwrap_err().to_string();
    assert!(e.contains("pinned for bob is corrupt"), "{e}");
    // Still damaged, not silently replaced by the server's key.
    let db = rusqlite::Connection::open(dir.path().join("a/sotto.db")).unwrap();
    let key: Vec<u8> = db
        .query_row(
            "SELECT identity_key FROM sotto_pins WHERE username = 'bob'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(key, [1, 2]);
}
