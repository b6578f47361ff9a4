//! [`RedisBackend`]: the [`Backend`] trait on the redis crate.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, RedisFuture, RedisResult, ServerErrorKind, TlsCertificates,
    Value,
};
use resilient_core::{
    AtomicOp, AtomicOutcome, Backend, BatchWrite, Capabilities, Error, FencingToken, HealthProbe,
    KeyWrite, LockGrant, LockOutcome, Operation, Result, Unknown, WriteMode, WriteOptions,
    WriteOutcome, WriteVersion,
};
use tokio::sync::OnceCell;

use crate::config::RedisConfig;
use crate::error::{bad_reply, classify};
use crate::{envelope, scripts, slots};

/// A Redis server or Redis Cluster as a resilient-storage backend.
///
/// Connects lazily and reconnects by itself: building one never waits for the server, and a
/// server that comes back is used again without any action. Health checks use a connection of
/// their own, so a check never queues behind data commands.
///
/// Keys are stored as `prefix + key`. A lock `name` is stored at `prefix + "\0lock:{tag}name"`
/// with its fencing counter at `prefix + "\0lock:{tag}name:fence"`: the NUL byte keeps locks
/// apart from every valid data key, and `tag`, a brace-free hash tag of the slot of `name`,
/// puts both keys in one Cluster slot whatever braces the name holds.
#[derive(Debug)]
pub struct RedisBackend {
    config: RedisConfig,
    certificates: Option<TlsCertificates>,
    // Swapped whole when replaced. Read on every call: an `ArcSwap` read takes no lock and no
    // count on a line the other threads write, as a `RwLock` or an `Arc` clone would.
    data: ArcSwap<Link>,
    health: ArcSwap<Link>,
    // Set when a data call lost its connection, failed with a timeout or was abandoned before
    // its reply (the caller's timeout): its connection may be dead or out of step, with a
    // reply owed to a request the server never got. The next passing health check replaces
    // the data link, so the breaker's first probe after an outage finds a fresh connection.
    data_suspect: AtomicBool,
    // Set while a health check runs; still set when the next starts means the last one was
    // abandoned, and its link is replaced for the same reason.
    health_pending: AtomicBool,
}

/// Marks the data link suspect unless the call it guards completes.
struct InFlight<'a>(&'a AtomicBool);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

enum Link {
    Single(ConnectionManager),
    // Boxed: a cluster client is much larger than a connection manager handle.
    Cluster(Box<ClusterLink>),
    Sentinel(Box<SentinelLink>),
}

/// The master the sentinels name, found at the first call and kept for the link's life: a
/// failover is followed by replacing the link (see `RedisBackend::follow_master`).
struct SentinelLink {
    sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
    master: String,
    node: redis::sentinel::SentinelNodeConnectionInfo,
    manager: ConnectionManagerConfig,
    /// The connection to the master, and its address.
    connected: OnceCell<(ConnectionManager, String)>,
}

impl SentinelLink {
    /// The master's address, once the link has found it.
    fn master_addr(&self) -> Option<&str> {
        self.connected.get().map(|(_, addr)| addr.as_str())
    }
}

struct ClusterLink {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Single(_) => "Link::Single",
            Link::Cluster(_) => "Link::Cluster",
            Link::Sentinel(_) => "Link::Sentinel",
        })
    }
}

