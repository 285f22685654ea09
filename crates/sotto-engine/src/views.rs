//! What the app shows: messages, history, groups, devices, and what a sync noticed.

use serde::Serialize;

use crate::store::{ConversationKind, MessageRecord, UndecryptableRecord};
use crate::{rfc3339_ms, Engine, Error};

/// A message as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Sender-chosen message id (hex).
    pub id: String,
    /// Conversation id.
    pub conversation: String,
    /// Group id for group messages; `None` for DMs.
    pub group: Option<String>,
    /// Sender's username.
    pub sender: String,
    /// Sender's device id.
    pub sender_device: String,
    /// The text.
    pub text: String,
    /// Sender's clock, RFC 3339.
    pub sent_at: String,
    /// Whether this device's account sent it.
    pub outgoing: bool,
}

/// One line of a conversation's history: a message, or an entry that did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum HistoryItem {
    /// A message, with its place in the log (`None`: not acknowledged by the server yet).
    Message {
        /// The message.
        #[serde(flatten)]
        message: Message,
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
}

impl SyncReport {
    /// Adds another report's warnings and events.
    pub fn extend(&mut self, other: SyncReport) {
        self.warnings.extend(other.warnings);
        self.events.extend(other.events);
    }
}

fn view(m: MessageRecord, group: bool) -> Message {
    Message {
        group: group.then(|| m.conversation.clone()),
        id: m.id,
        conversation: m.conversation,
        sender: m.sender,
        sender_device: m.sender_device,
        text: m
            .text
            .unwrap_or_else(|| "[unsupported message kind]".into()),
        sent_at: rfc3339_ms(m.sent_at_ms),
        outgoing: m.outgoing,
    }
}

fn messages_only(items: Vec<HistoryItem>) -> Vec<Message> {
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
    /// Messages received but not yet shown, oldest first (see [`Engine::mark_shown`]).
    pub fn unshown(&self) -> Result<Vec<Message>, Error> {
        self.local().read(|tx, _| {
            let mut out = Vec::new();
            for m in tx.unshown_messages()? {
                let group = tx
                    .conversation(&m.conversation)?
                    .is_some_and(|c| c.kind != ConversationKind::Dm);
                out.push(view(m, group));
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

    /// Every message of the DM with `peer`, oldest first.
    pub fn history(&self, peer: &str) -> Result<Vec<Message>, Error> {
        Ok(messages_only(self.dm_history_items(peer)?))
    }

    /// Every message of a group, oldest first.
    pub fn group_history(&self, group: &str) -> Result<Vec<Message>, Error> {
        Ok(messages_only(self.history_items(group)?))
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
        self.local().read(|tx, _| {
            let c = tx.conversation(conversation)?;
            let group = c.as_ref().is_some_and(|c| c.kind != ConversationKind::Dm);
            let followed = c
                .as_ref()
                .is_some_and(|c| c.status == crate::store::ConversationStatus::Ok);
            let mut items: Vec<HistoryItem> = tx
                .messages(conversation)?
                .into_iter()
                .map(|m| HistoryItem::Message {
                    seq: m.seq,
                    message: view(m, group),
                })
                .collect();
            items.extend(
                tx.undecryptable(conversation)?
                    .into_iter()
                    .map(|u| undecryptable_item(u, followed)),
            );
            items.sort_by_key(|i| i.seq().unwrap_or(u64::MAX));
            Ok(items)
        })
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
