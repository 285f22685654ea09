//! `sotto-api`: the wire types shared by `sottod` and the SDK.
//!
//! HTTP bodies are JSON; binary fields (MLS messages, certificates, keys) are standard base64 strings.
//! Every error is `{code, message}` with a stable `code` (see [`ErrorCode`]). WebSocket frames are
//! JSON text frames: [`ServerFrame`] from the server, [`ClientFrame`] from the client.
//!
//! All paths are under `/v1`. Authenticated requests carry `Authorization: Bearer DEVICE_ID:SECRET`.
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

/// The API version prefix.
pub const API_PREFIX: &str = "/v1";

#[cfg(feature = "openapi")]
pub mod schema;

pub mod id;
pub use id::{BlobId, ConversationId, DeviceId, InvalidId, LinkId, Username};

/// A username: 3 to 32 of `a-z`, `0-9`, `_`, `.`, `-`.
pub const USERNAME_PATTERN: &str = "^[a-z0-9_.-]{3,32}$";
/// A device id or a conversation id (also the MLS group id): 32 lowercase hex digits.
pub const HEX32_PATTERN: &str = "^[0-9a-f]{32}$";
/// A link id (hash-derived from the link secret) or a blob id: 64 lowercase hex digits.
pub const HEX64_PATTERN: &str = "^[0-9a-f]{64}$";

/// Whether `s` is exactly `len` lowercase hex digits (device and conversation ids: 32, link and
/// blob ids: 64). Ids are refused in any other spelling, so that each has one.
pub fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The largest sequence number, epoch or inbox id a request may name: the stores keep them as
/// signed 64-bit integers.
pub const MAX_COUNTER: u64 = i64::MAX as u64;

/// The largest encrypted account bundle a device link may carry, in bytes: a multiple of 3, so
/// that a base64 length (5,464 characters) states it exactly.
pub const MAX_LINK_BUNDLE: usize = 4098;

/// Binary data carried as a standard-base64 JSON string.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl std::fmt::Debug for B64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for B64 {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|_| serde::de::Error::custom("invalid base64"))
    }
}

/// Integers in request bodies, as JSON Schema reads them (the OpenAPI document's `integer`): a
/// number with no fractional part, `3` or `3.0`, within the field's range.
mod int {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(u64),
        Float(f64),
    }

    /// 2^64: the first float past `u64::MAX`.
    const PAST_U64: f64 = 18_446_744_073_709_551_616.0;

    fn whole<'de, D: Deserializer<'de>>(n: Number, max: u64) -> Result<u64, D::Error> {
        let v = match n {
            Number::Int(v) => Some(v),
            Number::Float(f) if f.fract() == 0.0 && (0.0..PAST_U64).contains(&f) => Some(f as u64),
            Number::Float(_) => None,
        };
        v.filter(|v| *v <= max).ok_or_else(|| {
            serde::de::Error::custom(format!("expected a whole number from 0 to {max}"))
        })
    }

    pub(crate) fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        whole::<D>(Number::deserialize(d)?, u64::MAX)
    }

    pub(crate) fn opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
        match Option::<Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => whole::<D>(n, u64::from(u16::MAX)).map(|v| Some(v as u16)),
        }
    }
}

/// Stable error codes. Clients match on these, never on `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request body or parameters are malformed.
    BadRequest,
    /// Missing or wrong credentials.
    Unauthorized,
    /// Authenticated, but not allowed (for example not a member).
    Forbidden,
    /// The named account, conversation, link or route does not exist.
    NotFound,
    /// The username is taken.
    UsernameTaken,
    /// The commit or message is for an epoch that is not the conversation's current one.
    StaleEpoch,
    /// The request conflicts with the current state in another way.
    Conflict,
    /// The body is larger than the server accepts.
    PayloadTooLarge,
    /// The link code expired or was used.
    LinkExpired,
    /// The account has a device with no key package left.
    NoKeyPackage,
    /// Too many requests.
    RateLimited,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The server's storage is full; nothing was changed (HTTP 507).
    StorageFull,
    /// A server-side failure; nothing was changed.
    Internal,
    /// This node is shutting down, or cannot reach its store or bus (HTTP 503): try another
    /// node, or again shortly.
    Unavailable,
    /// The server's operator locked this account (HTTP 403): every request of its devices is
    /// refused until it is unlocked.
    AccountLocked,
}

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable, never contains secrets or message content.
    pub message: String,
    /// With [`ErrorCode::StaleEpoch`]: the conversation's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
}

