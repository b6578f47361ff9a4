//! Redis's own high availability under the library, against real servers: a master, one
//! replica and three sentinels, and a storage with the defaults over
//! `redis+sentinel://.../mymaster` (priority 1) and PostgreSQL (priority 2). The master is
//! SIGKILLed under a steady write load (a new key per write). While the sentinels fail over,
//! PostgreSQL serves; then the storage follows the sentinels to the new master. Measured and
//! printed: failed calls, time from the kill to Redis serving again, and acknowledged writes the
//! new master does not hold (Redis replicates asynchronously: a write acknowledged by the old
//! master just before it died may never have reached the replica). Checked: no call failed,
//! Redis serves again, and every acknowledged write reads back through the storage.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_for_drain;
use resilient_storage::ResilientStorage;
use resilient_test_support::{PostgresServer, RedisSentinels, read_keys};

/// Sentinels mark the master down after 1 s; the election and promotion take a few more. A
/// busy 2-core machine gets room on top.
const FAILOVER_BOUND: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_fails_no_call_and_loses_no_acknowledged_write() {
    let mut group = tokio::task::spawn_blocking(|| RedisSentinels::start(1).unwrap())
        .await
        .unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = ResilientStorage::builder()
        .backend_url(&group.url(), 1)
        .unwrap()
        .backend_url(&postgres.url(), 2)
        .unwrap()
        .build()
        .await
        .unwrap();
    storage.set("warm", "up", None).await.unwrap();
    assert_eq!(storage.last_served_backend().as_deref(), Some("redis"));

    // The load: one task, a new key per write, 2 ms apart.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let load = tokio::spawn({
        let (storage, stop, failed, acked) =
            (storage.clone(), stop.clone(), failed.clone(), acked.clone());
        async move {
            let mut seq = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = format!("w{seq}");
                match storage.set(&key, seq.to_string(), None).await {
                    Ok(()) => acked.lock().unwrap().push((key, Instant::now())),
                    Err(error) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("write failed: {error}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let old_master = group.master_port().unwrap();
    group.server_mut(old_master).unwrap().kill().unwrap();
    let killed_at = Instant::now();
    let mut new_master = old_master;
    while new_master == old_master {
        assert!(
            killed_at.elapsed() < FAILOVER_BOUND,
            "the sentinels named no new master within {FAILOVER_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        new_master = group.master_port().unwrap_or(old_master);
    }
    let promoted = killed_at.elapsed();
    // Redis serves again: a write made now is on the new master.
    let master_url = format!("redis://127.0.0.1:{new_master}");
    let served_again = loop {
        assert!(
            killed_at.elapsed() < FAILOVER_BOUND,
            "the storage did not move to the new master within {FAILOVER_BOUND:?}: {:?}",
            storage.health()
        );
        storage.set("probe", "x", None).await.unwrap();
        if storage.last_served_backend().as_deref() == Some("redis")
            && read_keys(&master_url, &["probe"]).await[0].is_some()
        {
            break killed_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    // The writes made while PostgreSQL served are replayed to the new master.
    wait_for_drain(&storage, Duration::from_secs(20)).await;

    let acked = acked.lock().unwrap().clone();
    let keys: Vec<&str> = acked.iter().map(|(key, _)| key.as_str()).collect();
    let on_master = read_keys(&master_url, &keys).await;
    let missing_on_redis: Vec<&(String, Instant)> = acked
        .iter()
        .zip(&on_master)
        .filter(|(_, held)| held.is_none())
        .map(|(acked, _)| acked)
        .collect();
    let mut missing_through_storage = 0;
    for (key, _) in &missing_on_redis {
        if storage.get(key).await.unwrap().is_none() {
            missing_through_storage += 1;
        }
    }
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "sentinel failover under load: {} writes acknowledged, {failed} failed; sentinels \
         promoted the replica {promoted:?} after the kill; Redis served again {served_again:?} \
         after it; {} acknowledged writes missing on the new master ({} of them acknowledged \
         before the kill), {missing_through_storage} missing through the storage",
        acked.len(),
        missing_on_redis.len(),
        missing_on_redis
            .iter()
            .filter(|(_, at)| *at < killed_at)
            .count(),
    );
    assert_eq!(failed, 0, "no call fails while the sentinels fail over");
    assert_eq!(
        missing_through_storage, 0,
        "every acknowledged write reads back through the storage"
    );
    assert!(
        missing_on_redis.iter().all(|(_, at)| *at < killed_at),
        "only writes the old master acknowledged can be missing on the new one"
    );
    storage.shutdown().await;
}
