//! Rich messages: replies, reactions, edits, unsends and mentions, as rules over stored records.
//!
//! Every reaction, edit and unsend is stored as a record of its own that names the message it acts
//! on (`target`); what the history shows is folded from the message and its records
//! ([`fold`]). A record is checked against its target before it is stored ([`check_incoming`]):
//! - only the original sender may edit or unsend, within [`RECEIVE_WINDOW_MS`] of sending, at
//!   most [`MAX_EDITS`] times; a sender's own client allows only [`SEND_WINDOW_MS`];
//! - reactions and edits act on messages, not on other actions, and not on unsent messages;
//! - a reply may not close a loop of replies.
//!
//! A record whose target has not arrived yet is kept, hidden, and checked when the target arrives
//! ([`settle_waiting`]): applied and shown then, or dropped with a warning. Nothing is lost for
//! arriving early, and nothing unchecked is ever shown.
//!
//! Windows are measured on the server's acceptance times of the two log entries
//! ([`sotto_api::LogEntry::accepted_at`]), which every member sees alike and no sender can set;
//! only for records stored before servers said (0) on the senders' clocks carried in the content.

use std::collections::BTreeMap;

use sotto_proto::attachment::FileKey;
use sotto_proto::{Body, FileRef, MessageId, Preview};

use crate::store::{AttachmentRecord, ContentKind, MessageRecord, PreviewRecord, Tx};
use crate::Error;

/// How long after sending a sender's own client lets it edit or unsend.
pub const SEND_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// How long after sending a receiving client accepts an edit or unsend.
pub const RECEIVE_WINDOW_MS: u64 = 48 * 3600 * 1000;
/// How many times a message may be edited.
pub const MAX_EDITS: usize = 10;
/// How far a reply chain is followed looking for a loop.
const MAX_REPLY_CHAIN: usize = 256;

/// The stored fields of a body: (kind, text, reply_to, target).
pub(crate) fn fields(body: &Body) -> (ContentKind, Option<String>, Option<String>, Option<String>) {
    let hex = |id: &MessageId| id.to_hex();
    match body {
        Body::Text { text, reply_to } => (
            ContentKind::Text,
            Some(text.clone()),
            reply_to.as_ref().map(hex),
            None,
        ),
        Body::Reaction { to, emoji } => (
            ContentKind::Reaction,
            Some(emoji.clone()),
            None,
            Some(hex(to)),
        ),
        Body::Unreact { to, reaction } => (
            ContentKind::Unreact,
            None,
            Some(hex(reaction)),
            Some(hex(to)),
        ),
        Body::Edit {
            original,
            text,
            reply_to,
        } => (
            ContentKind::Edit,
            Some(text.clone()),
            reply_to.as_ref().map(hex),
            Some(hex(original)),
        ),
        Body::Unsend { original } => (ContentKind::Unsend, None, None, Some(hex(original))),
        Body::Receipts { report } => {
            let list: Vec<(String, u8)> = report.iter().map(|(id, s)| (hex(id), *s)).collect();
            (
                ContentKind::Receipt,
                serde_json::to_string(&list).ok(),
                None,
                None,
            )
        }
        Body::Settings { settings } => (
            ContentKind::Settings,
            Some(crate::settings::to_json(settings)),
            None,
            None,
        ),
        Body::File {
            caption, reply_to, ..
        } => (
            ContentKind::File,
            caption.clone(),
            reply_to.as_ref().map(hex),
            None,
        ),
        _ => (ContentKind::Unsupported, None, None, None),
    }
}

/// The attachment record of a body that carries a file.
pub(crate) fn attachment_of(body: &Body) -> Option<AttachmentRecord> {
    let Body::File { file, preview, .. } = body else {
        return None;
    };
    let hex = sotto_proto::identity::hex;
    Some(AttachmentRecord {
        blob: file.blob.clone(),
        key: hex(file.key.as_bytes()),
        size: file.size,
        hash: hex(&file.hash),
        content_type: file.content_type.clone(),
        name: file.name.clone(),
        preview: preview.as_ref().map(|p| PreviewRecord {
            content_type: p.content_type.clone(),
            data: sotto_api::B64(p.data.clone()),
        }),
        downloaded: None,
    })
}

