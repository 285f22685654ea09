//! The embedded SQLite backend: one file in `--data-dir`, WAL journal, `synchronous=FULL` so that a
//! write is on disk before the request that made it is acknowledged.
//!
//! By concern: `schema` (migrations, connections), `writer` (the single writer thread, its
//! batches and the hot-conversation cache), `log` (the conversation log and its index), and here
//! the store itself and the row helpers its methods share. The methods are in one file per
//! resource, as the traits that make up `Store` are: `accounts`, `key_packages`,
//! `conversations`, `messages` (the log, the inbox, read positions), `links` and `operator`
//! (upkeep and account administration). The rules both backends keep are in `store/rules.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use sotto_api::{Accepted, InboxItem, LogEntry, B64};

use super::*;

mod accounts;
mod conversations;
mod key_packages;
mod links;
mod log;
mod messages;
mod operator;
mod schema;
mod writer;

use log::*;
use schema::*;
use writer::*;

/// A failure as a [`StoreError`]: SQLite out of space (the disk, or the configured size cap) is
/// [`StoreError::Full`], anything else [`StoreError::Backend`]. Shadows the generic `backend`.
fn backend(e: impl IntoStoreError) -> StoreError {
    e.into_store_error()
}

trait IntoStoreError {
    fn into_store_error(self) -> StoreError;
}

impl IntoStoreError for rusqlite::Error {
    fn into_store_error(self) -> StoreError {
        if self.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::Full
        } else {
            super::backend(self)
        }
    }
}

macro_rules! other_errors {
    ($($t:ty),*) => {$(
        impl IntoStoreError for $t {
            fn into_store_error(self) -> StoreError {
                super::backend(self)
            }
        }
    )*};
}
other_errors!(std::io::Error, tokio::task::JoinError, String);

impl<T> IntoStoreError for std::sync::PoisonError<T> {
    fn into_store_error(self) -> StoreError {
        super::backend(self)
    }
}

/// Options of the embedded store.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteOptions {
    /// Refuse writes (`StoreError::Full`) that would grow the database file past this many bytes;
    /// reads keep working. `None`: only the disk limits it.
    pub max_bytes: Option<u64>,
    /// Index the log every this many new rows (`None`: [`LOG_INDEX_EVERY`]). Tests set it low.
    pub log_index_every: Option<usize>,
}

/// How many log rows the writer lets accumulate before it indexes them in one go.
pub const LOG_INDEX_EVERY: usize = 4096;
/// Pruning goes in write jobs of at most this many conversations (read positions) ...
const PRUNE_CONVERSATIONS_PER_JOB: usize = 500;
/// ... and this many rows: a few milliseconds of the writer each. Sends queue behind a job (one
/// writer), so its length is their worst added latency while a large backlog goes: 2,000 rows
/// took ~16 ms a job in the purge benchmark (p99 of sends during it 38-42 ms), 500 rows ~4 ms
/// (16-28 ms; BENCHMARKS.md, session 12).
const PRUNE_ROWS_PER_JOB: usize = 500;

/// SQLite storage.
///
/// Writes go to one writer thread that owns the write connection and applies them in batches: each
/// operation runs in a savepoint of one shared transaction, the transaction commits once (one fsync
/// for the whole batch, `synchronous=FULL`), and only then is every operation in it answered. That
/// is group commit: durability per acknowledged request, at the cost of one fsync per batch instead
/// of one per request. Reads run on a small pool of read connections (WAL lets them proceed while
/// the writer writes).
#[derive(Clone)]
pub struct SqliteStore {
    writer: std::sync::mpsc::Sender<Job>,
    tail: Arc<Mutex<LogTail>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
}

