//! One instance of a fleet, for the chaos suite's fleet scenarios (`cargo xtask chaos`): a
//! storage over Redis (priority 1) and PostgreSQL (priority 2) with default settings, in an OS
//! process of its own, until it is told to stop (SIGTERM), killed (SIGKILL) or `seconds` pass.
//!
//! - 4 writer tasks, each owning 8 keys `<name>:<task>:<n>`, write a growing sequence number to
//!   one key after another (5 ms apart) and read it back at once: a read older than this
//!   instance's own last write of the key is reported.
//! - 1 task takes lock `L` in a loop (`resilient_chaos::lock_loop`: TTL 2 s, hold 50 ms,
//!   release).
//!
//! Every line reaches the output file as it happens (no buffering in the process), so an
//! instance killed with SIGKILL leaves every acknowledgement it made, by the system clock the
//! fleet shares:
//!
//! ```text
//! ack <key> <seq>                                   a set of <seq> was acknowledged
//! stale <key> <read> <own last write>               a read older than the instance's last write
//! hold <start µs> <end µs> <fencing token> <backend>
//! failed <operation> <error>                        a call that failed, and why
//! ```
//!
//! Usage: `fleet-worker <redis url> <postgres url> <name> <seconds> <output file>`.

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resilient_chaos::{LockSeen, lock_loop};
use resilient_storage::prelude::*;

const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 8;
const PACE: Duration = Duration::from_millis(5);

/// The output file, one `write` call per line.
#[derive(Clone)]
struct Out(Arc<Mutex<File>>);

impl Out {
    fn line(&self, line: String) {
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line, so a kill never leaves half a line; an error's text on one line.
        let line = line.replace('\n', " ");
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [redis, postgres, name, seconds, output] = &args[..] else {
        eprintln!("usage: fleet-worker <redis url> <postgres url> <name> <seconds> <output file>");
        return ExitCode::from(2);
    };
    let Ok(seconds) = seconds.parse::<u64>() else {
        eprintln!("fleet-worker: seconds must be a whole number");
        return ExitCode::from(2);
    };
    match run(redis, postgres, name, Duration::from_secs(seconds), output).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleet-worker {name}: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    redis: &str,
    postgres: &str,
    name: &str,
    length: Duration,
    output: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let out = Out(Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)?,
    )));
    let storage = ResilientStorage::builder()
        .backend_url(redis, 1)?
        .backend_url(postgres, 2)?
        .build()
        .await?;
    let end = Instant::now() + length;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (storage, out) = (storage.clone(), out.clone());
        let prefix = format!("{name}:{writer}");
        tasks.push(tokio::spawn(async move {
            write_loop(&storage, &out, &prefix, end).await;
        }));
    }
    let (locker, lock_out) = (storage.clone(), out.clone());
    let holder = name.to_owned();
    tasks.push(tokio::spawn(async move {
        lock_loop(&locker, &holder, end, |seen| match seen {
            LockSeen::Hold(line) => lock_out.line(line),
            LockSeen::Failed(error) => lock_out.line(format!("failed acquire {error}")),
        })
        .await;
    }));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = async {
            for task in &mut tasks {
                let _ = task.await;
            }
        } => {}
        _ = term.recv() => {}
    }
    // The loops end before the storage does, so no call meets a storage shutting down.
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    storage.shutdown().await;
    Ok(())
}

async fn write_loop(storage: &ResilientStorage, out: &Out, prefix: &str, end: Instant) {
    let mut last = [0_u64; KEYS_PER_WRITER];
    let mut seq = 0_u64;
    while Instant::now() < end {
        for (n, last) in last.iter_mut().enumerate() {
            seq += 1;
            let key = format!("{prefix}:{n}");
            match storage.set(&key, seq.to_string(), None).await {
                Ok(()) => {
                    *last = seq;
                    out.line(format!("ack {key} {seq}"));
                }
                Err(error) => out.line(format!("failed set {error}")),
            }
            match storage.get(&key).await {
                Ok(value) => {
                    let read = value
                        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
                        .unwrap_or(0);
                    if read < *last {
                        out.line(format!("stale {key} {read} {last}"));
                    }
                }
                Err(error) => out.line(format!("failed get {error}")),
            }
            tokio::time::sleep(PACE).await;
        }
    }
}
