//! The health report served to operators, for example on an HTTP health endpoint.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::backend::Capabilities;
use crate::breaker::CircuitState;
use crate::health::HealthState;

/// Overall status of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverallStatus {
    /// Every backend is healthy with its circuit closed.
    Healthy,
    /// Serving, but some backend is unhealthy, degraded, has its circuit open, or has writes to
    /// replay or lost.
    Degraded,
    /// No backend can serve.
    Unhealthy,
}

/// Health of the whole storage. Serializes as
/// `{"status", "activeBackend", "strategy", "backends": {name: {...}}}`, backends in priority
/// order. Holds no credentials, keys or values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HealthReport {
    /// Overall status.
    pub status: OverallStatus,
    /// The backend serving traffic.
    pub active_backend: Option<String>,
    /// The selection strategy's name.
    pub strategy: String,
    /// Each backend by name, in priority order.
    pub backends: IndexMap<String, BackendReport>,
}

impl HealthReport {
    /// The HTTP status a health endpoint should answer with: 200 when healthy, 503 otherwise.
    pub fn http_status(&self) -> u16 {
        match self.status {
            OverallStatus::Healthy => 200,
            OverallStatus::Degraded | OverallStatus::Unhealthy => 503,
        }
    }
}

/// Health of one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BackendReport {
    /// URL scheme of the backend.
    pub scheme: String,
    /// Priority (1 is tried first).
    pub priority: u32,
    /// State from active health checks.
    pub health: HealthState,
    /// True unless the breaker is closed.
    pub circuit_open: bool,
    /// The breaker's state.
    pub circuit_state: CircuitState,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Latency EWMA over checks and calls, in milliseconds.
    pub latency_ms: Option<f64>,
    /// The last failed health check's message, while checks fail.
    pub last_error: Option<String>,
    /// What the backend can do.
    pub capabilities: Capabilities,
    /// Writes and deletes it missed, waiting to be replayed to it; it takes no key-value
    /// traffic until they are.
    pub pending_replay: usize,
    /// Missed writes that could not be kept or replayed: keys it may serve stale.
    pub replay_lost: u64,
}
