//! Throwaway `redis-server`s, alone or as a Redis Cluster.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{ServerProcess, wait_ready};
use crate::{Result, TestCertificates, binaries, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How to run a [`RedisServer`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Keep an append-only file, fsynced on every write, so a restart brings back every
    /// acknowledged write. Off: a restart is empty.
    pub appendonly: bool,
    /// Require this password (`requirepass`).
    pub password: Option<String>,
    /// Speak only TLS, with these certificates (clients are not asked for one).
    pub tls: Option<std::sync::Arc<TestCertificates>>,
    cluster: bool,
    /// Start as a replica of the server on this loopback port.
    replica_of: Option<u16>,
}

impl RedisOptions {
    /// Sets [`appendonly`](Self::appendonly).
    pub fn appendonly(mut self, yes: bool) -> Self {
        self.appendonly = yes;
        self
    }

    /// Sets [`password`](Self::password).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets [`tls`](Self::tls).
    pub fn tls(mut self, certificates: std::sync::Arc<TestCertificates>) -> Self {
        self.tls = Some(certificates);
        self
    }
}

/// A `redis-server` on a free loopback port with a temporary directory, stopped on drop.
#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
    port: u16,
    options: RedisOptions,
    // Dropped after the process (fields drop in order).
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk.
    pub fn start() -> Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options`.
    pub fn start_with(options: RedisOptions) -> Result<Self> {
        let binary = binaries::find("redis-server", "redis-server")?;
        let mut last_error = None;
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = if options.cluster {
                free_cluster_port()?
            } else {
                free_port()?
            };
            let dir = tempfile::Builder::new().prefix("redis-").tempdir()?;
            let process = ServerProcess::start(
                "redis-server",
                binary.clone(),
                args(port, dir.path(), &options),
                None,
                dir.path().join("redis.log"),
            )?;
            let mut server = Self {
                process,
                port,
                options: options.clone(),
                dir,
            };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) if e.to_string().contains("Address already in use") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| "could not start redis-server".into()))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let addr = self.addr();
        let password = self.options.password.clone();
        if let Some(tls) = self.options.tls.clone() {
            let cli = binaries::find("redis-cli", "redis-tools")?;
            let port = self.port.to_string();
            return wait_ready(&mut self.process, READY_TIMEOUT, || {
                Command::new(&cli)
                    .args(["--tls", "--cacert"])
                    .arg(tls.ca())
                    .args(["-h", "127.0.0.1", "-p", &port, "PING"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
            });
        }
        wait_ready(&mut self.process, READY_TIMEOUT, || {
            let mut auth = vec![];
            if let Some(p) = &password {
                auth.push(vec!["AUTH".to_owned(), p.clone()]);
            }
            auth.push(vec!["PING".to_owned()]);
            command_sequence(addr, &auth).is_ok_and(|reply| reply == "PONG")
        })
    }

    /// Waits until this master has `replicas` replicas whose first sync is done (a replica that
    /// never synced is not promoted: too far behind to be trusted), or `give_up` passes.
    fn wait_replicas_online(&self, replicas: usize, give_up: std::time::Instant) -> Result<()> {
        loop {
            let info = self.command(&["INFO", "replication"]).unwrap_or_default();
            if info.matches("state=online").count() >= replicas {
                return Ok(());
            }
            if std::time::Instant::now() > give_up {
                let port = self.port;
                return Err(format!("the replicas of {port} never synced: {info}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://[:password@]127.0.0.1:port`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.options.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Runs one command over a raw connection and returns a simple, bulk or error reply as text.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let mut all = vec![];
        if let Some(p) = &self.options.password {
            all.push(vec!["AUTH".to_owned(), p.clone()]);
        }
        all.push(args.iter().map(|a| (*a).to_owned()).collect());
        command_sequence(self.addr(), &all)
    }

    /// SIGKILL: in-flight connections drop, the port closes.
    pub fn kill(&mut self) -> Result<()> {
        self.process.kill()
    }

    /// SIGSTOP: connections stay open and nothing answers.
    pub fn freeze(&self) -> Result<()> {
        self.process.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) -> Result<()> {
        self.process.signal(Signal::SIGCONT)
    }

    /// Kills the server if it runs, starts it again on the same port and directory, and waits
    /// until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.process.restart()?;
        self.wait_ready()
    }
}

fn args(port: u16, dir: &Path, options: &RedisOptions) -> Vec<String> {
    let (plain_port, tls_port) = match options.tls {
        Some(_) => ("0".to_owned(), port.to_string()),
        None => (port.to_string(), "0".to_owned()),
    };
    let mut args: Vec<String> = [
        "--port",
        &plain_port,
        "--tls-port",
        &tls_port,
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        if options.appendonly { "yes" } else { "no" },
        // Every acknowledged write is on disk: a restarted server lost nothing it confirmed.
        "--appendfsync",
        "always",
        "--dir",
        &dir.to_string_lossy(),
        "--logfile",
        "",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(p) = &options.password {
        args.extend(["--requirepass".to_owned(), p.clone()]);
    }
    if let Some(tls) = &options.tls {
        for (option, path) in [
            ("--tls-cert-file", tls.cert()),
            ("--tls-key-file", tls.key()),
            ("--tls-ca-cert-file", tls.ca()),
        ] {
            args.extend([option.to_owned(), path.to_string_lossy().into_owned()]);
        }
        args.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
    }
    if let Some(master) = options.replica_of {
        args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.to_string(),
        ]);
    }
    if options.cluster {
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
            .map(str::to_owned),
        );
    }
    args
}

