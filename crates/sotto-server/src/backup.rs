//! Online backup of the embedded database: `sottod backup --to FILE`.
//!
//! The copy is made with SQLite's online backup API in one step, so it is one consistent
//! snapshot (one read transaction) while sottod goes on writing: WAL mode lets readers and the
//! writer run side by side. The copy is written under a temporary name, switched to a single
//! file (rollback journal, no -wal), checked with `integrity_check`, synced, and only then put
//! in place, never over an existing file.
//!
//! Messages of conversations with a disappearing timer (or in vanish mode) are left out of the
//! copy: a backup kept for years must not hold what was promised to be gone in an hour (the same
//! rule the devices follow for their backups, DESIGN.md). They are deleted from the copy with
//! `secure_delete` on, and the copy is vacuumed, so not even a free page holds them.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

/// Why a backup failed; nothing is left at the target path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The data dir holds no database.
    #[error("no database at {0}")]
    NoDatabase(PathBuf),
    /// The target exists; a backup never replaces a file.
    #[error("{0} exists already: name a new file")]
    TargetExists(PathBuf),
    /// The database stayed locked for the whole wait.
    #[error("the database stayed busy; try again")]
    Busy,
    /// The copy did not pass SQLite's integrity check.
    #[error("the copy failed its integrity check: {0}")]
    Corrupt(String),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file system failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a backup copied.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// Pages in the copy.
    pub pages: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Rows per table in the copy, by table name.
    pub tables: Vec<(String, i64)>,
    /// Timed messages left out.
    pub timed_left_out: u64,
}

/// Copies `data_dir/sotto.db` into the new file `to` (see the module docs).
pub fn sqlite_backup(data_dir: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    let source = data_dir.join("sotto.db");
    if !source.is_file() {
        return Err(BackupError::NoDatabase(source));
    }
    if to.exists() {
        return Err(BackupError::TargetExists(to.to_owned()));
    }
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    let partial = to.with_file_name(name);
    let out = copy_and_check(&source, &partial).and_then(|report| {
        // A hard link never replaces an existing file (a rename would).
        std::fs::hard_link(&partial, to).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => BackupError::TargetExists(to.to_owned()),
            _ => e.into(),
        })?;
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(report)
    });
    let _ = std::fs::remove_file(&partial);
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut side = partial.clone().into_os_string();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    out
}

fn copy_and_check(source: &Path, partial: &Path) -> Result<BackupReport, BackupError> {
    // Read-write without create: a reader of a WAL database needs its -shm, and nothing here
    // writes to the source.
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    src.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut dst = Connection::open(partial)?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        let mut tries = 0;
        loop {
            // Every page in one step: one snapshot of the source.
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                _ => {
                    tries += 1;
                    if tries > 100 {
                        return Err(BackupError::Busy);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
    drop(src);
    // One file: the copy carries the source's WAL mode in its header until told otherwise.
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    dst.pragma_update(None, "secure_delete", "ON")?;
    dst.execute(
        "DELETE FROM log_index WHERE row IN (SELECT id FROM log WHERE expires_at IS NOT NULL)",
        [],
    )?;
    let timed_left_out = dst.execute("DELETE FROM log WHERE expires_at IS NOT NULL", [])? as u64;
    dst.execute_batch("VACUUM")?;
    let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(BackupError::Corrupt(check));
    }
    let pages: i64 = dst.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let page_size: i64 = dst.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let names: Vec<String> = dst
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        // Table names come from the copy's own schema, quoted as identifiers.
        let n: i64 = dst.query_row(
            &format!("SELECT COUNT(*) FROM \"{}\"", name.replace('"', "\"\"")),
            [],
            |r| r.get(0),
        )?;
        tables.push((name, n));
    }
    dst.close().map_err(|(_, e)| e)?;
    std::fs::File::open(partial)?.sync_all()?;
    Ok(BackupReport {
        pages: u64::try_from(pages).unwrap_or(0),
        bytes: u64::try_from(pages.saturating_mul(page_size)).unwrap_or(0),
        tables,
        timed_left_out,
    })
}
