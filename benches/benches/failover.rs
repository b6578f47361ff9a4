//! Figures criterion does not measure: p99 latency of `LatencyAware` against `Failover` when the
//! primary is slowed by the fault proxy; how long a failover and a failback take after a real
//! SIGKILL and restart; and interleaved A/B ratios of the rows with a goal (on a small shared
//! machine, a loopback round trip, or moka's own cost, drifts more between criterion's
//! consecutive measurements than the resilience layer costs). Written as JSON for `cargo xtask
//! bench`'s summary.

use std::time::{Duration, Instant};

use resilient_benches::{
    MokaEntry, add_other_rows, default_over, get_from_64_tasks, load_for_hits, load_hit,
    moka_as_the_memory_backend, percentile, raw_get, raw_get_from_64_tasks, raw_get_many, raw_pool,
    raw_upsert, storage_over, store_batch, write_result,
};
use resilient_storage::prelude::*;
use resilient_storage::{BackendOptions, HealthConfig};
use resilient_test_support::PostgresServer;
use resilient_test_support::{FaultProxy, ProxyMode, RedisServer};
use serde_json::json;

const SAMPLES: usize = 2_000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if selected("interleaved_") {
        // On a runtime of its own, as criterion's in-process groups run: calls from the thread
        // that drives the runtime, with no worker threads beside it.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(interleaved_in_process());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if selected("interleaved_") && !IN_PROCESS_ROWS.iter().any(|row| selected_alone(row)) {
            interleaved().await;
        }
        if selected("replay_after_an_outage") {
            replay_after_an_outage().await;
        }
        if selected("latency_aware_vs_failover") {
            latency_aware_against_failover().await;
        }
        if !selected("failover_times") {
            return;
        }
        failover_and_failback_times(
            "defaults",
            Strategy::Failover,
            HealthConfig::default(),
            Duration::from_secs(2),
        )
        .await;
        failover_and_failback_times(
            "fast_failback",
            Strategy::Priority,
            HealthConfig::default().hysteresis(1, 3),
            Duration::ZERO,
        )
        .await;
    });
}

/// Whether the group `name` (or, for a name ending in `_`, a group it starts) runs:
/// `cargo xtask bench --only GROUP` sets `RESILIENT_BENCH_ONLY`.
fn selected(name: &str) -> bool {
    match std::env::var("RESILIENT_BENCH_ONLY") {
        Ok(only) if name.ends_with('_') => only.starts_with(name),
        Ok(only) => only == name,
        Err(_) => true,
    }
}

async fn latency_aware_against_failover() {
    let slow_server = RedisServer::start().expect("redis-server");
    let fast_server = RedisServer::start().expect("redis-server");
    let proxy = FaultProxy::start(slow_server.addr()).await.unwrap();
    // 2.5 ms each way: 5 ms added to every round trip to the primary.
    proxy.set_mode(ProxyMode::Latency {
        fixed: Duration::from_micros(2_500),
        jitter: Duration::ZERO,
    });
    let mut figures = serde_json::Map::new();
    for strategy in [Strategy::Failover, Strategy::LatencyAware] {
        let storage = ResilientStorage::builder()
            .strategy(strategy)
            .memory_fallback(false)
            .backend_url_with(
                &format!("redis://{}", proxy.addr()),
                BackendOptions::new(1).named("slow"),
            )
            .unwrap()
            .backend_url_with(&fast_server.url(), BackendOptions::new(2).named("fast"))
            .unwrap()
            .build()
            .await
            .unwrap();
        storage.set("key", "value", None).await.unwrap();
        // The write-behind copy to the second backend first: until it is sent, that backend's
        // reads of the key come from its record in this process, not from Redis.
        while storage
            .health()
            .backends
            .values()
            .any(|b| b.pending_replay > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..100 {
            storage.get("key").await.unwrap();
        }
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let start = Instant::now();
            storage.get("key").await.unwrap();
            samples.push(start.elapsed());
        }
        samples.sort_unstable();
        let name = serde_json::to_value(strategy)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        figures.insert(
            name,
            json!({
                "p50_us": percentile(&samples, 50.0).as_secs_f64() * 1e6,
                "p99_us": percentile(&samples, 99.0).as_secs_f64() * 1e6,
            }),
        );
        storage.shutdown().await;
    }
    let p99 = |s: &str| figures[s]["p99_us"].as_f64().unwrap();
    let ratio = p99("latency_aware") / p99("failover");
    println!("latency_aware vs failover, primary +5 ms: {figures:?}, p99 ratio {ratio:.3}");
    write_result(
        "latency_aware_vs_failover",
        &json!({ "strategies": figures, "p99_ratio": ratio, "goal": 0.3 }),
    );
}

