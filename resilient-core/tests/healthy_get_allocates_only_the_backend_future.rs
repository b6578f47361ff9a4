//! The breaker, the strategies and the router allocate nothing on the healthy path of a get:
//! the only allocation is the backend call's own boxed future (from async-trait), and none at
//! all when the backend answers at once (an in-process store), nor for its sets and deletes.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use resilient_core::strategy::{BackendView, Candidates, Routing};
use resilient_core::{
    Backend, BackendOptions, BreakerConfig, Bytes, Capabilities, CircuitBreaker, HealthProbe,
    KeyWrite, ResilientStorage, Result, Strategy, WriteOptions, WriteOutcome, async_trait,
};

/// Answers every get from a value it already holds, and applies every write: through a future
/// that is ready at once, or, `at_once`, without a future, as an in-process store does
/// (`try_get_now`, `try_write_now`).
#[derive(Debug)]
struct Ready {
    value: Bytes,
    at_once: bool,
}

impl Ready {
    fn new(value: &'static [u8], at_once: bool) -> Self {
        Self {
            value: Bytes::from_static(value),
            at_once,
        }
    }
}

#[async_trait]
impl Backend for Ready {
    fn name(&self) -> &str {
        "ready"
    }
    fn scheme(&self) -> &str {
        "ready"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }
    async fn health_check(&self) -> Result<HealthProbe> {
        Ok(HealthProbe::Healthy)
    }
    async fn get(&self, _: &str) -> Result<Option<Bytes>> {
        assert!(!self.at_once, "answered at once");
        Ok(Some(self.value.clone()))
    }
    fn try_get_now(&self, _: &str) -> Option<Result<Option<Bytes>>> {
        self.at_once.then(|| Ok(Some(self.value.clone())))
    }
    async fn write(&self, _: &str, _: KeyWrite, _: WriteOptions) -> Result<WriteOutcome> {
        assert!(!self.at_once, "answered at once");
        Ok(WriteOutcome::applied(false))
    }
    fn try_write_now(
        &self,
        _: &str,
        _: &KeyWrite,
        _: &WriteOptions,
    ) -> Option<Result<WriteOutcome>> {
        self.at_once.then(|| Ok(WriteOutcome::applied(true)))
    }
}

/// A current-thread runtime with a timer, as the router needs.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A `Ready` backend (answering at once or not) over a spare that answers through futures.
fn with_spare(runtime: &tokio::runtime::Runtime, at_once: bool) -> ResilientStorage {
    runtime.block_on(async {
        ResilientStorage::builder()
            .backend(Arc::new(Ready::new(b"value", at_once)), 1)
            .backend_with(
                Arc::new(Ready::new(b"other", false)),
                BackendOptions::new(2).named("spare"),
            )
            .memory_fallback(false)
            .build()
            .await
            .unwrap()
    })
}

/// Polls a future that completes without waiting, with a no-op waker: no executor machinery
/// is counted.
fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the call should complete without waiting"),
    }
}

#[test]
fn the_closed_breaker_path_allocates_nothing() {
    let breaker = CircuitBreaker::new(BreakerConfig::default());
    let counted = allocation_counter::measure(|| {
        for i in 0..1_000 {
            let permit = breaker.try_acquire().unwrap();
            if i % 10 == 0 {
                permit.failure();
            } else {
                permit.success(Duration::from_micros(50));
            }
        }
    });
    assert_eq!(counted.count_total, 0, "{counted:?}");
}

#[test]
fn selecting_candidates_allocates_nothing() {
    let mut views = [BackendView::default(); 3];
    for (i, view) in views.iter_mut().enumerate() {
        view.priority = i as u32 + 1;
        view.available = true;
        view.available_for = Duration::from_secs(10);
        view.latency = Some(Duration::from_micros(100 * (i as u64 + 1)));
    }
    let now = tokio::time::Instant::now();
    for strategy in [
        Strategy::Failover,
        Strategy::Priority,
        Strategy::RoundRobin,
        Strategy::LatencyAware,
    ] {
        let strategy = strategy.build(Duration::from_secs(2));
        let counted = allocation_counter::measure(|| {
            for _ in 0..1_000 {
                let mut out = Candidates::new();
                strategy.select(&Routing::new(&views, now), &mut out);
                let first = out.first().unwrap();
                strategy.served(&Routing::new(&views, now), first, first);
            }
        });
        assert_eq!(counted.count_total, 0, "{}: {counted:?}", strategy.name());
    }
}

#[test]
fn a_healthy_get_through_the_router_allocates_only_the_backend_future() {
    let runtime = runtime();
    let storage = with_spare(&runtime, false);
    let _context = runtime.enter();
    // The first call records the active backend and sends an event: not the steady state.
    complete(storage.get("key")).unwrap();
    let calls = 1_000;
    let counted = allocation_counter::measure(|| {
        for _ in 0..calls {
            assert!(complete(storage.get("key")).unwrap().is_some());
        }
    });
    assert_eq!(
        counted.count_total, calls,
        "one boxed backend future per call and nothing else: {counted:?}"
    );
}

#[test]
fn gets_answered_at_once_allocate_nothing() {
    let runtime = runtime();
    let storage = runtime.block_on(async {
        ResilientStorage::builder()
            .backend(Arc::new(Ready::new(b"value", true)), 1)
            .memory_fallback(false)
            .build()
            .await
            .unwrap()
    });
    let _context = runtime.enter();
    complete(storage.get("key")).unwrap();
    let counted = allocation_counter::measure(|| {
        for _ in 0..1_000 {
            assert!(complete(storage.get("key")).unwrap().is_some());
        }
    });
    assert_eq!(counted.count_total, 0, "{counted:?}");
    assert_eq!(storage.health().active_backend.as_deref(), Some("ready"));
}

#[test]
fn sets_and_deletes_answered_at_once_allocate_nothing() {
    let runtime = runtime();
    // Two backends: every write is stamped with a version.
    let storage = with_spare(&runtime, true);
    let _context = runtime.enter();
    let value = Bytes::from_static(b"value");
    complete(storage.set("key", value.clone(), None)).unwrap();
    let counted = allocation_counter::measure(|| {
        for _ in 0..1_000 {
            complete(storage.set("key", value.clone(), None)).unwrap();
            assert!(complete(storage.delete("key")).unwrap());
        }
    });
    assert_eq!(counted.count_total, 0, "{counted:?}");
}
