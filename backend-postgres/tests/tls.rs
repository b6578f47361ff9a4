//! `sslmode` is honoured: verify-full checks the chain and the host, and a mode that requires
//! TLS never falls back to plain text.

mod common;

use resilient_core::Backend;
use resilient_core::BackendExt;
use resilient_test_support::{PostgresServer, TestCertificates};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_encrypts_the_connection() {
    let certificates = TestCertificates::generate().unwrap();
    let server = PostgresServer::start_with(Some(&certificates)).unwrap();
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url(),
        certificates.ca().display()
    );
    let backend = common::backend(&url);
    backend.set("k", "v".into(), None).await.unwrap();
    assert_eq!(backend.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    let encrypted = server
        .psql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'resilient-storage'",
        )
        .unwrap();
    assert_ne!(encrypted, "0", "the backend's sessions use TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_from_an_unknown_ca() {
    let certificates = TestCertificates::generate().unwrap();
    let server = PostgresServer::start_with(Some(&certificates)).unwrap();
    let other_ca = TestCertificates::generate().unwrap();
    for url in [
        format!("{}?sslmode=verify-full", server.url()),
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            server.url(),
            other_ca.ca().display()
        ),
    ] {
        let err = common::backend(&url).get("k").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_tls_mode_never_falls_back_to_plain_text() {
    let server = PostgresServer::start().unwrap();
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = common::backend(&format!("{}?sslmode={mode}", server.url()))
            .get("k")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("TLS"), "{mode}: {err}");
    }
    let plain = common::backend(&format!("{}?sslmode=disable", server.url()));
    plain.set("k", "v".into(), None).await.unwrap();
}
