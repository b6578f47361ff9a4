//! The live failover demo (`cargo xtask demo`): throwaway Redis and PostgreSQL, a steady
//! workload through the library, Redis killed and restarted, and a view of it all updated every
//! second, ending with a summary.
//!
//! `--quick` shortens every phase (for CI).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use resilient_chaos::workload::{KvOptions, KvWorkload, Outcome};
use resilient_chaos::{EventLog, Latencies, builder, lost, ms, wait_for_drain};
use resilient_storage::prelude::*;
use resilient_test_support::{PostgresServer, RedisOptions, RedisServer};

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Steady,
    Outage,
    Recovery,
    Recovered,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Outage => "REDIS DOWN",
            Phase::Recovery => "Redis back, replay",
            Phase::Recovered => "recovered",
        }
    }
}

/// Draws the live view: redrawn in place on a terminal, one line per second otherwise.
struct View {
    tty: bool,
    start: Instant,
    rows: Vec<String>,
    events: Vec<String>,
    header: String,
}

impl View {
    fn event(&mut self, text: String) {
        self.event_at(Instant::now(), text);
    }

    fn event_at(&mut self, at: Instant, text: String) {
        let line = format!(
            "{:>6.1}s  {text}",
            at.saturating_duration_since(self.start).as_secs_f64()
        );
        if !self.tty {
            println!("  * {line}");
        }
        self.events.push(line);
    }

    fn row(&mut self, row: String) {
        if self.tty {
            self.rows.push(row);
            let mut out = std::io::stdout().lock();
            // Home, clear, then the whole view: it always fits a terminal of 40 lines.
            let _ = write!(out, "\x1b[H\x1b[2J{}\n\n{}\n", self.header, TABLE_HEADER);
            for row in self.rows.iter().rev().take(15).rev() {
                let _ = writeln!(out, "{row}");
            }
            let _ = writeln!(out, "\nevents");
            for event in self.events.iter().rev().take(12).rev() {
                let _ = writeln!(out, "  {event}");
            }
            let _ = out.flush();
        } else {
            println!("{row}");
        }
    }
}

const TABLE_HEADER: &str = "  time  phase                  ops/s  errors  wrong  active     p99      redis           postgres        backlog";

