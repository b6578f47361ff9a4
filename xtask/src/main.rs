//! Project automation, run as `cargo xtask <command>`:
//!
//! - `test`: installs `redis-server` and `postgresql` with apt when they are missing (as root),
//!   then every test of the workspace, the quickstart example with no server, the facade's
//!   per-feature registry check, and a crate outside the workspace that must see exactly the
//!   enabled backends.
//! - `lint`: `cargo fmt --check`, clippy with `-D warnings`, and docs with `-D warnings`.
//! - `ci`: `lint`, then `test`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The facade feature sets whose backends are checked, with the schemes each must register.
const FEATURE_SETS: &[(&str, &str)] = &[
    ("", ""),
    ("memory", "memory"),
    ("redis", "redis,redis+cluster,rediss,rediss+cluster"),
    ("postgres", "postgres,postgresql"),
    (
        "memory,redis,postgres",
        "memory,postgres,postgresql,redis,redis+cluster,rediss,rediss+cluster",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("lint") => lint(),
        Some("ci") => lint().and_then(|()| test()),
        _ => {
            eprintln!("usage: cargo xtask <test|lint|ci>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(what: &str, command: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {what}");
    let start = Instant::now();
    let status = command
        .status()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    eprintln!("xtask: {what}: {status} in {:.1?}", start.elapsed());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn lint() -> Result<(), String> {
    run("format check", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "docs",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )
}

fn test() -> Result<(), String> {
    ensure_servers()?;
    run(
        "workspace tests",
        cargo().args(["test", "--workspace", "--all-features"]),
    )?;
    run(
        "quickstart example on the embedded memory store",
        cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "resilient-storage",
                "--example",
                "quickstart",
            ])
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .stdout(std::process::Stdio::null()),
    )?;
    for (features, schemes) in FEATURE_SETS {
        run(
            &format!("facade registry with features [{features}]"),
            cargo().args([
                "test",
                "-p",
                "resilient-storage",
                "--no-default-features",
                "--features",
                features,
                "--test",
                "registered_backends",
            ]),
        )?;
        outside_crate(features, schemes)?;
    }
    Ok(())
}

/// The server binaries the tests start, and the Debian package of each.
const SERVER_BINARIES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("initdb", "postgresql"),
    ("postgres", "postgresql"),
    ("pg_ctl", "postgresql"),
    ("pg_isready", "postgresql-client"),
    ("psql", "postgresql-client"),
];

/// Installs the Redis and PostgreSQL packages with apt when a binary the tests need is missing
/// and this runs as root; otherwise says what to run. The tests start their own servers; this
/// only provides the binaries.
fn ensure_servers() -> Result<(), String> {
    let mut packages: Vec<&str> = SERVER_BINARIES
        .iter()
        .filter(|(binary, _)| !binary_exists(binary))
        .map(|(_, package)| *package)
        .collect();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        return Err(format!(
            "the tests need {} and this is not root: run `sudo apt-get update && sudo {install}`",
            packages.join(", ")
        ));
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    run(
        &install,
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    match SERVER_BINARIES
        .iter()
        .find(|(binary, _)| !binary_exists(binary))
    {
        Some((binary, package)) => Err(format!(
            "`{binary}` is still missing after installing {package}"
        )),
        None => Ok(()),
    }
}

/// On PATH, or in `/usr/lib/postgresql/<version>/bin` where Debian keeps the server binaries.
fn binary_exists(binary: &str) -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    let postgres_dirs = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path().join("bin"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    env::split_paths(&path)
        .chain(postgres_dirs)
        .any(|dir| dir.join(binary).is_file())
}

/// Builds the consumer crate with `features` and checks the schemes it prints.
fn outside_crate(features: &str, expected: &str) -> Result<(), String> {
    let what = format!("outside crate with features [{features}]");
    eprintln!("xtask: {what}");
    let manifest = root().join("resilient-facade/tests/outside-crate/Cargo.toml");
    let output = cargo()
        .args(["run", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .args(["--no-default-features", "--features", features])
        .env("CARGO_TARGET_DIR", root().join("target"))
        .output()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let seen = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if seen != expected {
        return Err(format!(
            "{what}: registered schemes {seen:?}, expected {expected:?}"
        ));
    }
    eprintln!("xtask: {what}: schemes {seen:?} as expected");
    Ok(())
}
