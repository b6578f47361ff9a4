//! Writes and deletes: each stamped with a version, sent to the first backend that answers,
//! then recorded for the backends that missed it (replayed when they recover) and copied down
//! by the write policy (write-behind records, or write-through copies within the deadline).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use super::attempt::{bounded, settle};
use super::replay_log::LoggedWrite;
use super::slot::Slot;
use super::{CallFuture, NONE, ResilientStorage, Route, WritePolicy};
use crate::backend::{KeyWrite, WriteMode, WriteOptions, WriteOutcome, WriteVersion};
use crate::error::{Error, Operation, Result};
use crate::events::StorageEvent;
use crate::key::check_ttl;
use crate::strategy::MAX_BACKENDS;

impl ResilientStorage {
    /// Writes a key, with an optional TTL that replaces any earlier one.
    pub async fn set(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let value = value.into();
        let key = self.inner.policy.keys.full_key(key)?;
        self.inner.policy.keys.check_value(&value)?;
        if let Some(ttl) = ttl {
            check_ttl(ttl)?;
        }
        let key = &*key;
        let written = Instant::now();
        let version = self.inner.versions.next();
        let hint = |ttl: Option<Duration>| LoggedWrite::Set {
            value: value.clone(),
            expires_at: ttl.and_then(|ttl| written.checked_add(ttl)),
        };
        let superseded = self.supersede(key, version, || hint(ttl));
        let routed = self
            .route(Operation::Set, Route::Data, key, None, |_, b| {
                let write = KeyWrite::Set {
                    value: value.clone(),
                    ttl,
                };
                b.write(key, write, WriteOptions::new(version))
            })
            .await;
        let (_, served) = self.settled(key, version, superseded, routed)?;
        self.hand_off(served, key, version, || hint(ttl));
        if self.inner.policy.write_policy == WritePolicy::WriteBehind {
            self.copy_behind(served, key, version, || hint(ttl));
        } else if self.inner.policy.write_policy == WritePolicy::WriteThrough {
            // Copies to a process-local store are capped, so it cannot hold values indefinitely.
            let ttl_for = |slot: &Slot| {
                if !slot.capabilities.shared {
                    Some(ttl.map_or(self.inner.policy.memory_ttl_cap, |t| {
                        t.min(self.inner.policy.memory_ttl_cap)
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
                    let write = KeyWrite::Set {
                        value: value.clone(),
                        ttl: ttl_for(slot),
                    };
                    slot.backend.write(key, write, WriteOptions::new(version))
                },
            )
            .await;
        }
        Ok(())
    }

    /// Adds `delta` to the integer at `key` and returns the new value, atomically on the backend
    /// that serves the call (Redis `INCRBY` in a script, one PostgreSQL statement, the memory
    /// store's compute): concurrent increments from any number of processes on that backend
    /// never lose one. A key that is absent, expired or deleted counts as 0; the value is stored
    /// as decimal text, so [`get`](Self::get) reads `b"42"`. `ttl`, when given, becomes the key's
    /// TTL; `None` keeps the one it has. A value that is not an integer, or a result beyond
    /// `i64`, is [`Error::Rejected`] and changes nothing.
    ///
    /// Across a failover the counter moves as its value: the backend that serves the increment
    /// holds the result, and the others get that result (with the write's version) as they get
    /// any write: replayed to a backend above that missed it, copied to the shared ones below
    /// under [`WritePolicy::WriteBehind`]. A backend with a write of this key still waiting to
    /// reach it gets that write first, so an increment never adds to a value it missed. What a
    /// split between processes can lose: two processes incrementing on two different backends
    /// at once (one cut off from Redis) each count from their own value, and the replay keeps
    /// the newer result, not the sum.
    pub async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let key = self.inner.policy.keys.full_key(key)?;
        if let Some(ttl) = ttl {
            check_ttl(ttl)?;
        }
        let key = &*key;
        let written = Instant::now();
        let version = self.inner.versions.next();
        // Counted on the backend it is on: an increment waits for those of the same key on
        // another backend (a failover or failback under way in this process) to be answered
        // and recorded, so it adds to their results, not beside them.
        let counted = Counted::new(self.inner.increments.shard(key));
        let wait = WAIT_FOR_THE_REST.min(self.inner.policy.attempt_timeout / 4);
        let (value, served) = self
            .route(
                Operation::Increment,
                Route::Counter,
                key,
                None,
                |index, b| {
                    let counted = &counted;
                    let slot = &self.inner.slots[index];
                    Box::pin(async move {
                        counted.move_to(index);
                        counted.wait_for_the_rest(index, wait).await;
                        if let Some((write, pending)) = slot.replay.get_with_version(key) {
                            // Bring the backend up to date first: the increment adds to the value
                            // this process last wrote, not to one the backend missed.
                            let options = WriteOptions::new(pending).mode(WriteMode::IfNewer);
                            b.write(key, write.replay_at(Instant::now()), options)
                                .await?;
                            slot.replay.forget(key, pending);
                        }
                        b.increment(key, delta, ttl, WriteOptions::new(version))
                            .await
                    })
                },
            )
            .await?;
        let hint = || LoggedWrite::Set {
            value: Bytes::from(value.to_string()),
            expires_at: ttl.and_then(|ttl| written.checked_add(ttl)),
        };
        self.hand_off(served, key, version, hint);
        match self.inner.policy.write_policy {
            WritePolicy::WriteBehind => self.copy_behind(served, key, version, hint),
            WritePolicy::WriteThrough => {
                self.write_through(
                    served,
                    key,
                    version,
                    written,
                    |_| hint(),
                    |slot| {
                        let write = KeyWrite::Set {
                            value: Bytes::from(value.to_string()),
                            ttl,
                        };
                        slot.backend.write(key, write, WriteOptions::new(version))
                    },
                )
                .await
            }
            _ => {}
        }
        drop(counted);
        Ok(value)
    }

    /// Encodes a value as JSON and writes it.
    pub async fn set_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Serde {
            action: "encoded",
            source: e.into(),
        })?;
        self.set(key, bytes, ttl).await
    }

