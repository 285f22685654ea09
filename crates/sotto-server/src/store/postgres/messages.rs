//! The log (commits and messages), the inbox of welcomes, and read positions: the `LogStore` methods of the PostgreSQL backend.

use super::*;

#[async_trait]
impl LogStore for PostgresStore {
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
}
