//! HTTP transport to `sottod`: JSON in and out, errors mapped to [`ClientError`].

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sotto_api::{ErrorBody, ErrorCode};

use crate::ClientError;

/// Transport security settings: which certificate authorities to trust and whether plain HTTP to a
/// host other than this machine is allowed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    /// PEM certificates of a private CA to trust instead of the system's roots.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// Allow `http://` to hosts other than loopback.
    pub(crate) insecure: bool,
}

/// Refuses `http://` to anything but loopback unless `insecure`: messages stay end-to-end
/// encrypted, but the device token and metadata (who talks to whom, when) would cross the network
/// in the clear.
fn check_scheme(base: &str, insecure: bool) -> Result<reqwest::Url, ClientError> {
    let url = reqwest::Url::parse(base)
        .map_err(|e| ClientError::Invalid(format!("bad server URL {base}: {e}")))?;
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare.ends_with(".localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback || insecure => Ok(url),
        "http" => Err(ClientError::Invalid(format!(
            "refusing plain http:// to {}: your device token and who you talk to would cross the \
             network unencrypted; use https:// (or --insecure if you must)",
            url.host_str().unwrap_or("?")
        ))),
        _ => Err(ClientError::Invalid(format!(
            "server URL must start with https:// (or http:// for this machine): {base}"
        ))),
    }
}

/// The rustls client configuration: the private CA's certificates if given, else the system's
/// trust store; ring's algorithms; TLS 1.2 and 1.3.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    ClientError::Invalid(format!("the CA certificate file is not valid PEM: {e}"))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Invalid(format!("unusable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Invalid(
                    "the CA certificate file holds no certificate".into(),
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ClientError::Invalid(
                    "no trusted certificate authorities found on this system; pass --ca-cert"
                        .into(),
                ));
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Invalid(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn trust_nothing() -> Result<rustls::ClientConfig, ClientError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Invalid(format!("TLS configuration: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// A connection to one server, optionally authenticated as a device.
#[derive(Clone)]
pub(crate) struct Transport {
    pub(crate) base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// For `https://`: the TLS configuration, shared with the WebSocket.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The certificate error inside a request error, if that is what failed (rustls reports it as
/// "invalid peer certificate: ..." somewhere down the chain of sources).
fn certificate_problem(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        let text = err.to_string();
        if let Some(at) = text.find("invalid peer certificate") {
            return Some(text[at..].to_owned());
        }
        source = err.source();
    }
    None
}

impl Transport {
    pub(crate) fn new(
        base: &str,
        token: Option<String>,
        settings: &TlsSettings,
    ) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        let url = check_scheme(&base, settings.insecure)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30));
        let tls = if url.scheme() == "https" {
            let config = tls_config(settings.ca_pem.as_deref())?;
            builder = builder.tls_backend_preconfigured(config.clone());
            Some(std::sync::Arc::new(config))
        } else {
            // Plain HTTP to this machine: reqwest still wants a TLS backend; give it one that
            // trusts nothing (and skip loading the system's roots).
            builder = builder.tls_backend_preconfigured(trust_nothing()?);
            None
        };
        let http = builder
            .build()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok(Self {
            base,
            http,
            token,
            tls,
        })
    }

    /// The TLS connector for the WebSocket (`None` for plain `ws://`).
    pub(crate) fn ws_connector(&self) -> Option<tokio_tungstenite::Connector> {
        self.tls.clone().map(tokio_tungstenite::Connector::Rustls)
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        if let Some(cert) = certificate_problem(&e) {
            return ClientError::Protocol(format!(
                "could not verify the server's TLS certificate ({cert}); for a private CA pass --ca-cert"
            ));
        }
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

    /// Sends a request; a 429 whose `Retry-After` is short is waited out and retried (a few
    /// times), a longer one is returned as the error it is.
    async fn execute(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        const MAX_WAIT_SECS: u64 = 5;
        for _ in 0..3 {
            let resp = self
                .auth(make())
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            if resp.status() != StatusCode::TOO_MANY_REQUESTS {
                return Ok(resp);
            }
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match wait {
                Some(secs) if secs <= MAX_WAIT_SECS => {
                    tokio::time::sleep(std::time::Duration::from_secs(secs)).await
                }
                _ => return Ok(resp),
            }
        }
        self.auth(make())
            .send()
            .await
            .map_err(|e| self.unreachable(e))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.execute(|| self.http.get(&url)).await?;
        self.finish(resp).await
    }

    pub(crate) async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.execute(|| self.http.post(&url).json(body)).await?;
        self.finish(resp).await
    }

    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.execute(|| self.http.delete(&url)).await?;
        self.finish(resp).await
    }

    /// The WebSocket URL for push.
    pub(crate) fn ws_url(&self) -> String {
        let rest = self.base.strip_prefix("http").unwrap_or(self.base.as_str());
        format!("ws{rest}/v1/ws")
    }
}
