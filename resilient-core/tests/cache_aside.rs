//! Cache-aside on tokio's paused clock: single flight (one load however many callers, a caller
//! that gives up does not cancel it, once for two storages sharing a backend), fail-safe
//! (stale values while the loader or every backend fails, up to the maximum staleness, with
//! throttled retries), soft and hard timeouts, and eager refresh. Fencing of late loads needs a
//! versioned backend: `resilient-facade/tests/cache_aside_against_real_servers.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{builder, drain, fault};
use resilient_core::testing::Fault;
use resilient_core::{Error, LoadOptions, LoadSource, ResilientStorage, StaleReason, StorageEvent};
use tokio::time::{Instant, advance, sleep};

const TTL: Duration = Duration::from_secs(10);

/// A loader that counts its runs, takes `delay`, and returns `value-<run>` (or fails when
/// `fail` is set).
#[derive(Clone, Default)]
struct Source {
    runs: Arc<AtomicUsize>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Source {
    fn loader(
        &self,
        delay: Duration,
    ) -> impl FnOnce() -> std::pin::Pin<
        Box<dyn Future<Output = Result<String, std::io::Error>> + Send>,
    > + Send
    + 'static {
        let (runs, fail) = (self.runs.clone(), self.fail.clone());
        move || {
            Box::pin(async move {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                sleep(delay).await;
                if fail.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other("database down"));
                }
                Ok(format!("value-{run}"))
            })
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
}

async fn storage() -> (ResilientStorage, Arc<resilient_core::testing::FaultBackend>) {
    let redis = fault("redis");
    (builder(&[&redis]).build().await.unwrap(), redis)
}

/// Ages come from the wall clock (moved on with tokio's paused clock): equal to within the
/// microseconds between reading the two clocks.
fn assert_age(age: Duration, expected: Duration) {
    let off = age.abs_diff(expected);
    assert!(
        off < Duration::from_millis(1),
        "age {age:?}, expected {expected:?}"
    );
}

