//! The behaviour every backend must share: byte-exact round trips, the same keys accepted,
//! TTLs, and lock ownership. A backend crate runs [`run`] against a live instance; each check
//! is also public, so a failure names what broke.
//!
//! Keys are prefixed with a random run id, so the suite can share a server with other tests.
//! Expiry checks wait on the backend's own clock (a real server's), polling every 20 ms.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{
    AtomicOp, AtomicOutcome, Backend, BackendExt, BatchWrite, JournalEntry, KeyWrite, LockOutcome,
    MissedBy, Unknown, WriteMode, WriteOptions, WriteOutcome, WriteVersion,
};
use crate::key::MAX_KEY_LEN_BOUND;

const SHORT_TTL: Duration = Duration::from_millis(300);
const EXPIRY_WAIT: Duration = Duration::from_secs(10);

/// Runs every check against `backend`; panics with the name of the first that fails.
pub async fn run(backend: &dyn Backend) {
    let p = prefix();
    missing_keys_read_as_none(backend, &p).await;
    values_round_trip_byte_exact(backend, &p).await;
    every_valid_key_is_stored_verbatim(backend, &p).await;
    set_overwrites_and_delete_reports_existence(backend, &p).await;
    ttl_expires_keys(backend, &p).await;
    a_new_set_replaces_the_ttl(backend, &p).await;
    batches_answer_key_by_key_in_order(backend, &p).await;
    if backend.capabilities().atomic {
        atomic_operations_are_exact(backend, &p).await;
    }
    if backend.capabilities().locks {
        locks_are_exclusive_and_owner_checked(backend, &p).await;
        contended_locks_have_one_holder_at_a_time(backend, &p).await;
        lock_tokens_grow_across_grants(backend, &p).await;
        locks_expire(backend, &p).await;
        locks_and_keys_do_not_collide(backend, &p).await;
        brace_shaped_lock_names_work(backend, &p).await;
    } else {
        lock_calls_are_unsupported(backend, &p).await;
    }
    if backend.capabilities().versioned {
        batched_replays_follow_versions(backend, &p).await;
        replays_never_overwrite_a_newer_write(backend, &p).await;
        deletes_keep_older_replays_out(backend, &p).await;
    }
    if backend.capabilities().journal {
        journal_records_what_was_missed(backend, &p).await;
        journal_claims_are_exclusive_and_settle_only_what_they_hold(backend, &p).await;
    }
    health_check_passes(backend).await;
}

fn put(value: &'static [u8], ttl: Option<Duration>) -> KeyWrite {
    KeyWrite::Set {
        value: Bytes::from_static(value),
        ttl,
    }
}

/// Batches: one answer per key in order, for keys in every Cluster slot shape (braces
/// included), repeated keys, missing keys, a batch of sets, one of deletes, one that mixes
/// them, and an empty one. A TTL in a batch expires as a single set's does.
pub async fn batches_answer_key_by_key_in_order(b: &dyn Backend, p: &str) {
    let keys: Vec<String> = ["a", "b{x}", "{y}c", "d{}", "é{ü}", "f"]
        .iter()
        .map(|k| format!("{p}batch:{k}"))
        .collect();
    fn set<'k>(key: &'k str, value: &'static [u8], ttl: Option<Duration>) -> BatchWrite<'k> {
        BatchWrite::new(key, put(value, ttl), WriteOptions::new(WriteVersion(0)))
    }
    let writes = keys.iter().map(|k| set(k, b"one", None)).collect();
    let answers = b.write_many(writes).await.expect("write_many of sets");
    assert_eq!(answers.len(), keys.len(), "one answer per set");
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|o| o.applied)));
    // Mixed: a new value, a delete of a live key, a delete of a missing key, a short TTL, and
    // the same key twice (the last write wins).
    let missing = format!("{p}batch:missing");
    let mixed = vec![
        set(&keys[0], b"two", None),
        BatchWrite::new(
            &keys[1],
            KeyWrite::Delete,
            WriteOptions::new(WriteVersion(0)),
        ),
        BatchWrite::new(
            &missing,
            KeyWrite::Delete,
            WriteOptions::new(WriteVersion(0)),
        ),
        set(&keys[2], b"brief", Some(SHORT_TTL)),
        set(&keys[3], b"first", None),
        set(&keys[3], b"last", None),
    ];
    let answers = b
        .write_many(mixed)
        .await
        .expect("write_many of a mixed batch");
    let existed: Vec<_> = answers
        .iter()
        .map(|a| {
            a.as_ref()
                .map(|o| o.existed)
                .expect("every write of the batch applies")
        })
        .collect();
    assert_eq!(&existed[1..3], &[true, false], "deletes report existence");
    let deletes: Vec<_> = [&keys[4], &keys[5], &missing]
        .into_iter()
        .map(|k| BatchWrite::new(k, KeyWrite::Delete, WriteOptions::new(WriteVersion(0))))
        .collect();
    let answers = b.write_many(deletes).await.expect("write_many of deletes");
    let existed: Vec<_> = answers
        .into_iter()
        .map(|a| a.expect("delete").existed)
        .collect();
    assert_eq!(
        existed,
        [true, true, false],
        "a batch of deletes reports existence"
    );
    let asked = [
        &keys[0], &missing, &keys[1], &keys[2], &keys[3], &keys[0], &keys[4],
    ];
    let asked: Vec<&str> = asked.iter().map(|k| k.as_str()).collect();
    let values: Vec<Option<Bytes>> = b
        .get_many(&asked)
        .await
        .expect("get_many")
        .into_iter()
        .map(|v| v.expect("get_many answer"))
        .collect();
    let expected: [Option<&[u8]>; 7] = [
        Some(b"two"),
        None,
        None,
        Some(b"brief"),
        Some(b"last"),
        Some(b"two"),
        None,
    ];
    assert_eq!(
        values.iter().map(Option::as_deref).collect::<Vec<_>>(),
        expected,
        "get_many answers key by key, in order"
    );
    // A key twice in a batch of sets (the last wins) and in one of deletes (it existed for the
    // first only).
    let twice = vec![
        set(&keys[5], b"first", None),
        set(&keys[4], b"other", None),
        set(&keys[5], b"second", None),
    ];
    let answers = b
        .write_many(twice)
        .await
        .expect("write_many with a repeated key");
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|o| o.applied)));
    assert_eq!(
        b.get(&keys[5]).await.expect("get").as_deref(),
        Some(&b"second"[..]),
        "the last write of a key repeated in a batch wins"
    );
    let twice: Vec<_> = [&keys[5], &keys[4], &keys[5]]
        .into_iter()
        .map(|k| BatchWrite::new(k, KeyWrite::Delete, WriteOptions::new(WriteVersion(0))))
        .collect();
    let existed: Vec<bool> = b
        .write_many(twice)
        .await
        .expect("write_many of repeated deletes")
        .into_iter()
        .map(|a| a.expect("delete").existed)
        .collect();
    assert_eq!(
        existed,
        [true, true, false],
        "a repeated delete existed once"
    );
    assert!(b.get_many(&[]).await.expect("empty get_many").is_empty());
    assert!(
        b.write_many(Vec::new())
            .await
            .expect("empty write_many")
            .is_empty()
    );
    wait_until("a batched TTL to expire", || async {
        b.get(&keys[2]).await.expect("get").is_none()
    })
    .await;
}

