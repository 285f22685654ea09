//! What the web client relies on, against a real sottod: the conversation list it shows (newest
//! first, last message as it stands now, unread counts that reading clears), and the push channel
//! a browser opens with its token as a WebSocket subprotocol (it cannot set a header there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures_util::StreamExt;
use sotto_api::ServerFrame;
use sotto_client::Action;
use support::{registered, token_of, Server};
use tokio_tungstenite::tungstenite;

#[tokio::test]
async fn the_conversation_list_shows_newest_first_with_last_message_and_unread_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let alice = registered(&dir.path().join("a"), &server.url, "alice").await;
    let bob = registered(&dir.path().join("b"), &server.url, "bob").await;
    let carol = registered(&dir.path().join("c"), &server.url, "carol").await;

    let (hello, _) = alice.dm("bob").send("hello bob").await.unwrap();
    let (group, _) = carol
        .groups()
        .create("Book club", &["bob".into()], 100)
        .await
        .unwrap();
    carol.group(&group).send("chapter one").await.unwrap();
    carol.group(&group).send("chapter two").await.unwrap();
    bob.sync().await.unwrap();

    let list = bob.engine().conversation_list().unwrap();
    let seen: Vec<(&str, &str, Option<&str>, usize)> = list
        .iter()
        .map(|c| {
            (
                c.kind,
                c.title.as_str(),
                c.last.as_ref().and_then(|m| m.text.as_deref()),
                c.unread,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("group", "Book club", Some("chapter two"), 2),
            ("dm", "alice", Some("hello bob"), 1),
        ]
    );

    // An edit shows in the list; reading a conversation clears its count, and only its own.
    alice
        .dm("bob")
        .act(&hello.id, Action::Edit("hello, bob".into()))
        .await
        .unwrap();
    bob.dm("alice").mark_read().await.unwrap();
    let list = bob.engine().conversation_list().unwrap();
    let dm = list.iter().find(|c| c.kind == "dm").unwrap();
    assert_eq!(
        dm.last.as_ref().unwrap().text.as_deref(),
        Some("hello, bob")
    );
    assert_eq!(dm.last.as_ref().unwrap().edits, 1);
    assert_eq!(dm.unread, 0);
    assert_eq!(list.iter().find(|c| c.kind == "group").unwrap().unread, 2);

    // Bob's own message is the newest now, and counts as nothing unread.
    bob.dm("alice").send("hi alice").await.unwrap();
    let list = bob.engine().conversation_list().unwrap();
    assert_eq!(list[0].title, "alice");
    let last = list[0].last.as_ref().unwrap();
    assert!(last.outgoing);
    assert_eq!(list[0].unread, 0);
    server.stop().await;
}

fn browser_push(server: &Server, protocols: &str) -> tungstenite::handshake::client::Request {
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws{}/v1/ws",
        server.url.trim_start_matches("http")
    ))
    .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    req
}

#[tokio::test]
async fn a_browser_authenticates_its_push_channel_with_a_subprotocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let home = dir.path().join("a");
    let _alice = registered(&home, &server.url, "alice").await;
    let token = token_of(&home);
    let as_protocol = format!("sotto.bearer.{}", token.replacen(':', ".", 1));

    let (mut ws, resp) = tokio_tungstenite::connect_async(browser_push(
        &server,
        &format!("sotto.v1, {as_protocol}"),
    ))
    .await
    .unwrap();
    // The server selects the plain protocol: the token is never echoed back.
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("sotto.v1")
    );
    let first = loop {
        if let tungstenite::Message::Text(t) = ws.next().await.unwrap().unwrap() {
            break serde_json::from_str::<ServerFrame>(&t).unwrap();
        }
    };
    assert_eq!(first, ServerFrame::Ready);

    // A wrong secret, or no token at all, is refused before the upgrade.
    let mut wrong = as_protocol.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    for protocols in [format!("sotto.v1, {wrong}"), "sotto.v1".to_owned()] {
        match tokio_tungstenite::connect_async(browser_push(&server, &protocols)).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{protocols}")
            }
            other => panic!(
                "{protocols}: expected 401, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
    // Only the push channel takes the token that way: another route refuses it.
    let resp = support::http()
        .get(format!("{}/v1/conversations", server.url))
        .header("upgrade", "websocket")
        .header("sec-websocket-protocol", format!("sotto.v1, {as_protocol}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    server.stop().await;
}
