//! [`LockGuard`]: a held lock that renews its lease in the background, says when it is lost,
//! releases on drop, and caps the total hold time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ResilientStorage;
use crate::backend::{FencingToken, LockGrant, LockOutcome};
use crate::error::{Error, Result};

/// How a [`LockGuard`] holds its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// Lease length; renewed before it runs out.
    pub ttl: Duration,
    /// Time between renewals. Default: a third of the TTL.
    pub renew_every: Option<Duration>,
    /// The longest the guard holds the lock; then it releases it and reports
    /// [`LockLost::MaxHoldReached`]. Default: no limit.
    pub max_hold: Option<Duration>,
}

impl LockOptions {
    /// A lease of `ttl`, renewed every `ttl / 3`, without a hold limit.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_every: None,
            max_hold: None,
        }
    }

    /// Sets [`renew_every`](Self::renew_every).
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// Sets [`max_hold`](Self::max_hold).
    pub fn max_hold(mut self, max: Duration) -> Self {
        self.max_hold = Some(max);
        self
    }
}

/// Why a [`LockGuard`] no longer holds its lock. From then on the holder must stop touching
/// the guarded resource (whose fencing check would reject it anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockLost {
    /// A renewal found the lock no longer ours: the lease ran out (and may have been taken).
    Expired,
    /// No renewal succeeded for a whole TTL: the lease has run out on the server's clock.
    Unreachable,
    /// The hold limit was reached; the guard released the lock.
    MaxHoldReached,
}

/// A lock held until the guard is released or dropped. Obtained from [`ResilientStorage::lock`].
///
/// Dropping the guard stops the renewals and releases the lock in the background (best effort:
/// should that fail, the lease expires by itself within its TTL).
#[derive(Debug)]
pub struct LockGuard {
    grant: LockGrant,
    storage: ResilientStorage,
    lost: watch::Receiver<Option<LockLost>>,
    valid_until: Arc<Mutex<Instant>>,
    renewer: JoinHandle<()>,
    released: bool,
}

impl LockGuard {
    /// The grant: backend, fencing token, and whether the lock is process-local.
    pub fn grant(&self) -> &LockGrant {
        &self.grant
    }

    /// The fencing token to present to the guarded resource.
    pub fn token(&self) -> FencingToken {
        self.grant.token
    }

    /// Why the lock was lost, if it was.
    pub fn lost_reason(&self) -> Option<LockLost> {
        *self.lost.borrow()
    }

    /// How long the lease is sure to last by this process's clock: the TTL counted from when
    /// the latest successful acquire or renewal was *sent* (the server started it later), and
    /// zero once the lock is lost. The loss signal comes at the renewer's next tick; this is
    /// exact at every instant, so check it right before each write to the guarded resource
    /// (which should still check the fencing token).
    pub fn valid_for(&self) -> Duration {
        if self.lost_reason().is_some() {
            return Duration::ZERO;
        }
        let until = *self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        until.saturating_duration_since(Instant::now())
    }

    /// Waits until the lock is lost (use it in a `select!` beside the critical section).
    pub async fn lost(&mut self) -> LockLost {
        loop {
            if let Some(reason) = *self.lost.borrow_and_update() {
                return reason;
            }
            if self.lost.changed().await.is_err() {
                // The renewer ended without a reason: only after a release.
                return LockLost::Expired;
            }
        }
    }

    /// Stops renewing and releases the lock; true when it was still ours.
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.renewer.abort();
        self.storage
            .release_lock(&self.grant.name, &self.grant.holder)
            .await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (storage, name, holder) = (
                self.storage.clone(),
                self.grant.name.clone(),
                self.grant.holder.clone(),
            );
            runtime.spawn(async move {
                let _ = storage.release_lock(&name, &holder).await;
            });
        }
    }
}

impl ResilientStorage {
    /// Takes a lock and keeps it with a [`LockGuard`]; `None` when another holder has it.
    pub async fn lock(
        &self,
        name: &str,
        holder: &str,
        options: LockOptions,
    ) -> Result<Option<LockGuard>> {
        let renew_every = options.renew_every.unwrap_or(options.ttl / 3);
        if renew_every.is_zero() || renew_every >= options.ttl {
            return Err(Error::config(
                "lock.renew_every",
                "must be above zero and below the ttl",
            ));
        }
        let acquired_at = Instant::now();
        let grant = match self.acquire_lock(name, holder, options.ttl).await? {
            LockOutcome::Acquired(grant) => grant,
            _ => return Ok(None),
        };
        let (tx, lost) = watch::channel(None);
        let valid_until = Arc::new(Mutex::new(acquired_at + options.ttl));
        let renewer = tokio::spawn(
            Renewal {
                storage: self.clone(),
                name: grant.name.clone(),
                holder: grant.holder.clone(),
                ttl: options.ttl,
                every: renew_every,
                // A hold limit past the clock's range is no limit.
                release_at: options
                    .max_hold
                    .and_then(|max| acquired_at.checked_add(max)),
                valid_until: valid_until.clone(),
                lost: tx,
            }
            .run(),
        );
        Ok(Some(LockGuard {
            grant,
            storage: self.clone(),
            lost,
            valid_until,
            renewer,
            released: false,
        }))
    }
}

/// The background task of a [`LockGuard`]: extends the lease every `every`, releases it at
/// `release_at`, and reports a loss.
struct Renewal {
    storage: ResilientStorage,
    name: String,
    holder: String,
    ttl: Duration,
    every: Duration,
    release_at: Option<Instant>,
    valid_until: Arc<Mutex<Instant>>,
    lost: watch::Sender<Option<LockLost>>,
}

impl Renewal {
    async fn run(self) {
        let Renewal {
            storage,
            name,
            holder,
            ttl,
            every,
            release_at,
            valid_until,
            lost,
        } = self;
        // When the latest successful acquire or extend was sent.
        let mut renewed_at = *valid_until.lock().unwrap_or_else(|p| p.into_inner()) - ttl;
        let mut next = renewed_at + every;
        loop {
            let hold_over = tokio::select! {
                _ = tokio::time::sleep_until(next) => false,
                _ = async {
                    match release_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if hold_over {
                let _ = storage.release_lock(&name, &holder).await;
                lost.send_replace(Some(LockLost::MaxHoldReached));
                return;
            }
            next += every;
            let sent = Instant::now();
            match storage.extend_lock(&name, &holder, ttl).await {
                Ok(Some(_)) => {
                    renewed_at = sent;
                    *valid_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + ttl;
                }
                Ok(None) => {
                    lost.send_replace(Some(LockLost::Expired));
                    return;
                }
                Err(error) => {
                    // Lock names are keys: only at debug level.
                    tracing::debug!(lock = %name, "lock renewal failed");
                    tracing::warn!(%error, "lock renewal failed");
                    if Instant::now() >= renewed_at + ttl {
                        lost.send_replace(Some(LockLost::Unreachable));
                        return;
                    }
                }
            }
        }
    }
}
