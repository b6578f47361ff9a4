//! A crate that depends only on the facade sees exactly the backends its features enable.
//! `cargo xtask test` runs this file once per feature set.

#[test]
fn exactly_the_enabled_backends_are_registered() {
    let mut expected: Vec<&str> = Vec::new();
    if cfg!(feature = "memory") {
        expected.push("memory");
    }
    if cfg!(feature = "redis") {
        expected.extend([
            "redis",
            "redis+cluster",
            "redis+sentinel",
            "rediss",
            "rediss+cluster",
            "rediss+sentinel",
        ]);
    }
    if cfg!(feature = "postgres") {
        expected.extend(["postgres", "postgresql"]);
    }
    expected.sort_unstable();
    assert_eq!(resilient_storage::registry::schemes(), expected);
}

#[tokio::test]
async fn the_memory_fallback_needs_the_memory_feature() {
    let built = resilient_storage::ResilientStorage::builder().build().await;
    if cfg!(feature = "memory") {
        let storage = built.expect("memory fallback");
        assert_eq!(storage.backend_names(), ["memory"]);
    } else {
        let err = built.expect_err("no memory backend is linked").to_string();
        assert!(
            err.contains("memory_fallback") && err.contains("`memory` feature"),
            "{err}"
        );
    }
}
