//! The user-facing contract: input validation, lock policy, JSON values, the health report,
//! configuration and shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{builder, fault};
use resilient_core::key::MAX_TTL;
use resilient_core::testing::Fault;
use resilient_core::{
    Backend, Error, KeyPolicy, LockFailover, LockOutcome, OverallStatus, ResilientStorage,
    StorageConfig,
};
use serde::{Deserialize, Serialize};

#[tokio::test(start_paused = true)]
async fn bad_input_gets_a_typed_error_and_stores_nothing() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    let big = Bytes::from(vec![0_u8; 4 * 1024 * 1024 + 1]);
    let long_key = "k".repeat(1025);
    let cases: Vec<(&str, Error)> = vec![
        ("empty key", storage.set("", "v", None).await.unwrap_err()),
        (
            "NUL in key",
            storage.set("a\0b", "v", None).await.unwrap_err(),
        ),
        (
            "over-long key",
            storage.set(&long_key, "v", None).await.unwrap_err(),
        ),
        (
            "over-large value",
            storage.set("big", big, None).await.unwrap_err(),
        ),
        (
            "zero TTL",
            storage
                .set("zero", "v", Some(Duration::ZERO))
                .await
                .unwrap_err(),
        ),
        (
            "TTL overflow",
            storage
                .set("huge", "v", Some(Duration::MAX))
                .await
                .unwrap_err(),
        ),
        (
            "TTL just past the maximum",
            storage
                .set("huge2", "v", Some(MAX_TTL + Duration::from_secs(1)))
                .await
                .unwrap_err(),
        ),
        ("get with empty key", storage.get("").await.unwrap_err()),
        ("delete with NUL", storage.delete("\0").await.unwrap_err()),
        (
            "lock with empty holder",
            storage
                .acquire_lock("l", "", Duration::from_secs(1))
                .await
                .unwrap_err(),
        ),
        (
            "lock with zero TTL",
            storage
                .acquire_lock("l", "h", Duration::ZERO)
                .await
                .unwrap_err(),
        ),
        (
            "extend with TTL overflow",
            storage
                .extend_lock("l", "h", Duration::MAX)
                .await
                .unwrap_err(),
        ),
    ];
    for (what, err) in &cases {
        assert!(
            err.is_caller_error(),
            "{what}: {err} should be a caller error"
        );
    }
    assert!(matches!(cases[0].1, Error::InvalidKey(_)));
    assert!(matches!(
        cases[3].1,
        Error::ValueTooLarge {
            size: 4194305,
            max: 4194304
        }
    ));
    assert!(matches!(cases[4].1, Error::InvalidTtl { .. }));
    assert!(matches!(cases[9].1, Error::InvalidHolder(_)));
    assert_eq!(redis.calls(), 0, "no backend saw any of it");
    for key in ["big", "zero", "huge", "huge2"] {
        assert_eq!(Backend::get(&*redis, key).await.unwrap(), None);
    }
    let report = storage.health();
    assert_eq!(report.backends["redis"].consecutive_failures, 0);
    assert_eq!(report.status, OverallStatus::Healthy);
}

