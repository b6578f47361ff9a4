//! A password in the URL never appears in Debug, errors or the health report, also after the
//! server dies.

mod common;

use resilient_core::BackendExt;
use std::time::Duration;

use resilient_core::{Backend, HealthConfig, ResilientStorage};
use resilient_test_support::PostgresServer;

const SENTINEL: &str = "Sentinel-Pg-7d2Kq";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears_anywhere() {
    let mut server = PostgresServer::start().unwrap();
    // The throwaway server trusts loopback, so it ignores the password; the client still holds it.
    let url = server
        .url()
        .replace("postgres@", &format!("postgres:{SENTINEL}@"));
    let backend = common::backend(&format!("{url}&query_timeout=300ms").replacen("&", "?", 1));
    let storage = ResilientStorage::builder()
        .backend_url(&url, 1)
        .unwrap()
        .attempt_timeout(Duration::from_millis(300))
        .health(
            HealthConfig::default().interval(Duration::from_millis(50), Duration::from_millis(200)),
        )
        .build()
        .await
        .unwrap();
    storage.set("k", "v", None).await.unwrap();
    backend.set("k", "v".into(), None).await.unwrap();
    let mut seen = vec![format!("{backend:?}"), format!("{storage:?}")];
    server.kill().unwrap();
    for _ in 0..5 {
        let _ = storage.get("k").await;
    }
    tokio::time::timeout(Duration::from_secs(3), async {
        while storage.health().backends["postgres"].last_error.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the health monitor records the failure");
    let err = backend.get("k").await.unwrap_err();
    seen.push(format!("{err} {err:?}"));
    seen.push(serde_json::to_string(&storage.health()).unwrap());
    for text in &seen {
        assert!(!text.contains(SENTINEL), "the password leaked into: {text}");
    }
}
