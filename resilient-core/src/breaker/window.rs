//! A lock-free rolling window of call counts: one atomic word per bucket holding the bucket's
//! tag and its call, failure and slow-call counts, updated with compare-and-swap.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of each count: up to 262,143 calls per bucket.
const COUNT_BITS: u32 = 18;
const FIELD: u64 = (1 << COUNT_BITS) - 1;
/// Bits of the tag: the bucket index modulo 1,024, far more than the 60 buckets a window has.
const TAG: u64 = (1 << (64 - 3 * COUNT_BITS)) - 1;
const CALLS: u32 = 2 * COUNT_BITS;
const FAILURES: u32 = COUNT_BITS;
const TAG_SHIFT: u32 = 3 * COUNT_BITS;

/// Counts over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

#[derive(Debug)]
pub(crate) struct RateWindow {
    buckets: Box<[AtomicU64]>,
    bucket_ms: u64,
}

// Word layout: tag (10 bits) | calls | failures | slow (18 bits each). A stale bucket is
// recognised by its tag and starts over. A bucket whose call count is full takes no more
// calls at all: its counts stay a true sample of its calls, so the rate is never skewed (a
// count saturating on its own would overstate or understate it).
fn pack(tag: u64, calls: u64, failures: u64, slow: u64) -> u64 {
    (tag & TAG) << TAG_SHIFT
        | (calls & FIELD) << CALLS
        | (failures & FIELD) << FAILURES
        | (slow & FIELD)
}

fn field(word: u64, shift: u32) -> u64 {
    (word >> shift) & FIELD
}

fn tag_of(word: u64) -> u64 {
    word >> TAG_SHIFT
}

impl RateWindow {
    pub(crate) fn new(window_ms: u64, buckets: u32) -> Self {
        let n = u64::from(buckets.max(1));
        Self {
            buckets: (0..n).map(|_| AtomicU64::new(0)).collect(),
            bucket_ms: (window_ms / n).max(1),
        }
    }

    pub(crate) fn record(&self, now_ms: u64, failed: bool, slow: bool) {
        let index = now_ms / self.bucket_ms;
        let tag = index & TAG;
        let slot = &self.buckets[(index % self.buckets.len() as u64) as usize];
        let (f, s) = (u64::from(failed), u64::from(slow));
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if tag_of(current) == tag {
                let calls = field(current, CALLS);
                if calls == FIELD {
                    return;
                }
                pack(
                    tag,
                    calls + 1,
                    field(current, FAILURES) + f,
                    field(current, 0) + s,
                )
            } else {
                pack(tag, 1, f, s)
            };
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    pub(crate) fn totals(&self, now_ms: u64) -> Totals {
        let newest = now_ms / self.bucket_ms;
        let n = self.buckets.len() as u64;
        let mut totals = Totals::default();
        for back in 0..n.min(newest + 1) {
            let index = newest - back;
            let word = self.buckets[(index % n) as usize].load(Ordering::Acquire);
            if tag_of(word) == index & TAG && word != 0 {
                totals.calls += field(word, CALLS);
                totals.failures += field(word, FAILURES);
                totals.slow += field(word, 0);
            }
        }
        totals
    }

    pub(crate) fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_older_buckets() {
        let window = RateWindow::new(1_000, 10);
        window.record(0, false, false);
        window.record(50, true, false);
        window.record(950, false, true);
        assert_eq!(
            window.totals(999),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // At 1,050 ms the bucket of 0..100 ms has left the window.
        assert_eq!(
            window.totals(1_050),
            Totals {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(window.totals(5_000), Totals::default());
    }

    #[test]
    fn a_reused_bucket_starts_over() {
        let window = RateWindow::new(1_000, 10);
        window.record(10, true, false);
        window.record(1_010, false, false);
        assert_eq!(
            window.totals(1_010),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn a_full_bucket_stops_counting_so_its_rate_stays_true() {
        let window = RateWindow::new(1_000, 1);
        // Three successes to one failure, far past what a bucket can count.
        for i in 0..300_000_u64 {
            window.record(0, i % 4 == 3, false);
        }
        let totals = window.totals(0);
        assert_eq!(totals.calls, FIELD);
        assert_eq!(totals.failures, FIELD / 4);
        assert_eq!(totals.slow, 0);
    }
}
