//! Backends register a factory per URL scheme, so `backend_url("redis://...")` finds the Redis
//! crate without the core knowing it.
//!
//! Each backend crate registers a [`BackendFactory`] with one line,
//! [`register_backend!`](crate::register_backend) (an `inventory::submit!` underneath). rustc links a
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

/// Registers a backend crate's factory in one line: declares `pub static FACTORY` (a
/// [`BackendFactory`] for the given schemes, named after the calling crate), submits it to
/// `inventory` so `backend_url` finds it as soon as the crate is linked, and declares
/// `pub fn register()` for builds where static constructors do not run. `build` names an async
/// function (a path, not a closure) from a [`BackendUrl`] to `Result<Arc<YourBackend>>`; it
/// must not wait for the server.
///
/// ```
/// # use std::sync::Arc;
/// # use resilient_core::{BackendUrl, Result};
/// # #[derive(Debug)] struct Mine;
/// # #[resilient_core::async_trait]
/// # impl resilient_core::Backend for Mine {
/// #     fn name(&self) -> &str { "mine" }
/// #     fn scheme(&self) -> &str { "mine" }
/// #     fn capabilities(&self) -> resilient_core::Capabilities { resilient_core::Capabilities::new() }
/// #     async fn health_check(&self) -> Result<resilient_core::HealthProbe> { Ok(resilient_core::HealthProbe::Healthy) }
/// #     async fn get(&self, _: &str) -> Result<Option<resilient_core::Bytes>> { Ok(None) }
/// #     async fn write(&self, _: &str, _: resilient_core::KeyWrite, _: resilient_core::WriteOptions)
/// #         -> Result<resilient_core::WriteOutcome> { Ok(resilient_core::WriteOutcome::applied(false)) }
/// # }
/// async fn build(url: BackendUrl) -> Result<Arc<Mine>> {
///     let _ = url;
///     Ok(Arc::new(Mine))
/// }
///
/// resilient_core::register_backend!(schemes: ["mine"], build: build);
///
/// assert_eq!(FACTORY.schemes, ["mine"]);
/// register().unwrap();
/// assert!(resilient_core::registry::schemes().contains(&"mine"));
/// ```
#[macro_export]
macro_rules! register_backend {
    (schemes: [$($scheme:literal),+ $(,)?], build: $build:path $(,)?) => {
        /// The factory this crate registers for its URL schemes.
        pub static FACTORY: $crate::BackendFactory = $crate::BackendFactory {
            schemes: &[$($scheme),+],
            crate_name: ::core::env!("CARGO_PKG_NAME"),
            build: |url| {
                ::std::boxed::Box::pin(async move {
                    let backend = $build(url).await?;
                    ::core::result::Result::Ok(backend as ::std::sync::Arc<dyn $crate::Backend>)
                })
            },
        };

        $crate::inventory::submit! {
            $crate::BackendFactory {
                schemes: FACTORY.schemes,
                crate_name: FACTORY.crate_name,
                build: FACTORY.build,
            }
        }

        /// Registers [`FACTORY`] by hand, for builds where static constructors do not run. A
        /// no-op when it is already registered.
        pub fn register() -> $crate::Result<()> {
            $crate::registry::register(&FACTORY)
        }
    };
}
