//! Batches: [`get_many`](ResilientStorage::get_many), [`set_many`](ResilientStorage::set_many)
//! and [`delete_many`](ResilientStorage::delete_many). The whole batch goes to the first backend
//! that answers in one call ([`Backend::get_many`], [`Backend::write_many`]: MGET or a
//! pipeline, one statement); the keys that backend failed alone (a Redis Cluster node down)
//! then go to the next one, and so on: only the failed part fails over. Every key is then
//! treated as its single-key call would be: records for replay, write-behind copies, reads
//! from replay records and behind a miss.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::attempt::{Within, side_attempt};
use super::reads::Unanswered;
use super::replay_log::LoggedWrite;
use super::slot::Slot;
use super::{CallFuture, ResilientStorage, Route, WritePolicy};
use crate::backend::{Backend, BatchWrite, KeyWrite, WriteOptions, WriteOutcome, WriteVersion};
use crate::error::{Error, Operation, Result};
use crate::key::check_ttl;

/// Each item's answer and the backend that gave it (`None` when no backend answered for it).
type Answers<T> = Vec<(Result<T>, Option<usize>)>;

/// One write of a batch, validated: the full key, what to write, its version.
struct Item {
    position: usize,
    key: String,
    write: KeyWrite,
    version: WriteVersion,
    written: Instant,
}

impl Item {
    fn hint(&self) -> LoggedWrite {
        match &self.write {
            KeyWrite::Set { value, ttl } => LoggedWrite::Set {
                value: value.clone(),
                expires_at: ttl.and_then(|ttl| self.written.checked_add(ttl)),
            },
            _ => LoggedWrite::Delete,
        }
    }
}