/// Backends with [`atomic`](crate::Capabilities::atomic): increments add exactly and keep a
/// TTL set at creation, refuse a value that is not an integer and a sum beyond `i64`;
/// set-if-absent and compare-and-set write only when their condition holds and answer what
/// they found; versions grow with each write; an unknown key is asked about only by a backend
/// that can lose its data, and a seed continues from the value it gives.
pub async fn atomic_operations_are_exact(b: &dyn Backend, p: &str) {
    async fn run(b: &dyn Backend, key: &str, op: AtomicOp, version: u64) -> AtomicOutcome {
        b.atomic(
            key,
            op,
            Unknown::Absent,
            WriteOptions::new(WriteVersion(version)),
        )
        .await
        .expect("atomic")
    }
    fn incr(delta: i64) -> AtomicOp {
        AtomicOp::Increment { delta, ttl: None }
    }
    let value = |o: &AtomicOutcome| o.value.as_deref().map(<[u8]>::to_vec);
    let counter = format!("{p}atomic:counter");
    let first = run(b, &counter, incr(5), 10).await;
    assert!(first.applied);
    assert_eq!(
        value(&first).as_deref(),
        Some(&b"5"[..]),
        "an absent key counts as 0"
    );
    let second = run(b, &counter, incr(-7), 10).await;
    assert_eq!(value(&second).as_deref(), Some(&b"-2"[..]));
    assert_eq!(
        b.get(&counter).await.expect("get").as_deref(),
        Some(&b"-2"[..])
    );
    if b.capabilities().versioned {
        assert!(
            second.version > first.version,
            "a versioned backend stamps each write above the last ({:?}, {:?})",
            first.version,
            second.version
        );
    }
    for (stored, delta, what) in [
        (&b"not a number"[..], 1, "a value that is not an integer"),
        (i64::MAX.to_string().as_bytes(), 1, "a sum beyond i64"),
    ] {
        let key = format!("{p}atomic:bad");
        b.set(&key, Bytes::copy_from_slice(stored), None)
            .await
            .expect("set");
        let error = b
            .atomic(
                &key,
                incr(delta),
                Unknown::Absent,
                WriteOptions::new(WriteVersion(1)),
            )
            .await
            .expect_err(what);
        assert!(error.is_caller_error(), "{what}: {error}");
        assert_eq!(
            b.get(&key).await.expect("get").as_deref(),
            Some(stored),
            "{what}"
        );
    }
    // A TTL given at creation holds; a later increment keeps it.
    let brief = format!("{p}atomic:brief");
    let created = run(
        b,
        &brief,
        AtomicOp::Increment {
            delta: 1,
            ttl: Some(SHORT_TTL),
        },
        1,
    )
    .await;
    assert!(
        created.ttl.is_some_and(|t| t <= SHORT_TTL),
        "{:?}",
        created.ttl
    );
    let kept = run(
        b,
        &brief,
        AtomicOp::Increment {
            delta: 1,
            ttl: None,
        },
        2,
    )
    .await;
    assert!(kept.ttl.is_some(), "an increment keeps the key's TTL");
    wait_until("an incremented key to expire", || async {
        b.get(&brief).await.expect("get").is_none()
    })
    .await;
    // Set-if-absent and compare-and-set.
    let flag = format!("{p}atomic:flag");
    let nx = |value: &'static [u8]| AtomicOp::SetIfAbsent {
        value: Bytes::from_static(value),
        ttl: None,
    };
    assert!(run(b, &flag, nx(b"first"), 1).await.applied);
    let refused = run(b, &flag, nx(b"second"), 2).await;
    assert!(!refused.applied);
    assert_eq!(
        value(&refused).as_deref(),
        Some(&b"first"[..]),
        "answers what it found"
    );
    let cas = |expected: Option<&'static [u8]>, value: &'static [u8]| AtomicOp::CompareAndSet {
        expected: expected.map(Bytes::from_static),
        value: Bytes::from_static(value),
        ttl: None,
    };
    assert!(!run(b, &flag, cas(Some(b"wrong"), b"x"), 3).await.applied);
    assert!(!run(b, &flag, cas(None, b"x"), 3).await.applied);
    assert!(
        run(b, &flag, cas(Some(b"first"), b"third"), 4)
            .await
            .applied
    );
    assert_eq!(
        b.get(&flag).await.expect("get").as_deref(),
        Some(&b"third"[..])
    );
    let fresh = format!("{p}atomic:fresh");
    assert!(run(b, &fresh, cas(None, b"made"), 5).await.applied);
    // A key never written: asked about only where data can be lost; a seed then continues it.
    let unknown = format!("{p}atomic:unknown");
    let asked = b
        .atomic(
            &unknown,
            incr(2),
            Unknown::Ask,
            WriteOptions::new(WriteVersion(1)),
        )
        .await
        .expect("atomic under Ask");
    if asked.unknown {
        assert!(
            !b.capabilities().durable,
            "a durable backend knows its keys"
        );
        assert_eq!(
            b.get(&unknown).await.expect("get"),
            None,
            "Ask changes nothing"
        );
        let seeded = b
            .atomic(
                &unknown,
                incr(2),
                Unknown::Seed(Some(Bytes::from_static(b"40"))),
                WriteOptions::new(WriteVersion(2)),
            )
            .await
            .expect("atomic under Seed");
        assert_eq!(
            value(&seeded).as_deref(),
            Some(&b"42"[..]),
            "a seed is continued"
        );
    }
    let known = b
        .atomic(
            &counter,
            incr(1),
            Unknown::Seed(Some(Bytes::from_static(b"1000"))),
            WriteOptions::new(WriteVersion(20)),
        )
        .await
        .expect("atomic");
    assert_eq!(
        value(&known).as_deref(),
        Some(&b"-1"[..]),
        "a known key ignores a seed"
    );
}

