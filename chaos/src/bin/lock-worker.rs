//! One instance of a multi-process deployment, for `chaos/tests/locks_across_processes.rs`:
//! a storage over Redis (priority 1) and PostgreSQL (priority 2) with default settings that
//! takes lock `L` in a loop (TTL 2 s, hold 50 ms, release) for a while and writes one line per
//! hold to a file, by the system clock every process shares:
//!
//! ```text
//! hold <start µs> <end µs> <fencing token> <backend>
//! errors <acquire calls that failed>
//! ```
//!
//! Usage: `lock-worker <redis url> <postgres url> <holder> <seconds> <output file> [delay]`;
//! with a delay in milliseconds, lock failover is the opt-in
//! `LockFailover::AfterOutage { delay }` instead of the default.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use resilient_chaos::{LockSeen, lock_loop};
use resilient_storage::prelude::*;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (redis, postgres, holder, seconds, output, delay) = match &args[..] {
        [r, p, h, s, o] => (r, p, h, s, o, None),
        [r, p, h, s, o, d] => (r, p, h, s, o, Some(d)),
        _ => {
            eprintln!(
                "usage: lock-worker <redis url> <postgres url> <holder> <seconds> <output file> \
                 [lock failover delay ms]"
            );
            return ExitCode::from(2);
        }
    };
    let (Ok(seconds), Ok(delay)) = (
        seconds.parse::<u64>(),
        delay.map(|d| d.parse::<u64>()).transpose(),
    ) else {
        eprintln!("lock-worker: seconds and delay must be whole numbers");
        return ExitCode::from(2);
    };
    let failover = delay.map_or(LockFailover::Never, |ms| {
        LockFailover::after_outage(Duration::from_millis(ms))
    });
    let length = Duration::from_secs(seconds);
    match run(redis, postgres, holder, length, output, failover).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lock-worker {holder}: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    redis: &str,
    postgres: &str,
    holder: &str,
    length: Duration,
    output: &str,
    failover: LockFailover,
) -> Result<(), Box<dyn std::error::Error>> {
    let storage = ResilientStorage::builder()
        .backend_url(redis, 1)?
        .backend_url(postgres, 2)?
        .lock_failover(failover)
        .build()
        .await?;
    let mut lines = Vec::new();
    let mut errors = 0u64;
    lock_loop(
        &storage,
        holder,
        Instant::now() + length,
        |seen| match seen {
            LockSeen::Hold(line) => lines.push(line),
            LockSeen::Failed(_) => errors += 1,
        },
    )
    .await;
    storage.shutdown().await;
    lines.push(format!("errors {errors}"));
    let mut file = std::fs::File::create(output)?;
    for line in lines {
        writeln!(file, "{line}")?;
    }
    Ok(())
}
