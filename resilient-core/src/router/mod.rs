//! [`ResilientStorage`]: validates input, asks the strategy for candidates, and runs each
//! attempt under its breaker, its timeout and the call's deadline.

mod builder;
mod guard;
mod handoff;
mod slot;
mod telemetry;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

pub use builder::{
    BackendOptions, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_FAILBACK_DELAY,
    DEFAULT_MAX_HINTS, DEFAULT_MEMORY_TTL_CAP, LockFailover, MEMORY_FALLBACK_PRIORITY,
    StorageBuilder, WritePolicy,
};
pub use guard::{LockGuard, LockLost, LockOptions};
use handoff::{Hint, VersionClock};
use slot::Slot;
use telemetry::Outcome;

use crate::backend::{Backend, LockGrant, LockOutcome, WriteVersion};
use crate::breaker::CircuitState;
use crate::error::{Attempt, Attempts, Error, Operation, Result};
use crate::events::StorageEvent;
use crate::key::{KeyPolicy, check_holder, check_ttl};
use crate::report::{HealthReport, OverallStatus};
use crate::strategy::{BackendView, Candidates, MAX_BACKENDS, Routing, SelectionStrategy};

type CallFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Runs `call` under `budget`. A call that completes on its first poll (an in-process backend)
/// never arms a timer; any other gets `tokio::time::timeout`.
async fn bounded<T>(
    budget: Duration,
    mut call: CallFuture<'_, T>,
) -> std::result::Result<Result<T>, tokio::time::error::Elapsed> {
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(result) => Ok(result),
        std::task::Poll::Pending => tokio::time::timeout(budget, call).await,
    }
}

/// Reports the result of a [`bounded`] call made outside [`ResilientStorage::attempts`] on its
/// permit: a success, a counted failure (a transient error or the timeout), or nothing (a
/// caller error, which says nothing about the backend). Returns the outcome for metrics.
fn settle<T>(
    permit: crate::breaker::Permit<'_>,
    result: &std::result::Result<Result<T>, tokio::time::error::Elapsed>,
    elapsed: Duration,
) -> Outcome {
    match result {
        Ok(Ok(_)) => {
            permit.success(elapsed);
            Outcome::Answered
        }
        Ok(Err(error)) if error.is_transient() => {
            permit.failure();
            Outcome::Failed
        }
        Ok(Err(_)) => {
            permit.ignore();
            Outcome::Answered
        }
        Err(_) => {
            permit.failure();
            Outcome::TimedOut
        }
    }
}

const NONE: usize = usize::MAX;
const MAX_LOCK_HINTS: usize = 4096;

/// Which backends an operation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Data,
    /// Acquire and extend: calls that create or prolong leases.
    Lock,
    /// Release: goes to the backend that granted the lock even while lock authority moves.
    Release,
}

impl Route {
    fn locks(self) -> bool {
        matches!(self, Route::Lock | Route::Release)
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

#[derive(Debug)]
struct Inner {
    slots: Vec<Arc<Slot>>,
    strategy: Arc<dyn SelectionStrategy>,
    keys: KeyPolicy,
    attempt_timeout: Duration,
    deadline: Duration,
    local_locks: bool,
    write_policy: WritePolicy,
    memory_ttl_cap: Duration,
    lock_failover: LockFailover,
    /// The highest-priority backend that can hold locks: where every lock call goes under
    /// [`LockFailover::Never`].
    lock_authority: Option<usize>,
    events: broadcast::Sender<StorageEvent>,
    active: AtomicUsize,
    /// When `active` last changed, in ms since `epoch`.
    active_since_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
    shut_down: AtomicBool,
    stop: watch::Sender<bool>,
    monitors: Mutex<Vec<JoinHandle<()>>>,
    // Which backend granted each lock this process holds, so extend and release go there first.
    lock_hints: Mutex<HashMap<(String, String), (usize, Instant)>>,
    /// Stamps every write, so versioned backends can refuse an older replayed one.
    versions: VersionClock,
    /// Wakes the replayer when a write-behind copy is recorded.
    replay_wake: Arc<tokio::sync::Notify>,
    /// A miss is asked again of the next shared backend (a policy that copies writes down, with
    /// a shared backend below the first).
    read_behind: bool,
}

impl Inner {
    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        slots: Vec<Arc<Slot>>,
        strategy: Arc<dyn SelectionStrategy>,
        keys: KeyPolicy,
        attempt_timeout: Duration,
        deadline: Duration,
        local_locks: bool,
        write_policy: WritePolicy,
        memory_ttl_cap: Duration,
        lock_failover: LockFailover,
        events: broadcast::Sender<StorageEvent>,
        stop: watch::Sender<bool>,
        monitors: Vec<JoinHandle<()>>,
        replay_wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        let read_behind = write_policy != WritePolicy::Selected
            && slots.iter().skip(1).any(|slot| slot.capabilities.shared);
        let lock_authority = slots
            .iter()
            .position(|slot| lock_eligible(slot, local_locks));
        Self {
            slots,
            strategy,
            keys,
            attempt_timeout,
            deadline,
            local_locks,
            write_policy,
            memory_ttl_cap,
            lock_failover,
            lock_authority,
            events,
            active: AtomicUsize::new(NONE),
            active_since_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            shut_down: AtomicBool::new(false),
            stop,
            monitors: Mutex::new(monitors),
            lock_hints: Mutex::new(HashMap::new()),
            versions: VersionClock::default(),
            replay_wake,
            read_behind,
        }
    }
}

impl ResilientStorage {
    /// A builder with the defaults: failover strategy, default breaker and health settings,
    /// 500 ms per attempt, 2 s deadline, memory fallback on, local locks off.
    pub fn builder() -> StorageBuilder {
        StorageBuilder::default()
    }

