//! Breaker transitions at exact thresholds and times, on synthetic instants, plus a property
//! test against a small reference model.

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn config() -> BreakerConfig {
    BreakerConfig::default()
        .consecutive_failures(3)
        .failure_rate(0.5, 1_000)
        .jitter(0.0)
        .open_duration(Duration::from_secs(1), Duration::from_secs(8))
}

fn fail(b: &CircuitBreaker, now: Instant) {
    b.try_acquire_at(now).expect("admitted").failure_at(now);
}

fn succeed(b: &CircuitBreaker, now: Instant) {
    b.try_acquire_at(now).expect("admitted").success_at(MS, now);
}

#[test]
fn opens_exactly_at_the_consecutive_failure_threshold() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    fail(&b, t);
    fail(&b, t);
    assert_eq!(b.state(), CircuitState::Closed);
    fail(&b, t);
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(b.try_acquire_at(t).unwrap_err().state, CircuitState::Open);
}

#[test]
fn a_success_resets_the_consecutive_count() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    fail(&b, t);
    fail(&b, t);
    succeed(&b, t);
    fail(&b, t);
    fail(&b, t);
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.snapshot_at(t).consecutive_failures, 2);
}

#[test]
fn stays_open_for_exactly_the_open_time_then_admits_a_probe() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    (0..3).for_each(|_| fail(&b, t));
    assert!(b.try_acquire_at(t + Duration::from_millis(999)).is_err());
    let probe = b.try_acquire_at(t + Duration::from_secs(1)).unwrap();
    assert!(probe.is_probe());
    assert_eq!(b.state(), CircuitState::HalfOpen);
    probe.success_at(MS, t + Duration::from_secs(1));
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn half_open_admits_only_the_configured_probes() {
    let b = CircuitBreaker::new(config().half_open_probes(2));
    let t = Instant::now();
    (0..3).for_each(|_| fail(&b, t));
    let later = t + Duration::from_secs(1);
    let p1 = b.try_acquire_at(later).unwrap();
    let p2 = b.try_acquire_at(later).unwrap();
    assert!(b.try_acquire_at(later).is_err());
    p1.success_at(MS, later);
    assert_eq!(
        b.state(),
        CircuitState::HalfOpen,
        "needs both probes to succeed"
    );
    assert!(
        b.try_acquire_at(later).is_err(),
        "a used probe slot is not given back"
    );
    p2.success_at(MS, later);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn a_dropped_probe_returns_its_permit() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    (0..3).for_each(|_| fail(&b, t));
    let later = t + Duration::from_secs(1);
    let probe = b.try_acquire_at(later).unwrap();
    assert!(b.try_acquire_at(later).is_err());
    drop(probe);
    assert!(b.try_acquire_at(later).is_ok());
}

#[test]
fn a_failed_probe_reopens_with_a_longer_open_time_up_to_the_cap() {
    let b = CircuitBreaker::new(config());
    let mut t = Instant::now();
    (0..3).for_each(|_| fail(&b, t));
    for expected_secs in [2, 4, 8, 8] {
        t += b.snapshot_at(t).open_remaining.unwrap();
        fail(&b, t);
        assert_eq!(
            b.snapshot_at(t).open_remaining,
            Some(Duration::from_secs(expected_secs))
        );
    }
}

#[test]
fn the_backoff_starts_over_after_a_whole_window_closed() {
    let b = CircuitBreaker::new(config());
    let mut t = Instant::now();
    (0..3).for_each(|_| fail(&b, t));
    t += Duration::from_secs(1);
    fail(&b, t); // reopen for 2 s
    t += Duration::from_secs(2);
    succeed(&b, t); // closed
    t += Duration::from_secs(10); // one whole window
    (0..3).for_each(|_| fail(&b, t));
    assert_eq!(
        b.snapshot_at(t).open_remaining,
        Some(Duration::from_secs(1))
    );
}

#[test]
fn jitter_keeps_the_open_time_within_its_spread() {
    for _ in 0..200 {
        let b = CircuitBreaker::new(config().jitter(0.25));
        let t = Instant::now();
        (0..3).for_each(|_| fail(&b, t));
        let open = b.snapshot_at(t).open_remaining.unwrap();
        assert!(open >= Duration::from_millis(749) && open <= Duration::from_millis(1250));
    }
}

