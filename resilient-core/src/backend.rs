//! The extension point: what a storage backend implements. Small on purpose, so third-party
//! backends stay easy to write and the trait rarely changes.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What a backend can do. Built with [`Capabilities::new`] and the setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Capabilities {
    /// Visible to other processes (Redis, PostgreSQL); false for an in-process store.
    pub shared: bool,
    /// Survives a restart of the process and of the server.
    pub durable: bool,
    /// Expires keys by itself.
    pub native_ttl: bool,
    /// Keeps each write's [`WriteVersion`] with the key, so a replayed write never overwrites
    /// a newer one another process made (see [`Backend::replay_write`]).
    pub versioned: bool,
    /// Implements the lock operations.
    pub locks: bool,
}

impl Capabilities {
    /// No capabilities.
    pub const fn new() -> Self {
        Self {
            shared: false,
            durable: false,
            native_ttl: false,
            versioned: false,
            locks: false,
        }
    }

    /// Sets [`shared`](Self::shared).
    pub const fn shared(mut self, yes: bool) -> Self {
        self.shared = yes;
        self
    }

    /// Sets [`durable`](Self::durable).
    pub const fn durable(mut self, yes: bool) -> Self {
        self.durable = yes;
        self
    }

    /// Sets [`native_ttl`](Self::native_ttl).
    pub const fn native_ttl(mut self, yes: bool) -> Self {
        self.native_ttl = yes;
        self
    }

    /// Sets [`versioned`](Self::versioned).
    pub const fn versioned(mut self, yes: bool) -> Self {
        self.versioned = yes;
        self
    }

    /// Sets [`locks`](Self::locks).
    pub const fn locks(mut self, yes: bool) -> Self {
        self.locks = yes;
        self
    }
}

/// A successful health check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthProbe {
    /// Fully working.
    Healthy,
    /// Answering, but impaired (replica lagging, memory pressure, ...). Still routable.
    Degraded(String),
}

/// The version of a write: microseconds since the Unix epoch on the writing process's clock,
/// made strictly increasing within the process. Every write the router sends carries one, and
/// so does every replay of it, so a versioned backend can tell an old write replayed after an
/// outage from a newer one another process made meanwhile. Versions from different processes
/// order as their clocks do (NTP keeps them within milliseconds; a replay waits for an outage to
/// end, which takes far longer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriteVersion(pub u64);

impl fmt::Display for WriteVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A write to replay: a value with its remaining TTL, or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyWrite {
    /// Write `value`, expiring after `ttl` when given.
    Set {
        /// The value.
        value: Bytes,
        /// The TTL left.
        ttl: Option<Duration>,
    },
    /// Remove the key.
    Delete,
}

/// A fencing token: grows with every grant of the same lock name, so a resource guarded by the
/// lock can reject writes from a holder whose lease has already passed to someone else.
///
/// The shipped backends issue the granting server's clock in microseconds since the Unix epoch,
/// or one more than the lock's last token when that is larger. Tokens therefore keep growing
/// when lock authority moves between Redis, PostgreSQL and the memory store (under the opt-in
/// [`LockFailover::AfterOutage`](crate::LockFailover::AfterOutage); by default it never
/// moves), provided the servers' clocks agree to within the time between two grants of the
/// lock (a lease is seconds; NTP keeps clocks within milliseconds), and across a Redis restart
/// that forgot the lock's last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A lock held by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LockGrant {
    /// The lock name as the caller gave it.
    pub name: String,
    /// The holder id.
    pub holder: String,
    /// The fencing token of this grant; unchanged when the same holder re-acquires or extends.
    pub token: FencingToken,
    /// The lease length granted.
    pub ttl: Duration,
    /// The backend that granted it.
    pub backend: String,
    /// True when the lock lives in a process-local store: other processes do not see it.
    pub local: bool,
}

impl LockGrant {
    /// A grant, for backend implementations.
    pub fn new(
        name: impl Into<String>,
        holder: impl Into<String>,
        token: FencingToken,
        ttl: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            holder: holder.into(),
            token,
            ttl,
            backend: String::new(),
            local: false,
        }
    }

    /// Sets the granting backend's name, and whether the lock is process-local.
    pub fn by(mut self, backend: &str, local: bool) -> Self {
        backend.clone_into(&mut self.backend);
        self.local = local;
        self
    }
}

