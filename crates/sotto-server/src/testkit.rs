//! The services the tests of every crate share (feature `testkit`, for tests only): where
//! PostgreSQL and NATS are, a fresh schema per test, and the rule for when they are missing. A
//! developer without them gets `SKIPPED:` and the reason; under CI (`CI` set) the test fails.

use std::sync::atomic::{AtomicU64, Ordering};

/// PostgreSQL for tests: `SOTTO_TEST_DATABASE_URL`, else the CI address.
pub fn database_url() -> String {
    std::env::var("SOTTO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// NATS for tests: `SOTTO_TEST_NATS_URL`, else the CI address.
pub fn nats_url() -> String {
    std::env::var("SOTTO_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A client on the test database (TLS as its URL's `sslmode` says).
pub async fn sql(url: &str) -> Result<tokio_postgres::Client, String> {
    let (config, tls) = crate::store::pg_tls::parse(url)?;
    let (client, conn) = crate::store::pg_tls::connect(&config, &tls)
        .await
        .map_err(|e| crate::store::pg_tls::with_causes(&e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// `url` with its password, if it has one, replaced by `***` (for messages).
fn without_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A missing service: a skip message outside CI, a panic under CI.
fn missing(what: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} required under CI: {why}");
    }
    eprintln!("SKIPPED: {what} not available ({why}); .ci/run starts it, or set SOTTO_TEST_DATABASE_URL / SOTTO_TEST_NATS_URL");
}

/// The test database's URL, once it answers.
pub async fn postgres() -> Option<String> {
    let url = database_url();
    match sql(&url).await {
        Ok(_) => Some(url),
        Err(e) => {
            missing("PostgreSQL", &format!("{}: {e}", without_password(&url)));
            None
        }
    }
}

/// PostgreSQL's and NATS' URLs, once both answer (multi-node tests).
pub async fn postgres_and_nats() -> Option<(String, String)> {
    let pg = postgres().await?;
    let nats = nats_url();
    match async_nats::connect(&nats).await {
        Ok(_) => Some((pg, nats)),
        Err(e) => {
            missing("NATS", &format!("{nats}: {e}"));
            None
        }
    }
}

/// A schema name no other test (in this process or another) uses.
pub fn schema_name(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "sotto_{tag}_{}_{}_{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops a test's schema and everything in it.
pub async fn drop_schema(url: &str, schema: &str) {
    if let Ok(client) = sql(url).await {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_never_carry_the_password() {
        for (url, shown) in [
            (
                "postgres://u:s3cret@db:5432/x?sslmode=require",
                "postgres://u:***@db:5432/x?sslmode=require",
            ),
            ("postgres://u@db/x", "postgres://u@db/x"),
            (
                "host=db user=u password=s3cret",
                "host=db user=u password=***",
            ),
        ] {
            assert_eq!(super::without_password(url), shown);
        }
    }
}
