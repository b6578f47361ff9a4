//! `examples/storage.toml` parses, passes every check, and environment variables override it.

use std::time::Duration;

use resilient_storage::{StorageConfig, Strategy, WritePolicy};

const EXAMPLE: &str = include_str!("../examples/storage.toml");

#[test]
fn the_example_configuration_is_valid_and_documents_every_default() {
    let config = StorageConfig::from_toml_str(EXAMPLE).unwrap();
    assert_eq!(config.backends.len(), 2);
    assert_eq!(config.strategy, Strategy::Failover);
    assert_eq!(config.write_policy, WritePolicy::WriteThrough);
    // The sections the file spells out in full hold the defaults.
    assert_eq!(config.breaker, Default::default());
    assert_eq!(config.health, Default::default());
    assert_eq!(config.keys, Default::default());
}

#[test]
fn environment_variables_override_the_example() {
    let env = [
        (
            "RESILIENT_STORAGE_BACKENDS__0__URL",
            "redis://:s3cret@cache:6380",
        ),
        ("RESILIENT_STORAGE_BACKENDS__1__ENABLED", "false"),
        ("RESILIENT_STORAGE_DEADLINE", "3s"),
    ];
    let config = StorageConfig::from_toml_with_env(EXAMPLE, env).unwrap();
    assert_eq!(config.backends[0].url, "redis://:s3cret@cache:6380");
    assert!(!config.backends[1].enabled);
    assert_eq!(config.deadline, Duration::from_secs(3));
    assert!(!format!("{config:?}").contains("s3cret"));
}
