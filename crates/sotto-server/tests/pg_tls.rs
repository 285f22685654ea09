//! TLS to PostgreSQL, against the real server on 127.0.0.1:5432 (Debian's package serves TLS with
//! its self-signed certificate). Skipped with a message without PostgreSQL or without TLS on it,
//! except under CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

/// What the test proxy does with a connection that asks for TLS.
#[derive(Clone, Copy)]
enum OnTls {
    /// Says yes, then sends bytes that are no TLS: the handshake fails.
    Break,
    /// Passes it on, like everything else.
    Forward,
}

/// A TCP proxy in front of PostgreSQL at `target`, counting the connections it accepts. It
/// forwards every connection, except that with [`OnTls::Break`] it answers a request for TLS
/// itself and breaks the handshake.
async fn proxy(target: (String, u16), on_tls: OnTls) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// PostgreSQL's SSLRequest: length 8, code 80877103.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).await.is_err() {
                    return;
                }
                if first == SSL_REQUEST && matches!(on_tls, OnTls::Break) {
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
    (addr, accepted)
}

/// The test database's host and port, when it is reached over TCP by name or address.
fn tcp_target(url: &str) -> Option<((String, u16), tokio_postgres::Config)> {
    let (config, _) = pg_tls::parse(url).unwrap();
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) if config.get_hostaddrs().is_empty() => {
            let port = config.get_ports().first().copied().unwrap_or(5432);
            Some(((h.clone(), port), config))
        }
        _ => {
            eprintln!("SKIPPED: the test database is not reached over TCP by one host name");
            None
        }
    }
}

/// A URL to `db` through `proxy`, as `config`'s user.
fn through(config: &tokio_postgres::Config, proxy: std::net::SocketAddr, db: &str) -> String {
    let enc = |s: &[u8]| -> String {
        s.iter()
            .map(|&b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let user = enc(config.get_user().unwrap_or("postgres").as_bytes());
    let password = config
        .get_password()
        .map(|p| format!(":{}", enc(p)))
        .unwrap_or_default();
    format!("postgres://{user}{password}@{proxy}/{}", enc(db.as_bytes()))
}

#[tokio::test]
async fn prefer_connects_in_the_clear_when_the_handshake_fails_and_require_refuses() {
    let Some(url) = testkit::postgres().await else {
        return;
    };
    let Some((target, config)) = tcp_target(&url) else {
        return;
    };
    let (addr, _) = proxy(target, OnTls::Break).await;
    let proxied = through(&config, addr, config.get_dbname().unwrap_or("postgres"));
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
    let served = store.ready().await;
    drop(store);
    testkit::drop_schema(&url, &schema).await;
    served.unwrap();
}

#[tokio::test]
async fn prefer_does_not_fall_back_when_what_failed_was_not_the_handshake() {
    let Some(url) = testkit::postgres().await else {
        return;
    };
    let Some((target, config)) = tcp_target(&url) else {
        return;
    };
    let (addr, accepted) = proxy(target, OnTls::Forward).await;
    // The server does TLS (or says it does not); what fails is the database's name, after.
    let nowhere = through(&config, addr, "no_such_database_here");
    let err = encrypted(&with_params(&nowhere, "sslmode=prefer"))
        .await
        .unwrap_err();
    assert!(err.contains("no_such_database_here"), "{err}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection: nothing tried again in the clear"
    );
}
