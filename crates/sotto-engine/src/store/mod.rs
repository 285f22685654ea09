//! The client store contract: everything a device keeps, behind one transactional interface.
//!
//! A device keeps its settings (identity, keys, token, server), the identity keys it pinned, its
//! conversations and their cursors, its messages (those not yet acknowledged by the server are its
//! outbox), the log entries it could not decrypt yet, and its MLS state. The engine changes them
//! only inside a [`Tx`], so that one log entry's MLS state change, the message it decrypted and the
//! conversation's new cursor are saved together or not at all.
//!
//! The contract is synchronous: openmls' `StorageProvider` is, and so are SQLite natively and SQLite
//! on the browser's origin-private file system inside a worker (see DESIGN.md, "Client layering").
//! Backends: [`MemoryStore`] here, SQLite in `sotto-client`. Every backend must pass
//! [`conformance`].

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod conformance;
mod memory;
pub mod mls;

pub use memory::{Change, MemoryStore};

/// A backend failure. The text is for the user's terminal and names no secret.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (disk, database, lock).
    #[error("{0}")]
    Backend(String),
    /// Stored bytes did not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A store: hands out transactions.
pub trait Store {
    /// Starts a transaction. `write`: the transaction will write (a backend that locks takes the
    /// write lock now, so two writers queue instead of failing at commit). Dropping a transaction
    /// without [`Tx::commit`] rolls everything in it back.
    fn begin(&self, write: bool) -> Result<Box<dyn Tx + '_>, StoreError>;
}

/// What a conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    /// A direct conversation between two accounts.
    Dm,
    /// A group with a name and admins.
    Group,
    /// The group of this account's own devices, which carries its account settings (never
    /// listed as a conversation).
    Own,
}

impl ConversationKind {
    /// The stored and wire spelling (`dm`, `group`, `own`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dm => "dm",
            Self::Group => "group",
            Self::Own => "own",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dm" => Some(Self::Dm),
            "group" => Some(Self::Group),
            "own" => Some(Self::Own),
            _ => None,
        }
    }
}

impl From<sotto_api::ConversationKind> for ConversationKind {
    fn from(kind: sotto_api::ConversationKind) -> Self {
        match kind {
            sotto_api::ConversationKind::Dm => Self::Dm,
            sotto_api::ConversationKind::Group => Self::Group,
        }
    }
}

/// Whether this device follows a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    /// Followed.
    Ok,
    /// Blocked: a member failed verification, or the server delivered a commit that breaks the
    /// group's rules.
    Refused,
    /// This device's state diverged from the group's; it must be added again.
    Broken,
    /// This device or account was removed.
    Removed,
    /// This account left.
    Left,
}

impl ConversationStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Broken => "broken",
            Self::Removed => "removed",
            Self::Left => "left",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => Self::Ok,
            "refused" => Self::Refused,
            "broken" => Self::Broken,
            "removed" => Self::Removed,
            "left" => Self::Left,
            _ => return None,
        })
    }
}

/// A conversation as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// Conversation id (hex; also the MLS group id).
    pub id: String,
    /// DM or group.
    pub kind: ConversationKind,
    /// For a DM: the other account.
    pub peer: Option<String>,
    /// The last log sequence number applied.
    pub cursor: u64,
    /// Whether this device follows it.
    pub status: ConversationStatus,
    /// Why, when not [`ConversationStatus::Ok`].
    pub status_detail: String,
}

impl ConversationRecord {
    /// A new conversation at cursor 0, followed.
    pub fn new(id: &str, kind: ConversationKind, peer: Option<&str>) -> Self {
        Self {
            id: id.to_owned(),
            kind,
            peer: peer.map(str::to_owned),
            cursor: 0,
            status: ConversationStatus::Ok,
            status_detail: String::new(),
        }
    }
}

