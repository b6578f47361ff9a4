//! Any duration or count a user can hand the builder, the configuration (TOML and environment),
//! a URL or a call is either refused with a typed error naming the field, or works: never a
//! panic, and a lock taken with any hold limit is released.

use std::time::Duration;

use proptest::prelude::*;
use resilient_backend_memory::MemoryConfig;
use resilient_core::{
    BackendUrl, BreakerConfig, Error, HealthConfig, LoadOptions, LockFailover, LockOptions,
    LockOutcome, ResilientStorage, StorageBuilder, StorageConfig,
};

/// The durations users get wrong: the extremes, the tiny, and anything at all.
fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_secs),
        (0u64..5_000).prop_map(Duration::from_millis),
    ]
}

/// The builder settings that take a duration.
const SETTINGS: usize = 13;

fn with_setting(builder: StorageBuilder, which: usize, d: Duration) -> StorageBuilder {
    let breaker = BreakerConfig::default();
    let health = HealthConfig::default();
    match which {
        0 => builder.attempt_timeout(d),
        1 => builder.deadline(d),
        2 => builder.failback_delay(d),
        3 => builder.memory_ttl_cap(d),
        4 => builder.breaker(breaker.slow_calls(d, 0.5)),
        5 => builder.breaker(breaker.window(d, 10)),
        6 => builder.breaker(breaker.open_duration(d, d)),
        7 => builder.breaker(breaker.open_duration(Duration::from_secs(1), d)),
        8 => builder.health(health.interval(d, d)),
        9 => builder.health(health.interval(Duration::from_secs(1), d)),
        10 => builder.health(health.degraded_latency(d)),
        11 => builder.lock_failover(LockFailover::after_outage(d)),
        _ => builder.event_capacity(usize::try_from(d.as_secs()).unwrap_or(usize::MAX)),
    }
}

fn is_config(error: &Error) -> bool {
    matches!(error, Error::Config { .. })
}

/// Every call with `d` as its TTL, lease or hold limit: answered or refused, and a lock taken
/// is given back.
async fn exercise(storage: &ResilientStorage, d: Duration) {
    for ttl in [None, Some(d)] {
        match storage.set("k", "v", ttl).await {
            Ok(()) => {
                let _ = storage.get("k").await.unwrap();
            }
            Err(e) => assert!(e.is_caller_error(), "{e:?}"),
        }
    }
    storage.delete("k").await.unwrap();
    let caller = |e: Error| assert!(e.is_caller_error(), "{e:?}");
    for delta in [i64::MAX, 1, i64::MIN] {
        if let Err(e) = storage.increment("n", delta, Some(d)).await {
            caller(e);
        }
    }
    if let Err(e) = storage.set_if_absent("x", "v", Some(d)).await {
        caller(e);
    }
    if let Err(e) = storage.compare_and_set("x", Some(b"v"), "w", Some(d)).await {
        caller(e);
    }
    match storage.set_many([("a", "1"), ("", "2")], Some(d)).await {
        Ok(answers) => assert!(answers[1].as_ref().is_err_and(Error::is_caller_error)),
        Err(e) => caller(e),
    }
    let _ = storage.get_many(&["a", "", "b"]).await.unwrap();
    let options = LoadOptions::new(d)
        .fail_safe(d)
        .soft_timeout(d)
        .hard_timeout(d)
        .eager_refresh(0.5)
        .fleet_single_flight(d);
    if let Err(e) = storage
        .get_or_load("c", &options, || async { Ok::<_, std::io::Error>("v") })
        .await
    {
        caller(e);
    }
    match storage.acquire_lock("l", "h", d).await {
        Ok(LockOutcome::Acquired(_)) => assert!(storage.release_lock("l", "h").await.unwrap()),
        Ok(other) => panic!("a free lock: {other:?}"),
        Err(e) => assert!(e.is_caller_error(), "{e:?}"),
    }
    let options = LockOptions::new(Duration::from_secs(3)).max_hold(d);
    let guard = storage
        .lock("g", "h", options)
        .await
        .unwrap()
        .expect("free");
    assert!(guard.release().await.unwrap() || d < Duration::from_secs(1));
    match storage
        .lock("g", "h", LockOptions::new(d).renew_every(d / 2))
        .await
    {
        Ok(Some(guard)) => {
            let _ = guard.release().await;
        }
        Ok(None) => {}
        Err(e) => assert!(e.is_caller_error(), "{e:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_duration_in_any_setting_is_refused_by_name_or_works(
        which in 0..SETTINGS,
        d in durations(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let builder = with_setting(ResilientStorage::builder().local_locks(true), which, d);
            match builder.build().await {
                Ok(storage) => {
                    exercise(&storage, Duration::from_millis(500)).await;
                    storage.shutdown().await;
                }
                Err(e) => assert!(is_config(&e), "setting {which} = {d:?}: {e:?}"),
            }
        });
    }

    #[test]
    fn any_duration_in_a_call_is_refused_or_works(d in durations()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let storage = ResilientStorage::builder().local_locks(true).build().await.unwrap();
            exercise(&storage, d).await;
            storage.shutdown().await;
        });
    }

    #[test]
    fn any_text_in_a_url_is_parsed_or_refused(url in ".{0,64}", option in "[a-z_]{1,12}", value in ".{0,24}") {
        let _ = BackendUrl::parse(&url).map(|u| (u.to_string(), format!("{u:?}")));
        if let Ok(url) = BackendUrl::parse(&format!("memory://?{option}={value}")) {
            let _ = MemoryConfig::from_url(&url);
        }
    }
}

#[test]
fn huge_durations_in_the_configuration_file_are_refused_by_name() {
    for field in [
        "attempt_timeout",
        "deadline",
        "failback_delay",
        "memory_ttl_cap",
    ] {
        for value in ["18446744073709551615s", "1e19s", "0s", "584942417355y"] {
            let toml = format!("{field} = \"{value}\"");
            let refused = match StorageConfig::from_toml_str(&toml) {
                Err(e) => e,
                Ok(config) => match config.into_builder().unwrap().validate() {
                    Err(e) => e,
                    Ok(()) => continue,
                },
            };
            assert!(is_config(&refused), "{toml}: {refused:?}");
            assert!(refused.to_string().contains(field), "{toml}: {refused}");
        }
    }
    for (section, field) in [
        ("breaker", "open_duration"),
        ("breaker", "max_open_duration"),
        ("breaker", "slow_call"),
        ("breaker", "window"),
        ("health", "interval"),
        ("health", "timeout"),
    ] {
        let toml = format!("[{section}]\n{field} = \"18446744073709551615s\"");
        let refused = match StorageConfig::from_toml_str(&toml) {
            Err(e) => e,
            Ok(config) => config.into_builder().unwrap().validate().unwrap_err(),
        };
        assert!(is_config(&refused), "{toml}: {refused:?}");
    }
}
