//! Backends register a factory per URL scheme, so `backend_url("redis://...")` finds the Redis
//! crate without the core knowing it.
//!
//! Each backend crate declares `inventory::submit!` of a [`BackendFactory`]. rustc links a
//! dependency only when the source names it, so a crate that is merely listed in Cargo.toml
//! registers nothing: the facade names every enabled backend, and a third-party backend is
//! linked with one line, `use their_backend as _;`. For builds where static constructors do not
//! run, [`register`] adds a factory by hand.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::url::BackendUrl;

/// The future a factory returns.
pub type BuildFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn Backend>>> + Send>>;

/// How to build a backend from a URL.
///
/// `build` must not fail because the server is unreachable: it should return a backend that
/// connects in the background, so a storage starts (on its fallbacks) while a server is down.
#[derive(Debug)]
pub struct BackendFactory {
    /// URL schemes served, such as `["postgres", "postgresql"]`.
    pub schemes: &'static [&'static str],
    /// The crate that provides it, for error messages.
    pub crate_name: &'static str,
    /// Builds a backend from a URL of one of `schemes`.
    pub build: fn(BackendUrl) -> BuildFuture,
}

inventory::collect!(BackendFactory);

static MANUAL: RwLock<Vec<&'static BackendFactory>> = RwLock::new(Vec::new());

/// Registers a factory by hand. Registering the same factory twice (or one that `inventory`
/// already registered) is a no-op; a different factory for a taken scheme is refused.
pub fn register(factory: &'static BackendFactory) -> Result<()> {
    let table = table()?;
    if all().any(|f| same(f, factory)) {
        return Ok(());
    }
    for scheme in factory.schemes {
        if let Some(existing) = table.get(scheme) {
            return Err(Error::DuplicateScheme {
                scheme: (*scheme).to_owned(),
                first: existing.crate_name.to_owned(),
                second: factory.crate_name.to_owned(),
            });
        }
    }
    MANUAL
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(factory);
    Ok(())
}

/// The registered schemes, sorted.
pub fn schemes() -> Vec<&'static str> {
    let mut schemes: Vec<_> = all().flat_map(|f| f.schemes.iter().copied()).collect();
    schemes.sort_unstable();
    schemes.dedup();
    schemes
}

/// The factory for `scheme`.
pub fn lookup(scheme: &str) -> Result<&'static BackendFactory> {
    table()?
        .get(scheme)
        .copied()
        .ok_or_else(|| Error::UnknownScheme {
            scheme: scheme.to_owned(),
            available: {
                let s = schemes();
                if s.is_empty() {
                    "none (is a backend crate linked? see the registry docs)".to_owned()
                } else {
                    s.join(", ")
                }
            },
        })
}

fn all() -> impl Iterator<Item = &'static BackendFactory> {
    let manual = MANUAL.read().unwrap_or_else(|p| p.into_inner()).clone();
    inventory::iter::<BackendFactory>.into_iter().chain(manual)
}

// One crate's factory, whether it arrived through `inventory` or `register` (two statics).
fn same(a: &BackendFactory, b: &BackendFactory) -> bool {
    a.crate_name == b.crate_name && a.schemes == b.schemes
}

fn table() -> Result<BTreeMap<&'static str, &'static BackendFactory>> {
    let mut table: BTreeMap<&'static str, &'static BackendFactory> = BTreeMap::new();
    for factory in all() {
        for scheme in factory.schemes {
            if let Some(existing) = table.insert(scheme, factory)
                && !same(existing, factory)
            {
                return Err(Error::DuplicateScheme {
                    scheme: (*scheme).to_owned(),
                    first: existing.crate_name.to_owned(),
                    second: factory.crate_name.to_owned(),
                });
            }
        }
    }
    Ok(table)
}
