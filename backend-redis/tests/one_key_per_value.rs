//! A value and its write version share one Redis string: what the server holds, as a plain
//! client sees it (the README's "What a plain Redis client sees").

mod common;

use std::time::Duration;

use bytes::Bytes;
use resilient_backend_redis::stored_value;
use resilient_core::{Backend, BackendExt, KeyWrite, WriteVersion};
use resilient_test_support::RedisServer;

async fn plain(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn raw(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_value_is_one_key_with_a_twenty_byte_header() {
    let server = RedisServer::start().unwrap();
    let backend = common::backend(&server.url());
    let mut conn = plain(&server).await;
    for i in 0..100_u64 {
        backend
            .set_versioned(
                &format!("k{i}"),
                Bytes::from(vec![7_u8; 100]),
                None,
                WriteVersion(1_700_000_000_000_000 + i),
            )
            .await
            .unwrap();
    }
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(keys, 100, "no second key per value");
    let stored = raw(&mut conn, "k5").await.unwrap();
    assert_eq!(stored.len(), 100 + 20);
    assert_eq!(
        &stored[..20],
        format!("\0rsv{:016x}", 1_700_000_000_000_005_u64).as_bytes()
    );
    assert_eq!(stored_value(&stored), Some(&[7_u8; 100][..]));

    // A delete leaves a tombstone for tombstone_ttl: a plain client sees 20 bytes and a TTL.
    assert!(
        backend
            .delete_versioned("k5", WriteVersion(1_800_000_000_000_000))
            .await
            .unwrap()
    );
    let tombstone = raw(&mut conn, "k5").await.unwrap();
    assert_eq!(tombstone.len(), 20);
    assert_eq!(stored_value(&tombstone), None);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("k5")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 3_500_000,
        "the default tombstone_ttl is 1 h, got {ttl} ms"
    );
    assert_eq!(backend.get("k5").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_by_a_plain_client_read_as_they_are_and_take_any_replay() {
    let server = RedisServer::start().unwrap();
    let backend = common::backend(&server.url());
    let mut conn = plain(&server).await;
    let _: () = redis::cmd("SET")
        .arg("outside")
        .arg("written elsewhere")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        backend.get("outside").await.unwrap().as_deref(),
        Some(&b"written elsewhere"[..])
    );
    // No version: the oldest replay applies over it.
    let put = KeyWrite::Set {
        value: Bytes::from_static(b"replayed"),
        ttl: None,
    };
    assert!(
        backend
            .replay_write("outside", put, WriteVersion(1))
            .await
            .unwrap()
    );
    assert_eq!(
        backend.get("outside").await.unwrap().as_deref(),
        Some(&b"replayed"[..])
    );
    // A counter the library increments starts from a plain client's number.
    let _: () = redis::cmd("SET")
        .arg("count")
        .arg("41")
        .query_async(&mut conn)
        .await
        .unwrap();
    let outcome = backend
        .atomic(
            "count",
            resilient_core::AtomicOp::Increment {
                delta: 1,
                ttl: None,
            },
            resilient_core::Unknown::Absent,
            resilient_core::WriteOptions::new(WriteVersion(5)),
        )
        .await
        .unwrap();
    assert_eq!(outcome.value.as_deref(), Some(&b"42"[..]));
    assert_eq!(
        stored_value(&raw(&mut conn, "count").await.unwrap()),
        Some(&b"42"[..])
    );
}

/// The trade for one key per value: once a value expires its version goes with it, so a replay
/// older than the expired write applies (PostgreSQL keeps the version in the row). A delete's
/// tombstone does keep older replays out (the conformance suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_value_takes_its_version_with_it() {
    let server = RedisServer::start().unwrap();
    let backend = common::backend(&server.url());
    backend
        .set_versioned(
            "short",
            Bytes::from_static(b"new"),
            Some(Duration::from_millis(50)),
            WriteVersion(200),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend.get("short").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the value never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = KeyWrite::Set {
        value: Bytes::from_static(b"old"),
        ttl: None,
    };
    assert!(
        backend
            .replay_write("short", old, WriteVersion(100))
            .await
            .unwrap()
    );
}

/// Increments are exact on both sides of the script's two paths: canonical numbers under 10^15
/// are added in Lua, anything else by INCRBY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_are_exact_on_both_sides_of_the_fast_path() {
    use resilient_core::{AtomicOp, Unknown, WriteOptions};
    let server = RedisServer::start().unwrap();
    let backend = common::backend(&server.url());
    for (start, delta, sum) in [
        ("999999999999999", 1, "1000000000000000"),
        ("1000000000000000", 1, "1000000000000001"),
        ("9007199254740993", 0, "9007199254740993"),
        ("-5", 5, "0"),
        ("0", -999_999_999_999_999, "-999999999999999"),
        ("12", 9_007_199_254_740_993, "9007199254741005"),
    ] {
        let key = format!("n{start}:{delta}");
        backend
            .set(&key, Bytes::copy_from_slice(start.as_bytes()), None)
            .await
            .unwrap();
        let outcome = backend
            .atomic(
                &key,
                AtomicOp::Increment { delta, ttl: None },
                Unknown::Absent,
                WriteOptions::new(WriteVersion(9)),
            )
            .await
            .unwrap();
        assert_eq!(
            outcome.value.as_deref(),
            Some(sum.as_bytes()),
            "{start} + {delta}"
        );
    }
    // A number with a leading zero is INCRBY's to judge: it refuses it, and the value stays.
    backend
        .set("zero", Bytes::from_static(b"007"), None)
        .await
        .unwrap();
    let refused = backend
        .atomic(
            "zero",
            AtomicOp::Increment {
                delta: 1,
                ttl: None,
            },
            Unknown::Absent,
            WriteOptions::new(WriteVersion(9)),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        backend.get("zero").await.unwrap().as_deref(),
        Some(&b"007"[..])
    );
}

/// A key kept by a plain client with a TTL beyond 10^14 ms (where Lua's `..` writes a number as
/// `1e+14`) still takes an increment, and the TTL comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_keeps_and_reports_a_very_long_ttl() {
    use resilient_core::{AtomicOp, Unknown, WriteOptions};
    let server = RedisServer::start().unwrap();
    let backend = common::backend(&server.url());
    let mut conn = plain(&server).await;
    let ttl_ms: u64 = 200_000_000_000_000;
    redis::cmd("SET")
        .arg("long")
        .arg("41")
        .arg("PX")
        .arg(ttl_ms)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let outcome = backend
        .atomic(
            "long",
            AtomicOp::Increment {
                delta: 1,
                ttl: None,
            },
            Unknown::Absent,
            WriteOptions::new(WriteVersion(9)),
        )
        .await
        .unwrap();
    assert_eq!(outcome.value.as_deref(), Some(&b"42"[..]));
    let ttl = outcome.ttl.expect("the key's TTL").as_millis();
    assert!(
        ttl > 199_999_999_000_000 && ttl <= 200_000_000_000_000,
        "{ttl}"
    );
}