/// Versioned backends: a batch of replays (sets and deletes, older and newer than what is
/// stored, of a missing key, with a TTL) applies each by the version rule, as one replay would.
pub async fn batched_replays_follow_versions(b: &dyn Backend, p: &str) {
    let v = WriteVersion;
    let key = |name: &str| format!("{p}batch:v-{name}");
    let (older, newer, gone, kept, fresh) = (
        key("older"),
        key("newer"),
        key("gone"),
        key("kept"),
        key("fresh"),
    );
    for key in [&older, &newer, &gone, &kept] {
        b.set_versioned(key, Bytes::from_static(b"stored"), None, v(100))
            .await
            .expect("set_versioned");
    }
    fn replay(key: &str, write: KeyWrite, version: u64) -> BatchWrite<'_> {
        BatchWrite::new(
            key,
            write,
            WriteOptions::new(WriteVersion(version)).mode(WriteMode::IfNewer),
        )
    }
    let answers = b
        .write_many(vec![
            replay(&older, put(b"replayed", None), 50),
            replay(&newer, put(b"replayed", None), 200),
            replay(&gone, KeyWrite::Delete, 300),
            replay(&kept, KeyWrite::Delete, 50),
            replay(&fresh, put(b"brief", Some(SHORT_TTL)), 10),
        ])
        .await
        .expect("write_many of replays");
    let outcomes: Vec<WriteOutcome> = answers.into_iter().map(|a| a.expect("replay")).collect();
    assert_eq!(
        outcomes.iter().map(|o| o.applied).collect::<Vec<_>>(),
        [false, true, true, false, true],
        "in a batch, older replays are refused and newer ones apply, sets and deletes alike"
    );
    let read = |key: String| async move { b.get(&key).await.expect("get") };
    assert_eq!(read(older.clone()).await.as_deref(), Some(&b"stored"[..]));
    assert_eq!(read(newer.clone()).await.as_deref(), Some(&b"replayed"[..]));
    assert_eq!(read(gone.clone()).await, None, "a newer replayed delete");
    assert_eq!(read(kept.clone()).await.as_deref(), Some(&b"stored"[..]));
    assert_eq!(read(fresh.clone()).await.as_deref(), Some(&b"brief"[..]));
    wait_until("a replayed TTL to expire", || async {
        b.get(&fresh).await.expect("get").is_none()
    })
    .await;
}