/// A device being registered (with a new account, or through a link).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// The device certificate (sotto-proto encoding), signed by the account's identity key.
    pub certificate: B64,
    #[cfg_attr(feature = "openapi", schema(max_items = 200))]
    /// One-time MLS key packages.
    pub key_packages: Vec<B64>,
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 2))]
    /// Last-resort key packages (one per ciphersuite, at least one), handed out when the one-time
    /// ones of that ciphersuite run out.
    pub last_resort_key_packages: Vec<B64>,
}

/// `POST /v1/accounts`: register an account and its first device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Username))]
    /// Unique username.
    pub username: Username,
    #[cfg_attr(feature = "openapi", schema(value_type = schema::IdentityKey))]
    /// The account's Ed25519 identity public key (32 bytes).
    pub identity_key: B64,
    /// The first device.
    pub device: NewDevice,
}

/// Answer to registration and link redemption.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::DeviceId))]
    /// The device id (from the certificate).
    pub device_id: DeviceId,
    /// The bearer token for this device: `DEVICE_ID:SECRET`. Shown once; the server keeps a hash.
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Token))]
    pub token: String,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// One device of an account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfo {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::DeviceId))]
    /// Device id (hex).
    pub device_id: DeviceId,
    /// Its certificate.
    pub certificate: B64,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    /// When it registered (RFC 3339).
    pub created_at: String,
}

/// `GET /v1/accounts/{username}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountInfo {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Username))]
    /// Username.
    pub username: Username,
    #[cfg_attr(feature = "openapi", schema(value_type = schema::IdentityKey))]
    /// Identity public key.
    pub identity_key: B64,
    /// Its devices.
    pub devices: Vec<DeviceInfo>,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::DeviceId>))]
    /// Ids of its revoked devices (their other devices remove them from conversations).
    #[serde(default)]
    pub revoked_devices: Vec<DeviceId>,
}

/// `POST /v1/key-packages`: upload more key packages for the calling device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UploadKeyPackages {
    #[cfg_attr(feature = "openapi", schema(max_items = 200))]
    /// One-time key packages.
    pub key_packages: Vec<B64>,
    #[cfg_attr(feature = "openapi", schema(max_items = 2))]
    /// Replacement last-resort key packages (at most one per ciphersuite).
    #[serde(default)]
    pub last_resort_key_packages: Vec<B64>,
}

/// `GET /v1/key-packages/count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPackageCount {
    /// One-time key packages of the default (post-quantum hybrid) ciphersuite left for the calling
    /// device.
    pub count: u64,
    /// One-time key packages of the classic ciphersuite left.
    #[serde(default)]
    pub classic_count: u64,
}

/// `POST /v1/key-packages/claim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Username))]
    /// Whose devices to claim key packages for.
    pub username: Username,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::DeviceId>))]
    /// Only these devices (all of the account's devices when empty). The calling device is never
    /// included.
    #[serde(default)]
    pub devices: Vec<DeviceId>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::Ciphersuite>))]
    /// The MLS ciphersuite (IANA number) of the group the devices are for; the default
    /// (post-quantum hybrid) suite when absent.
    #[serde(default, deserialize_with = "int::opt_u16")]
    pub ciphersuite: Option<u16>,
}

/// One claimed key package.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedKeyPackage {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::DeviceId))]
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// The key package.
    pub key_package: B64,
}

/// Answer to a claim: one key package per device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimResponse {
    /// The key packages.
    pub key_packages: Vec<ClaimedKeyPackage>,
}

/// `POST /v1/dms`: get or create the DM conversation with `peer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDmRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Username))]
    /// The other account.
    pub peer: Username,
}

/// A conversation as the server sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationInfo {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::ConversationId))]
    /// Conversation id (32 hex digits; also the MLS group id).
    pub id: ConversationId,
    #[cfg_attr(feature = "openapi", schema(value_type = schema::ConversationKind))]
    /// `dm` or `group`.
    pub kind: ConversationKind,
    /// Current MLS epoch (0 until the first commit).
    pub epoch: u64,
    /// Sequence number of the last log entry (0 when empty).
    pub last_seq: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::Username>))]
    /// Member accounts.
    pub members: Vec<Username>,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::Username>))]
    /// Accounts that left a group whose devices an admin has not removed from the MLS group yet.
    #[serde(default)]
    pub departed: Vec<Username>,
}

/// A conversation's kind, as `dm` or `group` on the wire. Any other value is refused, with an
/// error that does not repeat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// The one conversation between two accounts.
    Dm,
    /// A group, with admins.
    Group,
}

impl ConversationKind {
    /// Its wire (and stored) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dm => "dm",
            Self::Group => "group",
        }
    }
}