    /// Removes a key; true when it existed on the backend that served the call.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.inner.policy.keys.full_key(key)?;
        let key = &*key;
        // Write-through copies share the call's deadline; only they need its start.
        let start =
            (self.inner.policy.write_policy == WritePolicy::WriteThrough).then(Instant::now);
        let version = self.inner.versions.next();
        let superseded = self.supersede(key, version, || LoggedWrite::Delete);
        let routed = self
            .route(Operation::Delete, Route::Data, key, None, |_, b| {
                b.write(key, KeyWrite::Delete, WriteOptions::new(version))
            })
            .await;
        let (outcome, served) = self.settled(key, version, superseded, routed)?;
        self.hand_off(served, key, version, || LoggedWrite::Delete);
        if self.inner.policy.write_policy == WritePolicy::WriteBehind {
            self.copy_behind(served, key, version, || LoggedWrite::Delete);
        } else if let Some(start) = start {
            self.write_through(
                served,
                key,
                version,
                start,
                |_| LoggedWrite::Delete,
                |slot| {
                    slot.backend
                        .write(key, KeyWrite::Delete, WriteOptions::new(version))
                },
            )
            .await;
        }
        Ok(outcome.existed)
    }

    /// A routed write's result; when a backend refused it as the caller's error, the replay
    /// records it superseded come back first.
    fn settled<T>(
        &self,
        key: &str,
        version: WriteVersion,
        superseded: Vec<(usize, (LoggedWrite, WriteVersion))>,
        routed: Result<T>,
    ) -> Result<T> {
        if let Err(error) = &routed
            && error.is_caller_error()
        {
            self.unsupersede(key, version, superseded);
        }
        routed
    }

    /// After a write served by backend `served`: every backend above it missed the write and
    /// keeps a record of it for replay; a record the serving backend already had is replaced,
    /// so its replay ends with this newest value. Strategies that spread load treat backends as
    /// peers and record nothing here ([`WritePolicy::WriteBehind`] copies to every peer).
    pub(super) fn hand_off(
        &self,
        served: usize,
        key: &str,
        version: WriteVersion,
        hint: impl Fn() -> LoggedWrite,
    ) {
        let inner = &self.inner;
        if inner.strategy.spreads_load() {
            return;
        }
        for slot in &inner.slots[..served] {
            self.record_missed(slot, key, hint(), version);
        }
        if let Some(slot) = inner.slots.get(served) {
            slot.replay.refresh(key, version, hint);
        }
    }

    /// Before a write is sent: a replay record of the key on any backend now holds this write,
    /// with a new version. A replay of the older record that is in flight may land after this
    /// write on the server; its record then stays, so a later pass writes the newest value
    /// again, and reads answer from it meanwhile. Nothing to do (one atomic load per backend)
    /// while no backend has records. Returns the records replaced, for
    /// [`unsupersede`](Self::unsupersede).
    pub(super) fn supersede(
        &self,
        key: &str,
        version: WriteVersion,
        hint: impl Fn() -> LoggedWrite,
    ) -> Vec<(usize, (LoggedWrite, WriteVersion))> {
        let mut replaced = Vec::new();
        for (index, slot) in self.inner.slots.iter().enumerate() {
            if let Some(old) = slot.replay.supersede(key, version, &hint) {
                replaced.push((index, old));
            }
        }
        replaced
    }

    /// After a write of `version` was refused as the caller's error (never applied anywhere):
    /// the records it superseded come back, so no replay writes what was refused.
    pub(super) fn unsupersede(
        &self,
        key: &str,
        version: WriteVersion,
        replaced: Vec<(usize, (LoggedWrite, WriteVersion))>,
    ) {
        for (index, old) in replaced {
            self.inner.slots[index].replay.restore(key, version, old);
        }
    }

    /// Keeps a write `slot` missed for replay, or reports it lost when the bound is reached.
    pub(super) fn record_missed(
        &self,
        slot: &Slot,
        key: &str,
        hint: LoggedWrite,
        version: WriteVersion,
    ) {
        self.record(slot, key, hint, version, true);
    }

    /// Keeps a write for `slot` to receive: one it `missed`, or a write-behind copy.
    pub(super) fn record(
        &self,
        slot: &Slot,
        key: &str,
        hint: LoggedWrite,
        version: WriteVersion,
        missed: bool,
    ) {
        let recorded = slot.replay.record(key, hint, version, missed);
        slot.metrics.backlog(slot.replay.pending());
        if recorded.is_err() {
            let lost = slot.replay.lost();
            slot.metrics.lost(lost);
            tracing::warn!(backend = %slot.name, lost, "replay records full: a missed write is lost");
            // One event per thousand, so an overflow cannot flood subscribers.
            if lost % 1000 == 1 {
                let _ = self.inner.life.events.send(StorageEvent::ReplayLost {
                    backend: slot.name.clone(),
                    lost,
                });
            }
        }
    }

    /// [`WritePolicy::WriteBehind`]: a record of the write for every shared backend below the
    /// one that served it (every other shared backend under a strategy that spreads load),
    /// which the replayer sends in the background and reads consult until it has landed.
    pub(super) fn copy_behind(
        &self,
        served: usize,
        key: &str,
        version: WriteVersion,
        hint: impl Fn() -> LoggedWrite,
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
            inner.life.replay_wake.notify_one();
        }
    }

    /// [`WritePolicy::WriteThrough`]: copies of a write to every backend below the one that
    /// served it, all at once, each within the attempt timeout and all within the deadline of
    /// the call that began at `start`. A copy that fails or does not finish in time, or a
    /// backend that is unavailable, leaves a record for replay as any missed write does:
    /// otherwise a later failover to it would read the older value.
    pub(super) async fn write_through<'a>(
        &'a self,
        served: usize,
        key: &str,
        version: WriteVersion,
        start: Instant,
        hint: impl Fn(&Slot) -> LoggedWrite,
        call: impl Fn(&'a Slot) -> CallFuture<'a, WriteOutcome>,
    ) {
        let inner = &self.inner;
        let now = Instant::now();
        let remaining = (start + inner.policy.deadline).saturating_duration_since(now);
        let budget = inner.policy.attempt_timeout.min(remaining);
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
                matches!(result, Ok(Ok(_)))
            }
        });
        let copied = futures_util::future::join_all(copies).await;
        for (slot, copied) in inner.slots[served + 1..].iter().zip(copied) {
            if copied {
                // A record from an earlier miss now replays this newest value.
                slot.replay.refresh(key, version, || hint(slot));
            } else {
                self.record_missed(slot, key, hint(slot), version);
            }
        }
    }
}

