//! One backend inside a storage: the backend, its breaker, its health tracker, and the
//! background task that runs its health checks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

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
}

impl Slot {
    pub(crate) fn new(
        name: String,
        priority: u32,
        backend: Arc<dyn Backend>,
        breaker: BreakerConfig,
        health: HealthConfig,
        events: broadcast::Sender<StorageEvent>,
    ) -> Self {
        let capabilities = backend.capabilities();
        let backend_name = name.clone();
        let breaker = CircuitBreaker::new(breaker).with_observer(move |t| {
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
        }
    }

    pub(crate) fn view(&self, now: Instant, eligible: bool) -> BackendView {
        let available_for =
            self.health
                .routable_for(now)
                .and_then(|healthy| match self.breaker.closed_for(now) {
                    Some(closed) => Some(closed.min(healthy)),
                    None => self.breaker.would_admit_at(now).then_some(Duration::ZERO),
                });
        BackendView {
            priority: self.priority,
            available: eligible && available_for.is_some(),
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
