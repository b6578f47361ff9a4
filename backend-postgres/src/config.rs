//! PostgreSQL settings, read from a URL. Passwords never show in `Debug`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use resilient_core::url::{Secrets, percent_encode};
use resilient_core::{BackendUrl, Error, Result, UrlOptions};
use sqlx::postgres::PgConnectOptions;

/// Settings of a [`PostgresBackend`](crate::PostgresBackend).
///
/// ```text
/// postgres://user:password@host:port/database?options
/// postgresql://...
/// ```
///
/// Options of this crate, bounded as shown; `sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
/// `application_name`, `user` and `password` go to sqlx as libpq would read them. Any other
/// option is an error naming it (`sslpassword` too: sqlx would write it to its logs).
///
/// | option | default | meaning |
/// |---|---|---|
/// | `name` | `postgres` | name in reports |
/// | `schema` | `public` | schema of the tables, created if missing |
/// | `table` | `resilient_kv` | values table; locks live in `<table>_locks`, tokens in `<table>_fence` |
/// | `max_connections` | `16` | pool size (health checks have a connection of their own), 1 to 1000 |
/// | `acquire_timeout` | `500ms` | waiting for a pooled connection fails after this, 1 ms to 1 h |
/// | `statement_timeout` | `1s` | the server cancels a statement after this (SQLSTATE 57014), 1 ms to 24 days (the server's limit) |
/// | `query_timeout` | `1s` | the client gives up on a call after this, whatever the server does, 1 ms to 1 h |
/// | `synchronous_commit` | server default (`on`) | `off` acknowledges a write before its WAL reaches disk: faster, but a server crash can lose the last few hundred milliseconds of acknowledged writes (never corrupts) |
/// | `sweep_interval` | `30s` | how often expired rows are deleted, 10 ms to 24 h |
/// | `sweep_batch` | `1000` | rows deleted per statement by the sweeper, 1 to 1,000,000 |
/// | `tombstone_ttl` | `1h` | how long a key's write version outlives the key (deleted or expired) before the sweeper removes the row, 1 ms to 365 days |
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
        let mut secrets = Secrets::default();
        // One pass over the options: sqlx's first, then ours; any left is unknown.
        let mut options = url.options("postgres");
        let passthrough = Self::client_options(&mut options, &mut secrets)?;
        let mut config = Self::read_options(&mut options)?;
        options.finish()?;
        if let Some(password) = url.password() {
            secrets.add(password);
            secrets.add(&percent_encode(password));
        }
        config.secrets = secrets;
        if url.hosts().len() > 1 {
            return Err(Error::config("postgres.url", "one host only"));
        }
        let host = url
            .hosts()
            .first()
            .map(|h| h.to_url_form())
            .unwrap_or_default();
        let client_url = format!(
            "postgres://{}{host}{}{}",
            url.userinfo_for_client(),
            url.path(),
            passthrough
        );
        let mut connect = PgConnectOptions::from_str(&client_url)
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

    /// The options of the table, bounded.
    fn read_options(options: &mut UrlOptions) -> Result<Self> {
        let hour = Duration::from_secs(3600);
        let ms = Duration::from_millis(1);
        let synchronous_commit = options.string("synchronous_commit");
        if let Some(mode) = &synchronous_commit
            && !["on", "off", "local", "remote_write", "remote_apply"].contains(&mode.as_str())
        {
            return Err(Error::config(
                "postgres.synchronous_commit",
                "must be on, off, local, remote_write or remote_apply",
            ));
        }
        let config = Self {
            name: options
                .string("name")
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "postgres".to_owned()),
            schema: options
                .string("schema")
                .map(|v| identifier("postgres.schema", &v))
                .transpose()?
                .unwrap_or_else(|| "public".to_owned()),
            table: options
                .string("table")
                .map(|v| identifier("postgres.table", &v))
                .transpose()?
                .unwrap_or_else(|| "resilient_kv".to_owned()),
            max_connections: options
                .number("max_connections", 1..=1000)?
                .map_or(16, |n| n as u32),
            acquire_timeout: options
                .duration("acquire_timeout", ms..=hour)?
                .unwrap_or(Duration::from_millis(500)),
            // The server's own limit is 2^31 - 1 ms, about 24.8 days.
            statement_timeout: options
                .duration("statement_timeout", ms..=Duration::from_secs(24 * 86_400))?
                .unwrap_or(Duration::from_secs(1)),
            query_timeout: options
                .duration("query_timeout", ms..=hour)?
                .unwrap_or(Duration::from_secs(1)),
            synchronous_commit,
            sweep_interval: options
                .duration("sweep_interval", Duration::from_millis(10)..=24 * hour)?
                .unwrap_or(Duration::from_secs(30)),
            sweep_batch: options
                .number("sweep_batch", 1..=1_000_000)?
                .map_or(1000, |n| n as u32),
            tombstone_ttl: options
                .duration("tombstone_ttl", ms..=365 * 24 * hour)?
                .unwrap_or(hour),
            connect: PgConnectOptions::new(),
            secrets: Secrets::default(),
        };
        Ok(config)
    }

    /// The query string of the options handed to sqlx: only those of [`CLIENT_OPTIONS`],
    /// re-encoded. `sslpassword` and `options` are refused by name: sqlx would log the first and
    /// this crate sets the second.
    fn client_options(options: &mut UrlOptions, secrets: &mut Secrets) -> Result<String> {
        for refused in ["sslpassword", "options"] {
            if options.string(refused).is_some() {
                return Err(Error::config(
                    format!("postgres.{refused}"),
                    "is not supported: sslpassword would reach sqlx's logs, and this crate sets \
                     the server options itself (see statement_timeout and synchronous_commit)",
                ));
            }
        }
        let mut pairs = Vec::new();
        for name in CLIENT_OPTIONS {
            if let Some(value) = options.string(name) {
                if name == "password" {
                    secrets.add(&value);
                    secrets.add(&percent_encode(&value));
                }
                pairs.push(format!("{name}={}", percent_encode(&value)));
            }
        }
        Ok(if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        })
    }
}

