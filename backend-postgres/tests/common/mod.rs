//! Building a PostgreSQL backend from a harness server's URL.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

// rustc links only the crates a test names: this links the memory backend, the router's default
// fallback, into every test that uses this module.
use resilient_backend_memory as _;
use resilient_backend_postgres::{PostgresBackend, PostgresConfig};
use resilient_core::BackendUrl;

pub fn backend(url: &str) -> Arc<PostgresBackend> {
    PostgresBackend::new(PostgresConfig::from_url(&BackendUrl::parse(url).unwrap()).unwrap())
        .unwrap()
}