/// One connection handle, standalone or cluster, cheap to clone per call.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Link {
    fn new(config: &RedisConfig, certificates: Option<&TlsCertificates>) -> RedisResult<Self> {
        if config.cluster {
            let mut builder = ClusterClient::builder(config.nodes.clone());
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates.clone());
            }
            if let Some(timeout) = config.response_timeout {
                builder = builder.response_timeout(timeout);
            }
            let client = builder
                .connection_timeout(config.connect_timeout)
                .retries(config.reconnect_retries as u32)
                .min_retry_wait(50)
                .max_retry_wait(config.reconnect_max_delay.as_millis() as u64)
                .build()?;
            Ok(Link::Cluster(Box::new(ClusterLink {
                client,
                connection: OnceCell::new(),
            })))
        } else if let Some(master) = &config.sentinel_master {
            let sentinel = redis::sentinel::Sentinel::build(config.nodes.clone())?;
            let info = redis::IntoConnectionInfo::into_connection_info(config.master_url.as_str())?;
            let mut node = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(info.redis_settings().clone());
            if config.tls {
                node = node.set_tls_mode(match config.master_url.contains("#insecure") {
                    true => redis::TlsMode::Insecure,
                    false => redis::TlsMode::Secure,
                });
            }
            Ok(Link::Sentinel(Box::new(SentinelLink {
                sentinel: tokio::sync::Mutex::new(sentinel),
                master: master.clone(),
                node,
                manager: Self::manager_config(config),
                connected: OnceCell::new(),
            })))
        } else {
            let client = match certificates {
                Some(certificates) => {
                    redis::Client::build_with_tls(config.nodes[0].as_str(), certificates.clone())?
                }
                None => redis::Client::open(config.nodes[0].as_str())?,
            };
            Ok(Link::Single(ConnectionManager::new_lazy_with_config(
                client,
                Self::manager_config(config),
            )?))
        }
    }

    fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            // None unless asked for: the router's attempt timeout bounds every call, and the
            // crate's own is a second timer per command (see ARCHITECTURE.md, "Why attempts
            // share one timer").
            .set_response_timeout(config.response_timeout)
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(config.reconnect_retries)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(config.reconnect_max_delay)
    }

    /// A handle on the connection, connecting it first where that is needed.
    async fn conn(&self) -> RedisResult<Conn> {
        if let Some(conn) = self.connected() {
            return Ok(conn);
        }
        match self {
            Link::Single(manager) => Ok(Conn::Single(manager.clone())),
            Link::Cluster(cluster) => Ok(Conn::Cluster(
                cluster
                    .connection
                    .get_or_try_init(|| cluster.client.get_async_connection())
                    .await?
                    .clone(),
            )),
            Link::Sentinel(link) => {
                let (manager, _) = link
                    .connected
                    .get_or_try_init(|| async {
                        let client = link
                            .sentinel
                            .lock()
                            .await
                            .async_master_for(&link.master, Some(&link.node))
                            .await?;
                        let addr = client.get_connection_info().addr().to_string();
                        let manager =
                            ConnectionManager::new_lazy_with_config(client, link.manager.clone())?;
                        Ok::<_, redis::RedisError>((manager, addr))
                    })
                    .await?;
                Ok(Conn::Single(manager.clone()))
            }
        }
    }

    /// A handle on the connection, if it needs no connecting first.
    fn connected(&self) -> Option<Conn> {
        match self {
            Link::Single(manager) => Some(Conn::Single(manager.clone())),
            Link::Cluster(cluster) => cluster.connection.get().cloned().map(Conn::Cluster),
            Link::Sentinel(link) => link
                .connected
                .get()
                .map(|(manager, _)| Conn::Single(manager.clone())),
        }
    }

    /// The master's address, for a Sentinel link that has found it.
    fn master_addr(&self) -> Option<&str> {
        match self {
            Link::Sentinel(link) => link.master_addr(),
            _ => None,
        }
    }
}

