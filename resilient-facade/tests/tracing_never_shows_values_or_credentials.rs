//! The tracing output of operations that fail on Redis and PostgreSQL, captured at TRACE level
//! (ours and the client libraries'): it holds the operation's span and each failed attempt,
//! never the value written nor either password, and the key only at debug level and below.

use std::time::Duration;

use resilient_storage::prelude::*;
use resilient_test_support::{LogCapture, PostgresServer, RedisOptions, RedisServer};

const REDIS_PASSWORD: &str = "Redis-Pa55-q8Zr";
const POSTGRES_PASSWORD: &str = "Pg-Pa55-w3Xt";
const VALUE: &str = "Value-7f2b-never-logged";
const KEY: &str = "customer:9c41";

#[tokio::test]
async fn a_failing_operation_logs_its_attempts_but_no_value_or_credential() {
    let logs = LogCapture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime: the storage's own tasks log through this subscriber too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut redis =
        RedisServer::start_with(RedisOptions::default().password(REDIS_PASSWORD)).unwrap();
    let mut postgres = PostgresServer::start().unwrap();
    // The server trusts local connections, so any password is accepted and must stay hidden.
    let postgres_url = postgres
        .url()
        .replace("postgres@", &format!("postgres:{POSTGRES_PASSWORD}@"));
    let storage = ResilientStorage::builder()
        .backend_url(&redis.url(), 1)
        .unwrap()
        .backend_url(&postgres_url, 2)
        .unwrap()
        .memory_fallback(false)
        .attempt_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    storage.set(KEY, VALUE, None).await.unwrap();
    assert_eq!(
        storage.get(KEY).await.unwrap().as_deref(),
        Some(VALUE.as_bytes())
    );

    redis.kill().unwrap();
    postgres.kill().unwrap();
    let set = storage.set(KEY, VALUE, Some(Duration::from_secs(60))).await;
    // A read of KEY itself would be answered from its write-behind copy, which PostgreSQL has
    // not received: ask for a key this process never wrote.
    let get = storage.get("unwritten").await;
    let mut shown = Vec::new();
    for error in [set.unwrap_err(), get.unwrap_err()] {
        shown.push(format!("{error} {error:?}"));
    }
    storage.shutdown().await;
    drop(_guard);

    let output = logs.contents();
    shown.push(output.clone());
    // The capture works: the failing operation's span and attempts are there.
    assert!(output.contains("storage{operation=\"set\"}"), "{output}");
    assert!(output.contains("backend attempt failed"), "{output}");
    assert!(
        output.contains(KEY),
        "the key is logged at debug level: {output}"
    );
    for text in &shown {
        for secret in [VALUE, REDIS_PASSWORD, POSTGRES_PASSWORD] {
            assert!(!text.contains(secret), "{secret:?} appears in:\n{text}");
        }
    }
    for line in output.lines() {
        let level = line.split_whitespace().nth(1).unwrap_or_default();
        if matches!(level, "INFO" | "WARN" | "ERROR") {
            assert!(!line.contains(KEY), "the key above debug level: {line}");
        }
    }
}
