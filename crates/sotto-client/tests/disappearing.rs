//! Disappearing messages and vanish mode, proven gone: a real sottod (SQLite, file blobs, prune
//! every second), real devices. After expiry neither the server's data dir (database, WAL, shm,
//! blobs) holds a timed message's ciphertext, nor any device's home its text or its file.
//!
//! The shortest timer is 30 s, so the tests that wait run side by side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sotto_client::sotto_engine::expiry::TimerMode;
use sotto_client::{Client, FileToSend, HistoryMessage};
use sotto_server::Config;
use support::{http, linked, registered, token_of, Server};

/// Every file under `dir`, read whole; what vanishes meanwhile (a purge running) is passed over.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p.display().to_string(), bytes));
        }
    }
    out
}

const TIMER: u32 = 30;

fn config() -> Config {
    Config {
        prune_interval_secs: 1,
        ..Config::default()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every log entry of a conversation as the server serves it to `home`'s device (without moving
/// its read position): (seq, ciphertext, expires_at).
async fn log(server: &str, conv: &str, home: &Path) -> Vec<(u64, Vec<u8>, Option<u64>)> {
    let page: serde_json::Value = http()
        .get(format!(
            "{server}/v1/conversations/{conv}/log?after=0&read=0"
        ))
        .bearer_auth(token_of(home))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                base64::engine::general_purpose::STANDARD
                    .decode(e["data"].as_str().unwrap())
                    .unwrap(),
                e["expires_at"].as_u64(),
            )
        })
        .collect()
}

fn holds(dir: &Path, needle: &[u8]) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|(_, c)| c.windows(needle.len()).any(|w| w == needle))
        .map(|(n, _)| n)
        .collect()
}

/// A 64-byte window from the middle of a ciphertext: what a scan looks for.
fn window(ct: &[u8]) -> Vec<u8> {
    let mid = ct.len() / 2;
    ct[mid - 32..mid + 32].to_vec()
}

fn texts(h: &[HistoryMessage]) -> Vec<String> {
    h.iter().filter_map(|m| m.text.clone()).collect()
}

