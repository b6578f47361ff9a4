#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod envelope;
mod error;
mod scripts;
mod slots;

use std::sync::Arc;

pub use backend::RedisBackend;
pub use config::RedisConfig;
pub use envelope::stored_value;
use resilient_core::{BackendUrl, Result};

async fn build(url: BackendUrl) -> Result<Arc<RedisBackend>> {
    Ok(Arc::new(RedisBackend::new(RedisConfig::from_url(&url)?)?))
}

// `FACTORY` for `redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`,
// `redis+sentinel://` and `rediss+sentinel://`, and `register()`.
resilient_core::register_backend!(
    schemes: [
        "redis",
        "redis+cluster",
        "redis+sentinel",
        "rediss",
        "rediss+cluster",
        "rediss+sentinel"
    ],
    build: build,
);
