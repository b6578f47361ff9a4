//! Cache-aside: [`ResilientStorage::get_or_load`] reads a key and, when it is missing or stale,
//! runs the caller's loader once per key per process however many callers wait (single
//! flight), optionally once per key for the fleet (through the storage's own locks), with soft
//! and hard timeouts, fail-safe (the last known value while the loader or every backend
//! fails), throttled retries of a failing loader, and eager refresh.
//!
//! Values are stored wrapped in a small envelope (see [`Loaded`]) that carries when the value
//! was loaded and until when it is fresh, so every process agrees on staleness and a value
//! past its TTL stays readable as a fail-safe fallback until `ttl + fail_safe` has passed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use super::telemetry;
use super::{ResilientStorage, fnv1a};
use crate::backend::rules::micros;
use crate::backend::{LockOutcome, WriteMode};
use crate::error::{BoxError, Error, Result};
use crate::events::StorageEvent;
use crate::key::check_ttl;

/// How long a loader may run, unless [`LoadOptions::hard_timeout`] says otherwise.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failing loader is left alone while a stale value is served, unless
/// [`LoadOptions::fail_safe_throttle`] says otherwise.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(30);
/// How many bytes of last known values a storage keeps in process memory for fail-safe,
/// unless [`StorageBuilder::fail_safe_memory`](super::StorageBuilder::fail_safe_memory) says
/// otherwise.
pub const DEFAULT_FAIL_SAFE_MEMORY: u64 = 32 * 1024 * 1024;

/// The first bytes of a value written by [`ResilientStorage::get_or_load`].
const MAGIC: &[u8; 4] = b"rsc\x01";
const HEADER: usize = MAGIC.len() + 16;

/// How [`ResilientStorage::get_or_load`] treats one key. Built from the TTL a loaded value is
/// fresh for; every other setting is optional.
#[derive(Clone, PartialEq)]
#[must_use]
pub struct LoadOptions {
    ttl: Duration,
    fail_safe: Option<Duration>,
    throttle: Duration,
    soft_timeout: Option<Duration>,
    hard_timeout: Duration,
    eager_refresh: Option<f64>,
    fleet_wait: Option<Duration>,
    /// Whether the settings above pass [`check`](Self::check), as of the last builder call:
    /// checked once when built, not on every `get_or_load`.
    valid: bool,
}

impl std::fmt::Debug for LoadOptions {
    // The settings, without `valid` (derived from them).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("ttl", &self.ttl)
            .field("fail_safe", &self.fail_safe)
            .field("throttle", &self.throttle)
            .field("soft_timeout", &self.soft_timeout)
            .field("hard_timeout", &self.hard_timeout)
            .field("eager_refresh", &self.eager_refresh)
            .field("fleet_wait", &self.fleet_wait)
            .finish()
    }
}