/// The records of a target, claimed at once and settled (so the next check starts empty),
/// sorted by key.
async fn claim_all(b: &dyn Backend, target: &str, claim: u64) -> Vec<JournalEntry> {
    let mut entries = b
        .claim_journal(target, claim, 100, Duration::from_secs(60))
        .await
        .expect("claim_journal");
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

/// [`journal`](crate::Capabilities::journal): every kind of write that carries
/// [`WriteOptions::missed_by`] (a set, a delete, batches of each, atomic operations that
/// apply) leaves a record for each backend named, and a claim answers each key's current
/// state with its version and TTL left. A write without it, an atomic operation that did not
/// apply, and a replay leave none.
pub async fn journal_records_what_was_missed(b: &dyn Backend, p: &str) {
    let (up, other) = (format!("{p}up"), format!("{p}other"));
    let missed = MissedBy::new([up.clone(), other.clone()]);
    let options = |version| WriteOptions::new(WriteVersion(version)).missed_by(missed.clone());
    let key = |name: &str| format!("{p}journal:{name}");
    let ttl = Duration::from_secs(60);
    b.write(&key("set"), put(b"one", None), options(10))
        .await
        .expect("set");
    b.write(&key("set"), put(b"two", Some(ttl)), options(11))
        .await
        .expect("set again");
    b.set_versioned(
        &key("deleted"),
        Bytes::from_static(b"x"),
        None,
        WriteVersion(5),
    )
    .await
    .expect("set");
    b.write(&key("deleted"), KeyWrite::Delete, options(12))
        .await
        .expect("delete");
    b.write(
        &key("plain"),
        put(b"p", None),
        WriteOptions::new(WriteVersion(13)),
    )
    .await
    .expect("a write no backend missed");
    b.replay_write(&key("replayed"), put(b"r", None), WriteVersion(14))
        .await
        .expect("a replay");
    let batch = |names: &[&str], write: KeyWrite, version: u64| {
        names
            .iter()
            .map(|name| (key(name), write.clone(), options(version)))
            .collect::<Vec<_>>()
    };
    let sets = batch(&["batch-a", "batch-b"], put(b"b", None), 15);
    let sets = sets
        .iter()
        .map(|(k, w, o)| BatchWrite::new(k, w.clone(), o.clone()))
        .collect();
    for answer in b.write_many(sets).await.expect("a batch of sets") {
        answer.expect("set in a batch");
    }
    let deletes = batch(&["batch-gone"], KeyWrite::Delete, 16);
    let deletes = deletes
        .iter()
        .map(|(k, w, o)| BatchWrite::new(k, w.clone(), o.clone()))
        .collect();
    for answer in b.write_many(deletes).await.expect("a batch of deletes") {
        answer.expect("delete in a batch");
    }
    if b.capabilities().atomic {
        let increment = AtomicOp::Increment {
            delta: 5,
            ttl: None,
        };
        b.atomic(&key("counter"), increment, Unknown::Absent, options(17))
            .await
            .expect("increment");
        let refused = AtomicOp::CompareAndSet {
            expected: Some(Bytes::from_static(b"nope")),
            value: Bytes::from_static(b"v"),
            ttl: None,
        };
        let outcome = b
            .atomic(&key("cas"), refused, Unknown::Absent, options(18))
            .await
            .expect("compare-and-set");
        assert!(!outcome.applied);
    }
    for target in [&up, &other] {
        let entries = claim_all(b, target, 1).await;
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        let mut expected = vec![
            key("batch-a"),
            key("batch-b"),
            key("batch-gone"),
            key("deleted"),
            key("set"),
        ];
        if b.capabilities().atomic {
            expected.push(key("counter"));
        }
        expected.sort();
        assert_eq!(
            keys, expected,
            "one record per key missed, for each backend named"
        );
        let entry = |name: &str| {
            entries
                .iter()
                .find(|e| e.key == key(name))
                .expect("a record")
        };
        let set = entry("set");
        assert_eq!(set.version, WriteVersion(11), "the key's current version");
        match &set.write {
            KeyWrite::Set { value, ttl } => {
                assert_eq!(value.as_ref(), b"two", "the key's current value");
                let ttl = ttl.expect("the TTL left");
                assert!(ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50));
            }
            other => panic!("a set's record is a set, got {other:?}"),
        }
        assert_eq!(entry("deleted").write, KeyWrite::Delete);
        assert_eq!(entry("deleted").version, WriteVersion(12));
        assert_eq!(entry("batch-gone").write, KeyWrite::Delete);
        assert_eq!(entry("batch-a").write, put(b"b", None));
        if b.capabilities().atomic {
            assert_eq!(entry("counter").write, put(b"5", None));
        }
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        b.settle_journal(target, 1, &keys)
            .await
            .expect("settle_journal");
    }
}

