//! HTTP transport to `sottod`: JSON in and out, errors mapped to [`ClientError`].

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sotto_api::{ErrorBody, ErrorCode};

use crate::ClientError;

/// A connection to one server, optionally authenticated as a device.
#[derive(Clone)]
pub(crate) struct Transport {
    pub(crate) base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Invalid(format!(
                "server URL must start with http:// or https://: {base}"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok(Self { base, http, token })
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() || e.is_timeout() {
            ClientError::Unreachable {
                server: self.base.clone(),
            }
        } else {
            ClientError::Protocol(format!("request to {} failed: {e}", self.base))
        }
    }

    async fn finish<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            let body: &[u8] = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                b"null"
            } else {
                &bytes
            };
            serde_json::from_slice(body)
                .map_err(|e| ClientError::Protocol(format!("unexpected answer from server: {e}")))
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Err(ClientError::Api {
                    status: status.as_u16(),
                    code: body.code,
                    message: body.message,
                    current_epoch: body.current_epoch,
                }),
                Err(_) => Err(ClientError::Api {
                    status: status.as_u16(),
                    code: ErrorCode::Internal,
                    message: format!("server answered {status}"),
                    current_epoch: None,
                }),
            }
        }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.finish(resp).await
    }

    pub(crate) async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.finish(resp).await
    }

    /// The WebSocket URL for push.
    pub(crate) fn ws_url(&self) -> String {
        let rest = self.base.strip_prefix("http").unwrap_or(self.base.as_str());
        format!("ws{rest}/v1/ws")
    }
}