fn text(loaded: &resilient_core::Loaded) -> &str {
    std::str::from_utf8(&loaded.value).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_callers_of_a_missing_key_cause_one_load() {
    let (storage, _) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL);
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let (storage, source, options) = (storage.clone(), source.clone(), options.clone());
            tokio::spawn(async move {
                storage
                    .get_or_load("k", &options, source.loader(Duration::from_millis(100)))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for caller in callers {
        let loaded = caller.await.unwrap();
        assert_eq!(text(&loaded), "value-1");
        assert_eq!(loaded.source, LoadSource::Loaded);
    }
    assert_eq!(source.runs(), 1);
    // Stored for everyone after: no second load while fresh.
    let again = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&again), again.source),
        ("value-1", LoadSource::Cached)
    );
    assert_eq!(source.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_does_not_cancel_the_load_for_the_others() {
    let (storage, _) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL);
    let impatient = tokio::time::timeout(
        Duration::from_millis(50),
        storage.get_or_load("k", &options, source.loader(Duration::from_secs(1))),
    );
    let patient = {
        let (storage, source, options) = (storage.clone(), source.clone(), options.clone());
        tokio::spawn(async move {
            sleep(Duration::from_millis(10)).await;
            storage
                .get_or_load("k", &options, source.loader(Duration::from_secs(1)))
                .await
        })
    };
    assert!(impatient.await.is_err(), "the first caller gave up");
    let loaded = patient.await.unwrap().unwrap();
    assert_eq!(
        (text(&loaded), loaded.source),
        ("value-1", LoadSource::Loaded)
    );
    assert_eq!(source.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_value_is_loaded_again_once_its_ttl_has_passed() {
    let (storage, _) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL);
    let first = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_age(first.age, Duration::ZERO);
    advance(Duration::from_secs(9)).await;
    let cached = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&cached), cached.source),
        ("value-1", LoadSource::Cached)
    );
    assert_age(cached.age, Duration::from_secs(9));
    advance(Duration::from_millis(1001)).await;
    let reloaded = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&reloaded), reloaded.source),
        ("value-2", LoadSource::Loaded)
    );
    // A value written with plain `set` is served as it is, of unknown age.
    storage.set("plain", "by-hand", None).await.unwrap();
    let plain = storage
        .get_or_load("plain", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&plain), plain.source),
        ("by-hand", LoadSource::Cached)
    );
    assert_eq!(source.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn fail_safe_serves_the_stale_value_while_the_loader_fails_and_throttles_it() {
    let (storage, _) = storage().await;
    let mut events = storage.subscribe();
    let source = Source::default();
    let options = LoadOptions::new(TTL)
        .fail_safe(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(30));
    storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    source.fail(true);
    advance(Duration::from_secs(11)).await;
    let stale = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(text(&stale), "value-1");
    assert_eq!(stale.source, LoadSource::Stale(StaleReason::LoaderFailed));
    assert_age(stale.age, Duration::from_secs(11));
    assert!(stale.is_stale());
    assert_eq!(source.runs(), 2);
    assert!(drain(&mut events).iter().any(|e| matches!(
        e,
        StorageEvent::FailSafeServed {
            reason: StaleReason::LoaderFailed,
            ..
        }
    )));

    // Within the throttle the failing loader is left alone.
    advance(Duration::from_secs(29)).await;
    let throttled = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(throttled.source, LoadSource::Stale(StaleReason::Throttled));
    assert_eq!(source.runs(), 2);

    // After it, the loader is tried again; once it recovers the fresh value replaces the stale.
    advance(Duration::from_secs(1)).await;
    source.fail(false);
    let fresh = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&fresh), fresh.source),
        ("value-3", LoadSource::Loaded)
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_maximum_staleness_the_loaders_error_is_returned() {
    let (storage, _) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL).fail_safe(Duration::from_secs(60));
    storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    source.fail(true);
    advance(TTL + Duration::from_secs(60) + Duration::from_millis(1)).await;
    let error = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Loader { .. }), "{error}");
    assert!(error.to_string().contains("database down"), "{error}");
    // Without fail-safe a failing loader is an error at once after the TTL.
    let plain = LoadOptions::new(TTL);
    source.fail(false);
    storage
        .get_or_load("other", &plain, source.loader(Duration::ZERO))
        .await
        .unwrap();
    source.fail(true);
    advance(TTL + Duration::from_millis(1)).await;
    assert!(
        storage
            .get_or_load("other", &plain, source.loader(Duration::ZERO))
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn on_the_soft_timeout_the_stale_value_is_served_and_the_load_finishes_behind() {
    let (storage, _) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL)
        .fail_safe(Duration::from_secs(3600))
        .soft_timeout(Duration::from_millis(100));
    storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    advance(Duration::from_secs(11)).await;
    let start = Instant::now();
    let stale = storage
        .get_or_load("k", &options, source.loader(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(stale.source, LoadSource::Stale(StaleReason::LoaderSlow));
    assert_eq!(text(&stale), "value-1");
    sleep(Duration::from_secs(5)).await;
    let fresh = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&fresh), fresh.source),
        ("value-2", LoadSource::Cached)
    );
    assert_eq!(source.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_hard_timeout_abandons_a_hung_loader() {
    let (storage, _) = storage().await;
    let options = LoadOptions::new(TTL).hard_timeout(Duration::from_secs(1));
    let start = Instant::now();
    let error = storage
        .get_or_load("k", &options, || {
            std::future::pending::<Result<Vec<u8>, std::io::Error>>()
        })
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(matches!(error, Error::LoadTimedOut { .. }), "{error}");
    // The next caller starts a new load (the abandoned one is gone).
    let loaded = storage
        .get_or_load("k", &options, || async { Ok::<_, std::io::Error>("late") })
        .await
        .unwrap();
    assert_eq!(text(&loaded), "late");
}

#[tokio::test(start_paused = true)]
async fn fail_safe_serves_the_last_known_value_while_every_backend_fails() {
    let (storage, redis) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL).fail_safe(Duration::from_secs(3600));
    storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    redis.inject(Fault::Fail);
    // Fresh: served from this process's copy, no load.
    let cached = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&cached), cached.source),
        ("value-1", LoadSource::Cached)
    );
    assert_eq!(source.runs(), 1);
    // Stale and the loader fails too: the stale copy.
    advance(Duration::from_secs(20)).await;
    source.fail(true);
    let stale = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(stale.source, LoadSource::Stale(StaleReason::LoaderFailed));
    assert_eq!(text(&stale), "value-1");
    // A key never loaded, storage and loader both failing: the loader's error.
    assert!(matches!(
        storage
            .get_or_load("never", &options, source.loader(Duration::ZERO))
            .await,
        Err(Error::Loader { .. })
    ));
    // The loader recovers while the storage is still down: its value is served.
    source.fail(false);
    let loaded = storage
        .get_or_load("new", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(loaded.source, LoadSource::Loaded);
}