/// [`journal`](crate::Capabilities::journal): a claimed record goes to no other claim until its
/// lease ends; settling deletes only the records the claim still holds, so one written again
/// after the claim stays (with the newer state) for the next claim.
pub async fn journal_claims_are_exclusive_and_settle_only_what_they_hold(b: &dyn Backend, p: &str) {
    let target = format!("{p}claims");
    let missed = MissedBy::new([target.clone()]);
    let options = |version| WriteOptions::new(WriteVersion(version)).missed_by(missed.clone());
    let (kept, rewritten) = (format!("{p}claim:kept"), format!("{p}claim:rewritten"));
    for key in [&kept, &rewritten] {
        b.write(key, put(b"first", None), options(20))
            .await
            .expect("set");
    }
    let lease = Duration::from_secs(60);
    let first = b
        .claim_journal(&target, 7, 100, lease)
        .await
        .expect("claim");
    assert_eq!(first.len(), 2);
    assert!(
        b.claim_journal(&target, 8, 100, lease)
            .await
            .expect("a second claim")
            .is_empty(),
        "claimed records go to no other claim"
    );
    b.write(&rewritten, put(b"second", None), options(21))
        .await
        .expect("set again");
    b.settle_journal(&target, 7, &[&kept, &rewritten])
        .await
        .expect("settle");
    let next = b
        .claim_journal(&target, 9, 100, Duration::ZERO)
        .await
        .expect("claim after settling");
    assert_eq!(
        next,
        vec![JournalEntry::new(
            rewritten.clone(),
            put(b"second", None),
            WriteVersion(21)
        )],
        "a record written again after its claim stays, with the newer write"
    );
    let again = b
        .claim_journal(&target, 10, 100, Duration::ZERO)
        .await
        .expect("claim once the lease ended");
    assert_eq!(
        again.len(),
        1,
        "a claim whose lease ended can be claimed again"
    );
    b.settle_journal(&target, 9, &[&rewritten])
        .await
        .expect("settle with a lapsed claim");
    assert_eq!(
        b.claim_journal(&target, 11, 100, Duration::ZERO)
            .await
            .expect("claim")
            .len(),
        1,
        "a lapsed claim settles nothing once another claim holds the record"
    );
    b.settle_journal(&target, 11, &[&rewritten])
        .await
        .expect("settle");
    assert!(
        b.claim_journal(&target, 12, 100, lease)
            .await
            .expect("claim")
            .is_empty(),
        "settled records are gone"
    );
}

/// Backends without [`locks`](crate::Capabilities::locks): every lock call is a typed
/// [`Error::Unsupported`](crate::Error::Unsupported), never a panic or a silent success.
pub async fn lock_calls_are_unsupported(b: &dyn Backend, p: &str) {
    let name = format!("{p}no-locks");
    let ttl = Duration::from_secs(1);
    let unsupported = |e: crate::Error| matches!(e, crate::Error::Unsupported { .. });
    assert!(
        b.acquire_lock(&name, "h", ttl)
            .await
            .is_err_and(unsupported),
        "acquire_lock without the locks capability"
    );
    assert!(
        b.extend_lock(&name, "h", ttl).await.is_err_and(unsupported),
        "extend_lock without the locks capability"
    );
    assert!(
        b.release_lock(&name, "h").await.is_err_and(unsupported),
        "release_lock without the locks capability"
    );
}

/// Versioned backends: a replayed write lands only over an older version or none, for every
/// shape of key (braces included, which Redis Cluster reads as hash tags).
pub async fn replays_never_overwrite_a_newer_write(b: &dyn Backend, p: &str) {
    let v = WriteVersion;
    for suffix in [
        "plain", "a{tag}b", "{tag}", "}{", "{", "}", "x{}y", "{}{z}", "ü{ß}",
    ] {
        let key = format!("{p}versioned:{suffix}");
        b.set_versioned(&key, Bytes::from_static(b"new"), None, v(100))
            .await
            .expect("set_versioned");
        assert!(
            !b.replay_write(&key, put(b"old", None), v(50))
                .await
                .expect("replay"),
            "an older replay must not apply ({suffix})"
        );
        assert_eq!(
            b.get(&key).await.expect("get").as_deref(),
            Some(&b"new"[..]),
            "an older replay overwrote a newer write ({suffix})"
        );
        assert!(
            b.replay_write(&key, put(b"newer", None), v(200))
                .await
                .expect("replay"),
            "a newer replay applies ({suffix})"
        );
        assert_eq!(
            b.get(&key).await.expect("get").as_deref(),
            Some(&b"newer"[..])
        );
        assert!(
            !b.replay_write(&key, put(b"same", None), v(200))
                .await
                .expect("replay"),
            "a replay of the stored version changes nothing ({suffix})"
        );
    }
    // A key written without a version (before versions, or by another client) is older than
    // any replay.
    let plain = format!("{p}versioned:unversioned");
    b.set(&plain, Bytes::from_static(b"plain"), None)
        .await
        .expect("set");
    assert!(
        b.replay_write(&plain, put(b"replayed", None), v(1))
            .await
            .expect("replay")
    );
    assert_eq!(
        b.get(&plain).await.expect("get").as_deref(),
        Some(&b"replayed"[..])
    );
    // An absent key takes any replay, with its TTL.
    let fresh = format!("{p}versioned:fresh");
    assert!(
        b.replay_write(&fresh, put(b"v", Some(SHORT_TTL)), v(7))
            .await
            .expect("replay")
    );
    assert_eq!(
        b.get(&fresh).await.expect("get").as_deref(),
        Some(&b"v"[..])
    );
    wait_until("the replayed value to expire", || async {
        b.get(&fresh).await.expect("get").is_none()
    })
    .await;
}