impl<'de> Deserialize<'de> for ConversationKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for ConversationKind {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        match s {
            "dm" => Ok(Self::Dm),
            "group" => Ok(Self::Group),
            _ => Err(InvalidId::kind("conversation kind")),
        }
    }
}

/// `POST /v1/groups`: create an empty group conversation (the creator's first commit adds the
/// members).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {}

/// `GET /v1/conversations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationList {
    /// The calling account's conversations.
    pub conversations: Vec<ConversationInfo>,
}

/// `POST /v1/conversations/{id}/commits`: a commit bundle, applied atomically.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    #[cfg_attr(feature = "openapi", schema(maximum = 9223372036854775807_i64))]
    /// The epoch the commit was made in; must be the conversation's current epoch.
    #[serde(deserialize_with = "int::u64")]
    pub epoch: u64,
    /// The commit (MLS PublicMessage).
    pub commit: B64,
    /// A welcome for the devices the commit adds (the server derives which they are).
    #[serde(default)]
    pub welcome: Option<B64>,
    /// For a conversation's first commit (epoch 0): the creator's signed group info of epoch 0,
    /// with its ratchet tree, from which the server starts checking the group's commits.
    #[serde(default)]
    pub initial_group_info: Option<B64>,
}

/// `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The MLS PrivateMessage.
    pub message: B64,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::BlobId>, max_items = 32))]
    /// The attachment blobs the message names (`/v1/blobs`), so that the server keeps them as
    /// long as the message and no longer: finished uploads of the sender's account for this
    /// conversation. Uploads no message names are removed after a day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<BlobId>,
}

/// A durable, accepted log entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Accepted {
    /// Its sequence number in the conversation.
    pub seq: u64,
    /// The conversation's epoch after it.
    pub epoch: u64,
    /// When the server accepted it (see [`LogEntry::accepted_at`]).
    #[serde(default)]
    pub accepted_at: u64,
    /// When the server deletes it (see [`LogEntry::expires_at`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Kind of a log entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An MLS commit.
    Commit,
    /// An MLS application message.
    Message,
}

/// One entry of a conversation log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEntry {
    /// Sequence number (1, 2, ...).
    pub seq: u64,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// Commit or message.
    pub kind: EntryKind,
    #[cfg_attr(feature = "openapi", schema(value_type = schema::DeviceId))]
    /// The sending device.
    pub sender_device: DeviceId,
    /// The MLS message.
    pub data: B64,
    /// When the server accepted it, in Unix seconds: the time every member measures the edit and
    /// unsend windows on (a sender's own clock is its to set). 0 from a server before this field.
    #[serde(default)]
    pub accepted_at: u64,
    /// For a message of a conversation with a disappearing timer or in vanish mode: when the
    /// server deletes it, delivered or not, in Unix seconds (the acceptance time plus the longest
    /// the conversation's settings let a message live from sending). Absent otherwise. Devices
    /// go by the settings in their own group state, never by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `GET /v1/conversations/{id}/log?after=SEQ&limit=N[&read=SEQ]`. The device's read position (what
/// the server may prune once every member device has read it) is `after`, or `read` when that is
/// smaller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogPage {
    /// Entries with `seq > after`, in order.
    pub entries: Vec<LogEntry>,
    /// Whether more entries follow.
    pub more: bool,
}

/// A welcome waiting in a device's inbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxItem {
    /// Inbox item id (increasing).
    pub id: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = schema::ConversationId))]
    /// The conversation it admits the device to.
    pub conversation: ConversationId,
    /// The log sequence number of the commit that added the device: read the log after it.
    pub seq: u64,
    /// The MLS welcome.
    pub welcome: B64,
    /// The group's ratchet tree at the epoch the welcome opens (welcomes do not carry it; the
    /// joining client checks it against the welcome's signed tree hash).
    #[serde(default)]
    pub ratchet_tree: Option<B64>,
}

/// `GET /v1/inbox`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inbox {
    /// Items in id order.
    pub items: Vec<InboxItem>,
}

/// `POST /v1/inbox/ack`: delete items up to and including `up_to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InboxAck {
    #[cfg_attr(feature = "openapi", schema(maximum = 9223372036854775807_i64))]
    /// Highest processed item id.
    #[serde(deserialize_with = "int::u64")]
    pub up_to: u64,
}

/// `POST /v1/links`: offer a device link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateLinkRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::LinkId))]
    /// Hash-derived link id (64 hex digits); the secret never reaches the server.
    pub link_id: LinkId,
    #[cfg_attr(feature = "openapi", schema(value_type = schema::LinkBundleBytes))]
    /// The account bundle, encrypted under the link secret.
    pub bundle: B64,
}

