//! The single writer: one thread owns the write connection and runs queued operations in
//! batches, one transaction (and one fsync) per batch, each operation in its own savepoint; the
//! cache of hot conversations lets most appends skip their reads.

use super::*;

/// How a write batch ended.
#[derive(Debug, Clone)]
pub(super) enum BatchError {
    /// Out of space.
    Full,
    /// Anything else (logged).
    Other(String),
}

impl BatchError {
    pub(super) fn of(e: &rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            BatchError::Full
        } else {
            BatchError::Other(e.to_string())
        }
    }

    pub(super) fn into_store_error(self) -> StoreError {
        match self {
            BatchError::Full => StoreError::Full,
            BatchError::Other(e) => StoreError::Backend(e),
        }
    }
}

/// One write operation: runs against the writer's connection inside a savepoint and returns the
/// function that answers its caller once the batch's commit is known.
pub(super) type Op = Box<dyn FnOnce(&Connection) -> (Answer, bool) + Send>;

/// What the writer thread runs.
pub(super) enum Job {
    /// Any write. `keeps_hot`: it cannot change a conversation's epoch, sequence or member
    /// devices, so the writer's [`Hot`] cache stays valid; every other write empties it.
    Op { op: Op, keeps_hot: bool },
    /// An application message, appended with the help of the [`Hot`] cache. Boxed: the channel
    /// allocates its slots 31 at a time, and blocks of 31 whole jobs (over 4 KiB) cost glibc a
    /// `malloc_consolidate` each (2% of sottod's CPU at 40k msg/s); 31 pointers do not.
    Append(Box<AppendJob>),
}

/// What the writer remembers of a conversation between sends: its epoch, last sequence number and
/// member devices (device, account) as last read or written. Only the writer thread changes the
/// database, and every write that could change these empties the cache, so a send needs no
/// membership or wake-list query, only its insert.
/// Appends do not update `conversations.last_seq` one by one: the writer writes each touched
/// conversation's newest value once, before the batch commits and before any other operation runs
/// (so everything that reads the table sees it).
#[derive(Default)]
pub(super) struct Hot {
    pub(super) convs: std::collections::HashMap<String, HotConversation>,
    /// Conversations whose `last_seq` in the table is behind.
    pub(super) dirty: Vec<String>,
}

pub(super) struct HotConversation {
    pub(super) epoch: u64,
    pub(super) last_seq: u64,
    /// How long its messages live on the server (`None`: until retention).
    pub(super) expiry_secs: Option<u32>,
    pub(super) members: Vec<(String, String)>,
    pub(super) dirty: bool,
}

impl Hot {
    /// Conversations remembered at most (then it starts again empty).
    const MAX: usize = 50_000;

    /// Writes the `last_seq` of every conversation appended to since the last flush.
    pub(super) fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut stmt =
            conn.prepare_cached("UPDATE conversations SET last_seq = ?2 WHERE id = ?1")?;
        for id in self.dirty.drain(..) {
            if let Some(c) = self.convs.get_mut(&id) {
                stmt.execute(params![id, as_i64(c.last_seq)])?;
                c.dirty = false;
            }
        }
        Ok(())
    }

    /// Forgets everything (also what was not flushed: only after a failed batch, or after a flush).
    pub(super) fn clear(&mut self) {
        self.convs.clear();
        self.dirty.clear();
    }

    pub(super) fn get_or_load(
        &mut self,
        conn: &Connection,
        id: &str,
    ) -> Result<Option<&mut HotConversation>, StoreError> {
        if !self.convs.contains_key(id) {
            let head: Option<(i64, i64, Option<u32>)> = conn
                .prepare_cached(
                    "SELECT epoch, last_seq, expiry_secs FROM conversations WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(backend)?;
            let Some((epoch, last_seq, expiry_secs)) = head else {
                return Ok(None);
            };
            let members = conn
                .prepare_cached(
                    "SELECT d.device_id, d.username FROM conversation_devices d
                     JOIN conversation_members m ON m.conversation_id = d.conversation_id AND m.username = d.username
                     WHERE d.conversation_id = ?1",
                )
                .and_then(|mut s| {
                    s.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<Vec<(String, String)>, _>>()
                })
                .map_err(backend)?;
            if self.convs.len() >= Self::MAX && self.dirty.is_empty() {
                self.convs.clear();
            }
            self.convs.insert(
                id.to_owned(),
                HotConversation {
                    epoch: as_u64(epoch),
                    last_seq: as_u64(last_seq),
                    expiry_secs,
                    members,
                    dirty: false,
                },
            );
        }
        Ok(self.convs.get_mut(id))
    }
}

