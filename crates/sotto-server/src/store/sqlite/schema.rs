//! The SQLite schema: its versioned migrations, and opening a connection with the settings every
//! connection uses.

use super::*;

/// Versioned migrations; `user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    username TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts(username),
    certificate BLOB NOT NULL,
    token_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX devices_by_user ON devices(username);
CREATE TABLE key_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    data BLOB NOT NULL,
    last_resort INTEGER NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    dm_key TEXT UNIQUE,
    epoch INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    group_info BLOB,
    created_at INTEGER NOT NULL
);
CREATE TABLE conversation_members (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    username TEXT NOT NULL REFERENCES accounts(username),
    PRIMARY KEY (conversation_id, username)
);
CREATE INDEX members_by_user ON conversation_members(username);
CREATE TABLE log (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    sender_device TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    seq INTEGER NOT NULL,
    welcome BLOB NOT NULL
);
CREATE INDEX inbox_by_device ON inbox(device_id, id);
CREATE TABLE links (
    link_id TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts(username),
    bundle BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
ALTER TABLE key_packages ADD COLUMN suite INTEGER NOT NULL DEFAULT 79;
DROP INDEX key_packages_by_device;
CREATE INDEX key_packages_by_device ON key_packages(device_id, suite, last_resort, id);
ALTER TABLE conversations ADD COLUMN state BLOB;
CREATE TABLE conversation_devices (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    device_id TEXT NOT NULL,
    username TEXT NOT NULL,
    acked_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, device_id)
);
CREATE TABLE departed (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    username TEXT NOT NULL,
    PRIMARY KEY (conversation_id, username)
);
CREATE TABLE welcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    data BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
ALTER TABLE inbox ADD COLUMN welcome_id INTEGER REFERENCES welcomes(id);
ALTER TABLE log ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
ALTER TABLE welcomes ADD COLUMN ratchet_tree BLOB;
"#,
    r#"
CREATE TABLE revoked_devices (
    device_id TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts(username),
    revoked_at INTEGER NOT NULL
);
"#,
    // The group's public state (kilobytes: overflow pages) moves out of the conversation's row,
    // which every message updates (last_seq): SQLite rewrites a whole row on update, so each
    // message used to copy the state's overflow pages into the WAL.
    r#"
CREATE TABLE conversation_states (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations(id),
    state BLOB NOT NULL
);
INSERT INTO conversation_states (conversation_id, state)
    SELECT id, state FROM conversations WHERE state IS NOT NULL;
UPDATE conversations SET state = NULL;
"#,
    // The log loses its (conversation, seq) primary key: rows go in `id` order (the end of one
    // b-tree) and `log_index` finds them, written by the writer in bulk (see `LogTail`) instead of
    // one index page per busy conversation per commit. AUTOINCREMENT: ids never come back after a
    // prune, so "every row past `log_indexed.upto`" stays exactly the rows not yet indexed.
    r#"
CREATE TABLE log_rows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    sender_device TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at INTEGER NOT NULL DEFAULT 0
);
INSERT INTO log_rows (conversation_id, seq, epoch, kind, sender_device, data, created_at)
    SELECT conversation_id, seq, epoch, kind, sender_device, data, created_at FROM log
    ORDER BY conversation_id, seq;
DROP TABLE log;
ALTER TABLE log_rows RENAME TO log;
CREATE TABLE log_index (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    row INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
INSERT INTO log_index (conversation_id, seq, row) SELECT conversation_id, seq, id FROM log;
CREATE TABLE log_indexed (upto INTEGER NOT NULL);
INSERT INTO log_indexed (upto) SELECT coalesce(max(id), 0) FROM log;
"#,
    // Disappearing messages: a conversation's settings bound how long the server keeps each of
    // its messages (from the group state, at every commit), and every message row says until when.
    r#"
ALTER TABLE conversations ADD COLUMN expiry_secs INTEGER;
ALTER TABLE log ADD COLUMN expires_at INTEGER;
CREATE INDEX log_expiring ON log(expires_at) WHERE expires_at IS NOT NULL;
"#,
    // Timed rows are found for deletion through `log_expiry`, which the writer fills in bulk with
    // `log_index` (sorted, so each index batch touches the end of one b-tree), not through an
    // index on `log` that every append updated (one more page per commit: the relay's p99 tail
    // with a timer in every conversation, BENCHMARKS.md session 12). Rows past
    // `log_indexed.upto` are found by their id range. Entries can outlive their row (a prune
    // by read positions): the purge drops those when their time comes.
    r#"
CREATE TABLE log_expiry (
    expires_at INTEGER NOT NULL,
    row INTEGER NOT NULL,
    PRIMARY KEY (expires_at, row)
) WITHOUT ROWID;
INSERT INTO log_expiry (expires_at, row)
    SELECT expires_at, id FROM log
    WHERE expires_at IS NOT NULL AND id <= (SELECT upto FROM log_indexed);
DROP INDEX log_expiring;
"#,
    // Accounts the operator locked (`sottod admin lock`).
    r#"
ALTER TABLE accounts ADD COLUMN locked INTEGER NOT NULL DEFAULT 0;
"#,
    // Usernames of accounts the operator deleted (`sottod admin delete`): never registered again.
    r#"
CREATE TABLE deleted_accounts (
    username TEXT PRIMARY KEY,
    deleted_at INTEGER NOT NULL
);
"#,
];

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(backend)?;
    // Deleted rows are overwritten with zeros, not left in free pages: a pruned message's
    // ciphertext leaves the file, not only the table (the WAL is truncated after each prune).
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let done: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(as_u64(done) as usize) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}
