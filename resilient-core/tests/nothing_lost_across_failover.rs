//! Writes and deletes served by a fallback while the primary is down reach the primary when it
//! recovers, before it takes traffic again; reads never see its stale values; overflow is
//! reported; write-through keeps fallbacks fresh.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{builder, direct, drain, fault};
use resilient_backend_memory::{MemoryBackend, MemoryConfig};
use resilient_core::testing::Fault;
use resilient_core::{Backend, Operation, OverallStatus, StorageEvent, Strategy, WritePolicy};
use tokio::time::sleep;

#[tokio::test(start_paused = true)]
async fn writes_and_deletes_made_during_an_outage_are_replayed_before_failback() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    storage.set("kept", "old", None).await.unwrap();
    storage.set("doomed", "old", None).await.unwrap();
    let mut events = storage.subscribe();

    redis.inject(Fault::Fail);
    for i in 0..10 {
        storage
            .set(&format!("k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    storage.set("kept", "new", None).await.unwrap();
    storage.delete("doomed").await.unwrap();
    let report = storage.health();
    assert_eq!(report.backends["redis"].pending_replay, 12);
    assert_eq!(report.status, OverallStatus::Degraded);

    // Redis answers again, but still holds the old values: it gets no traffic until replayed.
    redis.inject(Fault::Pass);
    assert_eq!(
        storage.get("kept").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    assert_eq!(storage.get("doomed").await.unwrap(), None);
    assert_eq!(direct(&*redis, "kept").await.as_deref(), Some(&b"old"[..]));

    // The breaker opened after 3 failures for 1 s; the replayer's first write is the probe.
    sleep(Duration::from_millis(1_200)).await;
    assert_eq!(storage.health().backends["redis"].pending_replay, 0);
    for i in 0..10 {
        assert_eq!(
            direct(&*redis, &format!("k{i}")).await.as_deref(),
            Some(format!("v{i}").as_bytes())
        );
    }
    assert_eq!(direct(&*redis, "kept").await.as_deref(), Some(&b"new"[..]));
    assert_eq!(
        direct(&*redis, "doomed").await,
        None,
        "the delete was replayed too"
    );
    storage.get("kept").await.unwrap();
    assert_eq!(
        storage.active_backend().as_deref(),
        Some("redis"),
        "traffic is back"
    );
    assert_eq!(storage.health().status, OverallStatus::Healthy);
    assert!(drain(&mut events).iter().any(|e| matches!(
        e,
        StorageEvent::ReplayCompleted { backend, records: 12 } if backend == "redis"
    )));
}

#[tokio::test(start_paused = true)]
async fn a_replayed_value_keeps_its_remaining_ttl_and_an_expired_one_becomes_a_delete() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    storage.set("short", "old", None).await.unwrap();
    redis.inject(Fault::Fail);
    storage
        .set("lasting", "v", Some(Duration::from_secs(10)))
        .await
        .unwrap();
    storage
        .set("short", "v", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    sleep(Duration::from_secs(3)).await;
    redis.inject(Fault::Pass);
    // The replayer's failed attempts opened the breaker (1 s, then 2 s): give it a probe.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(storage.health().backends["redis"].pending_replay, 0);
    assert_eq!(
        direct(&*redis, "short").await,
        None,
        "expired during the outage: deleted on replay"
    );
    assert!(direct(&*redis, "lasting").await.is_some());
    // Written at 0 s with 10 s to live: gone at 10 s on the primary too, not 10 s after replay.
    sleep(Duration::from_millis(5_900)).await;
    assert!(
        direct(&*redis, "lasting").await.is_some(),
        "still alive at 9.9 s"
    );
    sleep(Duration::from_millis(200)).await;
    assert_eq!(direct(&*redis, "lasting").await, None, "expired at 10 s");
}

#[tokio::test(start_paused = true)]
async fn repeated_writes_to_one_key_are_replayed_once_with_the_last_value() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    redis.inject(Fault::Fail);
    for i in 0..100 {
        storage.set("hot", format!("v{i}"), None).await.unwrap();
    }
    assert_eq!(storage.health().backends["redis"].pending_replay, 1);
    redis.inject(Fault::Pass);
    let before = redis.calls();
    sleep(Duration::from_millis(1_200)).await;
    assert_eq!(direct(&*redis, "hot").await.as_deref(), Some(&b"v99"[..]));
    assert_eq!(
        redis.calls() - before,
        2,
        "one replayed write, plus the read just made"
    );
}

#[tokio::test(start_paused = true)]
async fn writes_beyond_the_bound_are_reported_lost_never_dropped_silently() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .max_replay_records(3)
        .build()
        .await
        .unwrap();
    let mut events = storage.subscribe();
    redis.inject(Fault::Fail);
    for i in 0..5 {
        storage.set(&format!("k{i}"), "v", None).await.unwrap();
    }
    let report = storage.health();
    assert_eq!(report.backends["redis"].pending_replay, 3);
    assert_eq!(report.backends["redis"].replay_lost, 2);
    assert_eq!(report.status, OverallStatus::Degraded);
    assert!(drain(&mut events).iter().any(|e| matches!(
        e,
        StorageEvent::ReplayLost { backend, lost: 1 } if backend == "redis"
    )));
    let json = serde_json::to_value(storage.health()).unwrap();
    assert_eq!(json["backends"]["redis"]["replayLost"], 2);
    assert_eq!(json["backends"]["redis"]["pendingReplay"], 3);
}

#[tokio::test(start_paused = true)]
async fn under_selected_nothing_is_recorded_while_the_primary_serves() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .write_policy(WritePolicy::Selected)
        .build()
        .await
        .unwrap();
    for i in 0..20 {
        storage.set(&format!("k{i}"), "v", None).await.unwrap();
        storage.delete(&format!("k{i}")).await.unwrap();
    }
    let report = storage.health();
    assert_eq!(report.backends["redis"].pending_replay, 0);
    assert_eq!(report.backends["postgres"].pending_replay, 0);
}

