//! A message that cannot be decrypted is kept, fetched again and retried, never silently lost:
//! once when a byte of it was flipped on the way (a proxy of ours between a real client and a
//! real sottod), once when it is corrupt on the server itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use sotto_api::{EntryKind, LogPage, B64};
use sotto_client::{Client, HistoryItem, SyncEvent};
use support::{client, registered, sync_texts, Server};

/// An HTTP proxy in front of a sottod that, once armed, flips the last byte of the first
/// application message from `target` device in a log page it relays.
struct FlipProxy {
    url: String,
    armed: Arc<AtomicBool>,
    target: Arc<Mutex<String>>,
    flipped: Arc<Mutex<Vec<u64>>>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    armed: Arc<AtomicBool>,
    target: Arc<Mutex<String>>,
    flipped: Arc<Mutex<Vec<u64>>>,
}

async fn relay(State(st): State<ProxyState>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path_and_query().unwrap().to_string();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap();
    let mut rb = st
        .http
        .request(method, format!("{}{path}", st.upstream))
        .body(body.to_vec());
    for name in ["authorization", "content-type"] {
        if let Some(v) = headers.get(name) {
            rb = rb.header(name, v.clone());
        }
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let mut bytes = resp.bytes().await.unwrap().to_vec();
    if path.contains("/log?") && status.is_success() && st.armed.load(Ordering::SeqCst) {
        let mut page: LogPage = serde_json::from_slice(&bytes).unwrap();
        let target = st.target.lock().unwrap().clone();
        if let Some(e) = page
            .entries
            .iter_mut()
            .find(|e| e.kind == EntryKind::Message && e.sender_device == target)
        {
            let mut data = e.data.0.clone();
            *data.last_mut().unwrap() ^= 0x01;
            e.data = B64(data);
            st.flipped.lock().unwrap().push(e.seq);
            st.armed.store(false, Ordering::SeqCst);
            bytes = serde_json::to_vec(&page).unwrap();
        }
    }
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(bytes))
        .unwrap()
}

impl FlipProxy {
    async fn start(upstream: &str) -> Self {
        let armed = Arc::new(AtomicBool::new(false));
        let target = Arc::new(Mutex::new(String::new()));
        let flipped = Arc::new(Mutex::new(Vec::new()));
        let state = ProxyState {
            upstream: upstream.to_owned(),
            http: support::http(),
            armed: armed.clone(),
            target: target.clone(),
            flipped: flipped.clone(),
        };
        let app = axum::Router::new().fallback(relay).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url,
            armed,
            target,
            flipped,
        }
    }

    fn arm(&self, device: &str) {
        *self.target.lock().unwrap() = device.to_owned();
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// The texts of the messages not shown yet (marking them shown).
fn shown_texts(c: &Client) -> Vec<String> {
    c.take_unshown()
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
}

fn texts_and_seqs(c: &Client, peer: &str) -> Vec<(Option<u64>, String)> {
    c.engine()
        .dm_history_items(peer)
        .unwrap()
        .into_iter()
        .map(|i| match i {
            HistoryItem::Message { message, seq } => (seq, message.text.unwrap_or_default()),
            HistoryItem::Undecryptable {
                seq, undecryptable, ..
            } => (Some(seq), format!("<{undecryptable}>")),
        })
        .collect()
}

#[tokio::test]
async fn a_message_flipped_on_the_way_is_recovered_by_the_next_sync_in_its_place_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let proxy = FlipProxy::start(&server.url).await;
    let alice = registered(&dir.path().join("a"), &server.url, "alice").await;
    let bob = registered(&dir.path().join("b"), &server.url, "bob").await;
    alice.dm("bob").send("one").await.unwrap();
    assert_eq!(
        sync_texts(&bob).await,
        [("alice".to_owned(), "one".to_owned())]
    );

    // Bob's next sync goes through the proxy, which corrupts alice's next message.
    let bob_via_proxy = client(&dir.path().join("b"), &proxy.url);
    proxy.arm(&alice.device_id().unwrap());
    let (two, _) = alice.dm("bob").send("two").await.unwrap();
    alice.dm("bob").send("three").await.unwrap();
    let report = bob_via_proxy.sync().await.unwrap();
    let flipped = proxy.flipped.lock().unwrap().clone();
    assert_eq!(flipped.len(), 1, "the proxy flipped one message");
    let seq2 = flipped[0];
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("could not be decrypted yet")),
        "{:?}",
        report.warnings
    );
    // The message after it arrived; the corrupted one waits in its place.
    let shown: Vec<String> = shown_texts(&bob);
    assert_eq!(shown, ["three"]);
    let history = texts_and_seqs(&bob, "alice");
    assert_eq!(
        history.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["one", "<waiting>", "three"]
    );
    assert_eq!(history[1].0, Some(seq2));
    let items = bob.engine().dm_history_items("alice").unwrap();
    let waiting = serde_json::to_value(&items[1]).unwrap();
    assert_eq!(waiting["id"], serde_json::Value::Null);
    assert_eq!(waiting["seq"], seq2);
    assert_eq!(waiting["undecryptable"], "waiting");
    assert_eq!(waiting["sender"], "alice");

    // The next sync, without the flip, fetches it again and decrypts it.
    let report = bob.sync().await.unwrap();
    assert_eq!(
        report.events,
        [SyncEvent::Recovered {
            conversation: two.conversation.clone(),
            seq: seq2,
            id: two.id.clone()
        }]
    );
    let shown: Vec<String> = shown_texts(&bob);
    assert_eq!(shown, ["two"]);
    let history = texts_and_seqs(&bob, "alice");
    assert_eq!(
        history.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["one", "two", "three"],
        "recovered in its place"
    );
    assert_eq!(history[1].0, Some(seq2));
    // Exactly once: later syncs find nothing more, and the conversation goes on.
    let report = bob.sync().await.unwrap();
    assert!(report.events.is_empty() && report.warnings.is_empty());
    assert!(bob.take_unshown().unwrap().is_empty());
    alice.dm("bob").send("four").await.unwrap();
    assert_eq!(
        sync_texts(&bob).await,
        [("alice".to_owned(), "four".to_owned())]
    );
    // And alice's view is untouched by any of it.
    assert_eq!(
        alice
            .dm("bob")
            .history()
            .unwrap()
            .into_iter()
            .map(|m| m.text.unwrap_or_default())
            .collect::<Vec<_>>(),
        ["one", "two", "three", "four"]
    );
    server.stop().await;
}