impl LoadOptions {
    /// A loaded value is fresh for `ttl`; then the next caller loads it again. No fail-safe,
    /// no soft timeout, a hard timeout of [`DEFAULT_LOAD_TIMEOUT`], single flight within this
    /// process only.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            fail_safe: None,
            throttle: DEFAULT_FAIL_SAFE_THROTTLE,
            soft_timeout: None,
            hard_timeout: DEFAULT_LOAD_TIMEOUT,
            eager_refresh: None,
            fleet_wait: None,
            valid: false,
        }
        .checked()
    }

    /// Fail-safe: once a value is stale, keep it up to `max_stale` past its TTL and serve it
    /// (as [`LoadSource::Stale`]) when the loader fails or times out, or every backend fails.
    /// The storage keeps the value for `ttl + max_stale`.
    pub fn fail_safe(mut self, max_stale: Duration) -> Self {
        self.fail_safe = Some(max_stale);
        self.checked()
    }

    /// After the loader failed and a stale value was served instead, serve that stale value
    /// for `throttle` without calling the loader again (default
    /// [`DEFAULT_FAIL_SAFE_THROTTLE`]), so a failing database is not hammered.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.throttle = throttle;
        self.checked()
    }

    /// When a stale value exists (fail-safe on), a caller waits at most `timeout` for the
    /// loader and then gets the stale value; the load goes on in the background and its value
    /// is stored when it arrives. Without a stale value the caller waits up to the hard timeout.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self.checked()
    }

    /// The loader is abandoned (its future dropped) after `timeout`; its callers get the stale
    /// value if fail-safe has one, or [`Error::LoadTimedOut`]. Default [`DEFAULT_LOAD_TIMEOUT`].
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = timeout;
        self.checked()
    }

    /// Eager refresh: once a value has lived `share` of its TTL (between 0 and 1, say 0.8), the
    /// first caller to read it starts a reload in the background and still gets the current
    /// value at once, so hot keys never go stale.
    pub fn eager_refresh(mut self, share: f64) -> Self {
        self.eager_refresh = Some(share);
        self.checked()
    }

    /// Single flight across processes: before loading, take the lock `<key>#load` from the
    /// storage's lock authority. A process that finds it held waits up to `max_wait` for the
    /// holder's value to appear (then loads itself). A loader that finishes late, after a newer
    /// value was written by another loader or by [`set`](ResilientStorage::set), does not
    /// overwrite it: the stored value is versioned by when its load began. Without a reachable
    /// lock authority (locks fail closed), each process loads on its own.
    pub fn fleet_single_flight(mut self, max_wait: Duration) -> Self {
        self.fleet_wait = Some(max_wait);
        self.checked()
    }

    /// The TTL a loaded value is fresh for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// [`check`](Self::check)'s verdict, kept in `valid`.
    fn checked(mut self) -> Self {
        self.valid = self.check().is_ok();
        self
    }

    /// The settings' error, if any: for a hit, one test of a flag instead of every rule.
    #[inline]
    fn validate(&self) -> Result<()> {
        if self.valid { Ok(()) } else { self.check() }
    }

    fn check(&self) -> Result<()> {
        use crate::limits::{DAY, DELAY, duration};
        check_ttl(self.ttl)?;
        if let Some(max_stale) = self.fail_safe {
            check_ttl(self.ttl.saturating_add(max_stale))?;
        }
        duration(
            "load.fail_safe_throttle",
            self.throttle,
            Duration::ZERO..=DAY,
        )?;
        duration("load.hard_timeout", self.hard_timeout, DELAY)?;
        if let Some(soft) = self.soft_timeout {
            duration("load.soft_timeout", soft, DELAY)?;
            if soft > self.hard_timeout {
                return Err(Error::config(
                    "load.soft_timeout",
                    "must not be longer than the hard timeout",
                ));
            }
        }
        if let Some(share) = self.eager_refresh
            && !(share > 0.0 && share < 1.0)
        {
            return Err(Error::config(
                "load.eager_refresh",
                "must be between 0 and 1, exclusive",
            ));
        }
        if let Some(wait) = self.fleet_wait {
            duration("load.fleet_single_flight", wait, DELAY)?;
        }
        Ok(())
    }

    /// How long the storage keeps a loaded value: its TTL, plus the fail-safe window.
    fn kept_for(&self) -> Duration {
        self.ttl.saturating_add(self.fail_safe.unwrap_or_default())
    }
}

/// Where the value [`ResilientStorage::get_or_load`] returned came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadSource {
    /// A fresh value from the storage (or, while every backend fails, from this process's
    /// copy of the last known value while it is still fresh).
    Cached,
    /// The loader ran just now (for this caller or for another one it waited with).
    Loaded,
    /// Fail-safe: a value past its TTL, served because fresh data could not be had.
    Stale(StaleReason),
}

/// Why fail-safe served a stale value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StaleReason {
    /// The loader returned an error.
    LoaderFailed,
    /// The loader did not finish within the hard timeout.
    LoaderTimedOut,
    /// The soft timeout passed; the load goes on in the background.
    LoaderSlow,
    /// The loader failed recently; it is not called again until the throttle has passed.
    Throttled,
}

impl StaleReason {
    /// The snake-case name used in events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::LoaderFailed => "loader_failed",
            StaleReason::LoaderTimedOut => "loader_timed_out",
            StaleReason::LoaderSlow => "loader_slow",
            StaleReason::Throttled => "throttled",
        }
    }
}

/// A value from [`ResilientStorage::get_or_load`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded {
    /// The value.
    pub value: Bytes,
    /// Where it came from.
    pub source: LoadSource,
    /// How long ago it was loaded (zero for a value stored by [`set`](ResilientStorage::set),
    /// whose age is unknown).
    pub age: Duration,
}

