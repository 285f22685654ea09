//! The HTTP face of [`DsError`]: its status and a stable `{code, message}` body, with
//! `Retry-After` for rate limits. The one place a refusal becomes an HTTP response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sotto_api::{ErrorBody, ErrorCode};

use crate::ds::DsError;

/// The HTTP status for an error code (also carried in WebSocket `refused` frames).
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::AccountLocked => StatusCode::FORBIDDEN,
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
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for DsError {
    fn into_response(self) -> Response {
        let status = http_status(self.code);
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
