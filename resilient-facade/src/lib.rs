#![doc = include_str!("../README.md")]

pub use resilient_core::*;

/// The in-process memory backend (feature `memory`).
#[cfg(feature = "memory")]
pub use resilient_backend_memory as memory;

/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub use resilient_backend_redis as redis;

/// The PostgreSQL backend (feature `postgres`).
#[cfg(feature = "postgres")]
pub use resilient_backend_postgres as postgres;

#[cfg(feature = "http")]
pub mod http;

/// The types most programs need.
pub mod prelude {
    pub use resilient_core::{
        Backend, BreakerConfig, Bytes, Error, FencingToken, HealthConfig, HealthReport,
        HealthState, KeyPolicy, LoadOptions, LoadSource, Loaded, LockFailover, LockGrant,
        LockGuard, LockOptions, LockOutcome, OverallStatus, ResilientStorage, StaleReason,
        StorageConfig, StorageEvent, Strategy, WritePolicy,
    };
}
