//! The attempt loop every call goes through: the candidates (strategy order, or the lock
//! backend), each attempt under its breaker, the attempt timeout and the call's deadline, the
//! first answer wins; then the strategy and the active backend learn who served (unless the
//! strategy's fixed first choice, already active, served at once). Before it, gets, sets and deletes try
//! [`route_now`](ResilientStorage::route_now), the common path without a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::locks::lock_eligible;
use super::slot::Slot;
use super::telemetry::{self, Outcome};
use super::watchdog::{Registration, Watchdog};
use super::{CallFuture, LockFailover, NONE, ResilientStorage, Route, WritePolicy};
use crate::backend::Backend;
use crate::error::{Attempt, Attempts, Error, Operation, Result};
use crate::events::StorageEvent;
use crate::strategy::{BackendView, Candidates, Routing};

/// A call that did not finish within its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TimedOut;

/// How a [`timed`] call ended: its result, or [`TimedOut`].
pub(super) type TimedResult<T> = std::result::Result<Result<T>, TimedOut>;

/// Runs `call`, begun at `start`, under `budget`: a future of its result, when it ended and
/// how long it took (see [`Timed`]).
pub(super) fn timed<'a, T>(
    watchdog: &'a Watchdog,
    start: Instant,
    budget: Duration,
    call: CallFuture<'a, T>,
) -> Timed<'a, T> {
    Timed {
        watchdog,
        start,
        // The budget is at most a day (`limits::TIMEOUT`): the sum cannot overflow.
        deadline: start + budget,
        call,
        watched: None,
        timer: None,
    }
}

/// A call under its budget. A call that completes on its first poll is never registered
/// anywhere; any other waits under the watchdog, which wakes it at its deadline (or, where
/// the watchdog cannot be counted on for it, under a tokio timer: see
/// [`Watchdog::register`]). The call is polled once per wake-up.
///
/// A future written out rather than an `async fn`: every call a backend cannot answer at
/// once goes through it, and as a plain struct it is one poll around the call's, with no
/// state machine of its own to enter, move and drop.
#[must_use = "futures do nothing unless polled"]
pub(super) struct Timed<'a, T> {
    watchdog: &'a Watchdog,
    start: Instant,
    deadline: Instant,
    call: CallFuture<'a, T>,
    watched: Option<Registration<'a>>,
    // Boxed: needed only where the watchdog cannot watch, or woke the call before its
    // clock reached the deadline, and a timer is large; every attempt's future would carry
    // its room.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Timed<'_, T> {
    /// After a poll that left the call pending: `Ready` once the deadline has passed, and
    /// otherwise a wake-up arranged for it.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.is_none() {
            match &self.watched {
                None => match self
                    .watchdog
                    .register(self.start, self.deadline, cx.waker())
                {
                    Some(registration) => {
                        self.watched = Some(registration);
                        return Poll::Pending;
                    }
                    None => {
                        if !self.arm_timer() {
                            return Poll::Ready(());
                        }
                    }
                },
                Some(registration) => {
                    // The waker first, under the lock the watchdog wakes with: a wake-up it
                    // gave the old waker after the check below would otherwise be lost. Either
                    // it wakes this one, or it woke before, at or past the deadline, and the
                    // clock read after says so; likewise for its task's end and `watched`.
                    let fired = registration.update(cx.waker());
                    if Instant::now() >= self.deadline {
                        return Poll::Ready(());
                    }
                    // Woken for a deadline this runtime's clock has not reached (a paused
                    // clock, on another runtime than the task's): its own timer goes by it.
                    if registration.watched() && !fired {
                        return Poll::Pending;
                    }
                    if !self.arm_timer() {
                        return Poll::Ready(());
                    }
                }
            }
        }
        match &mut self.timer {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// A tokio timer for the deadline; false outside a runtime, where there is none to arm
    /// (a call made outside tokio, whose storage's runtime has gone since): the call then
    /// times out at once rather than wait without a bound, or panic.
    fn arm_timer(&mut self) -> bool {
        if tokio::runtime::Handle::try_current().is_err() {
            return false;
        }
        self.timer = Some(Box::pin(tokio::time::sleep_until(self.deadline)));
        true
    }
}

