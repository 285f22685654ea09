//! Applying a conversation's log, entry by entry, each in one transaction (its MLS state change, the
//! message it decrypted and the new cursor together).
//!
//! Commits: another device's commit is verified (every new leaf's certificate against pinned keys,
//! the group's rules) and merged; a commit that does not verify blocks the conversation, because
//! skipping it would leave this device in a different epoch from everyone else. Our own commit is
//! merged if it was still pending; a lost epoch-0 setup is dropped for the winner's welcome.
//!
//! Application messages that do not decrypt or verify are not skipped for good: the entry is
//! recorded as waiting, the cursor moves on (later entries keep arriving), and later syncs fetch it
//! again from the server (this device's read position stays before it, so the server keeps it) and
//! try again, up to [`MAX_DECRYPT_TRIES`] times or [`MAX_DECRYPT_WAIT_MS`], then record it as
//! failed. A failed attempt is rolled back whole, so it consumes no message key.

use std::collections::BTreeSet;

use sotto_api::*;
use sotto_proto::group::Kind;
use sotto_proto::mls::{Conversation, Incoming, MlsError};
use sotto_proto::Username;

use crate::commits::in_flight_key;
use crate::store::{
    ConversationKind, ConversationStatus, MessageRecord, UndecryptableRecord, UndecryptableState,
};
use crate::{group_id_bytes, set_cursor, set_status, Error, Flow, Pins, SyncEvent, SyncReport};

/// How many times an undecryptable message is tried, the first time included.
pub const MAX_DECRYPT_TRIES: u32 = 5;
/// How long after its first failure an undecryptable message is still tried.
pub const MAX_DECRYPT_WAIT_MS: u64 = 7 * 24 * 3600 * 1000;

/// What applying one entry did to the conversation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flowing {
    /// Go on with the next entry.
    On,
    /// Stop: the conversation got refused, or this device's own setup lost and it waits for a
    /// welcome.
    Stop,
}

/// An application message's decryption, done inside a transaction that is kept only on success.
enum Decrypted {
    Ok(Box<MessageRecord>),
    /// Content that never belongs in the log (a typing indicator a server wrote there): the
    /// entry is passed over and nothing is stored.
    Ignored,
    Failed {
        error: String,
    },
}

impl Flow {
    /// Applies a conversation's log after the local cursor. In a full sync, also fetches again the
    /// entries still waiting to be decrypted and retries each once (per task: the catch-ups after
    /// lost commit races and pushed wake-ups do not use up tries).
    pub(crate) async fn sync_conversation(
        &self,
        id: &str,
        known_last: Option<u64>,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let gid = group_id_bytes(id)?;
        let (local, waiting, has_group) = self.read(|tx, p| {
            let local = tx.conversation(id)?;
            let waiting: BTreeSet<u64> = tx
                .undecryptable(id)?
                .into_iter()
                .filter(|u| u.state == UndecryptableState::Waiting)
                .map(|u| u.seq)
                .collect();
            Ok((local, waiting, Conversation::load(p, &gid)?.is_some()))
        })?;
        let Some(local) = local else { return Ok(()) };
        if local.status != ConversationStatus::Ok || !has_group {
            return Ok(());
        }
        let to_retry: BTreeSet<u64> = if self.full_sync.get() {
            let done = self.retried.borrow();
            waiting
                .iter()
                .copied()
                .filter(|s| !done.contains(&(id.to_owned(), *s)))
                .collect()
        } else {
            BTreeSet::new()
        };
        if known_last.is_some_and(|l| l <= local.cursor) && to_retry.is_empty() {
            return Ok(());
        }
        // The read position told to the server stays before the oldest waiting entry, on every
        // page, so that pruning keeps it for the retry.
        let keep = waiting.first().map(|w| w - 1);
        let mut after = match to_retry.first() {
            Some(w) => local.cursor.min(w - 1),
            None => local.cursor,
        };
        let mut seen = BTreeSet::new();
        loop {
            let path = match keep {
                Some(k) => format!(
                    "/v1/conversations/{id}/log?after={after}&read={}",
                    k.min(after)
                ),
                None => format!("/v1/conversations/{id}/log?after={after}"),
            };
            let page: LogPage = self.get(&path).await?;
            let Some(last) = page.entries.last().map(|e| e.seq) else {
                break;
            };
            for entry in &page.entries {
                seen.insert(entry.seq);
                if entry.seq <= local.cursor {
                    if to_retry.contains(&entry.seq) {
                        self.retried.borrow_mut().insert((id.to_owned(), entry.seq));
                        self.retry_entry(id, &gid, entry, report).await?;
                    }
                    continue;
                }
                if self.apply_with_pins(id, &gid, entry, report).await? == Flowing::Stop {
                    return Ok(());
                }
            }
            after = last;
            if !page.more {
                break;
            }
        }
        // The log was read from before every entry to retry to its head: one it did not hold
        // (retention took it) cannot come back.
        for seq in to_retry.difference(&seen).copied().collect::<Vec<_>>() {
            self.retried.borrow_mut().insert((id.to_owned(), seq));
            self.record_failure(id, seq, "the server no longer holds it", true, report)
                .await?;
        }
        Ok(())
    }