#[test]
fn opens_on_failure_rate_once_the_minimum_calls_are_seen() {
    let b = CircuitBreaker::new(config().consecutive_failures(100).failure_rate(0.5, 10));
    let t = Instant::now();
    for _ in 0..4 {
        succeed(&b, t);
        fail(&b, t);
    }
    succeed(&b, t);
    assert_eq!(
        b.state(),
        CircuitState::Closed,
        "9 calls, under the minimum"
    );
    fail(&b, t); // 10 calls, 5 failures
    assert_eq!(b.state(), CircuitState::Open);
}

#[test]
fn an_answer_given_at_once_ends_a_run_of_failures_but_is_not_counted_in_the_window() {
    let b = CircuitBreaker::new(config().consecutive_failures(3).failure_rate(0.5, 4));
    let t = Instant::now();
    fail(&b, t);
    fail(&b, t);
    b.try_acquire_at(t).expect("admitted").success_at_once();
    assert_eq!(b.snapshot_at(t).consecutive_failures, 0);
    assert_eq!(b.state(), CircuitState::Closed);
    // Two failures and two calls that reached the backend: four calls, half failed. Had the
    // answer given at once counted, it would be 2 of 5.
    succeed(&b, t);
    assert_eq!(
        b.state(),
        CircuitState::Closed,
        "3 calls, under the minimum"
    );
    succeed(&b, t);
    assert_eq!(b.state(), CircuitState::Open, "2 of 4 calls failed");
}

#[test]
fn a_failure_answered_at_once_adds_to_the_run_but_not_to_the_window() {
    let b = CircuitBreaker::new(config().consecutive_failures(3).failure_rate(0.5, 2));
    let t = Instant::now();
    b.try_acquire_at(t).expect("admitted").failure_at_once();
    succeed(&b, t);
    succeed(&b, t);
    assert_eq!(
        b.state(),
        CircuitState::Closed,
        "0 of 2 calls in the window failed"
    );
    for _ in 0..2 {
        b.try_acquire_at(t).expect("admitted").failure_at_once();
    }
    assert_eq!(b.snapshot_at(t).consecutive_failures, 2);
    assert_eq!(b.state(), CircuitState::Closed);
    b.try_acquire_at(t).expect("admitted").failure_at_once();
    assert_eq!(b.state(), CircuitState::Open, "3 failures in a row");
}

#[test]
fn an_answer_given_at_once_to_a_probe_closes_the_breaker() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    (0..3).for_each(|_| fail(&b, t));
    let probe = b
        .try_acquire_at(t + Duration::from_secs(1))
        .expect("a probe");
    assert!(probe.is_probe());
    probe.success_at_once();
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn failures_that_left_the_window_do_not_count() {
    let b = CircuitBreaker::new(config().consecutive_failures(100).failure_rate(0.5, 4));
    let t = Instant::now();
    fail(&b, t);
    fail(&b, t);
    succeed(&b, t);
    let later = t + Duration::from_secs(11);
    succeed(&b, later);
    succeed(&b, later);
    succeed(&b, later);
    fail(&b, later);
    assert_eq!(
        b.state(),
        CircuitState::Closed,
        "1 of 4 calls in the window failed"
    );
}

#[test]
fn opens_on_slow_call_rate() {
    let breaker = || {
        CircuitBreaker::new(
            config()
                .failure_rate(0.5, 5)
                .slow_calls(Duration::from_millis(100), 0.8),
        )
    };
    let slow = |b: &CircuitBreaker, t| {
        b.try_acquire_at(t)
            .unwrap()
            .success_at(Duration::from_millis(100), t)
    };
    let t = Instant::now();
    let b = breaker();
    for _ in 0..3 {
        slow(&b, t);
    }
    succeed(&b, t);
    succeed(&b, t);
    assert_eq!(b.state(), CircuitState::Closed, "3 of 5 slow is under 0.8");
    let b = breaker();
    for _ in 0..4 {
        slow(&b, t);
    }
    succeed(&b, t);
    assert_eq!(
        b.state(),
        CircuitState::Open,
        "4 of 5 slow reaches 0.8, judged on the fast fifth call"
    );
}