#[tokio::test(start_paused = true)]
async fn write_through_copies_writes_down_with_a_capped_ttl_on_memory() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let memory = Arc::new(MemoryBackend::new(MemoryConfig::default()));
    let storage = builder(&[&redis, &postgres])
        .backend(memory.clone(), 999)
        .write_policy(WritePolicy::WriteThrough)
        .memory_ttl_cap(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    storage.set("k", "v", None).await.unwrap();
    for backend in [&*redis as &dyn Backend, &*postgres, &*memory] {
        assert_eq!(direct(backend, "k").await.as_deref(), Some(&b"v"[..]));
    }
    sleep(Duration::from_secs(61)).await;
    assert_eq!(
        direct(&*memory, "k").await,
        None,
        "memory copies live at most the cap"
    );
    assert!(
        direct(&*postgres, "k").await.is_some(),
        "other copies keep the caller's TTL"
    );

    storage.delete("k").await.unwrap();
    assert_eq!(
        direct(&*postgres, "k").await,
        None,
        "deletes go through too"
    );

    // A failed copy does not fail the write.
    storage.set("k2", "old", None).await.unwrap();
    postgres.inject(Fault::Fail);
    storage.set("k2", "v", None).await.unwrap();
    assert_eq!(direct(&*redis, "k2").await.as_deref(), Some(&b"v"[..]));
    assert_eq!(direct(&*memory, "k2").await.as_deref(), Some(&b"v"[..]));
    // It leaves a record instead, so postgres, which still holds "old", serves no reads ...
    assert_eq!(storage.health().backends["postgres"].pending_replay, 1);
    redis.inject(Fault::Fail);
    postgres.inject(Fault::Pass);
    assert_eq!(
        storage.get("k2").await.unwrap().as_deref(),
        Some(&b"v"[..]),
        "a failover skips the backend that missed the write"
    );
    // ... until the replay has brought it up to date.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(direct(&*postgres, "k2").await.as_deref(), Some(&b"v"[..]));
    assert_eq!(storage.health().backends["postgres"].pending_replay, 0);
}

#[tokio::test(start_paused = true)]
async fn a_write_that_overtakes_a_replay_of_its_key_is_not_undone_by_it() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    let built = tokio::time::Instant::now();
    // Redis misses "v1" once; its breaker stays closed, so it keeps taking traffic while the
    // record is replayed (reads answer from the record meanwhile).
    redis.inject(Fault::Fail);
    storage.set("k", "v1", None).await.unwrap();
    redis.inject(Fault::Pass);
    assert_eq!(storage.health().backends["redis"].pending_replay, 1);

    // The replayer's tick at 100 ms sends "v1", which lands 20 ms later. At 105 ms a caller
    // writes "v2": it lands at once, but its answer comes back only at 155 ms, after the
    // replay of "v1" has landed over it and finished.
    redis.inject_for(Operation::Set, Fault::Delay(Duration::from_millis(20)));
    tokio::time::sleep_until(built + Duration::from_millis(105)).await;
    redis.inject_for(
        Operation::Set,
        Fault::DelayAnswer(Duration::from_millis(50)),
    );
    storage.set("k", "v2", None).await.unwrap();
    assert_eq!(
        storage.get("k").await.unwrap().as_deref(),
        Some(&b"v2"[..]),
        "reads answer from the record while Redis holds the older value"
    );

    // The write superseded the record before it was sent, so the replay of "v1" did not
    // clear it, and a later pass writes "v2" again.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(direct(&*redis, "k").await.as_deref(), Some(&b"v2"[..]));
    assert_eq!(storage.health().backends["redis"].pending_replay, 0);
    assert_eq!(storage.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
}

