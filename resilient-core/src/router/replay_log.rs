//! The replay log: per backend, the writes and deletes it missed while another served them, and
//! the write-behind copies it has yet to receive, kept until they are replayed to it.
//!
//! Records are coalesced per key (the newest write wins), carry the write's version and the
//! value's expiry, and are bounded in number and in bytes. A record of a new key that does not
//! fit is counted as lost and reported, never dropped silently; a newer write of a key already
//! recorded always replaces its record.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::{KeyWrite, WriteVersion};

/// Bytes a record costs beyond its key and value: the map entry, the record, the allocations'
/// headers.
const RECORD_OVERHEAD: usize = 96;

/// A write to carry over. Its `Debug` shows the value's size, never its bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum LoggedWrite {
    Set {
        value: Bytes,
        expires_at: Option<Instant>,
    },
    Delete,
}

impl std::fmt::Debug for LoggedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoggedWrite::Set { value, expires_at } => f
                .debug_struct("Set")
                .field("bytes", &value.len())
                .field("expires_at", expires_at)
                .finish(),
            LoggedWrite::Delete => f.write_str("Delete"),
        }
    }
}

impl LoggedWrite {
    /// What the record of `key` costs against the log's byte bound.
    fn cost(&self, key: &str) -> usize {
        let value = match self {
            LoggedWrite::Set { value, .. } => value.len(),
            LoggedWrite::Delete => 0,
        };
        RECORD_OVERHEAD + key.len() + value
    }

    /// What a read of the key should see now, by this record.
    pub(crate) fn read(&self, now: Instant) -> Option<Bytes> {
        match self {
            LoggedWrite::Set { value, expires_at } if expires_at.is_none_or(|at| now < at) => {
                Some(value.clone())
            }
            _ => None,
        }
    }

    /// The write that brings a backend up to date at `now`: an expired value becomes a
    /// delete, a live one keeps its remaining TTL.
    pub(crate) fn replay_at(&self, now: Instant) -> KeyWrite {
        match self {
            LoggedWrite::Set {
                value,
                expires_at: None,
            } => KeyWrite::Set {
                value: value.clone(),
                ttl: None,
            },
            LoggedWrite::Set {
                value,
                expires_at: Some(at),
            } => match at.checked_duration_since(now) {
                Some(left) if left >= Duration::from_millis(1) => KeyWrite::Set {
                    value: value.clone(),
                    ttl: Some(left),
                },
                _ => KeyWrite::Delete,
            },
            LoggedWrite::Delete => KeyWrite::Delete,
        }
    }
}

/// Hands out [`WriteVersion`]s: microseconds since the Unix epoch, or one more than the last
/// version when the clock has not moved on (or went back), so they strictly increase.
///
/// A storage over one backend that keeps no versions never compares two writes (no replay, no
/// copy, nothing kept): its clock stamps every write 0 and saves a clock reading per write.
#[derive(Debug)]
pub(crate) struct VersionClock {
    last: AtomicU64,
    stamps: bool,
}

impl Default for VersionClock {
    fn default() -> Self {
        Self::new(true)
    }
}

impl VersionClock {
    /// A clock that stamps versions, or (`stamps` false) one that stamps every write 0.
    pub(crate) fn new(stamps: bool) -> Self {
        Self {
            last: AtomicU64::new(0),
            stamps,
        }
    }

    pub(crate) fn next(&self) -> WriteVersion {
        if !self.stamps {
            return WriteVersion(0);
        }
        let now = crate::backend::rules::now_micros();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return WriteVersion(next),
                Err(actual) => last = actual,
            }
        }
    }
}

#[derive(Debug)]
struct Record {
    hint: LoggedWrite,
    version: WriteVersion,
}

/// The records, and what they cost in bytes.
#[derive(Debug, Default)]
struct Records {
    map: HashMap<String, Record>,
    bytes: usize,
}

impl Records {
    /// Puts the record of `key` in place of the one there, keeping `bytes` true; returns the
    /// one it replaced.
    fn replace(&mut self, key: &str, record: Record) -> Option<Record> {
        if let Some(old) = self.map.get_mut(key) {
            self.bytes = self.bytes - old.hint.cost(key) + record.hint.cost(key);
            Some(std::mem::replace(old, record))
        } else {
            self.bytes += record.hint.cost(key);
            self.map.insert(key.to_owned(), record);
            None
        }
    }
}

