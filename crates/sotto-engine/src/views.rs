//! What the app shows: messages, history, groups, devices, and what a sync noticed.

use serde::Serialize;

use std::collections::BTreeMap;

use crate::store::{
    AttachmentRecord, ContentKind, ConversationKind, MessageRecord, PreviewRecord, Tx,
    UndecryptableRecord,
};
use crate::{rfc3339_ms, Engine, Error};

/// A message as shown to the user when it arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Always `message` (what `sync --json` prints as `type`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Message id (hex: 64 digits, 32 for content v1).
    pub id: String,
    /// Conversation id.
    pub conversation: String,
    /// Group id for group messages; `None` for DMs.
    pub group: Option<String>,
    /// Sender's username.
    pub sender: String,
    /// Sender's device id.
    pub sender_device: String,
    /// The text (a file's caption; empty for a file without one).
    pub text: String,
    /// The files it carries.
    pub attachments: Vec<AttachmentView>,
    /// The message it replies to.
    pub reply_to: Option<String>,
    /// Whether it mentions this device's account (`@username`).
    pub mentions_me: bool,
    /// Sender's clock, RFC 3339.
    pub sent_at: String,
    /// Whether this device's account sent it.
    pub outgoing: bool,
    /// `message`, or `timer` for a change of the conversation's disappearing timer or vanish
    /// mode (its `text` says what changed and who changed it).
    pub content: &'static str,
    /// When this device deletes it, RFC 3339 (`None`: it does not disappear, or its clock starts
    /// once it is shown).
    pub expires_at: Option<String>,
}

/// A file a message carries, as `sync --json` and `history --json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentView {
    /// The message's id: what `sotto download` takes.
    pub id: String,
    /// File name, as the sender gave it.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type, as the sender gave it.
    pub content_type: String,
    /// Whether this device has downloaded and verified it.
    pub downloaded: bool,
    /// Where this device saved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A small image to show before the download.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewRecord>,
}

fn attachments(id: &str, a: Option<&AttachmentRecord>) -> Vec<AttachmentView> {
    a.map(|a| AttachmentView {
        id: id.to_owned(),
        name: a.name.clone(),
        size: a.size,
        content_type: a.content_type.clone(),
        downloaded: a.downloaded.is_some(),
        path: a.downloaded.clone(),
        preview: a.preview.clone(),
    })
    .into_iter()
    .collect()
}

/// A message as the history shows it now: edited, unsent, reacted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryMessage {
    /// Message id (hex).
    pub id: String,
    /// Conversation id.
    pub conversation: String,
    /// Group id for group messages; `None` for DMs.
    pub group: Option<String>,
    /// Sender's username.
    pub sender: String,
    /// Sender's device id.
    pub sender_device: String,
    /// The text (a file's caption) as last edited; `None` once unsent, and for a file without a
    /// caption.
    pub text: Option<String>,
    /// The files it carries (none once unsent).
    pub attachments: Vec<AttachmentView>,
    /// Sender's clock, RFC 3339.
    pub sent_at: String,
    /// The message it replies to.
    pub reply_to: Option<String>,
    /// Reactions: emoji to the accounts that reacted with it (one reaction per account).
    pub reactions: BTreeMap<String, Vec<String>>,
    /// How many times it was edited.
    pub edits: u32,
    /// Whether it was unsent (deleted for everyone).
    pub deleted: bool,
    /// `message`, or `timer` for a change of the conversation's disappearing settings.
    pub content: &'static str,
    /// When this device deletes it, RFC 3339 (`None`: it does not disappear, or its clock starts
    /// once it is shown).
    pub expires_at: Option<String>,
    /// Accounts a device of which received it (from their delivery receipts).
    pub delivered_to: Vec<String>,
    /// Accounts that read it (from their read receipts).
    pub read_by: Vec<String>,
    /// Whether it mentions this device's account.
    pub mentions_me: bool,
    /// Whether this device's account sent it.
    pub outgoing: bool,
}

