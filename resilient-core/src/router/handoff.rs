//! Hinted handoff: the writes and deletes a higher-priority backend missed while another served
//! them, kept until they are replayed to it.
//!
//! Records are coalesced per key (the newest write wins), carry the write's version and the
//! value's expiry, and are bounded in number. A record that does not fit is counted as lost and
//! reported, never dropped silently.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::{KeyWrite, WriteVersion};

/// A write to carry over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hint {
    Set {
        value: Bytes,
        expires_at: Option<Instant>,
    },
    Delete,
}

impl Hint {
    /// What a read of the key should see now, by this record.
    pub(crate) fn read(&self, now: Instant) -> Option<Bytes> {
        match self {
            Hint::Set { value, expires_at } if expires_at.is_none_or(|at| now < at) => {
                Some(value.clone())
            }
            _ => None,
        }
    }

    /// The write that brings a backend up to date at `now`: an expired value becomes a
    /// delete, a live one keeps its remaining TTL.
    pub(crate) fn replay_at(&self, now: Instant) -> KeyWrite {
        match self {
            Hint::Set {
                value,
                expires_at: None,
            } => KeyWrite::Set {
                value: value.clone(),
                ttl: None,
            },
            Hint::Set {
                value,
                expires_at: Some(at),
            } => match at.checked_duration_since(now) {
                Some(left) if left >= Duration::from_millis(1) => KeyWrite::Set {
                    value: value.clone(),
                    ttl: Some(left),
                },
                _ => KeyWrite::Delete,
            },
            Hint::Delete => KeyWrite::Delete,
        }
    }
}

/// Hands out [`WriteVersion`]s: microseconds since the Unix epoch, or one more than the last
/// version when the clock has not moved on (or went back), so they strictly increase.
#[derive(Debug, Default)]
pub(crate) struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    pub(crate) fn next(&self) -> WriteVersion {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
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
    hint: Hint,
    version: WriteVersion,
}

/// The records kept for one backend.
#[derive(Debug)]
pub(crate) struct Hints {
    max: usize,
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
    records: Mutex<HashMap<String, Record>>,
}

/// A record could not be kept: the bound was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow;

impl Hints {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            pending: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            lost_recently: AtomicU64::new(0),
            missed: AtomicBool::new(false),
            caught_up: AtomicBool::new(true),
            replayed: AtomicU64::new(0),
            records: Mutex::new(HashMap::new()),
        }
    }

    /// Records pending replay. Lock-free.
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
        hint: Hint,
        version: WriteVersion,
        missed: bool,
    ) -> Result<(), Overflow> {
        if missed && !self.missed.load(Ordering::Relaxed) {
            self.missed.store(true, Ordering::Relaxed);
        }
        let mut records = self.lock();
        if let Some(record) = records.get_mut(key) {
            if record.version <= version {
                *record = Record { hint, version };
            }
            return Ok(());
        }
        if records.len() >= self.max {
            self.count_lost();
            return Err(Overflow);
        }
        records.insert(key.to_owned(), Record { hint, version });
        self.pending.store(records.len(), Ordering::Release);
        Ok(())
    }

    /// Replaces the record of `key`, if there is one and it is older, with the write of
    /// `version` (a newer write the backend also got, or is about to). `hint` is only called
    /// when there is a record to replace.
    pub(crate) fn refresh(&self, key: &str, version: WriteVersion, hint: impl FnOnce() -> Hint) {
        if self.pending() == 0 {
            return;
        }
        if let Some(record) = self.lock().get_mut(key)
            && record.version <= version
        {
            *record = Record {
                hint: hint(),
                version,
            };
        }
    }

    /// The record of `key`, if any. Lock-free when nothing is pending.
    pub(crate) fn get(&self, key: &str) -> Option<Hint> {
        if self.pending() == 0 {
            return None;
        }
        self.lock().get(key).map(|r| r.hint.clone())
    }

    /// Every record, with its version, for one replay pass.
    pub(crate) fn pass(&self) -> Vec<(String, Hint, WriteVersion)> {
        self.lock()
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
        let done = records.get(key).is_some_and(|r| r.version == version);
        if done {
            records.remove(key);
            self.pending.store(records.len(), Ordering::Release);
        }
        done
    }

    /// When no record is left after replays: how many were replayed since the last time, if
    /// any of them was a missed write (zero when all were write-behind copies, or once taken).
    /// Losses counted so far are then history: [`lost_recently`](Self::lost_recently) starts
    /// over.
    pub(crate) fn take_replayed_when_done(&self) -> u64 {
        let records = self.lock();
        if !records.is_empty() {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &'static [u8]) -> Hint {
        Hint::Set {
            value: Bytes::from_static(v),
            expires_at: None,
        }
    }

    const V1: WriteVersion = WriteVersion(1);
    const V2: WriteVersion = WriteVersion(2);

    #[test]
    fn records_coalesce_per_key_and_a_newer_write_survives_an_older_replay() {
        let hints = Hints::new(10);
        hints.record("k", set(b"1"), V1, true).unwrap();
        let (_, _, v1) = hints.pass().remove(0);
        hints.record("k", set(b"2"), V2, true).unwrap();
        assert_eq!(hints.pending(), 1);
        assert!(!hints.replayed("k", v1), "the newer record stays");
        let (_, hint, v2) = hints.pass().remove(0);
        assert_eq!((hint, v2), (set(b"2"), V2));
        assert!(hints.replayed("k", v2));
        assert_eq!(hints.pending(), 0);
    }

    #[test]
    fn an_older_write_recorded_late_never_replaces_a_newer_record() {
        let hints = Hints::new(10);
        hints.record("k", set(b"2"), V2, true).unwrap();
        hints.record("k", set(b"1"), V1, true).unwrap();
        hints.refresh("k", V1, || set(b"1"));
        assert_eq!(hints.pass(), vec![("k".to_owned(), set(b"2"), V2)]);
        hints.refresh("k", WriteVersion(3), || Hint::Delete);
        assert_eq!(hints.get("k"), Some(Hint::Delete));
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
    }

    #[test]
    fn the_bound_is_kept_and_what_does_not_fit_is_counted() {
        let hints = Hints::new(2);
        hints.record("a", Hint::Delete, V1, true).unwrap();
        hints.record("b", Hint::Delete, V1, true).unwrap();
        assert_eq!(hints.record("c", Hint::Delete, V1, true), Err(Overflow));
        hints.record("a", set(b"x"), V2, true).unwrap();
        assert_eq!((hints.pending(), hints.lost()), (2, 1));
    }

    #[test]
    fn losses_are_reported_until_a_replay_leaves_nothing_pending() {
        let hints = Hints::new(1);
        hints.record("a", Hint::Delete, V1, true).unwrap();
        assert_eq!(hints.record("b", Hint::Delete, V1, true), Err(Overflow));
        assert_eq!(hints.take_replayed_when_done(), 0, "a is still pending");
        assert_eq!(hints.lost_recently(), 1);
        assert!(hints.replayed("a", V1));
        assert_eq!(
            hints.take_replayed_when_done(),
            1,
            "the outage's replay ended"
        );
        assert_eq!((hints.lost_recently(), hints.lost()), (0, 1));
        // A write-behind copy replayed is no event.
        hints.record("c", Hint::Delete, V2, false).unwrap();
        assert!(hints.replayed("c", V2));
        assert_eq!(hints.take_replayed_when_done(), 0);
    }

    #[test]
    fn replay_keeps_the_remaining_ttl_and_turns_expired_values_into_deletes() {
        let now = Instant::now();
        let hint = Hint::Set {
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
}
