//! The one error type handlers return: a status and a stable `{code, message}` body. Messages name
//! what was wrong with the request, never internals, secrets or message content.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sotto_api::{ErrorBody, ErrorCode};

use crate::store::StoreError;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Safe, human-readable message.
    pub message: String,
    /// For stale epochs.
    pub current_epoch: Option<u64>,
    /// For rate limits: seconds to wait (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            current_epoch: None,
            retry_after: None,
        }
    }

    /// 429 with `Retry-After: secs`.
    pub fn rate_limited(message: impl Into<String>, secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "missing or invalid device token")
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::UsernameTaken
            | ErrorCode::StaleEpoch
            | ErrorCode::Conflict
            | ErrorCode::NoKeyPackage => StatusCode::CONFLICT,
            ErrorCode::LinkExpired => StatusCode::GONE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::AccountLocked => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => Self::new(ErrorCode::UsernameTaken, "username is taken"),
            StoreError::DeviceExists => Self::new(ErrorCode::Conflict, "device already registered"),
            StoreError::CallerGone => Self::unauthorized(),
            StoreError::LastDevice => Self::new(
                ErrorCode::Conflict,
                "this is the account's only device: link another device before revoking it",
            ),
            StoreError::Full => Self::new(
                ErrorCode::StorageFull,
                "the server's storage is full; nothing was changed, try again later",
            ),
            StoreError::LastAdmin => Self::new(
                ErrorCode::Conflict,
                "you are the group's last admin: make another member an admin first",
            ),
            StoreError::StaleEpoch { current } => Self {
                code: ErrorCode::StaleEpoch,
                message: format!("stale epoch: the conversation is at epoch {current}"),
                current_epoch: Some(current),
                retry_after: None,
            },
            StoreError::NotFound(what) => Self::not_found(format!("{what} not found")),
            StoreError::LinkTaken => Self::new(
                ErrorCode::Conflict,
                "a link with this id exists: make a new code",
            ),
            StoreError::LinkExpired => {
                Self::new(ErrorCode::LinkExpired, "link code expired or already used")
            }
            StoreError::NoKeyPackage(d) => Self::new(
                ErrorCode::NoKeyPackage,
                format!("device {d} has no key package left"),
            ),
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "storage failure");
                Self::new(ErrorCode::Internal, "storage failure; nothing was changed")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            current_epoch: self.current_epoch,
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}