/// A change to a message, shown when it arrives (from another account, or this account's other
/// devices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Update {
    /// A reaction was added (or replaced the account's earlier one), or removed.
    Reaction {
        /// The message reacted to.
        message: String,
        /// The reaction's own id.
        id: String,
        /// Conversation id.
        conversation: String,
        /// Group id for group messages.
        group: Option<String>,
        /// Who reacted.
        user: String,
        /// From which device.
        device: String,
        /// The emoji; `None` when the reaction was removed.
        emoji: Option<String>,
        /// Sender's clock, RFC 3339.
        sent_at: String,
    },
    /// A message was edited.
    Edit {
        /// The message edited (its first version).
        message: String,
        /// The edit's own id.
        id: String,
        /// Conversation id.
        conversation: String,
        /// Group id for group messages.
        group: Option<String>,
        /// Who edited it.
        user: String,
        /// From which device.
        device: String,
        /// The new text.
        text: String,
        /// Sender's clock, RFC 3339.
        sent_at: String,
    },
    /// A receipt: an account's device received, or the account read, a message.
    Receipt {
        /// The message.
        message: String,
        /// Conversation id.
        conversation: String,
        /// Group id for group messages.
        group: Option<String>,
        /// Whose receipt.
        user: String,
        /// From which device.
        device: String,
        /// `delivered` or `read`.
        status: &'static str,
    },
    /// Someone is typing (ephemeral: only devices connected at the time see it).
    Typing {
        /// Conversation id.
        conversation: String,
        /// Group id for group messages.
        group: Option<String>,
        /// Who is typing.
        user: String,
        /// On which device.
        device: String,
    },
    /// A message shown before is gone from this device: its timer ran out, or vanish mode
    /// took it.
    Expired {
        /// The message.
        id: String,
        /// Conversation id.
        conversation: String,
    },
    /// A message was unsent (deleted for everyone).
    Unsend {
        /// The message unsent.
        message: String,
        /// The unsend's own id.
        id: String,
        /// Conversation id.
        conversation: String,
        /// Group id for group messages.
        group: Option<String>,
        /// Who unsent it.
        user: String,
        /// From which device.
        device: String,
        /// Sender's clock, RFC 3339.
        sent_at: String,
    },
}

impl Update {
    /// The update that says a message shown before has gone (its timer ran out, or vanish mode
    /// took it).
    pub fn expired(e: &crate::Expired) -> Self {
        Update::Expired {
            id: e.id.clone(),
            conversation: e.conversation.clone(),
        }
    }
}

/// Something to do to a message (see [`Engine::act`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Reply with a text.
    Reply(String),
    /// React with an emoji (replacing this account's earlier reaction to it).
    React(String),
    /// Remove this account's reaction.
    Unreact,
    /// Replace the text (only the sender, within 24 hours, at most 10 times).
    Edit(String),
    /// Delete for everyone (only the sender, within 24 hours).
    Unsend,
}

/// One line of a conversation's history: a message, or an entry that did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
// Built once per line shown, never stored or queued in bulk: boxing would only cost callers.
#[allow(clippy::large_enum_variant)]
pub enum HistoryItem {
    /// A message, with its place in the log (`None`: not acknowledged by the server yet).
    Message {
        /// The message.
        #[serde(flatten)]
        message: HistoryMessage,
        /// Its log sequence number.
        seq: Option<u64>,
    },
    /// A log entry holding a message this device could not decrypt (yet).
    Undecryptable {
        /// Always `None`: the message id is inside the ciphertext.
        id: Option<String>,
        /// Its log sequence number.
        seq: u64,
        /// `waiting` (tried again on later syncs) or `failed` (given up).
        undecryptable: &'static str,
        /// The sender's account, where known.
        sender: Option<String>,
        /// The sending device, as the log names it.
        sender_device: String,
        /// Conversation id.
        conversation: String,
    },
}

impl HistoryItem {
    /// The log position this item is shown at.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::Message { seq, .. } => *seq,
            Self::Undecryptable { seq, .. } => Some(*seq),
        }
    }
}

/// A group as this device knows it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupLine {
    /// Group id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Admin accounts.
    pub admins: Vec<String>,
    /// Member accounts and their device ids, sorted.
    pub members: Vec<(String, Vec<String>)>,
    /// Whether the group uses the hybrid post-quantum ciphersuite.
    pub post_quantum: bool,
    /// Current MLS epoch.
    pub epoch: u64,
}