fn main() -> ExitCode {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(demo(quick)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("demo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The lengths of the phases: steady load, the outage, and the time after the failback.
#[derive(Debug, Clone, Copy)]
struct Script {
    steady: Duration,
    outage: Duration,
    after: Duration,
}

/// What happened when, as the demo runs.
#[derive(Debug)]
struct Timeline {
    phase: Phase,
    seen_events: usize,
    failovers: u64,
    /// Operations, failures and wrong reads at the last row.
    last: (u64, u64, u64),
    killed_at: Option<Instant>,
    restarted_at: Option<Instant>,
    failback_after: Option<Duration>,
    first_failover_after: Option<Duration>,
    recovered_at: Option<Instant>,
    outage_latencies: hdrhistogram::Histogram<u64>,
}

impl Timeline {
    fn new() -> Self {
        Self {
            phase: Phase::Steady,
            seen_events: 0,
            failovers: 0,
            last: (0, 0, 0),
            killed_at: None,
            restarted_at: None,
            failback_after: None,
            first_failover_after: None,
            recovered_at: None,
            outage_latencies: resilient_chaos::workload::histogram(),
        }
    }

    /// Plays the script: kills Redis, restarts it, and says when to finish (a while after the
    /// failback, or 30 s after the restart without one).
    fn advance(
        &mut self,
        script: Script,
        elapsed: Duration,
        redis: &mut RedisServer,
        view: &mut View,
    ) -> Result<bool, Failure> {
        match self.phase {
            Phase::Steady if elapsed >= script.steady => {
                self.killed_at = Some(Instant::now());
                tokio::task::block_in_place(|| redis.kill())?;
                view.event("Redis killed (SIGKILL)".into());
                self.phase = Phase::Outage;
            }
            Phase::Outage if self.killed_at.is_some_and(|k| k.elapsed() >= script.outage) => {
                tokio::task::block_in_place(|| redis.restart())?;
                self.restarted_at = Some(Instant::now());
                view.event(
                    "Redis restarted, with its append-only file from before the outage".into(),
                );
                self.phase = Phase::Recovery;
            }
            Phase::Recovery
                if self
                    .restarted_at
                    .is_some_and(|r| r.elapsed() >= Duration::from_secs(30)) =>
            {
                view.event("Redis did not take traffic back within 30 s".into());
                return Ok(true);
            }
            Phase::Recovered
                if self
                    .recovered_at
                    .is_some_and(|r: Instant| r.elapsed() >= script.after) =>
            {
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    /// Shows the storage's new events, and notes the first failover and the failback.
    fn absorb(&mut self, events: &EventLog, view: &mut View) {
        let (new_events, count) = events.since(self.seen_events);
        self.seen_events = count;
        for (at, event) in new_events {
            match event {
                StorageEvent::Failover { .. } => {
                    self.failovers += 1;
                    if let Some(killed) = self.killed_at
                        && self.first_failover_after.is_none()
                        && at >= killed
                    {
                        self.first_failover_after = Some(at - killed);
                    }
                }
                StorageEvent::CircuitChanged {
                    backend,
                    from,
                    to,
                    open_for,
                } => view.event_at(
                    at,
                    format!(
                        "circuit {backend}: {from} -> {to}{}",
                        open_for.map_or(String::new(), |d| format!(" for {}", ms(d)))
                    ),
                ),
                StorageEvent::ActiveBackendChanged { from, to } => {
                    view.event_at(
                        at,
                        format!(
                            "active backend: {} -> {to}",
                            from.as_deref().unwrap_or("none")
                        ),
                    );
                    if to == "redis"
                        && let Some(restarted) = self.restarted_at
                        && self.failback_after.is_none()
                    {
                        self.failback_after = Some(at.saturating_duration_since(restarted));
                        self.recovered_at = Some(at);
                        self.phase = Phase::Recovered;
                    }
                }
                StorageEvent::HealthChanged {
                    backend, from, to, ..
                } => view.event_at(at, format!("health {backend}: {from} -> {to}")),
                StorageEvent::ReplayCompleted { backend, records } => view.event_at(
                    at,
                    format!("replay to {backend} complete: {records} writes and deletes"),
                ),
                StorageEvent::ReplayLost { backend, lost } => view.event_at(
                    at,
                    format!("{lost} missed writes for {backend} could not be kept"),
                ),
                _ => {}
            }
        }
    }

    /// One row of the view: the last second's operations, errors and wrong reads, the active
    /// backend, p99, each server's circuit and health, and the replay backlog.
    fn row(
        &mut self,
        elapsed: Duration,
        live: &resilient_chaos::workload::Live,
        storage: &ResilientStorage,
        view: &mut View,
    ) {
        let ops = live.ops.load(Ordering::Relaxed);
        let failed = live.failed.load(Ordering::Relaxed);
        let wrong = live.wrong_reads.load(Ordering::Relaxed);
        let window = live.take_window();
        if self.phase == Phase::Outage {
            let _ = self.outage_latencies.add(&window);
        }
        let p99 = Latencies::from_histogram(&window).p99;
        let report = storage.health();
        let state = |name: &str| {
            report.backends.get(name).map_or("-".to_owned(), |b| {
                format!("{}/{}", b.circuit_state, b.health)
            })
        };
        let backlog: usize = report.backends.values().map(|b| b.pending_replay).sum();
        let (last_ops, last_failed, last_wrong) = self.last;
        view.row(format!(
            "{:>5}s  {:<20} {:>7}  {:>6}  {:>5}  {:<9} {:>8}  {:<15} {:<15} {:>7}",
            elapsed.as_secs(),
            self.phase.label(),
            ops - last_ops,
            failed - last_failed,
            wrong - last_wrong,
            report.active_backend.as_deref().unwrap_or("-"),
            ms(p99),
            state("redis"),
            state("postgres"),
            backlog,
        ));
        self.last = (ops, failed, wrong);
    }
}

async fn demo(quick: bool) -> Result<bool, Failure> {
    let pick = |full: u64, short: u64| Duration::from_secs(if quick { short } else { full });
    let script = Script {
        steady: pick(5, 2),
        outage: pick(10, 4),
        after: pick(5, 2),
    };
    println!("Starting a throwaway Redis (append-only file) and PostgreSQL ...");
    let mut redis = RedisServer::start_with(RedisOptions::default().appendonly(true))?;
    let postgres = PostgresServer::start()?;
    let storage = builder(&redis.url(), Some(&postgres.url()))?
        .build()
        .await?;
    let events = EventLog::record(&storage);
    let tasks = 8;
    let workload = KvWorkload::start(
        &storage,
        KvOptions {
            tasks,
            keys_per_task: 16,
            seed: fastrand::u64(..),
            pace: Some(Duration::from_millis(2)),
        },
    );
    let live = workload.live();
    let mut view = View {
        tty: std::io::stdout().is_terminal(),
        start: Instant::now(),
        rows: Vec::new(),
        events: Vec::new(),
        header: format!(
            "resilient-storage demo: Redis 127.0.0.1:{} (priority 1), PostgreSQL 127.0.0.1:{} \
             (priority 2), memory last.\n{tasks} tasks read, write and delete their own keys; \
             every read is checked against the last write.",
            redis.port(),
            postgres.port()
        ),
    };
    if !view.tty {
        println!("{}\n\n{TABLE_HEADER}", view.header);
    }

    let mut timeline = Timeline::new();
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    loop {
        tokio::time::sleep_until(next_tick.into()).await;
        next_tick += Duration::from_secs(1);
        let elapsed = view.start.elapsed();
        if timeline.advance(script, elapsed, &mut redis, &mut view)? {
            break;
        }
        timeline.absorb(&events, &mut view);
        timeline.row(elapsed, &live, &storage, &mut view);
    }

    let result = workload.stop().await;
    let drained = wait_for_drain(&storage, Duration::from_secs(10)).await;
    let since = timeline.killed_at.unwrap_or_else(Instant::now);
    let (checked, matching) = on_redis_since(&redis, &result, since).await?;
    let run = view.start.elapsed().as_secs_f64();
    let failed = result.count(Outcome::Failed);
    let wrong = result.count(Outcome::Stale) + result.count(Outcome::Missing);
    summary(
        &timeline,
        &result,
        &events,
        &storage,
        run,
        (checked, matching),
    );
    storage.shutdown().await;
    let ok = failed == 0
        && wrong == 0
        && timeline.failback_after.is_some()
        && drained
        && matching == checked;
    println!(
        "\n{}",
        if ok {
            "Every call answered, no read was stale, and Redis holds every write of the outage."
        } else {
            "Something above did not hold: see the figures."
        }
    );
    Ok(ok)
}

/// Of the keys written or deleted since `since`, how many there are and how many hold their last
/// value on Redis, read with a plain Redis client.
async fn on_redis_since(
    redis: &RedisServer,
    result: &resilient_chaos::workload::KvResult,
    since: Instant,
) -> Result<(usize, usize), Failure> {
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let (mut checked, mut matching) = (0, 0);
    for (key, state) in &result.keys {
        if state.written_at < since {
            continue;
        }
        checked += 1;
        let raw: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        let on_redis = raw
            .as_deref()
            .and_then(resilient_storage::redis::stored_value);
        let on_redis = on_redis.map(|value| String::from_utf8_lossy(value).into_owned());
        if on_redis == state.expected {
            matching += 1;
        }
    }
    Ok((checked, matching))
}

/// The figures at the end: operations, latency, failover, replay, failback, Redis's contents.
fn summary(
    timeline: &Timeline,
    result: &resilient_chaos::workload::KvResult,
    events: &EventLog,
    storage: &ResilientStorage,
    run: f64,
    (checked, matching): (usize, usize),
) {
    let all = result.latencies();
    let during = Latencies::from_histogram(&timeline.outage_latencies);
    let failed = result.count(Outcome::Failed);
    let wrong = result.count(Outcome::Stale) + result.count(Outcome::Missing);
    println!("\nsummary");
    println!(
        "  operations   {} in {run:.0} s ({:.0}/s); errors {failed}; stale or missing reads {wrong}",
        result.ops(),
        result.ops() as f64 / run
    );
    println!(
        "  latency      p50 {}, p99 {}, max {}; while Redis was down: p99 {}",
        ms(all.p50),
        ms(all.p99),
        ms(all.max),
        ms(during.p99)
    );
    println!(
        "  failover     {} calls failed over; the first {} after the kill",
        timeline.failovers,
        timeline.first_failover_after.map_or("-".into(), ms)
    );
    println!(
        "  replay       {} writes and deletes replayed; {} reported lost",
        events.replayed(),
        lost(storage)
    );
    println!(
        "  failback     traffic back on Redis {} after it restarted",
        timeline.failback_after.map_or("never".into(), ms)
    );
    println!(
        "  on Redis     {matching} of {checked} keys written or deleted since the kill hold their last value, read with a plain Redis client"
    );
}
