//! A backend wrapper that fails, hangs, slows down or flaps on a script.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::{
    AtomicOp, AtomicOutcome, Backend, BatchWrite, Capabilities, HealthProbe, JournalEntry,
    KeyWrite, LockGrant, LockOutcome, Unknown, WriteOptions, WriteOutcome,
};
use crate::error::{Error, Operation, Result};

/// What a [`FaultBackend`] does to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Pass the call to the wrapped backend.
    Pass,
    /// Fail at once with a transient [`Error::Backend`].
    Fail,
    /// Never answer (until the caller's timeout drops the call).
    Hang,
    /// Wait this long, then pass the call on.
    Delay(Duration),
    /// Pass the call on, then hold its answer this long: the backend has done the work, but
    /// the caller learns of it late, as with a reply slow to come back.
    DelayAnswer(Duration),
    /// Answer health checks as degraded with this message; data calls pass.
    Degraded(String),
}

#[derive(Debug)]
struct Script {
    fault: Fault,
    health: Option<Fault>,
    per_operation: HashMap<Operation, Fault>,
    flap: Option<(Instant, Vec<(Duration, Fault)>)>,
}

/// Wraps any backend and applies a scripted [`Fault`] to each call: the same fault for every
/// call ([`inject`](Self::inject)), one per operation ([`inject_for`](Self::inject_for)), a
/// separate one for health checks ([`inject_health`](Self::inject_health)), or a repeating schedule
/// ([`flap`](Self::flap)). Schedules and delays follow tokio's clock, so tests can pause it.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use resilient_core::testing::{Fault, FaultBackend};
/// # fn demo(inner: Arc<dyn resilient_core::Backend>) {
/// let redis = Arc::new(FaultBackend::wrap(inner).named("redis").shared(true));
/// redis.inject(Fault::Hang);
/// redis.flap(vec![(Duration::from_secs(1), Fault::Pass), (Duration::from_millis(200), Fault::Fail)]);
/// # }
/// ```
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    name: String,
    capabilities: Capabilities,
    script: Mutex<Script>,
    calls: AtomicU64,
    health_checks: AtomicU64,
}

