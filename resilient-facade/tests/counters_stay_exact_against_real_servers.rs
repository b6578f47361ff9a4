//! Against real servers with `ResilientStorage::builder()` and two URLs: eight tasks increment
//! one counter while Redis is killed, the storage fails over to PostgreSQL, and Redis restarts
//! empty and takes traffic back. Every increment that answered is counted once: the counter
//! ends equal to the number of successful calls, on Redis too. Set-if-absent decides once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::defaults;
use resilient_test_support::{PostgresServer, RedisServer, read_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_stays_exact_across_a_redis_kill_and_an_empty_restart() {
    let mut redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = defaults(&redis, &postgres).await;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (storage, ok, failed, stop) =
                (storage.clone(), ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match storage.increment("visits", 1, None).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.kill().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let redis = tokio::task::spawn_blocking(move || {
        redis.restart().unwrap();
        redis
    })
    .await
    .unwrap();
    // Until Redis serves again (failback delay 2 s, two health checks), then a while more.
    let start = Instant::now();
    while storage.last_served_backend().as_deref() != Some("redis") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no failback: {:?}",
            storage.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let total = storage.increment("visits", 0, None).await.unwrap();
    println!("{ok} increments answered, {failed} failed, counter {total}");
    assert!(ok > 1000, "too few increments to mean anything: {ok}");
    // A failed call may or may not have been applied before it failed; none should fail here.
    assert_eq!(failed, 0, "increments failed across the outage");
    assert_eq!(
        u64::try_from(total).unwrap(),
        ok,
        "increments lost or counted twice"
    );
    assert_eq!(
        read_key(&redis.url(), "visits").await,
        Some(total.to_string())
    );
    storage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_if_absent_decides_once_among_many_callers() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storages = [
        defaults(&redis, &postgres).await,
        defaults(&redis, &postgres).await,
    ];
    let callers: Vec<_> = (0..200)
        .map(|i| {
            let storage = storages[i % 2].clone();
            tokio::spawn(async move {
                storage
                    .set_if_absent("leader", format!("caller-{i}"), None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for caller in callers {
        winners += usize::from(caller.await.unwrap());
    }
    assert_eq!(winners, 1);
    for storage in &storages {
        storage.shutdown().await;
    }
}
