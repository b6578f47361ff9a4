//! A key-value workload that knows what every read must return.
//!
//! Each task owns its keys, so no other task writes them: a read must return exactly the last
//! value the task wrote (or nothing after a delete). A read that returns an older value is
//! *stale*; one that returns nothing where a value was written is *missing* (the value was
//! lost, for example by a server restarted empty).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resilient_storage::ResilientStorage;
use tokio::task::JoinHandle;

use crate::Latencies;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Succeeded, and a read returned what it must.
    Ok,
    /// Returned an error.
    Failed,
    /// A read returned an older value than the last written.
    Stale,
    /// A read returned nothing where a value was written after the [mark](Live::mark).
    Missing,
    /// A read returned nothing where a value was written before the mark: lost with a server
    /// that restarted empty.
    MissingFromBeforeMark,
}

/// What a task last did to one of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The value a read must return.
    pub expected: Option<String>,
    /// When the last successful write or delete returned.
    pub written_at: Instant,
}

/// Settings of a [`KvWorkload`].
#[derive(Debug, Clone, Copy)]
pub struct KvOptions {
    /// Concurrent tasks.
    pub tasks: usize,
    /// Keys each task owns.
    pub keys_per_task: usize,
    /// Seed of the tasks' random choices.
    pub seed: u64,
    /// Pause between calls (none: as fast as possible).
    pub pace: Option<Duration>,
}

/// A latency histogram in microseconds, 1 µs to 1 min, two significant digits: fixed memory
/// however long the run.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")
}

/// A read that returned other than the last write, kept so a failed run says what it saw.
#[derive(Debug, Clone)]
pub struct WrongRead {
    /// The key read.
    pub key: String,
    /// What the read had to return.
    pub expected: Option<String>,
    /// What it returned.
    pub got: Option<String>,
    /// How long after the key's last write or delete returned the read was made.
    pub since_write: Option<Duration>,
    /// When the read returned, from the workload's start.
    pub at: Duration,
    /// The storage's active backend as the read returned.
    pub active_backend: Option<String>,
    /// Replay records pending per backend as the read returned.
    pub pending_replay: Vec<(String, usize)>,
}

impl std::fmt::Display for WrongRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} s: {} read {:?}, expected {:?} (written {} ms before); active {}; pending {:?}",
            self.at.as_secs_f64(),
            self.key,
            self.got,
            self.expected,
            self.since_write
                .map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string()),
            self.active_backend.as_deref().unwrap_or("none"),
            self.pending_replay,
        )
    }
}

/// Wrong reads kept in full: the first ones of a run.
const WRONG_READ_SAMPLES: usize = 20;

/// Counters the demo and the scenarios read while the workload runs.
#[derive(Debug)]
pub struct Live {
    /// Calls made.
    pub ops: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
    /// Reads that were stale or missing.
    pub wrong_reads: AtomicU64,
    window: Mutex<Histogram<u64>>,
    mark: Mutex<Option<Instant>>,
    started: Instant,
    wrong_samples: Mutex<Vec<WrongRead>>,
}

impl Live {
    fn new() -> Self {
        Self {
            ops: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            wrong_reads: AtomicU64::new(0),
            window: Mutex::new(histogram()),
            mark: Mutex::new(None),
            started: Instant::now(),
            wrong_samples: Mutex::new(Vec::new()),
        }
    }

    /// The first wrong reads of the run, in full (at most 20).
    pub fn wrong_read_samples(&self) -> Vec<WrongRead> {
        self.wrong_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn keep_wrong_read(&self, storage: &ResilientStorage, read: impl FnOnce() -> WrongRead) {
        let mut samples = self.wrong_samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < WRONG_READ_SAMPLES {
            let mut read = read();
            read.at = self.started.elapsed();
            let health = storage.health();
            read.active_backend = health.active_backend;
            read.pending_replay = health
                .backends
                .iter()
                .map(|(name, b)| (name.clone(), b.pending_replay))
                .collect();
            samples.push(read);
        }
    }

    /// Latencies recorded since the last call, and the histogram reset.
    pub fn take_window(&self) -> Histogram<u64> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let taken = window.clone();
        window.reset();
        taken
    }

    /// Marks now: from here a missing read of a value written earlier is counted apart
    /// ([`Outcome::MissingFromBeforeMark`]), for a server that is about to lose its data.
    pub fn mark(&self) -> Instant {
        let now = Instant::now();
        *self.mark.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        now
    }

