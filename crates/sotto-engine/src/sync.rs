//! The order of a full sync: welcomes first (they bring new conversations), then every
//! conversation's log (pins fetched first), then settling our own pending commits, forgetting
//! conversations the server no longer lists, removing members who left (as an admin), adding this
//! account's new devices and removing its revoked ones, re-sending the outbox, and topping up key
//! packages.

use sotto_api::*;
use sotto_proto::mls::Conversation;
use sotto_proto::Username;

use crate::commits::removal_plan;
use crate::store::{ConversationKind, ConversationStatus};
use crate::{group_id_bytes, set_status, Engine, Error, Flow, SyncReport, Task};

impl Engine {
    /// Fetches and applies everything pending: welcomes, commits and messages, then adds this
    /// account's new devices to its conversations and tops up key packages.
    pub fn sync(&self) -> Task<SyncReport> {
        self.task(|f| async move { f.sync().await })
    }
}

impl Flow {
    pub(crate) async fn sync(&self) -> Result<SyncReport, Error> {
        self.me()?;
        self.full_sync.set(true);
        let mut report = SyncReport::default();
        self.process_inbox(&mut report).await?;
        let list: ConversationList = self.get("/v1/conversations").await?;
        let mut members: Vec<&sotto_api::Username> =
            list.conversations.iter().flat_map(|c| &c.members).collect();
        members.sort();
        members.dedup();
        self.ensure_pinned(&members).await?;
        for c in &list.conversations {
            self.sync_conversation(&c.id, Some(c.last_seq), &mut report)
                .await?;
            self.resolve_pending(&c.id, c.epoch).await?;
        }
        self.forget_lost_conversations(&list).await?;
        for c in list.conversations.iter().filter(|c| !c.departed.is_empty()) {
            if let Err(e) = self.remove_departed(c, &mut report).await {
                report.warnings.push(format!(
                    "could not remove the members who left group {}: {e}",
                    c.id
                ));
            }
        }
        self.reconcile_devices(&mut report).await?;
        self.resend_pending(&mut report).await?;
        self.send_delivery_receipts(&mut report).await?;
        self.replenish_key_packages().await?;
        Ok(report)
    }

    /// Marks conversations the server no longer lists for this account (removed, or left) and drops
    /// their MLS state: nothing sent there afterwards can be read by this device anyway.
    async fn forget_lost_conversations(&self, list: &ConversationList) -> Result<(), Error> {
        let candidates: Vec<(String, ConversationStatus)> = self.read(|tx, _| {
            Ok(tx
                .conversations()?
                .into_iter()
                .filter(|c| c.kind != ConversationKind::Dm)
                .filter(|c| c.status != ConversationStatus::Left)
                .filter(|c| !list.conversations.iter().any(|l| l.id == c.id))
                .map(|c| (c.id, c.status))
                .collect())
        })?;
        if candidates.is_empty() {
            return Ok(());
        }
        // Ask again: another process of this device may have created or joined a group since
        // `list` was fetched.
        let fresh: ConversationList = self.get("/v1/conversations").await?;
        for (id, status) in candidates {
            if fresh.conversations.iter().any(|c| c.id == id) {
                continue;
            }
            let gid = group_id_bytes(&id)?;
            self.with_tx(|tx, p| {
                if let Some(g) = Conversation::load(p, &gid)? {
                    g.delete(p)?;
                }
                if status != ConversationStatus::Removed {
                    set_status(
                        tx,
                        &id,
                        ConversationStatus::Removed,
                        "you are no longer a member of this group",
                    )?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// As an admin, removes the devices of accounts that left a group.
    async fn remove_departed(
        &self,
        info: &ConversationInfo,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let me = self.me()?;
        let gid = group_id_bytes(&info.id)?;
        let admin = self.read(|_, p| {
            Ok(Conversation::load(p, &gid)?
                .and_then(|g| g.metadata())
                .is_some_and(|m| m.is_admin(&me.username)))
        })?;
        if !admin {
            return Ok(());
        }
        let departed: Vec<Username> = info
            .departed
            .iter()
            .map(|u| Username::new(u))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.change_group(&info.id, report, |g| Ok(removal_plan(g, &departed)))
            .await
            .map(|_| ())
    }
}
