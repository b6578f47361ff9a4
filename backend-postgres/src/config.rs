//! PostgreSQL settings, read from a URL. Passwords never show in `Debug`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use resilient_core::url::{Secrets, parse_duration};
use resilient_core::{BackendUrl, Error, Result};
use sqlx::postgres::PgConnectOptions;

/// Settings of a [`PostgresBackend`](crate::PostgresBackend).
///
/// ```text
/// postgres://user:password@host:port/database?options
/// postgresql://...
/// ```
///
/// Options of this crate (the rest, such as `sslmode`, `sslrootcert` or `application_name`, go to
/// sqlx as libpq would read them):
///
/// | option | default | meaning |
/// |---|---|---|
/// | `name` | `postgres` | name in reports |
/// | `schema` | `public` | schema of the tables, created if missing |
/// | `table` | `resilient_kv` | values table; locks live in `<table>_locks`, tokens in `<table>_fence` |
/// | `max_connections` | `16` | pool size (health checks have a connection of their own) |
/// | `acquire_timeout` | `500ms` | waiting for a pooled connection fails after this |
/// | `statement_timeout` | `1s` | the server cancels a statement after this (SQLSTATE 57014) |
/// | `query_timeout` | `1s` | the client gives up on a call after this, whatever the server does |
/// | `synchronous_commit` | server default (`on`) | `off` acknowledges a write before its WAL reaches disk: faster, but a server crash can lose the last few hundred milliseconds of acknowledged writes (never corrupts) |
/// | `sweep_interval` | `30s` | how often expired rows are deleted |
/// | `sweep_batch` | `1000` | rows deleted per statement by the sweeper |
/// | `tombstone_ttl` | `1h` | how long a key's write version outlives the key (deleted or expired) before the sweeper removes the row |
///
/// Schema and table names are identifiers: lowercase ASCII letters, digits and `_`, starting with
/// a letter or `_`, at most 50 bytes.
///
/// TLS as libpq spells it: `sslmode=require` encrypts, `verify-ca` also checks the certificate's
/// chain against `sslrootcert` (or the webpki roots), `verify-full` also checks the host name. A
/// mode that requires TLS fails when the server does not offer it: never a silent downgrade.
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// Name in reports, events and errors.
    pub name: String,
    /// Schema of the tables.
    pub schema: String,
    /// Values table.
    pub table: String,
    /// See the option table.
    pub max_connections: u32,
    /// See the option table.
    pub acquire_timeout: Duration,
    /// See the option table.
    pub statement_timeout: Duration,
    /// See the option table.
    pub query_timeout: Duration,
    /// See the option table.
    pub synchronous_commit: Option<String>,
    /// See the option table.
    pub sweep_interval: Duration,
    /// See the option table.
    pub sweep_batch: u32,
    /// How long a key's write version stays after the key was deleted or expired: a replay of
    /// an older write (from a process that was cut off from PostgreSQL) arriving within it is
    /// refused. See the option table.
    pub tombstone_ttl: Duration,
    pub(crate) connect: PgConnectOptions,
    pub(crate) secrets: Secrets,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("name", &self.name)
            .field("host", &self.connect.get_host())
            .field("port", &self.connect.get_port())
            .field("database", &self.connect.get_database())
            .field("user", &self.connect.get_username())
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("synchronous_commit", &self.synchronous_commit)
            .field("tombstone_ttl", &self.tombstone_ttl)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// Reads a `postgres://` or `postgresql://` URL.
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::config(
                "postgres.url",
                format!("scheme {:?} is not a PostgreSQL scheme", url.scheme()),
            ));
        }
        let raw = url.expose();
        let (main, query) = raw.split_once('?').unwrap_or((raw, ""));
        let mut config = Self {
            name: "postgres".to_owned(),
            schema: "public".to_owned(),
            table: "resilient_kv".to_owned(),
            max_connections: 16,
            acquire_timeout: Duration::from_millis(500),
            statement_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(1),
            synchronous_commit: None,
            sweep_interval: Duration::from_secs(30),
            sweep_batch: 1000,
            tombstone_ttl: Duration::from_secs(3600),
            connect: PgConnectOptions::new(),
            secrets: Secrets::default(),
        };
        let authority = main.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        let authority = &authority[..authority.find('/').unwrap_or(authority.len())];
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            config.secrets.add(password);
        }
        let mut passthrough = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (option, value) = pair.split_once('=').unwrap_or((pair, ""));
            let field = format!("postgres.{option}");
            match option {
                "name" if !value.is_empty() => config.name = value.to_owned(),
                "schema" => config.schema = identifier(&field, value)?,
                "table" => config.table = identifier(&field, value)?,
                "max_connections" => {
                    config.max_connections = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| Error::config(field, "must be a number from 1 to 1000"))?;
                }
                "sweep_batch" => {
                    config.sweep_batch = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| Error::config(field, "must be a positive number"))?;
                }
                "acquire_timeout" => config.acquire_timeout = parse_duration(&field, value)?,
                "statement_timeout" => config.statement_timeout = parse_duration(&field, value)?,
                "query_timeout" => config.query_timeout = parse_duration(&field, value)?,
                "sweep_interval" => config.sweep_interval = parse_duration(&field, value)?,
                "tombstone_ttl" => {
                    config.tombstone_ttl = parse_duration(&field, value)?;
                    if config.tombstone_ttl.is_zero() {
                        return Err(Error::config(field, "must be above zero"));
                    }
                }
                "synchronous_commit" => {
                    if !["on", "off", "local", "remote_write", "remote_apply"].contains(&value) {
                        return Err(Error::config(
                            field,
                            "must be on, off, local, remote_write or remote_apply",
                        ));
                    }
                    config.synchronous_commit = Some(value.to_owned());
                }
                "password" => {
                    config.secrets.add(value);
                    passthrough.push(pair);
                }
                _ => passthrough.push(pair),
            }
        }
        let url = if passthrough.is_empty() {
            main.to_owned()
        } else {
            format!("{main}?{}", passthrough.join("&"))
        };
        let mut connect = PgConnectOptions::from_str(&url)
            .map_err(|e| Error::config("postgres.url", config.secrets.scrub(&e.to_string())))?;
        let mut settings = vec![(
            "statement_timeout".to_owned(),
            format!("{}ms", config.statement_timeout.as_millis()),
        )];
        if let Some(mode) = &config.synchronous_commit {
            settings.push(("synchronous_commit".to_owned(), mode.clone()));
        }
        connect = connect.options(settings);
        if connect.get_application_name().is_none() {
            connect = connect.application_name("resilient-storage");
        }
        config.connect = connect;
        Ok(config)
    }
}