/// Kills Redis under a steady workload, then restarts it, and times the moves of the active
/// backend from the events.
async fn failover_and_failback_times(
    name: &str,
    strategy: Strategy,
    health: HealthConfig,
    failback_delay: Duration,
) {
    let mut server = RedisServer::start().expect("redis-server");
    let interval = health.interval;
    let attempt = Duration::from_millis(500);
    let storage = ResilientStorage::builder()
        .strategy(strategy)
        .health(health)
        .failback_delay(failback_delay)
        .attempt_timeout(attempt)
        .backend_url(&server.url(), 1)
        .unwrap()
        .build()
        .await
        .unwrap();
    storage.set("key", "value", None).await.unwrap();
    let mut events = storage.subscribe();
    let workload = {
        let storage = storage.clone();
        tokio::spawn(async move {
            loop {
                let _ = storage.get("key").await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill().unwrap();
    let killed = Instant::now();
    let on_fallback = switch_to(&mut events, "memory").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (server, accepting) = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        (server, Instant::now())
    })
    .await
    .unwrap();
    let back = switch_to(&mut events, "redis").await;
    workload.abort();
    storage.shutdown().await;
    drop(server);
    let failover = on_fallback - killed;
    let failback = back.saturating_duration_since(accepting);
    // Failback cannot come sooner than the configured delay after the first passing check,
    // which comes within one health interval of the restart.
    let failback_floor = failback_delay + interval;
    println!(
        "{name}: failover {failover:?} (baseline {attempt:?}), failback {failback:?} (baseline {failback_floor:?}: failback delay + health interval)"
    );
    write_result(
        &format!("failover_times_{name}"),
        &json!({
            "failover_ms": failover.as_secs_f64() * 1e3,
            "failover_baseline_ms": attempt.as_secs_f64() * 1e3,
            "failback_ms": failback.as_secs_f64() * 1e3,
            "failback_baseline_ms": failback_floor.as_secs_f64() * 1e3,
        }),
    );
}

/// The moment the active backend becomes `target`.
async fn switch_to(
    events: &mut tokio::sync::broadcast::Receiver<StorageEvent>,
    target: &str,
) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(StorageEvent::ActiveBackendChanged { to, .. })) if to == target => {
                return Instant::now();
            }
            Ok(_) => {}
            Err(_) => panic!("no switch to {target} within 30 s"),
        }
    }
}

const ROUNDS: usize = 30;
const PER_ROUND: u32 = 200;

/// Alternates blocks of calls through the storage and directly, and reports the median of the
/// per-round time ratios: drift of the machine lands on both sides alike.
async fn ab<A, B, FA, FB>(name: &str, ours: A, baseline: B)
where
    A: FnMut() -> FA,
    B: FnMut() -> FB,
    FA: std::future::Future<Output = ()>,
    FB: std::future::Future<Output = ()>,
{
    ab_rounds_of(name, PER_ROUND, ours, baseline).await;
}

