//! A killed or frozen PostgreSQL costs each call a bounded time, recovers by itself, and keeps
//! every acknowledged write.

mod common;

use resilient_core::BackendExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use resilient_core::Backend;
use resilient_test_support::{PostgresServer, Workload};

/// The backend's query timeout in these tests, playing the router's attempt timeout.
const ATTEMPT: Duration = Duration::from_millis(500);

fn url(server: &PostgresServer) -> String {
    format!(
        "{}?query_timeout=500ms&acquire_timeout=400ms&statement_timeout=400ms",
        server.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_then_restarted_fails_within_the_timeout_and_recovers_by_itself() {
    let mut server = PostgresServer::start().unwrap();
    let backend = common::backend(&url(&server));
    // The first call creates the tables under the 500 ms query timeout; on a busy machine
    // starting other servers for other tests, that can take longer: warming up is not what
    // this test measures.
    let warm = Instant::now();
    while let Err(error) = backend.set("warm", Bytes::from_static(b"up"), None).await {
        assert!(
            warm.elapsed() < Duration::from_secs(20),
            "never warmed up: {error}"
        );
    }
    let load = {
        let backend = backend.clone();
        Workload::start(8, Duration::from_millis(5), move |w, i| {
            let backend = backend.clone();
            async move {
                let key = format!("w{w}-{}", i % 50);
                if i % 2 == 0 {
                    backend
                        .set(&key, Bytes::from(key.clone()), None)
                        .await
                        .is_ok()
                } else {
                    backend.get(&key).await.is_ok()
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().unwrap();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restart_began = Instant::now();
    let (server, accepting_at) = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        (server, Instant::now())
    })
    .await
    .unwrap();
    let first_success = load
        .first_success_after(accepting_at, Duration::from_secs(5))
        .await
        .expect("a call succeeds within 5 s of the server accepting connections");
    let calls = load.stop().await;
    drop(server);
    let during: Vec<_> = calls
        .iter()
        .filter(|c| c.start > killed_at && c.end < restart_began)
        .collect();
    let slowest = calls
        .iter()
        .map(|c| c.end - c.start)
        .max()
        .unwrap_or_default();
    let recovery = first_success - accepting_at;
    println!(
        "calls {}, during the outage {} (all failed: {}), slowest call {slowest:?}, \
         first success {recovery:?} after the server accepted connections",
        calls.len(),
        during.len(),
        during.iter().all(|c| !c.ok)
    );
    assert!(!during.is_empty() && during.iter().all(|c| !c.ok));
    assert!(
        slowest <= ATTEMPT + Duration::from_millis(50),
        "{slowest:?}"
    );
    assert!(recovery < Duration::from_secs(1), "{recovery:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_postmaster_and_then_frozen_backends_never_hold_a_call_past_the_timeout() {
    let server = PostgresServer::start().unwrap();
    let backend = common::backend(&url(&server));
    for i in 0..20 {
        backend
            .set(&format!("k{i}"), Bytes::from_static(b"v"), None)
            .await
            .unwrap();
    }
    let mut slowest = Duration::ZERO;
    let mut measure = async |what: &str| {
        for i in 0..20 {
            let start = Instant::now();
            let _ = backend.get(&format!("k{i}")).await;
            let took = start.elapsed();
            slowest = slowest.max(took);
            assert!(
                took <= ATTEMPT + Duration::from_millis(50),
                "{what}: a call took {took:?}"
            );
        }
    };
    server.freeze().unwrap();
    measure("postmaster frozen").await;
    // Established sessions keep working without the postmaster; now freeze the processes that
    // serve this backend's connections.
    server.thaw().unwrap();
    let pids: Vec<u32> = server
        .psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'resilient-storage'")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(!pids.is_empty());
    for pid in &pids {
        server.freeze_pid(*pid).unwrap();
    }
    measure("backend processes frozen").await;
    for pid in &pids {
        server.thaw_pid(*pid).unwrap();
    }
    println!("slowest call while frozen: {slowest:?}");
    let give_up = Instant::now() + Duration::from_secs(5);
    while backend.get("k0").await.is_err() {
        assert!(
            Instant::now() < give_up,
            "calls succeed again after the thaw"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_an_immediate_stop() {
    let mut server = PostgresServer::start().unwrap();
    let backend = common::backend(&url(&server));
    // Per key: the newest acknowledged version, and the newest version attempted at all. A write
    // that errored may still have committed, so the stored version may lie between the two.
    let versions = Arc::new(Mutex::new(HashMap::<String, (Option<u64>, u64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (backend, versions, stop) = (backend.clone(), versions.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{}", i % 300);
                    versions
                        .lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_insert((None, 0))
                        .1 = i;
                    if backend
                        .set(&key, Bytes::from(i.to_string()), None)
                        .await
                        .is_ok()
                    {
                        versions.lock().unwrap().get_mut(&key).unwrap().0 = Some(i);
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut server = tokio::task::spawn_blocking(move || {
        server.stop_immediate().unwrap();
        server
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    server.restart().unwrap();
    let versions = versions.lock().unwrap().clone();
    let reader = common::backend(&url(&server));
    let mut checked = 0;
    for (key, (acknowledged, attempted)) in &versions {
        let Some(acknowledged) = acknowledged else {
            continue;
        };
        let stored: u64 = String::from_utf8(
            reader
                .get(key)
                .await
                .unwrap()
                .expect("acknowledged key lost")
                .to_vec(),
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!(
            (*acknowledged..=*attempted).contains(&stored),
            "{key}: stored version {stored}, but version {acknowledged} was acknowledged"
        );
        checked += 1;
    }
    assert!(
        checked > 100,
        "only {checked} keys had an acknowledged write"
    );
    println!("{checked} keys: every acknowledged write present after pg_ctl stop -m immediate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_leases_expire_on_the_servers_clock() {
    let server = PostgresServer::start().unwrap();
    let backend = common::backend(&url(&server));
    let grant = backend
        .acquire_lock("job", "a", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(grant.is_acquired());
    let expires = server
        .psql("SELECT extract(epoch FROM expires_at - now()) * 1000 FROM resilient_kv_locks WHERE name = 'job'")
        .unwrap();
    let remaining: f64 = expires.parse().unwrap();
    assert!(
        remaining > 0.0 && remaining <= 300.0,
        "lease computed on the server: {remaining} ms left"
    );
}
