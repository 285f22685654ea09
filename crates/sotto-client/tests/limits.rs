//! Abuse limits end to end: a real sottod on a real socket (so per-IP limits apply), real clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use sotto_api::ErrorCode;
use sotto_client::ClientError;
use sotto_server::limits::{Limits, Rate};
use sotto_server::Config;
use support::*;

async fn expect_429(resp: reqwest::Response) -> u64 {
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(body["message"].as_str().unwrap().contains("try again in"));
    wait
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_429_with_retry_after_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        limits: Limits {
            register_per_ip: Some(Rate::per_min(3)),
            claim_per_device: Some(Rate::per_min(4)),
            send_per_device: Some(Rate::per_sec(2)),
            connect_per_device: Some(Rate::per_min(2)),
            connect_per_ip: None,
            claim_per_ip: None,
            send_per_ip: None,
            ephemeral_per_device: Some(Rate::per_min(2)),
        },
        ..Config::default()
    };
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", config).await;
    let url = server.url.clone();
    let http = http();

    // Registration, per address: three, then a clear refusal that creates nothing.
    let alice = registered(&dir.path().join("alice"), &url, "alice").await;
    let bob = registered(&dir.path().join("bob"), &url, "bob").await;
    let _carol = registered(&dir.path().join("carol"), &url, "carol").await;
    let dave = client(&dir.path().join("dave"), &url);
    let e = dave.account().register("dave").await.unwrap_err();
    assert!(
        matches!(
            &e,
            ClientError::Api {
                code: ErrorCode::RateLimited,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("too many registrations"), "{e}");
    let resp = http
        .post(format!("{url}/v1/accounts"))
        .body("not even json: refused before the body is read")
        .send()
        .await
        .unwrap();
    assert!(expect_429(resp).await > 5);
    assert!(alice.devices().list().await.is_ok());
    let resp = http
        .get(format!("{url}/v1/accounts/dave"))
        .bearer_auth(token_of(&dir.path().join("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "the refused registration created nothing"
    );

    // Sends, per device (2/s): a burst of 12 is slowed down, not refused: the client waits out
    // the short Retry-After; bob gets every message exactly once, in order.
    for i in 0..12 {
        alice.dm("bob").send(&format!("m{i}")).await.unwrap();
    }
    let got = sync_texts(&bob).await;
    let want: Vec<(String, String)> = (0..12)
        .map(|i| ("alice".to_owned(), format!("m{i}")))
        .collect();
    assert_eq!(got, want);
    // Typing indicators, per device (2/min): the third is refused with a clear reason.
    alice.dm("bob").typing().await.unwrap();
    alice.dm("bob").typing().await.unwrap();
    let e = alice.dm("bob").typing().await.unwrap_err();
    assert!(e.to_string().contains("too many typing indicators"), "{e}");
    // ... and the server did refuse the excess: right after the burst, a raw send is a 429.
    let alice_token = token_of(&dir.path().join("alice"));
    let list: serde_json::Value = http
        .get(format!("{url}/v1/conversations"))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dm = list["conversations"][0]["id"].as_str().unwrap().to_owned();
    let mut limited = false;
    for _ in 0..4 {
        let resp = http
            .post(format!("{url}/v1/conversations/{dm}/messages"))
            .bearer_auth(&alice_token)
            .json(&serde_json::json!({"message": "AAAA"}))
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            assert_eq!(expect_429(resp).await, 1);
            limited = true;
            break;
        }
        assert_eq!(resp.status(), 400); // not MLS, but it took a token
    }
    assert!(limited, "sends were never limited");

    // Key-package claims, per device: four a minute.
    let bob_token = token_of(&dir.path().join("bob"));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = http
            .post(format!("{url}/v1/key-packages/claim"))
            .bearer_auth(&bob_token)
            .json(&serde_json::json!({"username": "carol"}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            expect_429(resp).await;
            break;
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);

    // Push connections, per device: two a minute, the third upgrade is refused with a 429.
    let mut conns = Vec::new();
    for i in 0..3 {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("{}/v1/ws", url.replacen("http", "ws", 1)),
            )
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {bob_token}").parse().unwrap(),
        );
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => conns.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!((i, resp.status().as_u16()), (2, 429));
                assert!(resp.headers().contains_key("retry-after"));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(conns.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clean_error_the_server_keeps_serving_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let config = || Config {
        limits: Limits::none(),
        ..Config::default()
    };
    let server = Server::start_capped(&data, "127.0.0.1:0", config(), Some(2 << 20)).await;
    let url = server.url.clone();
    let addr = server.addr();
    let alice = registered(&dir.path().join("alice"), &url, "alice").await;
    let bob = registered(&dir.path().join("bob"), &url, "bob").await;
    // alice sends 30 KB messages until the database is full.
    let big = "x".repeat(30 * 1024);
    let mut accepted = 0;
    let refused = loop {
        match alice.dm("bob").send(&format!("{accepted} {big}")).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 200, "the 2 MiB cap never filled up");
    };
    let ClientError::Queued { reason, .. } = &refused else {
        panic!("{refused}")
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
        "{refused}"
    );
    assert!(refused.to_string().contains("storage is full"), "{refused}");
    assert!(accepted > 10);
    // The server keeps serving reads: bob gets every accepted message.
    let got = sync_texts(&bob).await;
    assert_eq!(got.len(), accepted);
    let health = http().get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // The refused message waits on alice's device; once the server has room (restarted with a
    // bigger cap), her next sync delivers it, exactly once.
    server.stop().await;
    let server = Server::start_capped(&data, &addr, config(), Some(64 << 20)).await;
    let report = alice.sync().await.unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let got = sync_texts(&bob).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].1.starts_with(&format!("{accepted} ")));
    assert!(sync_texts(&bob).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_websocket_frames_close_only_the_offenders_connection() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let url = server.url.clone();
    let alice = registered(&dir.path().join("alice"), &url, "alice").await;
    let _bob = registered(&dir.path().join("bob"), &url, "bob").await;
    let _carol = registered(&dir.path().join("carol"), &url, "carol").await;
    let connect = |home: &str| {
        let token = token_of(&dir.path().join(home));
        let url = url.clone();
        async move {
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    format!("{}/v1/ws", url.replacen("http", "ws", 1)),
                )
                .unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            assert!(ws.next().await.unwrap().unwrap().is_text()); // ready
            ws
        }
    };
    let closes = |mut ws: tokio_tungstenite::WebSocketStream<_>| async move {
        tokio::time::timeout(std::time::Duration::from_secs(10), async move {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .expect("the server closes the offending connection");
    };
    let mut carol_ws = connect("carol").await;
    // An oversized binary frame, and a text frame of junk: each offender is disconnected.
    let mut big = connect("bob").await;
    let _ = big.send(Message::Binary(vec![0u8; 100_000].into())).await;
    closes(big).await;
    let mut junk = connect("bob").await;
    junk.send(Message::Text("{\"not\": \"expected\"}".into()))
        .await
        .unwrap();
    closes(junk).await;
    // carol's connection is untouched: a DM to her arrives as a wake-up.
    alice.dm("carol").send("still there?").await.unwrap();
    let woke = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Some(Ok(Message::Text(t))) = carol_ws.next().await {
                if t.contains("conversation") || t.contains("inbox") {
                    return;
                }
            }
        }
    })
    .await;
    assert!(woke.is_ok(), "carol's push connection stopped working");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_finished_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        read_idle: std::time::Duration::from_secs(1),
        ..Config::default()
    };
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", config).await;
    let addr = server.addr();
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 256];
        tokio::time::timeout(std::time::Duration::from_secs(10), async move {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server closes the silent connection")
    };
    // Connected and silent; headers started and never finished; a body promised and never sent.
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    body.write_all(
        b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    tokio::join!(closed(silent), closed(half), closed(body));
    // The server itself is fine.
    let health = http()
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_count_every_device_behind_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        limits: Limits {
            send_per_ip: Some(Rate::per_min(3)),
            claim_per_ip: Some(Rate::per_min(2)),
            ..Limits::none()
        },
        ..Config::default()
    };
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", config).await;
    let url = server.url.clone();
    registered(&dir.path().join("alice"), &url, "alice").await;
    registered(&dir.path().join("carol"), &url, "carol").await;
    let tokens = [
        token_of(&dir.path().join("alice")),
        token_of(&dir.path().join("carol")),
    ];
    let http = http();
    // Sends (garbage, refused after taking a token): three from this address, whichever device.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let resp = http
            .post(format!(
                "{url}/v1/conversations/{}/messages",
                "0".repeat(32)
            ))
            .bearer_auth(&tokens[i % 2])
            .json(&serde_json::json!({"message": "AAAA"}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(body["message"]
                .as_str()
                .unwrap()
                .contains("from your address"));
        }
    }
    assert_eq!(statuses, [400, 400, 400, 429]); // not MLS: refused before any lookup
                                                // Claims: two from this address.
    let mut statuses = Vec::new();
    for i in 0..3 {
        let resp = http
            .post(format!("{url}/v1/key-packages/claim"))
            .bearer_auth(&tokens[i % 2])
            .json(&serde_json::json!({"username": if i % 2 == 0 { "carol" } else { "alice" }}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    server.stop().await;
}
