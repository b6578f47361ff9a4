//! One error type for every operation, classified so the router knows what to count and what to retry.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// A boxed error source from a backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operation an error or event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    /// Read one key.
    Get,
    /// Write one key.
    Set,
    /// Remove one key.
    Delete,
    /// Take a lock.
    AcquireLock,
    /// Prolong a lock held by the caller.
    ExtendLock,
    /// Give a lock back.
    ReleaseLock,
    /// A health check.
    HealthCheck,
    /// Read several keys at once.
    GetMany,
    /// Write or delete several keys at once.
    WriteMany,
    /// An atomic read-modify-write of one key: increment, set-if-absent, compare-and-set.
    Atomic,
    /// Claiming or settling durable replay records ([`Backend::claim_journal`](crate::Backend::claim_journal)).
    Journal,
}

impl Operation {
    /// The lowercase name used in messages, logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Set => "set",
            Operation::Delete => "delete",
            Operation::AcquireLock => "acquire_lock",
            Operation::ExtendLock => "extend_lock",
            Operation::ReleaseLock => "release_lock",
            Operation::HealthCheck => "health_check",
            Operation::GetMany => "get_many",
            Operation::WriteMany => "write_many",
            Operation::Atomic => "atomic",
            Operation::Journal => "journal",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key, lock name or holder id was refused. Never carries the key itself: keys may be
/// sensitive and errors end up in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyProblem {
    /// The key is the empty string.
    Empty,
    /// The key contains a NUL byte, which PostgreSQL `text` cannot store.
    ContainsNul,
    /// The key (with its namespace prefix) is longer than the configured maximum.
    TooLong {
        /// Length in bytes, prefix included.
        len: usize,
        /// The configured maximum in bytes.
        max: usize,
    },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Empty => f.write_str("empty"),
            KeyProblem::ContainsNul => f.write_str("contains a NUL byte"),
            KeyProblem::TooLong { len, max } => {
                write!(f, "{len} bytes long, the maximum is {max} bytes")
            }
        }
    }
}

/// How the router treats an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A backend failed or timed out: counts against its breaker and the call fails over.
    Transient,
    /// The caller asked for something invalid: returned at once, never counted, never failed over.
    Caller,
    /// Every candidate backend failed, or none was available, or the storage is shut down.
    Exhausted,
    /// A cache-aside loader failed or timed out (the caller's code, not a backend).
    Loader,
}

/// One failed attempt on one backend, as listed by [`Error::AllFailed`].
#[derive(Debug)]
pub struct Attempt {
    /// Name of the backend tried.
    pub backend: String,
    /// What went wrong there.
    pub error: Error,
}

/// The attempts of one operation, displayed as `backend: error; backend: error`.
#[derive(Debug, Default)]
pub struct Attempts(pub Vec<Attempt>);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no backend was tried");
        }
        for (i, attempt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "[{}] {}", attempt.backend, attempt.error)?;
        }
        Ok(())
    }
}