const READERS: usize = 4;

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Checkpoints the WAL and truncates it: the pages a delete freed (zeroed, `secure_delete`)
    /// no longer hold their old contents in the -wal file either. Done on a read connection,
    /// outside any transaction; when readers or the writer keep it from finishing, the next prune
    /// tries again.
    async fn truncate_wal(&self) -> Result<(), StoreError> {
        let done: (i64, i64, i64) = self
            .read(|conn| {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(backend)
            })
            .await?;
        if done.0 != 0 {
            tracing::debug!("the WAL could not be truncated after deleting; next time");
        }
        Ok(())
    }

    /// Opens (creating if needed) `sotto.db` in `dir`, runs pending migrations and starts the
    /// writer thread.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with options.
    pub fn open_with(dir: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join("sotto.db");
        let mut conn = open_connection(&path)?;
        migrate(&mut conn)?;
        if let Some(max) = options.max_bytes {
            let page: i64 = conn
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .map_err(backend)?;
            let pages = i64::try_from(max).unwrap_or(i64::MAX) / page.max(512);
            conn.pragma_update(None, "max_page_count", pages.max(1))
                .map_err(backend)?;
        }
        // The writer touches the newest page of every busy conversation in each batch: keep them
        // cached (64 MiB at most) instead of reading them back from the WAL.
        conn.pragma_update(None, "cache_size", -65536)
            .map_err(backend)?;
        let readers = (0..READERS)
            .map(|_| open_connection(&path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let tail = Arc::new(Mutex::new(LogTail::load(&conn)?));
        let index_every = options.log_index_every.unwrap_or(LOG_INDEX_EVERY).max(1);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let writer_tail = tail.clone();
        std::thread::Builder::new()
            .name("sotto-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_tail, index_every))
            .map_err(backend)?;
        Ok(Self {
            writer: tx,
            tail,
            readers: Arc::new(readers),
            next_reader: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Runs a write operation in the next batch; answers once the batch is durable.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_op(f, false).await
    }

    /// [`SqliteStore::write`] for an operation that cannot change any conversation's epoch,
    /// sequence number or member devices.
    async fn write_keeping_hot<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_op(f, true).await
    }

    async fn write_op<T, F>(&self, f: F, keeps_hot: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let op: Op = Box::new(move |conn: &Connection| {
            answer_when_committed(in_savepoint(conn, || f(conn)), reply)
        });
        self.writer
            .send(Job::Op { op, keeps_hot })
            .map_err(|_| StoreError::Backend("writer thread stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("write batch failed".into()))?
    }

    /// Runs a read on one of the read connections.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let i = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % readers.len();
        tokio::task::spawn_blocking(move || {
            let guard = readers[i].lock().map_err(backend)?;
            f(&guard)
        })
        .await
        .map_err(backend)?
    }
}

fn insert_device(
    tx: &Connection,
    username: &str,
    device: &DeviceRecord,
    kps: &KeyPackages,
) -> Result<(), StoreError> {
    let n = tx
        .execute(
            "INSERT OR IGNORE INTO devices (device_id, username, certificate, token_hash, created_at)
             SELECT ?1, ?2, ?3, ?4, ?5
             WHERE NOT EXISTS (SELECT 1 FROM revoked_devices WHERE device_id = ?1)",
            params![
                device.device_id.as_str(),
                username,
                device.certificate,
                &device.token_hash[..],
                device.created_at
            ],
        )
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::DeviceExists);
    }
    insert_key_packages(tx, &device.device_id, kps)
}

fn insert_key_packages(
    tx: &Connection,
    device_id: &str,
    kps: &KeyPackages,
) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO key_packages (device_id, suite, data, last_resort) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    for (suite, kp) in &kps.one_time {
        stmt.execute(params![device_id, suite, kp, 0])
            .map_err(backend)?;
    }
    for (suite, lr) in &kps.last_resort {
        tx.execute(
            "DELETE FROM key_packages WHERE device_id = ?1 AND suite = ?2 AND last_resort = 1",
            params![device_id, suite],
        )
        .map_err(backend)?;
        stmt.execute(params![device_id, suite, lr, 1])
            .map_err(backend)?;
    }
    Ok(())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Column `i` as an id (see [`stored`]), inside a row mapping.
fn id_at<T: TryFrom<String, Error = sotto_api::InvalidId>>(
    r: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    T::try_from(r.get::<_, String>(i)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn load_conversation(
    conn: &Connection,
    id: &str,
) -> Result<Option<ConversationRecord>, StoreError> {
    let row = conn
        .query_row(
            "SELECT kind, epoch, last_seq FROM conversations WHERE id = ?1",
            params![id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()
        .map_err(backend)?;
    let Some((kind, epoch, last_seq)) = row else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT username FROM conversation_members WHERE conversation_id = ?1 ORDER BY username",
        )
        .map_err(backend)?;
    let members = stmt
        .query_map(params![id], |r| id_at(r, 0))
        .map_err(backend)?
        .collect::<Result<Vec<Username>, _>>()
        .map_err(backend)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT username FROM departed WHERE conversation_id = ?1 ORDER BY username",
        )
        .map_err(backend)?;
    let departed = stmt
        .query_map(params![id], |r| id_at(r, 0))
        .map_err(backend)?
        .collect::<Result<Vec<Username>, _>>()
        .map_err(backend)?;
    Ok(Some(ConversationRecord {
        id: stored(id.to_owned())?,
        kind: stored_kind(&kind)?,
        epoch: as_u64(epoch),
        last_seq: as_u64(last_seq),
        members,
        departed,
    }))
}

/// Replaces a conversation's member devices with those after a commit: devices that stay keep
/// their read position, new ones start just before the commit (welcomed devices start after it;
/// the creator of a group still reads its own first commit). For a group the
/// member accounts follow the tree, minus accounts that left; a departed account whose devices are
/// all gone is forgotten, and one an admin adds again is back.
fn apply_members(
    tx: &Connection,
    conversation: &str,
    kind: &str,
    seq: u64,
    commit: &NewCommit,
) -> Result<(), StoreError> {
    let keep: std::collections::HashSet<&str> =
        commit.members.iter().map(|(d, _)| d.as_str()).collect();
    let existing: Vec<String> = tx
        .prepare_cached("SELECT device_id FROM conversation_devices WHERE conversation_id = ?1")
        .and_then(|mut s| {
            s.query_map(params![conversation], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(backend)?;
    for d in existing.iter().filter(|d| !keep.contains(d.as_str())) {
        tx.execute(
            "DELETE FROM conversation_devices WHERE conversation_id = ?1 AND device_id = ?2",
            params![conversation, d],
        )
        .map_err(backend)?;
    }
    let mut ins = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO conversation_devices (conversation_id, device_id, username, acked_seq)
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM devices WHERE device_id = ?2)",
        )
        .map_err(backend)?;
    for (d, u) in &commit.members {
        ins.execute(params![conversation, d, u, as_i64(seq.saturating_sub(1))])
            .map_err(backend)?;
    }
    if kind == "group" {
        let welcomed = commit
            .welcome
            .as_ref()
            .map_or(&[][..], |(_, d)| d.as_slice());
        let before: Vec<String> = tx
            .prepare_cached("SELECT username FROM departed WHERE conversation_id = ?1")
            .and_then(|mut s| {
                s.query_map(params![conversation], |r| r.get(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        let (members, departed) = rules::group_after_commit(&commit.members, welcomed, &before);
        for gone in before.iter().filter(|d| !departed.contains(d)) {
            tx.execute(
                "DELETE FROM departed WHERE conversation_id = ?1 AND username = ?2",
                params![conversation, gone],
            )
            .map_err(backend)?;
        }
        tx.execute(
            "DELETE FROM conversation_members WHERE conversation_id = ?1",
            params![conversation],
        )
        .map_err(backend)?;
        for m in &members {
            tx.execute(
                "INSERT INTO conversation_members (conversation_id, username) VALUES (?1, ?2)",
                params![conversation, m],
            )
            .map_err(backend)?;
        }
    }
    Ok(())
}

fn membership_of(
    conn: &Connection,
    id: &str,
    username: &str,
    device: &str,
) -> Result<Option<ConversationHead>, StoreError> {
    conn.prepare_cached(
        "SELECT c.epoch, c.last_seq FROM conversation_devices d
         JOIN conversation_members m ON m.conversation_id = d.conversation_id AND m.username = d.username
         JOIN conversations c ON c.id = d.conversation_id
         WHERE d.conversation_id = ?1 AND d.device_id = ?2 AND d.username = ?3",
    )
    .and_then(|mut s| {
        s.query_row(params![id, device, username], |r| {
            Ok(ConversationHead {
                epoch: as_u64(r.get(0)?),
                last_seq: as_u64(r.get(1)?),
            })
        })
        .optional()
    })
    .map_err(backend)
}

/// The member devices of a conversation to wake (see [`Store::wake_list`]).
fn wake_devices(conn: &Connection, id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached(rules::WAKE_TREE_DEVICES)
        .map_err(backend)?;
    let mut out = stmt
        .query_map(params![id], |r| r.get::<_, String>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    if out.is_empty() {
        let mut stmt = conn
            .prepare_cached(rules::WAKE_BEFORE_FIRST_COMMIT)
            .map_err(backend)?;
        out = stmt
            .query_map(params![id], |r| r.get::<_, String>(0))
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
    }
    Ok(out)
}
