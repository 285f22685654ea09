//! sottod's configuration: flag over environment over `--config` file over default, checked
//! through `--print-config` of the real binary; unknown keys and bad values stop it with one line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

fn sottod(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sottod"));
    // Only what each case sets: no SOTTO_* from the caller's environment, and no backtrace
    // under the one-line error.
    for (k, _) in std::env::vars() {
        if k.starts_with("SOTTO_") || k.ends_with("_BACKTRACE") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn setting<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} not printed:\n{printed}"))
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sottod.toml");
    std::fs::write(
        &file,
        r#"
retention-days = 7
prune-interval-secs = 9
link-ttl-secs = 200
no-rate-limits = true
listen = "127.0.0.1:7999"
database = "postgres://sotto:hunter2@db:5432/sotto"
"#,
    )
    .unwrap();
    let (ok, out, err) = sottod(
        &[
            "--config",
            file.to_str().unwrap(),
            "--link-ttl-secs",
            "100",
            "--print-config",
        ],
        &[("SOTTO_PRUNE_INTERVAL", "5")],
    );
    assert!(ok, "{err}");
    assert_eq!(setting(&out, "link-ttl-secs"), "100", "the flag wins");
    assert_eq!(
        setting(&out, "prune-interval-secs"),
        "5",
        "then the environment"
    );
    assert_eq!(setting(&out, "retention-days"), "7", "then the file");
    assert_eq!(setting(&out, "no-rate-limits"), "true");
    assert_eq!(setting(&out, "listen"), "\"127.0.0.1:7999\"");
    assert_eq!(
        setting(&out, "idle-timeout-secs"),
        "120",
        "then the default"
    );
    assert_eq!(
        setting(&out, "database"),
        "\"postgres://***@db:5432/sotto\"",
        "secrets elided"
    );
    assert!(!out.contains("hunter2"));
    // What it prints is itself a config file that gives the same configuration.
    let printed = dir.path().join("printed.toml");
    let body: String = out
        .lines()
        .filter(|l| !l.starts_with("database"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&printed, body).unwrap();
    let (ok, again, err) = sottod(
        &["--config", printed.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert!(ok, "{err}");
    for key in [
        "link-ttl-secs",
        "prune-interval-secs",
        "retention-days",
        "listen",
    ] {
        assert_eq!(setting(&again, key), setting(&out, key), "{key}");
    }
}

#[test]
fn unknown_keys_and_bad_values_stop_sottod_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("retention-dayz = 7\n", "unknown key `retention-dayz`"),
        ("retention-days = \"soon\"\n", "--retention-days"),
        (
            "no-rate-limits = \"yes\"\n",
            "`no-rate-limits` takes true or false",
        ),
        ("config = \"other.toml\"\n", "unknown key `config`"),
        ("retention-days = \n", "sottod.toml"),
        ("limit-send = \"fast\"\n", "--limit-send"),
    ];
    for (body, needle) in cases {
        let file = dir.path().join("sottod.toml");
        std::fs::write(&file, body).unwrap();
        let (ok, _, err) = sottod(&["--config", file.to_str().unwrap(), "--print-config"], &[]);
        assert!(!ok, "{body:?} was accepted");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{body:?}: one line, got {err:?}");
        assert!(lines[0].contains(needle), "{body:?}: {err:?}");
    }
    // A missing file is named.
    let (ok, _, err) = sottod(&["--config", "/nonexistent/sottod.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/sottod.toml"), "{err}");
}

#[tokio::test]
async fn metrics_on_their_own_address_leave_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let server = support::Sottod::start(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--metrics-listen",
            &metrics_addr,
        ],
        std::process::Stdio::null(),
    );
    let api = server.url.clone();
    let http = support::http();
    let on_api = http.get(format!("{api}/metrics")).send().await.unwrap();
    assert_eq!(on_api.status(), 404);
    let _ = http.get(format!("{api}/healthz")).send().await.unwrap();
    let page = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    assert!(
        text.contains("sotto_http_requests_total{route=\"/healthz\""),
        "{text}"
    );
    drop(server);
}
