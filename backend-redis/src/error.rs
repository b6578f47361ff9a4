//! Turning redis errors into classified, credential-free [`Error`]s.

use redis::RedisError;
use resilient_core::{Error, Operation};

use crate::config::RedisConfig;

/// Server error codes that say the request itself is wrong, not the server: returned to the
/// caller, not counted, not failed over. `WRONGTYPE`: the key holds another type; `CROSSSLOT`:
/// a request's keys span Cluster slots (a key shape the backend did not foresee); `NOSCRIPT`
/// is handled by redis-rs itself.
const REJECTED: &[&str] = &["WRONGTYPE", "CROSSSLOT"];

/// Every other error (I/O, timeouts, dropped connections, `LOADING`, `READONLY`,
/// `CLUSTERDOWN`, `MASTERDOWN`, `TRYAGAIN`, authentication, ...) is a transient backend failure.
pub(crate) fn classify(config: &RedisConfig, operation: Operation, err: RedisError) -> Error {
    let message = config.secrets.scrub(&err.to_string());
    if err.code().is_some_and(|code| REJECTED.contains(&code)) {
        return Error::Rejected {
            backend: config.name.clone(),
            operation,
            message,
        };
    }
    // The source chain is kept only when it cannot leak a credential.
    let debug = format!("{err:?} {err}");
    if config.secrets.appear_in(&debug) {
        Error::backend(&config.name, operation, message)
    } else {
        Error::backend_with_source(&config.name, operation, message, err)
    }
}

/// A reply that does not have the shape a script promises.
pub(crate) fn bad_reply(config: &RedisConfig, operation: Operation, what: &str) -> Error {
    Error::backend(&config.name, operation, format!("unexpected reply: {what}"))
}
