//! Lock ownership holds when leases expire while their holders work: another holder's lock is
//! never released or extended, and every grant carries a new, larger token.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resilient_core::{Backend, LockOutcome};
use resilient_test_support::RedisServer;

#[derive(Debug, Clone)]
enum Record {
    Grant {
        token: u64,
        at: Instant,
    },
    Owned {
        token: u64,
        started: Instant,
        ok: bool,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_checks_hold_when_leases_expire_mid_work() {
    let server = RedisServer::start().unwrap();
    let backend = Arc::new(common::backend(&server.url()));
    let ttl = Duration::from_millis(20);
    let records = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(4);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (backend, records) = (backend.clone(), records.clone());
            tokio::spawn(async move {
                let holder = format!("worker-{w}");
                while Instant::now() < until {
                    match backend.acquire_lock("race", &holder, ttl).await.unwrap() {
                        LockOutcome::Acquired(grant) => {
                            let token = grant.token.0;
                            records.lock().unwrap().push(Record::Grant {
                                token,
                                at: Instant::now(),
                            });
                            // Work for up to twice the lease: about half the leases expire.
                            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..40))).await;
                            if fastrand::bool() {
                                let started = Instant::now();
                                let ok = backend
                                    .extend_lock("race", &holder, ttl)
                                    .await
                                    .unwrap()
                                    .is_some();
                                records
                                    .lock()
                                    .unwrap()
                                    .push(Record::Owned { token, started, ok });
                            }
                            let started = Instant::now();
                            let ok = backend.release_lock("race", &holder).await.unwrap();
                            records
                                .lock()
                                .unwrap()
                                .push(Record::Owned { token, started, ok });
                        }
                        _ => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let records = records.lock().unwrap().clone();
    let grants: Vec<(u64, Instant)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Grant { token, at } => Some((*token, *at)),
            _ => None,
        })
        .collect();
    let mut tokens: Vec<u64> = grants.iter().map(|g| g.0).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        grants.len(),
        "every grant has a token of its own"
    );

    let (mut succeeded, mut refused) = (0, 0);
    for record in &records {
        if let Record::Owned { token, started, ok } = record {
            if *ok {
                succeeded += 1;
                let overtaken = grants.iter().find(|(t, at)| t > token && at < started);
                assert!(
                    overtaken.is_none(),
                    "the holder of token {token} released or extended a lock already granted to token {:?}",
                    overtaken.map(|o| o.0)
                );
            } else {
                refused += 1;
            }
        }
    }
    println!(
        "{} grants, {succeeded} releases/extends by the holder, {refused} refused after expiry",
        grants.len()
    );
    assert!(
        grants.len() >= 80,
        "enough contention: {} grants",
        grants.len()
    );
    assert!(
        refused > 0,
        "some leases expired mid-work and their late release was refused"
    );
}
