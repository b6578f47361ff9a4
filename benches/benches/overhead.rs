//! What the resilience layer costs on the healthy path, each against its raw baseline in the
//! same run: memory, Redis and PostgreSQL calls, the breaker, and routing over three backends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use resilient_benches::{
    MokaEntry, default_over, get_from_64_tasks, load_for_hits, load_hit,
    moka_as_the_memory_backend, raw_get, raw_get_from_64_tasks, raw_pool, raw_upsert, storage_of,
    storage_over, store_batch,
};
use resilient_storage::memory::{MemoryBackend, MemoryConfig};
use resilient_storage::prelude::*;
use resilient_storage::{BreakerConfig, CircuitBreaker};
use resilient_test_support::{PostgresServer, RedisServer};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let value = Bytes::from(vec![7_u8; 100]);
    let storage = rt.block_on(async {
        let storage = ResilientStorage::builder().build().await.unwrap();
        storage.set("key", value.clone(), None).await.unwrap();
        storage
    });
    let moka = moka_as_the_memory_backend();
    let entry = MokaEntry {
        value: value.clone(),
        ttl: None,
    };
    moka.insert("key".to_owned(), entry.clone());

    let mut group = c.benchmark_group("memory_get");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { storage.get("key").await.unwrap() })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| async { moka.get("key") })
    });
    group.finish();

    let mut group = c.benchmark_group("memory_set");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { storage.set("key", value.clone(), None).await.unwrap() })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt)
            .iter(|| async { moka.insert("key".to_owned(), entry.clone()) })
    });
    group.finish();
}

fn breaker(c: &mut Criterion) {
    let ours = CircuitBreaker::new(BreakerConfig::default());
    let theirs = failsafe::Config::new().build();
    let mut group = c.benchmark_group("breaker_closed");
    group.bench_function("resilient", |b| {
        b.iter(|| {
            ours.try_acquire()
                .expect("closed")
                .success(Duration::from_micros(50))
        })
    });
    group.bench_function("baseline", |b| {
        use failsafe::CircuitBreaker as _;
        b.iter(|| {
            assert!(theirs.is_call_permitted());
            theirs.call(|| Ok::<(), ()>(())).unwrap();
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let rt = runtime();
    let memory = |name: &str| -> Arc<dyn Backend> {
        Arc::new(MemoryBackend::new(MemoryConfig::default().name(name)))
    };
    let (three, one) = rt.block_on(async {
        let three = storage_of(
            vec![memory("a"), memory("b"), memory("c")],
            Strategy::Failover,
        )
        .await;
        let one = storage_of(vec![memory("a")], Strategy::Failover).await;
        three.set("key", "value", None).await.unwrap();
        one.set("key", "value", None).await.unwrap();
        (three, one)
    });
    let mut group = c.benchmark_group("routing_3_backends");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { three.get("key").await.unwrap() })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt)
            .iter(|| async { one.get("key").await.unwrap() })
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let server = RedisServer::start().expect("redis-server for the benchmarks");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (storage, raw) = rt.block_on(async {
        let storage = storage_over(&server.url(), true).await;
        storage.set("key", vec![7_u8; 100], None).await.unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        (storage, raw)
    });
    let mut group = c.benchmark_group("redis_get");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { storage.get("key").await.unwrap() })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| async {
            let mut conn = raw.clone();
            redis::cmd("GET")
                .arg("key")
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
                .unwrap()
        })
    });
    group.finish();

    // A write through the router is a script that also stores the write's version; the
    // baseline is a plain SET.
    let mut group = c.benchmark_group("redis_set");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { storage.set("key2", vec![7_u8; 100], None).await.unwrap() })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| async {
            let mut conn = raw.clone();
            redis::cmd("SET")
                .arg("key3")
                .arg(&[7_u8; 100][..])
                .query_async::<()>(&mut conn)
                .await
                .unwrap()
        })
    });
    group.finish();

    // 64 tasks, 16 gets each, per iteration: time per iteration is the inverse of throughput.
    let mut group = c.benchmark_group("redis_get_64_tasks");
    group.bench_function("resilient", |b| {
        b.to_async(&rt).iter(|| get_from_64_tasks(&storage, "key"))
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| raw_get_from_64_tasks(&raw, "key"))
    });
    group.finish();
    rt.block_on(async { storage.shutdown().await });
    drop(server);
}

fn postgres(c: &mut Criterion) {
    let server = PostgresServer::start().expect("postgres for the benchmarks");
    let rt = runtime();
    let value = vec![7_u8; 100];
    let (storage, pool) = rt.block_on(async {
        let storage = storage_over(&server.url(), true).await;
        storage.set("key", value.clone(), None).await.unwrap();
        (storage, raw_pool(&server.url()).await)
    });
    let mut group = c.benchmark_group("postgres_get");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { storage.get("key").await.unwrap() })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| raw_get(&pool, "key"))
    });
    group.finish();
    let mut group = c.benchmark_group("postgres_set");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { storage.set("key2", value.clone(), None).await.unwrap() })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| raw_upsert(&pool, "key3", &value))
    });
    group.finish();
    rt.block_on(async { storage.shutdown().await });
    drop(server);
}

