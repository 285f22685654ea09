//! Direct messages, and the race to create one.
//!
//! `POST /v1/dms` returns the one conversation per pair. Whoever sees it at epoch 0 creates the MLS
//! group with every device of both accounts and posts the commit for epoch 0; if both sides race,
//! the commit rule picks one and the other gets the welcome.

use sotto_api::*;
use sotto_proto::mls::{Conversation, DEFAULT_CIPHERSUITE};
use sotto_proto::Username;

use crate::store::{ConversationKind, ConversationStatus};
use crate::{
    group_id_bytes, upsert_conversation, Engine, Error, Flow, Message, SyncReport, Task,
    MAX_ATTEMPTS,
};

pub(crate) fn check_text(text: &str) -> Result<(), Error> {
    if text.len() > sotto_proto::content::MAX_TEXT_BYTES {
        return Err(Error::Invalid(format!(
            "message too long: at most {} bytes",
            sotto_proto::content::MAX_TEXT_BYTES
        )));
    }
    Ok(())
}

impl Engine {
    /// Sends a DM to `peer`, creating the conversation on first use (after a sync). Returns the
    /// sent message.
    pub fn send_dm(&self, peer: &str, text: &str) -> Task<(Message, SyncReport)> {
        let (peer, text) = (peer.to_owned(), text.to_owned());
        self.task(move |f| async move {
            f.me()?;
            check_text(&text)?;
            let mut report = f.sync().await?;
            let id = f.ensure_dm(&peer, &mut report).await?;
            let message = f.send_text(&id, false, text, None, &mut report).await?;
            Ok((message, report))
        })
    }
}

impl Flow {
    fn delete_group(&self, gid: &[u8]) -> Result<(), Error> {
        self.with_tx(|_, p| {
            if let Some(g) = Conversation::load(p, gid)? {
                g.delete(p)?;
            }
            Ok(())
        })
    }

    /// Makes sure the DM with `peer` exists and this device is in its MLS group; returns its id.
    pub(crate) async fn ensure_dm(
        &self,
        peer: &str,
        report: &mut SyncReport,
    ) -> Result<String, Error> {
        let me = self.me()?;
        let peer_user = Username::new(peer).map_err(|e| Error::Invalid(e.to_string()))?;
        if peer_user == me.username {
            return Err(Error::Invalid("you cannot send a DM to yourself".into()));
        }
        self.ensure_pinned(&[peer.to_owned()]).await?;
        for _ in 0..MAX_ATTEMPTS {
            let info: ConversationInfo = match self
                .post(
                    "/v1/dms",
                    &CreateDmRequest {
                        peer: sotto_api::Username::new(peer)?,
                    },
                )
                .await
            {
                Err(Error::Api {
                    code: ErrorCode::NotFound,
                    ..
                }) => return Err(Error::UnknownUser(peer.to_owned())),
                other => other?,
            };
            let gid = group_id_bytes(&info.id)?;
            let (group, local) = self.with_tx(|tx, p| {
                upsert_conversation(tx, &info.id, ConversationKind::Dm, Some(peer))?;
                let g = Conversation::load(p, &gid)?;
                Ok((
                    g.map(|g| g.has_pending_commit()),
                    tx.conversation(&info.id)?,
                ))
            })?;
            if let Some(c) = local {
                if c.status != ConversationStatus::Ok {
                    return Err(Error::ConversationRefused {
                        id: c.id,
                        detail: c.status_detail,
                    });
                }
            }
            match group {
                Some(false) => return Ok(info.id.into_string()),
                Some(true) => {
                    // A commit of ours whose outcome was unknown: settle it, then look again.
                    self.sync_conversation(&info.id, None, report).await?;
                    self.resolve_pending(&info.id, info.epoch).await?;
                    continue;
                }
                None => {}
            }
            if info.epoch > 0 {
                self.process_inbox(report).await?;
                let joined = self.read(|_, p| Ok(Conversation::load(p, &gid)?.is_some()))?;
                if joined {
                    return Ok(info.id.into_string());
                }
                return Err(Error::NotYetAdded(peer.to_owned()));
            }
            // Nobody has set the conversation up yet: create the group with every device of both
            // accounts. If someone beats us to it, our commit is refused and their welcome arrives.
            let pq = u16::from(DEFAULT_CIPHERSUITE);
            let mut kps = self.claim(peer, &[], pq, report).await?;
            if kps.is_empty() {
                return Err(Error::Protocol(format!(
                    "none of {peer}'s devices could be verified"
                )));
            }
            kps.extend(self.claim(me.username.as_str(), &[], pq, report).await?);
            let bundle = self.with_tx(|tx, p| {
                let keys = self.keys(tx)?;
                let mut g = Conversation::create(p, &keys, &gid, DEFAULT_CIPHERSUITE, None)?;
                Ok(g.add_devices(p, &keys, &kps)?)
            })?;
            match self.post_commit(&info.id, bundle).await {
                Ok(_) => {
                    self.apply_default_timer(&info.id, report).await?;
                    return Ok(info.id.into_string());
                }
                Err(e) if e.is_stale_epoch() => {
                    self.delete_group(&gid)?;
                    self.process_inbox(report).await?;
                }
                Err(e @ Error::Api { status, .. }) if status < 500 => {
                    self.delete_group(&gid)?;
                    return Err(e);
                }
                // Unknown outcome: the next sync settles it (resolve_pending).
                Err(e) => return Err(e),
            }
        }
        Err(Error::TooManyAttempts(MAX_ATTEMPTS))
    }
}
