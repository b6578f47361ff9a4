//! Batches through the router on tokio's paused clock: answers key by key in order with bad
//! keys refused in place, the whole batch failing over when the primary fails, only the failed
//! part failing over when the primary fails some keys alone, and every write a fallback took
//! recorded for the primary's replay.

mod common;

use std::sync::Arc;

use common::{builder, direct, fault};
use resilient_core::testing::Fault;
use resilient_core::{
    Backend, BatchWrite, Bytes, Capabilities, Error, HealthProbe, KeyWrite, Operation, Result,
    WriteOptions, WriteOutcome, async_trait,
};

/// A backend that fails every key starting with `bad` alone, in batches and single calls, as a
/// Redis Cluster does for the keys of a node that is down.
#[derive(Debug)]
struct PartlyDown {
    inner: Arc<dyn Backend>,
}

fn down(key: &str) -> Error {
    Error::backend(
        "partly-down",
        Operation::GetMany,
        format!("node of {} is down", key.len()),
    )
}

#[async_trait]
impl Backend for PartlyDown {
    fn name(&self) -> &str {
        "partly-down"
    }
    fn scheme(&self) -> &str {
        "partly-down"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new().shared(true)
    }
    async fn health_check(&self) -> Result<HealthProbe> {
        Ok(HealthProbe::Healthy)
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match key.starts_with("bad") {
            true => Err(down(key)),
            false => self.inner.get(key).await,
        }
    }
    async fn write(
        &self,
        key: &str,
        write: KeyWrite,
        options: WriteOptions,
    ) -> Result<WriteOutcome> {
        match key.starts_with("bad") {
            true => Err(down(key)),
            false => self.inner.write(key, write, options).await,
        }
    }
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Result<Option<Bytes>>>> {
        let mut answers = Vec::new();
        for key in keys {
            answers.push(self.get(key).await);
        }
        Ok(answers)
    }
    async fn write_many(&self, writes: Vec<BatchWrite<'_>>) -> Result<Vec<Result<WriteOutcome>>> {
        let mut answers = Vec::new();
        for w in writes {
            answers.push(self.write(w.key, w.write, w.options).await);
        }
        Ok(answers)
    }
}

#[tokio::test(start_paused = true)]
async fn batches_answer_key_by_key_in_order_and_refuse_bad_keys_in_place() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    let written = storage
        .set_many(
            [("a", "1"), ("", "empty key"), ("b", "2"), ("c", "3")],
            None,
        )
        .await
        .unwrap();
    assert!(written[0].is_ok() && written[2].is_ok() && written[3].is_ok());
    assert!(matches!(written[1], Err(Error::InvalidKey(_))));
    let values = storage
        .get_many(&["c", "missing", "a", "", "b", "a"])
        .await
        .unwrap();
    let values: Vec<Option<&[u8]>> = values
        .iter()
        .map(|v| v.as_ref().ok().and_then(|v| v.as_deref()))
        .collect();
    assert_eq!(
        values,
        [
            Some(&b"3"[..]),
            None,
            Some(b"1"),
            None,
            Some(b"2"),
            Some(b"1")
        ]
    );
    let deleted = storage.delete_many(&["a", "missing", "b"]).await.unwrap();
    let deleted: Vec<bool> = deleted.into_iter().map(Result::unwrap).collect();
    assert_eq!(deleted, [true, false, true]);
    assert_eq!(storage.get("a").await.unwrap(), None);
    assert!(storage.get_many::<&str>(&[]).await.unwrap().is_empty());
    assert!(
        storage
            .set_many::<&str, &str>([], None)
            .await
            .unwrap()
            .is_empty()
    );
    // Copied behind to PostgreSQL, as single writes are.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(direct(&*postgres, "c").await.as_deref(), Some(&b"3"[..]));
    assert_eq!(direct(&*postgres, "a").await, None);
}

#[tokio::test(start_paused = true)]
async fn a_batch_fails_over_whole_and_its_writes_reach_the_primary_after() {
    let (redis, postgres) = (fault("redis"), fault("postgres"));
    let storage = builder(&[&redis, &postgres]).build().await.unwrap();
    redis.inject(Fault::Fail);
    let written = storage
        .set_many([("k1", "v1"), ("k2", "v2")], None)
        .await
        .unwrap();
    assert!(written.iter().all(Result::is_ok));
    assert_eq!(storage.health().backends["redis"].pending_replay, 2);
    let values = storage.get_many(&["k1", "k2"]).await.unwrap();
    assert!(values.iter().all(|v| v.as_ref().unwrap().is_some()));
    // Both down: the call as a whole fails.
    postgres.inject(Fault::Fail);
    assert!(storage.get_many(&["other"]).await.is_err());
    postgres.inject(Fault::Pass);
    redis.inject(Fault::Pass);
    // Once Redis's breaker lets calls through again, the replay brings both writes to it.
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let _ = storage.get_many(&["k1", "k2"]).await;
        if storage.health().backends["redis"].pending_replay == 0 {
            break;
        }
    }
    assert_eq!(direct(&*redis, "k1").await.as_deref(), Some(&b"v1"[..]));
    assert_eq!(direct(&*redis, "k2").await.as_deref(), Some(&b"v2"[..]));
}

#[tokio::test(start_paused = true)]
async fn only_the_keys_a_backend_fails_alone_fail_over() {
    let memory = fault("redis-nodes");
    let partly = Arc::new(PartlyDown {
        inner: memory.clone(),
    });
    let postgres = fault("postgres");
    let storage = resilient_core::ResilientStorage::builder()
        .memory_fallback(false)
        .health(resilient_core::HealthConfig::default().enabled(false))
        .backend(partly as Arc<dyn Backend>, 1)
        .backend(postgres.clone() as Arc<dyn Backend>, 2)
        .build()
        .await
        .unwrap();
    let written = storage
        .set_many([("good", "g"), ("bad-1", "b1"), ("good-2", "g2")], None)
        .await
        .unwrap();
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    assert_eq!(direct(&*memory, "good").await.as_deref(), Some(&b"g"[..]));
    assert_eq!(direct(&*memory, "bad-1").await, None);
    assert_eq!(
        direct(&*postgres, "bad-1").await.as_deref(),
        Some(&b"b1"[..])
    );
    // The key the primary missed is kept for its replay; the others are not.
    assert_eq!(storage.health().backends["partly-down"].pending_replay, 1);
    let values = storage
        .get_many(&["bad-1", "good", "good-2"])
        .await
        .unwrap();
    let values: Vec<_> = values.into_iter().map(|v| v.unwrap()).collect();
    assert_eq!(values[0].as_deref(), Some(&b"b1"[..]));
    assert_eq!(values[1].as_deref(), Some(&b"g"[..]));
    assert_eq!(values[2].as_deref(), Some(&b"g2"[..]));
    // A read the primary fails alone goes to PostgreSQL, with no replay record to answer it.
    postgres
        .write(
            "bad-2",
            KeyWrite::Set {
                value: Bytes::from_static(b"only-on-postgres"),
                ttl: None,
            },
            WriteOptions::new(resilient_core::WriteVersion(1)),
        )
        .await
        .unwrap();
    let values = storage.get_many(&["good", "bad-2"]).await.unwrap();
    assert_eq!(values[0].as_ref().unwrap().as_deref(), Some(&b"g"[..]));
    assert_eq!(
        values[1].as_ref().unwrap().as_deref(),
        Some(&b"only-on-postgres"[..])
    );
    let deleted = storage.delete_many(&["bad-1", "good"]).await.unwrap();
    assert_eq!(
        deleted.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [true, true]
    );
}
