//! The CLI contract, end to end: the real `sottod` process and the real `sotto` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn sotto_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sotto"))
}

/// `sottod` lives in another package; build it on demand if this test run did not.
fn sottod_bin() -> PathBuf {
    let path = sotto_bin().with_file_name(format!("sottod{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "sotto-server", "--bin", "sottod"])
            .status()
            .unwrap();
        assert!(status.success(), "could not build sottod");
    }
    path
}

struct Sottod {
    child: Child,
    url: String,
}

impl Sottod {
    fn start(data: &Path, log: &Path, listen: &str) -> Self {
        Self::start_with(&["--data-dir", data.to_str().unwrap()], log, listen)
    }

    fn start_with(args: &[&str], log: &Path, listen: &str) -> Self {
        Self::start_env(args, &[], log, listen)
    }

    fn start_env(args: &[&str], env: &[(&str, &str)], log: &Path, listen: &str) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(sottod_bin())
            .args(args)
            .args(["--listen", listen])
            .env("SOTTO_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_owned();
        Self { child, url }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Sottod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn sotto(home: &Path, args: &[&str]) -> Out {
    let out = Command::new(sotto_bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("SOTTO_SERVER")
        .output()
        .unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ok(home: &Path, args: &[&str]) -> String {
    let o = sotto(home, args);
    assert!(o.ok, "sotto {args:?} failed: {}", o.stderr);
    o.stdout
}

fn fails(home: &Path, args: &[&str], needle: &str) {
    let o = sotto(home, args);
    assert!(!o.ok, "sotto {args:?} should fail");
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one clear line on stderr, got {:?}",
        o.stderr
    );
    assert!(
        lines[0].contains(needle),
        "{:?} should mention {needle:?}",
        lines[0]
    );
}

/// The message lines of `sync --json` (it also prints receipts, reactions, edits, unsends).
fn messages(s: &str) -> Vec<serde_json::Value> {
    json_lines(s)
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect()
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file at or under `path`.
fn files_under(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_owned()];
    }
    std::fs::read_dir(path)
        .unwrap()
        .flat_map(|e| files_under(&e.unwrap().path()))
        .collect()
}

fn assert_absent(path: &Path, needles: &[&str]) {
    for p in files_under(path) {
        let bytes = std::fs::read(&p).unwrap();
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                "{} contains {n:?}",
                p.display()
            );
        }
    }
}

#[test]
fn walkthrough_with_two_devices_per_user_kill9_and_no_plaintext_at_rest_or_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, log) = (d.join("server"), d.join("sottod.log"));
    let server = Sottod::start(&data, &log, "127.0.0.1:0");
    let url = server.url.clone();
    let addr = url.trim_start_matches("http://").to_owned();
    let (a1, a2, b1, b2) = (d.join("a1"), d.join("a2"), d.join("b1"), d.join("b2"));

    ok(&a1, &["register", "alice", "--server", &url]);
    ok(&b1, &["--server", &url, "register", "bob"]);
    let code = ok(&a1, &["device", "add"])
        .lines()
        .last()
        .unwrap()
        .to_owned();
    ok(&a2, &["link", &code, "--server", &url]);
    let code = ok(&b1, &["device", "add"])
        .lines()
        .last()
        .unwrap()
        .to_owned();
    ok(&b2, &["--server", &url, "link", &code]);
    fails(
        &d.join("b3"),
        &["--server", &url, "link", &code],
        "expired or already used",
    );
    assert_eq!(ok(&a2, &["devices"]).lines().count(), 2);

    ok(&a1, &["send", "bob", "first secret words"]);
    ok(&b2, &["send", "alice", "reply from the phone"]);
    let got = messages(&ok(&b1, &["sync", "--json"]));
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["first secret words", "reply from the phone"]);
    for m in &got {
        for k in [
            "id",
            "conversation",
            "sender",
            "sender_device",
            "text",
            "sent_at",
        ] {
            assert!(m[k].is_string(), "{k} missing in {m}");
        }
        assert!(m["group"].is_null());
        time_ok(m["sent_at"].as_str().unwrap());
    }
    assert_eq!(got[0]["sender"], "alice");
    assert_eq!(got[1]["sender"], "bob");

    // kill -9 the server between acknowledged sends; restart on the same data dir.
    for i in 0..3 {
        ok(&a1, &["send", "bob", &format!("before crash {i}")]);
    }
    server.kill9();
    fails(&a1, &["send", "bob", "while down"], "unreachable");
    let server = Sottod::start(&data, &log, &addr);
    ok(&a2, &["send", "bob", "after restart"]);
    let texts: Vec<String> = messages(&ok(&b2, &["sync", "--json"]))
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        [
            "first secret words",
            "before crash 0",
            "before crash 1",
            "before crash 2",
            "after restart"
        ]
    );
    assert_eq!(ok(&b2, &["sync"]), "", "nothing twice");

    // Errors are one clear line and a non-zero exit.
    fails(&a1, &["send", "nobody", "x"], "unknown user nobody");
    fails(&d.join("fresh"), &["sync"], "not registered");
    fails(
        &b1,
        &["--server", "http://127.0.0.1:1", "sync"],
        "unreachable",
    );
    fails(&a1, &["register", "alice2"], "already registered");
    fails(
        &d.join("x"),
        &["--server", &url, "link", "not-a-code"],
        "not a valid link code",
    );

    drop(server);
    let needles = [
        "first secret words",
        "reply from the phone",
        "before crash",
        "after restart",
        &code,
    ];
    assert_absent(&data, &needles);
    assert_absent(&log, &needles);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("message accepted"),
        "the log is there and was searched"
    );
}

fn time_ok(s: &str) {
    assert!(
        s.len() >= 20 && s.contains('T') && s.ends_with('Z'),
        "not RFC 3339: {s}"
    );
}

#[test]
fn listen_prints_messages_as_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Sottod::start(&d.join("server"), &d.join("log"), "127.0.0.1:0");
    let (a, b) = (d.join("a"), d.join("b"));
    ok(&a, &["register", "alice", "--server", &server.url]);
    ok(&b, &["register", "bob", "--server", &server.url]);
    let mut listener = Command::new(sotto_bin())
        .arg("--home")
        .arg(&b)
        .args(["listen", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(listener.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    ok(&a, &["send", "bob", "live one"]);
    ok(&a, &["send", "bob", "live two"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = listener.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    // Generous bound so a slow CI machine cannot hang the suite; this is not a latency assertion.
    let first: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(60)).unwrap()).unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(60)).unwrap()).unwrap();
    assert_eq!(
        (first["text"].as_str(), second["text"].as_str()),
        (Some("live one"), Some("live two"))
    );
    listener.kill().unwrap();
    listener.wait().unwrap();
}

/// PostgreSQL and NATS (see `sotto_server::testkit`), or a skip message (a failure under CI).
fn services() -> Option<(String, String)> {
    block_on(sotto_server::testkit::postgres_and_nats())
}

/// Creates or drops a test's schema.
fn with_schema(pg: &str, schema: &str, create: bool) {
    block_on(async {
        if create {
            let client = sotto_server::testkit::sql(pg).await.unwrap();
            client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await
                .unwrap();
        } else {
            sotto_server::testkit::drop_schema(pg, schema).await;
        }
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Reads a `sotto listen`'s stderr until it says it is connected (its push connection is open, so
/// what is sent from now on reaches it live).
fn wait_connected(stderr: &mut impl BufRead) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "listen ended before it connected"
        );
        if line.trim() == "connected" {
            return;
        }
    }
}

