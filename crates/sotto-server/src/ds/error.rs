//! The delivery service's error: a stable [`ErrorCode`] from the API, a message that is safe to
//! show, and what a client needs to recover (the conversation's epoch, when to try again). It
//! knows nothing of transports: `crate::error` maps it to an HTTP response and `crate::ws` to a
//! `refused` frame, each in one place.

use std::fmt;

use sotto_api::ErrorCode;

use crate::store::StoreError;

/// Why the delivery service refused a request. The message names what was wrong with the
/// request, never internals, secrets or message content.
#[derive(Debug)]
pub struct DsError {
    /// Stable code.
    pub code: ErrorCode,
    /// Safe, human-readable message.
    pub message: String,
    /// For stale epochs: the conversation's current epoch.
    pub current_epoch: Option<u64>,
    /// For rate limits: seconds to wait.
    pub retry_after: Option<u64>,
}

impl DsError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            current_epoch: None,
            retry_after: None,
        }
    }

    /// `rate_limited`, to try again after `secs`.
    pub fn rate_limited(message: impl Into<String>, secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    /// `bad_request`: the request is malformed or breaks a rule about its shape.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `forbidden`: well-formed, but a rule refuses it.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `conflict`: well-formed, but it conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// `internal`: the server failed; the message says what, never why in detail.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// `unauthorized`: no token, or one that does not check out.
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "missing or invalid device token")
    }

    /// `account_locked`.
    pub fn locked() -> Self {
        Self::new(
            ErrorCode::AccountLocked,
            "this account is locked by the server's operator",
        )
    }
}

impl fmt::Display for DsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DsError {}

impl From<StoreError> for DsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => Self::new(ErrorCode::UsernameTaken, "username is taken"),
            StoreError::DeviceExists => Self::conflict("device already registered"),
            StoreError::CallerGone => Self::unauthorized(),
            StoreError::LastDevice => Self::conflict(
                "this is the account's only device: link another device before revoking it",
            ),
            StoreError::Full => Self::new(
                ErrorCode::StorageFull,
                "the server's storage is full; nothing was changed, try again later",
            ),
            StoreError::LastAdmin => {
                Self::conflict("you are the group's last admin: make another member an admin first")
            }
            StoreError::StaleEpoch { current } => Self {
                current_epoch: Some(current),
                ..Self::new(
                    ErrorCode::StaleEpoch,
                    format!("stale epoch: the conversation is at epoch {current}"),
                )
            },
            StoreError::NotFound(what) => Self::not_found(format!("{what} not found")),
            StoreError::LinkTaken => Self::conflict("a link with this id exists: make a new code"),
            StoreError::LinkExpired => {
                Self::new(ErrorCode::LinkExpired, "link code expired or already used")
            }
            StoreError::NoKeyPackage(d) => Self::new(
                ErrorCode::NoKeyPackage,
                format!("device {d} has no key package left"),
            ),
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "storage failure");
                Self::internal("storage failure; nothing was changed")
            }
        }
    }
}
