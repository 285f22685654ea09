//! Groups end to end: a real sottod on a real socket, real clients, real MLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use sotto_api::ErrorCode;
use sotto_client::{Client, ClientError};
use support::*;

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn is_forbidden(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api {
            code: ErrorCode::Forbidden,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_users_with_one_or_two_devices_get_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let mut devices: Vec<(String, Client)> = Vec::new();
    for i in 0..20 {
        let user = format!("user{i:02}");
        let c = registered(&dir.path().join(format!("{user}-1")), &url, &user).await;
        if i % 3 == 0 {
            let c2 = linked(&c, &dir.path().join(format!("{user}-2")), &url).await;
            devices.push((user.clone(), c2));
        }
        devices.push((user, c));
    }
    let total_devices = devices.len();
    assert!(total_devices > 20);
    let creator = devices.iter().position(|(u, _)| u == "user00").unwrap();
    let others: Vec<String> = (1..20).map(|i| format!("user{i:02}")).collect();
    let (gid, report) = devices[creator]
        .1
        .groups()
        .create("twenty", &others, 100)
        .await
        .unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // Three members send (one of them from a second device).
    let mut sent: Vec<(String, String)> = Vec::new(); // (sender device, message id)
    for who in ["user05", "user09", "user00"] {
        let idx = devices.iter().position(|(u, _)| u == who).unwrap();
        let (m, _) = devices[idx]
            .1
            .group(&gid)
            .send(&format!("hello from {who}"))
            .await
            .unwrap();
        assert_eq!(m.group.as_deref(), Some(gid.as_str()));
        sent.push((m.sender_device.clone(), m.id.clone()));
    }
    for (user, c) in &devices {
        let report = c.sync().await.unwrap();
        assert!(report.warnings.is_empty(), "{user}: {:?}", report.warnings);
        let got = c.take_unshown().unwrap();
        let mut ids: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
        ids.sort();
        let me = c.device_id().unwrap();
        let mut want: Vec<&str> = sent
            .iter()
            .filter(|(dev, _)| *dev != me)
            .map(|(_, id)| id.as_str())
            .collect();
        want.sort();
        assert_eq!(ids, want, "{user} device {me}");
        assert!(got.iter().all(|m| m.group.as_deref() == Some(gid.as_str())));
        // Nothing more on the next sync.
        c.sync().await.unwrap();
        assert!(c.take_unshown().unwrap().is_empty());
        let info = c.group(&gid).info().unwrap();
        assert_eq!(info.name, "twenty");
        assert_eq!(info.members.len(), 20);
        assert_eq!(
            info.members.iter().map(|(_, d)| d.len()).sum::<usize>(),
            total_devices
        );
        assert_eq!(info.admins, ["user00"]);
        assert!(
            info.post_quantum,
            "{total_devices} devices is under the PQ limit"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_loses_access_and_new_member_sees_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let alice = registered(&dir.path().join("a"), &url, "alice").await;
    let bob = registered(&dir.path().join("b"), &url, "bob").await;
    let carol_home = dir.path().join("c");
    let carol = registered(&carol_home, &url, "carol").await;
    let dave = registered(&dir.path().join("d"), &url, "dave").await;
    let (gid, _) = alice
        .groups()
        .create("team", &names(&["bob", "carol"]), 100)
        .await
        .unwrap();
    alice.group(&gid).send("before").await.unwrap();
    assert_eq!(sync_texts(&carol).await, vec![pair("alice", "before")]);
    sync_texts(&bob).await;

    alice.group(&gid).remove(&names(&["carol"])).await.unwrap();
    alice.group(&gid).add(&names(&["dave"])).await.unwrap();
    alice.group(&gid).send("after").await.unwrap();
    assert_eq!(sync_texts(&bob).await, vec![pair("alice", "after")]);
    assert_eq!(sync_texts(&dave).await, vec![pair("alice", "after")]);
    // dave's history starts at his joining.
    let texts: Vec<String> = dave
        .group(&gid)
        .history()
        .unwrap()
        .into_iter()
        .map(|m| m.text.unwrap_or_default())
        .collect();
    assert_eq!(texts, ["after"]);
    // carol gets nothing more, knows she was removed, and the server refuses her the log.
    assert!(sync_texts(&carol).await.is_empty());
    assert!(carol.groups().list().unwrap().is_empty());
    assert_eq!(
        carol.conversation_status(&gid).unwrap().unwrap().0,
        "removed"
    );
    let resp = http()
        .get(format!("{url}/v1/conversations/{gid}/log?after=0"))
        .bearer_auth(token_of(&carol_home))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(matches!(
        carol.group(&gid).send("still here?").await,
        Err(ClientError::Invalid(_))
    ));
    let info = bob.group(&gid).info().unwrap();
    let members: Vec<&str> = info.members.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(members, ["alice", "bob", "dave"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_changes_are_refused_and_admins_can_delegate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let alice = registered(&dir.path().join("a"), &url, "alice").await;
    let bob = registered(&dir.path().join("b"), &url, "bob").await;
    let carol = registered(&dir.path().join("c"), &url, "carol").await;
    registered(&dir.path().join("d"), &url, "dave").await;
    let (gid, _) = alice
        .groups()
        .create("team", &names(&["bob", "carol"]), 100)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let epoch = bob.group(&gid).info().unwrap().epoch;
    // bob is not an admin: the server refuses each change, and nothing moves anywhere.
    let e = bob.group(&gid).add(&names(&["dave"])).await.unwrap_err();
    assert!(is_forbidden(&e), "{e}");
    assert!(e.to_string().contains("not an admin"), "{e}");
    assert!(is_forbidden(
        &bob.group(&gid)
            .remove(&names(&["carol"]))
            .await
            .unwrap_err()
    ));
    assert!(is_forbidden(
        &bob.group(&gid).rename("bob's now").await.unwrap_err()
    ));
    assert!(is_forbidden(
        &bob.group(&gid).make_admin("carol").await.unwrap_err()
    ));
    for c in [&alice, &bob, &carol] {
        let r = c.sync().await.unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let info = c.group(&gid).info().unwrap();
        assert_eq!((info.epoch, info.name.as_str()), (epoch, "team"));
        assert_eq!(info.members.len(), 3);
    }
    // Unknown users, non-members and the last admin leaving get clear refusals.
    assert!(matches!(
        alice.group(&gid).add(&names(&["nobody"])).await,
        Err(ClientError::UnknownUser(_))
    ));
    assert!(matches!(
        alice.group(&gid).make_admin("dave").await,
        Err(ClientError::Invalid(_))
    ));
    let e = alice.group(&gid).leave().await.unwrap_err();
    assert!(e.to_string().contains("last admin"), "{e}");
    // alice makes bob an admin; bob can now rename, and everyone agrees.
    alice.group(&gid).make_admin("bob").await.unwrap();
    bob.group(&gid).rename("renamed by bob").await.unwrap();
    for c in [&alice, &bob, &carol] {
        c.sync().await.unwrap();
        let info = c.group(&gid).info().unwrap();
        assert_eq!(info.name, "renamed by bob");
        assert_eq!(info.admins, ["alice", "bob"]);
    }
    // Now alice may leave: she stops being a member at once, and bob (admin) removes her devices.
    alice.group(&gid).leave().await.unwrap();
    assert!(alice.groups().list().unwrap().is_empty());
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    let info = carol.group(&gid).info().unwrap();
    let members: Vec<&str> = info.members.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(members, ["bob", "carol"]);
    assert_eq!(info.admins, ["bob"]);
    bob.group(&gid).send("alice is gone").await.unwrap();
    assert_eq!(sync_texts(&carol).await, vec![pair("bob", "alice is gone")]);
    assert!(sync_texts(&alice).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_members_committing_at_once_converge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(
            registered(
                &dir.path().join(format!("m{i}")),
                &url,
                &format!("member{i}"),
            )
            .await,
        );
    }
    let others: Vec<String> = (1..10).map(|i| format!("member{i}")).collect();
    let (gid, _) = clients[0]
        .groups()
        .create("busy", &others, 100)
        .await
        .unwrap();
    for c in &clients {
        c.sync().await.unwrap();
    }
    let start = clients[0].group(&gid).info().unwrap().epoch;
    // Every member refreshes its keys at the same moment: one commit wins each epoch, the others
    // catch up and redo theirs.
    let results =
        futures_util::future::join_all(clients.iter().map(|c| c.group(&gid).update_keys())).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let mut epochs = HashMap::new();
    for c in &clients {
        let r = c.sync().await.unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        epochs.insert(
            c.username().unwrap().to_owned(),
            c.group(&gid).info().unwrap().epoch,
        );
    }
    assert!(
        epochs.values().all(|e| *e == start + 10),
        "every commit landed once and everyone is at the same epoch: {epochs:?}"
    );
    clients[7].group(&gid).send("still in sync").await.unwrap();
    for (i, c) in clients.iter().enumerate() {
        if i != 7 {
            assert_eq!(sync_texts(c).await, vec![pair("member7", "still in sync")]);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_catches_up_across_several_commits_and_new_devices_join() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let alice = registered(&dir.path().join("a"), &url, "alice").await;
    let bob = registered(&dir.path().join("b"), &url, "bob").await;
    let carol = registered(&dir.path().join("c"), &url, "carol").await;
    let dave = registered(&dir.path().join("d"), &url, "dave").await;
    let (gid, _) = alice
        .groups()
        .create("plans", &names(&["bob", "carol"]), 100)
        .await
        .unwrap();
    carol.sync().await.unwrap();
    // carol goes offline; the group changes several times with messages in between.
    alice.group(&gid).send("one").await.unwrap();
    alice.group(&gid).rename("plans v2").await.unwrap();
    alice.group(&gid).send("two").await.unwrap();
    alice.group(&gid).add(&names(&["dave"])).await.unwrap();
    dave.group(&gid).send("three").await.unwrap();
    alice.group(&gid).make_admin("bob").await.unwrap();
    bob.group(&gid).remove(&names(&["dave"])).await.unwrap();
    bob.group(&gid).send("four").await.unwrap();
    // bob links a new device: his first device adds it to the group (no admin needed for one's own
    // devices), and it receives what follows.
    let bob2 = linked(&bob, &dir.path().join("b2"), &url).await;
    let r = bob.sync().await.unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    bob2.sync().await.unwrap();
    alice.group(&gid).send("five").await.unwrap();

    assert_eq!(
        sync_texts(&carol).await,
        vec![
            pair("alice", "one"),
            pair("alice", "two"),
            pair("dave", "three"),
            pair("bob", "four"),
            pair("alice", "five"),
        ]
    );
    let info = carol.group(&gid).info().unwrap();
    assert_eq!(info.name, "plans v2");
    assert_eq!(info.admins, ["alice", "bob"]);
    let members: Vec<(&str, usize)> = info
        .members
        .iter()
        .map(|(u, d)| (u.as_str(), d.len()))
        .collect();
    assert_eq!(members, [("alice", 1), ("bob", 2), ("carol", 1)]);
    assert_eq!(sync_texts(&bob2).await, vec![pair("alice", "five")]);
    dave.sync().await.unwrap();
    assert!(dave.groups().list().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_merged_by_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let alice_home = dir.path().join("a");
    let alice = registered(&alice_home, &url, "alice").await;
    let bob = registered(&dir.path().join("b"), &url, "bob").await;
    let (gid, _) = alice
        .groups()
        .create("flaky", &names(&["bob"]), 100)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let epoch = alice.group(&gid).info().unwrap().epoch;
    // The same device, through a proxy that loses the server's answer: the commit lands on the
    // server, the device only sees a failed request.
    let proxy = AnswerDropper::start(&url).await;
    let via_proxy = client(&alice_home, &proxy.url);
    proxy
        .drop_answers
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = via_proxy.group(&gid).update_keys().await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 502, .. }), "{e:?}");
    drop(via_proxy);
    // The next sync finds its own commit in the log and merges the pending commit it kept.
    let r = alice.sync().await.unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(alice.group(&gid).info().unwrap().epoch, epoch + 1);
    assert_eq!(alice.conversation_status(&gid).unwrap().unwrap().0, "ok");
    alice.group(&gid).send("still here").await.unwrap();
    assert_eq!(sync_texts(&bob).await, vec![pair("alice", "still here")]);
    assert_eq!(bob.group(&gid).info().unwrap().epoch, epoch + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_and_added_back_while_away_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let alice = registered(&dir.path().join("a"), &url, "alice").await;
    let bob = registered(&dir.path().join("b"), &url, "bob").await;
    registered(&dir.path().join("c"), &url, "carol").await;
    let (gid, _) = alice
        .groups()
        .create("again", &names(&["bob", "carol"]), 100)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    // While bob's device is away it is removed, then added back.
    alice.group(&gid).remove(&names(&["bob"])).await.unwrap();
    alice
        .group(&gid)
        .send("bob cannot read this")
        .await
        .unwrap();
    alice.group(&gid).add(&names(&["bob"])).await.unwrap();
    alice.group(&gid).send("welcome back").await.unwrap();
    // Its next sync takes the new welcome over its stale state and carries on.
    assert_eq!(sync_texts(&bob).await, vec![pair("alice", "welcome back")]);
    assert_eq!(bob.conversation_status(&gid).unwrap().unwrap().0, "ok");
    assert_eq!(bob.group(&gid).info().unwrap().members.len(), 3);
    bob.group(&gid).send("glad to be back").await.unwrap();
    assert_eq!(
        sync_texts(&alice).await,
        vec![pair("bob", "glad to be back")]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_loses_access_at_once_and_is_removed_from_every_conversation() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let a1 = registered(&dir.path().join("a1"), &url, "alice").await;
    let a2 = linked(&a1, &dir.path().join("a2"), &url).await;
    let bob = registered(&dir.path().join("bob"), &url, "bob").await;
    let (gid, _) = a1
        .groups()
        .create("team", &names(&["bob"]), 100)
        .await
        .unwrap();
    bob.dm("alice").send("dm before").await.unwrap();
    bob.group(&gid).send("group before").await.unwrap();
    for c in [&a1, &a2] {
        let mut got = sync_texts(c).await;
        got.sort();
        assert_eq!(
            got,
            [pair("bob", "dm before"), pair("bob", "group before")],
            "{:?}",
            c.device_id()
        );
    }
    let a2_id = a2.device_id().unwrap();
    let a2_token = token_of(&dir.path().join("a2"));

    // a2 holds a push connection when it is revoked.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{}/v1/ws", url.replacen("http", "ws", 1)),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {a2_token}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().is_text()); // ready

    let report = a1.devices().revoke(&a2_id).await.unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // At once: the token is refused and the push connection is closed.
    assert!(matches!(
        a2.sync().await,
        Err(ClientError::Api {
            code: ErrorCode::Unauthorized,
            ..
        })
    ));
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the revoked device's connection stayed open"
    );
    // The account lists one device, and a1 committed a2's removal from the group's MLS tree.
    let devices = a1.devices().list().await.unwrap();
    assert_eq!(devices.len(), 1);
    bob.sync().await.unwrap();
    let info = bob.group(&gid).info().unwrap();
    let alice_devices = info.members.iter().find(|(u, _)| u == "alice").unwrap();
    assert_eq!(alice_devices.1, [a1.device_id().unwrap()]);
    // Later messages reach alice's remaining device; a2 cannot fetch anything.
    bob.dm("alice").send("dm after").await.unwrap();
    bob.group(&gid).send("group after").await.unwrap();
    let mut got = sync_texts(&a1).await;
    got.sort();
    assert_eq!(got, [pair("bob", "dm after"), pair("bob", "group after")]);
    let http = http();
    for path in [
        format!("/v1/conversations/{gid}/log"),
        "/v1/inbox".to_owned(),
        "/v1/conversations".to_owned(),
    ] {
        let resp = http
            .get(format!("{url}{path}"))
            .bearer_auth(&a2_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    // Syncing again does not add it back; the last device cannot be revoked; unknown ids are
    // refused with a clear message.
    sync_texts(&a1).await;
    let info = a1.group(&gid).info().unwrap();
    assert_eq!(
        info.members
            .iter()
            .find(|(u, _)| u == "alice")
            .unwrap()
            .1
            .len(),
        1
    );
    let e = bob
        .devices()
        .revoke(&bob.device_id().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Api {
                code: ErrorCode::Conflict,
                ..
            }
        ),
        "{e}"
    );
    let e = a1.devices().revoke(&a2_id).await.unwrap_err();
    assert!(e.to_string().contains("no device"), "{e}");
    let e = a1.devices().revoke("not-a-device").await.unwrap_err();
    assert!(e.to_string().contains("not a device id"), "{e}");
    server.stop().await;
}
