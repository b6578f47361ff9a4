//! A killed, frozen or slow Redis costs each call a bounded time, and never mixes up replies.

mod common;

use resilient_core::BackendExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use resilient_core::{Backend, ResilientStorage};
use resilient_test_support::{FaultProxy, ProxyMode, RedisServer, Workload};

const ATTEMPT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_calls_fast_and_is_used_again_within_a_second_of_its_restart() {
    let mut server = RedisServer::start().unwrap();
    let backend = Arc::new(common::backend(&server.url()));
    backend
        .set("warm", Bytes::from_static(b"up"), None)
        .await
        .unwrap();
    let load = {
        let backend = backend.clone();
        Workload::start(16, Duration::ZERO, move |w, i| {
            let backend = backend.clone();
            async move {
                let key = format!("w{w}-{}", i % 100);
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
    // SIGKILL has landed and the process is reaped: the port is closed from here on.
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted_at = Instant::now();
    // The handle keeps the restarted server alive until the end of the test.
    let restarted = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        server
    });
    let first_success = load
        .first_success_after(restarted_at, Duration::from_secs(5))
        .await
        .expect("a call succeeds within 5 s of the restart");
    let calls = load.stop().await;
    let _server = restarted.await.unwrap();

    let in_flight: Vec<_> = calls
        .iter()
        .filter(|c| c.start < killed_at && c.end > killed_at)
        .collect();
    let slowest_in_flight = in_flight
        .iter()
        .map(|c| c.end - killed_at)
        .max()
        .unwrap_or_default();
    let during: Vec<_> = calls
        .iter()
        .filter(|c| c.start > killed_at && c.end < restarted_at)
        .collect();
    let slowest_during = during
        .iter()
        .map(|c| c.end - c.start)
        .max()
        .unwrap_or_default();
    let recovery = first_success - restarted_at;
    println!(
        "calls {}: in flight at the kill {} (slowest ended {:?} after it), during the outage {} \
         (all failed: {}, slowest {:?}), first success {:?} after the restart began",
        calls.len(),
        in_flight.len(),
        slowest_in_flight,
        during.len(),
        during.iter().all(|c| !c.ok),
        slowest_during,
        recovery
    );
    assert!(
        slowest_in_flight < Duration::from_millis(100),
        "in-flight calls end within milliseconds"
    );
    assert!(!during.is_empty() && during.iter().all(|c| !c.ok));
    assert!(
        slowest_during < ATTEMPT,
        "each call fails within the attempt timeout: {slowest_during:?}"
    );
    assert!(
        recovery < Duration::from_secs(1),
        "used again within 1 s of the restart: {recovery:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_each_call_at_the_response_timeout() {
    let server = RedisServer::start().unwrap();
    let backend = common::backend(&format!("{}?response_timeout=200ms", server.url()));
    backend
        .set("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    server.freeze().unwrap();
    for _ in 0..10 {
        let start = Instant::now();
        assert!(backend.get("k").await.is_err());
        let took = start.elapsed();
        assert!(took < Duration::from_millis(220), "{took:?}");
    }
    server.thaw().unwrap();
    assert_eq!(backend.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_router_a_frozen_redis_costs_at_most_the_attempt_timeout_and_no_failure() {
    let server = RedisServer::start().unwrap();
    let attempt = Duration::from_millis(300);
    let storage = ResilientStorage::builder()
        .backend(Arc::new(common::backend(&server.url())), 1)
        .attempt_timeout(attempt)
        .build()
        .await
        .unwrap();
    storage.set("k", "v", None).await.unwrap();
    server.freeze().unwrap();
    let mut took = Vec::new();
    for i in 0..30 {
        let start = Instant::now();
        storage.set(&format!("k{i}"), "v", None).await.unwrap();
        took.push(start.elapsed());
    }
    server.thaw().unwrap();
    let slowest = took.iter().max().copied().unwrap_or_default();
    let slow = took.iter().filter(|t| **t >= attempt / 2).count();
    println!("slowest call while frozen: {slowest:?}; calls that waited on redis: {slow}");
    assert!(slowest <= attempt.mul_f64(1.1), "{slowest:?}");
    assert_eq!(
        slow, 1,
        "only the first call waits; the failover strategy then stays on memory"
    );
    assert_eq!(storage.active_backend().as_deref(), Some("memory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_reads_cut_short_behind_added_latency_never_get_another_keys_reply() {
    let server = RedisServer::start().unwrap();
    let direct = Arc::new(common::backend(&server.url()));
    let cycles_per_worker = 625;
    let workers = 16;
    let total = cycles_per_worker * workers;
    let loads: Vec<_> = (0..workers)
        .map(|w| {
            let direct = direct.clone();
            tokio::spawn(async move {
                for i in 0..cycles_per_worker {
                    let n = w * cycles_per_worker + i;
                    direct
                        .set(&format!("a{n}"), Bytes::from(format!("va{n}")), None)
                        .await
                        .unwrap();
                    direct
                        .set(&format!("b{n}"), Bytes::from(format!("vb{n}")), None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for load in loads {
        load.await.unwrap();
    }

    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let backend = Arc::new(common::backend(&format!("redis://{}", proxy.addr())));
    backend.get("a0").await.unwrap();
    proxy.set_mode(ProxyMode::Latency {
        fixed: Duration::from_millis(3),
        jitter: Duration::from_millis(1),
    });
    let timeouts = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (backend, timeouts) = (backend.clone(), timeouts.clone());
            tokio::spawn(async move {
                for i in 0..cycles_per_worker {
                    let n = w * cycles_per_worker + i;
                    // Give up on this read after 1 ms: its reply is still on the way.
                    match tokio::time::timeout(
                        Duration::from_millis(1),
                        backend.get(&format!("a{n}")),
                    )
                    .await
                    {
                        Err(_) => {
                            timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(read) => {
                            assert_eq!(read.unwrap().as_deref(), Some(format!("va{n}").as_bytes()))
                        }
                    }
                    let read = backend.get(&format!("b{n}")).await.unwrap();
                    assert_eq!(
                        read.as_deref(),
                        Some(format!("vb{n}").as_bytes()),
                        "cycle {n}: the read of b{n} got another key's reply"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let timed_out = timeouts.load(Ordering::Relaxed);
    println!("{total} cycles, {timed_out} reads timed out, every following read matched its key");
    assert!(
        timed_out as usize >= total * 9 / 10,
        "only {timed_out} of {total} reads timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sigstop_cycles_never_hand_a_late_reply_to_a_later_request() {
    const CYCLES: usize = 10_000;
    let server = RedisServer::start().unwrap();
    let backend = Arc::new(common::backend(&server.url()));
    let loads: Vec<_> = (0..16)
        .map(|w| {
            let backend = backend.clone();
            tokio::spawn(async move {
                for n in (w..CYCLES).step_by(16) {
                    for prefix in ["a", "b"] {
                        let key = format!("{prefix}{n}");
                        backend
                            .set(&key, Bytes::from(format!("v{key}")), None)
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for load in loads {
        load.await.unwrap();
    }
    let mut timed_out = 0;
    for n in 0..CYCLES {
        server.freeze().unwrap();
        // The read of a{n} gives up while the server is stopped; its reply comes after the thaw.
        match tokio::time::timeout(Duration::from_millis(2), backend.get(&format!("a{n}"))).await {
            Err(_) => timed_out += 1,
            Ok(read) => assert_eq!(read.unwrap().as_deref(), Some(format!("va{n}").as_bytes())),
        }
        server.thaw().unwrap();
        let read = backend.get(&format!("b{n}")).await.unwrap();
        assert_eq!(
            read.as_deref(),
            Some(format!("vb{n}").as_bytes()),
            "cycle {n}: the read of b{n} got another reply"
        );
    }
    println!(
        "{CYCLES} SIGSTOP/SIGCONT cycles: {timed_out} reads timed out while frozen, every next read matched its key"
    );
    assert!(
        timed_out >= CYCLES / 2,
        "only {timed_out} reads timed out: the freezes did not bite"
    );
}
