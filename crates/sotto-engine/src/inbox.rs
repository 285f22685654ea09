//! Welcomes: joining a conversation another device added this one to.

use sotto_api::*;
use sotto_proto::mls::{Conversation, PendingJoin, Trust};

use crate::store::mls::Provider;
use crate::store::{ConversationKind, ConversationStatus};
use crate::{
    group_id_bytes, set_cursor, set_status, upsert_conversation, Error, Flow, Pins, SyncReport,
};

impl Flow {
    /// Applies the welcomes waiting in this device's inbox, then acknowledges them.
    pub(crate) async fn process_inbox(&self, report: &mut SyncReport) -> Result<(), Error> {
        let inbox: Inbox = self.get("/v1/inbox").await?;
        if inbox.items.is_empty() {
            return Ok(());
        }
        let me = self.me()?;
        let mut handled: Option<u64> = None;
        let list: ConversationList = self.get("/v1/conversations").await?;
        for item in &inbox.items {
            let Some(info) = list
                .conversations
                .iter()
                .find(|c| c.id == item.conversation)
            else {
                handled = Some(item.id); // not a conversation of ours: nothing to join
                continue;
            };
            self.ensure_pinned(&info.members).await?;
            let gid = group_id_bytes(&item.conversation)?;
            let kind = ConversationKind::from(info.kind);
            let dm_peer = if kind == ConversationKind::Dm {
                info.members
                    .iter()
                    .find(|m| m.as_str() != me.username.as_str())
                    .map(|m| m.to_string())
            } else {
                None
            };
            let join_with = |pinned_retry: bool| {
                self.with_tx(|tx, p| {
                    // Local state for this group may be stale: this device was removed and added
                    // again while away, or its own setup of the conversation lost to the one this
                    // welcome comes from. openmls will not stage a welcome over an existing group,
                    // so drop it first; if the welcome turns out to be older than that state, the
                    // transaction rolls back and the group is kept.
                    let mut kept: Option<u64> = None;
                    if let Some(g) = Conversation::load(p, &gid)? {
                        let own_setup_lost = g.epoch() == 0 && g.has_pending_commit();
                        if g.is_active() && !own_setup_lost {
                            kept = Some(g.epoch());
                        }
                        g.delete(p)?;
                    }
                    let join = PendingJoin::stage(
                        p,
                        &item.welcome.0,
                        item.ratchet_tree.as_ref().map(|t| t.0.as_slice()),
                    )?;
                    if kept.is_some_and(|epoch| join.epoch() <= epoch) {
                        return Err(Error::StaleWelcome);
                    }
                    if join.group_id() != gid.as_slice() {
                        return Err(Error::Protocol(
                            "welcome is for another conversation".into(),
                        ));
                    }
                    // Members who left since the welcome was made are not in the server's member
                    // list: fetch and pin their keys first (then verify as usual).
                    let unknown: Vec<String> = join
                        .accounts()
                        .into_iter()
                        .filter(|u| Pins(tx).pinned_identity(u).is_none())
                        .map(|u| u.to_string())
                        .collect();
                    if !unknown.is_empty() && !pinned_retry {
                        return Err(Error::PinNeeded(unknown));
                    }
                    join.accept(p, &Pins(tx))?;
                    let kind = match own_devices_kind(p, &gid, &me.username)? {
                        Some(own) => own,
                        None => kind,
                    };
                    upsert_conversation(tx, &item.conversation, kind, dm_peer.as_deref())?;
                    set_status(tx, &item.conversation, ConversationStatus::Ok, "")?;
                    set_cursor(tx, &item.conversation, item.seq)?;
                    Ok(())
                })
            };
            let res = match join_with(false) {
                Err(Error::PinNeeded(users)) => {
                    self.pin_if_known(&users).await?;
                    join_with(true)
                }
                other => other,
            };
            match res {
                Ok(()) | Err(Error::StaleWelcome) => {}
                // A local failure may pass: keep this welcome (and the ones after it) for the next
                // sync instead of acknowledging it away.
                Err(e @ Error::Storage(_)) => {
                    report.warnings.push(format!(
                        "could not apply an invitation to conversation {} yet: {e}",
                        item.conversation
                    ));
                    break;
                }
                Err(e) => report.warnings.push(format!(
                    "refused an invitation to conversation {}: {e}",
                    item.conversation
                )),
            }
            handled = Some(item.id);
        }
        if let Some(up_to) = handled {
            let _: () = self.post("/v1/inbox/ack", &InboxAck { up_to }).await?;
        }
        Ok(())
    }
}

/// For a group joined just now: `Own` if it is this account's own-devices group, `None` if it is
/// no own-devices group. One that names another account, or holds another account's device, is
/// refused (the transaction rolls back, and the invitation is dropped with a warning).
fn own_devices_kind(
    p: &Provider<'_>,
    gid: &[u8],
    me: &sotto_proto::Username,
) -> Result<Option<ConversationKind>, Error> {
    let Some(g) = Conversation::load(p, gid)? else {
        return Ok(None);
    };
    let Some(owner) = g.metadata().and_then(|m| m.own_devices_of.clone()) else {
        return Ok(None);
    };
    if owner != *me {
        return Err(Error::Protocol(format!(
            "it is the own-devices group of another account ({owner})"
        )));
    }
    if let Some(m) = g.members().into_iter().find(|m| m.cert.username != *me) {
        return Err(Error::Protocol(format!(
            "your own-devices group holds a device of {}",
            m.cert.username
        )));
    }
    Ok(Some(ConversationKind::Own))
}
