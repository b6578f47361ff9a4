//! `rediss://` encrypts and verifies the server, and never falls back to plain TCP.

mod common;

use std::sync::Arc;

use resilient_core::Backend;
use resilient_core::testing::conformance;
use resilient_test_support::{RedisOptions, RedisServer, TestCertificates};

fn tls_server() -> (RedisServer, Arc<TestCertificates>) {
    let certificates = Arc::new(TestCertificates::generate().unwrap());
    let server =
        RedisServer::start_with(RedisOptions::default().tls(certificates.clone())).unwrap();
    (server, certificates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verified_against_the_servers_ca_passes_the_conformance_suite() {
    let (server, certificates) = tls_server();
    assert!(server.url().starts_with("rediss://"));
    let url = format!("{}?ca_cert={}", server.url(), certificates.ca().display());
    conformance::run(&common::backend(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let (server, _) = tls_server();
    let other_ca = TestCertificates::generate().unwrap();
    for url in [
        server.url(),
        format!("{}?ca_cert={}", server.url(), other_ca.ca().display()),
    ] {
        let err = common::backend(&url).get("k").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_to_a_tls_server_gets_no_answer() {
    let (server, _) = tls_server();
    let plain = server.url().replace("rediss://", "redis://");
    assert!(common::backend(&plain).get("k").await.is_err());
}

#[test]
fn ca_cert_needs_a_tls_url() {
    let url = resilient_core::BackendUrl::parse("redis://h:1?ca_cert=/ca.pem").unwrap();
    let err = resilient_backend_redis::RedisConfig::from_url(&url)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("redis.ca_cert") && err.contains("rediss://"),
        "{err}"
    );
}