/// Flips the last byte of the newest log entry of `conversation` in a stopped server's database.
fn corrupt_newest_entry(data_dir: &std::path::Path, conversation: &str) -> u64 {
    let db = rusqlite::Connection::open(data_dir.join("sotto.db")).unwrap();
    let (rowid, seq, mut data): (i64, i64, Vec<u8>) = db
        .query_row(
            "SELECT id, seq, data FROM log WHERE conversation_id = ?1 ORDER BY seq DESC LIMIT 1",
            [conversation],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    *data.last_mut().unwrap() ^= 0x01;
    db.execute(
        "UPDATE log SET data = ?1 WHERE id = ?2",
        rusqlite::params![data, rowid],
    )
    .unwrap();
    seq as u64
}

#[tokio::test]
async fn a_message_corrupt_on_the_server_is_given_up_after_the_bound_and_later_ones_keep_arriving()
{
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Server::start(&data).await;
    let alice = registered(&dir.path().join("a"), &server.url, "alice").await;
    let bob = registered(&dir.path().join("b"), &server.url, "bob").await;
    alice.dm("bob").send("one").await.unwrap();
    assert_eq!(
        sync_texts(&bob).await,
        [("alice".to_owned(), "one".to_owned())]
    );
    let (bad, _) = alice.dm("bob").send("two").await.unwrap();
    server.stop().await;
    let seq = corrupt_newest_entry(&data, &bad.conversation);
    let server = Server::start(&data).await;
    let alice = client(&dir.path().join("a"), &server.url);
    let bob = client(&dir.path().join("b"), &server.url);

    let max = sotto_client::sotto_engine::apply::MAX_DECRYPT_TRIES;
    for attempt in 1..=max {
        let text = format!("later {attempt}");
        alice.dm("bob").send(&text).await.unwrap();
        let report = bob.sync().await.unwrap();
        let shown: Vec<String> = shown_texts(&bob);
        assert_eq!(
            shown,
            [text],
            "later messages keep arriving (sync {attempt})"
        );
        let gave_up: Vec<&SyncEvent> = report
            .events
            .iter()
            .filter(|e| matches!(e, SyncEvent::GaveUp { .. }))
            .collect();
        let state = texts_and_seqs(&bob, "alice")
            .into_iter()
            .find(|(s, _)| *s == Some(seq))
            .unwrap()
            .1;
        if attempt < max {
            assert!(gave_up.is_empty(), "not given up at try {attempt}");
            assert_eq!(state, "<waiting>");
        } else {
            assert_eq!(
                gave_up,
                [&SyncEvent::GaveUp {
                    conversation: bad.conversation.clone(),
                    seq,
                    sender: Some("alice".into()),
                    tries: max
                }]
            );
            assert_eq!(state, "<failed>");
        }
    }
    // Given up: not tried again, shown as failed in its place; the conversation goes on.
    alice.dm("bob").send("after").await.unwrap();
    let report = bob.sync().await.unwrap();
    assert!(report.events.is_empty(), "{:?}", report.events);
    let mut expected = vec!["one".to_owned(), "<failed>".to_owned()];
    expected.extend((1..=max).map(|i| format!("later {i}")));
    expected.push("after".to_owned());
    assert_eq!(
        texts_and_seqs(&bob, "alice")
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>(),
        expected
    );
    server.stop().await;
}

/// A reaction, an edit and a forged edit that arrive before the message they act on (which did
/// not decrypt at first) are kept hidden, then applied or refused when it arrives.
#[tokio::test]
async fn actions_that_arrive_before_their_message_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let proxy = FlipProxy::start(&server.url).await;
    let alice = registered(&dir.path().join("a"), &server.url, "alice").await;
    let bob = registered(&dir.path().join("b"), &server.url, "bob").await;
    let carol = registered(&dir.path().join("c"), &server.url, "carol").await;
    let gid = alice
        .groups()
        .create("Team", &["bob".into(), "carol".into()], 16)
        .await
        .unwrap()
        .0;
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    let (x, _) = alice.group(&gid).send("lunch at 12?").await.unwrap();
    bob.sync().await.unwrap();
    alice
        .act(&x.id, sotto_client::Action::Edit("lunch at 1?".into()))
        .await
        .unwrap();
    bob.act(&x.id, sotto_client::Action::React("👍".into()))
        .await
        .unwrap();
    bob.act(&x.id, sotto_client::Action::Reply("sure".into()))
        .await
        .unwrap();
    let original = sotto_proto::MessageId::from_hex(&x.id).unwrap();
    bob.run(bob.engine().dangerous_send_unchecked(
        &gid,
        sotto_proto::Body::Edit {
            original,
            text: "lunch cancelled".into(),
            reply_to: None,
        },
    ))
    .await
    .unwrap();

    // Carol fetches everything at once; the message itself does not decrypt on the way.
    let carol_via_proxy = client(&dir.path().join("c"), &proxy.url);
    proxy.arm(&alice.device_id().unwrap());
    carol_via_proxy.sync().await.unwrap();
    assert_eq!(proxy.flipped.lock().unwrap().len(), 1);
    assert_eq!(
        shown_texts(&carol),
        ["sure"],
        "the reply shows; the message waits"
    );
    assert!(
        !carol
            .take_updates()
            .unwrap()
            .iter()
            .any(|u| !matches!(u, sotto_client::Update::Receipt { .. })),
        "nothing acting on a message this device does not have is shown"
    );

    // The next sync recovers it: the early actions are checked against it in log order.
    let report = carol.sync().await.unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("refused the edit from bob") && w.contains("bob may not edit")),
        "{:?}",
        report.warnings
    );
    assert_eq!(shown_texts(&carol), ["lunch at 12?"]);
    let updates: Vec<_> = carol
        .take_updates()
        .unwrap()
        .into_iter()
        .filter(|u| !matches!(u, sotto_client::Update::Receipt { .. }))
        .collect();
    assert_eq!(updates.len(), 2, "the edit and the reaction: {updates:?}");
    let h = carol.group(&gid).history().unwrap();
    assert_eq!(h[0].id, x.id);
    assert_eq!(h[0].text.as_deref(), Some("lunch at 1?"));
    assert_eq!(h[0].edits, 1);
    assert_eq!(
        h[0].reactions.get("👍").cloned(),
        Some(vec!["bob".to_owned()])
    );
    assert_eq!(h[1].reply_to.as_deref(), Some(x.id.as_str()));
    server.stop().await;
}
