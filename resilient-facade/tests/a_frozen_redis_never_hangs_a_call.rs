//! Against real servers, with `ResilientStorage::builder()` and two URLs and nothing else: while
//! Redis is frozen (SIGSTOP: connections stay open, nothing answers), every kind of call comes
//! back within the default deadline, served by PostgreSQL where it can be (reads, writes,
//! increments, cache-aside hits; locks fail closed), and once Redis thaws it takes traffic back with a counter
//! that counted every increment exactly once, on Redis too.

mod common;

use std::time::{Duration, Instant};

use common::{defaults, wait_for_drain};
use resilient_storage::{DEFAULT_DEADLINE, LoadOptions, LoadSource, ResilientStorage};
use resilient_test_support::{PostgresServer, RedisServer, read_key};

/// The default deadline, and room for a busy 2-core machine to schedule the caller.
const BOUND: Duration = DEFAULT_DEADLINE.saturating_add(Duration::from_millis(1500));

/// Runs `call`, fails the test when it took longer than [`BOUND`], and returns its result.
async fn within_bound<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let result = call.await;
    let took = start.elapsed();
    assert!(took <= BOUND, "{what} took {took:?} while Redis was frozen");
    result
}

fn served_by_postgres(storage: &ResilientStorage, what: &str) {
    assert_eq!(
        storage.last_served_backend().as_deref(),
        Some("postgres"),
        "{what} while Redis was frozen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_returns_within_the_deadline_while_redis_is_frozen_and_counts_stay_exact() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = defaults(&redis, &postgres).await;
    let cached = LoadOptions::new(Duration::from_secs(3600));
    storage.set("k", "v", None).await.unwrap();
    let mut count = 0_i64;
    for _ in 0..10 {
        count = storage.increment("n", 1, None).await.unwrap();
    }
    let loaded = storage
        .get_or_load("cached", &cached, || async {
            Ok::<_, std::io::Error>("loaded")
        })
        .await
        .unwrap();
    assert_eq!(loaded.source, LoadSource::Loaded);
    // Write-behind copies reach PostgreSQL in the background: wait until they have landed.
    wait_for_drain(&storage, Duration::from_secs(10)).await;

    redis.freeze().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut rounds = 0;
    while Instant::now() < until {
        rounds += 1;
        let got = within_bound("get", storage.get("k")).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
        served_by_postgres(&storage, "get");
        within_bound("set", storage.set("written", rounds.to_string(), None))
            .await
            .unwrap();
        served_by_postgres(&storage, "set");
        let next = within_bound("increment", storage.increment("n", 1, None))
            .await
            .unwrap();
        assert_eq!(next, count + 1, "increment {rounds} while Redis is frozen");
        served_by_postgres(&storage, "increment");
        count = next;
        let hit = within_bound(
            "get_or_load",
            storage.get_or_load("cached", &cached, || async {
                Err::<&str, _>(std::io::Error::other("a hit never loads"))
            }),
        )
        .await
        .unwrap();
        assert_eq!(&hit.value[..], b"loaded");
        assert_eq!(hit.source, LoadSource::Cached);
        served_by_postgres(&storage, "get_or_load");
        // Locks fail closed while their authority (Redis) is out of reach: never granted by
        // another backend, and the answer comes back within the bound.
        let lock = within_bound(
            "acquire_lock",
            storage.acquire_lock("lock", "me", Duration::from_secs(1)),
        )
        .await;
        assert!(
            lock.is_err(),
            "a lock granted while its authority was frozen"
        );
    }

    redis.thaw().unwrap();
    let start = Instant::now();
    loop {
        let got = storage.increment("n", 1, None).await.unwrap();
        assert_eq!(got, count + 1, "an increment after the thaw");
        count = got;
        if storage.last_served_backend().as_deref() == Some("redis") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "Redis took no traffic back within 15 s of the thaw: {:?}",
            storage.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        storage.get("written").await.unwrap().as_deref(),
        Some(rounds.to_string().as_bytes())
    );
    assert_eq!(
        read_key(&redis.url(), "n").await.as_deref(),
        Some(count.to_string().as_str()),
        "the counter on Redis after the thaw: every increment exactly once"
    );
    storage.shutdown().await;
}
