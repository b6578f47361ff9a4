//! The engine of resilient-storage: the [`Backend`] trait that storage backends implement, the
//! [`CircuitBreaker`], the [health monitor](health), the [selection strategies](strategy), and
//! the router [`ResilientStorage`] that ties them together.
//!
//! Most users depend on the `resilient-storage` facade, which re-exports this crate with the
//! backends they enable. Backend authors depend on this crate alone; see [`registry`] for how a
//! backend makes itself available by URL scheme.
//!
//! Feature `testing` adds [`testing::FaultBackend`] (scripted failures, hangs, delays and
//! flapping around any backend) and the [`testing::conformance`] suite.

pub mod backend;
pub mod breaker;
pub mod config;
pub mod error;
pub mod events;
pub mod health;
pub mod key;
pub mod limits;
pub mod registry;
pub mod report;
mod router;
pub mod strategy;
#[cfg(feature = "testing")]
pub mod testing;
pub mod url;

pub use async_trait::async_trait;
pub use backend::{
    AtomicOp, AtomicOutcome, Backend, BackendExt, BatchWrite, Capabilities, FencingToken,
    HealthProbe, JournalEntry, KeyWrite, LockGrant, LockOutcome, MissedBy, Unknown, WriteMode,
    WriteOptions, WriteOutcome, WriteVersion, rules,
};
pub use breaker::{BreakerConfig, CircuitBreaker, CircuitState};
pub use bytes::Bytes;
pub use config::{BackendConfig, StorageConfig};
pub use error::{Error, ErrorClass, JsonProblem, Operation, Result};
pub use events::StorageEvent;
pub use health::{HealthConfig, HealthState};
pub use inventory;
pub use key::KeyPolicy;
pub use registry::BackendFactory;
pub use report::{BackendReport, HealthReport, OverallStatus};
pub use router::{
    BackendOptions, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_FAIL_SAFE_MEMORY,
    DEFAULT_FAIL_SAFE_THROTTLE, DEFAULT_FAILBACK_DELAY, DEFAULT_LOAD_TIMEOUT,
    DEFAULT_MAX_REPLAY_BYTES, DEFAULT_MAX_REPLAY_RECORDS, DEFAULT_MEMORY_TTL_CAP, LoadOptions,
    LoadSource, Loaded, LockFailover, LockGuard, LockLost, LockOptions, MEMORY_FALLBACK_PRIORITY,
    ResilientStorage, StaleReason, StorageBuilder, WritePolicy,
};
pub use strategy::{SelectionStrategy, Strategy};
pub use url::{BackendUrl, Host, UrlOptions};
