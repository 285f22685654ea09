//! The conversation log: appending entries, reading windows of it through the bulk-written
//! index (`log_index`) and the rows not indexed yet, and deleting rows.

use super::*;

/// The log rows not yet in `log_index`, shared by the writer (which adds rows once their batch has
/// committed, and drops them once an index batch has) and the readers (which look here for the
/// newest entries of a conversation).
///
/// Why: a b-tree keyed by (conversation, seq) gets its new entries at the end of each
/// conversation's range, so every commit wrote one index page per conversation it touched (at
/// 30,000 msg/s over 50 conversations, ~33 of the ~40 pages each commit wrote). Indexing
/// thousands of rows at once, sorted, touches each conversation's last page once.
#[derive(Debug, Default)]
pub(super) struct LogTail {
    /// Every row with a larger id is not in `log_index`; every row up to it is.
    pub(super) indexed_upto: i64,
    /// (seq, row id) in seq order, per conversation.
    pub(super) convs: std::collections::HashMap<String, Vec<(u64, i64)>>,
    pub(super) len: usize,
}

impl LogTail {
    /// Reads what is not indexed yet (at most one index batch of rows: cheap at start-up).
    pub(super) fn load(conn: &Connection) -> Result<Self, StoreError> {
        let upto: i64 = conn
            .query_row("SELECT upto FROM log_indexed", [], |r| r.get(0))
            .map_err(backend)?;
        let mut tail = LogTail {
            indexed_upto: upto,
            ..LogTail::default()
        };
        let rows = conn
            .prepare("SELECT id, conversation_id, seq FROM log WHERE id > ?1 ORDER BY id")
            .and_then(|mut s| {
                s.query_map(params![upto], |r| {
                    Ok((
                        r.get::<_, String>(1)?,
                        as_u64(r.get(2)?),
                        r.get::<_, i64>(0)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        tail.add(rows);
        Ok(tail)
    }

    pub(super) fn add(&mut self, rows: impl IntoIterator<Item = (String, u64, i64)>) {
        for (conversation, seq, row) in rows {
            if row > self.indexed_upto {
                let rows = self.convs.entry(conversation).or_default();
                debug_assert!(rows.last().is_none_or(|&(last, _)| last < seq));
                rows.push((seq, row));
                self.len += 1;
            }
        }
    }

    /// Rows up to `upto` are in `log_index` now.
    pub(super) fn indexed(&mut self, upto: i64) {
        self.indexed_upto = upto;
        let mut len = 0;
        self.convs.retain(|_, rows| {
            rows.retain(|&(_, row)| row > upto);
            len += rows.len();
            !rows.is_empty()
        });
        self.len = len;
    }

    /// Up to `limit` unindexed rows of `conversation` after `after`, in seq order.
    pub(super) fn after(&self, conversation: &str, after: u64, limit: usize) -> Vec<(u64, i64)> {
        let Some(rows) = self.convs.get(conversation) else {
            return Vec::new();
        };
        let from = rows.partition_point(|&(seq, _)| seq <= after);
        rows[from..].iter().take(limit).copied().collect()
    }
}

thread_local! {
    /// Log rows inserted by the writer thread's open transaction (conversation, seq, row id): they
    /// join the [`LogTail`] once that transaction has committed.
    pub(super) static NEW_LOG_ROWS: std::cell::RefCell<Vec<(String, u64, i64)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Indexes every log row past the watermark in `log_indexed`, sorted (inside the writer's open
/// transaction, in a savepoint of its own). Returns the new watermark.
///
/// Idempotent: an entry already in the index (a batch whose savepoint could not be rolled back)
/// stays and the run goes on. Two rows with one (conversation, seq) cannot come from the writer
/// (it numbers every conversation alone); should one appear, only the first is indexed and the
/// other is reported, instead of every later index batch failing and the tail growing forever.
pub(super) fn index_log(conn: &Connection) -> rusqlite::Result<i64> {
    conn.execute_batch("SAVEPOINT ix")?;
    let res = (|| {
        let upto: i64 = conn
            .prepare_cached("SELECT upto FROM log_indexed")?
            .query_row([], |r| r.get(0))?;
        let rows: i64 = conn
            .prepare_cached("SELECT count(*) FROM log WHERE id > ?1")?
            .query_row(params![upto], |r| r.get(0))?;
        let added = conn
            .prepare_cached(
                "INSERT OR IGNORE INTO log_index (conversation_id, seq, row)
                 SELECT conversation_id, seq, id FROM log WHERE id > ?1
                 ORDER BY conversation_id, seq",
            )?
            .execute(params![upto])?;
        conn.prepare_cached(
            "INSERT OR IGNORE INTO log_expiry (expires_at, row)
             SELECT expires_at, id FROM log WHERE id > ?1 AND expires_at IS NOT NULL
             ORDER BY expires_at, id",
        )?
        .execute(params![upto])?;
        if i64::try_from(added).unwrap_or(i64::MAX) < rows {
            tracing::error!(
                rows,
                added,
                "log rows already indexed or with a (conversation, seq) taken: not indexed again"
            );
        }
        let new: i64 = conn
            .prepare_cached("SELECT coalesce(max(id), ?1) FROM log")?
            .query_row(params![upto], |r| r.get(0))?;
        conn.prepare_cached("UPDATE log_indexed SET upto = ?1")?
            .execute(params![new])?;
        Ok(new)
    })();
    match res {
        Ok(new) => conn.execute_batch("RELEASE ix").map(|()| new),
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK TO ix; RELEASE ix");
            }
            Err(e)
        }
    }
}

/// Deletes log rows, given as (row id, conversation, seq), with their `log_index` entries (rows
/// not indexed yet have none), in the caller's write job: retention and expiry both go through
/// here, one piece at a time.
pub(super) fn delete_log_rows(
    tx: &Connection,
    rows: &[(i64, String, i64)],
) -> Result<(), StoreError> {
    let mut unindex = tx
        .prepare_cached(
            "DELETE FROM log_index WHERE conversation_id = ?1 AND seq = ?2 AND row = ?3",
        )
        .map_err(backend)?;
    let mut del = tx
        .prepare_cached("DELETE FROM log WHERE id = ?1")
        .map_err(backend)?;
    for (id, c, seq) in rows {
        unindex.execute(params![c, seq, id]).map_err(backend)?;
        del.execute(params![id]).map_err(backend)?;
    }
    Ok(())
}

/// The entries of `conversation` after `after`: the indexed ones from `log_index`, then the newest
/// from the [`LogTail`]. The tail is copied *before* the index is read: rows indexed in between
/// are then in both (the seq filter drops the copy), and none can be in neither, so the answer is
/// never missing an entry in the middle.
pub(super) fn read_log(
    conn: &Connection,
    tail: &Mutex<LogTail>,
    conversation: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<LogEntry>, StoreError> {
    let recent = tail
        .lock()
        .map_err(backend)?
        .after(conversation, after, limit as usize);
    let entry = |seq: u64, r: &rusqlite::Row<'_>| {
        Ok(LogEntry {
            seq,
            epoch: as_u64(r.get(0)?),
            kind: kind_from_code(r.get(1)?),
            sender_device: id_at(r, 2)?,
            data: B64(r.get(3)?),
            accepted_at: as_u64(r.get(4)?),
            expires_at: r.get::<_, Option<i64>>(5)?.map(as_u64),
        })
    };
    // An entry past its expiry is not served, even before the prune that deletes it.
    let now = now();
    // One snapshot for the index and the rows: a prune only ever removes a conversation's oldest
    // entries, so within one snapshot what is left has no gap; across two it could.
    let snapshot = Snapshot::begin(conn)?;
    let mut out = conn
        .prepare_cached(
            "SELECT l.epoch, l.kind, l.sender_device, l.data, l.created_at, l.expires_at, i.seq
             FROM log_index i JOIN log l ON l.id = i.row
             WHERE i.conversation_id = ?1 AND i.seq > ?2
             AND (l.expires_at IS NULL OR l.expires_at > ?4) ORDER BY i.seq LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![conversation, as_i64(after), limit, now], |r| {
                entry(as_u64(r.get(6)?), r)
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(backend)?;
    let last = out.last().map_or(after, |e| e.seq);
    let mut by_id = conn
        .prepare_cached(
            "SELECT epoch, kind, sender_device, data, created_at, expires_at FROM log
             WHERE id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
        )
        .map_err(backend)?;
    for &(seq, row) in recent.iter().filter(|(seq, _)| *seq > last) {
        if out.len() >= limit as usize {
            break;
        }
        // A row pruned since the copy is simply gone (every device had read it).
        if let Some(e) = by_id
            .query_row(params![row, now], |r| entry(seq, r))
            .optional()
            .map_err(backend)?
        {
            out.push(e);
        }
    }
    drop(by_id);
    snapshot.end()?;
    Ok(out)
}

/// A read transaction on a reader connection (ended, or rolled back when dropped on an error).
pub(super) struct Snapshot<'c> {
    pub(super) conn: &'c Connection,
    pub(super) open: bool,
}

impl<'c> Snapshot<'c> {
    pub(super) fn begin(conn: &'c Connection) -> Result<Self, StoreError> {
        conn.prepare_cached("BEGIN")
            .and_then(|mut s| s.execute([]))
            .map_err(backend)?;
        Ok(Snapshot { conn, open: true })
    }

    pub(super) fn end(mut self) -> Result<(), StoreError> {
        self.open = false;
        self.conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(backend)
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Checks the epoch and reserves the next sequence number, inside the caller's transaction.
pub(super) fn next_seq(tx: &Connection, conversation: &str, epoch: u64) -> Result<u64, StoreError> {
    let (cur_epoch, last_seq): (i64, i64) = tx
        .query_row(
            "SELECT epoch, last_seq FROM conversations WHERE id = ?1",
            params![conversation],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?
        .ok_or(StoreError::NotFound("conversation"))?;
    if as_u64(cur_epoch) != epoch {
        return Err(StoreError::StaleEpoch {
            current: as_u64(cur_epoch),
        });
    }
    Ok(as_u64(last_seq) + 1)
}

/// Inserts a log row stamped now; a message of a conversation with an `expiry_secs` also gets
/// its `expires_at`. Returns both times.
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_log(
    tx: &Connection,
    conversation: &str,
    seq: u64,
    epoch: u64,
    kind: EntryKind,
    sender: &str,
    data: &[u8],
    expiry_secs: Option<u32>,
) -> Result<(u64, Option<u64>), StoreError> {
    let at = now();
    let expires_at = match kind {
        EntryKind::Message => expiry_secs.map(|s| at + i64::from(s)),
        EntryKind::Commit => None,
    };
    tx.prepare_cached(
        "INSERT INTO log (conversation_id, seq, epoch, kind, sender_device, data, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            conversation,
            as_i64(seq),
            as_i64(epoch),
            kind_code(kind),
            sender,
            data,
            at,
            expires_at
        ])
    })
    .map_err(backend)?;
    let row = tx.last_insert_rowid();
    NEW_LOG_ROWS.with(|r| r.borrow_mut().push((conversation.to_owned(), seq, row)));
    Ok((as_u64(at), expires_at.map(as_u64)))
}
