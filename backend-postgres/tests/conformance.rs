//! The PostgreSQL backend passes the shared conformance suite, stores long random keys and
//! SQL-shaped keys verbatim, and sweeps expired rows.

mod common;

use resilient_core::BackendExt;
use std::time::Duration;

use bytes::Bytes;
use resilient_core::key::MAX_KEY_LEN_BOUND;
use resilient_core::testing::conformance;
use resilient_core::{Backend, KeyWrite, WriteVersion};
use resilient_test_support::PostgresServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_suite() {
    let server = PostgresServer::start().unwrap();
    let backend = common::backend(&server.url());
    conformance::run(&*backend).await;
    conformance::expired_values_keep_their_version(&*backend, &conformance::prefix()).await;
}

fn random_key(len: usize) -> String {
    let mut key = String::with_capacity(len);
    while key.len() < len {
        let c = loop {
            // Any scalar value but NUL, all planes.
            if let Some(c) = char::from_u32(fastrand::u32(1..=0x10FFFF)) {
                break c;
            }
        };
        if key.len() + c.len_utf8() <= len {
            key.push(c);
        } else {
            key.push('a');
        }
    }
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_maximum_length_in_random_utf8_are_stored_and_read_back() {
    let server = PostgresServer::start().unwrap();
    let backend = common::backend(&server.url());
    let keys: Vec<String> = (0..200).map(|_| random_key(MAX_KEY_LEN_BOUND)).collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(key.len(), MAX_KEY_LEN_BOUND);
        backend
            .set(key, Bytes::from(i.to_string()), None)
            .await
            .unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            backend.get(key).await.unwrap().as_deref(),
            Some(i.to_string().as_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_shaped_like_sql_injection_are_stored_verbatim_and_the_tables_survive() {
    let server = PostgresServer::start().unwrap();
    let backend = common::backend(&server.url());
    let nasty = [
        "'; DROP TABLE resilient_kv; --",
        "'); DELETE FROM resilient_kv_locks; --",
        "\\'; TRUNCATE resilient_kv CASCADE; --",
        "$1; DROP SCHEMA public CASCADE",
        "\" OR 1=1 --",
    ];
    for (i, key) in nasty.iter().enumerate() {
        backend
            .set(key, Bytes::from(format!("v{i}")), None)
            .await
            .unwrap();
        assert!(
            backend
                .acquire_lock(key, key, Duration::from_secs(30))
                .await
                .unwrap()
                .is_acquired()
        );
    }
    for (i, key) in nasty.iter().enumerate() {
        assert_eq!(
            backend.get(key).await.unwrap().as_deref(),
            Some(format!("v{i}").as_bytes())
        );
    }
    assert_eq!(
        server.psql("SELECT count(*) FROM resilient_kv").unwrap(),
        "5"
    );
    assert_eq!(
        server
            .psql("SELECT count(*) FROM resilient_kv_locks")
            .unwrap(),
        "5"
    );
    assert_eq!(
        server
            .psql("SELECT key FROM resilient_kv ORDER BY key LIMIT 1")
            .unwrap(),
        "\" OR 1=1 --"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rows_are_invisible_and_the_sweeper_removes_them() {
    let server = PostgresServer::start().unwrap();
    let backend = common::backend(&format!(
        "{}?sweep_interval=200ms&sweep_batch=7&tombstone_ttl=300ms",
        server.url()
    ));
    // The clock is read before short49's set: its expiry counts from its statement, so it cannot
    // show as expired less than its TTL after this instant, however slow the round trips after it.
    let mut set_at = None;
    for i in 0..50 {
        if i == 49 {
            set_at = Some(std::time::Instant::now());
        }
        backend
            .set(
                &format!("short{i}"),
                Bytes::from_static(b"v"),
                Some(Duration::from_millis(100)),
            )
            .await
            .unwrap();
    }
    let set_at = set_at.expect("short49 was set");
    backend
        .set("kept", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    assert!(
        backend
            .acquire_lock("lease", "a", Duration::from_millis(100))
            .await
            .unwrap()
            .is_acquired()
    );
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    // Expiry shows at once through get, whether or not the sweeper has run.
    while backend.get("short49").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < give_up,
            "the TTL was never honoured"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        set_at.elapsed() >= Duration::from_millis(90),
        "not expired before its TTL"
    );
    for i in 0..50 {
        assert_eq!(backend.get(&format!("short{i}")).await.unwrap(), None);
    }
    loop {
        let rows = server.psql("SELECT count(*) FROM resilient_kv").unwrap();
        let leases = server
            .psql("SELECT count(*) FROM resilient_kv_locks")
            .unwrap();
        if rows == "1" && leases == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "sweeper left {rows} rows and {leases} leases"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(backend.get("kept").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_made_before_versions_gains_them_and_keeps_its_rows() {
    let server = PostgresServer::start().unwrap();
    server
        .psql(
            "CREATE TABLE resilient_kv (key text PRIMARY KEY, value bytea NOT NULL, \
             expires_at timestamptz); \
             INSERT INTO resilient_kv VALUES ('kept', 'old', NULL)",
        )
        .unwrap();
    let backend = common::backend(&server.url());
    assert_eq!(
        backend.get("kept").await.unwrap().as_deref(),
        Some(&b"old"[..])
    );
    assert!(
        backend
            .replay_write(
                "kept",
                KeyWrite::Set {
                    value: Bytes::from_static(b"replayed"),
                    ttl: None
                },
                WriteVersion(10),
            )
            .await
            .unwrap(),
        "a row without a version is older than any replay"
    );
    assert!(
        backend
            .delete_versioned("kept", WriteVersion(20))
            .await
            .unwrap()
    );
    assert_eq!(backend.get("kept").await.unwrap(), None);
    conformance::run(&*backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_in_separate_schemas_do_not_see_each_other() {
    let server = PostgresServer::start().unwrap();
    let a = common::backend(&format!("{}?schema=tenant_a", server.url()));
    let b = common::backend(&format!("{}?schema=tenant_b&table=cache", server.url()));
    a.set("k", Bytes::from_static(b"a"), None).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), None);
    assert_eq!(
        server
            .psql("SELECT count(*) FROM tenant_a.resilient_kv")
            .unwrap(),
        "1"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM tenant_b.cache").unwrap(),
        "0"
    );
}

#[test]
fn both_postgres_schemes_are_registered() {
    let schemes = resilient_core::registry::schemes();
    assert!(
        schemes.contains(&"postgres") && schemes.contains(&"postgresql"),
        "{schemes:?}"
    );
    resilient_backend_postgres::register().expect("registering again is a no-op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_the_same_keys_in_opposite_orders_never_deadlock() {
    use resilient_core::{BatchWrite, WriteOptions};
    let server = PostgresServer::start().unwrap();
    let backend = common::backend(&server.url());
    let keys: Vec<String> = (0..50).map(|i| format!("deadlock:{i}")).collect();
    let run = |reversed: bool| {
        let (backend, keys) = (backend.clone(), keys.clone());
        tokio::spawn(async move {
            for round in 0..40_u64 {
                let mut order: Vec<&String> = keys.iter().collect();
                if reversed {
                    order.reverse();
                }
                let delete = round % 3 == 2;
                let batch = order
                    .iter()
                    .map(|key| {
                        let write = match delete {
                            true => KeyWrite::Delete,
                            false => KeyWrite::Set {
                                value: Bytes::from(round.to_string()),
                                ttl: None,
                            },
                        };
                        BatchWrite::new(key, write, WriteOptions::new(WriteVersion(round)))
                    })
                    .collect();
                let answers = backend.write_many(batch).await.expect("no deadlock");
                assert!(answers.iter().all(Result::is_ok));
            }
        })
    };
    let (a, b) = (run(false), run(true));
    a.await.unwrap();
    b.await.unwrap();
}
