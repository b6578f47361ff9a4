//! Redis settings, read from a URL. Passwords never show in `Debug`.

use std::fmt;
use std::time::Duration;

use resilient_core::url::{Secrets, percent_encode, redact};
use resilient_core::{BackendUrl, Error, Result};

/// Settings of a [`RedisBackend`](crate::RedisBackend).
///
/// URL forms (options go in the query string):
///
/// ```text
/// redis://[user:password@]host:port[/db][?options]
/// redis+cluster://[user:password@]host1:port1,host2:port2[?options]
/// redis+sentinel://[user:password@]sentinel1:port1,sentinel2:port2/master-name[/db][?options]
/// rediss://...           TLS, verified against the system's roots or `ca_cert`
/// rediss+cluster://...   TLS to a cluster
/// rediss+sentinel://...  TLS to the sentinels and the servers they name
/// ```
///
/// Under Sentinel, the hosts are the sentinels (asked without credentials) and the path names
/// the master they watch; the credentials and the database are the master's. The backend asks
/// the sentinels for the master when it connects, and again at every health check: when they
/// name another server (a failover), it moves its connections there.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `name` | `redis` | name in reports |
/// | `prefix` | none | prepended to every key and lock name (no `{`, `}` or NUL) |
/// | `response_timeout` | none | a command without a reply by then fails in the redis crate as well |
/// | `connect_timeout` | `500ms` | a connection attempt without a handshake by then fails |
/// | `reconnect_retries` | `1` | extra connection attempts per reconnect |
/// | `reconnect_max_delay` | `500ms` | the longest wait between those attempts |
/// | `ca_cert` | system roots | PEM file of the CA that signed the server's certificate (`rediss` only) |
/// | `tombstone_ttl` | `1h` | how long a delete's tombstone (its write version) stays |
/// | `protocol` | `resp2` | `resp2` or `resp3`, passed to the redis crate |
///
/// Any other option is an error naming it. Durations are written like `250ms` or `2s` and are
/// bounded: timeouts and delays from 1 ms to 1 h, `reconnect_retries` up to 100,
/// `tombstone_ttl` from 1 ms to 365 days. The path is the database number (`/2`; none on a
/// cluster); the fragment `#insecure` (TLS without certificate checks) is the only one allowed.
///
/// The defaults make a dead server fail each call within about 150 ms and bring the connection
/// back within about half a second of the server. A frozen server's calls are cut by the
/// router's attempt timeout (500 ms by default), which bounds every call the storage makes; the
/// redis crate's own response timeout, a second timer on every command, is off unless
/// `response_timeout` is set (set it when you call the backend outside a storage).
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Name in reports, events and errors.
    pub name: String,
    /// One URL per node (one for a standalone server), in the redis crate's form.
    pub nodes: Vec<String>,
    /// Talk the Redis Cluster protocol.
    pub cluster: bool,
    /// Under Sentinel: the name of the master the sentinels watch (`nodes` are then the
    /// sentinels).
    pub sentinel_master: Option<String>,
    /// Under Sentinel: the master's credentials and database, as a URL of the redis crate's
    /// form with a placeholder host (never printed).
    pub(crate) master_url: String,
    /// TLS was asked for.
    pub tls: bool,
    /// Prefix of every key and lock name.
    pub prefix: String,
    /// See the option table: `None` leaves the bound to the router's attempt timeout.
    pub response_timeout: Option<Duration>,
    /// See the option table.
    pub connect_timeout: Duration,
    /// See the option table.
    pub reconnect_retries: usize,
    /// See the option table.
    pub reconnect_max_delay: Duration,
    /// See the option table.
    pub ca_cert: Option<std::path::PathBuf>,
    /// How long a delete's tombstone (the 20-byte header with its write version) stays: a
    /// replay of an older write (from a process that was cut off from Redis) arriving within
    /// it is refused. An expired value keeps no version. See the option table.
    pub tombstone_ttl: Duration,
    pub(crate) secrets: Secrets,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("name", &self.name)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("sentinel_master", &self.sentinel_master)
            .field("tls", &self.tls)
            .field("prefix", &self.prefix)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("ca_cert", &self.ca_cert)
            .field("tombstone_ttl", &self.tombstone_ttl)
            .finish()
    }
}

