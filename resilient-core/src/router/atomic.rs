//! Atomic operations on one key: [`increment`](ResilientStorage::increment),
//! [`set_if_absent`](ResilientStorage::set_if_absent) and
//! [`compare_and_set`](ResilientStorage::compare_and_set).
//!
//! Across failover an atomic operation's result travels as a value with a version, like any
//! write: the backend that applied it stamps it with one more than the version it held (or the
//! storage's clock, if larger), so the newest result is the one replayed. Before the operation
//! runs on a backend, the key's write that backend has yet to get (a replay record or a
//! write-behind copy) is sent to it, and this process's operations on one key take turns, so
//! each starts from the latest value. A backend that is not durable (Redis) and knows nothing
//! of the key is asked nothing until the next shared backend (PostgreSQL) has said what it
//! holds: a Redis restarted empty continues a count instead of starting it again. Atomic
//! operations never go to a process-local store while a shared backend is configured.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::attempt::{Within, side_attempt};
use super::reads::Unanswered;
use super::replay_log::LoggedWrite;
use super::slot::Slot;
use super::{ResilientStorage, Route, WritePolicy};
use crate::backend::{
    AtomicOp, AtomicOutcome, Backend, BackendExt, KeyWrite, Unknown, WriteOptions, WriteVersion,
};
use crate::error::{Error, Operation, Result};
use crate::key::check_ttl;

/// Turns per key for this process's atomic operations, and which backends take them.
#[derive(Debug)]
pub(super) struct Turns {
    stripes: Box<[Arc<tokio::sync::Mutex<()>>]>,
    /// Some backend that implements atomic operations is shared.
    shared: bool,
}

impl Turns {
    pub(super) fn new(slots: &[Arc<Slot>]) -> Self {
        Self {
            stripes: (0..256)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            shared: slots
                .iter()
                .any(|s| s.capabilities.atomic && s.capabilities.shared),
        }
    }

    pub(super) fn eligible(&self, slot: &Slot) -> bool {
        slot.capabilities.atomic && (slot.capabilities.shared || !self.shared)
    }

    async fn turn(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let hash = super::fnv1a(key.as_bytes());
        let index = usize::try_from(hash % self.stripes.len() as u64).unwrap_or(0);
        self.stripes[index].clone().lock_owned().await
    }
}