/// A write the serving backend refuses as the caller's error was applied nowhere: the replay
/// record it superseded comes back, so the primary gets the last accepted write, not the
/// refused one.
#[tokio::test(start_paused = true)]
async fn a_refused_write_leaves_no_replay_behind() {
    let redis = fault("redis");
    let memory = Arc::new(MemoryBackend::new(
        MemoryConfig::default().name("memory").max_bytes(1_000),
    ));
    let storage = builder(&[&redis])
        .backend(memory, 2)
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    redis.inject(Fault::Fail);
    storage.set("k", "accepted", None).await.unwrap();
    let refused = storage.set("k", vec![0_u8; 2_000], None).await.unwrap_err();
    assert!(refused.is_caller_error(), "{refused}");
    assert_eq!(
        storage.get("k").await.unwrap().as_deref(),
        Some(&b"accepted"[..])
    );
    redis.inject(Fault::Pass);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(storage.health().backends["redis"].pending_replay, 0);
    assert_eq!(
        direct(&*redis, "k").await.as_deref(),
        Some(&b"accepted"[..]),
        "the refused value was replayed"
    );
}

/// A memory store that refuses, for good, every replayed write of the key `poison`; a batch
/// holding one is refused as a whole, nothing written (as one SQL statement would be).
#[derive(Debug)]
struct RefusesPoison(MemoryBackend);

#[async_trait::async_trait]
impl Backend for RefusesPoison {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn scheme(&self) -> &str {
        self.0.scheme()
    }

    fn capabilities(&self) -> resilient_core::Capabilities {
        self.0.capabilities()
    }

    async fn health_check(&self) -> resilient_core::Result<resilient_core::HealthProbe> {
        self.0.health_check().await
    }

    async fn get(&self, key: &str) -> resilient_core::Result<Option<bytes::Bytes>> {
        self.0.get(key).await
    }

    async fn write(
        &self,
        key: &str,
        write: resilient_core::KeyWrite,
        options: resilient_core::WriteOptions,
    ) -> resilient_core::Result<resilient_core::WriteOutcome> {
        if key == "poison" && options.mode == resilient_core::WriteMode::IfNewer {
            return Err(resilient_core::Error::rejected(
                "redis",
                Operation::Set,
                "refused for good",
            ));
        }
        self.0.write(key, write, options).await
    }

    async fn write_many(
        &self,
        writes: Vec<resilient_core::BatchWrite<'_>>,
    ) -> resilient_core::Result<Vec<resilient_core::Result<resilient_core::WriteOutcome>>> {
        if writes.iter().any(|w| w.key == "poison") {
            return Err(resilient_core::Error::rejected(
                "redis",
                Operation::WriteMany,
                "refused for good",
            ));
        }
        self.0.write_many(writes).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_refused_for_good_is_the_only_one_lost_from_its_replayed_batch() {
    let inner = RefusesPoison(MemoryBackend::new(MemoryConfig::default().name("redis")));
    let redis = Arc::new(resilient_core::testing::FaultBackend::wrap(Arc::new(inner)).shared(true));
    let postgres = fault("postgres");
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    let mut events = storage.subscribe();
    redis.inject(Fault::Fail);
    storage.set("a", "1", None).await.unwrap();
    storage.set("poison", "x", None).await.unwrap();
    storage.set("b", "2", None).await.unwrap();
    assert_eq!(storage.health().backends["redis"].pending_replay, 3);

    redis.inject(Fault::Pass);
    sleep(Duration::from_millis(1_200)).await;
    let report = storage.health();
    assert_eq!(report.backends["redis"].pending_replay, 0);
    assert_eq!(direct(&*redis, "a").await.as_deref(), Some(&b"1"[..]));
    assert_eq!(direct(&*redis, "b").await.as_deref(), Some(&b"2"[..]));
    assert_eq!(direct(&*redis, "poison").await, None);
    // The report's count starts over once a replay leaves nothing pending: the event says it.
    assert!(drain(&mut events).iter().any(|e| matches!(
        e,
        StorageEvent::ReplayLost { backend, lost: 1 } if backend == "redis"
    )));
}