    /// Applies an entry the server pushed inline if it is the next one this device expects;
    /// otherwise fetches the log as for a wake-up.
    pub(crate) async fn apply_pushed(
        &self,
        id: &str,
        entry: &LogEntry,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let gid = group_id_bytes(id)?;
        let next = self.read(|tx, p| {
            let local = tx.conversation(id)?;
            Ok(local
                .is_some_and(|l| l.status == ConversationStatus::Ok && l.cursor + 1 == entry.seq)
                && Conversation::load(p, &gid)?.is_some())
        })?;
        if !next {
            return self.sync_conversation(id, Some(entry.seq), report).await;
        }
        self.apply_with_pins(id, &gid, entry, report)
            .await
            .map(|_| ())
    }

    /// [`Flow::apply_entry`], fetching and pinning the keys of accounts a commit adds that this
    /// device never saw, then applying it again.
    async fn apply_with_pins(
        &self,
        id: &str,
        gid: &[u8],
        entry: &LogEntry,
        report: &mut SyncReport,
    ) -> Result<Flowing, Error> {
        match self.apply_entry(id, gid, entry, report, false).await {
            Err(Error::PinNeeded(users)) => {
                self.pin_if_known(&users).await?;
                self.apply_entry(id, gid, entry, report, true).await
            }
            other => other,
        }
    }

