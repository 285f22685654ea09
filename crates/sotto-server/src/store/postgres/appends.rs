//! Messages, group-committed: appender tasks take what queued while their last batch committed
//! and append it in one transaction (a lone message is one statement); a batch the database
//! refuses whole is run again one message at a time.

use super::*;

/// Tasks that take queued appends; each runs one batch (one transaction, one commit) at a time.
pub(super) const APPENDERS: usize = 4;
/// Most appends in one batch.
pub(super) const MAX_APPEND_BATCH: usize = 256;

pub(super) async fn insert_log(
    tx: &deadpool_postgres::Transaction<'_>,
    conversation: &str,
    seq: i64,
    epoch: u64,
    kind: EntryKind,
    sender: &str,
    data: &[u8],
) -> Result<u64, StoreError> {
    let at: i64 = tx
        .query_one(
            concat!(
                "INSERT INTO log (conversation_id, seq, epoch, kind, sender_device, data, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, ",
                db_now!(),
                ") RETURNING created_at"
            ),
            &[&conversation, &seq, &as_i64(epoch), &(kind_code(kind) as i16), &sender, &data],
        )
        .await
        .map_err(backend)?
        .get(0);
    Ok(as_u64(at))
}

/// How a batch went.
pub(super) enum BatchOutcome {
    /// Committed (or nothing to commit): one answer per job, in order.
    Done(Vec<Result<Option<Appended>, StoreError>>),
    /// Refused before the commit was sent: nothing was written, the jobs can run on their own.
    NotWritten,
    /// The commit itself failed: it may or may not have landed, so running the jobs again could
    /// store their messages twice. Every job gets this error.
    Unknown(StoreError),
}

