//! Selection strategies: one small trait, so a custom policy is a few lines.

mod failover;
mod latency_aware;
mod priority;
mod round_robin;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use failover::Failover;
pub use latency_aware::LatencyAware;
pub use priority::Priority;
pub use round_robin::RoundRobin;

/// The most backends one storage holds; candidate lists live on the stack.
pub const MAX_BACKENDS: usize = 16;

/// What a strategy knows about one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct BackendView {
    /// Priority (1 is tried first).
    pub priority: u32,
    /// The breaker admits a call and health checks do not say unhealthy.
    pub available: bool,
    /// How long it has been available without a break (zero when it is not).
    pub available_for: Duration,
    /// Latency EWMA, if measured.
    pub latency: Option<Duration>,
}

/// Input of one routing decision: backends in priority order (index 0 first).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Routing<'a> {
    /// The backends.
    pub backends: &'a [BackendView],
    /// The time of the decision.
    pub now: Instant,
}

impl<'a> Routing<'a> {
    /// A routing decision over `backends` (in priority order) at `now`.
    pub fn new(backends: &'a [BackendView], now: Instant) -> Self {
        Self { backends, now }
    }

    /// Indices of the available backends in priority order, on the stack, and how many.
    pub fn available_array(&self) -> ([usize; MAX_BACKENDS], usize) {
        let mut available = [0_usize; MAX_BACKENDS];
        let mut n = 0;
        for i in self.available().take(MAX_BACKENDS) {
            available[n] = i;
            n += 1;
        }
        (available, n)
    }

    /// Indices of the available backends, in priority order.
    pub fn available(&self) -> impl Iterator<Item = usize> + '_ {
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.available)
            .map(|(i, _)| i)
    }
}

/// An ordered list of backend indices to try, on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Candidates {
    items: [u8; MAX_BACKENDS],
    len: u8,
}

impl Default for Candidates {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Candidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Candidates {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            items: [0; MAX_BACKENDS],
            len: 0,
        }
    }

    /// Appends `index` unless it is already listed or out of range.
    pub fn push(&mut self, index: usize) {
        if index < MAX_BACKENDS && !self.contains(index) && (self.len as usize) < MAX_BACKENDS {
            self.items[self.len as usize] = index as u8;
            self.len += 1;
        }
    }

    /// True when `index` is listed.
    pub fn contains(&self, index: usize) -> bool {
        self.as_slice().iter().any(|&i| i as usize == index)
    }

    /// The indices in order.
    pub fn as_slice(&self) -> &[u8] {
        &self.items[..self.len as usize]
    }

    /// The indices in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.as_slice().iter().map(|&i| i as usize)
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first candidate.
    pub fn first(&self) -> Option<usize> {
        self.iter().next()
    }
}

/// Orders the available backends for one operation. The router tries them in that order,
/// each under its breaker, until one answers.
///
/// Implementations must list only available backends (the router skips others anyway) and must
/// not block: they run on every call.
pub trait SelectionStrategy: Send + Sync + fmt::Debug {
    /// Name shown in the health report.
    fn name(&self) -> &'static str;

    /// Pushes the backends to try, in order, into `out`.
    fn select(&self, routing: &Routing<'_>, out: &mut Candidates);

    /// Told that an operation whose first choice was `first` was served by `index`;
    /// `routing` holds the views and the time the operation began with. Operations overlap, so
    /// one may finish after a newer choice was made: compare `routing.now` with it.
    fn served(&self, _routing: &Routing<'_>, _first: usize, _index: usize) {}

    /// True when the strategy spreads load across backends on purpose, so a change of serving
    /// backend is not a failover.
    fn spreads_load(&self) -> bool {
        false
    }

    /// A backend this strategy puts first whenever that backend is available, whatever the
    /// other backends' views say at the moment; `None` (the default) when the first choice
    /// depends on the views.
    ///
    /// With `Some`, the router skips building every backend's view and calling
    /// [`select`](Self::select) while that backend is plainly available (closed breaker,
    /// routable, nothing to replay), and does not report to [`served`](Self::served) a call
    /// it answered as the first choice while it was already the active backend. This is the
    /// common path's saving: on the memory default it is most of the router's own cost.
    fn fixed_first(&self) -> Option<usize> {
        None
    }
}

/// The built-in strategies, by name (as in configuration files).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Strategy {
    /// Stay on the active backend; move down when it fails; move back up once the higher one
    /// has been available for the failback delay.
    #[default]
    Failover,
    /// Always the highest-priority available backend.
    Priority,
    /// Rotate among the available backends.
    RoundRobin,
    /// Power of two choices over the latency EWMA.
    LatencyAware,
}

impl Strategy {
    /// The strategy object; `failback_delay` is used by [`Strategy::Failover`].
    pub fn build(self, failback_delay: Duration) -> Arc<dyn SelectionStrategy> {
        match self {
            Strategy::Failover => Arc::new(Failover::new(failback_delay)),
            Strategy::Priority => Arc::new(Priority),
            Strategy::RoundRobin => Arc::new(RoundRobin::default()),
            Strategy::LatencyAware => Arc::new(LatencyAware),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn view(
        available: bool,
        available_for_ms: u64,
        latency_ms: Option<u64>,
    ) -> BackendView {
        BackendView {
            priority: 0,
            available,
            available_for: if available {
                Duration::from_millis(available_for_ms)
            } else {
                Duration::ZERO
            },
            latency: latency_ms.map(Duration::from_millis),
        }
    }

    pub(crate) fn order(
        strategy: &dyn SelectionStrategy,
        backends: &[BackendView],
        now: Instant,
    ) -> Vec<usize> {
        let mut out = Candidates::new();
        strategy.select(&Routing { backends, now }, &mut out);
        out.iter().collect()
    }

    #[test]
    fn candidates_ignore_duplicates_and_out_of_range() {
        let mut c = Candidates::new();
        c.push(2);
        c.push(2);
        c.push(MAX_BACKENDS);
        c.push(0);
        assert_eq!(c.as_slice(), &[2, 0]);
    }
}
