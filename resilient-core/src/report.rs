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
    /// Where the next key-value call goes (see
    /// [`ResilientStorage::active_backend`](crate::ResilientStorage::active_backend)).
    pub active_backend: Option<String>,
    /// The backend that served the last call.
    pub last_served_backend: Option<String>,
    /// The selection strategy's name.
    pub strategy: String,
    /// Each backend by name, in priority order.
    pub backends: IndexMap<String, BackendReport>,
}

impl HealthReport {
    /// The HTTP status of the health endpoint, for monitoring and alerts: 200 when healthy,
    /// 503 otherwise, including while the storage serves correctly from a fallback. Do not
    /// take instances out of a load balancer on it: every instance sees the same outage.
    pub fn http_status(&self) -> u16 {
        match self.status {
            OverallStatus::Healthy => 200,
            OverallStatus::Degraded | OverallStatus::Unhealthy => 503,
        }
    }

    /// True while the storage can serve calls on some backend (healthy or degraded): what a
    /// readiness probe or load balancer should ask.
    pub fn is_ready(&self) -> bool {
        self.status != OverallStatus::Unhealthy
    }

    /// The HTTP status of the readiness endpoint: 200 while [ready](Self::is_ready), 503 only
    /// when no backend can serve.
    pub fn readiness_http_status(&self) -> u16 {
        if self.is_ready() { 200 } else { 503 }
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
    /// Writes and deletes not yet on it: missed during an outage (it takes no key-value
    /// traffic until one replay pass has been through them), or write-behind copies on their
    /// way (reads on it answer from them meanwhile).
    pub pending_replay: usize,
    /// Missed writes that could not be kept or replayed since the last replay that left none
    /// pending: keys it may serve stale. The lifetime total is the metric
    /// `resilient_storage_replay_lost_total`.
    pub replay_lost: u64,
}