/// Versioned backends: a delete leaves a tombstone, so an older replayed write does not bring
/// the key back. A newer replay still applies.
pub async fn deletes_keep_older_replays_out(b: &dyn Backend, p: &str) {
    let v = WriteVersion;
    let key = format!("{p}tombstone");
    b.set_versioned(&key, Bytes::from_static(b"x"), None, v(100))
        .await
        .expect("set_versioned");
    assert!(
        b.delete_versioned(&key, v(300))
            .await
            .expect("delete_versioned"),
        "the key existed"
    );
    assert_eq!(b.get(&key).await.expect("get"), None);
    assert!(
        !b.delete_versioned(&key, v(310))
            .await
            .expect("delete_versioned"),
        "a tombstone is not a value"
    );
    assert!(
        !b.replay_write(&key, put(b"old", None), v(250))
            .await
            .expect("replay"),
        "a replay older than the delete must not bring the key back"
    );
    assert_eq!(b.get(&key).await.expect("get"), None);
    assert!(
        !b.replay_write(&key, KeyWrite::Delete, v(260))
            .await
            .expect("replay")
    );
    assert!(
        b.replay_write(&key, put(b"after", None), v(400))
            .await
            .expect("replay"),
        "a replay newer than the delete applies"
    );
    assert_eq!(
        b.get(&key).await.expect("get").as_deref(),
        Some(&b"after"[..])
    );
    assert!(
        b.replay_write(&key, KeyWrite::Delete, v(500))
            .await
            .expect("replay")
    );
    assert_eq!(b.get(&key).await.expect("get"), None);
}

/// For a versioned backend that keeps a value's version after the value expires (PostgreSQL
/// keeps the row; Redis does not, its version lives inside the value): an older replayed write
/// does not bring an expired value back. Not part of [`run`]: a backend that promises it calls
/// it.
pub async fn expired_values_keep_their_version(b: &dyn Backend, p: &str) {
    let v = WriteVersion;
    let expiring = format!("{p}tombstone:expiring");
    b.set_versioned(&expiring, Bytes::from_static(b"x"), Some(SHORT_TTL), v(100))
        .await
        .expect("set_versioned");
    wait_until("the value to expire", || async {
        b.get(&expiring).await.expect("get").is_none()
    })
    .await;
    assert!(
        !b.replay_write(&expiring, put(b"old", None), v(50))
            .await
            .expect("replay"),
        "a replay older than an expired write must not bring a value back"
    );
    assert_eq!(b.get(&expiring).await.expect("get"), None);
}

/// A fresh random key prefix.
pub fn prefix() -> String {
    format!("conformance-{:016x}:", fastrand::u64(..))
}

/// Absent keys read as `None`, and deleting them reports false.
pub async fn missing_keys_read_as_none(b: &dyn Backend, p: &str) {
    let key = format!("{p}missing");
    assert_eq!(
        b.get(&key).await.expect("get"),
        None,
        "missing key must read as None"
    );
    assert!(
        !b.delete(&key).await.expect("delete"),
        "deleting a missing key must say false"
    );
}

/// Empty, binary, text and large values come back byte for byte.
pub async fn values_round_trip_byte_exact(b: &dyn Backend, p: &str) {
    let mut large = vec![0_u8; 1024 * 1024];
    fastrand::fill(&mut large);
    let values: Vec<(&str, Bytes)> = vec![
        ("empty", Bytes::new()),
        ("every-byte", (0..=255_u8).collect::<Vec<_>>().into()),
        ("nul-and-high", Bytes::from_static(b"\0\xff\0\xfe")),
        ("text", Bytes::from("ünïcødé ✓ 🔑")),
        ("large", large.into()),
    ];
    for (name, value) in values {
        let key = format!("{p}value-{name}");
        b.set(&key, value.clone(), None).await.expect("set");
        let read = b.get(&key).await.expect("get");
        assert_eq!(
            read.as_deref(),
            Some(&value[..]),
            "value {name:?} must round-trip byte-exactly"
        );
    }
}

/// The keys the router accepts: any UTF-8 without NUL up to [`MAX_KEY_LEN_BOUND`] bytes, quotes,
/// SQL and glob characters included.
pub async fn every_valid_key_is_stored_verbatim(b: &dyn Backend, p: &str) {
    let mut keys: Vec<String> = [
        "a",
        "with space",
        "tab\tand\nnewline",
        "quote'double\"back\\slash",
        "'; DROP TABLE storage; --",
        "glob*?[x]{y}",
        "percent%_like",
        "unicode-ключ-键-🔑",
        "{hash}tag",
    ]
    .iter()
    .map(|k| format!("{p}{k}"))
    .collect();
    let mut long = p.to_owned();
    let pieces = ['a', 'é', '键', '🔑'];
    while long.len() < MAX_KEY_LEN_BOUND - 4 {
        long.push(pieces[fastrand::usize(..pieces.len())]);
    }
    while long.len() < MAX_KEY_LEN_BOUND {
        long.push('z');
    }
    keys.push(long);
    for (i, key) in keys.iter().enumerate() {
        b.set(key, Bytes::from(i.to_string()), None)
            .await
            .expect("set");
    }
    for (i, key) in keys.iter().enumerate() {
        let read = b.get(key).await.expect("get");
        assert_eq!(
            read.as_deref(),
            Some(i.to_string().as_bytes()),
            "key #{i} ({} bytes) must be stored verbatim and distinct from the others",
            key.len()
        );
    }
}