/// The answer to an acquire: a grant, or the lock is held by another holder. Both are answers,
/// not failures: neither fails over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
#[non_exhaustive]
pub enum LockOutcome {
    /// The caller holds the lock.
    Acquired(LockGrant),
    /// Someone else holds it.
    Held {
        /// The current holder, when the backend tells.
        holder: Option<String>,
        /// The time left on the current lease, when the backend tells.
        remaining: Option<Duration>,
    },
}

impl LockOutcome {
    /// The grant, if the lock was acquired.
    pub fn grant(&self) -> Option<&LockGrant> {
        match self {
            LockOutcome::Acquired(grant) => Some(grant),
            LockOutcome::Held { .. } => None,
        }
    }

    /// True if the lock was acquired.
    pub fn is_acquired(&self) -> bool {
        self.grant().is_some()
    }
}

/// A storage backend.
///
/// Keys, lock names, holders, values and TTLs reach a backend already validated by the router
/// (see [`KeyPolicy`](crate::KeyPolicy)); a backend must store every valid key and value
/// byte-exactly. Failures of the server or the connection are returned as
/// [`Error::Backend`](crate::Error::Backend) so the router counts them and fails over. A backend
/// need not bound its own calls in time: the router runs every call under a timeout and may drop
/// the future at any await point, so implementations must be cancel-safe.
///
/// Run [`testing::conformance`](crate::testing::conformance) (feature `testing`) against a new
/// backend to check it behaves like the shipped ones.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The backend's name in reports, events and errors, unique within one storage.
    fn name(&self) -> &str;

    /// The URL scheme it was registered under (`redis`, `postgres`, `memory`, ...).
    fn scheme(&self) -> &str;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// A cheap liveness check (PING, `SELECT 1`). Its latency feeds the health monitor.
    async fn health_check(&self) -> Result<HealthProbe>;

    /// Reads a key: `None` when it is absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Writes a key. `ttl`, when given, replaces any previous TTL; `None` keeps the key until
    /// it is deleted.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()>;

    /// Removes a key; true when it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Writes a key stamped with `version`. A [versioned](Capabilities::versioned) backend
    /// keeps the version with the value, and for a bounded time after the value expires; the
    /// default ignores it and calls [`set`](Self::set). Unconditional, as `set` is.
    async fn set_versioned(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        version: WriteVersion,
    ) -> Result<()> {
        let _ = version;
        self.set(key, value, ttl).await
    }

    /// Removes a key; true when it existed. A [versioned](Capabilities::versioned) backend
    /// leaves a tombstone with `version` for a bounded time, so a replay of an older write
    /// cannot bring the key back; the default calls [`delete`](Self::delete).
    async fn delete_versioned(&self, key: &str, version: WriteVersion) -> Result<bool> {
        let _ = version;
        self.delete(key).await
    }

    /// Replays a write this backend missed while another served it. A
    /// [versioned](Capabilities::versioned) backend applies it only if the key has no version
    /// or an older one, atomically, and returns whether it did: `Ok(false)` means a newer write
    /// (from any process) is there and must stay. The default applies it unconditionally and
    /// returns true.
    async fn replay_write(
        &self,
        key: &str,
        write: KeyWrite,
        version: WriteVersion,
    ) -> Result<bool> {
        match write {
            KeyWrite::Set { value, ttl } => self.set_versioned(key, value, ttl, version).await?,
            KeyWrite::Delete => {
                self.delete_versioned(key, version).await?;
            }
        }
        Ok(true)
    }

    /// Takes a lock for `ttl` unless another holder has it. The same holder re-acquiring
    /// extends its lease and keeps its token.
    async fn acquire_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<LockOutcome>;

    /// Sets the lease of a lock held by `holder` to `ttl` from now; `None` when `holder` does
    /// not hold it (never extends another holder's lock).
    async fn extend_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LockGrant>>;

    /// Releases a lock held by `holder`; false when `holder` does not hold it (never releases
    /// another holder's lock).
    async fn release_lock(&self, name: &str, holder: &str) -> Result<bool>;

    /// Closes connections and stops background work. Called once by
    /// [`ResilientStorage::shutdown`](crate::ResilientStorage::shutdown).
    async fn shutdown(&self) {}
}
