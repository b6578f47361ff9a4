//! Two processes in one test, on tokio's paused clock: two storages over the same Redis and
//! PostgreSQL (memory stores shared between them), each behind its own fault wrapper, so one
//! "process" can be cut off from a server while the other still reaches it. Both take lock `L`
//! in a loop (TTL 2 s, hold 50 ms, release) while the links fail in every shape, and the test
//! counts the moments both held `L` by their own acquire and release times.
//!
//! The same shapes run against real servers and real OS processes in
//! `chaos/tests/locks_across_processes.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::breaker;
use resilient_backend_memory::{MemoryBackend, MemoryConfig};
use resilient_core::testing::{Fault, FaultBackend};
use resilient_core::{
    Backend, HealthConfig, LockFailover, LockOutcome, ResilientStorage, StorageBuilder,
};
use resilient_test_support::holds::{self, Hold};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(2);
const HOLD: Duration = Duration::from_millis(50);

/// One process: its storage and its own links to the shared servers.
struct Process {
    storage: ResilientStorage,
    redis: Arc<FaultBackend>,
    postgres: Arc<FaultBackend>,
}

#[derive(Debug, Default)]
struct Tally {
    holds: Vec<Hold<Instant>>,
    errors: [u64; 2],
}

impl Tally {
    fn overlaps(&self) -> usize {
        holds::overlaps(&self.holds)
    }

    fn regressions(&self) -> usize {
        holds::token_regressions(&self.holds)
    }

    fn summary(&self) -> String {
        format!(
            "{} holds ({} by process 0), {} overlaps, {} token regressions, errors {:?}",
            self.holds.len(),
            self.holds.iter().filter(|h| h.holder == 0).count(),
            self.overlaps(),
            self.regressions(),
            self.errors
        )
    }

    fn holds_by(&self, process: usize, from: Instant, to: Instant) -> usize {
        self.holds
            .iter()
            .filter(|h| h.holder == process && h.start >= from && h.start < to)
            .count()
    }
}