/// A conversation as the conversation list shows it.
#[derive(Clone, Serialize)]
pub struct ConversationLine {
    /// Conversation id.
    pub id: String,
    /// `dm` or `group`.
    pub kind: &'static str,
    /// The other account of a DM, or the group's name.
    pub title: String,
    /// Whether this device follows it (`ok`), or why not (`refused`, `broken`, `removed`,
    /// `left`).
    pub status: &'static str,
    /// Its newest message as the history shows it now (edited, unsent).
    pub last: Option<HistoryMessage>,
    /// Messages of other accounts this account has not read.
    pub unread: usize,
}

/// One device of the account.
#[derive(Debug, Clone)]
pub struct DeviceLine {
    /// Device id.
    pub device_id: String,
    /// Registered at (RFC 3339).
    pub created_at: String,
    /// Whether it is this device.
    pub this_device: bool,
    /// Whether its certificate verifies against the account's pinned identity key.
    pub verified: bool,
}

/// Something a sync did that the user may want to see besides new messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SyncEvent {
    /// A message that had not decrypted was fetched again and decrypted; it sits at its place in
    /// the history.
    Recovered {
        /// Conversation id.
        conversation: String,
        /// Its log sequence number.
        seq: u64,
        /// The message id.
        id: String,
    },
    /// A message that did not decrypt was tried for the last time and given up.
    GaveUp {
        /// Conversation id.
        conversation: String,
        /// Its log sequence number.
        seq: u64,
        /// The sender's account, where known.
        sender: Option<String>,
        /// How many times it was tried.
        tries: u32,
    },
}

/// What a sync noticed besides messages.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    /// Things the user should know (refused members, undecryptable entries).
    pub warnings: Vec<String>,
    /// Recoveries and give-ups of undecryptable messages.
    pub events: Vec<SyncEvent>,
    /// Ephemeral updates (typing indicators), which are never stored, so only a report carries
    /// them.
    pub updates: Vec<Update>,
}

impl SyncReport {
    /// Adds another report's warnings and events.
    pub fn extend(&mut self, other: SyncReport) {
        self.warnings.extend(other.warnings);
        self.events.extend(other.events);
        self.updates.extend(other.updates);
    }
}

/// A stored message as it is shown when it arrives.
pub(crate) fn view_of(m: MessageRecord, group: bool, me: &str) -> Message {
    let text = match m.kind {
        ContentKind::Unsupported => "[unsupported message kind]".to_owned(),
        ContentKind::File if m.attachment.is_some() => m.text.unwrap_or_default(),
        _ => m.text.unwrap_or_else(|| "[unsent]".into()),
    };
    Message {
        kind: "message",
        attachments: attachments(&m.id, m.attachment.as_ref()),
        group: group.then(|| m.conversation.clone()),
        id: m.id,
        conversation: m.conversation,
        sender: m.sender,
        sender_device: m.sender_device,
        mentions_me: crate::rich::mentions(&text, me),
        text,
        reply_to: m.reply_to,
        sent_at: rfc3339_ms(m.sent_at_ms),
        outgoing: m.outgoing,
        content: content_name(m.kind),
        expires_at: expiry_view(m.expires_at),
    }
}

fn content_name(kind: ContentKind) -> &'static str {
    if kind == ContentKind::Timer {
        "timer"
    } else {
        "message"
    }
}

fn expiry_view(at: Option<u64>) -> Option<String> {
    at.map(|s| rfc3339_ms(s.saturating_mul(1000)))
}

