//! What a new user relies on with default settings, on a paused clock with fault-wrapped
//! stores: values written before the primary died are read after failover, a counter stays
//! exact, traffic comes back after every shape of outage, `activeBackend` says where the next
//! call goes, readiness holds while a fallback serves, and write-through keeps the deadline.

mod common;

use bytes::Bytes;
use resilient_core::BackendExt;
use std::sync::Arc;
use std::time::Duration;

use common::{DEADLINE, builder, direct, fault};
use resilient_backend_memory::{MemoryBackend, MemoryConfig};
use resilient_core::testing::{Fault, FaultBackend};
use resilient_core::{
    CircuitState, Error, HealthConfig, OverallStatus, ResilientStorage, StorageBuilder, WritePolicy,
};
use tokio::time::{Instant, sleep};

/// Redis over PostgreSQL with default health checks (every 1 s, rise 2, fall 3).
fn checked(redis: &Arc<FaultBackend>, postgres: &Arc<FaultBackend>) -> StorageBuilder {
    builder(&[redis, postgres]).health(HealthConfig::default())
}

/// Read-modify-write, as a user keeps a counter.
async fn increment(storage: &ResilientStorage, key: &str) {
    let n: u64 = storage.get_json(key).await.unwrap().unwrap_or(0);
    storage.set_json(key, &(n + 1), None).await.unwrap();
}

/// The longest a recovered Redis may wait for traffic: the failback delay (2 s), `rise` health
/// intervals after an outage long enough to make it unhealthy (2 × 1 s), and one probe.
const FAILBACK_BOUND: Duration = Duration::from_millis(4_100);

/// True once a get is served by `backend` (it sees the call).
async fn serves(storage: &ResilientStorage, backend: &FaultBackend) -> bool {
    let before = backend.calls();
    storage.get("probe").await.unwrap();
    backend.calls() > before
}