/// The default write policy's cost: a set on a storage over Redis with PostgreSQL behind it
/// (write-behind: acknowledged by Redis, copied to PostgreSQL in the background) against a set
/// on a Redis-only storage. Each iteration writes a new key, so every set is one more copy for
/// PostgreSQL, which shares the machine's cores with the benchmark.
fn default_set(c: &mut Criterion) {
    let redis = RedisServer::start().expect("redis-server for the benchmarks");
    let postgres = PostgresServer::start().expect("postgres for the benchmarks");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (default, redis_only) = rt.block_on(async {
        (
            default_over(&redis.url(), &postgres.url()).await,
            storage_over(&redis.url(), true).await,
        )
    });
    let value = Bytes::from(vec![7_u8; 100]);
    let next = std::sync::atomic::AtomicU64::new(0);
    let key = || {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 50_000;
        format!("set:{n}")
    };
    let mut group = c.benchmark_group("default_set");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { default.set(&key(), value.clone(), None).await.unwrap() })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt)
            .iter(|| async { redis_only.set(&key(), value.clone(), None).await.unwrap() })
    });
    group.finish();
    rt.block_on(async {
        default.shutdown().await;
        redis_only.shutdown().await;
    });
}

/// Batches of 100 keys against 100 gets one after another through the storage. (Against one
/// raw MGET and one raw `= ANY($1)` query: interleaved, in `failover.rs`.)
fn batches(c: &mut Criterion) {
    let redis = RedisServer::start().expect("redis-server for the benchmarks");
    let postgres = PostgresServer::start().expect("postgres for the benchmarks");
    let rt = runtime();
    let (keys, on_redis, on_postgres) = rt.block_on(async {
        let on_redis = storage_over(&redis.url(), false).await;
        let on_postgres = storage_over(&postgres.url(), false).await;
        let keys = store_batch(&on_redis).await;
        store_batch(&on_postgres).await;
        (keys, on_redis, on_postgres)
    });
    let keys = &keys;
    let read_all = |storage: &ResilientStorage| {
        let storage = storage.clone();
        async move {
            let values = storage.get_many(keys).await.unwrap();
            assert!(values.iter().all(|v| v.as_ref().is_ok_and(Option::is_some)));
        }
    };
    let one_by_one = |storage: &ResilientStorage| {
        let storage = storage.clone();
        async move {
            for key in keys {
                storage.get(key).await.unwrap().unwrap();
            }
        }
    };
    let mut group = c.benchmark_group("redis_get_many_vs_100_gets");
    group.bench_function("resilient", |b| {
        b.to_async(&rt).iter(|| read_all(&on_redis))
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| one_by_one(&on_redis))
    });
    group.finish();

    let mut group = c.benchmark_group("postgres_get_many_vs_100_gets");
    group.bench_function("resilient", |b| {
        b.to_async(&rt).iter(|| read_all(&on_postgres))
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| one_by_one(&on_postgres))
    });
    group.finish();
    rt.block_on(async {
        on_redis.shutdown().await;
        on_postgres.shutdown().await;
    });
}

/// Cache-aside on the memory default: a hit against a plain get, and 1,000 concurrent callers
/// of one missing key (one load of 100 µs) against moka's `get_with`, the single-flight cache
/// API of the memory store's own library.
fn cache_aside(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let storage = rt.block_on(async { ResilientStorage::builder().build().await.unwrap() });
    let value = Bytes::from(vec![7_u8; 100]);
    let options = rt.block_on(load_for_hits(&storage, "hit", value.clone()));
    let mut group = c.benchmark_group("cache_aside_hit");
    group.bench_function("resilient", |b| {
        b.to_async(&rt)
            .iter(|| async { load_hit(&storage, "hit", &options).await })
    });
    // The same key read by a plain get: the entry get_or_load stored (with its TTL, which
    // costs the memory backend's expiry a little more than a key without one).
    group.bench_function("baseline", |b| {
        b.to_async(&rt)
            .iter(|| async { storage.get("hit").await.unwrap().unwrap() })
    });
    group.finish();

    let next = std::sync::atomic::AtomicU64::new(0);
    let loads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let resilient_keys = std::sync::atomic::AtomicU64::new(0);
    let moka: moka::future::Cache<String, Bytes> = moka::future::Cache::new(1_000_000);
    let mut group = c.benchmark_group("single_flight_1000_callers");
    group.sample_size(20);
    group.bench_function("resilient", |b| {
        b.to_async(&rt).iter(|| async {
            let key = format!(
                "miss:{}",
                next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            resilient_keys.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let callers: Vec<_> = (0..1000)
                .map(|_| {
                    let (storage, options, key, loads, value) = (
                        storage.clone(),
                        options.clone(),
                        key.clone(),
                        loads.clone(),
                        value.clone(),
                    );
                    tokio::spawn(async move {
                        storage
                            .get_or_load(&key, &options, move || async move {
                                loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_micros(100)).await;
                                Ok::<_, std::io::Error>(value)
                            })
                            .await
                            .unwrap()
                    })
                })
                .collect();
            for caller in callers {
                caller.await.unwrap();
            }
        })
    });
    group.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| async {
            let key = format!(
                "miss:{}",
                next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let callers: Vec<_> = (0..1000)
                .map(|_| {
                    let (moka, key, value) = (moka.clone(), key.clone(), value.clone());
                    tokio::spawn(async move {
                        moka.get_with(key, async move {
                            tokio::time::sleep(Duration::from_micros(100)).await;
                            value
                        })
                        .await
                    })
                })
                .collect();
            for caller in callers {
                caller.await.unwrap();
            }
        })
    });
    group.finish();
    let keys = resilient_keys.load(std::sync::atomic::Ordering::Relaxed);
    let loads = loads.load(std::sync::atomic::Ordering::Relaxed);
    println!("single flight: {loads} loads for {keys} keys of 1,000 concurrent callers each");
    assert_eq!(loads, keys, "one load per key however many callers");
    rt.block_on(async { storage.shutdown().await });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = memory, breaker, routing, redis, postgres, default_set, batches, cache_aside
}
criterion_main!(benches);
