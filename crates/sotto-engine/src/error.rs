//! The engine's one error type. `Display` is one clear line, without secrets or message text.

use sotto_api::ErrorCode;
use sotto_proto::mls::MlsError;
use thiserror::Error;

use crate::store::StoreError;

/// Errors of the client. "The peer or server sent garbage" ([`Error::Protocol`], [`Error::Mls`]'s
/// `Malformed`/`Rejected`) is kept apart from "we have a bug or the disk failed"
/// ([`Error::Storage`], [`Error::Mls`]'s `Internal`).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// This home has no registered device.
    #[error("this device is not registered: run `sotto register USERNAME` or `sotto link CODE`")]
    NotRegistered,
    /// This home already has a registered device.
    #[error("this device is already registered as {0}")]
    AlreadyRegistered(String),
    /// No server URL is known.
    #[error("no server configured: pass --server URL")]
    NoServer,
    /// The server could not be reached.
    #[error("server unreachable at {server}")]
    Unreachable {
        /// The server URL.
        server: String,
    },
    /// The server refused the request.
    #[error("server refused: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: ErrorCode,
        /// Server's message.
        message: String,
        /// Current epoch, for stale-epoch refusals.
        current_epoch: Option<u64>,
    },
    /// The named account does not exist.
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// An account's identity key differs from the one pinned on first contact.
    #[error("identity key of {0} changed since it was first seen; refusing to trust it")]
    IdentityChanged(String),
    /// The conversation was refused because a member failed verification.
    #[error("conversation {id} is blocked: {detail}")]
    ConversationRefused {
        /// Conversation id.
        id: String,
        /// Why.
        detail: String,
    },
    /// The conversation exists but this device has not been added to it yet.
    #[error("this device has not been added to the conversation with {0} yet; run `sotto sync` on one of your other devices, then retry")]
    NotYetAdded(String),
    /// Invalid input from the user.
    #[error("{0}")]
    Invalid(String),
    /// MLS processing failed.
    #[error(transparent)]
    Mls(#[from] MlsError),
    /// The server said something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local store failed.
    #[error("local storage error: {0}")]
    Storage(String),
    /// A commit adds a device of an account whose identity key is not pinned yet (internal: the
    /// sync engine fetches it and applies the entry again).
    #[doc(hidden)]
    #[error("identity keys of {0:?} are not known yet")]
    PinNeeded(Vec<String>),
    /// A welcome older than this device's state of the group (internal: skipped).
    #[doc(hidden)]
    #[error("welcome older than this device's state")]
    StaleWelcome,
    /// Roll the transaction back (internal: what to do instead was recorded beside it).
    #[doc(hidden)]
    #[error("rolled back")]
    Rollback,
    /// Gave up after repeatedly losing commit races.
    #[error("gave up after {0} attempts: the conversation keeps changing")]
    TooManyAttempts(usize),
    /// A message was stored on this device but the server did not acknowledge it (unreachable,
    /// failed mid-request, busy or full). It is kept and posted again by the next sync with the same
    /// id (receivers keep one copy): do not send it again yourself.
    #[error("message {id} not acknowledged yet ({reason}); it is kept and will be sent by the next `sotto sync`")]
    Queued {
        /// The message id.
        id: String,
        /// Why it was not acknowledged.
        reason: Box<Error>,
    },
}

impl Error {
    /// Whether the server definitely refused the request (a 4xx other than a rate limit): sending
    /// it again as it is cannot succeed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Api { status, .. } if (400..500).contains(status) && *status != 429)
    }

    pub(crate) fn is_stale_epoch(&self) -> bool {
        matches!(
            self,
            Error::Api {
                code: ErrorCode::StaleEpoch,
                ..
            }
        )
    }
}

impl From<sotto_api::InvalidId> for Error {
    /// An id the user gave, or one read back from the store, that is not well-formed.
    fn from(e: sotto_api::InvalidId) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Storage(e.to_string())
    }
}

/// A storage failure from anything displayable (a decode of stored bytes, say).
pub(crate) fn storage_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}
