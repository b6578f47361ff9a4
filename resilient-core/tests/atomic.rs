//! Atomic operations through the router on tokio's paused clock: counters exact across a
//! failover and back with several tasks at once, a call whose caller gives up finishing
//! anyway, a Redis-like backend restarted empty continuing the count from PostgreSQL's copy,
//! no count ever kept in this process's memory while a shared backend is configured, and
//! set-if-absent and compare-and-set failing over as writes.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{builder, direct, fault};
use resilient_backend_memory::{MemoryBackend, MemoryConfig};
use resilient_core::testing::Fault;
use resilient_core::{
    AtomicOp, AtomicOutcome, Backend, Bytes, Capabilities, Error, HealthProbe, KeyWrite, Result,
    Unknown, WriteOptions, WriteOutcome, async_trait,
};
use tokio::time::sleep;

/// A shared store that loses everything on `restart`, and, like Redis with its version keys,
/// knows which keys were written since: an atomic call on any other key under
/// [`Unknown::Ask`] is answered as unknown.
#[derive(Debug)]
struct Restartable {
    store: Mutex<Arc<MemoryBackend>>,
    known: Mutex<HashSet<String>>,
}

impl Restartable {
    fn new() -> Self {
        Self {
            store: Mutex::new(Arc::new(MemoryBackend::new(MemoryConfig::default()))),
            known: Mutex::default(),
        }
    }

    fn restart(&self) {
        *self.store.lock().unwrap() = Arc::new(MemoryBackend::new(MemoryConfig::default()));
        self.known.lock().unwrap().clear();
    }

    fn store(&self) -> Arc<MemoryBackend> {
        self.store.lock().unwrap().clone()
    }
}

#[async_trait]
impl Backend for Restartable {
    fn name(&self) -> &str {
        "redis"
    }
    fn scheme(&self) -> &str {
        "restartable"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .shared(true)
            .native_ttl(true)
            .atomic(true)
    }
    async fn health_check(&self) -> Result<HealthProbe> {
        Ok(HealthProbe::Healthy)
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.store().get(key).await
    }
    async fn write(
        &self,
        key: &str,
        write: KeyWrite,
        options: WriteOptions,
    ) -> Result<WriteOutcome> {
        self.known.lock().unwrap().insert(key.to_owned());
        self.store().write(key, write, options).await
    }
    async fn atomic(
        &self,
        key: &str,
        op: AtomicOp,
        unknown: Unknown,
        options: WriteOptions,
    ) -> Result<AtomicOutcome> {
        let known = !self.known.lock().unwrap().insert(key.to_owned());
        let store = self.store();
        if !known {
            match unknown {
                Unknown::Ask => {
                    self.known.lock().unwrap().remove(key);
                    return Ok(AtomicOutcome::unknown());
                }
                Unknown::Seed(Some(value)) => {
                    store
                        .write(key, KeyWrite::Set { value, ttl: None }, options.clone())
                        .await?;
                }
                _ => {}
            }
        }
        store.atomic(key, op, Unknown::Absent, options).await
    }
}

async fn count(storage: &resilient_core::ResilientStorage, tasks: usize, each: usize) {
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let storage = storage.clone();
            tokio::spawn(async move {
                for _ in 0..each {
                    storage.increment("visits", 1, None).await.unwrap();
                    sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_counter_stays_exact_across_a_failover_and_back() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    count(&storage, 4, 50).await;
    redis.inject(Fault::Fail);
    count(&storage, 4, 50).await;
    assert_eq!(storage.increment("visits", 0, None).await.unwrap(), 400);
    redis.inject(Fault::Pass);
    // Back on Redis once its breaker lets calls through, the replay has run, and the failback
    // delay has passed.
    for _ in 0..100 {
        sleep(Duration::from_millis(100)).await;
        storage.get("probe").await.unwrap();
        if storage.last_served_backend().as_deref() == Some("redis") {
            break;
        }
    }
    count(&storage, 4, 50).await;
    assert_eq!(storage.increment("visits", 0, None).await.unwrap(), 600);
    assert_eq!(storage.last_served_backend().as_deref(), Some("redis"));
    assert_eq!(
        direct(&*redis, "visits").await.as_deref(),
        Some(&b"600"[..])
    );
    assert_eq!(storage.get_json::<i64>("visits").await.unwrap(), Some(600));
}

#[tokio::test(start_paused = true)]
async fn an_increment_whose_caller_gives_up_still_reaches_every_backend() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    redis.inject(Fault::Fail);
    // PostgreSQL applies the increment, then its answer comes back 50 ms later; the caller
    // gives up after 10 ms. The call still records the result for Redis, which missed it.
    postgres.inject_for(
        resilient_core::Operation::Atomic,
        Fault::DelayAnswer(Duration::from_millis(50)),
    );
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        storage.increment("visits", 1, None),
    )
    .await;
    assert!(gave_up.is_err(), "the call answered within 10 ms");
    assert_eq!(
        direct(&*postgres, "visits").await.as_deref(),
        Some(&b"1"[..])
    );
    redis.inject(Fault::Pass);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(direct(&*redis, "visits").await.as_deref(), Some(&b"1"[..]));
    // The key's turn is held until such a call finishes: on Redis now, with its answer 50 ms
    // late, a call given up after 10 ms keeps the next one waiting until 50 ms, which then
    // takes its own 50 ms.
    redis.inject_for(
        resilient_core::Operation::Atomic,
        Fault::DelayAnswer(Duration::from_millis(50)),
    );
    let start = tokio::time::Instant::now();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        storage.increment("visits", 1, None),
    )
    .await;
    assert!(gave_up.is_err(), "the call answered within 10 ms");
    assert_eq!(storage.increment("visits", 1, None).await.unwrap(), 3);
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_redis_restarted_empty_continues_the_count_from_postgres() {
    let redis = Arc::new(Restartable::new());
    let postgres = fault("postgres");
    let storage = resilient_core::ResilientStorage::builder()
        .memory_fallback(false)
        .health(resilient_core::HealthConfig::default().enabled(false))
        .backend(redis.clone() as Arc<dyn Backend>, 1)
        .backend(postgres.clone() as Arc<dyn Backend>, 2)
        .build()
        .await
        .unwrap();
    count(&storage, 4, 25).await;
    // Write-behind copies reach PostgreSQL.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        direct(&*postgres, "visits").await.as_deref(),
        Some(&b"100"[..])
    );
    redis.restart();
    count(&storage, 4, 25).await;
    assert_eq!(storage.increment("visits", 0, None).await.unwrap(), 200);
    assert_eq!(
        direct(&*redis.store(), "visits").await.as_deref(),
        Some(&b"200"[..])
    );
    // Unknown to Redis and PostgreSQL out of reach (and every copy sent, so no record of this
    // process's holds the value): the call fails rather than count from 0.
    sleep(Duration::from_secs(1)).await;
    redis.restart();
    postgres.inject(Fault::Fail);
    let error = storage.increment("visits", 1, None).await.unwrap_err();
    assert!(matches!(error, Error::NoBackendAvailable { .. }), "{error}");
    assert_eq!(direct(&*redis.store(), "visits").await, None);
}

