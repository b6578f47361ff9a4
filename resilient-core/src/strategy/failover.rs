//! Stay on one backend; move down on failure, move back up after a failback delay.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{Candidates, Routing, SelectionStrategy};

/// Sends every call to the active backend (initially the highest priority). When the active one
/// is unavailable or fails, the next available backend serves and becomes active. A
/// higher-priority backend becomes active again only once it has been available for
/// `failback_delay`, and no sooner than `failback_delay` after the last move, so a flapping
/// primary does not drag traffic back and forth.
#[derive(Debug)]
pub struct Failover {
    failback_delay: Duration,
    epoch: Instant,
    active: AtomicUsize,
    moved_at_ms: AtomicU64,
}

impl Failover {
    /// A failover strategy with the given failback delay.
    pub fn new(failback_delay: Duration) -> Self {
        Self {
            failback_delay,
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            moved_at_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn move_to(&self, index: usize, now: Instant) {
        self.active.store(index, Ordering::Relaxed);
        self.moved_at_ms.store(self.ms(now), Ordering::Relaxed);
    }
}

impl SelectionStrategy for Failover {
    fn name(&self) -> &'static str {
        "failover"
    }

    fn select(&self, routing: &Routing<'_>, out: &mut Candidates) {
        let mut active = self.active.load(Ordering::Relaxed);
        if let Some(best) = routing.available().next()
            && best < active
        {
            let settled = Duration::from_millis(
                self.ms(routing.now)
                    .saturating_sub(self.moved_at_ms.load(Ordering::Relaxed)),
            );
            if routing.backends[best].available_for >= self.failback_delay
                && settled >= self.failback_delay
            {
                self.move_to(best, routing.now);
                active = best;
            }
        }
        if routing.backends.get(active).is_some_and(|b| b.available) {
            out.push(active);
        }
        routing.available().for_each(|i| out.push(i));
    }

    // Only while the highest priority is active: with a lower one active, whether to fail
    // back depends on the higher ones' views.
    fn fixed_first(&self) -> Option<usize> {
        (self.active.load(Ordering::Relaxed) == 0).then_some(0)
    }

    fn served(&self, routing: &Routing<'_>, first: usize, index: usize) {
        let active = self.active.load(Ordering::Relaxed);
        if active == index {
            return;
        }
        // An operation that began before the last move followed an older choice: it must not
        // undo the move (under load, some always do, and traffic would swing back and forth).
        if self.ms(routing.now) < self.moved_at_ms.load(Ordering::Relaxed) {
            return;
        }
        // Moves on a failover within the call, or when the active backend was unavailable.
        if first != index || !routing.backends.get(active).is_some_and(|b| b.available) {
            self.move_to(index, Instant::now().max(routing.now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{order, view};
    use super::*;

    fn serve(
        f: &Failover,
        b: &[super::super::BackendView],
        now: Instant,
        first: usize,
        index: usize,
    ) {
        f.served(&Routing { backends: b, now }, first, index);
    }

    #[test]
    fn its_first_choice_is_fixed_only_while_the_primary_is_active() {
        let f = Failover::new(Duration::from_secs(2));
        assert_eq!(f.fixed_first(), Some(0));
        let t = Instant::now();
        let down = [view(false, 0, None), view(true, 10_000, None)];
        serve(&f, &down, t, 1, 1);
        assert_eq!(
            f.fixed_first(),
            None,
            "failing back depends on the primary's view"
        );
        let back = [view(true, 2_000, None), view(true, 10_000, None)];
        assert_eq!(order(&f, &back, t + Duration::from_secs(5)), vec![0, 1]);
        assert_eq!(f.fixed_first(), Some(0));
    }

    #[test]
    fn stays_down_until_the_primary_has_been_back_for_the_failback_delay() {
        let f = Failover::new(Duration::from_secs(2));
        let t = Instant::now();
        let down = [view(false, 0, None), view(true, 10_000, None)];
        assert_eq!(order(&f, &down, t), vec![1]);
        serve(&f, &down, t, 1, 1);

        let t1 = t + Duration::from_secs(5);
        let back_briefly = [view(true, 1_999, None), view(true, 10_000, None)];
        assert_eq!(
            order(&f, &back_briefly, t1),
            vec![1, 0],
            "not back long enough"
        );

        let back = [view(true, 2_000, None), view(true, 10_000, None)];
        assert_eq!(order(&f, &back, t1), vec![0, 1], "fails back");
    }

    #[test]
    fn a_failure_of_the_active_moves_down_and_blocks_failback_for_the_delay() {
        let f = Failover::new(Duration::from_secs(2));
        let t = Instant::now();
        let both = [view(true, 60_000, None), view(true, 60_000, None)];
        assert_eq!(order(&f, &both, t), vec![0, 1]);
        serve(&f, &both, t, 0, 1); // the primary failed this call; the secondary served
        assert_eq!(
            order(&f, &both, t + Duration::from_millis(1_999)),
            vec![1, 0]
        );
        assert_eq!(order(&f, &both, t + Duration::from_secs(2)), vec![0, 1]);
    }

    #[test]
    fn a_call_that_began_before_a_failback_does_not_undo_it() {
        let f = Failover::new(Duration::from_secs(2));
        let t = Instant::now();
        let down = [view(false, 0, None), view(true, 60_000, None)];
        serve(&f, &down, t, 1, 1);
        let t1 = t + Duration::from_secs(5);
        let back = [view(true, 2_000, None), view(true, 60_000, None)];
        assert_eq!(order(&f, &back, t1), vec![0, 1], "fails back");
        // A call that chose the secondary at t1 - 1 ms (views from then) finishes now.
        let stale = [view(false, 0, None), view(true, 60_000, None)];
        serve(&f, &stale, t1 - Duration::from_millis(1), 1, 1);
        assert_eq!(order(&f, &back, t1), vec![0, 1], "still on the primary");
        // A call that began after the failback and followed its choice changes nothing.
        serve(&f, &back, t1, 0, 0);
        assert_eq!(order(&f, &back, t1), vec![0, 1]);
    }
}