/// A port free for the server and for its cluster bus (port + 10000).
fn free_cluster_port() -> Result<u16> {
    loop {
        let port = free_port()?;
        if port <= 55_535
            && TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 10_000)).is_ok()
        {
            return Ok(port);
        }
    }
}

/// Sends commands on one connection and returns the last reply as text (`-ERR ...` for an
/// error reply).
fn command_sequence(addr: SocketAddr, commands: &[Vec<String>]) -> Result<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut last = String::new();
    for args in commands {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        writer.write_all(request.as_bytes())?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        last = match line.as_bytes().first() {
            Some(b'+') | Some(b':') => line[1..].to_owned(),
            Some(b'-') => line.to_owned(),
            Some(b'$') => {
                let len: i64 = line[1..].parse()?;
                if len < 0 {
                    String::new()
                } else {
                    let mut body = vec![0; len as usize + 2];
                    reader.read_exact(&mut body)?;
                    String::from_utf8_lossy(&body[..len as usize]).into_owned()
                }
            }
            _ => return Err(format!("unexpected reply {line:?}").into()),
        };
    }
    Ok(last)
}

/// A Redis Cluster of masters on loopback, stopped on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3), joins them with `redis-cli --cluster create`, and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Result<Self> {
        Self::start_with_replicas(masters, 0)
    }

    /// [`start`](Self::start) with `replicas` replicas per master (the cluster promotes one
    /// when its master has not answered for the node timeout, 2 s); also waits until every
    /// master's replicas have finished their first sync.
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Result<Self> {
        let cli = binaries::find("redis-cli", "redis-tools")?;
        let options = RedisOptions {
            cluster: true,
            ..RedisOptions::default()
        };
        let nodes = (0..masters.max(3) * (1 + replicas))
            .map(|_| RedisServer::start_with(options.clone()))
            .collect::<Result<Vec<_>>>()?;
        let output = Command::new(cli)
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| n.addr().to_string()))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        let give_up = std::time::Instant::now() + READY_TIMEOUT;
        for node in &nodes {
            loop {
                let info = node.command(&["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                if std::time::Instant::now() > give_up {
                    return Err(
                        format!("cluster node {} never reported ok: {info}", node.addr()).into(),
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let cluster = Self { nodes };
        for port in cluster.masters()? {
            let master = cluster.nodes.iter().find(|n| n.port() == port);
            let master = master.ok_or_else(|| format!("no node on port {port}"))?;
            master.wait_replicas_online(replicas, give_up)?;
        }
        Ok(cluster)
    }

    /// The ports of the nodes that are masters holding slots now, by `CLUSTER NODES` on the
    /// first node that answers.
    pub fn masters(&self) -> Result<Vec<u16>> {
        for node in &self.nodes {
            let Ok(nodes) = node.command(&["CLUSTER", "NODES"]) else {
                continue;
            };
            let masters = nodes
                .lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    let flags = fields.get(2)?;
                    let serving = flags.contains("master") && !flags.contains("fail");
                    // Field 8 on: the slots it holds.
                    (serving && fields.len() > 8)
                        .then(|| fields[1].split(['@', ':']).nth(1)?.parse().ok())
                        .flatten()
                })
                .collect();
            return Ok(masters);
        }
        Err("no cluster node answers".into())
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutable (to kill or restart one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// `redis://127.0.0.1:port` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// Reads `key` from the Redis at `url` with a plain client, as a string: what the server holds,
/// bypassing the library. The value is read as the Redis backend's README lays it out, decoded
/// here independently of the backend: a 20-byte header (`\0rs`, `v` or `t` for a tombstone,
/// 16 hex digits of version) in front of the value; a string without it is read as it is.
/// Panics when the server cannot be reached (tests only).
pub async fn read_key(url: &str, key: &str) -> Option<String> {
    read_keys(url, &[key]).await.pop().flatten()
}

/// [`read_key`] for many keys, on one connection (one MGET per 1,000 keys).
pub async fn read_keys(url: &str, keys: &[&str]) -> Vec<Option<String>> {
    let client = ::redis::Client::open(url).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the test server");
    let mut values = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let raw: Vec<Option<Vec<u8>>> = ::redis::cmd("MGET")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .expect("MGET");
        values.extend(
            raw.into_iter()
                .map(|raw| raw.and_then(|raw| unwrap_stored(&raw))),
        );
    }
    values
}

/// The value of a stored string, as [`read_key`] reads it.
fn unwrap_stored(raw: &[u8]) -> Option<String> {
    let headed =
        raw.len() >= 20 && raw.starts_with(b"\0rs") && raw[4..20].iter().all(u8::is_ascii_hexdigit);
    let value = match (headed, raw.get(3)) {
        (true, Some(b't')) => return None,
        (true, Some(b'v')) => &raw[20..],
        _ => raw,
    };
    Some(String::from_utf8_lossy(value).into_owned())
}

/// The master name the sentinels of a [`RedisSentinels`] watch.
pub const SENTINEL_MASTER: &str = "mymaster";

/// A master, its replicas and three sentinels on loopback, stopped on drop: Redis's own high
/// availability. The sentinels mark a master down after 1 s without an answer, and two of
/// them agreeing start a failover to a replica.
#[derive(Debug)]
pub struct RedisSentinels {
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

/// One `redis-server --sentinel`.
#[derive(Debug)]
struct Sentinel {
    process: ServerProcess,
    port: u16,
    // Dropped after the process: the sentinel rewrites its config file there.
    _dir: TempDir,
}

impl RedisSentinels {
    /// Starts a master, `replicas` replicas of it and three sentinels, and waits until every
    /// sentinel sees the master, every replica and the two other sentinels, so a failover can
    /// be decided the moment the master dies.
    pub fn start(replicas: usize) -> Result<Self> {
        let master = RedisServer::start()?;
        let master_port = master.port();
        let mut servers = vec![master];
        for _ in 0..replicas {
            servers.push(RedisServer::start_with(RedisOptions {
                replica_of: Some(master_port),
                ..RedisOptions::default()
            })?);
        }
        let binary = binaries::find("redis-server", "redis-server")?;
        let sentinels = (0..3)
            .map(|_| Sentinel::start(&binary, master_port))
            .collect::<Result<Vec<_>>>()?;
        let group = Self { servers, sentinels };
        let give_up = std::time::Instant::now() + READY_TIMEOUT;
        let ready = format!("slaves={replicas},sentinels=3");
        for sentinel in &group.sentinels {
            loop {
                let info = sentinel.info().unwrap_or_default();
                if info.contains("status=ok") && info.contains(&ready) {
                    break;
                }
                if std::time::Instant::now() > give_up {
                    return Err(
                        format!("sentinel {} never saw the group: {info}", sentinel.port).into(),
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        group.servers[0].wait_replicas_online(replicas, give_up)?;
        Ok(group)
    }

    /// `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","))
    }

    /// The port of the server the first sentinel that answers names as the master now.
    pub fn master_port(&self) -> Result<u16> {
        for sentinel in &self.sentinels {
            let Ok(info) = sentinel.info() else { continue };
            let port = info
                .split(',')
                .find_map(|field| field.strip_prefix("address="))
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|port| port.trim().parse().ok());
            if let Some(port) = port {
                return Ok(port);
            }
        }
        Err("no sentinel names a master".into())
    }

    /// The servers: the first started as the master, the others as its replicas.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The server on `port`, mutable (to kill or restart it).
    pub fn server_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.servers.iter_mut().find(|s| s.port() == port)
    }
}

impl Sentinel {
    fn start(binary: &Path, master_port: u16) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let dir = tempfile::Builder::new().prefix("sentinel-").tempdir()?;
            let config = dir.path().join("sentinel.conf");
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                     sentinel resolve-hostnames no\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    dir = dir.path().display()
                ),
            )?;
            let process = ServerProcess::start(
                "redis-sentinel",
                binary.to_path_buf(),
                vec![
                    config.to_string_lossy().into_owned(),
                    "--sentinel".to_owned(),
                ],
                None,
                dir.path().join("sentinel.log"),
            )?;
            let mut sentinel = Self {
                process,
                port,
                _dir: dir,
            };
            let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
            match wait_ready(&mut sentinel.process, READY_TIMEOUT, || {
                command_sequence(addr, &[vec!["PING".to_owned()]]).is_ok_and(|r| r == "PONG")
            }) {
                Ok(()) => return Ok(sentinel),
                Err(e) if e.to_string().contains("Address already in use") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| "could not start a sentinel".into()))
    }

    /// `INFO sentinel`'s line for the master: `master0:name=...,status=...,address=...`.
    fn info(&self) -> Result<String> {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port));
        let info = command_sequence(addr, &[vec!["INFO".to_owned(), "sentinel".to_owned()]])?;
        Ok(info
            .lines()
            .find(|l| l.starts_with("master0:"))
            .unwrap_or_default()
            .to_owned())
    }
}

/// [`read_key`] on a Redis Cluster, for many keys: each read where the cluster says the key
/// lives now.
pub async fn read_cluster_keys(urls: &[String], keys: &[&str]) -> Vec<Option<String>> {
    let client = ::redis::cluster::ClusterClient::new(urls.to_vec()).expect("cluster URLs");
    let mut conn = client
        .get_async_connection()
        .await
        .expect("a connection to the test cluster");
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        let raw: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("GET");
        values.push(raw.and_then(|raw| unwrap_stored(&raw)));
    }
    values
}
