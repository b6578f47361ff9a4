//! Writes and deletes: each stamped with a version, sent to the first backend that answers,
//! then recorded for the backends that missed it (replayed when they recover) and copied down
//! by the write policy (write-behind records, or write-through copies within the deadline).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use serde::Serialize;
use tokio::time::Instant;

use super::attempt::{Call, settle, timed};
use super::replay_log::LoggedWrite;
use super::slot::Slot;
use super::{CallFuture, ResilientStorage, Route, WritePolicy};
use crate::backend::{Backend, KeyWrite, WriteMode, WriteOptions, WriteOutcome, WriteVersion};
use crate::error::{Error, Operation, Result};
use crate::events::StorageEvent;
use crate::key::check_ttl;

impl ResilientStorage {
    /// Writes a key, with an optional TTL that replaces any earlier one.
    pub fn set<'a>(
        &'a self,
        key: &'a str,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        // Not `async`: the future is `set_with`'s, with only a `Map` of its result around it. The
        // value is converted now; everything else, the write's version included, happens when
        // it is first polled.
        self.set_with(key, value.into(), ttl, None, WriteMode::Overwrite)
            .map(|written| written.map(|_| ()))
    }

    /// [`set`](Self::set) with a given version (`None`: the next one, taken when the future is
    /// first polled) and mode. Under [`WriteMode::IfNewer`] a write the serving backend refuses
    /// (a newer version is there) goes nowhere else.
    pub(super) async fn set_with(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        version: Option<WriteVersion>,
        mode: WriteMode,
    ) -> Result<WriteOutcome> {
        let version = version.unwrap_or_else(|| self.inner.versions.next());
        let key = self.inner.policy.keys.full_key(key)?;
        self.inner.policy.keys.check_value(&value)?;
        if let Some(ttl) = ttl {
            check_ttl(ttl)?;
        }
        let key = &*key;
        // The write an at-once backend takes by reference: no copy of the value's handle.
        let write = KeyWrite::Set { value, ttl };
        let KeyWrite::Set { value, .. } = &write else {
            unreachable!("built as a set just above")
        };
        // Records of a TTL'd write expire from here, and write-through copies share the call's
        // deadline from here; other writes need no clock reading of their own.
        let write_through = self.inner.policy.write_policy == WritePolicy::WriteThrough;
        let written = (ttl.is_some() || write_through).then(Instant::now);
        let hint = |ttl: Option<Duration>| LoggedWrite::Set {
            value: value.clone(),
            expires_at: ttl.zip(written).and_then(|(ttl, at)| at.checked_add(ttl)),
        };
        let superseded = self.supersede(key, version, || hint(ttl));
        let options = |index| self.write_options(index, version).mode(mode);
        let routed = match self.route_now(Operation::Set, |index, b| {
            b.try_write_now(key, &write, &options(index))
        }) {
            Some(answer) => Ok(answer),
            // Boxed: the future of a call that waits is large, and would make every set's
            // future as large, answered at once or not.
            None => {
                Box::pin(
                    self.route(Operation::Set, Route::Data, key, None, |index, b| {
                        write_call(b, key, write.clone(), options(index))
                    }),
                )
                .await
            }
        };
        let (outcome, served) = self.settled(key, version, superseded, routed)?;
        if !outcome.applied {
            return Ok(outcome);
        }
        self.hand_off(served, key, version, || hint(ttl));
        if self.inner.policy.write_policy == WritePolicy::WriteBehind {
            self.copy_behind(served, key, version, || hint(ttl));
        } else if let Some(written) = written.filter(|_| write_through) {
            let ttl_for = |slot: &Slot| self.copy_ttl(slot, ttl);
            // Boxed, as the routed call above: only write-through pays for its room.
            Box::pin(self.write_through(
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
                    slot.backend
                        .write(key, write, WriteOptions::new(version).mode(mode))
                },
            ))
            .await;
        }
        Ok(outcome)
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
        let routed = match self.route_now(Operation::Delete, |index, b| {
            b.try_write_now(key, &KeyWrite::Delete, &self.write_options(index, version))
        }) {
            Some(answer) => Ok(answer),
            None => {
                self.route(Operation::Delete, Route::Data, key, None, |index, b| {
                    write_call(b, key, KeyWrite::Delete, self.write_options(index, version))
                })
                .await
            }
        };
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

    /// The options of a caller's write of `version` served by backend `index`: under a
    /// strategy that does not spread load, the backends above it missed the write, and a
    /// backend that keeps replay records durably records it for them in the same transaction.
    pub(super) fn write_options(&self, index: usize, version: WriteVersion) -> WriteOptions {
        match self.inner.slots.get(index) {
            Some(slot) => slot.write_options(version),
            None => WriteOptions::new(version),
        }
    }

    /// The TTL of a write-through copy to `slot`: copies to a process-local store are capped,
    /// so it cannot hold values indefinitely.
    pub(super) fn copy_ttl(&self, slot: &Slot, ttl: Option<Duration>) -> Option<Duration> {
        let cap = self.inner.policy.memory_ttl_cap;
        match slot.capabilities.shared {
            true => ttl,
            false => Some(ttl.map_or(cap, |t| t.min(cap))),
        }
    }

    /// A routed write's result; when a backend refused it as the caller's error, the replay
    /// records it superseded come back first.
    #[inline]
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
    #[inline]
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
    #[inline]
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
    #[inline]
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
        let now_ms = self.ms(now);
        let copies = inner.slots[served + 1..].iter().map(|slot| {
            let permit = match slot.view(now, now_ms, true, true).available && !budget.is_zero() {
                true => slot.breaker.try_acquire_at(now).ok(),
                false => None,
            };
            let copy = permit.map(|permit| (permit, call(slot)));
            async move {
                let Some((permit, copy)) = copy else {
                    return false;
                };
                let (result, _, elapsed) = timed(&slot.watchdog, now, budget, copy).await;
                if let Ok(Err(error)) = &result
                    && error.is_transient()
                {
                    tracing::debug!(backend = %slot.name, %error, "write-through copy failed");
                }
                settle(permit, &result, elapsed);
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

/// A write on `backend`: answered at once when it can be ([`Backend::try_write_now`]), else
/// its future.
fn write_call<'a>(
    backend: &'a dyn Backend,
    key: &'a str,
    write: KeyWrite,
    options: WriteOptions,
) -> Call<'a, WriteOutcome> {
    match backend.try_write_now(key, &write, &options) {
        Some(answer) => Call::Ready(answer),
        None => Call::Pending(backend.write(key, write, options)),
    }
}