impl RedisBackend {
    /// A backend with the given settings. Does not connect: the first call does.
    pub fn new(config: RedisConfig) -> Result<Self> {
        let certificates = if config.tls {
            // A process may already have chosen a provider; either way one is installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
            match &config.ca_cert {
                Some(path) => Some(TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(path).map_err(|e| {
                        Error::config(
                            "redis.ca_cert",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?),
                }),
                None => None,
            }
        } else {
            None
        };
        let link = |what: &str| {
            Link::new(&config, certificates.as_ref()).map_err(|e| {
                Error::config(
                    format!("redis.url ({what})"),
                    config.secrets.scrub(&e.to_string()),
                )
            })
        };
        Ok(Self {
            data: ArcSwap::from_pointee(link("data connection")?),
            health: ArcSwap::from_pointee(link("health connection")?),
            data_suspect: AtomicBool::new(false),
            health_pending: AtomicBool::new(false),
            certificates,
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Sends `cmd` on the data link. On a link already connected (a standalone server's
    /// always is) the command is the only future awaited here: no `data_conn` future around
    /// it.
    async fn query<T: FromRedisValue>(&self, operation: Operation, cmd: &Cmd) -> Result<T> {
        let in_flight = InFlight(&self.data_suspect);
        // A statement of its own: the link's guard is not held across the await.
        let connected = self.data.load().connected();
        let result = match connected {
            Some(mut conn) => cmd.query_async::<T>(&mut conn).await,
            None => Box::pin(self.connect_and_query(cmd)).await,
        };
        std::mem::forget(in_flight);
        result.map_err(|e| self.failed(operation, e))
    }

    /// [`query`](Self::query) on a link not connected yet: connects, then sends. Boxed by
    /// its caller, so it connects in place rather than through `data_conn`'s own box.
    async fn connect_and_query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = Self::current(&self.data).conn().await?;
        cmd.query_async::<T>(&mut conn).await
    }

    fn failed(&self, operation: Operation, err: redis::RedisError) -> Error {
        // READONLY: the server was demoted to a replica (a failover): find the master again.
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_timeout()
            || err.code() == Some("READONLY")
        {
            self.data_suspect.store(true, Ordering::Relaxed);
        }
        classify(&self.config, operation, err)
    }

    fn current(link: &ArcSwap<Link>) -> Arc<Link> {
        link.load_full()
    }

    /// A handle on the data link's connection: once it is connected (every call but the
    /// first), cloned without holding the link, so the call leaves the link's count alone.
    /// A call keeps its handle, and so its connection, if the link is replaced meanwhile.
    async fn data_conn(&self) -> RedisResult<Conn> {
        if let Some(conn) = self.data.load().connected() {
            return Ok(conn);
        }
        // Boxed: connecting (a Cluster's or a Sentinel's first call) takes a large future, and
        // every call's future would otherwise carry its room, and move it.
        let link = Self::current(&self.data);
        Box::pin(async move { link.conn().await }).await
    }

    /// Swaps in a new, unconnected link; calls holding the old one finish on it.
    fn replace(&self, link: &ArcSwap<Link>) {
        match Link::new(&self.config, self.certificates.as_ref()) {
            Ok(fresh) => link.store(Arc::new(fresh)),
            // The same settings built a link before: this does not happen; keep the old one.
            Err(e) => {
                tracing::debug!(error = %self.config.secrets.scrub(&e.to_string()), "could not rebuild a link")
            }
        }
    }

    /// PING on `link`, retried once after a connection-level error: after an outage the
    /// connection manager hands the next call the failure of the last reconnect attempt, made
    /// while the server was still down, and only then reconnects; the retry waits on that
    /// fresh reconnect.
    async fn ping(link: &Link) -> RedisResult<String> {
        let ping = || async {
            let mut conn = link.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match ping().await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() => ping().await,
            other => other,
        }
    }

    async fn script<T: FromRedisValue>(
        &self,
        operation: Operation,
        script: &redis::Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T> {
        let in_flight = InFlight(&self.data_suspect);
        let cmd = evalsha(script, keys, args);
        let run = async {
            let mut conn = self.data_conn().await?;
            match cmd.query_async::<T>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script.load_async(&mut conn).await?;
                    cmd.query_async::<T>(&mut conn).await
                }
                other => other,
            }
        };
        let result = run.await;
        std::mem::forget(in_flight);
        result.map_err(|e| self.failed(operation, e))
    }

    /// `key` as stored: with the prefix, if there is one (only then copied).
    fn data_key<'k>(&self, key: &'k str) -> Cow<'k, [u8]> {
        match self.config.prefix.is_empty() {
            true => Cow::Borrowed(key.as_bytes()),
            false => Cow::Owned([self.config.prefix.as_bytes(), key.as_bytes()].concat()),
        }
    }

    fn lock_keys(&self, name: &str) -> (Vec<u8>, Vec<u8>) {
        let lock = [
            self.config.prefix.as_bytes(),
            b"\0lock:{",
            slots::tag_for(name.as_bytes()).as_bytes(),
            b"}",
            name.as_bytes(),
        ]
        .concat();
        let fence = [lock.as_slice(), b":fence"].concat();
        (lock, fence)
    }

    /// Writes the value with its version in front (`envelope.rs`): one plain `SET`.
    async fn store(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        version: WriteVersion,
    ) -> Result<()> {
        let cmd = set_command(&self.data_key(key), envelope::value(version.0, value), ttl);
        self.query(Operation::Set, &cmd).await
    }

    /// Replaces the key with a tombstone of `version` for `tombstone_ttl` (one `SET ... GET`);
    /// true when a value was there.
    async fn remove(&self, key: &str, version: WriteVersion) -> Result<bool> {
        let cmd = self.tombstone_command(&self.data_key(key), version);
        let old: Option<Vec<u8>> = self.query(Operation::Delete, &cmd).await?;
        Ok(existed(old))
    }

    fn tombstone_command(&self, key: &[u8], version: WriteVersion) -> Cmd {
        let mut cmd = set_command(
            key,
            envelope::tombstone(version.0),
            Some(self.config.tombstone_ttl),
        );
        cmd.arg("GET");
        cmd
    }

    /// The arguments of `scripts::REPLAY` for `write` (the encoded write is not copied again).
    fn replay_args(&self, write: &KeyWrite, version: WriteVersion) -> Result<[Bytes; 3]> {
        let (stored, ttl) = match write {
            KeyWrite::Set { value, ttl } => (
                envelope::value(version.0, value),
                ttl.map(millis).unwrap_or_default(),
            ),
            KeyWrite::Delete => (
                envelope::tombstone(version.0),
                millis(self.config.tombstone_ttl),
            ),
            _ => return Err(Error::unsupported(&self.config.name, Operation::Set)),
        };
        Ok([
            Bytes::copy_from_slice(&envelope::hex(version.0)),
            stored,
            ttl.into(),
        ])
    }

    /// Applies a replayed write only over an older version or none, atomically.
    async fn replay(
        &self,
        key: &str,
        write: KeyWrite,
        version: WriteVersion,
    ) -> Result<WriteOutcome> {
        let operation = match write {
            KeyWrite::Delete => Operation::Delete,
            _ => Operation::Set,
        };
        let [hex, stored, ttl] = self.replay_args(&write, version)?;
        let applied: u64 = self
            .script(
                operation,
                &scripts::REPLAY,
                &[&self.data_key(key)],
                &[&hex, &stored, &ttl],
            )
            .await?;
        Ok(if applied > 0 {
            WriteOutcome::applied(false)
        } else {
            WriteOutcome::superseded()
        })
    }

    fn grant(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> LockGrant {
        LockGrant::new(name, holder, FencingToken(token), ttl)
    }

    fn token(&self, operation: Operation, value: &Value) -> Result<u64> {
        String::from_redis_value(value.clone())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                bad_reply(
                    &self.config,
                    operation,
                    "a fencing token that is not a number",
                )
            })
    }
}

