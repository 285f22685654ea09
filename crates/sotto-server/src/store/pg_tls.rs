//! TLS to PostgreSQL with rustls, chosen by the URL's `sslmode` as libpq reads it:
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | |
//! | `prefer` (the default) | if the server offers it | not checked |
//! | `require` | always | not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the host |
//!
//! `sslrootcert` is a PEM file of trusted certificates, or `system` (the default for
//! `verify-full`) for the operating system's store. `verify-ca` checks no name, so it takes only a
//! file: against the system's roots any publicly trusted certificate would pass (libpq refuses
//! that too). Across a network, use `verify-full`: the others let an active attacker read what
//! crosses (token hashes, link bundles, metadata).
//!
//! As libpq does, `prefer` connects again in the clear when the server offers TLS but the
//! handshake fails (a server whose TLS rustls cannot complete, TLS 1.0 or 1.1 only, say), and says
//! so in a warning; tokio-postgres alone would give up. That is no weaker than `prefer` already
//! is: an active attacker can as well answer that the server offers no TLS. [`connect`] does it,
//! one address at a time (so a failure elsewhere never sends a server that did TLS into the
//! clear), and every connection the server makes goes through it (the store's pool, `migrate`,
//! the tests' kit). A URL that names several hosts, or pins addresses with `hostaddr`, gets no
//! fallback: which address failed how is not known after the fact.
//!
//! The stream offers no channel binding (SCRAM-SHA-256 without `-PLUS`): PostgreSQL's default
//! `channel_binding=prefer` accepts that.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    SignatureScheme,
};

/// Connects as `config` says, with `tls`: under `prefer`, for a URL with one host name, each of
/// its addresses is tried in turn, and a failed TLS handshake with one is followed by a second
/// connection to the same address in the clear (see the module's notes).
pub async fn connect(
    config: &tokio_postgres::Config,
    tls: &MakeRustls,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, RustlsStream<tokio_postgres::Socket>>,
    ),
    tokio_postgres::Error,
> {
    let addresses = match (config.get_hosts(), config.get_hostaddrs()) {
        ([tokio_postgres::config::Host::Tcp(name)], [])
            if config.get_ssl_mode() == SslMode::Prefer =>
        {
            let port = config.get_ports().first().copied().unwrap_or(5432);
            // A name that does not resolve: tokio-postgres says so below.
            tokio::net::lookup_host((name.as_str(), port))
                .await
                .map(|a| a.map(|a| a.ip()).collect::<Vec<_>>())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let mut last = None;
    for ip in addresses {
        // The host name stays for TLS; the address decides where the connection goes.
        let mut one = config.clone();
        one.hostaddr(ip);
        let e = match one.connect(tls.clone()).await {
            Ok(connected) => return Ok(connected),
            Err(e) => e,
        };
        if !handshake_failed(&e) {
            last = Some(e);
            continue;
        }
        tracing::warn!(
            error = %with_causes(&e),
            address = %ip,
            "TLS to PostgreSQL failed; sslmode=prefer connects in the clear"
        );
        one.ssl_mode(SslMode::Disable);
        match one.connect(tls.clone()).await {
            Ok(connected) => return Ok(connected),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e),
        None => config.connect(tls.clone()).await,
    }
}

/// Whether a connection failed in our TLS handshake (rather than before it, or in PostgreSQL's
/// own authentication): [`RustlsConnect`] marks its errors with [`HandshakeFailed`].
fn handshake_failed(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<HandshakeFailed>())
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A TLS handshake with PostgreSQL that did not complete: the cause is the only text.
#[derive(Debug)]
struct HandshakeFailed(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for HandshakeFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

fn handshake_error(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), HandshakeFailed(Box::new(e)))
}

/// An error and its causes, `a: b: c` (tokio-postgres' own text stops at "error performing TLS
/// handshake").
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (`prefer`, `require`): encryption against passive listeners only.
    None,
    /// Chains to a trusted root; any host name (`verify-ca`).
    Chain,
    /// Chains to a trusted root and names the host connected to (`verify-full`).
    Full,
}