#[tokio::test(start_paused = true)]
async fn eager_refresh_reloads_in_the_background_and_answers_at_once() {
    let (storage, _) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL).eager_refresh(0.5);
    storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    advance(Duration::from_secs(4)).await;
    storage
        .get_or_load("k", &options, source.loader(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(source.runs(), 1, "not due before half the TTL");
    advance(Duration::from_secs(2)).await;
    let start = Instant::now();
    let current = storage
        .get_or_load("k", &options, source.loader(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "answered without waiting");
    assert_eq!(
        (text(&current), current.source),
        ("value-1", LoadSource::Cached)
    );
    sleep(Duration::from_millis(1100)).await;
    let refreshed = storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&refreshed), refreshed.source),
        ("value-2", LoadSource::Cached)
    );
    assert_age(refreshed.age, Duration::from_millis(100));
    assert_eq!(source.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn two_processes_sharing_the_storage_load_a_key_once_with_fleet_single_flight() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let a = builder(&[&redis, &postgres]).build().await.unwrap();
    let b = builder(&[&redis, &postgres]).build().await.unwrap();
    let source = Source::default();
    let options = LoadOptions::new(TTL).fleet_single_flight(Duration::from_secs(5));
    let callers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .cycle()
        .take(200)
        .map(|storage| {
            let (source, options) = (source.clone(), options.clone());
            tokio::spawn(async move {
                storage
                    .get_or_load("k", &options, source.loader(Duration::from_secs(1)))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(text(&caller.await.unwrap()), "value-1");
    }
    assert_eq!(source.runs(), 1, "one load for both processes");
    // The lock authority out of reach: each process loads on its own rather than failing.
    redis.inject(Fault::Fail);
    postgres.inject(Fault::Fail);
    advance(TTL + Duration::from_millis(1)).await;
    let alone = a
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&alone), alone.source),
        ("value-2", LoadSource::Loaded)
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_process_loads_itself_when_the_fleet_loader_takes_too_long() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let a = builder(&[&redis, &postgres]).build().await.unwrap();
    let b = builder(&[&redis, &postgres]).build().await.unwrap();
    let source = Source::default();
    let options = LoadOptions::new(TTL).fleet_single_flight(Duration::from_secs(2));
    let slow = {
        let (source, options) = (source.clone(), options.clone());
        tokio::spawn(async move {
            a.get_or_load("k", &options, source.loader(Duration::from_secs(10)))
                .await
        })
    };
    sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let own = b
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(2) && start.elapsed() < Duration::from_secs(3));
    assert_eq!(text(&own), "value-2");
    assert_eq!(text(&slow.await.unwrap().unwrap()), "value-1");
    assert_eq!(source.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn bad_options_a_bad_key_and_a_panicking_loader_are_typed_errors() {
    let (storage, _) = storage().await;
    let ok = || async { Ok::<_, std::io::Error>("v") };
    for options in [
        LoadOptions::new(Duration::ZERO),
        LoadOptions::new(TTL).hard_timeout(Duration::ZERO),
        LoadOptions::new(TTL)
            .soft_timeout(Duration::from_secs(60))
            .hard_timeout(Duration::from_secs(1)),
        LoadOptions::new(TTL).eager_refresh(1.0),
        LoadOptions::new(TTL).eager_refresh(f64::NAN),
        LoadOptions::new(TTL).fleet_single_flight(Duration::ZERO),
        LoadOptions::new(TTL).fleet_single_flight(Duration::MAX),
        LoadOptions::new(TTL).hard_timeout(Duration::MAX),
        LoadOptions::new(TTL).fail_safe(Duration::MAX),
        LoadOptions::new(TTL).fail_safe_throttle(Duration::MAX),
    ] {
        let error = storage.get_or_load("k", &options, ok).await.unwrap_err();
        assert!(error.is_caller_error(), "{options:?}: {error}");
    }
    let error = storage
        .get_or_load("", &LoadOptions::new(TTL), ok)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidKey(_)), "{error}");
    let error = storage
        .get_or_load("k", &LoadOptions::new(TTL), || async {
            if true {
                panic!("loader bug");
            }
            Ok::<_, std::io::Error>("never")
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Loader { .. }), "{error}");
    let loaded = storage
        .get_or_load("k", &LoadOptions::new(TTL), ok)
        .await
        .unwrap();
    assert_eq!(
        text(&loaded),
        "v",
        "a panicked load leaves no flight behind"
    );
}