struct Fleet {
    processes: Vec<Process>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

fn shared_server(name: &str) -> Arc<dyn Backend> {
    Arc::new(MemoryBackend::new(MemoryConfig::default().name(name)))
}

/// Default lock settings, health checks on, one storage per process.
async fn fleet(configure: impl Fn(StorageBuilder) -> StorageBuilder) -> Fleet {
    let (redis, postgres) = (shared_server("redis"), shared_server("postgres"));
    let mut processes = Vec::new();
    for _ in 0..2 {
        let link =
            |inner: &Arc<dyn Backend>| Arc::new(FaultBackend::wrap(inner.clone()).shared(true));
        let (r, p) = (link(&redis), link(&postgres));
        let storage = configure(
            ResilientStorage::builder()
                .memory_fallback(false)
                .breaker(breaker())
                .health(HealthConfig::default())
                .backend(r.clone() as Arc<dyn Backend>, 1)
                .backend(p.clone() as Arc<dyn Backend>, 2),
        )
        .build()
        .await
        .unwrap();
        processes.push(Process {
            storage,
            redis: r,
            postgres: p,
        });
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = processes
        .iter()
        .enumerate()
        .map(|(process, p)| {
            let (storage, tally, stop) = (p.storage.clone(), tally.clone(), stop.clone());
            tokio::spawn(async move {
                let holder = format!("process-{process}");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match storage.acquire_lock("L", &holder, TTL).await {
                        Ok(LockOutcome::Acquired(grant)) => {
                            let start = Instant::now();
                            sleep(HOLD).await;
                            let end = Instant::now();
                            let _ = storage.release_lock("L", &holder).await;
                            tally.lock().unwrap().holds.push(Hold {
                                holder: process,
                                start,
                                end,
                                token: grant.token.0,
                            });
                            // Time for the other process to find the lock free.
                            sleep(Duration::from_millis(20)).await;
                        }
                        Ok(_) => sleep(Duration::from_millis(10)).await,
                        Err(_) => {
                            tally.lock().unwrap().errors[process] += 1;
                            sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect();
    Fleet {
        processes,
        tally,
        stop,
        workers,
    }
}

impl Fleet {
    async fn finish(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        Arc::try_unwrap(self.tally).unwrap().into_inner().unwrap()
    }
}

/// Runs both processes for 2 s, applies `fault` for 8 s, heals it, runs 10 s more. Returns the
/// tally and the times the fault began and healed.
async fn run(
    configure: impl Fn(StorageBuilder) -> StorageBuilder,
    fault: impl Fn(&[Process], bool),
) -> (Tally, Instant, Instant) {
    let fleet = fleet(configure).await;
    sleep(Duration::from_secs(2)).await;
    let cut = Instant::now();
    fault(&fleet.processes, true);
    sleep(Duration::from_secs(8)).await;
    fault(&fleet.processes, false);
    let healed = Instant::now();
    sleep(Duration::from_secs(10)).await;
    (fleet.finish().await, cut, healed)
}

fn link(backend: &FaultBackend, cut: bool) {
    backend.inject(if cut { Fault::Hang } else { Fault::Pass });
}

fn defaults(builder: StorageBuilder) -> StorageBuilder {
    builder
}

/// Safety and liveness every shape must show by default: no overlap, no token regression,
/// and both processes take the lock again once the fault is healed.
fn assert_safe_and_back(tally: &Tally, healed: Instant) {
    assert_eq!(
        tally.overlaps(),
        0,
        "two holders at once: {}",
        tally.summary()
    );
    assert_eq!(
        tally.regressions(),
        0,
        "a token went back: {}",
        tally.summary()
    );
    let end = Instant::now();
    for process in 0..2 {
        assert!(
            tally.holds_by(process, healed + Duration::from_secs(5), end) > 0,
            "process {process} never took the lock again after the fault healed: {}",
            tally.summary()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn one_process_cut_off_from_redis_fails_closed_while_the_other_holds_on() {
    let (tally, cut, healed) = run(defaults, |p, on| link(&p[0].redis, on)).await;
    assert_safe_and_back(&tally, healed);
    assert_eq!(
        tally.holds_by(0, cut + Duration::from_secs(1), healed),
        0,
        "the cut-off process granted itself the lock elsewhere"
    );
    assert!(tally.holds_by(1, cut, healed) > 20, "{}", tally.summary());
    assert!(tally.errors[0] > 0);
}

#[tokio::test(start_paused = true)]
async fn one_process_cut_off_from_postgres_keeps_its_locks() {
    let (tally, cut, healed) = run(defaults, |p, on| link(&p[0].postgres, on)).await;
    assert_safe_and_back(&tally, healed);
    assert!(tally.holds_by(0, cut, healed) > 20, "{}", tally.summary());
    assert_eq!(tally.errors, [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn one_process_cut_off_from_both_fails_closed() {
    let (tally, cut, healed) = run(defaults, |p, on| {
        link(&p[0].redis, on);
        link(&p[0].postgres, on);
    })
    .await;
    assert_safe_and_back(&tally, healed);
    assert_eq!(tally.holds_by(0, cut + Duration::from_secs(1), healed), 0);
    assert!(tally.holds_by(1, cut, healed) > 20, "{}", tally.summary());
}

#[tokio::test(start_paused = true)]
async fn redis_down_for_everyone_stops_every_grant_until_it_returns() {
    let (tally, cut, healed) = run(defaults, |p, on| {
        for process in p {
            link(&process.redis, on);
        }
    })
    .await;
    assert_safe_and_back(&tally, healed);
    assert_eq!(
        tally.holds_by(0, cut + Duration::from_secs(1), healed)
            + tally.holds_by(1, cut + Duration::from_secs(1), healed),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_flapping_link_to_redis_never_makes_two_holders() {
    let (tally, _, healed) = run(defaults, |p, on| {
        if on {
            p[0].redis.flap(vec![
                (Duration::from_millis(700), Fault::Hang),
                (Duration::from_millis(500), Fault::Pass),
            ]);
        } else {
            p[0].redis.inject(Fault::Pass);
        }
    })
    .await;
    assert_safe_and_back(&tally, healed);
}

/// The documented risk of the opt-in mode, shown: a process cut off from Redis grants the lock
/// on PostgreSQL once its delay has passed, while the other keeps granting it on Redis.
#[tokio::test(start_paused = true)]
async fn lock_failover_after_an_outage_grants_twice_under_a_partition() {
    let (tally, cut, healed) = run(
        |b| b.lock_failover(LockFailover::after_outage(TTL)),
        |p, on| link(&p[0].redis, on),
    )
    .await;
    assert!(
        tally.holds_by(0, cut + TTL, healed) > 0,
        "{}",
        tally.summary()
    );
    assert!(tally.overlaps() > 0, "{}", tally.summary());
    // Tokens still order the grants: a resource that checks them rejects the older holder.
    assert_eq!(tally.regressions(), 0, "{}", tally.summary());
}
