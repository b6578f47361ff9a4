//! Redis settings, read from a URL. Passwords never show in `Debug`.

use std::fmt;
use std::time::Duration;

use resilient_core::url::{Secrets, parse_duration, percent_decode, redact};
use resilient_core::{BackendUrl, Error, Result};

/// Settings of a [`RedisBackend`](crate::RedisBackend).
///
/// URL forms (options go in the query string):
///
/// ```text
/// redis://[user:password@]host:port[/db][?options]
/// redis+cluster://[user:password@]host1:port1,host2:port2[?options]
/// rediss://...           TLS, verified against the system's roots or `ca_cert`
/// rediss+cluster://...   TLS to a cluster
/// ```
///
/// | option | default | meaning |
/// |---|---|---|
/// | `name` | `redis` | name in reports |
/// | `prefix` | none | prepended to every key and lock name (no `{`, `}` or NUL) |
/// | `response_timeout` | `1s` | a command without a reply by then fails |
/// | `connect_timeout` | `500ms` | a connection attempt without a handshake by then fails |
/// | `reconnect_retries` | `1` | extra connection attempts per reconnect |
/// | `reconnect_max_delay` | `500ms` | the longest wait between those attempts |
/// | `ca_cert` | system roots | PEM file of the CA that signed the server's certificate (`rediss` only) |
/// | `tombstone_ttl` | `1h` | how long a key's write version outlives the key (deleted or expired) |
///
/// Any other option (`protocol=resp3`, ...) is passed to the redis crate. Durations are written
/// like `250ms` or `2s`.
///
/// The defaults make a dead server fail each call within about 150 ms and a frozen one at the
/// response timeout, and bring the connection back within about half a second of the server.
/// The router's attempt timeout (500 ms by default) bounds every call in any case.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Name in reports, events and errors.
    pub name: String,
    /// One URL per node (one for a standalone server), in the redis crate's form.
    pub nodes: Vec<String>,
    /// Talk the Redis Cluster protocol.
    pub cluster: bool,
    /// TLS was asked for.
    pub tls: bool,
    /// Prefix of every key and lock name.
    pub prefix: String,
    /// See the option table.
    pub response_timeout: Duration,
    /// See the option table.
    pub connect_timeout: Duration,
    /// See the option table.
    pub reconnect_retries: usize,
    /// See the option table.
    pub reconnect_max_delay: Duration,
    /// See the option table.
    pub ca_cert: Option<std::path::PathBuf>,
    /// How long a key's write version stays after the key was deleted or expired: a replay of
    /// an older write (from a process that was cut off from Redis) arriving within it is
    /// refused. See the option table.
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
    /// Reads a `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://` URL.
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        let (cluster, tls) = match url.scheme() {
            "redis" => (false, false),
            "rediss" => (false, true),
            "redis+cluster" => (true, false),
            "rediss+cluster" => (true, true),
            other => {
                return Err(Error::config(
                    "redis.url",
                    format!("scheme {other:?} is not a Redis scheme"),
                ));
            }
        };
        let raw = url.expose();
        let rest = &raw[url.scheme().len() + 3..];
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match main.find('/') {
            Some(i) => (&main[..i], &main[i..]),
            None => (main, ""),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let mut config = Self {
            name: "redis".to_owned(),
            nodes: Vec::new(),
            cluster,
            tls,
            prefix: String::new(),
            response_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            reconnect_retries: 1,
            reconnect_max_delay: Duration::from_millis(500),
            ca_cert: None,
            tombstone_ttl: Duration::from_secs(3600),
            secrets: Secrets::default(),
        };
        if let Some((_, password)) = userinfo.and_then(|u| u.split_once(':')) {
            config.secrets.add(password);
        }
        let mut passthrough = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (option, value) = pair.split_once('=').unwrap_or((pair, ""));
            let field = format!("redis.{option}");
            match option {
                "name" if !value.is_empty() => config.name = value.to_owned(),
                "prefix" => {
                    if value.contains(['{', '}', '\0']) {
                        return Err(Error::config(field, "must not contain '{', '}' or NUL"));
                    }
                    config.prefix = value.to_owned();
                }
                "response_timeout" => config.response_timeout = parse_duration(&field, value)?,
                "connect_timeout" => config.connect_timeout = parse_duration(&field, value)?,
                "tombstone_ttl" => {
                    config.tombstone_ttl = parse_duration(&field, value)?;
                    if config.tombstone_ttl.is_zero() {
                        return Err(Error::config(field, "must be above zero"));
                    }
                }
                "reconnect_max_delay" => {
                    config.reconnect_max_delay = parse_duration(&field, value)?
                }
                "ca_cert" if !value.is_empty() => {
                    if !tls {
                        return Err(Error::config(field, "needs a rediss:// URL"));
                    }
                    config.ca_cert = Some(percent_decode(value).into());
                }
                "reconnect_retries" => {
                    config.reconnect_retries = value
                        .parse()
                        .map_err(|_| Error::config(field, "must be a whole number"))?;
                }
                _ => passthrough.push(pair),
            }
        }
        if hosts.is_empty() {
            return Err(Error::config("redis.url", "no host given"));
        }
        let node_scheme = if tls { "rediss" } else { "redis" };
        let credentials = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let query = if passthrough.is_empty() {
            String::new()
        } else {
            format!("?{}", passthrough.join("&"))
        };
        if cluster {
            if !path.is_empty() && path != "/" {
                return Err(Error::config(
                    "redis.url",
                    "a cluster URL takes no database path: Redis Cluster has only database 0",
                ));
            }
            for host in hosts.split(',') {
                if host.is_empty() {
                    return Err(Error::config("redis.url", "an empty host in the node list"));
                }
                config
                    .nodes
                    .push(format!("{node_scheme}://{credentials}{host}{query}"));
            }
        } else {
            if hosts.contains(',') {
                return Err(Error::config(
                    "redis.url",
                    "several hosts need the redis+cluster:// scheme",
                ));
            }
            config
                .nodes
                .push(format!("{node_scheme}://{credentials}{hosts}{path}{query}"));
        }
        Ok(config)
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
        assert_eq!(c.response_timeout, Duration::from_millis(250));
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
}
