//! One backend inside a storage: the backend, its breaker, its health tracker, and the
//! background task that runs its health checks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::handoff::Hints;
use super::telemetry::BackendMetrics;
use crate::backend::{Backend, Capabilities};
use crate::breaker::{BreakerConfig, CircuitBreaker};
use crate::events::StorageEvent;
use crate::health::{HealthConfig, HealthState, HealthTracker};
use crate::report::BackendReport;
use crate::strategy::BackendView;

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) priority: u32,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) capabilities: Capabilities,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) health: HealthTracker,
    pub(crate) hints: Arc<Hints>,
    pub(crate) metrics: BackendMetrics,
    /// Since when lock calls have found this backend unusable (`None` while it serves them).
    pub(crate) lock_down_since: std::sync::Mutex<Option<Instant>>,
    /// When it last answered an acquire or extend: it may hold leases until the longest lease
    /// after that.
    lock_answered: std::sync::Mutex<Option<Instant>>,
}

impl Slot {
    pub(crate) fn new(
        name: String,
        priority: u32,
        backend: Arc<dyn Backend>,
        breaker: BreakerConfig,
        health: HealthConfig,
        max_hints: usize,
        events: broadcast::Sender<StorageEvent>,
    ) -> Self {
        let capabilities = backend.capabilities();
        let backend_name = name.clone();
        let metrics = BackendMetrics::new(&name);
        let gauge = metrics.circuit_gauge();
        let hints = Arc::new(Hints::new(max_hints));
        let outage = hints.clone();
        let breaker = CircuitBreaker::new(breaker).with_observer(move |t| {
            gauge.set(t.to);
            if matches!(
                t.to,
                crate::CircuitState::Open | crate::CircuitState::ForcedOpen
            ) {
                outage.outage_began();
            }
            match t.to {
                crate::CircuitState::Closed => {
                    tracing::info!(backend = %backend_name, from = %t.from, "circuit closed")
                }
                to => tracing::warn!(
                    backend = %backend_name, from = %t.from, to = %to, open_for = ?t.open_for,
                    "circuit state changed"
                ),
            }
            // No subscriber is fine: events are optional.
            let _ = events.send(StorageEvent::CircuitChanged {
                backend: backend_name.clone(),
                from: t.from,
                to: t.to,
                open_for: t.open_for,
            });
        });
        Self {
            name,
            priority,
            backend,
            capabilities,
            breaker,
            health: HealthTracker::new(health),
            hints,
            metrics,
            lock_down_since: std::sync::Mutex::new(None),
            lock_answered: std::sync::Mutex::new(None),
        }
    }

    /// Marks the backend unusable for locks from `now` unless it already was; returns since
    /// when. Only [`lock_served`](Self::lock_served) clears it: a half-open breaker letting a
    /// probe through does not restart the clock.
    pub(crate) fn lock_down(&self, now: Instant) -> Instant {
        *self
            .lock_down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(now)
    }

    /// The backend answered an acquire or extend at `now`.
    pub(crate) fn lock_served(&self, now: Instant) {
        *self
            .lock_down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        *self.lock_answered.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }

