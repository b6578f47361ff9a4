//! Reads: a key from the first backend that answers (its pending replay record first), and on
//! a miss, under a policy that copies writes down, once more from the next shared backend.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::attempt::{Call, TimedResult, Within, side_attempt};
use super::slot::Slot;
use super::{ResilientStorage, Route};
use crate::error::{Error, Operation, Result};

impl ResilientStorage {
    /// Reads a key: `None` when absent or expired. A miss is an answer and never fails over;
    /// under a policy that copies writes down ([`WritePolicy::WriteBehind`](super::WritePolicy::WriteBehind), the default, or
    /// [`WritePolicy::WriteThrough`](super::WritePolicy::WriteThrough)) a miss on a backend
    /// that can lose its data (Redis restarted empty) is asked again of the next backend shared
    /// across processes, which holds a copy of every write. When no such copy can answer (down,
    /// frozen, circuit open), the read fails with [`Error::NoBackendAvailable`] rather than
    /// answer `None` for a value the copy may hold. Under write-behind, a value the memory
    /// fallback answers is asked of those backends the same way, unless this process still has
    /// to replay it to them: it may be one kept from an earlier outage, older than theirs.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = self.inner.policy.keys.full_key(key)?;
        match self.read_now(&key) {
            Ok(value) => Ok(value),
            Err(missed) => self.get_routed(key, missed).await,
        }
    }

    /// `key` (already validated and prefixed) read by the common path, without a future (see
    /// [`route_now`](Self::route_now)): `Ok` with the answer, or `Err` with what
    /// [`get_routed`](Self::get_routed) needs to finish the read (the backend whose miss the
    /// copies must confirm, if any).
    #[inline]
    pub(super) fn read_now(&self, key: &str) -> std::result::Result<Option<Bytes>, Option<usize>> {
        match self.route_now(Operation::Get, |index, b| self.read_at_once(index, b, key)) {
            Some((Some(value), _)) => Ok(Some(value)),
            Some((None, served)) if self.miss_is_the_answer(served) => Ok(None),
            Some((None, served)) => Err(Some(served)),
            None => Err(None),
        }
    }

    /// The rest of a [`get`](Self::get) of `key` (validated and prefixed) that the common path
    /// did not answer: routed, or, after a miss on `missed` answered at once that the copies
    /// must confirm, read behind it. One future for each, so the future of `get` is no larger
    /// than it must be (every caller's future carries it, and moves it).
    pub(super) async fn get_routed(
        &self,
        key: Cow<'_, str>,
        missed: Option<usize>,
    ) -> Result<Option<Bytes>> {
        let key = &*key;
        let (served, start) = match missed {
            Some(served) => (served, Instant::now()),
            None => {
                // The call's start, for a read behind a miss: the attempts count from it too.
                let start = self.inner.policy.read_behind.then(Instant::now);
                let (value, served) = self
                    .route_within(
                        Operation::Get,
                        Route::Data,
                        key,
                        None,
                        start.map_or(Within::Deadline, Within::From),
                        |index, b| match self.read_at_once(index, b, key) {
                            Some(answer) => Call::Ready(answer),
                            None => Call::Pending(b.get(key)),
                        },
                    )
                    .await?;
                match (start, &value) {
                    (Some(start), None) => (served, start),
                    (Some(start), Some(_)) if self.unconfirmed_hit(served) => (served, start),
                    _ => return Ok(value),
                }
            }
        };
        self.read_behind(served, key, start).await
    }

    /// Whether a value backend `served` read must be confirmed as a miss would be: under
    /// [`WritePolicy::WriteBehind`](super::WritePolicy::WriteBehind), a process-local store
    /// below a shared backend (the memory fallback) holds only the writes it served while the
    /// shared backends were out of reach, and none of those they took since. After an earlier
    /// outage its value may be older than theirs. One this process still has to replay to them
    /// is read from its record; any other is read from them, and while none can be asked the
    /// read fails rather than answer an old value.
    pub(super) fn unconfirmed_hit(&self, served: usize) -> bool {
        let slots = &self.inner.slots;
        self.inner.policy.write_policy == super::WritePolicy::WriteBehind
            && slots.get(served).is_some_and(|slot| {
                // A durable one keeps every write it acknowledged, as its misses are answers.
                !slot.capabilities.shared && !slot.capabilities.durable
            })
            && slots[..served].iter().any(|slot| slot.capabilities.shared)
    }

    /// Whether a miss on backend `served` is the answer as it stands: the policy copies no
    /// write down, or no backend holds a copy to ask (the memory store alone, say).
    #[inline]
    fn miss_is_the_answer(&self, served: usize) -> bool {
        !self.inner.policy.read_behind || self.copies_of(served).next().is_none()
    }

    /// A read of `key` on backend `index` answered without a future, if it can be. A backend
    /// with writes still to replay is not routed to; this covers a read that raced with the
    /// end of its replay. A write-behind copy not yet sent is read from its record too.
    #[inline]
    fn read_at_once(
        &self,
        index: usize,
        backend: &dyn crate::Backend,
        key: &str,
    ) -> Option<Result<Option<Bytes>>> {
        let slot = &self.inner.slots[index];
        match slot.replay.get(key) {
            Some(hint) => Some(Ok(hint.read(Instant::now()))),
            // Only an in-process store answers at once.
            None if slot.capabilities.shared => None,
            None => backend.try_get_now(key),
        }
    }

    /// Reads a key and decodes it from JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Serde {
                    action: "decoded",
                    source: e.into(),
                }),
            None => Ok(None),
        }
    }

    /// After a miss on backend `served` under a policy that copies writes down: the shared
    /// backends ([`copies_of`](Self::copies_of) it) hold a copy of every write, so a primary
    /// that lost its data (restarted empty), or the memory store serving while they were out of
    /// reach, still reads what was written. They are asked in order (each one's pending record
    /// first) within the call's deadline; each failure counts against that backend's breaker.
    /// A hit is the answer, and so is a miss on a durable copy; a miss on a copy that can lose
    /// its data is the answer only when no copy after it is left to ask. When none of that
    /// holds, the read fails: the miss may hide a value a copy holds, and `None` would then be
    /// a wrong answer.
    pub(super) async fn read_behind(
        &self,
        served: usize,
        key: &str,
        start: Instant,
    ) -> Result<Option<Bytes>> {
        let mut unanswered = Unanswered::default();
        // The last copy asked answered a miss it cannot vouch for (it can lose its data).
        let mut missed = false;
        for slot in self.copies_of(served) {
            let now = Instant::now();
            if let Some(hint) = slot.replay.get(key) {
                return Ok(hint.read(now));
            }
            missed = false;
            let Some(budget) = self.copy_budget(slot, start, now, &mut unanswered) else {
                continue;
            };
            match side_attempt(slot, Operation::Get, budget, slot.backend.get(key)).await {
                Some(Ok(Ok(Some(value)))) => return Ok(Some(value)),
                Some(Ok(Ok(None))) if slot.capabilities.durable => return Ok(None),
                Some(Ok(Ok(None))) => missed = true,
                outcome => unanswered.note(slot, outcome, budget),
            }
        }
        match missed {
            true => Ok(None),
            false => unanswered.result(self, served, Operation::Get),
        }
    }

    /// The shared backends a miss on `served` is asked of again, in priority order: none when
    /// `served` keeps every write it acknowledges (a durable backend, whose miss is the
    /// answer); the shared ones below it when it is shared but can lose its data (Redis
    /// restarted empty); every other shared one when it is process-local (the memory store
    /// holds only what this process wrote to it while the shared backends were out of reach).
    pub(super) fn copies_of(&self, served: usize) -> impl Iterator<Item = &Arc<Slot>> {
        let slots = &self.inner.slots;
        let (lossy, local) = slots.get(served).map_or((false, false), |slot| {
            (!slot.capabilities.durable, !slot.capabilities.shared)
        });
        slots
            .iter()
            .enumerate()
            .filter(move |&(index, slot)| {
                lossy && slot.capabilities.shared && (index > served || (local && index != served))
            })
            .map(|(_, slot)| slot)
    }

    /// What a read of the copy on `slot` may take: the attempt timeout within what is left of
    /// the deadline of the call that began at `start`. `None` (noted in `unanswered`) when the
    /// copy is unavailable (circuit open, unhealthy) or no time is left.
    pub(super) fn copy_budget(
        &self,
        slot: &Slot,
        start: Instant,
        now: Instant,
        unanswered: &mut Unanswered,
    ) -> Option<Duration> {
        if !slot.view(now, self.ms(now), true, false).available {
            unanswered.push(slot, "is unavailable (circuit open or unhealthy)");
            return None;
        }
        let policy = &self.inner.policy;
        let remaining = (start + policy.deadline).saturating_duration_since(now);
        if remaining.is_zero() {
            unanswered.push(slot, "was not asked: the deadline had passed");
            return None;
        }
        Some(policy.attempt_timeout.min(remaining))
    }
}

