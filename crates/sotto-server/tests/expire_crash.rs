//! kill -9 in the middle of deleting expired messages: the real `sottod` is killed while its
//! maintenance loop deletes a large backlog of expired entries, then started again on the same
//! data dir. The second run finishes the job, every entry that was not due is still there and
//! intact, the database passes SQLite's integrity check, and no expired ciphertext is left in the
//! db, -wal or -shm file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_server::store::prelude::*;
use sotto_server::store::{DeviceRecord, KeyPackages, NewCommit};
use sotto_server::SqliteStore;
use support::Sottod;

/// Expired entries to delete: enough that the purge takes many write jobs (500 rows each).
const TIMED: usize = 100_000;
/// Entries that must survive: before the timer was set, and after it was turned off.
const KEPT: usize = 200;

// Device and conversation ids are 32 hex digits, as the delivery service hands them over.
const A1: &str = "a1000000000000000000000000000000";
const B1: &str = "b1000000000000000000000000000000";
const DM: &str = "c0ffee00000000000000000000000000";

fn device(id: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: id.parse().unwrap(),
        certificate: vec![1, 2, 3],
        token_hash: [7; 32],
        created_at: 1,
    }
}

fn kps(tag: u8) -> KeyPackages {
    KeyPackages {
        one_time: vec![(0x004F, vec![tag, 0])],
        last_resort: vec![(0x004F, vec![tag, 255])],
    }
}

fn commit(epoch: u64, expiry_secs: Option<u32>) -> NewCommit {
    NewCommit {
        epoch,
        sender_device: A1.into(),
        commit: vec![9, epoch as u8],
        welcome: (epoch == 0).then(|| (vec![5, 5], vec![B1.to_owned()])),
        ratchet_tree: None,
        state: vec![4, epoch as u8],
        expiry_secs,
        members: vec![(A1.into(), "alice".into()), (B1.into(), "bob".into())],
    }
}

fn kept(i: usize) -> Vec<u8> {
    format!("KEPT-ENTRY-{i:06}-").repeat(4).into_bytes()
}

/// What the timed entries hold; the scan looks for its first 16 bytes.
fn timed(i: usize) -> Vec<u8> {
    format!("EXPIRED-CIPHERTEXT-{i:08}-").repeat(4).into_bytes()
}
const TIMED_NEEDLE: &[u8] = b"EXPIRED-CIPHERTE";

/// Appends `datas` at `epoch`, many at a time (the writer groups them into batches).
async fn append_all(store: &Arc<SqliteStore>, epoch: u64, datas: Vec<Vec<u8>>) {
    let mut tasks = tokio::task::JoinSet::new();
    let per = datas.len().div_ceil(256).max(1);
    let mut datas = datas.into_iter().peekable();
    while datas.peek().is_some() {
        let chunk: Vec<Vec<u8>> = datas.by_ref().take(per).collect();
        let store = store.clone();
        tasks.spawn(async move {
            for d in chunk {
                store
                    .append_message(DM, "alice", A1, epoch, &d)
                    .await
                    .unwrap()
                    .expect("a member device");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// A DM with KEPT untimed entries, then TIMED entries that expire one second after landing,
/// then KEPT untimed ones again.
async fn fill(dir: &Path) {
    let store = Arc::new(SqliteStore::open(dir).unwrap());
    store
        .create_account("alice", &[1; 32], device(A1), kps(1))
        .await
        .unwrap();
    store
        .create_account("bob", &[2; 32], device(B1), kps(2))
        .await
        .unwrap();
    store.get_or_create_dm("alice", "bob", DM).await.unwrap();
    store.append_commit(DM, commit(0, None)).await.unwrap();
    append_all(&store, 1, (0..KEPT / 2).map(kept).collect()).await;
    // The store takes the bound as given; the protocol's 30 s minimum is the group policy's.
    store.append_commit(DM, commit(1, Some(1))).await.unwrap();
    append_all(&store, 2, (0..TIMED).map(timed).collect()).await;
    store.append_commit(DM, commit(2, None)).await.unwrap();
    append_all(&store, 3, (KEPT / 2..KEPT).map(kept).collect()).await;
}

/// sottod on `dir`, deleting what is due every second, its log appended to `log`.
fn start(dir: &Path, log: &Path) -> Sottod {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Sottod::start(
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "--prune-interval-secs",
            "1",
        ],
        log.into(),
    )
}

fn timed_left(conn: &rusqlite::Connection) -> usize {
    conn.query_row(
        "SELECT COUNT(*) FROM log WHERE expires_at IS NOT NULL",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

/// The files of the database that hold `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&p)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            found.push(p.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_purge_loses_nothing_and_leaves_no_expired_ciphertext() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let log = tmp.path().join("sottod.log");
    fill(&data).await;
    // Every timed entry is due one second after landing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        !holding(&data, TIMED_NEEDLE).is_empty(),
        "the scan finds them before"
    );

    // First run: killed as soon as the purge has deleted some, but not all, of them.
    let watch = rusqlite::Connection::open_with_flags(
        data.join("sotto.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    assert_eq!(timed_left(&watch), TIMED);
    let server = start(&data, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = timed_left(&watch);
        if left < TIMED {
            break;
        }
        assert!(Instant::now() < deadline, "the purge did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    server.kill9();
    let left = timed_left(&watch);
    drop(watch);
    assert!(
        left > 0 && left < TIMED,
        "killed mid-purge: {left} of {TIMED} expired entries left (the purge finished before \
         the kill, so this run proved nothing)"
    );

    // Second run: finishes the purge (its log says so once the WAL is truncated too).
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    let server = start(&data, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text[before..].contains("deleted expired messages") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted server did not purge:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Scanned while it runs: the db, -wal and -shm files as they are now.
    assert_eq!(
        holding(&data, TIMED_NEEDLE),
        Vec::<String>::new(),
        "expired ciphertext left in the server's files"
    );
    server.kill9();

    let conn = rusqlite::Connection::open(data.join("sotto.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(timed_left(&conn), 0);
    drop(conn);

    // Everything that was not due is there, in order and intact.
    let store = SqliteStore::open(&data).unwrap();
    let log = store.log_after(DM, 0, 10_000).await.unwrap();
    // (Appended many at a time: their order among themselves is the writer's.)
    let mut messages: Vec<Vec<u8>> = log
        .iter()
        .filter(|e| e.kind == sotto_api::EntryKind::Message)
        .map(|e| e.data.0.clone())
        .collect();
    messages.sort();
    assert_eq!(messages, (0..KEPT).map(kept).collect::<Vec<_>>());
    assert_eq!(log.len(), KEPT + 3, "the three commits stay");
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
}
