//! Transport security end to end: a real sottod serving HTTPS and WSS with rustls and a test CA,
//! real clients verifying its certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use sotto_client::{Client, ClientError, ConnectOptions, ListenEvent};
use sotto_server::{AppState, Config, SqliteStore};

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1, written as PEM files;
/// returns (ca.pem, server.pem, server.key).
fn test_pki(
    dir: &Path,
    ca_name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        dir.join(format!("{ca_name}.pem")),
        dir.join(format!("{ca_name}-server.pem")),
        dir.join(format!("{ca_name}-server.key")),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, leaf.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    (ca_pem, cert_pem, key_pem)
}

/// Starts sottod over TLS; returns its https URL and its task.
async fn tls_server(data: &Path, cert: &Path, key: &Path) -> String {
    let config = sotto_server::tls::server_config(cert, key).unwrap();
    let store = SqliteStore::open(data).unwrap();
    let (state, stop_push) = AppState::single_node(Arc::new(store), Config::default());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = sotto_server::tls::TlsListener::new(tcp, config).unwrap();
    tokio::spawn(async move {
        sotto_server::serve(listener, state, stop_push, std::future::pending())
            .await
            .unwrap();
    });
    format!("https://localhost:{port}")
}

fn with_ca(ca: &Path) -> ConnectOptions {
    ConnectOptions {
        ca_cert: Some(ca.to_owned()),
        insecure: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_a_private_ca_and_certificates_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path(), "sotto-test-ca");
    let url = tls_server(&dir.path().join("server"), &cert, &key).await;

    // alice registers over HTTPS trusting the test CA; it is remembered for later runs.
    let alice = Client::open_with(&dir.path().join("alice"), Some(&url), &with_ca(&ca)).unwrap();
    alice.account().register("alice").await.unwrap();
    drop(alice);
    let alice = Client::open(&dir.path().join("alice"), None).unwrap();
    let bob = Client::open_with(&dir.path().join("bob"), Some(&url), &with_ca(&ca)).unwrap();
    bob.account().register("bob").await.unwrap();

    // A DM over HTTPS, and a live push over WSS.
    alice.dm("bob").send("over tls").await.unwrap();
    let got = support::sync_texts(&bob).await;
    assert_eq!(got, [("alice".to_owned(), "over tls".to_owned())]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let bob_home = dir.path().join("bob");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let bob = Client::open(&bob_home, None).unwrap();
            let _ = bob
                .listen(|e| {
                    if let ListenEvent::Connected = e {
                        let _ = tx.send(None);
                    }
                    if let ListenEvent::Messages(m) = e {
                        for m in m {
                            let _ = tx.send(Some(m.text));
                        }
                    }
                })
                .await;
        });
    });
    assert_eq!(rx.recv().await.unwrap(), None, "wss connected");
    alice.dm("bob").send("pushed over wss").await.unwrap();
    let pushed = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            if let Some(Some(t)) = rx.recv().await {
                return t;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(pushed, "pushed over wss");

    // Without the CA (system roots only) or with another CA, the certificate is refused and
    // nothing is registered.
    let (other_ca, _, _) = test_pki(dir.path(), "another-ca");
    for options in [ConnectOptions::default(), with_ca(&other_ca)] {
        let home = dir
            .path()
            .join(format!("eve-{}", options.ca_cert.is_some()));
        let eve = Client::open_with(&home, Some(&url), &options).unwrap();
        let e = eve.account().register("eve").await.unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
    }
    assert!(matches!(
        alice.devices().list().await,
        Ok(d) if d.len() == 1
    ));
}

#[test]
fn plain_http_is_refused_except_to_this_machine_or_when_told() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "http://example.com:7420",
        "http://10.0.0.5:7420",
        "http://[2001:db8::1]:80",
    ] {
        let e = Client::open(&dir.path().join("a"), Some(url)).unwrap_err();
        assert!(
            matches!(&e, ClientError::Invalid(m) if m.contains("refusing plain http://")),
            "{url}: {e}"
        );
        let insecure = ConnectOptions {
            ca_cert: None,
            insecure: true,
        };
        Client::open_with(&dir.path().join("b"), Some(url), &insecure).unwrap();
    }
    for url in [
        "http://127.0.0.1:7420",
        "http://localhost:7420",
        "http://[::1]:7420",
        "https://example.com",
    ] {
        Client::open(&dir.path().join("c"), Some(url)).unwrap();
    }
    let e = Client::open(&dir.path().join("d"), Some("ftp://example.com")).unwrap_err();
    assert!(e.to_string().contains("https://"), "{e}");
}
