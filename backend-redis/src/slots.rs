//! A hash tag for every Redis Cluster slot, so a companion key (a key's write version) can be
//! placed in the slot of any key, whatever braces the key itself holds.
//!
//! Redis Cluster hashes only the first `{...}` of a key when it is non-empty. A companion key
//! that starts its own tag before the original key's bytes therefore lands in the slot of that
//! tag: with one tag per slot, found once by hashing short strings, it lands where the key does.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::cluster_routing::Slot;

/// Redis Cluster's slot count.
const SLOTS: usize = 16384;

/// Short brace-free strings, one per slot.
static TAGS: LazyLock<HashMap<Slot, Box<str>>> = LazyLock::new(|| {
    let mut tags = HashMap::with_capacity(SLOTS);
    // Base-36 numbers in order until every slot has one: about n ln n = 170 000 tries, built
    // on the first versioned write (this module's test, which builds it, runs in 10 ms in a
    // release build).
    let mut n: u64 = 0;
    while tags.len() < SLOTS {
        let tag = base36(n);
        tags.entry(Slot::for_key(tag.as_bytes())).or_insert(tag);
        n += 1;
    }
    tags
});

fn base36(mut n: u64) -> Box<str> {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out)
        .expect("ASCII digits")
        .into_boxed_str()
}

/// A tag (without braces) whose slot is `key`'s.
pub(crate) fn tag_for(key: &[u8]) -> &'static str {
    &TAGS[&Slot::for_key(key)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_braced_tag_lands_in_the_slot_of_any_key() {
        for key in [
            &b"plain"[..],
            b"a{tag}b",
            b"{tag}",
            b"}{",
            b"{",
            b"}",
            b"x{}y",
            b"{}{z}",
            b"prefix:\0ver",
        ] {
            let companion = [b"p:\0ver:{", tag_for(key).as_bytes(), b"}", key].concat();
            assert_eq!(
                Slot::for_key(&companion),
                Slot::for_key(key),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        assert_eq!(TAGS.len(), SLOTS);
        assert!(TAGS.values().all(|t| !t.contains(['{', '}'])));
    }
}
