//! The OpenAPI document against the running server, by schemathesis (`st`, from PyPI; `.ci/run`
//! installs it): no 5xx, no schema-valid request refused, no schema-violating request accepted,
//! no response outside the document. Runs twice against a real sottod: with no token, and with a
//! real device token of an account that has two devices, a DM and a group.
//!
//! `st` is `$SOTTO_SCHEMATHESIS`, or `st` on the PATH. Without it the test prints SKIPPED, except
//! under CI (`CI` set), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use sotto_api::{NewDevice, RegisterRequest, B64};
use sotto_proto::mls::DeviceKeys;
use sotto_proto::{AccountIdentity, DeviceId, Username};
use support::Sottod;

fn schemathesis() -> Option<PathBuf> {
    let from_env = std::env::var_os("SOTTO_SCHEMATHESIS").map(PathBuf::from);
    let found = from_env.or_else(|| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("st"))
                .find(|f| f.is_file())
        })
    });
    match found {
        Some(st) => Some(st),
        None if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED: schemathesis (`st`) not found; `.ci/run` installs it, or set \
                 SOTTO_SCHEMATHESIS=/path/to/st"
            );
            None
        }
        None => {
            panic!("schemathesis required under CI: set SOTTO_SCHEMATHESIS or put `st` on the PATH")
        }
    }
}

fn new_device(identity: &AccountIdentity, user: &str) -> NewDevice {
    let p = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let user = Username::new(user).unwrap();
    let keys = DeviceKeys::generate(identity, &user, DeviceId::random(), 1);
    let (one, lr) = keys
        .key_packages(&p, sotto_proto::mls::DEFAULT_CIPHERSUITE, 4, true)
        .unwrap();
    NewDevice {
        certificate: B64(keys.certificate().to_bytes()),
        key_packages: one.into_iter().map(B64).collect(),
        last_resort_key_packages: vec![B64(lr.unwrap())],
    }
}

async fn post(c: &reqwest::Client, url: &str, token: Option<&str>, body: Value) -> Value {
    let mut req = c.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url}: {status} {v}");
    v
}

/// Registers `user` and returns its identity and first device's token.
async fn register(c: &reqwest::Client, base: &str, user: &str) -> (AccountIdentity, String) {
    let identity = AccountIdentity::generate();
    let req = RegisterRequest {
        username: sotto_api::Username::new(user).unwrap(),
        identity_key: B64(identity.public().to_bytes().to_vec()),
        device: new_device(&identity, user),
    };
    let v = post(
        c,
        &format!("{base}/v1/accounts"),
        None,
        serde_json::to_value(&req).unwrap(),
    )
    .await;
    (identity, v["token"].as_str().unwrap().to_owned())
}

/// The real ids the runs use (see schemathesis.toml).
struct Ids {
    dm: String,
    spare_device: String,
}

/// Runs `st` in `dir` (where hypothesis and schemathesis keep their caches: each run starts
/// fresh, and the work tree stays clean).
fn run_st(st: &PathBuf, base: &str, token: Option<&str>, ids: &Ids, dir: &std::path::Path) {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let mut cmd = Command::new(st);
    cmd.args(["--no-color", "--config-file", config, "run"])
        .arg(format!("{base}/openapi.json"))
        .args([
            "--checks",
            "all",
            "--mode",
            "all",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "30",
            "--seed",
            "1",
            // One worker: with more, CPython 3.11's compiler can fail in hypothesis' threads
            // ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(dir.join("report"))
        .current_dir(dir)
        .env("SOTTO_ST_USERNAME", "alice")
        .env("SOTTO_ST_CONVERSATION", &ids.dm)
        .env("SOTTO_ST_SPARE_DEVICE", &ids.spare_device)
        .env("PYTHONIOENCODING", "utf-8")
        .env(
            "SCHEMATHESIS_HOOKS",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis_hooks.py"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = text
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    eprintln!(
        "schemathesis ({}): {}",
        if token.is_some() {
            "device token"
        } else {
            "no token"
        },
        summary.join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{text}\n{}",
        if token.is_some() {
            "device token"
        } else {
            "no token"
        },
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_holds_against_the_running_server() {
    let Some(st) = schemathesis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Sottod::start(
        &["--data-dir", data.to_str().unwrap(), "--no-rate-limits"],
        Stdio::null(),
    );
    let base = server.url.clone();
    let c = support::http();

    // alice with two devices (one linked), bob, a DM and a group: the token run works on an
    // account with state behind it.
    let (alice, token) = register(&c, &base, "alice").await;
    let link_id = "ab".repeat(32);
    post(
        &c,
        &format!("{base}/v1/links"),
        Some(&token),
        json!({"link_id": link_id, "bundle": B64(vec![7; 64])}),
    )
    .await;
    let spare = post(
        &c,
        &format!("{base}/v1/links/redeem"),
        None,
        json!({"link_id": link_id, "device": new_device(&alice, "alice")}),
    )
    .await;
    let spare_device = spare["device_id"].as_str().unwrap().to_owned();
    register(&c, &base, "bob").await;
    let dm = post(
        &c,
        &format!("{base}/v1/dms"),
        Some(&token),
        json!({"peer": "bob"}),
    )
    .await;
    let ids = Ids {
        dm: dm["id"].as_str().unwrap().to_owned(),
        spare_device,
    };
    post(&c, &format!("{base}/v1/groups"), Some(&token), json!({})).await;

    for (i, token) in [None, Some(token.as_str())].into_iter().enumerate() {
        let run = dir.path().join(format!("st-{i}"));
        std::fs::create_dir_all(&run).unwrap();
        run_st(&st, &base, token, &ids, &run);
    }

    // The token worked to the end, and the spare device is what was revoked.
    let v: Value = c
        .get(format!("{base}/v1/accounts/alice"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["revoked_devices"][0], ids.spare_device.as_str(), "{v}");
}