fn millis(ttl: Duration) -> Vec<u8> {
    // The router caps TTLs at 100 years, far inside what PX takes; at least 1 ms.
    ttl.as_millis().max(1).to_string().into_bytes()
}

/// `SET key stored [PX ttl]`.
fn set_command(key: &[u8], stored: Bytes, ttl: Option<Duration>) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(&stored[..]);
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(millis(ttl));
    }
    cmd
}

/// Whether the string a `SET ... GET` replaced was a value.
fn existed(old: Option<Vec<u8>>) -> bool {
    old.is_some_and(|old| envelope::decode(Bytes::from(old)).value().is_some())
}

/// One write of a batch as the command [`write`](Backend::write) would send.
struct BatchCall {
    key: Vec<u8>,
    cmd: Cmd,
    kind: CallKind,
}

/// How a batch call's reply reads as a [`WriteOutcome`].
#[derive(Clone, Copy)]
enum CallKind {
    /// `SET`: `OK`.
    Set,
    /// `SET ... GET` of a tombstone: the string it replaced.
    Delete,
    /// `scripts::REPLAY`: 1 applied, 0 superseded.
    Replay,
}

/// The positions of a batch grouped by Cluster slot (one group for a single server), so each
/// group goes to one node as one MGET or pipeline.
fn slot_groups<'k>(cluster: bool, keys: impl Iterator<Item = &'k [u8]>) -> Vec<Vec<usize>> {
    if !cluster {
        let all: Vec<usize> = keys.enumerate().map(|(i, _)| i).collect();
        // An empty MGET or pipeline is an error, not an empty answer.
        return if all.is_empty() {
            Vec::new()
        } else {
            vec![all]
        };
    }
    let mut groups: std::collections::HashMap<redis::cluster_routing::Slot, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, key) in keys.enumerate() {
        groups
            .entry(redis::cluster_routing::Slot::for_key(key))
            .or_default()
            .push(i);
    }
    groups.into_values().collect()
}

/// A batch's answers, key by key, or the failure of the whole call.
type Answers<T> = Result<Vec<Result<T>>>;