/// The options passed on to sqlx, as libpq spells them.
const CLIENT_OPTIONS: [&str; 7] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "user",
    "password",
];

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
    fn unknown_refused_and_out_of_range_options_are_errors_naming_the_option() {
        for (url, field) in [
            ("postgres://h/db?statment_timeout=50ms", "statment_timeout"),
            ("postgres://h/db?colour=red", "colour"),
            (
                "postgres://h/db?statement_timeout=30d",
                "postgres.statement_timeout",
            ),
            (
                "postgres://h/db?acquire_timeout=18446744073709551615s",
                "postgres.acquire_timeout",
            ),
            (
                "postgres://h/db?sslpassword=hunter2",
                "postgres.sslpassword",
            ),
            ("postgres://h/db?options=-c%20x%3Dy", "postgres.options"),
            ("postgres://h/db?sweep_batch=0", "postgres.sweep_batch"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(field), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_password_with_url_delimiters_reaches_sqlx_whole() {
        let c = parse("postgres://app:S3cr3t/pa?ss#w@rd@db:5433/app?sslmode=disable").unwrap();
        assert_eq!(c.connect.get_username(), "app");
        assert_eq!(c.connect.get_port(), 5433);
        assert_eq!(c.connect.get_database(), Some("app"));
        let debug = format!("{c:?}");
        assert!(!debug.contains("S3cr3t"), "{debug}");
        assert_eq!(c.secrets.scrub("refused S3cr3t/pa?ss#w@rd"), "refused ***");
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

    proptest::proptest! {
        /// Any value of any option, the extremes first: parsed into bounded settings or refused
        /// with an error naming the option; never a panic, never the password in the error.
        #[test]
        fn any_option_value_is_bounded_or_refused(
            option in proptest::sample::select(&OPTIONS[..]),
            value in proptest::prop_oneof![
                proptest::strategy::Just("18446744073709551615s".to_owned()),
                proptest::strategy::Just("1e19s".to_owned()),
                proptest::strategy::Just("18446744073709551615".to_owned()),
                proptest::strategy::Just("0".to_owned()),
                proptest::strategy::Just("1ns".to_owned()),
                "[0-9]{1,25}(ns|ms|s|m|h|d|y)?",
                ".{0,16}",
            ],
        ) {
            let url = format!("postgres://user:hunter2@h:1/0?{option}={}", resilient_core::url::percent_encode(&value));
            if let Ok(url) = BackendUrl::parse(&url)
                && let Err(err) = parse(url.expose())
            {
                let shown = format!("{err} {err:?}");
                proptest::prop_assert!(!shown.contains("hunter2"), "{}", shown);
            }
        }
    }

    const OPTIONS: [&str; 15] = [
        "name",
        "schema",
        "table",
        "max_connections",
        "acquire_timeout",
        "statement_timeout",
        "query_timeout",
        "synchronous_commit",
        "sweep_interval",
        "sweep_batch",
        "tombstone_ttl",
        "sslmode",
        "sslpassword",
        "options",
        "x",
    ];
}
