//! A password in the URL never appears in Debug, Display, errors, logs, events or the health
//! report, also after a forced connection error and with a wrong password.

mod common;

use resilient_core::BackendExt;
use std::sync::Arc;
use std::time::Duration;

use resilient_core::{Backend, HealthConfig, ResilientStorage};
use resilient_test_support::{LogCapture, RedisOptions, RedisServer};

const SENTINEL: &str = "Sentinel-Pa55-8f3kQz";

#[tokio::test]
async fn the_password_never_appears_anywhere() {
    let logs = LogCapture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut server = RedisServer::start_with(RedisOptions::default().password(SENTINEL)).unwrap();
    let url = server.url();
    assert!(
        url.contains(SENTINEL),
        "the test needs the password in the URL"
    );
    let backend = Arc::new(common::backend(&url));
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
    let mut events = storage.subscribe();
    storage.set("k", "v", None).await.unwrap();
    backend.set("k", "v".into(), None).await.unwrap();

    let mut seen = vec![
        format!("{backend:?}"),
        format!("{storage:?}"),
        format!("{:?}", backend.config()),
    ];
    server.kill().unwrap();
    for _ in 0..8 {
        let _ = storage.get("k").await;
    }
    tokio::time::timeout(Duration::from_secs(2), async {
        while storage.health().backends["redis"].last_error.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the health monitor records the failure");
    let err = backend.get("k").await.unwrap_err();
    seen.push(format!("{err} {err:?}"));
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        seen.push(format!("{s} {s:?}"));
        source = s.source();
    }
    seen.push(serde_json::to_string(&storage.health()).unwrap());
    while let Ok(event) = events.try_recv() {
        seen.push(format!("{event:?}"));
    }

    server.restart().unwrap();
    let wrong = common::backend(&url.replace(SENTINEL, &format!("{SENTINEL}-wrong")));
    let err = wrong.get("k").await.unwrap_err();
    seen.push(format!("{err} {err:?}"));
    seen.push(logs.contents());

    assert!(seen.last().unwrap().contains("redis"), "logs were captured");
    for text in &seen {
        assert!(!text.contains(SENTINEL), "the password leaked into: {text}");
    }
}
