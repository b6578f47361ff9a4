//! Shared set-up of the benchmarks: storages over throwaway servers, and where results go.
//!
//! Run everything with `cargo xtask bench`, which also writes `target/criterion/summary.md`
//! with each figure as a ratio to its baseline from the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use resilient_storage::prelude::*;

/// Where figures that criterion does not measure (percentiles, failover times) are written, as
/// JSON, for the summary.
pub fn custom_results_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("criterion").join("resilient-custom");
    std::fs::create_dir_all(&dir).expect("create the results directory");
    dir
}

/// Writes one custom result.
pub fn write_result(name: &str, value: &serde_json::Value) {
    let path = custom_results_dir().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).expect("write a result");
}

/// An entry of [`moka_as_the_memory_backend`]'s cache: a value and its own TTL.
#[derive(Debug, Clone)]
pub struct MokaEntry {
    /// The value.
    pub value: bytes::Bytes,
    /// Its TTL (`None`: kept until evicted).
    pub ttl: Option<Duration>,
}

/// Each entry's TTL as moka's expiry.
struct PerEntryTtl;

impl moka::Expiry<String, MokaEntry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        e: &MokaEntry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        e.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        e: &MokaEntry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        e.ttl
    }
}

/// The memory rows' baseline: moka's synchronous cache configured as the memory backend
/// configures it (bytes weigher, LRU, per-entry expiry, eviction listener), so the ratio is the
/// cost of the resilience layer and not of moka features that both sides pay for.
pub fn moka_as_the_memory_backend() -> moka::sync::Cache<String, MokaEntry> {
    moka::sync::Cache::builder()
        .max_capacity(256 * 1024 * 1024)
        .weigher(|k: &String, v: &MokaEntry| (k.len() + v.value.len() + 64) as u32)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .expire_after(PerEntryTtl)
        .eviction_listener(|_, _, _| {})
        .build()
}

/// The cache-aside rows' entry: `value` stored under `key` by a `get_or_load` (TTL one hour),
/// as later hits find it. Returns the options those hits pass.
pub async fn load_for_hits(
    storage: &ResilientStorage,
    key: &str,
    value: bytes::Bytes,
) -> LoadOptions {
    let options = LoadOptions::new(Duration::from_secs(3600));
    storage
        .get_or_load(key, &options, move || async move {
            Ok::<_, std::io::Error>(value)
        })
        .await
        .expect("the load");
    options
}

/// A `get_or_load` of `key` that must hit (see [`load_for_hits`]): its loader fails.
pub async fn load_hit(storage: &ResilientStorage, key: &str, options: &LoadOptions) -> Loaded {
    storage
        .get_or_load(key, options, || async {
            Err::<bytes::Bytes, _>(std::io::Error::other("not called on a hit"))
        })
        .await
        .expect("a hit")
}

/// The PostgreSQL rows' baseline: a sqlx pool on `url` as a plain user sets one up (16
/// connections, no check before each use).
pub async fn raw_pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect(url)
        .await
        .expect("a sqlx pool")
}