async fn send_marked_file(c: &Client, to: Target<'_>, dir: &Path, marker: &[u8]) -> String {
    let bytes: Vec<u8> = marker.iter().cycle().take(300_000).copied().collect();
    let path = dir.join(format!("{}.bin", String::from_utf8_lossy(&marker[..8])));
    std::fs::write(&path, &bytes).unwrap();
    let f = FileToSend {
        path: path.clone(),
        ..FileToSend::default()
    };
    let (m, _) = match to {
        Target::Dm(p) => c.dm(p).send_file(&f, &mut |_| {}).await.unwrap(),
        Target::Group(g) => c.group(g).send_file(&f, &mut |_| {}).await.unwrap(),
    };
    std::fs::remove_file(&path).unwrap();
    m.id
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Dm(&'a str),
    Group(&'a str),
}

/// Waits until `check` holds, purging the devices' expired messages meanwhile.
async fn until(devices: &[&Client], what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        for d in devices {
            d.purge_expired(false).unwrap();
        }
        if check() {
            return;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn timed_messages_and_files_are_gone_from_the_server_and_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", config()).await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let b = registered(&dir.path().join("b"), &server.url, "bob").await;
    let c = registered(&dir.path().join("c"), &server.url, "carol").await;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // The DM: an untimed message first, then alice sets the timer; bob sees the change.
    a.dm("bob").send("before the timer").await.unwrap();
    a.dm("bob")
        .set_timer(Some((TIMER, TimerMode::AfterSend)))
        .await
        .unwrap();
    let dm_text = "DM-TEXT-MARKER-5b1f0c";
    let (dm_msg, _) = a.dm("bob").send(dm_text).await.unwrap();
    assert!(
        dm_msg.expires_at.is_some(),
        "the sender's copy counts from sending"
    );
    let dm_file_marker = b"DM-FILE-MARKER-77e2a9-";
    let dm_file = send_marked_file(&a, Target::Dm("bob"), &work, dm_file_marker).await;

    // The group: alice (admin) sets its timer; bob is no admin and cannot.
    let (gid, _) = a
        .groups()
        .create("timed", &["bob".into(), "carol".into()], 100)
        .await
        .unwrap();
    b.sync().await.unwrap();
    let e = b
        .group(&gid)
        .set_timer(Some((60, TimerMode::AfterSend)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("admins"), "{e}");
    a.group(&gid)
        .set_timer(Some((TIMER, TimerMode::AfterSend)))
        .await
        .unwrap();
    let group_text = "GROUP-TEXT-MARKER-c40d11";
    a.group(&gid).send(group_text).await.unwrap();
    let group_file_marker = b"GROUP-FILE-MARKER-9a01fe-";
    let group_file = send_marked_file(&a, Target::Group(&gid), &work, group_file_marker).await;

    // bob reads everything and saves both files; carol receives it but never shows it (her
    // device is closed until after the expiry).
    b.sync().await.unwrap();
    let shown = b.take_unshown().unwrap();
    assert!(shown
        .iter()
        .any(|m| m.text == dm_text && m.expires_at.is_some()));
    assert!(shown
        .iter()
        .any(|m| m.content == "timer" && m.text == "timer set to 30 s by alice"));
    let saved_dm = dir.path().join("b").join("dm-file.bin");
    let saved_group = dir.path().join("b").join("group-file.bin");
    b.download(&dm_file, Some(&saved_dm), &mut |_| {})
        .await
        .unwrap();
    b.download(&group_file, Some(&saved_group), &mut |_| {})
        .await
        .unwrap();
    c.sync().await.unwrap();
    drop(c);
    let history = b.dm("alice").history().unwrap();
    assert!(texts(&history).contains(&dm_text.to_owned()));
    assert!(history
        .iter()
        .any(|m| m.text.as_deref() == Some(dm_text) && m.expires_at.is_some()));

    // What the server keeps of the timed messages: their ciphertexts, each with its expiry; the
    // untimed message and the commits carry none.
    let dm_id = a.engine().dm_id("bob").unwrap().unwrap();
    let mut stored = Vec::new();
    for conv in [&dm_id, &gid] {
        for (seq, ct, exp) in log(&server.url, conv, &dir.path().join("b")).await {
            if let Some(at) = exp {
                assert!(at > now() && at <= now() + u64::from(TIMER), "seq {seq}");
                stored.push(window(&ct));
            }
        }
    }
    // Two texts, two files, and bob's receipts for them.
    assert!(stored.len() >= 4, "{}", stored.len());
    for w in &stored {
        assert!(
            !holds(&server.data_dir, w).is_empty(),
            "the scan finds a ciphertext that is there"
        );
    }
    let blobs_before = files(&server.data_dir.join("blobs/part")).len();
    assert!(blobs_before >= 2);

    // Past the expiry: everything of them is gone, everywhere.
    let c = Client::open(&dir.path().join("c"), None).unwrap();
    let (a_home, b_home, c_home) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    until(
        &[&a, &b, &c],
        "the server's purge",
        Duration::from_secs(90),
        || {
            stored.iter().all(|w| holds(&server.data_dir, w).is_empty())
                && files(&server.data_dir.join("blobs/part")).is_empty()
        },
    )
    .await;
    for (who, d) in [("alice", &a), ("bob", &b)] {
        let dm = texts(
            &d.dm(if who == "alice" { "bob" } else { "alice" })
                .history()
                .unwrap(),
        );
        assert!(dm.contains(&"before the timer".to_owned()), "{who}: {dm:?}");
        assert!(!dm.contains(&dm_text.to_owned()), "{who}: {dm:?}");
        let g = texts(&d.group(&gid).history().unwrap());
        assert!(!g.contains(&group_text.to_owned()), "{who}: {g:?}");
    }
    // carol's device, closed past the expiry, purged on opening before showing anything.
    assert!(c
        .take_unshown()
        .unwrap()
        .iter()
        .all(|m| m.content == "timer"));
    assert!(
        !saved_dm.exists() && !saved_group.exists(),
        "saved files go too"
    );
    for home in [&a_home, &b_home, &c_home] {
        for needle in [
            dm_text.as_bytes(),
            group_text.as_bytes(),
            &dm_file_marker[..],
            &group_file_marker[..],
        ] {
            let found = holds(home, needle);
            assert!(
                found.is_empty(),
                "{} still in {found:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn after_read_starts_the_readers_clock_when_shown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", config()).await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let b = registered(&dir.path().join("b"), &server.url, "bob").await;
    a.dm("bob")
        .set_timer(Some((TIMER, TimerMode::AfterRead)))
        .await
        .unwrap();
    let (m, _) = a.dm("bob").send("read me later").await.unwrap();
    b.sync().await.unwrap();
    // Not shown yet: no clock on bob's copy, while alice's counts from sending.
    let hist = b.dm("alice").history().unwrap();
    let mine = hist.iter().find(|h| h.id == m.id).unwrap();
    assert_eq!(mine.expires_at, None);
    until(
        &[&a, &b],
        "the sender's copy to go",
        Duration::from_secs(60),
        || !a.dm("bob").history().unwrap().iter().any(|h| h.id == m.id),
    )
    .await;
    // bob shows it now: it goes 30 s from now, not from sending.
    let shown = b.take_unshown().unwrap();
    let got = shown.iter().find(|s| s.id == m.id).unwrap();
    assert!(got.expires_at.is_some());
    assert!(b
        .dm("alice")
        .history()
        .unwrap()
        .iter()
        .any(|h| h.id == m.id));
    until(
        &[&b],
        "the reader's copy to go",
        Duration::from_secs(60),
        || {
            !b.dm("alice")
                .history()
                .unwrap()
                .iter()
                .any(|h| h.id == m.id)
        },
    )
    .await;
    assert!(holds(&dir.path().join("b"), b"read me later").is_empty());
    server.stop().await;
}

#[tokio::test]
async fn vanish_mode_takes_what_was_read_once_the_reader_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", config()).await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let b = registered(&dir.path().join("b"), &server.url, "bob").await;
    // bob's second device receives it too, and never shows it.
    let b2 = linked(&b, &dir.path().join("b2"), &server.url).await;
    a.dm("bob").send("kept").await.unwrap();
    a.dm("bob").set_vanish(true).await.unwrap();
    let (m, _) = a.dm("bob").send("VANISH-MARKER-31ac").await.unwrap();
    b.sync().await.unwrap();
    b2.sync().await.unwrap();
    b2.purge_expired(true).unwrap();
    assert!(
        b2.dm("alice")
            .history()
            .unwrap()
            .iter()
            .any(|h| h.id == m.id),
        "not read by bob yet: it stays"
    );
    // Stored but not shown: leaving takes nothing.
    b.purge_expired(true).unwrap();
    assert!(b
        .dm("alice")
        .history()
        .unwrap()
        .iter()
        .any(|h| h.id == m.id));
    let shown = b.take_unshown().unwrap();
    assert!(shown.iter().any(|s| s.id == m.id));
    b.dm("alice").mark_read().await.unwrap();
    let gone = b.purge_expired(true).unwrap();
    assert!(gone.iter().any(|g| g.id == m.id && g.shown));
    assert!(!b
        .dm("alice")
        .history()
        .unwrap()
        .iter()
        .any(|h| h.id == m.id));
    assert!(texts(&b.dm("alice").history().unwrap()).contains(&"kept".to_owned()));
    // bob read it on his first device: his second one lets it go once he leaves there too,
    // without showing it (the person read it, not only that device).
    b2.sync().await.unwrap();
    b2.purge_expired(false).unwrap();
    assert!(b2
        .dm("alice")
        .history()
        .unwrap()
        .iter()
        .any(|h| h.id == m.id));
    b2.purge_expired(true).unwrap();
    assert!(!b2
        .dm("alice")
        .history()
        .unwrap()
        .iter()
        .any(|h| h.id == m.id));
    // The sender's copy goes once bob's read receipt came and alice leaves.
    a.purge_expired(true).unwrap();
    assert!(a.dm("bob").history().unwrap().iter().any(|h| h.id == m.id));
    a.sync().await.unwrap();
    a.purge_expired(true).unwrap();
    assert!(!a.dm("bob").history().unwrap().iter().any(|h| h.id == m.id));
    for home in ["a", "b", "b2"] {
        assert!(
            holds(&dir.path().join(home), b"VANISH-MARKER-31ac").is_empty(),
            "{home}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_timer_change_racing_a_message_leaves_every_copy_agreeing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("server"), "127.0.0.1:0", config()).await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let b = registered(&dir.path().join("b"), &server.url, "bob").await;
    a.dm("bob").send("hi").await.unwrap();
    b.sync().await.unwrap();
    let conv = a.engine().dm_id("bob").unwrap().unwrap();
    for round in 0..3 {
        let timer = if round % 2 == 0 {
            Some((3600, TimerMode::AfterSend))
        } else {
            None
        };
        let text = format!("race {round}");
        let (set, sent) = tokio::join!(a.dm("bob").set_timer(timer), b.dm("alice").send(&text));
        set.unwrap();
        let (m, _) = sent.unwrap();
        a.sync().await.unwrap();
        b.sync().await.unwrap();
        let on = |c: &Client, peer: &str| {
            c.dm(peer)
                .history_items()
                .unwrap()
                .into_iter()
                .find_map(|h| match h {
                    sotto_client::HistoryItem::Message { message, seq } if message.id == m.id => {
                        Some((seq.unwrap(), message.expires_at))
                    }
                    _ => None,
                })
                .unwrap()
        };
        let ((seq, at_a), (_, at_b)) = (on(&a, "bob"), on(&b, "alice"));
        assert_eq!(at_a, at_b, "round {round}: both copies agree");
        // The server stamped its copy exactly when the devices' group state had a timer.
        let entries = log(&server.url, &conv, &dir.path().join("a")).await;
        let entry = entries.iter().find(|e| e.0 == seq).unwrap();
        assert_eq!(entry.2.is_some(), at_a.is_some(), "round {round}");
    }
    server.stop().await;
}
