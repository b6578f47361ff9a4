#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod error;
mod sql;

use std::sync::Arc;

pub use backend::PostgresBackend;
pub use config::PostgresConfig;
use resilient_core::{Backend, BackendFactory, Result, inventory};

/// The factory registered for `postgres://` and `postgresql://`.
pub static FACTORY: BackendFactory = BackendFactory {
    schemes: &["postgres", "postgresql"],
    crate_name: env!("CARGO_PKG_NAME"),
    build: |url| {
        Box::pin(async move {
            let config = PostgresConfig::from_url(&url)?;
            Ok(PostgresBackend::new(config)? as Arc<dyn Backend>)
        })
    },
};

inventory::submit! {
    BackendFactory { schemes: FACTORY.schemes, crate_name: FACTORY.crate_name, build: FACTORY.build }
}

/// Registers the PostgreSQL factory by hand, for builds where static constructors do not run.
/// A no-op when it is already registered.
pub fn register() -> Result<()> {
    resilient_core::registry::register(&FACTORY)
}
