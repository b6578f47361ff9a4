//! Failover, deadlines, breakers, strategies and health checks through the router, on tokio's
//! paused clock with scripted faults.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{ATTEMPT, DEADLINE, builder, drain, fault};
use resilient_core::BackendExt;
use resilient_core::error::Attempt;
use resilient_core::testing::Fault;
use resilient_core::{
    Backend, CircuitState, Error, HealthConfig, HealthState, LockOutcome, Operation, StorageEvent,
    Strategy, WritePolicy,
};
use tokio::time::{Instant, sleep};

/// On the paused clock, sleeping advances virtual time: every timer due meanwhile fires.
async fn pass(d: Duration) {
    sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_backend_costs_the_caller_exactly_the_attempt_timeout() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    redis.inject(Fault::Hang);
    let start = Instant::now();
    storage.set("k", "v", None).await.unwrap();
    assert_eq!(start.elapsed(), ATTEMPT);
    assert_eq!(storage.active_backend().as_deref(), Some("postgres"));
    assert_eq!(
        Backend::get(&*postgres, "k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

/// A current-thread runtime on tokio's paused clock.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A get on `storage`, whose backend hangs, fails with the attempt's timeout at exactly the
/// attempt timeout by the caller's clock.
async fn get_times_out(storage: &resilient_core::ResilientStorage) {
    let start = Instant::now();
    let error = storage.get("k").await.unwrap_err();
    assert_eq!(start.elapsed(), ATTEMPT);
    assert!(
        matches!(&error, Error::AllFailed { attempts, .. }
            if matches!(attempts.0[..], [Attempt { error: Error::Timeout { .. }, .. }])),
        "{error}"
    );
}

/// Runs `calls` on a thread of its own: calls that hang fail the test, saying `hung`, instead
/// of holding it.
fn within_a_minute(hung: &'static str, calls: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        calls();
        done.send(()).unwrap();
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{hung}"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the calls failed"),
        Ok(()) => {}
    }
}

/// Attempts are woken at their deadline by a task on the runtime that built the storage. A
/// call made on another runtime does not count on it when that is a current-thread runtime: it
/// may be kept but no longer run (its task never wakes), or be gone.
#[test]
fn a_hung_call_on_another_runtime_than_the_storages_still_times_out() {
    let redis = fault("redis");
    let home = paused_runtime();
    let storage = home.block_on(builder(&[&redis]).build()).unwrap();
    redis.inject(Fault::Hang);
    within_a_minute(
        "a call on another runtime hung: it waited on the storage's own task",
        move || {
            let away = paused_runtime();
            // `home` is kept, but nothing runs it any more.
            away.block_on(get_times_out(&storage));
            drop(home);
            away.block_on(get_times_out(&storage));
        },
    );
}

/// A storage built on a multi-thread runtime leaves its calls to that runtime's task, whatever
/// runtime they are made on: the task is driven for as long as the runtime lives. Its clock is
/// the real one. A call on a paused clock times out by that clock, at exactly the attempt
/// timeout: whether its clock is behind the real time (the task then wakes it early, by the
/// real clock) or ahead of it (the task would wake it late, after as much real time as the
/// clock was moved on: 600 s here, well over the minute the test waits).
#[test]
fn a_hung_call_on_a_paused_runtime_times_out_by_its_own_clock() {
    let redis = fault("redis");
    let home = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let storage = home.block_on(builder(&[&redis]).build()).unwrap();
    redis.inject(Fault::Hang);
    within_a_minute(
        "a call on a paused runtime waited on the real clock",
        move || {
            paused_runtime().block_on(async {
                get_times_out(&storage).await;
                tokio::time::advance(Duration::from_secs(600)).await;
                get_times_out(&storage).await;
            });
        },
    );
    drop(home);
}

#[tokio::test(start_paused = true)]
async fn the_whole_chain_never_passes_the_deadline() {
    let backends = [fault("a"), fault("b"), fault("c")];
    let storage = builder(&backends.iter().collect::<Vec<_>>())
        .build()
        .await
        .unwrap();
    backends.iter().for_each(|b| b.inject(Fault::Hang));
    let start = Instant::now();
    let err = storage.get("k").await.unwrap_err();
    assert_eq!(start.elapsed(), DEADLINE);
    match err {
        Error::DeadlineExceeded {
            operation: Operation::Get,
            deadline,
            attempts,
        } => {
            assert_eq!(deadline, DEADLINE);
            let budgets: Vec<_> = attempts
                .0
                .iter()
                .map(|a| match &a.error {
                    Error::Timeout { after, .. } => *after,
                    other => panic!("expected a timeout, got {other}"),
                })
                .collect();
            assert_eq!(
                budgets,
                vec![ATTEMPT, ATTEMPT, DEADLINE - ATTEMPT - ATTEMPT],
                "the last attempt only gets what is left of the deadline"
            );
        }
        other => panic!("expected DeadlineExceeded, got {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn when_every_backend_fails_the_error_lists_each_attempt_in_order() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    redis.inject(Fault::Fail);
    postgres.inject(Fault::Fail);
    let err = storage.set("k", "v", None).await.unwrap_err();
    let Error::AllFailed {
        operation,
        attempts,
    } = &err
    else {
        panic!("expected AllFailed, got {err}");
    };
    assert_eq!(*operation, Operation::Set);
    let names: Vec<_> = attempts.0.iter().map(|a| a.backend.as_str()).collect();
    assert_eq!(names, ["redis", "postgres"]);
    assert!(attempts.0.iter().all(|a| a.error.is_transient()));
    assert_eq!(
        err.to_string(),
        "set: every backend failed: [redis] redis: set failed: injected failure; \
         [postgres] postgres: set failed: injected failure"
    );
}

#[tokio::test(start_paused = true)]
async fn a_miss_is_an_answer_and_never_fails_over() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    // Under the default write-behind policy a miss also asks the copy below (see
    // failover_a_new_user_can_trust.rs); a cache that chose `Selected` asks nothing more.
    let storage = builder(&[&redis, &postgres])
        .write_policy(WritePolicy::Selected)
        .build()
        .await
        .unwrap();
    BackendExt::set(&*postgres, "k", Bytes::from_static(b"stale"), None)
        .await
        .unwrap();
    let before = postgres.calls();
    assert_eq!(storage.get("k").await.unwrap(), None);
    assert_eq!(postgres.calls(), before);
}

#[tokio::test(start_paused = true)]
async fn a_lock_held_by_another_holder_is_an_answer_and_never_fails_over() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    Backend::acquire_lock(&*redis, "job", "other", Duration::from_secs(30))
        .await
        .unwrap();
    let before = postgres.calls();
    let outcome = storage
        .acquire_lock("job", "me", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(outcome, LockOutcome::Held { holder: Some(ref h), .. } if h == "other"));
    assert_eq!(postgres.calls(), before);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_stops_calls_to_a_failing_backend_and_probes_it_after_the_open_time() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    let mut events = storage.subscribe();
    redis.inject(Fault::Fail);
    for _ in 0..3 {
        storage.get("k").await.unwrap();
    }
    assert_eq!(redis.calls(), 3);
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), 3, "an open circuit is not called");
    assert!(storage.health().backends["redis"].circuit_open);

    pass(Duration::from_millis(999)).await;
    storage.get("k").await.unwrap();
    assert_eq!(
        redis.calls(),
        3,
        "still open 1 ms before the open time ends"
    );
    pass(Duration::from_millis(1)).await;
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), 4, "one probe after the open time");
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), 4, "the failed probe reopened the circuit");

    redis.inject(Fault::Pass);
    pass(Duration::from_secs(2)).await;
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), 5);
    assert_eq!(storage.active_backend().as_deref(), Some("redis"));

    let circuit: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            StorageEvent::CircuitChanged {
                backend,
                from,
                to,
                open_for,
                ..
            } => Some((backend, from, to, open_for)),
            _ => None,
        })
        .collect();
    use CircuitState::*;
    let r = || "redis".to_owned();
    assert_eq!(
        circuit,
        vec![
            (r(), Closed, Open, Some(Duration::from_secs(1))),
            (r(), Open, HalfOpen, None),
            (r(), HalfOpen, Open, Some(Duration::from_secs(2))),
            (r(), Open, HalfOpen, None),
            (r(), HalfOpen, Closed, None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_slot_back() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    redis.inject(Fault::Fail);
    for _ in 0..3 {
        storage.get("k").await.unwrap();
    }
    pass(Duration::from_secs(1)).await;
    redis.inject(Fault::Hang);
    let cancelled = tokio::time::timeout(Duration::from_millis(10), storage.get("k")).await;
    assert!(cancelled.is_err(), "the caller gave up during the probe");
    assert_eq!(redis.calls(), 4);
    redis.inject(Fault::Pass);
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), 5, "the next call probes again");
    assert_eq!(
        storage.health().backends["redis"].circuit_state,
        CircuitState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn failover_stays_on_the_fallback_until_the_failback_delay_then_returns() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    storage.get("k").await.unwrap();
    let mut events = storage.subscribe();

    redis.inject(Fault::Fail);
    storage.get("k").await.unwrap();
    assert_eq!(storage.active_backend().as_deref(), Some("postgres"));
    redis.inject(Fault::Pass);
    let redis_calls = redis.calls();
    for _ in 0..5 {
        pass(Duration::from_millis(300)).await;
        storage.get("k").await.unwrap();
    }
    assert_eq!(
        redis.calls(),
        redis_calls,
        "no traffic back before the failback delay"
    );
    pass(Duration::from_millis(500)).await;
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), redis_calls + 1);
    assert_eq!(storage.active_backend().as_deref(), Some("redis"));

    let events = drain(&mut events);
    assert!(matches!(
        &events[0],
        StorageEvent::Failover { operation: Operation::Get, from, to, .. } if from == "redis" && to == "postgres"
    ));
    let switches: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StorageEvent::ActiveBackendChanged { from, to } => Some((from.clone(), to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        switches,
        vec![
            (Some("redis".to_owned()), "postgres".to_owned()),
            (Some("postgres".to_owned()), "redis".to_owned()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn priority_returns_to_the_primary_as_soon_as_it_answers() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .build()
        .await
        .unwrap();
    redis.inject(Fault::Fail);
    storage.get("k").await.unwrap();
    assert_eq!(storage.last_served_backend().as_deref(), Some("postgres"));
    redis.inject(Fault::Pass);
    storage.get("k").await.unwrap();
    assert_eq!(storage.last_served_backend().as_deref(), Some("redis"));
}

#[tokio::test(start_paused = true)]
async fn round_robin_alternates_and_skips_an_open_circuit() {
    let (a, b) = (fault("a"), fault("b"));
    let storage = builder(&[&a, &b])
        .strategy(Strategy::RoundRobin)
        .write_policy(WritePolicy::Selected)
        .build()
        .await
        .unwrap();
    for _ in 0..10 {
        storage.get("k").await.unwrap();
    }
    assert_eq!((a.calls(), b.calls()), (5, 5));
    assert!(storage.force_open("a", true));
    for _ in 0..10 {
        storage.get("k").await.unwrap();
    }
    assert_eq!((a.calls(), b.calls()), (5, 15));
}

#[tokio::test(start_paused = true)]
async fn latency_aware_moves_traffic_to_the_faster_backend() {
    let (slow, fast) = (fault("slow"), fault("fast"));
    let storage = builder(&[&slow, &fast])
        .strategy(Strategy::LatencyAware)
        .build()
        .await
        .unwrap();
    slow.inject(Fault::Delay(Duration::from_millis(20)));
    for _ in 0..100 {
        storage.get("k").await.unwrap();
    }
    assert!(slow.calls() <= 2, "slow got {} calls", slow.calls());
    assert!(fast.calls() >= 98);
}

#[tokio::test(start_paused = true)]
async fn health_checks_take_an_unhealthy_backend_out_with_hysteresis_and_bring_it_back() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .health(
            HealthConfig::default()
                .interval(Duration::from_secs(1), Duration::from_millis(100))
                .hysteresis(2, 3),
        )
        .build()
        .await
        .unwrap();
    let mut events = storage.subscribe();
    redis.inject_health(Some(Fault::Fail));
    // Checks run at 0 s, 1 s, 2 s: the third failure makes it unhealthy.
    pass(Duration::from_millis(1_500)).await;
    assert_eq!(
        storage.health().backends["redis"].health,
        HealthState::Degraded
    );
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), 1, "degraded is still routable");
    pass(Duration::from_secs(1)).await;
    assert_eq!(
        storage.health().backends["redis"].health,
        HealthState::Unhealthy
    );
    assert_eq!(
        storage.health().backends["redis"].last_error.as_deref(),
        Some("redis: health_check failed: injected failure")
    );
    storage.get("k").await.unwrap();
    assert_eq!(
        redis.calls(),
        1,
        "unhealthy is skipped even with a closed circuit"
    );

    redis.inject_health(None);
    pass(Duration::from_secs(1)).await; // one pass at 3 s: not enough
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), 1);
    pass(Duration::from_secs(1)).await; // second pass at 4 s
    assert_eq!(
        storage.health().backends["redis"].health,
        HealthState::Healthy
    );
    storage.get("k").await.unwrap();
    assert_eq!(redis.calls(), 2);

    let health: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            StorageEvent::HealthChanged {
                backend, from, to, ..
            } if backend == "redis" => Some((from, to)),
            _ => None,
        })
        .collect();
    use HealthState::*;
    assert_eq!(
        health,
        vec![
            (Unknown, Degraded),
            (Degraded, Unhealthy),
            (Unhealthy, Healthy)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_frozen_health_check_times_out_and_the_monitor_keeps_going() {
    let redis = fault("redis");
    let storage = builder(&[&redis])
        .health(
            HealthConfig::default()
                .interval(Duration::from_secs(1), Duration::from_millis(200))
                .hysteresis(1, 2),
        )
        .build()
        .await
        .unwrap();
    redis.inject_health(Some(Fault::Hang));
    // Each round is 200 ms of timeout plus 1 s of interval: checks start at 0 and 1.2 s, and
    // the second times out at 1.4 s.
    pass(Duration::from_millis(1_500)).await;
    assert_eq!(redis.health_checks(), 2);
    assert_eq!(
        storage.health().backends["redis"].health,
        HealthState::Unhealthy
    );
    assert_eq!(
        storage.health().backends["redis"].last_error.as_deref(),
        Some("health check timed out after 200ms")
    );
    pass(Duration::from_millis(1_200 * 5)).await;
    assert_eq!(redis.health_checks(), 7);
    storage.shutdown().await;
    let checks = redis.health_checks();
    pass(Duration::from_secs(10)).await;
    assert_eq!(
        redis.health_checks(),
        checks,
        "the monitor stops on shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn health_recovery_lets_an_open_circuit_probe_before_its_open_time_ends() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .health(
            HealthConfig::default()
                .interval(Duration::from_millis(100), Duration::from_millis(50))
                .hysteresis(1, 1),
        )
        .build()
        .await
        .unwrap();
    let mut events = storage.subscribe();
    // A first trip, a recovery, and a trip right after it: the open time backs off to 2 s.
    for _ in 0..2 {
        redis.inject(Fault::Fail);
        for _ in 0..3 {
            storage.get("k").await.unwrap();
        }
        redis.inject(Fault::Pass);
        pass(Duration::from_millis(1_100)).await;
        storage.get("k").await.unwrap();
    }
    redis.inject(Fault::Fail);
    for _ in 0..3 {
        storage.get("k").await.unwrap();
    }
    let tripped = Instant::now();
    let open_for = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            StorageEvent::CircuitChanged { open_for, .. } => open_for,
            _ => None,
        })
        .next_back();
    assert_eq!(
        open_for,
        Some(Duration::from_secs(4)),
        "the open time backed off"
    );
    redis.inject(Fault::Pass);
    pass(Duration::from_millis(1_100)).await;
    assert_eq!(
        storage.health().backends["redis"].circuit_state,
        CircuitState::Closed,
        "health recovery cut the 4 s open time short, and the check's probe closed it, after {:?}",
        tripped.elapsed()
    );
    storage.get("k").await.unwrap();
    assert_eq!(storage.active_backend().as_deref(), Some("redis"));
    assert_eq!(
        storage.health().backends["redis"].circuit_state,
        CircuitState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn health_recovery_does_not_cut_the_first_open_time_short() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(Strategy::Priority)
        .health(
            HealthConfig::default()
                .interval(Duration::from_millis(100), Duration::from_millis(50))
                .hysteresis(1, 1),
        )
        .build()
        .await
        .unwrap();
    redis.inject(Fault::Fail);
    for _ in 0..3 {
        storage.get("k").await.unwrap();
    }
    redis.inject(Fault::Pass);
    // Health passes again at once, but a backend that flaps faster than the open time must
    // not trip the breaker once per flap: it stays open for the first open time.
    pass(Duration::from_millis(900)).await;
    assert_eq!(
        storage.health().backends["redis"].circuit_state,
        CircuitState::Open
    );
    pass(Duration::from_millis(200)).await;
    assert_ne!(
        storage.health().backends["redis"].circuit_state,
        CircuitState::Open
    );
}

/// An in-process store that answers every read and write at once with a transient error.
#[derive(Debug)]
struct FailsAtOnce;

#[resilient_core::async_trait]
impl Backend for FailsAtOnce {
    fn name(&self) -> &str {
        "at-once"
    }
    fn scheme(&self) -> &str {
        "at-once"
    }
    fn capabilities(&self) -> resilient_core::Capabilities {
        resilient_core::Capabilities::new()
    }
    async fn health_check(&self) -> resilient_core::Result<resilient_core::HealthProbe> {
        Ok(resilient_core::HealthProbe::Healthy)
    }
    async fn get(&self, _: &str) -> resilient_core::Result<Option<Bytes>> {
        unreachable!("answered at once")
    }
    fn try_get_now(&self, _: &str) -> Option<resilient_core::Result<Option<Bytes>>> {
        Some(Err(Error::backend(
            "at-once",
            Operation::Get,
            "failed at once",
        )))
    }
    async fn write(
        &self,
        _: &str,
        _: resilient_core::KeyWrite,
        _: resilient_core::WriteOptions,
    ) -> resilient_core::Result<resilient_core::WriteOutcome> {
        unreachable!("answered at once")
    }
    fn try_write_now(
        &self,
        _: &str,
        _: &resilient_core::KeyWrite,
        _: &resilient_core::WriteOptions,
    ) -> Option<resilient_core::Result<resilient_core::WriteOutcome>> {
        Some(Err(Error::backend(
            "at-once",
            Operation::Set,
            "failed at once",
        )))
    }
}

/// `FailsAtOnce` first, a fault-injectable spare second, under PRIORITY (which always tries
/// the first).
async fn fails_at_once_then(
    spare: &std::sync::Arc<resilient_core::testing::FaultBackend>,
) -> resilient_core::ResilientStorage {
    resilient_core::ResilientStorage::builder()
        .strategy(Strategy::Priority)
        .memory_fallback(false)
        .breaker(common::breaker())
        .health(HealthConfig::default().enabled(false))
        .backend(std::sync::Arc::new(FailsAtOnce), 1)
        .backend(spare.clone() as std::sync::Arc<dyn Backend>, 2)
        .build()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_write_failed_at_once_fails_over_and_counts_toward_the_breaker() {
    let spare = fault("spare");
    let storage = fails_at_once_then(&spare).await;
    storage.set("k", "v", None).await.unwrap();
    assert_eq!(spare.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(storage.delete("k").await.unwrap(), "the spare held it");
    assert_eq!(spare.get("k").await.unwrap(), None);
    storage.set("k", "w", None).await.unwrap();
    let report = storage.health();
    assert_eq!(
        report.backends["at-once"].circuit_state,
        CircuitState::Open,
        "three failures in a row: {report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_answered_at_once_fails_over_and_counts_toward_the_breaker() {
    let spare = fault("spare");
    spare
        .set("k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    let storage = fails_at_once_then(&spare).await;
    let mut events = storage.subscribe();
    assert_eq!(storage.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(
        drain(&mut events).iter().any(|e| matches!(
            e,
            StorageEvent::Failover { from, to, .. } if from == "at-once" && to == "spare"
        )),
        "the failover is reported from the backend that failed at once"
    );
    // Two more: three in a row trip the breaker, though none is in its rate window.
    for _ in 0..2 {
        storage.get("k").await.unwrap();
    }
    let report = storage.health();
    assert_eq!(
        report.backends["at-once"].circuit_state,
        CircuitState::Open,
        "{report:?}"
    );
}
