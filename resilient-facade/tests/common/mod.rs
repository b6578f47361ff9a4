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
