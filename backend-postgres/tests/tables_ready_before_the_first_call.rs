//! The tables and one pooled connection are prepared in the background when the backend is
//! built, and again at each passing health check until that succeeds, so the first call that
//! fails over to PostgreSQL runs no DDL; many instances may start at once.

mod common;

use resilient_core::BackendExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use resilient_backend_postgres::PostgresBackend;
use resilient_core::Backend;
use resilient_test_support::PostgresServer;

/// Room for a busy 2-core machine: preparing takes milliseconds.
const READY_WITHIN: Duration = Duration::from_secs(20);

async fn until_prepared(backend: &PostgresBackend) {
    let start = Instant::now();
    while !backend.prepared() {
        assert!(
            start.elapsed() < READY_WITHIN,
            "not prepared after {READY_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log(server: &PostgresServer) -> String {
    std::fs::read_to_string(server.root().join("postgres.log")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_runs_no_ddl() {
    let server = PostgresServer::start().unwrap();
    // Log every statement, so the log shows what each call sent.
    server
        .psql("ALTER SYSTEM SET log_statement = 'all'")
        .unwrap();
    server.psql("SELECT pg_reload_conf()").unwrap();
    // A new session sees the setting once the server has reloaded it.
    let start = Instant::now();
    while server.psql("SHOW log_statement").unwrap().trim() != "all" {
        assert!(
            start.elapsed() < READY_WITHIN,
            "the setting was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backend = common::backend(&server.url());
    until_prepared(&backend).await;
    assert!(
        log(&server).contains("CREATE TABLE IF NOT EXISTS"),
        "the tables were prepared before any call"
    );
    let before = log(&server).len();
    backend
        .set("first", Bytes::from_static(b"call"), None)
        .await
        .unwrap();
    let first_call = log(&server)[before..].to_owned();
    assert!(first_call.contains("INSERT"), "{first_call}");
    assert!(
        !first_call.contains("CREATE") && !first_call.contains("pg_advisory_xact_lock"),
        "the first call ran DDL: {first_call}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_at_start_is_prepared_by_the_first_passing_health_check() {
    let mut server = PostgresServer::start().unwrap();
    server.stop_immediate().unwrap();
    let url = format!("{}?query_timeout=500ms&acquire_timeout=400ms", server.url());
    let built = Instant::now();
    let backend = common::backend(&url);
    assert!(
        built.elapsed() < Duration::from_secs(1),
        "building waited for the server"
    );
    // The attempt made at build has failed by now, and nothing retries without a check.
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!backend.prepared());
    assert!(backend.health_check().await.is_ok());
    until_prepared(&backend).await;
    assert_eq!(backend.get("missing").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_instances_starting_at_once_all_prepare_the_same_tables() {
    let server = PostgresServer::start().unwrap();
    let backends: Vec<_> = (0..8).map(|_| common::backend(&server.url())).collect();
    for backend in &backends {
        until_prepared(backend).await;
    }
    for (i, backend) in backends.iter().enumerate() {
        let key = format!("k{i}");
        backend
            .set(&key, Bytes::from(key.clone()), None)
            .await
            .unwrap();
        assert_eq!(
            backends[(i + 1) % 8].get(&key).await.unwrap().as_deref(),
            Some(key.as_bytes())
        );
    }
}
