//! Against real servers: while Redis is down, writes and deletes go to PostgreSQL; when Redis
//! comes back (with its old, now stale, values on disk) they are replayed to it before it takes
//! traffic, and no read ever sees a stale value.

use std::time::{Duration, Instant};

use resilient_storage::prelude::*;
use resilient_storage::{BackendOptions, HealthConfig};
use resilient_test_support::{PostgresServer, RedisOptions, RedisServer, read_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_deletes_made_while_redis_was_down_are_on_redis_after_it_returns() {
    let mut redis = RedisServer::start_with(RedisOptions::default().appendonly(true)).unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = ResilientStorage::builder()
        .backend_url_with(&redis.url(), BackendOptions::new(1))
        .unwrap()
        .backend_url_with(&postgres.url(), BackendOptions::new(2))
        .unwrap()
        .attempt_timeout(Duration::from_millis(300))
        .failback_delay(Duration::from_millis(500))
        .health(
            HealthConfig::default()
                .interval(Duration::from_millis(200), Duration::from_millis(150)),
        )
        .build()
        .await
        .unwrap();
    let mut events = storage.subscribe();
    for i in 0..50 {
        storage
            .set(&format!("k{i}"), format!("old{i}"), None)
            .await
            .unwrap();
        storage.set(&format!("d{i}"), "old", None).await.unwrap();
    }
    assert_eq!(read_key(&redis.url(), "k0").await.as_deref(), Some("old0"));

    redis.kill().unwrap();
    for i in 0..50 {
        storage
            .set(&format!("k{i}"), format!("new{i}"), None)
            .await
            .unwrap();
        storage.delete(&format!("d{i}")).await.unwrap();
        assert_eq!(
            storage.get(&format!("k{i}")).await.unwrap().as_deref(),
            Some(format!("new{i}").as_bytes())
        );
    }
    assert_eq!(storage.health().backends["redis"].pending_replay, 100);

    let redis = tokio::task::spawn_blocking(move || {
        redis.restart().unwrap();
        redis
    })
    .await
    .unwrap();
    // Redis restarts from its append-only file holding the old values; the replayer may
    // already be at work.

    // Keep reading while Redis recovers: never a stale value.
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut stale_reads = 0;
    loop {
        for i in (0..50).step_by(7) {
            let value = storage.get(&format!("k{i}")).await.unwrap();
            if value.as_deref() != Some(format!("new{i}").as_bytes()) {
                stale_reads += 1;
            }
            if storage.get(&format!("d{i}")).await.unwrap().is_some() {
                stale_reads += 1;
            }
        }
        let report = storage.health();
        if report.backends["redis"].pending_replay == 0
            && report.active_backend.as_deref() == Some("redis")
        {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "no failback within 20 s: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stale_reads, 0, "reads during recovery saw stale values");
    for i in 0..50 {
        assert_eq!(
            read_key(&redis.url(), &format!("k{i}")).await,
            Some(format!("new{i}")),
            "k{i} on Redis"
        );
        assert_eq!(
            read_key(&redis.url(), &format!("d{i}")).await,
            None,
            "d{i} deleted on Redis"
        );
    }
    let mut replayed = 0;
    while let Ok(event) = events.try_recv() {
        if let StorageEvent::ReplayCompleted { backend, records } = event
            && backend == "redis"
        {
            replayed += records;
        }
    }
    assert_eq!(replayed, 100);
    storage.shutdown().await;
}