/// Every error of resilient-storage.
///
/// Messages never contain keys, values or credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key or lock name failed validation.
    #[error("invalid key: {0}")]
    InvalidKey(KeyProblem),
    /// A lock holder id failed validation.
    #[error("invalid lock holder: {0}")]
    InvalidHolder(KeyProblem),
    /// A value is larger than the configured maximum.
    #[error("value of {size} bytes exceeds the maximum of {max} bytes")]
    ValueTooLarge {
        /// Size of the value in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A TTL is zero, below one millisecond or beyond the supported maximum.
    #[error("invalid ttl {ttl:?}: {reason}")]
    InvalidTtl {
        /// The TTL given.
        ttl: Duration,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A configuration value is invalid; `field` names it.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The field, as spelled in [`StorageConfig`](crate::StorageConfig) or the builder.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No backend is registered for a URL scheme.
    #[error("no backend registered for scheme {scheme:?}; available schemes: {available}")]
    UnknownScheme {
        /// The scheme asked for.
        scheme: String,
        /// The registered schemes, comma separated.
        available: String,
    },
    /// Two linked crates register the same URL scheme.
    #[error("scheme {scheme:?} is registered by both {first} and {second}")]
    DuplicateScheme {
        /// The scheme.
        scheme: String,
        /// The crate that registered it first.
        first: String,
        /// The other crate.
        second: String,
    },
    /// A value could not be encoded or decoded with serde.
    #[error("value could not be {action} as JSON")]
    Serde {
        /// `encoded` or `decoded`.
        action: &'static str,
        /// What was wrong and where, without the value's contents.
        #[source]
        source: JsonProblem,
    },
    /// A backend failed: I/O, connection lost, server-side transient state, protocol error.
    #[error("{backend}: {operation} failed: {message}")]
    Backend {
        /// Backend name.
        backend: String,
        /// The operation that failed.
        operation: Operation,
        /// What happened, without credentials.
        message: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// A backend did not answer within the attempt timeout (or the rest of the deadline).
    #[error("{backend}: {operation} timed out after {after:?}")]
    Timeout {
        /// Backend name.
        backend: String,
        /// The operation.
        operation: Operation,
        /// How long the attempt was allowed.
        after: Duration,
    },
    /// A backend refused the request as invalid (a key holding another type of value, for
    /// example). The backend is working: not counted, not failed over.
    #[error("{backend}: {operation} rejected: {message}")]
    Rejected {
        /// Backend name.
        backend: String,
        /// The operation.
        operation: Operation,
        /// The backend's reason, without credentials.
        message: String,
    },
    /// A backend's circuit breaker refused the call.
    #[error("{backend}: circuit open")]
    CircuitOpen {
        /// Backend name.
        backend: String,
    },
    /// Every candidate backend failed.
    #[error("{operation}: every backend failed: {attempts}")]
    AllFailed {
        /// The operation.
        operation: Operation,
        /// Each attempt, in order.
        attempts: Attempts,
    },
    /// The overall deadline passed before any backend answered.
    #[error("{operation}: deadline of {deadline:?} exceeded: {attempts}")]
    DeadlineExceeded {
        /// The operation.
        operation: Operation,
        /// The configured deadline.
        deadline: Duration,
        /// The attempts made before the deadline.
        attempts: Attempts,
    },
    /// No backend was available: all circuits open or all backends unhealthy.
    #[error("{operation}: no backend available: {reasons}")]
    NoBackendAvailable {
        /// The operation.
        operation: Operation,
        /// Why each backend was passed over.
        reasons: String,
    },
    /// A lock operation found no backend it may use: locks fail closed rather than fall back to
    /// a process-local store unless local locks are enabled.
    #[error(
        "{operation}: no backend shared across processes is available for locks, and local locks are not enabled"
    )]
    NoLockBackend {
        /// The operation.
        operation: Operation,
    },
    /// The backend does not implement this operation (its [`Capabilities`](crate::Capabilities)
    /// say so, and the router does not send it there): the default of every optional
    /// [`Backend`](crate::Backend) method.
    #[error("[{backend}] does not support {operation}")]
    Unsupported {
        /// The backend.
        backend: String,
        /// The operation.
        operation: Operation,
    },
    /// A [`get_or_load`](crate::ResilientStorage::get_or_load) loader failed (or panicked) and
    /// there was no value to serve instead.
    #[error("the loader failed: {source}")]
    Loader {
        /// The loader's error.
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A [`get_or_load`](crate::ResilientStorage::get_or_load) loader did not finish within its
    /// hard timeout and there was no value to serve instead.
    #[error("the loader did not finish within {after:?}")]
    LoadTimedOut {
        /// The hard timeout.
        after: Duration,
    },
    /// The storage was shut down.
    #[error("storage is shut down")]
    Shutdown,
}

/// Why a value was not valid JSON for the type asked for, and where: serde's category, line
/// and column, never the value's contents (serde_json's own message quotes them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JsonProblem {
    /// `syntax` (not JSON), `data` (JSON of another shape or type), `eof` (cut short) or `io`.
    pub category: &'static str,
    /// Line of the problem, from 1.
    pub line: usize,
    /// Column of the problem, from 1.
    pub column: usize,
}

