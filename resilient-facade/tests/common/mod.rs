//! Set-up shared by the facade's real-server tests.

#![allow(dead_code, unreachable_pub)]

use resilient_storage::prelude::*;
use resilient_test_support::{PostgresServer, RedisServer};

/// `ResilientStorage::builder()` with Redis at priority 1 and PostgreSQL at 2, nothing else:
/// the defaults a new user gets.
pub async fn defaults(redis: &RedisServer, postgres: &PostgresServer) -> ResilientStorage {
    ResilientStorage::builder()
        .backend_url(&redis.url(), 1)
        .unwrap()
        .backend_url(&postgres.url(), 2)
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// Waits until no backend has replay records or write-behind copies pending; fails the test
/// after `within`.
pub async fn wait_for_drain(storage: &ResilientStorage, within: std::time::Duration) {
    let start = std::time::Instant::now();
    while storage
        .health()
        .backends
        .values()
        .any(|b| b.pending_replay > 0)
    {
        assert!(
            start.elapsed() < within,
            "replay records still pending after {within:?}: {:?}",
            storage.health()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