/// A PostgreSQL URL's connection settings and the TLS connector its `sslmode` asks for.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, MakeRustls), String> {
    let (rest, mode, root) = split_tls_params(url)?;
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(|e| format!("the database URL: {e}"))?;
    let (ssl_mode, verify) = match mode.as_deref().unwrap_or("prefer") {
        "disable" => (SslMode::Disable, Verify::None),
        "prefer" => (SslMode::Prefer, Verify::None),
        "require" if root.is_some() => (SslMode::Require, Verify::Chain),
        "require" => (SslMode::Require, Verify::None),
        "verify-ca" => (SslMode::Require, Verify::Chain),
        "verify-full" => (SslMode::Require, Verify::Full),
        other => {
            return Err(format!(
                "sslmode={other} is not supported: use disable, prefer, require, verify-ca or verify-full"
            ))
        }
    };
    config.ssl_mode(ssl_mode);
    let tls = MakeRustls::new(verify, root.as_deref())?;
    Ok((config, tls))
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgres://...?sslmode=...`) or a key-value
/// string (`host=... sslmode=...`): tokio-postgres knows only three modes and no root file.
fn split_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: &str| -> bool {
        match key {
            "sslmode" => mode = Some(value.to_owned()),
            "sslrootcert" => root = Some(value.to_owned()),
            _ => return false,
        }
        true
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), None, None));
        };
        // The other parameters stay exactly as written (re-encoding would turn `%20` into `+`,
        // which tokio-postgres does not read as a space).
        let kept: Vec<&str> = query
            .split('&')
            .filter(|raw| {
                // Percent-decoding only: tokio-postgres and libpq read `+` as a plus.
                let raw_plus = raw.replace('+', "%2B");
                let decoded = url::form_urlencoded::parse(raw_plus.as_bytes()).next();
                !decoded.is_some_and(|(k, v)| take(&k, &v))
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, mode, root))
    } else {
        let mut kept = Vec::new();
        for (key, value, raw) in conninfo_pairs(url)? {
            if !take(key, &value) {
                kept.push(raw);
            }
        }
        Ok((kept.join(" "), mode, root))
    }
}

/// A key-value connection string's pairs as libpq reads them (`key = value`, spaces around `=`
/// allowed, a value in single quotes with `\'` and `\\` escapes): each key, its value, and the
/// pair's text as written.
fn conninfo_pairs(s: &str) -> Result<Vec<(&str, String, &str)>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_spaces = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_spaces(i);
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        i = skip_spaces(i);
        if i == b.len() || b[i] != b'=' {
            return Err(format!("the database settings: `{key}` has no value"));
        }
        i = skip_spaces(i + 1);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("the database settings: a quoted value has no end".into()),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                value.push(b[i]);
                i += 1;
            }
        }
        let value = String::from_utf8(value)
            .map_err(|_| "the database settings are not UTF-8".to_owned())?;
        out.push((key, value, &s[start..i]));
    }
}

/// The roots a chain-only check (`verify-ca`, or `require` with `sslrootcert`) trusts: a file
/// the operator names. Against the system's roots it would pass any publicly trusted certificate,
/// whatever name it is for, so libpq refuses that and so do we.
fn chain_roots(root: Option<&str>) -> Result<RootCertStore, String> {
    match root {
        Some(path) if path != "system" => trusted_roots(Some(path)),
        _ => Err(
            "sslmode=verify-ca (or require with sslrootcert) checks no host name: it needs \
                  sslrootcert=FILE with the roots you trust; with the system's roots, use \
                  sslmode=verify-full"
                .into(),
        ),
    }
}

fn trusted_roots(root: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match root {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // The system store may hold certificates rustls cannot use; skip those.
                let _ = roots.add(cert);
            }
        }
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("reading sslrootcert {path}: {e}"))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
        }
    }
    if roots.is_empty() {
        return Err(
            "no trusted root certificate for sslmode verify-ca or verify-full: give sslrootcert"
                .into(),
        );
    }
    Ok(roots)
}

