//! Redis's own high availability under the library, against real servers, with the defaults
//! over Redis (priority 1) and PostgreSQL (priority 2): Sentinel (a master, one replica, three
//! sentinels; `redis+sentinel://.../mymaster`) and Cluster with replicas (three masters with
//! one replica each; `redis+cluster://...`). A master is SIGKILLed under a steady write load (a
//! new key per write). While Redis fails over, PostgreSQL serves; then the storage follows Redis
//! to the new master. Measured and printed: failed calls, time from the kill to Redis serving
//! again, and acknowledged writes Redis no longer holds (it replicates asynchronously: a write
//! acknowledged by the old master just before it died may never have reached the replica).
//! Checked: no call failed, Redis serves again, and every acknowledged write reads back through
//! the storage.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_for_drain;
use resilient_storage::ResilientStorage;
use resilient_test_support::{
    PostgresServer, RedisCluster, RedisSentinels, read_cluster_keys, read_keys,
};

/// Sentinels mark a master down after 1 s and a cluster after its 2 s node timeout; the
/// election and promotion take a few more. A busy 2-core machine gets room on top.
const FAILOVER_BOUND: Duration = Duration::from_secs(40);

/// One task writing a new key every 2 ms, recording what was acknowledged and when its call
/// began.
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(storage: &ResilientStorage) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (storage, stop, failed, acked) =
                (storage.clone(), stop.clone(), failed.clone(), acked.clone());
            async move {
                let mut seq = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("w{seq}");
                    // The start of the call: only a write begun before the kill can have been
                    // acknowledged by the old master.
                    let started = Instant::now();
                    match storage.set(&key, seq.to_string(), None).await {
                        Ok(()) => acked.lock().unwrap().push((key, started)),
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("write failed: {error}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Self {
            stop,
            failed,
            acked,
            task,
        }
    }

    /// Stops the load; the writes acknowledged, and how many calls failed.
    async fn stop(self) -> (Vec<(String, Instant)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failed.load(Ordering::Relaxed))
    }
}

async fn storage_over(redis_url: &str, postgres: &PostgresServer) -> ResilientStorage {
    let storage = ResilientStorage::builder()
        .backend_url(redis_url, 1)
        .unwrap()
        .backend_url(&postgres.url(), 2)
        .unwrap()
        .build()
        .await
        .unwrap();
    storage.set("warm", "up", None).await.unwrap();
    assert_eq!(storage.last_served_backend().as_deref(), Some("redis"));
    storage
}

