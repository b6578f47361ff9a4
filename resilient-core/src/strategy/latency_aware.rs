//! Power of two choices over the latency EWMA.

use super::{Candidates, Routing, SelectionStrategy};

/// Picks two available backends at random and tries the one with the lower latency EWMA first,
/// then the other, then the rest in priority order. A backend without a latency sample counts
/// as fastest, so it gets measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyAware;

impl SelectionStrategy for LatencyAware {
    fn name(&self) -> &'static str {
        "latency_aware"
    }

    fn select(&self, routing: &Routing<'_>, out: &mut Candidates) {
        let (available, n) = routing.available_array();
        if n >= 2 {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (available[a], available[b]);
            let latency = |i: usize| routing.backends[i].latency.unwrap_or_default();
            let (first, second) = if (latency(a), a) <= (latency(b), b) {
                (a, b)
            } else {
                (b, a)
            };
            out.push(first);
            out.push(second);
        }
        available[..n].iter().for_each(|&i| out.push(i));
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
    fn between_two_backends_the_faster_goes_first() {
        let b = [view(true, 0, Some(50)), view(true, 0, Some(1))];
        for _ in 0..20 {
            assert_eq!(order(&LatencyAware, &b, Instant::now()), vec![1, 0]);
        }
    }

    #[test]
    fn the_slowest_of_three_is_never_first_and_all_are_listed() {
        let b = [
            view(true, 0, Some(5)),
            view(true, 0, Some(9)),
            view(true, 0, Some(1)),
        ];
        for _ in 0..100 {
            let o = order(&LatencyAware, &b, Instant::now());
            assert_ne!(o[0], 1);
            assert_eq!(o.len(), 3);
        }
    }

    #[test]
    fn unavailable_backends_are_never_picked() {
        let b = [view(false, 0, Some(1)), view(true, 0, Some(100))];
        assert_eq!(order(&LatencyAware, &b, Instant::now()), vec![1]);
    }
}
