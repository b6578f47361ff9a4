//! A lock guard renews its lease, reports when the lock is lost, releases on drop, and gives
//! the lock up at its hold limit.

mod common;

use std::time::Duration;

use common::{builder, fault};
use resilient_core::testing::Fault;
use resilient_core::{Backend, LockLost, LockOptions, Operation};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(start_paused = true)]
async fn the_guard_keeps_the_lock_well_past_its_ttl() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let guard = storage
        .lock("job", "w1", LockOptions::new(TTL))
        .await
        .unwrap()
        .expect("free");
    sleep(TTL * 5).await;
    assert_eq!(guard.lost_reason(), None);
    assert!(
        storage
            .lock("job", "w2", LockOptions::new(TTL))
            .await
            .unwrap()
            .is_none(),
        "still held after five TTLs"
    );
    assert!(guard.release().await.unwrap());
    assert!(
        storage
            .lock("job", "w2", LockOptions::new(TTL))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_releases_the_lock() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let guard = storage
        .lock("job", "w1", LockOptions::new(TTL))
        .await
        .unwrap()
        .unwrap();
    drop(guard);
    sleep(Duration::from_millis(10)).await;
    assert!(
        storage
            .lock("job", "w2", LockOptions::new(TTL))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_ran_out_and_was_taken_is_reported_expired() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let mut guard = storage
        .lock("job", "w1", LockOptions::new(TTL))
        .await
        .unwrap()
        .unwrap();
    // Another process takes the lock after the lease ran out behind our back.
    assert!(Backend::release_lock(&*redis, "job", "w1").await.unwrap());
    assert!(
        Backend::acquire_lock(&*redis, "job", "w2", TTL)
            .await
            .unwrap()
            .is_acquired()
    );
    let start = Instant::now();
    assert_eq!(guard.lost().await, LockLost::Expired);
    assert!(start.elapsed() <= TTL / 3, "noticed at the next renewal");
}

#[tokio::test(start_paused = true)]
async fn renewals_that_keep_failing_report_the_lock_lost_within_one_ttl() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let mut guard = storage
        .lock("job", "w1", LockOptions::new(TTL))
        .await
        .unwrap()
        .unwrap();
    redis.inject_for(Operation::ExtendLock, Fault::Fail);
    let start = Instant::now();
    assert_eq!(guard.lost().await, LockLost::Unreachable);
    let after = start.elapsed();
    assert!(
        after >= TTL && after <= TTL + TTL / 3,
        "reported at {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn valid_for_reaches_zero_when_the_lease_ends_before_the_loss_signal() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let guard = storage
        .lock("job", "w1", LockOptions::new(TTL))
        .await
        .unwrap()
        .unwrap();
    // Renewals succeed: the lease stays valid well past one TTL.
    tokio::time::sleep(TTL * 2).await;
    assert!(guard.valid_for() > TTL / 2, "{:?}", guard.valid_for());

    redis.inject_for(Operation::ExtendLock, Fault::Fail);
    let failing_from = Instant::now();
    let mut step = failing_from;
    while guard.valid_for() > Duration::ZERO {
        assert!(guard.valid_for() <= TTL);
        step += Duration::from_millis(10);
        tokio::time::sleep_until(step).await;
    }
    // The last successful renewal was sent at most one period (TTL / 3) before the failures
    // began, and the lease counts from when it was sent.
    let ran_out = Instant::now().duration_since(failing_from);
    assert!(
        ran_out >= TTL - TTL / 3 && ran_out <= TTL + Duration::from_millis(10),
        "valid_for ran out {ran_out:?} after renewals began to fail"
    );
    assert_eq!(guard.lost_reason(), None, "the loss signal comes later");
}

#[tokio::test(start_paused = true)]
async fn the_hold_limit_releases_the_lock() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let mut guard = storage
        .lock(
            "job",
            "w1",
            LockOptions::new(TTL).max_hold(Duration::from_secs(10)),
        )
        .await
        .unwrap()
        .unwrap();
    let start = Instant::now();
    assert_eq!(guard.lost().await, LockLost::MaxHoldReached);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert!(
        storage
            .lock("job", "w2", LockOptions::new(TTL))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_period_not_below_the_ttl_is_refused() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let err = storage
        .lock("job", "w1", LockOptions::new(TTL).renew_every(TTL))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lock.renew_every"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_hold_limit_past_the_clocks_range_is_no_limit_and_no_panic() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let guard = storage
        .lock("job", "w1", LockOptions::new(TTL).max_hold(Duration::MAX))
        .await
        .unwrap()
        .expect("free");
    sleep(TTL * 5).await;
    assert_eq!(guard.lost_reason(), None);
    drop(guard);
    // Released on drop: the next holder gets it.
    sleep(Duration::from_millis(10)).await;
    assert!(
        storage
            .lock("job", "w2", LockOptions::new(TTL))
            .await
            .unwrap()
            .is_some()
    );
}
