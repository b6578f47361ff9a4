//! The in-process backend of resilient-storage, on moka.
//!
//! - Bounded by bytes (key + value + a fixed overhead per entry), with LRU eviction: a write to
//!   a full store always lands and evicts the least recently used entries (moka's default
//!   TinyLFU admission could refuse a new entry, which a fallback store must not do). Evictions
//!   are counted in [`MemoryBackend::evictions`].
//! - TTL per entry; a new set replaces the old TTL. Expiry is decided on tokio's clock, so tests
//!   can pause time; moka reclaims the memory of expired entries on its own schedule.
//! - Every call is answered at once, on moka's synchronous cache: the router reads and writes
//!   it without a future ([`Backend::try_get_now`], [`Backend::try_write_now`]). No call waits
//!   for I/O; when many threads write at once faster than moka's bookkeeping drains its write
//!   log, moka pauses the writing thread in 50 µs steps until it has room.
//! - Locks with expiry, holder checks, and fencing tokens that only grow: microseconds since
//!   the Unix epoch or one more than the last token, as the Redis and PostgreSQL backends issue
//!   them.
//!
//! Registered for `memory://` (options `max_bytes`, `name`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};
use moka::sync::Cache;
use resilient_core::key::MAX_TTL;
use resilient_core::{
    AtomicOp, AtomicOutcome, Backend, BackendUrl, Bytes, Capabilities, Error, FencingToken,
    HealthProbe, KeyWrite, LockGrant, LockOutcome, Operation, Result, Unknown, WriteOptions,
    WriteOutcome, async_trait, rules,
};
use tokio::time::Instant;

/// Default capacity: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

// Bookkeeping bytes counted per entry on top of key and value.
const ENTRY_OVERHEAD: u64 = 64;

/// Settings of a [`MemoryBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Name in reports. Default `memory`.
    pub name: String,
    /// Capacity in bytes. Default [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            name: "memory".to_owned(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl MemoryConfig {
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the capacity in bytes.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Reads `max_bytes` and `name` from a `memory://` URL.
    pub fn from_url(url: &BackendUrl) -> Result<Self> {
        let mut config = Self::default();
        if !url.hosts().is_empty() || !matches!(url.path(), "" | "/") {
            return Err(Error::config(
                "memory.url",
                "memory:// takes no host or path, only options",
            ));
        }
        let mut options = url.options("memory");
        if let Some(max) = options.number("max_bytes", 1..=u64::MAX)? {
            config.max_bytes = max;
        }
        if let Some(name) = options.string("name").filter(|n| !n.is_empty()) {
            config.name = name;
        }
        options.finish()?;
        Ok(config)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    expires_at: Option<Instant>,
}

impl Entry {
    /// The time it has left, from tokio's clock (which tests may pause), for moka's expiry.
    fn ttl(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// The value if it has not expired; the clock is read only for an entry that can expire.
    fn live_value(self) -> Option<Bytes> {
        (self.expires_at.is_none() || self.live(Instant::now())).then_some(self.value)
    }
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        entry: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        entry.ttl()
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        entry.ttl()
    }
}

#[derive(Debug)]
struct Lease {
    holder: String,
    token: u64,
    expires_at: Instant,
}

#[derive(Debug, Default)]
struct Leases {
    by_name: HashMap<String, Lease>,
    purge_at: usize,
}

/// The in-process backend. Cheap to share behind an `Arc`, also between storages: shutting one
/// storage down leaves the store to the others (it is freed when the last `Arc` goes).
pub struct MemoryBackend {
    config: MemoryConfig,
    cache: Cache<String, Entry>,
    leases: Mutex<Leases>,
    evictions: Arc<AtomicU64>,
}

// Sizes and counts only: never a key, a value or a lock holder.
impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("name", &self.config.name)
            .field("max_bytes", &self.config.max_bytes)
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .field("locks", &self.leases().by_name.len())
            .field("evictions", &self.evictions.load(Ordering::Relaxed))
            .finish()
    }
}

// The last token issued by any store in the process: tokens only grow.
static LAST_TOKEN: AtomicU64 = AtomicU64::new(0);