impl Loaded {
    /// True when fail-safe served a value past its TTL.
    pub fn is_stale(&self) -> bool {
        matches!(self.source, LoadSource::Stale(_))
    }
}

/// A value as stored: the payload with when it was loaded and until when it is fresh, in
/// microseconds since the Unix epoch.
#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    loaded_at: u64,
    fresh_until: u64,
}

impl Entry {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER + self.value.len());
        out.put_slice(MAGIC);
        out.put_u64(self.loaded_at);
        out.put_u64(self.fresh_until);
        out.put_slice(&self.value);
        out.freeze()
    }

    /// A stored value; one written by plain `set` (no envelope) is fresh as long as the
    /// storage keeps it.
    fn decode(mut stored: Bytes) -> Self {
        if stored.len() >= HEADER && stored.starts_with(MAGIC) {
            let word = |at: usize| {
                let mut b = [0_u8; 8];
                b.copy_from_slice(&stored[at..at + 8]);
                u64::from_be_bytes(b)
            };
            let (loaded_at, fresh_until) = (word(4), word(12));
            // In place: no second handle on the buffer (an atomic count) as `split_off` takes.
            bytes::Buf::advance(&mut stored, HEADER);
            return Self {
                value: stored,
                loaded_at,
                fresh_until,
            };
        }
        Self {
            value: stored,
            loaded_at: 0,
            fresh_until: u64::MAX,
        }
    }

    fn fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    /// Still within the fail-safe window of `options` at `now`.
    fn servable(&self, now: u64, options: &LoadOptions) -> bool {
        let window = options.fail_safe.map_or(0, micros);
        now < self.fresh_until.saturating_add(window)
    }

    fn age(&self, now: u64) -> Duration {
        match self.loaded_at {
            0 => Duration::ZERO,
            at => Duration::from_micros(now.saturating_sub(at)),
        }
    }

    fn cost(&self) -> u32 {
        u32::try_from(self.value.len() + 64).unwrap_or(u32::MAX)
    }
}

/// Why a load ended without a value; shared by every caller of the flight.
#[derive(Debug, Clone)]
enum LoadFailure {
    Failed(Arc<dyn std::error::Error + Send + Sync>),
    TimedOut(Duration),
    Panicked,
    /// The loaded value (with its envelope) is larger than the key policy allows.
    TooLarge {
        size: usize,
        max: usize,
    },
}

impl LoadFailure {
    fn reason(&self) -> StaleReason {
        match self {
            LoadFailure::TimedOut(_) => StaleReason::LoaderTimedOut,
            LoadFailure::Failed(_) | LoadFailure::Panicked | LoadFailure::TooLarge { .. } => {
                StaleReason::LoaderFailed
            }
        }
    }

    fn into_error(self) -> Error {
        match self {
            LoadFailure::Failed(source) => Error::Loader { source },
            LoadFailure::TimedOut(after) => Error::LoadTimedOut { after },
            LoadFailure::Panicked => Error::Loader {
                source: Arc::new(std::io::Error::other("the loader panicked")),
            },
            LoadFailure::TooLarge { size, max } => Error::ValueTooLarge { size, max },
        }
    }
}

type FlightResult = Option<std::result::Result<Entry, LoadFailure>>;

/// The cache-aside state one storage keeps: the loads in flight, the loaders being throttled,
/// the last known values for fail-safe, and the clock envelopes are stamped with.
#[derive(Debug)]
pub(super) struct CacheState {
    flights: Mutex<HashMap<String, watch::Receiver<FlightResult>>>,
    throttled: Mutex<HashMap<String, Instant>>,
    last_known: moka::sync::Cache<String, Entry>,
    clock: Clock,
}

impl CacheState {
    pub(super) fn new(fail_safe_memory: u64) -> Self {
        Self {
            flights: Mutex::default(),
            throttled: Mutex::default(),
            last_known: moka::sync::Cache::builder()
                .max_capacity(fail_safe_memory)
                .weigher(|key: &String, entry: &Entry| {
                    entry
                        .cost()
                        .saturating_add(u32::try_from(key.len()).unwrap_or(u32::MAX))
                })
                .build(),
            clock: Clock::new(),
        }
    }

