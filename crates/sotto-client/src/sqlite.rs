//! The SQLite backend of the client store contract: one file under the device's home, one
//! connection, WAL with `synchronous=FULL`, so that a transaction the engine committed is on disk.
//!
//! Schema 1 is what the first client wrote (Sotto's tables beside `openmls_sqlite_storage`'s);
//! schema 2 moves the MLS state into one key-value table under the engine's key scheme (copying
//! every row of the old openmls tables in the same transaction, then dropping them) and adds the
//! undecryptable entries.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};
use sotto_engine::store::mls::{labels, storage_key};
use sotto_engine::store::{
    AttachmentRecord, ContentKind, ConversationKind, ConversationRecord, ConversationStatus,
    MessageRecord, PinRecord, Store, StoreError, Tx, UndecryptableRecord, UndecryptableState,
};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

const SCHEMA_1: &str = r#"
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
"#;

const SCHEMA_2: &str = r#"
CREATE TABLE sotto_mls (key BLOB PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE sotto_undecryptable (
    conversation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sender_device TEXT NOT NULL,
    sender TEXT,
    state TEXT NOT NULL,
    tries INTEGER NOT NULL,
    first_failed_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (conversation, seq)
);
"#;

/// Rich messages: what a stored message is (a text, or a reaction, edit or unsend acting on the
/// `target` message), and the MIMI salt of one this device sent (to encode it again).
const SCHEMA_3: &str = r#"
ALTER TABLE sotto_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
ALTER TABLE sotto_messages ADD COLUMN target TEXT;
ALTER TABLE sotto_messages ADD COLUMN salt BLOB;
UPDATE sotto_messages SET kind = 'unsupported' WHERE text IS NULL;
CREATE INDEX sotto_messages_target ON sotto_messages(conversation, target) WHERE target IS NOT NULL;
CREATE INDEX sotto_messages_id ON sotto_messages(message_id);
CREATE TABLE sotto_receipts (
    conversation TEXT NOT NULL,
    message_id TEXT NOT NULL,
    username TEXT NOT NULL,
    status INTEGER NOT NULL,
    PRIMARY KEY (conversation, message_id, username)
);
"#;

/// The server's acceptance time of each message (Unix seconds; 0 for one stored before, or not
/// acknowledged yet): the edit and unsend windows are measured on it.
const SCHEMA_4: &str = r#"
ALTER TABLE sotto_messages ADD COLUMN accepted_at INTEGER NOT NULL DEFAULT 0;
"#;

/// The file a message carries (JSON of the engine's `AttachmentRecord`: blob id, file key, size,
/// hash, type, name, preview, where this device saved it).
const SCHEMA_5: &str = r#"
ALTER TABLE sotto_messages ADD COLUMN attachment TEXT;
"#;

/// Disappearing messages: when each record goes (Unix seconds), or how long after it is shown
/// (0: vanish mode), with an index for the purge.
const SCHEMA_6: &str = r#"
ALTER TABLE sotto_messages ADD COLUMN expires_at INTEGER;
ALTER TABLE sotto_messages ADD COLUMN after_shown INTEGER;
CREATE INDEX sotto_messages_expiring ON sotto_messages(expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX sotto_messages_on_show ON sotto_messages(after_shown) WHERE after_shown IS NOT NULL;
"#;

/// The tables `openmls_sqlite_storage` 0.3 created (all of them, used or not).
const LEGACY_TABLES: &[&str] = &[
    "openmls_encryption_keys",
    "openmls_epoch_keys_pairs",
    "openmls_group_data",
    "openmls_key_packages",
    "openmls_own_leaf_nodes",
    "openmls_proposals",
    "openmls_psks",
    "openmls_signature_keys",
    "openmls_sqlite_storage_migrations",
    "registered_vc_emulation_epochs",
    "vc_emulation_bindings",
    "vc_emulation_group_secrets",
    "vc_operation_trees",
    "vc_retained_key_package_material",
];

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

fn count(conn: &Connection, table: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
}

/// Copies `openmls_sqlite_storage`'s rows into `sotto_mls` under the engine's key scheme. Both
/// encode keys and values as serde_json, so values move unchanged; lists stored a row per item
/// become one JSON array.
fn migrate_legacy_mls(conn: &Connection) -> Result<(), StoreError> {
    if !table_exists(conn, "openmls_group_data").map_err(backend)? {
        return Ok(());
    }
    let put = |k: Vec<u8>, v: Vec<u8>| -> Result<(), StoreError> {
        conn.execute(
            "INSERT OR REPLACE INTO sotto_mls (key, value) VALUES (?1, ?2)",
            params![k, v],
        )
        .map(|_| ())
        .map_err(backend)
    };
    let rows = |sql: &str| -> Result<Vec<Vec<Vec<u8>>>, StoreError> {
        let mut stmt = conn.prepare(sql).map_err(backend)?;
        let n = stmt.column_count();
        let out = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            Ok(t.to_vec())
                        }
                        rusqlite::types::ValueRef::Integer(i) => Ok(i.to_string().into_bytes()),
                        _ => Ok(Vec::new()),
                    })
                    .collect::<rusqlite::Result<Vec<Vec<u8>>>>()
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        Ok(out)
    };
    for r in rows("SELECT data_type, group_id, group_data FROM openmls_group_data")? {
        let label = std::str::from_utf8(&r[0]).map_err(|_| corrupt("legacy group data type"))?;
        put(storage_key(label, &[&r[1]]), r[2].clone())?;
    }
    for (table, label) in [
        (
            "SELECT public_key, key_pair FROM openmls_encryption_keys",
            labels::ENCRYPTION_KEY,
        ),
        (
            "SELECT key_package_ref, key_package FROM openmls_key_packages",
            labels::KEY_PACKAGE,
        ),
        ("SELECT psk_id, psk_bundle FROM openmls_psks", labels::PSK),
        (
            "SELECT public_key, signature_key FROM openmls_signature_keys",
            labels::SIGNATURE_KEY,
        ),
    ] {
        for r in rows(table)? {
            put(storage_key(label, &[&r[0]]), r[1].clone())?;
        }
    }
    for r in rows("SELECT group_id, epoch_id, leaf_index, key_pairs FROM openmls_epoch_keys_pairs")?
    {
        put(
            storage_key(labels::EPOCH_KEY_PAIRS, &[&r[0], &r[1], &r[2]]),
            r[3].clone(),
        )?;
    }
    // Lists: one JSON array per group, in the order the rows were written.
    let mut lists: std::collections::BTreeMap<Vec<u8>, Vec<Vec<u8>>> = Default::default();
    for r in rows("SELECT group_id, leaf_node FROM openmls_own_leaf_nodes ORDER BY id")? {
        lists.entry(r[0].clone()).or_default().push(r[1].clone());
    }
    for (group, items) in lists {
        put(
            storage_key(labels::OWN_LEAF_NODES, &[&group]),
            json_array(&items),
        )?;
    }
    let mut refs: std::collections::BTreeMap<Vec<u8>, Vec<Vec<u8>>> = Default::default();
    for r in rows("SELECT group_id, proposal_ref, proposal FROM openmls_proposals ORDER BY rowid")?
    {
        put(storage_key(labels::PROPOSAL, &[&r[0], &r[1]]), r[2].clone())?;
        refs.entry(r[0].clone()).or_default().push(r[1].clone());
    }
    for (group, items) in refs {
        put(
            storage_key(labels::PROPOSAL_REFS, &[&group]),
            json_array(&items),
        )?;
    }
    // Refuse to drop anything this migration does not understand.
    for t in [
        "vc_emulation_group_secrets",
        "vc_emulation_bindings",
        "vc_operation_trees",
    ] {
        if table_exists(conn, t).map_err(backend)? && count(conn, t).map_err(backend)? > 0 {
            return Err(corrupt(
                "this device holds virtual-client MLS state Sotto never writes",
            ));
        }
    }
    for t in LEGACY_TABLES {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {t}"))
            .map_err(backend)?;
    }
    Ok(())
}

