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

async fn demo(quick: bool) -> Result<bool, Failure> {
    let pick = |full: u64, short: u64| Duration::from_secs(if quick { short } else { full });
    let (steady, outage, after) = (pick(5, 2), pick(10, 4), pick(5, 2));
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

    let mut phase = Phase::Steady;
    let mut seen_events = 0;
    let mut failovers = 0_u64;
    let (mut last_ops, mut last_failed, mut last_wrong) = (0, 0, 0);
    let mut killed_at = None;
    let mut restarted_at = None;
    let mut failback_after = None;
    let mut first_failover_after = None;
    let mut outage_latencies = resilient_chaos::workload::histogram();
    let mut recovered_at = None;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    loop {
        tokio::time::sleep_until(next_tick.into()).await;
        next_tick += Duration::from_secs(1);
        let elapsed = view.start.elapsed();

        // The script: kill Redis, restart it, and finish a while after the failback.
        match phase {
            Phase::Steady if elapsed >= steady => {
                killed_at = Some(Instant::now());
                tokio::task::block_in_place(|| redis.kill())?;
                view.event("Redis killed (SIGKILL)".into());
                phase = Phase::Outage;
            }
            Phase::Outage if killed_at.is_some_and(|k| k.elapsed() >= outage) => {
                tokio::task::block_in_place(|| redis.restart())?;
                restarted_at = Some(Instant::now());
                view.event(
                    "Redis restarted, with its append-only file from before the outage".into(),
                );
                phase = Phase::Recovery;
            }
            Phase::Recovery
                if restarted_at.is_some_and(|r| r.elapsed() >= Duration::from_secs(30)) =>
            {
                view.event("Redis did not take traffic back within 30 s".into());
                break;
            }
            Phase::Recovered if recovered_at.is_some_and(|r: Instant| r.elapsed() >= after) => {
                break;
            }
            _ => {}
        }

        let (new_events, count) = events.since(seen_events);
        seen_events = count;
        for (at, event) in new_events {
            match event {
                StorageEvent::Failover { .. } => {
                    failovers += 1;
                    if let Some(killed) = killed_at
                        && first_failover_after.is_none()
                        && at >= killed
                    {
                        first_failover_after = Some(at - killed);
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
                        && let Some(restarted) = restarted_at
                        && failback_after.is_none()
                    {
                        failback_after = Some(at.saturating_duration_since(restarted));
                        recovered_at = Some(at);
                        phase = Phase::Recovered;
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

        let ops = live.ops.load(Ordering::Relaxed);
        let failed = live.failed.load(Ordering::Relaxed);
        let wrong = live.wrong_reads.load(Ordering::Relaxed);
        let window = live.take_window();
        if phase == Phase::Outage {
            let _ = outage_latencies.add(&window);
        }
        let p99 = Latencies::from_histogram(&window).p99;
        let report = storage.health();
        let state = |name: &str| {
            report.backends.get(name).map_or("-".to_owned(), |b| {
                format!("{}/{}", b.circuit_state, b.health)
            })
        };
        let backlog: usize = report.backends.values().map(|b| b.pending_replay).sum();
        view.row(format!(
            "{:>5}s  {:<20} {:>7}  {:>6}  {:>5}  {:<9} {:>8}  {:<15} {:<15} {:>7}",
            elapsed.as_secs(),
            phase.label(),
            ops - last_ops,
            failed - last_failed,
            wrong - last_wrong,
            report.active_backend.as_deref().unwrap_or("-"),
            ms(p99),
            state("redis"),
            state("postgres"),
            backlog,
        ));
        (last_ops, last_failed, last_wrong) = (ops, failed, wrong);
    }

    let result = workload.stop().await;
    let drained = wait_for_drain(&storage, Duration::from_secs(10)).await;
    let since = killed_at.unwrap_or_else(Instant::now);
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let (mut checked, mut matching) = (0, 0);
    for (key, state) in &result.keys {
        if state.written_at < since {
            continue;
        }
        checked += 1;
        let on_redis: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        if on_redis == state.expected {
            matching += 1;
        }
    }
    let all = result.latencies();
    let during = Latencies::from_histogram(&outage_latencies);
    let run = view.start.elapsed().as_secs_f64();
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
        "  failover     {failovers} calls failed over; the first {} after the kill",
        first_failover_after.map_or("-".into(), ms)
    );
    println!(
        "  replay       {} writes and deletes replayed; {} reported lost",
        events.replayed(),
        lost(&storage)
    );
    println!(
        "  failback     traffic back on Redis {} after it restarted",
        failback_after.map_or("never".into(), ms)
    );
    println!(
        "  on Redis     {matching} of {checked} keys written or deleted since the kill hold their last value, read with a plain Redis client"
    );
    storage.shutdown().await;
    let ok =
        failed == 0 && wrong == 0 && failback_after.is_some() && drained && matching == checked;
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
