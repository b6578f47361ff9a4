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
/// `CLUSTERDOWN`, `MASTERDOWN`, `TRYAGAIN`, authentication, ...) is a transient backend failure:
/// counted by the breaker and failed over. The cluster client follows `MOVED` and `ASK` itself
/// and retries `TRYAGAIN`; one that still reaches here is transient too. `READONLY` (a demoted
/// master) also marks the connection for replacement, so the next passing health check finds
/// the master again (`RedisBackend::failed`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use resilient_core::{BackendUrl, ErrorClass};

    /// A server's error reply, as the redis crate hands it over.
    fn reply(text: &str) -> RedisError {
        redis::parse_redis_value(format!("-{text}\r\n").as_bytes())
            .expect("an error reply parses")
            .extract_error()
            .expect_err("an error reply is an error")
    }

    #[test]
    fn failover_and_cluster_replies_fail_over_and_malformed_requests_do_not() {
        let url = BackendUrl::parse("redis://h:1").unwrap();
        let config = RedisConfig::from_url(&url).unwrap();
        for transient in [
            "LOADING Redis is loading the dataset in memory",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
        ] {
            let error = classify(&config, Operation::Set, reply(transient));
            assert_eq!(error.class(), ErrorClass::Transient, "{transient}");
        }
        for rejected in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "CROSSSLOT Keys in request don't hash to the same slot",
        ] {
            let error = classify(&config, Operation::Set, reply(rejected));
            assert_eq!(error.class(), ErrorClass::Caller, "{rejected}");
        }
    }
}
