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