    /// Reads a key: `None` when absent or expired. A miss is an answer and never fails over;
    /// under a policy that copies writes down ([`WritePolicy::WriteBehind`], the default, or
    /// [`WritePolicy::WriteThrough`]) a miss is asked again of the next backend shared across
    /// processes, which holds a copy of every write.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = self.inner.keys.full_key(key)?;
        let key = &*key;
        let start = self.inner.read_behind.then(Instant::now);
        let (value, served) = self
            .route(Operation::Get, Route::Data, key, None, |index, b| {
                // A backend with writes still to replay is not routed to; this covers a read
                // that raced with the end of its replay. A write-behind copy not yet sent is
                // read from its record too.
                match self.inner.slots[index].hints.get(key) {
                    Some(hint) => Box::pin(std::future::ready(Ok(hint.read(Instant::now())))),
                    None => b.get(key),
                }
            })
            .await?;
        match (value, start) {
            (None, Some(start)) => Ok(self.read_behind(served, key, start).await),
            (value, _) => Ok(value),
        }
    }

    /// Writes a key, with an optional TTL that replaces any earlier one.
    pub async fn set(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let value = value.into();
        let key = self.inner.keys.full_key(key)?;
        self.inner.keys.check_value(&value)?;
        if let Some(ttl) = ttl {
            check_ttl(ttl)?;
        }
        let key = &*key;
        let written = Instant::now();
        let version = self.inner.versions.next();
        let hint = |ttl: Option<Duration>| Hint::Set {
            value: value.clone(),
            expires_at: ttl.and_then(|ttl| written.checked_add(ttl)),
        };
        self.supersede(key, version, || hint(ttl));
        let (_, served) = self
            .route(Operation::Set, Route::Data, key, None, |_, b| {
                b.set_versioned(key, value.clone(), ttl, version)
            })
            .await?;
        self.hand_off(served, key, version, || hint(ttl));
        if self.inner.write_policy == WritePolicy::WriteBehind {
            self.copy_behind(served, key, version, || hint(ttl));
        } else if self.inner.write_policy == WritePolicy::WriteThrough {
            // Copies to the memory store are capped, so it cannot hold values indefinitely.
            let ttl_for = |slot: &Slot| {
                if slot.is_local_memory() {
                    Some(ttl.map_or(self.inner.memory_ttl_cap, |t| {
                        t.min(self.inner.memory_ttl_cap)
                    }))
                } else {
                    ttl
                }
            };
            self.write_through(
                served,
                key,
                version,
                written,
                |slot| hint(ttl_for(slot)),
                |slot| {
                    slot.backend
                        .set_versioned(key, value.clone(), ttl_for(slot), version)
                },
            )
            .await;
        }
        Ok(())
    }

