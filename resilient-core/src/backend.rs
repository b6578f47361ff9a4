//! The extension point: what a storage backend implements. Small on purpose, so third-party
//! backends stay easy to write and the trait rarely changes.

use std::fmt;
use std::sync::Arc;
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
    /// a newer one another process made (see [`BackendExt::replay_write`]).
    pub versioned: bool,
    /// Implements the lock operations.
    pub locks: bool,
    /// Implements [`Backend::atomic`] (increment, set-if-absent, compare-and-set).
    pub atomic: bool,
    /// Keeps replay records durably ([`WriteOptions::missed_by`], [`Backend::claim_journal`]
    /// and [`Backend::settle_journal`]): a write it serves while backends above it are out of
    /// reach leaves, atomically with the write, a record for each of them that outlives the
    /// writing process, and any process may replay it.
    pub journal: bool,
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
            atomic: false,
            journal: false,
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

    /// Sets [`atomic`](Self::atomic).
    pub const fn atomic(mut self, yes: bool) -> Self {
        self.atomic = yes;
        self
    }

    /// Sets [`journal`](Self::journal).
    pub const fn journal(mut self, yes: bool) -> Self {
        self.journal = yes;
        self
    }
}

/// An atomic read-modify-write of one key, for [`Backend::atomic`]. Values are bytes; an
/// increment reads and writes the integer as ASCII decimal (`"42"`), as Redis's INCRBY does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AtomicOp {
    /// Adds `delta` to the integer the key holds (no live value counts as 0) and stores the
    /// sum. `ttl` is set when this creates the key; an existing key keeps its TTL. A value that
    /// is not an integer, or a sum beyond `i64`, is the caller's error (`Error::Rejected`).
    Increment {
        /// What to add (negative to subtract).
        delta: i64,
        /// The TTL of a key this creates.
        ttl: Option<Duration>,
    },
    /// Writes `value` only when the key holds no live value.
    SetIfAbsent {
        /// The value.
        value: Bytes,
        /// Its TTL (`None`: none).
        ttl: Option<Duration>,
    },
    /// Writes `value` only when the key holds exactly `expected` (`None`: no live value).
    CompareAndSet {
        /// The value the key must hold.
        expected: Option<Bytes>,
        /// The value to write.
        value: Bytes,
        /// Its TTL (`None`: none).
        ttl: Option<Duration>,
    },
}

/// How [`Backend::atomic`] treats a key it knows nothing of: no value, no version, no tombstone.
/// A server that restarted empty cannot tell such a key from one never written, so the router
/// asks a backend that may still hold it before a count starts again from zero.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unknown {
    /// As absent.
    Absent,
    /// Change nothing and answer with [`AtomicOutcome::unknown`] set.
    Ask,
    /// Store `value` (nothing for `None`) as the key's current value first, then apply the
    /// operation; a key the backend does know is left as it is.
    Seed(Option<Bytes>),
}

/// What [`Backend::atomic`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AtomicOutcome {
    /// The operation wrote (an increment always does; a set-if-absent or compare-and-set when
    /// its condition held).
    pub applied: bool,
    /// The key's value after the call: the new sum, the value written, or the value that made
    /// the condition fail (`None`: no live value).
    pub value: Option<Bytes>,
    /// The version the key holds after a write: the larger of the one asked and one more than
    /// the one stored, so versions follow the order the backend applied writes (a backend that
    /// is not versioned answers the one asked).
    pub version: WriteVersion,
    /// The time the key has left after the call (`None`: no TTL).
    pub ttl: Option<Duration>,
    /// Under [`Unknown::Ask`]: the key was unknown, and nothing changed.
    pub unknown: bool,
}

impl AtomicOutcome {
    /// An outcome with `unknown` unset.
    pub fn new(
        applied: bool,
        value: Option<Bytes>,
        version: WriteVersion,
        ttl: Option<Duration>,
    ) -> Self {
        Self {
            applied,
            value,
            version,
            ttl,
            unknown: false,
        }
    }