#[test]
fn a_late_result_from_before_a_transition_is_ignored() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    let late = b.try_acquire_at(t).unwrap();
    (0..3).for_each(|_| fail(&b, t));
    let t2 = t + Duration::from_secs(1);
    succeed(&b, t2); // probe closes it
    late.failure_at(t2);
    assert_eq!(b.snapshot_at(t2).consecutive_failures, 0);
}

#[test]
fn caller_errors_are_ignored() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    for _ in 0..10 {
        b.try_acquire_at(t).unwrap().ignore();
    }
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn forced_open_holds_until_released_then_probes() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    b.force_open();
    assert_eq!(
        b.try_acquire_at(t + Duration::from_secs(3600))
            .unwrap_err()
            .state,
        CircuitState::ForcedOpen
    );
    b.release_forced_open();
    assert_eq!(b.state(), CircuitState::HalfOpen);
    succeed(&b, t);
    assert_eq!(b.state(), CircuitState::Closed);
}

#[test]
fn health_recovery_cuts_the_open_time_short_once_the_first_open_time_passed() {
    let b = CircuitBreaker::new(config());
    let t = Instant::now();
    (0..3).for_each(|_| fail(&b, t));
    let first = config().open_duration;
    // Sooner, a backend flapping faster than the open time would trip it once per flap.
    b.health_recovered_at(t + first / 2);
    assert_eq!(b.state(), CircuitState::Open);
    b.health_recovered_at(t + first);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    assert!(b.try_acquire_at(t + first).unwrap().is_probe());
    // Tripped again at once: the backed-off open time is cut short after the first one too.
    fail(&b, t + first);
    assert_eq!(b.state(), CircuitState::Open);
    b.health_recovered_at(t + first * 2);
    assert_eq!(b.state(), CircuitState::HalfOpen);
}

#[test]
fn the_observer_sees_every_transition_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let b = CircuitBreaker::new(config()).with_observer(move |t| {
        sink.lock().unwrap().push((t.from, t.to, t.open_for));
    });
    let t = Instant::now();
    (0..3).for_each(|_| fail(&b, t));
    let t1 = t + Duration::from_secs(1);
    fail(&b, t1);
    let t2 = t1 + Duration::from_secs(2);
    succeed(&b, t2);
    use CircuitState::*;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (Closed, Open, Some(Duration::from_secs(1))),
            (Open, HalfOpen, None),
            (HalfOpen, Open, Some(Duration::from_secs(2))),
            (Open, HalfOpen, None),
            (HalfOpen, Closed, None),
        ]
    );
}

