//! TLS to PostgreSQL, against the real server on 127.0.0.1:5432 (Debian's package serves TLS with
//! its self-signed certificate). Skipped with a message without PostgreSQL or without TLS on it,
//! except under CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sotto_server::store::pg_tls;
use sotto_server::testkit;
use sotto_server::PostgresStore;

/// Whether this connection (made as `url` says) is encrypted, according to the server.
async fn encrypted(url: &str) -> Result<bool, String> {
    let client = testkit::sql(url).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// `url` with `verify-ca` against a CA of the test's own, which signed nothing the server holds
/// (kept in the returned file).
fn verified_by_a_stranger(url: &str) -> (tempfile::NamedTempFile, String) {
    let ca = stranger_ca();
    let url = with_params(
        url,
        &format!("sslmode=verify-ca&sslrootcert={}", ca.path().display()),
    );
    (ca, url)
}

/// A CA of the test's own, as a PEM file.
fn stranger_ca() -> tempfile::NamedTempFile {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), ca.pem()).unwrap();
    file
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// The test server's URL and its certificate file, when it serves TLS.
async fn tls_postgres() -> Option<(String, String)> {
    let url = testkit::postgres().await?;
    let client = testkit::sql(&url).await.unwrap();
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let cert: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    if ssl != "on" || !std::path::Path::new(&cert).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL under CI must serve TLS (ssl = {ssl}, certificate {cert})"
        );
        eprintln!("SKIPPED: PostgreSQL at {url} does not serve TLS with a readable certificate");
        return None;
    }
    Some((url, cert))
}

#[tokio::test]
async fn sslmode_decides_whether_and_how_the_connection_is_encrypted() {
    let Some((url, cert)) = tls_postgres().await else {
        return;
    };
    assert!(!encrypted(&with_params(&url, "sslmode=disable"))
        .await
        .unwrap());
    assert!(encrypted(&with_params(&url, "sslmode=prefer"))
        .await
        .unwrap());
    assert!(encrypted(&with_params(&url, "sslmode=require"))
        .await
        .unwrap());
    // The server's own certificate as the trusted root: the chain verifies.
    let verify_ca = with_params(&url, &format!("sslmode=verify-ca&sslrootcert={cert}"));
    assert!(encrypted(&verify_ca).await.unwrap());
    // verify-full also wants the host's name in the certificate, and a self-signed certificate
    // never names 127.0.0.1.
    let verify_full = with_params(&url, &format!("sslmode=verify-full&sslrootcert={cert}"));
    let err = encrypted(&verify_full).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A root that signed nothing of the server's.
    let (_stranger, other) = verified_by_a_stranger(&url);
    let err = encrypted(&other).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn the_store_runs_over_a_verified_connection_and_refuses_an_unverified_one() {
    let Some((url, cert)) = tls_postgres().await else {
        return;
    };
    let schema = testkit::schema_name("tls");
    let verify_ca = with_params(&url, &format!("sslmode=verify-ca&sslrootcert={cert}"));
    let store = PostgresStore::connect(&verify_ca, Some(&schema))
        .await
        .expect("the store connects with verify-ca");
    use sotto_server::store::prelude::*;
    store.ready().await.unwrap();
    assert!(store.account("nobody").await.unwrap().is_none());
    drop(store);
    let (_stranger, other) = verified_by_a_stranger(&url);
    let err = PostgresStore::connect(&other, Some(&schema))
        .await
        .expect_err("an unverifiable server is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    testkit::drop_schema(&url, &schema).await;
}

#[test]
fn a_mode_libpq_does_not_have_is_refused_by_name() {
    let err = pg_tls::parse("postgres://postgres@127.0.0.1/test?sslmode=sometimes").unwrap_err();
    assert!(err.contains("sslmode=sometimes"), "{err}");
}

/// A TCP proxy in front of PostgreSQL at `target` that answers every request for TLS with "yes"
/// and then bytes that are no TLS, so every handshake fails, and forwards every connection that
/// starts in the clear.
async fn tls_breaking_proxy(target: (String, u16)) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// PostgreSQL's SSLRequest: length 8, code 80877103.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).await.is_err() {
                    return;
                }
                if first == SSL_REQUEST {
                    let _ = client.write_all(b"S").await;
                    let _ = client.write_all(b"this is not TLS\r\n\r\n").await;
                    return;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                if server.write_all(&first).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// `url` (a `postgres://` URL without parameters) to the same database through `proxy`.
fn through(url: &str, proxy: std::net::SocketAddr) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}{password}@{proxy}/{db}")
}

#[tokio::test]
async fn prefer_connects_in_the_clear_when_the_handshake_fails_and_require_refuses() {
    let Some(url) = testkit::postgres().await else {
        return;
    };
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => {
            eprintln!("SKIPPED: the test database is not reached over TCP");
            return;
        }
    };
    let proxy = tls_breaking_proxy((host, config.get_ports()[0])).await;
    let proxied = through(&url, proxy);
    // libpq's `prefer`: the server offered TLS, the handshake failed, so again in the clear.
    assert!(!encrypted(&with_params(&proxied, "sslmode=prefer"))
        .await
        .expect("prefer falls back to the clear"));
    // `require` never does.
    let err = encrypted(&with_params(&proxied, "sslmode=require"))
        .await
        .unwrap_err();
    assert!(err.contains("TLS"), "{err}");
    // The store's pool connects the same way (its connections are made by the pool).
    let schema = testkit::schema_name("tlsfallback");
    let store = PostgresStore::connect(&proxied, Some(&schema))
        .await
        .expect("the store connects under prefer");
    use sotto_server::store::prelude::*;
    store.ready().await.unwrap();
    assert!(store.account("nobody").await.unwrap().is_none());
    drop(store);
    testkit::drop_schema(&url, &schema).await;
}