/// The file reference a stored attachment record was made from.
pub(crate) fn file_ref_of(a: &AttachmentRecord) -> Option<FileRef> {
    let key = sotto_proto::identity::unhex(&a.key)?;
    let hash: [u8; 32] = sotto_proto::identity::unhex(&a.hash)?.try_into().ok()?;
    Some(FileRef {
        blob: a.blob.clone(),
        key: FileKey::from_bytes(&key).ok()?,
        size: a.size,
        hash,
        content_type: a.content_type.clone(),
        name: a.name.clone(),
    })
}

/// The body a stored record was made from (the inverse of [`fields`]).
pub(crate) fn body_of(m: &MessageRecord) -> Option<Body> {
    let id = |s: &Option<String>| s.as_deref().and_then(MessageId::from_hex);
    Some(match m.kind {
        ContentKind::Text => Body::Text {
            text: m.text.clone()?,
            reply_to: match &m.reply_to {
                Some(r) => Some(MessageId::from_hex(r)?),
                None => None,
            },
        },
        ContentKind::Reaction => Body::Reaction {
            to: id(&m.target)?,
            emoji: m.text.clone()?,
        },
        ContentKind::Unreact => Body::Unreact {
            to: id(&m.target)?,
            reaction: id(&m.reply_to)?,
        },
        ContentKind::Edit => Body::Edit {
            original: id(&m.target)?,
            text: m.text.clone()?,
            reply_to: match &m.reply_to {
                Some(r) => Some(MessageId::from_hex(r)?),
                None => None,
            },
        },
        ContentKind::Unsend => Body::Unsend {
            original: id(&m.target)?,
        },
        ContentKind::Receipt => Body::Receipts {
            report: receipt_list(m)?
                .into_iter()
                .map(|(id, s)| Some((MessageId::from_hex(&id)?, s)))
                .collect::<Option<Vec<_>>>()?,
        },
        ContentKind::Settings => Body::Settings {
            settings: crate::settings::from_json(m.text.as_deref()?)?,
        },
        ContentKind::File => Body::File {
            file: Box::new(file_ref_of(m.attachment.as_ref()?)?),
            caption: m.text.clone(),
            reply_to: match &m.reply_to {
                Some(r) => Some(MessageId::from_hex(r)?),
                None => None,
            },
            preview: m.attachment.as_ref()?.preview.as_ref().map(|p| Preview {
                content_type: p.content_type.clone(),
                data: p.data.0.clone(),
            }),
        },
        ContentKind::Timer | ContentKind::Unsupported => return None,
    })
}

/// What to do with an incoming record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store it and show it.
    Apply,
    /// Its target has not arrived: store it hidden, check it when the target comes.
    Wait,
    /// Break a rule: drop it, with the reason.
    Refuse(String),
}

/// Checks a record that arrived from the log against what this device has.
pub(crate) fn check_incoming(tx: &dyn Tx, rec: &MessageRecord) -> Result<Verdict, Error> {
    match rec.kind {
        ContentKind::Text | ContentKind::File => {
            if let Some(why) = reply_loop(tx, rec)? {
                return Ok(Verdict::Refuse(why));
            }
            Ok(Verdict::Apply)
        }
        ContentKind::Unsupported | ContentKind::Receipt => Ok(Verdict::Apply),
        ContentKind::Settings => Ok(match crate::settings::check_incoming(tx, rec)? {
            None => Verdict::Apply,
            Some(why) => Verdict::Refuse(why),
        }),
        _ => {
            let Some(target) = rec.target.as_deref() else {
                return Ok(Verdict::Refuse("an action on no message".into()));
            };
            match tx.message(&rec.conversation, target)? {
                None => Ok(Verdict::Wait),
                Some(t) => Ok(match check_action(tx, &t, rec, RECEIVE_WINDOW_MS)? {
                    None => Verdict::Apply,
                    Some(why) => Verdict::Refuse(why),
                }),
            }
        }
    }
}

