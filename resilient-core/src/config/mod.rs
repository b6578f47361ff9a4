//! [`StorageConfig`]: the whole storage as data, for TOML, JSON or environment-driven setups.

#[cfg(feature = "toml")]
mod file;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;
use crate::error::Result;
use crate::health::HealthConfig;
use crate::key::KeyPolicy;
use crate::router::{
    BackendOptions, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_FAILBACK_DELAY,
    DEFAULT_MAX_REPLAY_BYTES, DEFAULT_MAX_REPLAY_RECORDS, DEFAULT_MEMORY_TTL_CAP, LockFailover,
    ResilientStorage, StorageBuilder, WritePolicy,
};
use crate::strategy::Strategy;
use crate::url::BackendUrl;

#[cfg(feature = "toml")]
pub use file::ENV_PREFIX;

/// One backend in a [`StorageConfig`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackendConfig {
    /// The backend URL; its scheme picks the backend. Shown redacted in `Debug`.
    pub url: String,
    /// Priority: 1 is tried first.
    pub priority: u32,
    /// Name in reports; defaults to the backend's own.
    #[serde(default)]
    pub name: Option<String>,
    /// Leave it out without deleting the entry.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl BackendConfig {
    /// An enabled backend.
    pub fn new(url: impl Into<String>, priority: u32) -> Self {
        Self {
            url: url.into(),
            priority,
            name: None,
            enabled: true,
        }
    }
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("url", &crate::url::redact(&self.url))
            .field("priority", &self.priority)
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .finish()
    }
}

fn yes() -> bool {
    true
}

/// Everything [`StorageBuilder`] takes, as data. Every field has a default; unknown fields are
/// errors. Durations are written like `"500ms"` or `"2s"`.
///
/// ```toml
/// strategy = "failover"
/// attempt_timeout = "250ms"
/// deadline = "1s"
///
/// [[backends]]
/// url = "redis://127.0.0.1:6379"
/// priority = 1
///
/// [breaker]
/// consecutive_failures = 3
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StorageConfig {
    /// The backends. The memory fallback is added unless `memory_fallback = false`.
    pub backends: Vec<BackendConfig>,
    /// Selection strategy: `failover`, `priority`, `round_robin` or `latency_aware`.
    pub strategy: Strategy,
    /// Failback delay of the failover strategy.
    #[serde(with = "humantime_serde")]
    pub failback_delay: Duration,
    /// Circuit breaker settings.
    pub breaker: BreakerConfig,
    /// Health check settings.
    pub health: HealthConfig,
    /// Time one backend gets to answer one call.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Time the whole failover chain of one call may take.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Add the in-process memory backend as the last fallback.
    pub memory_fallback: bool,
    /// Let process-local backends hold locks (see [`StorageBuilder::local_locks`]).
    pub local_locks: bool,
    /// Key and value limits and namespace.
    pub keys: KeyPolicy,
    /// Where writes go: `write_behind` (default), `write_through` or `selected`.
    pub write_policy: WritePolicy,
    /// The longest TTL of write-through copies to the memory store.
    #[serde(with = "humantime_serde")]
    pub memory_ttl_cap: Duration,
    /// Writes kept per backend for replay (was `max_hints`).
    #[serde(alias = "max_hints")]
    pub max_replay_records: usize,
    /// Bytes of writes kept per backend for replay.
    pub max_replay_bytes: usize,
    /// Whether lock authority may leave the highest-priority lock backend: `"never"` (the
    /// default) or `{ after_outage = { delay = "30s" } }`; see [`LockFailover`].
    pub lock_failover: LockFailover,
    /// Bytes of last known values kept in process memory for cache-aside fail-safe.
    pub fail_safe_memory: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            strategy: Strategy::default(),
            failback_delay: DEFAULT_FAILBACK_DELAY,
            breaker: BreakerConfig::default(),
            health: HealthConfig::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            memory_fallback: true,
            local_locks: false,
            keys: KeyPolicy::default(),
            write_policy: WritePolicy::default(),
            memory_ttl_cap: DEFAULT_MEMORY_TTL_CAP,
            max_replay_records: DEFAULT_MAX_REPLAY_RECORDS,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            lock_failover: LockFailover::Never,
            fail_safe_memory: crate::DEFAULT_FAIL_SAFE_MEMORY,
        }
    }
}

impl StorageConfig {
    /// A builder holding this configuration. Fails when a URL does not parse or names a scheme
    /// no linked backend serves; the error names the field.
    pub fn into_builder(self) -> Result<StorageBuilder> {
        let mut builder = ResilientStorage::builder()
            .strategy(self.strategy)
            .failback_delay(self.failback_delay)
            .breaker(self.breaker)
            .health(self.health)
            .attempt_timeout(self.attempt_timeout)
            .deadline(self.deadline)
            .memory_fallback(self.memory_fallback)
            .local_locks(self.local_locks)
            .keys(self.keys)
            .write_policy(self.write_policy)
            .memory_ttl_cap(self.memory_ttl_cap)
            .max_replay_records(self.max_replay_records)
            .max_replay_bytes(self.max_replay_bytes)
            .lock_failover(self.lock_failover)
            .fail_safe_memory(self.fail_safe_memory);
        for (i, backend) in self.backends.into_iter().enumerate() {
            let mut options = BackendOptions::new(backend.priority).enabled(backend.enabled);
            options.name = backend.name;
            builder = builder
                .backend_url_with(&backend.url, options)
                .map_err(|e| match e {
                    crate::Error::Config { reason, .. } => {
                        crate::Error::config(format!("backends[{i}].url"), reason)
                    }
                    crate::Error::UnknownScheme { scheme, available } => crate::Error::config(
                        format!("backends[{i}].url"),
                        format!(
                            "no backend registered for scheme {scheme:?} of {}; available schemes: {available}",
                            BackendUrl::parse(&backend.url).map(|u| u.redacted()).unwrap_or_default()
                        ),
                    ),
                    other => other,
                })?;
        }
        Ok(builder)
    }
}

impl ResilientStorage {
    /// Builds a storage from a [`StorageConfig`].
    pub async fn from_config(config: StorageConfig) -> Result<ResilientStorage> {
        config.into_builder()?.build().await
    }
}