    /// Removes a key; true when it existed on the backend that served the call.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.inner.keys.full_key(key)?;
        let key = &*key;
        // Write-through copies share the call's deadline; only they need its start.
        let start = (self.inner.write_policy == WritePolicy::WriteThrough).then(Instant::now);
        let version = self.inner.versions.next();
        self.supersede(key, version, || Hint::Delete);
        let (existed, served) = self
            .route(Operation::Delete, Route::Data, key, None, |_, b| {
                b.delete_versioned(key, version)
            })
            .await?;
        self.hand_off(served, key, version, || Hint::Delete);
        if self.inner.write_policy == WritePolicy::WriteBehind {
            self.copy_behind(served, key, version, || Hint::Delete);
        } else if let Some(start) = start {
            self.write_through(
                served,
                key,
                version,
                start,
                |_| Hint::Delete,
                |slot| {
                    Box::pin(async move {
                        slot.backend
                            .delete_versioned(key, version)
                            .await
                            .map(|_| ())
                    })
                },
            )
            .await;
        }
        Ok(existed)
    }

    /// Reads a key and decodes it from JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| Error::Serde {
                        action: "decoded",
                        source,
                    })
            }
            None => Ok(None),
        }
    }

    /// Encodes a value as JSON and writes it.
    pub async fn set_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Serde {
            action: "encoded",
            source,
        })?;
        self.set(key, bytes, ttl).await
    }

    /// Takes a lock for `ttl` unless another holder has it. Locks go only to backends shared
    /// across processes unless [local locks](StorageBuilder::local_locks) are enabled; a lock
    /// held by someone else is an answer ([`LockOutcome::Held`]) and never fails over.
    pub async fn acquire_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LockOutcome> {
        let full = self.inner.keys.full_key(name)?;
        check_holder(holder)?;
        check_ttl(ttl)?;
        let full = &*full;
        let (outcome, index) = self
            .route(Operation::AcquireLock, Route::Lock, full, None, |_, b| {
                b.acquire_lock(full, holder, ttl)
            })
            .await?;
        Ok(match outcome {
            LockOutcome::Acquired(grant) => {
                let grant = self.finish_grant(grant, name, index);
                self.remember_lock(name, holder, index, ttl);
                LockOutcome::Acquired(grant)
            }
            held => held,
        })
    }

    /// Prolongs a lock held by `holder` to `ttl` from now; `None` when `holder` does not hold
    /// it. Goes first to the backend that granted the lock.
    pub async fn extend_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LockGrant>> {
        let full = self.inner.keys.full_key(name)?;
        check_holder(holder)?;
        check_ttl(ttl)?;
        let full = &*full;
        let prefer = self.lock_hint(name, holder);
        let (grant, index) = self
            .route(Operation::ExtendLock, Route::Lock, full, prefer, |_, b| {
                b.extend_lock(full, holder, ttl)
            })
            .await?;
        Ok(grant.map(|grant| {
            self.remember_lock(name, holder, index, ttl);
            self.finish_grant(grant, name, index)
        }))
    }

    /// Releases a lock held by `holder`; false when `holder` does not hold it. Goes first to
    /// the backend that granted the lock.
    ///
    /// A release that fails with a timeout may still reach the server later. If `holder` has
    /// acquired the lock again by then, that late release ends the new lease (a re-acquire by
    /// the same holder keeps the token, so nothing tells the two apart): use a fresh holder id
    /// for each acquisition when a release can time out.
    pub async fn release_lock(&self, name: &str, holder: &str) -> Result<bool> {
        let full = self.inner.keys.full_key(name)?;
        check_holder(holder)?;
        let full = &*full;
        let prefer = self.lock_hint(name, holder);
        let (released, _) = self
            .route(
                Operation::ReleaseLock,
                Route::Release,
                full,
                prefer,
                |_, b| b.release_lock(full, holder),
            )
            .await?;
        self.hints().remove(&(name.to_owned(), holder.to_owned()));
        Ok(released)
    }

    /// The health report: overall status, active backend, and each backend's health, circuit,
    /// failures and latency.
    pub fn health(&self) -> HealthReport {
        let inner = &self.inner;
        let now = Instant::now();
        let backends = inner
            .slots
            .iter()
            .map(|slot| (slot.name.clone(), slot.report()))
            .collect::<indexmap::IndexMap<_, _>>();
        let routable = inner
            .slots
            .iter()
            .filter(|slot| slot.view(now, true, true).available)
            .count();
        // Write-behind copies on their way are normal operation; a backlog from an outage that
        // keeps a backend out of traffic, or writes lost since the last replay, are not.
        let all_well = inner.slots.iter().zip(backends.values()).all(|(slot, b)| {
            b.circuit_state == CircuitState::Closed
                && matches!(
                    b.health,
                    crate::HealthState::Healthy | crate::HealthState::Unknown
                )
                && !slot.hints.blocks_traffic()
                && b.replay_lost == 0
        });
        let status = if routable == 0 || inner.shut_down.load(Ordering::Acquire) {
            OverallStatus::Unhealthy
        } else if all_well {
            OverallStatus::Healthy
        } else {
            OverallStatus::Degraded
        };
        HealthReport {
            status,
            active_backend: self.active_backend(),
            last_served_backend: self.last_served_backend(),
            strategy: inner.strategy.name().to_owned(),
            backends,
        }
    }

    /// Where the next key-value call goes: the backend the strategy would try first now. An
    /// idle storage whose primary recovered reports the primary once the strategy would move
    /// back to it, not the fallback that served the last call. `None` when no backend is
    /// available.
    pub fn active_backend(&self) -> Option<String> {
        let (_, candidates) = self.candidates(Route::Data, Instant::now(), None);
        let index = candidates.first()?;
        self.inner.slots.get(index).map(|slot| slot.name.clone())
    }

    /// The backend that served the last key-value or lock call, `None` before the first.
    pub fn last_served_backend(&self) -> Option<String> {
        let index = self.inner.active.load(Ordering::Relaxed);
        self.inner.slots.get(index).map(|slot| slot.name.clone())
    }

    /// Names of the backends in priority order.
    pub fn backend_names(&self) -> Vec<String> {
        self.inner.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// Subscribes to failover, circuit and health events.
    pub fn subscribe(&self) -> broadcast::Receiver<StorageEvent> {
        self.inner.events.subscribe()
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

    /// Stops the health monitors and shuts every backend down. Later calls fail with
    /// [`Error::Shutdown`]. Idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = inner.stop.send(true);
        let monitors =
            std::mem::take(&mut *inner.monitors.lock().unwrap_or_else(|p| p.into_inner()));
        for monitor in monitors {
            let _ = monitor.await;
        }
        for slot in &inner.slots {
            slot.backend.shutdown().await;
        }
    }

    /// After a write served by backend `served`: every backend above it missed the write and
    /// keeps a record of it for replay; a record the serving backend already had is replaced,
    /// so its replay ends with this newest value. Strategies that spread load treat backends as
    /// peers and record nothing here ([`WritePolicy::WriteBehind`] copies to every peer).
    fn hand_off(&self, served: usize, key: &str, version: WriteVersion, hint: impl Fn() -> Hint) {
        let inner = &self.inner;
        if inner.strategy.spreads_load() {
            return;
        }
        for slot in &inner.slots[..served] {
            self.record_missed(slot, key, hint(), version);
        }
        if let Some(slot) = inner.slots.get(served) {
            slot.hints.refresh(key, version, hint);
        }
    }

    /// Before a write is sent: a replay record of the key on any backend now holds this write,
    /// with a new version. A replay of the older record that is in flight may land after this
    /// write on the server; its record then stays, so a later pass writes the newest value
    /// again, and reads answer from it meanwhile. Nothing to do (one atomic load per backend)
    /// while no backend has records.
    fn supersede(&self, key: &str, version: WriteVersion, hint: impl Fn() -> Hint) {
        for slot in &self.inner.slots {
            slot.hints.refresh(key, version, &hint);
        }
    }

    /// Keeps a write `slot` missed for replay, or reports it lost when the bound is reached.
    fn record_missed(&self, slot: &Slot, key: &str, hint: Hint, version: WriteVersion) {
        self.record(slot, key, hint, version, true);
    }

    /// Keeps a write for `slot` to receive: one it `missed`, or a write-behind copy.
    fn record(&self, slot: &Slot, key: &str, hint: Hint, version: WriteVersion, missed: bool) {
        let recorded = slot.hints.record(key, hint, version, missed);
        slot.metrics.backlog(slot.hints.pending());
        if recorded.is_err() {
            let lost = slot.hints.lost();
            slot.metrics.lost(lost);
            tracing::warn!(backend = %slot.name, lost, "replay records full: a missed write is lost");
            // One event per thousand, so an overflow cannot flood subscribers.
            if lost % 1000 == 1 {
                let _ = self.inner.events.send(StorageEvent::ReplayLost {
                    backend: slot.name.clone(),
                    lost,
                });
            }
        }
    }

    /// [`WritePolicy::WriteBehind`]: a record of the write for every shared backend below the
    /// one that served it (every other shared backend under a strategy that spreads load),
    /// which the replayer sends in the background and reads consult until it has landed.
    fn copy_behind(
        &self,
        served: usize,
        key: &str,
        version: WriteVersion,
        hint: impl Fn() -> Hint,
    ) {
        let inner = &self.inner;
        let peers = inner.strategy.spreads_load();
        let mut recorded = false;
        for (index, slot) in inner.slots.iter().enumerate() {
            if index == served || !slot.capabilities.shared || (index < served && !peers) {
                continue;
            }
            self.record(slot, key, hint(), version, false);
            recorded = true;
        }
        if recorded {
            inner.replay_wake.notify_one();
        }
    }

    /// After a miss on backend `served` under a policy that copies writes down: the next shared
    /// backend below it holds a copy of every write, so a primary that lost its data (restarted
    /// empty) still reads what was written. Within the call's deadline; a failure of this read
    /// counts against that backend's breaker and reads as the miss it followed.
    async fn read_behind(&self, served: usize, key: &str, start: Instant) -> Option<Bytes> {
        let inner = &self.inner;
        let now = Instant::now();
        let slot = inner
            .slots
            .get(served + 1..)?
            .iter()
            .find(|slot| slot.capabilities.shared && slot.view(now, true, true).available)?;
        if let Some(hint) = slot.hints.get(key) {
            return hint.read(now);
        }
        let remaining = (start + inner.deadline).saturating_duration_since(now);
        if remaining.is_zero() {
            return None;
        }
        let permit = slot.breaker.try_acquire_at(now).ok()?;
        let budget = inner.attempt_timeout.min(remaining);
        let result = bounded(budget, slot.backend.get(key)).await;
        let elapsed = now.elapsed();
        let outcome = settle(permit, &result, elapsed);
        let value = result.ok().and_then(Result::ok).flatten();
        slot.metrics.attempt(Operation::Get, outcome, elapsed);
        tracing::debug!(backend = %slot.name, ?outcome, ?elapsed, "read behind a miss");
        value
    }

    /// [`WritePolicy::WriteThrough`]: copies of a write to every backend below the one that
    /// served it, all at once, each within the attempt timeout and all within the deadline of
    /// the call that began at `start`. A copy that fails or does not finish in time, or a
    /// backend that is unavailable, leaves a record for replay as any missed write does:
    /// otherwise a later failover to it would read the older value.
    async fn write_through<'a>(
        &'a self,
        served: usize,
        key: &str,
        version: WriteVersion,
        start: Instant,
        hint: impl Fn(&Slot) -> Hint,
        call: impl Fn(&'a Slot) -> CallFuture<'a, ()>,
    ) {
        let inner = &self.inner;
        let now = Instant::now();
        let remaining = (start + inner.deadline).saturating_duration_since(now);
        let budget = inner.attempt_timeout.min(remaining);
        let copies = inner.slots[served + 1..].iter().map(|slot| {
            let permit = match slot.view(now, true, true).available && !budget.is_zero() {
                true => slot.breaker.try_acquire_at(now).ok(),
                false => None,
            };
            let copy = permit.map(|permit| (permit, call(slot)));
            async move {
                let Some((permit, copy)) = copy else {
                    return false;
                };
                let result = bounded(budget, copy).await;
                if let Ok(Err(error)) = &result
                    && error.is_transient()
                {
                    tracing::debug!(backend = %slot.name, %error, "write-through copy failed");
                }
                settle(permit, &result, now.elapsed());
                matches!(result, Ok(Ok(())))
            }
        });
        let copied = futures_util::future::join_all(copies).await;
        for (slot, copied) in inner.slots[served + 1..].iter().zip(copied) {
            if copied {
                // A record from an earlier miss now replays this newest value.
                slot.hints.refresh(key, version, || hint(slot));
            } else {
                self.record_missed(slot, key, hint(slot), version);
            }
        }
    }

    fn finish_grant(&self, mut grant: LockGrant, name: &str, index: usize) -> LockGrant {
        let slot = &self.inner.slots[index];
        name.clone_into(&mut grant.name);
        grant.backend.clone_from(&slot.name);
        grant.local = !slot.capabilities.shared;
        grant
    }

    fn hints(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (usize, Instant)>> {
        self.inner
            .lock_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn remember_lock(&self, name: &str, holder: &str, index: usize, ttl: Duration) {
        let now = Instant::now();
        let mut hints = self.hints();
        if hints.len() >= MAX_LOCK_HINTS {
            hints.retain(|_, (_, expires)| *expires > now);
        }
        if hints.len() < MAX_LOCK_HINTS {
            let expires = now.checked_add(ttl).unwrap_or(now);
            hints.insert((name.to_owned(), holder.to_owned()), (index, expires));
        }
    }

    fn lock_hint(&self, name: &str, holder: &str) -> Option<usize> {
        self.hints()
            .get(&(name.to_owned(), holder.to_owned()))
            .map(|(index, _)| *index)
    }

    fn eligible(&self, slot: &Slot, route: Route) -> bool {
        match route {
            Route::Data => true,
            Route::Lock | Route::Release => lock_eligible(slot, self.inner.local_locks),
        }
    }

    /// Views of every backend and the strategy's order. With `prefer`, that backend goes first
    /// when it is available.
    ///
    /// Lock calls get one backend, never a failover chain: failing over inside a call could
    /// grant a lease on one backend while another still holds a live one. Under
    /// [`LockFailover::Never`] that backend is always the lock authority. Under
    /// [`LockFailover::AfterOutage`] lock authority moves between backends only once the one
    /// that had it has answered no lock call for the delay; until then acquires and extends
    /// fail, and only releases still reach it.
    fn candidates(
        &self,
        route: Route,
        now: Instant,
        prefer: Option<usize>,
    ) -> ([BackendView; MAX_BACKENDS], Candidates) {
        let inner = &self.inner;
        let views = self.views(route, now);
        let backends = &views[..inner.slots.len()];
        let prefer = prefer.filter(|&p| backends.get(p).is_some_and(|b| b.available));
        let mut candidates = Candidates::new();
        let pick = match (route, inner.lock_failover) {
            (Route::Data, _) => {
                if let Some(p) = prefer {
                    candidates.push(p);
                }
                inner
                    .strategy
                    .select(&Routing { backends, now }, &mut candidates);
                return (views, candidates);
            }
            (_, LockFailover::Never) => inner
                .lock_authority
                .filter(|&a| backends.get(a).is_some_and(|b| b.available)),
            (_, LockFailover::AfterOutage { delay }) => {
                inner
                    .strategy
                    .select(&Routing { backends, now }, &mut candidates);
                let natural = candidates.first();
                match route {
                    Route::Lock
                        if natural.is_some_and(|c| {
                            self.lock_authority_elsewhere(c, now, delay).is_some()
                        }) =>
                    {
                        None
                    }
                    _ => prefer.or(natural),
                }
            }
        };
        candidates = Candidates::new();
        if let Some(index) = pick {
            candidates.push(index);
        }
        (views, candidates)
    }

    /// Every backend's view for `route`.
    fn views(&self, route: Route, now: Instant) -> [BackendView; MAX_BACKENDS] {
        let mut views = [BackendView::default(); MAX_BACKENDS];
        for (view, slot) in views.iter_mut().zip(&self.inner.slots) {
            *view = slot.view(now, self.eligible(slot, route), route == Route::Data);
        }
        if route.locks()
            && let LockFailover::AfterOutage { delay } = self.inner.lock_failover
        {
            self.hold_back_lock_failover(&mut views, now, delay);
        }
        views
    }

    /// Another lock backend than `to` that answered a lock call less than `delay` ago, so it
    /// may still hold live leases, with the time left until they have all expired.
    fn lock_authority_elsewhere(
        &self,
        to: usize,
        now: Instant,
        delay: Duration,
    ) -> Option<(usize, Duration)> {
        self.inner
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, slot)| i != to && self.eligible(slot, Route::Lock))
            .filter_map(|(i, slot)| {
                let since = now.saturating_duration_since(slot.lock_answered_at()?);
                (since < delay).then(|| (i, delay - since))
            })
            .max_by_key(|&(_, left)| left)
    }

    /// Marks lock backends below one that went down less than `delay` ago as unavailable.
    fn hold_back_lock_failover(
        &self,
        views: &mut [BackendView; MAX_BACKENDS],
        now: Instant,
        delay: Duration,
    ) {
        let mut held_back = false;
        for (view, slot) in views.iter_mut().zip(&self.inner.slots) {
            if !self.eligible(slot, Route::Lock) {
                continue;
            }
            if held_back {
                view.available = false;
                continue;
            }
            if !view.available && now.saturating_duration_since(slot.lock_down(now)) < delay {
                held_back = true;
            }
        }
    }

    fn unavailable(&self, operation: Operation, route: Route) -> Error {
        let inner = &self.inner;
        if route.locks() && inner.lock_authority.is_none() {
            return Error::NoLockBackend { operation };
        }
        if route.locks()
            && let LockFailover::AfterOutage { delay } = inner.lock_failover
        {
            let now = Instant::now();
            let mut natural = Candidates::new();
            let views = self.views(route, now);
            inner.strategy.select(
                &Routing {
                    backends: &views[..inner.slots.len()],
                    now,
                },
                &mut natural,
            );
            if let Some(to) = natural.first()
                && let Some((from, left)) = self.lock_authority_elsewhere(to, now, delay)
            {
                return Error::NoBackendAvailable {
                    operation,
                    reasons: format!(
                        "lock authority is moving from [{}] to [{}]: locks resume in {left:?}, \
                         once every lease [{}] may still hold has expired",
                        inner.slots[from].name, inner.slots[to].name, inner.slots[from].name
                    ),
                };
            }
        }
        let reason = |slot: &Slot| {
            let breaker = slot.breaker.state();
            let health = slot.health.state();
            if breaker != CircuitState::Closed {
                format!("[{}] circuit {breaker}", slot.name)
            } else {
                format!("[{}] {health}", slot.name)
            }
        };
        match (route, inner.lock_failover, inner.lock_authority) {
            (Route::Data, ..) => Error::NoBackendAvailable {
                operation,
                reasons: inner
                    .slots
                    .iter()
                    .map(|slot| reason(slot))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            (_, LockFailover::Never, Some(authority)) => {
                let slot = &inner.slots[authority];
                Error::NoBackendAvailable {
                    operation,
                    reasons: format!(
                        "{} (locks fail closed: every lock call goes to [{}], the lock \
                         authority, and no other backend grants while it is out of reach, so \
                         that no two processes can hold one lock; see LockFailover)",
                        reason(slot),
                        slot.name
                    ),
                }
            }
            (_, failover, _) => {
                let reasons = inner
                    .slots
                    .iter()
                    .filter(|slot| self.eligible(slot, route))
                    .map(|slot| reason(slot))
                    .collect::<Vec<_>>()
                    .join("; ");
                let delay = match failover {
                    LockFailover::AfterOutage { delay } => delay,
                    LockFailover::Never => Duration::ZERO,
                };
                let local = if inner.local_locks {
                    ""
                } else {
                    "; local locks are not enabled"
                };
                Error::NoBackendAvailable {
                    operation,
                    reasons: format!(
                        "{reasons} (locks fail closed: a lower backend grants only after a \
                         higher one has been out of reach for {delay:?}{local})"
                    ),
                }
            }
        }
    }

    /// Runs `call` on the candidates in order until one answers, in one tracing span per
    /// operation with an event per attempt. Returns the answer and the index of the backend
    /// that gave it. `key` (a key or lock name) is logged at debug level only.
    async fn route<'a, T>(
        &'a self,
        operation: Operation,
        route: Route,
        key: &str,
        prefer: Option<usize>,
        call: impl Fn(usize, &'a dyn Backend) -> CallFuture<'a, T>,
    ) -> Result<(T, usize)> {
        let span = tracing::info_span!("storage", operation = operation.as_str());
        if span.is_disabled() {
            // No subscriber wants it: skip the span's enter and exit on every poll.
            return self.attempts(operation, route, prefer, call).await;
        }
        async {
            tracing::debug!(key, "operation");
            let result = self.attempts(operation, route, prefer, call).await;
            if let Err(error) = &result {
                tracing::debug!(%error, "operation failed");
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn attempts<'a, T>(
        &'a self,
        operation: Operation,
        route: Route,
        prefer: Option<usize>,
        call: impl Fn(usize, &'a dyn Backend) -> CallFuture<'a, T>,
    ) -> Result<(T, usize)> {
        let inner = &self.inner;
        if inner.shut_down.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let start = Instant::now();
        let deadline = start + inner.deadline;
        let (views, candidates) = self.candidates(route, start, prefer);
        if candidates.is_empty() {
            return Err(self.unavailable(operation, route));
        }
        let mut attempts = Vec::new();
        for (position, index) in candidates.iter().enumerate() {
            let slot = &inner.slots[index];
            let now = if position == 0 { start } else { Instant::now() };
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                break;
            }
            let permit = match slot.breaker.try_acquire_at(now) {
                Ok(permit) => permit,
                Err(rejected) => {
                    slot.metrics.rejected(operation);
                    tracing::debug!(backend = %slot.name, state = %rejected.state, "breaker refused the attempt");
                    attempts.push(Attempt {
                        backend: slot.name.clone(),
                        error: Error::CircuitOpen {
                            backend: slot.name.clone(),
                        },
                    });
                    continue;
                }
            };
            let budget = inner.attempt_timeout.min(remaining);
            let result = bounded(budget, call(index, &*slot.backend)).await;
            let end = Instant::now();
            let elapsed = end.saturating_duration_since(now);
            let outcome = match &result {
                Ok(Err(error)) if error.is_transient() => Outcome::Failed,
                Ok(_) => Outcome::Answered,
                Err(_) => Outcome::TimedOut,
            };
            slot.metrics.attempt(operation, outcome, elapsed);
            tracing::debug!(backend = %slot.name, ?outcome, ?elapsed, "attempt");
            let error = match result {
                Ok(Ok(value)) => {
                    permit.success_at(elapsed, end);
                    if route == Route::Lock {
                        slot.lock_served(end);
                    }
                    slot.health.observe_latency(elapsed);
                    let routing = Routing {
                        backends: &views[..inner.slots.len()],
                        now: start,
                    };
                    self.served(operation, index, position, &candidates, &attempts, &routing);
                    return Ok((value, index));
                }
                Ok(Err(error)) if error.is_transient() => {
                    permit.failure_at(end);
                    error
                }
                Ok(Err(error)) => {
                    permit.ignore();
                    return Err(error);
                }
                Err(_) => {
                    permit.failure_at(end);
                    slot.health.observe_latency(elapsed);
                    Error::Timeout {
                        backend: slot.name.clone(),
                        operation,
                        after: budget,
                    }
                }
            };
            if route.locks() {
                slot.lock_down(end);
            }
            tracing::warn!(backend = %slot.name, error = %error, "backend attempt failed");
            attempts.push(Attempt {
                backend: slot.name.clone(),
                error,
            });
        }
        let attempts = Attempts(attempts);
        if Instant::now() >= deadline {
            Err(Error::DeadlineExceeded {
                operation,
                deadline: inner.deadline,
                attempts,
            })
        } else {
            Err(Error::AllFailed {
                operation,
                attempts,
            })
        }
    }

    fn served(
        &self,
        operation: Operation,
        index: usize,
        position: usize,
        candidates: &Candidates,
        attempts: &[Attempt],
        routing: &Routing<'_>,
    ) {
        let inner = &self.inner;
        let first = candidates.first().unwrap_or(index);
        inner.strategy.served(routing, first, index);
        let name = &inner.slots[index].name;
        if position > 0
            && let (Some(first), Some(last)) = (candidates.first(), attempts.last())
        {
            let from = &inner.slots[first].name;
            tracing::warn!(%from, to = %name, reason = %last.error, "failed over");
            telemetry::failover(operation, from, name);
            let _ = inner.events.send(StorageEvent::Failover {
                operation,
                from: from.clone(),
                to: name.clone(),
                reason: last.error.to_string(),
            });
        }
        let previous = inner.active.load(Ordering::Relaxed);
        if previous != index {
            // A call that began before the last change, and followed its first choice, only
            // followed an older choice: not a change.
            let began = inner.since_epoch(routing.now);
            if position == 0
                && previous != NONE
                && began < inner.active_since_ms.load(Ordering::Relaxed)
            {
                return;
            }
            inner.active.store(index, Ordering::Relaxed);
            inner
                .active_since_ms
                .store(inner.since_epoch(Instant::now()), Ordering::Relaxed);
            if !inner.strategy.spreads_load() {
                let from = inner.slots.get(previous).map(|s| s.name.clone());
                tracing::info!(from = ?from, to = %name, "active backend changed");
                let _ = inner.events.send(StorageEvent::ActiveBackendChanged {
                    from,
                    to: name.clone(),
                });
            }
        }
    }
}

/// Whether `slot` may hold locks: it can, and it is shared across processes or local locks
/// are enabled.
fn lock_eligible(slot: &Slot, local_locks: bool) -> bool {
    slot.capabilities.locks && (slot.capabilities.shared || local_locks)
}