#[tokio::test(start_paused = true)]
async fn typed_values_round_trip_through_json() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Profile {
        name: String,
    }
    let (storage, _) = storage().await;
    let options = LoadOptions::new(TTL);
    let (profile, source) = storage
        .get_or_load_json("user:1", &options, || async {
            Ok::<_, std::io::Error>(Profile { name: "Ada".into() })
        })
        .await
        .unwrap();
    assert_eq!((profile.name.as_str(), source), ("Ada", LoadSource::Loaded));
    let (again, source): (Profile, _) = storage
        .get_or_load_json("user:1", &options, || async {
            Err::<Profile, _>(std::io::Error::other("not called"))
        })
        .await
        .unwrap();
    assert_eq!((again.name.as_str(), source), ("Ada", LoadSource::Cached));
}

#[tokio::test(start_paused = true)]
async fn a_failing_loader_is_throttled_for_eager_refresh_too() {
    let (storage, _) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL)
        .eager_refresh(0.5)
        .fail_safe(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(30));
    storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    source.fail(true);
    advance(Duration::from_secs(6)).await;
    for _ in 0..20 {
        let current = storage
            .get_or_load("k", &options, source.loader(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(
            (text(&current), current.source),
            ("value-1", LoadSource::Cached)
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(source.runs(), 2, "one failed refresh, then the throttle");
}

#[tokio::test(start_paused = true)]
async fn on_the_hard_timeout_a_stale_value_is_served() {
    let (storage, _) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL)
        .fail_safe(Duration::from_secs(3600))
        .hard_timeout(Duration::from_secs(1));
    storage
        .get_or_load("k", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    advance(Duration::from_secs(11)).await;
    let start = Instant::now();
    let stale = storage
        .get_or_load("k", &options, source.loader(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(stale.source, LoadSource::Stale(StaleReason::LoaderTimedOut));
    assert_eq!(text(&stale), "value-1");
}

#[tokio::test(start_paused = true)]
async fn a_plain_value_is_not_kept_as_a_fail_safe_copy() {
    let (storage, redis) = storage().await;
    let source = Source::default();
    let options = LoadOptions::new(TTL).fail_safe(Duration::from_secs(3600));
    storage.set("p", "plain", None).await.unwrap();
    let plain = storage
        .get_or_load("p", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!((text(&plain), plain.source), ("plain", LoadSource::Cached));
    // Without a TTL of its own, the plain value has no freshness to serve it by during an
    // outage: the loader is asked.
    redis.inject(Fault::Fail);
    let loaded = storage
        .get_or_load("p", &options, source.loader(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        (text(&loaded), loaded.source),
        ("value-1", LoadSource::Loaded)
    );
}

#[tokio::test(start_paused = true)]
async fn a_loaded_value_too_large_to_store_is_an_error_and_long_keys_still_share_a_fleet_load() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let keys = resilient_core::KeyPolicy::default()
        .max_value_len(100)
        .max_key_len(64);
    let a = builder(&[&redis, &postgres])
        .keys(keys.clone())
        .build()
        .await
        .unwrap();
    let b = builder(&[&redis, &postgres])
        .keys(keys)
        .build()
        .await
        .unwrap();
    let error = a
        .get_or_load("big", &LoadOptions::new(TTL), || async {
            Ok::<_, std::io::Error>(vec![1_u8; 90])
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::ValueTooLarge { size: 90, max: 80 }),
        "{error}"
    );
    // A key of the maximum length: its load lock gets a fixed-size name.
    let long = "k".repeat(64);
    let source = Source::default();
    let options = LoadOptions::new(TTL).fleet_single_flight(Duration::from_secs(5));
    let callers: Vec<_> = [a, b]
        .into_iter()
        .cycle()
        .take(20)
        .map(|storage| {
            let (source, options, long) = (source.clone(), options.clone(), long.clone());
            tokio::spawn(async move {
                storage
                    .get_or_load(&long, &options, source.loader(Duration::from_secs(1)))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    assert_eq!(source.runs(), 1);
}
