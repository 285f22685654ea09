//! `sottod migrate --from DIR --to postgres://...`: copies an embedded (SQLite) deployment into an
//! empty PostgreSQL database in one transaction. Run it with the embedded server stopped.

use std::path::Path;

use rusqlite::Connection;
use tokio_postgres::types::ToSql;

use crate::store::postgres::PostgresStore;

/// What was copied, table by table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// (table, rows) in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

/// A value read from SQLite, written to PostgreSQL.
enum Val {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
    Int32(i32),
    Small(i16),
    Bool(bool),
    Null,
    NullInt,
}

impl Val {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Val::Text(v) => v,
            Val::Bytes(v) => v,
            Val::Int(v) => v,
            Val::Int32(v) => v,
            Val::Small(v) => v,
            Val::Bool(v) => v,
            Val::Null => &None::<Vec<u8>>,
            Val::NullInt => &None::<i64>,
        }
    }
}

#[derive(Clone, Copy)]
enum Col {
    Text,
    Bytes,
    OptBytes,
    Int,
    OptInt,
    Int32,
    Small,
    Bool,
}

/// Tables in foreign-key order, with their columns and types.
const TABLES: &[(&str, &[(&str, Col)])] = &[
    (
        "accounts",
        &[
            ("username", Col::Text),
            ("identity_key", Col::Bytes),
            ("created_at", Col::Int),
            ("locked", Col::Bool),
        ],
    ),
    (
        "deleted_accounts",
        &[("username", Col::Text), ("deleted_at", Col::Int)],
    ),
    (
        "devices",
        &[
            ("device_id", Col::Text),
            ("username", Col::Text),
            ("certificate", Col::Bytes),
            ("token_hash", Col::Bytes),
            ("created_at", Col::Int),
        ],
    ),
    (
        "revoked_devices",
        &[
            ("device_id", Col::Text),
            ("username", Col::Text),
            ("revoked_at", Col::Int),
        ],
    ),
    (
        "key_packages",
        &[
            ("id", Col::Int),
            ("device_id", Col::Text),
            ("suite", Col::Int32),
            ("data", Col::Bytes),
            ("last_resort", Col::Bool),
        ],
    ),
    (
        "conversations",
        &[
            ("id", Col::Text),
            ("kind", Col::Text),
            ("dm_key", Col::Text),
            ("epoch", Col::Int),
            ("last_seq", Col::Int),
            ("group_info", Col::OptBytes),
            ("created_at", Col::Int),
            ("state", Col::OptBytes),
        ],
    ),
    (
        "conversation_members",
        &[("conversation_id", Col::Text), ("username", Col::Text)],
    ),
    (
        "conversation_devices",
        &[
            ("conversation_id", Col::Text),
            ("device_id", Col::Text),
            ("username", Col::Text),
            ("acked_seq", Col::Int),
        ],
    ),
    (
        "departed",
        &[("conversation_id", Col::Text), ("username", Col::Text)],
    ),
    (
        "welcomes",
        &[
            ("id", Col::Int),
            ("conversation_id", Col::Text),
            ("data", Col::Bytes),
            ("created_at", Col::Int),
            ("ratchet_tree", Col::OptBytes),
        ],
    ),
    (
        "log",
        &[
            ("conversation_id", Col::Text),
            ("seq", Col::Int),
            ("epoch", Col::Int),
            ("kind", Col::Small),
            ("sender_device", Col::Text),
            ("data", Col::Bytes),
            ("created_at", Col::Int),
        ],
    ),
    (
        "inbox",
        &[
            ("id", Col::Int),
            ("device_id", Col::Text),
            ("conversation_id", Col::Text),
            ("seq", Col::Int),
            ("welcome", Col::Bytes),
            ("welcome_id", Col::OptInt),
        ],
    ),
    (
        "links",
        &[
            ("link_id", Col::Text),
            ("username", Col::Text),
            ("bundle", Col::Bytes),
            ("expires_at", Col::Int),
            ("used", Col::Bool),
        ],
    ),
];

