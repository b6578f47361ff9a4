//! Rotate among the available backends.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Routing, SelectionStrategy};

/// Starts each call at the next available backend in turn; the others follow as fallbacks.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl SelectionStrategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn select(&self, routing: &Routing<'_>, out: &mut Candidates) {
        let (available, n) = routing.available_array();
        if n == 0 {
            return;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).for_each(|k| out.push(available[(start + k) % n]));
    }

    fn spreads_load(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{order, view};
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn rotates_over_available_backends_only() {
        let rr = RoundRobin::default();
        let b = [
            view(true, 0, None),
            view(false, 0, None),
            view(true, 0, None),
        ];
        let now = Instant::now();
        assert_eq!(order(&rr, &b, now), vec![0, 2]);
        assert_eq!(order(&rr, &b, now), vec![2, 0]);
        assert_eq!(order(&rr, &b, now), vec![0, 2]);
    }
}