/// Why no copy answered a read behind a miss: empty when there was no copy to ask.
#[derive(Default)]
pub(super) struct Unanswered(Vec<String>);

impl Unanswered {
    pub(super) fn push(&mut self, slot: &Slot, why: impl std::fmt::Display) {
        self.0.push(format!("[{}] {why}", slot.name));
    }

    /// Notes how a side attempt on `slot` that gave no answer ended.
    pub(super) fn note<T>(
        &mut self,
        slot: &Slot,
        outcome: Option<TimedResult<T>>,
        budget: Duration,
    ) {
        match outcome {
            Some(Ok(Err(error))) => self.push(slot, format_args!("failed: {error}")),
            Some(Err(_)) => self.push(slot, format_args!("did not answer within {budget:?}")),
            None => self.push(slot, "has its circuit open"),
            Some(Ok(Ok(_))) => {}
        }
    }

    /// The miss itself when there was no copy to ask, else the error saying why none answered.
    pub(super) fn result(
        &self,
        storage: &ResilientStorage,
        served: usize,
        operation: Operation,
    ) -> Result<Option<Bytes>> {
        if self.0.is_empty() {
            return Ok(None);
        }
        Err(Error::NoBackendAvailable {
            operation,
            reasons: format!(
                "[{}] cannot answer for the key alone (it may have restarted empty, or it \
                 holds only this process's writes from when the shared backends were out of \
                 reach) and no backend holding a copy of every write could be asked: {}",
                storage.inner.slots[served].name,
                self.0.join("; ")
            ),
        })
    }
}