/// libfaketime, to run a node with its clock off (`.ci/run` installs the `faketime` package);
/// `None` with a skip line outside CI.
fn libfaketime() -> Option<String> {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if Path::new(lib).is_file() {
        return Some(lib.into());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the clock-skew test needs libfaketime under CI ({lib}); .ci/run installs it"
    );
    eprintln!("SKIPPED: the clock-skew test needs libfaketime ({lib}: apt-get install faketime)");
    None
}

#[test]
fn a_node_two_days_slow_stamps_nothing_that_retention_cuts_from_a_conversation() {
    let Some((pg, nats)) = services() else { return };
    let Some(faketime) = libfaketime() else {
        return;
    };
    let schema = sotto_server::testkit::schema_name("skew");
    with_schema(&pg, &schema, true);
    let db = format!("{pg}?options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Node A's clock is two days slow; node B keeps entries a day and prunes every second.
    let common = ["--database", db.as_str(), "--bus", nats.as_str()];
    let node_a = Sottod::start_env(
        &common,
        &[
            ("LD_PRELOAD", faketime.as_str()),
            ("FAKETIME", "-2d"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
        &d.join("a.log"),
        "127.0.0.1:0",
    );
    let mut b_args = common.to_vec();
    b_args.extend(["--retention-days", "1", "--prune-interval-secs", "1"]);
    let node_b = Sottod::start_with(&b_args, &d.join("b.log"), "127.0.0.1:0");
    let (alice, bob) = (d.join("alice"), d.join("bob"));
    ok(&alice, &["register", "alice", "--server", &node_b.url]);
    ok(&bob, &["register", "bob", "--server", &node_b.url]);
    ok(&alice, &["--server", &node_b.url, "send", "bob", "one"]);
    ok(&alice, &["--server", &node_a.url, "send", "bob", "two"]);
    ok(&alice, &["--server", &node_b.url, "send", "bob", "three"]);
    // Node A's clock really is two days slow: its log lines carry that date.
    let two_days_ago = Command::new("date")
        .args(["-u", "-d", "2 days ago", "+%Y-%m-%d"])
        .output()
        .unwrap();
    let two_days_ago = String::from_utf8(two_days_ago.stdout).unwrap();
    let a_log = std::fs::read_to_string(d.join("a.log")).unwrap();
    assert!(
        a_log.contains(two_days_ago.trim()),
        "node A's clock is not off"
    );
    // Several of node B's prunes go by; then bob reads everything, "two" included.
    std::thread::sleep(Duration::from_secs(3));
    let got = messages(&ok(&bob, &["--server", &node_b.url, "sync", "--json"]));
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    drop((node_a, node_b));
    with_schema(&pg, &schema, false);
}

#[test]
fn two_sottod_nodes_one_killed_mid_sends_clients_finish_through_the_other() {
    let Some((pg, nats)) = services() else { return };
    let schema = sotto_server::testkit::schema_name("cli");
    with_schema(&pg, &schema, true);
    let db = format!("{pg}?options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = ["--database", db.as_str(), "--bus", nats.as_str()];
    let node_a = Sottod::start_with(&args, &d.join("a.log"), "127.0.0.1:0");
    let node_b = Sottod::start_with(&args, &d.join("b.log"), "127.0.0.1:0");
    let (alice, bob) = (d.join("alice"), d.join("bob"));
    ok(&alice, &["register", "alice", "--server", &node_a.url]);
    ok(&bob, &["register", "bob", "--server", &node_b.url]);

    // Alice sends through node A while node A is killed; whatever fails, she resends through B.
    let (a_url, b_url, alice2) = (node_a.url.clone(), node_b.url.clone(), alice.clone());
    let (progress, acks) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        let mut switched = false;
        let mut server = a_url;
        for i in 0..12 {
            let text = format!("msg {i}");
            loop {
                let o = sotto(&alice2, &["--server", &server, "send", "bob", &text]);
                if o.ok {
                    acknowledged.push(o.stdout.trim().trim_start_matches("sent ").to_owned());
                    let _ = progress.send(());
                    break;
                }
                assert!(
                    o.stderr.contains("unreachable") || o.stderr.contains("refused"),
                    "{}",
                    o.stderr
                );
                server = b_url.clone();
                switched = true;
            }
            if !switched {
                // Leave the main thread time to kill node A while sends are still coming.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        (acknowledged, switched)
    });
    for _ in 0..4 {
        acks.recv_timeout(Duration::from_secs(60)).unwrap();
    }
    node_a.kill9();
    let (acknowledged, switched) = sender.join().unwrap();
    assert_eq!(acknowledged.len(), 12);
    assert!(
        switched,
        "node A died mid-sends and alice carried on through node B"
    );

    let got = messages(&ok(&bob, &["sync", "--json"]));
    let ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    for id in &acknowledged {
        assert_eq!(
            ids.iter().filter(|x| *x == id).count(),
            1,
            "acknowledged message {id} delivered exactly once"
        );
    }
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let mut expected: Vec<String> = (0..12).map(|i| format!("msg {i}")).collect();
    expected.dedup();
    let mut seen: Vec<&str> = texts.clone();
    seen.dedup();
    assert_eq!(
        seen,
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "in order"
    );
    drop(node_b);
    with_schema(&pg, &schema, false);
}

#[test]
fn group_commands_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Sottod::start(&d.join("server"), &d.join("sottod.log"), "127.0.0.1:0");
    let url = server.url.clone();
    let (a, b, c, e) = (d.join("a"), d.join("b"), d.join("c"), d.join("e"));
    for (home, user) in [(&a, "alice"), (&b, "bob"), (&c, "carol"), (&e, "erin")] {
        ok(home, &["--server", &url, "register", user]);
    }
    let created = ok(&a, &["group", "create", "Book club", "bob", "carol"]);
    let gid = created.lines().last().unwrap().trim().to_owned();
    assert_eq!(gid.len(), 32, "the group id is the last line: {created:?}");
    ok(&a, &["send", "--group", &gid, "first chapter tonight"]);
    let got = messages(&ok(&b, &["sync", "--json"]));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["group"], gid.as_str());
    assert_eq!(got[0]["text"], "first chapter tonight");
    let list = ok(&c, &["group", "list"]);
    let line: Vec<&str> = list.lines().next().unwrap().split('\t').collect();
    assert_eq!(line, [gid.as_str(), "Book club", "3"]);
    // Non-admins are refused with one clear line; unknown users and groups too.
    fails(&b, &["group", "add", &gid, "erin"], "not an admin");
    fails(&b, &["group", "rename", &gid, "Bob's club"], "not an admin");
    fails(&a, &["group", "add", &gid, "nobody"], "unknown user nobody");
    fails(&a, &["group", "info", "no-such-group"], "no group");
    fails(&a, &["group", "leave", &gid], "last admin");
    // (TEXT is optional only with --file.)
    fails(
        &b,
        &["send", "--group", &gid],
        "usage: sotto send --group GROUP TEXT",
    );
    // Admin changes.
    ok(&a, &["group", "add", &gid, "erin"]);
    ok(&a, &["group", "admin", &gid, "bob"]);
    ok(&b, &["group", "rename", &gid, "Book club 2"]);
    ok(&b, &["group", "remove", &gid, "carol"]);
    let info = ok(&e, &["group", "info", &gid]);
    assert!(info.contains("name: Book club 2"), "{info}");
    assert!(info.contains("admins: alice, bob"), "{info}");
    for who in ["alice:", "bob:", "erin:"] {
        assert!(info.contains(who), "{info}");
    }
    assert!(!info.contains("carol"), "{info}");
    assert!(ok(&c, &["group", "list"]).trim().is_empty());
    // Leaving: erin goes; an admin's next sync removes her devices.
    ok(&e, &["group", "leave", &gid]);
    ok(&a, &["sync"]);
    let list = ok(&a, &["group", "list"]);
    assert!(list.trim_end().ends_with("\t2"), "{list}");
    ok(&b, &["send", "--group", &gid, "see you"]);
    let got = messages(&ok(&a, &["sync", "--json"]));
    assert_eq!(got.last().unwrap()["text"], "see you");
    // Those who left or were removed get nothing sent afterwards.
    for home in [&e, &c] {
        let got = messages(&ok(home, &["sync", "--json"]));
        assert!(got.iter().all(|m| m["text"] != "see you"), "{got:?}");
    }
}

/// The texts and ids in a device's local store: (id, text) of every message, duplicates included.
fn stored_messages(home: &Path) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open(home.join("sotto.db")).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT message_id, text FROM sotto_messages WHERE kind = 'text' ORDER BY local_order",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get::<_, Option<String>>(1)?.unwrap_or_default(),
        ))
    })
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap()
}

