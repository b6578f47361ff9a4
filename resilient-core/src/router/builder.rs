//! Building a [`ResilientStorage`]: backends by instance or URL, strategy, breaker, health,
//! timeouts, memory fallback and lock policy.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::locks::Locks;
use super::replay_log::{ReplayLog, VersionClock};
use super::slot::{Slot, monitor, replayer};
use super::status::Active;
use super::{Inner, Lifecycle, LockFailover, Policy, ResilientStorage};
use crate::backend::{Backend, MissedBy};
use crate::breaker::BreakerConfig;
use crate::error::{Error, Result};
use crate::events::StorageEvent;
use crate::health::HealthConfig;
use crate::key::KeyPolicy;
use crate::limits;
use crate::registry::{self, BackendFactory};
use crate::strategy::{MAX_BACKENDS, SelectionStrategy, Strategy};
use crate::url::BackendUrl;

/// Priority of the memory fallback that [`StorageBuilder::build`] adds.
pub const MEMORY_FALLBACK_PRIORITY: u32 = 999;

/// Default time one backend gets to answer one call.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// Default time the whole failover chain of one call may take.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

/// Default failback delay of [`Strategy::Failover`].
pub const DEFAULT_FAILBACK_DELAY: Duration = Duration::from_secs(2);

/// Default bound on the writes kept for replay, per backend.
pub const DEFAULT_MAX_REPLAY_RECORDS: usize = 100_000;

/// Default bound on the bytes of the writes kept for replay, per backend: 128 MiB.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 128 << 20;

/// Default TTL cap of write-through copies to the memory store.
pub const DEFAULT_MEMORY_TTL_CAP: Duration = Duration::from_secs(300);

/// Where a write goes before it is acknowledged, and where copies go after.
///
/// | policy | acknowledged once | a read after failover | cost on a set |
/// |---|---|---|---|
/// | `WriteBehind` (default) | the serving backend has it | finds every value written before (copies pending when the primary died are read from memory, a miss on a recovered primary asks the secondary) | a record in memory; one more read on a miss |
/// | `WriteThrough` | the serving backend and every backend below it have it (or a copy failed and was kept for replay) | the same | the slowest backend's write; one more read on a miss |
/// | `Selected` | the serving backend has it | finds nothing written before the outage | none |
///
/// The README's "What you can rely on" has the whole table with the tests behind each row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WritePolicy {
    /// To the backend the strategy selects (failing over as needed), then copied in the
    /// background to every backend below it that is shared across processes (PostgreSQL behind
    /// Redis), each copy applied only over an older version. Until a copy has landed, reads on
    /// that backend are answered from it, so a failover finds every value written before the
    /// primary died; and when the serving backend misses a key, the next shared backend is
    /// asked, so a primary that restarted empty still reads what its copy holds. Copies live in
    /// this process's memory until they land: a crash loses the ones not yet sent.
    #[default]
    WriteBehind,
    /// To the backend the strategy selects only. Backends above it that missed the write get it
    /// replayed when they recover, but a fallback holds only what was written while it served:
    /// the choice for a pure cache.
    Selected,
    /// To the backend the strategy selects, then a copy to every available backend below it,
    /// all at once and within the call's deadline, before the call returns. Copies to the
    /// memory store get a TTL of at most `memory_ttl_cap`. A copy that fails or does not finish
    /// in time is kept for replay. A miss asks the next shared backend, as under `WriteBehind`.
    WriteThrough,
}

/// Per-backend options: priority, an optional name, and whether it is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendOptions {
    /// Priority: 1 is tried first.
    pub priority: u32,
    /// Name in reports and events; defaults to the backend's own name.
    pub name: Option<String>,
    /// A disabled backend is left out of the storage (and not even built from its URL).
    pub enabled: bool,
}

impl BackendOptions {
    /// Enabled, with the given priority and the backend's own name.
    pub fn new(priority: u32) -> Self {
        Self {
            priority,
            name: None,
            enabled: true,
        }
    }

    /// Sets the name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Enables or disables the backend.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }
}

enum Source {
    Instance(Arc<dyn Backend>),
    Url(BackendUrl, &'static BackendFactory),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Instance(b) => f.debug_tuple("Instance").field(&b.name()).finish(),
            Source::Url(url, _) => f.debug_tuple("Url").field(url).finish(),
        }
    }
}

