//! Commits: the server checks each against the group's public MLS state before it is appended.

use std::collections::HashMap;
use std::net::IpAddr;

use openmls_rust_crypto::RustCrypto;
use sotto_api::*;
use sotto_proto::group::Kind;
use sotto_proto::mls::{check_welcome, MlsError, ServerGroup};

use super::{check_envelope, parse_username, Body, Caller, DeliveryService, DsError, Limit};
use crate::store::{AccountRecord, ConversationRecord, NewCommit, StoreError};

fn mls_refusal(e: MlsError) -> DsError {
    match e {
        MlsError::Policy(m) => DsError::forbidden(format!("commit refused: {m}")),
        MlsError::Internal(_) => DsError::internal("could not process the commit"),
        other => DsError::bad_request(other.to_string()),
    }
}

/// The policy kind of a conversation.
fn kind_of(c: &ConversationRecord) -> Result<Kind, DsError> {
    if c.kind == ConversationKind::Group {
        return Ok(Kind::Group);
    }
    match c.members.as_slice() {
        [a, b] => Ok(Kind::Dm([parse_username(a)?, parse_username(b)?])),
        _ => Err(DsError::internal("DM without two members")),
    }
}

impl DeliveryService {
    /// Applies a commit bundle. The server checks the commit against the group's public MLS state
    /// (signature, framing, tree changes, the admin rules), derives who was added and who the
    /// members are from it, and appends it only if it is the first commit for the current epoch.
    pub async fn commit(
        &self,
        caller: &Caller,
        ip: Option<IpAddr>,
        id: &ConversationId,
        body: impl Body<CommitRequest>,
    ) -> Result<Accepted, DsError> {
        self.admit(Limit::Send, Some(&caller.device_id), ip).await?;
        let req = body.await?;
        let c = self.member_conversation(caller, id).await?;
        let env = check_envelope(&c.id, &req.commit.0, true)?;
        if env.epoch != req.epoch {
            return Err(DsError::bad_request("epoch does not match the commit"));
        }
        if req.epoch != c.epoch {
            return Err(StoreError::StaleEpoch { current: c.epoch }.into());
        }
        let crypto = RustCrypto::default();
        let gid = sotto_proto::identity::unhex(&c.id)
            .ok_or_else(|| DsError::internal("conversation id unreadable"))?;
        let caller_cert = self.caller_cert(caller).await?;
        let mut group = match self.store.group_state(&c.id).await? {
            Some((epoch, _)) if epoch != req.epoch => {
                return Err(StoreError::StaleEpoch { current: epoch }.into())
            }
            Some((_, snapshot)) => ServerGroup::load(&snapshot, &gid).map_err(|e| {
                tracing::error!(conversation = %c.id, error = %e, "stored group state unreadable");
                DsError::internal("group state unreadable")
            })?,
            None => {
                let gi = req.initial_group_info.as_ref().ok_or_else(|| {
                    DsError::bad_request(
                        "the first commit of a conversation needs initial_group_info",
                    )
                })?;
                let g = ServerGroup::start(&crypto, &gi.0, &gid, c.kind == ConversationKind::Group)
                    .map_err(mls_refusal)?;
                if g.members().first() != Some(&caller_cert) {
                    return Err(DsError::bad_request(
                        "the initial group must hold exactly the calling device",
                    ));
                }
                g
            }
        };
        let kind = kind_of(&c)?;
        let effect = group
            .process_commit(&crypto, &req.commit.0, &kind)
            .map_err(mls_refusal)?;
        if effect.sender != caller_cert {
            return Err(DsError::bad_request(
                "the commit was made by another device than the caller",
            ));
        }
        // Every added device must be registered, with exactly the certificate the server holds
        // (which the account's identity key signed).
        let mut accounts: HashMap<String, AccountRecord> = HashMap::new();
        for cert in &effect.added {
            let user = cert.username.as_str().to_owned();
            if !accounts.contains_key(&user) {
                let acc = self.store.account(&user).await?.ok_or_else(|| {
                    DsError::bad_request(format!("commit adds a device of unknown account {user}"))
                })?;
                accounts.insert(user.clone(), acc);
            }
            let registered = accounts[&user].devices.iter().any(|d| {
                d.device_id == cert.device_id.to_hex() && d.certificate == cert.to_bytes()
            });
            if !registered {
                return Err(DsError::bad_request(format!(
                    "commit adds device {} of {user}, which is not registered with that certificate",
                    cert.device_id
                )));
            }
        }
        let welcomed: Vec<String> = effect.added.iter().map(|c| c.device_id.to_hex()).collect();
        let welcome = match (&req.welcome, welcomed.is_empty()) {
            (None, true) => None,
            (Some(w), false) => {
                check_welcome(&w.0).map_err(|e| DsError::bad_request(e.to_string()))?;
                Some((w.0.clone(), welcomed.clone()))
            }
            (None, false) => {
                return Err(DsError::bad_request(
                    "a commit that adds devices needs a welcome",
                ))
            }
            (Some(_), true) => return Err(DsError::bad_request("a welcome without added devices")),
        };
        let snapshot = group
            .snapshot()
            .map_err(|_| DsError::internal("could not save group state"))?;
        let ratchet_tree = match &welcome {
            Some(_) => Some(
                group
                    .ratchet_tree()
                    .map_err(|_| DsError::internal("could not export the tree"))?,
            ),
            None => None,
        };
        let members = effect
            .members
            .iter()
            .map(|m| (m.device_id.to_hex(), m.username.as_str().to_owned()))
            .collect();
        let accepted = self
            .store
            .append_commit(
                &c.id,
                NewCommit {
                    epoch: req.epoch,
                    sender_device: caller.device_id.to_string(),
                    commit: req.commit.0,
                    welcome,
                    ratchet_tree,
                    state: snapshot,
                    members,
                    expiry_secs: group.settings().server_bound_secs(),
                },
            )
            .await?;
        metrics::counter!("sotto_commits_accepted_total").increment(1);
        tracing::info!(conversation = %c.id, seq = accepted.seq, epoch = accepted.epoch, added = welcomed.len(), removed = effect.removed.len(), "commit accepted");
        if !welcomed.is_empty() {
            self.bus.publish(welcomed, ServerFrame::Inbox);
        }
        // Devices just removed learn it on their next sync; everyone still in is woken.
        let removed: Vec<String> = effect
            .removed
            .iter()
            .map(|c| c.device_id.to_hex())
            .collect();
        if !removed.is_empty() {
            self.bus.publish(removed, ServerFrame::Devices);
        }
        self.wake_members(&c.id, accepted.seq).await;
        Ok(accepted)
    }
}
