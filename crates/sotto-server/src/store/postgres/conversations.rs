//! Conversations: DMs, groups, members, group state, leaving, whom to wake: the `ConversationStore` methods of the PostgreSQL backend.

use super::*;

#[async_trait]
impl ConversationStore for PostgresStore {
    async fn get_or_create_dm(
        &self,
        a: &str,
        b: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let (x, y, dm_key) = super::rules::dm_key(a, b);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let inserted = tx
            .execute(
                "INSERT INTO conversations (id, kind, dm_key, epoch, last_seq, created_at)
                 VALUES ($1, 'dm', $2, 0, 0, $3) ON CONFLICT (dm_key) DO NOTHING",
                &[&new_id, &dm_key, &now],
            )
            .await
            .map_err(backend)?;
        if inserted == 1 {
            for m in [x, y] {
                tx.execute(
                    "INSERT INTO conversation_members (conversation_id, username) VALUES ($1, $2)",
                    &[&new_id, &m],
                )
                .await
                .map_err(backend)?;
            }
        }
        let id: String = tx
            .query_one("SELECT id FROM conversations WHERE dm_key = $1", &[&dm_key])
            .await
            .map_err(backend)?
            .get(0);
        let rec = load_conversation(&tx, &id)
            .await?
            .ok_or(StoreError::NotFound("conversation"))?;
        tx.commit().await.map_err(backend)?;
        Ok(rec)
    }

    async fn create_group(
        &self,
        creator: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        tx.execute(
            "INSERT INTO conversations (id, kind, epoch, last_seq, created_at) VALUES ($1, 'group', 0, 0, $2)",
            &[&new_id, &now()],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO conversation_members (conversation_id, username) VALUES ($1, $2)",
            &[&new_id, &creator],
        )
        .await
        .map_err(backend)?;
        let rec = load_conversation(&tx, new_id)
            .await?
            .ok_or(StoreError::NotFound("conversation"))?;
        tx.commit().await.map_err(backend)?;
        Ok(rec)
    }

    async fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let c = self.client().await?;
        load_conversation(&c, id).await
    }

    async fn membership(
        &self,
        id: &str,
        username: &str,
        device: &str,
    ) -> Result<Option<ConversationHead>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT c.epoch, c.last_seq FROM conversation_devices d
                 JOIN conversation_members m ON m.conversation_id = d.conversation_id AND m.username = d.username
                 JOIN conversations c ON c.id = d.conversation_id
                 WHERE d.conversation_id = $1 AND d.device_id = $2 AND d.username = $3",
            )
            .await
            .map_err(backend)?;
        let row = c
            .query_opt(&stmt, &[&id, &device, &username])
            .await
            .map_err(backend)?;
        Ok(row.map(|r| ConversationHead {
            epoch: as_u64(r.get(0)),
            last_seq: as_u64(r.get(1)),
        }))
    }

    async fn conversations_of(
        &self,
        username: &str,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let c = self.client().await?;
        let ids: Vec<String> = c
            .query(
                "SELECT conversation_id FROM conversation_members WHERE username = $1 ORDER BY conversation_id",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rec) = load_conversation(&c, &id).await? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    async fn group_state(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT epoch, state FROM conversations WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(backend)?;
        Ok(row.and_then(|r| {
            let state: Option<Vec<u8>> = r.get(1);
            state.map(|s| (as_u64(r.get(0)), s))
        }))
    }

    async fn leave(&self, id: &str, username: &str, admins: &[String]) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // Lock the conversation against a concurrent commit changing its members.
        tx.query_opt(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(backend)?
        .ok_or(StoreError::NotFound("conversation"))?;
        let n = tx
            .execute(
                "DELETE FROM conversation_members WHERE conversation_id = $1 AND username = $2",
                &[&id, &username],
            )
            .await
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::NotFound("conversation"));
        }
        if admins.iter().any(|a| a == username) {
            let remaining: Vec<String> = tx
                .query(
                    "SELECT username FROM conversation_members WHERE conversation_id = $1",
                    &[&id],
                )
                .await
                .map_err(backend)?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            super::rules::check_last_admin(username, admins, &remaining)?;
        }
        tx.execute(
            "INSERT INTO departed (conversation_id, username)
             SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM conversation_devices WHERE conversation_id = $1 AND username = $2)
             ON CONFLICT DO NOTHING",
            &[&id, &username],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn wake_list(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        wake_devices(&c, id).await
    }
}
