//! The PostgreSQL backend, for several stateless `sottod` nodes over one database. Every rule that
//! must hold across nodes is one transaction with a conditional update: the commit rule
//! (`UPDATE ... WHERE epoch = $expected`), gap-free sequence numbers (the conversation row is the
//! counter and its lock), one DM per pair (a unique key), one-time key packages and links
//! (`DELETE`/`UPDATE ... RETURNING` under `FOR UPDATE SKIP LOCKED`/row locks).
//!
//! SQL stays plain (no extensions, no PL/pgSQL) so Postgres-compatible distributed SQL can run it.
//!
//! By concern: `schema` (migrations), `appends` (messages, group-committed), TLS in
//! `store/pg_tls.rs`, and here the store itself and the row helpers its methods share. The
//! methods are in one file per resource, as the traits that make up `Store` are: `accounts`,
//! `key_packages`, `conversations`, `messages`, `links` and `operator`. The rules both backends
//! keep are in `store/rules.rs`.

use async_trait::async_trait;
use deadpool_postgres::{Manager, Pool};
use sotto_api::{Accepted, InboxItem, LogEntry, B64};
use std::collections::HashMap;
use std::sync::Arc;

use super::*;

/// A failure as a [`StoreError`]: PostgreSQL out of disk space (`53100 disk_full`) is
/// [`StoreError::Full`], anything else [`StoreError::Backend`]. Shadows the generic `backend`.
fn backend(e: impl IntoStoreError) -> StoreError {
    e.into_store_error()
}

trait IntoStoreError {
    fn into_store_error(self) -> StoreError;
}

impl IntoStoreError for tokio_postgres::Error {
    fn into_store_error(self) -> StoreError {
        if self.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL) {
            StoreError::Full
        } else if self.as_db_error().is_none() {
            // Connecting, TLS or I/O: the causes say what went wrong (a certificate that does not
            // verify, a refused connection) and hold no data. A database's own errors may quote
            // rows, so they keep only their first line.
            StoreError::Backend(super::pg_tls::with_causes(&self))
        } else {
            super::backend(self)
        }
    }
}

impl IntoStoreError for deadpool_postgres::PoolError {
    fn into_store_error(self) -> StoreError {
        match self {
            deadpool_postgres::PoolError::Backend(e) => e.into_store_error(),
            other => super::backend(other),
        }
    }
}

/// The database's clock in Unix seconds, as SQL: every row is stamped with it (not with the
/// node's clock, which may be off), so one conversation's entries are stamped in order whichever
/// node accepted them, and retention takes a prefix of a conversation, never entries from its
/// middle. `clock_timestamp()`: the time when it is evaluated, after the conversation's row lock
/// is taken (a transaction's `now()` may be older than an earlier-committed entry's). A macro, so
/// that `concat!` puts it into statement text at compile time.
macro_rules! db_now {
    () => {
        "extract(epoch FROM clock_timestamp())::int8"
    };
}

/// How many log rows one retention statement deletes (a piece; the prune rests between pieces as
/// long as each took).
const PRUNE_ROWS_PER_STATEMENT: u64 = 500;

/// How many expired messages one statement of [`PostgresStore::expire`] deletes.
const EXPIRE_ROWS_PER_STATEMENT: u64 = 2000;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// PostgreSQL storage.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    appends: tokio::sync::mpsc::Sender<AppendJob>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// Whether a database error is a unique-key violation.
fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// The pool's way to open a connection: [`super::pg_tls::connect`], so that `prefer` falls back
/// to the clear as libpq does.
struct PreferConnect(super::pg_tls::MakeRustls);