#[tokio::test(start_paused = true)]
async fn no_count_is_kept_in_process_memory_while_a_shared_backend_is_configured() {
    let redis = fault("redis");
    let storage = builder(&[&redis])
        .memory_fallback(true)
        .build()
        .await
        .unwrap();
    assert_eq!(storage.increment("visits", 1, None).await.unwrap(), 1);
    redis.inject(Fault::Fail);
    assert!(storage.increment("visits", 1, None).await.is_err());
    assert!(
        !storage
            .set_if_absent("flag", "x", None)
            .await
            .unwrap_or(false)
    );
    // Reads and writes still fail over to memory.
    storage.set("plain", "v", None).await.unwrap();
    // A memory-only storage counts in memory.
    let memory = resilient_core::ResilientStorage::builder()
        .backend(
            Arc::new(MemoryBackend::new(MemoryConfig::default())) as Arc<dyn Backend>,
            1,
        )
        .build()
        .await
        .unwrap();
    assert_eq!(memory.increment("visits", 2, None).await.unwrap(), 2);
    assert_eq!(memory.increment("visits", 3, None).await.unwrap(), 5);
}

#[tokio::test(start_paused = true)]
async fn set_if_absent_and_compare_and_set_fail_over_as_writes() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    assert!(storage.set_if_absent("leader", "a", None).await.unwrap());
    assert!(!storage.set_if_absent("leader", "b", None).await.unwrap());
    // Copied behind before Redis fails, then decided on PostgreSQL.
    sleep(Duration::from_millis(500)).await;
    redis.inject(Fault::Fail);
    assert!(!storage.set_if_absent("leader", "c", None).await.unwrap());
    assert!(
        storage
            .compare_and_set("leader", Some(b"a"), "d", None)
            .await
            .unwrap()
    );
    assert!(
        !storage
            .compare_and_set("leader", Some(b"a"), "e", None)
            .await
            .unwrap()
    );
    assert_eq!(
        storage.get("leader").await.unwrap().as_deref(),
        Some(&b"d"[..])
    );
    // Redis gets the result when it returns.
    redis.inject(Fault::Pass);
    for _ in 0..100 {
        sleep(Duration::from_millis(100)).await;
        storage.get("probe").await.unwrap();
        if storage.health().backends["redis"].pending_replay == 0 {
            break;
        }
    }
    assert_eq!(direct(&*redis, "leader").await.as_deref(), Some(&b"d"[..]));
    // Bad input is the caller's error.
    assert!(matches!(
        storage.increment("", 1, None).await,
        Err(Error::InvalidKey(_))
    ));
    storage.set("text", "abc", None).await.unwrap();
    assert!(
        storage
            .increment("text", 1, None)
            .await
            .unwrap_err()
            .is_caller_error()
    );
}

#[tokio::test(start_paused = true)]
async fn atomic_calls_follow_priority_whatever_the_strategy_and_never_fail_over_under_selected() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let spread = builder(&[&redis, &postgres])
        .strategy(resilient_core::Strategy::RoundRobin)
        .build()
        .await
        .unwrap();
    for _ in 0..10 {
        spread.increment("visits", 1, None).await.unwrap();
    }
    assert_eq!(direct(&*redis, "visits").await.as_deref(), Some(&b"10"[..]));
    let selected = builder(&[&redis, &postgres])
        .write_policy(resilient_core::WritePolicy::Selected)
        .build()
        .await
        .unwrap();
    assert_eq!(selected.increment("other", 1, None).await.unwrap(), 1);
    redis.inject(Fault::Fail);
    // No copy below Redis to go on from: the call fails instead of counting from 0 elsewhere.
    assert!(selected.increment("other", 1, None).await.is_err());
    assert_eq!(direct(&*postgres, "other").await, None);
}
