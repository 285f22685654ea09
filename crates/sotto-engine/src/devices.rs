//! The account's devices: listing them (each checked against the pinned identity key), revoking
//! one and the follow-up in every conversation, and adding a newly linked device to the
//! conversations it is missing from.

use sotto_proto::mls::Conversation;
use sotto_proto::{DeviceCertificate, DeviceId};

use crate::commits::Plan;
use crate::{group_id_bytes, DeviceLine, Engine, Error, Flow, SyncReport, Task, MAX_ATTEMPTS};

impl Engine {
    /// This account's devices, each checked against the pinned identity key.
    pub fn devices(&self) -> Task<Vec<DeviceLine>> {
        self.task(|f| async move {
            let me = f.me()?;
            let (acc, key) = f.fetch_account(me.username.as_str()).await?;
            Ok(acc
                .devices
                .into_iter()
                .map(|d| {
                    let verified = DeviceCertificate::decode(&d.certificate.0)
                        .map(|c| {
                            c.identity_key == key
                                && c.verify_self_signed().is_ok()
                                && c.device_id.to_hex() == d.device_id
                        })
                        .unwrap_or(false);
                    DeviceLine {
                        this_device: d.device_id == me.device_id.to_hex(),
                        device_id: d.device_id.into_string(),
                        created_at: d.created_at,
                        verified,
                    }
                })
                .collect())
        })
    }

    /// Revokes a device of this account (another one, or this one). The server stops accepting it at
    /// once and it stops being served any conversation; unless it is this device, the conversations'
    /// MLS groups then drop it (this device commits its removal now; the account's other devices
    /// would on their next sync), so it cannot decrypt anything sent afterwards.
    pub fn revoke_device(&self, device_id: &str) -> Task<SyncReport> {
        let device_id = device_id.to_owned();
        self.task(move |f| async move {
            let me = f.me()?;
            let id = device_id.trim().to_ascii_lowercase();
            if id.parse::<DeviceId>().is_err() {
                return Err(Error::Invalid(format!(
                    "not a device id: {device_id} (see `sotto devices`)"
                )));
            }
            let () = f
                .delete(&format!("/v1/devices/{id}"))
                .await
                .map_err(|e| match e {
                    Error::Api {
                        code: sotto_api::ErrorCode::NotFound,
                        ..
                    } => Error::Invalid(format!(
                        "your account has no device {id} (see `sotto devices`)"
                    )),
                    other => other,
                })?;
            if id == me.device_id.to_hex() {
                return Ok(SyncReport::default());
            }
            f.sync().await
        })
    }
}

impl Flow {
    /// Adds this account's devices that are missing from its conversations, and removes the ones
    /// the server lists as revoked.
    pub(crate) async fn reconcile_devices(&self, report: &mut SyncReport) -> Result<(), Error> {
        let me = self.me()?;
        let (acc, key) = self.fetch_account(me.username.as_str()).await?;
        let mut mine: Vec<String> = Vec::new();
        for d in &acc.devices {
            match DeviceCertificate::decode(&d.certificate.0) {
                Ok(c)
                    if c.identity_key == key
                        && c.verify_self_signed().is_ok()
                        && c.device_id.to_hex() == d.device_id =>
                {
                    mine.push(d.device_id.to_string())
                }
                _ => report.warnings.push(format!(
                    "ignoring device {} of your account: its certificate does not verify",
                    d.device_id
                )),
            }
        }
        for id in self.followed_conversations()? {
            if let Err(e) = self
                .remove_revoked_devices(&id, &acc.revoked_devices, report)
                .await
            {
                report.warnings.push(format!(
                    "could not remove your revoked devices from conversation {id}: {e}"
                ));
            }
            if let Err(e) = self.add_missing_devices(&id, &mine, report).await {
                report.warnings.push(format!(
                    "could not add your new devices to conversation {id}: {e}"
                ));
            }
        }
        Ok(())
    }

    /// Removes from a conversation's MLS group every device of this account that the server lists
    /// as revoked, so that it cannot decrypt what is sent from now on. (Only devices explicitly
    /// revoked: a device missing from a stale device list, such as one linked a moment ago, stays.)
    async fn remove_revoked_devices(
        &self,
        id: &str,
        revoked: &[sotto_api::DeviceId],
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        if revoked.is_empty() {
            return Ok(());
        }
        let me = self.me()?;
        let this = me.device_id.to_hex();
        let stale = |g: &Conversation| -> Vec<u32> {
            g.members()
                .into_iter()
                .filter(|m| m.cert.username == me.username)
                .filter(|m| {
                    let d = m.cert.device_id.to_hex();
                    d != this && revoked.iter().any(|r| *r == d)
                })
                .map(|m| m.leaf_index)
                .collect()
        };
        let gid = group_id_bytes(id)?;
        let todo = self.read(|_, p| {
            Ok(match Conversation::load(p, &gid)? {
                Some(g) => g.is_active() && !stale(&g).is_empty(),
                None => false,
            })
        })?;
        if !todo {
            return Ok(());
        }
        self.change_group(id, report, |g| {
            let remove = stale(g);
            Ok((!remove.is_empty()).then(|| Plan {
                remove,
                ..Plan::default()
            }))
        })
        .await
        .map(|_| ())
    }

    /// Adds this account's verified devices that a conversation's group lacks (a newly linked
    /// device joins this way).
    async fn add_missing_devices(
        &self,
        id: &str,
        mine: &[String],
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let me = self.me()?;
        let gid = group_id_bytes(id)?;
        for attempt in 0..MAX_ATTEMPTS {
            let state = self.read(|_, p| {
                let Some(g) = Conversation::load(p, &gid)? else {
                    return Ok(None);
                };
                if !g.is_active() {
                    return Ok(None);
                }
                let present: Vec<String> = g
                    .members()
                    .into_iter()
                    .filter(|m| m.cert.username == me.username)
                    .map(|m| m.cert.device_id.to_hex())
                    .collect();
                let missing: Vec<String> = mine
                    .iter()
                    .filter(|d| !present.contains(d))
                    .cloned()
                    .collect();
                Ok(Some((missing, u16::from(g.ciphersuite()))))
            })?;
            let Some((missing, suite)) = state else {
                return Ok(());
            };
            if missing.is_empty() {
                return Ok(());
            }
            let kps = self
                .claim(me.username.as_str(), &missing, suite, report)
                .await?;
            if kps.is_empty() {
                return Ok(());
            }
            let bundle = self.with_tx(|tx, p| {
                let keys = self.keys(tx)?;
                let mut g = Conversation::load(p, &gid)?
                    .ok_or_else(|| Error::Storage("group vanished".into()))?;
                Ok(g.add_devices(p, &keys, &kps)?)
            })?;
            match self.post_commit(id, bundle).await {
                // The new devices cannot read the settings sent before they joined.
                Ok(_) if self.is_own_group(id)? => return self.send_all_settings(id, report).await,
                Ok(_) => return Ok(()),
                Err(e) if e.is_stale_epoch() => {
                    self.backoff_after_lost_race(attempt).await;
                    self.sync_conversation(id, None, report).await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::TooManyAttempts(MAX_ATTEMPTS))
    }
}
