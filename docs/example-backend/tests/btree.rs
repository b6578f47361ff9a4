//! What a third-party backend must show: the conformance suite passes, `btree://` URLs resolve
//! once the crate is linked, and the backend serves through the facade with failover.

use std::sync::Arc;
use std::time::Duration;

use btree_backend::BTreeBackend;
use resilient_storage::testing::{Fault, FaultBackend};
use resilient_storage::{Backend, BackendUrl, Error, ResilientStorage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let backend = BTreeBackend::new("btree", Duration::from_secs(3600));
    resilient_storage::testing::conformance::run(&backend).await;
    let prefix = resilient_storage::testing::conformance::prefix();
    resilient_storage::testing::conformance::expired_values_keep_their_version(&backend, &prefix)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_by_url_and_refuses_unknown_options() {
    assert!(resilient_storage::registry::schemes().contains(&"btree"));
    let storage = ResilientStorage::builder()
        .backend_url("btree://?name=ordered", 1)
        .unwrap()
        .build()
        .await
        .unwrap();
    // A process-local backend is the last line of defence itself: no memory fallback is added.
    assert_eq!(storage.backend_names(), ["ordered"]);
    storage.set("k", "v", None).await.unwrap();
    assert_eq!(storage.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(storage.last_served_backend().as_deref(), Some("ordered"));

    let err =
        BTreeBackend::from_url(&BackendUrl::parse("btree://?colour=red").unwrap()).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("colour"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_through_the_facade_and_fails_over() {
    let btree = Arc::new(
        FaultBackend::wrap(Arc::new(BTreeBackend::new(
            "btree",
            Duration::from_secs(60),
        )))
        .named("btree"),
    );
    let storage = ResilientStorage::builder()
        .backend(btree.clone() as Arc<dyn Backend>, 1)
        .backend_url("memory://", 2)
        .unwrap()
        .build()
        .await
        .unwrap();
    storage.set("k", "before", None).await.unwrap();
    assert_eq!(storage.last_served_backend().as_deref(), Some("btree"));
    btree.inject(Fault::Fail);
    storage.set("k", "during", None).await.unwrap();
    assert_eq!(storage.last_served_backend().as_deref(), Some("memory"));
    assert_eq!(
        storage.get("k").await.unwrap().as_deref(),
        Some(&b"during"[..])
    );
    storage.shutdown().await;
}