    /// Applies one log entry in one transaction.
    async fn apply_entry(
        &self,
        id: &str,
        gid: &[u8],
        entry: &LogEntry,
        report: &mut SyncReport,
        pinned_retry: bool,
    ) -> Result<Flowing, Error> {
        let me = self.me()?;
        let mine = entry.sender_device == me.device_id.to_hex();
        let mut refused: Option<String> = None;
        let mut warning: Option<String> = None;
        let mut lost_setup = false;
        let mut failed: Option<(String, Option<String>)> = None;
        let mut refused_content: Vec<crate::rich::Refusal> = Vec::new();
        let res = self.with_tx(|tx, p| {
            let Some(local) = tx.conversation(id)? else { return Ok(()) };
            if entry.seq <= local.cursor {
                return Ok(()); // another process of this device got here first
            }
            if entry.seq > local.cursor.saturating_add(1) {
                warning = Some(format!(
                    "conversation {id}: {} entries expired on the server before this device fetched them",
                    entry.seq - local.cursor - 1
                ));
            }
            let mut g = Conversation::load(p, gid)?.ok_or_else(|| Error::Storage("group vanished".into()))?;
            let kind = match local.peer.as_deref().map(Username::new) {
                Some(Ok(peer)) if local.kind == ConversationKind::Dm => g.kind(&me.username, Some(&peer))?,
                _ => g.kind(&me.username, None).unwrap_or(Kind::Group),
            };
            match entry.kind {
                EntryKind::Commit if entry.epoch < g.epoch() => {} // already applied (ours, merged on acceptance)
                EntryKind::Commit if !mine && g.epoch() == 0 && g.has_pending_commit() => {
                    // Our own setup of this conversation never landed and another device's did:
                    // drop ours; that device's welcome brings us in.
                    g.delete(p)?;
                    lost_setup = true;
                    return Ok(());
                }
                EntryKind::Commit if mine && entry.epoch == g.epoch() => {
                    // Our commit, accepted while we were not looking (crash between post and merge).
                    if g.has_pending_commit() {
                        let settings_before = g.settings();
                        g.merge_pending(p)?;
                        crate::expiry::note_change(tx, id, g.epoch(), &settings_before, &g.settings(), me.username.as_str(), Some(entry.seq), entry.accepted_at)?;
                        tx.delete_setting(&in_flight_key(id))?;
                    } else {
                        // Its secrets are gone: this device cannot follow the group any more.
                        let detail = "this device's own commit was accepted after it had been dropped locally; the device must be added to the conversation again".to_owned();
                        set_status(tx, id, ConversationStatus::Broken, &detail)?;
                        refused = Some(detail);
                        return Ok(());
                    }
                }
                EntryKind::Commit if mine => {}
                EntryKind::Commit => {
                    if g.has_pending_commit() {
                        g.clear_pending(p)?; // we lost the race for this epoch
                    }
                    let settings_before = g.settings();
                    let committer = sender_of(&g, &entry.sender_device);
                    match g.process(p, &entry.data.0) {
                        Ok(Incoming::Commit(pending)) => match g.merge_verified(p, pending, &Pins(tx), &kind) {
                            Ok(()) => {
                                if let Some(who) = &committer {
                                    crate::expiry::note_change(tx, id, g.epoch(), &settings_before, &g.settings(), who, Some(entry.seq), entry.accepted_at)?;
                                }
                                if !g.is_active() {
                                    set_status(tx, id, ConversationStatus::Removed, "this device was removed from the conversation")?;
                                }
                            }
                            Err(MlsError::UnknownAccount(u)) if !pinned_retry => {
                                return Err(Error::PinNeeded(vec![u.to_string()]));
                            }
                            Err(e @ (MlsError::Certificate { .. } | MlsError::UnknownAccount(_))) => {
                                let detail = format!("a commit tried to add a device that failed verification ({e})");
                                set_status(tx, id, ConversationStatus::Refused, &detail)?;
                                refused = Some(detail);
                                return Ok(());
                            }
                            Err(e @ MlsError::Policy(_)) => {
                                let detail = format!("the server delivered a commit that breaks the group's rules ({e})");
                                set_status(tx, id, ConversationStatus::Refused, &detail)?;
                                refused = Some(detail);
                                return Ok(());
                            }
                            Err(e) => return Err(e.into()),
                        },
                        // The server checked this commit against the group's public state: if
                        // this device cannot apply it, its own state has diverged (an expired
                        // entry, a lost commit). Going on would skip an epoch silently.
                        other => {
                            let why = match other {
                                Ok(_) => "not a commit".to_owned(),
                                Err(e) => e.to_string(),
                            };
                            let detail = format!("this device cannot apply commit {} ({why}); it must be added to the conversation again", entry.seq);
                            set_status(tx, id, ConversationStatus::Broken, &detail)?;
                            refused = Some(detail);
                            return Ok(());
                        }
                    }
                }
                EntryKind::Message if mine => {}
                EntryKind::Message => {
                    let sender = sender_of(&g, &entry.sender_device);
                    match decrypt_into(&mut g, p, id, entry, &me.username) {
                        Decrypted::Ok(mut m) => {
                            // The settings of this epoch: the one the message was sent in.
                            let settings = crate::expiry::settings_at(tx, id, entry.epoch, g.settings())?;
                            crate::expiry::stamp(&mut m, &settings, entry.accepted_at);
                            refused_content = crate::rich::store_incoming(tx, *m)?;
                        }
                        Decrypted::Ignored => {}
                        Decrypted::Failed { error } => {
                            // Keep nothing this attempt changed (no message key is used up);
                            // record the entry as waiting in a transaction of its own.
                            failed = Some((error, sender));
                            return Err(Error::Rollback);
                        }
                    }
                }
            }
            set_cursor(tx, id, entry.seq)
        });
        match res {
            Ok(()) => {}
            Err(Error::Rollback) => {
                if let Some((error, sender)) = failed {
                    self.record_first_failure(id, entry, sender, &error).await?;
                    // Not tried again by the task that saw it fail.
                    self.retried.borrow_mut().insert((id.to_owned(), entry.seq));
                    report.warnings.push(format!(
                        "conversation {id}: message {} could not be decrypted yet ({error}); it will be fetched again",
                        entry.seq
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        if let Some(w) = warning {
            report.warnings.push(w);
        }
        for r in refused_content {
            report.warnings.push(refusal(id, &r));
        }
        if lost_setup {
            return Ok(Flowing::Stop);
        }
        if let Some(detail) = refused {
            report
                .warnings
                .push(format!("conversation {id} blocked: {detail}"));
            return Ok(Flowing::Stop);
        }
        Ok(Flowing::On)
    }

    /// Records a message entry that did not decrypt as waiting, and moves the cursor past it.
    async fn record_first_failure(
        &self,
        id: &str,
        entry: &LogEntry,
        sender: Option<String>,
        error: &str,
    ) -> Result<(), Error> {
        let now = self.io.now_ms().await;
        self.with_tx(|tx, _| {
            let Some(local) = tx.conversation(id)? else {
                return Ok(());
            };
            if entry.seq <= local.cursor {
                return Ok(());
            }
            tx.put_undecryptable(&UndecryptableRecord {
                conversation: id.to_owned(),
                seq: entry.seq,
                sender_device: entry.sender_device.to_string(),
                sender,
                state: UndecryptableState::Waiting,
                tries: 1,
                first_failed_ms: now,
                last_error: error.to_owned(),
            })?;
            set_cursor(tx, id, entry.seq)
        })
    }

    /// Tries a waiting entry again. On success the message takes its place by sequence number.
    async fn retry_entry(
        &self,
        id: &str,
        gid: &[u8],
        entry: &LogEntry,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let me = self.me()?;
        let mut failure: Option<String> = None;
        let mut recovered: Option<String> = None;
        let mut refused_content: Vec<crate::rich::Refusal> = Vec::new();
        let res = self.with_tx(|tx, p| {
            let waiting = tx
                .undecryptable(id)?
                .into_iter()
                .any(|u| u.seq == entry.seq && u.state == UndecryptableState::Waiting);
            if !waiting {
                return Ok(()); // another process of this device settled it
            }
            let mut g = Conversation::load(p, gid)?
                .ok_or_else(|| Error::Storage("group vanished".into()))?;
            if entry.kind != EntryKind::Message {
                failure = Some("the entry is not a message".into());
                return Err(Error::Rollback);
            }
            match decrypt_into(&mut g, p, id, entry, &me.username) {
                Decrypted::Ok(m) => {
                    recovered = Some(m.id.clone());
                    refused_content = crate::rich::store_incoming(tx, *m)?;
                    tx.delete_undecryptable(id, entry.seq)?;
                    Ok(())
                }
                Decrypted::Ignored => {
                    tx.delete_undecryptable(id, entry.seq)?;
                    Ok(())
                }
                Decrypted::Failed { error } => {
                    failure = Some(error);
                    Err(Error::Rollback)
                }
            }
        });
        for r in refused_content {
            report.warnings.push(refusal(id, &r));
        }
        match res {
            Ok(()) => {
                if let Some(message) = recovered {
                    report.events.push(SyncEvent::Recovered {
                        conversation: id.to_owned(),
                        seq: entry.seq,
                        id: message,
                    });
                }
                Ok(())
            }
            Err(Error::Rollback) => {
                let why = failure.unwrap_or_default();
                self.record_failure(id, entry.seq, &why, false, report)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    /// Counts one more failed try of a waiting entry; gives it up past the bounds (or at once when
    /// `final_` says it cannot be fetched again).
    async fn record_failure(
        &self,
        id: &str,
        seq: u64,
        why: &str,
        final_: bool,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let now = self.io.now_ms().await;
        let gave_up = self.with_tx(|tx, _| {
            let Some(mut u) = tx
                .undecryptable(id)?
                .into_iter()
                .find(|u| u.seq == seq && u.state == UndecryptableState::Waiting)
            else {
                return Ok(None);
            };
            u.tries = u.tries.saturating_add(1);
            u.last_error = why.to_owned();
            let expired = now.saturating_sub(u.first_failed_ms) >= MAX_DECRYPT_WAIT_MS;
            if final_ || u.tries >= MAX_DECRYPT_TRIES || expired {
                u.state = UndecryptableState::Failed;
            }
            tx.put_undecryptable(&u)?;
            Ok((u.state == UndecryptableState::Failed).then_some(u))
        })?;
        if let Some(u) = gave_up {
            report.events.push(SyncEvent::GaveUp {
                conversation: id.to_owned(),
                seq,
                sender: u.sender.clone(),
                tries: u.tries,
            });
            report.warnings.push(format!(
                "conversation {id}: message {seq} could not be decrypted after {} tries and was given up ({why})",
                u.tries
            ));
        }
        Ok(())
    }
}

/// The warning for a message refused by the content rules ([`crate::rich`]).
fn refusal(id: &str, r: &crate::rich::Refusal) -> String {
    let at = r.seq.map(|s| format!(" at {s}")).unwrap_or_default();
    format!(
        "conversation {id}: refused the {} from {}{at}: {}",
        r.kind.as_str(),
        r.sender,
        r.why
    )
}

/// The account of the member device `device` (hex id), if it is in the group.
fn sender_of(g: &Conversation, device: &str) -> Option<String> {
    g.members()
        .into_iter()
        .find(|m| m.cert.device_id.to_hex() == device)
        .map(|m| m.cert.username.to_string())
}

/// Decrypts and verifies an application message entry with the group's state in `p`'s
/// transaction. On failure the caller rolls the transaction back.
fn decrypt_into(
    g: &mut Conversation,
    p: &crate::store::mls::Provider<'_>,
    id: &str,
    entry: &LogEntry,
    me: &Username,
) -> Decrypted {
    match g.process(p, &entry.data.0) {
        Ok(Incoming::Message { sender, content }) => {
            if sender.device_id.to_hex() != entry.sender_device {
                return Decrypted::Failed {
                    error: "it claims another sending device than the log names".into(),
                };
            }
            if matches!(content.body, sotto_proto::Body::Typing) {
                return Decrypted::Ignored;
            }
            let (kind, text, reply_to, target) = crate::rich::fields(&content.body);
            Decrypted::Ok(Box::new(MessageRecord {
                conversation: id.to_owned(),
                id: content.id.to_hex(),
                seq: Some(entry.seq),
                sender: sender.username.to_string(),
                sender_device: sender.device_id.to_hex(),
                sent_at_ms: content.sent_at_ms,
                kind,
                text,
                reply_to,
                target,
                salt: None,
                outgoing: sender.username == *me,
                shown: false,
                local_order: 0,
                accepted_at: entry.accepted_at,
                attachment: crate::rich::attachment_of(&content.body),
                expires_at: None,
                after_shown: None,
            }))
        }
        Ok(_) => Decrypted::Failed {
            error: "the entry is not an application message".into(),
        },
        Err(e) => Decrypted::Failed {
            error: e.to_string(),
        },
    }
}
