//! Turning sqlx errors into classified, credential-free [`Error`]s.

use resilient_core::{Error, Operation};

use crate::config::PostgresConfig;

/// SQLSTATEs that say the request is wrong, not the server: returned to the caller, not
/// counted, not failed over. Class 22 is a data exception (bad encoding, value out of range),
/// 54000 a program limit (an index row too large).
fn rejected(code: &str) -> bool {
    code.starts_with("22") || code == "54000"
}

/// Everything else is a transient backend failure: I/O, pool timeouts, TLS, protocol errors,
/// and SQLSTATEs such as 57P01 (admin shutdown), 57P03 (cannot connect now), class 08
/// (connection exception), 40001 (serialization failure), 40P01 (deadlock), 57014 (statement
/// timeout), class 53 (insufficient resources) and 25006 (read-only standby).
pub(crate) fn classify(config: &PostgresConfig, operation: Operation, err: sqlx::Error) -> Error {
    let message = config.secrets.scrub(&err.to_string());
    if let sqlx::Error::Database(db) = &err
        && let Some(code) = db.code()
        && rejected(&code)
    {
        return Error::Rejected {
            backend: config.name.clone(),
            operation,
            message,
        };
    }
    if let sqlx::Error::Configuration(_) = &err {
        return Error::config("postgres.url", message);
    }
    let debug = format!("{err:?} {err}");
    if config.secrets.appear_in(&debug) {
        Error::backend(&config.name, operation, message)
    } else {
        Error::backend_with_source(&config.name, operation, message, err)
    }
}

/// True for `undefined_table` and `undefined_object` (someone dropped our tables): the schema is
/// created again on the next call.
pub(crate) fn schema_missing(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("42P01" | "3F000" | "42704")))
}