/// A reply that leads back to itself (only possible with content v1's sender-chosen ids; MIMI ids
/// are hashes of what they refer to).
fn reply_loop(tx: &dyn Tx, rec: &MessageRecord) -> Result<Option<String>, Error> {
    let mut next = rec.reply_to.clone();
    for _ in 0..MAX_REPLY_CHAIN {
        let Some(id) = next else { return Ok(None) };
        if id == rec.id {
            return Ok(Some("its replies form a loop".into()));
        }
        next = tx.message(&rec.conversation, &id)?.and_then(|m| m.reply_to);
    }
    Ok(Some("its chain of replies is too long".into()))
}

/// Why `rec` may not act on `target`, if it may not. `window`: how long after the target was sent
/// an edit or unsend is allowed.
pub(crate) fn check_action(
    tx: &dyn Tx,
    target: &MessageRecord,
    rec: &MessageRecord,
    window: u64,
) -> Result<Option<String>, Error> {
    if !target.kind.is_message() {
        return Ok(Some(format!(
            "it acts on a {}, not on a message",
            target.kind.as_str()
        )));
    }
    // One read of the actions already on the target serves both checks below.
    let actions = tx.messages_targeting(&target.conversation, &target.id)?;
    let deleted = actions.iter().any(|a| a.kind == ContentKind::Unsend);
    let what = rec.kind.as_str();
    match rec.kind {
        ContentKind::Reaction | ContentKind::Unreact if deleted => {
            return Ok(Some(format!("a {what} on an unsent message")));
        }
        ContentKind::Edit | ContentKind::Unsend => {
            if rec.sender != target.sender {
                return Ok(Some(format!(
                    "{} may not {what} a message {} sent",
                    rec.sender, target.sender
                )));
            }
            if deleted {
                return Ok(Some(format!("an {what} of an unsent message")));
            }
            let elapsed = match (target.accepted_at, rec.accepted_at) {
                // The server's clock, the same for every member, and not the sender's to set.
                (t, r) if t > 0 && r > 0 => r.saturating_sub(t).saturating_mul(1000),
                // Stored before servers said (or not acknowledged yet): the senders' clocks.
                _ => {
                    if rec.sent_at_ms < target.sent_at_ms {
                        return Ok(Some(format!(
                            "an {what} that claims to be older than the message"
                        )));
                    }
                    rec.sent_at_ms - target.sent_at_ms
                }
            };
            if elapsed > window {
                return Ok(Some(format!(
                    "an {what} more than {} hours after the message was sent",
                    window / 3_600_000
                )));
            }
            if rec.kind == ContentKind::Edit {
                let edits = actions
                    .iter()
                    .filter(|a| a.kind == ContentKind::Edit && a.id != rec.id)
                    .count();
                if edits >= MAX_EDITS {
                    return Ok(Some(format!(
                        "a message may be edited at most {MAX_EDITS} times"
                    )));
                }
            }
        }
        _ => {}
    }
    Ok(None)
}

/// When a message was sent, in Unix milliseconds: the server's acceptance time once it is known,
/// else the sender's clock.
fn sent_time(m: &MessageRecord) -> u64 {
    if m.accepted_at > 0 {
        m.accepted_at.saturating_mul(1000)
    } else {
        m.sent_at_ms
    }
}

/// Carries out what an accepted record does to what is stored: an unsend removes the text of the
/// message and of every edit of it, keeping the records as tombstones.
pub(crate) fn apply_effects(tx: &dyn Tx, rec: &MessageRecord) -> Result<(), Error> {
    if rec.kind == ContentKind::Receipt {
        return apply_receipts(tx, rec);
    }
    if rec.kind == ContentKind::Settings {
        return crate::settings::recompute(tx);
    }
    if rec.kind != ContentKind::Unsend {
        return Ok(());
    }
    let Some(target) = rec.target.as_deref() else {
        return Ok(());
    };
    tx.set_message_text(&rec.conversation, target, None)?;
    // The file goes with it: without its key, nothing here can open the blob any more.
    tx.set_attachment(&rec.conversation, target, None)?;
    for a in tx.messages_targeting(&rec.conversation, target)? {
        if a.kind == ContentKind::Edit {
            tx.set_message_text(&rec.conversation, &a.id, None)?;
        }
    }
    Ok(())
}

