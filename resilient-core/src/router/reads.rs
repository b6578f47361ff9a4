//! Reads: a key from the first backend that answers (its pending replay record first), and on
//! a miss, under a policy that copies writes down, once more from the next shared backend.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use std::sync::Arc;
use std::time::Duration;

use super::attempt::{Call, side_attempt};
use super::slot::Slot;
use super::{ResilientStorage, Route};
use crate::error::{Error, Operation, Result};

impl ResilientStorage {
    /// Reads a key: `None` when absent or expired. A miss is an answer and never fails over;
    /// under a policy that copies writes down ([`WritePolicy::WriteBehind`](super::WritePolicy::WriteBehind), the default, or
    /// [`WritePolicy::WriteThrough`](super::WritePolicy::WriteThrough)) a miss is asked again of the next backend shared across
    /// processes, which holds a copy of every write.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = self.inner.policy.keys.full_key(key)?;
        let key = &*key;
        if let Some(answer) = self.get_now(key) {
            return Ok(match answer {
                (Some(value), _) => Some(value),
                miss => self.missed_now(key, miss).await,
            });
        }
        let start = self.inner.policy.read_behind.then(Instant::now);
        let (value, served) = self
            .route(
                Operation::Get,
                Route::Data,
                key,
                None,
                |index, b| match self.read_at_once(index, b, key) {
                    Some(answer) => Call::Ready(answer),
                    None => Call::Pending(b.get(key)),
                },
            )
            .await?;
        match (value, start) {
            (None, Some(start)) => Ok(self.read_behind(served, key, start).await),
            (value, _) => Ok(value),
        }
    }

    /// `key` (already validated and prefixed) read without a future, when the common path
    /// answers at once (see [`route_now`](Self::route_now)): the value and the backend that
    /// gave it.
    pub(super) fn get_now(&self, key: &str) -> Option<(Option<Bytes>, usize)> {
        self.route_now(Operation::Get, |index, b| self.read_at_once(index, b, key))
    }

    /// What [`get`](Self::get) answers after [`get_now`](Self::get_now) answered `(value,
    /// served)`: under a policy that copies writes down, a miss is asked again of the next
    /// shared backend.
    pub(super) async fn missed_now(
        &self,
        key: &str,
        (value, served): (Option<Bytes>, usize),
    ) -> Option<Bytes> {
        match value {
            None if self.inner.policy.read_behind => {
                self.read_behind(served, key, Instant::now()).await
            }
            value => value,
        }
    }

    /// A read of `key` on backend `index` answered without a future, if it can be. A backend
    /// with writes still to replay is not routed to; this covers a read that raced with the
    /// end of its replay. A write-behind copy not yet sent is read from its record too.
    fn read_at_once(
        &self,
        index: usize,
        backend: &dyn crate::Backend,
        key: &str,
    ) -> Option<Result<Option<Bytes>>> {
        match self.inner.slots[index].replay.get(key) {
            Some(hint) => Some(Ok(hint.read(Instant::now()))),
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

    /// After a miss on backend `served` under a policy that copies writes down: the next shared
    /// backend below it holds a copy of every write, so a primary that lost its data (restarted
    /// empty) still reads what was written. Within the call's deadline; a failure of this read
    /// counts against that backend's breaker and reads as the miss it followed.
    pub(super) async fn read_behind(
        &self,
        served: usize,
        key: &str,
        start: Instant,
    ) -> Option<Bytes> {
        let now = Instant::now();
        let slot = self.read_behind_slot(served, now)?;
        if let Some(hint) = slot.replay.get(key) {
            return hint.read(now);
        }
        let budget = self.read_behind_budget(start, now)?;
        side_attempt(slot, Operation::Get, budget, slot.backend.get(key))
            .await?
            .ok()?
            .ok()?
    }

    /// The next shared backend below `served` that is available: the one a miss is asked of
    /// again.
    pub(super) fn read_behind_slot(&self, served: usize, now: Instant) -> Option<&Arc<Slot>> {
        let now_ms = self.ms(now);
        self.inner
            .slots
            .get(served + 1..)?
            .iter()
            .find(|slot| slot.capabilities.shared && slot.view(now, now_ms, true, true).available)
    }

    /// What a read behind a miss may take of the deadline of the call that began at `start`:
    /// `None` when nothing is left.
    pub(super) fn read_behind_budget(&self, start: Instant, now: Instant) -> Option<Duration> {
        let policy = &self.inner.policy;
        let remaining = (start + policy.deadline).saturating_duration_since(now);
        (!remaining.is_zero()).then(|| policy.attempt_timeout.min(remaining))
    }
}