/// Answers of the groups put back in batch order; the call fails as a whole only when every
/// group failed (the server, or every node, is out of reach), so the router fails the whole
/// batch over. Otherwise a failed group's keys each get a transient error of their own.
fn regroup<T>(
    name: &str,
    operation: Operation,
    len: usize,
    mut groups: Vec<(Vec<usize>, Answers<T>)>,
) -> Answers<T> {
    // One group holding every key in order (a single server): its answers as they are.
    if groups.len() == 1 && groups[0].0.iter().enumerate().all(|(i, &p)| i == p) {
        return groups.pop().map_or(Ok(Vec::new()), |(_, answers)| answers);
    }
    if groups.iter().all(|(_, answers)| answers.is_err()) {
        if let Some((_, Err(error))) = groups.into_iter().next() {
            return Err(error);
        }
        return Ok(Vec::new());
    }
    let mut out: Vec<Option<Result<T>>> = (0..len).map(|_| None).collect();
    for (positions, answers) in groups {
        match answers {
            Ok(answers) => {
                for (i, answer) in positions.into_iter().zip(answers) {
                    out[i] = Some(answer);
                }
            }
            Err(error) => {
                let message = error.to_string();
                for i in positions {
                    out[i] = Some(Err(Error::backend(name, operation, &message)));
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(Error::backend(name, operation, "no reply"))))
        .collect())
}

/// `EVALSHA` of `script` over `keys` and `args`, built here rather than by
/// `redis::ScriptInvocation`, which copies each key and argument into a vector of its own
/// before copying it into the command.
fn evalsha(script: &redis::Script, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
    let mut cmd = Cmd::with_capacity(
        3 + keys.len() + args.len(),
        keys.iter().chain(args).map(|a| a.len()).sum::<usize>() + 64,
    );
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys.len());
    for arg in keys.iter().chain(args) {
        cmd.arg(*arg);
    }
    cmd
}

/// What `scripts::ATOMIC` answered.
#[derive(Debug, PartialEq)]
enum AtomicReply {
    Outcome(AtomicOutcome),
    /// Not an integer, or a sum beyond 64 bits: the server's message.
    Rejected(String),
}

/// `scripts::ATOMIC`'s reply: `2` (the key is unknown), `-1:<message>`, or
/// `<status>:<has value>:<version>:<pttl>:<value>`, the version empty when it is `asked`.
/// `None` when it is none of these.
fn atomic_reply(reply: Vec<u8>, asked: WriteVersion) -> Option<AtomicReply> {
    if reply == b"2" {
        return Some(AtomicReply::Outcome(AtomicOutcome::unknown()));
    }
    if let Some(message) = reply.strip_prefix(b"-1:") {
        return Some(AtomicReply::Rejected(
            String::from_utf8_lossy(message).into_owned(),
        ));
    }
    let mut fields = reply.splitn(5, |&b| b == b':');
    let number = |field: Option<&[u8]>| std::str::from_utf8(field?).ok()?.parse::<i64>().ok();
    let (status, has_value) = (number(fields.next())?, number(fields.next())?);
    let version = match fields.next()? {
        [] => asked,
        digits => WriteVersion(u64::try_from(number(Some(digits))?).ok()?),
    };
    let pttl = number(fields.next())?;
    let value_at = reply.len() - fields.next()?.len();
    if !matches!(status, 0 | 1) || !matches!(has_value, 0 | 1) {
        return None;
    }
    let mut value = Bytes::from(reply);
    value.advance(value_at);
    Some(AtomicReply::Outcome(AtomicOutcome::new(
        status == 1,
        (has_value == 1).then_some(value),
        version,
        u64::try_from(pttl)
            .ok()
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis),
    )))
}

impl RedisBackend {
    /// The reply of `scripts::ATOMIC` (see [`atomic_reply`]).
    fn atomic_outcome(&self, reply: Vec<u8>, asked: WriteVersion) -> Result<AtomicOutcome> {
        let operation = Operation::Atomic;
        match atomic_reply(reply, asked) {
            Some(AtomicReply::Outcome(outcome)) => Ok(outcome),
            Some(AtomicReply::Rejected(message)) => Err(Error::Rejected {
                backend: self.config.name.clone(),
                operation,
                message: self.config.secrets.scrub(&message),
            }),
            None => Err(bad_reply(
                &self.config,
                operation,
                "an atomic operation's reply",
            )),
        }
    }