/// What a stored message is: a message shown in the history, or an action on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentKind {
    /// A text (with `reply_to` when it is a reply).
    Text,
    /// A reaction (`text`: the emoji) to `target`.
    Reaction,
    /// Removes the reaction `reply_to` from `target`.
    Unreact,
    /// A new text for `target`.
    Edit,
    /// Deletes `target` for everyone.
    Unsend,
    /// Delivery or read receipts (`text`: the report, as JSON `[[id, status], ...]`).
    Receipt,
    /// Account settings from one of this account's devices (`text`: JSON `[[name, value], ...]`).
    Settings,
    /// A file (`attachment`), with its caption as `text` and `reply_to` when it is a reply.
    File,
    /// A change of the conversation's disappearing timer or vanish mode, recorded from the commit
    /// that made it (`text`: the settings as JSON, `sender`: who changed them).
    Timer,
    /// Content this version does not show.
    Unsupported,
}

impl ContentKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Reaction => "reaction",
            Self::Unreact => "unreact",
            Self::Edit => "edit",
            Self::Unsend => "unsend",
            Self::Receipt => "receipt",
            Self::Settings => "settings",
            Self::File => "file",
            Self::Timer => "timer",
            Self::Unsupported => "unsupported",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => Self::Text,
            "reaction" => Self::Reaction,
            "unreact" => Self::Unreact,
            "edit" => Self::Edit,
            "unsend" => Self::Unsend,
            "receipt" => Self::Receipt,
            "settings" => Self::Settings,
            "file" => Self::File,
            "timer" => Self::Timer,
            "unsupported" => Self::Unsupported,
            _ => return None,
        })
    }

    /// Whether it is a message of the history (not an action on one).
    pub fn is_message(self) -> bool {
        matches!(
            self,
            Self::Text | Self::File | Self::Timer | Self::Unsupported
        )
    }
}

/// A stored message, or an action on one (a reaction, an edit, an unsend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Conversation id.
    pub conversation: String,
    /// Sender-chosen message id (hex).
    pub id: String,
    /// Its log sequence number; `None` while the server has not acknowledged it (the outbox).
    pub seq: Option<u64>,
    /// Sender's username.
    pub sender: String,
    /// Sender's device id.
    pub sender_device: String,
    /// Sender's clock.
    pub sent_at_ms: u64,
    /// What it is.
    pub kind: ContentKind,
    /// The text, or a reaction's emoji (`None`: unsent, or a kind with no text).
    pub text: Option<String>,
    /// The message it replies to (for an unreact: the reaction it removes).
    pub reply_to: Option<String>,
    /// The message an action acts on.
    pub target: Option<String>,
    /// For a message this device sent: the MIMI salt it was composed with, so that it can be
    /// encoded again byte for byte (same id) if it must be posted again.
    pub salt: Option<Vec<u8>>,
    /// Whether this device's account sent it.
    pub outgoing: bool,
    /// Whether the user has been shown it.
    pub shown: bool,
    /// The order in which this device stored it (set by the store on insert).
    pub local_order: u64,
    /// When the server accepted it, in Unix seconds (0: not acknowledged yet, or stored before
    /// servers said). The edit and unsend windows are measured on it.
    pub accepted_at: u64,
    /// For a [`ContentKind::File`]: the file.
    pub attachment: Option<AttachmentRecord>,
    /// When this device deletes it, with everything of it (Unix seconds): its conversation has a
    /// disappearing timer or is in vanish mode.
    pub expires_at: Option<u64>,
    /// Its clock starts when it is shown: then it expires this many seconds later (`0`: vanish
    /// mode, it goes when the reader leaves the conversation).
    pub after_shown: Option<u32>,
}

/// A file a message carries, as a device keeps it: where the blob is, how to open it, and
/// whether this device has downloaded it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The blob's id on the server (64 hex digits).
    pub blob: String,
    /// The file key (64 hex digits).
    pub key: String,
    /// The file's size in bytes.
    pub size: u64,
    /// SHA-256 of the whole blob (64 hex digits).
    pub hash: String,
    /// Media type, as the sender gave it.
    pub content_type: String,
    /// File name, as the sender gave it.
    pub name: String,
    /// A small image shown before the download, as the sender made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewRecord>,
    /// Where this device saved the file once it downloaded and verified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloaded: Option<String>,
}

