//! The tracing output of operations that fail on Redis and PostgreSQL, captured at TRACE level
//! (ours and the client libraries'): it holds the operation's span and each failed attempt,
//! never the value written nor either password, and the key only at debug level and below. Nor
//! do the `Debug` and `Display` of every public type the scenario meets: the storage, its
//! builder and configuration, URLs (a password with raw `/ ? # @`), the health report, events,
//! and errors with their whole source chain.

use std::time::Duration;

use resilient_storage::prelude::*;
use resilient_test_support::{LogCapture, PostgresServer, RedisOptions, RedisServer};

const REDIS_PASSWORD: &str = "Redis-Pa55-q8Zr";
// Raw URL delimiters in the password: the URL parser must still find and hide all of it.
const POSTGRES_PASSWORD: &str = "Pg-Pa55/w?3#X@t";
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
    let mut events = storage.subscribe();
    storage.set(KEY, VALUE, None).await.unwrap();
    assert_eq!(
        storage.get(KEY).await.unwrap().as_deref(),
        Some(VALUE.as_bytes())
    );
    let mut shown = Vec::new();
    // A value of another type than asked for: serde's own message would quote it.
    storage.set_json("json", VALUE, None).await.unwrap();
    let wrong_type = storage.get_json::<u64>("json").await.unwrap_err();
    shown.push(with_sources(&wrong_type));
    shown.push(format!("{storage:?}"));
    let health = storage.health();
    shown.push(format!(
        "{health:?} {}",
        serde_json::to_string(&health).unwrap()
    ));
    shown.push(format!(
        "{:?}",
        ResilientStorage::builder()
            .backend_url(&postgres_url, 1)
            .unwrap()
    ));
    let url = resilient_storage::BackendUrl::parse(&postgres_url).unwrap();
    shown.push(format!("{url} {url:?}"));
    let config = StorageConfig::from_toml_str(&format!(
        "[[backends]]\nurl = \"{postgres_url}\"\npriority = 1"
    ))
    .unwrap();
    shown.push(format!("{config:?}"));

    redis.kill().unwrap();
    postgres.kill().unwrap();
    let set = storage.set(KEY, VALUE, Some(Duration::from_secs(60))).await;
    // A read of KEY itself would be answered from its write-behind copy, which PostgreSQL has
    // not received: ask for a key this process never wrote.
    let get = storage.get("unwritten").await;
    for error in [set.unwrap_err(), get.unwrap_err()] {
        shown.push(with_sources(&error));
    }
    while let Ok(event) = events.try_recv() {
        shown.push(format!("{event:?}"));
    }
    shown.push(format!("{:?}", storage.health()));
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

/// An error's `Display` and `Debug`, and those of every source below it.
fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error} {error:?}");
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(" <- {inner} {inner:?}"));
        source = inner.source();
    }
    text
}