/// A second set replaces the value; delete reports whether the key existed.
pub async fn set_overwrites_and_delete_reports_existence(b: &dyn Backend, p: &str) {
    let key = format!("{p}overwrite");
    b.set(&key, Bytes::from_static(b"one"), None)
        .await
        .expect("set");
    b.set(&key, Bytes::from_static(b"two"), None)
        .await
        .expect("set");
    assert_eq!(
        b.get(&key).await.expect("get").as_deref(),
        Some(&b"two"[..])
    );
    assert!(
        b.delete(&key).await.expect("delete"),
        "delete of a present key must say true"
    );
    assert_eq!(
        b.get(&key).await.expect("get"),
        None,
        "a deleted key must read as None"
    );
    assert!(!b.delete(&key).await.expect("delete"));
}

/// A key with a TTL is readable at once and gone after the TTL.
pub async fn ttl_expires_keys(b: &dyn Backend, p: &str) {
    let key = format!("{p}ttl");
    let kept = format!("{p}no-ttl");
    b.set(&kept, Bytes::from_static(b"kept"), None)
        .await
        .expect("set");
    b.set(&key, Bytes::from_static(b"v"), Some(SHORT_TTL))
        .await
        .expect("set");
    assert!(
        b.get(&key).await.expect("get").is_some(),
        "a key must be readable before its TTL"
    );
    wait_until("a key with a TTL to expire", || async {
        b.get(&key).await.expect("get").is_none()
    })
    .await;
    assert!(
        b.get(&kept).await.expect("get").is_some(),
        "a key without TTL must stay"
    );
}

/// A new set replaces the old TTL: no TTL means forever, a shorter one applies.
pub async fn a_new_set_replaces_the_ttl(b: &dyn Backend, p: &str) {
    let persisted = format!("{p}ttl-removed");
    let shortened = format!("{p}ttl-shortened");
    let witness = format!("{p}ttl-witness");
    b.set(&persisted, Bytes::from_static(b"1"), Some(SHORT_TTL))
        .await
        .expect("set");
    b.set(&persisted, Bytes::from_static(b"2"), None)
        .await
        .expect("set");
    b.set(
        &shortened,
        Bytes::from_static(b"1"),
        Some(Duration::from_secs(3600)),
    )
    .await
    .expect("set");
    b.set(&shortened, Bytes::from_static(b"2"), Some(SHORT_TTL))
        .await
        .expect("set");
    b.set(&witness, Bytes::from_static(b"w"), Some(SHORT_TTL))
        .await
        .expect("set");
    wait_until("the shortened TTL to apply", || async {
        b.get(&shortened).await.expect("get").is_none()
    })
    .await;
    wait_until("the witness key to expire", || async {
        b.get(&witness).await.expect("get").is_none()
    })
    .await;
    assert_eq!(
        b.get(&persisted).await.expect("get").as_deref(),
        Some(&b"2"[..]),
        "a set without TTL must clear the earlier TTL"
    );
}

/// One holder at a time; only the holder extends or releases; re-acquiring keeps the token.
pub async fn locks_are_exclusive_and_owner_checked(b: &dyn Backend, p: &str) {
    let name = format!("{p}lock");
    let ttl = Duration::from_secs(30);
    let first = match b.acquire_lock(&name, "alice", ttl).await.expect("acquire") {
        LockOutcome::Acquired(grant) => grant,
        held => panic!("a free lock must be granted, got {held:?}"),
    };
    match b.acquire_lock(&name, "bob", ttl).await.expect("acquire") {
        LockOutcome::Held { .. } => {}
        other => panic!("a held lock must not be granted to another holder, got {other:?}"),
    }
    let again = b.acquire_lock(&name, "alice", ttl).await.expect("acquire");
    assert_eq!(
        again.grant().map(|g| g.token),
        Some(first.token),
        "the same holder re-acquiring keeps its token"
    );
    assert!(
        b.extend_lock(&name, "bob", ttl)
            .await
            .expect("extend")
            .is_none(),
        "only the holder extends"
    );
    assert!(
        !b.release_lock(&name, "bob").await.expect("release"),
        "only the holder releases"
    );
    assert!(
        !b.acquire_lock(&name, "bob", ttl)
            .await
            .expect("acquire")
            .is_acquired(),
        "a failed release by another holder must leave the lock held"
    );
    let extended = b.extend_lock(&name, "alice", ttl).await.expect("extend");
    assert_eq!(
        extended.map(|g| g.token),
        Some(first.token),
        "extending keeps the token"
    );
    assert!(b.release_lock(&name, "alice").await.expect("release"));
    assert!(
        !b.release_lock(&name, "alice").await.expect("release"),
        "a released lock is not held"
    );
    assert!(
        b.extend_lock(&name, "alice", ttl)
            .await
            .expect("extend")
            .is_none()
    );
}

