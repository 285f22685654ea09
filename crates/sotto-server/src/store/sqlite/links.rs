//! Device links: the `LinkStore` methods of the SQLite backend.

use super::*;

#[async_trait]
impl LinkStore for SqliteStore {
    async fn create_link(
        &self,
        link_id: &str,
        username: &str,
        device: &str,
        bundle: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let (link_id, username, device, bundle) = (
            link_id.to_owned(),
            username.to_owned(),
            device.to_owned(),
            bundle.to_vec(),
        );
        self.write(move |conn| {
            let present: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM devices WHERE device_id = ?1 AND username = ?2",
                    params![device, username],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if present == 0 {
                return Err(StoreError::CallerGone);
            }
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO links (link_id, username, bundle, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    params![link_id, username, bundle, expires_at],
                )
                .map_err(backend)?;
            if n == 0 {
                Err(StoreError::LinkTaken)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn fetch_link(
        &self,
        link_id: &str,
        now: i64,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let link_id = link_id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT username, bundle FROM links WHERE link_id = ?1 AND used = 0 AND expires_at > ?2",
                params![link_id, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn redeem_link(
        &self,
        link_id: &str,
        now: i64,
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<String, StoreError> {
        let link_id = link_id.to_owned();
        self.write(move |tx| {
            let username: Option<String> = tx
                .query_row(
                    "UPDATE links SET used = 1, bundle = x'' WHERE link_id = ?1 AND used = 0 AND expires_at > ?2
                     RETURNING username",
                    params![link_id, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let username = username.ok_or(StoreError::LinkExpired)?;
            insert_device(tx, &username, &device, &kps)?;
            Ok(username)
        })
        .await
    }
}