#[test]
fn the_half_open_probe_limit_holds_under_concurrent_callers() {
    for probes in [1_u32, 3] {
        let b = Arc::new(CircuitBreaker::new(config().half_open_probes(probes)));
        let t = Instant::now();
        (0..3).for_each(|_| fail(&b, t));
        let later = t + Duration::from_secs(1);
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let admitted: usize = (0..threads)
            .map(|_| {
                let (b, barrier) = (b.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let permit = b.try_acquire_at(later);
                    let ok = permit.is_ok();
                    // Hold the permit until every thread has tried.
                    barrier.wait();
                    std::mem::forget(permit);
                    usize::from(ok)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, probes as usize);
    }
}

/// Runs `calls` (true = failure) at one instant on a breaker that trips on the failure rate
/// only; the state after them.
fn after_calls(rate: f64, minimum: u32, calls: impl IntoIterator<Item = bool>) -> CircuitState {
    let b = CircuitBreaker::new(
        BreakerConfig::default()
            .consecutive_failures(u32::MAX)
            .failure_rate(rate, minimum)
            .jitter(0.0),
    );
    let now = b.epoch;
    for failed in calls {
        match b.try_acquire_at(now) {
            Ok(permit) if failed => permit.failure_at(now),
            Ok(permit) => permit.success_at(MS, now),
            Err(_) => break,
        }
    }
    b.state()
}

/// `failures` failures spread among `calls` calls, the last call a success.
fn spread(failures: usize, calls: usize) -> impl Iterator<Item = bool> {
    (0..calls).map(move |i| i < failures)
}

#[test]
fn rates_at_exactly_the_threshold_trip() {
    for (failures, calls, rate) in [
        (55, 100, 0.55),
        (7, 100, 0.07),
        (7, 50, 0.14),
        (28, 100, 0.28),
    ] {
        assert_eq!(
            after_calls(rate, calls as u32, spread(failures, calls)),
            CircuitState::Open,
            "{failures} of {calls} at a rate of {rate}"
        );
        assert_eq!(
            after_calls(rate, calls as u32, spread(failures - 1, calls)),
            CircuitState::Closed,
            "{} of {calls} at a rate of {rate}",
            failures - 1
        );
    }
}

#[test]
fn a_success_that_completes_the_minimum_judges_the_rate() {
    // 5 failures of 9, then a success: 5 of 10 at 0.5.
    assert_eq!(after_calls(0.5, 10, spread(5, 10)), CircuitState::Open);
    // 5 slow calls of 9, then a fast one: 5 of 10 at a slow-call rate of 0.5.
    let b = CircuitBreaker::new(
        BreakerConfig::default()
            .failure_rate(1.0, 10)
            .slow_calls(Duration::from_millis(100), 0.5)
            .jitter(0.0),
    );
    let now = b.epoch;
    for i in 0..10 {
        let elapsed = if i < 5 {
            Duration::from_millis(150)
        } else {
            MS
        };
        b.try_acquire_at(now).unwrap().success_at(elapsed, now);
    }
    assert_eq!(b.state(), CircuitState::Open);
}

#[test]
fn rates_stay_true_past_what_a_bucket_counts() {
    // One failure in four, 300,000 times in one bucket, at a failure rate of 0.3: a bucket
    // that counted failures on after its calls saturated would see more than 0.3.
    let calls = (0..300_000).map(|i| i % 4 == 3);
    assert_eq!(after_calls(0.3, 100, calls), CircuitState::Closed);
}

// ---- property test against a reference model ----

#[derive(Debug, Clone, Copy)]
enum Step {
    Advance(u64),
    Success { slow: bool },
    Failure,
    Ignore,
    Cancel,
    HealthRecovered,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0_u64..2_500).prop_map(Step::Advance),
        any::<bool>().prop_map(|slow| Step::Success { slow }),
        Just(Step::Failure),
        Just(Step::Failure),
        Just(Step::Ignore),
        Just(Step::Cancel),
        Just(Step::HealthRecovered),
    ]
}

/// The rules of `BreakerConfig`, written as plainly as possible.
#[derive(Debug)]
struct Model {
    cfg: BreakerConfig,
    state: CircuitState,
    consecutive: u32,
    calls: Vec<(u64, bool, bool)>, // (bucket, failed, slow)
    trips: u32,
    open_until: u64,
    opened: u64,
    last_closed: u64,
    probe_successes: u32,
}

impl Model {
    fn bucket_ms(&self) -> u64 {
        self.cfg.window.as_millis() as u64 / u64::from(self.cfg.window_buckets)
    }

    fn rate_exceeded(&self, now: u64) -> bool {
        let newest = now / self.bucket_ms();
        let oldest = newest.saturating_sub(u64::from(self.cfg.window_buckets) - 1);
        let in_window: Vec<_> = self.calls.iter().filter(|c| c.0 >= oldest).collect();
        let n = in_window.len() as u64;
        let failed = in_window.iter().filter(|c| c.1).count() as u64;
        let slow = in_window.iter().filter(|c| c.2).count() as u64;
        // "At least this share" in exact integers: rates are given to a millionth.
        let ppm = |rate: f64| (rate * 1e6).round() as u64;
        n >= u64::from(self.cfg.minimum_calls)
            && (failed * 1_000_000 >= ppm(self.cfg.failure_rate) * n
                || slow * 1_000_000 >= ppm(self.cfg.slow_call_rate) * n)
    }

    fn trip(&mut self, now: u64) {
        if self.state == CircuitState::Closed
            && now - self.last_closed >= self.cfg.window.as_millis() as u64
        {
            self.trips = 0;
        }
        self.trips += 1;
        let open = (self.cfg.open_duration.as_millis() as u64)
            .saturating_mul(1 << (self.trips - 1).min(20))
            .min(self.cfg.max_open_duration.as_millis() as u64);
        self.open_until = now + open;
        self.opened = now;
        self.calls.clear();
        self.state = CircuitState::Open;
    }

