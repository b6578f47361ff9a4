//! Shared set-up for the router tests: fault-wrapped memory stores and a storage over them,
//! with settings that make thresholds easy to reason about on a paused clock.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use resilient_backend_memory::{MemoryBackend, MemoryConfig};
use resilient_core::testing::FaultBackend;
use resilient_core::{
    Backend, BreakerConfig, HealthConfig, ResilientStorage, StorageBuilder, StorageEvent,
};
use tokio::sync::broadcast;

pub const ATTEMPT: Duration = Duration::from_millis(100);
pub const DEADLINE: Duration = Duration::from_millis(250);

/// A memory store wrapped in a fault backend, named and claiming to be shared (like Redis).
pub fn fault(name: &str) -> Arc<FaultBackend> {
    let memory = Arc::new(MemoryBackend::new(MemoryConfig::default().name(name)));
    Arc::new(FaultBackend::wrap(memory).shared(true))
}

/// A breaker that trips after 3 failures in a row, opens for exactly 1 s, no jitter.
pub fn breaker() -> BreakerConfig {
    BreakerConfig::default()
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(1), Duration::from_secs(8))
        .jitter(0.0)
}

/// A builder over the given backends (priority = position + 1) without memory fallback or
/// health checks, 100 ms per attempt, 250 ms deadline.
pub fn builder(backends: &[&Arc<FaultBackend>]) -> StorageBuilder {
    let mut builder = ResilientStorage::builder()
        .memory_fallback(false)
        .attempt_timeout(ATTEMPT)
        .deadline(DEADLINE)
        .breaker(breaker())
        .health(HealthConfig::default().enabled(false))
        .failback_delay(Duration::from_secs(2));
    for (i, backend) in backends.iter().enumerate() {
        builder = builder.backend((*backend).clone() as Arc<dyn Backend>, i as u32 + 1);
    }
    builder
}

/// A read straight from a backend, past the storage.
pub async fn direct(backend: &dyn Backend, key: &str) -> Option<bytes::Bytes> {
    backend.get(key).await.unwrap()
}

/// Every event received so far.
pub fn drain(events: &mut broadcast::Receiver<StorageEvent>) -> Vec<StorageEvent> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        out.push(event);
    }
    out
}
