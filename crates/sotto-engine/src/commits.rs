//! Commits this device makes: posting one, how one whose outcome is unknown settles, and one planned
//! group change retried after losing the commit race.
//!
//! A commit refused with a 4xx (including a lost race) is dropped; one whose outcome is unknown
//! (transport error, 5xx) stays pending and the next sync settles it: merged if the log holds it
//! ([`crate::apply`]), dropped if the server's epoch never moved (`resolve_pending`, run by every sync).

use sotto_api::*;
use sotto_proto::group::GroupMetadata;
use sotto_proto::mls::{Changes, CommitBundle, Conversation};
use sotto_proto::Username;

use crate::store::ConversationStatus;
use crate::{group_id_bytes, set_status, Error, Flow, SyncReport, MAX_ATTEMPTS};

/// How long a commit posted by another process of this device may still be awaiting its answer
/// (longer than the shell's HTTP request timeout).
pub const IN_FLIGHT_GRACE_SECS: u64 = 35;

pub(crate) fn in_flight_key(conversation: &str) -> String {
    format!("commit_in_flight:{conversation}")
}

/// One planned group commit.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) add_users: Vec<String>,
    pub(crate) add_only: Vec<String>,
    pub(crate) remove: Vec<u32>,
    pub(crate) metadata: Option<GroupMetadata>,
    pub(crate) self_update: bool,
}

/// Removing every device of `users`, and dropping any of them from the admins.
pub(crate) fn removal_plan(g: &Conversation, users: &[Username]) -> Option<Plan> {
    let remove: Vec<u32> = g
        .members()
        .into_iter()
        .filter(|m| users.contains(&m.cert.username))
        .map(|m| m.leaf_index)
        .collect();
    if remove.is_empty() {
        return None;
    }
    let metadata = g.metadata().and_then(|m| {
        let mut out = m.clone();
        for u in users {
            out = out.with_admin(u, false);
        }
        (out != m).then_some(out)
    });
    Some(Plan {
        remove,
        metadata,
        ..Plan::default()
    })
}