/// [`ab`] with `per_round` calls a round, for calls long enough that 200 would take too long.
async fn ab_rounds_of<A, B, FA, FB>(name: &str, per_round: u32, mut ours: A, mut baseline: B)
where
    A: FnMut() -> FA,
    B: FnMut() -> FB,
    FA: std::future::Future<Output = ()>,
    FB: std::future::Future<Output = ()>,
{
    if !selected(&format!("interleaved_{name}")) {
        return;
    }
    for _ in 0..per_round {
        ours().await;
        baseline().await;
    }
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut ours_total, mut base_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..per_round {
            ours().await;
        }
        let a = start.elapsed();
        let start = Instant::now();
        for _ in 0..per_round {
            baseline().await;
        }
        let b = start.elapsed();
        ours_total += a;
        base_total += b;
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ROUNDS / 2];
    let calls = (ROUNDS as u32) * per_round;
    println!(
        "{name}: interleaved median ratio {median:.3} ({:?} vs {:?} per call)",
        ours_total / calls,
        base_total / calls
    );
    write_result(
        &format!("interleaved_{name}"),
        &json!({
            "median_ratio": median,
            "rounds": ROUNDS,
            "per_round": per_round,
            "resilient_us": (ours_total / calls).as_secs_f64() * 1e6,
            "baseline_us": (base_total / calls).as_secs_f64() * 1e6,
        }),
    );
}

/// The rows of [`interleaved_in_process`], which need no server.
const IN_PROCESS_ROWS: [&str; 3] = ["memory_get", "memory_set", "cache_aside_hit"];

/// Whether `--only` picked the interleaved row `name` and nothing else.
fn selected_alone(name: &str) -> bool {
    std::env::var("RESILIENT_BENCH_ONLY").is_ok_and(|only| only == format!("interleaved_{name}"))
}

/// Calls a round for in-process calls (well under a microsecond each): a round of each side
/// takes a few milliseconds.
const IN_PROCESS_PER_ROUND: u32 = 20_000;

/// The in-process rows, on the default storage (the memory store alone) against moka's cache
/// configured as the memory backend configures it: criterion measures one side after the
/// other, and moka's own cost drifts between them (its housekeeping, the machine); interleaved,
/// drift lands on both sides alike.
async fn interleaved_in_process() {
    let storage = ResilientStorage::builder().build().await.unwrap();
    let value = bytes::Bytes::from(vec![7_u8; 100]);
    storage.set("key", value.clone(), None).await.unwrap();
    let moka = moka_as_the_memory_backend();
    let entry = MokaEntry {
        value: value.clone(),
        ttl: None,
    };
    moka.insert("key".to_owned(), entry.clone());
    ab_rounds_of(
        "memory_get",
        IN_PROCESS_PER_ROUND,
        || async {
            storage.get("key").await.unwrap().unwrap();
        },
        || async {
            moka.get("key").unwrap();
        },
    )
    .await;
    ab_rounds_of(
        "memory_set",
        IN_PROCESS_PER_ROUND,
        || async {
            storage.set("key", value.clone(), None).await.unwrap();
        },
        || async {
            moka.insert("key".to_owned(), entry.clone());
        },
    )
    .await;
    // A hit of get_or_load against a plain get of the same entry (it carries the load's TTL).
    let options = load_for_hits(&storage, "hit", value.clone()).await;
    ab_rounds_of(
        "cache_aside_hit",
        IN_PROCESS_PER_ROUND,
        || async {
            load_hit(&storage, "hit", &options).await;
        },
        || async {
            storage.get("hit").await.unwrap().unwrap();
        },
    )
    .await;
    storage.shutdown().await;
}

