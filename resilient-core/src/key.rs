//! Key, value, holder and TTL rules, checked once in the router so every backend sees the same
//! input and rejects nothing the others accept.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, KeyProblem, Result};

/// The longest key any shipped backend stores reliably. PostgreSQL's btree index rejects rows
/// near 2,704 bytes, and a random 2,700-byte key already overflows it, so the bound leaves room
/// for the row's other columns.
pub const MAX_KEY_LEN_BOUND: usize = 2048;

/// The largest value any shipped backend accepts in one piece (Redis' bulk-string limit).
pub const MAX_VALUE_LEN_BOUND: usize = 512 * 1024 * 1024;

/// The longest TTL accepted: 100 years. Longer ones overflow clocks and `PX` arithmetic.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The longest lock holder id.
pub const MAX_HOLDER_LEN: usize = 256;

/// Limits on keys and values, and an optional namespace prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyPolicy {
    /// Maximum key length in bytes, namespace included. Default 1,024; at most
    /// [`MAX_KEY_LEN_BOUND`].
    pub max_key_len: usize,
    /// Maximum value length in bytes. Default 4 MiB; at most [`MAX_VALUE_LEN_BOUND`].
    pub max_value_len: usize,
    /// Prefix prepended to every key and lock name before it reaches a backend.
    pub namespace: Option<String>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            max_key_len: 1024,
            max_value_len: 4 * 1024 * 1024,
            namespace: None,
        }
    }
}

impl KeyPolicy {
    /// Sets the maximum key length.
    pub fn max_key_len(mut self, len: usize) -> Self {
        self.max_key_len = len;
        self
    }

    /// Sets the maximum value length.
    pub fn max_value_len(mut self, len: usize) -> Self {
        self.max_value_len = len;
        self
    }

    /// Sets the namespace prefix.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Checks the policy itself.
    pub fn validate(&self) -> Result<()> {
        if self.max_key_len == 0 || self.max_key_len > MAX_KEY_LEN_BOUND {
            return Err(Error::config(
                "keys.max_key_len",
                format!("must be between 1 and {MAX_KEY_LEN_BOUND}"),
            ));
        }
        if self.max_value_len == 0 || self.max_value_len > MAX_VALUE_LEN_BOUND {
            return Err(Error::config(
                "keys.max_value_len",
                format!("must be between 1 and {MAX_VALUE_LEN_BOUND}"),
            ));
        }
        if let Some(ns) = &self.namespace {
            check_text(ns, self.max_key_len - 1)
                .map_err(|p| Error::config("keys.namespace", p.to_string()))?;
        }
        Ok(())
    }

    /// Validates a key or lock name and returns it with the namespace prefix. Borrows when there
    /// is no namespace, so the common path does not allocate.
    #[inline]
    pub fn full_key<'k>(&self, key: &'k str) -> Result<Cow<'k, str>> {
        let prefix = self.namespace.as_deref().unwrap_or("");
        if key.is_empty() {
            return Err(Error::InvalidKey(KeyProblem::Empty));
        }
        let len = prefix.len() + key.len();
        if len > self.max_key_len {
            return Err(Error::InvalidKey(KeyProblem::TooLong {
                len,
                max: self.max_key_len,
            }));
        }
        if key.as_bytes().contains(&0) {
            return Err(Error::InvalidKey(KeyProblem::ContainsNul));
        }
        Ok(if prefix.is_empty() {
            Cow::Borrowed(key)
        } else {
            Cow::Owned([prefix, key].concat())
        })
    }

    /// Validates a value's size.
    pub fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_len {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                max: self.max_value_len,
            });
        }
        Ok(())
    }
}

/// Validates a lock holder id: non-empty, no NUL, at most [`MAX_HOLDER_LEN`] bytes.
pub fn check_holder(holder: &str) -> Result<()> {
    check_text(holder, MAX_HOLDER_LEN).map_err(Error::InvalidHolder)
}

/// Validates a TTL: at least one millisecond (Redis' `PX` resolution) and at most [`MAX_TTL`].
/// Inlined, with the error built out of line.
#[inline]
pub fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl >= Duration::from_millis(1) && ttl <= MAX_TTL {
        return Ok(());
    }
    Err(invalid_ttl(ttl))
}

#[cold]
#[inline(never)]
fn invalid_ttl(ttl: Duration) -> Error {
    let reason = if ttl.is_zero() {
        "must not be zero"
    } else if ttl < Duration::from_millis(1) {
        "must be at least 1ms"
    } else {
        "must be at most 100 years"
    };
    Error::InvalidTtl { ttl, reason }
}

fn check_text(text: &str, max: usize) -> std::result::Result<(), KeyProblem> {
    if text.is_empty() {
        Err(KeyProblem::Empty)
    } else if text.len() > max {
        Err(KeyProblem::TooLong {
            len: text.len(),
            max,
        })
    } else if text.as_bytes().contains(&0) {
        Err(KeyProblem::ContainsNul)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_nul_and_overlong_keys() {
        let policy = KeyPolicy::default();
        assert!(matches!(
            policy.full_key(""),
            Err(Error::InvalidKey(KeyProblem::Empty))
        ));
        assert!(matches!(
            policy.full_key("a\0b"),
            Err(Error::InvalidKey(KeyProblem::ContainsNul))
        ));
        let long = "k".repeat(1025);
        assert!(matches!(
            policy.full_key(&long),
            Err(Error::InvalidKey(KeyProblem::TooLong {
                len: 1025,
                max: 1024
            }))
        ));
        assert!(policy.full_key(&long[..1024]).is_ok());
    }

    #[test]
    fn namespace_is_prefixed_and_counted_in_the_length() {
        let policy = KeyPolicy::default().namespace("app:").max_key_len(8);
        assert_eq!(policy.full_key("user").unwrap(), "app:user");
        assert!(matches!(
            policy.full_key("users"),
            Err(Error::InvalidKey(KeyProblem::TooLong { len: 9, max: 8 }))
        ));
    }

    #[test]
    fn key_without_namespace_is_borrowed() {
        assert!(matches!(
            KeyPolicy::default().full_key("k").unwrap(),
            Cow::Borrowed("k")
        ));
    }

    #[test]
    fn ttl_bounds() {
        assert!(check_ttl(Duration::ZERO).is_err());
        assert!(check_ttl(Duration::from_micros(999)).is_err());
        assert!(check_ttl(Duration::from_millis(1)).is_ok());
        assert!(check_ttl(MAX_TTL).is_ok());
        assert!(check_ttl(Duration::MAX).is_err());
    }

    #[test]
    fn policy_bounds_are_checked() {
        assert!(KeyPolicy::default().validate().is_ok());
        assert!(
            KeyPolicy::default()
                .max_key_len(MAX_KEY_LEN_BOUND + 1)
                .validate()
                .is_err()
        );
        assert!(KeyPolicy::default().max_value_len(0).validate().is_err());
        assert!(KeyPolicy::default().namespace("bad\0").validate().is_err());
    }

    #[test]
    fn holder_rules() {
        assert!(check_holder("worker-1").is_ok());
        assert!(check_holder("").is_err());
        assert!(check_holder(&"h".repeat(MAX_HOLDER_LEN + 1)).is_err());
    }
}
