//! Several sottod nodes over one PostgreSQL and NATS, and migrating an embedded deployment into
//! PostgreSQL. Needs the services (see `support::services`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

fn s(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_state_race_fairly_and_push_across_nodes() {
    let Some((pg, nats)) = services().await else {
        return;
    };
    let schema = schema_name("nodes");
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start_node(&pg, &schema, &nats, "127.0.0.1:0").await;
    let b = Server::start_node(&pg, &schema, &nats, "127.0.0.1:0").await;
    // Alice's devices talk to node A, bob's and alice's second device to node B.
    let a1 = registered(&dir.path().join("a1"), &a.url, "alice").await;
    let bob = registered(&dir.path().join("bob"), &b.url, "bob").await;
    a1.dm("bob").send("via node A").await.unwrap();
    assert_eq!(sync_texts(&bob).await, vec![s("alice", "via node A")]);

    // A live push crosses nodes: bob listens on B, alice sends on A.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let local = tokio::task::LocalSet::new();
    let bob_home = dir.path().join("bob");
    let b_url = b.url.clone();
    let listener = local.spawn_local(async move {
        let bob = client(&bob_home, &b_url);
        bob.listen(|ev| {
            if let sotto_client::ListenEvent::Messages(m) = ev {
                for m in m {
                    let _ = tx.send(m.text);
                }
            }
        })
        .await
    });
    let got = local
        .run_until(async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            a1.dm("bob").send("live across nodes").await.unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv()).await
        })
        .await;
    listener.abort();
    assert_eq!(got.unwrap().as_deref(), Some("live across nodes"));

    // Two of alice's devices on different nodes race to add her third: exactly one commit wins.
    let a2 = linked(&a1, &dir.path().join("a2"), &b.url).await;
    a1.sync().await.unwrap(); // adds a2
    sync_texts(&a2).await;
    let a3 = linked(&a1, &dir.path().join("a3"), &a.url).await;
    let (r1, r2) = tokio::join!(a1.sync(), a2.sync());
    assert!(r1.unwrap().warnings.is_empty());
    assert!(r2.unwrap().warnings.is_empty());
    a1.take_unshown().unwrap();
    a2.take_unshown().unwrap();
    sync_texts(&a3).await;
    a3.dm("bob").send("third device").await.unwrap();
    for c in [&a1, &a2, &bob] {
        let got = sync_texts(c).await;
        assert_eq!(
            got.last(),
            Some(&s("alice", "third device")),
            "{:?}",
            c.username()
        );
    }
    a.stop().await;
    b.stop().await;
    drop_schema(&pg, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_deployment_migrates_into_postgres_and_carries_on() {
    let Some((pg, nats)) = services().await else {
        return;
    };
    let schema = schema_name("migrate");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(&data).await;
    let (url, addr) = (server.url.clone(), server.addr());
    let a = registered(&dir.path().join("a"), &url, "alice").await;
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    a.dm("bob").send("before migration").await.unwrap();
    b.dm("alice").send("read me later").await.unwrap();
    assert_eq!(sync_texts(&b).await, vec![s("alice", "before migration")]);
    server.stop().await;

    let report = sotto_server::migrate::sqlite_to_postgres(&data, &pg, Some(&schema))
        .await
        .unwrap();
    // The commit, the two messages, and bob's delivery receipt for alice's.
    assert!(
        report.tables.iter().any(|(t, n)| *t == "log" && *n == 4),
        "{report:?}"
    );
    // Migrating twice is refused: the target is no longer empty.
    assert!(
        sotto_server::migrate::sqlite_to_postgres(&data, &pg, Some(&schema))
            .await
            .is_err()
    );

    let server = Server::start_node(&pg, &schema, &nats, &addr).await;
    assert_eq!(sync_texts(&a).await, vec![s("bob", "read me later")]);
    a.dm("bob").send("after migration").await.unwrap();
    assert_eq!(sync_texts(&b).await, vec![s("alice", "after migration")]);
    server.stop().await;
    drop_schema(&pg, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_and_commits_cross_nodes() {
    let Some((pg, nats)) = services().await else {
        return;
    };
    let schema = schema_name("groups");
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start_node(&pg, &schema, &nats, "127.0.0.1:0").await;
    let b = Server::start_node(&pg, &schema, &nats, "127.0.0.1:0").await;
    // Members spread over both nodes.
    let alice = registered(&dir.path().join("alice"), &a.url, "alice").await;
    let bob = registered(&dir.path().join("bob"), &b.url, "bob").await;
    let carol = registered(&dir.path().join("carol"), &a.url, "carol").await;
    let dave = registered(&dir.path().join("dave"), &b.url, "dave").await;
    let (gid, _) = alice
        .groups()
        .create("across", &["bob".into(), "carol".into()], 100)
        .await
        .unwrap();
    alice.group(&gid).send("from node A").await.unwrap();
    assert_eq!(sync_texts(&bob).await, vec![s("alice", "from node A")]);
    bob.group(&gid).send("from node B").await.unwrap();
    assert_eq!(
        sync_texts(&carol).await,
        vec![s("alice", "from node A"), s("bob", "from node B")]
    );

    // A live group message accepted by node A reaches bob listening on node B.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let local = tokio::task::LocalSet::new();
    let bob_home = dir.path().join("bob");
    let b_url = b.url.clone();
    let listener = local.spawn_local(async move {
        let bob = client(&bob_home, &b_url);
        bob.listen(|ev| {
            if let sotto_client::ListenEvent::Messages(m) = ev {
                for m in m {
                    let _ = tx.send((m.group, m.text));
                }
            }
        })
        .await
    });
    let got = local
        .run_until(async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            carol.group(&gid).send("live to B").await.unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv()).await
        })
        .await;
    listener.abort();
    assert_eq!(
        got.unwrap(),
        Some((Some(gid.clone()), "live to B".to_owned()))
    );

    // Admin changes through node A, a second admin's through node B; concurrent commits from
    // members on both nodes converge.
    alice.group(&gid).make_admin("bob").await.unwrap();
    bob.group(&gid).add(&["dave".into()]).await.unwrap();
    let before = alice.group(&gid).info().unwrap().epoch;
    let (r1, r2, r3) = tokio::join!(
        alice.group(&gid).update_keys(),
        bob.group(&gid).update_keys(),
        carol.group(&gid).update_keys()
    );
    r1.unwrap();
    r2.unwrap();
    r3.unwrap();
    for c in [&alice, &bob, &carol, &dave] {
        let r = c.sync().await.unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let info = c.group(&gid).info().unwrap();
        assert_eq!(info.members.len(), 4);
        assert!(info.epoch >= before + 3, "{} vs {before}", info.epoch);
    }
    let e: Vec<u64> = [&alice, &bob, &carol, &dave]
        .iter()
        .map(|c| c.group(&gid).info().unwrap().epoch)
        .collect();
    assert!(e.windows(2).all(|w| w[0] == w[1]), "{e:?}");
    dave.group(&gid).send("joined via B").await.unwrap();
    for c in [&alice, &bob, &carol] {
        let got = sync_texts(c).await;
        assert_eq!(got.last(), Some(&s("dave", "joined via B")));
    }
    a.stop().await;
    b.stop().await;
    drop_schema(&pg, &schema).await;
}

/// Runs SQL in the test's schema.
async fn sql(pg: &str, schema: &str, statements: &str) {
    let client = sotto_server::testkit::sql(pg).await.unwrap();
    client
        .batch_execute(&format!("SET search_path = {schema}; {statements}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_are_clean_errors_the_node_keeps_serving_and_nothing_is_lost() {
    use sotto_api::ErrorCode;
    use sotto_client::ClientError;
    let Some((pg, nats)) = services().await else {
        return;
    };
    let schema = schema_name("dberr");
    let dir = tempfile::tempdir().unwrap();
    let node = Server::start_node(&pg, &schema, &nats, "127.0.0.1:0").await;
    let alice = registered(&dir.path().join("alice"), &node.url, "alice").await;
    let bob = registered(&dir.path().join("bob"), &node.url, "bob").await;
    alice.dm("bob").send("before").await.unwrap();
    // The database starts failing every append to the log: first as a full disk, then with an
    // internal error (a trigger, so the real server code meets real PostgreSQL errors).
    let fail_with = |code: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION sotto_fail() RETURNS trigger AS $$
             BEGIN RAISE EXCEPTION 'injected failure' USING ERRCODE = '{code}'; END $$ LANGUAGE plpgsql;
             DROP TRIGGER IF EXISTS sotto_fail ON log;
             CREATE TRIGGER sotto_fail BEFORE INSERT ON log FOR EACH ROW EXECUTE FUNCTION sotto_fail();"
        )
    };
    sql(&pg, &schema, &fail_with("53100")).await;
    let e = alice
        .dm("bob")
        .send("during a full disk")
        .await
        .unwrap_err();
    let ClientError::Queued { reason, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        matches!(
            **reason,
            ClientError::Api {
                status: 507,
                code: ErrorCode::StorageFull,
                ..
            }
        ),
        "{e}"
    );
    sql(&pg, &schema, &fail_with("XX000")).await;
    let e = alice
        .dm("bob")
        .send("during a broken database")
        .await
        .unwrap_err();
    let ClientError::Queued { reason, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        matches!(&**reason, ClientError::Api { status: 500, code: ErrorCode::Internal, message, .. }
            if message.contains("nothing was changed") && !message.contains("injected")),
        "{e}"
    );
    // Reads go on meanwhile, and nothing half-applied shows up.
    assert_eq!(sync_texts(&bob).await, vec![s("alice", "before")]);
    // The database recovers: alice's next sync sends both, bob gets each exactly once.
    sql(&pg, &schema, "DROP TRIGGER sotto_fail ON log;").await;
    let report = alice.sync().await.unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(
        sync_texts(&bob).await,
        vec![
            s("alice", "during a full disk"),
            s("alice", "during a broken database")
        ]
    );
    assert!(sync_texts(&bob).await.is_empty());
    node.stop().await;
    drop_schema(&pg, &schema).await;
}