fn json_array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"[".to_vec();
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(it);
    }
    out.push(b']');
    out
}

/// The newest schema this version writes.
const SCHEMA_VERSION: i64 = 6;

/// Opens (creating, migrating) the database `home/sotto.db`.
fn open_db(home: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(home).map_err(backend)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
    }
    let mut conn = Connection::open(home.join("sotto.db")).map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    // Deleted content is overwritten with zeros rather than left in free pages (and the WAL is
    // truncated after a wipe): an unsent message leaves the files, not only the table.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(backend)?;
    let done: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if done > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "this device's data ({}) was written by a newer version of Sotto (schema {done}); upgrade sotto to open it",
            home.display()
        )));
    }
    for version in (done.max(0) + 1)..=SCHEMA_VERSION {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        // Another process may have migrated while this one waited for the lock.
        let now: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        if now >= version {
            continue;
        }
        match version {
            1 => tx.execute_batch(SCHEMA_1).map_err(backend)?,
            2 => {
                tx.execute_batch(SCHEMA_2).map_err(backend)?;
                migrate_legacy_mls(&tx)?;
            }
            3 => tx.execute_batch(SCHEMA_3).map_err(backend)?,
            4 => tx.execute_batch(SCHEMA_4).map_err(backend)?,
            5 => tx.execute_batch(SCHEMA_5).map_err(backend)?,
            6 => tx.execute_batch(SCHEMA_6).map_err(backend)?,
            _ => {}
        }
        tx.pragma_update(None, "user_version", version)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(conn)
}

