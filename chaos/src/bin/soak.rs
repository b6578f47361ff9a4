//! The soak: a storage with the default settings over throwaway Redis and PostgreSQL servers
//! (and the memory fallback), under a steady key-value load for minutes while Redis is killed
//! and restarted empty again and again. It samples resident memory, heap in use and live tokio
//! tasks, and checks that they stay flat and that no read was wrong and no write lost.
//!
//! ```text
//! cargo xtask soak                     # 10 minutes, Redis down 10 s of every 20 s
//! cargo xtask soak --minutes 2         # shorter
//! cargo xtask soak --flap-every 30     # a slower flap
//! ```
//!
//! Figures go to standard output and, with `--out PATH`, to a Markdown file that
//! `cargo xtask bench` adds to its summary.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use resilient_chaos::workload::{KvOptions, KvWorkload, Outcome};
use resilient_chaos::{EventLog, lost, wait_for_drain, wait_for_failback};
use resilient_storage::ResilientStorage;
use resilient_test_support::{PostgresServer, RedisServer};

/// Counts live heap bytes.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

type Failure = Box<dyn std::error::Error + Send + Sync>;

const MIB: f64 = 1024.0 * 1024.0;

struct Args {
    minutes: f64,
    flap_every: Duration,
    tasks: usize,
    pace: Duration,
    seed: u64,
    out: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        minutes: 10.0,
        flap_every: Duration::from_secs(20),
        tasks: 16,
        pace: Duration::from_millis(4),
        seed: fastrand::u64(..1_000_000),
        out: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> Result<f64, String> {
        let value = value.ok_or(format!("{flag} needs a number"))?;
        value
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n > 0.0)
            .ok_or(format!("{flag} {value:?} is not a positive number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--minutes" => args.minutes = number("--minutes", it.next())?,
            "--flap-every" => {
                args.flap_every = Duration::from_secs_f64(number("--flap-every", it.next())?);
            }
            "--tasks" => args.tasks = number("--tasks", it.next())? as usize,
            "--pace-ms" => {
                args.pace = Duration::from_secs_f64(number("--pace-ms", it.next())? / 1e3);
            }
            "--seed" => args.seed = number("--seed", it.next())? as u64,
            "--out" => args.out = Some(it.next().ok_or("--out needs a path")?.into()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: soak [--minutes N] [--flap-every SECONDS] \
                     [--tasks N] [--pace-ms N] [--seed N] [--out PATH]"
                ));
            }
        }
    }
    if args.flap_every < Duration::from_secs(2) {
        return Err("--flap-every must be at least 2 seconds".into());
    }
    Ok(args)
}

/// One reading of the process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss: f64,
    heap: f64,
    tasks: usize,
    ops: u64,
    pending: usize,
    redis_up: bool,
}

/// Resident memory in bytes, from `/proc/self/status`.
fn resident_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0)
}

