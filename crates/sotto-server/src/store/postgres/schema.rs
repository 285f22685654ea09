//! The PostgreSQL schema: its versioned migrations (recorded in `sotto_migrations`).

pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    username TEXT PRIMARY KEY,
    identity_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts(username),
    certificate BYTEA NOT NULL,
    token_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX devices_by_user ON devices(username);
CREATE TABLE key_packages (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    data BYTEA NOT NULL,
    last_resort BOOLEAN NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    dm_key TEXT UNIQUE,
    epoch BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    group_info BYTEA,
    created_at BIGINT NOT NULL
);
CREATE TABLE conversation_members (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    username TEXT NOT NULL REFERENCES accounts(username),
    PRIMARY KEY (conversation_id, username)
);
CREATE INDEX members_by_user ON conversation_members(username);
CREATE TABLE log (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    seq BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    sender_device TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE TABLE inbox (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    seq BIGINT NOT NULL,
    welcome BYTEA NOT NULL
);
CREATE INDEX inbox_by_device ON inbox(device_id, id);
CREATE TABLE links (
    link_id TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts(username),
    bundle BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE
);
"#,
    r#"
ALTER TABLE key_packages ADD COLUMN suite INTEGER NOT NULL DEFAULT 79;
DROP INDEX key_packages_by_device;
CREATE INDEX key_packages_by_device ON key_packages(device_id, suite, last_resort, id);
ALTER TABLE conversations ADD COLUMN state BYTEA;
CREATE TABLE conversation_devices (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    device_id TEXT NOT NULL,
    username TEXT NOT NULL,
    acked_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, device_id)
);
CREATE TABLE departed (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    username TEXT NOT NULL,
    PRIMARY KEY (conversation_id, username)
);
CREATE TABLE welcomes (
    id BIGSERIAL PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    data BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
ALTER TABLE inbox ADD COLUMN welcome_id BIGINT REFERENCES welcomes(id);
ALTER TABLE log ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
"#,
    r#"
ALTER TABLE welcomes ADD COLUMN ratchet_tree BYTEA;
"#,
    r#"
CREATE TABLE revoked_devices (
    device_id TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts(username),
    revoked_at BIGINT NOT NULL
);
"#,
    // Disappearing messages (see the SQLite store's migration of the same name).
    r#"
ALTER TABLE conversations ADD COLUMN expiry_secs INTEGER;
ALTER TABLE log ADD COLUMN expires_at BIGINT;
CREATE INDEX log_expiring ON log(expires_at) WHERE expires_at IS NOT NULL;
"#,
    // Accounts the operator locked (`sottod admin lock`).
    r#"
ALTER TABLE accounts ADD COLUMN locked BOOLEAN NOT NULL DEFAULT false;
"#,
    // Usernames of accounts the operator deleted (`sottod admin delete`): never registered again.
    r#"
CREATE TABLE deleted_accounts (
    username TEXT PRIMARY KEY,
    deleted_at BIGINT NOT NULL
);
"#,
    // Retention finds old entries through an index instead of reading the whole log (rows are
    // stamped in time order, so inserts go to the b-tree's right edge). A BRIN index cost sends
    // less but made each piece of a prune rescan what earlier pieces left dead: sends' p99
    // during a prune of a million entries was 188 ms with it, 38-82 ms with this (BENCHMARKS.md).
    r#"
CREATE INDEX log_created ON log(created_at);
"#,
];