async fn interleaved() {
    let redis = RedisServer::start().expect("redis-server");
    let storage = storage_over(&redis.url(), true).await;
    storage.set("key", vec![7_u8; 100], None).await.unwrap();
    let raw = redis::aio::ConnectionManager::new(redis::Client::open(redis.url()).unwrap())
        .await
        .unwrap();
    ab(
        "redis_get",
        || async {
            storage.get("key").await.unwrap().unwrap();
        },
        || {
            let mut conn = raw.clone();
            async move {
                redis::cmd("GET")
                    .arg("key")
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
                    .unwrap()
                    .unwrap();
            }
        },
    )
    .await;
    // Throughput under load: 64 tasks of 16 gets each, a call. On two cores shared with the
    // server, this is where the layer's CPU per call shows.
    ab_rounds_of(
        "redis_get_64_tasks",
        20,
        || get_from_64_tasks(&storage, "key"),
        || raw_get_from_64_tasks(&raw, "key"),
    )
    .await;
    // A set through a Redis-only storage (no fallback, so no write-behind copy): one SET of the
    // value with its 20-byte version header, against a plain SET of the same value.
    let alone = storage_over(&redis.url(), false).await;
    let value = bytes::Bytes::from(vec![7_u8; 100]);
    ab(
        "redis_set",
        || async {
            alone.set("set-key", value.clone(), None).await.unwrap();
        },
        || {
            let mut conn = raw.clone();
            let value = &value;
            async move {
                redis::cmd("SET")
                    .arg("raw-set-key")
                    .arg(&value[..])
                    .query_async::<()>(&mut conn)
                    .await
                    .unwrap();
            }
        },
    )
    .await;
    alone.shutdown().await;
    // An increment through the storage is a script that also stores the key's version.
    ab(
        "redis_increment",
        || async {
            storage.increment("count", 1, None).await.unwrap();
        },
        || {
            let mut conn = raw.clone();
            async move {
                redis::cmd("INCRBY")
                    .arg("raw-count")
                    .arg(1)
                    .query_async::<i64>(&mut conn)
                    .await
                    .unwrap();
            }
        },
    )
    .await;
    let keys = store_batch(&storage).await;
    ab(
        "redis_get_many_100",
        || async {
            let values = storage.get_many(&keys).await.unwrap();
            assert!(values.iter().all(|v| v.as_ref().is_ok_and(Option::is_some)));
        },
        || {
            let mut conn = raw.clone();
            let keys = &keys;
            async move {
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(keys)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(values.iter().all(Option::is_some));
            }
        },
    )
    .await;
    storage.shutdown().await;

    let postgres = PostgresServer::start().expect("postgres");
    let storage = storage_over(&postgres.url(), true).await;
    storage.set("key", vec![7_u8; 100], None).await.unwrap();
    let pool = raw_pool(&postgres.url()).await;
    ab(
        "postgres_get",
        || async {
            storage.get("key").await.unwrap().unwrap();
        },
        || async {
            raw_get(&pool, "key").await.expect("the key is there");
        },
    )
    .await;
    let value = vec![7_u8; 100];
    ab(
        "postgres_set",
        || async {
            storage.set("set-key", value.clone(), None).await.unwrap();
        },
        || raw_upsert(&pool, "raw-set-key", &value),
    )
    .await;
    // The default write policy's cost, as criterion's `default_set` group measures it: a set on
    // a storage over Redis with PostgreSQL behind it (write-behind) against a set on a
    // Redis-only storage, a new key each call. The copies PostgreSQL takes in the background
    // share the cores with both sides' rounds, not only with the side measured after them.
    let default = default_over(&redis.url(), &postgres.url()).await;
    let redis_only = storage_over(&redis.url(), true).await;
    let next = std::cell::Cell::new(0_u32);
    let key = || {
        next.set((next.get() + 1) % 50_000);
        format!("set:{}", next.get())
    };
    ab(
        "default_set",
        || {
            let key = key();
            let (default, value) = (&default, &value);
            async move { default.set(&key, value.clone(), None).await.unwrap() }
        },
        || {
            let key = key();
            let (redis_only, value) = (&redis_only, &value);
            async move { redis_only.set(&key, value.clone(), None).await.unwrap() }
        },
    )
    .await;
    default.shutdown().await;
    redis_only.shutdown().await;
    store_batch(&storage).await;
    add_other_rows(&pool).await;
    ab(
        "postgres_get_many_100",
        || async {
            let values = storage.get_many(&keys).await.unwrap();
            assert!(values.iter().all(|v| v.as_ref().is_ok_and(Option::is_some)));
        },
        || async { assert_eq!(raw_get_many(&pool, &keys).await.len(), 100) },
    )
    .await;
    storage.shutdown().await;
}

/// Records left to replay to `backend`.
fn pending(storage: &ResilientStorage, backend: &str) -> usize {
    storage
        .health()
        .backends
        .get(backend)
        .map_or(0, |b| b.pending_replay)
}

