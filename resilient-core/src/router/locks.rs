//! Locks: every call goes to one backend, the lock authority by default
//! ([`LockFailover::Never`]); the opt-in [`LockFailover::AfterOutage`] moves authority down
//! after a delay and back up once the lower backend's leases may all have expired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::slot::Slot;
use super::{ResilientStorage, Route};
use crate::backend::{LockGrant, LockOutcome};
use crate::error::{Error, Operation, Result};
use crate::key::{check_holder, check_ttl};
use crate::strategy::{BackendView, Candidates, Routing};

const MAX_LOCK_HINTS: usize = 4096;

/// Where lock calls go, and the grants this process holds.
#[derive(Debug)]
pub(super) struct Locks {
    pub(super) failover: LockFailover,
    /// The highest-priority backend that can hold locks: where every lock call goes under
    /// [`LockFailover::Never`].
    pub(super) authority: Option<usize>,
    /// Process-local backends may hold locks.
    pub(super) local: bool,
    /// Which backend granted each lock this process holds, so extend and release go there.
    pub(super) holders: Mutex<HashMap<(String, String), (usize, Instant)>>,
}

impl Locks {
    pub(super) fn new(failover: LockFailover, local: bool, slots: &[Arc<Slot>]) -> Self {
        Self {
            failover,
            authority: slots.iter().position(|slot| lock_eligible(slot, local)),
            local,
            holders: Mutex::new(HashMap::new()),
        }
    }
}

/// Whether lock authority may leave the highest-priority lock backend when this process
/// cannot reach it.
///
/// A process cannot tell "Redis is down" from "I am cut off from Redis": while it is cut off,
/// other processes may still reach Redis and take locks there. Granting on PostgreSQL then
/// makes two holders of one lock, and no delay prevents it (the delay covers leases granted
/// before this process saw the outage, not those other processes keep taking). So by default
/// every lock call goes to one backend that every process agrees on, the lock authority, and
/// fails closed when it is out of reach. ARCHITECTURE.md, "Why locks fail closed", has the
/// whole argument and what keeps working during which outage.
///
/// | mode | a lock is granted twice | locks during a Redis outage |
/// |---|---|---|
/// | `Never` (default) | never, under any partition, while every process has the same lock authority | fail closed (an error) until this process reaches Redis again |
/// | `AfterOutage` | when one process is cut off from Redis while others still reach it, or when the delay is shorter than a lease | granted by PostgreSQL once Redis has been out of reach for `delay` |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LockFailover {
    /// Every acquire, extend and release goes to the lock authority: the highest-priority
    /// backend that can hold locks (shared across processes, or any when
    /// [local locks](super::StorageBuilder::local_locks) are enabled). When this process cannot reach
    /// it, acquires and extends fail with [`Error::NoBackendAvailable`] and nothing is granted
    /// elsewhere; key-value calls still fail over. Every process configured with the same
    /// backends and priorities agrees on the authority, so no partition can make two of them
    /// grant one lock. The authority's own failures remain: a Redis that restarts without
    /// persistence forgets its leases (the holder learns it at its next extend, and the new
    /// holder's fencing token is higher, so a guarded resource rejects the old one).
    #[default]
    Never,
    /// Opt-in availability over safety: once this process has found every higher lock backend
    /// out of reach for `delay`, the next one grants locks; authority moves back up only once
    /// the lower backend has answered no acquire or extend for `delay`.
    ///
    /// **Risk: two holders at once.** When this process is cut off from Redis while other
    /// processes still reach it (a partition, not an outage), it grants locks on PostgreSQL
    /// while they keep granting the same locks on Redis; a `delay` shorter than the longest
    /// lease any process takes adds overlaps after a real outage. Use it only for locks whose
    /// guarded resource checks fencing tokens: tokens are the granting server's clock in
    /// microseconds (or one more than the lock's last), so they grow in grant order across
    /// backends given clocks in agreement, and the resource rejects the older holder's writes.
    AfterOutage {
        /// How long every higher lock backend must have been out of reach (as this process
        /// sees it) before a lower one grants: at least the longest lease any process takes.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
}

