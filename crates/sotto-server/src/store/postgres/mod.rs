//! The PostgreSQL backend, for several stateless `sottod` nodes over one database. Every rule that
//! must hold across nodes is one transaction with a conditional update: the commit rule
//! (`UPDATE ... WHERE epoch = $expected`), gap-free sequence numbers (the conversation row is the
//! counter and its lock), one DM per pair (a unique key), one-time key packages and links
//! (`DELETE`/`UPDATE ... RETURNING` under `FOR UPDATE SKIP LOCKED`/row locks).
//!
//! SQL stays plain (no extensions, no PL/pgSQL) so Postgres-compatible distributed SQL can run it.
//!
//! By concern: `schema` (migrations), `appends` (messages, group-committed), TLS in
//! `store/pg_tls.rs`, and here the `Store` methods and the row helpers they share. The rules both
//! backends keep are in `store/rules.rs`.

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
            let (client, conn) = config.connect(tls.clone()).await.map_err(backend)?;
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(backend)?;
            drop(client);
            let _ = task.await;
            config.options(format!("-c search_path={schema}"));
        }
        let manager = Manager::new(config, tls);
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

#[async_trait]
impl Store for PostgresStore {
    async fn create_account(
        &self,
        username: &str,
        identity_key: &[u8],
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // A deleted account's name stays taken. (A registration racing the deletion of the same
        // name can still land: it checked before the deletion committed. The operator sees it in
        // `admin accounts`.)
        let n = tx
            .execute(
                "INSERT INTO accounts (username, identity_key, created_at)
                 SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM deleted_accounts WHERE username = $1)
                 ON CONFLICT (username) DO NOTHING",
                &[&username, &identity_key, &device.created_at],
            )
            .await
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::UsernameTaken);
        }
        insert_device(&tx, username, &device, &kps).await?;
        tx.commit().await.map_err(backend)
    }

    async fn revoke_device(
        &self,
        username: &str,
        device_id: &str,
        caller: &str,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // Lock the account's devices: two devices revoking each other at once cannot both go.
        let devices: Vec<String> = tx
            .query(
                "SELECT device_id FROM devices WHERE username = $1 FOR UPDATE",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        super::rules::check_revoke(&devices, device_id, caller)?;
        // The devices row goes before the membership rows and links: a commit or a link being
        // made at the same moment holds a share lock on it (see apply_members, create_link), so
        // these deletes run after it committed and see its rows.
        for sql in [
            "DELETE FROM key_packages WHERE device_id = $1",
            "DELETE FROM inbox WHERE device_id = $1",
            "DELETE FROM devices WHERE device_id = $1",
            "DELETE FROM conversation_devices WHERE device_id = $1",
        ] {
            tx.execute(sql, &[&device_id]).await.map_err(backend)?;
        }
        tx.execute(
            "DELETE FROM links WHERE username = $1 AND NOT used",
            &[&username],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            concat!(
                "INSERT INTO revoked_devices (device_id, username, revoked_at) VALUES ($1, $2, ",
                db_now!(),
                ")"
            ),
            &[&device_id, &username],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn device_auth(&self, device_id: &str) -> Result<Option<DeviceAuth>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT d.username, d.token_hash, a.locked FROM devices d
                 JOIN accounts a ON a.username = d.username WHERE d.device_id = $1",
                &[&device_id],
            )
            .await
            .map_err(backend)?;
        row.map(|r| {
            let hash: Vec<u8> = r.get(1);
            Ok(DeviceAuth {
                username: r.get(0),
                token_hash: super::rules::token_hash(&hash)?,
                locked: r.get(2),
            })
        })
        .transpose()
    }

    async fn account(&self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let c = self.client().await?;
        let Some(row) = c
            .query_opt(
                "SELECT identity_key FROM accounts WHERE username = $1",
                &[&username],
            )
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let devices = c
            .query(
                "SELECT device_id, certificate, token_hash, created_at FROM devices
                 WHERE username = $1 ORDER BY created_at, device_id",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| {
                let hash: Vec<u8> = r.get(2);
                Ok(DeviceRecord {
                    device_id: stored(r.get(0))?,
                    certificate: r.get(1),
                    token_hash: super::rules::token_hash(&hash)?,
                    created_at: r.get(3),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let revoked: Vec<DeviceId> = c
            .query(
                "SELECT device_id FROM revoked_devices WHERE username = $1 ORDER BY device_id",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| stored(r.get(0)))
            .collect::<Result<_, _>>()?;
        Ok(Some(AccountRecord {
            username: stored(username.to_owned())?,
            identity_key: row.get(0),
            devices,
            revoked,
        }))
    }

    async fn add_key_packages(&self, device_id: &str, kps: KeyPackages) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        insert_key_packages(&tx, device_id, &kps).await?;
        tx.commit().await.map_err(backend)
    }

    async fn key_package_count(&self, device_id: &str, suite: u16) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND suite = $2 AND NOT last_resort",
                &[&device_id, &i32::from(suite)],
            )
            .await
            .map_err(backend)?;
        Ok(as_u64(row.get(0)))
    }

    async fn claim_key_packages(
        &self,
        username: &str,
        only: &[String],
        exclude: &str,
        suite: u16,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let suite = i32::from(suite);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let all: Vec<String> = tx
            .query(
                "SELECT device_id FROM devices WHERE username = $1 ORDER BY created_at, device_id",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let devices = super::rules::claim_targets(all, only, exclude);
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            // A one-time package, locked so two nodes never hand out the same one.
            let one_time = tx
                .query_opt(
                    "SELECT id, data FROM key_packages WHERE device_id = $1 AND suite = $2 AND NOT last_resort
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[&d, &suite],
                )
                .await
                .map_err(backend)?;
            if let Some(row) = one_time {
                let id: i64 = row.get(0);
                tx.execute("DELETE FROM key_packages WHERE id = $1", &[&id])
                    .await
                    .map_err(backend)?;
                out.push((d, row.get(1)));
                continue;
            }
            // Else the last-resort package: never deleted, so concurrent claims share it unlocked.
            // (A claim that finds every one-time package locked by another claim takes it too,
            // rather than wait: SQLite's single writer never sees that case.)
            let last_resort = tx
                .query_opt(
                    "SELECT data FROM key_packages WHERE device_id = $1 AND suite = $2 AND last_resort
                     ORDER BY id LIMIT 1",
                    &[&d, &suite],
                )
                .await
                .map_err(backend)?;
            let Some(row) = last_resort else {
                return Err(StoreError::NoKeyPackage(d));
            };
            out.push((d, row.get(0)));
        }
        tx.commit().await.map_err(backend)?;
        Ok(out)
    }

    async fn get_or_create_dm(
        &self,
        a: &str,
        b: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let (x, y, dm_key) = super::rules::dm_key(a, b);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let inserted = tx
            .execute(
                "INSERT INTO conversations (id, kind, dm_key, epoch, last_seq, created_at)
                 VALUES ($1, 'dm', $2, 0, 0, $3) ON CONFLICT (dm_key) DO NOTHING",
                &[&new_id, &dm_key, &now],
            )
            .await
            .map_err(backend)?;
        if inserted == 1 {
            for m in [x, y] {
                tx.execute(
                    "INSERT INTO conversation_members (conversation_id, username) VALUES ($1, $2)",
                    &[&new_id, &m],
                )
                .await
                .map_err(backend)?;
            }
        }
        let id: String = tx
            .query_one("SELECT id FROM conversations WHERE dm_key = $1", &[&dm_key])
            .await
            .map_err(backend)?
            .get(0);
        let rec = load_conversation(&tx, &id)
            .await?
            .ok_or(StoreError::NotFound("conversation"))?;
        tx.commit().await.map_err(backend)?;
        Ok(rec)
    }

    async fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let c = self.client().await?;
        load_conversation(&c, id).await
    }

    async fn membership(
        &self,
        id: &str,
        username: &str,
        device: &str,
    ) -> Result<Option<ConversationHead>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT c.epoch, c.last_seq FROM conversation_devices d
                 JOIN conversation_members m ON m.conversation_id = d.conversation_id AND m.username = d.username
                 JOIN conversations c ON c.id = d.conversation_id
                 WHERE d.conversation_id = $1 AND d.device_id = $2 AND d.username = $3",
            )
            .await
            .map_err(backend)?;
        let row = c
            .query_opt(&stmt, &[&id, &device, &username])
            .await
            .map_err(backend)?;
        Ok(row.map(|r| ConversationHead {
            epoch: as_u64(r.get(0)),
            last_seq: as_u64(r.get(1)),
        }))
    }

    async fn conversations_of(
        &self,
        username: &str,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let c = self.client().await?;
        let ids: Vec<String> = c
            .query(
                "SELECT conversation_id FROM conversation_members WHERE username = $1 ORDER BY conversation_id",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rec) = load_conversation(&c, &id).await? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    async fn append_commit(
        &self,
        conversation: &str,
        commit: NewCommit,
    ) -> Result<Accepted, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // The commit rule: only the first commit for the current epoch matches.
        let row = tx
            .query_opt(
                "UPDATE conversations SET epoch = epoch + 1, last_seq = last_seq + 1, state = $3,
                 expiry_secs = $4
                 WHERE id = $1 AND epoch = $2 RETURNING last_seq, epoch, kind",
                &[
                    &conversation,
                    &as_i64(commit.epoch),
                    &commit.state,
                    &commit
                        .expiry_secs
                        .map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
                ],
            )
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            return Err(stale_or_missing(&tx, conversation).await);
        };
        let (seq, epoch, kind): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        let accepted_at = insert_log(
            &tx,
            conversation,
            seq,
            commit.epoch,
            EntryKind::Commit,
            &commit.sender_device,
            &commit.commit,
        )
        .await?;
        apply_members(&tx, conversation, &kind, seq, &commit).await?;
        if let Some((welcome, devices)) = &commit.welcome {
            let welcome_id: i64 = tx
                .query_one(
                    concat!(
                        "INSERT INTO welcomes (conversation_id, data, created_at, ratchet_tree)
                         VALUES ($1, $2, ",
                        db_now!(),
                        ", $3) RETURNING id"
                    ),
                    &[&conversation, welcome, &commit.ratchet_tree],
                )
                .await
                .map_err(backend)?
                .get(0);
            let empty: &[u8] = &[];
            for d in devices {
                tx.execute(
                    "INSERT INTO inbox (device_id, conversation_id, seq, welcome, welcome_id) VALUES ($1, $2, $3, $4, $5)",
                    &[d, &conversation, &seq, &empty, &welcome_id],
                )
                .await
                .map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(Accepted {
            seq: as_u64(seq),
            epoch: as_u64(epoch),
            accepted_at,
            expires_at: None,
        })
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
        self.appends
            .send(job)
            .await
            .map_err(|_| StoreError::Backend("the appenders stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("an appender stopped".into()))?
    }

    async fn member_log(
        &self,
        conversation: &str,
        username: &str,
        device: &str,
        after: u64,
        limit: u32,
    ) -> Result<Option<(ConversationHead, Vec<LogEntry>)>, StoreError> {
        let Some(head) = self.membership(conversation, username, device).await? else {
            return Ok(None);
        };
        Ok(Some((
            head,
            self.log_after(conversation, after, limit).await?,
        )))
    }

    async fn log_after(
        &self,
        conversation: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT seq, epoch, kind, sender_device, data, created_at, expires_at FROM log
                 WHERE conversation_id = $1 AND seq > $2
                 AND (expires_at IS NULL OR expires_at > extract(epoch FROM now())::int8)
                 ORDER BY seq LIMIT $3",
                &[&conversation, &as_i64(after), &i64::from(limit)],
            )
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|r| {
                Ok(LogEntry {
                    seq: as_u64(r.get(0)),
                    epoch: as_u64(r.get(1)),
                    kind: kind_from_code(i64::from(r.get::<_, i16>(2))),
                    sender_device: stored(r.get(3))?,
                    data: B64(r.get(4)),
                    accepted_at: as_u64(r.get(5)),
                    expires_at: r.get::<_, Option<i64>>(6).map(as_u64),
                })
            })
            .collect()
    }

    async fn inbox(&self, device_id: &str) -> Result<Vec<InboxItem>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT i.id, i.conversation_id, i.seq, COALESCE(w.data, i.welcome), w.ratchet_tree
                 FROM inbox i LEFT JOIN welcomes w ON w.id = i.welcome_id
                 WHERE i.device_id = $1 ORDER BY i.id LIMIT 100",
                &[&device_id],
            )
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|r| {
                Ok(InboxItem {
                    id: as_u64(r.get(0)),
                    conversation: stored(r.get(1))?,
                    seq: as_u64(r.get(2)),
                    welcome: B64(r.get(3)),
                    ratchet_tree: r.get::<_, Option<Vec<u8>>>(4).map(B64),
                })
            })
            .collect()
    }

    async fn ack_inbox(&self, device_id: &str, up_to: u64) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM inbox WHERE device_id = $1 AND id <= $2",
            &[&device_id, &as_i64(up_to)],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn devices_of(&self, usernames: &[String]) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT device_id FROM devices WHERE username = ANY($1)",
                &[&usernames],
            )
            .await
            .map_err(backend)?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    async fn create_group(
        &self,
        creator: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        tx.execute(
            "INSERT INTO conversations (id, kind, epoch, last_seq, created_at) VALUES ($1, 'group', 0, 0, $2)",
            &[&new_id, &now()],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO conversation_members (conversation_id, username) VALUES ($1, $2)",
            &[&new_id, &creator],
        )
        .await
        .map_err(backend)?;
        let rec = load_conversation(&tx, new_id)
            .await?
            .ok_or(StoreError::NotFound("conversation"))?;
        tx.commit().await.map_err(backend)?;
        Ok(rec)
    }

    async fn group_state(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT epoch, state FROM conversations WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(backend)?;
        Ok(row.and_then(|r| {
            let state: Option<Vec<u8>> = r.get(1);
            state.map(|s| (as_u64(r.get(0)), s))
        }))
    }

    async fn leave(&self, id: &str, username: &str, admins: &[String]) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // Lock the conversation against a concurrent commit changing its members.
        tx.query_opt(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(backend)?
        .ok_or(StoreError::NotFound("conversation"))?;
        let n = tx
            .execute(
                "DELETE FROM conversation_members WHERE conversation_id = $1 AND username = $2",
                &[&id, &username],
            )
            .await
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::NotFound("conversation"));
        }
        if admins.iter().any(|a| a == username) {
            let remaining: Vec<String> = tx
                .query(
                    "SELECT username FROM conversation_members WHERE conversation_id = $1",
                    &[&id],
                )
                .await
                .map_err(backend)?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            super::rules::check_last_admin(username, admins, &remaining)?;
        }
        tx.execute(
            "INSERT INTO departed (conversation_id, username)
             SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM conversation_devices WHERE conversation_id = $1 AND username = $2)
             ON CONFLICT DO NOTHING",
            &[&id, &username],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn wake_list(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        wake_devices(&c, id).await
    }

    async fn save_cursors(&self, cursors: Vec<(String, String, u64)>) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let stmt = tx
            .prepare_cached(
                "UPDATE conversation_devices SET acked_seq = $3
                 WHERE conversation_id = $1 AND device_id = $2 AND acked_seq < $3",
            )
            .await
            .map_err(backend)?;
        for (conv, dev, seq) in &cursors {
            tx.execute(&stmt, &[conv, dev, &as_i64(*seq)])
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn prune(&self, older_than: i64) -> Result<u64, StoreError> {
        // In pieces of PRUNE_ROWS_PER_STATEMENT rows, each its own transaction: a send waits at
        // most for one piece's row locks, never for the whole prune (it used to be one
        // transaction, and the age rule read the whole log for want of an index).
        let c = self.client().await?;
        let read_floor = c
            .prepare_cached(
                "DELETE FROM log WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM log WHERE conversation_id = $1 AND seq <= $2
                     ORDER BY seq LIMIT $3))",
            )
            .await
            .map_err(backend)?;
        let too_old = c
            .prepare_cached(
                "DELETE FROM log WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM log WHERE created_at > 0 AND created_at < $1
                     ORDER BY created_at LIMIT $2))",
            )
            .await
            .map_err(backend)?;
        let piece = PRUNE_ROWS_PER_STATEMENT;
        let floors = c
            .query(
                "SELECT conversation_id, MIN(acked_seq) FROM conversation_devices GROUP BY conversation_id",
                &[],
            )
            .await
            .map_err(backend)?;
        let mut gone = 0u64;
        for r in floors {
            let (conv, floor): (String, i64) = (r.get(0), r.get(1));
            gone += delete_in_pieces(&c, &read_floor, &[&conv, &floor], piece, true).await?;
        }
        gone += delete_in_pieces(&c, &too_old, &[&older_than], piece, true).await?;
        c.execute(
            "DELETE FROM inbox WHERE welcome_id IN (SELECT id FROM welcomes WHERE created_at < $1)",
            &[&older_than],
        )
        .await
        .map_err(backend)?;
        c.execute(
            "DELETE FROM welcomes WHERE created_at < $1
             OR NOT EXISTS (SELECT 1 FROM inbox i WHERE i.welcome_id = welcomes.id)",
            &[&older_than],
        )
        .await
        .map_err(backend)?;
        Ok(gone)
    }

    async fn clock(&self) -> Result<i64, StoreError> {
        Ok(self
            .client()
            .await?
            .query_one("SELECT extract(epoch FROM now())::int8", &[])
            .await
            .map_err(backend)?
            .get(0))
    }

    async fn admin_accounts(&self) -> Result<Vec<AdminAccount>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT a.username, a.created_at, a.locked,
                        (SELECT COUNT(*) FROM devices d WHERE d.username = a.username),
                        (SELECT MAX(l.created_at) FROM log l JOIN devices d
                         ON d.device_id = l.sender_device WHERE d.username = a.username)
                 FROM accounts a ORDER BY a.username",
                &[],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| AdminAccount {
                username: r.get(0),
                created_at: r.get(1),
                locked: r.get(2),
                devices: as_u64(r.get(3)),
                last_active: r.get(4),
            })
            .collect())
    }

    async fn set_locked(&self, username: &str, locked: bool) -> Result<bool, StoreError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE accounts SET locked = $2 WHERE username = $1",
            &[&username, &locked],
        )
        .await
        .map(|n| n == 1)
        .map_err(backend)
    }

    async fn delete_account(&self, username: &str) -> Result<Option<DeletedAccount>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // Lock the account's row: a second deletion or a lock of the same account waits for this.
        if tx
            .query_opt(
                "SELECT 1 FROM accounts WHERE username = $1 FOR UPDATE",
                &[&username],
            )
            .await
            .map_err(backend)?
            .is_none()
        {
            return Ok(None);
        }
        let column = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.into_iter().map(|r| r.get(0)).collect()
        };
        let devices = column(
            tx.query(
                "SELECT device_id FROM devices WHERE username = $1 ORDER BY device_id",
                &[&username],
            )
            .await
            .map_err(backend)?,
        );
        // Its conversations, locked in id order as commits lock them, so that no commit changes
        // their members meanwhile.
        let conversations = column(
            tx.query(
                "SELECT c.id FROM conversations c
                 JOIN conversation_members m ON m.conversation_id = c.id
                 WHERE m.username = $1 ORDER BY c.id FOR UPDATE OF c",
                &[&username],
            )
            .await
            .map_err(backend)?,
        );
        tx.execute(
            "INSERT INTO departed (conversation_id, username)
             SELECT DISTINCT d.conversation_id, d.username FROM conversation_devices d
             WHERE d.username = $1 AND d.conversation_id = ANY($2)
             ON CONFLICT DO NOTHING",
            &[&username, &conversations],
        )
        .await
        .map_err(backend)?;
        for sql in [
            "DELETE FROM conversation_members WHERE username = $1",
            "DELETE FROM key_packages WHERE device_id IN (SELECT device_id FROM devices WHERE username = $1)",
            "DELETE FROM inbox WHERE device_id IN (SELECT device_id FROM devices WHERE username = $1)",
            "DELETE FROM links WHERE username = $1",
            "DELETE FROM revoked_devices WHERE username = $1",
            "DELETE FROM devices WHERE username = $1",
            "DELETE FROM accounts WHERE username = $1",
        ] {
            tx.execute(sql, &[&username]).await.map_err(backend)?;
        }
        tx.execute(
            "INSERT INTO deleted_accounts (username, deleted_at) VALUES ($1, $2)",
            &[&username, &now()],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(DeletedAccount {
            devices,
            conversations,
        }))
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .query_one("SELECT 1", &[])
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn expire(&self, now: i64) -> Result<u64, StoreError> {
        // In pieces of their own transactions, found through `log_expiring`: a send waits at
        // most for one piece's row locks, never for the whole purge.
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "DELETE FROM log WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM log WHERE expires_at IS NOT NULL AND expires_at <= $1
                     ORDER BY expires_at LIMIT $2))",
            )
            .await
            .map_err(backend)?;
        delete_in_pieces(&c, &stmt, &[&now], EXPIRE_ROWS_PER_STATEMENT, false).await
    }

    async fn create_link(
        &self,
        link_id: &str,
        username: &str,
        device: &str,
        bundle: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        // The share lock on the device's row orders this against a revocation (see revoke_device).
        match c
            .execute(
                "INSERT INTO links (link_id, username, bundle, expires_at)
                 SELECT $1, $2, $3, $4
                 WHERE EXISTS (SELECT 1 FROM devices WHERE device_id = $5 AND username = $2 FOR SHARE)",
                &[&link_id, &username, &bundle, &expires_at, &device],
            )
            .await
        {
            Ok(0) => Err(StoreError::CallerGone),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::LinkTaken),
            Err(e) => Err(backend(e)),
        }
    }

    async fn fetch_link(
        &self,
        link_id: &str,
        now: i64,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT username, bundle FROM links WHERE link_id = $1 AND NOT used AND expires_at > $2",
                &[&link_id, &now],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn redeem_link(
        &self,
        link_id: &str,
        now: i64,
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<String, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let row = tx
            .query_opt(
                "UPDATE links SET used = TRUE, bundle = ''::bytea
                 WHERE link_id = $1 AND NOT used AND expires_at > $2 RETURNING username",
                &[&link_id, &now],
            )
            .await
            .map_err(backend)?;
        let username: String = row.ok_or(StoreError::LinkExpired)?.get(0);
        insert_device(&tx, &username, &device, &kps).await?;
        tx.commit().await.map_err(backend)?;
        Ok(username)
    }
}

mod appends;
mod schema;

use appends::*;
use schema::*;