/// A device's store in SQLite.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store under `home` (creating the directory and migrating older schemas).
    pub fn open(home: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Mutex::new(open_db(home)?),
        })
    }
}

impl Store for SqliteStore {
    fn begin(&self, write: bool) -> Result<Box<dyn Tx + '_>, StoreError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| backend("local store lock poisoned"))?;
        conn.execute_batch(if write {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN DEFERRED"
        })
        .map_err(backend)?;
        Ok(Box::new(SqliteTx {
            conn,
            open: true,
            wiped: std::cell::Cell::new(false),
        }))
    }
}

struct SqliteTx<'a> {
    conn: MutexGuard<'a, Connection>,
    open: bool,
    /// Whether it removed content (an unsend's text, a file's record, a message): then the
    /// commit also truncates the WAL, whose old page images still hold it.
    wiped: std::cell::Cell<bool>,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn conversation_of(r: &Row<'_>) -> rusqlite::Result<ConversationRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

type ConversationRow = (String, String, Option<String>, i64, String, Option<String>);

fn to_conversation(r: ConversationRow) -> Result<ConversationRecord, StoreError> {
    let (id, kind, peer, cursor, status, detail) = r;
    Ok(ConversationRecord {
        id,
        kind: ConversationKind::parse(&kind).ok_or_else(|| corrupt("conversation kind"))?,
        peer,
        cursor: u64_of(cursor),
        status: ConversationStatus::parse(&status).ok_or_else(|| corrupt("conversation status"))?,
        status_detail: detail.unwrap_or_default(),
    })
}

const CONVERSATION_COLUMNS: &str = "id, kind, peer, cursor, status, status_detail";
const MESSAGE_COLUMNS: &str = "conversation, message_id, seq, sender, sender_device, sent_at_ms, text, reply_to, outgoing, shown, local_order, kind, target, salt, accepted_at, attachment, expires_at, after_shown";

fn message_of(r: &Row<'_>) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        conversation: r.get(0)?,
        id: r.get(1)?,
        seq: r.get::<_, Option<i64>>(2)?.map(u64_of),
        sender: r.get(3)?,
        sender_device: r.get(4)?,
        sent_at_ms: u64_of(r.get(5)?),
        kind: {
            let k: String = r.get(11)?;
            ContentKind::parse(&k).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    11,
                    rusqlite::types::Type::Text,
                    "unknown message kind".into(),
                )
            })?
        },
        text: r.get(6)?,
        reply_to: r.get(7)?,
        target: r.get(12)?,
        salt: r.get(13)?,
        outgoing: r.get::<_, i64>(8)? != 0,
        shown: r.get::<_, i64>(9)? != 0,
        local_order: u64_of(r.get(10)?),
        accepted_at: u64_of(r.get(14)?),
        attachment: match r.get::<_, Option<String>>(15)? {
            None => None,
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| {
                rusqlite::Error::FromSqlConversionFailure(
                    15,
                    rusqlite::types::Type::Text,
                    "unreadable attachment record".into(),
                )
            })?),
        },
        expires_at: r.get::<_, Option<i64>>(16)?.map(u64_of),
        after_shown: r.get(17)?,
    })
}