impl fmt::Debug for FaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultBackend")
            .field("name", &self.name)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FaultBackend {
    /// Wraps `inner`, passing every call through until told otherwise.
    pub fn wrap(inner: Arc<dyn Backend>) -> Self {
        Self {
            name: inner.name().to_owned(),
            capabilities: inner.capabilities(),
            inner,
            script: Mutex::new(Script {
                fault: Fault::Pass,
                health: None,
                per_operation: HashMap::new(),
                flap: None,
            }),
            calls: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
        }
    }

    /// Renames it (reports, events, errors).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Claims to be shared across processes (or not), so lock routing treats it like Redis.
    pub fn shared(mut self, shared: bool) -> Self {
        self.capabilities.shared = shared;
        self
    }

    /// Claims (or not) to keep every write it acknowledged across restarts, as PostgreSQL does.
    pub fn durable(mut self, durable: bool) -> Self {
        self.capabilities.durable = durable;
        self
    }

    /// Applies `fault` to every call from now on, ending any schedule.
    pub fn inject(&self, fault: Fault) {
        let mut script = self.lock();
        script.fault = fault;
        script.flap = None;
    }

    /// Applies `fault` to one operation, overriding [`inject`](Self::inject) and schedules for it.
    pub fn inject_for(&self, operation: Operation, fault: Fault) {
        self.lock().per_operation.insert(operation, fault);
    }

    /// Applies `fault` to health checks only; `None` makes them follow the data calls.
    pub fn inject_health(&self, fault: Option<Fault>) {
        self.lock().health = fault;
    }

    /// Repeats the phases, each for its duration, starting now.
    pub fn flap(&self, phases: Vec<(Duration, Fault)>) {
        let mut script = self.lock();
        script.flap = (!phases.is_empty()).then(|| (Instant::now(), phases));
    }

    /// Data calls made so far (health checks not included).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Health checks made so far.
    pub fn health_checks(&self) -> u64 {
        self.health_checks.load(Ordering::Relaxed)
    }

    /// The fault that applies to `operation` now.
    pub fn current(&self, operation: Operation) -> Fault {
        let script = self.lock();
        if let Some(fault) = script.per_operation.get(&operation) {
            return fault.clone();
        }
        if operation == Operation::HealthCheck
            && let Some(fault) = &script.health
        {
            return fault.clone();
        }
        match &script.flap {
            Some((start, phases)) => {
                let cycle: Duration = phases.iter().map(|(d, _)| *d).sum();
                let cycle_ns = cycle.as_nanos().max(1);
                let mut at = Instant::now().saturating_duration_since(*start).as_nanos() % cycle_ns;
                for (length, fault) in phases {
                    if at < length.as_nanos() {
                        return fault.clone();
                    }
                    at -= length.as_nanos();
                }
                Fault::Pass
            }
            None => script.fault.clone(),
        }
    }

    /// Applies the fault before the call; returns how long to hold the answer after it.
    async fn apply(&self, operation: Operation) -> Result<Option<Duration>> {
        if operation == Operation::HealthCheck {
            self.health_checks.fetch_add(1, Ordering::Relaxed);
        } else {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        match self.current(operation) {
            Fault::Pass | Fault::Degraded(_) => Ok(None),
            Fault::Fail => Err(Error::backend(&self.name, operation, "injected failure")),
            Fault::Hang => std::future::pending().await,
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Fault::DelayAnswer(d) => Ok(Some(d)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `result`, after holding it for `hold`.
async fn answer<T>(hold: Option<Duration>, result: T) -> T {
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    result
}

#[async_trait]
impl Backend for FaultBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn scheme(&self) -> &str {
        self.inner.scheme()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn health_check(&self) -> Result<HealthProbe> {
        let hold = self.apply(Operation::HealthCheck).await?;
        if let Fault::Degraded(message) = self.current(Operation::HealthCheck) {
            return Ok(HealthProbe::Degraded(message));
        }
        answer(hold, self.inner.health_check().await).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let hold = self.apply(Operation::Get).await?;
        answer(hold, self.inner.get(key).await).await
    }

    async fn write(
        &self,
        key: &str,
        write: KeyWrite,
        options: WriteOptions,
    ) -> Result<WriteOutcome> {
        let operation = match write {
            KeyWrite::Delete => Operation::Delete,
            _ => Operation::Set,
        };
        let hold = self.apply(operation).await?;
        answer(hold, self.inner.write(key, write, options).await).await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Result<Option<Bytes>>>> {
        let hold = self.apply(Operation::GetMany).await?;
        answer(hold, self.inner.get_many(keys).await).await
    }

    async fn write_many(&self, writes: Vec<BatchWrite<'_>>) -> Result<Vec<Result<WriteOutcome>>> {
        let hold = self.apply(Operation::WriteMany).await?;
        answer(hold, self.inner.write_many(writes).await).await
    }

    async fn atomic(
        &self,
        key: &str,
        op: AtomicOp,
        unknown: Unknown,
        options: WriteOptions,
    ) -> Result<AtomicOutcome> {
        let hold = self.apply(Operation::Atomic).await?;
        answer(hold, self.inner.atomic(key, op, unknown, options).await).await
    }

    async fn acquire_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<LockOutcome> {
        let hold = self.apply(Operation::AcquireLock).await?;
        answer(hold, self.inner.acquire_lock(name, holder, ttl).await).await
    }

    async fn extend_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LockGrant>> {
        let hold = self.apply(Operation::ExtendLock).await?;
        answer(hold, self.inner.extend_lock(name, holder, ttl).await).await
    }

    async fn release_lock(&self, name: &str, holder: &str) -> Result<bool> {
        let hold = self.apply(Operation::ReleaseLock).await?;
        answer(hold, self.inner.release_lock(name, holder).await).await
    }

    async fn claim_journal(
        &self,
        target: &str,
        claim: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<JournalEntry>> {
        let hold = self.apply(Operation::Journal).await?;
        answer(
            hold,
            self.inner.claim_journal(target, claim, max, lease).await,
        )
        .await
    }

    async fn settle_journal(&self, target: &str, claim: u64, keys: &[&str]) -> Result<()> {
        let hold = self.apply(Operation::Journal).await?;
        answer(hold, self.inner.settle_journal(target, claim, keys).await).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}
