//! Accounts and their devices: the `AccountStore` methods of the SQLite backend.

use super::*;

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        username: &str,
        identity_key: &[u8],
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<(), StoreError> {
        let (username, identity_key) = (username.to_owned(), identity_key.to_vec());
        self.write(move |tx| {
            // A deleted account's name stays taken.
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO accounts (username, identity_key, created_at)
                     SELECT ?1, ?2, ?3
                     WHERE NOT EXISTS (SELECT 1 FROM deleted_accounts WHERE username = ?1)",
                    params![username, identity_key, device.created_at],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::UsernameTaken);
            }
            insert_device(tx, &username, &device, &kps)?;
            Ok(())
        })
        .await
    }

    async fn revoke_device(
        &self,
        username: &str,
        device_id: &str,
        caller: &str,
    ) -> Result<(), StoreError> {
        let (username, device_id, caller) =
            (username.to_owned(), device_id.to_owned(), caller.to_owned());
        self.write(move |tx| {
            let devices: Vec<String> = tx
                .prepare_cached("SELECT device_id FROM devices WHERE username = ?1")
                .and_then(|mut s| {
                    s.query_map(params![username], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            rules::check_revoke(&devices, &device_id, &caller)?;
            for sql in [
                "DELETE FROM key_packages WHERE device_id = ?1",
                "DELETE FROM inbox WHERE device_id = ?1",
                "DELETE FROM devices WHERE device_id = ?1",
                "DELETE FROM conversation_devices WHERE device_id = ?1",
            ] {
                tx.execute(sql, params![device_id]).map_err(backend)?;
            }
            tx.execute(
                "DELETE FROM links WHERE username = ?1 AND used = 0",
                params![username],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO revoked_devices (device_id, username, revoked_at) VALUES (?1, ?2, strftime('%s','now'))",
                params![device_id, username],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn device_auth(&self, device_id: &str) -> Result<Option<DeviceAuth>, StoreError> {
        let device_id = device_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT d.username, d.token_hash, a.locked FROM devices d
                 JOIN accounts a ON a.username = d.username WHERE d.device_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![device_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(backend)?
            .map(|(username, hash, locked)| {
                let token_hash = rules::token_hash(&hash)?;
                Ok(DeviceAuth {
                    username: stored(username)?,
                    token_hash,
                    locked,
                })
            })
            .transpose()
        })
        .await
    }

    async fn account(&self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            let identity_key: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT identity_key FROM accounts WHERE username = ?1",
                    params![username],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let Some(identity_key) = identity_key else {
                return Ok(None);
            };
            let mut stmt = conn
                .prepare_cached(
                    "SELECT device_id, certificate, token_hash, created_at FROM devices
                     WHERE username = ?1 ORDER BY created_at, device_id",
                )
                .map_err(backend)?;
            let devices = stmt
                .query_map(params![username], |r| {
                    Ok((
                        id_at::<DeviceId>(r, 0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?
                .into_iter()
                .map(|(device_id, certificate, hash, created_at)| {
                    Ok(DeviceRecord {
                        device_id,
                        certificate,
                        token_hash: rules::token_hash(&hash)?,
                        created_at,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let revoked: Vec<DeviceId> = conn
                .prepare_cached(
                    "SELECT device_id FROM revoked_devices WHERE username = ?1 ORDER BY device_id",
                )
                .and_then(|mut s| {
                    s.query_map(params![username], |r| id_at(r, 0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            Ok(Some(AccountRecord {
                username: stored(username)?,
                identity_key,
                devices,
                revoked,
            }))
        })
        .await
    }

    async fn devices_of(&self, usernames: &[String]) -> Result<Vec<String>, StoreError> {
        let usernames = usernames.to_vec();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT device_id FROM devices WHERE username = ?1")
                .map_err(backend)?;
            let mut out = Vec::new();
            for u in &usernames {
                let ids = stmt
                    .query_map(params![u], |r| r.get::<_, String>(0))
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                out.extend(ids);
            }
            Ok(out)
        })
        .await
    }
}