impl ResilientStorage {
    /// Reads several keys: one answer per key, in order, in one round trip per backend (one
    /// MGET per Redis Cluster slot group, sent at once; one PostgreSQL statement). Keys a
    /// backend fails alone are read from the next one. An invalid key gets its error in its
    /// place, and so does a miss that no copy could confirm (as [`get`](Self::get) fails); the
    /// call fails as a whole only when no backend answered for any key.
    ///
    /// ```
    /// # async fn example(storage: resilient_core::ResilientStorage) -> resilient_core::Result<()> {
    /// let values = storage.get_many(&["user:1", "user:2", "user:3"]).await?;
    /// for value in values {
    ///     let value: Option<resilient_core::Bytes> = value?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Result<Option<Bytes>>>> {
        let start = Instant::now();
        let mut out: Vec<Option<Result<Option<Bytes>>>> = (0..keys.len()).map(|_| None).collect();
        let mut valid = Vec::with_capacity(keys.len());
        for (position, key) in keys.iter().enumerate() {
            match self.inner.policy.keys.full_key(key.as_ref()) {
                Ok(full) => valid.push((position, full)),
                Err(error) => out[position] = Some(Err(error)),
            }
        }
        if !valid.is_empty() {
            let answers = self
                .passes(Operation::GetMany, valid.len(), |index, backend, part| {
                    let slot = &self.inner.slots[index];
                    let keys: Vec<&str> = part.iter().map(|&i| &*valid[i].1).collect();
                    Box::pin(read_part(slot, backend, keys))
                })
                .await?;
            let mut misses: Vec<(usize, usize)> = Vec::new();
            for (i, (answer, served)) in answers.into_iter().enumerate() {
                // A miss, or a value that must be confirmed as a miss would (see
                // `unconfirmed_hit`): asked again of the shared backends.
                if let (Ok(value), Some(served)) = (&answer, served)
                    && (value.is_none() || self.unconfirmed_hit(served))
                {
                    misses.push((served, i));
                }
                out[valid[i].0] = Some(answer);
            }
            if self.inner.policy.read_behind && !misses.is_empty() {
                misses.sort_unstable();
                for group in misses.chunk_by(|a, b| a.0 == b.0) {
                    let keys: Vec<&str> = group.iter().map(|&(_, i)| &*valid[i].1).collect();
                    let found = self.read_behind_many(group[0].0, &keys, start).await;
                    for (&(_, i), answer) in group.iter().zip(found) {
                        out[valid[i].0] = Some(answer);
                    }
                }
            }
        }
        Ok(out.into_iter().map(|a| a.unwrap_or(Ok(None))).collect())
    }

    /// Writes several keys with one TTL (or none), in one round trip per backend (a pipeline
    /// per Redis Cluster slot group, one PostgreSQL statement): one answer per key, in order.
    /// Not atomic: each write stands alone, exactly as [`set`](Self::set) would, failover,
    /// replay and copies included. Keys a backend fails alone are written to the next one.
    ///
    /// ```
    /// # async fn example(storage: resilient_core::ResilientStorage) -> resilient_core::Result<()> {
    /// let ttl = Some(std::time::Duration::from_secs(300));
    /// for written in storage.set_many([("a", "1"), ("b", "2")], ttl).await? {
    ///     written?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_many<K: AsRef<str>, V: Into<Bytes>>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
        ttl: Option<Duration>,
    ) -> Result<Vec<Result<()>>> {
        if let Some(ttl) = ttl {
            check_ttl(ttl)?;
        }
        let mut out = Vec::new();
        let mut valid = Vec::new();
        for (position, (key, value)) in items.into_iter().enumerate() {
            let value = value.into();
            let checked = self
                .inner
                .policy
                .keys
                .full_key(key.as_ref())
                .and_then(|full| {
                    self.inner.policy.keys.check_value(&value)?;
                    Ok(full.into_owned())
                });
            out.push(match checked {
                Ok(key) => {
                    valid.push(Item {
                        position,
                        key,
                        write: KeyWrite::Set { value, ttl },
                        version: self.inner.versions.next(),
                        written: Instant::now(),
                    });
                    Ok(())
                }
                Err(error) => Err(error),
            });
        }
        for (position, answer) in self.write_batch(valid).await? {
            out[position] = answer.map(|_| ());
        }
        Ok(out)
    }

    /// Removes several keys, in one round trip per backend: for each, in order, true when it
    /// existed on the backend that served it. As [`set_many`](Self::set_many) otherwise.
    ///
    /// ```
    /// # async fn example(storage: resilient_core::ResilientStorage) -> resilient_core::Result<()> {
    /// let existed: Vec<bool> = storage
    ///     .delete_many(&["a", "b"])
    ///     .await?
    ///     .into_iter()
    ///     .collect::<resilient_core::Result<_>>()?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Result<bool>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut valid = Vec::with_capacity(keys.len());
        for (position, key) in keys.iter().enumerate() {
            out.push(match self.inner.policy.keys.full_key(key.as_ref()) {
                Ok(full) => {
                    valid.push(Item {
                        position,
                        key: full.into_owned(),
                        write: KeyWrite::Delete,
                        version: self.inner.versions.next(),
                        written: Instant::now(),
                    });
                    Ok(false)
                }
                Err(error) => Err(error),
            });
        }
        for (position, answer) in self.write_batch(valid).await? {
            out[position] = answer.map(|outcome| outcome.existed);
        }
        Ok(out)
    }

    /// Sends validated writes as batches, then treats each as its single-key call would:
    /// replay records it superseded come back when it was refused as the caller's error;
    /// once applied, records for the backends above the one that served it and the write
    /// policy's copies. Returns each item's position and answer.
    async fn write_batch(&self, items: Vec<Item>) -> Result<Vec<(usize, Result<WriteOutcome>)>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let superseded: Vec<_> = items
            .iter()
            .map(|item| self.supersede(&item.key, item.version, || item.hint()))
            .collect();
        let answers = self
            .passes(Operation::WriteMany, items.len(), |index, backend, part| {
                let writes = part
                    .iter()
                    .map(|&i| {
                        let item = &items[i];
                        BatchWrite::new(
                            &item.key,
                            item.write.clone(),
                            self.write_options(index, item.version),
                        )
                    })
                    .collect();
                backend.write_many(writes)
            })
            .await;
        let answers = match answers {
            Ok(answers) => answers,
            Err(error) => {
                if error.is_caller_error() {
                    // Last first, so a key the batch holds twice gets back the record it had
                    // before the batch.
                    for (item, old) in items.iter().zip(superseded).rev() {
                        self.unsupersede(&item.key, item.version, old);
                    }
                }
                return Err(error);
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut through = Vec::new();
        let mut refused = Vec::new();
        for ((item, old), (answer, served)) in items.iter().zip(superseded).zip(answers) {
            match (&answer, served) {
                (Err(error), _) if error.is_caller_error() => refused.push((item, old)),
                (Ok(_), Some(served)) => {
                    self.hand_off(served, &item.key, item.version, || item.hint());
                    match self.inner.policy.write_policy {
                        WritePolicy::WriteBehind => {
                            self.copy_behind(served, &item.key, item.version, || item.hint());
                        }
                        WritePolicy::WriteThrough => through.push((item, served)),
                        _ => {}
                    }
                }
                _ => {}
            }
            out.push((item.position, answer));
        }
        // Last first, as above.
        for (item, old) in refused.into_iter().rev() {
            self.unsupersede(&item.key, item.version, old);
        }
        if !through.is_empty() {
            let start = items[0].written;
            let copies = through
                .into_iter()
                .map(|(item, served)| self.copy_through(item, served, start));
            futures_util::future::join_all(copies).await;
        }
        Ok(out)
    }

    /// [`WritePolicy::WriteThrough`]'s copies of one batch item, as [`set`](Self::set) and
    /// [`delete`](Self::delete) make them.
    async fn copy_through(&self, item: &Item, served: usize, start: Instant) {
        let write_for = |slot: &Slot| match &item.write {
            KeyWrite::Set { value, ttl } => KeyWrite::Set {
                value: value.clone(),
                ttl: self.copy_ttl(slot, *ttl),
            },
            write => write.clone(),
        };
        let hint_for = |slot: &Slot| match write_for(slot) {
            KeyWrite::Set { value, ttl } => LoggedWrite::Set {
                value,
                expires_at: ttl.and_then(|ttl| item.written.checked_add(ttl)),
            },
            _ => LoggedWrite::Delete,
        };
        self.write_through(served, &item.key, item.version, start, hint_for, |slot| {
            slot.backend
                .write(&item.key, write_for(slot), WriteOptions::new(item.version))
        })
        .await;
    }

    /// Runs a batch of `count` items on the backends in turn: every item on the first that
    /// answers, then the items it failed alone (a transient error in its answer) on the next,
    /// preferring the backend after the one that failed them. `call` gets the positions of
    /// the items to send. The first pass failing everywhere is the call's error; an item that
    /// fails on every backend keeps its last error.
    async fn passes<'a, T>(
        &'a self,
        operation: Operation,
        count: usize,
        call: impl Fn(usize, &'a dyn Backend, &[usize]) -> CallFuture<'a, Vec<Result<T>>>,
    ) -> Result<Answers<T>> {
        let mut answers: Vec<Option<(Result<T>, Option<usize>)>> =
            (0..count).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..count).collect();
        let mut prefer = None;
        // Every pass within the one deadline of the call.
        let deadline = Instant::now() + self.inner.policy.deadline;
        for pass in 0..self.inner.slots.len() {
            let routed = self
                .route_within(
                    operation,
                    Route::Data,
                    "batch",
                    prefer,
                    Within::Until(deadline),
                    |index, backend| call(index, backend, &pending),
                )
                .await;
            let (part, served) = match routed {
                Ok(routed) => routed,
                Err(error) if pass == 0 => return Err(error),
                // The failed part's items keep the errors they got.
                Err(_) => break,
            };
            let name = &self.inner.slots[served].name;
            if part.len() != pending.len() {
                let message = format!("answered {} of {} items", part.len(), pending.len());
                for &i in &pending {
                    answers[i] = Some((Err(Error::backend(name, operation, &message)), None));
                }
                break;
            }
            let mut failed = Vec::new();
            for (&i, answer) in pending.iter().zip(part) {
                if answer.as_ref().is_err_and(Error::is_transient) {
                    failed.push(i);
                    answers[i] = Some((answer, None));
                } else {
                    answers[i] = Some((answer, Some(served)));
                }
            }
            if failed.is_empty() {
                break;
            }
            tracing::debug!(backend = %name, failed = failed.len(), "part of a batch failed over");
            pending = failed;
            prefer = Some(served + 1);
        }
        Ok(answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    (
                        Err(Error::backend("batch", operation, "no backend answered")),
                        None,
                    )
                })
            })
            .collect())
    }

    /// [`read_behind`](Self::read_behind) for the keys of a batch that missed on backend
    /// `served`: one batch read of each copy in turn, for the keys still without an answer,
    /// under the same rules; a key none can answer for gets the error saying why.
    async fn read_behind_many(
        &self,
        served: usize,
        keys: &[&str],
        start: Instant,
    ) -> Vec<Result<Option<Bytes>>> {
        let mut answers: Vec<Option<Option<Bytes>>> = vec![None; keys.len()];
        // Per key: the last copy asked answered a miss it cannot vouch for.
        let mut missed = vec![false; keys.len()];
        let mut unanswered = Unanswered::default();
        for slot in self.copies_of(served) {
            // Each copy's pending records first, as `read_behind` reads them: a write this
            // process has still to replay there is the answer, even while the copy is out of
            // reach (its circuit open).
            let now = Instant::now();
            if slot.replay.pending() > 0 {
                for (i, key) in keys.iter().enumerate() {
                    if answers[i].is_none()
                        && let Some(record) = slot.replay.get(key)
                    {
                        answers[i] = Some(record.read(now));
                        missed[i] = false;
                    }
                }
            }
            let ask: Vec<usize> = (0..keys.len()).filter(|&i| answers[i].is_none()).collect();
            if ask.is_empty() {
                break;
            }
            ask.iter().for_each(|&i| missed[i] = false);
            let Some(budget) = self.copy_budget(slot, start, now, &mut unanswered) else {
                continue;
            };
            let call = Box::pin(read_part(
                slot,
                &*slot.backend,
                ask.iter().map(|&i| keys[i]).collect(),
            ));
            match side_attempt(slot, Operation::GetMany, budget, call).await {
                Some(Ok(Ok(values))) => {
                    for (&i, value) in ask.iter().zip(values) {
                        match value {
                            Ok(Some(value)) => answers[i] = Some(Some(value)),
                            Ok(None) if slot.capabilities.durable => answers[i] = Some(None),
                            Ok(None) => missed[i] = true,
                            Err(error) => unanswered.push(slot, format_args!("failed: {error}")),
                        }
                    }
                }
                outcome => unanswered.note(slot, outcome, budget),
            }
        }
        answers
            .into_iter()
            .zip(missed)
            .map(|(answer, missed)| match (answer, missed) {
                (Some(answer), _) => Ok(answer),
                (None, true) => Ok(None),
                (None, false) => unanswered.result(self, served, Operation::GetMany),
            })
            .collect()
    }
}