/// A preview image carried inside a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewRecord {
    /// Its media type (`image/png` or `image/jpeg`).
    pub content_type: String,
    /// The image (base64 in JSON).
    pub data: sotto_api::B64,
}

// Redacted: the key opens the file, and the blob id is a capability.
impl std::fmt::Debug for AttachmentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentRecord")
            .field("content_type", &self.content_type)
            .field("size", &self.size)
            .field("downloaded", &self.downloaded.is_some())
            .finish()
    }
}

/// Where a log entry that did not decrypt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UndecryptableState {
    /// It is fetched and tried again on later syncs.
    Waiting,
    /// Given up after the bound on tries or time.
    Failed,
}

impl UndecryptableState {
    /// The stored and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "waiting" => Some(Self::Waiting),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A log entry holding an application message that did not decrypt or verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndecryptableRecord {
    /// Conversation id.
    pub conversation: String,
    /// The entry's sequence number.
    pub seq: u64,
    /// The sending device as the log names it.
    pub sender_device: String,
    /// Its account, where the group's members tell it.
    pub sender: Option<String>,
    /// Waiting or failed.
    pub state: UndecryptableState,
    /// How many times it was tried.
    pub tries: u32,
    /// When it first failed (ms since the Unix epoch).
    pub first_failed_ms: u64,
    /// The last failure, for the user (no content in it).
    pub last_error: String,
}

/// An identity key pinned on first contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The account.
    pub username: String,
    /// Its Ed25519 identity key.
    pub identity_key: Vec<u8>,
    /// When it was pinned (seconds since the Unix epoch).
    pub pinned_at: u64,
}

/// One transaction on a [`Store`]. Reads see the transaction's own writes.
pub trait Tx {
    /// Makes every change of this transaction durable, at once.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// A setting (identity, keys, token, server, markers). Values may be secret: backends must not
    /// log them.
    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets a setting.
    fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes a setting (no error if absent).
    fn delete_setting(&self, key: &str) -> Result<(), StoreError>;

    /// The key pinned for an account.
    fn pin(&self, username: &str) -> Result<Option<PinRecord>, StoreError>;
    /// Pins (or re-pins) an account's key.
    fn set_pin(&self, pin: &PinRecord) -> Result<(), StoreError>;

    /// A conversation by id.
    fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError>;
    /// The DM with `peer`, if this device knows one.
    fn dm_with(&self, peer: &str) -> Result<Option<ConversationRecord>, StoreError>;
    /// Every conversation, by id.
    fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError>;
    /// Inserts or replaces a conversation. At most one DM per peer: putting a second DM with the
    /// same peer under another id is an error.
    fn put_conversation(&self, c: &ConversationRecord) -> Result<(), StoreError>;

