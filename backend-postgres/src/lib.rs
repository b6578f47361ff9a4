#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod error;
mod sql;

use std::sync::Arc;

pub use backend::PostgresBackend;
pub use config::PostgresConfig;
use resilient_core::{BackendUrl, Result};

async fn build(url: BackendUrl) -> Result<Arc<PostgresBackend>> {
    PostgresBackend::new(PostgresConfig::from_url(&url)?)
}

// `FACTORY` for `postgres://` and `postgresql://`, and `register()`.
resilient_core::register_backend!(schemes: ["postgres", "postgresql"], build: build);
