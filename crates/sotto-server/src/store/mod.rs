//! Storage behind one async contract, `Store`: six traits by resource, each backend implementing
//! all of them. The delivery-service rules that must hold under concurrency (the
//! commit rule, gap-free sequence numbers, one DM per pair, one-time key packages, one-time links)
//! are enforced inside each backend's transactions, never in a node's memory.

use async_trait::async_trait;
use sotto_api::{
    Accepted, ConversationId, ConversationKind, DeviceId, EntryKind, InboxItem, InvalidId,
    LogEntry, Username,
};
use thiserror::Error;

pub mod pg_tls;
pub mod postgres;
mod rules;
pub mod sqlite;

/// Storage failures, split into what the caller did wrong and what broke.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The username is taken.
    #[error("username taken")]
    UsernameTaken,
    /// The device id is already registered.
    #[error("device already registered")]
    DeviceExists,
    /// The commit or message names an epoch other than the current one.
    #[error("stale epoch")]
    StaleEpoch {
        /// The conversation's current epoch.
        current: u64,
    },
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The link expired or was used.
    #[error("link expired or used")]
    LinkExpired,
    /// A link with this id exists (used, expired or pending): link ids are never reused.
    #[error("link id taken")]
    LinkTaken,
    /// The account is a group's last admin and others remain.
    #[error("last admin")]
    LastAdmin,
    /// The calling device is no longer registered (revoked while its request was in flight).
    #[error("calling device not registered")]
    CallerGone,
    /// The device is its account's only one.
    #[error("last device")]
    LastDevice,
    /// A device of the account has no key package.
    #[error("device {0} has no key package left")]
    NoKeyPackage(String),
    /// The database is out of space (disk full, or the configured size cap reached); nothing was
    /// changed.
    #[error("storage full")]
    Full,
    /// The database failed; nothing was changed.
    #[error("database error: {0}")]
    Backend(String),
}

/// Reads back an id the store wrote. Every id was valid when it went in, so a malformed one means
/// the database was changed behind the server's back: refused, never passed on to a client.
pub(crate) fn stored<T: TryFrom<String, Error = InvalidId>>(s: String) -> Result<T, StoreError> {
    T::try_from(s).map_err(corrupt)
}

/// Reads back a conversation's kind (see [`stored`]).
pub(crate) fn stored_kind(s: &str) -> Result<ConversationKind, StoreError> {
    s.parse().map_err(corrupt)
}

/// A stored value the store would never have written; names what kind it is, not the value.
fn corrupt(e: InvalidId) -> StoreError {
    StoreError::Backend(format!("stored row holds an {e}"))
}

/// A device as stored.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    /// Device id (hex).
    pub device_id: DeviceId,
    /// Certificate bytes.
    pub certificate: Vec<u8>,
    /// SHA-256 of the token secret.
    pub token_hash: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
}

/// Key packages uploaded with a device, each with its ciphersuite (IANA number).
#[derive(Debug, Clone, Default)]
pub struct KeyPackages {
    /// One-time packages.
    pub one_time: Vec<(u16, Vec<u8>)>,
    /// Last-resort packages, at most one per ciphersuite (each replaces the previous one).
    pub last_resort: Vec<(u16, Vec<u8>)>,
}

/// An account as stored.
#[derive(Debug, Clone)]
pub struct AccountRecord {
    /// Username.
    pub username: Username,
    /// Identity public key.
    pub identity_key: Vec<u8>,
    /// Devices, oldest first.
    pub devices: Vec<DeviceRecord>,
    /// Ids of its revoked devices.
    pub revoked: Vec<DeviceId>,
}

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    /// Id (hex).
    pub id: ConversationId,
    /// DM or group.
    pub kind: ConversationKind,
    /// Current epoch.
    pub epoch: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Member usernames, sorted (for a group: derived from its MLS tree, minus departed accounts).
    pub members: Vec<Username>,
    /// Accounts that left a group and whose devices are still in its MLS tree.
    pub departed: Vec<Username>,
}

/// What the hot paths (send, fetch) need of a conversation, read with one point lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationHead {
    /// Current epoch.
    pub epoch: u64,
    /// Last sequence number.
    pub last_seq: u64,
}

