//! Circuit breaker per backend: closed → open → half-open → closed (or open again).
//!
//! The closed path (admit, record success, record failure below the thresholds) touches only
//! atomics: no lock, no allocation. Transitions take a mutex; they are rare.

mod config;
mod window;

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use config::BreakerConfig;
use window::RateWindow;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused until the open time passes.
    Open,
    /// A limited number of probe calls decide whether to close or reopen.
    HalfOpen,
    /// Opened by hand; stays open until released.
    ForcedOpen,
}

impl CircuitState {
    fn from_u8(v: u8) -> Self {
        match v {
            CLOSED => CircuitState::Closed,
            OPEN => CircuitState::Open,
            HALF_OPEN => CircuitState::HalfOpen,
            _ => CircuitState::ForcedOpen,
        }
    }

    /// The lowercase name used in reports and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
const FORCED_OPEN: u8 = 3;

/// A change of state, passed to the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// State before.
    pub from: CircuitState,
    /// State after.
    pub to: CircuitState,
    /// For a move to open: how long it stays open.
    pub open_for: Option<Duration>,
}

/// The breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// The state that refused it.
    pub state: CircuitState,
}

/// A point-in-time view of a breaker, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// Current state.
    pub state: CircuitState,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Trips in the current run of short closed spells (drives the open-time backoff).
    pub trips: u32,
    /// Time left before an open breaker lets a probe through.
    pub open_remaining: Option<Duration>,
}

type Observer = Box<dyn Fn(Transition) + Send + Sync>;

#[derive(Debug, Default)]
struct Inner {
    trips: u32,
    probes_in_flight: u32,
    probe_successes: u32,
    last_closed_ms: u64,
    opened_ms: u64,
}

