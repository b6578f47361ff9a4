//! A server process: spawned so it dies with the test binary, signalled on demand, killed on
//! drop.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Result;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns every server from one thread that lives as long as the process: a parent-death
/// signal fires when the *thread* that spawned the child exits, and test threads exit after
/// each test.
fn spawn(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawn the server-spawner thread");
        Mutex::new(tx)
    });
    let (reply, result) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("server-spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("server-spawner thread is gone"))?
}

/// The CPUs servers are to run on, from `RESILIENT_SERVER_CPUS` (a `taskset` CPU list, set by
/// `cargo xtask bench --pin`); `None` when unset or empty, as in tests.
fn server_cpus() -> Option<String> {
    std::env::var("RESILIENT_SERVER_CPUS")
        .ok()
        .filter(|cpus| !cpus.trim().is_empty())
}

/// One running (or stopped) server process and how to start it again.
#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    run_as: Option<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `program args`, killed with SIGKILL if this process dies, optionally as another
    /// user (PostgreSQL refuses to run as root). Output goes to `log`.
    pub(crate) fn start(
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        run_as: Option<String>,
        log: PathBuf,
    ) -> Result<Self> {
        let mut process = Self {
            name,
            program,
            args,
            run_as,
            log,
            child: None,
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL"]);
        if let Some(user) = &self.run_as {
            command.args(["--reuid", user, "--regid", user, "--init-groups"]);
        }
        command.arg("--");
        // `cargo xtask bench --pin`: servers on CPUs of their own (taskset execs the server, so
        // the pid signalled is still the server's).
        if let Some(cpus) = server_cpus() {
            command.args(["taskset", "--cpu-list", &cpus]);
        }
        command
            .arg(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(spawn(command).map_err(|e| {
            format!(
                "could not start {} ({}): {e}; `setpriv` (and `taskset`, which \
                 RESILIENT_SERVER_CPUS asks for) come with util-linux",
                self.name,
                self.program.display()
            )
        })?);
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid().ok_or("the server is not running")?;
        kill(Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Pids of the server's child processes (PostgreSQL backends, for example).
    pub fn children(&self) -> Vec<u32> {
        self.pid().map(children_of).unwrap_or_default()
    }

    /// SIGKILL to the process and its children; waits until all of them are gone.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let children = children_of(child.id());
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        for pid in &children {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        child.wait()?;
        wait_gone(&children, Duration::from_secs(10))
    }

    /// Starts the same command again: same port, same data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let give_up = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > give_up {
                return Err(format!("{} did not exit within {timeout:?}", self.name).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = None;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Pids whose parent is `parent`, from /proc.
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: read after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// True while a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn wait_gone(pids: &[u32], timeout: Duration) -> Result<()> {
    let give_up = Instant::now() + timeout;
    while pids.iter().any(|&pid| pid_alive(pid)) {
        if Instant::now() > give_up {
            return Err(format!("processes {pids:?} still alive after {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Polls `ready` every 20 ms until it returns true, the process dies, or `timeout` passes.
pub(crate) fn wait_ready(
    process: &mut ServerProcess,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let give_up = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if !process.is_running() {
            return Err(format!(
                "{} exited before it was ready; its log ends with:\n{}",
                process.name,
                process.log_tail()
            )
            .into());
        }
        if Instant::now() > give_up {
            return Err(format!(
                "{} was not ready within {timeout:?}; its log ends with:\n{}",
                process.name,
                process.log_tail()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