/// The backend's read of one live key, as a plain sqlx user writes it.
pub async fn raw_get(pool: &sqlx::PgPool, key: &str) -> Option<Vec<u8>> {
    sqlx::query_scalar(
        "SELECT value FROM \"public\".\"resilient_kv\" WHERE key = $1 \
         AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(key)
    .fetch_optional(pool)
    .await
    .expect("a raw get")
}

/// The backend's read of many keys, as a plain sqlx user writes it: the rows of the keys
/// held, in no order.
pub async fn raw_get_many(pool: &sqlx::PgPool, keys: &[String]) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as(
        "SELECT key, value FROM \"public\".\"resilient_kv\" WHERE key = ANY($1) \
         AND value IS NOT NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(keys)
    .fetch_all(pool)
    .await
    .expect("a raw batch read")
}

/// Adds 12,000 other rows to the backend's table and brings its statistics up to date: the
/// table `postgres_get_many_100` reads its 100 keys from. At this size PostgreSQL 15 plans a
/// join of the keys to the table as a hash join over the whole table (1.3 ms against 0.13 ms
/// by the index at 12,100 rows), so a statement that can be planned so shows in the row.
pub async fn add_other_rows(pool: &sqlx::PgPool) {
    for statement in [
        "INSERT INTO \"public\".\"resilient_kv\" (key, value) \
         SELECT 'other:' || n, decode(repeat('07', 100), 'hex') FROM generate_series(1, 12000) n \
         ON CONFLICT (key) DO NOTHING",
        "VACUUM ANALYZE \"public\".\"resilient_kv\"",
    ] {
        sqlx::query(statement).execute(pool).await.expect(statement);
    }
}

/// The backend's upsert of `value` under `key` (no TTL) without its version column, as a
/// plain sqlx user writes it.
pub async fn raw_upsert(pool: &sqlx::PgPool, key: &str, value: &[u8]) {
    sqlx::query(
        "INSERT INTO \"public\".\"resilient_kv\" (key, value, expires_at) \
         VALUES ($1, $2, now() + $3::float8 * interval '1 millisecond') \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
    )
    .bind(key)
    .bind(value)
    .bind(None::<f64>)
    .execute(pool)
    .await
    .expect("a raw upsert");
}

/// A storage over one backend URL with no fallback, or with the memory fallback.
pub async fn storage_over(url: &str, memory_fallback: bool) -> ResilientStorage {
    ResilientStorage::builder()
        .backend_url(url, 1)
        .expect("known scheme")
        .memory_fallback(memory_fallback)
        .build()
        .await
        .expect("storage")
}

/// The default set-up of `default_set`: Redis first, PostgreSQL behind it (the default
/// write-behind policy copies every write down), the memory fallback last.
pub async fn default_over(redis_url: &str, postgres_url: &str) -> ResilientStorage {
    ResilientStorage::builder()
        .backend_url(redis_url, 1)
        .expect("known scheme")
        .backend_url(postgres_url, 2)
        .expect("known scheme")
        .build()
        .await
        .expect("storage")
}

/// What every example (`benches/examples`) starts from: its arguments `storage|raw COUNT` (the
/// process exits with `usage` otherwise) and a runtime of two workers, as on the benchmark
/// machine.
pub fn example_start(usage: &str) -> (String, u32, tokio::runtime::Runtime) {
    let mut args = std::env::args().skip(1);
    let side = args.next().expect(usage);
    let count: u32 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    assert!(side == "storage" || side == "raw", "{usage}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    (side, count, runtime)
}

/// What the Redis examples start from: [`example_start`]'s, and a `redis-server` of their own.
pub fn redis_example(
    usage: &str,
) -> (
    String,
    u32,
    resilient_test_support::RedisServer,
    tokio::runtime::Runtime,
) {
    let (side, count, runtime) = example_start(usage);
    let server = resilient_test_support::RedisServer::start().expect("redis-server");
    (side, count, server, runtime)
}

/// The 100 keys the batch rows read (`batch:0` to `batch:99`), each written through `storage`
/// with a 100-byte value.
pub async fn store_batch(storage: &ResilientStorage) -> Vec<String> {
    let keys: Vec<String> = (0..100).map(|i| format!("batch:{i}")).collect();
    let items = keys.iter().map(|k| (k.as_str(), vec![7_u8; 100]));
    for written in storage.set_many(items, None).await.expect("set_many") {
        written.expect("a batch write");
    }
    keys
}

/// A storage over the given backends in priority order.
pub async fn storage_of(backends: Vec<Arc<dyn Backend>>, strategy: Strategy) -> ResilientStorage {
    let mut builder = ResilientStorage::builder()
        .strategy(strategy)
        .memory_fallback(false)
        .attempt_timeout(Duration::from_millis(500));
    for (i, backend) in backends.into_iter().enumerate() {
        builder = builder.backend_with(
            backend,
            resilient_storage::BackendOptions::new(i as u32 + 1).named(format!("b{i}")),
        );
    }
    builder.build().await.expect("storage")
}

/// Percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The throughput load of the Redis benchmarks: 64 tasks, each reading `key` 16 times through
/// `storage`, all awaited.
pub async fn get_from_64_tasks(storage: &ResilientStorage, key: &'static str) {
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let storage = storage.clone();
            tokio::spawn(async move {
                for _ in 0..16 {
                    storage.get(key).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// [`get_from_64_tasks`] with plain `GET`s on the redis crate's connection manager: the baseline.
pub async fn raw_get_from_64_tasks(conn: &redis::aio::ConnectionManager, key: &'static str) {
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let mut conn = conn.clone();
            tokio::spawn(async move {
                for _ in 0..16 {
                    redis::cmd("GET")
                        .arg(key)
                        .query_async::<Option<Vec<u8>>>(&mut conn)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}