/// The records kept for one backend.
#[derive(Debug)]
pub(crate) struct ReplayLog {
    max: usize,
    max_bytes: usize,
    pending: AtomicUsize,
    /// Records lost in the process's lifetime (metrics).
    lost: AtomicU64,
    /// Records lost since the last replay that left none pending (the health report).
    lost_recently: AtomicU64,
    /// A write this backend missed was recorded since the last time no record was left: the
    /// end of its replay is an event. Write-behind copies that come and go are not.
    missed: AtomicBool,
    /// No outage began since the last full replay pass: the backend may take traffic while
    /// its remaining records are replayed (reads consult them). Cleared when an outage begins
    /// (its breaker opens or it turns unhealthy), not by each record: a write that was in
    /// flight on a fallback when traffic came back must not send traffic away again.
    caught_up: AtomicBool,
    /// Records replayed since the last time none were left.
    replayed: AtomicU64,
    records: Mutex<Records>,
}

/// A record could not be kept: the bound was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow;

impl ReplayLog {
    /// A log of at most `max` records and `max_bytes` bytes.
    pub(crate) fn new(max: usize, max_bytes: usize) -> Self {
        Self {
            max,
            max_bytes,
            pending: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            lost_recently: AtomicU64::new(0),
            missed: AtomicBool::new(false),
            caught_up: AtomicBool::new(true),
            replayed: AtomicU64::new(0),
            records: Mutex::new(Records::default()),
        }
    }

    /// Records pending replay. Lock-free.
    #[inline]
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Records that could not be kept or replayed, in the process's lifetime.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Records that could not be kept or replayed since the last replay that left no record
    /// pending: a backend that has been brought up to date since no longer reports old losses.
    pub(crate) fn lost_recently(&self) -> u64 {
        self.lost_recently.load(Ordering::Relaxed)
    }

    /// Counts a record that was taken but could not be replayed.
    pub(crate) fn count_lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.lost_recently.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps `hint`, the write of `version`, for `key`, replacing an older record of the same
    /// key (a newer one stays). `missed`: the backend missed the write (it failed, or another
    /// served it while this one was preferred); otherwise it is a write-behind copy.
    pub(crate) fn record(
        &self,
        key: &str,
        hint: LoggedWrite,
        version: WriteVersion,
        missed: bool,
    ) -> Result<(), Overflow> {
        if missed && !self.missed.load(Ordering::Relaxed) {
            self.missed.store(true, Ordering::Relaxed);
        }
        let mut records = self.lock();
        if let Some(record) = records.map.get(key) {
            if record.version <= version {
                records.replace(key, Record { hint, version });
            }
            return Ok(());
        }
        if records.map.len() >= self.max || records.bytes + hint.cost(key) > self.max_bytes {
            self.count_lost();
            return Err(Overflow);
        }
        records.replace(key, Record { hint, version });
        self.pending.store(records.map.len(), Ordering::Release);
        Ok(())
    }

    /// Replaces the record of `key`, if there is one and it is older, with the write of
    /// `version` (a newer write the backend also got, or is about to). `hint` is only called
    /// when there is a record to replace.
    #[inline]
    pub(crate) fn refresh(
        &self,
        key: &str,
        version: WriteVersion,
        hint: impl FnOnce() -> LoggedWrite,
    ) {
        let _ = self.supersede(key, version, hint);
    }

    /// [`refresh`](Self::refresh) that returns the record it replaced, so a write the backend
    /// then refuses can [`restore`](Self::restore) it.
    #[inline]
    pub(crate) fn supersede(
        &self,
        key: &str,
        version: WriteVersion,
        hint: impl FnOnce() -> LoggedWrite,
    ) -> Option<(LoggedWrite, WriteVersion)> {
        // Every write asks every backend's log: while none has records, one load, inlined.
        if self.pending() == 0 {
            return None;
        }
        self.supersede_held(key, version, hint)
    }

    /// [`supersede`](Self::supersede) once records are pending.
    #[cold]
    fn supersede_held(
        &self,
        key: &str,
        version: WriteVersion,
        hint: impl FnOnce() -> LoggedWrite,
    ) -> Option<(LoggedWrite, WriteVersion)> {
        let mut records = self.lock();
        if records.map.get(key).is_none_or(|r| r.version > version) {
            return None;
        }
        let hint = hint();
        records
            .replace(key, Record { hint, version })
            .map(|old| (old.hint, old.version))
    }