/// A record dropped for breaking a rule, for the user's warning.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// What it was.
    pub kind: ContentKind,
    /// Who sent it.
    pub sender: String,
    /// Its place in the log.
    pub seq: Option<u64>,
    /// Which rule it broke.
    pub why: String,
}

impl Refusal {
    fn of(rec: &MessageRecord, why: String) -> Self {
        Self {
            kind: rec.kind,
            sender: rec.sender.clone(),
            seq: rec.seq,
            why,
        }
    }
}

/// The (message id, status) pairs of a stored receipt record.
pub(crate) fn receipt_list(m: &MessageRecord) -> Option<Vec<(String, u8)>> {
    serde_json::from_str(m.text.as_deref()?).ok()
}

/// Records what a receipt says: its sender's account delivered or read those messages (not its
/// own: nobody receipts their own message). Other statuses are not used.
fn apply_receipts(tx: &dyn Tx, rec: &MessageRecord) -> Result<(), Error> {
    for (id, status) in receipt_list(rec).unwrap_or_default() {
        if !(status == sotto_proto::mimi::status::DELIVERED
            || status == sotto_proto::mimi::status::READ)
        {
            continue;
        }
        let own = tx
            .message(&rec.conversation, &id)?
            .is_some_and(|m| m.sender == rec.sender);
        if !own {
            tx.put_receipt(&rec.conversation, &id, &rec.sender, status)?;
        }
    }
    Ok(())
}

/// Stores an incoming record as its verdict says. Returns what was refused (this record, or
/// records that waited for it), for warnings.
pub(crate) fn store_incoming(tx: &dyn Tx, mut rec: MessageRecord) -> Result<Vec<Refusal>, Error> {
    match check_incoming(tx, &rec)? {
        Verdict::Refuse(why) => Ok(vec![Refusal::of(&rec, why)]),
        Verdict::Wait => {
            rec.shown = true; // hidden until its target arrives and it is checked
            tx.insert_message(&rec)?;
            Ok(Vec::new())
        }
        Verdict::Apply => {
            if tx.insert_message(&rec)? {
                apply_effects(tx, &rec)?;
                if rec.kind.is_message() {
                    return settle_waiting(tx, &rec);
                }
            }
            Ok(Vec::new())
        }
    }
}

/// A message arrived: the records that came before it and waited for it are checked in log order,
/// then applied and shown, or dropped. Returns the ones dropped.
pub(crate) fn settle_waiting(tx: &dyn Tx, target: &MessageRecord) -> Result<Vec<Refusal>, Error> {
    let mut refused = Vec::new();
    // Records already there are all waiting ones (the target is new). Take them all out, then put
    // back each that passes, in log order, so each is checked against the ones before it only.
    let waiting = tx.messages_targeting(&target.conversation, &target.id)?;
    for a in &waiting {
        tx.delete_message(&a.conversation, &a.id)?;
    }
    for a in waiting {
        match check_action(tx, target, &a, RECEIVE_WINDOW_MS)? {
            Some(why) => refused.push(Refusal::of(&a, why)),
            None => {
                let mut shown = a;
                shown.shown = false;
                tx.insert_message(&shown)?;
                apply_effects(tx, &shown)?;
            }
        }
    }
    Ok(refused)
}

/// A message as the history shows it, folded from its record and the actions on it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Folded {
    pub text: Option<String>,
    pub edits: u32,
    pub deleted: bool,
    pub reactions: BTreeMap<String, Vec<String>>,
    /// Each account's current reaction: (reaction id, emoji).
    pub by_user: BTreeMap<String, (String, String)>,
}

/// Folds a message's actions into what it shows.
pub(crate) fn fold(tx: &dyn Tx, m: &MessageRecord) -> Result<Folded, Error> {
    let mut f = Folded {
        text: m.text.clone(),
        ..Folded::default()
    };
    for a in tx.messages_targeting(&m.conversation, &m.id)? {
        match a.kind {
            ContentKind::Edit => {
                f.edits += 1;
                if a.text.is_some() {
                    f.text = a.text.clone();
                }
            }
            ContentKind::Unsend => f.deleted = true,
            ContentKind::Reaction => {
                if let Some(emoji) = &a.text {
                    f.by_user
                        .insert(a.sender.clone(), (a.id.clone(), emoji.clone()));
                }
            }
            ContentKind::Unreact
                if f.by_user.get(&a.sender).map(|(id, _)| id) == a.reply_to.as_ref() =>
            {
                f.by_user.remove(&a.sender);
            }
            _ => {}
        }
    }
    if f.deleted {
        f.text = None;
        f.by_user.clear();
    }
    for (user, (_, emoji)) in &f.by_user {
        f.reactions
            .entry(emoji.clone())
            .or_default()
            .push(user.clone());
    }
    Ok(f)
}