impl From<serde_json::Error> for JsonProblem {
    fn from(error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        Self {
            category: match error.classify() {
                Category::Io => "io",
                Category::Syntax => "syntax",
                Category::Data => "data",
                Category::Eof => "eof",
            },
            line: error.line(),
            column: error.column(),
        }
    }
}

impl fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} error at line {}, column {}",
            self.category, self.line, self.column
        )
    }
}

impl std::error::Error for JsonProblem {}

impl Error {
    /// A transient backend failure, for backend implementations.
    pub fn backend(
        backend: impl Into<String>,
        operation: Operation,
        message: impl Into<String>,
    ) -> Self {
        Error::Backend {
            backend: backend.into(),
            operation,
            message: message.into(),
            source: None,
        }
    }

    /// A transient backend failure with its source error.
    pub fn backend_with_source(
        backend: impl Into<String>,
        operation: Operation,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend: backend.into(),
            operation,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A request the server refuses as malformed (a value too large, a key of another type):
    /// the caller's error, never counted against the breaker, never failed over.
    pub fn rejected(
        backend: impl Into<String>,
        operation: Operation,
        message: impl Into<String>,
    ) -> Self {
        Error::Rejected {
            backend: backend.into(),
            operation,
            message: message.into(),
        }
    }

    /// The backend does not implement `operation`.
    pub fn unsupported(backend: impl Into<String>, operation: Operation) -> Self {
        Error::Unsupported {
            backend: backend.into(),
            operation,
        }
    }

    /// A configuration error naming its field.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// How the router treats this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Backend { .. } | Error::Timeout { .. } | Error::CircuitOpen { .. } => {
                ErrorClass::Transient
            }
            Error::AllFailed { .. }
            | Error::DeadlineExceeded { .. }
            | Error::NoBackendAvailable { .. }
            | Error::NoLockBackend { .. }
            | Error::Shutdown => ErrorClass::Exhausted,
            Error::InvalidKey(_)
            | Error::InvalidHolder(_)
            | Error::ValueTooLarge { .. }
            | Error::InvalidTtl { .. }
            | Error::Config { .. }
            | Error::Rejected { .. }
            | Error::UnknownScheme { .. }
            | Error::DuplicateScheme { .. }
            | Error::Unsupported { .. }
            | Error::Serde { .. } => ErrorClass::Caller,
            Error::Loader { .. } | Error::LoadTimedOut { .. } => ErrorClass::Loader,
        }
    }

    /// True when the error counts against a backend's breaker and the call fails over.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// True when the caller's input or configuration is at fault.
    pub fn is_caller_error(&self) -> bool {
        self.class() == ErrorClass::Caller
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_failures_are_transient_and_input_errors_are_not() {
        assert!(Error::backend("redis", Operation::Get, "connection reset").is_transient());
        assert!(
            Error::Timeout {
                backend: "redis".into(),
                operation: Operation::Get,
                after: Duration::from_millis(5)
            }
            .is_transient()
        );
        assert!(Error::InvalidKey(KeyProblem::Empty).is_caller_error());
        assert!(!Error::InvalidKey(KeyProblem::Empty).is_transient());
        assert_eq!(Error::Shutdown.class(), ErrorClass::Exhausted);
    }

    #[test]
    fn all_failed_lists_each_attempt() {
        let err = Error::AllFailed {
            operation: Operation::Set,
            attempts: Attempts(vec![
                Attempt {
                    backend: "redis".into(),
                    error: Error::backend("redis", Operation::Set, "refused"),
                },
                Attempt {
                    backend: "postgres".into(),
                    error: Error::CircuitOpen {
                        backend: "postgres".into(),
                    },
                },
            ]),
        };
        assert_eq!(
            err.to_string(),
            "set: every backend failed: [redis] redis: set failed: refused; [postgres] postgres: circuit open"
        );
    }
}
