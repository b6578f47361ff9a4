//! [`ResilientStorage`]: validates input, asks the strategy for candidates, and runs each
//! attempt under its breaker, its timeout and the call's deadline.

mod atomic;
mod attempt;
mod batch;
mod builder;
mod cache;
mod guard;
mod journal;
mod locks;
mod reads;
mod replay_log;
mod slot;
mod status;
mod telemetry;
mod watchdog;
mod writes;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use builder::{
    BackendOptions, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_FAILBACK_DELAY,
    DEFAULT_MAX_REPLAY_BYTES, DEFAULT_MAX_REPLAY_RECORDS, DEFAULT_MEMORY_TTL_CAP,
    MEMORY_FALLBACK_PRIORITY, StorageBuilder, WritePolicy,
};
pub use cache::{
    DEFAULT_FAIL_SAFE_MEMORY, DEFAULT_FAIL_SAFE_THROTTLE, DEFAULT_LOAD_TIMEOUT, LoadOptions,
    LoadSource, Loaded, StaleReason,
};
pub use guard::{LockGuard, LockLost, LockOptions};
pub use locks::LockFailover;
use locks::Locks;
use replay_log::VersionClock;
use slot::Slot;
use status::Active;

use crate::error::Result;
use crate::events::StorageEvent;
use crate::key::KeyPolicy;
use crate::strategy::SelectionStrategy;

/// FNV-1a, 64 bits: the same in every process and build, unlike std's hashers (a load lock's
/// name must be), and cheap (a key's turn).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

type CallFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

const NONE: usize = usize::MAX;

/// Which backends an operation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Data,
    /// Acquire and extend: calls that create or prolong leases.
    Lock,
    /// Release: goes to the backend that granted the lock even while lock authority moves.
    Release,
    /// Increment, set-if-absent, compare-and-set: key-value calls on backends that implement
    /// them, shared ones only while any is configured (a count kept in this process alone would
    /// start again from zero).
    Atomic,
}

impl Route {
    fn locks(self) -> bool {
        matches!(self, Route::Lock | Route::Release)
    }

    /// Calls on key-value data: a backend still replaying missed writes takes none.
    fn data(self) -> bool {
        matches!(self, Route::Data | Route::Atomic)
    }
}

/// A key-value and lock store over several backends that keeps answering when one dies, hangs
/// or flaps. Cheap to clone; clones share everything.
///
/// Built with [`ResilientStorage::builder`] or [`ResilientStorage::from_config`].
#[derive(Debug, Clone)]
pub struct ResilientStorage {
    inner: Arc<Inner>,
}

/// Everything the clones of one storage share.
#[derive(Debug)]
struct Inner {
    /// The backends in priority order, each with its breaker, health tracker and replay log.
    slots: Vec<Arc<Slot>>,
    strategy: Arc<dyn SelectionStrategy>,
    policy: Policy,
    locks: Locks,
    active: Active,
    life: Lifecycle,
    /// What every backend's breaker and health tracker count milliseconds from: one clock
    /// reading per call serves them all.
    epoch: tokio::time::Instant,
    /// Stamps every write, so versioned backends can refuse an older replayed one.
    versions: VersionClock,
    /// Cache-aside: loads in flight, throttled loaders, last known values.
    cache: cache::CacheState,
    /// Atomic operations on one key take turns in this process.
    atomics: atomic::Turns,
}

/// The settings every call reads.
#[derive(Debug)]
struct Policy {
    keys: KeyPolicy,
    attempt_timeout: Duration,
    deadline: Duration,
    write_policy: WritePolicy,
    memory_ttl_cap: Duration,
    /// A miss is asked again of the shared backends that hold a copy of every write (a policy
    /// that copies writes down, more than one backend, one of them shared): see
    /// [`ResilientStorage::copies_of`].
    read_behind: bool,
}

/// Events, background tasks and shutdown.
#[derive(Debug)]
struct Lifecycle {
    events: broadcast::Sender<StorageEvent>,
    shut_down: AtomicBool,
    stop: watch::Sender<bool>,
    monitors: Mutex<Vec<JoinHandle<()>>>,
    /// Wakes the replayer when a write-behind copy is recorded.
    replay_wake: Arc<tokio::sync::Notify>,
}

impl ResilientStorage {
    /// A builder with the defaults: failover strategy, default breaker and health settings,
    /// 500 ms per attempt, 2 s deadline, memory fallback on, local locks off.
    pub fn builder() -> StorageBuilder {
        StorageBuilder::default()
    }

    /// `now` in milliseconds since the storage's epoch.
    fn ms(&self, now: tokio::time::Instant) -> u64 {
        crate::breaker::ms_since(self.inner.epoch, now)
    }

    /// Names of the backends in priority order.
    pub fn backend_names(&self) -> Vec<String> {
        self.inner.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// Subscribes to failover, circuit and health events.
    pub fn subscribe(&self) -> broadcast::Receiver<StorageEvent> {
        self.inner.life.events.subscribe()
    }

    /// Opens a backend's breaker by hand (for maintenance), or with `open = false` ends that and
    /// lets probes decide. False when no backend has that name.
    pub fn force_open(&self, backend: &str, open: bool) -> bool {
        match self.inner.slots.iter().find(|s| s.name == backend) {
            Some(slot) if open => {
                slot.breaker.force_open();
                true
            }
            Some(slot) => {
                slot.breaker.release_forced_open();
                true
            }
            None => false,
        }
    }

    /// Stops the health monitors and shuts every backend down. Write-behind copies and replay
    /// records still pending are sent first, to the backends that can take them, within the
    /// attempt timeout. Later calls fail with [`Error::Shutdown`](crate::Error::Shutdown).
    /// Idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.life.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = inner.life.stop.send(true);
        let monitors = std::mem::take(
            &mut *inner
                .life
                .monitors
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for monitor in monitors {
            let _ = monitor.await;
        }
        for slot in &inner.slots {
            slot.backend.shutdown().await;
        }
    }
}
