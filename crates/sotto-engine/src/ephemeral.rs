//! Ephemeral messages: typing indicators.
//!
//! A typing indicator is an MLS application message like any other (so only members read it and
//! its sender is authenticated), posted to `POST /v1/conversations/{id}/ephemeral` instead of the
//! log: the server relays it to the conversation's connected devices as a
//! [`ServerFrame::Ephemeral`](sotto_api::ServerFrame::Ephemeral) and stores nothing. A device that
//! is offline never sees it, and nothing about it reaches any store but the receiving device's MLS
//! state (its key schedule moves on, as for any message).
//!
//! Order: the frame names the conversation's last sequence number when it was relayed. A device
//! behind it applies the log first, so that it never decrypts the indicator ahead of earlier
//! messages of the same sender (which would use up their place in the sender's ratchet); a device
//! past it drops the indicator as stale without decrypting it.

use sotto_api::{SendRequest, B64};
use sotto_proto::mls::{Conversation, Incoming};
use sotto_proto::Body;

use crate::store::{ConversationKind, ConversationStatus, Tx};
use crate::{group_id_bytes, Engine, Error, Flow, SyncReport, Task, Update};

/// At most this many typing indicators between two messages this device sends in a conversation:
/// each moves the device's ratchet by one, and a member that was offline for all of them must
/// skip them all (openmls skips at most 1,000) to read the next message.
pub const MAX_TYPING_BETWEEN_MESSAGES: u64 = 500;

fn typing_key(conversation: &str) -> String {
    format!("typing_since_message:{conversation}")
}

fn typing_count(tx: &dyn Tx, conversation: &str) -> Result<u64, Error> {
    Ok(tx
        .setting(&typing_key(conversation))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Called when this device sends a message to `conversation`: typing may start again.
pub(crate) fn reset_typing(tx: &dyn Tx, conversation: &str) -> Result<(), Error> {
    Ok(tx.delete_setting(&typing_key(conversation))?)
}

impl Engine {
    /// Sends one typing indicator to the DM with `peer` (which must exist).
    pub fn typing_dm(&self, peer: &str) -> Task<()> {
        let peer = peer.to_owned();
        self.task(move |f| async move {
            let id = f
                .read(|tx, _| Ok(tx.dm_with(&peer)?.map(|c| c.id)))?
                .ok_or_else(|| Error::Invalid(format!("no conversation with {peer} yet")))?;
            f.send_typing(&id).await
        })
    }

    /// Sends one typing indicator to a group.
    pub fn typing_group(&self, group: &str) -> Task<()> {
        let group = group.to_owned();
        self.task(move |f| async move {
            let id = f.resolve_group(&group)?;
            f.send_typing(&id).await
        })
    }
}

impl Flow {
    async fn send_typing(&self, id: &str) -> Result<(), Error> {
        self.me()?;
        // In the current epoch, or no member could read it.
        let mut report = SyncReport::default();
        self.sync_conversation(id, None, &mut report).await?;
        let followed = self.read(|tx, _| {
            Ok(tx
                .conversation(id)?
                .is_some_and(|c| c.status == ConversationStatus::Ok))
        })?;
        if !followed {
            return Err(Error::Invalid(format!(
                "this device no longer follows conversation {id}"
            )));
        }
        let content = self.compose(id, Body::Typing).await?;
        let gid = group_id_bytes(id)?;
        let bytes = self.with_tx(|tx, p| {
            let sent = typing_count(tx, id)?;
            if sent >= MAX_TYPING_BETWEEN_MESSAGES {
                return Err(Error::Invalid(format!(
                    "{MAX_TYPING_BETWEEN_MESSAGES} typing indicators since your last message here: send a message first"
                )));
            }
            tx.set_setting(&typing_key(id), &(sent + 1).to_be_bytes())?;
            let keys = self.keys(tx)?;
            let mut g = Conversation::load(p, &gid)?
                .ok_or_else(|| Error::Protocol(format!("not a member of conversation {id}")))?;
            Ok(g.encrypt(p, &keys, &content)?)
        })?;
        let _: () = self
            .post(
                &format!("/v1/conversations/{id}/ephemeral"),
                &SendRequest {
                    message: B64(bytes),
                    attachments: Vec::new(),
                },
            )
            .await?;
        Ok(())
    }

    /// A relayed ephemeral message: a typing indicator becomes an update in `report`; anything
    /// else, anything stale and anything that does not decrypt is dropped (it was never meant to
    /// be kept).
    pub(crate) async fn apply_ephemeral(
        &self,
        id: &str,
        seq: u64,
        sender_device: &str,
        message: &[u8],
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let local = self.read(|tx, _| Ok(tx.conversation(id)?))?;
        let Some(local) = local.filter(|c| c.status == ConversationStatus::Ok) else {
            return Ok(());
        };
        if local.cursor > seq {
            return Ok(()); // stale: the log moved on since
        }
        if local.cursor < seq {
            self.sync_conversation(id, Some(seq), report).await?;
            self.note_read(id);
            self.send_delivery_receipts_in(id, report).await;
            let cursor = self.read(|tx, _| Ok(tx.conversation(id)?.map(|c| c.cursor)))?;
            if cursor != Some(seq) {
                return Ok(());
            }
        }
        let gid = group_id_bytes(id)?;
        let group = local.kind != ConversationKind::Dm;
        let mut typing = None;
        let res = self.with_tx(|_, p| {
            let Some(mut g) = Conversation::load(p, &gid)? else {
                return Err(Error::Rollback);
            };
            match g.process(p, message) {
                Ok(Incoming::Message { sender, content })
                    if sender.device_id.to_hex() == sender_device
                        && matches!(content.body, Body::Typing) =>
                {
                    typing = Some(Update::Typing {
                        conversation: id.to_owned(),
                        group: group.then(|| id.to_owned()),
                        user: sender.username.to_string(),
                        device: sender.device_id.to_hex(),
                    });
                    Ok(())
                }
                // Not a typing indicator from the device the server named (or not decryptable):
                // keep no trace of it.
                _ => Err(Error::Rollback),
            }
        });
        match res {
            Ok(()) | Err(Error::Rollback) => {}
            Err(e) => return Err(e),
        }
        report.updates.extend(typing);
        Ok(())
    }
}
