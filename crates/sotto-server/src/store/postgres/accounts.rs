//! Accounts and their devices: the `AccountStore` methods of the PostgreSQL backend.

use super::*;

#[async_trait]
impl AccountStore for PostgresStore {
    async fn create_account(
        &self,
        username: &str,
        identity_key: &[u8],
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // A deleted account's name stays taken. (A registration racing the deletion of the same
        // name can still land: it checked before the deletion committed. The operator sees it in
        // `admin accounts`.)
        let n = tx
            .execute(
                "INSERT INTO accounts (username, identity_key, created_at)
                 SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM deleted_accounts WHERE username = $1)
                 ON CONFLICT (username) DO NOTHING",
                &[&username, &identity_key, &device.created_at],
            )
            .await
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::UsernameTaken);
        }
        insert_device(&tx, username, &device, &kps).await?;
        tx.commit().await.map_err(backend)
    }

    async fn revoke_device(
        &self,
        username: &str,
        device_id: &str,
        caller: &str,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // Lock the account's devices: two devices revoking each other at once cannot both go.
        let devices: Vec<String> = tx
            .query(
                "SELECT device_id FROM devices WHERE username = $1 FOR UPDATE",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        super::rules::check_revoke(&devices, device_id, caller)?;
        // The devices row goes before the membership rows and links: a commit or a link being
        // made at the same moment holds a share lock on it (see apply_members, create_link), so
        // these deletes run after it committed and see its rows.
        for sql in [
            "DELETE FROM key_packages WHERE device_id = $1",
            "DELETE FROM inbox WHERE device_id = $1",
            "DELETE FROM devices WHERE device_id = $1",
            "DELETE FROM conversation_devices WHERE device_id = $1",
        ] {
            tx.execute(sql, &[&device_id]).await.map_err(backend)?;
        }
        tx.execute(
            "DELETE FROM links WHERE username = $1 AND NOT used",
            &[&username],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            concat!(
                "INSERT INTO revoked_devices (device_id, username, revoked_at) VALUES ($1, $2, ",
                db_now!(),
                ")"
            ),
            &[&device_id, &username],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn device_auth(&self, device_id: &str) -> Result<Option<DeviceAuth>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT d.username, d.token_hash, a.locked FROM devices d
                 JOIN accounts a ON a.username = d.username WHERE d.device_id = $1",
                &[&device_id],
            )
            .await
            .map_err(backend)?;
        row.map(|r| {
            let hash: Vec<u8> = r.get(1);
            Ok(DeviceAuth {
                username: stored(r.get(0))?,
                token_hash: super::rules::token_hash(&hash)?,
                locked: r.get(2),
            })
        })
        .transpose()
    }

    async fn account(&self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let c = self.client().await?;
        let Some(row) = c
            .query_opt(
                "SELECT identity_key FROM accounts WHERE username = $1",
                &[&username],
            )
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let devices = c
            .query(
                "SELECT device_id, certificate, token_hash, created_at FROM devices
                 WHERE username = $1 ORDER BY created_at, device_id",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| {
                let hash: Vec<u8> = r.get(2);
                Ok(DeviceRecord {
                    device_id: stored(r.get(0))?,
                    certificate: r.get(1),
                    token_hash: super::rules::token_hash(&hash)?,
                    created_at: r.get(3),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let revoked: Vec<DeviceId> = c
            .query(
                "SELECT device_id FROM revoked_devices WHERE username = $1 ORDER BY device_id",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| stored(r.get(0)))
            .collect::<Result<_, _>>()?;
        Ok(Some(AccountRecord {
            username: stored(username.to_owned())?,
            identity_key: row.get(0),
            devices,
            revoked,
        }))
    }

    async fn devices_of(&self, usernames: &[String]) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT device_id FROM devices WHERE username = ANY($1)",
                &[&usernames],
            )
            .await
            .map_err(backend)?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}
