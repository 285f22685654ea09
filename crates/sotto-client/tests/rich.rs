//! Rich messages through the SDK against a real sottod: typing indicators reach the connected
//! devices of every member (the sender's other device too), never an offline one, and never the
//! server's files; a modified client's forged edit and unsend are refused by every receiver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use sotto_api::ServerFrame;
use sotto_client::{Action, Client, Update};
use sotto_proto::{Body, MessageId};
use support::{files, linked, registered, Server};
use tokio_tungstenite::tungstenite;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw push connection as `home`'s device, after its `ready` frame.
async fn connect(server: &Server, home: &Path) -> Ws {
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/v1/ws",
        server.addr()
    ))
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", support::token_of(home))
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, ServerFrame::Ready);
    ws
}

async fn next_frame(ws: &mut Ws) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        if let tungstenite::Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// The next ephemeral frame (skipping wake-ups), and what the device's engine makes of it.
async fn typing_seen(ws: &mut Ws, c: &Client) -> (Vec<u8>, Vec<Update>) {
    loop {
        let frame = next_frame(ws).await;
        if let ServerFrame::Ephemeral { message, .. } = &frame {
            let bytes = message.0.clone();
            let report = c.run(c.engine().handle_frame(frame)).await.unwrap();
            return (bytes, report.updates);
        }
        c.run(c.engine().handle_frame(frame)).await.unwrap();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn typing_reaches_connected_devices_only_and_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(&data).await;
    let [ha1, ha2, hb1, hb2, hc] = ["a1", "a2", "b1", "b2", "c"].map(|n| dir.path().join(n));
    let a1 = registered(&ha1, &server.url, "alice").await;
    let a2 = linked(&a1, &ha2, &server.url).await;
    let b1 = registered(&hb1, &server.url, "bob").await;
    let b2 = linked(&b1, &hb2, &server.url).await;
    let c = registered(&hc, &server.url, "carol").await;
    a1.dm("bob").send("hi").await.unwrap();
    let gid = a1
        .groups()
        .create("Team", &["bob".into(), "carol".into()], 16)
        .await
        .unwrap()
        .0;
    for d in [&a2, &b1, &b2, &c] {
        d.sync().await.unwrap();
    }
    // Bob's laptop and alice's phone are connected; bob's phone is not.
    let mut ws_b1 = connect(&server, &hb1).await;
    let mut ws_a2 = connect(&server, &ha2).await;
    a1.dm("bob").typing().await.unwrap();
    let mut seen = Vec::new();
    for (ws, dev) in [(&mut ws_b1, &b1), (&mut ws_a2, &a2)] {
        let (bytes, updates) = typing_seen(ws, dev).await;
        assert!(
            matches!(&updates[..], [Update::Typing { user, group: None, .. }] if user == "alice"),
            "{updates:?}"
        );
        seen.push(bytes);
    }
    // In a group too.
    let mut ws_c = connect(&server, &hc).await;
    b1.group(&gid).typing().await.unwrap();
    let (bytes, updates) = typing_seen(&mut ws_c, &c).await;
    assert!(
        matches!(&updates[..], [Update::Typing { user, group: Some(g), .. }] if user == "bob" && *g == gid),
        "{updates:?}"
    );
    seen.push(bytes);
    // The offline device never hears of it, and carries on.
    let report = b2.sync().await.unwrap();
    assert!(report.updates.is_empty(), "{:?}", report.updates);
    assert!(
        !b2.take_updates()
            .unwrap()
            .iter()
            .any(|u| matches!(u, Update::Typing { .. })),
        "typing is never stored for later"
    );
    a1.dm("bob").send("still there?").await.unwrap();
    b2.sync().await.unwrap();
    let texts: Vec<String> = b2
        .take_unshown()
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["hi", "still there?"]);
    // The server relays only a member's small application message.
    let dm_id = a1.engine().dm_id("bob").unwrap().unwrap();
    let post = |home: &Path, body: serde_json::Value| {
        let url = format!("{}/v1/conversations/{dm_id}/ephemeral", server.url);
        let token = support::token_of(home);
        async move {
            support::http()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let typing = serde_json::to_value(sotto_api::B64(seen[0].clone())).unwrap();
    assert_eq!(
        post(&hc, serde_json::json!({ "message": typing })).await,
        404,
        "carol is not in the DM"
    );
    let junk = serde_json::to_value(sotto_api::B64(vec![7; 100])).unwrap();
    assert_eq!(
        post(&ha1, serde_json::json!({ "message": junk })).await,
        400
    );
    let big = serde_json::to_value(sotto_api::B64(vec![0; 2000])).unwrap();
    assert_eq!(post(&ha1, serde_json::json!({ "message": big })).await, 400);
    // Nothing of any typing frame is in the server's files, raw or as base64.
    server.stop().await;
    for bytes in &seen {
        // The frame's JSON spelling of the bytes (base64).
        let b64 = serde_json::to_string(&sotto_api::B64(bytes.clone())).unwrap();
        let b64 = b64.trim_matches('"');
        for (name, content) in files(&data) {
            assert!(
                !contains(&content, &bytes[bytes.len() - 32..]),
                "typing ciphertext in {name}"
            );
            assert!(
                !contains(&content, &b64.as_bytes()[b64.len() - 40..]),
                "typing frame in {name}"
            );
        }
    }
}

/// Alice, bob and carol (homes `a`, `b`, `c` under `dir`) and the group "Team" alice made for
/// the three of them.
async fn team(dir: &Path, server: &Server) -> (Client, Client, Client, String) {
    let a = registered(&dir.join("a"), &server.url, "alice").await;
    let b = registered(&dir.join("b"), &server.url, "bob").await;
    let c = registered(&dir.join("c"), &server.url, "carol").await;
    let gid = a
        .groups()
        .create("Team", &["bob".into(), "carol".into()], 16)
        .await
        .unwrap()
        .0;
    (a, b, c, gid)
}

#[tokio::test]
async fn a_modified_clients_forged_edit_and_unsend_are_refused_by_every_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let (a, b, c, gid) = team(dir.path(), &server).await;
    let (m, _) = a.group(&gid).send("the plan is A").await.unwrap();
    b.sync().await.unwrap();
    c.sync().await.unwrap();
    // Bob's client refuses to edit alice's message...
    let err = b
        .act(&m.id, Action::Edit("the plan is B".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only alice may edit"), "{err}");
    // ...so bob runs a modified one.
    let original = MessageId::from_hex(&m.id).unwrap();
    for body in [
        Body::Edit {
            original,
            text: "the plan is B".into(),
            reply_to: None,
        },
        Body::Unsend { original },
    ] {
        b.run(b.engine().dangerous_send_unchecked(&gid, body))
            .await
            .unwrap();
    }
    for (who, dev) in [("alice", &a), ("carol", &c)] {
        let report = dev.sync().await.unwrap();
        let refused: Vec<&String> = report
            .warnings
            .iter()
            .filter(|w| w.contains("refused") && w.contains("bob may not"))
            .collect();
        assert_eq!(refused.len(), 2, "{who}: {:?}", report.warnings);
        let shown = dev.take_updates().unwrap();
        assert!(
            !shown
                .iter()
                .any(|u| matches!(u, Update::Edit { .. } | Update::Unsend { .. })),
            "{who}: nothing of it is shown: {shown:?}"
        );
        let h = dev.group(&gid).history().unwrap();
        assert_eq!(h[0].text.as_deref(), Some("the plan is A"), "{who}");
        assert_eq!((h[0].edits, h[0].deleted), (0, false), "{who}");
    }
    // The codec will not even build a reaction bigger than an emoji (receivers refuse one built by
    // hand: sotto-proto's `hostile_content_is_refused`); the conversation carries on.
    let huge = Body::Reaction {
        to: original,
        emoji: "😀".repeat(2500),
    };
    let err = b
        .run(b.engine().dangerous_send_unchecked(&gid, huge))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reaction"), "{err}");
    c.act(&m.id, Action::React("👍".into())).await.unwrap();
    a.sync().await.unwrap();
    let h = a.group(&gid).history().unwrap();
    assert_eq!(
        h[0].reactions.get("👍").cloned(),
        Some(vec!["carol".to_owned()])
    );
    server.stop().await;
}

#[tokio::test]
async fn account_settings_reach_every_own_device_and_nobody_else_can_set_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let a1 = registered(&dir.path().join("a1"), &server.url, "alice").await;
    let a2 = linked(&a1, &dir.path().join("a2"), &server.url).await;
    let b = registered(&dir.path().join("b"), &server.url, "bob").await;
    a1.dm("bob").send("hi").await.unwrap();
    b.sync().await.unwrap();

    // Off on the laptop: the phone follows at its next sync.
    assert!(a2.read_receipts().unwrap());
    a1.set_read_receipts(false).await.unwrap();
    assert!(!a1.read_receipts().unwrap());
    a2.sync().await.unwrap();
    assert!(!a2.read_receipts().unwrap(), "synced to the other device");
    // The own-devices group is no conversation to show.
    assert!(a2.groups().list().unwrap().is_empty());

    // A device linked later learns it from the device that adds it to the group.
    let a3 = linked(&a1, &dir.path().join("a3"), &server.url).await;
    assert!(a3.read_receipts().unwrap(), "not in the group yet");
    a2.sync().await.unwrap();
    a3.sync().await.unwrap();
    assert!(
        !a3.read_receipts().unwrap(),
        "sent again for the new device"
    );

    // The last change in the log wins on every device, whichever device made it.
    a3.set_read_receipts(true).await.unwrap();
    a1.set_read_receipts(false).await.unwrap();
    a2.set_read_receipts(true).await.unwrap();
    for d in [&a1, &a2, &a3] {
        d.sync().await.unwrap();
        assert!(d.read_receipts().unwrap());
    }

    // Bob's modified client sends alice "settings" in their DM: refused, nothing changes.
    let dm = b.engine().dm_id("alice").unwrap().unwrap();
    let forged = Body::Settings {
        settings: vec![(
            "read_receipts".into(),
            sotto_proto::SettingValue::Bool(false),
        )],
    };
    b.run(b.engine().dangerous_send_unchecked(&dm, forged))
        .await
        .unwrap();
    for d in [&a1, &a2] {
        let report = d.sync().await.unwrap();
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("refused") && w.contains("own-devices group")),
            "{:?}",
            report.warnings
        );
        assert!(d.read_receipts().unwrap(), "unchanged");
    }
    server.stop().await;
}