    /// Stores a message unless one with its (conversation, id) exists; returns whether it was new.
    /// The store sets `local_order` (one more than any before).
    fn insert_message(&self, m: &MessageRecord) -> Result<bool, StoreError>;
    /// A message by (conversation, id).
    fn message(&self, conversation: &str, id: &str) -> Result<Option<MessageRecord>, StoreError>;
    /// Records the sequence number and acceptance time the server gave a message.
    fn set_message_seq(
        &self,
        conversation: &str,
        id: &str,
        seq: u64,
        accepted_at: u64,
    ) -> Result<(), StoreError>;
    /// Replaces a message's attachment record (to note a download).
    fn set_attachment(
        &self,
        conversation: &str,
        id: &str,
        attachment: Option<&AttachmentRecord>,
    ) -> Result<(), StoreError>;
    /// Deletes a message the server never acknowledged (no-op once it has a seq).
    fn delete_unsent_message(&self, conversation: &str, id: &str) -> Result<(), StoreError>;
    /// A message of any conversation by id (ids are hashes: unique across conversations).
    fn message_by_id(&self, id: &str) -> Result<Option<MessageRecord>, StoreError>;
    /// The actions on `target` in `conversation`, by seq (unacknowledged ones last), then
    /// `local_order`.
    fn messages_targeting(
        &self,
        conversation: &str,
        target: &str,
    ) -> Result<Vec<MessageRecord>, StoreError>;
    /// Replaces a message's text (`None`: removes it, for an unsend).
    fn set_message_text(
        &self,
        conversation: &str,
        id: &str,
        text: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Deletes a stored action (one refused once its target arrived).
    fn delete_message(&self, conversation: &str, id: &str) -> Result<(), StoreError>;
    /// Sets when a message expires (see [`MessageRecord::expires_at`] and
    /// [`MessageRecord::after_shown`]).
    fn set_expiry(
        &self,
        conversation: &str,
        id: &str,
        expires_at: Option<u64>,
        after_shown: Option<u32>,
    ) -> Result<(), StoreError>;
    /// The records whose `expires_at` is at or before `now`, by `expires_at`.
    fn expired_messages(&self, now: u64) -> Result<Vec<MessageRecord>, StoreError>;
    /// The records whose clock starts when shown (`after_shown` set, vanish mode included), by
    /// `local_order`.
    fn after_shown_messages(&self) -> Result<Vec<MessageRecord>, StoreError>;
    /// Forgets every receipt of a message.
    fn delete_receipts(&self, conversation: &str, message: &str) -> Result<(), StoreError>;
    /// Marks a message shown or not shown.
    fn set_shown(&self, conversation: &str, id: &str, shown: bool) -> Result<(), StoreError>;
    /// Marks a message shown.
    fn mark_shown(&self, conversation: &str, id: &str) -> Result<(), StoreError> {
        self.set_shown(conversation, id, true)
    }
    /// Messages not yet shown, by `local_order`.
    fn unshown_messages(&self) -> Result<Vec<MessageRecord>, StoreError>;
    /// A conversation's messages by seq (unacknowledged ones last), then `local_order`.
    fn messages(&self, conversation: &str) -> Result<Vec<MessageRecord>, StoreError>;
    /// The outbox: messages sent by `sender_device` without a seq, by `local_order`.
    fn unsent_messages(&self, sender_device: &str) -> Result<Vec<MessageRecord>, StoreError>;

    /// Records that `user` reached `status` (1 delivered, 2 read) for a message; a lower status
    /// than the one recorded changes nothing. Returns whether it rose.
    fn put_receipt(
        &self,
        conversation: &str,
        message: &str,
        user: &str,
        status: u8,
    ) -> Result<bool, StoreError>;
    /// The accounts with a receipt for a message, and their highest status, by account.
    fn receipts(&self, conversation: &str, message: &str) -> Result<Vec<(String, u8)>, StoreError>;
    /// The text and file messages of other accounts in `conversation` (acknowledged ones) that
    /// `user` has no receipt of `status` or higher for, by seq. (Only those: content this version
    /// cannot show is not reported read, and no automatic kind can set off receipts back and
    /// forth.)
    fn unreceipted(
        &self,
        conversation: &str,
        user: &str,
        status: u8,
    ) -> Result<Vec<String>, StoreError>;

    /// Inserts or replaces an undecryptable entry.
    fn put_undecryptable(&self, u: &UndecryptableRecord) -> Result<(), StoreError>;
    /// Forgets one (it decrypted).
    fn delete_undecryptable(&self, conversation: &str, seq: u64) -> Result<(), StoreError>;
    /// A conversation's undecryptable entries, by seq.
    fn undecryptable(&self, conversation: &str) -> Result<Vec<UndecryptableRecord>, StoreError>;

    /// A value of the MLS state (keys and values are opaque to the store).
    fn mls_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets a value of the MLS state.
    fn mls_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes a value of the MLS state (no error if absent).
    fn mls_delete(&self, key: &[u8]) -> Result<(), StoreError>;
}
