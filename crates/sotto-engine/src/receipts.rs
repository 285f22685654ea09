//! Delivery and read receipts, in the MIMI message-status format (draft-mahy-mimi-message-status):
//! one report per conversation lists many messages, so receipts go out batched.
//!
//! - Delivery: after every sync (and every pushed batch of entries), one report per conversation
//!   for the other accounts' messages this account has not reported delivered yet.
//! - Read: [`Engine::mark_read_dm`] / [`Engine::mark_read_group`] report everything received in a
//!   conversation as read, if read receipts are on.
//! - Read receipts are reciprocal: with the account's setting off this device neither sends them
//!   nor shows others' (history's `read_by` stays empty, no read events).
//! - A receipt from this account's other device counts for this account too: what one device
//!   reported is not reported again by another.
//!
//! Receipts are stored as records of their own (kind `receipt`) and folded into per-message
//! receipt rows ([`crate::store::Tx::put_receipt`]).

use sotto_proto::mimi::status;
use sotto_proto::{Body, MessageId};

use crate::store::ConversationStatus;
use crate::{Engine, Error, Flow, SyncReport, Task};

/// The setting that turns read receipts off (`off`); on when absent. It is an account setting,
/// synced to the account's other devices ([`crate::settings`]).
pub(crate) const READ_RECEIPTS_SETTING: &str = "read_receipts";

impl Engine {
    /// Whether this device sends and shows read receipts.
    pub fn read_receipts(&self) -> Result<bool, Error> {
        self.local().read_receipts_on()
    }

    /// Marks everything received in the DM with `peer` as read, and sends the read receipts
    /// (if read receipts are on). Returns how many messages it marked.
    pub fn mark_read_dm(&self, peer: &str) -> Task<(usize, SyncReport)> {
        let peer = peer.to_owned();
        self.task(move |f| async move {
            let mut report = f.sync().await?;
            let id = f
                .read(|tx, _| Ok(tx.dm_with(&peer)?.map(|c| c.id)))?
                .ok_or_else(|| Error::Invalid(format!("no conversation with {peer} yet")))?;
            let n = f.mark_read(&id, &mut report).await?;
            Ok((n, report))
        })
    }

    /// Marks everything received in a group as read, and sends the read receipts (if on).
    pub fn mark_read_group(&self, group: &str) -> Task<(usize, SyncReport)> {
        let group = group.to_owned();
        self.task(move |f| async move {
            let mut report = f.sync().await?;
            let id = f.resolve_group(&group)?;
            let n = f.mark_read(&id, &mut report).await?;
            Ok((n, report))
        })
    }
}

impl Flow {
    pub(crate) fn read_receipts_on(&self) -> Result<bool, Error> {
        self.read(|tx, _| crate::settings::switch_on(tx, READ_RECEIPTS_SETTING))
    }

    async fn mark_read(&self, id: &str, report: &mut SyncReport) -> Result<usize, Error> {
        if self.read_receipts_on()? {
            return self.send_receipts(id, status::READ, report).await;
        }
        let me = self.me()?;
        self.with_tx(|tx, _| {
            let ids = tx.unreceipted(id, me.username.as_str(), status::READ)?;
            for m in &ids {
                tx.put_receipt(id, m, me.username.as_str(), status::READ)?;
            }
            Ok(ids.len())
        })
    }

    /// Sends delivery receipts in every followed conversation that needs them.
    pub(crate) async fn send_delivery_receipts(
        &self,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        for id in self.followed_conversations()? {
            self.send_delivery_receipts_in(&id, report).await;
        }
        Ok(())
    }

    /// Sends the delivery receipts one conversation needs; a failure is a warning (they go out
    /// with the next sync).
    pub(crate) async fn send_delivery_receipts_in(&self, id: &str, report: &mut SyncReport) {
        let followed = self
            .read(|tx, _| {
                Ok(tx
                    .conversation(id)?
                    .is_some_and(|c| c.status == ConversationStatus::Ok))
            })
            .unwrap_or(false);
        if !followed {
            return;
        }
        if let Err(e) = self.send_receipts(id, status::DELIVERED, report).await {
            report.warnings.push(format!(
                "conversation {id}: delivery receipts not sent yet: {e}"
            ));
        }
    }

    /// Reports `status` for every message of other accounts in `id` this account has not
    /// reported it for, in reports of at most [`sotto_proto::mimi::MAX_STATUS_ENTRIES`]. A report
    /// marks its messages reported in the transaction that stores it for sending (the outbox
    /// sends it later if it cannot go now).
    async fn send_receipts(
        &self,
        id: &str,
        status: u8,
        report: &mut SyncReport,
    ) -> Result<usize, Error> {
        let me = self.me()?;
        let ids = self.read(|tx, _| Ok(tx.unreceipted(id, me.username.as_str(), status)?))?;
        // Content v1 ids cannot be named in a MIMI report: they are marked here and not sent.
        let (mimi, v1): (Vec<MessageId>, Vec<MessageId>) = ids
            .iter()
            .filter_map(|m| MessageId::from_hex(m))
            .partition(|m| m.mimi().is_some());
        if !v1.is_empty() {
            self.with_tx(|tx, _| {
                for m in &v1 {
                    tx.put_receipt(id, &m.to_hex(), me.username.as_str(), status)?;
                }
                Ok(())
            })?;
        }
        for chunk in mimi.chunks(sotto_proto::mimi::MAX_STATUS_ENTRIES) {
            let body = Body::Receipts {
                report: chunk.iter().map(|m| (*m, status)).collect(),
            };
            let content = self.compose(id, body).await?;
            match self.post_message(id, &content, report).await {
                Ok(_) | Err(Error::Queued { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ids.len())
    }
}