/// A circuit breaker. See [`BreakerConfig`] for the rules and defaults.
pub struct CircuitBreaker {
    config: BreakerConfig,
    epoch: Instant,
    state: AtomicU8,
    // Bumped on every transition; a permit records its outcome only into the generation that
    // admitted it, so late results from an earlier state are ignored.
    generation: AtomicU64,
    consecutive: AtomicU32,
    window: RateWindow,
    window_ms: u64,
    /// Thresholds in parts per million, so rates are judged in integers: 55 failures of 100
    /// reach a rate of 0.55 exactly.
    failure_ppm: u64,
    slow_ppm: u64,
    /// One more than the time (ms since `epoch`) of the last failure or slow call, 0 for none:
    /// a success with none in the window cannot exceed a rate, and skips summing the window.
    last_bad_ms: AtomicU64,
    open_until_ms: AtomicU64,
    closed_since_ms: AtomicU64,
    inner: Mutex<Inner>,
    observer: Option<Observer>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field(
                "consecutive_failures",
                &self.consecutive.load(Ordering::Relaxed),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Permission for one call, from [`CircuitBreaker::try_acquire`]. Report the outcome with
/// [`success`](Self::success), [`failure`](Self::failure) or [`ignore`](Self::ignore); a permit
/// dropped unreported (its call was cancelled) gives a half-open probe slot back.
#[must_use = "report the call's outcome on the permit"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    /// True when this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded after `elapsed`.
    pub fn success(self, elapsed: Duration) {
        self.success_at(elapsed, Instant::now());
    }

    /// The call succeeded after `elapsed`, observed at `now`.
    pub fn success_at(self, elapsed: Duration, now: Instant) {
        let now_ms = self.breaker.ms(now);
        self.success_at_ms(elapsed, now_ms);
    }

    /// [`success_at`](Self::success_at) with the time already in milliseconds since the
    /// breaker's epoch (the router reads the clock once per call for every backend).
    pub(crate) fn success_at_ms(mut self, elapsed: Duration, now_ms: u64) {
        self.done = true;
        self.breaker
            .on_success(self.generation, self.probe, elapsed, now_ms);
    }

    /// The call was answered at once from this process's memory (an in-process store's read,
    /// a pending replay record): it took no time worth timing and is not counted in the rate
    /// window, whose rates are those of calls that had to wait. It ends a run of failures,
    /// and reads no clock. A half-open probe still closes the breaker, at the time read then.
    pub(crate) fn success_at_once(mut self) {
        if self.probe {
            let now_ms = self.breaker.ms(Instant::now());
            return self.success_at_ms(Duration::ZERO, now_ms);
        }
        self.done = true;
        self.breaker.closed_success_at_once(self.generation);
    }

    /// The call failed, answered at once as for [`success_at_once`](Self::success_at_once):
    /// it adds to the run of failures (which trips the breaker at its threshold) but not to
    /// the rate window, so at-once answers weigh alike whichever way they went.
    pub(crate) fn failure_at_once(mut self) {
        self.done = true;
        let breaker = self.breaker;
        if self.probe {
            breaker.trip_if_current(self.generation, HALF_OPEN, breaker.ms(Instant::now()));
            return;
        }
        if !breaker.is_current(self.generation, CLOSED) {
            return;
        }
        let consecutive = breaker.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if consecutive >= breaker.config.consecutive_failures {
            breaker.trip_if_current(self.generation, CLOSED, breaker.ms(Instant::now()));
        }
    }

    /// The call failed in a way that counts (see [`Error::is_transient`](crate::Error::is_transient)).
    pub fn failure(self) {
        self.failure_at(Instant::now());
    }

    /// The call failed, observed at `now`.
    pub fn failure_at(mut self, now: Instant) {
        self.done = true;
        self.breaker
            .on_failure(self.generation, self.probe, self.breaker.ms(now));
    }

    /// The call ended in a way that says nothing about the backend (a caller error).
    pub fn ignore(mut self) {
        self.done = true;
        self.breaker.on_abandon(self.generation, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.on_abandon(self.generation, self.probe);
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker. The config should be [validated](BreakerConfig::validate) first.
    pub fn new(config: BreakerConfig) -> Self {
        let window_ms = duration_ms(config.window);
        let buckets = config.window_buckets;
        Self {
            failure_ppm: rate_ppm(config.failure_rate),
            slow_ppm: rate_ppm(config.slow_call_rate),
            config,
            epoch: Instant::now(),
            state: AtomicU8::new(CLOSED),
            generation: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            window: RateWindow::new(window_ms, buckets),
            window_ms,
            last_bad_ms: AtomicU64::new(0),
            open_until_ms: AtomicU64::new(0),
            closed_since_ms: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            observer: None,
        }
    }

    /// The same breaker counting time from `epoch`: the router gives every backend's breaker and
    /// health tracker one epoch, so one clock reading serves all of them. Only before any call.
    pub(crate) fn with_epoch(mut self, epoch: Instant) -> Self {
        self.epoch = epoch;
        self
    }

    /// Calls `observer` on every transition (after the state changed, outside the lock).
    pub fn with_observer(mut self, observer: impl Fn(Transition) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// True when a call would be admitted now (closed, open past its time, or half-open with a
    /// free probe slot), without taking a permit.
    pub fn would_admit(&self) -> bool {
        self.would_admit_at(Instant::now())
    }

    /// [`would_admit`](Self::would_admit) at a given instant.
    pub fn would_admit_at(&self, now: Instant) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => self.ms(now) >= self.open_until_ms.load(Ordering::Acquire),
            HALF_OPEN => {
                let inner = self.lock();
                inner.probes_in_flight + inner.probe_successes < self.config.half_open_probes
            }
            _ => false,
        }
    }

    /// For a call on the router's common path: the generation of a closed breaker, or `None`
    /// when it is not closed. The call needs no permit: a closed one is not counted until its
    /// outcome is reported, and one dropped unreported gives nothing back. An answer at once
    /// is reported with [`closed_success_at_once`](Self::closed_success_at_once).
    #[inline]
    pub(crate) fn closed_generation(&self) -> Option<u64> {
        (self.state.load(Ordering::Acquire) == CLOSED)
            .then(|| self.generation.load(Ordering::Acquire))
    }

    /// A call admitted closed at `generation` was answered at once: as
    /// [`Permit::success_at_once`], it ends a run of failures (while still closed in that
    /// generation) and reads no clock.
    #[inline]
    pub(crate) fn closed_success_at_once(&self, generation: u64) {
        if self.consecutive.load(Ordering::Relaxed) != 0 && self.is_current(generation, CLOSED) {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Asks to make a call now. A closed breaker admits without reading the clock.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(self.permit(self.generation.load(Ordering::Acquire), false));
        }
        self.try_acquire_at(Instant::now())
    }

    /// Asks to make a call at `now`.
    pub fn try_acquire_at(&self, now: Instant) -> Result<Permit<'_>, Rejected> {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return Ok(self.permit(self.generation.load(Ordering::Acquire), false));
        }
        if state == FORCED_OPEN
            || (state == OPEN && self.ms(now) < self.open_until_ms.load(Ordering::Acquire))
        {
            return Err(Rejected {
                state: CircuitState::from_u8(state),
            });
        }
        let mut transition = None;
        let result = {
            let mut inner = self.lock();
            let now_ms = self.ms(now);
            let mut state = self.state.load(Ordering::Acquire);
            if state == OPEN && now_ms >= self.open_until_ms.load(Ordering::Acquire) {
                transition = self.to_half_open(&mut inner);
                state = HALF_OPEN;
            }
            match state {
                CLOSED => Ok(self.permit(self.generation.load(Ordering::Acquire), false)),
                HALF_OPEN
                    if inner.probes_in_flight + inner.probe_successes
                        < self.config.half_open_probes =>
                {
                    inner.probes_in_flight += 1;
                    Ok(self.permit(self.generation.load(Ordering::Acquire), true))
                }
                other => Err(Rejected {
                    state: CircuitState::from_u8(other),
                }),
            }
        };
        self.notify(transition);
        result
    }

