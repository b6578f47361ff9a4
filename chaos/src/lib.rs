//! The pieces the chaos suite (`cargo xtask chaos`) and the demo (`cargo xtask demo`) share: a
//! key-value workload that knows what every read must return, latency figures, a log of the
//! storage's events, a fencing log for lock safety, and the storage settings both use.

pub mod fencing;
pub mod fleet;
pub mod workload;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resilient_storage::prelude::*;
use resilient_storage::{BackendOptions, CircuitState, Result, StorageBuilder, WritePolicy};

/// Time one backend gets per attempt in the suite and the demo.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);
/// Time a whole call may take.
pub const DEADLINE: Duration = Duration::from_secs(1);
/// The breaker's first open time.
pub const OPEN_FOR: Duration = Duration::from_secs(1);
/// The breaker's jitter on the open time.
pub const JITTER: f64 = 0.1;

/// A storage over Redis (priority 1), optionally PostgreSQL (2), and the memory fallback,
/// writing through to every backend, with short timeouts and fast health checks.
pub fn builder(redis_url: &str, postgres_url: Option<&str>) -> Result<StorageBuilder> {
    let mut builder = ResilientStorage::builder()
        .backend_url_with(redis_url, BackendOptions::new(1).named("redis"))?;
    if let Some(url) = postgres_url {
        builder = builder.backend_url_with(url, BackendOptions::new(2).named("postgres"))?;
    }
    Ok(builder
        .write_policy(WritePolicy::WriteThrough)
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .deadline(DEADLINE)
        .failback_delay(Duration::from_secs(1))
        .breaker(
            BreakerConfig::default()
                .open_duration(OPEN_FOR, Duration::from_secs(8))
                .jitter(JITTER),
        )
        .health(
            HealthConfig::default()
                .interval(Duration::from_millis(200), Duration::from_millis(150)),
        ))
}

/// Latency figures of a set of calls.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latencies {
    /// Calls measured.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

impl Latencies {
    /// Figures of a histogram in microseconds (see [`workload::histogram`]).
    pub fn from_histogram(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let us = Duration::from_micros;
        Self {
            count: usize::try_from(histogram.len()).unwrap_or(usize::MAX),
            p50: us(histogram.value_at_quantile(0.50)),
            p99: us(histogram.value_at_quantile(0.99)),
            max: us(histogram.max()),
        }
    }
}

/// Every event the storage sent, with when it arrived.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    events: Arc<Mutex<Vec<(Instant, StorageEvent)>>>,
}

impl EventLog {
    /// Starts recording `storage`'s events. Needs a tokio runtime.
    pub fn record(storage: &ResilientStorage) -> Self {
        let log = Self::default();
        let events = log.events.clone();
        let mut receiver = storage.subscribe();
        tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => events
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), event)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        log
    }

    /// The events so far.
    pub fn snapshot(&self) -> Vec<(Instant, StorageEvent)> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The events from `from` on, and how many there are now (for the next call).
    pub fn since(&self, from: usize) -> (Vec<(Instant, StorageEvent)>, usize) {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        (
            events.get(from..).unwrap_or_default().to_vec(),
            events.len(),
        )
    }

    /// Records replayed, from `ReplayCompleted` events.
    pub fn replayed(&self) -> u64 {
        self.snapshot()
            .iter()
            .map(|(_, e)| match e {
                StorageEvent::ReplayCompleted { records, .. } => *records,
                _ => 0,
            })
            .sum()
    }

    /// When `backend`'s breaker moved to open.
    pub fn opened(&self, backend: &str) -> Vec<Instant> {
        self.snapshot()
            .iter()
            .filter_map(|(at, e)| match e {
                StorageEvent::CircuitChanged {
                    backend: b,
                    to: CircuitState::Open,
                    ..
                } if b == backend => Some(*at),
                _ => None,
            })
            .collect()
    }
}

/// Missed writes reported lost, over every backend.
pub fn lost(storage: &ResilientStorage) -> u64 {
    storage
        .health()
        .backends
        .values()
        .map(|b| b.replay_lost)
        .sum()
}

/// Waits until `backend` serves traffic again, checking every 20 ms for at most `within`.
/// Returns how long it took.
pub async fn wait_for_failback(
    storage: &ResilientStorage,
    backend: &str,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if storage.active_backend().as_deref() == Some(backend) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Waits until no backend has writes left to replay (once the workload has stopped, the
/// writes of the last replay pass drain), for at most `within`.
pub async fn wait_for_drain(storage: &ResilientStorage, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if storage
            .health()
            .backends
            .values()
            .all(|b| b.pending_replay == 0)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `40 µs`, `0.4 ms`, `12 ms`, `1.20 s`.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1e3)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else if ms >= 0.1 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1e3)
    }
}

/// What [`lock_loop`] saw.
#[derive(Debug)]
pub enum LockSeen<'a> {
    /// A hold, as one line: `hold <start µs> <end µs> <fencing token> <backend>`, the times by
    /// the system clock every process shares (when the acquire returned, when the release began).
    Hold(String),
    /// An acquire that failed.
    Failed(&'a resilient_storage::Error),
}

/// One instance of a multi-process deployment taking lock `L` in a loop until `end`: lease
/// 2 s, hold 50 ms, release, then 20 ms for the others to find it free (10 ms after finding it
/// held, 50 ms after a failed acquire). Each hold and failure goes to `seen`.
pub async fn lock_loop(
    storage: &ResilientStorage,
    holder: &str,
    end: Instant,
    mut seen: impl FnMut(LockSeen<'_>),
) {
    const TTL: Duration = Duration::from_secs(2);
    const HOLD: Duration = Duration::from_millis(50);
    let micros_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros()
    };
    while Instant::now() < end {
        match storage.acquire_lock("L", holder, TTL).await {
            Ok(LockOutcome::Acquired(grant)) => {
                let start = micros_now();
                tokio::time::sleep(HOLD).await;
                let end = micros_now();
                let _ = storage.release_lock("L", holder).await;
                seen(LockSeen::Hold(format!(
                    "hold {start} {end} {} {}",
                    grant.token.0, grant.backend
                )));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(error) => {
                seen(LockSeen::Failed(&error));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
