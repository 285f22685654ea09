//! HTTP transport to `sottod`: JSON in and out, errors mapped to [`ClientError`].

use reqwest::StatusCode;
use sotto_engine::{HttpReply, HttpRequest, Method};

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

/// A connection to one server (the engine puts the device's token on each request).
#[derive(Clone)]
pub(crate) struct Transport {
    pub(crate) base: String,
    http: reqwest::Client,
    /// For file transfers: no fixed bound on the whole exchange (a large file takes as long as
    /// it takes); each PATCH is bounded by its size, each read of a download by silence, and
    /// TCP keep-alives find a peer that vanished.
    blob_http: reqwest::Client,
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
    pub(crate) fn new(base: &str, settings: &TlsSettings) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        let url = check_scheme(&base, settings.insecure)?;
        let config = if url.scheme() == "https" {
            tls_config(settings.ca_pem.as_deref())?
        } else {
            // Plain HTTP to this machine: reqwest still wants a TLS backend; give it one that
            // trusts nothing (and skip loading the system's roots).
            trust_nothing()?
        };
        let build = |b: reqwest::ClientBuilder| {
            b.connect_timeout(std::time::Duration::from_secs(5))
                .tls_backend_preconfigured(config.clone())
                .build()
                .map_err(|e| ClientError::Invalid(e.to_string()))
        };
        let http = build(reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)))?;
        let blob_http =
            build(reqwest::Client::builder().tcp_keepalive(std::time::Duration::from_secs(15)))?;
        let tls = (url.scheme() == "https").then(|| std::sync::Arc::new(config));
        Ok(Self {
            base,
            http,
            blob_http,
            tls,
        })
    }

    /// The server's refusal in `resp`, as the engine reports API errors.
    async fn refusal(&self, mut resp: reqwest::Response) -> ClientError {
        let status = resp.status().as_u16();
        // An error body is small; a misbehaving server or proxy may send a whole blob instead.
        let mut body = Vec::new();
        while let Ok(Some(c)) = resp.chunk().await {
            body.extend_from_slice(&c);
            if body.len() > 64 * 1024 {
                body.clear();
                break;
            }
        }
        match serde_json::from_slice::<sotto_api::ErrorBody>(&body) {
            Ok(b) => ClientError::Api {
                status,
                code: b.code,
                message: b.message,
                current_epoch: b.current_epoch,
            },
            Err(_) => ClientError::Api {
                status,
                code: sotto_api::ErrorCode::Internal,
                message: format!("server answered {status}"),
                current_epoch: None,
            },
        }
    }

    fn blob_url(&self, id: &str) -> Result<String, ClientError> {
        if !sotto_proto::attachment::is_blob_id(id) {
            return Err(ClientError::Protocol(
                "the server named a bad blob id".into(),
            ));
        }
        Ok(format!("{}/v1/blobs/{id}", self.base))
    }

    /// Creates an upload of `length` blob bytes for `conversation` (tus creation: no byte of the
    /// file goes before the server said yes, so a refusal such as over quota comes at once).
    /// Returns the blob id.
    pub(crate) async fn blob_create(
        &self,
        token: &str,
        conversation: &str,
        length: u64,
    ) -> Result<String, ClientError> {
        use base64::Engine as _;
        let meta = format!(
            "conversation {}",
            base64::engine::general_purpose::STANDARD.encode(conversation)
        );
        let resp = self
            .blob_http
            .post(format!("{}/v1/blobs", self.base))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", length.to_string())
            .header("upload-metadata", meta)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.refusal(resp).await);
        }
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.rsplit('/').next())
            .unwrap_or("")
            .to_owned();
        self.blob_url(&loc)?;
        Ok(loc)
    }

    /// How many bytes of upload `id` the server holds; `None` if it has no such upload (any
    /// more).
    pub(crate) async fn blob_offset(
        &self,
        token: &str,
        id: &str,
    ) -> Result<Option<u64>, ClientError> {
        let resp = self
            .blob_http
            .head(self.blob_url(id)?)
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        match resp.status() {
            StatusCode::OK => Ok(resp
                .headers()
                .get("upload-offset")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(ClientError::Api {
                status: s.as_u16(),
                code: sotto_api::ErrorCode::Internal,
                message: format!("asking how far an upload is, the server answered {s}"),
                current_epoch: None,
            }),
        }
    }

    /// Appends `body` to upload `id` at `offset`; returns the new offset.
    pub(crate) async fn blob_patch(
        &self,
        token: &str,
        id: &str,
        offset: u64,
        body: Vec<u8>,
    ) -> Result<u64, ClientError> {
        let resp = self
            .blob_http
            .patch(self.blob_url(id)?)
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset.to_string())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/offset+octet-stream",
            )
            // A minute, plus the time the batch takes at 32 KB/s.
            .timeout(std::time::Duration::from_secs(
                60 + body.len() as u64 / 32_000,
            ))
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(self.refusal(resp).await);
        }
        resp.headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Protocol("an upload answer without its offset".into()))
    }

    /// The bytes `range` of blob `id` (of `total`), for small reads such as its header.
    pub(crate) async fn blob_range(
        &self,
        token: &str,
        id: &str,
        range: std::ops::Range<u64>,
        total: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let resp = self
            .blob_http
            .get(self.blob_url(id)?)
            .bearer_auth(token)
            .header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", range.start, range.end - 1),
            )
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(self.refusal(resp).await);
        }
        let want = format!("bytes {}-{}/{total}", range.start, range.end - 1);
        if resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            != Some(want.as_str())
        {
            return Err(ClientError::Protocol(
                "the server's copy of the file is not the size its message gives".into(),
            ));
        }
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if body.len() as u64 != range.end - range.start {
            return Err(ClientError::Protocol("a short read of the file".into()));
        }
        Ok(body.to_vec())
    }

    /// Starts fetching blob `id` from byte `from` (of `total`).
    pub(crate) async fn blob_get(
        &self,
        token: &str,
        id: &str,
        from: u64,
        total: u64,
    ) -> Result<reqwest::Response, ClientError> {
        let mut rb = self.blob_http.get(self.blob_url(id)?).bearer_auth(token);
        if from > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        let want = if from > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if resp.status() != want {
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ClientError::Invalid(
                    "the server no longer has this file (unsent, or past its retention)".into(),
                ));
            }
            return Err(self.refusal(resp).await);
        }
        if resp.content_length().is_some_and(|n| n != total - from) {
            return Err(ClientError::Protocol(
                "the server's copy of the file is not the size its message gives".into(),
            ));
        }
        Ok(resp)
    }

    /// The TLS connector for the WebSocket (`None` for plain `ws://`).
    pub(crate) fn ws_connector(&self) -> Option<tokio_tungstenite::Connector> {
        self.tls.clone().map(tokio_tungstenite::Connector::Rustls)
    }

    pub(crate) fn unreachable(&self, e: reqwest::Error) -> ClientError {
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
            // Without the URL: a blob's id in it is a capability.
            ClientError::Protocol(format!(
                "request to {} failed: {}",
                self.base,
                e.without_url()
            ))
        }
    }

    /// Performs one exchange the engine asked for. A 429 whose `Retry-After` is short is waited
    /// out and retried (a few times); a longer one is returned as the reply it is.
    pub(crate) async fn send(&self, req: &HttpRequest) -> Result<HttpReply, ClientError> {
        const MAX_WAIT_SECS: u64 = 5;
        let url = format!("{}{}", self.base, req.path);
        let make = || {
            let rb = match req.method {
                Method::Get => self.http.get(&url),
                Method::Post => self
                    .http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(req.body.clone().unwrap_or_default()),
                Method::Delete => self.http.delete(&url),
            };
            match &req.bearer {
                Some(t) => rb.bearer_auth(t),
                None => rb,
            }
        };
        let mut attempts = 0;
        let resp = loop {
            let resp = make().send().await.map_err(|e| self.unreachable(e))?;
            attempts += 1;
            if resp.status() != StatusCode::TOO_MANY_REQUESTS || attempts > 3 {
                break resp;
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
                _ => break resp,
            }
        };
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_vec();
        Ok(HttpReply { status, body })
    }

    /// The WebSocket URL for push.
    pub(crate) fn ws_url(&self) -> String {
        let rest = self.base.strip_prefix("http").unwrap_or(self.base.as_str());
        format!("ws{rest}/v1/ws")
    }
}