    /// Opens the breaker by hand until [`release_forced_open`](Self::release_forced_open).
    pub fn force_open(&self) {
        let transition = {
            let _inner = self.lock();
            self.set_state(FORCED_OPEN, None)
        };
        self.notify(transition);
    }

    /// Ends a forced open: the breaker goes half-open, so probes decide whether to close.
    pub fn release_forced_open(&self) {
        let transition = {
            let mut inner = self.lock();
            (self.state.load(Ordering::Acquire) == FORCED_OPEN)
                .then(|| self.to_half_open(&mut inner))
                .flatten()
        };
        self.notify(transition);
    }

    /// Called when active health checks see the backend recover: a breaker open for at least
    /// the first open time ([`open_duration`](BreakerConfig::open_duration)) skips the rest of
    /// its (backed-off) open time and goes half-open, so the next call probes it. Sooner it
    /// does not: a backend that flaps faster than that would otherwise trip the breaker again
    /// and again, once per flap.
    pub fn health_recovered(&self) {
        self.health_recovered_at(Instant::now());
    }

    /// [`health_recovered`](Self::health_recovered) at `now`.
    pub fn health_recovered_at(&self, now: Instant) {
        if self.state.load(Ordering::Acquire) != OPEN {
            return;
        }
        let now_ms = self.ms(now);
        let transition = {
            let mut inner = self.lock();
            let open_long_enough =
                now_ms.saturating_sub(inner.opened_ms) >= duration_ms(self.config.open_duration);
            (self.state.load(Ordering::Acquire) == OPEN && open_long_enough)
                .then(|| self.to_half_open(&mut inner))
                .flatten()
        };
        self.notify(transition);
    }

    /// How long the breaker has been closed at `now`; `None` when it is not closed.
    pub fn closed_for(&self, now: Instant) -> Option<Duration> {
        self.closed_ms(self.ms(now)).map(Duration::from_millis)
    }

    /// True when the breaker is closed: a call is admitted without reading the clock.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// [`closed_for`](Self::closed_for) in milliseconds, at `now_ms` since the breaker's epoch.
    pub(crate) fn closed_ms(&self, now_ms: u64) -> Option<u64> {
        (self.state.load(Ordering::Acquire) == CLOSED)
            .then(|| now_ms.saturating_sub(self.closed_since_ms.load(Ordering::Acquire)))
    }