    /// One MGET of the keys at `positions`.
    async fn mget(
        &self,
        keys: &[std::borrow::Cow<'_, [u8]>],
        positions: &[usize],
    ) -> Result<Vec<Result<Option<Bytes>>>> {
        let mut cmd = redis::cmd("MGET");
        for &i in positions {
            cmd.arg(&*keys[i]);
        }
        let values: Vec<Option<Vec<u8>>> = self.query(Operation::GetMany, &cmd).await?;
        if values.len() != positions.len() {
            return Err(bad_reply(
                &self.config,
                Operation::GetMany,
                "MGET answered another number of keys",
            ));
        }
        Ok(values
            .into_iter()
            .map(|v| Ok(v.and_then(|v| envelope::decode(Bytes::from(v)).value())))
            .collect())
    }

    /// The command a write of a batch sends, as [`write`](Backend::write) would.
    fn batch_call(&self, write: &BatchWrite<'_>) -> Result<BatchCall> {
        let key = self.data_key(write.key).into_owned();
        let version = write.options.version;
        let (cmd, kind) = match (&write.write, write.options.mode) {
            (write, WriteMode::IfNewer) => {
                let args = self.replay_args(write, version)?;
                let cmd = evalsha(&scripts::REPLAY, &[&key], &args.each_ref().map(|a| &a[..]));
                (cmd, CallKind::Replay)
            }
            (KeyWrite::Set { value, ttl }, _) => (
                set_command(&key, envelope::value(version.0, value), *ttl),
                CallKind::Set,
            ),
            (KeyWrite::Delete, _) => (self.tombstone_command(&key, version), CallKind::Delete),
            _ => return Err(Error::unsupported(&self.config.name, Operation::WriteMany)),
        };
        Ok(BatchCall { key, cmd, kind })
    }

    /// The calls at `positions` as one pipeline (a replay script the server does not have is
    /// loaded, and only the calls that needed it sent again).
    async fn pipeline(
        &self,
        calls: &[BatchCall],
        positions: &[usize],
    ) -> Result<Vec<Result<WriteOutcome>>> {
        let operation = Operation::WriteMany;
        let in_flight = InFlight(&self.data_suspect);
        let send = |conn: &Conn, positions: &[usize]| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in positions {
                pipe.add_command(calls[i].cmd.clone());
            }
            let mut conn = conn.clone();
            async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
        };
        let run = async {
            let mut conn = self.data_conn().await?;
            let mut replies = send(&conn, positions).await?;
            let missing: Vec<usize> = (0..replies.len())
                .filter(|&j| matches!(&replies[j], Value::ServerError(e) if e.code() == "NOSCRIPT"))
                .collect();
            if !missing.is_empty() {
                scripts::REPLAY.load_async(&mut conn).await?;
                let again: Vec<usize> = missing.iter().map(|&j| positions[j]).collect();
                let retried = send(&conn, &again).await?;
                for (j, reply) in missing.into_iter().zip(retried) {
                    replies[j] = reply;
                }
            }
            Ok::<_, redis::RedisError>(replies)
        };
        let result = run.await;
        std::mem::forget(in_flight);
        let replies = result.map_err(|e| self.failed(operation, e))?;
        if replies.len() != positions.len() {
            return Err(bad_reply(
                &self.config,
                operation,
                "a pipeline answered another number of calls",
            ));
        }
        Ok(positions
            .iter()
            .zip(replies)
            .map(|(&i, reply)| match reply {
                Value::ServerError(error) => Err(self.failed(operation, error.into())),
                reply => match calls[i].kind {
                    CallKind::Set => Ok(WriteOutcome::applied(false)),
                    CallKind::Delete => Option::<Vec<u8>>::from_redis_value(reply)
                        .map(|old| WriteOutcome::applied(existed(old)))
                        .map_err(|_| bad_reply(&self.config, operation, "SET ... GET's reply")),
                    CallKind::Replay => match u64::from_redis_value(reply) {
                        Ok(0) => Ok(WriteOutcome::superseded()),
                        Ok(_) => Ok(WriteOutcome::applied(false)),
                        Err(_) => Err(bad_reply(
                            &self.config,
                            operation,
                            "a script answered without a count",
                        )),
                    },
                },
            })
            .collect())
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn scheme(&self) -> &str {
        if self.config.cluster {
            "redis+cluster"
        } else {
            "redis"
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .shared(true)
            .native_ttl(true)
            .versioned(true)
            .locks(true)
            .atomic(true)
    }

    async fn health_check(&self) -> Result<HealthProbe> {
        // Under Sentinel every check asks the sentinels for the master afresh: the check then
        // fails while they name none that answers as a master, and passes on the new master
        // once they have failed over.
        if self.health_pending.swap(true, Ordering::Relaxed)
            || self.config.sentinel_master.is_some()
        {
            self.replace(&self.health);
        }
        let health = Self::current(&self.health);
        let pinged = Self::ping(&health).await;
        self.health_pending.store(false, Ordering::Relaxed);
        match pinged {
            Ok(reply) if reply == "PONG" => {
                let moved = health.master_addr().is_some_and(|master| {
                    Self::current(&self.data)
                        .master_addr()
                        .is_some_and(|data| data != master)
                });
                if moved {
                    tracing::info!(backend = %self.config.name, "the sentinels name another master: moving there");
                }
                if self.data_suspect.swap(false, Ordering::Relaxed) || moved {
                    self.replace(&self.data);
                }
                Ok(HealthProbe::Healthy)
            }
            Ok(other) => Ok(HealthProbe::Degraded(format!("PING answered {other:?}"))),
            Err(e) => Err(classify(&self.config, Operation::HealthCheck, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let value: Option<Vec<u8>> = self
            .query(Operation::Get, redis::cmd("GET").arg(&*self.data_key(key)))
            .await?;
        Ok(value.and_then(|v| envelope::decode(Bytes::from(v)).value()))
    }

    /// One MGET, or one per Cluster slot group sent at once.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Result<Option<Bytes>>>> {
        // Without a prefix the keys go as they are: no copy per key.
        let data: Vec<std::borrow::Cow<'_, [u8]>> =
            keys.iter().map(|key| self.data_key(key)).collect();
        let groups = slot_groups(self.config.cluster, data.iter().map(|k| &**k));
        let answers = futures_util::future::join_all(
            groups.iter().map(|positions| self.mget(&data, positions)),
        )
        .await;
        regroup(
            &self.config.name,
            Operation::GetMany,
            keys.len(),
            groups.into_iter().zip(answers).collect(),
        )
    }

    /// One pipeline, or one per Cluster slot group sent at once.
    async fn write_many(&self, writes: Vec<BatchWrite<'_>>) -> Result<Vec<Result<WriteOutcome>>> {
        let calls = writes
            .iter()
            .map(|write| self.batch_call(write))
            .collect::<Result<Vec<_>>>()?;
        let groups = slot_groups(self.config.cluster, calls.iter().map(|c| c.key.as_slice()));
        let answers = futures_util::future::join_all(
            groups
                .iter()
                .map(|positions| self.pipeline(&calls, positions)),
        )
        .await;
        regroup(
            &self.config.name,
            Operation::WriteMany,
            writes.len(),
            groups.into_iter().zip(answers).collect(),
        )
    }

    async fn write(
        &self,
        key: &str,
        write: KeyWrite,
        options: WriteOptions,
    ) -> Result<WriteOutcome> {
        match (write, options.mode) {
            (write, WriteMode::IfNewer) => self.replay(key, write, options.version).await,
            (KeyWrite::Set { value, ttl }, _) => {
                self.store(key, &value, ttl, options.version).await?;
                Ok(WriteOutcome::applied(false))
            }
            (KeyWrite::Delete, _) => self
                .remove(key, options.version)
                .await
                .map(WriteOutcome::applied),
            _ => Err(Error::unsupported(&self.config.name, Operation::Set)),
        }
    }

    /// One script (`scripts::ATOMIC`) over the key.
    async fn atomic(
        &self,
        key: &str,
        op: AtomicOp,
        unknown: Unknown,
        options: WriteOptions,
    ) -> Result<AtomicOutcome> {
        let operation = Operation::Atomic;
        let (mode, seed): (&[u8], Option<Bytes>) = match unknown {
            Unknown::Ask => (b"ask", None),
            Unknown::Seed(Some(seed)) => (b"seed", Some(seed)),
            // No seed to store: the script goes on as for a key never written.
            _ => (b"absent", None),
        };
        let ttl_arg = |ttl: Option<Duration>| ttl.map(millis).unwrap_or_default();
        let mut delta_digits = itoa::Buffer::new();
        let (name, ttl, arg, expected): (&[u8], _, &[u8], Option<&[u8]>) = match &op {
            AtomicOp::Increment { delta, ttl } => (
                b"incr",
                ttl_arg(*ttl),
                delta_digits.format(*delta).as_bytes(),
                None,
            ),
            AtomicOp::SetIfAbsent { value, ttl } => (b"nx", ttl_arg(*ttl), value, None),
            AtomicOp::CompareAndSet {
                expected,
                value,
                ttl,
            } => (b"cas", ttl_arg(*ttl), value, expected.as_deref()),
            _ => return Err(Error::unsupported(&self.config.name, operation)),
        };
        let version = envelope::hex(options.version.0);
        let mut args: [&[u8]; 7] = [name, &version, mode, &ttl, arg, b"", b""];
        let sent = match (&seed, expected) {
            (_, Some(expected)) => {
                args[5] = seed.as_deref().unwrap_or_default();
                args[6] = expected;
                7
            }
            (Some(seed), None) => {
                args[5] = seed;
                6
            }
            (None, None) => 5,
        };
        let reply: Vec<u8> = self
            .script(
                operation,
                &scripts::ATOMIC,
                &[&self.data_key(key)],
                &args[..sent],
            )
            .await?;
        self.atomic_outcome(reply, options.version)
    }

    async fn acquire_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<LockOutcome> {
        let op = Operation::AcquireLock;
        let (lock, fence) = self.lock_keys(name);
        let reply: Vec<Value> = self
            .script(
                op,
                &scripts::ACQUIRE,
                &[&lock, &fence],
                &[holder.as_bytes(), &millis(ttl)],
            )
            .await?;
        match reply.as_slice() {
            [Value::Int(1), token] => Ok(LockOutcome::Acquired(self.grant(
                name,
                holder,
                self.token(op, token)?,
                ttl,
            ))),
            [Value::Int(0), _, current, pttl] => Ok(LockOutcome::Held {
                holder: String::from_redis_value(current.clone()).ok(),
                remaining: i64::from_redis_value(pttl.clone())
                    .ok()
                    .filter(|ms| *ms >= 0)
                    .map(|ms| Duration::from_millis(ms as u64)),
            }),
            _ => Err(bad_reply(&self.config, op, "acquire script")),
        }
    }

    async fn extend_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LockGrant>> {
        let op = Operation::ExtendLock;
        let (lock, _) = self.lock_keys(name);
        let reply: Value = self
            .script(
                op,
                &scripts::EXTEND,
                &[&lock],
                &[holder.as_bytes(), &millis(ttl)],
            )
            .await?;
        match reply {
            Value::Nil => Ok(None),
            token => Ok(Some(self.grant(name, holder, self.token(op, &token)?, ttl))),
        }
    }

    async fn release_lock(&self, name: &str, holder: &str) -> Result<bool> {
        let (lock, _) = self.lock_keys(name);
        let released: u64 = self
            .script(
                Operation::ReleaseLock,
                &scripts::RELEASE,
                &[&lock],
                &[holder.as_bytes()],
            )
            .await?;
        Ok(released > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(reply: &[u8]) -> Option<AtomicReply> {
        atomic_reply(reply.to_vec(), WriteVersion(7))
    }

    fn written(value: Option<&'static [u8]>, version: u64, ttl: Option<u64>) -> AtomicReply {
        AtomicReply::Outcome(AtomicOutcome::new(
            true,
            value.map(Bytes::from_static),
            WriteVersion(version),
            ttl.map(Duration::from_millis),
        ))
    }

    #[test]
    fn atomic_replies_are_read_field_by_field_and_the_value_whole() {
        assert_eq!(outcome(b"1:1::-1:42"), Some(written(Some(b"42"), 7, None)));
        assert_eq!(
            outcome(b"1:1:1700000000000001:5000:a:b::c"),
            Some(written(Some(b"a:b::c"), 1_700_000_000_000_001, Some(5000)))
        );
        assert_eq!(outcome(b"1:1::-1:"), Some(written(Some(b""), 7, None)));
        assert_eq!(
            outcome(b"0:0:9:-2:"),
            Some(AtomicReply::Outcome(AtomicOutcome::new(
                false,
                None,
                WriteVersion(9),
                None
            )))
        );
        assert_eq!(
            outcome(b"2"),
            Some(AtomicReply::Outcome(AtomicOutcome::unknown()))
        );
        assert_eq!(
            outcome(b"-1:ERR value is not an integer"),
            Some(AtomicReply::Rejected("ERR value is not an integer".into()))
        );
    }

    #[test]
    fn malformed_atomic_replies_are_none_not_a_panic() {
        for reply in [
            &b""[..],
            b"1",
            b"1:1",
            b"1:1::",
            b"1:1::-1",
            b"3:1::-1:x",
            b"1:2::-1:x",
            b"1:1:-5:-1:x",
            b"1:1:x:-1:x",
            b"1:1::1e+14:x",
            b"\xff:1::-1:x",
        ] {
            assert_eq!(outcome(reply), None, "{:?}", String::from_utf8_lossy(reply));
        }
    }
}
