//! The PostgreSQL batch read of the benchmarks (`postgres_get_many_100`), one side at a time:
//! what the storage adds to each `get_many` of 100 keys in the client, in instructions:
//!
//! ```text
//! cargo build --release -p resilient-benches --example postgres_get_many
//! valgrind --tool=callgrind target/release/examples/postgres_get_many storage 300
//! valgrind --tool=callgrind target/release/examples/postgres_get_many storage 600
//! valgrind --tool=callgrind target/release/examples/postgres_get_many raw 300
//! valgrind --tool=callgrind target/release/examples/postgres_get_many raw 600
//! ```
//!
//! The difference between the two totals of a side, divided by 300, is its instructions per
//! call without the set-up (the 12,000 rows; valgrind does not trace the server).

use resilient_benches::{
    add_other_rows, example_start, raw_get_many, raw_pool, storage_over, store_batch,
};

fn main() {
    let (side, calls, runtime) = example_start("usage: postgres_get_many storage|raw CALLS");
    let server = resilient_test_support::PostgresServer::start().expect("postgres");
    runtime.block_on(async {
        // The storage and the rows of the bench row.
        let storage = storage_over(&server.url(), true).await;
        let pool = raw_pool(&server.url()).await;
        let keys = store_batch(&storage).await;
        add_other_rows(&pool).await;
        let start = std::time::Instant::now();
        for _ in 0..calls {
            match side.as_str() {
                "storage" => {
                    let values = storage.get_many(&keys).await.unwrap();
                    assert!(values.iter().all(|v| v.as_ref().is_ok_and(Option::is_some)));
                }
                _ => assert_eq!(raw_get_many(&pool, &keys).await.len(), 100),
            }
        }
        println!("{side}: {:?} a call", start.elapsed() / calls);
        storage.shutdown().await;
    });
}