fn update(m: MessageRecord, group: bool) -> Option<Update> {
    let group = group.then(|| m.conversation.clone());
    let sent_at = rfc3339_ms(m.sent_at_ms);
    let message = m.target?;
    Some(match m.kind {
        ContentKind::Reaction | ContentKind::Unreact => Update::Reaction {
            message,
            id: m.id,
            conversation: m.conversation,
            group,
            user: m.sender,
            device: m.sender_device,
            emoji: if m.kind == ContentKind::Reaction {
                m.text
            } else {
                None
            },
            sent_at,
        },
        ContentKind::Edit => Update::Edit {
            message,
            id: m.id,
            conversation: m.conversation,
            group,
            user: m.sender,
            device: m.sender_device,
            text: m.text.unwrap_or_default(),
            sent_at,
        },
        ContentKind::Unsend => Update::Unsend {
            message,
            id: m.id,
            conversation: m.conversation,
            group,
            user: m.sender,
            device: m.sender_device,
            sent_at,
        },
        _ => return None,
    })
}

/// One update per message a receipt record names (that this device has, and whose sender is not
/// the receipt's).
fn receipt_updates(
    tx: &dyn Tx,
    m: &MessageRecord,
    group: bool,
    read_receipts: bool,
) -> Result<Vec<Update>, Error> {
    let mut out = Vec::new();
    for (id, status) in crate::rich::receipt_list(m).unwrap_or_default() {
        let status = match status {
            sotto_proto::mimi::status::DELIVERED => "delivered",
            sotto_proto::mimi::status::READ if read_receipts => "read",
            _ => continue,
        };
        let Some(target) = tx.message(&m.conversation, &id)? else {
            continue;
        };
        if target.sender == m.sender {
            continue;
        }
        out.push(Update::Receipt {
            message: id,
            conversation: m.conversation.clone(),
            group: group.then(|| m.conversation.clone()),
            user: m.sender.clone(),
            device: m.sender_device.clone(),
            status,
        });
    }
    Ok(out)
}

fn is_group(tx: &dyn Tx, conversation: &str) -> Result<bool, Error> {
    Ok(tx
        .conversation(conversation)?
        .is_some_and(|c| c.kind != ConversationKind::Dm))
}

fn history_message(
    tx: &dyn Tx,
    m: MessageRecord,
    group: bool,
    me: &str,
    read_receipts: bool,
) -> Result<HistoryMessage, Error> {
    let f = crate::rich::fold(tx, &m)?;
    let receipts = tx.receipts(&m.conversation, &m.id)?;
    let with = |least: u8| -> Vec<String> {
        receipts
            .iter()
            .filter(|(u, s)| *s >= least && *u != m.sender)
            .map(|(u, _)| u.clone())
            .collect()
    };
    let delivered_to = with(sotto_proto::mimi::status::DELIVERED);
    // Reciprocal: with read receipts off, nobody's show.
    let read_by = if read_receipts {
        with(sotto_proto::mimi::status::READ)
    } else {
        Vec::new()
    };
    let text = match m.kind {
        ContentKind::Unsupported => Some("[unsupported message kind]".to_owned()),
        _ => f.text,
    };
    Ok(HistoryMessage {
        attachments: attachments(&m.id, m.attachment.as_ref()),
        group: group.then(|| m.conversation.clone()),
        mentions_me: text
            .as_deref()
            .is_some_and(|t| crate::rich::mentions(t, me)),
        id: m.id,
        conversation: m.conversation,
        sender: m.sender,
        sender_device: m.sender_device,
        text,
        sent_at: rfc3339_ms(m.sent_at_ms),
        reply_to: m.reply_to,
        reactions: f.reactions,
        edits: f.edits,
        deleted: f.deleted,
        delivered_to,
        read_by,
        outgoing: m.outgoing,
        content: content_name(m.kind),
        expires_at: expiry_view(m.expires_at),
    })
}

fn messages_only(items: Vec<HistoryItem>) -> Vec<HistoryMessage> {
    items
        .into_iter()
        .filter_map(|i| match i {
            HistoryItem::Message { message, .. } => Some(message),
            HistoryItem::Undecryptable { .. } => None,
        })
        .collect()
}

/// An undecryptable entry as shown; in a conversation this device no longer follows nothing will
/// retry it, so it shows as failed.
fn undecryptable_item(u: UndecryptableRecord, followed: bool) -> HistoryItem {
    let state = if followed {
        u.state
    } else {
        crate::store::UndecryptableState::Failed
    };
    HistoryItem::Undecryptable {
        id: None,
        seq: u.seq,
        undecryptable: state.as_str(),
        sender: u.sender,
        sender_device: u.sender_device,
        conversation: u.conversation,
    }
}