/// Runs one append against the cache; returns its answer (sent once the batch's outcome is known)
/// and whether it ran out of space.
pub(super) fn append_hot(conn: &Connection, hot: &mut Hot, job: AppendJob) -> (Answer, bool) {
    let AppendJob {
        conversation,
        username,
        device,
        epoch,
        data,
        reply,
    } = job;
    let result = (|| {
        let Some(c) = hot.get_or_load(conn, &conversation)? else {
            return Ok(None);
        };
        if !c
            .members
            .iter()
            .any(|(d, u)| *d == device && *u == username)
        {
            return Ok(None);
        }
        if c.epoch != epoch {
            return Err(StoreError::StaleEpoch { current: c.epoch });
        }
        let seq = c.last_seq + 1;
        // One statement: all or nothing without a savepoint. `last_seq` is written by the flush.
        let (accepted_at, expires_at) = insert_log(
            conn,
            &conversation,
            seq,
            epoch,
            EntryKind::Message,
            &device,
            &data,
            c.expiry_secs,
        )?;
        c.last_seq = seq;
        let wake = c.members.iter().map(|(d, _)| d.clone()).collect();
        if !c.dirty {
            c.dirty = true;
            hot.dirty.push(conversation);
        }
        Ok(Some(Appended {
            accepted: Accepted {
                seq,
                epoch,
                accepted_at,
                expires_at,
            },
            wake,
        }))
    })();
    answer_when_committed(result, reply)
}

/// What an operation's caller is told once its batch has ended (its own error, else the batch's),
/// and whether the operation ran out of space.
pub(super) fn answer_when_committed<T: Send + 'static>(
    result: Result<T, StoreError>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
) -> (Answer, bool) {
    let full = matches!(result, Err(StoreError::Full));
    let answer: Answer = Box::new(move |committed: Result<(), BatchError>| {
        let out = match (result, committed) {
            (Ok(v), Ok(())) => Ok(v),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into_store_error()),
        };
        let _ = reply.send(out);
    });
    (answer, full)
}

/// Runs `f` inside a savepoint: all of it or none of it (statements prepared once per connection,
/// so a savepoint costs no SQL parsing).
pub(super) fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let exec = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
    };
    exec("SAVEPOINT op").map_err(backend)?;
    let rows_before = NEW_LOG_ROWS.with(|r| r.borrow().len());
    let forget_rows = || NEW_LOG_ROWS.with(|r| r.borrow_mut().truncate(rows_before));
    // Whatever the operation wrote is undone before its log rows are forgotten. Should even that
    // fail, the transaction is rolled back whole (the writer then fails the batch: nothing lands
    // that the tail does not know of).
    let undo = || {
        if exec("ROLLBACK TO op")
            .and_then(|()| exec("RELEASE op"))
            .is_err()
            && !conn.is_autocommit()
        {
            let _ = exec("ROLLBACK");
        }
        forget_rows();
    };
    match f() {
        Ok(v) => exec("RELEASE op").map(|()| v).map_err(|e| {
            undo();
            backend(e)
        }),
        Err(e) => {
            undo();
            Err(e)
        }
    }
}

/// Answers a job's caller once its batch's outcome is known. The `bool` next to it: the job itself
/// ran out of space.
pub(super) type Answer = Box<dyn FnOnce(Result<(), BatchError>) + Send>;