    /// The answer to [`Unknown::Ask`] for a key the backend knows nothing of.
    pub fn unknown() -> Self {
        Self {
            applied: false,
            value: None,
            version: WriteVersion(0),
            ttl: None,
            unknown: true,
        }
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
    /// The backend that granted it (set by the router).
    pub backend: String,
    /// True when the lock lives in a process-local store: other processes do not see it (set by
    /// the router from the backend's [`Capabilities::shared`]).
    pub local: bool,
}

impl LockGrant {
    /// A grant, for backend implementations; the router fills in `backend` and `local`.
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

/// How a [`Backend::write`] is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WriteMode {
    /// Unconditionally: a caller's own write. A [versioned](Capabilities::versioned) backend
    /// stores the version with the value (or, for a delete, as a tombstone).
    #[default]
    Overwrite,
    /// Only over an older version or none: the replay of a write this backend missed while
    /// another served it, which must never overwrite a newer write another process made
    /// meanwhile. Atomic on a versioned backend (see [`rules::replay_applies`]); a backend that
    /// is not versioned applies it unconditionally.
    IfNewer,
}

/// The options of a [`Backend::write`]: the write's version, how to apply it, and the backends
/// that missed it. Built with [`WriteOptions::new`]; more fields may come, each with a default.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WriteOptions {
    /// The write's version, stamped by the router (0 in a storage whose only backend keeps no
    /// versions: nothing compares it).
    pub version: WriteVersion,
    /// Unconditional, or a replay.
    pub mode: WriteMode,
    /// The backends above this one that missed the write (they were out of reach), for a
    /// backend that keeps replay records ([`Capabilities::journal`]): it records the write for
    /// each of them in the same transaction as the write. Empty for every other write, and
    /// ignored by a backend without that capability.
    pub missed_by: MissedBy,
}

impl WriteOptions {
    /// An unconditional write of `version`.
    pub const fn new(version: WriteVersion) -> Self {
        Self {
            version,
            mode: WriteMode::Overwrite,
            missed_by: MissedBy::none(),
        }
    }

    /// Sets [`mode`](Self::mode).
    pub fn mode(mut self, mode: WriteMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets [`missed_by`](Self::missed_by).
    pub fn missed_by(mut self, missed_by: MissedBy) -> Self {
        self.missed_by = missed_by;
        self
    }
}

/// The names of the backends that missed a write, as [`WriteOptions::missed_by`] carries them:
/// shared, so handing them to every write costs no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MissedBy(Option<Arc<[String]>>);

impl MissedBy {
    /// No backend missed the write.
    pub const fn none() -> Self {
        Self(None)
    }

    /// These backends missed it (none when `names` is empty).
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        let names: Arc<[String]> = names.into_iter().collect();
        Self((!names.is_empty()).then_some(names))
    }

    /// Their names.
    pub fn names(&self) -> &[String] {
        self.0.as_deref().unwrap_or_default()
    }

    /// True when no backend missed the write.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// A replay record a journaling backend keeps ([`Capabilities::journal`]), as
/// [`Backend::claim_journal`] hands it out: the key's current state on that backend (its value
/// and TTL left, or a delete when it holds no live value) with that state's version, ready to
/// send to the backend that missed it with [`WriteMode::IfNewer`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalEntry {
    /// The key.
    pub key: String,
    /// What to write.
    pub write: KeyWrite,
    /// Its version.
    pub version: WriteVersion,
}

impl JournalEntry {
    /// A record, for backend implementations.
    pub fn new(key: impl Into<String>, write: KeyWrite, version: WriteVersion) -> Self {
        Self {
            key: key.into(),
            write,
            version,
        }
    }
}

/// One write of a [`Backend::write_many`] batch: the arguments of one [`Backend::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchWrite<'a> {
    /// The key.
    pub key: &'a str,
    /// The value to set, or the delete.
    pub write: KeyWrite,
    /// Its version and mode.
    pub options: WriteOptions,
}

impl<'a> BatchWrite<'a> {
    /// One write of a batch.
    pub fn new(key: &'a str, write: KeyWrite, options: WriteOptions) -> Self {
        Self {
            key,
            write,
            options,
        }
    }
}

