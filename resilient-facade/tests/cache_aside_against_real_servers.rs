//! Cache-aside against real servers, with `ResilientStorage::builder()` and two URLs: two
//! thousand concurrent callers of one missing key in two storages sharing Redis and PostgreSQL
//! cause one load with fleet single flight (and one per storage without it), and fail-safe
//! serves this process's copy of the last known value while both servers are killed (the
//! memory fallback then answers reads with a miss, so the copy is what is left). A load that
//! ends after a newer write (a `set`, or another process's load that began later) does not
//! overwrite it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::defaults;
use resilient_storage::prelude::*;
use resilient_storage::{LoadOptions, LoadSource, StaleReason};
use resilient_test_support::{PostgresServer, RedisServer, read_key};

/// `callers` concurrent calls spread over `storages`, each loader taking 300 ms; the number of
/// loads they caused.
async fn stampede(storages: &[ResilientStorage], key: &str, options: &LoadOptions) -> usize {
    let loads = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..2000)
        .map(|i| {
            let storage = storages[i % storages.len()].clone();
            let (loads, options, key) = (loads.clone(), options.clone(), key.to_owned());
            tokio::spawn(async move {
                storage
                    .get_or_load(&key, &options, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::io::Error>("from the database")
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        let loaded = caller.await.unwrap().unwrap();
        assert_eq!(&loaded.value[..], b"from the database");
    }
    loads.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_callers_in_two_storages_cause_one_load_with_fleet_single_flight() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storages = [
        defaults(&redis, &postgres).await,
        defaults(&redis, &postgres).await,
    ];
    let ttl = Duration::from_secs(60);
    let per_process = stampede(&storages, "plain", &LoadOptions::new(ttl)).await;
    assert!(
        (1..=2).contains(&per_process),
        "single flight per process: {per_process} loads"
    );
    let fleet = LoadOptions::new(ttl).fleet_single_flight(Duration::from_secs(10));
    assert_eq!(stampede(&storages, "fleet", &fleet).await, 1);
    for storage in &storages {
        storage.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_serves_the_last_known_value_while_redis_and_postgres_are_killed() {
    let mut redis = RedisServer::start().unwrap();
    let mut postgres = PostgresServer::start().unwrap();
    let storage = defaults(&redis, &postgres).await;
    let options = LoadOptions::new(Duration::from_millis(500)).fail_safe(Duration::from_secs(3600));
    let loaded = storage
        .get_or_load("profile", &options, || async {
            Ok::<_, std::io::Error>("v1")
        })
        .await
        .unwrap();
    assert_eq!(loaded.source, LoadSource::Loaded);
    redis.kill().unwrap();
    postgres.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Stale by now, every server gone, and the loader (the database) failing as well.
    let stale = storage
        .get_or_load("profile", &options, || async {
            Err::<&str, _>(std::io::Error::other("database down"))
        })
        .await
        .unwrap();
    assert_eq!(&stale.value[..], b"v1");
    assert_eq!(stale.source, LoadSource::Stale(StaleReason::LoaderFailed));
    // Throttled: the failing loader is not called again right away.
    let again = storage
        .get_or_load("profile", &options, || async {
            if true {
                panic!("a throttled loader was called");
            }
            Ok::<_, std::io::Error>("never")
        })
        .await
        .unwrap();
    assert_eq!(again.source, LoadSource::Stale(StaleReason::Throttled));
    storage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_ends_after_a_newer_write_does_not_overwrite_it() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let a = defaults(&redis, &postgres).await;
    let b = defaults(&redis, &postgres).await;
    let options = LoadOptions::new(Duration::from_secs(60));
    let slow = |value: &'static str, delay: u64| {
        move || async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Ok::<_, std::io::Error>(value)
        }
    };
    // A `set` made while the load runs wins over the load that began before it.
    let load = {
        let (a, options) = (a.clone(), options.clone());
        tokio::spawn(async move { a.get_or_load("k", &options, slow("loaded", 1000)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.set("k", "set-meanwhile", None).await.unwrap();
    assert_eq!(&load.await.unwrap().unwrap().value[..], b"loaded");
    assert_eq!(
        a.get("k").await.unwrap().as_deref(),
        Some(&b"set-meanwhile"[..]),
        "the late load overwrote a newer set"
    );
    assert_eq!(
        read_key(&redis.url(), "k").await.as_deref(),
        Some("set-meanwhile")
    );
    // Two processes loading at once: the load that began later is kept, whichever ends last.
    let first = {
        let (a, options) = (a.clone(), options.clone());
        tokio::spawn(async move {
            a.get_or_load("j", &options, slow("began-first", 1000))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = b
        .get_or_load("j", &options, slow("began-second", 10))
        .await
        .unwrap();
    assert_eq!(second.source, LoadSource::Loaded);
    first.await.unwrap().unwrap();
    let kept = b
        .get_or_load("j", &options, slow("not-called", 0))
        .await
        .unwrap();
    assert_eq!(
        (&kept.value[..], kept.source),
        (&b"began-second"[..], LoadSource::Cached)
    );
    a.shutdown().await;
    b.shutdown().await;
}