#[tokio::test(start_paused = true)]
async fn values_written_before_the_primary_died_are_read_after_failover() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    for i in 0..50 {
        storage
            .set(&format!("k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    storage.delete("k0").await.unwrap();
    // Redis dies before the copies have been sent: reads on PostgreSQL answer from them.
    assert!(storage.health().backends["postgres"].pending_replay > 0);
    redis.inject(Fault::Fail);
    assert_eq!(storage.get("k0").await.unwrap(), None);
    for i in 1..50 {
        assert_eq!(
            storage.get(&format!("k{i}")).await.unwrap().as_deref(),
            Some(format!("v{i}").as_bytes()),
            "k{i} after failover"
        );
    }
    // And the copies land on PostgreSQL itself.
    sleep(Duration::from_millis(200)).await;
    assert_eq!(storage.health().backends["postgres"].pending_replay, 0);
    assert_eq!(direct(&*postgres, "k0").await, None);
    assert_eq!(direct(&*postgres, "k7").await.as_deref(), Some(&b"v7"[..]));
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_the_copies_still_pending() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    storage.set("k", "v", None).await.unwrap();
    storage.delete("gone").await.unwrap();
    // Answered at once on this runtime's one thread: the replayer has not run yet.
    assert_eq!(storage.health().backends["postgres"].pending_replay, 2);
    postgres
        .set("gone", Bytes::from_static(b"old"), None)
        .await
        .unwrap();
    storage.shutdown().await;
    assert_eq!(direct(&*postgres, "k").await.as_deref(), Some(&b"v"[..]));
    assert_eq!(direct(&*postgres, "gone").await, None);
}

#[tokio::test(start_paused = true)]
async fn a_counter_stays_exact_across_a_kill_and_an_empty_restart() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = checked(&redis, &postgres).build().await.unwrap();
    for _ in 0..100 {
        increment(&storage, "counter").await;
    }
    redis.inject(Fault::Fail);
    for _ in 0..100 {
        increment(&storage, "counter").await;
    }
    sleep(Duration::from_secs(5)).await;
    // Restarted with an empty dataset.
    redis.inject(Fault::Pass);
    redis.delete("counter").await.unwrap();
    for _ in 0..100 {
        increment(&storage, "counter").await;
        sleep(Duration::from_millis(50)).await;
    }
    sleep(FAILBACK_BOUND).await;
    assert_eq!(storage.get_json::<u64>("counter").await.unwrap(), Some(300));
    assert!(serves(&storage, &redis).await, "traffic is back on Redis");
    assert_eq!(
        direct(&*redis, "counter").await.as_deref(),
        Some(&b"300"[..])
    );
}

#[tokio::test(start_paused = true)]
async fn a_primary_that_restarted_empty_still_reads_what_its_copy_holds() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    for i in 0..20 {
        storage
            .set(&format!("k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    sleep(Duration::from_millis(200)).await;
    // Too quick for the breaker to notice: Redis answers again, empty.
    for i in 0..20 {
        redis.delete(&format!("k{i}")).await.unwrap();
    }
    for i in 0..20 {
        assert_eq!(
            storage.get(&format!("k{i}")).await.unwrap().as_deref(),
            Some(format!("v{i}").as_bytes())
        );
    }
    assert_eq!(storage.get("never-written").await.unwrap(), None);
}

/// Found by the soak: PostgreSQL frozen while a Redis that restarted empty serves read thousands
/// of values as `None`. A miss the copy cannot confirm is an error, never a wrong `None`.
#[tokio::test(start_paused = true)]
async fn a_miss_its_copy_cannot_confirm_fails_instead_of_reading_none() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    storage.set("k", "v", None).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    assert_eq!(direct(&*postgres, "k").await.as_deref(), Some(&b"v"[..]));
    redis.delete("k").await.unwrap();
    for (fault, why) in [
        (Fault::Hang, "[postgres] did not answer within"),
        (Fault::Fail, "[postgres] failed"),
    ] {
        postgres.inject(fault);
        let error = storage.get("k").await.unwrap_err();
        assert!(
            matches!(error, Error::NoBackendAvailable { .. }) && error.to_string().contains(why),
            "{error}"
        );
    }
    // A batch read: each key that missed gets the error.
    for answer in storage.get_many(&["k", "other"]).await.unwrap() {
        let error = answer.unwrap_err();
        assert!(error.to_string().contains("[postgres] failed"), "{error}");
    }
    // Three failures opened the copy's circuit: it is not asked, and the read still fails.
    let error = storage.get("k").await.unwrap_err();
    assert!(
        error.to_string().contains("[postgres] is unavailable"),
        "{error}"
    );
    // The copy back, the value is read.
    postgres.inject(Fault::Pass);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(storage.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

/// Redis and PostgreSQL (fault-wrapped) with the default memory fallback below them.
async fn servers_and_memory() -> (Arc<FaultBackend>, Arc<FaultBackend>, ResilientStorage) {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .memory_fallback(true)
        .build()
        .await
        .unwrap();
    (redis, postgres, storage)
}

/// With both servers out of reach the memory store serves, but it holds only what this process
/// wrote to it since: a miss there is not the answer. A counter kept by read-modify-write fails
/// instead of starting again from 1 (and that 1 overwriting the real count on replay).
#[tokio::test(start_paused = true)]
async fn a_miss_on_the_memory_store_while_both_servers_are_out_fails() {
    let (redis, postgres, storage) = servers_and_memory().await;
    for _ in 0..5 {
        increment(&storage, "counter").await;
    }
    sleep(Duration::from_millis(200)).await;
    redis.inject(Fault::Fail);
    postgres.inject(Fault::Fail);
    let error = storage.get("counter").await.unwrap_err();
    assert!(
        matches!(error, Error::NoBackendAvailable { .. })
            && error
                .to_string()
                .contains("[memory] cannot answer for the key alone"),
        "{error}"
    );
    assert_eq!(storage.last_served_backend().as_deref(), Some("memory"));
    // What was written during the outage is read from memory.
    storage.set("new", "n", None).await.unwrap();
    assert_eq!(
        storage.get("new").await.unwrap().as_deref(),
        Some(&b"n"[..])
    );
    // Back, the count is where it was.
    redis.inject(Fault::Pass);
    postgres.inject(Fault::Pass);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(storage.get_json::<u64>("counter").await.unwrap(), Some(5));
    assert_eq!(
        storage.get("new").await.unwrap().as_deref(),
        Some(&b"n"[..])
    );
}

/// The memory store keeps what it served in one outage; the writes of the next quiet period go
/// to the servers, not to it. In a second outage its copy is older than theirs: it is not read
/// as the value, neither by `get` nor by `get_many`. Found by the soak: PostgreSQL frozen twice
/// while Redis was down read values from the first freeze during the second.
#[tokio::test(start_paused = true)]
async fn the_memory_store_never_answers_a_value_older_than_the_servers() {
    let (redis, postgres, storage) = servers_and_memory().await;
    let both = |fault: Fault| {
        redis.inject(fault.clone());
        postgres.inject(fault);
    };
    both(Fault::Fail);
    storage.set("k", "old", None).await.unwrap();
    assert_eq!(storage.last_served_backend().as_deref(), Some("memory"));
    // During the outage, what memory served is read back.
    assert_eq!(
        storage.get("k").await.unwrap().as_deref(),
        Some(&b"old"[..])
    );
    both(Fault::Pass);
    sleep(Duration::from_secs(5)).await;
    storage.set("k", "new", None).await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(direct(&*postgres, "k").await.as_deref(), Some(&b"new"[..]));
    both(Fault::Fail);
    let error = storage.get("k").await.unwrap_err();
    assert!(matches!(error, Error::NoBackendAvailable { .. }), "{error}");
    assert_eq!(storage.last_served_backend().as_deref(), Some("memory"));
    let many = storage.get_many(&["k"]).await.unwrap();
    assert!(
        matches!(&many[..], [Err(Error::NoBackendAvailable { .. })]),
        "{many:?}"
    );
    // A write of this outage is read back, from its record, even with both circuits open.
    storage.set("k", "newer", None).await.unwrap();
    let newer = Some(Bytes::from_static(b"newer"));
    assert_eq!(storage.get("k").await.unwrap(), newer);
    assert!(storage.force_open("redis", true) && storage.force_open("postgres", true));
    assert_eq!(storage.get("k").await.unwrap(), newer);
    let many = storage.get_many(&["k"]).await.unwrap();
    assert_eq!(many[0].as_ref().unwrap(), &newer);
    assert!(storage.force_open("redis", false) && storage.force_open("postgres", false));
    both(Fault::Pass);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        storage.get("k").await.unwrap().as_deref(),
        Some(&b"newer"[..])
    );
    assert_eq!(
        direct(&*postgres, "k").await.as_deref(),
        Some(&b"newer"[..])
    );
}

/// A store of this process's own that keeps every write it acknowledged (a local disk, say),
/// below Redis: its values are answers, not copies to confirm.
#[tokio::test(start_paused = true)]
async fn a_durable_local_store_below_redis_answers_its_values() {
    let redis = fault("redis");
    let disk = MemoryBackend::new(MemoryConfig::default().name("disk"));
    let disk = Arc::new(FaultBackend::wrap(Arc::new(disk)).durable(true));
    let storage = builder(&[&redis, &disk]).build().await.unwrap();
    redis.inject(Fault::Fail);
    storage.set("k", "v", None).await.unwrap();
    assert_eq!(storage.last_served_backend().as_deref(), Some("disk"));
    redis.inject(Fault::Pass);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(direct(&*redis, "k").await.as_deref(), Some(&b"v"[..]));
    redis.inject(Fault::Fail);
    assert_eq!(storage.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(storage.last_served_backend().as_deref(), Some("disk"));
}

#[tokio::test(start_paused = true)]
async fn selected_is_the_explicit_choice_that_copies_nothing() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .write_policy(WritePolicy::Selected)
        .build()
        .await
        .unwrap();
    storage.set("k", "v", None).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    assert_eq!(direct(&*postgres, "k").await, None);
    redis.inject(Fault::Fail);
    assert_eq!(storage.get("k").await.unwrap(), None, "a cache may miss");
}

#[tokio::test(start_paused = true)]
async fn failback_after_a_read_only_outage() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = checked(&redis, &postgres).build().await.unwrap();
    redis.inject(Fault::Fail);
    for _ in 0..50 {
        storage.get("k").await.unwrap();
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(storage.active_backend().as_deref(), Some("postgres"));
    redis.inject(Fault::Pass);
    let back = Instant::now();
    while !serves(&storage, &redis).await {
        assert!(
            back.elapsed() < FAILBACK_BOUND,
            "no failback after reads only"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(storage.health().status, OverallStatus::Healthy);
}

#[tokio::test(start_paused = true)]
async fn failback_after_a_lock_only_outage() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = checked(&redis, &postgres).build().await.unwrap();
    redis.inject(Fault::Fail);
    for i in 0..50 {
        // Locks fail closed: PostgreSQL never grants while Redis, the lock authority, is out
        // of reach.
        let refused = storage
            .acquire_lock(&format!("job{i}"), "me", Duration::from_millis(500))
            .await;
        assert!(refused.is_err(), "granted during the outage: {refused:?}");
        sleep(Duration::from_millis(100)).await;
    }
    redis.inject(Fault::Pass);
    let back = Instant::now();
    while !serves(&storage, &redis).await {
        assert!(
            back.elapsed() < FAILBACK_BOUND,
            "no failback after locks only"
        );
        sleep(Duration::from_millis(100)).await;
    }
    let grant = storage
        .acquire_lock("after", "me", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(grant.grant().unwrap().backend, "redis");
}

#[tokio::test(start_paused = true)]
async fn failback_after_an_outage_with_writes() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = checked(&redis, &postgres).build().await.unwrap();
    redis.inject(Fault::Fail);
    for i in 0..50 {
        storage.set(&format!("k{i}"), "v", None).await.unwrap();
        sleep(Duration::from_millis(100)).await;
    }
    redis.inject(Fault::Pass);
    let back = Instant::now();
    while !serves(&storage, &redis).await {
        assert!(back.elapsed() < FAILBACK_BOUND, "no failback after writes");
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(direct(&*redis, "k49").await.as_deref(), Some(&b"v"[..]));
}

#[tokio::test(start_paused = true)]
async fn failback_after_an_idle_outage_and_active_backend_says_where_the_next_call_goes() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = checked(&redis, &postgres).build().await.unwrap();
    storage.set("k", "v", None).await.unwrap();
    redis.inject(Fault::Fail);
    // One call fails over; then nothing at all for the rest of the outage.
    storage.get("k").await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(storage.active_backend().as_deref(), Some("postgres"));
    redis.inject(Fault::Pass);
    sleep(FAILBACK_BOUND).await;
    // No call since: the report still says where the next one goes.
    let report = storage.health();
    assert_eq!(report.active_backend.as_deref(), Some("redis"));
    assert_eq!(report.last_served_backend.as_deref(), Some("postgres"));
    assert!(serves(&storage, &redis).await);
}

#[tokio::test(start_paused = true)]
async fn readiness_holds_while_a_fallback_serves_and_fails_only_when_none_can() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = checked(&redis, &postgres).build().await.unwrap();
    redis.inject(Fault::Fail);
    sleep(Duration::from_secs(4)).await;
    let report = storage.health();
    assert_eq!(report.status, OverallStatus::Degraded);
    assert_eq!(report.http_status(), 503, "the health route still alerts");
    assert_eq!(
        report.readiness_http_status(),
        200,
        "but the instance serves"
    );
    postgres.inject(Fault::Fail);
    sleep(Duration::from_secs(4)).await;
    assert_eq!(storage.health().readiness_http_status(), 503);
}

#[tokio::test(start_paused = true)]
async fn replay_lost_counts_only_since_the_last_complete_replay() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .max_replay_records(2)
        .build()
        .await
        .unwrap();
    redis.inject(Fault::Fail);
    for key in ["a", "b", "c"] {
        storage.set(key, "v", None).await.unwrap();
    }
    assert_eq!(storage.health().backends["redis"].replay_lost, 1);
    redis.inject(Fault::Pass);
    sleep(Duration::from_secs(2)).await;
    let report = storage.health();
    assert_eq!(report.backends["redis"].pending_replay, 0);
    assert_eq!(report.backends["redis"].replay_lost, 0);
}

#[tokio::test(start_paused = true)]
async fn write_through_copies_run_at_once_within_the_deadline() {
    let backends: Vec<_> = ["redis", "postgres", "b", "c"].map(fault).into();
    let refs: Vec<_> = backends.iter().collect();
    let attempt = Duration::from_millis(200);
    let storage = builder(&refs)
        .attempt_timeout(attempt)
        .write_policy(WritePolicy::WriteThrough)
        .build()
        .await
        .unwrap();
    for copy in &backends[1..] {
        copy.inject(Fault::Hang);
    }
    let start = Instant::now();
    storage.set("k", "v", None).await.unwrap();
    assert_eq!(
        start.elapsed(),
        attempt,
        "three hanging copies, one attempt timeout"
    );

    // A slow primary leaves the copies only what is left of the deadline.
    backends[0].inject(Fault::Delay(Duration::from_millis(150)));
    let start = Instant::now();
    storage.set("k", "v2", None).await.unwrap();
    assert_eq!(start.elapsed(), DEADLINE);
    assert_eq!(
        storage.health().backends["c"].pending_replay,
        1,
        "kept for replay"
    );
}

#[tokio::test(start_paused = true)]
async fn a_value_larger_than_the_memory_store_is_a_caller_error_that_trips_nothing() {
    let memory = Arc::new(MemoryBackend::new(MemoryConfig::default().max_bytes(1_000)));
    let storage = ResilientStorage::builder()
        .backend(memory, 1)
        .memory_fallback(false)
        .breaker(common::breaker())
        .build()
        .await
        .unwrap();
    for _ in 0..5 {
        let err = storage.set("k", vec![0_u8; 2_000], None).await.unwrap_err();
        assert!(err.is_caller_error(), "{err}");
    }
    let report = storage.health();
    assert_eq!(
        report.backends["memory"].circuit_state,
        CircuitState::Closed
    );
    assert_eq!(report.backends["memory"].consecutive_failures, 0);
    storage.set("small", "v", None).await.unwrap();
}