impl Engine {
    fn my_name(&self) -> String {
        self.local()
            .me()
            .map(|m| m.username.to_string())
            .unwrap_or_default()
    }

    /// Messages received but not yet shown, oldest first (see [`Engine::mark_shown`]).
    pub fn unshown(&self) -> Result<Vec<Message>, Error> {
        let me = self.my_name();
        self.local().read(|tx, _| {
            let mut out = Vec::new();
            for m in tx.unshown_messages()? {
                if !m.kind.is_message() {
                    continue;
                }
                let group = is_group(tx, &m.conversation)?;
                out.push(view_of(m, group, &me));
            }
            Ok(out)
        })
    }

    /// Marks messages shown (after [`Engine::unshown`] and displaying them: a process killed in
    /// between shows them again next time rather than never).
    pub fn mark_shown(&self, msgs: &[Message]) -> Result<(), Error> {
        self.local().with_tx(|tx, _| {
            for m in msgs {
                tx.mark_shown(&m.conversation, &m.id)?;
            }
            Ok(())
        })
    }

    /// Messages received but not yet shown; marks them shown.
    pub fn take_unshown(&self) -> Result<Vec<Message>, Error> {
        let msgs = self.unshown()?;
        self.mark_shown(&msgs)?;
        Ok(msgs)
    }

    /// Reactions, edits, unsends and receipts received but not yet shown, oldest first; marks
    /// them shown. Read receipts only while read receipts are on (they are reciprocal).
    pub fn take_updates(&self) -> Result<Vec<Update>, Error> {
        let read_receipts = self.local().read_receipts_on()?;
        self.local().with_tx(|tx, _| {
            let mut out = Vec::new();
            for m in tx.unshown_messages()? {
                if m.kind.is_message() {
                    continue;
                }
                tx.mark_shown(&m.conversation, &m.id)?;
                let group = is_group(tx, &m.conversation)?;
                if m.kind == ContentKind::Receipt {
                    out.extend(receipt_updates(tx, &m, group, read_receipts)?);
                } else {
                    out.extend(update(m, group));
                }
            }
            Ok(out)
        })
    }

    /// Every message of the DM with `peer`, oldest first, as it stands now.
    pub fn history(&self, peer: &str) -> Result<Vec<HistoryMessage>, Error> {
        Ok(messages_only(self.dm_history_items(peer)?))
    }

    /// Every message of a group, oldest first, as it stands now.
    pub fn group_history(&self, group: &str) -> Result<Vec<HistoryMessage>, Error> {
        Ok(messages_only(self.history_items(group)?))
    }

    /// The id of the DM with `peer`, if this device has one.
    pub fn dm_id(&self, peer: &str) -> Result<Option<String>, Error> {
        self.local()
            .read(|tx, _| Ok(tx.dm_with(peer)?.map(|c| c.id)))
    }

    /// The conversation holding message `message_id`, if this device has it.
    pub fn conversation_of(&self, message_id: &str) -> Result<Option<String>, Error> {
        let id = message_id.to_ascii_lowercase();
        self.local()
            .read(|tx, _| Ok(tx.message_by_id(&id)?.map(|m| m.conversation)))
    }

    /// The DM with `peer`'s history, undecryptable entries in their places.
    pub fn dm_history_items(&self, peer: &str) -> Result<Vec<HistoryItem>, Error> {
        let id = self
            .local()
            .read(|tx, _| Ok(tx.dm_with(peer)?.map(|c| c.id)))?;
        match id {
            Some(id) => self.history_items(&id),
            None => Ok(Vec::new()),
        }
    }

    /// A conversation's history by log position (messages not yet acknowledged last), with entries
    /// that did not decrypt in their places.
    pub fn history_items(&self, conversation: &str) -> Result<Vec<HistoryItem>, Error> {
        self.history_tail(conversation, usize::MAX)
    }

