//! Crash-safe replay: the durable replay records a journaling backend
//! ([`Capabilities::journal`](crate::Capabilities::journal)) keeps, drained to the backends that
//! missed them by whichever process gets to them first.
//!
//! A write served by PostgreSQL while Redis is out of reach carries Redis's name
//! ([`WriteOptions::missed_by`](crate::WriteOptions::missed_by)); PostgreSQL records it in the
//! same statement as the write, so the record outlives the process that wrote it. Every
//! process runs one drainer: at start, then every [`JOURNAL_TICK`], for each pair of a
//! journaling backend and a backend it records for, both reachable, it claims a batch of
//! records (each goes to one claimer; a claim lapses after three attempt timeouts, so a drainer
//! that dies or fails holding one delays those records, never loses them), sends each key's current state on
//! the journaling backend as a replay ([`WriteMode::IfNewer`], so it never overwrites a newer
//! write), and settles what was answered. A record written again meanwhile stays for the next
//! claim.
//!
//! The in-process replay log still replays this process's own records at once and answers reads
//! from them: the journal is what survives the process, and what other processes replay.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::attempt::{settle, timed};
use super::slot::Slot;
use crate::backend::{BatchWrite, JournalEntry, WriteMode, WriteOptions};
use crate::breaker::CircuitState;

/// How often a drainer looks for records, when nothing wakes it sooner: each look is one
/// claim statement per pair of backends, which finds nothing in the common case.
pub(crate) const JOURNAL_TICK: Duration = Duration::from_secs(1);
/// Records per claim, and per replayed batch (one pipeline on Redis).
const JOURNAL_BATCH: usize = 64;
/// How long a claim holds its records, in attempt timeouts: one each for the claim, the replay
/// and the settling. A drainer that dies or fails after claiming delays its records by this
/// much at most. A lease that runs out early costs nothing but work: the records are replayed
/// again (refused as not newer), and the late settle deletes nothing another claim holds.
const LEASE_ATTEMPTS: u32 = 3;

/// A journaling backend and one backend it records missed writes for.
pub(crate) struct Pair {
    holder: Arc<Slot>,
    target: Arc<Slot>,
}

/// Every pair of a journaling backend and a backend above it that it records for.
pub(crate) fn pairs(slots: &[Arc<Slot>]) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for holder in slots {
        for name in holder.missed_by.names() {
            if let Some(target) = slots.iter().find(|slot| &slot.name == name) {
                pairs.push(Pair {
                    holder: holder.clone(),
                    target: target.clone(),
                });
            }
        }
    }
    pairs
}

/// Drains every pair once at start, then every [`JOURNAL_TICK`], until `stop` fires.
pub(crate) async fn drainer(
    pairs: Vec<Pair>,
    mut stop: watch::Receiver<bool>,
    attempt_timeout: Duration,
) {
    loop {
        for pair in &pairs {
            if ready(&pair.holder) && ready(&pair.target) {
                let drain = drain(pair, attempt_timeout);
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    _ = drain => {}
                }
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(JOURNAL_TICK) => {}
        }
    }
}

/// Healthy with its breaker closed: a drain does not probe a backend that is recovering (its
/// health monitor and replayer do).
fn ready(slot: &Slot) -> bool {
    slot.health.state().is_routable() && slot.breaker.state() == CircuitState::Closed
}

/// Claims, replays and settles batches until the holder has no unclaimed record for the
/// target, or either backend fails. Returns how many records were settled.
pub(crate) async fn drain(pair: &Pair, attempt_timeout: Duration) -> usize {
    let Pair { holder, target } = pair;
    let mut settled = 0;
    loop {
        let claim = claim_id();
        let Some(entries) = holder_call(holder, attempt_timeout, |backend| {
            let lease = attempt_timeout.saturating_mul(LEASE_ATTEMPTS);
            backend.claim_journal(&target.name, claim, JOURNAL_BATCH, lease)
        })
        .await
        else {
            break;
        };
        if entries.is_empty() {
            break;
        }
        let full = entries.len() == JOURNAL_BATCH;
        let Some(done) = replay(target, &entries, attempt_timeout).await else {
            // Left claimed: the claim lapses, and this or another process sends them again.
            break;
        };
        let keys: Vec<&str> = done.iter().map(|entry| entry.key.as_str()).collect();
        let settle = holder_call(holder, attempt_timeout, |backend| {
            backend.settle_journal(&target.name, claim, &keys)
        })
        .await;
        if settle.is_none() {
            break;
        }
        settled += keys.len();
        target.metrics.replayed(keys.len() as u64);
        if done.len() < entries.len() || !full {
            break;
        }
    }
    if settled > 0 {
        tracing::info!(
            backend = %target.name,
            from = %holder.name,
            records = settled,
            "replayed writes recorded durably while it was out of reach"
        );
    }
    settled
}

/// One call to the journaling backend through its breaker, within the attempt timeout.
async fn holder_call<'a, T>(
    holder: &'a Slot,
    attempt_timeout: Duration,
    call: impl FnOnce(&'a dyn crate::Backend) -> super::CallFuture<'a, T>,
) -> Option<T> {
    let permit = holder.breaker.try_acquire().ok()?;
    let start = Instant::now();
    let (result, _, elapsed) = timed(
        &holder.watchdog,
        start,
        attempt_timeout,
        call(&*holder.backend),
    )
    .await;
    settle(permit, &result, elapsed);
    match result {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            tracing::debug!(backend = %holder.name, %error, "journal call failed");
            None
        }
        Err(_) => None,
    }
}

/// Sends `entries` to `target` as one batch of replays through its breaker. Returns the
/// entries that are done: answered (applied, or superseded by a newer write), or refused for
/// good (reported lost, as the in-process replay does); `None` when the call failed.
async fn replay<'e>(
    target: &Slot,
    entries: &'e [JournalEntry],
    attempt_timeout: Duration,
) -> Option<Vec<&'e JournalEntry>> {
    let permit = target.breaker.try_acquire().ok()?;
    let start = Instant::now();
    let writes = entries
        .iter()
        .map(|entry| {
            let options = WriteOptions::new(entry.version).mode(WriteMode::IfNewer);
            BatchWrite::new(&entry.key, entry.write.clone(), options)
        })
        .collect();
    let (result, _, elapsed) = timed(
        &target.watchdog,
        start,
        attempt_timeout,
        target.backend.write_many(writes),
    )
    .await;
    let answers = match result {
        Ok(Ok(answers)) => answers,
        other => {
            if let Ok(Err(error)) = &other {
                tracing::debug!(backend = %target.name, %error, "journal replay failed; its claim lapses");
            }
            settle(permit, &other, elapsed);
            return None;
        }
    };
    let mut done = Vec::with_capacity(entries.len());
    let mut failed = false;
    for (entry, answer) in entries.iter().zip(answers) {
        match answer {
            Ok(_) => done.push(entry),
            Err(error) if error.is_transient() => failed = true,
            Err(error) => {
                target.replay.count_lost();
                target.metrics.lost(target.replay.lost());
                tracing::warn!(backend = %target.name, %error, "a durably recorded write could not be replayed");
                done.push(entry);
            }
        }
    }
    match failed {
        true => permit.failure(),
        false => permit.success(elapsed),
    }
    Some(done)
}

/// A claim's id: random, so claims from different processes do not collide.
fn claim_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