/// Where a PostgreSQL column's value comes from in the SQLite schema, where it differs.
fn sqlite_source<'a>(table: &str, column: &'a str) -> &'a str {
    match (table, column) {
        // SQLite keeps the group state in its own table (its rows change rarely, the
        // conversation's row with every message).
        ("conversations", "state") => {
            "(SELECT s.state FROM conversation_states s WHERE s.conversation_id = conversations.id)"
        }
        _ => column,
    }
}

fn read_row(row: &rusqlite::Row<'_>, cols: &[(&str, Col)]) -> rusqlite::Result<Vec<Val>> {
    cols.iter()
        .enumerate()
        .map(|(i, (_, ty))| {
            Ok(match ty {
                Col::Text => match row.get::<_, Option<String>>(i)? {
                    Some(s) => Val::Text(s),
                    None => Val::Null,
                },
                Col::Bytes => Val::Bytes(row.get(i)?),
                Col::OptBytes => match row.get::<_, Option<Vec<u8>>>(i)? {
                    Some(b) => Val::Bytes(b),
                    None => Val::Null,
                },
                Col::Int => Val::Int(row.get(i)?),
                Col::OptInt => match row.get::<_, Option<i64>>(i)? {
                    Some(v) => Val::Int(v),
                    None => Val::NullInt,
                },
                Col::Int32 => Val::Int32(i32::try_from(row.get::<_, i64>(i)?).unwrap_or(i32::MAX)),
                Col::Small => Val::Small(i16::try_from(row.get::<_, i64>(i)?).unwrap_or(i16::MAX)),
                Col::Bool => Val::Bool(row.get::<_, i64>(i)? != 0),
            })
        })
        .collect()
}

/// Copies the SQLite deployment in `from` into the PostgreSQL database at `to` (optionally inside
/// `schema`). Refuses a target that already holds accounts.
pub async fn sqlite_to_postgres(
    from: &Path,
    to: &str,
    schema: Option<&str>,
) -> Result<Report, String> {
    let db = from.join("sotto.db");
    if !db.exists() {
        return Err(format!("no Sotto database at {}", db.display()));
    }
    // Opening the stores runs both sides' migrations, so the schemas match this build.
    drop(crate::SqliteStore::open(from).map_err(|e| e.to_string())?);
    drop(
        PostgresStore::connect(to, schema)
            .await
            .map_err(|e| e.to_string())?,
    );
    let src = Connection::open(&db).map_err(|e| e.to_string())?;

    let (mut config, tls) = crate::store::pg_tls::parse(to)?;
    if let Some(schema) = schema {
        config.options(format!("-c search_path={schema}"));
    }
    let (mut client, conn) = crate::store::pg_tls::connect(&config, &tls)
        .await
        .map_err(|e| crate::store::pg_tls::with_causes(&e))?;
    tokio::spawn(conn);
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let existing: i64 = tx
        .query_one("SELECT COUNT(*) FROM accounts", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if existing > 0 {
        return Err("the target database already holds accounts; migrate into an empty one".into());
    }
    let mut report = Report::default();
    for (table, cols) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let sources: Vec<&str> = cols.iter().map(|(n, _)| sqlite_source(table, n)).collect();
        let select = format!("SELECT {} FROM {table}", sources.join(", "));
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        let stmt = tx.prepare(&insert).await.map_err(|e| e.to_string())?;
        let rows: Vec<Vec<Val>> = {
            let mut q = src.prepare(&select).map_err(|e| e.to_string())?;
            let rows = q
                .query_map([], |r| read_row(r, cols))
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            rows
        };
        for row in &rows {
            let params: Vec<&(dyn ToSql + Sync)> = row.iter().map(Val::as_sql).collect();
            tx.execute(&stmt, &params)
                .await
                .map_err(|e| format!("{table}: {e}"))?;
        }
        report.tables.push((table, rows.len() as u64));
    }
    // Continue the copied id sequences after the highest copied id.
    for table in ["key_packages", "inbox", "welcomes"] {
        tx.batch_execute(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
        ))
        .await
        .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(report)
}
