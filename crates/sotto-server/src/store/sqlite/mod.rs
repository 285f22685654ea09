//! The embedded SQLite backend: one file in `--data-dir`, WAL journal, `synchronous=FULL` so that a
//! write is on disk before the request that made it is acknowledged.
//!
//! By concern: `schema` (migrations, connections), `writer` (the single writer thread, its
//! batches and the hot-conversation cache), `log` (the conversation log and its index), and
//! here the `Store` methods and the row helpers they share. The rules both backends keep are in
//! `store/rules.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use sotto_api::{Accepted, InboxItem, LogEntry, B64};

use super::*;

mod log;
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

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(
        &self,
        username: &str,
        identity_key: &[u8],
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<(), StoreError> {
        let (username, identity_key) = (username.to_owned(), identity_key.to_vec());
        self.write(move |tx| {
            // A deleted account's name stays taken.
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO accounts (username, identity_key, created_at)
                     SELECT ?1, ?2, ?3
                     WHERE NOT EXISTS (SELECT 1 FROM deleted_accounts WHERE username = ?1)",
                    params![username, identity_key, device.created_at],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::UsernameTaken);
            }
            insert_device(tx, &username, &device, &kps)?;
            Ok(())
        })
        .await
    }

    async fn revoke_device(
        &self,
        username: &str,
        device_id: &str,
        caller: &str,
    ) -> Result<(), StoreError> {
        let (username, device_id, caller) =
            (username.to_owned(), device_id.to_owned(), caller.to_owned());
        self.write(move |tx| {
            let devices: Vec<String> = tx
                .prepare_cached("SELECT device_id FROM devices WHERE username = ?1")
                .and_then(|mut s| {
                    s.query_map(params![username], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            rules::check_revoke(&devices, &device_id, &caller)?;
            for sql in [
                "DELETE FROM key_packages WHERE device_id = ?1",
                "DELETE FROM inbox WHERE device_id = ?1",
                "DELETE FROM devices WHERE device_id = ?1",
                "DELETE FROM conversation_devices WHERE device_id = ?1",
            ] {
                tx.execute(sql, params![device_id]).map_err(backend)?;
            }
            tx.execute(
                "DELETE FROM links WHERE username = ?1 AND used = 0",
                params![username],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO revoked_devices (device_id, username, revoked_at) VALUES (?1, ?2, strftime('%s','now'))",
                params![device_id, username],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn device_auth(&self, device_id: &str) -> Result<Option<DeviceAuth>, StoreError> {
        let device_id = device_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT d.username, d.token_hash, a.locked FROM devices d
                 JOIN accounts a ON a.username = d.username WHERE d.device_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![device_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(backend)?
            .map(|(username, hash, locked)| {
                let token_hash = rules::token_hash(&hash)?;
                Ok(DeviceAuth {
                    username,
                    token_hash,
                    locked,
                })
            })
            .transpose()
        })
        .await
    }

    async fn account(&self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            let identity_key: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT identity_key FROM accounts WHERE username = ?1",
                    params![username],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let Some(identity_key) = identity_key else {
                return Ok(None);
            };
            let mut stmt = conn
                .prepare_cached(
                    "SELECT device_id, certificate, token_hash, created_at FROM devices
                     WHERE username = ?1 ORDER BY created_at, device_id",
                )
                .map_err(backend)?;
            let devices = stmt
                .query_map(params![username], |r| {
                    Ok((
                        id_at::<DeviceId>(r, 0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?
                .into_iter()
                .map(|(device_id, certificate, hash, created_at)| {
                    Ok(DeviceRecord {
                        device_id,
                        certificate,
                        token_hash: rules::token_hash(&hash)?,
                        created_at,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let revoked: Vec<DeviceId> = conn
                .prepare_cached(
                    "SELECT device_id FROM revoked_devices WHERE username = ?1 ORDER BY device_id",
                )
                .and_then(|mut s| {
                    s.query_map(params![username], |r| id_at(r, 0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            Ok(Some(AccountRecord {
                username: stored(username)?,
                identity_key,
                devices,
                revoked,
            }))
        })
        .await
    }

    async fn add_key_packages(&self, device_id: &str, kps: KeyPackages) -> Result<(), StoreError> {
        let device_id = device_id.to_owned();
        self.write(move |tx| {
            insert_key_packages(tx, &device_id, &kps)?;
            Ok(())
        })
        .await
    }

    async fn key_package_count(&self, device_id: &str, suite: u16) -> Result<u64, StoreError> {
        let device_id = device_id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM key_packages WHERE device_id = ?1 AND suite = ?2 AND last_resort = 0",
                params![device_id, suite],
                |r| r.get::<_, i64>(0),
            )
            .map(as_u64)
            .map_err(backend)
        })
        .await
    }

    async fn claim_key_packages(
        &self,
        username: &str,
        only: &[String],
        exclude: &str,
        suite: u16,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (username, only, exclude) = (username.to_owned(), only.to_vec(), exclude.to_owned());
        self.write(move |tx| {
            let devices: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached("SELECT device_id FROM devices WHERE username = ?1 ORDER BY created_at, device_id")
                    .map_err(backend)?;
                let all = stmt
                    .query_map(params![username], |r| r.get::<_, String>(0))
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                rules::claim_targets(all, &only, &exclude)
            };
            let mut out = Vec::with_capacity(devices.len());
            for d in devices {
                // A one-time package first (oldest), else the last-resort one (kept).
                let row: Option<(i64, Vec<u8>, i64)> = tx
                    .query_row(
                        "SELECT id, data, last_resort FROM key_packages WHERE device_id = ?1 AND suite = ?2
                         ORDER BY last_resort, id LIMIT 1",
                        params![d, suite],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(backend)?;
                let Some((id, data, last_resort)) = row else {
                    return Err(StoreError::NoKeyPackage(d));
                };
                if last_resort == 0 {
                    tx.execute("DELETE FROM key_packages WHERE id = ?1", params![id])
                        .map_err(backend)?;
                }
                out.push((d, data));
            }
            Ok(out)
        })
        .await
    }

    async fn get_or_create_dm(
        &self,
        a: &str,
        b: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let (x, y, dm_key) = rules::dm_key(a, b);
        let (x, y, new_id) = (x.to_owned(), y.to_owned(), new_id.to_owned());
        self.write(move |tx| {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT id FROM conversations WHERE dm_key = ?1",
                    params![dm_key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let id = match existing {
                Some(id) => id,
                None => {
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    tx.execute(
                        "INSERT INTO conversations (id, kind, dm_key, epoch, last_seq, created_at)
                         VALUES (?1, 'dm', ?2, 0, 0, ?3)",
                        params![new_id, dm_key, now],
                    )
                    .map_err(backend)?;
                    for m in [&x, &y] {
                        tx.execute(
                            "INSERT INTO conversation_members (conversation_id, username) VALUES (?1, ?2)",
                            params![new_id, m],
                        )
                        .map_err(backend)?;
                    }
                    new_id
                }
            };
            let rec = load_conversation(tx, &id)?.ok_or(StoreError::NotFound("conversation"))?;
            Ok(rec)
        })
        .await
    }

    async fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| load_conversation(conn, &id)).await
    }

    async fn membership(
        &self,
        id: &str,
        username: &str,
        device: &str,
    ) -> Result<Option<ConversationHead>, StoreError> {
        let (id, username, device) = (id.to_owned(), username.to_owned(), device.to_owned());
        self.read(move |conn| membership_of(conn, &id, &username, &device))
            .await
    }

    async fn conversations_of(
        &self,
        username: &str,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "SELECT conversation_id FROM conversation_members WHERE username = ?1 ORDER BY conversation_id",
                )
                .and_then(|mut s| {
                    s.query_map(params![username], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(c) = load_conversation(conn, &id)? {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn append_commit(
        &self,
        conversation: &str,
        commit: NewCommit,
    ) -> Result<Accepted, StoreError> {
        let conversation = conversation.to_owned();
        self.write(move |tx| {
            let seq = next_seq(tx, &conversation, commit.epoch)?;
            let new_epoch = commit.epoch + 1;
            let (accepted_at, _) = insert_log(
                tx,
                &conversation,
                seq,
                commit.epoch,
                EntryKind::Commit,
                &commit.sender_device,
                &commit.commit,
                None,
            )?;
            tx.execute(
                "UPDATE conversations SET epoch = ?2, last_seq = ?3, expiry_secs = ?4 WHERE id = ?1",
                params![conversation, as_i64(new_epoch), as_i64(seq), commit.expiry_secs],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO conversation_states (conversation_id, state) VALUES (?1, ?2)
                 ON CONFLICT (conversation_id) DO UPDATE SET state = excluded.state",
                params![conversation, commit.state],
            )
            .map_err(backend)?;
            let kind: String = tx
                .query_row(
                    "SELECT kind FROM conversations WHERE id = ?1",
                    params![conversation],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            apply_members(tx, &conversation, &kind, seq, &commit)?;
            if let Some((welcome, devices)) = &commit.welcome {
                tx.execute(
                    "INSERT INTO welcomes (conversation_id, data, created_at, ratchet_tree) VALUES (?1, ?2, ?3, ?4)",
                    params![conversation, welcome, now(), commit.ratchet_tree],
                )
                .map_err(backend)?;
                let welcome_id = tx.last_insert_rowid();
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO inbox (device_id, conversation_id, seq, welcome, welcome_id)
                         VALUES (?1, ?2, ?3, x'', ?4)",
                    )
                    .map_err(backend)?;
                for d in devices {
                    stmt.execute(params![d, conversation, as_i64(seq), welcome_id])
                        .map_err(backend)?;
                }
            }
            Ok(Accepted {
                seq,
                epoch: new_epoch,
                accepted_at,
                expires_at: None,
            })
        })
        .await
    }

    async fn append_message(
        &self,
        conversation: &str,
        username: &str,
        sender_device: &str,
        epoch: u64,
        data: &[u8],
    ) -> Result<Option<Appended>, StoreError> {
        let (job, answer) = AppendJob::new(conversation, username, sender_device, epoch, data);
        self.writer
            .send(Job::Append(Box::new(job)))
            .map_err(|_| StoreError::Backend("writer thread stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("write batch failed".into()))?
    }

    async fn member_log(
        &self,
        conversation: &str,
        username: &str,
        device: &str,
        after: u64,
        limit: u32,
    ) -> Result<Option<(ConversationHead, Vec<LogEntry>)>, StoreError> {
        let (conversation, username, device) = (
            conversation.to_owned(),
            username.to_owned(),
            device.to_owned(),
        );
        let tail = self.tail.clone();
        self.read(move |conn| {
            let Some(head) = membership_of(conn, &conversation, &username, &device)? else {
                return Ok(None);
            };
            Ok(Some((
                head,
                read_log(conn, &tail, &conversation, after, limit)?,
            )))
        })
        .await
    }

    async fn log_after(
        &self,
        conversation: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let conversation = conversation.to_owned();
        let tail = self.tail.clone();
        self.read(move |conn| read_log(conn, &tail, &conversation, after, limit))
            .await
    }

    async fn inbox(&self, device_id: &str) -> Result<Vec<InboxItem>, StoreError> {
        let device_id = device_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT i.id, i.conversation_id, i.seq, COALESCE(w.data, i.welcome), w.ratchet_tree
                     FROM inbox i LEFT JOIN welcomes w ON w.id = i.welcome_id
                     WHERE i.device_id = ?1 ORDER BY i.id LIMIT 100",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![device_id], |r| {
                    Ok(InboxItem {
                        id: as_u64(r.get(0)?),
                        conversation: id_at(r, 1)?,
                        seq: as_u64(r.get(2)?),
                        welcome: B64(r.get(3)?),
                        ratchet_tree: r.get::<_, Option<Vec<u8>>>(4)?.map(B64),
                    })
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(rows)
        })
        .await
    }

    async fn ack_inbox(&self, device_id: &str, up_to: u64) -> Result<(), StoreError> {
        let device_id = device_id.to_owned();
        self.write_keeping_hot(move |conn| {
            conn.execute(
                "DELETE FROM inbox WHERE device_id = ?1 AND id <= ?2",
                params![device_id, as_i64(up_to)],
            )
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn devices_of(&self, usernames: &[String]) -> Result<Vec<String>, StoreError> {
        let usernames = usernames.to_vec();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT device_id FROM devices WHERE username = ?1")
                .map_err(backend)?;
            let mut out = Vec::new();
            for u in &usernames {
                let ids = stmt
                    .query_map(params![u], |r| r.get::<_, String>(0))
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                out.extend(ids);
            }
            Ok(out)
        })
        .await
    }

    async fn create_group(
        &self,
        creator: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let (creator, id) = (creator.to_owned(), new_id.to_owned());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO conversations (id, kind, epoch, last_seq, created_at) VALUES (?1, 'group', 0, 0, ?2)",
                params![id, now()],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO conversation_members (conversation_id, username) VALUES (?1, ?2)",
                params![id, creator],
            )
            .map_err(backend)?;
            load_conversation(tx, &id)?.ok_or(StoreError::NotFound("conversation"))
        })
        .await
    }

    async fn group_state(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let row: Option<(i64, Option<Vec<u8>>)> = conn
                .query_row(
                    "SELECT c.epoch, s.state FROM conversations c
                     LEFT JOIN conversation_states s ON s.conversation_id = c.id WHERE c.id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            Ok(row.and_then(|(e, s)| s.map(|s| (as_u64(e), s))))
        })
        .await
    }

    async fn leave(&self, id: &str, username: &str, admins: &[String]) -> Result<(), StoreError> {
        let (id, username, admins) = (id.to_owned(), username.to_owned(), admins.to_vec());
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM conversation_members WHERE conversation_id = ?1 AND username = ?2",
                    params![id, username],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound("conversation"));
            }
            if admins.contains(&username) {
                let remaining: Vec<String> = tx
                    .prepare_cached(
                        "SELECT username FROM conversation_members WHERE conversation_id = ?1",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![id], |r| r.get(0))?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(backend)?;
                rules::check_last_admin(&username, &admins, &remaining)?;
            }
            let still_in_tree: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM conversation_devices WHERE conversation_id = ?1 AND username = ?2",
                    params![id, username],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if still_in_tree > 0 {
                tx.execute(
                    "INSERT OR IGNORE INTO departed (conversation_id, username) VALUES (?1, ?2)",
                    params![id, username],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn wake_list(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| wake_devices(conn, &id)).await
    }

    async fn save_cursors(&self, cursors: Vec<(String, String, u64)>) -> Result<(), StoreError> {
        self.write_keeping_hot(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE conversation_devices SET acked_seq = ?3
                     WHERE conversation_id = ?1 AND device_id = ?2 AND acked_seq < ?3",
                )
                .map_err(backend)?;
            for (c, d, seq) in &cursors {
                stmt.execute(params![c, d, as_i64(*seq)]).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn prune(&self, older_than: i64) -> Result<u64, StoreError> {
        // In pieces, each its own write job, so messages keep landing in between; each piece finds
        // its rows through `log_index` or an id range, never by reading the whole log.
        let conversations: Vec<String> = self
            .read(|conn| {
                conn.prepare_cached(
                    "SELECT conversation_id FROM conversation_devices GROUP BY conversation_id",
                )
                .and_then(|mut s| {
                    s.query_map([], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)
            })
            .await?;
        let mut gone = 0u64;
        // Entries every current device of the conversation has read (the floor is read inside the
        // job: read positions only move forward, and devices that join start past the old log). A
        // job stops after PRUNE_ROWS_PER_JOB rows; the next one goes on from that conversation.
        let mut next = 0;
        while next < conversations.len() {
            let chunk = conversations[next..]
                .iter()
                .take(PRUNE_CONVERSATIONS_PER_JOB)
                .cloned()
                .collect::<Vec<_>>();
            let (n, finished) = self
                .write_keeping_hot(move |tx| {
                    let mut oldest = tx
                        .prepare_cached(
                            "SELECT seq FROM log_index WHERE conversation_id = ?1
                             AND seq <= (SELECT MIN(acked_seq) FROM conversation_devices
                                         WHERE conversation_id = ?1)
                             ORDER BY seq LIMIT ?2",
                        )
                        .map_err(backend)?;
                    let mut del = tx
                        .prepare_cached(
                            "DELETE FROM log WHERE id IN
                             (SELECT row FROM log_index WHERE conversation_id = ?1 AND seq <= ?2)",
                        )
                        .map_err(backend)?;
                    let mut unindex = tx
                        .prepare_cached(
                            "DELETE FROM log_index WHERE conversation_id = ?1 AND seq <= ?2",
                        )
                        .map_err(backend)?;
                    let (mut n, mut finished) = (0usize, 0usize);
                    for c in &chunk {
                        let budget = PRUNE_ROWS_PER_JOB - n;
                        let seqs: Vec<i64> = oldest
                            .query_map(params![c, budget as i64], |r| r.get(0))
                            .and_then(|rows| rows.collect())
                            .map_err(backend)?;
                        if let Some(last) = seqs.last() {
                            n += del.execute(params![c, last]).map_err(backend)?;
                            unindex.execute(params![c, last]).map_err(backend)?;
                        }
                        if seqs.len() == budget {
                            break; // this conversation may have more
                        }
                        finished += 1;
                    }
                    Ok((n as u64, finished))
                })
                .await?;
            gone += n;
            next += finished;
        }
        // The same for rows not indexed yet: at most one index batch of them, one pass.
        gone += self
            .write_keeping_hot(|tx| {
                tx.execute(
                    "DELETE FROM log WHERE id > (SELECT upto FROM log_indexed)
                     AND seq <= (SELECT MIN(d.acked_seq) FROM conversation_devices d
                                 WHERE d.conversation_id = log.conversation_id)",
                    [],
                )
                .map(|n| n as u64)
                .map_err(backend)
            })
            .await?;
        // Retention. Rows are appended in time order (one writer stamps them), so the expired ones
        // are those before the first row young enough: found by reading only the expired rows
        // (a clock stepping back can keep a few rows until a later round). Rows from before
        // schema 2 carry no time (0) and are kept, as before.
        let cut: i64 = self
            .read(move |conn| {
                conn.prepare_cached("SELECT id FROM log WHERE created_at >= ?1 ORDER BY id LIMIT 1")
                    .and_then(|mut s| s.query_row(params![older_than], |r| r.get(0)).optional())
                    .map(|first_young| first_young.unwrap_or(i64::MAX))
                    .map_err(backend)
            })
            .await?;
        let mut from = 0i64;
        loop {
            let (n, last) = self
                .write_keeping_hot(move |tx| {
                    let rows: Vec<(i64, String, i64)> = tx
                        .prepare_cached(
                            "SELECT id, conversation_id, seq FROM log
                             WHERE id > ?1 AND id < ?2 AND created_at > 0 AND created_at < ?3
                             ORDER BY id LIMIT ?4",
                        )
                        .and_then(|mut s| {
                            s.query_map(
                                params![from, cut, older_than, PRUNE_ROWS_PER_JOB as i64],
                                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                            )?
                            .collect::<Result<Vec<_>, _>>()
                        })
                        .map_err(backend)?;
                    delete_log_rows(tx, &rows)?;
                    Ok((rows.len(), rows.last().map_or(from, |r| r.0)))
                })
                .await?;
            gone += n as u64;
            if n < PRUNE_ROWS_PER_JOB {
                break;
            }
            from = last;
        }
        self.write_keeping_hot(move |tx| {
            tx.execute(
                "DELETE FROM inbox WHERE welcome_id IN (SELECT id FROM welcomes WHERE created_at < ?1)",
                params![older_than],
            )
            .map_err(backend)?;
            tx.execute(
                "DELETE FROM welcomes WHERE created_at < ?1
                 OR NOT EXISTS (SELECT 1 FROM inbox i WHERE i.welcome_id = welcomes.id)",
                params![older_than],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await?;
        if gone > 0 {
            self.truncate_wal().await?;
        }
        Ok(gone)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }

    async fn admin_accounts(&self) -> Result<Vec<AdminAccount>, StoreError> {
        self.read(|conn| {
            conn.prepare(
                "SELECT a.username, a.created_at, a.locked,
                        (SELECT COUNT(*) FROM devices d WHERE d.username = a.username),
                        (SELECT MAX(l.created_at) FROM log l JOIN devices d
                         ON d.device_id = l.sender_device WHERE d.username = a.username)
                 FROM accounts a ORDER BY a.username",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(AdminAccount {
                        username: r.get(0)?,
                        created_at: r.get(1)?,
                        locked: r.get(2)?,
                        devices: as_u64(r.get(3)?),
                        last_active: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
        })
        .await
    }

    async fn set_locked(&self, username: &str, locked: bool) -> Result<bool, StoreError> {
        let username = username.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE accounts SET locked = ?2 WHERE username = ?1",
                params![username, locked],
            )
            .map(|n| n == 1)
            .map_err(backend)
        })
        .await
    }

    async fn clock(&self) -> Result<i64, StoreError> {
        // One node, one clock: this process's.
        Ok(now())
    }

    async fn delete_account(&self, username: &str) -> Result<Option<DeletedAccount>, StoreError> {
        let username = username.to_owned();
        self.write(move |tx| {
            let exists: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM accounts WHERE username = ?1",
                    params![username],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if exists == 0 {
                return Ok(None);
            }
            let column = |sql: &str| -> Result<Vec<String>, StoreError> {
                tx.prepare(sql)
                    .and_then(|mut s| {
                        s.query_map(params![username], |r| r.get(0))?
                            .collect::<Result<Vec<String>, _>>()
                    })
                    .map_err(backend)
            };
            let devices = column("SELECT device_id FROM devices WHERE username = ?1 ORDER BY device_id")?;
            let conversations = column(
                "SELECT conversation_id FROM conversation_members WHERE username = ?1 ORDER BY conversation_id",
            )?;
            // Its leaves, as for a leave: members' next sync removes its devices from the group.
            tx.execute(
                "INSERT OR IGNORE INTO departed (conversation_id, username)
                 SELECT DISTINCT conversation_id, username FROM conversation_devices WHERE username = ?1
                   AND conversation_id IN (SELECT conversation_id FROM conversation_members WHERE username = ?1)",
                params![username],
            )
            .map_err(backend)?;
            for sql in [
                "DELETE FROM conversation_members WHERE username = ?1",
                "DELETE FROM key_packages WHERE device_id IN (SELECT device_id FROM devices WHERE username = ?1)",
                "DELETE FROM inbox WHERE device_id IN (SELECT device_id FROM devices WHERE username = ?1)",
                "DELETE FROM links WHERE username = ?1",
                "DELETE FROM revoked_devices WHERE username = ?1",
                "DELETE FROM devices WHERE username = ?1",
                "DELETE FROM accounts WHERE username = ?1",
            ] {
                tx.execute(sql, params![username]).map_err(backend)?;
            }
            tx.execute(
                "INSERT INTO deleted_accounts (username, deleted_at) VALUES (?1, ?2)",
                params![username, now()],
            )
            .map_err(backend)?;
            Ok(Some(DeletedAccount {
                devices,
                conversations,
            }))
        })
        .await
    }

    async fn expire(&self, now: i64) -> Result<u64, StoreError> {
        let mut gone = 0u64;
        loop {
            let (looked_at, deleted) = self
                .write_keeping_hot(move |tx| {
                    let budget = PRUNE_ROWS_PER_JOB as i64;
                    // Due entries of `log_expiry`, then due rows not indexed yet (by id range).
                    let mut due: Vec<(i64, i64, bool)> = tx
                        .prepare_cached(
                            "SELECT expires_at, row FROM log_expiry WHERE expires_at <= ?1
                             ORDER BY expires_at LIMIT ?2",
                        )
                        .and_then(|mut s| {
                            s.query_map(params![now, budget], |r| Ok((r.get(0)?, r.get(1)?, true)))?
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .map_err(backend)?;
                    if (due.len() as i64) < budget {
                        let tail = tx
                            .prepare_cached(
                                "SELECT expires_at, id FROM log
                                 WHERE id > (SELECT upto FROM log_indexed)
                                 AND expires_at IS NOT NULL AND expires_at <= ?1
                                 ORDER BY id LIMIT ?2",
                            )
                            .and_then(|mut s| {
                                s.query_map(params![now, budget - due.len() as i64], |r| {
                                    Ok((r.get(0)?, r.get(1)?, false))
                                })?
                                .collect::<Result<Vec<_>, _>>()
                            })
                            .map_err(backend)?;
                        due.extend(tail);
                    }
                    let mut row_of = tx
                        .prepare_cached(
                            "SELECT conversation_id, seq FROM log WHERE id = ?1 AND expires_at = ?2",
                        )
                        .map_err(backend)?;
                    let mut unlist = tx
                        .prepare_cached("DELETE FROM log_expiry WHERE expires_at = ?1 AND row = ?2")
                        .map_err(backend)?;
                    let mut rows = Vec::with_capacity(due.len());
                    for (at, row, listed) in &due {
                        if *listed {
                            unlist.execute(params![at, row]).map_err(backend)?;
                        }
                        // An entry whose row went already (a prune by read positions) has none.
                        if let Some((c, seq)) = row_of
                            .query_row(params![row, at], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                            .map_err(backend)?
                        {
                            rows.push((*row, c, seq));
                        }
                    }
                    delete_log_rows(tx, &rows)?;
                    Ok((due.len(), rows.len()))
                })
                .await?;
            gone += deleted as u64;
            if looked_at < PRUNE_ROWS_PER_JOB {
                break;
            }
        }
        if gone > 0 {
            self.truncate_wal().await?;
        }
        Ok(gone)
    }

    async fn create_link(
        &self,
        link_id: &str,
        username: &str,
        device: &str,
        bundle: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let (link_id, username, device, bundle) = (
            link_id.to_owned(),
            username.to_owned(),
            device.to_owned(),
            bundle.to_vec(),
        );
        self.write(move |conn| {
            let present: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM devices WHERE device_id = ?1 AND username = ?2",
                    params![device, username],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if present == 0 {
                return Err(StoreError::CallerGone);
            }
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO links (link_id, username, bundle, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    params![link_id, username, bundle, expires_at],
                )
                .map_err(backend)?;
            if n == 0 {
                Err(StoreError::LinkTaken)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn fetch_link(
        &self,
        link_id: &str,
        now: i64,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let link_id = link_id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT username, bundle FROM links WHERE link_id = ?1 AND used = 0 AND expires_at > ?2",
                params![link_id, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn redeem_link(
        &self,
        link_id: &str,
        now: i64,
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<String, StoreError> {
        let link_id = link_id.to_owned();
        self.write(move |tx| {
            let username: Option<String> = tx
                .query_row(
                    "UPDATE links SET used = 1, bundle = x'' WHERE link_id = ?1 AND used = 0 AND expires_at > ?2
                     RETURNING username",
                    params![link_id, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let username = username.ok_or(StoreError::LinkExpired)?;
            insert_device(tx, &username, &device, &kps)?;
            Ok(username)
        })
        .await
    }
}