/// Reads `keys` from one backend: those with a replay record there from the record (it holds
/// a write the backend has yet to get), the rest in one [`Backend::get_many`].
async fn read_part(
    slot: &Slot,
    backend: &dyn Backend,
    keys: Vec<&str>,
) -> Result<Vec<Result<Option<Bytes>>>> {
    let checked = |got: Vec<Result<Option<Bytes>>>, asked: usize| {
        if got.len() == asked {
            return Ok(got);
        }
        Err(Error::backend(
            &slot.name,
            Operation::GetMany,
            format!("answered {} of {} keys", got.len(), asked),
        ))
    };
    if slot.replay.pending() == 0 {
        // Nothing to answer from records (the usual case): the batch as it is.
        return checked(backend.get_many(&keys).await?, keys.len());
    }
    let now = Instant::now();
    let mut answers: Vec<Option<Result<Option<Bytes>>>> = Vec::with_capacity(keys.len());
    let mut ask = Vec::new();
    for key in &keys {
        match slot.replay.get(key) {
            Some(record) => answers.push(Some(Ok(record.read(now)))),
            None => {
                answers.push(None);
                ask.push(*key);
            }
        }
    }
    if !ask.is_empty() {
        let mut got = checked(backend.get_many(&ask).await?, ask.len())?.into_iter();
        for answer in answers.iter_mut().filter(|a| a.is_none()) {
            *answer = got.next();
        }
    }
    Ok(answers.into_iter().map(|a| a.unwrap_or(Ok(None))).collect())
}