    /// The newest `last` items of [`Engine::history_items`], oldest first: what a view that shows
    /// the end of a long conversation needs, without folding the edits and reactions of the rest.
    pub fn history_tail(&self, conversation: &str, last: usize) -> Result<Vec<HistoryItem>, Error> {
        let me = self.my_name();
        let read_receipts = self.local().read_receipts_on()?;
        self.local().read(|tx, _| {
            let c = tx.conversation(conversation)?;
            let group = c.as_ref().is_some_and(|c| c.kind != ConversationKind::Dm);
            let followed = c
                .as_ref()
                .is_some_and(|c| c.status == crate::store::ConversationStatus::Ok);
            // Placed first, shown after: only the items kept are folded.
            enum Entry {
                Message(Box<MessageRecord>),
                Undecryptable(UndecryptableRecord),
            }
            let mut entries: Vec<(u64, Entry)> = tx
                .messages(conversation)?
                .into_iter()
                .filter(|m| m.kind.is_message())
                .map(|m| (m.seq.unwrap_or(u64::MAX), Entry::Message(Box::new(m))))
                .collect();
            entries.extend(
                tx.undecryptable(conversation)?
                    .into_iter()
                    .map(|u| (u.seq, Entry::Undecryptable(u))),
            );
            // Stable: messages keep their store order (seq, then local order) among equals.
            entries.sort_by_key(|(seq, _)| *seq);
            let skip = entries.len().saturating_sub(last);
            let mut items = Vec::with_capacity(entries.len() - skip);
            for (_, e) in entries.into_iter().skip(skip) {
                items.push(match e {
                    Entry::Message(m) => HistoryItem::Message {
                        seq: m.seq,
                        message: history_message(tx, *m, group, &me, read_receipts)?,
                    },
                    Entry::Undecryptable(u) => undecryptable_item(u, followed),
                });
            }
            Ok(items)
        })
    }

    /// Every DM and group this device knows, the most recently active first (by when the server
    /// accepted its newest message; those without a message last, by id).
    pub fn conversation_list(&self) -> Result<Vec<ConversationLine>, Error> {
        let me = self.my_name();
        let read_receipts = self.local().read_receipts_on()?;
        let mut lines = self.local().read(|tx, p| {
            let mut out = Vec::new();
            for c in tx.conversations()? {
                let title = match c.kind {
                    ConversationKind::Own => continue,
                    ConversationKind::Dm => c.peer.clone().unwrap_or_default(),
                    ConversationKind::Group => crate::groups::group_line(p, c.id.clone())?
                        .map(|g| g.name)
                        .unwrap_or_default(),
                };
                let newest = tx
                    .messages(&c.id)?
                    .into_iter()
                    .rev()
                    .find(|m| m.kind.is_message());
                // Newest by the server's clock (whole seconds), within one second by the
                // sender's (which can only reorder that second), then by arrival here; a message
                // still being sent is the newest of all.
                let order = newest.as_ref().map_or((0, 0, 0), |m| {
                    let accepted = if m.seq.is_none() {
                        u64::MAX
                    } else {
                        m.accepted_at
                    };
                    (accepted, m.sent_at_ms, m.local_order)
                });
                let group = c.kind == ConversationKind::Group;
                let last = newest
                    .map(|m| history_message(tx, m, group, &me, read_receipts))
                    .transpose()?;
                let unread = tx
                    .unreceipted(&c.id, &me, sotto_proto::mimi::status::READ)?
                    .len();
                out.push((
                    order,
                    ConversationLine {
                        id: c.id,
                        kind: c.kind.as_str(),
                        title,
                        status: c.status.as_str(),
                        last,
                        unread,
                    },
                ));
            }
            Ok(out)
        })?;
        lines.sort_by(|(a, x), (b, y)| b.cmp(a).then_with(|| x.id.cmp(&y.id)));
        Ok(lines.into_iter().map(|(_, l)| l).collect())
    }

    /// A local conversation's status (`ok`, `refused`, `broken`, `removed`, `left`) and its detail.
    pub fn conversation_status(&self, id: &str) -> Result<Option<(String, String)>, Error> {
        self.local().read(|tx, _| {
            Ok(tx
                .conversation(id)?
                .map(|c| (c.status.as_str().to_owned(), c.status_detail)))
        })
    }
}
