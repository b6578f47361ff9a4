//! The Redis increment of the benchmarks (`redis_increment`), one side at a time: what the
//! storage adds to each call, in the client (instructions) and in the server (the script's
//! time, from `INFO commandstats`):
//!
//! ```text
//! cargo build --release -p resilient-benches --example redis_increment
//! valgrind --tool=callgrind target/release/examples/redis_increment storage 2000
//! valgrind --tool=callgrind target/release/examples/redis_increment storage 4000
//! valgrind --tool=callgrind target/release/examples/redis_increment raw 2000
//! valgrind --tool=callgrind target/release/examples/redis_increment raw 4000
//! ```
//!
//! The difference between the two totals of a side, over 2,000 calls, is its instructions per
//! call without the set-up. Each run prints the time per call and the server's figures for
//! `EVALSHA` (the storage's script) or `INCRBY`. The example starts its own `redis-server`
//! (see `resilient-test-support`); valgrind does not trace it.

use resilient_benches::{redis_example, storage_over};

fn main() {
    let (side, calls, server, runtime) = redis_example("usage: redis_increment storage|raw CALLS");
    runtime.block_on(async {
        // The storage of the bench row: Redis with the memory fallback, defaults otherwise.
        let storage = storage_over(&server.url(), true).await;
        let client = redis::Client::open(server.url()).unwrap();
        let mut raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        // Warm up both sides (the script loaded, the connections made), then count afresh.
        for _ in 0..1_000 {
            storage.increment("count", 1, None).await.unwrap();
            raw_increment(&mut raw).await;
        }
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
        let start = std::time::Instant::now();
        for _ in 0..calls {
            match side.as_str() {
                "storage" => {
                    storage.increment("count", 1, None).await.unwrap();
                }
                _ => raw_increment(&mut raw).await,
            }
        }
        println!("{side}: {:?} a call", start.elapsed() / calls);
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut raw)
            .await
            .unwrap();
        for line in info
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha") || l.starts_with("cmdstat_incrby"))
        {
            println!("{line}");
        }
        storage.shutdown().await;
    });
}

async fn raw_increment(raw: &mut redis::aio::ConnectionManager) {
    redis::cmd("INCRBY")
        .arg("raw-count")
        .arg(1)
        .query_async::<i64>(raw)
        .await
        .unwrap();
}
