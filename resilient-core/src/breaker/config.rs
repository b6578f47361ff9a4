//! Breaker settings and their defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits;

/// Circuit breaker settings.
///
/// Defaults and where they come from:
/// - `consecutive_failures = 5`: the consecutive-failure policy of failsafe-rs and Polly's
///   classic breaker, which both document 5 in their examples.
/// - `failure_rate = 0.5`, `minimum_calls = 20`, `window = 10s` in 10 buckets: Hystrix'
///   `errorThresholdPercentage`, `requestVolumeThreshold` and rolling statistical window.
/// - `slow_call_rate = 1.0`: resilience4j's `slowCallRateThreshold`; its 60 s
///   `slowCallDurationThreshold` is far too long for a key-value store, so `slow_call = 1s`.
/// - `open_duration = 1s` growing ×2 per trip up to `max_open_duration = 30s`, ±10 % jitter:
///   failsafe-rs' exponential backoff for the open state. Hystrix waits a flat 5 s; a storage
///   failover costs every call latency while it lasts, so we probe sooner and back off instead.
/// - `half_open_probes = 1`: Hystrix lets a single trial call through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Trip after this many failures in a row.
    pub consecutive_failures: u32,
    /// Trip when this share of the calls in the window failed (0 < rate ≤ 1), judged after
    /// every call once the window holds `minimum_calls`, exactly to a millionth. A read the
    /// router answers at once from process memory (an in-process store, a pending replay
    /// record) is not one of these calls, whichever way it went; a failure answered at once
    /// still adds to `consecutive_failures`.
    pub failure_rate: f64,
    /// Trip when this share of the calls in the window were slow (0 < rate ≤ 1), judged as
    /// `failure_rate` is.
    pub slow_call_rate: f64,
    /// A successful call that took at least this long counts as slow.
    #[serde(with = "humantime_serde")]
    pub slow_call: Duration,
    /// Rates are only judged once the window holds this many calls.
    pub minimum_calls: u32,
    /// Length of the rate window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Number of buckets the window is divided into (1 to 60).
    pub window_buckets: u32,
    /// Open time after the first trip.
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
    /// Upper bound of the open time.
    #[serde(with = "humantime_serde")]
    pub max_open_duration: Duration,
    /// Factor applied to the open time on each trip that follows a short closed spell.
    pub backoff_multiplier: f64,
    /// Random spread of the open time, as a share of it (0 ≤ jitter < 1).
    pub jitter: f64,
    /// Calls admitted in half-open; that many successes close the breaker.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call: Duration::from_secs(1),
            minimum_calls: 20,
            window: Duration::from_secs(10),
            window_buckets: 10,
            open_duration: Duration::from_secs(1),
            max_open_duration: Duration::from_secs(30),
            backoff_multiplier: 2.0,
            jitter: 0.1,
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// Sets [`consecutive_failures`](Self::consecutive_failures).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// Sets [`failure_rate`](Self::failure_rate) and [`minimum_calls`](Self::minimum_calls).
    pub fn failure_rate(mut self, rate: f64, minimum_calls: u32) -> Self {
        self.failure_rate = rate;
        self.minimum_calls = minimum_calls;
        self
    }

    /// Sets the slow-call threshold and rate.
    pub fn slow_calls(mut self, slow_call: Duration, rate: f64) -> Self {
        self.slow_call = slow_call;
        self.slow_call_rate = rate;
        self
    }

    /// Sets the window length and bucket count.
    pub fn window(mut self, window: Duration, buckets: u32) -> Self {
        self.window = window;
        self.window_buckets = buckets;
        self
    }

    /// Sets the first and the largest open time.
    pub fn open_duration(mut self, first: Duration, max: Duration) -> Self {
        self.open_duration = first;
        self.max_open_duration = max;
        self
    }

    /// Sets [`backoff_multiplier`](Self::backoff_multiplier).
    pub fn backoff_multiplier(mut self, factor: f64) -> Self {
        self.backoff_multiplier = factor;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`half_open_probes`](Self::half_open_probes).
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, reason: &str| Err(Error::config(format!("breaker.{field}"), reason));
        if !(1..=1_000_000).contains(&self.consecutive_failures) {
            return bad("consecutive_failures", "must be from 1 to 1000000");
        }
        // Rates are judged in millionths: a smaller one would be zero, tripping on any calls.
        if !(self.failure_rate >= 1e-6 && self.failure_rate <= 1.0) {
            return bad("failure_rate", "must be in [0.000001, 1]");
        }
        if !(self.slow_call_rate >= 1e-6 && self.slow_call_rate <= 1.0) {
            return bad("slow_call_rate", "must be in [0.000001, 1]");
        }
        if self.slow_call.is_zero() {
            return bad("slow_call", "must not be zero");
        }
        limits::duration("breaker.slow_call", self.slow_call, limits::TIMEOUT)?;
        // The window counts up to 2^18 - 1 calls per bucket.
        if !(1..=100_000).contains(&self.minimum_calls) {
            return bad("minimum_calls", "must be from 1 to 100000");
        }
        if !(1..=60).contains(&self.window_buckets) {
            return bad("window_buckets", "must be between 1 and 60");
        }
        if self.window < Duration::from_millis(u64::from(self.window_buckets)) {
            return bad("window", "must be at least 1ms per bucket");
        }
        limits::duration("breaker.window", self.window, limits::DELAY)?;
        if self.open_duration < Duration::from_millis(1) {
            return bad("open_duration", "must be at least 1ms");
        }
        limits::duration("breaker.open_duration", self.open_duration, limits::DELAY)?;
        limits::duration(
            "breaker.max_open_duration",
            self.max_open_duration,
            limits::DELAY,
        )?;
        if self.max_open_duration < self.open_duration {
            return bad("max_open_duration", "must be at least open_duration");
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return bad(
                "backoff_multiplier",
                "must be a finite number of at least 1",
            );
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad("jitter", "must be in [0, 1)");
        }
        if self.half_open_probes == 0 || self.half_open_probes > 1_000 {
            return bad("half_open_probes", "must be between 1 and 1000");
        }
        Ok(())
    }
}