fn identifier(field: &str, value: &str) -> Result<String> {
    let valid = !value.is_empty()
        && value.len() <= 50
        && value
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && value
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(Error::config(
            field,
            "must be lowercase ASCII letters, digits and _, starting with a letter or _, at most 50 bytes",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<PostgresConfig> {
        PostgresConfig::from_url(&BackendUrl::parse(url).unwrap())
    }

    #[test]
    fn options_are_read_and_the_rest_passed_to_sqlx() {
        let c = parse(
            "postgres://app:pw@db:5433/app?schema=cache&table=kv2&statement_timeout=250ms&application_name=x&synchronous_commit=off",
        )
        .unwrap();
        assert_eq!((c.schema.as_str(), c.table.as_str()), ("cache", "kv2"));
        assert_eq!(c.statement_timeout, Duration::from_millis(250));
        assert_eq!(c.connect.get_port(), 5433);
        assert_eq!(c.connect.get_application_name(), Some("x"));
        assert_eq!(c.synchronous_commit.as_deref(), Some("off"));
    }

    #[test]
    fn identifiers_are_validated_and_name_their_field() {
        for bad in ["Kv", "kv;drop", "1kv", "", "a-b", &"a".repeat(51)] {
            let err = parse(&format!("postgres://h/db?table={bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("postgres.table"), "{bad}: {err}");
        }
        let err = parse("postgres://h/db?schema=x\"y")
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres.schema"), "{err}");
    }

    #[test]
    fn passwords_never_show() {
        let c = parse("postgres://app:hunter2@db/app?password=other2").unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("other2"),
            "{debug}"
        );
        assert_eq!(
            c.secrets.scrub("password hunter2 and other2"),
            "password *** and ***"
        );
    }

    #[test]
    fn bad_durations_and_modes_are_refused() {
        assert!(parse("postgres://h/db?query_timeout=0s").is_err());
        assert!(parse("postgres://h/db?acquire_timeout=forever").is_err());
        assert!(parse("postgres://h/db?synchronous_commit=maybe").is_err());
        assert!(parse("postgres://h/db?max_connections=0").is_err());
    }
}
