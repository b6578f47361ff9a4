//! The PostgreSQL batch read of the benchmarks (`postgres_get_many_100`), one side at a time:
//! what the storage adds to each `get_many` of 100 keys in the client, in instructions:
//!
//! ```text
//! cargo build --release -p resilient-benches --example postgres_get_many
//! valgrind --tool=callgrind target/release/examples/postgres_get_many storage 500
//! valgrind --tool=callgrind target/release/examples/postgres_get_many storage 1000
//! valgrind --tool=callgrind target/release/examples/postgres_get_many raw 500
//! valgrind --tool=callgrind target/release/examples/postgres_get_many raw 1000
//! ```
//!
//! The difference between the two totals of a side, over 500 calls, is its instructions per
//! call without the set-up (the server, which valgrind does not trace, and the 12,000 rows).

use resilient_benches::{raw_pool, storage_over};

fn main() {
    let usage = "usage: postgres_get_many storage|raw CALLS";
    let mut args = std::env::args().skip(1);
    let side = args.next().expect(usage);
    let calls: u32 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    assert!(side == "storage" || side == "raw", "{usage}");
    let server = resilient_test_support::PostgresServer::start().expect("postgres");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        // The storage and the rows of the bench row.
        let storage = storage_over(&server.url(), true).await;
        let pool = raw_pool(&server.url()).await;
        let keys: Vec<String> = (0..100).map(|i| format!("batch:{i}")).collect();
        let items = keys.iter().map(|k| (k.as_str(), vec![7_u8; 100]));
        storage.set_many(items, None).await.unwrap();
        resilient_benches::add_other_rows(&pool).await;
        let start = std::time::Instant::now();
        for _ in 0..calls {
            match side.as_str() {
                "storage" => {
                    let values = storage.get_many(&keys).await.unwrap();
                    assert!(values.iter().all(|v| v.as_ref().is_ok_and(Option::is_some)));
                }
                _ => assert_eq!(
                    resilient_benches::raw_get_many(&pool, &keys).await.len(),
                    100
                ),
            }
        }
        println!("{side}: {:?} a call", start.elapsed() / calls);
        storage.shutdown().await;
    });
}
