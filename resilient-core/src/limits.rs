//! The ranges every duration and count setting is checked against, so no setting can reach an
//! overflow or a library's assertion: each is refused at validation with a typed error that
//! names the field and the range.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::{Error, Result};

/// One millisecond: the shortest timeout or interval any setting takes.
pub const MILLISECOND: Duration = Duration::from_millis(1);
/// One hour: the longest timeout a call or a check may be given.
pub const HOUR: Duration = Duration::from_secs(3600);
/// One day: the longest delay, window or open time.
pub const DAY: Duration = Duration::from_secs(86_400);

/// Timeouts and deadlines: 1 ms to 1 h.
pub const TIMEOUT: RangeInclusive<Duration> = MILLISECOND..=HOUR;
/// Delays, windows and open times: 1 ms to 1 day.
pub const DELAY: RangeInclusive<Duration> = MILLISECOND..=DAY;

/// Checks that the duration `value` of setting `field` lies in `range`. Inlined, with the
/// error built out of line: options checked on every call (`get_or_load`'s) pay two compares.
#[inline]
pub fn duration(field: &str, value: Duration, range: RangeInclusive<Duration>) -> Result<()> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(duration_out_of_range(field, &range))
}

#[cold]
#[inline(never)]
fn duration_out_of_range(field: &str, range: &RangeInclusive<Duration>) -> Error {
    Error::config(
        field,
        format!(
            "must be from {} to {}",
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        ),
    )
}

/// Checks that the count `value` of setting `field` lies in `range`.
pub fn count<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<()> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(Error::config(
        field,
        format!("must be from {} to {}", range.start(), range.end()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_outside_the_range_name_the_field_and_the_range() {
        assert!(duration("deadline", Duration::from_secs(1), TIMEOUT).is_ok());
        let err = duration("deadline", Duration::MAX, TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("deadline") && err.contains("1h"), "{err}");
        assert!(duration("deadline", Duration::ZERO, TIMEOUT).is_err());
        assert!(count("event_capacity", usize::MAX, 1..=1 << 20).is_err());
        assert!(count("event_capacity", 1024, 1..=1 << 20).is_ok());
    }
}
