//! Key packages: uploads, counts, claims: the `KeyPackageStore` methods of the SQLite backend.

use super::*;

#[async_trait]
impl KeyPackageStore for SqliteStore {
    async fn add_key_packages(&self, device_id: &str, kps: KeyPackages) -> Result<(), StoreError> {
        let device_id = device_id.to_owned();
        self.write(move |tx| {
            insert_key_packages(tx, &device_id, &kps)?;
            Ok(())
        })
        .await
    }

    async fn key_package_count(&self, device_id: &str, suite: u16) -> Result<u64, StoreError> {
        let device_id = device_id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM key_packages WHERE device_id = ?1 AND suite = ?2 AND last_resort = 0",
                params![device_id, suite],
                |r| r.get::<_, i64>(0),
            )
            .map(as_u64)
            .map_err(backend)
        })
        .await
    }

    async fn claim_key_packages(
        &self,
        username: &str,
        only: &[String],
        exclude: &str,
        suite: u16,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (username, only, exclude) = (username.to_owned(), only.to_vec(), exclude.to_owned());
        self.write(move |tx| {
            let devices: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached("SELECT device_id FROM devices WHERE username = ?1 ORDER BY created_at, device_id")
                    .map_err(backend)?;
                let all = stmt
                    .query_map(params![username], |r| r.get::<_, String>(0))
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                rules::claim_targets(all, &only, &exclude)
            };
            let mut out = Vec::with_capacity(devices.len());
            for d in devices {
                // A one-time package first (oldest), else the last-resort one (kept).
                let row: Option<(i64, Vec<u8>, i64)> = tx
                    .query_row(
                        "SELECT id, data, last_resort FROM key_packages WHERE device_id = ?1 AND suite = ?2
                         ORDER BY last_resort, id LIMIT 1",
                        params![d, suite],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(backend)?;
                let Some((id, data, last_resort)) = row else {
                    return Err(StoreError::NoKeyPackage(d));
                };
                if last_resort == 0 {
                    tx.execute("DELETE FROM key_packages WHERE id = ?1", params![id])
                        .map_err(backend)?;
                }
                out.push((d, data));
            }
            Ok(out)
        })
        .await
    }
}
