//! Active health checks per backend, with rise/fall hysteresis and a latency EWMA. The
//! tracker's state is read lock-free on every routing decision; the monitor task writes it.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backend::HealthProbe;
use crate::error::{Error, Result};

/// Health of one backend as seen by active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// No check has completed yet. Routable.
    Unknown,
    /// Checks pass. Routable.
    Healthy,
    /// Checks pass but slowly, the backend reports itself impaired, or recent checks failed
    /// without reaching the fall count. Routable.
    Degraded,
    /// `fall` checks in a row failed; routable again after `rise` checks in a row pass.
    Unhealthy,
}

impl HealthState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => HealthState::Unknown,
            1 => HealthState::Healthy,
            2 => HealthState::Degraded,
            _ => HealthState::Unhealthy,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            HealthState::Unknown => 0,
            HealthState::Healthy => 1,
            HealthState::Degraded => 2,
            HealthState::Unhealthy => 3,
        }
    }

    /// True unless unhealthy.
    pub fn is_routable(self) -> bool {
        self != HealthState::Unhealthy
    }

    /// The lowercase name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health check settings. `rise = 2` and `fall = 3` are HAProxy's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Run active checks at all. Without them the state stays `unknown` and only the breaker
    /// steers traffic.
    pub enabled: bool,
    /// Time between the end of one check and the start of the next.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A check that takes longer fails.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Passing checks in a row that bring an unhealthy backend back.
    pub rise: u32,
    /// Failing checks in a row that make a backend unhealthy.
    pub fall: u32,
    /// Latency EWMA above which a passing backend is reported degraded.
    #[serde(with = "humantime_serde")]
    pub degraded_latency: Duration,
    /// Weight of a new latency sample in the EWMA (0 < alpha ≤ 1).
    pub ewma_alpha: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            degraded_latency: Duration::from_millis(250),
            ewma_alpha: 0.2,
        }
    }
}

impl HealthConfig {
    /// Sets [`enabled`](Self::enabled).
    pub fn enabled(mut self, yes: bool) -> Self {
        self.enabled = yes;
        self
    }

    /// Sets [`interval`](Self::interval) and [`timeout`](Self::timeout).
    pub fn interval(mut self, interval: Duration, timeout: Duration) -> Self {
        self.interval = interval;
        self.timeout = timeout;
        self
    }

    /// Sets [`rise`](Self::rise) and [`fall`](Self::fall).
    pub fn hysteresis(mut self, rise: u32, fall: u32) -> Self {
        self.rise = rise;
        self.fall = fall;
        self
    }

    /// Sets [`degraded_latency`](Self::degraded_latency).
    pub fn degraded_latency(mut self, latency: Duration) -> Self {
        self.degraded_latency = latency;
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: &str| Err(Error::config(format!("health.{field}"), reason));
        if self.interval.is_zero() {
            return bad("interval", "must not be zero");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must not be zero");
        }
        crate::limits::duration("health.interval", self.interval, crate::limits::DELAY)?;
        crate::limits::duration("health.timeout", self.timeout, crate::limits::TIMEOUT)?;
        crate::limits::duration(
            "health.degraded_latency",
            self.degraded_latency,
            std::time::Duration::ZERO..=crate::limits::HOUR,
        )?;
        if !(1..=1000).contains(&self.rise) {
            return bad("rise", "must be from 1 to 1000");
        }
        if !(1..=1000).contains(&self.fall) {
            return bad("fall", "must be from 1 to 1000");
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return bad("ewma_alpha", "must be in (0, 1]");
        }
        Ok(())
    }
}

/// A change of health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthChange {
    /// State before.
    pub from: HealthState,
    /// State after.
    pub to: HealthState,
}

#[derive(Debug, Default)]
struct Counts {
    passes: u32,
    failures: u32,
    last_error: Option<String>,
    checks: u64,
}

/// Health state, latency EWMA and last error of one backend.
#[derive(Debug)]
pub struct HealthTracker {
    config: HealthConfig,
    epoch: Instant,
    state: AtomicU8,
    // f64 bits of the latency EWMA in nanoseconds; 0 until the first sample. Nanoseconds, so
    // that reading it back (every routing decision) is a cast, not `Duration::from_secs_f64`.
    ewma_ns: AtomicU64,
    routable_since_ms: AtomicU64,
    counts: Mutex<Counts>,
}

impl HealthTracker {
    /// A tracker in state `unknown`.
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            epoch: Instant::now(),
            state: AtomicU8::new(HealthState::Unknown.as_u8()),
            ewma_ns: AtomicU64::new(0),
            routable_since_ms: AtomicU64::new(0),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// The same tracker counting time from `epoch` (see the breaker's `with_epoch`). Only
    /// before any check.
    pub(crate) fn with_epoch(mut self, epoch: Instant) -> Self {
        self.epoch = epoch;
        self
    }

    /// The settings.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        HealthState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The latency EWMA over checks and calls; `None` before the first sample.
    pub fn latency(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        // Saturating cast; the EWMA of real durations is finite and positive.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (ns > 0.0).then(|| Duration::from_nanos((ns as u64).max(1)))
    }

    /// The message of the last failed check, if the last check failed.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// How many checks have completed.
    pub fn checks(&self) -> u64 {
        self.lock().checks
    }