/// What a [`Backend::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WriteOutcome {
    /// The write was applied; false only under [`WriteMode::IfNewer`] when a newer version is
    /// there (and must stay).
    pub applied: bool,
    /// For a delete: a live value was there before it.
    pub existed: bool,
}

impl WriteOutcome {
    /// The write was applied; for a delete, `existed` says whether there was a live value.
    pub const fn applied(existed: bool) -> Self {
        Self {
            applied: true,
            existed,
        }
    }

    /// A replay refused: a newer version is there.
    pub const fn superseded() -> Self {
        Self {
            applied: false,
            existed: true,
        }
    }
}

/// The rules every shipped backend follows for versions and fencing tokens, for backends to
/// call instead of re-deriving them (the conformance suite checks the results).
pub mod rules {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::{FencingToken, WriteVersion};

    /// Whether a replayed write of `incoming` may be applied over what the key holds: only
    /// over no version (a key never written, or whose tombstone has expired) or an older one.
    /// An equal version is the same write already applied: refused, so a replay is idempotent.
    pub fn replay_applies(stored: Option<WriteVersion>, incoming: WriteVersion) -> bool {
        stored.is_none_or(|stored| stored < incoming)
    }

    /// The fencing token of a new grant of a lock whose last token was `last`: the granting
    /// clock in microseconds since the Unix epoch (`now_micros`), or one more than `last` when
    /// that is larger. So tokens grow for a lock name even when it moves between backends or a
    /// server forgets its last token, given clocks in agreement to within the time between
    /// grants. The same holder re-acquiring or extending keeps its token.
    pub fn next_fencing_token(now_micros: u64, last: Option<FencingToken>) -> FencingToken {
        FencingToken(last.map_or(now_micros, |last| now_micros.max(last.0.saturating_add(1))))
    }

    /// This machine's clock in microseconds since the Unix epoch, for
    /// [`next_fencing_token`] in a backend that grants on the client side.
    pub fn now_micros() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, micros)
    }

    /// `d` in whole microseconds, saturating; in 64 bits (`as_micros` divides a 128-bit
    /// number, as much time as a clock reading).
    pub(crate) fn micros(d: std::time::Duration) -> u64 {
        d.as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(d.subsec_micros()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_replay_applies_only_over_an_older_version_or_none() {
            assert!(replay_applies(None, WriteVersion(5)));
            assert!(replay_applies(Some(WriteVersion(4)), WriteVersion(5)));
            assert!(!replay_applies(Some(WriteVersion(5)), WriteVersion(5)));
            assert!(!replay_applies(Some(WriteVersion(6)), WriteVersion(5)));
        }

        #[test]
        fn tokens_follow_the_clock_and_never_go_back() {
            assert_eq!(next_fencing_token(100, None), FencingToken(100));
            assert_eq!(
                next_fencing_token(100, Some(FencingToken(50))),
                FencingToken(100)
            );
            assert_eq!(
                next_fencing_token(100, Some(FencingToken(100))),
                FencingToken(101)
            );
            assert_eq!(
                next_fencing_token(100, Some(FencingToken(500))),
                FencingToken(501)
            );
            assert_eq!(
                next_fencing_token(0, Some(FencingToken(u64::MAX))),
                FencingToken(u64::MAX)
            );
        }
    }
}