/// Microseconds since the Unix epoch, or one more than the last token when that is larger: the
/// same rule as the Redis and PostgreSQL backends, so tokens stay comparable when a lock moves
/// between them.
fn next_token() -> u64 {
    let now = rules::now_micros();
    let next = |last: u64| rules::next_fencing_token(now, Some(FencingToken(last))).0;
    let previous = LAST_TOKEN
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(next(last)))
        .unwrap_or_else(|last| last);
    next(previous)
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl MemoryBackend {
    /// A store with the given settings.
    pub fn new(config: MemoryConfig) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(weight(key, &entry.value)).unwrap_or(u32::MAX)
            })
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self {
            config,
            cache,
            leases: Mutex::new(Leases::default()),
            evictions,
        }
    }

    /// Entries evicted so far to stay within capacity.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The capacity in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    /// `set`: refuses an entry larger than the store.
    fn store(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let size = weight(key, &value);
        if size > self.config.max_bytes || size > u64::from(u32::MAX) {
            // The request is at fault, not the store: a caller error, which no breaker counts.
            return Err(Error::Rejected {
                backend: self.config.name.clone(),
                operation: Operation::Set,
                message: format!(
                    "an entry of {size} bytes does not fit in a store of {} bytes",
                    self.config.max_bytes
                ),
            });
        }
        let expires_at = ttl.map(|ttl| deadline(Instant::now(), ttl));
        self.cache
            .insert(key.to_owned(), Entry { value, expires_at });
        Ok(())
    }

    /// `delete`: true when a live entry was there.
    fn remove(&self, key: &str) -> bool {
        let now = Instant::now();
        self.cache.remove(key).is_some_and(|entry| entry.live(now))
    }

    /// A set or a delete, applied before it returns.
    fn apply(&self, key: &str, write: &KeyWrite) -> Option<Result<WriteOutcome>> {
        match write {
            KeyWrite::Set { value, ttl } => Some(
                self.store(key, value.clone(), *ttl)
                    .map(|()| WriteOutcome::applied(false)),
            ),
            KeyWrite::Delete => Some(Ok(WriteOutcome::applied(self.remove(key)))),
            _ => None,
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grant(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> LockGrant {
        let mut grant = LockGrant::new(name, holder, FencingToken(token), ttl);
        // The router says so too; a direct caller learns it here.
        grant.local = true;
        grant
    }
}

impl MemoryBackend {
    /// What `op` makes of the live entry `current`: the outcome, and the entry to store.
    fn decide(
        &self,
        key: &str,
        current: Option<&Entry>,
        op: AtomicOp,
        now: Instant,
    ) -> Result<(AtomicOutcome, Option<Entry>)> {
        let rejected = |message: &str| Error::Rejected {
            backend: self.config.name.clone(),
            operation: Operation::Atomic,
            message: message.to_owned(),
        };
        let remaining =
            |entry: &Entry| entry.expires_at.map(|at| at.saturating_duration_since(now));
        let entry = |value: Bytes, ttl: Option<Duration>| Entry {
            value,
            expires_at: ttl.map(|ttl| deadline(now, ttl)),
        };
        let (applied, value, ttl) = match op {
            AtomicOp::Increment { delta, ttl } => {
                let count = match current {
                    None => 0,
                    Some(e) => std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|v| v.parse::<i64>().ok())
                        .ok_or_else(|| rejected("the value is not an integer"))?,
                };
                let sum = count
                    .checked_add(delta)
                    .ok_or_else(|| rejected("the sum is beyond a 64-bit integer"))?;
                let ttl = current.map_or(ttl, remaining);
                (true, Bytes::from(sum.to_string()), ttl)
            }
            AtomicOp::SetIfAbsent { value, ttl } => match current {
                Some(e) => (false, e.value.clone(), remaining(e)),
                None => (true, value, ttl),
            },
            AtomicOp::CompareAndSet {
                expected,
                value,
                ttl,
            } => match (current, expected) {
                (None, None) => (true, value, ttl),
                (Some(e), Some(expected)) if e.value == expected => (true, value, ttl),
                (Some(e), _) => (false, e.value.clone(), remaining(e)),
                (None, Some(_)) => {
                    return Ok((
                        AtomicOutcome::new(false, None, resilient_core::WriteVersion(0), None),
                        None,
                    ));
                }
            },
            _ => return Err(Error::unsupported(&self.config.name, Operation::Atomic)),
        };
        if applied && weight(key, &value) > self.config.max_bytes {
            return Err(rejected("the entry does not fit in the store"));
        }
        let outcome = AtomicOutcome::new(
            applied,
            Some(value.clone()),
            resilient_core::WriteVersion(0),
            ttl,
        );
        Ok((outcome, applied.then(|| entry(value, ttl))))
    }
}

fn weight(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

fn deadline(now: Instant, ttl: Duration) -> Instant {
    // The router bounds TTLs to 100 years; the fallback keeps a direct caller from panicking.
    now.checked_add(ttl).unwrap_or(now + MAX_TTL)
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn scheme(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .native_ttl(true)
            .locks(true)
            .atomic(true)
    }

    async fn health_check(&self) -> Result<HealthProbe> {
        Ok(HealthProbe::Healthy)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.cache.get(key).and_then(Entry::live_value))
    }

    // Every read is answered at once.
    fn try_get_now(&self, key: &str) -> Option<Result<Option<Bytes>>> {
        Some(Ok(self.cache.get(key).and_then(Entry::live_value)))
    }

    // Process-local, so versions do not matter here: every write applies.
    async fn write(
        &self,
        key: &str,
        write: KeyWrite,
        _options: WriteOptions,
    ) -> Result<WriteOutcome> {
        self.apply(key, &write)
            .unwrap_or_else(|| Err(Error::unsupported(&self.config.name, Operation::Set)))
    }

    // Every set and delete is applied at once.
    fn try_write_now(
        &self,
        key: &str,
        write: &KeyWrite,
        _options: &WriteOptions,
    ) -> Option<Result<WriteOutcome>> {
        self.apply(key, write)
    }

    // One entry computed at a time per key (moka's `and_compute_with`). The store loses its
    // data only with the process, so a key it does not hold is absent.
    async fn atomic(
        &self,
        key: &str,
        op: AtomicOp,
        _unknown: Unknown,
        options: WriteOptions,
    ) -> Result<AtomicOutcome> {
        let now = Instant::now();
        let mut answer = None;
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let live = current.map(|e| e.into_value()).filter(|e| e.live(now));
                let decided = self.decide(key, live.as_ref(), op, now);
                let put = decided.as_ref().ok().and_then(|(_, entry)| entry.clone());
                answer = Some(decided.map(|(outcome, _)| outcome));
                match put {
                    Some(entry) => moka::ops::compute::Op::Put(entry),
                    None => moka::ops::compute::Op::Nop,
                }
            });
        let mut outcome = answer.unwrap_or_else(|| {
            Err(Error::backend(
                &self.config.name,
                Operation::Atomic,
                "not computed",
            ))
        })?;
        outcome.version = options.version;
        Ok(outcome)
    }

    async fn acquire_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<LockOutcome> {
        let now = Instant::now();
        let mut leases = self.leases();
        if leases.by_name.len() >= leases.purge_at {
            leases.by_name.retain(|_, lease| lease.expires_at > now);
            leases.purge_at = (leases.by_name.len() * 2).max(1024);
        }
        let token = match leases.by_name.get_mut(name) {
            Some(lease) if lease.expires_at > now && lease.holder != holder => {
                return Ok(LockOutcome::Held {
                    holder: Some(lease.holder.clone()),
                    remaining: Some(lease.expires_at - now),
                });
            }
            Some(lease) if lease.expires_at > now => {
                lease.expires_at = deadline(now, ttl);
                lease.token
            }
            _ => {
                let token = next_token();
                leases.by_name.insert(
                    name.to_owned(),
                    Lease {
                        holder: holder.to_owned(),
                        token,
                        expires_at: deadline(now, ttl),
                    },
                );
                token
            }
        };
        Ok(LockOutcome::Acquired(self.grant(name, holder, token, ttl)))
    }

    async fn extend_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LockGrant>> {
        let now = Instant::now();
        let mut leases = self.leases();
        Ok(match leases.by_name.get_mut(name) {
            Some(lease) if lease.expires_at > now && lease.holder == holder => {
                lease.expires_at = deadline(now, ttl);
                Some(self.grant(name, holder, lease.token, ttl))
            }
            _ => None,
        })
    }

    async fn release_lock(&self, name: &str, holder: &str) -> Result<bool> {
        let now = Instant::now();
        let mut leases = self.leases();
        match leases.by_name.get(name) {
            Some(lease) if lease.expires_at > now && lease.holder == holder => {
                leases.by_name.remove(name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    // Nothing to close, and another storage may share this store: its memory goes with the
    // last `Arc`.
    async fn shutdown(&self) {}
}

async fn build(url: BackendUrl) -> Result<Arc<MemoryBackend>> {
    Ok(Arc::new(MemoryBackend::new(MemoryConfig::from_url(&url)?)))
}

resilient_core::register_backend!(schemes: ["memory"], build: build);

#[cfg(test)]
mod tests {
    use super::*;
    use resilient_core::BackendExt;

    #[tokio::test(start_paused = true)]
    async fn ttl_follows_tokios_clock() {
        let m = MemoryBackend::default();
        m.set("k", Bytes::from_static(b"v"), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(m.get("k").await.unwrap().is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(m.get("k").await.unwrap().is_none());
        assert!(
            !m.delete("k").await.unwrap(),
            "an expired key does not count as deleted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_set_replaces_the_old_ttl() {
        let m = MemoryBackend::default();
        m.set("k", Bytes::from_static(b"1"), Some(Duration::from_secs(1)))
            .await
            .unwrap();
        m.set("k", Bytes::from_static(b"2"), None).await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(m.get("k").await.unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[tokio::test(start_paused = true)]
    async fn lock_leases_expire_on_the_clock_and_tokens_grow() {
        let m = MemoryBackend::default();
        let a = m
            .acquire_lock("l", "a", Duration::from_secs(5))
            .await
            .unwrap();
        let a = a.grant().unwrap().clone();
        assert!(a.local);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(
            !m.acquire_lock("l", "b", Duration::from_secs(5))
                .await
                .unwrap()
                .is_acquired()
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let b = m
            .acquire_lock("l", "b", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(b.grant().unwrap().token > a.token);
        assert!(
            m.extend_lock("l", "a", Duration::from_secs(5))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn capacity_is_bounded_by_bytes_and_evicts_least_recently_used() {
        let m = MemoryBackend::new(MemoryConfig::default().max_bytes(100_000));
        let value = Bytes::from(vec![7_u8; 1_000]);
        for i in 0..1_000 {
            m.set(&format!("k{i}"), value.clone(), None).await.unwrap();
        }
        m.cache.run_pending_tasks();
        assert!(
            m.cache.weighted_size() <= 100_000,
            "{}",
            m.cache.weighted_size()
        );
        assert!(m.evictions() > 0);
        assert!(
            m.get("k999").await.unwrap().is_some(),
            "the newest write is kept"
        );
    }

    #[tokio::test]
    async fn a_value_larger_than_the_store_is_a_caller_error() {
        let m = MemoryBackend::new(MemoryConfig::default().max_bytes(1_000));
        let err = m
            .set("k", Bytes::from(vec![0_u8; 2_000]), None)
            .await
            .unwrap_err();
        assert!(
            err.is_caller_error(),
            "the request is at fault, not the store: {err}"
        );
        assert!(m.get("k").await.unwrap().is_none());
    }

    #[test]
    fn url_options_are_parsed_and_unknown_ones_refused() {
        let url = BackendUrl::parse("memory://?max_bytes=1024&name=cache").unwrap();
        let config = MemoryConfig::from_url(&url).unwrap();
        assert_eq!((config.max_bytes, config.name.as_str()), (1024, "cache"));
        let bad = BackendUrl::parse("memory://?max_bytes=lots").unwrap();
        assert!(MemoryConfig::from_url(&bad).is_err());
        let unknown = BackendUrl::parse("memory://?colour=red").unwrap();
        let err = MemoryConfig::from_url(&unknown).unwrap_err().to_string();
        assert!(err.contains("memory.colour"), "{err}");
    }

    #[tokio::test]
    async fn debug_shows_sizes_never_keys_values_or_holders() {
        let m = MemoryBackend::default();
        m.set("secret-key", Bytes::from_static(b"secret-value"), None)
            .await
            .unwrap();
        m.acquire_lock("secret-lock", "secret-holder", Duration::from_secs(5))
            .await
            .unwrap();
        let debug = format!("{m:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("entries"), "{debug}");
    }

    #[tokio::test]
    async fn a_store_shared_by_two_storages_survives_the_shutdown_of_one() {
        let shared: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        let storage = |_| {
            resilient_core::ResilientStorage::builder()
                .backend(shared.clone(), 1)
                .build()
        };
        let (a, b) = (storage(1).await.unwrap(), storage(2).await.unwrap());
        a.set("k", "v", None).await.unwrap();
        a.shutdown().await;
        assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
}