impl RedisConfig {
    /// Reads a `redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`,
    /// `redis+sentinel://` or `rediss+sentinel://` URL. Unknown options and values out of range
    /// are errors naming the option.
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        let (cluster, tls) = match url.scheme() {
            "redis" | "redis+sentinel" => (false, false),
            "rediss" | "rediss+sentinel" => (false, true),
            "redis+cluster" => (true, false),
            "rediss+cluster" => (true, true),
            other => {
                return Err(Error::config(
                    "redis.url",
                    format!("scheme {other:?} is not a Redis scheme"),
                ));
            }
        };
        let (mut config, protocol) = Self::read_options(url, cluster, tls)?;
        if let Some(password) = url.password() {
            config.secrets.add(password);
            config.secrets.add(&percent_encode(password));
        }
        if url.scheme().ends_with("+sentinel") {
            Self::sentinel(&mut config, url, protocol.as_deref())?;
        } else {
            config.nodes = Self::nodes(url, cluster, tls, protocol.as_deref())?;
        }
        Ok(config)
    }

    /// The sentinels as nodes, the master's name from the path, and the master's credentials
    /// and database.
    fn sentinel(config: &mut Self, url: &BackendUrl, protocol: Option<&str>) -> Result<()> {
        if url.hosts().is_empty() {
            return Err(Error::config("redis.url", "no sentinel given"));
        }
        if config.ca_cert.is_some() {
            return Err(Error::config(
                "redis.ca_cert",
                "not supported under Sentinel: the servers' certificates are checked against \
                 the system's roots",
            ));
        }
        let path = url.path().trim_start_matches('/');
        let (master, db) = match path.split_once('/') {
            Some((master, db)) => (master, db),
            None => (path, ""),
        };
        if master.is_empty() {
            return Err(Error::config(
                "redis.url",
                "a sentinel URL names the master in its path, such as /mymaster",
            ));
        }
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(Error::config(
                "redis.url",
                "after the master's name, the path is the database number, such as /mymaster/0",
            ));
        }
        if url
            .fragment()
            .is_some_and(|f| f != "insecure" || !config.tls)
        {
            return Err(Error::config(
                "redis.url",
                "the only fragment is #insecure, on a rediss+sentinel:// URL",
            ));
        }
        let scheme = if config.tls { "rediss" } else { "redis" };
        let fragment = url.fragment().map(|f| format!("#{f}")).unwrap_or_default();
        config.nodes = url
            .hosts()
            .iter()
            .map(|host| format!("{scheme}://{}{fragment}", host.to_url_form()))
            .collect();
        let query = protocol
            .map(|p| format!("?protocol={p}"))
            .unwrap_or_default();
        let db = if db.is_empty() { "0" } else { db };
        config.master_url = format!(
            "{scheme}://{}localhost/{db}{query}{fragment}",
            url.userinfo_for_client()
        );
        config.sentinel_master = Some(master.to_owned());
        Ok(())
    }

    /// The options of the table, and the one the redis crate reads (`protocol`), checked here
    /// and forwarded by [`nodes`](Self::nodes).
    fn read_options(url: &BackendUrl, cluster: bool, tls: bool) -> Result<(Self, Option<String>)> {
        let hour = Duration::from_secs(3600);
        let ms = Duration::from_millis(1);
        let mut options = url.options("redis");
        let prefix = options.string("prefix").unwrap_or_default();
        if prefix.contains(['{', '}', '\0']) {
            return Err(Error::config(
                "redis.prefix",
                "must not contain '{', '}' or NUL",
            ));
        }
        let ca_cert = options.string("ca_cert").filter(|v| !v.is_empty());
        if ca_cert.is_some() && !tls {
            return Err(Error::config("redis.ca_cert", "needs a rediss:// URL"));
        }
        let protocol = options.string("protocol");
        if let Some(protocol) = &protocol
            && !["resp2", "resp3"].contains(&protocol.as_str())
        {
            return Err(Error::config("redis.protocol", "must be resp2 or resp3"));
        }
        let config = Self {
            name: options
                .string("name")
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "redis".to_owned()),
            nodes: Vec::new(),
            cluster,
            sentinel_master: None,
            master_url: String::new(),
            tls,
            prefix,
            response_timeout: options.duration("response_timeout", ms..=hour)?,
            connect_timeout: options
                .duration("connect_timeout", ms..=hour)?
                .unwrap_or(Duration::from_millis(500)),
            reconnect_retries: options
                .number("reconnect_retries", 0..=100)?
                .map_or(1, |n| n as usize),
            reconnect_max_delay: options
                .duration("reconnect_max_delay", ms..=hour)?
                .unwrap_or(Duration::from_millis(500)),
            ca_cert: ca_cert.map(Into::into),
            // PX takes milliseconds up to 2^63; a year is far inside, and far beyond any outage.
            tombstone_ttl: options
                .duration("tombstone_ttl", ms..=365 * 24 * hour)?
                .unwrap_or(hour),
            secrets: Secrets::default(),
        };
        options.finish()?;
        Ok((config, protocol))
    }

    /// One URL per node in the redis crate's form: credentials re-encoded, the database path,
    /// and the options it reads (`protocol`, the `#insecure` fragment of TLS).
    fn nodes(
        url: &BackendUrl,
        cluster: bool,
        tls: bool,
        protocol: Option<&str>,
    ) -> Result<Vec<String>> {
        if url.hosts().is_empty() {
            return Err(Error::config("redis.url", "no host given"));
        }
        let path = url.path();
        if !path.is_empty() && path != "/" {
            if cluster {
                return Err(Error::config(
                    "redis.url",
                    "a cluster URL takes no database path: Redis Cluster has only database 0",
                ));
            }
            if path[1..].parse::<u16>().is_err() {
                return Err(Error::config(
                    "redis.url",
                    "the path is the database number, such as /0",
                ));
            }
        }
        if !cluster && url.hosts().len() > 1 {
            return Err(Error::config(
                "redis.url",
                "several hosts need the redis+cluster:// scheme",
            ));
        }
        let fragment = match url.fragment() {
            None => "",
            Some("insecure") if tls => "#insecure",
            Some(_) => {
                return Err(Error::config(
                    "redis.url",
                    "the only fragment is #insecure, on a rediss:// URL",
                ));
            }
        };
        let query = protocol
            .map(|p| format!("?protocol={p}"))
            .unwrap_or_default();
        let scheme = if tls { "rediss" } else { "redis" };
        let credentials = url.userinfo_for_client();
        let path = if cluster { "" } else { path };
        Ok(url
            .hosts()
            .iter()
            .map(|host| {
                format!(
                    "{scheme}://{credentials}{}{path}{query}{fragment}",
                    host.to_url_form()
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RedisConfig> {
        RedisConfig::from_url(&BackendUrl::parse(url).unwrap())
    }

    #[test]
    fn standalone_url_with_options() {
        let c = parse("redis://:pw@127.0.0.1:6380/2?prefix=app:&response_timeout=250ms&name=cache&protocol=resp3")
            .unwrap();
        assert_eq!(c.nodes, ["redis://:pw@127.0.0.1:6380/2?protocol=resp3"]);
        assert_eq!((c.name.as_str(), c.prefix.as_str()), ("cache", "app:"));
        assert_eq!(c.response_timeout, Some(Duration::from_millis(250)));
        assert!(!c.cluster && !c.tls);
    }

    #[test]
    fn cluster_url_lists_every_node_with_the_credentials() {
        let c = parse("redis+cluster://u:pw@h1:7000,h2:7001?connect_timeout=1s").unwrap();
        assert_eq!(c.nodes, ["redis://u:pw@h1:7000", "redis://u:pw@h2:7001"]);
        assert!(c.cluster);
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert!(parse("redis+cluster://h1:7000/3").is_err());
        assert!(parse("redis://h1:7000,h2:7001").is_err());
    }

    #[test]
    fn bad_options_name_their_field() {
        let err = parse("redis://h?response_timeout=soon")
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis.response_timeout"), "{err}");
        let err = parse("redis://h?prefix=a{b").unwrap_err().to_string();
        assert!(err.contains("redis.prefix"), "{err}");
        let err = parse("redis://h?connect_timeout=0s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must not be zero"), "{err}");
    }

    #[test]
    fn unknown_and_out_of_range_options_are_errors_naming_the_option() {
        for (url, field) in [
            ("redis://h?respone_timeout=50ms", "respone_timeout"),
            ("redis://h?colour=red", "colour"),
            (
                "redis://h?tombstone_ttl=18446744073709551615s",
                "redis.tombstone_ttl",
            ),
            ("redis://h?response_timeout=2h", "redis.response_timeout"),
            (
                "redis://h?reconnect_retries=1000",
                "redis.reconnect_retries",
            ),
            ("redis://h?protocol=resp9", "redis.protocol"),
            ("redis://h/db", "redis.url"),
            ("redis://h#frag", "redis.url"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(field), "{url}: {err}");
        }
    }

    #[test]
    fn a_password_with_url_delimiters_reaches_the_client_encoded() {
        let c = parse("rediss://:S3cr3t/pa?ss#w@rd@h:6380/1?protocol=resp3").unwrap();
        assert_eq!(
            c.nodes,
            ["rediss://:S3cr3t%2Fpa%3Fss%23w%40rd@h:6380/1?protocol=resp3"]
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("S3cr3t"), "{debug}");
        assert_eq!(c.secrets.scrub("refused S3cr3t/pa?ss#w@rd"), "refused ***");
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_and_the_master() {
        let c =
            parse("redis+sentinel://app:s3cret@s1:26379,s2:26380/mymaster/2?name=cache").unwrap();
        assert_eq!(c.nodes, ["redis://s1:26379", "redis://s2:26380"]);
        assert_eq!(c.sentinel_master.as_deref(), Some("mymaster"));
        assert_eq!(c.master_url, "redis://app:s3cret@localhost/2");
        assert!(!c.cluster && !c.tls);
        assert!(!format!("{c:?}").contains("s3cret"));
        let tls = parse("rediss+sentinel://s1:26379/mymaster#insecure").unwrap();
        assert_eq!(tls.nodes, ["rediss://s1:26379#insecure"]);
        assert_eq!(tls.master_url, "rediss://localhost/0#insecure");
        for (bad, field) in [
            ("redis+sentinel://s1:26379", "redis.url"),
            ("redis+sentinel://s1:26379/mymaster/x", "redis.url"),
            ("redis+sentinel://s1:26379/mymaster#insecure", "redis.url"),
            (
                "rediss+sentinel://s1:26379/m?ca_cert=/tmp/ca.pem",
                "redis.ca_cert",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn passwords_never_show_in_debug_or_scrubbed_text() {
        let c = parse("redis://user:s%40cret@h:1?prefix=p").unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s%40cret") && !debug.contains("s@cret"),
            "{debug}"
        );
        assert_eq!(
            c.secrets.scrub("auth failed for s@cret and s%40cret"),
            "auth failed for *** and ***"
        );
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
            let url = format!("redis://user:hunter2@h:1/0?{option}={}", resilient_core::url::percent_encode(&value));
            if let Ok(url) = BackendUrl::parse(&url)
                && let Err(err) = parse(url.expose())
            {
                let shown = format!("{err} {err:?}");
                proptest::prop_assert!(!shown.contains("hunter2"), "{}", shown);
            }
        }
    }

    const OPTIONS: [&str; 11] = [
        "name",
        "prefix",
        "response_timeout",
        "connect_timeout",
        "reconnect_retries",
        "reconnect_max_delay",
        "ca_cert",
        "tombstone_ttl",
        "protocol",
        "db",
        "x",
    ];
}
