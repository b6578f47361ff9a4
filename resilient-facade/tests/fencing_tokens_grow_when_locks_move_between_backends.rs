//! Against real servers: a lock's fencing token keeps growing when lock authority moves from
//! Redis to PostgreSQL to the memory store and back, so a resource that rejects lower tokens
//! never rejects the rightful holder.

use std::time::Duration;

use resilient_storage::prelude::*;
use resilient_test_support::{PostgresServer, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grow_across_redis_postgres_and_memory() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = ResilientStorage::builder()
        .strategy(Strategy::Priority)
        .backend_url(&redis.url(), 1)
        .unwrap()
        .backend_url(&postgres.url(), 2)
        .unwrap()
        .local_locks(true)
        // This test is about tokens: let locks move to a lower backend at once.
        .lock_failover(LockFailover::after_outage(Duration::ZERO))
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let mut tokens = Vec::new();
    // (backends forced open, backend expected to grant)
    let steps: [(&[&str], &str); 5] = [
        (&[], "redis"),
        (&["redis"], "postgres"),
        (&["redis", "postgres"], "memory"),
        (&[], "redis"),
        (&["redis"], "postgres"),
    ];
    for (round, (open, expected)) in steps.iter().enumerate() {
        for name in ["redis", "postgres"] {
            storage.force_open(name, open.contains(&name));
        }
        // Forced-open breakers go half-open when released: one probe closes them.
        let holder = format!("worker-{round}");
        let grant = storage
            .acquire_lock("job", &holder, ttl)
            .await
            .unwrap()
            .grant()
            .cloned()
            .expect("free on the granting backend");
        assert_eq!(grant.backend, *expected, "round {round}");
        assert_eq!(grant.local, *expected == "memory");
        tokens.push(grant.token);
        assert!(storage.release_lock("job", &holder).await.unwrap());
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must grow across backends: {tokens:?}"
    );
}
