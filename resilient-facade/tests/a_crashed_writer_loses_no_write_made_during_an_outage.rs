//! Crash-safe replay against real servers, with `ResilientStorage::builder()` and two URLs: a
//! process writes while Redis is down (PostgreSQL serves), and dies before Redis comes back, so
//! its in-memory replay records die with it. Redis restarts from its append-only file, holding
//! the values from before the outage. Another process that starts afterwards (and never saw
//! the outage) replays every write of the outage from the records PostgreSQL kept, and a plain
//! Redis client then reads each key's last write.

mod common;

use std::time::{Duration, Instant};

use common::defaults;
use resilient_storage::ResilientStorage;
use resilient_test_support::{PostgresServer, RedisOptions, RedisServer, read_key};

const KEYS: usize = 40;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn served_by(storage: &ResilientStorage, backend: &str, what: &str) {
    assert_eq!(
        storage.last_served_backend().as_deref(),
        Some(backend),
        "{what}"
    );
}

#[test]
fn the_writes_of_a_process_that_died_during_a_redis_outage_reach_redis_through_another() {
    let mut redis = RedisServer::start_with(RedisOptions::default().appendonly(true)).unwrap();
    let postgres = PostgresServer::start().unwrap();

    // The writer: a runtime of its own, shut down without any goodbye once it has written, as
    // a SIGKILL would end it; its replay records in memory are gone with it.
    let writer = runtime();
    let storage = writer.block_on(async {
        let storage = defaults(&redis, &postgres).await;
        for i in 0..KEYS {
            storage.set(&format!("k{i}"), "old", None).await.unwrap();
        }
        storage.set("deleted", "old", None).await.unwrap();
        storage.increment("n", 10, None).await.unwrap();
        served_by(&storage, "redis", "before the outage");
        storage
    });
    redis.kill().unwrap();
    writer.block_on(async {
        for i in 0..KEYS {
            storage
                .set(&format!("k{i}"), format!("new{i}"), None)
                .await
                .unwrap();
            served_by(&storage, "postgres", "a set while Redis is down");
        }
        storage.delete("deleted").await.unwrap();
        served_by(&storage, "postgres", "a delete while Redis is down");
        assert_eq!(storage.increment("n", 5, None).await.unwrap(), 15);
        served_by(&storage, "postgres", "an increment while Redis is down");
        let written = storage
            .set_many([("batch-a", "a"), ("batch-b", "b")], None)
            .await
            .unwrap();
        assert!(written.iter().all(Result::is_ok));
    });
    writer.shutdown_background();
    // No destructor runs in a crash either.
    std::mem::forget(storage);

    redis.restart().unwrap();
    assert_eq!(
        runtime().block_on(read_key(&redis.url(), "k0")).as_deref(),
        Some("old"),
        "Redis came back from its append-only file with the values from before the outage"
    );

    // Another process, started after the outage: it never saw it, and has no record of its own.
    let reader = runtime();
    reader.block_on(async {
        let storage = defaults(&redis, &postgres).await;
        let url = redis.url();
        let mut expected: Vec<(String, Option<String>)> = (0..KEYS)
            .map(|i| (format!("k{i}"), Some(format!("new{i}"))))
            .collect();
        expected.push(("deleted".into(), None));
        expected.push(("n".into(), Some("15".into())));
        expected.push(("batch-a".into(), Some("a".into())));
        expected.push(("batch-b".into(), Some("b".into())));
        let start = Instant::now();
        loop {
            let mut stale = Vec::new();
            for (key, value) in &expected {
                let held = read_key(&url, key).await;
                if held != *value {
                    stale.push(format!("{key}: {held:?}, not {value:?}"));
                }
            }
            if stale.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "20 s after a new process started, Redis still misses writes of the outage: {stale:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Replayed once: the records are settled, and a later write is not overwritten.
        storage.set("k0", "after", None).await.unwrap();
        served_by(&storage, "redis", "after the replay");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(read_key(&url, "k0").await.as_deref(), Some("after"));
        let left = postgres
            .psql("SELECT count(*) FROM resilient_kv_journal")
            .unwrap();
        assert_eq!(left.trim(), "0", "every record settled once replayed");
    });
}