    fn throttled(&self, key: &str, now: Instant) -> bool {
        let mut map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    fn throttle(&self, key: &str, until: Instant) {
        let mut map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 4096 {
            let now = Instant::now();
            map.retain(|_, until| *until > now);
        }
        map.insert(key.to_owned(), until);
    }

    fn unthrottle(&self, key: &str) {
        let mut map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

/// Wall-clock microseconds (envelopes carry wall time that other processes read), moved on by
/// however far tokio's clock has run ahead of the real one: tests that pause and advance
/// tokio's clock move this one too. Outside such tests the two run together and the correction
/// is zero.
///
/// A reading is tokio's clock plus an offset to wall time. The offset (wall time minus the real
/// monotonic clock) is read afresh once a second of tokio's clock, so a clock step or a
/// suspended machine is followed within a second, and a call reads one clock instead of three.
#[derive(Debug)]
struct Clock {
    tokio_start: Instant,
    real_start: std::time::Instant,
    /// Wall-clock µs minus real µs since `real_start`.
    offset: AtomicI64,
    /// Tokio µs since `tokio_start` when `offset` was last read.
    offset_read_at: AtomicI64,
}

impl Clock {
    fn new() -> Self {
        let clock = Self {
            tokio_start: Instant::now(),
            real_start: std::time::Instant::now(),
            offset: AtomicI64::new(0),
            offset_read_at: AtomicI64::new(0),
        };
        clock.read_offset(0);
        clock
    }

    fn read_offset(&self, tokio: i64) -> i64 {
        let real = i64::try_from(micros(self.real_start.elapsed())).unwrap_or(i64::MAX);
        let wall = i64::try_from(crate::backend::rules::now_micros()).unwrap_or(i64::MAX);
        let offset = wall.saturating_sub(real);
        self.offset.store(offset, Ordering::Relaxed);
        self.offset_read_at.store(tokio, Ordering::Relaxed);
        offset
    }

    fn now(&self) -> u64 {
        let tokio = i64::try_from(micros(self.tokio_start.elapsed())).unwrap_or(i64::MAX);
        let offset = match tokio.saturating_sub(self.offset_read_at.load(Ordering::Relaxed)) {
            0..1_000_000 => self.offset.load(Ordering::Relaxed),
            _ => self.read_offset(tokio),
        };
        u64::try_from(offset.saturating_add(tokio).max(0)).unwrap_or(u64::MAX)
    }
}

/// Removes a flight from the map when its task ends, even by panic.
struct FlightGuard {
    storage: ResilientStorage,
    key: String,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let cache = &self.storage.inner.cache;
        cache
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl ResilientStorage {
    /// Cache-aside: the value of `key`, or the loader's when the key is missing or stale.
    ///
    /// - **Single flight**: the loader runs once per key per process however many callers
    ///   wait for it; it runs in its own task, so a caller that gives up (its future dropped)
    ///   does not cancel the load for the others. With
    ///   [`fleet_single_flight`](LoadOptions::fleet_single_flight), once per key for every
    ///   process sharing the storage.
    /// - The loaded value is stored for every process with the TTL of `options` (plus the
    ///   fail-safe window); a value stored with [`set`](Self::set) is served as fresh.
    /// - **Fail-safe** ([`LoadOptions::fail_safe`]): when the loader fails or times out, or
    ///   every backend fails, the last known value up to the configured staleness is served as
    ///   [`LoadSource::Stale`], a [`StorageEvent::FailSafeServed`] is sent, and the failing
    ///   loader is not called again for the [throttle](LoadOptions::fail_safe_throttle).
    /// - Timeouts: see [`LoadOptions::soft_timeout`] and [`LoadOptions::hard_timeout`];
    ///   eager refresh: [`LoadOptions::eager_refresh`].
    ///
    /// Callers of one key share a flight whatever their options: the first one's loader and
    /// options run it. Keys are validated as for [`get`](Self::get); errors:
    /// [`Error::Loader`] or [`Error::LoadTimedOut`] when there is no value to serve
    /// instead, and the storage's own errors for invalid input.
    ///
    /// ```
    /// # use resilient_core::{LoadOptions, ResilientStorage};
    /// # use std::time::Duration;
    /// # async fn example(storage: ResilientStorage) -> resilient_core::Result<()> {
    /// let options = LoadOptions::new(Duration::from_secs(60)).fail_safe(Duration::from_secs(3600));
    /// let profile = storage
    ///     .get_or_load("user:42", &options, || async {
    ///         // The database query; any error type that converts to a boxed error.
    ///         Ok::<_, std::io::Error>(b"{\"name\":\"Ada\"}".to_vec())
    ///     })
    ///     .await?;
    /// if profile.is_stale() {
    ///     // Served from fail-safe: the database or the loader is failing.
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<F, Fut, V, E>(
        &self,
        key: &str,
        options: &LoadOptions,
        loader: F,
    ) -> Result<Loaded>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        V: Into<Bytes>,
        E: Into<BoxError>,
    {
        options.validate()?;
        let full = self.inner.policy.keys.full_key(key)?;
        // Answered at once, the read needs no future of `get`'s; the rest is boxed, so a hit
        // answered at once does not carry (and move) its room.
        let read = match self.read_now(&full) {
            Ok(value) => Ok(value),
            Err(missed) => Box::pin(self.get_routed(Cow::Borrowed(&*full), missed)).await,
        };
        let (stored, read_failed) = match read {
            Ok(stored) => (stored.map(Entry::decode), false),
            Err(error) if error.is_caller_error() => return Err(error),
            Err(error) => {
                tracing::debug!(%error, "cache-aside read failed: the last known value, or the loader");
                (None, true)
            }
        };
        match self.serve_fresh(key, &full, options, stored, read_failed, loader) {
            Ok(loaded) => Ok(loaded),
            // Boxed: a hit's future does not carry the room a load needs.
            Err(not_fresh) => {
                Box::pin(self.load_or_serve_stale(key, &full, options, not_fresh)).await
            }
        }
    }

    /// A hit: the fresh value read (or, while the storage fails, this process's fresh copy),
    /// remembered for fail-safe and refreshed eagerly when due. Otherwise what the load needs.
    #[inline]
    fn serve_fresh<F, Fut, V, E>(
        &self,
        key: &str,
        full: &str,
        options: &LoadOptions,
        stored: Option<Entry>,
        read_failed: bool,
        loader: F,
    ) -> std::result::Result<Loaded, NotFresh<F>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        V: Into<Bytes>,
        E: Into<BoxError>,
    {
        let cache = &self.inner.cache;
        let fail_safe = options.fail_safe.is_some();
        let local = fail_safe.then(|| cache.last_known.get(full)).flatten();
        let now = cache.clock.now();
        // This process's copy stands in for the storage only while the storage fails (then
        // nothing was read): after a miss (the key deleted to invalidate it, say) it is never
        // served as fresh.
        let (entry, local) = match (read_failed, stored, local) {
            (false, Some(entry), local) if entry.fresh(now) => (entry, local),
            (true, None, Some(entry)) if entry.fresh(now) => (entry, None),
            (_, stored, local) => {
                return Err(NotFresh {
                    stored,
                    local,
                    now,
                    loader,
                });
            }
        };
        if fail_safe || options.eager_refresh.is_some() {
            self.keep_and_refresh(key, full, options, &entry, local, read_failed, now, loader);
        }
        telemetry::cache_outcome("hit");
        Ok(Loaded {
            age: entry.age(now),
            value: entry.value,
            source: LoadSource::Cached,
        })
    }

    /// A hit's extras, out of line: fail-safe's copy of the value kept in this process, and an
    /// eager refresh started when it is due.
    #[allow(clippy::too_many_arguments)]
    fn keep_and_refresh<F, Fut, V, E>(
        &self,
        key: &str,
        full: &str,
        options: &LoadOptions,
        entry: &Entry,
        local: Option<Entry>,
        read_failed: bool,
        now: u64,
        loader: F,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        V: Into<Bytes>,
        E: Into<BoxError>,
    {
        let cache = &self.inner.cache;
        // A value without an envelope (a plain `set`) has no TTL to keep a copy by.
        if options.fail_safe.is_some()
            && !read_failed
            && entry.loaded_at != 0
            && local.is_none_or(|l| l.loaded_at != entry.loaded_at)
        {
            cache.last_known.insert(full.to_owned(), entry.clone());
        }
        if let Some(share) = options.eager_refresh
            && entry.loaded_at != 0
        {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let due = entry
                .loaded_at
                .saturating_add((micros(options.ttl) as f64 * share) as u64);
            // A failing loader is left alone for the throttle, eager refresh included.
            if now >= due && !cache.throttled(full, Instant::now()) {
                drop(self.flight(key, full, options, Some(entry.loaded_at), loader));
            }
        }
    }

    /// No fresh value: fail-safe's stale one while the loader is throttled, else the load
    /// (joined or started), with the stale value standing in when it fails or is slow.
    async fn load_or_serve_stale<F, Fut, V, E>(
        &self,
        key: &str,
        full: &str,
        options: &LoadOptions,
        not_fresh: NotFresh<F>,
    ) -> Result<Loaded>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        V: Into<Bytes>,
        E: Into<BoxError>,
    {
        let NotFresh {
            stored,
            local,
            now,
            loader,
        } = not_fresh;
        let cache = &self.inner.cache;
        let fail_safe = options.fail_safe.is_some();
        // Fail-safe's fallback: the newer of the stored value and this process's copy, while
        // within the window.
        let stale = [stored, local]
            .into_iter()
            .flatten()
            .filter(|entry| fail_safe && entry.servable(now, options))
            .max_by_key(|entry| entry.loaded_at);
        if let Some(entry) = &stale
            && cache.throttled(full, Instant::now())
        {
            return Ok(self.serve_stale(entry, now, StaleReason::Throttled));
        }
        let seen = stale.as_ref().map(|entry| entry.loaded_at);
        let mut flight = self.flight(key, full, options, seen, loader);
        let finished = async {
            match flight.wait_for(Option::is_some).await {
                Ok(result) => result.clone().unwrap_or(Err(LoadFailure::Panicked)),
                // The flight's task ended without a result: the loader panicked.
                Err(_) => Err(LoadFailure::Panicked),
            }
        };
        let result = match (&stale, options.soft_timeout) {
            (Some(entry), Some(soft)) => match tokio::time::timeout(soft, finished).await {
                Ok(result) => result,
                Err(_) => {
                    let now = cache.clock.now();
                    return Ok(self.serve_stale(entry, now, StaleReason::LoaderSlow));
                }
            },
            _ => finished.await,
        };
        match (result, stale) {
            (Ok(entry), _) => {
                telemetry::cache_outcome("loaded");
                Ok(Loaded {
                    age: entry.age(cache.clock.now()),
                    value: entry.value,
                    source: LoadSource::Loaded,
                })
            }
            (Err(failure), Some(entry)) => {
                Ok(self.serve_stale(&entry, cache.clock.now(), failure.reason()))
            }
            (Err(failure), None) => {
                telemetry::cache_outcome("failed");
                Err(failure.into_error())
            }
        }
    }

    /// [`get_or_load`](Self::get_or_load) for a typed value, stored as JSON: the loader returns
    /// `T`, and the value comes back decoded with where it came from.
    pub async fn get_or_load_json<T, F, Fut, E>(
        &self,
        key: &str,
        options: &LoadOptions,
        loader: F,
    ) -> Result<(T, LoadSource)>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let loaded = self
            .get_or_load(key, options, || async move {
                let value = loader().await.map_err(Into::into)?;
                serde_json::to_vec(&value).map_err(|e| -> BoxError { Box::new(e) })
            })
            .await?;
        let value = serde_json::from_slice(&loaded.value).map_err(|e| Error::Serde {
            action: "decoded",
            source: e.into(),
        })?;
        Ok((value, loaded.source))
    }

    fn serve_stale(&self, entry: &Entry, now: u64, reason: StaleReason) -> Loaded {
        let age = entry.age(now);
        telemetry::cache_outcome(reason.as_str());
        tracing::info!(
            reason = reason.as_str(),
            ?age,
            "fail-safe: served a stale value"
        );
        let _ = self
            .inner
            .life
            .events
            .send(StorageEvent::FailSafeServed { reason, age });
        Loaded {
            value: entry.value.clone(),
            source: LoadSource::Stale(reason),
            age,
        }
    }

    /// Joins the load of `full` in flight in this process, or starts one running `loader`.
    /// `seen` is the `loaded_at` of the value the caller found stale (or due for refresh):
    /// while waiting for another process's load, only a different value ends the wait.
    fn flight<F, Fut, V, E>(
        &self,
        key: &str,
        full: &str,
        options: &LoadOptions,
        seen: Option<u64>,
        loader: F,
    ) -> watch::Receiver<FlightResult>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        V: Into<Bytes>,
        E: Into<BoxError>,
    {
        let mut flights = self
            .inner
            .cache
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(full) {
            return flight.clone();
        }
        let (done, flight) = watch::channel(None);
        flights.insert(full.to_owned(), flight.clone());
        drop(flights);
        let guard = FlightGuard {
            storage: self.clone(),
            key: full.to_owned(),
        };
        let key = key.to_owned();
        let options = options.clone();
        tokio::spawn(async move {
            let storage = guard.storage.clone();
            let result = storage.load(&key, &guard.key, &options, seen, loader).await;
            // Published before the guard leaves the map: a caller that joins in between
            // reads the result at once.
            done.send_replace(Some(result));
            drop(guard);
        });
        flight
    }

    /// One flight: across processes first when asked, then the loader under the hard
    /// timeout, then the value stored (fenced by when the load began) and remembered.
    async fn load<F, Fut, V, E>(
        &self,
        key: &str,
        full: &str,
        options: &LoadOptions,
        seen: Option<u64>,
        loader: F,
    ) -> std::result::Result<Entry, LoadFailure>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        V: Into<Bytes>,
        E: Into<BoxError>,
    {
        let cache = &self.inner.cache;
        // The stored value is versioned by when its load began: a slow load that ends after a
        // newer write (another loader's, or a `set`) is refused by the backend.
        let version = self.inner.versions.next();
        let mut lease = None;
        if let Some(max_wait) = options.fleet_wait {
            match self.fleet_turn(key, options, seen, max_wait).await {
                FleetTurn::Served(entry) => return Ok(entry),
                FleetTurn::Ours(name, holder) => lease = Some((name, holder)),
                FleetTurn::Alone => {}
            }
        } else if let Some(entry) = self.fresh_since(key, seen).await {
            // A caller that missed just before the last flight stored its value and left the
            // map starts this one: the value is there now, so no second load.
            return Ok(entry);
        }
        let load = async move {
            loader()
                .await
                .map(Into::<Bytes>::into)
                .map_err(Into::<BoxError>::into)
        };
        let loaded = tokio::time::timeout(options.hard_timeout, load).await;
        let result = match loaded {
            Ok(Ok(value)) if value.len().saturating_add(HEADER) > self.max_value_len() => {
                let max = self.max_value_len().saturating_sub(HEADER);
                tracing::warn!(
                    size = value.len(),
                    max,
                    "cache-aside: the loaded value is too large to store"
                );
                Err(LoadFailure::TooLarge {
                    size: value.len(),
                    max,
                })
            }
            Ok(Ok(value)) => {
                let now = cache.clock.now();
                let entry = Entry {
                    value,
                    loaded_at: now,
                    fresh_until: now.saturating_add(micros(options.ttl)),
                };
                cache.unthrottle(full);
                if options.fail_safe.is_some() {
                    cache.last_known.insert(full.to_owned(), entry.clone());
                }
                if let Err(error) = self
                    .set_with(
                        key,
                        entry.encode(),
                        Some(options.kept_for()),
                        Some(version),
                        WriteMode::IfNewer,
                    )
                    .await
                {
                    tracing::warn!(%error, "cache-aside: the loaded value could not be stored");
                }
                Ok(entry)
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "cache-aside: the loader failed");
                Err(LoadFailure::Failed(Arc::from(error)))
            }
            Err(_) => {
                tracing::warn!(after = ?options.hard_timeout, "cache-aside: the loader timed out");
                Err(LoadFailure::TimedOut(options.hard_timeout))
            }
        };
        if result.is_err() && options.fail_safe.is_some() {
            cache.throttle(full, Instant::now() + options.throttle);
        }
        if let Some((name, holder)) = lease {
            let _ = self.release_lock(&name, &holder).await;
        }
        result
    }

    /// Takes this process's turn to load `key` for the fleet: the load lock, or the value
    /// another process loaded while this one waited, or neither (load alone).
    async fn fleet_turn(
        &self,
        key: &str,
        options: &LoadOptions,
        seen: Option<u64>,
        max_wait: Duration,
    ) -> FleetTurn {
        // Long keys get a fixed-size name, so the lock name stays within the key policy.
        let mut name = format!("{key}#load");
        if self.inner.policy.keys.full_key(&name).is_err() {
            name = format!("#load:{:016x}", fnv1a(key.as_bytes()));
        }
        let holder = format!("load-{:032x}", fastrand::u128(..));
        let lease = options.hard_timeout.saturating_add(Duration::from_secs(1));
        let give_up = Instant::now() + max_wait;
        let mut pause = Duration::from_millis(10);
        loop {
            match self.acquire_lock(&name, &holder, lease).await {
                Ok(LockOutcome::Acquired(_)) => {
                    // Another process may have stored the value just before releasing.
                    if let Some(entry) = self.fresh_since(key, seen).await {
                        let _ = self.release_lock(&name, &holder).await;
                        return FleetTurn::Served(entry);
                    }
                    return FleetTurn::Ours(name, holder);
                }
                Ok(LockOutcome::Held { .. }) => {}
                Err(error) => {
                    tracing::debug!(%error, "cache-aside: no fleet lock, loading alone");
                    return FleetTurn::Alone;
                }
            }
            if let Some(entry) = self.fresh_since(key, seen).await {
                return FleetTurn::Served(entry);
            }
            let now = Instant::now();
            if now >= give_up {
                return FleetTurn::Alone;
            }
            tokio::time::sleep(pause.min(give_up - now)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn max_value_len(&self) -> usize {
        self.inner.policy.keys.max_value_len
    }

    /// A fresh value of `key` other than the one loaded at `seen`.
    async fn fresh_since(&self, key: &str, seen: Option<u64>) -> Option<Entry> {
        let entry = Entry::decode(self.get(key).await.ok()??);
        let now = self.inner.cache.clock.now();
        (entry.fresh(now) && Some(entry.loaded_at) != seen).then_some(entry)
    }
}

/// What a load needs after [`ResilientStorage::serve_fresh`] found no fresh value.
struct NotFresh<F> {
    stored: Option<Entry>,
    local: Option<Entry>,
    now: u64,
    loader: F,
}

enum FleetTurn {
    /// Another process loaded it meanwhile.
    Served(Entry),
    /// This process holds the load lock `(name, holder)`.
    Ours(String, String),
    /// No lock to be had in time: load without it.
    Alone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_and_a_plain_value_reads_as_fresh_forever() {
        let entry = Entry {
            value: Bytes::from_static(b"payload"),
            loaded_at: 1_000,
            fresh_until: 2_000,
        };
        let decoded = Entry::decode(entry.encode());
        assert_eq!(
            (&decoded.value[..], decoded.loaded_at, decoded.fresh_until),
            (&b"payload"[..], 1_000, 2_000)
        );
        for plain in [&b""[..], b"rsc", b"plain value", b"rsc\x01short"] {
            let decoded = Entry::decode(Bytes::copy_from_slice(plain));
            assert_eq!(&decoded.value[..], plain);
            assert!(decoded.fresh(u64::MAX - 1));
            assert_eq!(decoded.age(5_000), Duration::ZERO);
        }
    }

    #[test]
    fn a_stale_value_is_servable_only_within_the_fail_safe_window() {
        let entry = Entry {
            value: Bytes::new(),
            loaded_at: 0,
            fresh_until: 10_000_000,
        };
        let ttl = Duration::from_secs(10);
        let without = LoadOptions::new(ttl);
        let with = LoadOptions::new(ttl).fail_safe(Duration::from_secs(5));
        assert!(!entry.fresh(10_000_000));
        assert!(!entry.servable(10_000_000, &without));
        assert!(entry.servable(14_999_999, &with));
        assert!(!entry.servable(15_000_000, &with));
        assert_eq!(with.kept_for(), Duration::from_secs(15));
    }
}