impl deadpool_postgres::Connect for PreferConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let config = config.clone();
        Box::pin(async move {
            let (client, conn) = super::pg_tls::connect(&config, &self.0).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok((client, task))
        })
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`, with TLS as its `sslmode` says: see
    /// [`super::pg_tls`]), optionally inside `schema` (created if
    /// missing; tests use one schema each), and runs pending migrations.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let (mut config, tls) = super::pg_tls::parse(url).map_err(StoreError::Backend)?;
        if let Some(schema) = schema {
            if !schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(StoreError::Backend("invalid schema name".into()));
            }
            let (client, conn) = super::pg_tls::connect(&config, &tls)
                .await
                .map_err(backend)?;
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(backend)?;
            drop(client);
            let _ = task.await;
            config.options(format!("-c search_path={schema}"));
        }
        let manager = Manager::from_connect(
            config,
            PreferConnect(tls),
            deadpool_postgres::ManagerConfig::default(),
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(super::backend)?;
        let (appends, queue) = tokio::sync::mpsc::channel(MAX_APPEND_BATCH * APPENDERS * 4);
        let store = Self { pool, appends };
        store.migrate().await?;
        // Group commit: messages queued while a batch commits go together in the next one. The
        // appenders end when the last handle on the store (the queue's sender) is dropped.
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        for _ in 0..APPENDERS {
            let (pool, queue) = (store.pool.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut queue = queue.lock().await;
                        let Some(first) = queue.recv().await else {
                            return;
                        };
                        let mut batch = vec![first];
                        while batch.len() < MAX_APPEND_BATCH {
                            match queue.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    run_appends(&pool, batch).await;
                }
            });
        }
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        // Serialise concurrent starts of several nodes.
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS sotto_migrations (version BIGINT PRIMARY KEY);
             LOCK TABLE sotto_migrations IN EXCLUSIVE MODE;",
        )
        .await
        .map_err(backend)?;
        let done: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM sotto_migrations",
                &[],
            )
            .await
            .map_err(backend)?
            .get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(as_u64(done) as usize) {
            tx.batch_execute(sql).await.map_err(backend)?;
            tx.execute(
                "INSERT INTO sotto_migrations (version) VALUES ($1)",
                &[&(i as i64 + 1)],
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(backend)
    }
}

async fn insert_device(
    tx: &deadpool_postgres::Transaction<'_>,
    username: &str,
    device: &DeviceRecord,
    kps: &KeyPackages,
) -> Result<(), StoreError> {
    let n = tx
        .execute(
            "INSERT INTO devices (device_id, username, certificate, token_hash, created_at)
             SELECT $1, $2, $3, $4, $5
             WHERE NOT EXISTS (SELECT 1 FROM revoked_devices WHERE device_id = $1)
             ON CONFLICT (device_id) DO NOTHING",
            &[
                &device.device_id.as_str(),
                &username,
                &device.certificate,
                &&device.token_hash[..],
                &device.created_at,
            ],
        )
        .await
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::DeviceExists);
    }
    insert_key_packages(tx, &device.device_id, kps).await
}

async fn insert_key_packages(
    tx: &deadpool_postgres::Transaction<'_>,
    device_id: &str,
    kps: &KeyPackages,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO key_packages (device_id, suite, data, last_resort) VALUES ($1, $2, $3, $4)",
        )
        .await
        .map_err(backend)?;
    for (suite, kp) in &kps.one_time {
        tx.execute(&stmt, &[&device_id, &i32::from(*suite), kp, &false])
            .await
            .map_err(backend)?;
    }
    for (suite, lr) in &kps.last_resort {
        tx.execute(
            "DELETE FROM key_packages WHERE device_id = $1 AND suite = $2 AND last_resort",
            &[&device_id, &i32::from(*suite)],
        )
        .await
        .map_err(backend)?;
        tx.execute(&stmt, &[&device_id, &i32::from(*suite), lr, &true])
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// See the SQLite backend's `apply_members`: the same rules, inside the commit's transaction.
async fn apply_members(
    tx: &deadpool_postgres::Transaction<'_>,
    conversation: &str,
    kind: &str,
    seq: i64,
    commit: &NewCommit,
) -> Result<(), StoreError> {
    let keep: Vec<String> = commit.members.iter().map(|(d, _)| d.clone()).collect();
    tx.execute(
        "DELETE FROM conversation_devices WHERE conversation_id = $1 AND NOT (device_id = ANY($2))",
        &[&conversation, &keep],
    )
    .await
    .map_err(backend)?;
    let ins = tx
        .prepare_cached(
            "INSERT INTO conversation_devices (conversation_id, device_id, username, acked_seq)
             SELECT $1, $2, $3, $4
             WHERE EXISTS (SELECT 1 FROM devices WHERE device_id = $2 FOR SHARE)
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(backend)?;
    for (d, u) in &commit.members {
        tx.execute(&ins, &[&conversation, d, u, &(seq - 1)])
            .await
            .map_err(backend)?;
    }
    if kind != "group" {
        return Ok(());
    }
    let welcomed = commit
        .welcome
        .as_ref()
        .map_or(&[][..], |(_, d)| d.as_slice());
    let before: Vec<String> = tx
        .query(
            "SELECT username FROM departed WHERE conversation_id = $1",
            &[&conversation],
        )
        .await
        .map_err(backend)?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let (members, departed) = super::rules::group_after_commit(&commit.members, welcomed, &before);
    tx.execute(
        "DELETE FROM departed WHERE conversation_id = $1 AND NOT (username = ANY($2))",
        &[&conversation, &departed],
    )
    .await
    .map_err(backend)?;
    tx.execute(
        "DELETE FROM conversation_members WHERE conversation_id = $1",
        &[&conversation],
    )
    .await
    .map_err(backend)?;
    for m in &members {
        tx.execute(
            "INSERT INTO conversation_members (conversation_id, username) VALUES ($1, $2)",
            &[&conversation, m],
        )
        .await
        .map_err(backend)?;
    }
    Ok(())
}

async fn load_conversation(
    c: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<Option<ConversationRecord>, StoreError> {
    let Some(row) = c
        .query_opt(
            "SELECT kind, epoch, last_seq FROM conversations WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(backend)?
    else {
        return Ok(None);
    };
    let members = c
        .query(
            "SELECT username FROM conversation_members WHERE conversation_id = $1 ORDER BY username",
            &[&id],
        )
        .await
        .map_err(backend)?
        .into_iter()
        .map(|r| stored(r.get::<_, String>(0)))
        .collect::<Result<_, _>>()?;
    let departed = c
        .query(
            "SELECT username FROM departed WHERE conversation_id = $1 ORDER BY username",
            &[&id],
        )
        .await
        .map_err(backend)?
        .into_iter()
        .map(|r| stored(r.get::<_, String>(0)))
        .collect::<Result<_, _>>()?;
    Ok(Some(ConversationRecord {
        id: stored(id.to_owned())?,
        kind: stored_kind(row.get(0))?,
        epoch: as_u64(row.get(1)),
        last_seq: as_u64(row.get(2)),
        members,
        departed,
    }))
}

/// Why a conditional conversation update matched no row.
async fn stale_or_missing(tx: &impl deadpool_postgres::GenericClient, id: &str) -> StoreError {
    match tx
        .query_opt("SELECT epoch FROM conversations WHERE id = $1", &[&id])
        .await
    {
        Ok(Some(row)) => StoreError::StaleEpoch {
            current: as_u64(row.get(0)),
        },
        Ok(None) => StoreError::NotFound("conversation"),
        Err(e) => backend(e),
    }
}

/// The member devices of a conversation to wake (see [`Store::wake_list`]).
async fn wake_devices(
    c: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<Vec<String>, StoreError> {
    let stmt = c
        .prepare_cached(super::rules::WAKE_TREE_DEVICES)
        .await
        .map_err(backend)?;
    let mut out: Vec<String> = c
        .query(&stmt, &[&id])
        .await
        .map_err(backend)?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if out.is_empty() {
        out = c
            .query(super::rules::WAKE_BEFORE_FIRST_COMMIT, &[&id])
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
    }
    Ok(out)
}

/// Runs `stmt`, a DELETE of at most `piece` rows (its last parameter, after `params`), until a
/// run deletes fewer: each run its own transaction, so a send waits for one piece's row locks at
/// most. With `rest`, sleeps as long as each piece took, so the deletion has at most half of the
/// database's time and sends the rest. Returns how many rows went.
async fn delete_in_pieces(
    c: &deadpool_postgres::Object,
    stmt: &tokio_postgres::Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    piece: u64,
    rest: bool,
) -> Result<u64, StoreError> {
    let limit = as_i64(piece);
    let mut all = params.to_vec();
    all.push(&limit);
    let mut gone = 0;
    loop {
        let started = std::time::Instant::now();
        let n = c.execute(stmt, &all).await.map_err(backend)?;
        gone += n;
        if n < piece {
            return Ok(gone);
        }
        if rest {
            tokio::time::sleep(started.elapsed()).await;
        }
    }
}

mod accounts;
mod appends;
mod conversations;
mod key_packages;
mod links;
mod messages;
mod operator;
mod schema;

use appends::*;
use schema::*;
