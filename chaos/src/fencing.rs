//! A guarded resource that checks fencing tokens, as a database or file store protected by a
//! lock should: it rejects a write whose token is lower than the highest it has seen. It also
//! records who is inside a critical section on which backend's lease, to catch two holders.

use std::collections::HashMap;
use std::sync::Mutex;

use resilient_storage::FencingToken;

/// What the log saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FencingFigures {
    /// Writes accepted.
    pub accepted: u64,
    /// Writes rejected for a token lower than the highest seen.
    pub rejected: u64,
    /// Times a worker entered a critical section while another was inside one on a lease from
    /// the same backend.
    pub overlaps: u64,
    /// Accepted writes per backend that granted the lease.
    pub by_backend: HashMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    highest: Option<FencingToken>,
    inside: HashMap<String, usize>,
    figures: FencingFigures,
}

/// The fencing log.
#[derive(Debug, Default)]
pub struct FencingLog {
    state: Mutex<State>,
}

impl FencingLog {
    /// `worker` enters a critical section on a lease from `backend`; counts an overlap when
    /// another worker is inside on a lease from the same backend.
    pub fn enter(&self, backend: &str) {
        let mut state = self.lock();
        let inside = state.inside.entry(backend.to_owned()).or_insert(0);
        *inside += 1;
        if *inside > 1 {
            state.figures.overlaps += 1;
        }
    }

    /// Appends a write with `token`, unless it is lower than the highest seen. Returns whether
    /// it was accepted.
    pub fn append(&self, backend: &str, token: FencingToken) -> bool {
        let mut state = self.lock();
        let accepted = state.highest.is_none_or(|highest| token >= highest);
        if accepted {
            state.highest = Some(token);
            state.figures.accepted += 1;
            *state
                .figures
                .by_backend
                .entry(backend.to_owned())
                .or_insert(0) += 1;
        } else {
            state.figures.rejected += 1;
        }
        accepted
    }

    /// Leaves the critical section entered on `backend`.
    pub fn leave(&self, backend: &str) {
        if let Some(inside) = self.lock().inside.get_mut(backend) {
            *inside = inside.saturating_sub(1);
        }
    }

    /// The figures so far.
    pub fn figures(&self) -> FencingFigures {
        self.lock().figures.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
