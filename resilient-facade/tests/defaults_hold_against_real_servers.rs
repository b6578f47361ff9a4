//! Against real servers, with `ResilientStorage::builder()` and two URLs and nothing else: values
//! written before Redis died are read after failover, a counter kept in the storage stays exact
//! across a kill and an empty restart, and Redis takes traffic back after an outage of reads
//! only, locks only, writes, or no traffic at all.

mod common;

use std::time::{Duration, Instant};

use common::defaults;
use resilient_storage::prelude::*;
use resilient_test_support::{PostgresServer, RedisServer, read_key};

/// Restarts Redis with an empty dataset (no persistence), off the async threads.
async fn restart(mut redis: RedisServer) -> RedisServer {
    tokio::task::spawn_blocking(move || {
        redis.restart().unwrap();
        redis
    })
    .await
    .unwrap()
}

/// The default failback: failback delay 2 s, two passing health checks 1 s apart after an
/// outage that made Redis unhealthy, one probe. The bound leaves a busy 2-core machine 6 s
/// more.
const FAILBACK_BOUND: Duration = Duration::from_secs(10);

/// Waits until a get is served by Redis; how long that took.
async fn failback(storage: &ResilientStorage, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        storage.get("probe").await.unwrap();
        if storage.last_served_backend().as_deref() == Some("redis") {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < FAILBACK_BOUND,
            "no failback after {what} within {FAILBACK_BOUND:?}: {:?}",
            storage.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn increment(storage: &ResilientStorage) {
    let n: u64 = storage.get_json("counter").await.unwrap().unwrap_or(0);
    storage.set_json("counter", &(n + 1), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_redis_kill_and_an_empty_restart_with_default_settings() {
    let mut redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = defaults(&redis, &postgres).await;
    for i in 0..200 {
        storage
            .set(&format!("k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    for _ in 0..50 {
        increment(&storage).await;
    }
    redis.kill().unwrap();
    for i in 0..200 {
        assert_eq!(
            storage.get(&format!("k{i}")).await.unwrap().as_deref(),
            Some(format!("v{i}").as_bytes()),
            "k{i} after Redis died"
        );
    }
    for _ in 0..50 {
        increment(&storage).await;
    }
    let redis = restart(redis).await;
    for _ in 0..50 {
        increment(&storage).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failback(&storage, "a kill and an empty restart").await;
    assert_eq!(storage.get_json::<u64>("counter").await.unwrap(), Some(150));
    assert_eq!(
        read_key(&redis.url(), "counter").await.as_deref(),
        Some("150")
    );
    for i in 0..200 {
        assert_eq!(
            storage.get(&format!("k{i}")).await.unwrap().as_deref(),
            Some(format!("v{i}").as_bytes()),
            "k{i} after Redis came back empty"
        );
    }
    storage.shutdown().await;
}

/// Kills Redis, runs `traffic` for 4 s (long enough for the breaker to open and the health
/// checks to mark Redis unhealthy), restarts it empty, and returns how long failback took.
async fn outage<F, Fut>(what: &str, traffic: F) -> Duration
where
    F: Fn(ResilientStorage) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = defaults(&redis, &postgres).await;
    storage.set("k", "v", None).await.unwrap();
    // A first lease, so locks wait one lease (1 s) before PostgreSQL may grant.
    storage
        .acquire_lock("first", "me", Duration::from_secs(1))
        .await
        .unwrap();
    redis.kill().unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        traffic(storage.clone()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _redis = restart(redis).await;
    let took = failback(&storage, what).await;
    eprintln!("failback after {what}: {took:?}");
    assert_eq!(storage.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    storage.shutdown().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_traffic_back_after_an_outage_of_reads_only() {
    outage("reads only", |storage| async move {
        storage.get("k").await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_traffic_back_after_an_outage_of_locks_only() {
    outage("locks only", |storage| async move {
        // Fails closed while Redis, the lock authority, is out of reach: never granted by
        // PostgreSQL.
        if let Ok(LockOutcome::Acquired(grant)) = storage
            .acquire_lock("job", "me", Duration::from_secs(1))
            .await
        {
            assert_eq!(grant.backend, "redis");
            storage.release_lock("job", "me").await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_traffic_back_after_an_outage_of_writes() {
    outage("writes", |storage| async move {
        storage.set("w", "v", None).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_traffic_back_after_an_idle_outage() {
    outage("no traffic", |_| async {}).await;
}

/// A PostgreSQL this process has never sent a call to prepared its tables and a connection
/// when the storage was built: the first call that fails over to it costs Redis's failed
/// attempt plus one PostgreSQL round trip, no DDL and no connection set-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_failover_to_an_unused_postgres_finds_its_tables_ready() {
    let mut redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    // No call before the failover: PostgreSQL is prepared by the backend alone.
    let storage = defaults(&redis, &postgres).await;
    let start = Instant::now();
    while postgres
        .psql("SELECT to_regclass('resilient_kv') IS NOT NULL")
        .unwrap()
        .trim()
        != "t"
    {
        assert!(start.elapsed() < Duration::from_secs(20), "no tables");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for the warm connection to follow the tables.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill().unwrap();
    let start = Instant::now();
    assert_eq!(storage.get("k").await.unwrap(), None);
    let took = start.elapsed();
    println!("the first call failed over to PostgreSQL in {took:?}");
    assert_eq!(storage.last_served_backend().as_deref(), Some("postgres"));
    // The default attempt timeout bounds Redis's attempt, plus one round trip and room for a
    // busy machine. That no DDL ran is shown statement by statement in
    // backend-postgres/tests/tables_ready_before_the_first_call.rs.
    assert!(
        took < resilient_storage::DEFAULT_ATTEMPT_TIMEOUT + Duration::from_millis(250),
        "the first failed-over call took {took:?}"
    );
}

/// Found by the soak: PostgreSQL frozen while a Redis that restarted empty served read values as
/// `None`. With PostgreSQL out of reach, a key Redis lost is an error, never a wrong `None`
/// (whichever backend answers the miss: Redis, or the memory store while Redis's connection is
/// re-made); with PostgreSQL back, it reads its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_redis_lost_is_an_error_while_postgres_is_out_of_reach() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = defaults(&redis, &postgres).await;
    storage.set("k", "v", None).await.unwrap();
    let start = Instant::now();
    while storage.health().backends["postgres"].pending_replay > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the copy never reached PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_redis, mut postgres) = tokio::task::spawn_blocking(move || {
        let (mut redis, mut postgres) = (redis, postgres);
        postgres.kill().unwrap();
        redis.restart().unwrap();
        (redis, postgres)
    })
    .await
    .unwrap();
    for _ in 0..20 {
        if let Ok(value) = storage.get("k").await {
            panic!(
                "read {value:?} served by {:?} while the only copy was out of reach",
                storage.last_served_backend()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _postgres = tokio::task::spawn_blocking(move || {
        postgres.restart().unwrap();
        postgres
    })
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        match storage.get("k").await {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some(&b"v"[..]));
                break;
            }
            Err(error) => assert!(
                start.elapsed() < FAILBACK_BOUND,
                "PostgreSQL back, the key still fails after {FAILBACK_BOUND:?}: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    storage.shutdown().await;
}