/// Increments in flight, by key shard (64) and by the backend they are on.
#[derive(Debug)]
pub(super) struct InFlight([[AtomicUsize; MAX_BACKENDS]; 64]);

impl Default for InFlight {
    fn default() -> Self {
        Self(std::array::from_fn(|_| {
            std::array::from_fn(|_| AtomicUsize::new(0))
        }))
    }
}

impl InFlight {
    fn shard(&self, key: &str) -> &[AtomicUsize; MAX_BACKENDS] {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.0[(hasher.finish() % 64) as usize]
    }
}

/// One increment, counted on the backend it is on until it has its answer and its records
/// (see [`ResilientStorage::increment`]). Dropping it, also by cancellation, leaves.
struct Counted<'a> {
    shard: &'a [AtomicUsize; MAX_BACKENDS],
    on: AtomicUsize,
}

/// The longest an increment waits for those of the same key on other backends (and at most a
/// quarter of the attempt timeout, inside which it waits): when a backend dies they fail fast;
/// a frozen one holds them for their attempt timeout, which is not waited out.
const WAIT_FOR_THE_REST: Duration = Duration::from_millis(100);

impl<'a> Counted<'a> {
    fn new(shard: &'a [AtomicUsize; MAX_BACKENDS]) -> Self {
        Self {
            shard,
            on: AtomicUsize::new(NONE),
        }
    }

    /// Counts this increment on backend `index` (and no longer on the one before).
    fn move_to(&self, index: usize) {
        let before = self.on.swap(index, Ordering::AcqRel);
        if let Some(count) = self.shard.get(before) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
        self.shard[index].fetch_add(1, Ordering::AcqRel);
    }

    /// Waits until no increment of this shard is on another backend than `index`, or `wait`.
    async fn wait_for_the_rest(&self, index: usize, wait: Duration) {
        let give_up = Instant::now() + wait;
        let elsewhere = || {
            self.shard
                .iter()
                .enumerate()
                .any(|(i, count)| i != index && count.load(Ordering::Acquire) > 0)
        };
        while elsewhere() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.shard.get(*self.on.get_mut()) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