    fn marked(&self) -> Option<Instant> {
        *self.mark.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tasks doing 60 % reads, 30 % writes (a fifth of them with a one-hour TTL) and 10 % deletes
/// on their own keys until stopped.
#[derive(Debug)]
pub struct KvWorkload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<TaskResult>>,
    live: Arc<Live>,
}

#[derive(Debug)]
struct TaskResult {
    latencies: Histogram<u64>,
    outcomes: HashMap<Outcome, u64>,
    failed_reads: u64,
    keys: HashMap<String, KeyState>,
}

/// What a stopped workload did.
#[derive(Debug)]
pub struct KvResult {
    /// Latency of every call, in microseconds.
    pub latencies: Histogram<u64>,
    /// Calls by outcome.
    pub outcomes: HashMap<Outcome, u64>,
    /// Every key's last state.
    pub keys: HashMap<String, KeyState>,
    /// Tasks that ended by panic (their calls are not counted).
    pub panicked: usize,
    /// The first wrong reads, in full.
    pub wrong_reads: Vec<WrongRead>,
    /// Reads among the [failed](Outcome::Failed) calls.
    pub failed_reads: u64,
}

impl KvResult {
    /// Calls with the given outcome.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    /// Every call.
    pub fn ops(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// Latency figures of every call.
    pub fn latencies(&self) -> Latencies {
        Latencies::from_histogram(&self.latencies)
    }
}

impl KvWorkload {
    /// Starts the tasks. Keys are `chaos:{task}:{n}`.
    pub fn start(storage: &ResilientStorage, options: KvOptions) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Live::new());
        let tasks = (0..options.tasks)
            .map(|task| {
                let (storage, stop, live) = (storage.clone(), stop.clone(), live.clone());
                let seed = options.seed ^ (task as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                tokio::spawn(run_task(storage, stop, live, task, seed, options))
            })
            .collect();
        Self { stop, tasks, live }
    }

    /// The live counters.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// Stops the tasks and returns what they did.
    pub async fn stop(self) -> KvResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut result = KvResult {
            latencies: histogram(),
            outcomes: HashMap::new(),
            keys: HashMap::new(),
            panicked: 0,
            wrong_reads: Vec::new(),
            failed_reads: 0,
        };
        for task in self.tasks {
            let Ok(done) = task.await else {
                result.panicked += 1;
                continue;
            };
            let _ = result.latencies.add(&done.latencies);
            for (outcome, n) in done.outcomes {
                *result.outcomes.entry(outcome).or_insert(0) += n;
            }
            result.keys.extend(done.keys);
            result.failed_reads += done.failed_reads;
        }
        result.wrong_reads = self.live.wrong_read_samples();
        result
    }
}

async fn run_task(
    storage: ResilientStorage,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
    task: usize,
    seed: u64,
    options: KvOptions,
) -> TaskResult {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut result = TaskResult {
        latencies: histogram(),
        outcomes: HashMap::new(),
        failed_reads: 0,
        keys: HashMap::new(),
    };
    let keys = &mut result.keys;
    let mut seq = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("chaos:{task}:{}", rng.usize(..options.keys_per_task));
        let roll = rng.u8(..100);
        let start = Instant::now();
        let outcome = if roll < 60 {
            match storage.get(&key).await {
                Ok(got) => {
                    let state = keys.get(&key);
                    let expected = state.and_then(|k| k.expected.as_deref());
                    let got = got.map(|b| String::from_utf8_lossy(&b).into_owned());
                    let outcome = match (expected, got.as_deref()) {
                        (e, g) if e == g => Outcome::Ok,
                        (Some(_), None) => {
                            let written = state.map(|s| s.written_at);
                            match live.marked() {
                                Some(mark) if written.is_some_and(|w| w < mark) => {
                                    Outcome::MissingFromBeforeMark
                                }
                                _ => Outcome::Missing,
                            }
                        }
                        _ => Outcome::Stale,
                    };
                    if matches!(outcome, Outcome::Stale | Outcome::Missing) {
                        live.keep_wrong_read(&storage, || WrongRead {
                            key: key.clone(),
                            expected: expected.map(str::to_owned),
                            got: got.clone(),
                            since_write: state.map(|s| start.duration_since(s.written_at)),
                            at: Duration::ZERO,
                            active_backend: None,
                            pending_replay: Vec::new(),
                        });
                    }
                    outcome
                }
                Err(_) => {
                    result.failed_reads += 1;
                    Outcome::Failed
                }
            }
        } else if roll < 90 {
            seq += 1;
            let value = format!("{key}#{seq}");
            let ttl = (roll >= 84).then_some(Duration::from_secs(3600));
            match storage.set(&key, value.clone(), ttl).await {
                Ok(()) => {
                    keys.insert(
                        key,
                        KeyState {
                            expected: Some(value),
                            written_at: Instant::now(),
                        },
                    );
                    Outcome::Ok
                }
                Err(_) => Outcome::Failed,
            }
        } else {
            match storage.delete(&key).await {
                Ok(_) => {
                    keys.insert(
                        key,
                        KeyState {
                            expected: None,
                            written_at: Instant::now(),
                        },
                    );
                    Outcome::Ok
                }
                Err(_) => Outcome::Failed,
            }
        };
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        result.latencies.saturating_record(micros.max(1));
        live.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(micros.max(1));
        live.ops.fetch_add(1, Ordering::Relaxed);
        *result.outcomes.entry(outcome).or_insert(0) += 1;
        match outcome {
            Outcome::Failed => {
                live.failed.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Stale | Outcome::Missing => {
                live.wrong_reads.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Ok | Outcome::MissingFromBeforeMark => {}
        }
        match (outcome, options.pace) {
            // A failed call is not retried in a tight loop.
            (Outcome::Failed, _) => tokio::time::sleep(Duration::from_millis(20)).await,
            (_, Some(pace)) => tokio::time::sleep(pace).await,
            (_, None) => tokio::task::yield_now().await,
        }
    }
    result
}