/// Polls every millisecond until `done` holds for the backlog; the moment it did and the backlog.
async fn wait_backlog(
    storage: &ResilientStorage,
    done: impl Fn(usize) -> bool,
) -> (Instant, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = pending(storage, "redis");
        if done(left) {
            return (Instant::now(), left);
        }
        assert!(Instant::now() < deadline, "the backlog is stuck at {left}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

const BACKLOG: usize = 80_000;
const STREAM_PER_SECOND: u64 = 20_000;
const STREAM_TASKS: u64 = 20;

/// Replay to a recovered Redis, through the fault proxy and the default replay path: a backlog
/// of 80,000 writes made on the memory fallback while Redis was cut off, then Redis reachable
/// again. First alone: records per second from the first replayed batch to an empty backlog.
/// Then the same backlog with a stream of 20,000 writes/s running throughout: the time from
/// the first replayed batch until Redis takes traffic back, against the first figure (goal:
/// within twice the time the backlog takes to replay). Health rise 1 and no failback delay,
/// so the figure is the replay's and not the hysteresis's.
async fn replay_after_an_outage() {
    let redis = RedisServer::start().expect("redis-server");
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let storage = ResilientStorage::builder()
        .health(HealthConfig::default().hysteresis(1, 3))
        .failback_delay(Duration::ZERO)
        .backend_url(&format!("redis://{}", proxy.addr()), 1)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut events = storage.subscribe();
    storage.set("warm", "up", None).await.unwrap();
    let value = bytes::Bytes::from(vec![7_u8; 100]);
    let outage = |round: usize| {
        let storage = &storage;
        let proxy = &proxy;
        let value = &value;
        async move {
            proxy.set_mode(ProxyMode::Refuse);
            proxy.reset_all();
            for i in 0..BACKLOG {
                storage
                    .set(&format!("backlog:{round}:{i}"), value.clone(), None)
                    .await
                    .unwrap();
            }
            assert!(
                pending(storage, "redis") >= BACKLOG,
                "the outage's writes are kept"
            );
        }
    };

    outage(0).await;
    proxy.set_mode(ProxyMode::Pass);
    let (started, left) = wait_backlog(&storage, |left| left < BACKLOG).await;
    let (ended, _) = wait_backlog(&storage, |left| left == 0).await;
    let replay = ended - started;
    let per_second = left as f64 / replay.as_secs_f64();
    switch_to(&mut events, "redis").await;

    outage(1).await;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stream: Vec<_> = (0..STREAM_TASKS)
        .map(|task| {
            let storage = storage.clone();
            let written = written.clone();
            tokio::spawn(async move {
                let period = Duration::from_micros(1_000_000 * STREAM_TASKS / STREAM_PER_SECOND);
                let mut tick = tokio::time::interval(period);
                for i in 0_u64.. {
                    tick.tick().await;
                    let key = format!("stream:{task}:{}", i % 50);
                    if storage.set(&key, "v", None).await.is_ok() {
                        written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = written.load(std::sync::atomic::Ordering::Relaxed);
    let stream_start = Instant::now();
    proxy.set_mode(ProxyMode::Pass);
    let (started, _) = wait_backlog(&storage, |left| left < BACKLOG).await;
    let back = switch_to(&mut events, "redis").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rate = (written.load(std::sync::atomic::Ordering::Relaxed) - before) as f64
        / stream_start.elapsed().as_secs_f64();
    for task in stream {
        task.abort();
    }
    let takeback = back.saturating_duration_since(started);
    let on_redis: u64 = {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap()
    };
    assert!(
        on_redis as usize >= 2 * BACKLOG,
        "both backlogs are on Redis: {on_redis}"
    );
    storage.shutdown().await;
    println!(
        "replay: {left} records in {replay:?} ({per_second:.0}/s); under a {rate:.0} writes/s \
         stream Redis took traffic back {takeback:?} after its replay began ({:.2}x)",
        takeback.as_secs_f64() / replay.as_secs_f64()
    );
    write_result(
        "replay_after_an_outage",
        &json!({
            "records": left,
            "replay_ms": replay.as_secs_f64() * 1e3,
            "records_per_second": per_second,
            "stream_writes_per_second": rate,
            "takeback_ms": takeback.as_secs_f64() * 1e3,
            "takeback_ratio": takeback.as_secs_f64() / replay.as_secs_f64(),
        }),
    );
}
