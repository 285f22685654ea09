//! The device's local store: one SQLite file holding openmls' state (through
//! `openmls_sqlite_storage`) and Sotto's own tables, so MLS changes and the messages they produce are
//! committed in one transaction.

use std::path::Path;

use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{params, Connection, OptionalExtension};
use sotto_proto::mls::Trust;
use sotto_proto::{IdentityPublicKey, Username};

use crate::ClientError;

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE sotto_config (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE sotto_pins (username TEXT PRIMARY KEY, identity_key BLOB NOT NULL, pinned_at INTEGER NOT NULL);
CREATE TABLE sotto_conversations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    peer TEXT,
    cursor INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'ok',
    status_detail TEXT
);
CREATE UNIQUE INDEX sotto_dm_peer ON sotto_conversations(peer) WHERE kind = 'dm';
CREATE TABLE sotto_messages (
    conversation TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seq INTEGER,
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    text TEXT,
    reply_to TEXT,
    outgoing INTEGER NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0,
    local_order INTEGER NOT NULL,
    PRIMARY KEY (conversation, message_id)
);
CREATE INDEX sotto_messages_unshown ON sotto_messages(shown, local_order);
"#];

/// serde_json codec for openmls' SQLite storage.
#[derive(Debug, Default)]
pub(crate) struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;
    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// openmls provider over a borrowed connection.
pub(crate) struct Provider<'a> {
    crypto: &'a RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> Provider<'a> {
    pub(crate) fn new(crypto: &'a RustCrypto, conn: &'a Connection) -> Self {
        Self {
            crypto,
            storage: SqliteStorageProvider::new(conn),
        }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

pub(crate) fn storage_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Storage(e.to_string())
}

/// Opens (creating) the local database under `home`.
pub(crate) fn open(home: &Path) -> Result<Connection, ClientError> {
    std::fs::create_dir_all(home).map_err(storage_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
    }
    let mut conn = Connection::open(home.join("sotto.db")).map_err(storage_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(storage_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(storage_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(storage_err)?;
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn)
        .run_migrations()
        .map_err(storage_err)?;
    let done: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(storage_err)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
        let tx = conn.transaction().map_err(storage_err)?;
        tx.execute_batch(sql).map_err(storage_err)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(storage_err)?;
        tx.commit().map_err(storage_err)?;
    }
    Ok(conn)
}

pub(crate) fn get_config(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
    conn.query_row(
        "SELECT value FROM sotto_config WHERE key = ?1",
        params![key],
        |r| r.get(0),
    )
    .optional()
    .map_err(storage_err)
}

pub(crate) fn get_config_str(conn: &Connection, key: &str) -> Result<Option<String>, ClientError> {
    Ok(get_config(conn, key)?.and_then(|v| String::from_utf8(v).ok()))
}

pub(crate) fn set_config(conn: &Connection, key: &str, value: &[u8]) -> Result<(), ClientError> {
    conn.execute(
        "INSERT INTO sotto_config (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(|_| ())
    .map_err(storage_err)
}

pub(crate) fn delete_config(conn: &Connection, key: &str) -> Result<(), ClientError> {
    conn.execute("DELETE FROM sotto_config WHERE key = ?1", params![key])
        .map(|_| ())
        .map_err(storage_err)
}

/// The pinned identity keys, read from the local store.
pub(crate) struct Pins<'a>(pub(crate) &'a Connection);

impl Trust for Pins<'_> {
    fn pinned_identity(&self, username: &Username) -> Option<IdentityPublicKey> {
        let key: Option<Vec<u8>> = self
            .0
            .query_row(
                "SELECT identity_key FROM sotto_pins WHERE username = ?1",
                params![username.as_str()],
                |r| r.get(0),
            )
            .optional()
            .ok()
            .flatten();
        key.and_then(|k| IdentityPublicKey::from_bytes(&k).ok())
    }
}

/// A conversation as this device knows it.
#[derive(Debug, Clone)]
pub(crate) struct LocalConversation {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) peer: Option<String>,
    pub(crate) cursor: u64,
    pub(crate) status: String,
    pub(crate) status_detail: String,
}

pub(crate) fn conversation(
    conn: &Connection,
    id: &str,
) -> Result<Option<LocalConversation>, ClientError> {
    conn.query_row(
        "SELECT id, cursor, status, status_detail, kind, peer FROM sotto_conversations WHERE id = ?1",
        params![id],
        |r| {
            Ok(LocalConversation {
                id: r.get(0)?,
                cursor: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                status: r.get(2)?,
                status_detail: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                kind: r.get(4)?,
                peer: r.get(5)?,
            })
        },
    )
    .optional()
    .map_err(storage_err)
}

pub(crate) fn upsert_conversation(
    conn: &Connection,
    id: &str,
    kind: &str,
    peer: Option<&str>,
) -> Result<(), ClientError> {
    conn.execute(
        "INSERT INTO sotto_conversations (id, kind, peer) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET peer = COALESCE(excluded.peer, peer)",
        params![id, kind, peer],
    )
    .map(|_| ())
    .map_err(storage_err)
}

pub(crate) fn set_cursor(conn: &Connection, id: &str, cursor: u64) -> Result<(), ClientError> {
    conn.execute(
        "UPDATE sotto_conversations SET cursor = MAX(cursor, ?2) WHERE id = ?1",
        params![id, i64::try_from(cursor).unwrap_or(i64::MAX)],
    )
    .map(|_| ())
    .map_err(storage_err)
}

pub(crate) fn set_status(
    conn: &Connection,
    id: &str,
    status: &str,
    detail: &str,
) -> Result<(), ClientError> {
    conn.execute(
        "UPDATE sotto_conversations SET status = ?2, status_detail = ?3 WHERE id = ?1",
        params![id, status, detail],
    )
    .map(|_| ())
    .map_err(storage_err)
}

/// A message to store. Returns whether it was new (not a duplicate by message id).
pub(crate) struct NewMessage<'a> {
    pub(crate) conversation: &'a str,
    pub(crate) message_id: &'a str,
    pub(crate) seq: Option<u64>,
    pub(crate) sender: &'a str,
    pub(crate) sender_device: &'a str,
    pub(crate) sent_at_ms: u64,
    pub(crate) text: Option<&'a str>,
    pub(crate) reply_to: Option<&'a str>,
    pub(crate) outgoing: bool,
    /// Already shown to the user (sent from this very device).
    pub(crate) shown: bool,
}

pub(crate) fn insert_message(conn: &Connection, m: &NewMessage<'_>) -> Result<bool, ClientError> {
    let n = conn
        .execute(
            "INSERT OR IGNORE INTO sotto_messages
             (conversation, message_id, seq, sender, sender_device, sent_at_ms, text, reply_to, outgoing, shown, local_order)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                     (SELECT COALESCE(MAX(local_order), 0) + 1 FROM sotto_messages))",
            params![
                m.conversation,
                m.message_id,
                m.seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
                m.sender,
                m.sender_device,
                i64::try_from(m.sent_at_ms).unwrap_or(i64::MAX),
                m.text,
                m.reply_to,
                m.outgoing as i64,
                m.shown as i64,
            ],
        )
        .map_err(storage_err)?;
    Ok(n == 1)
}