/// An appended application message: where it landed and whom to wake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Its position.
    pub accepted: Accepted,
    /// The conversation's member devices (see [`Store::wake_list`]).
    pub wake: Vec<String>,
}

/// A commit bundle to append atomically.
#[derive(Debug, Clone)]
pub struct NewCommit {
    /// Epoch the commit was made in.
    pub epoch: u64,
    /// Sending device.
    pub sender_device: String,
    /// The commit.
    pub commit: Vec<u8>,
    /// Welcome and the devices it goes to.
    pub welcome: Option<(Vec<u8>, Vec<String>)>,
    /// The ratchet tree after the commit, stored with the welcome for the devices it adds.
    pub ratchet_tree: Option<Vec<u8>>,
    /// The group's public state after the commit (see `sotto_proto::mls::ServerGroup`).
    pub state: Vec<u8>,
    /// How long the server keeps each later message of the conversation, from the settings in
    /// that state (`None`: until retention).
    pub expiry_secs: Option<u32>,
    /// Every member device after the commit: (device id, username).
    pub members: Vec<(String, String)>,
}

/// Authentication data of a device.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    /// Owning account.
    pub username: Username,
    /// SHA-256 of its token secret.
    pub token_hash: [u8; 32],
    /// Whether the operator locked the account.
    pub locked: bool,
}

/// An account as the operator's `sottod admin accounts` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAccount {
    /// Its username.
    pub username: String,
    /// Devices it has now.
    pub devices: u64,
    /// When it registered (Unix seconds).
    pub created_at: i64,
    /// When one of its devices last had a message or commit accepted (Unix seconds), if ever
    /// (or still in the log).
    pub last_active: Option<i64>,
    /// Whether it is locked.
    pub locked: bool,
}

/// What `sottod admin delete` removed with an account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletedAccount {
    /// Its devices (their tokens stop working; push connections close at their next check).
    pub devices: Vec<String>,
    /// The conversations it was a member of, in id order: it is no longer a member, and is
    /// marked departed where its devices are in the MLS group.
    pub conversations: Vec<String>,
}

/// A message waiting for a backend's group commit (see [`Store::append_message`]): the SQLite
/// writer thread and the PostgreSQL appenders both take these from a queue.
struct AppendJob {
    conversation: String,
    username: String,
    device: String,
    epoch: u64,
    data: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Result<Option<Appended>, StoreError>>,
}

type AppendAnswer = tokio::sync::oneshot::Receiver<Result<Option<Appended>, StoreError>>;

impl AppendJob {
    /// The job for [`Store::append_message`]'s arguments, and where its answer will come.
    fn new(
        conversation: &str,
        username: &str,
        device: &str,
        epoch: u64,
        data: &[u8],
    ) -> (Self, AppendAnswer) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Self {
            conversation: conversation.to_owned(),
            username: username.to_owned(),
            device: device.to_owned(),
            epoch,
            data: data.to_vec(),
            reply,
        };
        (job, answer)
    }
}

/// The server's storage contract, by resource: every backend implements all six traits, and
/// `Store` is their sum (what the delivery service holds as `Arc<dyn Store>`). Every method is
/// atomic. The conformance suite (`tests/store_conformance.rs`) is the one contract every backend
/// passes.
pub trait Store:
    AccountStore + KeyPackageStore + ConversationStore + LogStore + LinkStore + OperatorStore
{
}

impl<T> Store for T where
    T: AccountStore + KeyPackageStore + ConversationStore + LogStore + LinkStore + OperatorStore
{
}

/// The store's traits, to call their methods on a concrete backend (`Arc<dyn Store>` needs
/// none of them in scope).
pub mod prelude {
    pub use super::{
        AccountStore, ConversationStore, KeyPackageStore, LinkStore, LogStore, OperatorStore, Store,
    };
}