/// Builds a [`ResilientStorage`]. From [`ResilientStorage::builder`].
#[derive(Debug)]
pub struct StorageBuilder {
    entries: Vec<(Source, BackendOptions)>,
    strategy: Option<Arc<dyn SelectionStrategy>>,
    builtin: Strategy,
    failback_delay: Duration,
    breaker: BreakerConfig,
    health: HealthConfig,
    attempt_timeout: Duration,
    deadline: Duration,
    memory_fallback: bool,
    local_locks: bool,
    keys: KeyPolicy,
    event_capacity: usize,
    write_policy: WritePolicy,
    memory_ttl_cap: Duration,
    max_replay_records: usize,
    max_replay_bytes: usize,
    lock_failover: LockFailover,
    fail_safe_memory: u64,
}

impl Default for StorageBuilder {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            strategy: None,
            builtin: Strategy::default(),
            failback_delay: DEFAULT_FAILBACK_DELAY,
            breaker: BreakerConfig::default(),
            health: HealthConfig::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            memory_fallback: true,
            local_locks: false,
            keys: KeyPolicy::default(),
            event_capacity: 1024,
            write_policy: WritePolicy::default(),
            memory_ttl_cap: DEFAULT_MEMORY_TTL_CAP,
            max_replay_records: DEFAULT_MAX_REPLAY_RECORDS,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            lock_failover: LockFailover::Never,
            fail_safe_memory: super::DEFAULT_FAIL_SAFE_MEMORY,
        }
    }
}

impl StorageBuilder {
    /// Adds a backend instance with a priority (1 is tried first).
    pub fn backend(self, backend: Arc<dyn Backend>, priority: u32) -> Self {
        self.backend_with(backend, BackendOptions::new(priority))
    }

    /// Adds a backend instance with options.
    pub fn backend_with(mut self, backend: Arc<dyn Backend>, options: BackendOptions) -> Self {
        self.entries.push((Source::Instance(backend), options));
        self
    }

    /// Adds a backend by URL; its scheme is looked up in the [registry](crate::registry).
    pub fn backend_url(self, url: &str, priority: u32) -> Result<Self> {
        self.backend_url_with(url, BackendOptions::new(priority))
    }

    /// Adds a backend by URL with options.
    pub fn backend_url_with(mut self, url: &str, options: BackendOptions) -> Result<Self> {
        let url = BackendUrl::parse(url)?;
        let factory = registry::lookup(url.scheme())?;
        self.entries.push((Source::Url(url, factory), options));
        Ok(self)
    }