    /// How long the backend has been routable at `now`; `None` when it is unhealthy.
    pub fn routable_for(&self, now: Instant) -> Option<Duration> {
        self.routable_ms(crate::breaker::ms_since(self.epoch, now))
            .map(Duration::from_millis)
    }

    /// [`routable_for`](Self::routable_for) in milliseconds, at `now_ms` since the tracker's
    /// epoch.
    pub(crate) fn routable_ms(&self, now_ms: u64) -> Option<u64> {
        self.state()
            .is_routable()
            .then(|| now_ms.saturating_sub(self.routable_since_ms.load(Ordering::Acquire)))
    }

    /// Feeds the latency of a successful call into the EWMA. Lock-free; concurrent updates may
    /// drop a sample, which an average can afford.
    pub fn observe_latency(&self, latency: Duration) {
        // Not `as_nanos() as f64`: a 128-bit integer's conversion costs more than the rest.
        let sample = latency.as_secs_f64() * 1e9;
        let old = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            sample.max(f64::MIN_POSITIVE)
        } else {
            old + self.config.ewma_alpha * (sample - old)
        };
        self.ewma_ns.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Records the result of one check and returns the state change, if any.
    pub fn record_check(
        &self,
        result: std::result::Result<(HealthProbe, Duration), String>,
        now: Instant,
    ) -> Option<HealthChange> {
        let mut counts = self.lock();
        counts.checks += 1;
        let from = self.state();
        let to = match result {
            Ok((probe, latency)) => {
                self.observe_latency(latency);
                counts.failures = 0;
                counts.passes = counts.passes.saturating_add(1);
                counts.last_error = None;
                let slow = self
                    .latency()
                    .is_some_and(|l| l > self.config.degraded_latency);
                let passing = if matches!(probe, HealthProbe::Degraded(_)) || slow {
                    HealthState::Degraded
                } else {
                    HealthState::Healthy
                };
                if from == HealthState::Unhealthy && counts.passes < self.config.rise {
                    HealthState::Unhealthy
                } else {
                    passing
                }
            }
            Err(message) => {
                counts.passes = 0;
                counts.failures = counts.failures.saturating_add(1);
                counts.last_error = Some(message);
                if counts.failures >= self.config.fall || from == HealthState::Unhealthy {
                    HealthState::Unhealthy
                } else {
                    HealthState::Degraded
                }
            }
        };
        if from == to {
            return None;
        }
        if from == HealthState::Unhealthy {
            let now_ms = crate::breaker::ms_since(self.epoch, now);
            self.routable_since_ms.store(now_ms, Ordering::Release);
        }
        self.state.store(to.as_u8(), Ordering::Release);
        Some(HealthChange { from, to })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> std::result::Result<(HealthProbe, Duration), String> {
        Ok((HealthProbe::Healthy, Duration::from_millis(ms)))
    }

    fn err() -> std::result::Result<(HealthProbe, Duration), String> {
        Err("connection refused".to_owned())
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_passes() {
        let h = HealthTracker::new(HealthConfig::default().hysteresis(2, 3));
        let t = Instant::now();
        assert_eq!(h.state(), HealthState::Unknown);
        assert_eq!(h.record_check(ok(1), t).unwrap().to, HealthState::Healthy);
        assert_eq!(h.record_check(err(), t).unwrap().to, HealthState::Degraded);
        assert_eq!(h.record_check(err(), t), None);
        assert_eq!(h.record_check(err(), t).unwrap().to, HealthState::Unhealthy);
        assert_eq!(h.last_error().as_deref(), Some("connection refused"));
        assert_eq!(h.record_check(ok(1), t), None, "one pass is not enough");
        assert_eq!(h.record_check(err(), t), None);
        assert_eq!(h.record_check(ok(1), t), None);
        assert_eq!(h.record_check(ok(1), t).unwrap().to, HealthState::Healthy);
        assert_eq!(h.last_error(), None);
    }

    #[test]
    fn slow_or_self_reported_impairment_is_degraded() {
        let h =
            HealthTracker::new(HealthConfig::default().degraded_latency(Duration::from_millis(10)));
        let t = Instant::now();
        h.record_check(ok(50), t);
        assert_eq!(h.state(), HealthState::Degraded);
        let h = HealthTracker::new(HealthConfig::default());
        h.record_check(
            Ok((
                HealthProbe::Degraded("loading".into()),
                Duration::from_millis(1),
            )),
            t,
        );
        assert_eq!(h.state(), HealthState::Degraded);
    }

    #[test]
    fn routable_time_restarts_when_the_backend_comes_back() {
        let h = HealthTracker::new(HealthConfig::default().hysteresis(1, 1));
        let t = Instant::now();
        h.record_check(err(), t);
        assert_eq!(h.routable_for(t), None);
        let back = t + Duration::from_secs(5);
        h.record_check(ok(1), back);
        assert_eq!(
            h.routable_for(back + Duration::from_secs(2)),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn latency_ewma_moves_toward_new_samples() {
        let h = HealthTracker::new(HealthConfig::default());
        assert_eq!(h.latency(), None);
        h.observe_latency(Duration::from_millis(10));
        h.observe_latency(Duration::from_millis(20));
        let l = h.latency().unwrap().as_secs_f64();
        assert!((l - 0.012).abs() < 1e-9, "{l}");
    }
}