/// Moves a stored message back in time on one device, as if it had been sent `hours` earlier.
/// With `sender_clock`, its sender's claimed time too; without it, only the server's time.
fn age_message(home: &Path, id: &str, hours: i64, sender_clock: bool) {
    let db = rusqlite::Connection::open(home.join("sotto.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let secs = hours * 3600;
    let n = db
        .execute(
            "UPDATE sotto_messages SET accepted_at = accepted_at - ?2,
                 sent_at_ms = sent_at_ms - ?3
             WHERE message_id = ?1 AND accepted_at > 0",
            rusqlite::params![id, secs, if sender_clock { secs * 1000 } else { 0 }],
        )
        .unwrap();
    assert_eq!(n, 1, "the message is stored with the server's time");
}

#[tokio::test]
async fn edit_windows_run_on_the_servers_clock_24_h_to_send_48_h_to_accept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let home = |n: &str| dir.path().join(n);
    let (a, b, c, gid) = team(dir.path(), &server).await;
    let (m, _) = a.group(&gid).send("meet at 10").await.unwrap();
    let (fresh, _) = a.group(&gid).send("bring the slides").await.unwrap();
    b.sync().await.unwrap();
    c.sync().await.unwrap();

    // The sender's own client: 24 h after sending, no more edits or unsends.
    age_message(&home("a"), &m.id, 25, true);
    for action in [Action::Edit("meet at 11".into()), Action::Unsend] {
        let err = a.act(&m.id, action).await.unwrap_err();
        assert!(err.to_string().contains("24 hours"), "{err}");
    }
    a.act(&fresh.id, Action::Edit("bring the slides, please".into()))
        .await
        .unwrap();

    // Receivers: 48 h on the server's times. Bob's copy of the message was accepted 49 h before
    // the edit that alice's modified client now sends; carol's, a moment before. Bob's copy
    // keeps the sender's claimed time, so on the sender's clock he would take it.
    age_message(&home("b"), &m.id, 49, false);
    let original = MessageId::from_hex(&m.id).unwrap();
    let edit = Body::Edit {
        original,
        text: "meet at 11".into(),
        reply_to: None,
    };
    a.run(a.engine().dangerous_send_unchecked(&gid, edit))
        .await
        .unwrap();
    let report = b.sync().await.unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("refused") && w.contains("48 hours")),
        "{:?}",
        report.warnings
    );
    let h = b.group(&gid).history().unwrap();
    assert_eq!((h[0].text.as_deref(), h[0].edits), (Some("meet at 10"), 0));
    assert_eq!(h[1].text.as_deref(), Some("bring the slides, please"));
    c.sync().await.unwrap();
    let h = c.group(&gid).history().unwrap();
    assert_eq!((h[0].text.as_deref(), h[0].edits), (Some("meet at 11"), 1));
    server.stop().await;
}
