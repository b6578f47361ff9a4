#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod error;
mod scripts;
mod slots;

use std::sync::Arc;

pub use backend::RedisBackend;
pub use config::RedisConfig;
use resilient_core::{Backend, BackendFactory, Result, inventory};

/// The factory registered for `redis://`, `rediss://`, `redis+cluster://` and
/// `rediss+cluster://`.
pub static FACTORY: BackendFactory = BackendFactory {
    schemes: &["redis", "redis+cluster", "rediss", "rediss+cluster"],
    crate_name: env!("CARGO_PKG_NAME"),
    build: |url| {
        Box::pin(async move {
            let config = RedisConfig::from_url(&url)?;
            Ok(Arc::new(RedisBackend::new(config)?) as Arc<dyn Backend>)
        })
    },
};

inventory::submit! {
    BackendFactory { schemes: FACTORY.schemes, crate_name: FACTORY.crate_name, build: FACTORY.build }
}

/// Registers the Redis factory by hand, for builds where static constructors do not run.
/// A no-op when it is already registered.
pub fn register() -> Result<()> {
    resilient_core::registry::register(&FACTORY)
}