    /// Puts back the record a refused write of `version` replaced, unless a newer write has
    /// replaced it since (or it was replayed).
    pub(crate) fn restore(
        &self,
        key: &str,
        version: WriteVersion,
        old: (LoggedWrite, WriteVersion),
    ) {
        let mut records = self.lock();
        if records.map.get(key).is_some_and(|r| r.version == version) {
            let (hint, version) = old;
            records.replace(key, Record { hint, version });
        }
    }

    /// The record of `key`, if any. Lock-free when nothing is pending.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<LoggedWrite> {
        if self.pending() == 0 {
            return None;
        }
        self.lock().map.get(key).map(|r| r.hint.clone())
    }

    /// The record of `key` with its version, if any. Lock-free when nothing is pending.
    pub(crate) fn get_versioned(&self, key: &str) -> Option<(LoggedWrite, WriteVersion)> {
        if self.pending() == 0 {
            return None;
        }
        self.lock()
            .map
            .get(key)
            .map(|r| (r.hint.clone(), r.version))
    }

    /// Every record, with its version, for one replay pass.
    pub(crate) fn pass(&self) -> Vec<(String, LoggedWrite, WriteVersion)> {
        self.lock()
            .map
            .iter()
            .map(|(k, r)| (k.clone(), r.hint.clone(), r.version))
            .collect()
    }

    /// The backend went down: the records of this outage must all be replayed once before it
    /// takes traffic again.
    pub(crate) fn outage_began(&self) {
        self.caught_up.store(false, Ordering::Release);
    }

    /// A replay pass over every record went through. Returns whether it was caught up already.
    pub(crate) fn set_caught_up(&self) -> bool {
        self.caught_up.swap(true, Ordering::AcqRel)
    }

    /// True while the backend must take no key-value traffic: it has records no replay pass
    /// has been through yet. Keys written during the last pass stay recorded, and reads of
    /// them are answered from the record, so traffic can return without waiting for writes
    /// that never stop.
    pub(crate) fn blocks_traffic(&self) -> bool {
        self.pending() > 0 && !self.caught_up.load(Ordering::Acquire)
    }

    /// Forgets `key`'s record after a replay, unless a newer write replaced it meanwhile: that
    /// one is replayed in a later round, so the backend ends with the newest value.
    pub(crate) fn replayed(&self, key: &str, version: WriteVersion) -> bool {
        let done = self.forget(key, version);
        if done {
            self.replayed.fetch_add(1, Ordering::Relaxed);
        }
        done
    }

    /// Forgets `key`'s record unless a newer write replaced it; true when it did.
    pub(crate) fn forget(&self, key: &str, version: WriteVersion) -> bool {
        let mut records = self.lock();
        let done = records.map.get(key).is_some_and(|r| r.version == version);
        if let Some(record) = done.then(|| records.map.remove(key)).flatten() {
            records.bytes -= record.hint.cost(key);
            self.pending.store(records.map.len(), Ordering::Release);
        }
        done
    }

    /// When no record is left after replays: how many were replayed since the last time, if
    /// any of them was a missed write (zero when all were write-behind copies, or once taken).
    /// Losses counted so far are then history: [`lost_recently`](Self::lost_recently) starts
    /// over.
    pub(crate) fn take_replayed_when_done(&self) -> u64 {
        let records = self.lock();
        if !records.map.is_empty() {
            return 0;
        }
        let replayed = self.replayed.swap(0, Ordering::Relaxed);
        if replayed == 0 {
            return 0;
        }
        self.lost_recently.store(0, Ordering::Relaxed);
        if self.missed.swap(false, Ordering::AcqRel) {
            replayed
        } else {
            0
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &'static [u8]) -> LoggedWrite {
        LoggedWrite::Set {
            value: Bytes::from_static(v),
            expires_at: None,
        }
    }

    const V1: WriteVersion = WriteVersion(1);
    const V2: WriteVersion = WriteVersion(2);

    #[test]
    fn records_coalesce_per_key_and_a_newer_write_survives_an_older_replay() {
        let log = ReplayLog::new(10, usize::MAX);
        log.record("k", set(b"1"), V1, true).unwrap();
        let (_, _, v1) = log.pass().remove(0);
        log.record("k", set(b"2"), V2, true).unwrap();
        assert_eq!(log.pending(), 1);
        assert!(!log.replayed("k", v1), "the newer record stays");
        let (_, hint, v2) = log.pass().remove(0);
        assert_eq!((hint, v2), (set(b"2"), V2));
        assert!(log.replayed("k", v2));
        assert_eq!(log.pending(), 0);
    }

    #[test]
    fn an_older_write_recorded_late_never_replaces_a_newer_record() {
        let log = ReplayLog::new(10, usize::MAX);
        log.record("k", set(b"2"), V2, true).unwrap();
        log.record("k", set(b"1"), V1, true).unwrap();
        log.refresh("k", V1, || set(b"1"));
        assert_eq!(log.pass(), vec![("k".to_owned(), set(b"2"), V2)]);
        log.refresh("k", WriteVersion(3), || LoggedWrite::Delete);
        assert_eq!(log.get("k"), Some(LoggedWrite::Delete));
    }

    #[test]
    fn versions_follow_the_clock_and_strictly_increase() {
        let clock = VersionClock::default();
        let epoch_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let versions: Vec<_> = (0..1000).map(|_| clock.next()).collect();
        assert!(versions[0].0 >= epoch_us);
        assert!(versions.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(VersionClock::new(false).next(), WriteVersion(0));
    }

    #[test]
    fn the_bound_is_kept_and_what_does_not_fit_is_counted() {
        let log = ReplayLog::new(2, usize::MAX);
        log.record("a", LoggedWrite::Delete, V1, true).unwrap();
        log.record("b", LoggedWrite::Delete, V1, true).unwrap();
        assert_eq!(
            log.record("c", LoggedWrite::Delete, V1, true),
            Err(Overflow)
        );
        log.record("a", set(b"x"), V2, true).unwrap();
        assert_eq!((log.pending(), log.lost()), (2, 1));
    }

    #[test]
    fn losses_are_reported_until_a_replay_leaves_nothing_pending() {
        let log = ReplayLog::new(1, usize::MAX);
        log.record("a", LoggedWrite::Delete, V1, true).unwrap();
        assert_eq!(
            log.record("b", LoggedWrite::Delete, V1, true),
            Err(Overflow)
        );
        assert_eq!(log.take_replayed_when_done(), 0, "a is still pending");
        assert_eq!(log.lost_recently(), 1);
        assert!(log.replayed("a", V1));
        assert_eq!(
            log.take_replayed_when_done(),
            1,
            "the outage's replay ended"
        );
        assert_eq!((log.lost_recently(), log.lost()), (0, 1));
        // A write-behind copy replayed is no event.
        log.record("c", LoggedWrite::Delete, V2, false).unwrap();
        assert!(log.replayed("c", V2));
        assert_eq!(log.take_replayed_when_done(), 0);
    }

    #[test]
    fn replay_keeps_the_remaining_ttl_and_turns_expired_values_into_deletes() {
        let now = Instant::now();
        let hint = LoggedWrite::Set {
            value: Bytes::from_static(b"v"),
            expires_at: Some(now + Duration::from_secs(10)),
        };
        assert_eq!(
            hint.replay_at(now + Duration::from_secs(3)),
            KeyWrite::Set {
                value: Bytes::from_static(b"v"),
                ttl: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            hint.replay_at(now + Duration::from_secs(10)),
            KeyWrite::Delete
        );
        assert_eq!(hint.read(now + Duration::from_secs(11)), None);
        assert_eq!(hint.read(now), Some(Bytes::from_static(b"v")));
    }

    #[test]
    fn a_new_key_over_the_byte_bound_is_lost_and_a_recorded_key_is_always_replaced() {
        let value = |n: usize| LoggedWrite::Set {
            value: Bytes::from(vec![b'x'; n]),
            expires_at: None,
        };
        // Room for two 100-byte values and their overhead, not three.
        let log = ReplayLog::new(100, 2 * (RECORD_OVERHEAD + 1 + 100) + 50);
        log.record("a", value(100), V1, true).unwrap();
        log.record("b", value(100), V1, true).unwrap();
        assert_eq!(log.record("c", value(100), V1, true), Err(Overflow));
        assert_eq!(log.lost(), 1);
        // A newer write of a recorded key replaces its record, whatever its size.
        log.record("a", value(1000), V2, true).unwrap();
        assert_eq!(log.get("a"), Some(value(1000)));
        // Replayed records give their bytes back.
        assert!(log.replayed("a", V2));
        assert!(log.replayed("b", V1));
        log.record("c", value(100), V2, true).unwrap();
        assert_eq!(log.pending(), 1);
    }

    #[test]
    fn a_record_prints_its_size_not_its_value() {
        let write = LoggedWrite::Set {
            value: Bytes::from_static(b"secret value"),
            expires_at: None,
        };
        let printed = format!("{write:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("12"), "{printed}");
    }
}