/// Runs a batch of appends and answers each. A batch refused as a whole before its commit (a full
/// disk, a bad value, a lost connection) is run again one append at a time, so every caller gets
/// its own answer.
pub(super) async fn run_appends(pool: &Pool, batch: Vec<AppendJob>) {
    let outcome = if batch.len() == 1 {
        BatchOutcome::NotWritten
    } else {
        match pool.get().await {
            Ok(mut c) => append_batch(&mut c, &batch).await,
            Err(_) => BatchOutcome::NotWritten,
        }
    };
    match outcome {
        BatchOutcome::Done(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        BatchOutcome::Unknown(e) => {
            for job in batch {
                let _ = job.reply.send(Err(match e {
                    StoreError::Full => StoreError::Full,
                    ref other => StoreError::Backend(other.to_string()),
                }));
            }
        }
        BatchOutcome::NotWritten => {
            for job in batch {
                let result = match pool.get().await {
                    Ok(c) => append_one(&c, &job).await,
                    Err(e) => Err(backend(e)),
                };
                let _ = job.reply.send(result);
            }
        }
    }
}

/// Appends a batch in one transaction: the batch's conversations are locked in id order (two
/// nodes' batches cannot deadlock, and nothing changes them until the commit), then one statement
/// checks membership and epoch, numbers the messages per conversation in queue order, bumps each
/// conversation's `last_seq` once and inserts the entries.
pub(super) async fn append_batch(
    c: &mut deadpool_postgres::Object,
    batch: &[AppendJob],
) -> BatchOutcome {
    match write_batch(c, batch).await {
        Ok(Some((rows, wake_rows))) => {
            BatchOutcome::Done(answer_batch(c, batch, rows, wake_rows).await)
        }
        Ok(None) => BatchOutcome::NotWritten,
        Err(e) => BatchOutcome::Unknown(e),
    }
}

/// The batch's transaction: `Ok(None)` if it was refused before the commit was sent, `Err` if the
/// commit failed, else the append statement's rows (member, seq) and the wake rows.
pub(super) async fn write_batch(
    c: &mut deadpool_postgres::Object,
    batch: &[AppendJob],
) -> Result<Option<(Vec<tokio_postgres::Row>, Vec<tokio_postgres::Row>)>, StoreError> {
    let conversations: Vec<&str> = batch.iter().map(|j| j.conversation.as_str()).collect();
    let devices: Vec<&str> = batch.iter().map(|j| j.device.as_str()).collect();
    let usernames: Vec<&str> = batch.iter().map(|j| j.username.as_str()).collect();
    let epochs: Vec<i64> = batch.iter().map(|j| as_i64(j.epoch)).collect();
    let data: Vec<&[u8]> = batch.iter().map(|j| j.data.as_slice()).collect();
    let kind = kind_code(EntryKind::Message) as i16;
    let Ok(tx) = c.transaction().await else {
        return Ok(None);
    };
    let statements = async {
        let lock = tx
            .prepare_cached(
                "SELECT id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .await?;
        let wake = tx
            .prepare_cached(
                "SELECT d.conversation_id, d.device_id FROM conversation_devices d
                 JOIN conversation_members m ON m.conversation_id = d.conversation_id AND m.username = d.username
                 WHERE d.conversation_id = ANY($1)",
            )
            .await?;
        let append = tx
            .prepare_cached(
                concat!(
                "WITH req AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bytea[])
                     WITH ORDINALITY AS r(conversation_id, device_id, username, epoch, data, ord)
             ),
             mem AS (
                 SELECT r.*, EXISTS (
                     SELECT 1 FROM conversation_devices d
                     JOIN conversation_members m
                       ON m.conversation_id = d.conversation_id AND m.username = d.username
                     WHERE d.conversation_id = r.conversation_id AND d.device_id = r.device_id
                       AND d.username = r.username
                 ) AS member
                 FROM req r
             ),
             numbered AS (
                 SELECT m.ord, m.conversation_id, m.device_id, m.epoch, m.data, c.expiry_secs,
                        c.last_seq + row_number() OVER (PARTITION BY m.conversation_id ORDER BY m.ord) AS seq
                 FROM mem m JOIN conversations c ON c.id = m.conversation_id AND c.epoch = m.epoch
                 WHERE m.member
             ),
             bump AS (
                 UPDATE conversations c SET last_seq = n.top
                 FROM (SELECT conversation_id, max(seq) AS top FROM numbered GROUP BY conversation_id) n
                 WHERE c.id = n.conversation_id
             ),
             -- Evaluated once, after the batch's conversations are locked (the statement before).
             clock AS (SELECT ", db_now!(), " AS t),
             ins AS (
                 INSERT INTO log (conversation_id, seq, epoch, kind, sender_device, data, created_at, expires_at)
                 SELECT conversation_id, seq, epoch, $6, device_id, data, clock.t, clock.t + expiry_secs
                 FROM numbered CROSS JOIN clock
             )
             SELECT m.member, n.seq, n.expiry_secs, (SELECT t FROM clock)
             FROM mem m LEFT JOIN numbered n ON n.ord = m.ord ORDER BY m.ord"),
            )
            .await?;
        // Pipelined: the three statements go out together and run in order, so the append's
        // snapshot is taken once the locks are held, and the batch costs the round trips of
        // BEGIN, these three and COMMIT.
        let (_, rows, wake_rows) = futures_util::future::try_join3(
            tx.query(&lock, &[&conversations]),
            tx.query(
                &append,
                &[&conversations, &devices, &usernames, &epochs, &data, &kind],
            ),
            tx.query(&wake, &[&conversations]),
        )
        .await?;
        Ok::<_, tokio_postgres::Error>((rows, wake_rows))
    };
    let Ok((rows, wake_rows)) = statements.await else {
        return Ok(None);
    };
    if rows.len() != batch.len() {
        return Ok(None);
    }
    tx.commit().await.map_err(backend)?;
    Ok(Some((rows, wake_rows)))
}

/// One answer per job of a committed batch.
pub(super) async fn answer_batch(
    c: &deadpool_postgres::Object,
    batch: &[AppendJob],
    rows: Vec<tokio_postgres::Row>,
    wake_rows: Vec<tokio_postgres::Row>,
) -> Vec<Result<Option<Appended>, StoreError>> {
    let mut wake: HashMap<String, Vec<String>> = HashMap::new();
    for r in wake_rows {
        wake.entry(r.get(0)).or_default().push(r.get(1));
    }
    let mut out = Vec::with_capacity(batch.len());
    for (job, row) in batch.iter().zip(rows) {
        if !row.get::<_, bool>(0) {
            out.push(Ok(None));
            continue;
        }
        let Some(seq) = row.get::<_, Option<i64>>(1) else {
            out.push(Err(stale_or_missing(c, &job.conversation).await));
            continue;
        };
        let wake = match wake.get(&job.conversation) {
            Some(w) => Ok(w.clone()),
            None => wake_devices(c, &job.conversation).await,
        };
        let created_at: i64 = row.get(3);
        let expires_at = row
            .get::<_, Option<i32>>(2)
            .map(|s| as_u64(created_at + i64::from(s)));
        out.push(wake.map(|wake| {
            Some(Appended {
                accepted: Accepted {
                    seq: as_u64(seq),
                    epoch: job.epoch,
                    accepted_at: as_u64(created_at),
                    expires_at,
                },
                wake,
            })
        }));
    }
    out
}

/// One append in one statement, so one round trip and its own transaction: the membership check,
/// the sequence bump (the row lock that keeps seqs gap-free across nodes; a commit that moved the
/// epoch meanwhile makes it match nothing), the insert and the wake list.
pub(super) async fn append_one(
    c: &deadpool_postgres::Object,
    job: &AppendJob,
) -> Result<Option<Appended>, StoreError> {
    let stmt = c
        .prepare_cached(
            concat!(
                "WITH member AS (
                 SELECT 1 FROM conversation_devices d
                 JOIN conversation_members m ON m.conversation_id = d.conversation_id AND m.username = d.username
                 WHERE d.conversation_id = $1 AND d.device_id = $2 AND d.username = $3
             ),
             bump AS (
                 UPDATE conversations SET last_seq = last_seq + 1
                 WHERE id = $1 AND epoch = $4 AND EXISTS (SELECT 1 FROM member)
                 RETURNING last_seq, expiry_secs
             ),
             -- LATERAL: the clock is read once bump holds the conversation's row lock.
             ins AS (
                 INSERT INTO log (conversation_id, seq, epoch, kind, sender_device, data, created_at, expires_at)
                 SELECT $1, last_seq, $4, $5, $2, $6, clock.t, clock.t + expiry_secs
                 FROM bump, LATERAL (SELECT ", db_now!(), " AS t) clock
                 RETURNING seq, created_at
             )
             SELECT EXISTS (SELECT 1 FROM member),
                    (SELECT seq FROM ins),
                    (SELECT expiry_secs FROM bump),
                    ARRAY(SELECT d.device_id FROM conversation_devices d
                          JOIN conversation_members m
                            ON m.conversation_id = d.conversation_id AND m.username = d.username
                          WHERE d.conversation_id = $1),
                    (SELECT created_at FROM ins)"),
        )
        .await
        .map_err(backend)?;
    let row = c
        .query_one(
            &stmt,
            &[
                &job.conversation,
                &job.device,
                &job.username,
                &as_i64(job.epoch),
                &(kind_code(EntryKind::Message) as i16),
                &job.data,
            ],
        )
        .await
        .map_err(backend)?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let Some(seq) = row.get::<_, Option<i64>>(1) else {
        return Err(stale_or_missing(c, &job.conversation).await);
    };
    let created_at: i64 = row.get(4);
    let expires_at = row
        .get::<_, Option<i32>>(2)
        .map(|s| as_u64(created_at + i64::from(s)));
    let mut wake: Vec<String> = row.get(3);
    if wake.is_empty() {
        wake = wake_devices(c, &job.conversation).await?;
    }
    Ok(Some(Appended {
        accepted: Accepted {
            seq: as_u64(seq),
            epoch: job.epoch,
            accepted_at: as_u64(created_at),
            expires_at,
        },
        wake,
    }))
}
