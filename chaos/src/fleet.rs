//! A fleet of instances as separate OS processes (`fleet-worker`, see its docs), sharing one
//! Redis and one PostgreSQL, and what they wrote, read back from their output files and
//! checked from outside them: the last acknowledged write of every key against what Redis holds
//! (read with a plain client), reads older than an instance's own last write, and lock holds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use resilient_test_support::holds::{self, Hold};

/// One instance.
#[derive(Debug)]
struct Instance {
    name: String,
    child: Child,
}

/// Instances and their output files, in a directory of their own; every instance still running
/// is killed on drop.
#[derive(Debug)]
pub struct Fleet {
    binary: PathBuf,
    dir: PathBuf,
    instances: Vec<Instance>,
    spawned: Vec<String>,
}

/// What the instances wrote.
#[derive(Debug, Default)]
pub struct FleetResult {
    /// Per key, the last sequence number a set of it was acknowledged with.
    pub acked: HashMap<String, u64>,
    /// Acknowledged sets, all instances.
    pub acks: u64,
    /// Reads older than the reading instance's own last write of the key.
    pub stale: u64,
    /// Calls that failed, by operation.
    pub failed: HashMap<String, u64>,
    /// The first few errors of failed key-value calls and stale reads, for the report.
    pub errors: Vec<String>,
    /// Lock holds, the instance's position in spawn order as the holder.
    pub holds: Vec<Hold<u128>>,
    /// The backend that granted each hold, in the order of `holds`.
    pub backends: Vec<String>,
}

impl FleetResult {
    /// Moments two instances held lock `L` at once.
    pub fn overlaps(&self) -> usize {
        holds::overlaps(&self.holds)
    }

    /// Grants whose fencing token went back in grant order.
    pub fn token_regressions(&self) -> usize {
        holds::token_regressions(&self.holds)
    }

    /// Failed calls of `operation`.
    pub fn failed(&self, operation: &str) -> u64 {
        self.failed.get(operation).copied().unwrap_or(0)
    }
}

impl Fleet {
    /// An empty fleet; `fleet-worker` is found next to the running binary (`cargo xtask chaos`
    /// builds every binary of the chaos crate).
    pub fn new(seed: u64) -> std::io::Result<Self> {
        let binary = std::env::current_exe()?.with_file_name("fleet-worker");
        if !binary.exists() {
            return Err(std::io::Error::other(format!(
                "{} is missing: build it with `cargo build -p resilient-chaos --bins` \
                 (`cargo xtask chaos` does)",
                binary.display()
            )));
        }
        let dir = std::env::temp_dir().join(format!("fleet-{}-{seed}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            binary,
            dir,
            instances: Vec::new(),
            spawned: Vec::new(),
        })
    }

    /// Starts instance `name` for at most `seconds`, over Redis at `redis` and PostgreSQL at
    /// `postgres`.
    pub fn spawn(
        &mut self,
        name: &str,
        redis: &str,
        postgres: &str,
        seconds: u64,
    ) -> std::io::Result<()> {
        let output = self.dir.join(format!("{name}.log"));
        let child = Command::new(&self.binary)
            .args([redis, postgres, name, &seconds.to_string()])
            .arg(&output)
            .stdin(Stdio::null())
            .spawn()?;
        self.instances.push(Instance {
            name: name.to_owned(),
            child,
        });
        self.spawned.push(name.to_owned());
        Ok(())
    }

    /// SIGKILL to instance `name`: it ends where it is, without a goodbye.
    pub fn kill(&mut self, name: &str) -> std::io::Result<()> {
        let Some(position) = self.instances.iter().position(|i| i.name == name) else {
            return Err(std::io::Error::other(format!("no running instance {name}")));
        };
        let mut instance = self.instances.remove(position);
        instance.child.kill()?;
        instance.child.wait()?;
        Ok(())
    }

    /// SIGTERM to every instance (each shuts its storage down), then waits for them, killing any
    /// still running after `within`.
    pub async fn stop(&mut self, within: Duration) {
        for instance in &self.instances {
            let _ = Command::new("kill")
                .args(["-TERM", &instance.child.id().to_string()])
                .status();
        }
        let end = tokio::time::Instant::now() + within;
        for mut instance in self.instances.drain(..) {
            loop {
                if matches!(instance.child.try_wait(), Ok(Some(_)))
                    || tokio::time::Instant::now() >= end
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
    }

    /// Reads every instance's output file, killed instances included.
    pub fn read(&self) -> std::io::Result<FleetResult> {
        let mut result = FleetResult::default();
        for (holder, name) in self.spawned.iter().enumerate() {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            for line in text.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                match fields[..] {
                    ["ack", key, seq] => {
                        let seq = seq.parse().map_err(std::io::Error::other)?;
                        let last = result.acked.entry(key.to_owned()).or_default();
                        *last = (*last).max(seq);
                        result.acks += 1;
                    }
                    ["stale", ..] => {
                        result.stale += 1;
                        if result.errors.len() < 5 {
                            result.errors.push(format!("{name}: {line}"));
                        }
                    }
                    ["failed", operation, ..] => {
                        *result.failed.entry(operation.to_owned()).or_default() += 1;
                        let why = fields[2..].join(" ");
                        if operation != "acquire" && result.errors.len() < 5 {
                            result.errors.push(format!("{name}: {operation}: {why}"));
                        }
                    }
                    ["hold", start, end, token, backend] => {
                        result.holds.push(Hold {
                            holder,
                            start: start.parse().map_err(std::io::Error::other)?,
                            end: end.parse().map_err(std::io::Error::other)?,
                            token: token.parse().map_err(std::io::Error::other)?,
                        });
                        result.backends.push(backend.to_owned());
                    }
                    _ => {
                        return Err(std::io::Error::other(format!(
                            "instance {name}: unexpected line {line:?}"
                        )));
                    }
                }
            }
        }
        Ok(result)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for instance in &mut self.instances {
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
