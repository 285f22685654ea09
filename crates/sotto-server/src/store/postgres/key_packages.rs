//! Key packages: uploads, counts, claims: the `KeyPackageStore` methods of the PostgreSQL backend.

use super::*;

#[async_trait]
impl KeyPackageStore for PostgresStore {
    async fn add_key_packages(&self, device_id: &str, kps: KeyPackages) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        insert_key_packages(&tx, device_id, &kps).await?;
        tx.commit().await.map_err(backend)
    }

    async fn key_package_count(&self, device_id: &str, suite: u16) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND suite = $2 AND NOT last_resort",
                &[&device_id, &i32::from(suite)],
            )
            .await
            .map_err(backend)?;
        Ok(as_u64(row.get(0)))
    }

    async fn claim_key_packages(
        &self,
        username: &str,
        only: &[String],
        exclude: &str,
        suite: u16,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let suite = i32::from(suite);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let all: Vec<String> = tx
            .query(
                "SELECT device_id FROM devices WHERE username = $1 ORDER BY created_at, device_id",
                &[&username],
            )
            .await
            .map_err(backend)?
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let devices = super::rules::claim_targets(all, only, exclude);
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            // A one-time package, locked so two nodes never hand out the same one.
            let one_time = tx
                .query_opt(
                    "SELECT id, data FROM key_packages WHERE device_id = $1 AND suite = $2 AND NOT last_resort
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[&d, &suite],
                )
                .await
                .map_err(backend)?;
            if let Some(row) = one_time {
                let id: i64 = row.get(0);
                tx.execute("DELETE FROM key_packages WHERE id = $1", &[&id])
                    .await
                    .map_err(backend)?;
                out.push((d, row.get(1)));
                continue;
            }
            // Else the last-resort package: never deleted, so concurrent claims share it unlocked.
            // (A claim that finds every one-time package locked by another claim takes it too,
            // rather than wait: SQLite's single writer never sees that case.)
            let last_resort = tx
                .query_opt(
                    "SELECT data FROM key_packages WHERE device_id = $1 AND suite = $2 AND last_resort
                     ORDER BY id LIMIT 1",
                    &[&d, &suite],
                )
                .await
                .map_err(backend)?;
            let Some(row) = last_resort else {
                return Err(StoreError::NoKeyPackage(d));
            };
            out.push((d, row.get(0)));
        }
        tx.commit().await.map_err(backend)?;
        Ok(out)
    }
}
