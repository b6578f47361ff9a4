//! The 64-task Redis load of the benchmarks (`redis_get_64_tasks`), one side at a time, for
//! counting what the storage adds to each get. Instructions, unlike time, do not depend on what
//! else the machine is doing:
//!
//! ```text
//! cargo build --release -p resilient-benches --example redis_64_tasks
//! valgrind --tool=callgrind target/release/examples/redis_64_tasks storage 30
//! valgrind --tool=callgrind target/release/examples/redis_64_tasks storage 60
//! valgrind --tool=callgrind target/release/examples/redis_64_tasks raw 30
//! valgrind --tool=callgrind target/release/examples/redis_64_tasks raw 60
//! ```
//!
//! Each round is 64 tasks of 16 gets. The difference between the two totals of a side, over
//! 30 × 1,024 gets, is its instructions per get without the set-up; `callgrind_annotate` on
//! each output says where they go. The example starts its own `redis-server` (see
//! `resilient-test-support`); valgrind does not trace it.

use resilient_benches::{get_from_64_tasks, raw_get_from_64_tasks, redis_example, storage_over};

fn main() {
    let (side, rounds, server, runtime) = redis_example("usage: redis_64_tasks storage|raw ROUNDS");
    runtime.block_on(async {
        // The storage of the bench row: Redis with the memory fallback, defaults otherwise.
        let storage = storage_over(&server.url(), true).await;
        storage.set("key", vec![7_u8; 100], None).await.unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            match side.as_str() {
                "storage" => get_from_64_tasks(&storage, "key").await,
                _ => raw_get_from_64_tasks(&raw, "key").await,
            }
        }
        println!("{side}: {:?} a round", start.elapsed() / rounds);
        storage.shutdown().await;
    });
}
