//! How a value and its write version share one Redis string.
//!
//! Every write the backend makes stores `header + value` under the key itself, so a key costs
//! one Redis key and [`HEADER_LEN`] bytes more than its value, not a second key:
//!
//! | bytes | what |
//! |---|---|
//! | 0..3 | `\0rs`, the marker |
//! | 3 | `v` for a value, `t` for a tombstone (a delete, kept for `tombstone_ttl`) |
//! | 4..20 | the write's version, 16 lowercase hex digits |
//! | 20.. | the value (nothing for a tombstone) |
//!
//! A plain Redis client's `GET` sees the header in front of the value, and a tombstone as a
//! 20-byte string. A string without the marker (written by another client, or by a version of
//! this crate that kept the version in a companion key) reads as a value with no version:
//! every versioned replay applies over it.
//!
//! Only the replay and atomic scripts look inside a stored header (`scripts.rs` parses the same
//! layout); a caller's own write is a plain `SET` of the encoded bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes a stored value carries in front of it.
pub(crate) const HEADER_LEN: usize = 20;

const MARKER: &[u8; 3] = b"\0rs";
const VALUE: u8 = b'v';
const TOMBSTONE: u8 = b't';

/// What a Redis string holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// A value written by this backend, with its version.
    Value(Bytes),
    /// A delete's tombstone: reads as no value.
    Tombstone,
    /// A string without the marker: a value with no version.
    Plain(Bytes),
}

impl Stored {
    /// The value a `get` answers.
    pub(crate) fn value(self) -> Option<Bytes> {
        match self {
            Stored::Value(value) | Stored::Plain(value) => Some(value),
            Stored::Tombstone => None,
        }
    }
}

fn header(kind: u8, version: u64, capacity: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(capacity);
    out.put_slice(MARKER);
    out.put_u8(kind);
    out.put_slice(&hex(version));
    out
}

/// A version as the header and the scripts carry it: 16 lowercase hex digits, on the stack
/// (`format!` took a string and ~500 instructions).
pub(crate) fn hex(version: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[usize::try_from((version >> (60 - 4 * i)) & 0xf).unwrap_or(0)];
    }
    out
}

/// `value` with its version in front.
pub(crate) fn value(version: u64, value: &[u8]) -> Bytes {
    let mut out = header(VALUE, version, HEADER_LEN + value.len());
    out.put_slice(value);
    out.freeze()
}

/// A delete's tombstone.
pub(crate) fn tombstone(version: u64) -> Bytes {
    header(TOMBSTONE, version, HEADER_LEN).freeze()
}

/// What a string this backend stored holds, for a program that reads it with a plain Redis
/// client: the value without its 20-byte header, `None` for a delete's tombstone, and a string
/// without the header as it is. The layout is in the crate's README ("What a plain Redis
/// client sees").
///
/// ```
/// use resilient_backend_redis::stored_value;
///
/// assert_eq!(stored_value(b"\0rsv0000000000000001hello"), Some(&b"hello"[..]));
/// assert_eq!(stored_value(b"\0rst0000000000000002"), None);
/// assert_eq!(stored_value(b"written by someone else"), Some(&b"written by someone else"[..]));
/// ```
pub fn stored_value(raw: &[u8]) -> Option<&[u8]> {
    match kind(raw) {
        Some(VALUE) => Some(&raw[HEADER_LEN..]),
        Some(_) => None,
        None => Some(raw),
    }
}

/// Reads a stored string; takes no copy of the value.
pub(crate) fn decode(mut stored: Bytes) -> Stored {
    match kind(&stored) {
        Some(VALUE) => {
            // In place: `slice` would take a second handle, which for a buffer made from a
            // `Vec` (every reply) allocates a shared count.
            bytes::Buf::advance(&mut stored, HEADER_LEN);
            Stored::Value(stored)
        }
        Some(_) => Stored::Tombstone,
        None => Stored::Plain(stored),
    }
}

