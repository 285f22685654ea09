//! Device links: the `LinkStore` methods of the PostgreSQL backend.

use super::*;

#[async_trait]
impl LinkStore for PostgresStore {
    async fn create_link(
        &self,
        link_id: &str,
        username: &str,
        device: &str,
        bundle: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        // The share lock on the device's row orders this against a revocation (see revoke_device).
        match c
            .execute(
                "INSERT INTO links (link_id, username, bundle, expires_at)
                 SELECT $1, $2, $3, $4
                 WHERE EXISTS (SELECT 1 FROM devices WHERE device_id = $5 AND username = $2 FOR SHARE)",
                &[&link_id, &username, &bundle, &expires_at, &device],
            )
            .await
        {
            Ok(0) => Err(StoreError::CallerGone),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::LinkTaken),
            Err(e) => Err(backend(e)),
        }
    }

    async fn fetch_link(
        &self,
        link_id: &str,
        now: i64,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT username, bundle FROM links WHERE link_id = $1 AND NOT used AND expires_at > $2",
                &[&link_id, &now],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn redeem_link(
        &self,
        link_id: &str,
        now: i64,
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<String, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let row = tx
            .query_opt(
                "UPDATE links SET used = TRUE, bundle = ''::bytea
                 WHERE link_id = $1 AND NOT used AND expires_at > $2 RETURNING username",
                &[&link_id, &now],
            )
            .await
            .map_err(backend)?;
        let username: String = row.ok_or(StoreError::LinkExpired)?.get(0);
        insert_device(&tx, &username, &device, &kps).await?;
        tx.commit().await.map_err(backend)?;
        Ok(username)
    }
}