    /// When it last answered an acquire or extend.
    pub(crate) fn lock_answered_at(&self) -> Option<Instant> {
        *self.lock_answered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True for the process-local memory store.
    pub(crate) fn is_local_memory(&self) -> bool {
        self.backend.scheme() == "memory" && !self.capabilities.shared
    }

    /// `data`: the view is for a key-value operation, which a backend with writes still to
    /// replay must not serve.
    pub(crate) fn view(&self, now: Instant, eligible: bool, data: bool) -> BackendView {
        let available_for =
            self.health
                .routable_for(now)
                .and_then(|healthy| match self.breaker.closed_for(now) {
                    Some(closed) => Some(closed.min(healthy)),
                    None => self.breaker.would_admit_at(now).then_some(Duration::ZERO),
                });
        let replaying = data && self.hints.blocks_traffic();
        BackendView {
            priority: self.priority,
            available: eligible && !replaying && available_for.is_some(),
            available_for: available_for.unwrap_or_default(),
            latency: self.health.latency(),
        }
    }

    pub(crate) fn report(&self) -> BackendReport {
        let breaker = self.breaker.snapshot();
        BackendReport {
            scheme: self.backend.scheme().to_owned(),
            priority: self.priority,
            health: self.health.state(),
            circuit_open: breaker.state != crate::CircuitState::Closed,
            circuit_state: breaker.state,
            consecutive_failures: breaker.consecutive_failures,
            latency_ms: self.health.latency().map(|l| l.as_secs_f64() * 1e3),
            last_error: self.health.last_error(),
            capabilities: self.capabilities,
            pending_replay: self.hints.pending(),
            replay_lost: self.hints.lost(),
        }
    }
}

/// Runs health checks until `stop` fires or its sender is dropped. A check is bounded by the
/// health timeout, so a frozen backend costs one timeout per interval and never stalls the loop.
pub(crate) async fn monitor(
    slot: Arc<Slot>,
    events: broadcast::Sender<StorageEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let config = slot.health.config().clone();
    loop {
        let start = Instant::now();
        let checked = tokio::select! {
            biased;
            _ = stop.changed() => return,
            checked = tokio::time::timeout(config.timeout, slot.backend.health_check()) => checked,
        };
        let outcome = match checked {
            Ok(Ok(probe)) => Ok((probe, start.elapsed())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("health check timed out after {:?}", config.timeout)),
        };
        let error = outcome.as_ref().err().cloned();
        let passed = error.is_none();
        let change = slot.health.record_check(outcome, Instant::now());
        // A passing check while the breaker is open means the backend answers again: let a
        // request probe it now rather than wait out the open time, whether or not the outage
        // lasted long enough to mark the backend unhealthy.
        if passed && slot.health.state().is_routable() {
            slot.breaker.health_recovered();
        }
        if let Some(change) = change {
            if change.to == HealthState::Unhealthy {
                slot.hints.outage_began();
                tracing::warn!(backend = %slot.name, from = %change.from, error = ?error, "backend unhealthy");
            } else {
                tracing::info!(backend = %slot.name, from = %change.from, to = %change.to, "backend health changed");
            }
            let _ = events.send(StorageEvent::HealthChanged {
                backend: slot.name.clone(),
                from: change.from,
                to: change.to,
                error,
            });
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

/// How often the replayer looks for recovered backends with writes to replay.
const REPLAY_TICK: Duration = Duration::from_millis(100);
const REPLAY_BATCH: usize = 256;

/// Replays the writes each backend missed, once it answers again, until `stop` fires. Each
/// replayed write goes through the backend's breaker: while it is open nothing is sent, and in
/// half-open the first replayed write is the one probe.
pub(crate) async fn replayer(
    slots: Vec<Arc<Slot>>,
    events: broadcast::Sender<StorageEvent>,
    mut stop: watch::Receiver<bool>,
    attempt_timeout: Duration,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(REPLAY_TICK) => {}
        }
        for slot in &slots {
            if slot.hints.pending() > 0 && slot.health.state().is_routable() {
                replay(slot, &events, attempt_timeout).await;
            }
        }
    }
}

async fn replay(slot: &Slot, events: &broadcast::Sender<StorageEvent>, attempt_timeout: Duration) {
    let mut complete = true;
    'drain: for batch in slot.hints.pass().chunks(REPLAY_BATCH) {
        // Let other tasks run between batches of a long pass.
        tokio::task::yield_now().await;
        for (key, hint, version) in batch {
            let (key, version) = (key.as_str(), *version);
            let Ok(permit) = slot.breaker.try_acquire() else {
                complete = false;
                break 'drain;
            };
            let start = Instant::now();
            // Conditional on a versioned backend: a newer write another process made there
            // meanwhile stays, and the record is done all the same.
            let call = slot
                .backend
                .replay_write(key, hint.replay_at(start), version);
            match tokio::time::timeout(attempt_timeout, call).await {
                Ok(Ok(applied)) => {
                    permit.success(start.elapsed());
                    if !applied {
                        tracing::debug!(backend = %slot.name, "replay skipped: a newer write is there");
                    }
                    if slot.hints.replayed(key, version) {
                        slot.metrics.replayed(1);
                    }
                }
                Ok(Err(error)) if error.is_transient() => {
                    permit.failure();
                    tracing::debug!(backend = %slot.name, %error, "replay paused");
                    complete = false;
                    break 'drain;
                }
                Ok(Err(error)) => {
                    // The backend refuses this write for good: report it rather than retry
                    // forever or drop it silently.
                    permit.ignore();
                    if slot.hints.forget(key, version) {
                        slot.hints.count_lost();
                        slot.metrics.lost(slot.hints.lost());
                        tracing::warn!(backend = %slot.name, %error, "a write could not be replayed");
                        let _ = events.send(StorageEvent::ReplayLost {
                            backend: slot.name.clone(),
                            lost: slot.hints.lost(),
                        });
                    }
                }
                Err(_) => {
                    permit.failure();
                    complete = false;
                    break 'drain;
                }
            }
        }
    }
    slot.metrics.backlog(slot.hints.pending());
    // The first complete pass of an outage lets traffic back; later passes replay the writes
    // made meanwhile, which reads consult until then.
    if complete && !slot.hints.set_caught_up() {
        tracing::info!(backend = %slot.name, "replay pass complete: backend takes traffic again");
    }
    let records = slot.hints.take_replayed_when_done();
    if records > 0 {
        tracing::info!(backend = %slot.name, records, "replay complete: backend up to date");
        let _ = events.send(StorageEvent::ReplayCompleted {
            backend: slot.name.clone(),
            records,
        });
    }
}