#[test]
fn kill9_during_a_flood_of_sends_then_killed_syncs_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, log) = (d.join("server"), d.join("sottod.log"));
    let server = Sottod::start(&data, &log, "127.0.0.1:0");
    let url = server.url.clone();
    let addr = url.trim_start_matches("http://").to_owned();
    let bob = d.join("bob");
    ok(&bob, &["register", "bob", "--server", &url]);
    const SENDERS: usize = 4;
    const EACH: usize = 20;
    let homes: Vec<PathBuf> = (0..SENDERS).map(|i| d.join(format!("s{i}"))).collect();
    for (i, h) in homes.iter().enumerate() {
        ok(h, &["register", &format!("sender{i}"), "--server", &url]);
        ok(h, &["send", "bob", &format!("s{i} hello")]);
    }

    // Four senders flood bob; the server is killed with SIGKILL mid-flood and restarted.
    let (tx, acks) = std::sync::mpsc::channel::<()>();
    let threads: Vec<_> = homes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let (h, tx) = (h.clone(), tx.clone());
            std::thread::spawn(move || {
                let (mut acknowledged, mut queued, mut failed) =
                    (Vec::new(), Vec::new(), Vec::new());
                for j in 0..EACH {
                    let text = format!("s{i}-{j}");
                    let o = sotto(&h, &["send", "bob", &text]);
                    if o.ok {
                        acknowledged.push(o.stdout.trim().trim_start_matches("sent ").to_owned());
                        let _ = tx.send(());
                    } else {
                        // Killed mid-request: stored and kept for the next sync. Down before the
                        // message was stored: a plain failure, nothing kept.
                        assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
                        if o.stderr.contains("will be sent by the next") {
                            queued.push(text);
                        } else {
                            failed.push(text);
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                (acknowledged, queued, failed)
            })
        })
        .collect();
    for _ in 0..(SENDERS * EACH / 3) {
        acks.recv_timeout(Duration::from_secs(120)).unwrap();
    }
    server.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let server = Sottod::start(&data, &log, &addr);
    let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
    for t in threads {
        let (a, _queued, f) = t.join().unwrap();
        acknowledged.extend(a);
        failed.extend(f);
    }
    assert!(acknowledged.len() >= SENDERS * EACH / 3);
    // Each sender's next sync posts again whatever was never acknowledged.
    for h in &homes {
        ok(h, &["sync"]);
    }

    // bob syncs, killed again and again part-way through; then one sync runs to the end.
    let mut printed: Vec<serde_json::Value> = Vec::new();
    for delay_ms in [30u64, 80, 150, 250, 400] {
        let child = Command::new(sotto_bin())
            .arg("--home")
            .arg(&bob)
            .args(["sync", "--json"])
            .env_remove("SOTTO_SERVER")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let mut child = child;
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // A line cut by the kill is not a message.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v["type"] == "message" {
                    printed.push(v);
                }
            }
        }
    }
    printed.extend(messages(&ok(&bob, &["sync", "--json"])));

    // Every message, acknowledged or resent, is in bob's store exactly once and was shown.
    let stored = stored_messages(&bob);
    let mut texts: Vec<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
    texts.sort();
    // Expected: everything but the sends that failed before their message was stored (those
    // the user was told failed); acknowledged and queued ones alike.
    let mut expected: Vec<String> = (0..SENDERS)
        .flat_map(|i| {
            std::iter::once(format!("s{i} hello"))
                .chain((0..EACH).map(move |j| format!("s{i}-{j}")))
        })
        .filter(|t| !failed.contains(t))
        .collect();
    expected.sort();
    assert_eq!(
        texts,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for id in &acknowledged {
        assert_eq!(
            stored.iter().filter(|(i, _)| i == id).count(),
            1,
            "acknowledged {id} stored exactly once"
        );
    }
    let mut shown: Vec<&str> = printed
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    shown.sort();
    shown.dedup();
    assert_eq!(
        shown,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(ok(&bob, &["sync", "--json"]), "", "nothing left to show");
    drop(server);
}

/// Flips the last byte of the newest log entry of `conversation` in a stopped sottod's database (table `log`, rows in id order).
fn flip_newest_entry(data: &Path, conversation: &str) -> u64 {
    let db = rusqlite::Connection::open(data.join("sotto.db")).unwrap();
    let (rowid, seq, mut bytes): (i64, i64, Vec<u8>) = db
        .query_row(
            "SELECT id, seq, data FROM log WHERE conversation_id = ?1 ORDER BY seq DESC LIMIT 1",
            [conversation],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    db.execute(
        "UPDATE log SET data = ?1 WHERE id = ?2",
        rusqlite::params![bytes, rowid],
    )
    .unwrap();
    seq as u64
}

#[test]
fn kill9_between_a_failed_decryption_and_its_retry_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let log = dir.path().join("sottod.log");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let d = Sottod::start(&data, &log, "127.0.0.1:0");
    ok(&a, &["--server", &d.url, "register", "alice"]);
    ok(&b, &["--server", &d.url, "register", "bob"]);
    ok(&a, &["send", "bob", "one"]);
    ok(&b, &["sync"]);
    ok(&a, &["send", "bob", "two"]);
    let conversation = json_lines(&ok(&b, &["history", "alice", "--json"]))[0]["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    d.kill9();

    // The entry holding "two" is corrupt on the server: bob's listen records it as waiting...
    let seq = flip_newest_entry(&data, &conversation);
    let d = Sottod::start(&data, &log, "127.0.0.1:0");
    let mut listen = Command::new(sotto_bin())
        .arg("--home")
        .arg(&b)
        .args(["--server", &d.url, "listen", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(listen.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "listen ended early"
        );
        if line.contains("could not be decrypted yet") {
            break;
        }
    }
    // ...and is killed before any retry.
    listen.kill().unwrap();
    listen.wait().unwrap();
    let items = json_lines(&ok(&b, &["history", "alice", "--json"]));
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[1]["seq"], seq);
    assert_eq!(items[1]["id"], serde_json::Value::Null);
    assert_eq!(items[1]["undecryptable"], "waiting");
    assert_eq!(items[1]["sender"], "alice");
    let plain = ok(&b, &["history", "alice"]);
    assert!(
        plain.contains("message could not be decrypted yet"),
        "{plain}"
    );
    d.kill9();

    // The server's copy is whole again (as if the corruption had been on the way): the next sync
    // recovers it, in its place, once.
    flip_newest_entry(&data, &conversation);
    let d = Sottod::start(&data, &log, "127.0.0.1:0");
    let out = json_lines(&ok(&b, &["--server", &d.url, "sync", "--json"]));
    let recovered: Vec<_> = out.iter().filter(|v| v["event"] == "recovered").collect();
    assert_eq!(recovered.len(), 1, "{out:?}");
    assert_eq!(recovered[0]["seq"], seq);
    let texts: Vec<_> = out.iter().filter_map(|v| v["text"].as_str()).collect();
    assert_eq!(texts, ["two"]);
    let items = json_lines(&ok(&b, &["history", "alice", "--json"]));
    let texts: Vec<_> = items.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["one", "two"]);
    assert_eq!(items[1]["seq"], seq);
    assert!(json_lines(&ok(&b, &["--server", &d.url, "sync", "--json"])).is_empty());
}

/// The history of a conversation on one device, as `history --json` prints it.
fn history_of(home: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["history"];
    a.extend_from_slice(args);
    a.push("--json");
    json_lines(&ok(home, &a))
}

/// Links a new device at `second` to the account of `first`, with a code from `first`.
fn link_device(first: &Path, second: &Path, url: &str) {
    let code = ok(first, &["device", "add"])
        .lines()
        .last()
        .unwrap()
        .to_owned();
    ok(second, &["--server", url, "link", &code]);
}

/// Whether a sync's events include a read receipt.
fn any_read_receipt(events: &[serde_json::Value]) -> bool {
    events
        .iter()
        .any(|e| e["type"] == "receipt" && e["status"] == "read")
}

fn sent_id(out: &str) -> String {
    let id = out.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(id.len(), 64, "a MIMI message id: {out:?}");
    id
}

#[test]
fn replies_reactions_edits_and_unsends_reach_every_device_of_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Sottod::start(&d.join("server"), &d.join("sottod.log"), "127.0.0.1:0");
    let url = server.url.clone();
    let (a1, a2, b1, b2, c1) = (
        d.join("a1"),
        d.join("a2"),
        d.join("b1"),
        d.join("b2"),
        d.join("c1"),
    );
    ok(&a1, &["--server", &url, "register", "alice"]);
    ok(&b1, &["--server", &url, "register", "bob"]);
    ok(&c1, &["--server", &url, "register", "carol"]);
    for (first, second) in [(&a1, &a2), (&b1, &b2)] {
        link_device(first, second, &url);
    }
    let m = sent_id(&ok(&a1, &["send", "bob", "hi @bob, release 2.0 is out"]));
    // Bob's phone replies; his laptop reacts; alice's phone reacts too.
    let reply = sent_id(&ok(&b2, &["reply", &m, "congrats!"]));
    ok(&b1, &["react", &m, "👍"]);
    ok(&a2, &["react", &m, "❤"]);
    ok(&a1, &["edit", &m, "hi @bob, release 2.1 is out"]);
    let events = json_lines(&ok(&b1, &["sync", "--json"]));
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"message") && types.contains(&"edit"),
        "{events:?}"
    );
    let msg = events.iter().find(|e| e["id"] == m.as_str()).unwrap();
    assert_eq!(msg["mentions_me"], true);
    let r = events.iter().find(|e| e["id"] == reply.as_str()).unwrap();
    assert_eq!(
        r["reply_to"],
        m.as_str(),
        "bob's laptop sees his phone's reply"
    );
    let heart = events
        .iter()
        .find(|e| e["type"] == "reaction" && e["user"] == "alice")
        .unwrap();
    assert_eq!(heart["message"], m.as_str());
    assert_eq!(heart["emoji"], "❤");
    // Every device of both accounts shows the same conversation.
    for (home, peer, me_mentioned) in [
        (&a1, "bob", false),
        (&a2, "bob", false),
        (&b1, "alice", true),
        (&b2, "alice", true),
    ] {
        ok(home, &["sync"]);
        let h = history_of(home, &[peer]);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[0]["id"], m.as_str());
        assert_eq!(h[0]["text"], "hi @bob, release 2.1 is out");
        assert_eq!(h[0]["edits"], 1);
        assert_eq!(h[0]["deleted"], false);
        assert_eq!(h[0]["mentions_me"], me_mentioned);
        assert_eq!(
            h[0]["reactions"],
            serde_json::json!({"👍": ["bob"], "❤": ["alice"]})
        );
        assert_eq!(h[1]["reply_to"], m.as_str());
        assert_eq!(h[1]["sender"], "bob");
    }
    // One reaction per account: a new one replaces the old; removing takes it away.
    ok(&b2, &["react", &m, "🎉"]);
    ok(&a1, &["sync"]);
    let h = history_of(&a1, &["bob"]);
    assert_eq!(
        h[0]["reactions"],
        serde_json::json!({"🎉": ["bob"], "❤": ["alice"]})
    );
    ok(&a1, &["react", "--remove", &m]);
    ok(&b1, &["sync"]);
    assert_eq!(
        history_of(&b1, &["alice"])[0]["reactions"],
        serde_json::json!({"🎉": ["bob"]})
    );
    // Only the sender edits or unsends; reactions are one emoji; ids must exist.
    fails(&b1, &["edit", &m, "hijacked"], "only alice may edit");
    fails(&b1, &["unsend", &m], "only alice may unsend");
    fails(&b1, &["react", &m, "not an emoji"], "reaction");
    fails(&b1, &["react", &m, &"😀".repeat(2500)], "reaction");
    fails(&b1, &["reply", &"ab".repeat(32), "x"], "no message");
    // At most 10 edits.
    for i in 2..=10 {
        ok(&a1, &["edit", &m, &format!("version {i}")]);
    }
    fails(&a1, &["edit", &m, "eleven"], "edited 10 times");
    // Unsend: every device keeps a tombstone without the text.
    ok(&a2, &["unsend", &m]);
    for (home, peer) in [(&a1, "bob"), (&a2, "bob"), (&b1, "alice")] {
        ok(home, &["sync"]);
        let h = history_of(home, &[peer]);
        assert_eq!(h[0]["deleted"], true, "{h:?}");
        assert_eq!(h[0]["text"], serde_json::Value::Null);
        assert_eq!(h[0]["reactions"], serde_json::json!({}));
        assert_eq!(h[1]["text"], "congrats!");
    }
    fails(&b1, &["react", &m, "👍"], "was unsent");
    let unsent = json_lines(&ok(&b2, &["sync", "--json"]));
    assert!(
        unsent
            .iter()
            .any(|e| e["type"] == "unsend" && e["message"] == m.as_str() && e["user"] == "alice"),
        "{unsent:?}"
    );
    let h = history_of(&b2, &["alice"]);
    assert_eq!(
        (h[0]["deleted"].clone(), h[0]["text"].clone()),
        (serde_json::json!(true), serde_json::Value::Null)
    );

    // The same in a group of three.
    let gid = ok(&a1, &["group", "create", "Team", "bob", "carol"])
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let g = sent_id(&ok(&c1, &["send", "--group", &gid, "lunch? @alice"]));
    ok(&a1, &["sync"]);
    ok(&a1, &["react", &g, "👍"]);
    ok(&b2, &["sync"]);
    ok(&b2, &["reply", &g, "yes"]);
    ok(&c1, &["edit", &g, "lunch at 1? @alice"]);
    for home in [&a1, &a2, &b1, &b2, &c1] {
        ok(home, &["sync"]);
        let h = history_of(home, &["--group", &gid]);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[0]["text"], "lunch at 1? @alice");
        assert_eq!(h[0]["edits"], 1);
        assert_eq!(h[0]["reactions"], serde_json::json!({"👍": ["alice"]}));
        assert_eq!(h[0]["mentions_me"], home == &a1 || home == &a2);
        assert_eq!(h[1]["reply_to"], g.as_str());
    }
}