/// `VALUE` or `TOMBSTONE` for a string with the header, `None` for one without.
fn kind(raw: &[u8]) -> Option<u8> {
    let header: &[u8; HEADER_LEN] = raw.get(..HEADER_LEN)?.try_into().ok()?;
    let kind = header[3];
    let headed = header.starts_with(MARKER)
        && (kind == VALUE || kind == TOMBSTONE)
        && hex_digits(header[4..12].try_into().ok()?)
        && hex_digits(header[12..].try_into().ok()?);
    headed.then_some(kind)
}

/// Whether all eight bytes are ASCII hex digits, as [`u8::is_ascii_hexdigit`] says, checked
/// eight at a time: this runs on every value a read returns.
fn hex_digits(bytes: [u8; 8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let x = u64::from_ne_bytes(bytes);
    if x & HIGH != 0 {
        return false;
    }
    // Every byte is below 0x80: adding (0x80 - bound) to it sets its high bit exactly when it
    // is at least `bound`, with no carry into the next byte.
    let at_least = |x: u64, bound: u8| x.wrapping_add(ONES * u64::from(0x80 - bound));
    let digit = at_least(x, b'0') & !at_least(x, b'9' + 1);
    // Setting 0x20 maps `A-F` onto `a-f` and leaves `a-f` as they are.
    let lower = x | (ONES * 0x20);
    let letter = at_least(lower, b'a') & !at_least(lower, b'f' + 1);
    (digit | letter) & HIGH == HIGH
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_header_is_twenty_bytes_and_readable() {
        let stored = value(0x1234, b"hello");
        assert_eq!(&stored[..HEADER_LEN], b"\0rsv0000000000001234");
        assert_eq!(decode(stored), Stored::Value(Bytes::from_static(b"hello")));
        assert_eq!(tombstone(7).len(), HEADER_LEN);
        assert_eq!(decode(tombstone(7)), Stored::Tombstone);
    }

    #[test]
    fn strings_without_the_marker_are_plain_values() {
        for plain in [
            &b""[..],
            b"hello",
            b"\0rsv",
            b"\0rsvnot-hex-digits!!value",
            b"\0rsx0000000000000007",
        ] {
            let plain = Bytes::copy_from_slice(plain);
            assert_eq!(decode(plain.clone()), Stored::Plain(plain));
        }
    }

    #[test]
    fn the_hex_check_takes_each_byte_as_is_ascii_hexdigit_does() {
        for byte in 0..=u8::MAX {
            for place in 0..8 {
                let mut bytes = *b"0aF9f0A9";
                bytes[place] = byte;
                assert_eq!(
                    hex_digits(bytes),
                    byte.is_ascii_hexdigit(),
                    "{byte:#x} at {place}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn versions_are_written_as_format_writes_them(version: u64) {
            let formatted = format!("{version:016x}");
            prop_assert_eq!(&hex(version)[..], formatted.as_bytes());
        }

        #[test]
        fn the_hex_check_agrees_with_the_byte_by_byte_one(bytes: [u8; 8], pick: [u8; 8]) {
            let digits = b"0123456789abcdefABCDEF";
            let hex = pick.map(|p| digits[usize::from(p) % digits.len()]);
            prop_assert!(hex_digits(hex));
            prop_assert_eq!(hex_digits(bytes), bytes.iter().all(u8::is_ascii_hexdigit));
            // One byte off, at each place: the edges of every range, and bytes that would
            // carry or fold onto a digit or a letter.
            let edges = [b'/', b':', b'@', b'G', b'`', b'g', 0x10, 0x19, 0x7f, 0x80, 0xc1, 0xff];
            for (i, edge) in edges.into_iter().enumerate() {
                let mut one_off = hex;
                one_off[(i + usize::from(pick[0])) % 8] = edge;
                prop_assert!(!hex_digits(one_off));
            }
        }

        #[test]
        fn every_value_and_version_round_trips(version: u64, bytes: Vec<u8>) {
            let read = decode(value(version, &bytes)).value();
            prop_assert_eq!(read.as_deref(), Some(&bytes[..]));
            prop_assert_eq!(decode(tombstone(version)).value(), None);
        }
    }
}
