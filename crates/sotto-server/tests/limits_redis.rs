//! Rate limits shared through a real Redis (`SOTTO_TEST_REDIS`, default redis://127.0.0.1:6379):
//! three limiters, as three nodes would hold them, share one budget; and when Redis goes away a
//! node fails closed (503) or open (its own buckets) as configured. Without a reachable Redis
//! the tests print SKIPPED, except under CI (`CI` set), where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use sotto_api::ErrorCode;
use sotto_server::limits::{Class, FailMode, Limits, Rate, RateLimiter, SharedBuckets};
use support::Sottod;

async fn redis() -> Option<(String, String)> {
    let url = std::env::var("SOTTO_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let addr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    match tokio::net::TcpStream::connect(&addr).await {
        Ok(_) => Some((url, addr)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: Redis not reachable at {url} ({e}); set SOTTO_TEST_REDIS or start it (see .ci/run)");
            None
        }
        Err(e) => panic!("Redis required under CI at {url}: {e}"),
    }
}

fn sends(rate: Rate) -> Limits {
    Limits {
        send_per_device: Some(rate),
        ..Limits::none()
    }
}

/// A key no other run uses.
fn fresh_key() -> String {
    format!(
        "device-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test]
async fn three_nodes_share_one_budget() {
    let Some((url, _)) = redis().await else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let shared = SharedBuckets::connect(&url, FailMode::Closed)
            .await
            .unwrap();
        nodes.push(RateLimiter::shared(sends(Rate::per_min(10)), shared));
    }
    let key = fresh_key();
    let mut allowed = 0;
    let mut waits = Vec::new();
    for i in 0..30 {
        match nodes[i % 3].check(Class::Send, &key).await {
            Ok(()) => allowed += 1,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::RateLimited);
                waits.push(e.retry_after.unwrap());
            }
        }
    }
    assert_eq!(
        allowed, 10,
        "the three nodes together allow the rate, not three times it"
    );
    // One more token every 6 s.
    assert!(waits.iter().all(|w| (1..=6).contains(w)), "{waits:?}");
    // Another key has its own budget.
    nodes[0].check(Class::Send, &fresh_key()).await.unwrap();
}

/// A TCP proxy to Redis that can be pulled out: accepts and forwards until aborted.
async fn proxy(to: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = to.clone();
            conns.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn unreachable_redis_fails_closed_or_open_as_configured() {
    let Some((_, addr)) = redis().await else {
        return;
    };
    let (url, cable) = proxy(addr).await;
    let closed = RateLimiter::shared(
        sends(Rate::per_min(2)),
        SharedBuckets::connect(&url, FailMode::Closed)
            .await
            .unwrap(),
    );
    let open = RateLimiter::shared(
        sends(Rate::per_min(2)),
        SharedBuckets::connect(&url, FailMode::Open).await.unwrap(),
    );
    let key = fresh_key();
    closed.check(Class::Send, &key).await.unwrap();
    // Redis goes away (the proxy and every connection through it).
    cable.abort();
    let _ = cable.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = closed.check(Class::Send, &key).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);
    // Open: this node's own buckets, still limiting.
    let other = fresh_key();
    open.check(Class::Send, &other).await.unwrap();
    open.check(Class::Send, &other).await.unwrap();
    let e = open.check(Class::Send, &other).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::RateLimited);
}

#[tokio::test]
async fn a_node_does_not_start_on_an_unreachable_redis() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = SharedBuckets::connect(&format!("redis://127.0.0.1:{port}"), FailMode::Closed)
        .await
        .err()
        .expect("refused");
    assert!(err.contains("Redis"), "{err}");
}

/// The Redis key the limiter uses for `class` and `key` (so a test can start from a clean one).
fn redis_key(class: &str, key: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(class.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sotto:rl:{hex}")
}

#[tokio::test]
async fn two_sottod_nodes_with_limits_in_redis_allow_the_rate_once() {
    let Some((url, _)) = redis().await else {
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(redis_key("register", "127.0.0.1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = |d: &str| {
        let data = dir.path().join(d);
        let args = ["--data-dir", data.to_str().unwrap(), "--limits", &url];
        Sottod::start(
            &[&args[..], &["--limit-register", "3/min"]].concat(),
            std::process::Stdio::null(),
        )
    };
    let (a, b) = (node("a"), node("b"));
    let (url_a, url_b) = (a.url.clone(), b.url.clone());
    let http = support::http();
    // Registrations are limited per address before the body is read: an empty one is refused
    // with 400 when it gets through, 429 when the shared budget is spent.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &url_a } else { &url_b };
        let r = http
            .post(format!("{node}/v1/accounts"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    drop((a, b));
    assert_eq!(
        statuses.iter().filter(|s| **s != 429).count(),
        3,
        "3/min across both nodes: {statuses:?}"
    );
}
