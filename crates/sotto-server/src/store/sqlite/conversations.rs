//! Conversations: DMs, groups, members, group state, leaving, whom to wake: the `ConversationStore` methods of the SQLite backend.

use super::*;

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn get_or_create_dm(
        &self,
        a: &str,
        b: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let (x, y, dm_key) = rules::dm_key(a, b);
        let (x, y, new_id) = (x.to_owned(), y.to_owned(), new_id.to_owned());
        self.write(move |tx| {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT id FROM conversations WHERE dm_key = ?1",
                    params![dm_key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let id = match existing {
                Some(id) => id,
                None => {
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    tx.execute(
                        "INSERT INTO conversations (id, kind, dm_key, epoch, last_seq, created_at)
                         VALUES (?1, 'dm', ?2, 0, 0, ?3)",
                        params![new_id, dm_key, now],
                    )
                    .map_err(backend)?;
                    for m in [&x, &y] {
                        tx.execute(
                            "INSERT INTO conversation_members (conversation_id, username) VALUES (?1, ?2)",
                            params![new_id, m],
                        )
                        .map_err(backend)?;
                    }
                    new_id
                }
            };
            let rec = load_conversation(tx, &id)?.ok_or(StoreError::NotFound("conversation"))?;
            Ok(rec)
        })
        .await
    }

    async fn create_group(
        &self,
        creator: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let (creator, id) = (creator.to_owned(), new_id.to_owned());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO conversations (id, kind, epoch, last_seq, created_at) VALUES (?1, 'group', 0, 0, ?2)",
                params![id, now()],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO conversation_members (conversation_id, username) VALUES (?1, ?2)",
                params![id, creator],
            )
            .map_err(backend)?;
            load_conversation(tx, &id)?.ok_or(StoreError::NotFound("conversation"))
        })
        .await
    }

    async fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| load_conversation(conn, &id)).await
    }

    async fn membership(
        &self,
        id: &str,
        username: &str,
        device: &str,
    ) -> Result<Option<ConversationHead>, StoreError> {
        let (id, username, device) = (id.to_owned(), username.to_owned(), device.to_owned());
        self.read(move |conn| membership_of(conn, &id, &username, &device))
            .await
    }

    async fn conversations_of(
        &self,
        username: &str,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "SELECT conversation_id FROM conversation_members WHERE username = ?1 ORDER BY conversation_id",
                )
                .and_then(|mut s| {
                    s.query_map(params![username], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(c) = load_conversation(conn, &id)? {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn group_state(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let row: Option<(i64, Option<Vec<u8>>)> = conn
                .query_row(
                    "SELECT c.epoch, s.state FROM conversations c
                     LEFT JOIN conversation_states s ON s.conversation_id = c.id WHERE c.id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            Ok(row.and_then(|(e, s)| s.map(|s| (as_u64(e), s))))
        })
        .await
    }

    async fn leave(&self, id: &str, username: &str, admins: &[String]) -> Result<(), StoreError> {
        let (id, username, admins) = (id.to_owned(), username.to_owned(), admins.to_vec());
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM conversation_members WHERE conversation_id = ?1 AND username = ?2",
                    params![id, username],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound("conversation"));
            }
            if admins.contains(&username) {
                let remaining: Vec<String> = tx
                    .prepare_cached(
                        "SELECT username FROM conversation_members WHERE conversation_id = ?1",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![id], |r| r.get(0))?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(backend)?;
                rules::check_last_admin(&username, &admins, &remaining)?;
            }
            let still_in_tree: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM conversation_devices WHERE conversation_id = ?1 AND username = ?2",
                    params![id, username],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if still_in_tree > 0 {
                tx.execute(
                    "INSERT OR IGNORE INTO departed (conversation_id, username) VALUES (?1, ?2)",
                    params![id, username],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn wake_list(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| wake_devices(conn, &id)).await
    }
}