#[test]
fn delivery_and_read_receipts_reach_the_sender_and_stay_off_both_ways_when_off() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Sottod::start(&d.join("server"), &d.join("sottod.log"), "127.0.0.1:0");
    let url = server.url.clone();
    let (a1, a2, b1, b2) = (d.join("a1"), d.join("a2"), d.join("b1"), d.join("b2"));
    ok(&a1, &["--server", &url, "register", "alice"]);
    ok(&b1, &["--server", &url, "register", "bob"]);
    for (first, second) in [(&a1, &a2), (&b1, &b2)] {
        link_device(first, second, &url);
    }
    let m = sent_id(&ok(&a1, &["send", "bob", "did you get this?"]));
    // Bob's laptop receives it: its sync sends a delivery receipt.
    ok(&b1, &["sync"]);
    let events = json_lines(&ok(&a1, &["sync", "--json"]));
    let delivered = events
        .iter()
        .find(|e| e["type"] == "receipt" && e["message"] == m.as_str())
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(delivered["user"], "bob");
    let h = history_of(&a1, &["bob"]);
    assert_eq!(h[0]["delivered_to"], serde_json::json!(["bob"]));
    assert_eq!(h[0]["read_by"], serde_json::json!([]));
    // Bob reads it on his phone; alice's devices both see it read.
    assert_eq!(ok(&b2, &["read", "alice"]).trim(), "read 1");
    for home in [&a1, &a2] {
        ok(home, &["sync"]);
        assert_eq!(
            history_of(home, &["bob"])[0]["read_by"],
            serde_json::json!(["bob"])
        );
    }
    // Bob's laptop learns it was read on his phone: nothing left to report.
    ok(&b1, &["sync"]);
    assert_eq!(ok(&b1, &["read", "alice"]).trim(), "read 0");

    // Alice turns read receipts off: she sends none and sees none.
    assert_eq!(
        ok(&a1, &["settings", "read-receipts"]).trim(),
        "read-receipts on"
    );
    assert_eq!(
        ok(&a1, &["settings", "read-receipts", "off"]).trim(),
        "read-receipts off"
    );
    assert_eq!(
        history_of(&a1, &["bob"])[0]["read_by"],
        serde_json::json!([]),
        "reciprocal"
    );
    // It is an account setting: her phone turns it off too.
    ok(&a2, &["sync"]);
    assert_eq!(
        ok(&a2, &["settings", "read-receipts"]).trim(),
        "read-receipts off"
    );
    let n = sent_id(&ok(&b1, &["send", "alice", "and this?"]));
    ok(&a1, &["sync"]);
    assert_eq!(ok(&a1, &["read", "bob"]).trim(), "read 1");
    let events = json_lines(&ok(&b1, &["sync", "--json"]));
    assert!(!any_read_receipt(&events), "{events:?}");
    ok(&a2, &["sync"]);
    assert_eq!(ok(&a2, &["read", "bob"]).trim(), "read 1");
    let events = json_lines(&ok(&b1, &["sync", "--json"]));
    assert!(
        !any_read_receipt(&events),
        "none from her phone either: {events:?}"
    );
    let h = history_of(&b1, &["alice"]);
    assert_eq!(h[1]["id"], n.as_str());
    assert_eq!(
        h[1]["delivered_to"],
        serde_json::json!(["alice"]),
        "delivery receipts stay on"
    );
    assert_eq!(h[1]["read_by"], serde_json::json!([]));
    let o = sotto(&a1, &["settings", "read-receipts", "maybe"]);
    assert!(
        !o.ok && o.stderr.contains("invalid value 'maybe'"),
        "{}",
        o.stderr
    );
}