/// Whether `text` mentions `@user` (as a whole word: what follows is not a username character).
pub(crate) fn mentions(text: &str, user: &str) -> bool {
    let needle = format!("@{user}");
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c);
    text.match_indices(&needle).any(|(i, _)| {
        let before_ok = text[..i].chars().next_back().is_none_or(|c| !is_name(c));
        let rest = &text[i + needle.len()..];
        // A trailing '.' ends a sentence, not the name.
        let after_ok = match rest.chars().next() {
            None => true,
            Some('.') => rest[1..].chars().next().is_none_or(|c| !is_name(c)),
            Some(c) => !is_name(c),
        };
        before_ok && after_ok
    })
}

impl crate::Engine {
    /// Sends `body` to conversation `conversation` as it is, skipping this client's own checks of
    /// the content rules (after a sync). Every honest receiver enforces the rules anyway, which is
    /// what this is for: it stands in for a modified client in tests, and it lets an app send
    /// content kinds of its own. Returns the message id.
    pub fn dangerous_send_unchecked(&self, conversation: &str, body: Body) -> crate::Task<String> {
        let conversation = conversation.to_owned();
        self.task(move |f| async move {
            f.me()?;
            let mut report = f.sync().await?;
            let content = f.compose(&conversation, body).await?;
            f.post_message(&conversation, &content, &mut report).await?;
            Ok(content.id.to_hex())
        })
    }

