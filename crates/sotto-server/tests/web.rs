//! The web client's bundle, served at `/` by the real router: files of the bundle with the strict
//! CSP on every one, immutable caching only for hashed assets, nothing outside the bundle, and a
//! page that says how to build the bundle when there is none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use sotto_server::{app, AppState, Config, SqliteStore};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

async fn get(router: &axum::Router, method: Method, path: &str) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn router(
    data: &std::path::Path,
    web_dir: Option<std::path::PathBuf>,
) -> (axum::Router, tokio::sync::watch::Sender<bool>) {
    let store = SqliteStore::open(data).unwrap();
    let config = Config {
        web_dir,
        ..Config::default()
    };
    let (state, stop) = AppState::single_node(Arc::new(store), config);
    (app(state), stop)
}

#[tokio::test]
async fn the_bundle_is_served_under_the_csp_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("dist");
    std::fs::create_dir_all(web.join("assets")).unwrap();
    std::fs::write(
        web.join("index.html"),
        "<!doctype html><title>Sotto</title>",
    )
    .unwrap();
    std::fs::write(web.join("assets/index-abc123.js"), "export {};").unwrap();
    std::fs::write(web.join("assets/sotto_wasm_bg-def456.wasm"), b"\0asm").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "not for the web").unwrap();
    std::fs::write(web.join(".env"), "hidden").unwrap();
    std::fs::write(web.join("notes.md"), "no known type").unwrap();
    let (r, _stop) = router(&dir.path().join("data"), Some(web));

    let page = get(&r, Method::GET, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body, b"<!doctype html><title>Sotto</title>");
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-cache");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "connect-src 'self'",
        "worker-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("'unsafe-eval'"),
        "{csp}"
    );
    assert_eq!(page.headers["x-content-type-options"], "nosniff");

    let js = get(&r, Method::GET, "/assets/index-abc123.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");
    assert!(js.headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert!(js.headers.contains_key("content-security-policy"));
    let wasm = get(&r, Method::GET, "/assets/sotto_wasm_bg-def456.wasm").await;
    assert_eq!(wasm.headers["content-type"], "application/wasm");
    let head = get(&r, Method::HEAD, "/assets/index-abc123.js").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.headers["content-length"], "10");

    for path in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/.env",
        "/notes.md",
        "/assets/missing.js",
    ] {
        let resp = get(&r, Method::GET, path).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["code"], "not_found", "{path}");
    }
    // The API's routes and errors are unchanged.
    let post = get(&r, Method::POST, "/index.html").await;
    assert_eq!(post.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&r, Method::GET, "/healthz").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_a_bundle_the_page_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _stop) = router(&dir.path().join("data"), Some(dir.path().join("missing")));
    let page = get(&r, Method::GET, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    let text = String::from_utf8(page.body).unwrap();
    assert!(text.contains("scripts/web-build"), "{text}");
    assert!(!text.contains("<script"), "{text}");
    assert!(page.headers.contains_key("content-security-policy"));

    // Served off (`--no-web`): `/` is the API's 404.
    let (r, _stop) = router(&dir.path().join("data2"), None);
    assert_eq!(
        get(&r, Method::GET, "/").await.status,
        StatusCode::NOT_FOUND
    );
}