/// A storage backend.
///
/// Required: [`name`](Self::name), [`scheme`](Self::scheme),
/// [`capabilities`](Self::capabilities), [`health_check`](Self::health_check),
/// [`get`](Self::get) and [`write`](Self::write). Every other operation is optional: its
/// default returns [`Error::Unsupported`](crate::Error::Unsupported), and the capability that
/// announces it (e.g. [`Capabilities::locks`]) keeps the router from calling it. New operations
/// arrive the same way, so adding one never breaks a backend. Call-site conveniences (`set`,
/// `delete`, `replay_write`) live in [`BackendExt`].
///
/// Keys, lock names, holders, values and TTLs reach a backend already validated by the router
/// (see [`KeyPolicy`](crate::KeyPolicy)); a backend must store every valid key and value
/// byte-exactly. Failures of the server or the connection are returned as
/// [`Error::Backend`](crate::Error::Backend) so the router counts them and fails over; a request
/// the server refuses as malformed is [`Error::Rejected`](crate::Error::Rejected), which never
/// fails over. A backend need not bound its own calls in time: the router runs every call under
/// a timeout and may drop the future at any await point, so implementations must be
/// cancel-safe.
///
/// The crate docs' "Writing a backend" walks through one; run
/// [`testing::conformance`](crate::testing::conformance) (feature `testing`) against it.
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

    /// Reads a key: `None` when it is absent, expired or deleted.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Reads a key at once, without a future, when this backend can (an in-process store whose
    /// read is ready without waiting); `None` (the default) sends the read to
    /// [`get`](Self::get). The router tries it first on every read of a backend that is not
    /// [shared](Capabilities::shared) (it skips the question for one that is), so it must never
    /// block or wait: it saves the allocation of `get`'s future, which on an in-process store
    /// costs as much as the read.
    fn try_get_now(&self, key: &str) -> Option<Result<Option<Bytes>>> {
        let _ = key;
        None
    }

    /// Writes or deletes a key at once, without a future, when this backend can (an in-process
    /// store whose write is applied before it returns); `None` (the default) sends the write to
    /// [`write`](Self::write). The router tries it first on every set and delete (it may skip
    /// the question for a [shared](Capabilities::shared) backend), so it must never wait for
    /// I/O or for another task. It must change nothing when it answers `None` or
    /// an error: the router may then send the same write to `write`.
    fn try_write_now(
        &self,
        key: &str,
        write: &KeyWrite,
        options: &WriteOptions,
    ) -> Option<Result<WriteOutcome>> {
        let _ = (key, write, options);
        None
    }

    /// Writes or deletes a key. A [`KeyWrite::Set`]'s `ttl`, when given, replaces any previous
    /// TTL; `None` keeps the key until it is deleted. `options` carry the write's version and
    /// [mode](WriteMode): a [versioned](Capabilities::versioned) backend keeps the version with
    /// the key (a delete leaves it as a tombstone for a bounded time; a backend may keep an
    /// expired value's version too, as PostgreSQL does) and applies a [`WriteMode::IfNewer`] write only by [`rules::replay_applies`],
    /// atomically. A backend that is not versioned ignores both and applies every write.
    async fn write(
        &self,
        key: &str,
        write: KeyWrite,
        options: WriteOptions,
    ) -> Result<WriteOutcome>;

    /// Reads several keys at once: one answer per key, in order. An `Err` for the whole call
    /// says the backend failed (the router fails the batch over to the next backend); an `Err`
    /// in the vector fails over that key alone (a Redis Cluster node down, say). The default
    /// reads one key after another and fails the call at the first error: override it with
    /// one round trip (MGET, `= ANY($1)`).
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Result<Option<Bytes>>>> {
        let mut answers = Vec::with_capacity(keys.len());
        for key in keys {
            answers.push(Ok(self.get(key).await?));
        }
        Ok(answers)
    }

    /// Writes or deletes several keys, each as [`write`](Self::write) would: one answer per
    /// write, in order, errors as for [`get_many`](Self::get_many). Not atomic: each write
    /// stands alone. The default writes one after another and fails the call at the first
    /// error: override it with one round trip (a pipeline, one statement).
    async fn write_many(&self, writes: Vec<BatchWrite<'_>>) -> Result<Vec<Result<WriteOutcome>>> {
        let mut answers = Vec::with_capacity(writes.len());
        for BatchWrite {
            key,
            write,
            options,
        } in writes
        {
            answers.push(Ok(self.write(key, write, options).await?));
        }
        Ok(answers)
    }

    /// Applies `op` to `key` atomically (one script, one statement, one locked update), with
    /// `options.version` as the version asked (see [`AtomicOutcome::version`]) and `unknown`
    /// saying what to do with a key the backend knows nothing of. Optional
    /// ([`Capabilities::atomic`]).
    async fn atomic(
        &self,
        key: &str,
        op: AtomicOp,
        unknown: Unknown,
        options: WriteOptions,
    ) -> Result<AtomicOutcome> {
        let _ = (key, op, unknown, options);
        Err(crate::Error::unsupported(
            self.name(),
            crate::Operation::Atomic,
        ))
    }

    /// Takes a lock for `ttl` unless another holder has it. The same holder re-acquiring
    /// extends its lease and keeps its token; a new grant's token follows
    /// [`rules::next_fencing_token`]. Optional ([`Capabilities::locks`]).
    async fn acquire_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<LockOutcome> {
        let _ = (name, holder, ttl);
        Err(crate::Error::unsupported(
            self.name(),
            crate::Operation::AcquireLock,
        ))
    }

    /// Sets the lease of a lock held by `holder` to `ttl` from now; `None` when `holder` does
    /// not hold it (never extends another holder's lock). Optional ([`Capabilities::locks`]).
    async fn extend_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LockGrant>> {
        let _ = (name, holder, ttl);
        Err(crate::Error::unsupported(
            self.name(),
            crate::Operation::ExtendLock,
        ))
    }

    /// Releases a lock held by `holder`; false when `holder` does not hold it (never releases
    /// another holder's lock). Optional ([`Capabilities::locks`]).
    async fn release_lock(&self, name: &str, holder: &str) -> Result<bool> {
        let _ = (name, holder);
        Err(crate::Error::unsupported(
            self.name(),
            crate::Operation::ReleaseLock,
        ))
    }

    /// Claims up to `max` replay records kept for the backend named `target` that no claim
    /// holds (or whose claim is older than `lease`), marks them with `claim` for `lease`, and
    /// answers them ([`JournalEntry`]). Several processes may claim at once: each record goes
    /// to one. Optional ([`Capabilities::journal`]).
    async fn claim_journal(
        &self,
        target: &str,
        claim: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<JournalEntry>> {
        let _ = (target, claim, max, lease);
        Err(crate::Error::unsupported(
            self.name(),
            crate::Operation::Journal,
        ))
    }

    /// Deletes the records of `keys` for `target` that `claim` still holds: a record written
    /// again since it was claimed (a newer write missed by `target`) stays for the next claim.
    /// Optional ([`Capabilities::journal`]).
    async fn settle_journal(&self, target: &str, claim: u64, keys: &[&str]) -> Result<()> {
        let _ = (target, claim, keys);
        Err(crate::Error::unsupported(
            self.name(),
            crate::Operation::Journal,
        ))
    }

    /// Closes connections and stops background work. Called once by
    /// [`ResilientStorage::shutdown`](crate::ResilientStorage::shutdown).
    async fn shutdown(&self) {}
}