    /// Acts on the message `message_id` (hex, as `send`, `sync --json` and `history --json` print
    /// it), in whichever conversation holds it: a reply, a reaction, an edit, an unsend (after a
    /// sync). Returns the id of the message sent for it.
    ///
    /// The rules every receiver enforces are checked here first, so that a refusal is an error now
    /// instead of a message everyone drops: only the sender edits or unsends, within
    /// [`SEND_WINDOW_MS`], at most [`MAX_EDITS`] edits; nothing acts on an unsent message.
    pub fn act(
        &self,
        message_id: &str,
        action: crate::Action,
    ) -> crate::Task<(String, crate::SyncReport)> {
        let message_id = message_id.to_ascii_lowercase();
        self.task(move |f| async move {
            let me = f.me()?;
            if let crate::Action::Reply(text) | crate::Action::Edit(text) = &action {
                crate::dm::check_text(text)?;
            }
            let mut report = f.sync().await?;
            let target = f
                .read(|tx, _| Ok(tx.message_by_id(&message_id)?))?
                .filter(|m| m.kind.is_message())
                .ok_or_else(|| Error::Invalid(format!("no message {message_id} on this device")))?;
            let conv = target.conversation.clone();
            let followed = f.read(|tx, _| {
                Ok(tx
                    .conversation(&conv)?
                    .is_some_and(|c| c.status == crate::store::ConversationStatus::Ok))
            })?;
            if !followed {
                return Err(Error::Invalid(format!(
                    "message {message_id} is in a conversation this device no longer follows"
                )));
            }
            let to = MessageId::from_hex(&target.id)
                .filter(|id| id.mimi().is_some())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "message {message_id} was sent by a version of Sotto before MIMI content and cannot be acted on"
                    ))
                })?;
            let now = f.io.now_ms().await;
            let folded = f.read(|tx, _| fold(tx, &target))?;
            if folded.deleted {
                return Err(Error::Invalid(format!("message {message_id} was unsent")));
            }
            let mine = target.sender == me.username.as_str();
            let own_only = |what: &str| -> Result<(), Error> {
                if !mine {
                    return Err(Error::Invalid(format!(
                        "only {} may {what} message {message_id}",
                        target.sender
                    )));
                }
                if now.saturating_sub(sent_time(&target)) > SEND_WINDOW_MS {
                    return Err(Error::Invalid(format!(
                        "message {message_id} is more than 24 hours old and can no longer be {what}ed"
                    )));
                }
                Ok(())
            };
            let body = match action {
                crate::Action::Reply(text) => Body::Text {
                    text,
                    reply_to: Some(to),
                },
                crate::Action::React(emoji) => Body::Reaction { to, emoji },
                crate::Action::Unreact => {
                    let (reaction, _) = folded
                        .by_user
                        .get(me.username.as_str())
                        .ok_or_else(|| {
                            Error::Invalid(format!("you have not reacted to message {message_id}"))
                        })?;
                    let reaction = MessageId::from_hex(reaction)
                        .ok_or_else(|| Error::Storage("a stored reaction id is not hex".into()))?;
                    Body::Unreact { to, reaction }
                }
                crate::Action::Edit(text) => {
                    own_only("edit")?;
                    if folded.edits as usize >= MAX_EDITS {
                        return Err(Error::Invalid(format!(
                            "message {message_id} was edited {MAX_EDITS} times already"
                        )));
                    }
                    Body::Edit {
                        original: to,
                        text,
                        reply_to: target.reply_to.as_deref().and_then(MessageId::from_hex),
                    }
                }
                crate::Action::Unsend => {
                    own_only("unsend")?;
                    if target.seq.is_none() {
                        // It may or may not have reached the server; its outbox copy must stay
                        // whole until it has, so that it is sent once and then unsent.
                        return Err(Error::Invalid(format!(
                            "message {message_id} has not reached the server yet; unsend it after the next sotto sync"
                        )));
                    }
                    Body::Unsend { original: to }
                }
            };
            let content = f.compose(&conv, body).await.map_err(|e| match e {
                Error::Mls(m) => Error::Invalid(m.to_string()),
                e => e,
            })?;
            let unsent_blob = match (&content.body, &target.attachment) {
                (Body::Unsend { .. }, Some(a)) => Some(a.blob.clone()),
                _ => None,
            };
            f.post_message(&conv, &content, &mut report).await?;
            if let Some(blob) = unsent_blob {
                f.remove_blob(&blob, &mut report).await;
            }
            Ok((content.id.to_hex(), report))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};

    const HOUR: u64 = 3_600_000;

    fn rec(
        id: &str,
        kind: ContentKind,
        sender: &str,
        at: u64,
        target: Option<&str>,
    ) -> MessageRecord {
        MessageRecord {
            conversation: "c".into(),
            id: id.into(),
            seq: Some(1),
            sender: sender.into(),
            sender_device: "d".into(),
            sent_at_ms: at,
            kind,
            text: Some("t".into()),
            reply_to: None,
            target: target.map(str::to_owned),
            salt: None,
            outgoing: false,
            shown: false,
            local_order: 0,
            accepted_at: 0,
            attachment: None,
            expires_at: None,
            after_shown: None,
        }
    }

    /// The receive-side windows and limits, on the senders' clocks (no server times stored).
    #[test]
    fn edit_and_unsend_windows_and_the_edit_limit() {
        let store = MemoryStore::new();
        let tx = store.begin(true).unwrap();
        let t0 = 1_700_000_000_000;
        tx.insert_message(&rec("m", ContentKind::Text, "alice", t0, None))
            .unwrap();
        let verdict = |r: &MessageRecord| check_incoming(tx.as_ref(), r).unwrap();
        let edit = |id: &str, at: u64| rec(id, ContentKind::Edit, "alice", at, Some("m"));
        assert_eq!(verdict(&edit("e1", t0 + 47 * HOUR)), Verdict::Apply);
        assert!(
            matches!(verdict(&edit("e2", t0 + 49 * HOUR)), Verdict::Refuse(w) if w.contains("48 hours"))
        );
        assert!(matches!(verdict(&edit("e3", t0 - 1)), Verdict::Refuse(w) if w.contains("older")));
        let other = rec("e4", ContentKind::Edit, "bob", t0 + HOUR, Some("m"));
        assert!(matches!(verdict(&other), Verdict::Refuse(w) if w.contains("bob may not edit")));
        let unsend = rec(
            "u1",
            ContentKind::Unsend,
            "alice",
            t0 + 49 * HOUR,
            Some("m"),
        );
        assert!(matches!(verdict(&unsend), Verdict::Refuse(w) if w.contains("48 hours")));
        // Ten edits are taken; the eleventh is refused.
        for i in 0..MAX_EDITS {
            let e = edit(&format!("ok{i}"), t0 + HOUR);
            assert_eq!(store_incoming(tx.as_ref(), e).unwrap().len(), 0);
        }
        assert!(
            matches!(verdict(&edit("more", t0 + HOUR)), Verdict::Refuse(w) if w.contains("at most 10"))
        );
        // An action on an action, and on nothing yet.
        let on_edit = rec("r", ContentKind::Reaction, "bob", t0, Some("ok0"));
        assert!(matches!(verdict(&on_edit), Verdict::Refuse(w) if w.contains("not on a message")));
        let early = rec("r2", ContentKind::Reaction, "bob", t0, Some("later"));
        assert_eq!(verdict(&early), Verdict::Wait);
    }

    /// With the server's acceptance times known, the windows are measured on them: a sender that
    /// lies about its clock changes nothing.
    #[test]
    fn windows_use_the_servers_times_when_known() {
        let store = MemoryStore::new();
        let tx = store.begin(true).unwrap();
        let t0 = 1_700_000_000_000;
        let s0 = t0 / 1000;
        let mut m = rec("m", ContentKind::Text, "alice", t0, None);
        m.accepted_at = s0;
        tx.insert_message(&m).unwrap();
        let verdict = |r: &MessageRecord| check_incoming(tx.as_ref(), r).unwrap();
        // Accepted 49 h later, though its sender claims one hour: refused.
        let mut late = rec("e1", ContentKind::Edit, "alice", t0 + HOUR, Some("m"));
        late.accepted_at = s0 + 49 * 3600;
        assert!(matches!(verdict(&late), Verdict::Refuse(w) if w.contains("48 hours")));
        let mut unsend = rec("u1", ContentKind::Unsend, "alice", t0, Some("m"));
        unsend.accepted_at = s0 + 48 * 3600 + 1;
        assert!(matches!(verdict(&unsend), Verdict::Refuse(w) if w.contains("48 hours")));
        // Accepted within 48 h, though its sender claims a week, or a time before the message.
        let mut ok = rec("e2", ContentKind::Edit, "alice", t0 + 168 * HOUR, Some("m"));
        ok.accepted_at = s0 + 47 * 3600;
        assert_eq!(verdict(&ok), Verdict::Apply);
        ok.sent_at_ms = t0 - HOUR;
        assert_eq!(verdict(&ok), Verdict::Apply);
        assert_eq!(sent_time(&m), t0);
    }

    /// Content v1's ids are chosen by the sender, so a modified client could make replies loop.
    #[test]
    fn a_reply_loop_is_refused() {
        let store = MemoryStore::new();
        let tx = store.begin(true).unwrap();
        let mut a = rec("a", ContentKind::Text, "bob", 1, None);
        a.reply_to = Some("b".into());
        assert_eq!(check_incoming(tx.as_ref(), &a).unwrap(), Verdict::Apply);
        tx.insert_message(&a).unwrap();
        let mut b = rec("b", ContentKind::Text, "bob", 2, None);
        b.reply_to = Some("a".into());
        assert!(
            matches!(check_incoming(tx.as_ref(), &b).unwrap(), Verdict::Refuse(w) if w.contains("loop"))
        );
        let mut c = rec("c", ContentKind::Text, "bob", 3, None);
        c.reply_to = Some("a".into());
        assert_eq!(check_incoming(tx.as_ref(), &c).unwrap(), Verdict::Apply);
    }

    #[test]
    fn mentions_are_whole_words() {
        assert!(mentions("hi @bob", "bob"));
        assert!(mentions("@bob, look", "bob"));
        assert!(mentions("thanks @bob.", "bob"));
        assert!(!mentions("hi @bobby", "bob"));
        assert!(!mentions("mail bob@bob2", "bob"));
        assert!(!mentions("hi bob", "bob"));
        assert!(!mentions("@bob.smith", "bob"));
    }
}
