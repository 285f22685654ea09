//! Bad input against every endpoint: always a 4xx with a stable JSON `{code, message}`, never a 5xx,
//! and nothing half-applied. Drives the real router (real SQLite, real MLS) with `oneshot`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use serde_json::{json, Value};
use sotto_api::*;
use sotto_proto::mls::{Conversation, DeviceKeys, Trust, ValidKeyPackage};
use sotto_proto::{AccountIdentity, DeviceId, IdentityPublicKey, Username};
use sotto_server::{app, AppState, Config, SqliteStore};
use tower::ServiceExt;

struct T {
    router: axum::Router,
    state: AppState,
    /// Push connections end when this is dropped.
    _stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
}

impl T {
    fn new() -> Self {
        Self::with(Config::default())
    }

    /// A server with `config` (its body limit set to 256 KiB).
    fn with(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_owned();
        let store = SqliteStore::open(&data).unwrap();
        let config = Config {
            max_body_bytes: 256 * 1024,
            ..config
        };
        let (state, stop) = AppState::single_node(Arc::new(store), config);
        Self {
            router: app(state.clone()),
            state,
            _stop: stop,
            _dir: dir,
            data,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        self.call(
            method,
            path,
            token,
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    async fn expect_err(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        status: StatusCode,
        code: &str,
    ) -> Value {
        let (s, v) = self.call(method.clone(), path, token, body).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        if method == Method::HEAD {
            return v; // a HEAD response has no body to carry the error (RFC 9110)
        }
        assert_eq!(v["code"], code, "{method} {path}: {v}");
        assert!(v["message"].is_string());
        v
    }
}

struct Dev {
    p: OpenMlsRustCrypto,
    keys: DeviceKeys,
    identity: AccountIdentity,
    user: Username,
    token: String,
}

fn new_device(identity: AccountIdentity, user: &str, n_kps: usize) -> (Dev, NewDevice) {
    let p = OpenMlsRustCrypto::default();
    let user = Username::new(user).unwrap();
    let keys = DeviceKeys::generate(&identity, &user, DeviceId::random(), 1);
    let (one, lr) = keys
        .key_packages(&p, sotto_proto::mls::DEFAULT_CIPHERSUITE, n_kps, true)
        .unwrap();
    let nd = NewDevice {
        certificate: B64(keys.certificate().to_bytes()),
        key_packages: one.into_iter().map(B64).collect(),
        last_resort_key_packages: vec![B64(lr.unwrap())],
    };
    (
        Dev {
            p,
            keys,
            identity,
            user,
            token: String::new(),
        },
        nd,
    )
}

async fn register(t: &T, user: &str, n_kps: usize) -> Dev {
    let (mut dev, nd) = new_device(AccountIdentity::generate(), user, n_kps);
    let req = RegisterRequest {
        username: sotto_api::Username::new(user).unwrap(),
        identity_key: B64(dev.identity.public().to_bytes().to_vec()),
        device: nd,
    };
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/accounts",
            None,
            serde_json::to_value(&req).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    dev.token = v["token"].as_str().unwrap().to_owned();
    dev
}

/// Registers another device of `owner`'s account through a one-time link.
async fn link_device(t: &T, owner: &Dev) -> Dev {
    let (mut dev, nd) = new_device(owner.identity_clone(), owner.user.as_str(), 1);
    let link_id = hex_id(32);
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/links",
            Some(&owner.token),
            json!({"link_id": link_id, "bundle": B64(vec![1; 16])}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/links/redeem",
            None,
            json!({"link_id": link_id, "device": nd}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    dev.token = v["token"].as_str().unwrap().to_owned();
    dev
}

fn hex_id(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

struct Pins(Vec<(Username, IdentityPublicKey)>);
impl Trust for Pins {
    fn pinned_identity(&self, u: &Username) -> Option<IdentityPublicKey> {
        self.0.iter().find(|(n, _)| n == u).map(|(_, k)| *k)
    }
}

/// `creator` claims a key package of `peer`'s account and builds conversation `id`'s MLS group
/// with it: the group, and the commit bundle to post for epoch 0.
async fn group_with(
    t: &T,
    creator: &Dev,
    peer: &Dev,
    id: &str,
) -> (Conversation, sotto_proto::mls::CommitBundle) {
    let (_, v) = t
        .json(
            Method::POST,
            "/v1/key-packages/claim",
            Some(&creator.token),
            json!({"username": peer.user.as_str()}),
        )
        .await;
    let r: ClaimResponse = serde_json::from_value(v).unwrap();
    let pins = Pins(vec![(peer.user.clone(), peer.identity.public())]);
    let kp = ValidKeyPackage::parse(creator.p.crypto(), &r.key_packages[0].key_package.0)
        .unwrap()
        .verify(&pins)
        .unwrap();
    let gid = sotto_proto::identity::unhex(id).unwrap();
    let mut g = Conversation::create(
        &creator.p,
        &creator.keys,
        &gid,
        sotto_proto::mls::DEFAULT_CIPHERSUITE,
        None,
    )
    .unwrap();
    let bundle = g.add_devices(&creator.p, &creator.keys, &[kp]).unwrap();
    (g, bundle)
}

fn table_count(t: &T, table: &str) -> i64 {
    let c = rusqlite::Connection::open(t.data.join("sotto.db")).unwrap();
    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn every_route_answers_garbage_with_a_4xx_json_error() {
    let t = T::new();
    let alice = register(&t, "alice", 1).await;
    let garbage: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"username\": 7}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        b"{\"message\":\"AAAA\",\"extra\":1}".to_vec(),
        vec![b'a'; 300 * 1024],
    ];
    // Every operation of the served OpenAPI document, with garbage bodies and path parameters:
    // each body reaches different code (no body, bad JSON, JSON of the wrong shape, bad UTF-8, an
    // unknown field, over the size limit).
    let (_, doc) = t.call(Method::GET, "/openapi.json", None, None).await;
    let mut operations = 0;
    let mut requests = 0;
    for (template, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            operations += 1;
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let params = [
                "00000000000000000000000000000000",
                "alice",
                "%2e%2e%2f%2e%2e",
                "%C3%A9%00%FF",
                &"f".repeat(5000),
            ];
            let n = if template.contains('{') {
                params.len()
            } else {
                1
            };
            for param in &params[..n] {
                let path = template
                    .replace("{username}", param)
                    .replace("{id}", param)
                    .replace("{device_id}", param);
                for token in [None, Some("garbage"), Some(alice.token.as_str())] {
                    for body in &garbage {
                        requests += 1;
                        let (s, v) = t.call(m.clone(), &path, token, Some(body.clone())).await;
                        assert!(!s.is_server_error(), "{method} {path}: {s} {v}");
                        if s.is_client_error() && m != Method::HEAD {
                            assert!(
                                v["code"].is_string() && v["message"].is_string(),
                                "{method} {path}: {s} {v}"
                            );
                        }
                    }
                }
            }
        }
    }
    assert_eq!(operations, sotto_server::http::ROUTES.len());
    eprintln!("{requests} requests over {operations} operations");
    assert!(requests < 3000, "{requests} requests");
    // Unknown field names with a multi-byte character around the error message's 200-byte cut:
    // the message is cut on a character boundary (one route: the cut is shared by all).
    for n in 100..=160 {
        let body = format!("{{\"{}é\":1}}", "a".repeat(n)).into_bytes();
        let v = t
            .expect_err(
                Method::POST,
                "/v1/accounts",
                None,
                Some(body),
                StatusCode::BAD_REQUEST,
                "bad_request",
            )
            .await;
        assert!(v["message"].as_str().unwrap().len() <= 200, "{v}");
    }
    // Nothing was half-applied: alice still has exactly her one device.
    assert_eq!(table_count(&t, "devices"), 1);
    // The body limit (configured to 256 KiB here) answers 413 payload_too_large.
    let big = serde_json::to_vec(&json!({"message": B64(vec![0; 300 * 1024])})).unwrap();
    t.expect_err(
        Method::POST,
        "/v1/conversations/00000000000000000000000000000000/messages",
        Some(&alice.token),
        Some(big),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // Unknown routes and methods, too.
    t.expect_err(
        Method::GET,
        "/v1/nope",
        None,
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    t.expect_err(
        Method::DELETE,
        "/v1/accounts",
        None,
        None,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn authentication_is_required_and_checked() {
    let t = T::new();
    let alice = register(&t, "alice", 1).await;
    let (dev, secret) = alice.token.split_once(':').unwrap();
    let wrong = format!("{dev}:{}", "0".repeat(secret.len()));
    let other_dev = format!("{}:{secret}", DeviceId::random());
    for (method, path) in sotto_server::http::ROUTES {
        if [
            "/v1/accounts",
            "/v1/links/fetch",
            "/v1/links/redeem",
            "/openapi.json",
            "/health",
            "/healthz",
            "/readyz",
            "/metrics",
        ]
        .contains(path)
            || *method == "options"
        {
            continue;
        }
        let path = path
            .replace("{username}", "alice")
            .replace("{id}", "00000000000000000000000000000000")
            .replace("{device_id}", dev);
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        for token in [
            None,
            Some("nocolon"),
            Some(wrong.as_str()),
            Some(other_dev.as_str()),
            Some("zz:zz"),
        ] {
            t.expect_err(
                m.clone(),
                &path,
                token,
                Some(b"{}".to_vec()),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            )
            .await;
        }
    }
}

#[tokio::test]
async fn registration_refuses_bad_accounts_and_devices_without_side_effects() {
    let t = T::new();
    register(&t, "alice", 1).await;
    let tr = &t;
    let post = |v: Value| async move {
        tr.call(
            Method::POST,
            "/v1/accounts",
            None,
            Some(serde_json::to_vec(&v).unwrap()),
        )
        .await
    };

    let (good, nd) = new_device(AccountIdentity::generate(), "bob", 1);
    let ok_body = |user: &str, key: Vec<u8>, nd: &NewDevice| json!({"username": user, "identity_key": B64(key), "device": nd});
    let key = good.identity.public().to_bytes().to_vec();

    // Taken username.
    let (dup, dup_nd) = new_device(AccountIdentity::generate(), "alice", 1);
    let (s, v) = post(ok_body(
        "alice",
        dup.identity.public().to_bytes().to_vec(),
        &dup_nd,
    ))
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("username_taken"))
    );
    // Invalid username, key, certificate for someone else, key signed by another identity.
    for body in [
        ok_body("B O B", key.clone(), &nd),
        ok_body("bob", vec![1, 2, 3], &nd),
        ok_body("carol", key.clone(), &nd),
        ok_body(
            "bob",
            AccountIdentity::generate().public().to_bytes().to_vec(),
            &nd,
        ),
    ] {
        let (s, v) = post(body).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{v}"
        );
    }
    // Key packages of another device, a one-time package marked last-resort, garbage packages.
    let (_, other) = new_device(good.identity_clone(), "bob", 1);
    let mut mixed = nd.clone();
    mixed.key_packages = other.key_packages.clone();
    let mut swapped = nd.clone();
    swapped.key_packages = nd.last_resort_key_packages.clone();
    let mut junk = nd.clone();
    junk.key_packages = vec![B64(vec![0; 64])];
    for d in [mixed, swapped, junk] {
        let (s, v) = post(ok_body("bob", key.clone(), &d)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{v}"
        );
    }
    assert_eq!(table_count(&t, "accounts"), 1, "nothing half-applied");
    assert_eq!(table_count(&t, "devices"), 1);
    // The good one still works afterwards.
    let (s, _) = post(ok_body("bob", key, &nd)).await;
    assert_eq!(s, StatusCode::CREATED);
}

trait CloneIdentity {
    fn identity_clone(&self) -> AccountIdentity;
}
impl CloneIdentity for Dev {
    fn identity_clone(&self) -> AccountIdentity {
        AccountIdentity::from_secret_bytes(self.identity.dangerous_secret_bytes().as_ref()).unwrap()
    }
}

#[tokio::test]
async fn key_packages_are_never_handed_out_twice_and_the_last_resort_keeps_working() {
    let t = T::new();
    let alice = register(&t, "alice", 1).await;
    register(&t, "bob", 2).await;
    let claim = || async {
        let (s, v) = t
            .json(
                Method::POST,
                "/v1/key-packages/claim",
                Some(&alice.token),
                json!({"username": "bob"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let r: ClaimResponse = serde_json::from_value(v).unwrap();
        assert_eq!(r.key_packages.len(), 1);
        r.key_packages[0].key_package.0.clone()
    };
    let (k1, k2, k3, k4) = (claim().await, claim().await, claim().await, claim().await);
    assert_ne!(k1, k2);
    assert!(k3 != k1 && k3 != k2);
    assert_eq!(
        k3, k4,
        "the last-resort package is reused, one-time ones never are"
    );
    let crypto = openmls_rust_crypto::RustCrypto::default();
    assert!(ValidKeyPackage::parse(&crypto, &k3)
        .unwrap()
        .is_last_resort());
    t.expect_err(
        Method::POST,
        "/v1/key-packages/claim",
        Some(&alice.token),
        Some(br#"{"username":"nobody"}"#.to_vec()),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    t.expect_err(
        Method::POST,
        "/v1/key-packages/claim",
        Some(&alice.token),
        Some(br#"{"username":"bob","devices":["xyz"]}"#.to_vec()),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    // Uploading someone else's key packages is refused.
    let (_, other) = new_device(AccountIdentity::generate(), "alice", 1);
    t.expect_err(
        Method::POST,
        "/v1/key-packages",
        Some(&alice.token),
        Some(serde_json::to_vec(&json!({"key_packages": other.key_packages})).unwrap()),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

/// Three accounts (alice, bob, eve); alice and bob's DM `id`, and alice's MLS group for it with one
/// of bob's key packages. `Committed`: its first commit accepted (seq 1).
struct Dm {
    t: T,
    alice: Dev,
    bob: Dev,
    eve: Dev,
    id: String,
    g: Conversation,
    bundle: sotto_proto::mls::CommitBundle,
}

#[derive(PartialEq)]
enum Stage {
    Built,
    Committed,
}

impl Dm {
    async fn new(stage: Stage) -> Self {
        let t = T::new();
        let alice = register(&t, "alice", 2).await;
        let bob = register(&t, "bob", 2).await;
        let eve = register(&t, "eve", 1).await;
        let (_, c) = t
            .json(
                Method::POST,
                "/v1/dms",
                Some(&alice.token),
                json!({"peer": "bob"}),
            )
            .await;
        let id = c["id"].as_str().unwrap().to_owned();
        let (mut g, bundle) = group_with(&t, &alice, &bob, &id).await;
        if stage == Stage::Committed {
            let (s, v) = t
                .json(
                    Method::POST,
                    &format!("/v1/conversations/{id}/commits"),
                    Some(&alice.token),
                    good(&bundle),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            g.merge_pending(&alice.p).unwrap();
        }
        Self {
            t,
            alice,
            bob,
            eve,
            id,
            g,
            bundle,
        }
    }
}

/// The body of a first commit: `bundle`'s commit for `epoch`, with its welcome or not, and an
/// initial group info or not.
fn commit_body(
    bundle: &sotto_proto::mls::CommitBundle,
    epoch: u64,
    welcome: bool,
    gi: Option<Vec<u8>>,
) -> Value {
    let mut v = json!({"epoch": epoch, "commit": B64(bundle.commit.clone())});
    if welcome {
        v["welcome"] = json!(B64(bundle.welcome.clone().unwrap()));
    }
    if let Some(gi) = gi {
        v["initial_group_info"] = json!(B64(gi));
    }
    v
}

/// The first commit as it should be.
fn good(bundle: &sotto_proto::mls::CommitBundle) -> Value {
    commit_body(bundle, 0, true, bundle.initial_group_info.clone())
}

/// An epoch-0 group info of another group by the same creator.
fn foreign_gi(alice: &Dev) -> Vec<u8> {
    Conversation::create(
        &alice.p,
        &alice.keys,
        b"another-group-id",
        sotto_proto::mls::DEFAULT_CIPHERSUITE,
        None,
    )
    .unwrap()
    .add_devices(&alice.p, &alice.keys, &[])
    .unwrap()
    .initial_group_info
    .unwrap()
}

#[tokio::test]
async fn dms_are_one_per_pair_and_never_with_oneself_or_nobody() {
    let t = T::new();
    let alice = register(&t, "alice", 2).await;
    let bob = register(&t, "bob", 2).await;
    t.expect_err(
        Method::POST,
        "/v1/dms",
        Some(&alice.token),
        Some(br#"{"peer":"alice"}"#.to_vec()),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    t.expect_err(
        Method::POST,
        "/v1/dms",
        Some(&alice.token),
        Some(br#"{"peer":"nobody"}"#.to_vec()),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let (_, c1) = t
        .json(
            Method::POST,
            "/v1/dms",
            Some(&alice.token),
            json!({"peer": "bob"}),
        )
        .await;
    let (_, c2) = t
        .json(
            Method::POST,
            "/v1/dms",
            Some(&bob.token),
            json!({"peer": "alice"}),
        )
        .await;
    assert_eq!(c1["id"], c2["id"], "one DM per pair");
    let id = c1["id"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());
}

#[tokio::test]
async fn a_conversation_looks_the_same_to_a_non_member_as_a_missing_one() {
    let Dm {
        t,
        alice,
        eve,
        id,
        bundle,
        ..
    } = Dm::new(Stage::Built).await;
    let commits = format!("/v1/conversations/{id}/commits");
    // Unknown conversation and non-member look the same.
    t.expect_err(
        Method::POST,
        "/v1/conversations/ffffffffffffffffffffffffffffffff/commits",
        Some(&alice.token),
        Some(serde_json::to_vec(&good(&bundle)).unwrap()),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    t.expect_err(
        Method::POST,
        &commits,
        Some(&eve.token),
        Some(serde_json::to_vec(&good(&bundle)).unwrap()),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    t.expect_err(
        Method::GET,
        &format!("/v1/conversations/{id}/log"),
        Some(&eve.token),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn malformed_first_commits_are_refused_and_store_nothing() {
    let Dm {
        id,
        t,
        alice,
        bundle,
        ..
    } = Dm::new(Stage::Built).await;
    let commits = format!("/v1/conversations/{id}/commits");
    // No initial group info, another group's, no welcome for the added device, epoch mismatch,
    // garbage: all refused, nothing stored.
    for body in [
        commit_body(&bundle, 0, true, None),
        commit_body(&bundle, 0, true, Some(foreign_gi(&alice))),
        commit_body(&bundle, 0, false, bundle.initial_group_info.clone()),
        commit_body(&bundle, 1, true, bundle.initial_group_info.clone()),
        json!({"epoch": 0, "commit": B64(vec![1, 2, 3]), "initial_group_info": B64(bundle.initial_group_info.clone().unwrap())}),
    ] {
        t.expect_err(
            Method::POST,
            &commits,
            Some(&alice.token),
            Some(serde_json::to_vec(&body).unwrap()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
    assert_eq!(table_count(&t, "log"), 0);
    assert_eq!(table_count(&t, "inbox"), 0);
}

#[tokio::test]
async fn the_first_commit_for_an_epoch_wins_and_only_its_welcome_is_stored() {
    let Dm {
        id,
        t,
        alice,
        bob,
        mut g,
        bundle,
        ..
    } = Dm::new(Stage::Built).await;
    let commits = format!("/v1/conversations/{id}/commits");
    // The real commit is accepted; the same commit again is stale (first commit wins).
    let (s, v) = t
        .json(Method::POST, &commits, Some(&alice.token), good(&bundle))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["seq"].as_u64(), v["epoch"].as_u64()), (Some(1), Some(1)));
    let v = t
        .expect_err(
            Method::POST,
            &commits,
            Some(&bob.token),
            Some(serde_json::to_vec(&good(&bundle)).unwrap()),
            StatusCode::CONFLICT,
            "stale_epoch",
        )
        .await;
    assert_eq!(v["current_epoch"], 1);
    assert_eq!(
        table_count(&t, "inbox"),
        1,
        "the refused bundle's welcome was not stored"
    );
    g.merge_pending(&alice.p).unwrap();
}

#[tokio::test]
async fn a_commit_cannot_add_a_device_the_server_never_registered() {
    let Dm {
        id,
        t,
        alice,
        bob,
        mut g,
        ..
    } = Dm::new(Stage::Committed).await;
    let commits = format!("/v1/conversations/{id}/commits");
    // A device of bob's account that the server never registered (a client with bob's identity key
    // could certify one): its certificate verifies for members, but the server refuses to let a
    // commit add it, and nothing is stored.
    let (ghost, _) = new_device(bob.identity_clone(), "bob", 1);
    let (gkp, _) = ghost
        .keys
        .key_packages(&ghost.p, sotto_proto::mls::DEFAULT_CIPHERSUITE, 1, false)
        .unwrap();
    let gkp = ValidKeyPackage::parse(ghost.p.crypto(), &gkp[0])
        .unwrap()
        .verify(&Pins(vec![(bob.user.clone(), bob.identity.public())]))
        .unwrap();
    let sneaky = g.add_devices(&alice.p, &alice.keys, &[gkp]).unwrap();
    let v = t
        .expect_err(
            Method::POST,
            &commits,
            Some(&alice.token),
            Some(
                serde_json::to_vec(&json!({
                    "epoch": 1, "commit": B64(sneaky.commit.clone()),
                    "welcome": B64(sneaky.welcome.clone().unwrap()),
                }))
                .unwrap(),
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    assert!(
        v["message"].as_str().unwrap().contains("not registered"),
        "{v}"
    );
    g.clear_pending(&alice.p).unwrap();
    assert_eq!(table_count(&t, "log"), 1);
}

#[tokio::test]
async fn messages_must_be_application_messages_of_this_group() {
    let Dm {
        t,
        alice,
        id,
        mut g,
        bundle,
        ..
    } = Dm::new(Stage::Committed).await;
    let messages = format!("/v1/conversations/{id}/messages");
    // Messages: a commit is not a message; a message for a past epoch is stale; a real one works.
    t.expect_err(
        Method::POST,
        &messages,
        Some(&alice.token),
        Some(serde_json::to_vec(&json!({"message": B64(bundle.commit.clone())})).unwrap()),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let hi = g.compose_text(&alice.p, &alice.keys, "hi", 0).unwrap();
    let ct = g.encrypt(&alice.p, &alice.keys, &hi).unwrap();
    let (s, v) = t
        .json(
            Method::POST,
            &messages,
            Some(&alice.token),
            json!({"message": B64(ct.clone())}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A message whose MLS group is another conversation is refused.
    let mut other = Conversation::create(
        &alice.p,
        &alice.keys,
        b"another-group-id-2",
        sotto_proto::mls::DEFAULT_CIPHERSUITE,
        None,
    )
    .unwrap();
    let x = other.compose_text(&alice.p, &alice.keys, "x", 0).unwrap();
    let ct2 = other.encrypt(&alice.p, &alice.keys, &x).unwrap();
    t.expect_err(
        Method::POST,
        &messages,
        Some(&alice.token),
        Some(serde_json::to_vec(&json!({"message": B64(ct2)})).unwrap()),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn a_device_outside_the_tree_cannot_read_or_post() {
    let Dm {
        t,
        alice,
        bob,
        id,
        mut g,
        ..
    } = Dm::new(Stage::Committed).await;
    let messages = format!("/v1/conversations/{id}/messages");
    let hi = g.compose_text(&alice.p, &alice.keys, "hi", 0).unwrap();
    let ct = g.encrypt(&alice.p, &alice.keys, &hi).unwrap();
    // Authorization is per device: bob's second device, registered but not in the MLS tree,
    // cannot read or post to the conversation, though its account is a member.
    let bob2 = link_device(&t, &bob).await;
    for (method, path, body) in [
        (Method::GET, format!("/v1/conversations/{id}/log"), None),
        (
            Method::POST,
            messages.clone(),
            Some(serde_json::to_vec(&json!({"message": B64(ct.clone())})).unwrap()),
        ),
    ] {
        t.expect_err(
            method,
            &path,
            Some(&bob2.token),
            body,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn a_revoked_device_opens_nothing_and_the_last_device_stays() {
    let Dm { t, alice, bob, .. } = Dm::new(Stage::Committed).await;
    let bob2 = link_device(&t, &bob).await;
    // A device can only revoke devices of its own account; once revoked, a device's token opens
    // nothing, and its key packages are gone.
    let bob2_id = bob2.keys.certificate().device_id.to_hex();
    t.expect_err(
        Method::DELETE,
        &format!("/v1/devices/{bob2_id}"),
        Some(&alice.token),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let (s, v) = t
        .call(
            Method::DELETE,
            &format!("/v1/devices/{bob2_id}"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    for (method, path) in [
        (Method::GET, "/v1/inbox"),
        (Method::GET, "/v1/conversations"),
        (Method::GET, "/v1/key-packages/count"),
        (Method::GET, "/v1/ws"),
    ] {
        t.expect_err(
            method,
            path,
            Some(&bob2.token),
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let bob_acc = t
        .call(Method::GET, "/v1/accounts/bob", Some(&alice.token), None)
        .await
        .1;
    assert_eq!(bob_acc["devices"].as_array().unwrap().len(), 1);
    // bob's last device cannot be revoked.
    let bob_id = bob.keys.certificate().device_id.to_hex();
    t.expect_err(
        Method::DELETE,
        &format!("/v1/devices/{bob_id}"),
        Some(&bob.token),
        None,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
}

#[tokio::test]
async fn the_log_pages_and_refuses_bad_queries() {
    let Dm {
        t,
        alice,
        bob,
        id,
        mut g,
        ..
    } = Dm::new(Stage::Committed).await;
    let hi = g.compose_text(&alice.p, &alice.keys, "hi", 0).unwrap();
    let ct = g.encrypt(&alice.p, &alice.keys, &hi).unwrap();
    let (s, v) = t
        .json(
            Method::POST,
            &format!("/v1/conversations/{id}/messages"),
            Some(&alice.token),
            json!({"message": B64(ct)}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Log paging (the commit and the message) and bad queries.
    let (s, v) = t
        .call(
            Method::GET,
            &format!("/v1/conversations/{id}/log?after=0&limit=1"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    assert_eq!(v["more"], true);
    t.expect_err(
        Method::GET,
        &format!("/v1/conversations/{id}/log?after=abc"),
        Some(&bob.token),
        None,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn the_inbox_holds_the_welcome_until_acknowledged() {
    let Dm { t, bob, .. } = Dm::new(Stage::Committed).await;
    // Bob's inbox holds the welcome; acking empties it.
    let (_, v) = t
        .call(Method::GET, "/v1/inbox", Some(&bob.token), None)
        .await;
    let up_to = v["items"][0]["id"].as_u64().unwrap();
    let (s, _) = t
        .json(
            Method::POST,
            "/v1/inbox/ack",
            Some(&bob.token),
            json!({"up_to": up_to}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = t
        .call(Method::GET, "/v1/inbox", Some(&bob.token), None)
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    t.expect_err(
        Method::POST,
        "/v1/inbox/ack",
        Some(&bob.token),
        Some(br#"{"up_to":-1}"#.to_vec()),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

/// A limited operation takes its token before it reads its body: once the bucket is empty, even a
/// body that is not JSON gets 429, not 400 (a refused flood costs no parsing).
#[tokio::test]
async fn a_rate_limited_request_is_refused_before_its_body_is_read() {
    use sotto_server::limits::{Limits, Rate};
    let t = T::with(Config {
        limits: Limits {
            send_per_device: Some(Rate::per_min(2)),
            ..Limits::default()
        },
        ..Config::default()
    });
    let alice = register(&t, "alice", 1).await;
    let path = "/v1/conversations/0123456789abcdef0123456789abcdef/messages";
    for _ in 0..2 {
        t.expect_err(
            Method::POST,
            path,
            Some(&alice.token),
            Some(b"{not json".to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
    t.expect_err(
        Method::POST,
        path,
        Some(&alice.token),
        Some(b"{not json".to_vec()),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
}

/// A malformed username, device, conversation, link or blob id is refused where it enters (path,
/// body), with 400 and the kind of id named, before anything is looked up.
#[tokio::test]
async fn malformed_ids_are_refused_at_the_edge() {
    let t = T::new();
    let alice = register(&t, "alice", 1).await;
    let hex = "0123456789abcdef0123456789abcdef";
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/v1/accounts/Al".into(), None, "username"),
        (Method::DELETE, "/v1/devices/xyz".into(), None, "device id"),
        (
            Method::GET,
            format!("/v1/conversations/{}/log", hex.to_uppercase()),
            None,
            "conversation id",
        ),
        (
            Method::POST,
            format!("/v1/conversations/{hex}0/messages"),
            Some(json!({"message": "AAAA"})),
            "conversation id",
        ),
        (
            Method::POST,
            "/v1/dms".into(),
            Some(json!({"peer": "x"})),
            "username",
        ),
        (
            Method::POST,
            "/v1/key-packages/claim".into(),
            Some(json!({"username": "alice", "devices": ["nope"]})),
            "device id",
        ),
        (
            Method::POST,
            "/v1/links/fetch".into(),
            Some(json!({"link_id": hex})),
            "link id",
        ),
        (
            Method::POST,
            format!("/v1/conversations/{hex}/messages"),
            Some(json!({"message": "AAAA", "attachments": ["../blob"]})),
            "blob id",
        ),
    ];
    for (method, path, body, kind) in cases {
        let v = t
            .expect_err(
                method,
                &path,
                Some(&alice.token),
                body.map(|b| serde_json::to_vec(&b).unwrap()),
                StatusCode::BAD_REQUEST,
                "bad_request",
            )
            .await;
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(&format!("invalid {kind}")), "{path}: {v}");
    }
}

#[tokio::test]
async fn links_are_one_time_and_validated() {
    let t = T::new();
    let alice = register(&t, "alice", 1).await;
    let code = sotto_proto::LinkCode::generate();
    let bundle = sotto_proto::AccountBundle {
        username: alice.user.clone(),
        identity: alice.identity_clone(),
    };
    t.expect_err(
        Method::POST,
        "/v1/links",
        Some(&alice.token),
        Some(serde_json::to_vec(&json!({"link_id": "short", "bundle": B64(vec![1])})).unwrap()),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    t.expect_err(
        Method::POST,
        "/v1/links",
        Some(&alice.token),
        Some(
            serde_json::to_vec(&json!({"link_id": code.link_id(), "bundle": B64(vec![0; 5000])}))
                .unwrap(),
        ),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let (s, _) = t
        .json(
            Method::POST,
            "/v1/links",
            Some(&alice.token),
            json!({"link_id": code.link_id(), "bundle": B64(code.seal(&bundle))}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    t.expect_err(
        Method::POST,
        "/v1/links/fetch",
        None,
        Some(serde_json::to_vec(&json!({"link_id": "0".repeat(64)})).unwrap()),
        StatusCode::GONE,
        "link_expired",
    )
    .await;
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/links/fetch",
            None,
            json!({"link_id": code.link_id()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let sealed: LinkBundle = serde_json::from_value(v).unwrap();
    let opened = code.open(&sealed.bundle.0).unwrap();
    // A device certified by another identity cannot redeem it.
    let (_, forged) = new_device(AccountIdentity::generate(), "alice", 1);
    t.expect_err(
        Method::POST,
        "/v1/links/redeem",
        None,
        Some(serde_json::to_vec(&json!({"link_id": code.link_id(), "device": forged})).unwrap()),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let (_, nd) = new_device(opened.identity, "alice", 1);
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/links/redeem",
            None,
            json!({"link_id": code.link_id(), "device": nd}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, nd2) = new_device(alice.identity_clone(), "alice", 1);
    t.expect_err(
        Method::POST,
        "/v1/links/redeem",
        None,
        Some(serde_json::to_vec(&json!({"link_id": code.link_id(), "device": nd2})).unwrap()),
        StatusCode::GONE,
        "link_expired",
    )
    .await;
    assert_eq!(table_count(&t, "devices"), 2);
}

#[tokio::test]
async fn openapi_document_is_served() {
    let t = T::new();
    let (s, v) = t.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["openapi"], "3.1.0");
    assert!(v["paths"]["/v1/conversations/{id}/commits"]["post"].is_object());
}

/// One device's WebSocket session, driven in-process through [`sotto_server::ws::run`] over
/// channels: what the device sends, and what the server answers.
struct Socket {
    to_server: tokio::sync::mpsc::Sender<axum::extract::ws::Message>,
    from_server: tokio::sync::mpsc::Receiver<axum::extract::ws::Message>,
}

impl Socket {
    async fn open(t: &T, token: &str) -> Self {
        use axum::extract::ws::Message;
        let caller = t.state.ds.authenticate(token).await.unwrap();
        let (to_server, rx) = tokio::sync::mpsc::channel::<Message>(256);
        let (tx, from_server) = tokio::sync::mpsc::channel::<Message>(256);
        let sink = Box::pin(futures_util::sink::unfold(
            tx,
            |tx, m: Message| async move {
                tx.send(m).await.map_err(|_| "closed")?;
                Ok::<_, &str>(tx)
            },
        ));
        let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (Ok::<_, axum::Error>(m), rx))
        }));
        tokio::spawn(sotto_server::ws::run(
            sink,
            stream,
            t.state.clone(),
            caller,
            None,
        ));
        let mut s = Self {
            to_server,
            from_server,
        };
        assert_eq!(s.next().await, Some(ServerFrame::Ready));
        s
    }

    async fn send(&self, frame: &ClientFrame) {
        self.send_text(serde_json::to_string(frame).unwrap()).await;
    }

    async fn send_text(&self, text: String) {
        let _ = self
            .to_server
            .send(axum::extract::ws::Message::Text(text.into()))
            .await;
    }

    /// The next frame (`None`: the server closed the connection).
    async fn next(&mut self) -> Option<ServerFrame> {
        use axum::extract::ws::Message;
        loop {
            let m =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.from_server.recv())
                    .await
                    .expect("a frame within 10 s")?;
            match m {
                Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn websocket_sends_follow_the_http_rules_and_small_entries_arrive_inline() {
    let Dm {
        t,
        alice,
        bob,
        eve,
        id,
        mut g,
        ..
    } = Dm::new(Stage::Committed).await;
    let mut msg = |text: &str| {
        let m = g.compose_text(&alice.p, &alice.keys, text, 0).unwrap();
        g.encrypt(&alice.p, &alice.keys, &m).unwrap()
    };
    let (m1, m2) = (msg("hello"), msg("again"));

    let mut a = Socket::open(&t, &alice.token).await;
    // The same device's second connection (another process of it, say).
    let mut a2 = Socket::open(&t, &alice.token).await;
    let mut b = Socket::open(&t, &bob.token).await;
    let mut e = Socket::open(&t, &eve.token).await;
    // A send over the socket is durable and answered with its position; the receiving device gets
    // the entry itself, byte for byte, and so does the sender's other connection, but not the
    // connection it came over (its answer says where it landed).
    a.send(&ClientFrame::Send {
        reference: 7,
        id: ConversationId::new(id.clone()).unwrap(),
        message: B64(m1.clone()),
    })
    .await;
    let sent = match a.next().await.unwrap() {
        ServerFrame::Sent {
            reference,
            accepted,
        } => {
            assert_eq!(reference, 7);
            Some(accepted)
        }
        other => panic!("unexpected frame {other:?}"),
    };
    match a2.next().await.unwrap() {
        ServerFrame::Entry { id: i, entry } => {
            assert_eq!((i.as_str(), entry.seq), (id.as_str(), 2));
            assert_eq!(entry.data.0, m1);
        }
        other => panic!("unexpected frame {other:?}"),
    }
    assert_eq!(sent.map(|a| (a.seq, a.epoch)), Some((2, 1)));
    assert!(sent.is_some_and(|a| a.accepted_at > 1_700_000_000));
    loop {
        match b.next().await.unwrap() {
            ServerFrame::Entry { id: i, entry } => {
                assert_eq!(i, id);
                assert_eq!(
                    (entry.seq, entry.epoch, entry.kind),
                    (2, 1, EntryKind::Message)
                );
                assert_eq!(entry.data.0, m1);
                assert_eq!(
                    entry.sender_device,
                    alice.keys.certificate().device_id.to_hex()
                );
                break;
            }
            ServerFrame::Inbox => {} // the welcome
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // The same entry is in the log, exactly once.
    let (_, page) = t
        .json(
            Method::GET,
            &format!("/v1/conversations/{id}/log?after=1"),
            Some(&bob.token),
            Value::Null,
        )
        .await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);

    // A fetch may say it has read less than it fetches past (`read`, a device keeping an entry
    // it will retry): the read position is the smaller one, and a later plain fetch moves it on.
    let alice_device = alice.keys.certificate().device_id.to_hex();
    for (query, position) in [("after=2&read=1", 1), ("after=2", 2)] {
        let (status, _) = t
            .json(
                Method::GET,
                &format!("/v1/conversations/{id}/log?{query}"),
                Some(&alice.token),
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            t.state.ds.cursors.get(&id, &alice_device),
            Some(position),
            "{query}"
        );
    }

    // Refusals carry the HTTP status and error body: a non-member (same 404 as over HTTP), a
    // message that is not MLS, a conversation that does not exist.
    e.send(&ClientFrame::Send {
        reference: 1,
        id: ConversationId::new(id.clone()).unwrap(),
        message: B64(m2.clone()),
    })
    .await;
    match e.next().await.unwrap() {
        ServerFrame::Refused {
            reference,
            status,
            error,
            ..
        } => {
            assert_eq!(
                (reference, status, error.code),
                (1, 404, ErrorCode::NotFound)
            );
        }
        other => panic!("unexpected frame {other:?}"),
    }
    for (reference, conv, body) in [
        (2, id.clone(), b"not mls".to_vec()),
        (3, "ffffffffffffffffffffffffffffffff".to_owned(), m2.clone()),
    ] {
        a.send(&ClientFrame::Send {
            reference,
            id: ConversationId::new(conv).unwrap(),
            message: B64(body),
        })
        .await;
        match a.next().await.unwrap() {
            ServerFrame::Refused {
                reference: r,
                status,
                ..
            } => {
                assert_eq!(r, reference);
                assert!(status == 400 || status == 404, "{status}");
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // A send for a malformed conversation id is refused with its ref, and the connection stays.
    a.send_text(r#"{"type":"send","ref":4,"id":"../etc","message":"AQID"}"#.to_owned())
        .await;
    match a.next().await.unwrap() {
        ServerFrame::Refused {
            reference: 4,
            status: 400,
            error,
            ..
        } => assert!(
            error.message.contains("invalid conversation id"),
            "{error:?}"
        ),
        other => panic!("unexpected frame {other:?}"),
    }
    assert_eq!(
        table_count(&t, "log"),
        2,
        "refused sends left nothing behind"
    );

    // A read acknowledgement moves the device's read position (which lets the server prune).
    b.send(&ClientFrame::Read {
        id: ConversationId::new(id.clone()).unwrap(),
        seq: 2,
    })
    .await;
    let bob_device = bob.keys.certificate().device_id.to_hex();
    for _ in 0..100 {
        if t.state.ds.cursors.get(&id, &bob_device) == Some(2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(t.state.ds.cursors.get(&id, &bob_device), Some(2));

    // The per-device send limit applies to the socket as to HTTP: 429 with a wait.
    let mut limited = None;
    for reference in 100..200 {
        a.send(&ClientFrame::Send {
            reference,
            id: ConversationId::new(id.clone()).unwrap(),
            message: B64(b"x".to_vec()),
        })
        .await;
    }
    for _ in 100..200 {
        if let Some(ServerFrame::Refused {
            status: 429,
            retry_after,
            error,
            ..
        }) = a.next().await
        {
            assert_eq!(error.code, ErrorCode::RateLimited);
            limited = retry_after;
        }
    }
    assert!(
        limited.is_some_and(|s| s >= 1),
        "no 429 after 100 sends in a burst"
    );

    // Anything that is not a client frame closes the connection (policy), others are unaffected.
    b.send_text(r#"{"type":"read","id":"NOT HEX","seq":1}"#.into())
        .await;
    assert_eq!(b.next().await, None);
    e.send_text("{\"type\":\"send\"}".into()).await;
    assert_eq!(e.next().await, None);
    a.send(&ClientFrame::Send {
        reference: 1000,
        id: ConversationId::new(id.clone()).unwrap(),
        message: B64(m2),
    })
    .await;
}