#[tokio::test(start_paused = true)]
async fn error_messages_do_not_contain_keys_or_values() {
    let redis = fault("redis");
    let storage = builder(&[&redis]).build().await.unwrap();
    redis.inject(Fault::Fail);
    let err = storage
        .set("secret-key-name", "secret-value", None)
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("secret-key-name") && !shown.contains("secret-value"),
        "{shown}"
    );
    let long = "secret".repeat(500);
    let err = storage.get(&long).await.unwrap_err().to_string();
    assert!(!err.contains("secret"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_namespace_prefixes_keys_and_lock_names_at_the_backend() {
    let redis = fault("redis");
    let storage = builder(&[&redis])
        .keys(KeyPolicy::default().namespace("app:"))
        .build()
        .await
        .unwrap();
    storage.set("k", "v", None).await.unwrap();
    assert_eq!(
        Backend::get(&*redis, "app:k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    let grant = storage
        .acquire_lock("job", "w1", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        grant.grant().unwrap().name,
        "job",
        "the caller sees its own name"
    );
    assert!(
        !Backend::acquire_lock(&*redis, "app:job", "w2", Duration::from_secs(5))
            .await
            .unwrap()
            .is_acquired()
    );
}

#[tokio::test(start_paused = true)]
async fn locks_fail_closed_on_a_local_store_unless_local_locks_are_enabled() {
    let storage = ResilientStorage::builder().build().await.unwrap();
    assert_eq!(storage.backend_names(), ["memory"]);
    let err = storage
        .acquire_lock("job", "w1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoLockBackend { .. }), "{err}");
    assert!(err.to_string().contains("local locks are not enabled"));

    let storage = ResilientStorage::builder()
        .local_locks(true)
        .build()
        .await
        .unwrap();
    let LockOutcome::Acquired(grant) = storage
        .acquire_lock("job", "w1", Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("a free lock is granted");
    };
    assert!(
        grant.local,
        "a grant from the memory store says it is local"
    );
    assert_eq!(grant.backend, "memory");
    assert!(storage.release_lock("job", "w1").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn locks_fail_closed_when_every_shared_backend_is_down() {
    let redis = fault("redis");
    let storage = builder(&[&redis])
        .memory_fallback(true)
        .build()
        .await
        .unwrap();
    let grant = storage
        .acquire_lock("job", "w1", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!grant.grant().unwrap().local);
    assert_eq!(grant.grant().unwrap().backend, "redis");
    redis.inject(Fault::Fail);
    let err = storage
        .acquire_lock("job2", "w1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AllFailed { .. }), "{err}");
    storage.force_open("redis", true);
    let err = storage
        .acquire_lock("job2", "w1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("locks fail closed"), "{err}");
    // Data still flows through the memory fallback.
    storage.set("k", "v", None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn extend_and_release_go_to_the_backend_that_granted_the_lock() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(resilient_core::Strategy::Priority)
        .lock_failover(LockFailover::after_outage(Duration::from_secs(1)))
        .build()
        .await
        .unwrap();
    redis.inject(Fault::Fail);
    assert!(
        storage
            .acquire_lock("job", "w1", Duration::from_secs(30))
            .await
            .is_err(),
        "a lock call does not fail over within the call"
    );
    storage.force_open("redis", true);
    assert!(
        storage
            .acquire_lock("job", "w1", Duration::from_secs(30))
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grant = storage
        .acquire_lock("job", "w1", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(grant.grant().unwrap().backend, "postgres");
    let extended = storage
        .extend_lock("job", "w1", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("still held on postgres");
    assert_eq!(extended.backend, "postgres");
    assert_eq!(extended.token, grant.grant().unwrap().token);
    assert!(storage.release_lock("job", "w1").await.unwrap());
    assert!(
        Backend::acquire_lock(&*postgres, "job", "w2", Duration::from_secs(1))
            .await
            .unwrap()
            .is_acquired(),
        "the lease on postgres is really gone"
    );
}

#[tokio::test(start_paused = true)]
async fn lock_authority_moves_back_only_after_every_lease_of_the_fallback_expired() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let wait = Duration::from_secs(1);
    let storage = builder(&[&redis, &postgres])
        .strategy(resilient_core::Strategy::Priority)
        .lock_failover(LockFailover::after_outage(wait))
        .build()
        .await
        .unwrap();
    storage.force_open("redis", true);
    // The first lock call that finds redis down starts the wait.
    assert!(storage.acquire_lock("job", "w1", wait).await.is_err());
    tokio::time::sleep(wait).await;
    let held = storage
        .acquire_lock("job", "w1", Duration::from_millis(900))
        .await
        .unwrap();
    let on_postgres = held.grant().unwrap().clone();
    assert_eq!(on_postgres.backend, "postgres");

    // Redis is back while w1's lease on postgres is live: granting on redis now would make two
    // holders. Acquires and extends are refused until postgres has answered none for the wait.
    storage.force_open("redis", false);
    let refused = storage
        .acquire_lock("job", "w2", Duration::from_millis(900))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("lock authority is moving"),
        "{refused}"
    );
    let refused = storage
        .extend_lock("job", "w1", Duration::from_millis(900))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::NoBackendAvailable { .. }),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        storage
            .acquire_lock("job", "w2", Duration::from_millis(900))
            .await
            .is_err(),
        "refused calls do not restart the wait, but the wait is not over"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = storage
        .acquire_lock("job", "w2", Duration::from_millis(900))
        .await
        .unwrap();
    let on_redis = moved.grant().unwrap();
    assert_eq!(on_redis.backend, "redis");
    assert!(
        on_redis.token > on_postgres.token,
        "fencing tokens never go back"
    );
    assert!(
        storage.release_lock("job", "w1").await.is_ok(),
        "a late release still gets an answer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_reaches_the_granting_backend_while_authority_moves() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres])
        .strategy(resilient_core::Strategy::Priority)
        .lock_failover(LockFailover::after_outage(Duration::from_secs(1)))
        .build()
        .await
        .unwrap();
    storage.force_open("redis", true);
    assert!(
        storage
            .acquire_lock("job", "w1", Duration::from_secs(30))
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    storage
        .acquire_lock("job", "w1", Duration::from_secs(30))
        .await
        .unwrap();
    storage.force_open("redis", false);
    assert!(storage.release_lock("job", "w1").await.unwrap());
    assert!(
        Backend::acquire_lock(&*postgres, "job", "w2", Duration::from_secs(1))
            .await
            .unwrap()
            .is_acquired(),
        "the lease on postgres is really gone"
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    visits: u32,
}

#[tokio::test(start_paused = true)]
async fn typed_values_round_trip_through_json() {
    let storage = ResilientStorage::builder().build().await.unwrap();
    let profile = Profile {
        name: "Ada".into(),
        visits: 3,
    };
    storage.set_json("p", &profile, None).await.unwrap();
    assert_eq!(
        storage.get_json::<Profile>("p").await.unwrap(),
        Some(profile)
    );
    assert_eq!(storage.get_json::<Profile>("missing").await.unwrap(), None);
    storage.set("raw", "not json", None).await.unwrap();
    let err = storage.get_json::<Profile>("raw").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Serde {
                action: "decoded",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_health_report_has_the_documented_json_shape_and_status() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    storage.get("k").await.unwrap();
    let json = serde_json::to_value(storage.health()).unwrap();
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["activeBackend"], "redis");
    assert_eq!(json["strategy"], "failover");
    let redis_json = &json["backends"]["redis"];
    for field in [
        "scheme",
        "priority",
        "health",
        "circuitOpen",
        "circuitState",
        "consecutiveFailures",
        "latencyMs",
        "lastError",
        "capabilities",
    ] {
        assert!(
            redis_json.get(field).is_some(),
            "missing {field} in {redis_json}"
        );
    }
    assert_eq!(redis_json["circuitState"], "closed");
    assert_eq!(redis_json["circuitOpen"], false);
    let text = serde_json::to_string(&storage.health()).unwrap();
    assert!(
        text.find("\"redis\":{").unwrap() < text.find("\"postgres\":{").unwrap(),
        "backends in priority order: {text}"
    );
    assert_eq!(storage.health().http_status(), 200);

    storage.force_open("redis", true);
    assert_eq!(storage.health().status, OverallStatus::Degraded);
    assert_eq!(storage.health().http_status(), 503);
    storage.force_open("postgres", true);
    assert_eq!(storage.health().status, OverallStatus::Unhealthy);
    let err = storage.get("k").await.unwrap_err();
    assert!(matches!(err, Error::NoBackendAvailable { .. }), "{err}");
    assert!(
        err.to_string().contains("[redis] circuit forced_open"),
        "{err}"
    );
    let back: resilient_core::HealthReport =
        serde_json::from_value(serde_json::to_value(storage.health()).unwrap()).unwrap();
    assert_eq!(back, storage.health());
}

#[tokio::test(start_paused = true)]
async fn storage_builds_from_a_toml_config() {
    let config: StorageConfig = toml::from_str(
        r#"
        strategy = "round_robin"
        attempt_timeout = "250ms"
        deadline = "1s"
        local_locks = true

        [[backends]]
        url = "memory://?max_bytes=1048576"
        priority = 1
        name = "cache"

        [[backends]]
        url = "memory://"
        priority = 2
        name = "spare"
        enabled = false

        [breaker]
        consecutive_failures = 2
        open_duration = "500ms"

        [health]
        interval = "2s"

        [keys]
        namespace = "svc:"
        "#,
    )
    .unwrap();
    assert_eq!(config.attempt_timeout, Duration::from_millis(250));
    assert_eq!(config.breaker.consecutive_failures, 2);
    let storage = ResilientStorage::from_config(config).await.unwrap();
    assert_eq!(
        storage.backend_names(),
        ["cache"],
        "disabled entries are left out"
    );
    assert_eq!(storage.health().strategy, "round_robin");
    storage.set("k", "v", None).await.unwrap();
    assert_eq!(storage.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn bad_configuration_names_the_field() {
    let unknown_field = toml::from_str::<StorageConfig>("atempt_timeout = \"1s\"").unwrap_err();
    assert!(
        unknown_field.to_string().contains("atempt_timeout"),
        "{unknown_field}"
    );

    let unknown_nested = toml::from_str::<StorageConfig>("[breaker]\nthreshold = 3").unwrap_err();
    assert!(
        unknown_nested.to_string().contains("threshold"),
        "{unknown_nested}"
    );

    let config: StorageConfig =
        toml::from_str("[[backends]]\nurl = \"cassandra://u:hunter2@db\"\npriority = 1").unwrap();
    let err = ResilientStorage::from_config(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("backends[0].url"), "{err}");
    assert!(
        err.contains("\"cassandra\"") && err.contains("memory"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let config: StorageConfig =
        toml::from_str("[[backends]]\nurl = \"nonsense\"\npriority = 1").unwrap();
    let err = ResilientStorage::from_config(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("backends[0].url"), "{err}");

    let config: StorageConfig = toml::from_str("attempt_timeout = \"0s\"").unwrap();
    let err = ResilientStorage::from_config(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("attempt_timeout"), "{err}");

    let config: StorageConfig = toml::from_str("[health]\ninterval = \"0s\"").unwrap();
    let err = ResilientStorage::from_config(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("health.interval"), "{err}");

    let config: StorageConfig = toml::from_str("[breaker]\nfailure_rate = 1.5").unwrap();
    let err = ResilientStorage::from_config(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("breaker.failure_rate"), "{err}");

    let config: StorageConfig = toml::from_str("memory_fallback = false").unwrap();
    let err = ResilientStorage::from_config(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("backends"), "{err}");

    let debug = format!(
        "{:?}",
        toml::from_str::<StorageConfig>("[[backends]]\nurl = \"redis://:hunter2@h\"\npriority = 1")
            .unwrap()
    );
    assert!(!debug.contains("hunter2"), "{debug}");
}

#[tokio::test(start_paused = true)]
async fn duplicate_backend_names_are_refused() {
    let (a, b) = (fault("same"), fault("same"));
    let err = builder(&[&a, &b]).build().await.unwrap_err().to_string();
    assert!(err.contains("two backends are named \"same\""), "{err}");
}

#[tokio::test(start_paused = true)]
async fn after_shutdown_every_call_fails_with_shutdown() {
    let storage = ResilientStorage::builder().build().await.unwrap();
    let clone = storage.clone();
    storage.shutdown().await;
    storage.shutdown().await;
    assert!(matches!(clone.get("k").await, Err(Error::Shutdown)));
    assert!(matches!(
        clone.set("k", "v", None).await,
        Err(Error::Shutdown)
    ));
    assert_eq!(clone.health().status, OverallStatus::Unhealthy);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_scheme_lists_the_available_ones() {
    let err = ResilientStorage::builder()
        .backend_url("mongodb://db", 1)
        .unwrap_err();
    let Error::UnknownScheme { scheme, available } = &err else {
        panic!("{err}");
    };
    assert_eq!(scheme, "mongodb");
    assert!(available.contains("memory"), "{available}");
}

#[tokio::test(start_paused = true)]
async fn by_default_locks_fail_closed_for_as_long_as_the_lock_authority_is_out_of_reach() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    let lease = Duration::from_secs(10);
    let held = storage.acquire_lock("a", "w1", lease).await.unwrap();
    assert_eq!(held.grant().unwrap().backend, "redis");
    redis.inject(Fault::Fail);
    // Key-value calls fail over at once; lock calls never leave Redis, however long it is out
    // of reach: another process may still reach it and take the same locks there.
    storage.set("k", "v", None).await.unwrap();
    let mut refusals = Vec::new();
    for _ in 0..10 {
        for _ in 0..4 {
            let err = storage.acquire_lock("b", "w2", lease).await.unwrap_err();
            refusals.push(err.to_string());
            assert!(storage.extend_lock("a", "w1", lease).await.is_err());
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    // Attempts on Redis while its breaker lets them through, refusals without a call otherwise;
    // never an attempt elsewhere.
    assert!(
        refusals.iter().all(|e| !e.contains("postgres")),
        "{refusals:?}"
    );
    assert!(
        refusals
            .iter()
            .any(|e| e.contains("locks fail closed") && e.contains("[redis], the lock authority")),
        "{refusals:?}"
    );
    assert!(
        Backend::acquire_lock(&*postgres, "b", "other", lease)
            .await
            .unwrap()
            .is_acquired(),
        "PostgreSQL granted nothing"
    );
    redis.inject(Fault::Pass);
    // The breaker's open time has backed off to its 8 s cap; then one probe closes it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let grant = storage.acquire_lock("c", "w2", lease).await.unwrap();
    assert_eq!(grant.grant().unwrap().backend, "redis");
}

#[tokio::test(start_paused = true)]
async fn the_lock_authority_is_the_first_lock_backend_whatever_the_strategy() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    for strategy in [
        resilient_core::Strategy::RoundRobin,
        resilient_core::Strategy::LatencyAware,
        resilient_core::Strategy::Priority,
    ] {
        let storage = builder(&[&redis, &postgres])
            .strategy(strategy)
            .build()
            .await
            .unwrap();
        for i in 0..6 {
            let grant = storage
                .acquire_lock(&format!("{strategy:?}{i}"), "w", Duration::from_secs(1))
                .await
                .unwrap();
            assert_eq!(grant.grant().unwrap().backend, "redis", "{strategy:?}");
        }
    }
}