fn sample(start: Instant, storage: &ResilientStorage, ops: u64, redis_up: bool) -> Sample {
    Sample {
        at: start.elapsed(),
        rss: resident_bytes(),
        heap: ALLOCATOR.allocated() as f64,
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        ops,
        pending: storage
            .health()
            .backends
            .values()
            .map(|b| b.pending_replay)
            .sum(),
        redis_up,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The figures of a run and whether each promise held.
struct Verdict {
    lines: Vec<String>,
    passed: bool,
}

fn judge(args: &Args, samples: &[Sample], calls: &Calls) -> Verdict {
    // Warm: the second minute (or the second fifth of a shorter run); end: the last one.
    let total = samples.last().map_or(Duration::ZERO, |s| s.at);
    let span = (total / 5).min(Duration::from_secs(60));
    let window = |from: Duration, to: Duration| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .collect()
    };
    let warm = window(span, span * 2);
    let end = window(total.saturating_sub(span), total);
    let figure =
        |of: &dyn Fn(&Sample) -> f64, set: &[&Sample]| median(set.iter().map(|s| of(s)).collect());
    let rss = |s: &Sample| s.rss / MIB;
    let heap = |s: &Sample| s.heap / MIB;
    let tasks = |s: &Sample| s.tasks as f64;
    let max = |of: &dyn Fn(&Sample) -> f64| samples.iter().map(of).fold(0.0, f64::max);
    // Flat: the end within 10 % (and at least 4 MiB) of the warm figure; tasks no more than
    // at warm-up plus two (a reconnect in flight).
    let flat_memory = |warm: f64, end: f64| end <= warm * 1.10 + 4.0;
    let (rss_warm, rss_end) = (figure(&rss, &warm), figure(&rss, &end));
    let (heap_warm, heap_end) = (figure(&heap, &warm), figure(&heap, &end));
    let (tasks_warm, tasks_end) = (figure(&tasks, &warm), figure(&tasks, &end));
    let checks = [
        ("resident memory flat", flat_memory(rss_warm, rss_end)),
        ("heap flat", flat_memory(heap_warm, heap_end)),
        ("tokio tasks flat", tasks_end <= tasks_warm + 2.0),
        ("no wrong read", calls.wrong == 0),
        ("no write lost", calls.lost == 0),
        (
            "every key reads back its last write",
            calls.wrong_at_end == 0,
        ),
        // A run that tested nothing does not pass: Redis flapped, calls were made and
        // answered, every workload task finished, and Redis recovered after the run.
        ("Redis was killed at least once", calls.flaps > 0),
        (
            "calls answered (under 1 % failed)",
            calls.ops > 0 && calls.failed * 100 < calls.ops,
        ),
        ("every workload task finished", calls.panicked == 0),
        (
            "Redis took traffic back and replay drained within 30 s",
            calls.recovered,
        ),
    ];
    let yes = |ok: bool| if ok { "yes" } else { "**NO**" };
    let mut lines = vec![
        format!(
            "Soak: {:.1} min, defaults (Redis, PostgreSQL, memory), Redis killed {:.0} s into every \
             {:.0} s and restarted empty; {} tasks, one call each per {} ms (60 % reads, 30 % \
             writes, 10 % deletes); seed {}; {} flaps.",
            total.as_secs_f64() / 60.0,
            args.flap_every.as_secs_f64() / 2.0,
            args.flap_every.as_secs_f64(),
            args.tasks,
            args.pace.as_millis(),
            args.seed,
            calls.flaps,
        ),
        String::new(),
        format!(
            "| figure | warm ({:.0}-{:.0} s) | end (last {:.0} s) | max | flat |",
            span.as_secs_f64(),
            (span * 2).as_secs_f64(),
            span.as_secs_f64()
        ),
        "|---|---|---|---|---|".to_owned(),
        format!(
            "| resident memory | {rss_warm:.1} MiB | {rss_end:.1} MiB | {:.1} MiB | {} |",
            max(&rss),
            yes(checks[0].1)
        ),
        format!(
            "| heap in use | {heap_warm:.1} MiB | {heap_end:.1} MiB | {:.1} MiB | {} |",
            max(&heap),
            yes(checks[1].1)
        ),
        format!(
            "| tokio tasks alive | {tasks_warm:.0} | {tasks_end:.0} | {:.0} | {} |",
            max(&tasks),
            yes(checks[2].1)
        ),
        String::new(),
        format!(
            "Calls: {} ({:.0}/s), {} failed ({:.2} %), {} wrong reads, {} writes reported lost; \
             replay records pending at most {}; after the run, {} of {} keys read back other \
             than their last write.",
            calls.ops,
            calls.ops as f64 / total.as_secs_f64().max(1.0),
            calls.failed,
            100.0 * calls.failed as f64 / (calls.ops.max(1)) as f64,
            calls.wrong,
            calls.lost,
            samples.iter().map(|s| s.pending).max().unwrap_or(0),
            calls.wrong_at_end,
            calls.keys,
        ),
        String::new(),
    ];
    for (what, ok) in checks {
        lines.push(format!("- {what}: {}", yes(ok)));
    }
    Verdict {
        lines,
        passed: checks.iter().all(|(_, ok)| *ok),
    }
}

/// What the workload did.
#[derive(Debug, Default)]
struct Calls {
    ops: u64,
    failed: u64,
    wrong: u64,
    lost: u64,
    keys: usize,
    wrong_at_end: usize,
    flaps: u32,
    panicked: usize,
    recovered: bool,
}

async fn soak(args: &Args) -> Result<Verdict, Failure> {
    let mut redis = RedisServer::start()?;
    let postgres = PostgresServer::start()?;
    let storage = ResilientStorage::builder()
        .backend_url(&redis.url(), 1)?
        .backend_url(&postgres.url(), 2)?
        .build()
        .await?;
    let events = EventLog::record(&storage);
    let workload = KvWorkload::start(
        &storage,
        KvOptions {
            tasks: args.tasks,
            keys_per_task: 500,
            seed: args.seed,
            pace: Some(args.pace),
        },
    );
    let live = workload.live();
    let start = Instant::now();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let sample_every = Duration::from_secs(5).min(duration / 12);
    let half = args.flap_every / 2;
    let mut samples = Vec::new();
    let mut redis_up = true;
    let mut flaps = 0;
    let mut next_sample = Duration::ZERO;
    while start.elapsed() < duration {
        let now = start.elapsed();
        // Up for the first half of every period, down for the second.
        let want_up = (now.as_secs_f64() % args.flap_every.as_secs_f64()) < half.as_secs_f64();
        if want_up != redis_up {
            tokio::task::block_in_place(|| {
                if want_up {
                    redis.restart()
                } else {
                    flaps += 1;
                    redis.kill()
                }
            })?;
            redis_up = want_up;
        }
        if now >= next_sample {
            let s = sample(
                start,
                &storage,
                live.ops.load(std::sync::atomic::Ordering::Relaxed),
                redis_up,
            );
            println!(
                "soak: {:>5.0} s  rss {:>6.1} MiB  heap {:>6.1} MiB  tasks {:>4}  calls {:>8}  \
                 pending {:>6}  redis {}",
                s.at.as_secs_f64(),
                s.rss / MIB,
                s.heap / MIB,
                s.tasks,
                s.ops,
                s.pending,
                if s.redis_up { "up" } else { "down" }
            );
            samples.push(s);
            next_sample += sample_every;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !redis_up {
        tokio::task::block_in_place(|| redis.restart())?;
    }
    let result = workload.stop().await;
    for read in &result.wrong_reads {
        println!("soak: wrong read at {read}");
    }
    let back = wait_for_failback(&storage, "redis", Duration::from_secs(30)).await;
    let drained = wait_for_drain(&storage, Duration::from_secs(30)).await;
    if back.is_none() || !drained {
        println!("soak: Redis did not take traffic back, or replay did not drain, within 30 s");
    }
    // Every key read back through the storage: its last acknowledged write, or nothing after
    // a delete.
    let mut wrong_at_end = 0;
    for (key, state) in &result.keys {
        let got = storage.get(key).await?;
        let got = got.map(|b| String::from_utf8_lossy(&b).into_owned());
        if got != state.expected {
            wrong_at_end += 1;
        }
    }
    let calls = Calls {
        ops: result.ops(),
        failed: result.count(Outcome::Failed),
        wrong: result.count(Outcome::Stale)
            + result.count(Outcome::Missing)
            + result.count(Outcome::MissingFromBeforeMark),
        lost: lost(&storage),
        keys: result.keys.len(),
        wrong_at_end,
        flaps,
        panicked: result.panicked,
        recovered: back.is_some() && drained,
    };
    println!("soak: {} records replayed in all", events.replayed());
    storage.shutdown().await;
    Ok(judge(args, &samples, &calls))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("soak: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let verdict = match runtime.block_on(soak(&args)) {
        Ok(verdict) => verdict,
        Err(error) => {
            eprintln!("soak: {error}");
            return ExitCode::FAILURE;
        }
    };
    let text = verdict.lines.join("\n");
    println!("\n{text}");
    if let Some(path) = &args.out {
        if let Err(error) = std::fs::write(path, format!("{text}\n")) {
            eprintln!("soak: write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("soak: figures written to {}", path.display());
    }
    if verdict.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