impl LockFailover {
    /// [`LockFailover::AfterOutage`] with the given delay.
    pub fn after_outage(delay: Duration) -> Self {
        Self::AfterOutage { delay }
    }
}

impl ResilientStorage {
    /// Takes a lock for `ttl` unless another holder has it. Locks go only to backends shared
    /// across processes unless [local locks](super::StorageBuilder::local_locks) are enabled; a lock
    /// held by someone else is an answer ([`LockOutcome::Held`]) and never fails over.
    pub async fn acquire_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LockOutcome> {
        let full = self.inner.policy.keys.full_key(name)?;
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
        let full = self.inner.policy.keys.full_key(name)?;
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
        let full = self.inner.policy.keys.full_key(name)?;
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
        self.lock_holders()
            .remove(&(name.to_owned(), holder.to_owned()));
        Ok(released)
    }

    pub(super) fn finish_grant(&self, mut grant: LockGrant, name: &str, index: usize) -> LockGrant {
        let slot = &self.inner.slots[index];
        name.clone_into(&mut grant.name);
        grant.backend.clone_from(&slot.name);
        grant.local = !slot.capabilities.shared;
        grant
    }

    pub(super) fn lock_holders(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), (usize, Instant)>> {
        self.inner
            .locks
            .holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn remember_lock(&self, name: &str, holder: &str, index: usize, ttl: Duration) {
        let now = Instant::now();
        let mut holders = self.lock_holders();
        if holders.len() >= MAX_LOCK_HINTS {
            holders.retain(|_, (_, expires)| *expires > now);
        }
        if holders.len() < MAX_LOCK_HINTS {
            let expires = now.checked_add(ttl).unwrap_or(now);
            holders.insert((name.to_owned(), holder.to_owned()), (index, expires));
        }
    }

    pub(super) fn lock_hint(&self, name: &str, holder: &str) -> Option<usize> {
        self.lock_holders()
            .get(&(name.to_owned(), holder.to_owned()))
            .map(|(index, _)| *index)
    }

    /// Another lock backend than `to` that answered a lock call less than `delay` ago, so it
    /// may still hold live leases, with the time left until they have all expired.
    pub(super) fn lock_authority_elsewhere(
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
    pub(super) fn hold_back_lock_failover(
        &self,
        views: &mut [BackendView],
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
}

impl ResilientStorage {
    /// Why a lock call found no backend: none can hold locks, authority is moving (opt-in
    /// failover), or the backend that may grant is out of reach: locks fail closed.
    pub(super) fn lock_unavailable(&self, operation: Operation, route: Route) -> Error {
        let inner = &self.inner;
        let Some(authority) = inner.locks.authority else {
            return Error::NoLockBackend { operation };
        };
        let delay = match inner.locks.failover {
            LockFailover::Never => {
                let slot = &inner.slots[authority];
                return Error::NoBackendAvailable {
                    operation,
                    reasons: format!(
                        "{} (locks fail closed: every lock call goes to [{}], the lock \
                         authority, and no other backend grants while it is out of reach, so \
                         that no two processes can hold one lock; see LockFailover)",
                        slot.state_reason(),
                        slot.name
                    ),
                };
            }
            LockFailover::AfterOutage { delay } => delay,
        };
        let now = Instant::now();
        let mut natural = Candidates::new();
        let views = self.views(route, now, self.ms(now));
        inner.strategy.select(
            &Routing {
                backends: &views,
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
        let reasons = inner
            .slots
            .iter()
            .filter(|slot| self.eligible(slot, route))
            .map(|slot| slot.state_reason())
            .collect::<Vec<_>>()
            .join("; ");
        let local = if inner.locks.local {
            ""
        } else {
            "; local locks are not enabled"
        };
        Error::NoBackendAvailable {
            operation,
            reasons: format!(
                "{reasons} (locks fail closed: a lower backend grants only after a higher one \
                 has been out of reach for {delay:?}{local})"
            ),
        }
    }
}

/// Whether `slot` may hold locks: it can, and it is shared across processes or local locks
/// are enabled.
pub(super) fn lock_eligible(slot: &Slot, local_locks: bool) -> bool {
    slot.capabilities.locks && (slot.capabilities.shared || local_locks)
}