/// Makes a rustls connection per PostgreSQL connection (cheap: the configuration is shared).
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MakeRustls").finish_non_exhaustive()
    }
}

impl MakeRustls {
    /// A connector that checks the server's certificate as `verify` says, against the roots in
    /// `root` (a PEM file, or `system`/`None` for the operating system's).
    pub fn new(verify: Verify, root: Option<&str>) -> Result<Self, String> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::None => Arc::new(Unchecked(provider)),
            Verify::Chain | Verify::Full => {
                let roots = if verify == Verify::Full {
                    trusted_roots(root)?
                } else {
                    chain_roots(root)?
                };
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("TLS configuration: {e}"))?;
                if verify == Verify::Full {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                }
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// `prefer` and `require` without a root: the handshake's signatures are checked, the certificate
/// is not (libpq's behaviour).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; the host name is not compared (rustls checks it last, after
/// the chain).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, TlsError> {
        // tokio-postgres asks for a connector before every connection, a Unix socket's too (host
        // ""), but only hands it a stream when the server agreed to TLS over TCP: a host that is
        // no server name fails there, not here.
        let name = ServerName::try_from(host.to_owned()).map_err(|_| host.to_owned());
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One connection's handshake.
pub struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: Result<ServerName<'static>, String>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            // Not a handshake failure: no handshake was tried, so `prefer` does not fall back.
            let name = self.name.map_err(|host| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host:?} is not a server name TLS can check"),
                )
            })?;
            let tls = self
                .connector
                .connect(name, stream)
                .await
                .map_err(handshake_error)?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_come_out_of_urls_and_key_value_strings() {
        let (rest, mode, root) =
            split_tls_params("postgres://u@db:5432/x?sslmode=verify-full&options=-c%20search_path%3Ds&sslrootcert=%2Fetc%2Fca.pem")
                .unwrap();
        assert_eq!(rest, "postgres://u@db:5432/x?options=-c%20search_path%3Ds");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = split_tls_params("postgres://u@db/x").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://u@db/x", None, None)
        );
        let (rest, mode, _) = split_tls_params("host=db user=u sslmode=require").unwrap();
        assert_eq!(rest, "host=db user=u");
        assert_eq!(mode.as_deref(), Some("require"));
        // libpq's quoting: a quoted value is one value, whatever it holds.
        let (rest, mode, root) = split_tls_params(
            "host=db password='a sslmode=x \\' b' sslmode = verify-full sslrootcert='/etc/my ca.pem'",
        )
        .unwrap();
        assert_eq!(rest, "host=db password='a sslmode=x \\' b'");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/my ca.pem"));
        assert!(split_tls_params("host=db password='open").is_err());
        // In a URL, `+` is a plus.
        let (_, _, root) = split_tls_params("postgres://db/x?sslrootcert=/etc/a+b.pem").unwrap();
        assert_eq!(root.as_deref(), Some("/etc/a+b.pem"));
    }

    #[test]
    fn a_chain_only_check_needs_roots_of_its_own() {
        for url in [
            "postgres://u@db/x?sslmode=verify-ca",
            "postgres://u@db/x?sslmode=verify-ca&sslrootcert=system",
            "postgres://u@db/x?sslmode=require&sslrootcert=system",
        ] {
            let err = parse(url).unwrap_err();
            assert!(err.contains("verify-full"), "{url}: {err}");
        }
    }

    #[test]
    fn a_unix_socket_host_still_gets_a_connector() {
        // tokio-postgres asks for one before every connection, and never uses it on a socket.
        let (_, mut tls) = parse("host=/run/postgresql dbname=x").unwrap();
        assert!(MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut tls, "").is_ok());
    }

    #[test]
    fn unknown_modes_are_refused_by_name() {
        let err = parse("postgres://u@db/x?sslmode=maybe").unwrap_err();
        assert!(err.contains("sslmode=maybe"), "{err}");
        let err = parse("postgres://u@db/x?sslmode=verify-full&sslrootcert=/nonexistent.pem")
            .unwrap_err();
        assert!(err.contains("/nonexistent.pem"), "{err}");
    }
}