    /// Chooses a built-in selection strategy. Default [`Strategy::Failover`].
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.builtin = strategy;
        self.strategy = None;
        self
    }

    /// Uses a custom selection strategy.
    pub fn custom_strategy(mut self, strategy: Arc<dyn SelectionStrategy>) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// How long a higher-priority backend must be available before [`Strategy::Failover`]
    /// moves back to it. Default 2 s; at most 1 day.
    pub fn failback_delay(mut self, delay: Duration) -> Self {
        self.failback_delay = delay;
        self
    }

    /// Circuit breaker settings, the same for every backend.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Health check settings, the same for every backend.
    pub fn health(mut self, config: HealthConfig) -> Self {
        self.health = config;
        self
    }

    /// Time one backend gets to answer one call. Default 500 ms; 1 ms to 1 h.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Time the whole failover chain of one call may take. Default 2 s; 1 ms to 1 h.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Adds the in-process memory backend at priority 999 as the last line of defence
    /// (default true), unless a process-local backend (one not
    /// [`shared`](crate::Capabilities::shared)) was added by hand. Needs a backend registered
    /// for `memory://` (the facade's `memory` feature).
    pub fn memory_fallback(mut self, enabled: bool) -> Self {
        self.memory_fallback = enabled;
        self
    }

    /// Lets backends that are not shared across processes (the memory store) hold locks: as the
    /// lock authority when one is the highest-priority backend that can hold locks (a
    /// memory-only storage), or as a fallback under [`LockFailover::AfterOutage`]. Off by
    /// default. A grant from such a backend has [`LockGrant::local`](crate::LockGrant::local)
    /// set: it excludes holders in this process only.
    pub fn local_locks(mut self, enabled: bool) -> Self {
        self.local_locks = enabled;
        self
    }

    /// Key and value limits and the namespace prefix.
    pub fn keys(mut self, policy: KeyPolicy) -> Self {
        self.keys = policy;
        self
    }

    /// Where writes go. Default [`WritePolicy::WriteBehind`].
    pub fn write_policy(mut self, policy: WritePolicy) -> Self {
        self.write_policy = policy;
        self
    }

    /// The longest TTL of write-through copies to the memory store. Default 5 minutes; 1 ms to
    /// 100 years.
    pub fn memory_ttl_cap(mut self, cap: Duration) -> Self {
        self.memory_ttl_cap = cap;
        self
    }

    /// How many writes (distinct keys) each backend's replay log keeps: the writes it missed
    /// during an outage and the write-behind copies on their way to it. Beyond it a write of a
    /// new key is counted as lost, reported in the health report and by a
    /// [`ReplayLost`](crate::StorageEvent::ReplayLost) event. Default 100,000; 1 to 100,000,000.
    pub fn max_replay_records(mut self, max: usize) -> Self {
        self.max_replay_records = max;
        self
    }

    /// How many bytes (keys, values and about 100 bytes per record) each backend's replay log
    /// keeps; beyond it a write of a new key is lost as beyond
    /// [`max_replay_records`](Self::max_replay_records). A newer write of a key already kept
    /// always replaces it. Default 128 MiB; must not be zero.
    pub fn max_replay_bytes(mut self, max: usize) -> Self {
        self.max_replay_bytes = max;
        self
    }

    /// Whether lock authority may leave the highest-priority lock backend. Default
    /// [`LockFailover::Never`]: lock calls fail closed when this process cannot reach it, so no
    /// partition grants a lock twice. [`LockFailover::AfterOutage`] trades that for
    /// availability; read its risk first.
    pub fn lock_failover(mut self, failover: LockFailover) -> Self {
        self.lock_failover = failover;
        self
    }

    /// How many bytes of last known values [`get_or_load`](ResilientStorage::get_or_load) keeps
    /// in process memory, to serve while every backend fails (fail-safe). Default 32 MiB; the
    /// least recently used go first.
    pub fn fail_safe_memory(mut self, max_bytes: u64) -> Self {
        self.fail_safe_memory = max_bytes;
        self
    }

    /// Capacity of the event channel. Default 1,024; 1 to 1,048,576.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Builds backends from their URLs, starts the health monitors, and returns the storage.
    pub async fn build(mut self) -> Result<ResilientStorage> {
        self.validate()?;
        let entries = std::mem::take(&mut self.entries);
        let backends = self.backends(entries).await?;
        let (events, _) = broadcast::channel(self.event_capacity);
        let epoch = tokio::time::Instant::now();
        let strategy = self
            .strategy
            .clone()
            .unwrap_or_else(|| self.builtin.build(self.failback_delay));
        let (stop, _) = watch::channel(false);
        let watchdog = super::watchdog::Watchdog::start(stop.subscribe());
        let slots = self.slots(backends, &events, epoch, strategy.spreads_load(), &watchdog)?;
        let mut monitors: Vec<_> = if self.health.enabled {
            slots
                .iter()
                .map(|slot| tokio::spawn(monitor(slot.clone(), events.clone(), stop.subscribe())))
                .collect()
        } else {
            Vec::new()
        };
        let replay_wake = Arc::new(tokio::sync::Notify::new());
        monitors.push(tokio::spawn(replayer(
            slots.clone(),
            events.clone(),
            stop.subscribe(),
            replay_wake.clone(),
            self.attempt_timeout,
        )));
        let journals = super::journal::pairs(&slots);
        if !journals.is_empty() {
            monitors.push(tokio::spawn(super::journal::drainer(
                journals,
                stop.subscribe(),
                self.attempt_timeout,
            )));
        }
        Ok(ResilientStorage {
            inner: Arc::new(Inner {
                policy: Policy {
                    read_behind: self.write_policy != WritePolicy::Selected
                        && slots.len() > 1
                        && slots.iter().any(|slot| slot.capabilities.shared),
                    keys: self.keys,
                    attempt_timeout: self.attempt_timeout,
                    deadline: self.deadline,
                    write_policy: self.write_policy,
                    memory_ttl_cap: self.memory_ttl_cap,
                },
                locks: Locks::new(self.lock_failover, self.local_locks, &slots),
                active: Active::new(),
                life: Lifecycle {
                    events,
                    shut_down: AtomicBool::new(false),
                    stop,
                    monitors: Mutex::new(monitors),
                    replay_wake,
                },
                epoch,
                // Versions order a write against another backend's copy of the key: with one
                // backend, only one that keeps them needs them.
                versions: VersionClock::new(
                    slots.len() > 1 || slots.iter().any(|slot| slot.capabilities.versioned),
                ),
                cache: super::cache::CacheState::new(self.fail_safe_memory),
                atomics: super::atomic::Turns::new(&slots),
                slots,
                strategy,
            }),
        })
    }

    /// The enabled backends, built from their URLs, with the memory fallback added, in
    /// priority order.
    async fn backends(
        &self,
        entries: Vec<(Source, BackendOptions)>,
    ) -> Result<Vec<(Arc<dyn Backend>, BackendOptions)>> {
        let mut backends = Vec::with_capacity(entries.len() + 1);
        for (source, options) in entries.into_iter().filter(|(_, o)| o.enabled) {
            let backend = match source {
                Source::Instance(backend) => backend,
                Source::Url(url, factory) => (factory.build)(url).await?,
            };
            let capabilities = backend.capabilities();
            if !self.local_locks && capabilities.locks && !capabilities.shared {
                tracing::info!(
                    backend = backend.name(),
                    "a process-local backend holds no locks unless local locks are enabled"
                );
            }
            backends.push((backend, options));
        }
        // A process-local store added by hand is the last line of defence already.
        let has_local = backends.iter().any(|(b, _)| !b.capabilities().shared);
        if self.memory_fallback && !has_local {
            let factory = registry::lookup("memory").map_err(|_| {
                Error::config(
                    "memory_fallback",
                    "no backend is registered for memory://: enable the `memory` feature of \
                     resilient-storage or turn the memory fallback off",
                )
            })?;
            let backend = (factory.build)(BackendUrl::parse("memory://")?).await?;
            backends.push((backend, BackendOptions::new(MEMORY_FALLBACK_PRIORITY)));
        }
        if backends.is_empty() {
            return Err(Error::config(
                "backends",
                "at least one enabled backend is needed",
            ));
        }
        if backends.len() > MAX_BACKENDS {
            return Err(Error::config(
                "backends",
                format!("at most {MAX_BACKENDS} backends are supported"),
            ));
        }
        backends.sort_by_key(|(_, options)| options.priority);
        Ok(backends)
    }

    /// One slot per backend, each with its breaker, health tracker and replay log; names must
    /// be unique.
    fn slots(
        &self,
        backends: Vec<(Arc<dyn Backend>, BackendOptions)>,
        events: &broadcast::Sender<StorageEvent>,
        epoch: tokio::time::Instant,
        spreads_load: bool,
        watchdog: &Arc<super::watchdog::Watchdog>,
    ) -> Result<Vec<Arc<Slot>>> {
        let mut names = HashSet::new();
        let mut slots: Vec<Arc<Slot>> = Vec::with_capacity(backends.len());
        for (backend, options) in backends {
            let name = options.name.unwrap_or_else(|| backend.name().to_owned());
            if !names.insert(name.clone()) {
                return Err(Error::config(
                    "backends",
                    format!("two backends are named {name:?}: give one a name of its own"),
                ));
            }
            // A backend that keeps replay records durably records each write it serves for
            // the shared backends above it, which missed it (not under a strategy that spreads
            // load: there backends are peers, and none misses a write another served).
            let missed_by = match backend.capabilities().journal && !spreads_load {
                true => MissedBy::new(
                    slots
                        .iter()
                        .filter(|slot| slot.capabilities.shared)
                        .map(|slot| slot.name.clone()),
                ),
                false => MissedBy::none(),
            };
            slots.push(Arc::new(Slot::new(
                name,
                options.priority,
                backend,
                self.breaker.clone(),
                self.health.clone(),
                ReplayLog::new(self.max_replay_records, self.max_replay_bytes),
                events.clone(),
                epoch,
                missed_by,
                watchdog.clone(),
            )));
        }
        Ok(slots)
    }

    /// Checks every setting without building anything: the error [`build`](Self::build) would
    /// give for a bad setting, naming the field and its allowed range.
    pub fn validate(&self) -> Result<()> {
        self.breaker.validate()?;
        self.health.validate()?;
        self.keys.validate()?;
        limits::duration("attempt_timeout", self.attempt_timeout, limits::TIMEOUT)?;
        limits::duration("deadline", self.deadline, limits::TIMEOUT)?;
        limits::duration(
            "failback_delay",
            self.failback_delay,
            Duration::ZERO..=limits::DAY,
        )?;
        limits::count("event_capacity", self.event_capacity, 1..=1 << 20)?;
        limits::duration(
            "memory_ttl_cap",
            self.memory_ttl_cap,
            limits::MILLISECOND..=crate::key::MAX_TTL,
        )?;
        if self.fail_safe_memory == 0 {
            return Err(Error::config("fail_safe_memory", "must not be zero"));
        }
        if self.max_replay_bytes == 0 {
            return Err(Error::config("max_replay_bytes", "must not be zero"));
        }
        limits::count(
            "max_replay_records",
            self.max_replay_records,
            1..=100_000_000,
        )?;
        if let LockFailover::AfterOutage { delay } = self.lock_failover {
            limits::duration("lock_failover.delay", delay, Duration::ZERO..=limits::DAY)?;
        }
        if let Some((_, o)) = self
            .entries
            .iter()
            .find(|(_, o)| o.name.as_deref() == Some(""))
        {
            return Err(Error::config(
                "backends.name",
                format!("the backend at priority {} has an empty name", o.priority),
            ));
        }
        Ok(())
    }
}