    fn admit(&mut self, now: u64) -> Option<bool> {
        if self.state == CircuitState::Open && now >= self.open_until {
            self.state = CircuitState::HalfOpen;
            self.probe_successes = 0;
        }
        match self.state {
            CircuitState::Closed => Some(false),
            CircuitState::HalfOpen if self.probe_successes < self.cfg.half_open_probes => {
                Some(true)
            }
            _ => None,
        }
    }

    fn record(&mut self, now: u64, probe: bool, step: Step) {
        match (probe, step) {
            (true, Step::Success { .. }) => {
                self.consecutive = 0;
                self.probe_successes += 1;
                if self.probe_successes >= self.cfg.half_open_probes {
                    self.state = CircuitState::Closed;
                    self.last_closed = now;
                    self.calls.clear();
                }
            }
            (true, Step::Failure) => {
                self.consecutive += 1;
                self.trip(now);
            }
            (false, Step::Success { slow }) => {
                self.calls.push((now / self.bucket_ms(), false, slow));
                self.consecutive = 0;
                if self.rate_exceeded(now) {
                    self.trip(now);
                }
            }
            (false, Step::Failure) => {
                self.calls.push((now / self.bucket_ms(), true, false));
                self.consecutive += 1;
                if self.consecutive >= self.cfg.consecutive_failures || self.rate_exceeded(now) {
                    self.trip(now);
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn breaker_matches_the_reference_model(
        steps in prop::collection::vec(step(), 1..200),
        consecutive in 1_u32..6,
        minimum_calls in 1_u32..12,
        probes in 1_u32..3,
        failure_rate in prop::sample::select(vec![0.07, 0.14, 0.28, 0.3, 0.5, 0.55, 1.0]),
        slow_rate in prop::sample::select(vec![0.1, 0.5, 0.75, 1.0]),
    ) {
        let cfg = BreakerConfig::default()
            .consecutive_failures(consecutive)
            .failure_rate(failure_rate, minimum_calls)
            .slow_calls(Duration::from_millis(50), slow_rate)
            .window(Duration::from_secs(2), 4)
            .open_duration(Duration::from_millis(300), Duration::from_secs(2))
            .half_open_probes(probes)
            .jitter(0.0);
        let breaker = CircuitBreaker::new(cfg.clone());
        let start = breaker.epoch;
        let mut model = Model {
            cfg, state: CircuitState::Closed, consecutive: 0, calls: Vec::new(), trips: 0,
            open_until: 0, opened: 0, last_closed: 0, probe_successes: 0,
        };
        let mut now_ms = 0_u64;
        for step in steps {
            let now = start + Duration::from_millis(now_ms);
            match step {
                Step::Advance(ms) => now_ms += ms,
                Step::HealthRecovered => {
                    breaker.health_recovered_at(now);
                    if model.state == CircuitState::Open
                        && now_ms - model.opened >= model.cfg.open_duration.as_millis() as u64
                    {
                        model.state = CircuitState::HalfOpen;
                        model.probe_successes = 0;
                    }
                }
                call => {
                    let expected = model.admit(now_ms);
                    let permit = breaker.try_acquire_at(now);
                    prop_assert_eq!(permit.is_ok(), expected.is_some(), "admission at {}ms", now_ms);
                    if let (Ok(permit), Some(probe)) = (permit, expected) {
                        prop_assert_eq!(permit.is_probe(), probe);
                        match call {
                            Step::Success { slow } => {
                                let elapsed = if slow { Duration::from_millis(60) } else { MS };
                                permit.success_at(elapsed, now);
                            }
                            Step::Failure => permit.failure_at(now),
                            Step::Ignore => permit.ignore(),
                            _ => drop(permit),
                        }
                        model.record(now_ms, probe, call);
                    }
                }
            }
            prop_assert_eq!(breaker.state(), model.state);
            prop_assert_eq!(breaker.snapshot_at(now).consecutive_failures, model.consecutive);
        }
    }
}