/// The S3-compatible server for the blob-store tests (moto, which `.ci/run` starts), as
/// `host:port`; `None` with a skip line outside CI.
fn s3_server() -> Option<String> {
    let ep = std::env::var("SOTTO_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:5055".into());
    let host = ep.trim_start_matches("http://").to_owned();
    if std::net::TcpStream::connect(&host).is_ok() {
        return Some(host);
    }
    if std::env::var_os("CI").is_some() {
        panic!("the S3 tests need an S3-compatible server under CI (none at {ep}); .ci/run starts moto");
    }
    eprintln!(
        "SKIPPED: S3 blob-store test needs an S3-compatible server at {ep} (`moto_server -p 5055`)"
    );
    None
}

/// One bodiless HTTP/1.1 request; returns the status line.
fn raw_http(host: &str, request_line: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "{request_line}\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn files_through_the_cli_on_an_s3_blob_store_with_resume_and_verified_downloads() {
    let Some(s3) = s3_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bucket = format!("sotto-cli-{}", std::process::id());
    let made = raw_http(&s3, &format!("PUT /{bucket} HTTP/1.1"));
    assert!(made.contains(" 200"), "creating the bucket: {made}");
    let store = format!("s3://{bucket}?endpoint=http://{s3}&region=us-east-1");
    let server = Sottod::start_env(
        &[
            "--data-dir",
            d.join("data").to_str().unwrap(),
            "--blob-store",
            &store,
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
        &d.join("sottod.log"),
        "127.0.0.1:0",
    );
    let url = server.url.clone();
    let (a, b) = (d.join("a"), d.join("b"));
    ok(&a, &["register", "alice", "--server", &url]);
    ok(&b, &["register", "bob", "--server", &url]);
    let bytes: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let path = d.join("report.pdf");
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.extend_from_slice(&bytes);
    std::fs::write(&path, &pdf).unwrap();
    let sent: serde_json::Value = serde_json::from_str(&ok(
        &a,
        &[
            "send",
            "bob",
            "--file",
            path.to_str().unwrap(),
            "the report",
            "--json",
        ],
    ))
    .unwrap();
    let id = sent["id"].as_str().unwrap().to_owned();
    assert_eq!(sent["attachments"][0]["name"], "report.pdf");
    let got = messages(&ok(&b, &["sync", "--json"]));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "the report");
    assert_eq!(
        got[0]["attachments"],
        serde_json::json!([{
            "id": id, "name": "report.pdf", "size": pdf.len(),
            "content_type": "application/pdf", "downloaded": false
        }])
    );
    // Plain output names the file too.
    let plain = ok(&b, &["history", "alice"]);
    assert!(plain.contains("[file report.pdf, "), "{plain}");
    let out = d.join("saved.pdf");
    let said: serde_json::Value = serde_json::from_str(&ok(
        &b,
        &["download", &id, "--out", out.to_str().unwrap(), "--json"],
    ))
    .unwrap();
    assert_eq!(said["path"], out.to_str().unwrap());
    assert_eq!(std::fs::read(&out).unwrap(), pdf);
    let h = history_of(&b, &["alice"]);
    assert_eq!(h[0]["attachments"][0]["downloaded"], true);
    fails(
        &b,
        &["download", &id, "--out", out.to_str().unwrap()],
        "already exists",
    );
    fails(&b, &["download", &"ab".repeat(32)], "no file");

    // kill -9 mid-upload, then the same command again: it resumes the same upload (same blob).
    let big: Vec<u8> = (0..40_000_000u32).map(|i| (i % 253) as u8).collect();
    let big_path = d.join("big.bin");
    std::fs::write(&big_path, &big).unwrap();
    let mut child = Command::new(sotto_bin())
        .arg("--home")
        .arg(&a)
        .args(["send", "bob", "--file", big_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let uploads = a.join("uploads");
    let state = || -> Option<serde_json::Value> {
        let e = std::fs::read_dir(&uploads)
            .ok()?
            .flatten()
            .find(|e| e.path().extension().is_none())?;
        serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()
    };
    let mut before = None;
    for _ in 0..600 {
        if let Some(s) = state().filter(|s| s["confirmed"].as_u64() > Some(0)) {
            before = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = before.expect("the upload got under way");
    assert!(before["confirmed"].as_u64().unwrap() < big.len() as u64);
    let id2 = sent_id(&ok(
        &a,
        &["send", "bob", "--file", big_path.to_str().unwrap()],
    ));
    assert!(state().is_none(), "the upload's state is gone once sent");
    ok(&b, &["sync"]);
    let db = rusqlite::Connection::open(b.join("sotto.db")).unwrap();
    let rec: String = db
        .query_row(
            "SELECT attachment FROM sotto_messages WHERE message_id = ?1",
            [&id2],
            |r| r.get(0),
        )
        .unwrap();
    let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
    assert_eq!(
        rec["blob"], before["blob"],
        "the second run resumed the first one's upload"
    );
    let out2 = d.join("big.out");
    ok(&b, &["download", &id2, "--out", out2.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out2).unwrap(), big);

    // Nothing went to the local data dir's blob directory.
    assert!(!d.join("data/blobs").exists());
    drop(server);
}

#[test]
fn timers_vanish_mode_and_the_default_timer_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Sottod::start(&d.join("server"), &d.join("sottod.log"), "127.0.0.1:0");
    let url = server.url.clone();
    let (a, b) = (d.join("a"), d.join("b"));
    for (home, user) in [(&a, "alice"), (&b, "bob")] {
        ok(home, &["--server", &url, "register", user]);
    }
    ok(&a, &["send", "bob", "hello"]);
    ok(&b, &["sync"]);
    assert_eq!(ok(&b, &["timer", "alice", "1h"]).trim(), "timer 1 h");
    fails(&b, &["timer", "alice", "10s"], "a timer is 30 s to 4 w");
    fails(&b, &["timer", "alice", "soon"], "not a duration");
    ok(&a, &["send", "bob", "timed"]);
    let got = json_lines(&ok(&a, &["sync", "--json"]));
    assert!(
        got.iter()
            .any(|m| m["content"] == "timer" && m["text"] == "timer set to 1 h by bob"),
        "{got:?}"
    );
    ok(&b, &["sync"]);
    let hist = history_of(&b, &["alice"]);
    let timed = hist.iter().find(|m| m["text"] == "timed").unwrap();
    assert!(timed["expires_at"].is_string(), "{timed}");
    let hello = hist.iter().find(|m| m["text"] == "hello").unwrap();
    assert!(hello["expires_at"].is_null());
    assert_eq!(ok(&a, &["timer", "bob", "off"]).trim(), "timer off");

    // Vanish mode: what bob's `sync` showed is gone when that command ends.
    assert_eq!(ok(&a, &["vanish", "bob", "on"]).trim(), "vanish on");
    ok(&a, &["send", "bob", "VANISHING-CLI-MARKER"]);
    let shown = messages(&ok(&b, &["sync", "--json"]));
    assert!(shown.iter().any(|m| m["text"] == "VANISHING-CLI-MARKER"));
    let hist = history_of(&b, &["alice"]);
    assert!(
        !hist.iter().any(|m| m["text"] == "VANISHING-CLI-MARKER"),
        "{hist:?}"
    );
    assert_absent(&b, &["VANISHING-CLI-MARKER"]);

    // The default timer is an account setting; a new group starts with it.
    assert_eq!(
        ok(&a, &["settings", "default-timer", "1d"]).trim(),
        "default-timer 1 d"
    );
    let created = ok(&a, &["group", "create", "Timed club", "bob"]);
    let gid = created.lines().last().unwrap().trim().to_owned();
    ok(&a, &["send", "--group", &gid, "in the group"]);
    let got = messages(&ok(&b, &["sync", "--json"]));
    let m = got.iter().find(|m| m["text"] == "in the group").unwrap();
    assert!(m["expires_at"].is_string(), "{m}");
    assert_eq!(
        ok(&a, &["settings", "default-timer", "off"]).trim(),
        "default-timer off"
    );
}

/// Timed messages on bob's device that are due now.
fn timed_records(db: &Path) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    conn.query_row(
        "SELECT COUNT(*) FROM sotto_messages WHERE expires_at IS NOT NULL",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

/// The saved files the engine has listed for the shell to delete.
fn files_to_delete(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let v: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM sotto_config WHERE key = 'expiry.pending_files'",
            [],
            |r| r.get(0),
        )
        .ok();
    v.map(|v| serde_json::from_slice(&v).unwrap())
        .unwrap_or_default()
}

#[test]
fn kill_9_in_the_middle_of_a_devices_purge_leaves_it_whole_or_not_at_all() {
    use sotto_client::sotto_engine::expiry::TimerMode;
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Sottod::start(&d.join("server"), &d.join("sottod.log"), "127.0.0.1:0");
    let url = server.url.clone();
    let (a, b) = (d.join("a"), d.join("b"));
    let saved: Vec<PathBuf> = (0..2).map(|k| b.join(format!("saved-{k}.bin"))).collect();
    let marker = "PURGED-FILE-MARKER-31c7";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let alice = sotto_client::Client::open(&a, Some(&url)).unwrap();
        alice.account().register("alice").await.unwrap();
        let bob = sotto_client::Client::open(&b, Some(&url)).unwrap();
        bob.account().register("bob").await.unwrap();
        alice.dm("bob").send("KEPT-BEFORE-THE-TIMER").await.unwrap();
        alice
            .dm("bob")
            .set_timer(Some((30, TimerMode::AfterSend)))
            .await
            .unwrap();
        for i in 0..N {
            alice
                .dm("bob")
                .send(&format!("PURGED-TEXT-{i:04}"))
                .await
                .unwrap();
        }
        let mut ids = Vec::new();
        for k in 0..2 {
            let path = d.join(format!("to-send-{k}.bin"));
            std::fs::write(&path, marker.repeat(2000)).unwrap();
            let f = sotto_client::FileToSend {
                path,
                ..Default::default()
            };
            ids.push(
                alice
                    .dm("bob")
                    .send_file(&f, &mut |_| {})
                    .await
                    .unwrap()
                    .0
                    .id,
            );
        }
        bob.sync().await.unwrap();
        for (id, path) in ids.iter().zip(&saved) {
            bob.download(id, Some(path), &mut |_| {}).await.unwrap();
        }
    });
    // As the device records them.
    let saved: Vec<PathBuf> = saved
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap())
        .collect();
    let db = b.join("sotto.db");
    let timed = timed_records(&db);
    // Every timed message, and the receipt bob sent for them (it expires too).
    assert!(timed > N + 2, "bob holds every timed message: {timed}");
    // A copy of bob's device as it is now, for the second half.
    let copy = d.join("b-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["sotto.db", "sotto.db-wal"] {
        if b.join(name).exists() {
            std::fs::copy(b.join(name), copy.join(name)).unwrap();
        }
    }
    // The server's acceptance time plus 30 s, with a second to spare.
    std::thread::sleep(Duration::from_secs(31));

    // `history` purges on opening, before it shows anything. Kill it at later and later moments:
    // each time the purge happened whole or not at all, and a saved file is gone only if the
    // records naming it are, or is listed for deletion.
    let mut before_commit = 0;
    let mut after_commit = false;
    for delay_ms in (0..2000).step_by(3) {
        let mut child = Command::new(sotto_bin())
            .arg("--home")
            .arg(&b)
            .args(["history", "alice", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let left = timed_records(&db);
        assert!(
            left == timed || left == 0,
            "a purge cut in half: {left} left"
        );
        let pending = files_to_delete(&db);
        for f in &saved {
            if left == timed {
                assert!(f.exists(), "a file went before its records");
            } else {
                assert!(
                    !f.exists() || pending.contains(&f.display().to_string()),
                    "a saved file left behind and forgotten"
                );
            }
        }
        if left == 0 {
            after_commit = true;
            break;
        }
        before_commit += 1;
    }
    eprintln!("{before_commit} kills before the purge committed, then one after");
    assert!(after_commit, "no run got to the purge");
    assert!(
        before_commit > 0,
        "no kill landed before the purge committed"
    );
    // The next command finishes whatever was left.
    let hist = history_of(&b, &["alice"]);
    let texts: Vec<&str> = hist.iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.contains(&"KEPT-BEFORE-THE-TIMER"), "{texts:?}");
    assert!(!texts.iter().any(|t| t.starts_with("PURGED-TEXT-")));
    assert!(saved.iter().all(|f| !f.exists()), "saved files go too");
    assert!(files_to_delete(&db).is_empty());
    assert_absent(&b, &["PURGED-TEXT-", marker]);

    // The narrowest moment: the purge committed and the process died before deleting the saved
    // files. On the copy, the engine alone purges (no shell deletes anything) ...
    for f in &saved {
        std::fs::write(f, marker.repeat(10)).unwrap();
    }
    {
        let store = sotto_client::SqliteStore::open(&copy).unwrap();
        let engine = sotto_client::sotto_engine::Engine::new(Box::new(store)).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let gone = engine.purge_expired(now, false).unwrap();
        assert_eq!(gone.len(), N + 2);
        let mut listed = engine.files_to_delete().unwrap();
        listed.sort();
        let mut expected: Vec<String> = saved.iter().map(|f| f.display().to_string()).collect();
        expected.sort();
        assert_eq!(listed, expected);
    }
    assert!(saved.iter().all(|f| f.exists()));
    // ... and the next command on that device deletes them.
    ok(&copy, &["history", "alice"]);
    assert!(
        saved.iter().all(|f| !f.exists()),
        "the listed files are deleted"
    );
    assert!(files_to_delete(&copy.join("sotto.db")).is_empty());
}

#[test]
fn sottod_backup_copies_a_serving_database_that_restores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("server");
    let server = Sottod::start(&data, &d.join("sottod.log"), "127.0.0.1:0");
    let url = server.url.clone();
    let (a, b) = (d.join("a"), d.join("b"));
    for (home, user) in [(&a, "alice"), (&b, "bob")] {
        ok(home, &["--server", &url, "register", user]);
    }
    for i in 0..5 {
        ok(&a, &["send", "bob", &format!("before the backup {i}")]);
    }
    // Disappearing messages never go into a backup.
    ok(&a, &["timer", "bob", "1h"]);
    for i in 0..3 {
        ok(&a, &["send", "bob", &format!("TIMED-NOT-IN-BACKUPS {i}")]);
    }
    ok(&a, &["timer", "bob", "off"]);
    let backup = |to: &Path| {
        Command::new(sottod_bin())
            .args(["--data-dir", data.to_str().unwrap(), "backup", "--to"])
            .arg(to)
            .output()
            .unwrap()
    };
    // alice keeps sending while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                ok(&a, &["send", "bob", &format!("during the backup {i}")]);
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let copy = d.join("backup.db");
    let out = backup(&copy);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent_during = sender.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("integrity check: ok"), "{stdout}");
    assert!(stdout.contains("left out 3 messages"), "{stdout}");
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let timed: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM log WHERE expires_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(timed, 0);
    drop(conn);
    assert!(stdout.lines().any(|l| l.starts_with("log: ")), "{stdout}");
    assert!(sent_during > 0);
    // Never over an existing file; a data dir without a database is named.
    let again = backup(&copy);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let none = Command::new(sottod_bin())
        .args([
            "--data-dir",
            d.join("nothing").to_str().unwrap(),
            "backup",
            "--to",
        ])
        .arg(d.join("x.db"))
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no database"));
    assert!(!d.join("x.db").exists());
    server.kill9();

    // Restore, as the README says: the file as DATA_DIR/sotto.db in a new data dir.
    let restored = d.join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::copy(&copy, restored.join("sotto.db")).unwrap();
    let server = Sottod::start(&restored, &d.join("sottod2.log"), "127.0.0.1:0");
    let got = messages(&ok(&b, &["--server", &server.url, "sync", "--json"]));
    let texts: Vec<&str> = got.iter().filter_map(|m| m["text"].as_str()).collect();
    for i in 0..5 {
        assert!(
            texts.contains(&format!("before the backup {i}").as_str()),
            "{texts:?}"
        );
    }
    assert!(
        !texts.iter().any(|t| t.starts_with("TIMED-NOT-IN-BACKUPS")),
        "{texts:?}"
    );
    // What it holds of the sends racing it is a prefix: a snapshot, not a mix.
    let during: Vec<usize> = texts
        .iter()
        .filter_map(|t| t.strip_prefix("during the backup "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(during, (0..during.len()).collect::<Vec<_>>(), "{texts:?}");
    // alice carries on against the restored server.
    ok(
        &a,
        &["--server", &server.url, "send", "bob", "after the restore"],
    );
    let got = messages(&ok(&b, &["--server", &server.url, "sync", "--json"]));
    assert!(got.iter().any(|m| m["text"] == "after the restore"));
}

#[test]
fn sottod_admin_lists_locks_and_unlocks_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("server");
    let log = d.join("sottod.log");
    let server = Sottod::start(&data, &log, "127.0.0.1:0");
    let url = server.url.clone();
    let (a, b) = (d.join("a"), d.join("b"));
    for (home, user) in [(&a, "alice"), (&b, "bob")] {
        ok(home, &["--server", &url, "register", user]);
    }
    ok(&a, &["send", "bob", "hello"]);
    let admin = |args: &[&str]| {
        let out = Command::new(sottod_bin())
            .args(["--data-dir", data.to_str().unwrap(), "admin"])
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    };
    // On the running deployment.
    let listed = admin(&["accounts"]);
    assert!(listed.ok, "{}", listed.stderr);
    let row = |who: &str, listed: &str| -> Vec<String> {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{who}\t")))
            .unwrap_or_else(|| panic!("{who} not in {listed}"))
            .split('\t')
            .map(str::to_owned)
            .collect()
    };
    let alice = row("alice", &listed.stdout);
    assert_eq!((alice[1].as_str(), alice[4].as_str()), ("1", "active"));
    assert_ne!(alice[3], "-", "alice sent a message: she was active");
    assert_eq!(
        row("bob", &listed.stdout)[3],
        "-",
        "bob never sent anything"
    );

    // Locked while sottod is stopped: refused from its next start on; bob carries on.
    server.kill9();
    let locked = admin(&["lock", "alice"]);
    assert!(locked.ok, "{}", locked.stderr);
    assert_eq!(locked.stdout.trim(), "alice locked");
    let server = Sottod::start(&data, &log, &url.replace("http://", ""));
    fails(&a, &["sync"], "locked by the server's operator");
    ok(&b, &["sync"]);
    assert_eq!(row("alice", &admin(&["accounts"]).stdout)[4], "locked");

    // Unlocked while it runs: at once.
    assert!(admin(&["unlock", "alice"]).ok);
    ok(&a, &["send", "bob", "back again"]);

    // Locked while it runs: requests within the auth cache's 30 s, and alice's open push
    // connection at its next check (every 30 s): `listen` ends with the reason.
    let mut listen = Command::new(sotto_bin())
        .arg("--home")
        .arg(&a)
        .args(["listen", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(listen.stderr.take().unwrap());
    wait_connected(&mut stderr);
    assert!(admin(&["lock", "alice"]).ok);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let o = sotto(&a, &["sync"]);
        if !o.ok {
            assert!(o.stderr.contains("locked"), "{}", o.stderr);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice was never refused"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = listen.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "listen was never cut off"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    assert!(err.contains("locked"), "{err}");
    // A name that is no account.
    let nobody = admin(&["lock", "zed"]);
    assert!(!nobody.ok);
    assert!(nobody.stderr.contains("no account"), "{}", nobody.stderr);
    drop(server);
}

#[test]
fn sottod_admin_delete_removes_an_account_and_its_conversations_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("server");
    let server = Sottod::start(&data, &d.join("sottod.log"), "127.0.0.1:0");
    let url = server.url.clone();
    let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
    for (home, user) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        ok(home, &["--server", &url, "register", user]);
    }
    let created = ok(&a, &["group", "create", "Club", "bob", "carol"]);
    let gid = created.lines().last().unwrap().trim().to_owned();
    let file = d.join("note.txt");
    std::fs::write(&file, b"bob's file").unwrap();
    ok(
        &b,
        &["send", "alice", "--file", file.to_str().unwrap(), "a file"],
    );
    ok(&b, &["send", "--group", &gid, "hi all"]);
    ok(&c, &["sync"]);
    let bob_files = |data: &Path| {
        std::fs::read_dir(data.join("blobs").join("acct").join("bob"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(
        bob_files(&data),
        1,
        "bob's upload is indexed under his account"
    );
    let admin = |args: &[&str]| {
        Command::new(sottod_bin())
            .args(["--data-dir", data.to_str().unwrap(), "admin"])
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    // Not without --yes: nothing happens.
    let unconfirmed = admin(&["delete", "bob"]);
    assert!(!unconfirmed.status.success());
    let err = String::from_utf8_lossy(&unconfirmed.stderr);
    assert!(err.contains("--yes") && err.lines().count() == 1, "{err}");
    ok(&b, &["sync"]);

    // On the running deployment.
    let deleted = admin(&["delete", "bob", "--yes"]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&deleted.stdout).trim(),
        "bob deleted: 1 devices, 2 conversations left, 1 files"
    );
    assert_eq!(bob_files(&data), 0);
    let again = admin(&["delete", "bob", "--yes"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no account"));
    let listed = String::from_utf8(admin(&["accounts"]).stdout).unwrap();
    assert!(!listed.contains("\nbob\t"), "{listed}");

    // bob's device is refused within the auth cache's 30 s. (Until then a node that checked
    // its token recently still takes it, and finds no account behind it: "unknown user bob".)
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let o = sotto(&b, &["sync"]);
        if o.stderr.contains("missing or invalid device token") {
            assert!(!o.ok);
            break;
        }
        assert!(
            o.ok || o.stderr.contains("unknown user bob"),
            "{}",
            o.stderr
        );
        assert!(
            std::time::Instant::now() < deadline,
            "bob was never refused"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Nobody can become "bob" to the people who knew him.
    let d2 = d.join("b2");
    fails(
        &d2,
        &["--server", &url, "register", "bob"],
        "username is taken",
    );

    // The group goes on: alice's sync (an admin's) removes bob's device from it; carol and
    // alice still talk, and both still have what bob sent before.
    let got = messages(&ok(&a, &["sync", "--json"]));
    assert!(got.iter().any(|m| m["text"] == "hi all"), "{got:?}");
    assert!(got.iter().any(|m| m["text"] == "a file"), "{got:?}");
    let info = ok(&a, &["group", "info", &gid]);
    assert!(!info.contains("bob"), "{info}");
    ok(&c, &["send", "--group", &gid, "without bob"]);
    let got = messages(&ok(&a, &["sync", "--json"]));
    assert_eq!(got.last().unwrap()["text"], "without bob");
    drop(server);
}

#[test]
fn listen_stopped_by_sigterm_leaves_the_conversation_and_vanish_messages_go() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Sottod::start(&d.join("server"), &d.join("sottod.log"), "127.0.0.1:0");
    let url = server.url.clone();
    let (a, b) = (d.join("a"), d.join("b"));
    for (home, user) in [(&a, "alice"), (&b, "bob")] {
        ok(home, &["--server", &url, "register", user]);
    }
    ok(&a, &["send", "bob", "hello"]);
    ok(&b, &["sync"]);
    assert_eq!(ok(&a, &["vanish", "bob", "on"]).trim(), "vanish on");
    let mut listen = Command::new(sotto_bin())
        .arg("--home")
        .arg(&b)
        .args(["listen", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    wait_connected(&mut BufReader::new(listen.stderr.take().unwrap()));
    ok(&a, &["send", "bob", "VANISH-LISTEN-MARKER"]);
    // bob's listen shows it ...
    loop {
        let line = lines.next().expect("listen printed it").unwrap();
        if line.contains("VANISH-LISTEN-MARKER") {
            break;
        }
    }
    // ... and is stopped the way a service manager stops it.
    let status = Command::new("kill")
        .args(["-TERM", &listen.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = listen.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_absent(&b, &["VANISH-LISTEN-MARKER"]);
    let hist = history_of(&b, &["alice"]);
    assert!(hist.iter().any(|m| m["text"] == "hello"), "{hist:?}");
}
