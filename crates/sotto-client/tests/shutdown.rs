//! Health, readiness and an orderly shutdown, against a real sottod on a real socket: on the
//! shutdown signal `/readyz` answers 503 and push connections close with 1001 "going away"; the
//! node goes on serving for its drain time, then stops accepting, and nothing it acknowledged is
//! lost (the same data, served again, has it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sotto_server::Config;
use support::{http, push_request, registered, sync_texts, Server};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn get(url: &str) -> (u16, String) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_closes_push_with_going_away_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let config = Config {
        drain: Duration::from_millis(1500),
        ..Config::default()
    };
    let mut server = Server::start_with(&data, "127.0.0.1:0", config.clone()).await;
    let url = server.url.clone();
    let a = registered(&dir.path().join("a"), &url, "alice").await;
    let b = registered(&dir.path().join("b"), &url, "bob").await;
    a.dm("bob").send("before the shutdown").await.unwrap();

    assert_eq!(get(&format!("{url}/healthz")).await, (200, "ok".into()));
    assert_eq!(get(&format!("{url}/readyz")).await, (200, "ready".into()));

    // bob's push connection, as the SDK holds it.
    let req = push_request(&url, &dir.path().join("b"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req.clone()).await.unwrap();

    let asked = Instant::now();
    server.begin_stop();
    // The push connection goes at once, with "going away".
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Message::Close(frame) = m.unwrap() {
                return frame;
            }
        }
        None
    })
    .await
    .expect("closed within the drain")
    .expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
    // Draining: not ready, still serving.
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);
    // A new push connection is sent elsewhere rather than opened and closed.
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    a.dm("bob")
        .send("acknowledged while draining")
        .await
        .unwrap();
    // Then it stops accepting, after the drain time.
    server.finish().await;
    assert!(asked.elapsed() >= config.drain);
    assert!(
        http().get(format!("{url}/healthz")).send().await.is_err(),
        "no longer accepting"
    );

    // Served again from the same data: everything acknowledged is there.
    let again = Server::start_with(&data, "127.0.0.1:0", Config::default()).await;
    drop((a, b));
    let b = sotto_client::Client::open(&dir.path().join("b"), Some(&again.url)).unwrap();
    let texts: Vec<String> = sync_texts(&b).await.into_iter().map(|(_, t)| t).collect();
    assert!(
        texts.contains(&"before the shutdown".to_owned())
            && texts.contains(&"acknowledged while draining".to_owned()),
        "{texts:?}"
    );
    again.stop().await;
}

/// A load balancer as the test needs one: each new connection goes to the first node whose
/// `/readyz` answers 200 (checked as the connection comes), bytes copied both ways.
async fn balancer(nodes: Vec<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let nodes = nodes.clone();
            tokio::spawn(async move {
                for node in &nodes {
                    let ready = http()
                        .get(format!("{node}/readyz"))
                        .timeout(Duration::from_secs(1))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if !ready {
                        continue;
                    }
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(node.trim_start_matches("http://")).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    url
}

/// The next text bob's listener reports, within 20 s.
async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_hands_its_clients_to_another_and_loses_nothing() {
    let Some((pg, nats)) = support::services().await else {
        return;
    };
    let schema = support::schema_name("drain");
    let dir = tempfile::tempdir().unwrap();
    let draining = Config {
        drain: Duration::from_millis(1500),
        ..Config::default()
    };
    let mut a = Server::start_node_with(&pg, &schema, &nats, "127.0.0.1:0", draining).await;
    let b = Server::start_node(&pg, &schema, &nats, "127.0.0.1:0").await;
    let lb = balancer(vec![a.url.clone(), b.url.clone()]).await;
    let alice = registered(&dir.path().join("alice"), &lb, "alice").await;
    let bob = registered(&dir.path().join("bob"), &lb, "bob").await;
    alice.dm("bob").send("hello").await.unwrap();
    sync_texts(&bob).await;
    drop(bob);

    // bob listens through the balancer, so on node A.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let local = tokio::task::LocalSet::new();
    let (bob_home, lb_url) = (dir.path().join("bob"), lb.clone());
    let listener = local.spawn_local(async move {
        let bob = support::client(&bob_home, &lb_url);
        bob.listen(|ev| {
            if let sotto_client::ListenEvent::Messages(m) = ev {
                for m in m {
                    let _ = tx.send(m.text);
                }
            }
        })
        .await
    });
    let (a_url, alice_home) = (a.url.clone(), dir.path().join("alice"));
    let got = local
        .run_until(async {
            let mut got = Vec::new();
            tokio::time::sleep(Duration::from_millis(300)).await;
            alice.dm("bob").send("before the drain").await.unwrap();
            got.extend(next(&mut rx).await);
            drop(alice);
            // Node A drains: bob's push connection goes, and comes back through node B.
            a.begin_stop();
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Sent to node A itself while it drains: acknowledged, so delivered.
            let direct = support::client(&alice_home, &a_url);
            direct
                .dm("bob")
                .send("to node A while it drains")
                .await
                .unwrap();
            drop(direct);
            got.extend(next(&mut rx).await);
            let alice = support::client(&alice_home, &lb);
            alice.dm("bob").send("after the drain").await.unwrap();
            got.extend(next(&mut rx).await);
            got
        })
        .await;
    listener.abort();
    a.finish().await;
    assert_eq!(
        got,
        [
            "before the drain",
            "to node A while it drains",
            "after the drain"
        ],
        "every acknowledged message, once, in order"
    );
    b.stop().await;
    support::drop_schema(&pg, &schema).await;
}