impl ResilientStorage {
    /// Adds `delta` (negative to subtract) to the integer at `key` and returns the sum; a key
    /// with no live value counts as 0. `ttl` is set when this creates the key; an existing key
    /// keeps its TTL. The value is stored as ASCII decimal, so `get` reads `"42"` and
    /// `get_json::<i64>` reads 42. A value that is not an integer, or a sum beyond `i64`, is
    /// [`Error::Rejected`].
    ///
    /// Exact within one process across failover, a Redis restarted empty, and a Redis that
    /// returns (see the module docs of the router and README "Atomic operations"); what a
    /// split between processes can lose is written there too.
    ///
    /// ```
    /// # async fn example(storage: resilient_core::ResilientStorage) -> resilient_core::Result<()> {
    /// let visits = storage.increment("visits:/home", 1, None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let outcome = self.atomic(key, AtomicOp::Increment { delta, ttl }).await?;
        outcome
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::backend(
                    self.last_served_backend().unwrap_or_default(),
                    Operation::Atomic,
                    "an increment answered no integer",
                )
            })
    }

    /// Writes `value` only when `key` holds no live value; true when it wrote.
    ///
    /// ```
    /// # async fn example(storage: resilient_core::ResilientStorage) -> resilient_core::Result<()> {
    /// let ttl = Some(std::time::Duration::from_secs(3600));
    /// if storage.set_if_absent("order:42:charged", "1", ttl).await? {
    ///     // First to get here: charge the order.
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_if_absent(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let op = AtomicOp::SetIfAbsent {
            value: value.into(),
            ttl,
        };
        Ok(self.atomic(key, op).await?.applied)
    }

    /// Writes `value` only when `key` holds exactly `expected` (`None`: no live value); true
    /// when it wrote.
    ///
    /// ```
    /// # async fn example(storage: resilient_core::ResilientStorage) -> resilient_core::Result<()> {
    /// let moved = storage
    ///     .compare_and_set("job:7:state", Some(b"queued"), "running", None)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let op = AtomicOp::CompareAndSet {
            expected: expected.map(Bytes::copy_from_slice),
            value: value.into(),
            ttl,
        };
        Ok(self.atomic(key, op).await?.applied)
    }

    /// Validates, takes this process's turn on the key, runs `op` on the first backend that
    /// answers (asking the next shared one first when that backend does not know the key),
    /// then records the result for the backends that missed it, as a write.
    async fn atomic(&self, key: &str, op: AtomicOp) -> Result<AtomicOutcome> {
        let full = self.inner.policy.keys.full_key(key)?;
        let keys = &self.inner.policy.keys;
        let ttl = match &op {
            AtomicOp::Increment { ttl, .. } => *ttl,
            AtomicOp::SetIfAbsent { value, ttl } => {
                keys.check_value(value)?;
                *ttl
            }
            AtomicOp::CompareAndSet {
                expected,
                value,
                ttl,
            } => {
                keys.check_value(value)?;
                if let Some(expected) = expected {
                    keys.check_value(expected)?;
                }
                *ttl
            }
        };
        if let Some(ttl) = ttl {
            check_ttl(ttl)?;
        }
        // Run in the caller's task, and finished in a task of its own if the caller gives up
        // (drops the future): a result is never applied but not recorded, nor the key's turn
        // given up while the call runs. Spawning every call cost a hop to a worker thread and
        // back when the caller is not one (the body of `#[tokio::main]`, `block_on`): two
        // thread wake-ups a call.
        let (storage, full) = (self.clone(), full.into_owned());
        FinishOnDrop::new(async move { storage.atomic_in_turn(&full, op).await }).await
    }

    /// [`atomic`](Self::atomic) once validated: everything within one deadline.
    async fn atomic_in_turn(&self, full: &str, op: AtomicOp) -> Result<AtomicOutcome> {
        let deadline = Instant::now() + self.inner.policy.deadline;
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.inner.atomics.turn(full)).await
        else {
            return Err(Error::DeadlineExceeded {
                operation: Operation::Atomic,
                deadline: self.inner.policy.deadline,
                attempts: crate::error::Attempts::default(),
            });
        };
        let version = self.inner.versions.next();
        let within = Within::Until(deadline);
        let (mut outcome, mut served) = self
            .route_within(
                Operation::Atomic,
                Route::Atomic,
                full,
                None,
                within,
                |index, b| {
                    let unknown = match self.seed_source(index).is_some() {
                        true => Unknown::Ask,
                        false => Unknown::Absent,
                    };
                    Box::pin(self.attempt_atomic(index, b, full, op.clone(), unknown, version))
                },
            )
            .await?;
        if outcome.unknown {
            // The backend does not know the key (a Redis restarted empty, or a key never
            // written): what the next shared backend holds is its value.
            let seed = self.seed(served, full).await?;
            (outcome, served) = self
                .route_within(
                    Operation::Atomic,
                    Route::Atomic,
                    full,
                    Some(served),
                    within,
                    |index, b| {
                        let unknown = Unknown::Seed(seed.clone());
                        Box::pin(self.attempt_atomic(index, b, full, op.clone(), unknown, version))
                    },
                )
                .await?;
            if outcome.unknown {
                return Err(Error::backend(
                    &self.inner.slots[served].name,
                    Operation::Atomic,
                    "asked about a key it was told the value of",
                ));
            }
        }
        if outcome.applied {
            self.spread(served, full, &outcome).await;
        }
        Ok(outcome)
    }

    /// One attempt on backend `index`: the key's write it has yet to get first, then `op`.
    async fn attempt_atomic(
        &self,
        index: usize,
        backend: &dyn Backend,
        key: &str,
        op: AtomicOp,
        unknown: Unknown,
        version: WriteVersion,
    ) -> Result<AtomicOutcome> {
        let slot = &self.inner.slots[index];
        if let Some((record, recorded)) = slot.replay.get_versioned(key) {
            backend
                .replay_write(key, record.replay_at(Instant::now()), recorded)
                .await?;
        }
        backend
            .atomic(key, op, unknown, self.write_options(index, version))
            .await
    }

    /// The backends below `served` that hold a copy of every write under the write policy,
    /// in order, if `served` can lose its data: shared ones (where reads go behind a miss),
    /// and under [`WritePolicy::WriteThrough`] process-local ones too (the memory store's
    /// copies live up to `memory_ttl_cap`).
    fn seed_sources(&self, served: usize) -> impl Iterator<Item = &Arc<Slot>> {
        let inner = &self.inner;
        let lossy = inner
            .slots
            .get(served)
            .is_some_and(|slot| !slot.capabilities.durable);
        let through = inner.policy.write_policy == WritePolicy::WriteThrough;
        inner
            .slots
            .get(served + 1..)
            .unwrap_or_default()
            .iter()
            .filter(move |s| {
                lossy && (through || (inner.policy.read_behind && s.capabilities.shared))
            })
    }

    fn seed_source(&self, served: usize) -> Option<&Arc<Slot>> {
        self.seed_sources(served).next()
    }

    /// What the copies below `served` hold for `key`, each its record first, then a read
    /// within the attempt timeout. A shared copy's answer is the answer; a process-local one
    /// (which may have evicted or expired the key) counts only when it has a value. A shared
    /// copy out of reach fails the call: starting a count again from zero would lose it.
    async fn seed(&self, served: usize, key: &str) -> Result<Option<Bytes>> {
        for slot in self.seed_sources(served) {
            let value = match slot.replay.get(key) {
                Some(record) => record.read(Instant::now()),
                None => self.read_copy(served, slot, key).await?,
            };
            if value.is_some() || slot.capabilities.shared {
                return Ok(value);
            }
        }
        Ok(None)
    }

    async fn read_copy(&self, served: usize, slot: &Slot, key: &str) -> Result<Option<Bytes>> {
        let budget = self.inner.policy.attempt_timeout;
        match side_attempt(slot, Operation::Get, budget, slot.backend.get(key)).await {
            Some(Ok(Ok(value))) => Ok(value),
            outcome => {
                let mut unanswered = Unanswered::default();
                unanswered.note(slot, outcome, budget);
                unanswered.result(self, served, Operation::Atomic)
            }
        }
    }

    /// An applied result, as a write of its value and version: recorded for the backends
    /// above the one that served it, and copied by the write policy.
    async fn spread(&self, served: usize, key: &str, outcome: &AtomicOutcome) {
        let written = Instant::now();
        let value = outcome.value.clone().unwrap_or_default();
        let expires_at = outcome.ttl.and_then(|ttl| written.checked_add(ttl));
        let hint = || LoggedWrite::Set {
            value: value.clone(),
            expires_at,
        };
        self.hand_off(served, key, outcome.version, hint);
        match self.inner.policy.write_policy {
            WritePolicy::WriteBehind => self.copy_behind(served, key, outcome.version, hint),
            WritePolicy::WriteThrough => {
                let ttl_for = |slot: &Slot| self.copy_ttl(slot, outcome.ttl);
                self.write_through(
                    served,
                    key,
                    outcome.version,
                    written,
                    |slot| LoggedWrite::Set {
                        value: value.clone(),
                        expires_at: ttl_for(slot).and_then(|ttl| written.checked_add(ttl)),
                    },
                    |slot| {
                        let write = KeyWrite::Set {
                            value: value.clone(),
                            ttl: ttl_for(slot),
                        };
                        slot.backend.write(
                            key,
                            write,
                            WriteOptions::new(outcome.version)
                                .mode(crate::backend::WriteMode::IfNewer),
                        )
                    },
                )
                .await;
            }
            _ => {}
        }
    }
}

/// A call that finishes even when its caller stops waiting: polled in the caller's task, and
/// handed to a task of its own, where it runs to the end, when dropped before it is done. The
/// future is boxed so that handing it over moves a pointer, not the future.
struct FinishOnDrop<T: Send + 'static> {
    /// Taken out while it is polled: a panic in the call's own poll drops it with the stack
    /// it unwinds, and the drop below finds nothing to hand over.
    call: Option<std::pin::Pin<Box<dyn Future<Output = T> + Send>>>,
    runtime: tokio::runtime::Handle,
}

impl<T: Send + 'static> FinishOnDrop<T> {
    /// Must be called within a tokio runtime, whose handle the drop spawns on.
    fn new(call: impl Future<Output = T> + Send + 'static) -> Self {
        Self {
            call: Some(Box::pin(call)),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl<T: Send + 'static> Future for FinishOnDrop<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        let Some(mut call) = self.call.take() else {
            panic!("FinishOnDrop polled after it finished");
        };
        let poll = call.as_mut().poll(cx);
        if poll.is_pending() {
            self.call = Some(call);
        }
        poll
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            self.runtime.spawn(call);
        }
    }
}