fn attachment_json(a: Option<&AttachmentRecord>) -> Result<Option<String>, StoreError> {
    a.map(serde_json::to_string).transpose().map_err(backend)
}

impl SqliteTx<'_> {
    fn messages_where(
        &self,
        cond: &str,
        order: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM sotto_messages WHERE {cond} ORDER BY {order}");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(backend)?;
        let rows = stmt
            .query_map(p, message_of)
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        Ok(rows)
    }

    fn conversations_where(
        &self,
        cond: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM sotto_conversations WHERE {cond} ORDER BY id"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(backend)?;
        let rows = stmt
            .query_map(p, conversation_of)
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        rows.into_iter().map(to_conversation).collect()
    }

    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> Result<usize, StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map_err(backend)
    }
}

impl Tx for SqliteTx<'_> {
    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT").map_err(backend)?;
        self.open = false;
        if self.wiped.get() {
            // Best effort: when another process keeps it from finishing, a later wipe's commit
            // or SQLite's own checkpoints carry on.
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT value FROM sotto_config WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
            .map_err(backend)
    }

    fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO sotto_config (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map(|_| ())
    }

    fn delete_setting(&self, key: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM sotto_config WHERE key = ?1", params![key])
            .map(|_| ())
    }

    fn pin(&self, username: &str) -> Result<Option<PinRecord>, StoreError> {
        self.conn
            .prepare_cached("SELECT identity_key, pinned_at FROM sotto_pins WHERE username = ?1")
            .and_then(|mut s| {
                s.query_row(params![username], |r| {
                    Ok(PinRecord {
                        username: username.to_owned(),
                        identity_key: r.get(0)?,
                        pinned_at: u64_of(r.get(1)?),
                    })
                })
                .optional()
            })
            .map_err(backend)
    }

    fn set_pin(&self, pin: &PinRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT OR REPLACE INTO sotto_pins (username, identity_key, pinned_at) VALUES (?1, ?2, ?3)",
            params![pin.username, pin.identity_key, i64_of(pin.pinned_at)],
        )
        .map(|_| ())
    }

    fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self.conversations_where("id = ?1", params![id])?.pop())
    }

    fn dm_with(&self, peer: &str) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self
            .conversations_where("kind = 'dm' AND peer = ?1", params![peer])?
            .pop())
    }

    fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError> {
        self.conversations_where("1", [])
    }

    fn put_conversation(&self, c: &ConversationRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO sotto_conversations (id, kind, peer, cursor, status, status_detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, peer = excluded.peer,
                cursor = excluded.cursor, status = excluded.status, status_detail = excluded.status_detail",
            params![
                c.id,
                c.kind.as_str(),
                c.peer,
                i64_of(c.cursor),
                c.status.as_str(),
                c.status_detail
            ],
        )
        .map(|_| ())
    }

    fn insert_message(&self, m: &MessageRecord) -> Result<bool, StoreError> {
        let n = self.exec(
            "INSERT OR IGNORE INTO sotto_messages
             (conversation, message_id, seq, sender, sender_device, sent_at_ms, text, reply_to, outgoing, shown, kind, target, salt, accepted_at, attachment, expires_at, after_shown, local_order)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     (SELECT COALESCE(MAX(local_order), 0) + 1 FROM sotto_messages))",
            params![
                m.conversation,
                m.id,
                m.seq.map(i64_of),
                m.sender,
                m.sender_device,
                i64_of(m.sent_at_ms),
                m.text,
                m.reply_to,
                m.outgoing as i64,
                m.shown as i64,
                m.kind.as_str(),
                m.target,
                m.salt,
                i64_of(m.accepted_at),
                attachment_json(m.attachment.as_ref())?,
                m.expires_at.map(i64_of),
                m.after_shown,
            ],
        )?;
        Ok(n == 1)
    }

    fn message(&self, conversation: &str, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self
            .messages_where(
                "conversation = ?1 AND message_id = ?2",
                "local_order",
                params![conversation, id],
            )?
            .pop())
    }

    fn set_message_seq(
        &self,
        conversation: &str,
        id: &str,
        seq: u64,
        accepted_at: u64,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE sotto_messages SET seq = ?3, accepted_at = ?4
             WHERE conversation = ?1 AND message_id = ?2",
            params![conversation, id, i64_of(seq), i64_of(accepted_at)],
        )
        .map(|_| ())
    }

    fn set_attachment(
        &self,
        conversation: &str,
        id: &str,
        attachment: Option<&AttachmentRecord>,
    ) -> Result<(), StoreError> {
        if attachment.is_none() {
            self.wiped.set(true);
        }
        self.exec(
            "UPDATE sotto_messages SET attachment = ?3 WHERE conversation = ?1 AND message_id = ?2",
            params![conversation, id, attachment_json(attachment)?],
        )
        .map(|_| ())
    }

    fn delete_unsent_message(&self, conversation: &str, id: &str) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM sotto_messages WHERE conversation = ?1 AND message_id = ?2 AND seq IS NULL",
            params![conversation, id],
        )
        .map(|_| ())
    }

    fn message_by_id(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self
            .messages_where("message_id = ?1", "local_order", params![id])?
            .pop())
    }

    fn messages_targeting(
        &self,
        conversation: &str,
        target: &str,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages_where(
            "conversation = ?1 AND target = ?2",
            "COALESCE(seq, 9223372036854775807), local_order",
            params![conversation, target],
        )
    }

    fn set_message_text(
        &self,
        conversation: &str,
        id: &str,
        text: Option<&str>,
    ) -> Result<(), StoreError> {
        if text.is_none() {
            self.wiped.set(true);
        }
        self.exec(
            "UPDATE sotto_messages SET text = ?3 WHERE conversation = ?1 AND message_id = ?2",
            params![conversation, id, text],
        )
        .map(|_| ())
    }

    fn delete_message(&self, conversation: &str, id: &str) -> Result<(), StoreError> {
        self.wiped.set(true);
        self.exec(
            "DELETE FROM sotto_messages WHERE conversation = ?1 AND message_id = ?2",
            params![conversation, id],
        )
        .map(|_| ())
    }

    fn set_expiry(
        &self,
        conversation: &str,
        id: &str,
        expires_at: Option<u64>,
        after_shown: Option<u32>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE sotto_messages SET expires_at = ?3, after_shown = ?4
             WHERE conversation = ?1 AND message_id = ?2",
            params![conversation, id, expires_at.map(i64_of), after_shown],
        )
        .map(|_| ())
    }

    fn expired_messages(&self, now: u64) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages_where(
            "expires_at IS NOT NULL AND expires_at <= ?1",
            "expires_at, local_order",
            params![i64_of(now)],
        )
    }

    fn after_shown_messages(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages_where("after_shown IS NOT NULL", "local_order", [])
    }

    fn delete_receipts(&self, conversation: &str, message: &str) -> Result<(), StoreError> {
        self.wiped.set(true);
        self.exec(
            "DELETE FROM sotto_receipts WHERE conversation = ?1 AND message_id = ?2",
            params![conversation, message],
        )
        .map(|_| ())
    }

    fn set_shown(&self, conversation: &str, id: &str, shown: bool) -> Result<(), StoreError> {
        self.exec(
            "UPDATE sotto_messages SET shown = ?3 WHERE conversation = ?1 AND message_id = ?2",
            params![conversation, id, shown as i64],
        )
        .map(|_| ())
    }

    fn unshown_messages(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages_where("shown = 0", "local_order", [])
    }

    fn messages(&self, conversation: &str) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages_where(
            "conversation = ?1",
            "COALESCE(seq, 9223372036854775807), local_order",
            params![conversation],
        )
    }

    fn unsent_messages(&self, sender_device: &str) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages_where(
            "outgoing = 1 AND seq IS NULL AND sender_device = ?1",
            "local_order",
            params![sender_device],
        )
    }

    fn put_receipt(
        &self,
        conversation: &str,
        message: &str,
        user: &str,
        status: u8,
    ) -> Result<bool, StoreError> {
        let n = self.exec(
            "INSERT INTO sotto_receipts (conversation, message_id, username, status)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (conversation, message_id, username)
             DO UPDATE SET status = excluded.status WHERE excluded.status > sotto_receipts.status",
            params![conversation, message, user, i64::from(status)],
        )?;
        Ok(n == 1)
    }

    fn receipts(&self, conversation: &str, message: &str) -> Result<Vec<(String, u8)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT username, status FROM sotto_receipts
                 WHERE conversation = ?1 AND message_id = ?2 ORDER BY username",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![conversation, message], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        rows.into_iter()
            .map(|(u, s)| Ok((u, u8::try_from(s).map_err(|_| corrupt("receipt status"))?)))
            .collect()
    }

    fn unreceipted(
        &self,
        conversation: &str,
        user: &str,
        status: u8,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT m.message_id FROM sotto_messages m
                 LEFT JOIN sotto_receipts r ON r.conversation = m.conversation
                     AND r.message_id = m.message_id AND r.username = ?2
                 WHERE m.conversation = ?1 AND m.outgoing = 0 AND m.seq IS NOT NULL
                     AND m.kind IN ('text', 'file')
                     AND (r.status IS NULL OR r.status < ?3)
                 ORDER BY m.seq, m.local_order",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![conversation, user, i64::from(status)], |r| r.get(0))
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(backend)?;
        Ok(rows)
    }

    fn put_undecryptable(&self, u: &UndecryptableRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT OR REPLACE INTO sotto_undecryptable
             (conversation, seq, sender_device, sender, state, tries, first_failed_ms, last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                u.conversation,
                i64_of(u.seq),
                u.sender_device,
                u.sender,
                u.state.as_str(),
                i64::from(u.tries),
                i64_of(u.first_failed_ms),
                u.last_error
            ],
        )
        .map(|_| ())
    }

    fn delete_undecryptable(&self, conversation: &str, seq: u64) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM sotto_undecryptable WHERE conversation = ?1 AND seq = ?2",
            params![conversation, i64_of(seq)],
        )
        .map(|_| ())
    }

    fn undecryptable(&self, conversation: &str) -> Result<Vec<UndecryptableRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, sender_device, sender, state, tries, first_failed_ms, last_error
                 FROM sotto_undecryptable WHERE conversation = ?1 ORDER BY seq",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![conversation], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        rows.into_iter()
            .map(
                |(seq, sender_device, sender, state, tries, first, last_error)| {
                    Ok(UndecryptableRecord {
                        conversation: conversation.to_owned(),
                        seq: u64_of(seq),
                        sender_device,
                        sender,
                        state: UndecryptableState::parse(&state)
                            .ok_or_else(|| corrupt("undecryptable state"))?,
                        tries: u32::try_from(tries).unwrap_or(u32::MAX),
                        first_failed_ms: u64_of(first),
                        last_error,
                    })
                },
            )
            .collect()
    }

    fn mls_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT value FROM sotto_mls WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
            .map_err(backend)
    }

    fn mls_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO sotto_mls (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map(|_| ())
    }

    fn mls_delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.exec("DELETE FROM sotto_mls WHERE key = ?1", params![key])
            .map(|_| ())
    }
}