impl<T> Future for Timed<'_, T> {
    type Output = (TimedResult<T>, Instant, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin` (the call is boxed): no projection needed.
        let this = &mut *self;
        let result = match this.call.as_mut().poll(cx) {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => match this.expired(cx) {
                Poll::Ready(()) => Err(TimedOut),
                Poll::Pending => return Poll::Pending,
            },
        };
        // Out of the watchdog before the clock is read: the time taken is the call's.
        this.watched = None;
        let end = Instant::now();
        Poll::Ready((result, end, end.saturating_duration_since(this.start)))
    }
}

/// Reports the result of a [`timed`] call made outside [`ResilientStorage::attempts`] on its
/// permit: a success, a counted failure (a transient error or the timeout), or nothing (a
/// caller error, which says nothing about the backend). Returns the outcome for metrics.
pub(super) fn settle<T>(
    permit: crate::breaker::Permit<'_>,
    result: &TimedResult<T>,
    elapsed: Duration,
) -> Outcome {
    match result {
        Ok(Ok(_)) => {
            permit.success(elapsed);
            Outcome::Answered
        }
        Ok(Err(error)) if error.is_transient() => {
            permit.failure();
            Outcome::Failed
        }
        Ok(Err(_)) => {
            permit.ignore();
            Outcome::Answered
        }
        Err(_) => {
            permit.failure();
            Outcome::TimedOut
        }
    }
}

/// One attempt on `slot` outside the attempt loop (a read behind a miss, a seed read): through
/// its breaker, within `budget`, its outcome recorded on the breaker and in the metrics as
/// `operation`. `None` when the breaker refuses it.
pub(super) async fn side_attempt<T>(
    slot: &Slot,
    operation: Operation,
    budget: Duration,
    call: CallFuture<'_, T>,
) -> Option<TimedResult<T>> {
    let now = Instant::now();
    let permit = slot.breaker.try_acquire_at(now).ok()?;
    let (result, _, elapsed) = timed(&slot.watchdog, now, budget, call).await;
    let outcome = settle(permit, &result, elapsed);
    slot.metrics.attempt(operation, outcome, elapsed);
    tracing::debug!(backend = %slot.name, %operation, ?outcome, ?elapsed, "side attempt");
    Some(result)
}

/// Every backend's view for one routing decision, in priority order: inline for up to four
/// backends, so a call neither allocates nor carries an array sized for the most backends.
pub(super) type Views = smallvec::SmallVec<[BackendView; 4]>;

/// What a call on one backend gives the attempt loop: an answer at once (an in-process read
/// through [`Backend::try_get_now`], or a pending write's record), which needs no future, no
/// allocation and no timer, and is timed as zero (its real time, well under a microsecond, is
/// below anything latency routing or the slow-call rule can use, and timing it would cost a
/// second clock reading, as much as the read); or a future to run under the attempt's budget.
pub(super) enum Call<'a, T> {
    Ready(Result<T>),
    Pending(CallFuture<'a, T>),
}

impl<'a, T> From<CallFuture<'a, T>> for Call<'a, T> {
    fn from(call: CallFuture<'a, T>) -> Self {
        Call::Pending(call)
    }
}

impl<'a, T, F> From<std::pin::Pin<Box<F>>> for Call<'a, T>
where
    F: std::future::Future<Output = Result<T>> + Send + 'a,
{
    fn from(call: std::pin::Pin<Box<F>>) -> Self {
        Call::Pending(call)
    }
}

/// When a routed call's time runs out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Within {
    /// The storage's deadline, from now.
    Deadline,
    /// The storage's deadline, from when the caller read the clock as the call began (one
    /// reading serves the caller and the attempts).
    From(Instant),
    /// A deadline the caller set.
    Until(Instant),
}

/// How one attempt ended.
enum Tried<T> {
    /// The backend answered.
    Answered(T),
    /// A transient failure, a timeout or a refusal by the breaker: try the next candidate.
    Failed(Error),
    /// The caller's error: return it at once, never fail over.
    Refused(Error),
}

impl ResilientStorage {
    /// Whether lock authority may move between backends (the opt-in failover): only then are
    /// a lock backend's outages and answers tracked.
    fn moves_lock_authority(&self) -> bool {
        matches!(self.inner.locks.failover, LockFailover::AfterOutage { .. })
    }

    pub(super) fn eligible(&self, slot: &Slot, route: Route) -> bool {
        match route {
            Route::Data => true,
            Route::Atomic => self.inner.atomics.eligible(slot),
            Route::Lock | Route::Release => lock_eligible(slot, self.inner.locks.local),
        }
    }

    /// Views of every backend and the strategy's order. With `prefer`, that backend goes first
    /// when it is available.
    ///
    /// Lock calls get one backend, never a failover chain: failing over inside a call could
    /// grant a lease on one backend while another still holds a live one. Under
    /// [`LockFailover::Never`] that backend is always the lock authority. Under
    /// [`LockFailover::AfterOutage`] lock authority moves between backends only once the one
    /// that had it has answered no lock call for the delay; until then acquires and extends
    /// fail, and only releases still reach it.
    pub(super) fn candidates(
        &self,
        route: Route,
        now: Instant,
        now_ms: u64,
        prefer: Option<usize>,
        views: &mut Views,
    ) -> Candidates {
        let inner = &self.inner;
        self.views_into(route, now, now_ms, views);
        let backends = &views[..];
        let prefer = prefer.filter(|&p| backends.get(p).is_some_and(|b| b.available));
        let mut candidates = Candidates::new();
        let pick = match (route, inner.locks.failover) {
            (Route::Atomic, _) => {
                // One order for every process, whatever the strategy: priority. Under
                // `WritePolicy::Selected` no backend below holds a copy to go on from, so
                // only the first.
                let first_only = inner.policy.write_policy == WritePolicy::Selected;
                if let Some(p) = prefer {
                    candidates.push(p);
                }
                for (index, view) in backends.iter().enumerate() {
                    if !self.eligible(&inner.slots[index], Route::Atomic) {
                        continue;
                    }
                    if view.available && Some(index) != prefer {
                        candidates.push(index);
                    }
                    if first_only {
                        break;
                    }
                }
                return candidates;
            }
            (Route::Data, _) => {
                if let Some(p) = prefer {
                    candidates.push(p);
                }
                inner
                    .strategy
                    .select(&Routing { backends, now }, &mut candidates);
                return candidates;
            }
            (_, LockFailover::Never) => inner
                .locks
                .authority
                .filter(|&a| backends.get(a).is_some_and(|b| b.available)),
            (_, LockFailover::AfterOutage { delay }) => {
                inner
                    .strategy
                    .select(&Routing { backends, now }, &mut candidates);
                let natural = candidates.first();
                match route {
                    Route::Lock
                        if natural.is_some_and(|c| {
                            self.lock_authority_elsewhere(c, now, delay).is_some()
                        }) =>
                    {
                        None
                    }
                    _ => prefer.or(natural),
                }
            }
        };
        candidates = Candidates::new();
        if let Some(index) = pick {
            candidates.push(index);
        }
        candidates
    }

    /// Every backend's view for `route` at `now` (`now_ms` in milliseconds since the epoch).
    pub(super) fn views(&self, route: Route, now: Instant, now_ms: u64) -> Views {
        let mut views = Views::new();
        self.views_into(route, now, now_ms, &mut views);
        views
    }

    /// [`views`](Self::views) into `views`, which the caller keeps (no copy of the array).
    fn views_into(&self, route: Route, now: Instant, now_ms: u64, views: &mut Views) {
        for slot in &self.inner.slots {
            views.push(slot.view(now, now_ms, self.eligible(slot, route), route.data()));
        }
        if route.locks()
            && let LockFailover::AfterOutage { delay } = self.inner.locks.failover
        {
            self.hold_back_lock_failover(views, now, delay);
        }
    }

    /// Why no candidate was found: every backend's circuit or health state; lock calls say why
    /// locks fail closed (see [`lock_unavailable`](Self::lock_unavailable)).
    pub(super) fn unavailable(&self, operation: Operation, route: Route) -> Error {
        if route.locks() {
            return self.lock_unavailable(operation, route);
        }
        Error::NoBackendAvailable {
            operation,
            reasons: self
                .inner
                .slots
                .iter()
                .map(|slot| slot.state_reason())
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Runs `call` on the candidates in order until one answers, in one tracing span per
    /// operation with an event per attempt. Returns the answer and the index of the backend
    /// that gave it. `key` (a key or lock name) is logged at debug level only.
    pub(super) fn route<'a, T, C: Into<Call<'a, T>>>(
        &'a self,
        operation: Operation,
        route: Route,
        key: &str,
        prefer: Option<usize>,
        call: impl Fn(usize, &'a dyn Backend) -> C,
    ) -> impl std::future::Future<Output = Result<(T, usize)>> {
        // A plain function, not `async`: no future of its own around `route_within`'s.
        self.route_within(operation, route, key, prefer, Within::Deadline, call)
    }

    /// [`route`](Self::route) with the deadline counted from when the caller says the call
    /// began, or set by the caller (a batch's passes share one).
    ///
    /// A plain function, not `async`: the attempts' future is returned as it is, with no
    /// future of this function's own around it to hold a second copy of the arguments and
    /// to move it (every routed call's future carries it). Whether the call gets a span is
    /// decided, and the span made, when this is called rather than at the first poll.
    pub(super) fn route_within<'a, T, C: Into<Call<'a, T>>>(
        &'a self,
        operation: Operation,
        route: Route,
        key: &str,
        prefer: Option<usize>,
        within: Within,
        call: impl Fn(usize, &'a dyn Backend) -> C,
    ) -> impl Future<Output = Result<(T, usize)>> {
        use futures_util::future::Either;
        // Checked before a span is made: with tracing's `log` feature on (sqlx turns it on),
        // even a disabled span is built and offered to `log` on every call.
        if !tracing::level_enabled!(tracing::Level::INFO) {
            return Either::Left(self.attempts(operation, route, prefer, within, call));
        }
        let span = tracing::info_span!("storage", operation = operation.as_str());
        if span.is_disabled() {
            // No subscriber wants it: skip the span's enter and exit on every poll.
            return Either::Left(self.attempts(operation, route, prefer, within, call));
        }
        // Boxed: only a call whose span is recorded pays for it, and every other call's future
        // does not carry the room of this one's (a span beside the attempts' future).
        Either::Right(Box::pin(
            async move {
                tracing::debug!(key, "operation");
                let result = self.attempts(operation, route, prefer, within, call).await;
                if let Err(error) = &result {
                    tracing::debug!(%error, "operation failed");
                }
                result
            }
            .instrument(span),
        ))
    }

    /// The strategy's fixed first choice for data, when it is plainly available (see
    /// [`SelectionStrategy::fixed_first`](crate::SelectionStrategy::fixed_first)).
    #[inline]
    fn fixed_first(&self) -> Option<(usize, &Slot)> {
        let first = self.inner.strategy.fixed_first()?;
        let slot = self.inner.slots.get(first)?;
        slot.plainly_available().then_some((first, &**slot))
    }

    /// The common path of a read or a write, without a future: the strategy's fixed first
    /// choice, plainly available and already active, answers at once (`call` gives
    /// `Some(Ok(..))`: an in-process store's read or write, a pending replay record), with no
    /// allocation and, but for a replay record's expiry, no clock reading. `None` sends the
    /// call to [`route`](Self::route) instead, which asks the backend again: when it could not
    /// answer at once, when it answered with an error (the full path counts it and fails
    /// over), when a tracing span would be recorded, or after shutdown; at once, without
    /// asking, when that backend is shared and has no write to replay (it cannot answer at
    /// once). So `call` must be safe to repeat, as a read is, and as a write answered `None`
    /// or an error is (it changed nothing: [`Backend::try_write_now`]'s contract).
    pub(super) fn route_now<'a, T>(
        &'a self,
        operation: Operation,
        call: impl FnOnce(usize, &'a dyn Backend) -> Option<Result<T>>,
    ) -> Option<(T, usize)> {
        let inner = &self.inner;
        let (first, slot) = self.fixed_first()?;
        // A backend shared across processes answers nothing at once (only an in-process store
        // does: see `Backend::try_get_now`) but a read of a write it has still to replay.
        if slot.capabilities.shared && slot.replay.pending() == 0 {
            return None;
        }
        // The full path makes the span; asking builds none.
        if tracing::level_enabled!(tracing::Level::INFO)
            && tracing::span_enabled!(tracing::Level::INFO)
        {
            return None;
        }
        if inner.life.shut_down.load(Ordering::Acquire) {
            return None;
        }
        if inner.active.index.load(Ordering::Relaxed) != first {
            return None;
        }
        // Closed (just checked): admitted without reading the clock, and without a permit.
        let generation = slot.breaker.closed_generation()?;
        // An error, or no answer at once, is not counted here: the full path asks again.
        let value = call(first, &*slot.backend)?.ok()?;
        slot.breaker.closed_success_at_once(generation);
        let (outcome, elapsed) = (Outcome::Answered, Duration::ZERO);
        slot.metrics.attempt(operation, outcome, elapsed);
        tracing::debug!(backend = %slot.name, ?outcome, ?elapsed, "attempt");
        Some((value, first))
    }

    pub(super) async fn attempts<'a, T, C: Into<Call<'a, T>>>(
        &'a self,
        operation: Operation,
        route: Route,
        prefer: Option<usize>,
        within: Within,
        call: impl Fn(usize, &'a dyn Backend) -> C,
    ) -> Result<(T, usize)> {
        let inner = &self.inner;
        if inner.life.shut_down.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let (start, deadline) = match within {
            Within::Deadline => (Instant::now(), None),
            Within::From(start) => (start, None),
            Within::Until(at) => (Instant::now(), Some(at)),
        };
        // Needed only past a first attempt that answered: computed then.
        let deadline_at = || deadline.unwrap_or_else(|| start + inner.policy.deadline);
        let mut attempts = Vec::new();
        // The common path: the strategy's fixed first choice, plainly available, is tried
        // without building every backend's view. Only a failure goes on to the full order.
        let mut tried = None;
        let remaining = deadline.map_or(inner.policy.deadline, |at| {
            at.saturating_duration_since(start)
        });
        if route == Route::Data
            && prefer.is_none()
            && !remaining.is_zero()
            && let Some((first, slot)) = self.fixed_first()
        {
            let tried_first = self
                .attempt(slot, operation, route, start, remaining, || {
                    call(first, &*slot.backend).into()
                })
                .await;
            match tried_first {
                Tried::Answered(value) => {
                    if inner.active.index.load(Ordering::Relaxed) != first {
                        let views = self.views(route, start, self.ms(start));
                        let mut only = Candidates::new();
                        only.push(first);
                        let routing = Routing {
                            backends: &views,
                            now: start,
                        };
                        self.served(operation, first, 0, &only, &[], &routing);
                    }
                    return Ok((value, first));
                }
                Tried::Refused(error) => return Err(error),
                Tried::Failed(error) => {
                    attempts.push(Attempt {
                        backend: slot.name.clone(),
                        error,
                    });
                    tried = Some(first);
                }
            }
        }
        let mut views = Views::new();
        let start_ms = self.ms(start);
        let mut candidates = self.candidates(route, start, start_ms, prefer, &mut views);
        if let Some(first) = tried {
            // Listed first, as the strategy would have, so a failover is reported from it.
            let rest = candidates;
            candidates = Candidates::new();
            candidates.push(first);
            rest.iter().for_each(|index| candidates.push(index));
        }
        if candidates.is_empty() {
            return Err(self.unavailable(operation, route));
        }
        for (position, index) in candidates.iter().enumerate() {
            if position == 0 && tried.is_some() {
                continue;
            }
            let slot = &inner.slots[index];
            let (now, remaining) = match (position, deadline) {
                (0, None) => (start, inner.policy.deadline),
                (0, Some(_)) => (start, deadline_at().saturating_duration_since(start)),
                _ => {
                    let now = Instant::now();
                    (now, deadline_at().saturating_duration_since(now))
                }
            };
            if remaining.is_zero() {
                break;
            }
            let error = match self
                .attempt(slot, operation, route, now, remaining, || {
                    call(index, &*slot.backend).into()
                })
                .await
            {
                Tried::Answered(value) => {
                    let routing = Routing {
                        backends: &views,
                        now: start,
                    };
                    self.served(operation, index, position, &candidates, &attempts, &routing);
                    return Ok((value, index));
                }
                Tried::Refused(error) => return Err(error),
                Tried::Failed(error) => error,
            };
            attempts.push(Attempt {
                backend: slot.name.clone(),
                error,
            });
        }
        let attempts = Attempts(attempts);
        if Instant::now() >= deadline_at() {
            Err(Error::DeadlineExceeded {
                operation,
                deadline: inner.policy.deadline,
                attempts,
            })
        } else {
            Err(Error::AllFailed {
                operation,
                attempts,
            })
        }
    }

    /// One attempt on `slot`: through its breaker, under the attempt timeout cut to what is
    /// left of the deadline, with its metrics, health latency and breaker outcome recorded.
    async fn attempt<'a, T>(
        &'a self,
        slot: &Slot,
        operation: Operation,
        route: Route,
        now: Instant,
        remaining: Duration,
        call: impl FnOnce() -> Call<'a, T>,
    ) -> Tried<T> {
        let permit = match slot.breaker.try_acquire_at(now) {
            Ok(permit) => permit,
            Err(rejected) => {
                slot.metrics.rejected(operation);
                tracing::debug!(backend = %slot.name, state = %rejected.state, "breaker refused the attempt");
                return Tried::Failed(Error::CircuitOpen {
                    backend: slot.name.clone(),
                });
            }
        };
        let budget = self.inner.policy.attempt_timeout.min(remaining);
        let (result, end, elapsed, at_once) = match call() {
            Call::Ready(result) => (Ok(result), now, Duration::ZERO, true),
            Call::Pending(call) => {
                let (result, end, elapsed) = timed(&slot.watchdog, now, budget, call).await;
                (result, end, elapsed, false)
            }
        };
        let outcome = match &result {
            Ok(Err(error)) if error.is_transient() => Outcome::Failed,
            Ok(_) => Outcome::Answered,
            Err(_) => Outcome::TimedOut,
        };
        slot.metrics.attempt(operation, outcome, elapsed);
        tracing::debug!(backend = %slot.name, ?outcome, ?elapsed, "attempt");
        let error = match result {
            Ok(Ok(value)) => {
                // An answer given at once (`Call::Ready`) came from this process's memory: it
                // says nothing about latency, nor about the rate of the backend's failures.
                if at_once {
                    permit.success_at_once();
                } else {
                    permit.success_at_ms(elapsed, self.ms(end));
                }
                if route == Route::Lock && self.moves_lock_authority() {
                    slot.lock_served(end);
                }
                if !at_once {
                    slot.health.observe_latency(elapsed);
                }
                return Tried::Answered(value);
            }
            Ok(Err(error)) if error.is_transient() => {
                if at_once {
                    permit.failure_at_once();
                } else {
                    permit.failure_at(end);
                }
                error
            }
            Ok(Err(error)) => {
                permit.ignore();
                return Tried::Refused(error);
            }
            Err(_) => {
                permit.failure_at(end);
                slot.health.observe_latency(elapsed);
                Error::Timeout {
                    backend: slot.name.clone(),
                    operation,
                    after: budget,
                }
            }
        };
        if route.locks() && self.moves_lock_authority() {
            slot.lock_down(end);
        }
        tracing::warn!(backend = %slot.name, error = %error, "backend attempt failed");
        Tried::Failed(error)
    }

    pub(super) fn served(
        &self,
        operation: Operation,
        index: usize,
        position: usize,
        candidates: &Candidates,
        attempts: &[Attempt],
        routing: &Routing<'_>,
    ) {
        let inner = &self.inner;
        let first = candidates.first().unwrap_or(index);
        inner.strategy.served(routing, first, index);
        let name = &inner.slots[index].name;
        if position > 0
            && let (Some(first), Some(last)) = (candidates.first(), attempts.last())
        {
            let from = &inner.slots[first].name;
            tracing::warn!(%from, to = %name, reason = %last.error, "failed over");
            telemetry::failover(operation, from, name);
            let _ = inner.life.events.send(StorageEvent::Failover {
                operation,
                from: from.clone(),
                to: name.clone(),
                reason: last.error.to_string(),
            });
        }
        let previous = inner.active.index.load(Ordering::Relaxed);
        if previous != index {
            // A call that began before the last change, and followed its first choice, only
            // followed an older choice: not a change.
            let began = inner.active.since_epoch(routing.now);
            if position == 0
                && previous != NONE
                && began < inner.active.since_ms.load(Ordering::Relaxed)
            {
                return;
            }
            inner.active.index.store(index, Ordering::Relaxed);
            inner
                .active
                .since_ms
                .store(inner.active.since_epoch(Instant::now()), Ordering::Relaxed);
            if !inner.strategy.spreads_load() {
                let from = inner.slots.get(previous).map(|s| s.name.clone());
                tracing::info!(from = ?from, to = %name, "active backend changed");
                let _ = inner.life.events.send(StorageEvent::ActiveBackendChanged {
                    from,
                    to: name.clone(),
                });
            }
        }
    }
}
