//! Upkeep (pruning, expiry, the clock, readiness) and the operator's account administration: the `OperatorStore` methods of the PostgreSQL backend.

use super::*;

#[async_trait]
impl OperatorStore for PostgresStore {
    async fn ready(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .query_one("SELECT 1", &[])
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn clock(&self) -> Result<i64, StoreError> {
        Ok(self
            .client()
            .await?
            .query_one("SELECT extract(epoch FROM now())::int8", &[])
            .await
            .map_err(backend)?
            .get(0))
    }

    async fn prune(&self, older_than: i64) -> Result<u64, StoreError> {
        // In pieces of PRUNE_ROWS_PER_STATEMENT rows, each its own transaction: a send waits at
        // most for one piece's row locks, never for the whole prune (it used to be one
        // transaction, and the age rule read the whole log for want of an index).
        let c = self.client().await?;
        let read_floor = c
            .prepare_cached(
                "DELETE FROM log WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM log WHERE conversation_id = $1 AND seq <= $2
                     ORDER BY seq LIMIT $3))",
            )
            .await
            .map_err(backend)?;
        let too_old = c
            .prepare_cached(
                "DELETE FROM log WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM log WHERE created_at > 0 AND created_at < $1
                     ORDER BY created_at LIMIT $2))",
            )
            .await
            .map_err(backend)?;
        let piece = PRUNE_ROWS_PER_STATEMENT;
        let floors = c
            .query(
                "SELECT conversation_id, MIN(acked_seq) FROM conversation_devices GROUP BY conversation_id",
                &[],
            )
            .await
            .map_err(backend)?;
        let mut gone = 0u64;
        for r in floors {
            let (conv, floor): (String, i64) = (r.get(0), r.get(1));
            gone += delete_in_pieces(&c, &read_floor, &[&conv, &floor], piece, true).await?;
        }
        gone += delete_in_pieces(&c, &too_old, &[&older_than], piece, true).await?;
        c.execute(
            "DELETE FROM inbox WHERE welcome_id IN (SELECT id FROM welcomes WHERE created_at < $1)",
            &[&older_than],
        )
        .await
        .map_err(backend)?;
        c.execute(
            "DELETE FROM welcomes WHERE created_at < $1
             OR NOT EXISTS (SELECT 1 FROM inbox i WHERE i.welcome_id = welcomes.id)",
            &[&older_than],
        )
        .await
        .map_err(backend)?;
        Ok(gone)
    }

    async fn expire(&self, now: i64) -> Result<u64, StoreError> {
        // In pieces of their own transactions, found through `log_expiring`: a send waits at
        // most for one piece's row locks, never for the whole purge.
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "DELETE FROM log WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM log WHERE expires_at IS NOT NULL AND expires_at <= $1
                     ORDER BY expires_at LIMIT $2))",
            )
            .await
            .map_err(backend)?;
        delete_in_pieces(&c, &stmt, &[&now], EXPIRE_ROWS_PER_STATEMENT, false).await
    }

    async fn admin_accounts(&self) -> Result<Vec<AdminAccount>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT a.username, a.created_at, a.locked,
                        (SELECT COUNT(*) FROM devices d WHERE d.username = a.username),
                        (SELECT MAX(l.created_at) FROM log l JOIN devices d
                         ON d.device_id = l.sender_device WHERE d.username = a.username)
                 FROM accounts a ORDER BY a.username",
                &[],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| AdminAccount {
                username: r.get(0),
                created_at: r.get(1),
                locked: r.get(2),
                devices: as_u64(r.get(3)),
                last_active: r.get(4),
            })
            .collect())
    }

    async fn set_locked(&self, username: &str, locked: bool) -> Result<bool, StoreError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE accounts SET locked = $2 WHERE username = $1",
            &[&username, &locked],
        )
        .await
        .map(|n| n == 1)
        .map_err(backend)
    }

    async fn delete_account(&self, username: &str) -> Result<Option<DeletedAccount>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // Lock the account's row: a second deletion or a lock of the same account waits for this.
        if tx
            .query_opt(
                "SELECT 1 FROM accounts WHERE username = $1 FOR UPDATE",
                &[&username],
            )
            .await
            .map_err(backend)?
            .is_none()
        {
            return Ok(None);
        }
        let column = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.into_iter().map(|r| r.get(0)).collect()
        };
        let devices = column(
            tx.query(
                "SELECT device_id FROM devices WHERE username = $1 ORDER BY device_id",
                &[&username],
            )
            .await
            .map_err(backend)?,
        );
        // Its conversations, locked in id order as commits lock them, so that no commit changes
        // their members meanwhile.
        let conversations = column(
            tx.query(
                "SELECT c.id FROM conversations c
                 JOIN conversation_members m ON m.conversation_id = c.id
                 WHERE m.username = $1 ORDER BY c.id FOR UPDATE OF c",
                &[&username],
            )
            .await
            .map_err(backend)?,
        );
        tx.execute(
            "INSERT INTO departed (conversation_id, username)
             SELECT DISTINCT d.conversation_id, d.username FROM conversation_devices d
             WHERE d.username = $1 AND d.conversation_id = ANY($2)
             ON CONFLICT DO NOTHING",
            &[&username, &conversations],
        )
        .await
        .map_err(backend)?;
        for sql in [
            "DELETE FROM conversation_members WHERE username = $1",
            "DELETE FROM key_packages WHERE device_id IN (SELECT device_id FROM devices WHERE username = $1)",
            "DELETE FROM inbox WHERE device_id IN (SELECT device_id FROM devices WHERE username = $1)",
            "DELETE FROM links WHERE username = $1",
            "DELETE FROM revoked_devices WHERE username = $1",
            "DELETE FROM devices WHERE username = $1",
            "DELETE FROM accounts WHERE username = $1",
        ] {
            tx.execute(sql, &[&username]).await.map_err(backend)?;
        }
        tx.execute(
            "INSERT INTO deleted_accounts (username, deleted_at) VALUES ($1, $2)",
            &[&username, &now()],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(DeletedAccount {
            devices,
            conversations,
        }))
    }
}
