//! Real servers for resilient-storage's tests, started and broken on purpose.
//!
//! - [`RedisServer`], [`RedisCluster`] and [`PostgresServer`] start throwaway servers on free
//!   loopback ports, wait until they accept a real connection, and stop them when the handle is
//!   dropped. Each server process is spawned with a parent-death signal from a thread that lives
//!   as long as the test binary, so no server outlives the binary, even on `process::exit` or
//!   abort.
//! - Handles kill (SIGKILL), freeze (SIGSTOP), thaw (SIGCONT) and restart a server on the same
//!   port and data directory.
//! - [`TestCertificates`] makes a CA and a server certificate, for servers that speak TLS.
//! - [`Workload`] keeps several tasks calling a server and records every call.
//! - [`holds`] counts overlapping lock holds and fencing tokens that go back.
//! - [`LogCapture`] keeps a tracing subscriber's output for tests that check their logs.
//! - [`FaultProxy`] sits between a client and a server and injects latency, blackholes,
//!   refusals, resets and truncated replies while traffic flows.
//!
//! Tests never touch a server they did not start: ports are picked free, never the defaults.
//! When a binary is missing, the error says what to install.

mod binaries;
mod capture;
pub mod holds;
mod postgres;
mod process;
mod proxy;
mod redis;
mod tls;
mod workload;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

pub use binaries::MissingBinary;
pub use capture::LogCapture;
pub use postgres::PostgresServer;
pub use process::{ServerProcess, pid_alive};
pub use proxy::{FaultProxy, ProxyMode};
pub use redis::{
    RedisCluster, RedisOptions, RedisSentinels, RedisServer, SENTINEL_MASTER, read_cluster_keys,
    read_key, read_keys,
};
pub use tls::TestCertificates;
pub use workload::{Call, Workload};

/// Anything that can go wrong starting or handling a server.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A loopback port that was free a moment ago, not one of the well-known ports.
pub fn free_port() -> Result<u16> {
    loop {
        let port = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if port != 6379 && port != 5432 {
            return Ok(port);
        }
    }
}
