//! Conversations: DMs, groups, the caller's list, and leaving a group.

use sotto_api::*;
use sotto_proto::mls::ServerGroup;

use super::{parse_username, random_id, Caller, DeliveryService, DsError};
use crate::store::ConversationRecord;

fn info(c: ConversationRecord) -> ConversationInfo {
    ConversationInfo {
        id: c.id,
        kind: c.kind,
        epoch: c.epoch,
        last_seq: c.last_seq,
        members: c.members,
        departed: c.departed,
    }
}

impl DeliveryService {
    /// Creates an empty group owned by the caller; its first commit (by the caller) adds the
    /// members.
    pub async fn create_group(&self, caller: &Caller) -> Result<ConversationInfo, DsError> {
        self.ensure_current(caller).await?;
        let c = self
            .store
            .create_group(&caller.username, &random_id())
            .await?;
        tracing::info!(conversation = %c.id, "group created");
        Ok(info(c))
    }

    /// Gets or creates the DM with `peer` (exactly one per pair of accounts).
    pub async fn create_dm(
        &self,
        caller: &Caller,
        req: CreateDmRequest,
    ) -> Result<ConversationInfo, DsError> {
        self.ensure_current(caller).await?;
        let peer = parse_username(&req.peer)?;
        if peer.as_str() == caller.username {
            // Well-formed, so not a 400: it conflicts with what a DM is.
            return Err(DsError::conflict("cannot start a DM with yourself"));
        }
        if self.store.account(peer.as_str()).await?.is_none() {
            return Err(DsError::not_found(format!("no account named {peer}")));
        }
        let c = self
            .store
            .get_or_create_dm(&caller.username, peer.as_str(), &random_id())
            .await?;
        Ok(info(c))
    }

    /// The caller's conversations.
    pub async fn conversations(&self, caller: &Caller) -> Result<ConversationList, DsError> {
        Ok(ConversationList {
            conversations: self
                .store
                .conversations_of(&caller.username)
                .await?
                .into_iter()
                .map(info)
                .collect(),
        })
    }

    /// The caller leaves a group. It stops being a member at once; an admin's device removes its
    /// devices from the MLS group on its next sync. The last admin cannot leave while others
    /// remain.
    pub async fn leave(&self, caller: &Caller, id: &ConversationId) -> Result<(), DsError> {
        self.ensure_current(caller).await?;
        let c = self.member_conversation(caller, id).await?;
        if c.kind != ConversationKind::Group {
            return Err(DsError::conflict("only groups can be left"));
        }
        let admins: Vec<String> = match self.store.group_state(&c.id).await? {
            Some((_, snapshot)) => {
                let gid = sotto_proto::identity::unhex(&c.id)
                    .ok_or_else(|| DsError::internal("conversation id unreadable"))?;
                let group = ServerGroup::load(&snapshot, &gid)
                    .map_err(|_| DsError::internal("group state unreadable"))?;
                group
                    .metadata()
                    .map(|m| m.admins.iter().map(|a| a.as_str().to_owned()).collect())
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        self.store.leave(&c.id, &caller.username, &admins).await?;
        tracing::info!(conversation = %c.id, "member left");
        self.wake_members(&c.id, c.last_seq).await;
        Ok(())
    }
}
