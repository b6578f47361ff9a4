//! Throwaway PostgreSQL clusters: `initdb` into a temporary directory, then `postgres`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};
use tempfile::TempDir;

use crate::process::{ServerProcess, wait_ready};
use crate::{Result, TestCertificates, binaries, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL server on a free loopback port with its own data directory, stopped on drop.
///
/// PostgreSQL refuses to run as root; when the tests run as root (as CI does), the server runs
/// as the `postgres` system user that Debian's package creates. Authentication is `trust` on
/// loopback; the superuser is `postgres`.
#[derive(Debug)]
pub struct PostgresServer {
    process: ServerProcess,
    port: u16,
    run_as: Option<String>,
    pg_ctl: PathBuf,
    pg_isready: PathBuf,
    psql: PathBuf,
    // Dropped after the process.
    root: TempDir,
}

/// Creates the cluster's data directory: user `postgres`, trust authentication, UTF-8.
fn init_cluster(run_as: &Option<String>, initdb: &Path, data: &Path) -> Result<()> {
    let output = as_user(run_as, initdb)
        .arg("-D")
        .arg(data)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()?;
    if !output.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(())
}

/// Copies the certificate and key into `root` as the server wants them (its own user, 0600)
/// and returns the settings that turn TLS on.
fn tls_settings(
    tls: &TestCertificates,
    root: &Path,
    run_as: &Option<String>,
) -> Result<Vec<String>> {
    for (name, source) in [("server.crt", tls.cert()), ("server.key", tls.key())] {
        let target = root.join(name);
        std::fs::copy(&source, &target)?;
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if let Some(user) = run_as {
            let user = User::from_name(user)?.ok_or("the postgres user vanished")?;
            chown(&target, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
        }
    }
    Ok(vec![
        "-c".to_owned(),
        "ssl=on".to_owned(),
        "-c".to_owned(),
        format!("ssl_cert_file={}", root.join("server.crt").display()),
        "-c".to_owned(),
        format!("ssl_key_file={}", root.join("server.key").display()),
    ])
}

impl PostgresServer {
    /// Creates a cluster and starts it.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Creates a cluster and starts it; with `tls`, the server offers TLS (`ssl=on`) with those
    /// certificates, and still accepts plain connections.
    pub fn start_with(tls: Option<&TestCertificates>) -> Result<Self> {
        let initdb = binaries::find("initdb", "postgresql")?;
        let postgres = binaries::find("postgres", "postgresql")?;
        let pg_ctl = binaries::find("pg_ctl", "postgresql")?;
        let pg_isready = binaries::find("pg_isready", "postgresql-client")?;
        let psql = binaries::find("psql", "postgresql-client")?;
        let run_as = if geteuid().is_root() {
            let user = User::from_name("postgres")?.ok_or(
                "running as root, and PostgreSQL refuses to: the `postgres` user is missing \
                 (`apt-get install -y postgresql` creates it)",
            )?;
            Some(user)
        } else {
            None
        };
        let mut root = tempfile::Builder::new().prefix("postgres-").tempdir()?;
        let data = root.path().join("data");
        let sockets = root.path().join("sockets");
        std::fs::create_dir(&sockets)?;
        if let Some(user) = &run_as {
            for dir in [root.path(), &sockets] {
                chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
            }
        }
        let run_as = run_as.map(|u| u.name);
        init_cluster(&run_as, &initdb, &data)?;
        let ssl = match tls {
            Some(tls) => tls_settings(tls, root.path(), &run_as)?,
            None => Vec::new(),
        };
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut args = vec![
                "-D".to_owned(),
                data.to_string_lossy().into_owned(),
                "-p".to_owned(),
                port.to_string(),
                "-c".to_owned(),
                "listen_addresses=127.0.0.1".to_owned(),
                "-c".to_owned(),
                format!("unix_socket_directories={}", sockets.display()),
                "-c".to_owned(),
                "max_connections=200".to_owned(),
            ];
            args.extend(ssl.iter().cloned());
            let process = ServerProcess::start(
                "postgres",
                postgres.clone(),
                args,
                run_as.clone(),
                root.path().join("postgres.log"),
            )?;
            let mut server = Self {
                process,
                port,
                run_as: run_as.clone(),
                pg_ctl: pg_ctl.clone(),
                pg_isready: pg_isready.clone(),
                psql: psql.clone(),
                root,
            };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) if e.to_string().contains("could not bind") => {
                    last_error = Some(e);
                    root = std::mem::replace(&mut server.root, tempfile::tempdir()?);
                    drop(server);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| "could not start postgres".into()))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let (pg_isready, port) = (self.pg_isready.clone(), self.port);
        wait_ready(&mut self.process, READY_TIMEOUT, || {
            accepts_connections(&pg_isready, port)
        })
    }

    /// True when the server accepts a connection within one second (`pg_isready`).
    pub fn accepts_connections(&self) -> bool {
        accepts_connections(&self.pg_isready, self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `postgres://postgres@127.0.0.1:port/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The postmaster's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Pids of the postmaster's children: backends and background workers.
    pub fn child_pids(&self) -> Vec<u32> {
        self.process.children()
    }

    /// Runs SQL through `psql` and returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let output = Command::new(&self.psql)
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()?;
        if !output.status.success() {
            return Err(format!("psql failed: {}", String::from_utf8_lossy(&output.stderr)).into());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// SIGKILL to the postmaster and every backend; waits until all are gone.
    pub fn kill(&mut self) -> Result<()> {
        self.process.kill()
    }

    /// `pg_ctl stop -m immediate`: the server quits without a checkpoint, as in a crash.
    pub fn stop_immediate(&mut self) -> Result<()> {
        let status = as_user(&self.run_as, &self.pg_ctl)
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data_dir())
            .output()?;
        if !status.status.success() {
            return Err(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&status.stderr)
            )
            .into());
        }
        self.process.wait_exit(Duration::from_secs(30))
    }

    /// SIGSTOP to the postmaster only: established sessions keep working, new connections hang.
    pub fn freeze(&self) -> Result<()> {
        self.process.signal(Signal::SIGSTOP)
    }

    /// SIGCONT to the postmaster.
    pub fn thaw(&self) -> Result<()> {
        self.process.signal(Signal::SIGCONT)
    }

    /// SIGSTOP to one process of the server (a backend serving one connection).
    pub fn freeze_pid(&self, pid: u32) -> Result<()> {
        Ok(kill(Pid::from_raw(pid as i32), Signal::SIGSTOP)?)
    }

    /// SIGCONT to one process of the server.
    pub fn thaw_pid(&self, pid: u32) -> Result<()> {
        Ok(kill(Pid::from_raw(pid as i32), Signal::SIGCONT)?)
    }

    /// Starts the server again (after a kill or stop, or kills it first), on the same port and
    /// data directory, and waits until it accepts connections (crash recovery included).
    pub fn restart(&mut self) -> Result<()> {
        self.process.restart()?;
        self.wait_ready()
    }

    /// The temporary directory holding data, sockets and the log.
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

fn accepts_connections(pg_isready: &Path, port: u16) -> bool {
    Command::new(pg_isready)
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-t",
            "1",
            "-p",
        ])
        .arg(port.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

fn as_user(run_as: &Option<String>, program: &Path) -> Command {
    match run_as {
        Some(user) => {
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}
