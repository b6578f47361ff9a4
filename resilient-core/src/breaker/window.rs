//! A lock-free rolling window of call counts: one atomic word per bucket holding the bucket's
//! tag and its call, failure and slow-call counts, updated with compare-and-swap.

use std::sync::atomic::{AtomicU64, Ordering};

const FIELD: u64 = 0xFFFF;

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

// Word layout: tag (16 bits, the bucket index modulo 2^16) | calls | failures | slow, 16 bits
// each, saturating. A stale bucket is recognised by its tag and starts over.
fn pack(tag: u64, calls: u64, failures: u64, slow: u64) -> u64 {
    (tag & FIELD) << 48 | (calls & FIELD) << 32 | (failures & FIELD) << 16 | (slow & FIELD)
}

fn field(word: u64, shift: u32) -> u64 {
    (word >> shift) & FIELD
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
        let tag = index & FIELD;
        let slot = &self.buckets[(index % self.buckets.len() as u64) as usize];
        let (f, s) = (u64::from(failed), u64::from(slow));
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if field(current, 48) == tag {
                pack(
                    tag,
                    (field(current, 32) + 1).min(FIELD),
                    (field(current, 16) + f).min(FIELD),
                    (field(current, 0) + s).min(FIELD),
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
            if field(word, 48) == index & FIELD && word != 0 {
                totals.calls += field(word, 32);
                totals.failures += field(word, 16);
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
    fn counts_saturate_instead_of_overflowing_into_the_next_field() {
        let window = RateWindow::new(1_000, 1);
        for _ in 0..70_000 {
            window.record(0, true, false);
        }
        let totals = window.totals(0);
        assert_eq!(totals.calls, FIELD);
        assert_eq!(totals.failures, FIELD);
        assert_eq!(totals.slow, 0);
    }
}