/// Sixteen holders contend for one lock, releasing it as soon as they have it: never two hold
/// it at once, every release by the holder succeeds, and each grant's token is larger than the
/// one before. Catches acquire and release statements that race on the server.
pub async fn contended_locks_have_one_holder_at_a_time(b: &dyn Backend, p: &str) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HOLDERS: usize = 16;
    const GRANTS_EACH: usize = 25;
    let name = format!("{p}contended");
    let inside = AtomicUsize::new(0);
    let tokens = Mutex::new(Vec::new());
    let contender = |holder: String| {
        let (name, inside, tokens) = (&name, &inside, &tokens);
        async move {
            let mut granted = 0;
            let mut attempts = 0;
            while granted < GRANTS_EACH {
                attempts += 1;
                assert!(attempts < 20_000, "{holder} never got the lock");
                let outcome = b
                    .acquire_lock(name, &holder, Duration::from_secs(30))
                    .await
                    .expect("acquire");
                let Some(grant) = outcome.grant() else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "{holder} was granted the lock while another holder had it"
                );
                tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(grant.token);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(
                    b.release_lock(name, &holder).await.expect("release"),
                    "{holder}'s lease was gone before it released it"
                );
                granted += 1;
            }
        }
    };
    join_all(
        (0..HOLDERS)
            .map(|i| contender(format!("holder-{i}")))
            .collect(),
    )
    .await;
    let tokens = tokens.into_inner().unwrap_or_else(|e| e.into_inner());
    assert_eq!(tokens.len(), HOLDERS * GRANTS_EACH);
    for pair in tokens.windows(2) {
        assert!(
            pair[1] > pair[0],
            "fencing tokens must grow from grant to grant: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

/// Runs `futures` concurrently on the current task, without spawning (they borrow).
async fn join_all<F: Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in &mut futures {
            if let Some(future) = slot {
                if future.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    pending = true;
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
}

/// Each new grant of a lock name carries a larger fencing token.
pub async fn lock_tokens_grow_across_grants(b: &dyn Backend, p: &str) {
    let name = format!("{p}tokens");
    let mut last = None;
    for holder in ["a", "b", "c", "a"] {
        let grant = b
            .acquire_lock(&name, holder, Duration::from_secs(30))
            .await
            .expect("acquire")
            .grant()
            .cloned()
            .expect("a free lock must be granted");
        if let Some(last) = last {
            assert!(
                grant.token > last,
                "fencing tokens must grow: {last} then {}",
                grant.token
            );
        }
        last = Some(grant.token);
        assert!(b.release_lock(&name, holder).await.expect("release"));
    }
}

/// A lease ends at its TTL: another holder then gets the lock with a larger token, and the old
/// holder can no longer extend or release it.
pub async fn locks_expire(b: &dyn Backend, p: &str) {
    let name = format!("{p}expiring");
    let first = b
        .acquire_lock(&name, "alice", SHORT_TTL)
        .await
        .expect("acquire")
        .grant()
        .cloned()
        .expect("granted");
    wait_until("the lease to expire", || async {
        b.acquire_lock(&name, "bob", Duration::from_secs(30))
            .await
            .expect("acquire")
            .is_acquired()
    })
    .await;
    let bob = b
        .acquire_lock(&name, "bob", Duration::from_secs(30))
        .await
        .expect("acquire")
        .grant()
        .cloned()
        .expect("bob re-acquires his own lock");
    assert!(
        bob.token > first.token,
        "the next holder gets a larger token"
    );
    assert!(
        b.extend_lock(&name, "alice", SHORT_TTL)
            .await
            .expect("extend")
            .is_none()
    );
    assert!(!b.release_lock(&name, "alice").await.expect("release"));
    assert!(b.release_lock(&name, "bob").await.expect("release"));
}

/// A lock and a key of the same name are independent.
pub async fn locks_and_keys_do_not_collide(b: &dyn Backend, p: &str) {
    let name = format!("{p}shared-name");
    b.set(&name, Bytes::from_static(b"data"), None)
        .await
        .expect("set");
    assert!(
        b.acquire_lock(&name, "alice", Duration::from_secs(30))
            .await
            .expect("acquire")
            .is_acquired(),
        "a key must not block a lock of the same name"
    );
    assert!(b.release_lock(&name, "alice").await.expect("release"));
    assert_eq!(
        b.get(&name).await.expect("get").as_deref(),
        Some(&b"data"[..])
    );
}

/// Lock names of every brace shape (which Redis Cluster reads as hash tags) acquire, extend and
/// release like any other: a lock's keys must never be split across slots by its name.
pub async fn brace_shaped_lock_names_work(b: &dyn Backend, p: &str) {
    let ttl = Duration::from_secs(5);
    for shape in ["}x", "{", "}{", "{a}", "a}b{", "{}", "x{}y"] {
        // The name starts with the shape: where Redis Cluster looks for a hash tag.
        let name = format!("{shape}{p}brace-lock");
        let first = b
            .acquire_lock(&name, "h1", ttl)
            .await
            .unwrap_or_else(|e| panic!("acquire {name:?}: {e}"));
        assert!(first.grant().is_some(), "{name:?} acquired");
        assert!(
            b.acquire_lock(&name, "h2", ttl)
                .await
                .unwrap_or_else(|e| panic!("second acquire {name:?}: {e}"))
                .grant()
                .is_none(),
            "{name:?} is exclusive"
        );
        assert!(
            b.extend_lock(&name, "h1", ttl)
                .await
                .unwrap_or_else(|e| panic!("extend {name:?}: {e}"))
                .is_some(),
            "{name:?} extends"
        );
        assert!(
            b.release_lock(&name, "h1")
                .await
                .unwrap_or_else(|e| panic!("release {name:?}: {e}")),
            "{name:?} releases"
        );
    }
}

/// The health check passes on a working backend.
pub async fn health_check_passes(b: &dyn Backend) {
    b.health_check()
        .await
        .expect("health check of a working backend");
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + EXPIRY_WAIT;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {EXPIRY_WAIT:?} waiting for {what}"
        );
    }
}