/// Writes `probe` until Redis served the write and `on_redis` finds it there; the time since
/// `killed_at`.
async fn until_redis_serves<F, Fut>(
    storage: &ResilientStorage,
    killed_at: Instant,
    mut on_redis: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        assert!(
            killed_at.elapsed() < FAILOVER_BOUND,
            "the storage did not move to the new master within {FAILOVER_BOUND:?}: {:?}",
            storage.health()
        );
        storage.set("probe", "x", None).await.unwrap();
        if storage.last_served_backend().as_deref() == Some("redis") && on_redis().await {
            return killed_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints the figures and checks them: `held` is what Redis holds for each acknowledged write.
#[allow(clippy::too_many_arguments)]
async fn report(
    what: &str,
    storage: &ResilientStorage,
    acked: &[(String, Instant)],
    held: &[Option<String>],
    failed: u64,
    killed_at: Instant,
    promoted: Duration,
    served_again: Duration,
) {
    let missing_on_redis: Vec<&(String, Instant)> = acked
        .iter()
        .zip(held)
        .filter(|(_, held)| held.is_none())
        .map(|(acked, _)| acked)
        .collect();
    let mut missing_through_storage = 0;
    for (key, _) in &missing_on_redis {
        if storage.get(key).await.unwrap().is_none() {
            missing_through_storage += 1;
        }
    }
    println!(
        "{what} failover under load: {} writes acknowledged, {failed} failed; a replica was \
         promoted {promoted:?} after the kill; Redis served again {served_again:?} after it; {} \
         acknowledged writes missing on Redis ({} of them acknowledged before the kill), \
         {missing_through_storage} missing through the storage",
        acked.len(),
        missing_on_redis.len(),
        missing_on_redis
            .iter()
            .filter(|(_, at)| *at < killed_at)
            .count(),
    );
    assert_eq!(failed, 0, "no call fails while Redis fails over");
    assert_eq!(
        missing_through_storage, 0,
        "every acknowledged write reads back through the storage"
    );
    assert!(
        missing_on_redis.iter().all(|(_, at)| *at < killed_at),
        "only writes begun before the kill can be missing on Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_fails_no_call_and_loses_no_acknowledged_write() {
    let mut group = tokio::task::spawn_blocking(|| RedisSentinels::start(1).unwrap())
        .await
        .unwrap();
    let postgres = PostgresServer::start().unwrap();
    let storage = storage_over(&group.url(), &postgres).await;
    let load = Load::start(&storage);
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
    let master_url = format!("redis://127.0.0.1:{new_master}");
    let served_again = until_redis_serves(&storage, killed_at, || async {
        read_keys(&master_url, &["probe"]).await[0].is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, failed) = load.stop().await;
    // The writes made while PostgreSQL served are replayed to the new master.
    wait_for_drain(&storage, Duration::from_secs(20)).await;

    let keys: Vec<&str> = acked.iter().map(|(key, _)| key.as_str()).collect();
    let held = read_keys(&master_url, &keys).await;
    let (sentinel, promoted, served) = ("sentinel", promoted, served_again);
    report(
        sentinel, &storage, &acked, &held, failed, killed_at, promoted, served,
    )
    .await;
    storage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_under_load_fails_no_call_and_loses_no_acknowledged_write() {
    let mut cluster =
        tokio::task::spawn_blocking(|| RedisCluster::start_with_replicas(3, 1).unwrap())
            .await
            .unwrap();
    let postgres = PostgresServer::start().unwrap();
    let hosts: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let storage = storage_over(&format!("redis+cluster://{}", hosts.join(",")), &postgres).await;
    let load = Load::start(&storage);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let masters = cluster.masters().unwrap();
    let victim = masters[0];
    let node = cluster.nodes_mut().iter_mut().find(|n| n.port() == victim);
    node.unwrap().kill().unwrap();
    let killed_at = Instant::now();
    loop {
        let now = cluster.masters().unwrap_or_default();
        assert!(
            killed_at.elapsed() < FAILOVER_BOUND,
            "the cluster promoted no replica within {FAILOVER_BOUND:?}: masters {masters:?} \
             before, {now:?} now, victim {victim}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        if now.len() == masters.len() && !now.contains(&victim) {
            break;
        }
    }
    let promoted = killed_at.elapsed();
    let urls: Vec<String> = cluster
        .nodes()
        .iter()
        .filter(|n| n.port() != victim)
        .map(|n| n.url())
        .collect();
    // Every slot answers again, the killed master's too: a write lands on each master.
    let served_again = until_redis_serves(&storage, killed_at, || async {
        let probes = ["probe", "{a}probe", "{b}probe", "{c}probe"];
        for probe in &probes[1..] {
            if storage.set(probe, "x", None).await.is_err()
                || storage.last_served_backend().as_deref() != Some("redis")
            {
                return false;
            }
        }
        read_cluster_keys(&urls, &probes)
            .await
            .iter()
            .all(Option::is_some)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, failed) = load.stop().await;
    wait_for_drain(&storage, Duration::from_secs(20)).await;

    let keys: Vec<&str> = acked.iter().map(|(key, _)| key.as_str()).collect();
    let held = read_cluster_keys(&urls, &keys).await;
    let (what, served) = ("cluster", served_again);
    report(
        what, &storage, &acked, &held, failed, killed_at, promoted, served,
    )
    .await;
    storage.shutdown().await;
}