/// The most operations one batch (one transaction, one fsync) takes.
pub(super) const MAX_BATCH: usize = 512;
/// The writer thread: batches whatever is queued, commits once, then answers.
pub(super) fn writer_loop(
    conn: Connection,
    jobs: std::sync::mpsc::Receiver<Job>,
    tail: Arc<Mutex<LogTail>>,
    index_every: usize,
) {
    // Jobs that had not run when SQLite rolled a batch back go first into the next one.
    let mut carried: Vec<Job> = Vec::new();
    let mut hot = Hot::default();
    // Unindexed rows at which the next index batch is due (pushed back after a failed one, so a
    // full disk does not make every batch retry it).
    let mut index_due = index_every;
    loop {
        let mut batch = std::mem::take(&mut carried);
        if batch.is_empty() {
            match jobs.recv() {
                Ok(first) => batch.push(first),
                Err(_) => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let (batch_started, batch_len) = (std::time::Instant::now(), batch.len());
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Dropping the jobs drops their reply channels: each caller gets a storage error and
            // nothing was changed.
            tracing::error!(error = %e, "could not start a write batch");
            drop(batch);
            continue;
        }
        NEW_LOG_ROWS.with(|r| r.borrow_mut().clear());
        // Index the log first, before any job has run: if it fails, nothing else is lost.
        let unindexed = match tail.lock() {
            Ok(t) => t.len,
            Err(p) => p.get_ref().len,
        };
        let mut indexed = None;
        if unindexed >= index_due {
            match index_log(&conn) {
                Ok(new) => {
                    indexed = Some(new);
                    index_due = index_every;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not index the log; retrying later");
                    index_due = unindexed + index_every;
                    if conn.is_autocommit() && conn.execute_batch("BEGIN IMMEDIATE").is_err() {
                        drop(batch);
                        continue;
                    }
                }
            }
        }
        let mut answers = Vec::with_capacity(batch.len());
        let mut jobs_left = batch.into_iter();
        let mut aborted: Option<bool> = None;
        let mut flush_failed: Option<rusqlite::Error> = None;
        for job in jobs_left.by_ref() {
            let (answer, full) = match job {
                Job::Op { op, keeps_hot } => {
                    if let Err(e) = hot.flush(&conn) {
                        // The batch fails; this operation has not run: it goes into the next.
                        carried.push(Job::Op { op, keeps_hot });
                        flush_failed = Some(e);
                        break;
                    }
                    if !keeps_hot {
                        hot.clear();
                    }
                    op(&conn)
                }
                Job::Append(a) => append_hot(&conn, &mut hot, *a),
            };
            answers.push(answer);
            // Some errors (disk full, I/O) make SQLite roll back the whole transaction by itself;
            // running the next job would then commit it on its own. Stop and fail the batch.
            if conn.is_autocommit() {
                aborted = Some(full);
                break;
            }
        }
        // Jobs not run yet have not touched the database: they go into the next batch.
        carried.extend(jobs_left);
        let committed = match (aborted, flush_failed) {
            (_, Some(e)) => Err(BatchError::of(&e)),
            (Some(true), None) => Err(BatchError::Full),
            (Some(false), None) => Err(BatchError::Other(
                "the write batch was rolled back by the database".to_owned(),
            )),
            (None, None) => hot
                .flush(&conn)
                .and_then(|()| conn.execute_batch("COMMIT"))
                .map_err(|e| BatchError::of(&e)),
        };
        let new_rows = NEW_LOG_ROWS.with(|r| std::mem::take(&mut *r.borrow_mut()));
        if committed.is_ok() {
            metrics::histogram!("sotto_store_batch_size").record(batch_len as f64);
            metrics::histogram!("sotto_store_commit_seconds")
                .record(batch_started.elapsed().as_secs_f64());
            // Before anyone is answered (and woken to fetch): the new rows are findable.
            let mut t = tail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(upto) = indexed {
                t.indexed(upto);
            }
            t.add(new_rows);
        }
        if committed.is_err() {
            // What the cache learnt in this batch did not happen.
            hot.clear();
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        match &committed {
            Err(BatchError::Full) => {
                tracing::error!(
                    "storage full: a write batch was refused; nothing in it was applied"
                )
            }
            Err(BatchError::Other(e)) => {
                tracing::error!(error = %e, "write batch failed; nothing in it was applied")
            }
            Ok(()) => {}
        }
        for answer in answers {
            answer(committed.clone());
        }
    }
}
