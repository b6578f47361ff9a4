//! Always the highest-priority available backend.

use super::{Candidates, Routing, SelectionStrategy};

/// Tries available backends strictly in priority order, on every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Priority;

impl SelectionStrategy for Priority {
    fn name(&self) -> &'static str {
        "priority"
    }

    fn select(&self, routing: &Routing<'_>, out: &mut Candidates) {
        routing.available().for_each(|i| out.push(i));
    }

    fn fixed_first(&self) -> Option<usize> {
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{order, view};
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn highest_available_first_and_unavailable_skipped() {
        let b = [
            view(false, 0, None),
            view(true, 0, None),
            view(true, 0, None),
        ];
        assert_eq!(order(&Priority, &b, Instant::now()), vec![1, 2]);
        let b = [view(true, 0, None), view(true, 0, None)];
        assert_eq!(order(&Priority, &b, Instant::now()), vec![0, 1]);
    }
}
