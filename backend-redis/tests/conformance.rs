//! The Redis backend passes the shared conformance suite, standalone and on a Redis Cluster.

mod common;

use resilient_core::BackendExt;
use resilient_core::testing::conformance;
use resilient_test_support::{RedisCluster, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_server_passes_the_conformance_suite() {
    let server = RedisServer::start().unwrap();
    conformance::run(&common::backend(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_prefix_keeps_two_backends_apart_on_one_server() {
    let server = RedisServer::start().unwrap();
    let a = common::backend(&format!("{}?prefix=a:", server.url()));
    conformance::run(&a).await;
    let b = common::backend(&format!("{}?prefix=b:", server.url()));
    use resilient_core::Backend;
    a.set("k", "from a".into(), None).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_master_cluster_passes_the_conformance_suite() {
    let cluster = RedisCluster::start(3).unwrap();
    let hosts: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    let backend = common::backend(&format!("redis+cluster://{}", hosts.join(",")));
    conformance::run(&backend).await;
}

#[test]
fn every_redis_scheme_is_registered() {
    let schemes = resilient_core::registry::schemes();
    for scheme in [
        "redis",
        "rediss",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
    ] {
        assert!(
            schemes.contains(&scheme),
            "{scheme} missing from {schemes:?}"
        );
    }
    resilient_backend_redis::register().expect("registering again is a no-op");
}
