//! Against real servers, two storages standing for two processes: A is cut off from Redis and
//! writes to PostgreSQL meanwhile; B, still on Redis, then writes and deletes some of the same
//! keys. When A's link comes back, A replays its outage writes to Redis, and every one of them
//! that B overtook is refused there: B's newer value stays, B's delete is not undone. Writes B
//! made before A's are replaced, as they should be.

use std::time::{Duration, Instant};

use resilient_storage::prelude::*;
use resilient_storage::{BackendOptions, HealthConfig, StorageBuilder};
use resilient_test_support::{FaultProxy, PostgresServer, ProxyMode, RedisServer, read_key};

fn builder(redis_url: &str, postgres_url: &str) -> StorageBuilder {
    ResilientStorage::builder()
        .backend_url_with(redis_url, BackendOptions::new(1).named("redis"))
        .unwrap()
        .backend_url_with(postgres_url, BackendOptions::new(2).named("postgres"))
        .unwrap()
        .attempt_timeout(Duration::from_millis(300))
        .failback_delay(Duration::from_millis(500))
        .health(
            HealthConfig::default()
                .interval(Duration::from_millis(200), Duration::from_millis(150)),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_overwrites_or_undoes_a_newer_write_from_another_process() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let a = builder(&format!("redis://{}", proxy.addr()), &postgres.url())
        .build()
        .await
        .unwrap();
    let b = builder(&redis.url(), &postgres.url())
        .build()
        .await
        .unwrap();

    // B writes this one before A's outage write: A's write is newer and must land.
    b.set("older", "b-first", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    proxy.set_mode(ProxyMode::Refuse);
    proxy.reset_all();
    for key in ["overtaken", "deleted-later", "older", "only-a"] {
        a.set(key, "a-outage", None).await.unwrap();
    }
    a.delete("rewritten-later").await.unwrap();
    assert_eq!(a.health().backends["redis"].pending_replay, 5);
    assert_eq!(read_key(&redis.url(), "only-a").await, None);

    // B, still on Redis, overtakes three of A's writes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.set("overtaken", "b-newer", None).await.unwrap();
    b.delete("deleted-later").await.unwrap();
    b.set("rewritten-later", "b-newer", None).await.unwrap();

    proxy.set_mode(ProxyMode::Pass);
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        // Traffic, so A's active backend can move back to Redis.
        a.get("only-a").await.unwrap();
        let report = a.health();
        if report.backends["redis"].pending_replay == 0
            && report.active_backend.as_deref() == Some("redis")
        {
            break;
        }
        assert!(Instant::now() < give_up, "A never replayed: {report:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let url = redis.url();
    let on_redis = |key: &'static str| read_key(&url, key);
    assert_eq!(
        on_redis("overtaken").await.as_deref(),
        Some("b-newer"),
        "A's older replay overwrote B's newer write"
    );
    assert_eq!(
        on_redis("deleted-later").await,
        None,
        "A's older replay brought back a key B deleted"
    );
    assert_eq!(
        on_redis("rewritten-later").await.as_deref(),
        Some("b-newer"),
        "A's older delete removed B's newer write"
    );
    assert_eq!(on_redis("older").await.as_deref(), Some("a-outage"));
    assert_eq!(on_redis("only-a").await.as_deref(), Some("a-outage"));
    // A reads what Redis holds now.
    assert_eq!(
        a.get("overtaken").await.unwrap().as_deref(),
        Some(&b"b-newer"[..])
    );
    assert_eq!(a.get("deleted-later").await.unwrap(), None);
    a.shutdown().await;
    b.shutdown().await;
}
