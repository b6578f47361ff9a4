//! `StorageConfig` from TOML with environment overrides: every bad setting names its field,
//! and no error echoes a URL or password.
#![cfg(feature = "toml")]

use std::time::Duration;

use resilient_core::{Error, LockFailover, StorageConfig};
// Registers `memory://`, which the configurations below name.
use resilient_backend_memory as _;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn field_of(error: Error) -> String {
    match error {
        Error::Config { field, .. } => field,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn environment_overrides_the_file_field_by_field() {
    let toml = r#"
        attempt_timeout = "250ms"
        [[backends]]
        url = "memory://?name=first"
        priority = 1
        [breaker]
        consecutive_failures = 3
    "#;
    let config = StorageConfig::from_toml_with_env(
        toml,
        env(&[
            ("RESILIENT_STORAGE_ATTEMPT_TIMEOUT", "300ms"),
            ("RESILIENT_STORAGE_BREAKER__CONSECUTIVE_FAILURES", "5"),
            ("RESILIENT_STORAGE_BACKENDS__0__NAME", "cache"),
            (
                "RESILIENT_STORAGE_BACKENDS__1__URL",
                "memory://?name=second",
            ),
            ("RESILIENT_STORAGE_BACKENDS__1__PRIORITY", "2"),
            ("RESILIENT_STORAGE_MEMORY_FALLBACK", "false"),
            ("UNRELATED", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(config.attempt_timeout, Duration::from_millis(300));
    assert_eq!(config.breaker.consecutive_failures, 5);
    assert_eq!(config.backends.len(), 2);
    assert_eq!(config.backends[0].name.as_deref(), Some("cache"));
    assert_eq!(config.backends[0].url, "memory://?name=first");
    assert_eq!(config.backends[1].url, "memory://?name=second");
    assert_eq!(config.backends[1].priority, 2);
    assert!(!config.memory_fallback);
}

#[test]
fn every_bad_setting_names_its_field() {
    /// A TOML document, environment variables, and the field the error must name.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("attempt_timeout = \"0s\"", &[], "attempt_timeout"),
        ("deadline = \"soon\"", &[], "deadline"),
        ("colour = \"blue\"", &[], "colour"),
        (
            "[breaker]\nconsecutive_failures = 0",
            &[],
            "breaker.consecutive_failures",
        ),
        ("[breaker]\nshade = 1", &[], "breaker.shade"),
        (
            "[[backends]]\nurl = \"nosuch://host\"\npriority = 1",
            &[],
            "backends[0].url",
        ),
        (
            "[[backends]]\nurl = \"memory://\"\npriority = 1\n[[backends]]\nurl = \"not a url\"\npriority = 2",
            &[],
            "backends[1].url",
        ),
        ("[[backends]]\nurl = \"memory://\"", &[], "backends[0]"),
        ("strategy = \"random\"", &[], "strategy"),
        ("attempt_timeout = ", &[], "toml line 1"),
        (
            "",
            &[("RESILIENT_STORAGE_BACKENDS__3__URL", "memory://")],
            "RESILIENT_STORAGE_BACKENDS__3__URL",
        ),
        (
            "",
            &[("RESILIENT_STORAGE_ATTEMPT_TIMEOUT", "0ms")],
            "attempt_timeout",
        ),
    ];
    for (toml, vars, field) in cases {
        let error = StorageConfig::from_toml_with_env(toml, env(vars))
            .expect_err(&format!("{toml:?} with {vars:?} must be refused"));
        let message = error.to_string();
        let got = field_of(error);
        assert!(
            got.starts_with(field),
            "{toml:?} {vars:?}: error names {got:?}, expected {field:?} ({message})"
        );
    }
}

#[test]
fn errors_never_echo_a_url_or_password() {
    let secret = "hunter2-secret";
    let cases = [
        format!("[[backends]]\nurl = \"nosuch://u:{secret}@host\"\npriority = 1"),
        format!("[[backends]]\nurl = \"redis://u:{secret}@host\"\npriority = \"first\""),
        format!("[[backends]]\nurl = \"memory://u:{secret}@host\" priority = 1"),
        format!("[[backends]]\nurl = 7\nname = \"{secret}\"\npriority = 1"),
    ];
    for toml in cases {
        let error = StorageConfig::from_toml_str(&toml).expect_err(&toml);
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(secret), "{toml:?} leaked: {shown}");
    }
}

#[test]
fn lock_failover_is_never_by_default_and_the_opt_in_names_its_delay() {
    let config = StorageConfig::from_toml_with_env("", env(&[])).unwrap();
    assert_eq!(config.lock_failover, LockFailover::Never);
    let config = StorageConfig::from_toml_with_env(
        r#"lock_failover = { after_outage = { delay = "30s" } }"#,
        env(&[]),
    )
    .unwrap();
    assert_eq!(
        config.lock_failover,
        LockFailover::after_outage(Duration::from_secs(30))
    );
    let config = StorageConfig::from_toml_with_env(
        r#"lock_failover = { after_outage = { delay = "30s" } }"#,
        env(&[("RESILIENT_STORAGE_LOCK_FAILOVER", "never")]),
    )
    .unwrap();
    assert_eq!(config.lock_failover, LockFailover::Never);
    let err =
        StorageConfig::from_toml_with_env(r#"lock_failover = "sometimes""#, env(&[])).unwrap_err();
    assert_eq!(field_of(err), "lock_failover");
}