/// Answer to a link offer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkCreated {
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    /// When the link stops working (RFC 3339).
    pub expires_at: String,
}

/// `POST /v1/links/fetch` and the first half of redemption.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkFetchRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::LinkId))]
    /// The link id.
    pub link_id: LinkId,
}

/// The encrypted bundle of a pending link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkBundle {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Username))]
    /// Account username.
    pub username: Username,
    /// The encrypted bundle.
    pub bundle: B64,
}

/// `POST /v1/links/redeem`: register a new device through a link (consumes it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkRedeemRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::LinkId))]
    /// The link id.
    pub link_id: LinkId,
    /// The new device, certified by the account's identity key.
    pub device: NewDevice,
}

/// Frames the server sends over `GET /v1/ws`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Sent once after the connection is authenticated.
    Ready,
    /// A conversation has entries up to `seq`.
    Conversation {
        #[cfg_attr(feature = "openapi", schema(value_type = schema::ConversationId))]
        /// Conversation id.
        id: ConversationId,
        /// Its last sequence number.
        seq: u64,
    },
    /// The device's inbox has new items.
    Inbox,
    /// The account's device list changed.
    Devices,
    /// A new application message, carried inline when it is small (at most
    /// [`MAX_INLINE_ENTRY`] bytes): a client whose cursor is `entry.seq - 1` applies it without a
    /// fetch; any other client fetches the log as for [`ServerFrame::Conversation`].
    Entry {
        #[cfg_attr(feature = "openapi", schema(value_type = schema::ConversationId))]
        /// Conversation id.
        id: ConversationId,
        /// The entry.
        entry: LogEntry,
    },
    /// Wake-ups for this connection were dropped (it read too slowly): sync every conversation.
    Resync,
    /// An ephemeral application message (a typing indicator) from a member device, relayed to the
    /// conversation's connected devices and never stored: a device that is not connected never
    /// gets it. `seq` is the conversation's last sequence number when it was relayed: a device
    /// behind it applies the log first; one past it drops the message as stale.
    Ephemeral {
        #[cfg_attr(feature = "openapi", schema(value_type = schema::ConversationId))]
        /// Conversation id.
        id: ConversationId,
        /// The conversation's last sequence number at relay time.
        seq: u64,
        #[cfg_attr(feature = "openapi", schema(value_type = schema::DeviceId))]
        /// The sending device.
        sender_device: DeviceId,
        /// The MLS application message.
        message: B64,
    },
    /// The answer to [`ClientFrame::Send`]: the message is durable at `seq`.
    Sent {
        /// The client's reference from the request.
        #[serde(rename = "ref")]
        reference: u64,
        /// Where the message landed.
        accepted: Accepted,
    },
    /// The answer to a refused [`ClientFrame::Send`]: the same error an HTTP send gets.
    Refused {
        /// The client's reference from the request.
        #[serde(rename = "ref")]
        reference: u64,
        /// HTTP status the same request over HTTP would have had.
        status: u16,
        /// The error.
        error: ErrorBody,
        /// With a rate limit: seconds to wait before trying again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

impl ServerFrame {
    /// The frame as JSON text, exactly what `serde_json::to_string` writes. The frame every message
    /// produces ([`ServerFrame::Entry`]) is written into one buffer sized up front, with its data
    /// base64-encoded in place: serde's path grows the buffer several times and scans the base64
    /// text for characters to escape.
    pub fn to_json(&self) -> String {
        let Self::Entry { id, entry } = self else {
            return serde_json::to_string(self).unwrap_or_default();
        };
        use base64::Engine;
        let mut out = String::with_capacity(
            140 + id.len() + entry.sender_device.len() + entry.data.0.len().div_ceil(3) * 4,
        );
        out.push_str(r#"{"type":"entry","id":"#);
        push_id(&mut out, id);
        out.push_str(r#","entry":{"seq":"#);
        push_u64(&mut out, entry.seq);
        out.push_str(r#","epoch":"#);
        push_u64(&mut out, entry.epoch);
        out.push_str(match entry.kind {
            EntryKind::Commit => r#","kind":"commit","sender_device":"#,
            EntryKind::Message => r#","kind":"message","sender_device":"#,
        });
        push_id(&mut out, &entry.sender_device);
        out.push_str(r#","data":""#);
        base64::engine::general_purpose::STANDARD.encode_string(&entry.data.0, &mut out);
        out.push_str(r#"","accepted_at":"#);
        push_u64(&mut out, entry.accepted_at);
        if let Some(at) = entry.expires_at {
            out.push_str(r#","expires_at":"#);
            push_u64(&mut out, at);
        }
        out.push_str("}}");
        out
    }
}

/// Appends an id as a JSON string. A valid id is lowercase hex, so nothing in it needs escaping.
fn push_id(out: &mut String, id: &str) {
    out.push('"');
    out.push_str(id);
    out.push('"');
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// The largest ephemeral message (`POST /v1/conversations/{id}/ephemeral`): a typing indicator
/// is one padded bucket of MLS ciphertext.
pub const MAX_EPHEMERAL_BYTES: usize = 1024;

/// Application messages up to this many bytes travel inside [`ServerFrame::Entry`].
pub const MAX_INLINE_ENTRY: usize = 2048;

/// Frames a client may send over `GET /v1/ws` (JSON text frames of at most 4 KiB). Anything else
/// closes the connection with code 1008.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// The device has applied `id`'s log up to `seq` (the server may then prune what every
    /// member device has read).
    Read {
        #[cfg_attr(feature = "openapi", schema(value_type = schema::ConversationId))]
        /// Conversation id.
        id: ConversationId,
        /// Last applied sequence number.
        seq: u64,
    },
    /// Posts an application message, exactly as `POST /v1/conversations/{id}/messages` does
    /// (same checks, limits and durability); answered by [`ServerFrame::Sent`] or
    /// [`ServerFrame::Refused`] carrying `ref`. Up to [`MAX_WS_SENDS_IN_FLIGHT`] may be
    /// outstanding per connection; the server reads no further frames until one is answered.
    /// The sending connection is not sent its own message as an [`ServerFrame::Entry`] (the
    /// `sent` answer carries its position); the device's other connections and every other
    /// member device are.
    Send {
        /// The client's reference for the answer.
        #[serde(rename = "ref")]
        reference: u64,
        #[cfg_attr(feature = "openapi", schema(value_type = schema::ConversationId))]
        /// Conversation id.
        id: ConversationId,
        /// The MLS application message.
        message: B64,
    },
}

/// A client frame's fields, borrowed from the text: what [`ClientFrame::from_json`] reads before
/// it checks which fields the frame's type takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatClientFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    // `present`: a field given as `null` is an error, as it is for the enum, not an absent field.
    #[serde(rename = "ref", default, deserialize_with = "present")]
    reference: Option<u64>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    seq: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    message: Option<B64>,
}

fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Why a text is not a client frame.
#[derive(Debug)]
pub enum ClientFrameError {
    /// A `send` frame, well-formed but for its conversation id: it can be answered, with a
    /// `refused` frame carrying `reference`.
    BadId {
        /// The frame's `ref`.
        reference: u64,
        /// What was wrong.
        error: InvalidId,
    },
    /// Not a client frame at all.
    Malformed(serde_json::Error),
}

impl ClientFrame {
    /// Parses a frame, accepting and refusing exactly what `serde_json::from_str` does, without
    /// serde's buffering of internally tagged enums (it copies every field before it knows the
    /// type).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        Self::parse(text).map_err(|e| match e {
            ClientFrameError::BadId { error, .. } => serde_json::Error::custom(error),
            ClientFrameError::Malformed(e) => e,
        })
    }

    /// [`ClientFrame::from_json`], telling a `send` frame whose only fault is its conversation id
    /// (which the server answers) from anything else (which it does not).
    pub fn parse(text: &str) -> Result<Self, ClientFrameError> {
        use serde::de::Error;
        let f: FlatClientFrame<'_> =
            serde_json::from_str(text).map_err(ClientFrameError::Malformed)?;
        match (&*f.kind, f.reference, f.id, f.seq, f.message) {
            ("read", None, Some(id), Some(seq), None) => Ok(Self::Read {
                id: ConversationId::new(id.into_owned())
                    .map_err(|e| ClientFrameError::Malformed(serde_json::Error::custom(e)))?,
                seq,
            }),
            ("send", Some(reference), Some(id), None, Some(message)) => Ok(Self::Send {
                reference,
                id: ConversationId::new(id.into_owned())
                    .map_err(|error| ClientFrameError::BadId { reference, error })?,
                message,
            }),
            _ => Err(ClientFrameError::Malformed(serde_json::Error::custom(
                "not a client frame",
            ))),
        }
    }
}

/// How many [`ClientFrame::Send`] a connection may have unanswered.
pub const MAX_WS_SENDS_IN_FLIGHT: usize = 64;

/// Parses `bytes` as every body type of the API (requests the server reads, answers and frames the
/// client reads) and re-serialises whatever parses. For fuzzing and property tests: it must never
/// panic.
#[doc(hidden)]
pub fn parse_any_body(bytes: &[u8]) {
    fn one<T: serde::de::DeserializeOwned + Serialize>(bytes: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<T>(bytes) {
            let again = serde_json::to_vec(&v).unwrap_or_default();
            let _ = serde_json::from_slice::<T>(&again);
        }
    }
    one::<RegisterRequest>(bytes);
    one::<RegisterResponse>(bytes);
    one::<AccountInfo>(bytes);
    one::<UploadKeyPackages>(bytes);
    one::<KeyPackageCount>(bytes);
    one::<ClaimRequest>(bytes);
    one::<ClaimResponse>(bytes);
    one::<CreateDmRequest>(bytes);
    one::<CreateGroupRequest>(bytes);
    one::<ConversationInfo>(bytes);
    one::<ConversationList>(bytes);
    one::<CommitRequest>(bytes);
    one::<SendRequest>(bytes);
    one::<Accepted>(bytes);
    one::<LogPage>(bytes);
    one::<Inbox>(bytes);
    one::<InboxAck>(bytes);
    one::<CreateLinkRequest>(bytes);
    one::<LinkCreated>(bytes);
    one::<LinkFetchRequest>(bytes);
    one::<LinkBundle>(bytes);
    one::<LinkRedeemRequest>(bytes);
    one::<ServerFrame>(bytes);
    one::<ClientFrame>(bytes);
    one::<ErrorBody>(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX_A: &str = "0123456789abcdef0123456789abcdef";
    const HEX_B: &str = "fedcba9876543210fedcba9876543210";

    fn entry_frame(
        id: &str,
        sender: &str,
        data: Vec<u8>,
        seq: u64,
        epoch: u64,
        kind: EntryKind,
    ) -> ServerFrame {
        ServerFrame::Entry {
            id: ConversationId::new(id).unwrap(),
            entry: LogEntry {
                seq,
                epoch,
                kind,
                sender_device: DeviceId::new(sender).unwrap(),
                data: B64(data),
                accepted_at: epoch.wrapping_add(seq),
                expires_at: (seq % 2 == 1).then_some(seq.wrapping_mul(3)),
            },
        }
    }

    #[test]
    fn to_json_writes_what_serde_writes() {
        let frames = [
            entry_frame(HEX_A, HEX_B, vec![], 0, 0, EntryKind::Message),
            entry_frame(
                HEX_B,
                HEX_A,
                vec![1, 2, 3, 4],
                1,
                u64::MAX,
                EntryKind::Commit,
            ),
            entry_frame(HEX_A, HEX_A, vec![0xff; 2048], 10, 7, EntryKind::Message),
            ServerFrame::Ready,
            ServerFrame::Conversation {
                id: ConversationId::new(HEX_A).unwrap(),
                seq: 3,
            },
            ServerFrame::Sent {
                reference: 9,
                accepted: Accepted {
                    seq: 1,
                    epoch: 2,
                    accepted_at: 1_700_000_000,
                    expires_at: Some(1_700_003_600),
                },
            },
        ];
        for f in frames {
            assert_eq!(f.to_json(), serde_json::to_string(&f).unwrap());
        }
    }

    #[test]
    fn client_frame_from_json_agrees_with_serde() {
        let cases = [
            r#"{"type":"read","id":"abababababababababababababababab","seq":3}"#,
            r#"{"seq":3,"id":"abababababababababababababababab","type":"read"}"#,
            r#"{"type":"send","ref":1,"id":"abababababababababababababababab","message":"AQID"}"#,
            r#"{"type":"send","ref":1,"id":"a\u0062ababababababababababababababab","message":"AQID"}"#,
            r#"{"type":"re\u0061d","id":"abababababababababababababababab","seq":3}"#,
            r#"{"type":"read","id":"abababababababababababababababab","seq":3,"ref":null}"#,
            r#"{"type":"read","id":"abababababababababababababababab","seq":3,"message":null}"#,
            r#"{"type":"read","id":"abababababababababababababababab","seq":3,"ref":1}"#,
            r#"{"type":"read","id":"abababababababababababababababab"}"#,
            r#"{"type":"read","id":null,"seq":3}"#,
            r#"{"type":"send","ref":1,"id":"abababababababababababababababab","message":"AQID","seq":1}"#,
            r#"{"type":"send","ref":1,"id":"abababababababababababababababab","message":"not base64!"}"#,
            r#"{"type":"send","ref":-1,"id":"abababababababababababababababab","message":"AQID"}"#,
            r#"{"type":"send","ref":1,"id":"abababababababababababababababab"}"#,
            r#"{"type":"read","type":"read","id":"abababababababababababababababab","seq":3}"#,
            r#"{"type":"read","id":"abababababababababababababababab","id":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","seq":3}"#,
            r#"{"type":"pong"}"#,
            r#"{"type":"read","id":"abababababababababababababababab","seq":3,"extra":1}"#,
            r#"{"id":"abababababababababababababababab","seq":3}"#,
            r#"{"type":null}"#,
            r#"[]"#,
            r#""read""#,
            r#"{"type":"read","id":"abababababababababababababababab","seq":3} x"#,
            "",
            // A malformed conversation id: refused by both.
            r#"{"type":"read","id":"ab","seq":3}"#,
            r#"{"type":"send","ref":1,"id":"../x","message":"AQID"}"#,
        ];
        for c in &cases[..5] {
            assert!(ClientFrame::from_json(c).is_ok(), "{c}");
        }
        for c in cases {
            assert_eq!(
                ClientFrame::from_json(c).ok(),
                serde_json::from_str::<ClientFrame>(c).ok(),
                "{c}"
            );
        }
    }

    proptest! {
        #[test]
        fn client_frame_from_json_agrees_on_any_field_mix(
            ty in prop::sample::select(vec!["read", "send", "x"]),
            fields in prop::collection::vec((prop::sample::select(vec!["ref", "id", "seq", "message", "type", "other"]),
                prop::sample::select(vec!["1", "null", "\"ab\"", "\"abababababababababababababababab\"", "\"AQID\"", "-1", "{}"])), 0..5),
        ) {
            let mut text = format!(r#"{{"type":"{ty}""#);
            for (k, v) in fields {
                text.push_str(&format!(r#","{k}":{v}"#));
            }
            text.push('}');
            prop_assert_eq!(
                ClientFrame::from_json(&text).ok(),
                serde_json::from_str::<ClientFrame>(&text).ok(),
                "{}", text
            );
        }

        #[test]
        fn to_json_agrees_with_serde_on_any_entry(
            id in "[0-9a-f]{32}", sender in "[0-9a-f]{32}", data in prop::collection::vec(any::<u8>(), 0..300),
            seq in any::<u64>(), epoch in any::<u64>(), commit in any::<bool>(),
        ) {
            let kind = if commit { EntryKind::Commit } else { EntryKind::Message };
            let f = entry_frame(&id, &sender, data, seq, epoch, kind);
            prop_assert_eq!(f.to_json(), serde_json::to_string(&f).unwrap());
        }
    }

    #[test]
    fn b64_round_trips_and_debug_hides_bytes() {
        let b = B64(vec![1, 2, 3]);
        let j = serde_json::to_string(&b).unwrap();
        assert_eq!(j, "\"AQID\"");
        assert_eq!(serde_json::from_str::<B64>(&j).unwrap(), b);
        assert!(serde_json::from_str::<B64>("\"!!\"").is_err());
        assert_eq!(format!("{b:?}"), "B64(3 bytes)");
    }

    #[test]
    fn frames_and_errors_have_stable_json() {
        let f = ServerFrame::Conversation {
            id: ConversationId::new(HEX_A).unwrap(),
            seq: 3,
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            format!(r#"{{"type":"conversation","id":"{HEX_A}","seq":3}}"#)
        );
        let e = ErrorBody {
            code: ErrorCode::StaleEpoch,
            message: "x".into(),
            current_epoch: Some(4),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"stale_epoch","message":"x","current_epoch":4}"#
        );
    }

    #[test]
    fn a_servers_malformed_ids_are_refused_by_the_client() {
        let info = |id: &str, kind: &str, member: &str| {
            serde_json::from_str::<ConversationInfo>(&format!(
                r#"{{"id":"{id}","kind":"{kind}","epoch":1,"last_seq":2,"members":["{member}"]}}"#
            ))
        };
        let ok = info(HEX_A, "group", "alice").unwrap();
        assert_eq!(ok.kind, ConversationKind::Group);
        assert_eq!(ok.members, ["alice"]);
        for (bad, what) in [
            (info("../../x", "dm", "alice"), "invalid conversation id"),
            (info(HEX_A, "channel", "alice"), "invalid conversation kind"),
            (info(HEX_A, "dm", "Alice"), "invalid username"),
        ] {
            let err = bad.unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
            for echoed in ["../../x", "channel", "Alice"] {
                assert!(
                    !err.contains(echoed),
                    "the server's value is repeated: {err}"
                );
            }
        }
        let entry = format!(
            r#"{{"type":"entry","id":"{HEX_A}","entry":{{"seq":1,"epoch":1,"kind":"message","sender_device":"{}","data":""}}}}"#,
            HEX_B.to_uppercase()
        );
        let err = serde_json::from_str::<ServerFrame>(&entry).unwrap_err();
        assert!(err.to_string().contains("invalid device id"), "{err}");
        let item = format!(
            r#"{{"id":1,"conversation":"{}","seq":1,"welcome":""}}"#,
            &HEX_A[1..]
        );
        assert!(serde_json::from_str::<InboxItem>(&item).is_err());
    }

    #[test]
    fn request_integers_are_whole_json_numbers() {
        let ack = |t: &str| serde_json::from_str::<InboxAck>(t).map(|a| a.up_to).ok();
        assert_eq!(ack(r#"{"up_to":3}"#), Some(3));
        assert_eq!(ack(r#"{"up_to":3.0}"#), Some(3));
        assert_eq!(ack(r#"{"up_to":18446744073709551615}"#), Some(u64::MAX));
        for bad in [
            "3.5",
            "-1",
            "-1.0",
            "1e30",
            "\"3\"",
            "null",
            "18446744073709551616",
        ] {
            assert_eq!(ack(&format!(r#"{{"up_to":{bad}}}"#)), None, "{bad}");
        }
        let suite = |t: &str| {
            serde_json::from_str::<ClaimRequest>(t)
                .map(|c| c.ciphersuite)
                .ok()
        };
        assert_eq!(suite(r#"{"username":"bob"}"#), Some(None));
        assert_eq!(
            suite(r#"{"username":"bob","ciphersuite":null}"#),
            Some(None)
        );
        assert_eq!(
            suite(r#"{"username":"bob","ciphersuite":77.0}"#),
            Some(Some(77))
        );
        assert_eq!(suite(r#"{"username":"bob","ciphersuite":65536}"#), None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<SendRequest>(r#"{"message":"","x":1}"#).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(s in ".{0,200}") {
            parse_any_body(s.as_bytes());
            let _ = serde_json::from_str::<B64>(&s);
        }

        #[test]
        fn arbitrary_bytes_and_json_shaped_bodies_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            key in "[a-z_]{1,24}",
            n in any::<i64>(),
            text in ".{0,40}",
        ) {
            parse_any_body(&bytes);
            for body in [
                format!("{{\"{key}\": {n}}}"),
                format!("{{\"{key}\": \"{}\"}}", text.replace(['\\', '"'], "")),
                format!("{{\"{key}\": [{n}, null, {{}}]}}"),
                format!("{{\"type\": \"{key}\", \"id\": \"{key}\", \"seq\": {n}}}"),
                format!("{{\"username\": \"{key}\", \"device\": {{\"certificate\": \"{key}\", \"key_packages\": [\"{key}\"]}}}}"),
            ] {
                parse_any_body(body.as_bytes());
            }
        }

        #[test]
        fn log_entries_round_trip(seq in any::<u64>(), epoch in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let e = LogEntry { seq, epoch, kind: EntryKind::Message, sender_device: DeviceId::new(HEX_B).unwrap(), data: B64(data), accepted_at: seq / 2, expires_at: (epoch % 2 == 0).then_some(seq / 3) };
            let back: LogEntry = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
            prop_assert_eq!(back, e);
        }
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn client_frames_round_trip_and_refuse_unknown_fields() {
        for f in [
            ClientFrame::Read {
                id: ConversationId::new("ab".repeat(16)).unwrap(),
                seq: 3,
            },
            ClientFrame::Send {
                reference: 9,
                id: ConversationId::new("ab".repeat(16)).unwrap(),
                message: B64(vec![1, 2, 3]),
            },
        ] {
            let text = serde_json::to_string(&f).unwrap();
            assert_eq!(
                serde_json::from_str::<ClientFrame>(&text).unwrap(),
                f,
                "{text}"
            );
        }
        assert!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"read","id":"ab","seq":1,"x":1}"#)
                .is_err()
        );
        let sent = ServerFrame::Refused {
            reference: 1,
            status: 429,
            error: ErrorBody {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                current_epoch: None,
            },
            retry_after: Some(2),
        };
        let text = serde_json::to_string(&sent).unwrap();
        assert_eq!(
            serde_json::from_str::<ServerFrame>(&text).unwrap(),
            sent,
            "{text}"
        );
    }
}
