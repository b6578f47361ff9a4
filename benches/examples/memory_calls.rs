//! The in-process rows' calls (`memory_get`, `memory_set`, `cache_aside_hit`), one side at a
//! time, for counting instructions per call under callgrind, as `redis_64_tasks` does for
//! Redis:
//!
//! ```text
//! cargo build --release -p resilient-benches --example memory_calls
//! valgrind --tool=callgrind target/release/examples/memory_calls get storage 100000
//! valgrind --tool=callgrind target/release/examples/memory_calls get storage 200000
//! ```
//!
//! The difference between the two totals, over 100,000 calls, is the instructions per call
//! without the set-up. Calls: `get`, `set` or `load` (a `get_or_load` hit; its baseline is a
//! plain get); sides: `storage` or `baseline` (moka's cache as the memory backend sets it up).

use bytes::Bytes;
use resilient_benches::{MokaEntry, load_for_hits, load_hit, moka_as_the_memory_backend};
use resilient_storage::prelude::*;

fn main() {
    let usage = "usage: memory_calls get|set|load storage|baseline CALLS";
    let mut args = std::env::args().skip(1);
    let (call, side) = (args.next().expect(usage), args.next().expect(usage));
    let calls: u32 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let storage = ResilientStorage::builder().build().await.unwrap();
        let value = Bytes::from(vec![7_u8; 100]);
        storage.set("key", value.clone(), None).await.unwrap();
        let options = load_for_hits(&storage, "hit", value.clone()).await;
        let moka = moka_as_the_memory_backend();
        let entry = MokaEntry { value, ttl: None };
        moka.insert("key".to_owned(), entry.clone());
        for _ in 0..calls {
            match (call.as_str(), side.as_str()) {
                ("get", "storage") => drop(storage.get("key").await.unwrap()),
                ("get", "baseline") => drop(moka.get("key")),
                ("set", "storage") => storage.set("key", entry.value.clone(), None).await.unwrap(),
                ("set", "baseline") => moka.insert("key".to_owned(), entry.clone()),
                ("load", "storage") => drop(load_hit(&storage, "hit", &options).await),
                ("load", "baseline") => drop(storage.get("hit").await.unwrap()),
                _ => panic!("{usage}"),
            }
        }
        storage.shutdown().await;
    });
}