    /// A view for reports.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.snapshot_at(Instant::now())
    }

    /// A view for reports at `now`.
    pub fn snapshot_at(&self, now: Instant) -> BreakerSnapshot {
        let trips = self.lock().trips;
        let state = self.state();
        let open_remaining = (state == CircuitState::Open).then(|| {
            Duration::from_millis(
                self.open_until_ms
                    .load(Ordering::Acquire)
                    .saturating_sub(self.ms(now)),
            )
        });
        BreakerSnapshot {
            state,
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            trips,
            open_remaining,
        }
    }

    fn permit(&self, generation: u64, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            generation,
            probe,
            done: false,
        }
    }

    fn on_success(&self, generation: u64, probe: bool, elapsed: Duration, now_ms: u64) {
        if probe {
            let transition = {
                let mut inner = self.lock();
                if !self.is_current(generation, HALF_OPEN) {
                    return;
                }
                inner.probes_in_flight -= 1;
                inner.probe_successes += 1;
                self.consecutive.store(0, Ordering::Relaxed);
                (inner.probe_successes >= self.config.half_open_probes)
                    .then(|| self.close(&mut inner, now_ms))
                    .flatten()
            };
            self.notify(transition);
            return;
        }
        if !self.is_current(generation, CLOSED) {
            return;
        }
        let slow = elapsed >= self.config.slow_call;
        self.window.record(now_ms, false, slow);
        if slow {
            self.last_bad_ms.store(now_ms + 1, Ordering::Relaxed);
        }
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        // Rates are judged after every call, as Resilience4j does: 5 failures in 9 calls and
        // then a success is 5 in 10, which trips a rate of 0.5.
        if self.bad_in_window(now_ms) && self.rate_exceeded(now_ms) {
            self.trip_if_current(generation, CLOSED, now_ms);
        }
    }

    /// A failure or slow call may still be in the window.
    fn bad_in_window(&self, now_ms: u64) -> bool {
        match self.last_bad_ms.load(Ordering::Relaxed) {
            0 => false,
            last => now_ms.saturating_sub(last - 1) < self.window_ms,
        }
    }

    fn on_failure(&self, generation: u64, probe: bool, now_ms: u64) {
        if probe {
            self.trip_if_current(generation, HALF_OPEN, now_ms);
            return;
        }
        if !self.is_current(generation, CLOSED) {
            return;
        }
        let consecutive = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        self.window.record(now_ms, true, false);
        self.last_bad_ms.store(now_ms + 1, Ordering::Relaxed);
        if consecutive >= self.config.consecutive_failures || self.rate_exceeded(now_ms) {
            self.trip_if_current(generation, CLOSED, now_ms);
        }
    }

    fn on_abandon(&self, generation: u64, probe: bool) {
        if probe {
            let mut inner = self.lock();
            if self.is_current(generation, HALF_OPEN) {
                inner.probes_in_flight -= 1;
            }
        }
    }

    fn rate_exceeded(&self, now_ms: u64) -> bool {
        let totals = self.window.totals(now_ms);
        if totals.calls < u64::from(self.config.minimum_calls) {
            return false;
        }
        let threshold = |ppm: u64| u128::from(ppm) * u128::from(totals.calls);
        u128::from(totals.failures) * 1_000_000 >= threshold(self.failure_ppm)
            || u128::from(totals.slow) * 1_000_000 >= threshold(self.slow_ppm)
    }

    fn trip_if_current(&self, generation: u64, expected: u8, now_ms: u64) {
        let transition = {
            let mut inner = self.lock();
            if !self.is_current(generation, expected) {
                return;
            }
            if expected == HALF_OPEN {
                self.consecutive.fetch_add(1, Ordering::AcqRel);
            }
            self.trip(&mut inner, now_ms)
        };
        self.notify(transition);
    }

    fn trip(&self, inner: &mut Inner, now_ms: u64) -> Option<Transition> {
        // Backoff grows while trips follow short closed spells; a breaker that stayed closed for
        // a whole window starts again from the first open time.
        if self.state.load(Ordering::Acquire) == CLOSED
            && now_ms.saturating_sub(inner.last_closed_ms) >= duration_ms(self.config.window)
        {
            inner.trips = 0;
        }
        inner.trips = inner.trips.saturating_add(1);
        inner.opened_ms = now_ms;
        let open_for = self.open_time(inner.trips);
        self.open_until_ms
            .store(now_ms + duration_ms(open_for), Ordering::Release);
        self.window.reset();
        self.set_state(OPEN, Some(open_for))
    }

    fn open_time(&self, trips: u32) -> Duration {
        let c = &self.config;
        let exponent = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
        let max = c.max_open_duration.as_secs_f64();
        let base = (c.open_duration.as_secs_f64() * c.backoff_multiplier.powi(exponent)).min(max);
        let spread = if c.jitter > 0.0 {
            1.0 + c.jitter * (fastrand::f64() * 2.0 - 1.0)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * spread).min(max)).max(Duration::from_millis(1))
    }

    fn to_half_open(&self, inner: &mut Inner) -> Option<Transition> {
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        self.set_state(HALF_OPEN, None)
    }

    fn close(&self, inner: &mut Inner, now_ms: u64) -> Option<Transition> {
        inner.last_closed_ms = now_ms;
        self.consecutive.store(0, Ordering::Relaxed);
        self.window.reset();
        self.closed_since_ms.store(now_ms, Ordering::Release);
        self.set_state(CLOSED, None)
    }

    // Caller holds the mutex.
    fn set_state(&self, to: u8, open_for: Option<Duration>) -> Option<Transition> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let from = self.state.swap(to, Ordering::AcqRel);
        (from != to).then(|| Transition {
            from: CircuitState::from_u8(from),
            to: CircuitState::from_u8(to),
            open_for,
        })
    }

    fn is_current(&self, generation: u64, state: u8) -> bool {
        self.generation.load(Ordering::Acquire) == generation
            && self.state.load(Ordering::Acquire) == state
    }

    fn notify(&self, transition: Option<Transition>) {
        if let (Some(t), Some(observer)) = (transition, &self.observer) {
            observer(t);
        }
    }

    /// Milliseconds from the breaker's epoch to `now`.
    pub(crate) fn ms(&self, now: Instant) -> u64 {
        ms_since(self.epoch, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The lock guards plain counters; a panic elsewhere cannot leave them half-written.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A rate in (0, 1] as parts per million, rounded to the nearest: `0.55` is exactly 550,000.
fn rate_ppm(rate: f64) -> u64 {
    (rate.clamp(0.0, 1.0) * 1e6).round() as u64
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds from `epoch` to `now` (zero before it): the unit breakers, health trackers and
/// the router count time in.
pub(crate) fn ms_since(epoch: Instant, now: Instant) -> u64 {
    duration_ms(now.saturating_duration_since(epoch))
}

#[cfg(test)]
mod tests;