/// Accounts and their devices.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates an account with its first device and key packages.
    async fn create_account(
        &self,
        username: &str,
        identity_key: &[u8],
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<(), StoreError>;

    /// Revokes `device_id` of `username` on behalf of the account's device `caller`: its token stops
    /// working, its key packages and pending welcomes are deleted, it is no longer a member device of
    /// any conversation and is never made one again, and the account's unused link codes are
    /// cancelled (the revoked device may have made one). `CallerGone` if `caller` is no longer a
    /// device of the account, `NotFound("device")` if the account has no such device, `LastDevice` if
    /// it is the account's only one (an account without devices could never be used again).
    async fn revoke_device(
        &self,
        username: &str,
        device_id: &str,
        caller: &str,
    ) -> Result<(), StoreError>;

    /// Authentication data for a device.
    async fn device_auth(&self, device_id: &str) -> Result<Option<DeviceAuth>, StoreError>;

    /// An account and its devices.
    async fn account(&self, username: &str) -> Result<Option<AccountRecord>, StoreError>;

    /// Devices of the given accounts (for fan-out).
    async fn devices_of(&self, usernames: &[String]) -> Result<Vec<String>, StoreError>;
}

/// Key packages: uploads, counts, claims.
#[async_trait]
pub trait KeyPackageStore: Send + Sync + 'static {
    /// Adds key packages for a device.
    async fn add_key_packages(&self, device_id: &str, kps: KeyPackages) -> Result<(), StoreError>;

    /// Counts a device's one-time key packages of a ciphersuite.
    async fn key_package_count(&self, device_id: &str, suite: u16) -> Result<u64, StoreError>;

    /// Claims one key package of `suite` for each device of `username` (only `only` if not empty),
    /// never for `exclude`. One-time packages are deleted as they are handed out; the last-resort
    /// package is used when none is left. All or nothing.
    async fn claim_key_packages(
        &self,
        username: &str,
        only: &[String],
        exclude: &str,
        suite: u16,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// Conversations: DMs, groups, members, group state, leaving, whom to wake.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Returns the DM conversation between `a` and `b`, creating it with `new_id` if there is none.
    async fn get_or_create_dm(
        &self,
        a: &str,
        b: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError>;

    /// Creates an empty group conversation with `creator` as its only member account.
    async fn create_group(
        &self,
        creator: &str,
        new_id: &str,
    ) -> Result<ConversationRecord, StoreError>;

    /// A conversation.
    async fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError>;

    /// The conversation's head if `device` of `username` is a member device of it: in its MLS tree
    /// (as last committed) and its account a member (`None`: no such conversation, or not a member
    /// device).
    async fn membership(
        &self,
        id: &str,
        username: &str,
        device: &str,
    ) -> Result<Option<ConversationHead>, StoreError>;

    /// The conversations `username` is a member of.
    async fn conversations_of(&self, username: &str)
        -> Result<Vec<ConversationRecord>, StoreError>;

    /// The group's public MLS state and the epoch it is at (`None` before the first commit).
    async fn group_state(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// Records that `username` left the group: it stops being a member at once (no more reads,
    /// sends or wake-ups); its devices stay in the MLS tree until an admin commits their removal.
    /// Refused with `LastAdmin` if `username` is in `admins` and, other members remaining, none of
    /// them is in `admins` (checked in the same transaction, so two admins leaving at once cannot
    /// both go).
    async fn leave(&self, id: &str, username: &str, admins: &[String]) -> Result<(), StoreError>;

    /// The member devices of a conversation to wake (accounts that left excluded); before the
    /// first commit, the devices of its member accounts.
    async fn wake_list(&self, id: &str) -> Result<Vec<String>, StoreError>;
}

/// The log (commits and messages), the inbox of welcomes, and read positions.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Appends a commit if `commit.epoch` is the current epoch (first commit wins), advancing the
    /// epoch and delivering the welcome; all or nothing.
    async fn append_commit(
        &self,
        conversation: &str,
        commit: NewCommit,
    ) -> Result<Accepted, StoreError>;

    /// Appends an application message sent in the current epoch by `sender_device` of
    /// `username`, if it is a member device (see [`Store::membership`]; `None` otherwise), and
    /// returns where it landed with the devices to wake ([`Store::wake_list`]): membership, append
    /// and wake list in one transaction, so a send costs one trip to the database.
    async fn append_message(
        &self,
        conversation: &str,
        username: &str,
        sender_device: &str,
        epoch: u64,
        data: &[u8],
    ) -> Result<Option<Appended>, StoreError>;

    /// For a member device (see [`Store::membership`]): the conversation's head and its log
    /// entries with `seq > after`, at most `limit`, read together (`None`: no such conversation, or
    /// not a member device).
    async fn member_log(
        &self,
        conversation: &str,
        username: &str,
        device: &str,
        after: u64,
        limit: u32,
    ) -> Result<Option<(ConversationHead, Vec<LogEntry>)>, StoreError>;

    /// Log entries with `seq > after`, at most `limit`.
    async fn log_after(
        &self,
        conversation: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError>;

    /// A device's inbox.
    async fn inbox(&self, device_id: &str) -> Result<Vec<InboxItem>, StoreError>;

    /// Deletes inbox items up to and including `up_to`.
    async fn ack_inbox(&self, device_id: &str, up_to: u64) -> Result<(), StoreError>;

    /// Records how far devices have read conversations: (conversation, device, seq). Only moves
    /// forward.
    async fn save_cursors(&self, cursors: Vec<(String, String, u64)>) -> Result<(), StoreError>;
}

/// Device links.
#[async_trait]
pub trait LinkStore: Send + Sync + 'static {
    /// Stores a link offer made by `device` of `username` (`CallerGone` if that device is no longer
    /// registered: a revoked device cannot mint a way back in).
    async fn create_link(
        &self,
        link_id: &str,
        username: &str,
        device: &str,
        bundle: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// A pending link's account and bundle, if it is unused and not expired at `now`.
    async fn fetch_link(
        &self,
        link_id: &str,
        now: i64,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError>;

    /// Consumes a link and registers the device under its account; all or nothing.
    async fn redeem_link(
        &self,
        link_id: &str,
        now: i64,
        device: DeviceRecord,
        kps: KeyPackages,
    ) -> Result<String, StoreError>;
}

/// Upkeep (pruning, expiry, the clock, readiness) and the operator's account administration.
#[async_trait]
pub trait OperatorStore: Send + Sync + 'static {
    /// Answers when the store can serve: a trivial query through the same path requests take
    /// (the readiness probe).
    async fn ready(&self) -> Result<(), StoreError>;

    /// The store's clock, in Unix seconds: the one it stamps entries with. Maintenance measures
    /// expiry and retention on it, so nodes whose clocks disagree still agree on what is due.
    async fn clock(&self) -> Result<i64, StoreError>;

    /// Drops log entries every member device has read, and entries (and welcomes) created before
    /// `older_than` (unix seconds). Returns how many log entries went.
    async fn prune(&self, older_than: i64) -> Result<u64, StoreError>;

    /// Deletes every message whose `expires_at` is at or before `now`, delivered or not, in
    /// bounded pieces so that sends go on meanwhile. Returns how many went.
    async fn expire(&self, now: i64) -> Result<u64, StoreError>;

    /// Every account, by username, for the operator (reads the whole log for last activity).
    async fn admin_accounts(&self) -> Result<Vec<AdminAccount>, StoreError>;

    /// Locks (or unlocks) an account: its devices' requests are refused while it is locked.
    /// `false`: no such account.
    async fn set_locked(&self, username: &str, locked: bool) -> Result<bool, StoreError>;

    /// Deletes an account, for the operator, in one transaction: its devices (and so their
    /// tokens), key packages, inbox items, link codes and revoked-device records go, and it
    /// leaves every conversation as a leave does (no longer a member; marked departed where its
    /// devices are in the MLS group, so that a member's next sync commits their removal), the
    /// last-admin rule aside. Its username stays taken (`UsernameTaken` on registration), so
    /// nobody can take over the name in the conversations and DMs that knew it. `None`: no such
    /// account.
    async fn delete_account(&self, username: &str) -> Result<Option<DeletedAccount>, StoreError>;
}

/// A database failure as a [`StoreError`] (its text is logged, never sent to clients).
pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Databases store counters as signed 64-bit integers; they are never negative.
pub(crate) fn as_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The inverse of [`as_u64`], saturating (no counter gets near 2^63).
pub(crate) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn kind_code(kind: EntryKind) -> i64 {
    match kind {
        EntryKind::Commit => 1,
        EntryKind::Message => 2,
    }
}

pub(crate) fn kind_from_code(code: i64) -> EntryKind {
    if code == 1 {
        EntryKind::Commit
    } else {
        EntryKind::Message
    }
}
