//! The log (commits and messages), the inbox of welcomes, and read positions: the `LogStore` methods of the SQLite backend.

use super::*;

#[async_trait]
impl LogStore for SqliteStore {
    async fn append_commit(
        &self,
        conversation: &str,
        commit: NewCommit,
    ) -> Result<Accepted, StoreError> {
        let conversation = conversation.to_owned();
        self.write(move |tx| {
            let seq = next_seq(tx, &conversation, commit.epoch)?;
            let new_epoch = commit.epoch + 1;
            let (accepted_at, _) = insert_log(
                tx,
                &conversation,
                seq,
                commit.epoch,
                EntryKind::Commit,
                &commit.sender_device,
                &commit.commit,
                None,
            )?;
            tx.execute(
                "UPDATE conversations SET epoch = ?2, last_seq = ?3, expiry_secs = ?4 WHERE id = ?1",
                params![conversation, as_i64(new_epoch), as_i64(seq), commit.expiry_secs],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO conversation_states (conversation_id, state) VALUES (?1, ?2)
                 ON CONFLICT (conversation_id) DO UPDATE SET state = excluded.state",
                params![conversation, commit.state],
            )
            .map_err(backend)?;
            let kind: String = tx
                .query_row(
                    "SELECT kind FROM conversations WHERE id = ?1",
                    params![conversation],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            apply_members(tx, &conversation, &kind, seq, &commit)?;
            if let Some((welcome, devices)) = &commit.welcome {
                tx.execute(
                    "INSERT INTO welcomes (conversation_id, data, created_at, ratchet_tree) VALUES (?1, ?2, ?3, ?4)",
                    params![conversation, welcome, now(), commit.ratchet_tree],
                )
                .map_err(backend)?;
                let welcome_id = tx.last_insert_rowid();
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO inbox (device_id, conversation_id, seq, welcome, welcome_id)
                         VALUES (?1, ?2, ?3, x'', ?4)",
                    )
                    .map_err(backend)?;
                for d in devices {
                    stmt.execute(params![d, conversation, as_i64(seq), welcome_id])
                        .map_err(backend)?;
                }
            }
            Ok(Accepted {
                seq,
                epoch: new_epoch,
                accepted_at,
                expires_at: None,
            })
        })
        .await
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
        self.writer
            .send(Job::Append(Box::new(job)))
            .map_err(|_| StoreError::Backend("writer thread stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("write batch failed".into()))?
    }

    async fn member_log(
        &self,
        conversation: &str,
        username: &str,
        device: &str,
        after: u64,
        limit: u32,
    ) -> Result<Option<(ConversationHead, Vec<LogEntry>)>, StoreError> {
        let (conversation, username, device) = (
            conversation.to_owned(),
            username.to_owned(),
            device.to_owned(),
        );
        let tail = self.tail.clone();
        self.read(move |conn| {
            let Some(head) = membership_of(conn, &conversation, &username, &device)? else {
                return Ok(None);
            };
            Ok(Some((
                head,
                read_log(conn, &tail, &conversation, after, limit)?,
            )))
        })
        .await
    }

    async fn log_after(
        &self,
        conversation: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let conversation = conversation.to_owned();
        let tail = self.tail.clone();
        self.read(move |conn| read_log(conn, &tail, &conversation, after, limit))
            .await
    }

    async fn inbox(&self, device_id: &str) -> Result<Vec<InboxItem>, StoreError> {
        let device_id = device_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT i.id, i.conversation_id, i.seq, COALESCE(w.data, i.welcome), w.ratchet_tree
                     FROM inbox i LEFT JOIN welcomes w ON w.id = i.welcome_id
                     WHERE i.device_id = ?1 ORDER BY i.id LIMIT 100",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![device_id], |r| {
                    Ok(InboxItem {
                        id: as_u64(r.get(0)?),
                        conversation: id_at(r, 1)?,
                        seq: as_u64(r.get(2)?),
                        welcome: B64(r.get(3)?),
                        ratchet_tree: r.get::<_, Option<Vec<u8>>>(4)?.map(B64),
                    })
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(rows)
        })
        .await
    }

    async fn ack_inbox(&self, device_id: &str, up_to: u64) -> Result<(), StoreError> {
        let device_id = device_id.to_owned();
        self.write_keeping_hot(move |conn| {
            conn.execute(
                "DELETE FROM inbox WHERE device_id = ?1 AND id <= ?2",
                params![device_id, as_i64(up_to)],
            )
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn save_cursors(&self, cursors: Vec<(String, String, u64)>) -> Result<(), StoreError> {
        self.write_keeping_hot(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE conversation_devices SET acked_seq = ?3
                     WHERE conversation_id = ?1 AND device_id = ?2 AND acked_seq < ?3",
                )
                .map_err(backend)?;
            for (c, d, seq) in &cursors {
                stmt.execute(params![c, d, as_i64(*seq)]).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }
}