impl Flow {
    /// After losing a commit race: wait a little, growing and jittered, so that racing devices
    /// spread out instead of colliding again.
    pub(crate) async fn backoff_after_lost_race(&self, attempt: usize) {
        let cap_ms = 10 * (attempt as u64 + 1).min(20);
        let ms = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=cap_ms);
        self.io.sleep_ms(ms).await;
    }

    /// Posts a commit bundle; on success merges it. On a definite refusal (4xx, including a lost
    /// race) drops it. When the outcome is unknown the commit stays pending.
    pub(crate) async fn post_commit(
        &self,
        conversation: &str,
        bundle: CommitBundle,
    ) -> Result<Accepted, Error> {
        let gid = group_id_bytes(conversation)?;
        let req = CommitRequest {
            epoch: bundle.epoch,
            commit: B64(bundle.commit),
            welcome: bundle.welcome.map(B64),
            initial_group_info: bundle.initial_group_info.map(B64),
        };
        // Marks the commit as in flight, so that another process on this device (say `listen`
        // while `send` runs) does not settle it as lost while this one still awaits the answer.
        let in_flight = in_flight_key(conversation);
        let now = self.io.now_secs().await;
        self.with_tx(|tx, _| Ok(tx.set_setting(&in_flight, &now.to_be_bytes())?))?;
        let res: Result<Accepted, Error> = self
            .post(&format!("/v1/conversations/{conversation}/commits"), &req)
            .await;
        match res {
            Ok(acc) => {
                self.with_tx(|tx, p| {
                    let mut g = Conversation::load(p, &gid)?
                        .ok_or_else(|| Error::Storage("group vanished".into()))?;
                    if g.has_pending_commit() {
                        let settings_before = g.settings();
                        g.merge_pending(p)?;
                        let me = self.me()?;
                        crate::expiry::note_change(
                            tx,
                            conversation,
                            g.epoch(),
                            &settings_before,
                            &g.settings(),
                            me.username.as_str(),
                            Some(acc.seq),
                            acc.accepted_at,
                        )?;
                    }
                    tx.delete_setting(&in_flight)?;
                    set_status(tx, conversation, ConversationStatus::Ok, "")?;
                    Ok(())
                })?;
                Ok(acc)
            }
            Err(e) => {
                if matches!(e, Error::Api { status, .. } if status < 500) {
                    self.with_tx(|tx, p| {
                        if let Some(mut g) = Conversation::load(p, &gid)? {
                            g.clear_pending(p)?;
                        }
                        Ok(tx.delete_setting(&in_flight)?)
                    })?;
                }
                Err(e)
            }
        }
    }

    /// Settles a commit of ours whose outcome was unknown, once the log has been applied up to the
    /// server's `server_epoch`: if the epoch never moved, the commit did not land; a group that
    /// never got past epoch 0 is dropped (it will be made again).
    pub(crate) async fn resolve_pending(&self, id: &str, server_epoch: u64) -> Result<(), Error> {
        let gid = group_id_bytes(id)?;
        let in_flight = in_flight_key(id);
        let pending = self.read(|_, p| {
            Ok(Conversation::load(p, &gid)?
                .is_some_and(|g| g.has_pending_commit() && g.epoch() == server_epoch))
        })?;
        if !pending {
            return Ok(());
        }
        let now = self.io.now_secs().await;
        self.with_tx(|tx, p| {
            let Some(mut g) = Conversation::load(p, &gid)? else {
                return Ok(());
            };
            if !g.has_pending_commit() || g.epoch() != server_epoch {
                return Ok(());
            }
            let posted_at = tx
                .setting(&in_flight)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_be_bytes);
            if posted_at.is_some_and(|t| now.saturating_sub(t) < IN_FLIGHT_GRACE_SECS) {
                return Ok(()); // another process may still be waiting for the answer
            }
            if g.epoch() == 0 {
                g.delete(p)?;
            } else {
                g.clear_pending(p)?;
            }
            Ok(tx.delete_setting(&in_flight)?)
        })
    }

    /// Makes one commit to a group, planned by `plan` from the group's current state, retrying
    /// after catching up when another commit wins the epoch. `Ok(None)`: nothing to do.
    pub(crate) async fn change_group(
        &self,
        id: &str,
        report: &mut SyncReport,
        mut plan: impl FnMut(&Conversation) -> Result<Option<Plan>, Error>,
    ) -> Result<Option<Accepted>, Error> {
        let gid = group_id_bytes(id)?;
        for attempt in 0..MAX_ATTEMPTS {
            let (todo, suite) = self.read(|_, p| {
                let g = Conversation::load(p, &gid)?
                    .ok_or_else(|| Error::Invalid(format!("you are not a member of group {id}")))?;
                if !g.is_active() {
                    return Err(Error::Invalid(format!(
                        "you are not a member of group {id}"
                    )));
                }
                Ok((plan(&g)?, u16::from(g.ciphersuite())))
            })?;
            let Some(todo) = todo else { return Ok(None) };
            let mut kps = Vec::new();
            for u in &todo.add_users {
                let got = self.claim(u, &todo.add_only, suite, report).await?;
                if got.is_empty() {
                    return Err(Error::Protocol(format!(
                        "none of {u}'s devices could be verified"
                    )));
                }
                kps.extend(got);
            }
            let bundle = self.with_tx(|tx, p| {
                let keys = self.keys(tx)?;
                let mut g = Conversation::load(p, &gid)?
                    .ok_or_else(|| Error::Storage("group vanished".into()))?;
                Ok(g.commit(
                    p,
                    &keys,
                    Changes {
                        add: &kps,
                        remove: todo.remove.clone(),
                        metadata: todo.metadata.as_ref(),
                        self_update: todo.self_update,
                    },
                )?)
            })?;
            match self.post_commit(id, bundle).await {
                Ok(acc) => return Ok(Some(acc)),
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
