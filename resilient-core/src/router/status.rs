//! What operators see: the health report, the active backend and the last one that served.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::time::Instant;

use super::{NONE, ResilientStorage, Route};
use crate::breaker::CircuitState;
use crate::report::{HealthReport, OverallStatus};

/// Which backend served the last call, and since when: for `lastServedBackend` and the
/// active-backend events.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) index: AtomicUsize,
    /// When `index` last changed, in ms since `epoch`.
    pub(super) since_ms: AtomicU64,
    pub(super) epoch: Instant,
}

impl Active {
    pub(super) fn new() -> Self {
        Self {
            index: AtomicUsize::new(NONE),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub(super) fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

impl ResilientStorage {
    /// The health report: overall status, active backend, and each backend's health, circuit,
    /// failures and latency.
    pub fn health(&self) -> HealthReport {
        let inner = &self.inner;
        let now = Instant::now();
        let backends = inner
            .slots
            .iter()
            .map(|slot| (slot.name.clone(), slot.report()))
            .collect::<indexmap::IndexMap<_, _>>();
        let now_ms = self.ms(now);
        let routable = inner
            .slots
            .iter()
            .filter(|slot| slot.view(now, now_ms, true, true).available)
            .count();
        // Write-behind copies on their way are normal operation; a backlog from an outage that
        // keeps a backend out of traffic, or writes lost since the last replay, are not.
        let all_well = inner.slots.iter().zip(backends.values()).all(|(slot, b)| {
            b.circuit_state == CircuitState::Closed
                && matches!(
                    b.health,
                    crate::HealthState::Healthy | crate::HealthState::Unknown
                )
                && !slot.replay.blocks_traffic()
                && b.replay_lost == 0
        });
        let status = if routable == 0 || inner.life.shut_down.load(Ordering::Acquire) {
            OverallStatus::Unhealthy
        } else if all_well {
            OverallStatus::Healthy
        } else {
            OverallStatus::Degraded
        };
        HealthReport {
            status,
            active_backend: self.active_backend(),
            last_served_backend: self.last_served_backend(),
            strategy: inner.strategy.name().to_owned(),
            backends,
        }
    }

    /// Where the next key-value call goes: the backend the strategy would try first now. An
    /// idle storage whose primary recovered reports the primary once the strategy would move
    /// back to it, not the fallback that served the last call. `None` when no backend is
    /// available.
    pub fn active_backend(&self) -> Option<String> {
        let now = Instant::now();
        let candidates = self.candidates(
            Route::Data,
            now,
            self.ms(now),
            None,
            &mut Default::default(),
        );
        let index = candidates.first()?;
        self.inner.slots.get(index).map(|slot| slot.name.clone())
    }

    /// The backend that served the last key-value or lock call, `None` before the first.
    pub fn last_served_backend(&self) -> Option<String> {
        let index = self.inner.active.index.load(Ordering::Relaxed);
        self.inner.slots.get(index).map(|slot| slot.name.clone())
    }
}
