//! Events for failovers, circuit changes and health changes, broadcast to subscribers.

use std::time::Duration;

use serde::Serialize;

use crate::breaker::CircuitState;
use crate::error::Operation;
use crate::health::HealthState;
use crate::router::StaleReason;

/// Something an operator wants to know about, from [`ResilientStorage::subscribe`](crate::ResilientStorage::subscribe).
///
/// Delivered through a bounded broadcast channel: a subscriber that falls behind by more than
/// the channel's capacity sees `RecvError::Lagged` and then the newest events.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum StorageEvent {
    /// One operation's first-choice backend failed and another served it.
    #[serde(rename_all = "camelCase")]
    Failover {
        /// The operation.
        operation: Operation,
        /// The backend that failed (the first candidate).
        from: String,
        /// The backend that served the operation.
        to: String,
        /// Why `from` was passed over.
        reason: String,
    },
    /// The backend serving traffic changed (a failover or a failback). Not sent by strategies
    /// that spread load across backends on purpose.
    #[serde(rename_all = "camelCase")]
    ActiveBackendChanged {
        /// The backend that served before, if any had.
        from: Option<String>,
        /// The backend serving now.
        to: String,
    },
    /// A circuit breaker changed state.
    #[serde(rename_all = "camelCase")]
    CircuitChanged {
        /// The backend.
        backend: String,
        /// State before.
        from: CircuitState,
        /// State after.
        to: CircuitState,
        /// For a move to open: how long it stays open (`"1s"`, `"2s 500ms"` in JSON).
        #[serde(with = "humantime_serde::option")]
        open_for: Option<Duration>,
    },
    /// A backend that missed writes while another served them has been brought up to date,
    /// and takes traffic again.
    #[serde(rename_all = "camelCase")]
    ReplayCompleted {
        /// The backend.
        backend: String,
        /// Writes and deletes replayed to it, counting those a versioned backend refused
        /// because a newer write (from another process) was already there.
        records: u64,
    },
    /// Writes a backend missed could not all be kept for replay (the bound was reached) or were
    /// refused by it: that backend may serve older values for those keys after it recovers.
    #[serde(rename_all = "camelCase")]
    ReplayLost {
        /// The backend.
        backend: String,
        /// Records lost so far for it.
        lost: u64,
    },
    /// Fail-safe: [`get_or_load`](crate::ResilientStorage::get_or_load) served a value past its
    /// TTL because fresh data could not be had. The key is not named (keys may be sensitive).
    #[serde(rename_all = "camelCase")]
    FailSafeServed {
        /// Why.
        reason: StaleReason,
        /// How long ago the value was loaded.
        #[serde(with = "humantime_serde")]
        age: Duration,
    },
    /// Active health checks changed a backend's health state.
    #[serde(rename_all = "camelCase")]
    HealthChanged {
        /// The backend.
        backend: String,
        /// State before.
        from: HealthState,
        /// State after.
        to: HealthState,
        /// The failed check's message, when the change came from a failure.
        error: Option<String>,
    },
}