/// Call-site conveniences over [`Backend::write`], for every backend (tests, tools, the router):
/// nothing here is for a backend to implement.
#[async_trait]
pub trait BackendExt: Backend {
    /// Writes a key unconditionally with version 0 (no version of its own).
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.set_versioned(key, value, ttl, WriteVersion(0)).await
    }

    /// Removes a key unconditionally with version 0; true when a live value was there.
    async fn delete(&self, key: &str) -> Result<bool> {
        self.delete_versioned(key, WriteVersion(0)).await
    }

    /// Writes a key unconditionally, stamped with `version`.
    async fn set_versioned(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        version: WriteVersion,
    ) -> Result<()> {
        self.write(
            key,
            KeyWrite::Set { value, ttl },
            WriteOptions::new(version),
        )
        .await
        .map(|_| ())
    }

    /// Removes a key unconditionally, leaving `version` as a tombstone on a versioned backend;
    /// true when a live value was there.
    async fn delete_versioned(&self, key: &str, version: WriteVersion) -> Result<bool> {
        self.write(key, KeyWrite::Delete, WriteOptions::new(version))
            .await
            .map(|outcome| outcome.existed)
    }

    /// Replays a write this backend missed: applied only over an older version or none (on a
    /// versioned backend); true when it was.
    async fn replay_write(
        &self,
        key: &str,
        write: KeyWrite,
        version: WriteVersion,
    ) -> Result<bool> {
        let options = WriteOptions::new(version).mode(WriteMode::IfNewer);
        self.write(key, write, options)
            .await
            .map(|outcome| outcome.applied)
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}
