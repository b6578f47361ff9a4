//! Project automation, run as `cargo xtask <command>`:
//!
//! - `test`: installs `redis-server` and `postgresql` with apt when they are missing (as root),
//!   then every test of the workspace, the quickstart example with no server, the facade's
//!   per-feature registry check, a crate outside the workspace that must see exactly the
//!   enabled backends, and the tests of the third-party example backend in
//!   `docs/example-backend`.
//! - `lint`: `cargo fmt --check`, clippy with `-D warnings`, and docs with `-D warnings`.
//! - `ci`: `lint`, the benchmarks built (`cargo bench --no-run`), `test`, the short chaos
//!   suite and the quick demo.
//! - `chaos [--short] [--seed N] [--only 1,2]`: installs the servers when missing, then runs
//!   the chaos suite against throwaway servers (see `chaos/src/bin/chaos.rs`).
//! - `demo [--quick]`: installs the servers when missing, then runs the live failover demo.
//! - `soak [--minutes N] [--flap-every SECONDS]`: installs the servers when missing, then
//!   runs the soak (optimized build; see `chaos/src/bin/soak.rs`): 10 minutes of load on the
//!   default settings while Redis is killed for half of every 20 s, with resident memory, heap
//!   and task count checked flat. Its figures go to `target/criterion/soak.md`, which the bench
//!   summary includes.
//! - `bench [--only GROUP]`: installs the servers when missing, runs the criterion suite and
//!   the custom figures against throwaway servers (or only one group of them), and writes
//!   `target/criterion/summary.md`: each figure as a ratio to its baseline from the same run,
//!   against the goal, with the machine's cores and load. Rows of groups not run this time show
//!   their last results, or "not run".

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The facade feature sets whose backends are checked, with the schemes each must register.
const FEATURE_SETS: &[(&str, &str)] = &[
    ("", ""),
    ("memory", "memory"),
    (
        "redis",
        "redis,redis+cluster,redis+sentinel,rediss,rediss+cluster,rediss+sentinel",
    ),
    ("postgres", "postgres,postgresql"),
    (
        "memory,redis,postgres",
        "memory,postgres,postgresql,redis,redis+cluster,redis+sentinel,rediss,rediss+cluster,rediss+sentinel",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("lint") => lint(),
        Some("ci") => lint()
            .and_then(|()| bench_build())
            .and_then(|()| test())
            .and_then(|()| chaos_bin("chaos", &["--short".into()]))
            .and_then(|()| chaos_bin("demo", &["--quick".into()])),
        Some("bench") => bench(&args[1..]),
        Some("chaos") => chaos_bin("chaos", &args[1..]),
        Some("demo") => chaos_bin("demo", &args[1..]),
        Some("soak") => soak(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <test|lint|ci|bench|chaos|demo|soak>");
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
    let mut command = Command::new(cargo_program());
    command.current_dir(root());
    command
}

/// The cargo that runs xtask (`CARGO`), else `cargo` from the path.
fn cargo_program() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
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
    run(
        "the third-party example backend (docs/example-backend)",
        cargo()
            .args(["test", "--quiet", "--manifest-path"])
            .arg(root().join("docs/example-backend/Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir()?),
    )?;
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
        .env("CARGO_TARGET_DIR", target_dir()?)
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

/// Runs a binary of the chaos crate (`chaos` or `demo`) with `args`, after making sure the
/// servers it starts are installed.
fn chaos_bin(bin: &str, args: &[String]) -> Result<(), String> {
    ensure_servers()?;
    // The fleet scenarios run `fleet-worker` processes: build every binary of the crate.
    run(
        "chaos binaries",
        cargo().args(["build", "--quiet", "-p", "resilient-chaos", "--bins"]),
    )?;
    run(
        &format!("{bin} {}", args.join(" ")),
        cargo()
            .args([
                "run",
                "--quiet",
                "-p",
                "resilient-chaos",
                "--bin",
                bin,
                "--",
            ])
            .args(args),
    )
}

fn soak(args: &[String]) -> Result<(), String> {
    ensure_servers()?;
    let dir = target_dir()?.join("criterion");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let out = dir.join("soak.md");
    run(
        &format!("soak {}", args.join(" ")),
        cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "resilient-chaos",
                "--bin",
                "soak",
                "--",
            ])
            .args(args)
            .arg("--out")
            .arg(&out),
    )
}

/// The soak's figures from its last run (`cargo xtask soak`), for the bench summary.
fn soak_section(target: &Path) -> String {
    let path = target.join("criterion/soak.md");
    match std::fs::read_to_string(&path) {
        Ok(figures) => format!(
            "
## Soak (the last `cargo xtask soak`)

{figures}"
        ),
        Err(_) => "
## Soak

Not run: `cargo xtask soak` writes its figures here.
"
        .to_owned(),
    }
}

fn bench_build() -> Result<(), String> {
    run(
        "benchmarks build",
        cargo().args(["bench", "-p", "resilient-benches", "--no-run"]),
    )
}

/// The directory cargo builds into, resolved as cargo does (`CARGO_TARGET_DIR`,
/// `build.target-dir` in `.cargo/config.toml`, or `target/` in the workspace): `cargo metadata`
/// says which.
fn target_dir() -> Result<PathBuf, String> {
    metadata_target_dir(cargo())
}

/// `cargo metadata`'s target directory, run as `command` (a cargo command in the workspace).
fn metadata_target_dir(mut command: Command) -> Result<PathBuf, String> {
    let output = command
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| format!("cargo metadata: could not start: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    json["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata: no target_directory".to_owned())
}

/// Interleaved A/B figures of the custom benchmark (`benches/benches/failover.rs`, results
/// `interleaved_<name>.json`): (name, what, goal as the highest ratio).
const INTERLEAVED: &[(&str, &str, f64)] = &[
    (
        "memory_get",
        "memory get (hit) on the default storage vs moka's sync cache get",
        1.55,
    ),
    (
        "memory_set",
        "memory set on the default storage vs moka's sync cache insert",
        1.2,
    ),
    (
        "cache_aside_hit",
        "get_or_load hit on the memory default vs a plain get of the same key",
        1.3,
    ),
    ("redis_get", "Redis get, one task", 1.05),
    (
        "redis_get_64_tasks",
        "Redis get, 64 concurrent tasks of 16 gets, time per call (≤ 1.053x: throughput ≥ 0.95x)",
        1.053,
    ),
    (
        "redis_set",
        "Redis set (value and version in one SET), Redis-only storage, vs a plain SET of the value",
        1.1,
    ),
    ("postgres_get", "PostgreSQL get", 1.05),
    (
        "postgres_set",
        "PostgreSQL set vs sqlx with the same upsert (no version column)",
        1.1,
    ),
    (
        "redis_get_many_100",
        "Redis get_many of 100 keys vs one raw MGET",
        1.1,
    ),
    (
        "redis_increment",
        "Redis increment (script: count and version) vs one raw INCRBY",
        1.3,
    ),
    (
        "postgres_get_many_100",
        "PostgreSQL get_many of 100 keys among 12,000 rows vs one raw `= ANY($1)`",
        1.1,
    ),
    (
        "default_set",
        "set under the default write-behind policy, Redis + PostgreSQL, vs a Redis-only storage",
        1.15,
    ),
];

/// The custom benchmark's other groups. `--only` selects a custom group, these or
/// `interleaved_<name>`, by the `RESILIENT_BENCH_ONLY` variable; criterion's groups by
/// criterion's filter.
const OTHER_CUSTOM_GROUPS: &[&str] = &[
    "replay_after_an_outage",
    "latency_aware_vs_failover",
    "failover_times",
];

/// Every custom group's name, as `--only` takes it.
fn custom_groups() -> Vec<String> {
    INTERLEAVED
        .iter()
        .map(|(name, ..)| format!("interleaved_{name}"))
        .chain(OTHER_CUSTOM_GROUPS.iter().map(|g| (*g).to_owned()))
        .collect()
}

fn bench(args: &[String]) -> Result<(), String> {
    const USAGE: &str = "usage: cargo xtask bench [--only GROUP] [--pin]";
    let (mut only, mut pin) = (None, false);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--only" if only.is_none() => only = Some(rest.next().ok_or(USAGE)?.as_str()),
            "--pin" if !pin => pin = true,
            _ => return Err(USAGE.into()),
        }
    }
    let custom_groups = custom_groups();
    let is_custom = |g: &str| custom_groups.iter().any(|c| c == g);
    let known = |g: &str| is_custom(g) || GROUPS.iter().any(|(name, ..)| *name == g);
    if let Some(group) = only.filter(|g| !known(g)) {
        let mut names: Vec<&str> = GROUPS.iter().map(|(name, ..)| *name).collect();
        names.extend(custom_groups.iter().map(String::as_str));
        return Err(format!(
            "no benchmark group {group:?}; the groups: {}",
            names.join(", ")
        ));
    }
    ensure_servers()?;
    let target = target_dir()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let pinned = pin.then(Pinning::of_this_process).transpose()?;
    if pinned.is_some()
        && !Command::new("taskset")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Err("--pin needs `taskset` (util-linux)".into());
    }
    let load_before = load_average();
    // Criterion and the benchmarks' own results follow CARGO_TARGET_DIR: set it to what cargo
    // resolved, so a `build.target-dir` in a config file is followed too.
    let mut command = match &pinned {
        Some(pinning) => {
            // Built on every core first: only the run is pinned.
            run(
                "benchmarks' build",
                cargo()
                    .args(["bench", "-p", "resilient-benches", "--no-run"])
                    .env("CARGO_TARGET_DIR", &target),
            )?;
            let mut command = Command::new("taskset");
            command
                .args(["--cpu-list", &pinning.bench])
                .arg(cargo_program())
                .current_dir(root())
                .env("RESILIENT_SERVER_CPUS", &pinning.servers);
            command
        }
        None => cargo(),
    };
    command
        .args(["bench", "-p", "resilient-benches"])
        .env("CARGO_TARGET_DIR", &target);
    match only {
        Some(group) if is_custom(group) => {
            command
                .args(["--bench", "failover"])
                .env("RESILIENT_BENCH_ONLY", group);
        }
        Some(group) => {
            command.args(["--bench", "overhead", "--", &format!("^{group}/")]);
        }
        None => {}
    }
    run("benchmarks", &mut command)?;
    let machine = Machine {
        cores,
        load_before,
        load_after: load_average(),
        pinned,
    };
    let summary = summary(&target, &machine)? + &soak_section(&target);
    let path = target.join("criterion/summary.md");
    std::fs::write(&path, &summary).map_err(|e| format!("write {}: {e}", path.display()))?;
    println!("{summary}");
    eprintln!("xtask: summary written to {}", path.display());
    Ok(())
}

/// The one-minute load average, from `/proc/loadavg` (`None` where there is none).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `--pin`: the CPUs of the benchmarks and of the servers they start, apart (`taskset` lists).
#[derive(Debug)]
struct Pinning {
    bench: String,
    servers: String,
}

impl Pinning {
    /// The CPUs this process may run on (`Cpus_allowed_list` in `/proc/self/status`), split.
    fn of_this_process() -> Result<Self, String> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("--pin reads /proc/self/status: {e}"))?;
        let list = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .ok_or("--pin: /proc/self/status has no Cpus_allowed_list")?;
        Self::of(&cpus(list)?)
    }

    /// The last of `cpus` for the servers, the others for the benchmarks.
    fn of(cpus: &[usize]) -> Result<Self, String> {
        match cpus {
            [bench @ .., servers] if !bench.is_empty() => Ok(Self {
                bench: bench
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                servers: servers.to_string(),
            }),
            _ => Err(format!(
                "--pin needs at least 2 CPUs (benchmarks and servers apart); this process may \
                 use {}",
                cpus.len()
            )),
        }
    }
}

/// The CPUs of a list as the kernel writes it (`0-2,5`), in order.
fn cpus(list: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("a CPU list that cannot be read: {list:?}");
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let first: usize = first.trim().parse().map_err(|_| bad())?;
        let last: usize = last.trim().parse().map_err(|_| bad())?;
        if last < first {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// What the summary says about the machine it ran on.
struct Machine {
    cores: usize,
    load_before: Option<f64>,
    load_after: Option<f64>,
    /// `--pin`'s CPUs, when given.
    pinned: Option<Pinning>,
}

impl Machine {
    fn describe(&self) -> String {
        let load = |l: Option<f64>| l.map_or("unknown".to_owned(), |l| format!("{l:.2}"));
        // Quiet: under a quarter of a core busy on average, per core, before and after.
        let quiet = match (self.load_before, self.load_after) {
            (Some(a), Some(b)) if self.cores > 0 => {
                if a.max(b) / self.cores as f64 <= 0.25 {
                    "quiet"
                } else {
                    "busy: rerun a group with `--only` before believing a change"
                }
            }
            _ => "load unknown",
        };
        let pinned = match &self.pinned {
            Some(p) => format!(
                " Pinned (`--pin`): benchmarks on CPUs {}, servers on CPU {}.",
                p.bench, p.servers
            ),
            None => String::new(),
        };
        format!(
            "Machine: {} cores; one-minute load average {} before the run and {} after ({quiet}).{pinned}",
            self.cores,
            load(self.load_before),
            load(self.load_after)
        )
    }
}

/// Criterion groups compared with their baseline: (group, what, how the ratio is read, goal).
/// `Lower` ratios are time over baseline time; `Higher` ratios are throughput over baseline.
const GROUPS: &[(&str, &str, Goal)] = &[
    (
        "memory_get",
        "memory get (hit), through ResilientStorage vs moka's sync cache get",
        Goal::Interleaved(Read::Lower),
    ),
    (
        "memory_set",
        "memory set, through ResilientStorage vs moka's sync cache insert",
        Goal::Interleaved(Read::Lower),
    ),
    (
        "redis_get",
        "Redis get, one task, vs the redis crate's ConnectionManager",
        Goal::Interleaved(Read::Lower),
    ),
    (
        "redis_get_64_tasks",
        "Redis get, 64 concurrent tasks, throughput vs the same direct",
        Goal::Interleaved(Read::Higher),
    ),
    (
        "postgres_get",
        "PostgreSQL get vs sqlx with the same SQL",
        Goal::Interleaved(Read::Lower),
    ),
    (
        "postgres_set",
        "PostgreSQL set vs sqlx with the same SQL",
        Goal::Interleaved(Read::Lower),
    ),
    (
        "breaker_closed",
        "breaker admit and record, closed, vs failsafe",
        Goal::AtMost(1.0),
    ),
    (
        "routing_3_backends",
        "routing over 3 backends vs 1, primary healthy",
        Goal::AtMost(1.1),
    ),
    (
        "default_set",
        "set under the default write-behind policy, Redis + PostgreSQL, vs a Redis-only storage",
        Goal::Interleaved(Read::Lower),
    ),
    (
        "redis_get_many_vs_100_gets",
        "Redis get_many of 100 keys, throughput vs 100 gets one after another",
        Goal::ThroughputAtLeast(20.0),
    ),
    (
        "postgres_get_many_vs_100_gets",
        "PostgreSQL get_many of 100 keys, throughput vs 100 gets one after another",
        Goal::ThroughputAtLeast(20.0),
    ),
    (
        "cache_aside_hit",
        "get_or_load hit on the memory default vs a plain get of the same key",
        Goal::Interleaved(Read::Lower),
    ),
    (
        "single_flight_1000_callers",
        "1,000 concurrent get_or_load of one missing key (one load) vs moka get_with",
        Goal::AtMost(2.0),
    ),
];

#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    ThroughputAtLeast(f64),
    /// Judged on the same calls' interleaved row: criterion measures one side after the
    /// other, so drift of the machine between them lands on one side only. Its ratio is shown
    /// as `Read` says.
    Interleaved(Read),
}

/// How a criterion row's ratio is read.
#[derive(Clone, Copy)]
enum Read {
    /// Time over the baseline's time.
    Lower,
    /// Throughput over the baseline's throughput.
    Higher,
}

fn mean_ns(target: &Path, group: &str, function: &str) -> Result<f64, String> {
    // A group never run (see `--only`) has no file: its row says "not run".
    let path = target.join(format!("criterion/{group}/{function}/new/estimates.json"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    json["mean"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("no mean in {}", path.display()))
}

fn custom(target: &Path, name: &str) -> Result<serde_json::Value, String> {
    let path = target.join(format!("criterion/resilient-custom/{name}.json"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The summary of the results under `target` (cargo's target directory).
fn summary(target: &Path, machine: &Machine) -> Result<String, String> {
    let mut out = format!(
        "# resilient-storage benchmarks\n\nEvery figure is measured in the same run as its baseline. \
         {}\nCriterion rows: mean of criterion's samples on each side; \
         interleaved rows: the median of per-round ratios, rounds as stated. A criterion row \
         whose calls also have an interleaved row is judged there: criterion measures one side \
         after the other, and on a shared machine drift between them lands on one side only; \
         interleaved rounds share it.\n\n\
         | benchmark | resilient | baseline | ratio | goal | met |\n|---|---|---|---|---|---|\n",
        machine.describe()
    );
    let not_run = |what: &str| format!("| {what} | not run | | | | |\n");
    let time = |ns: f64| {
        if ns >= 1e6 {
            format!("{:.2} ms", ns / 1e6)
        } else if ns >= 1e3 {
            format!("{:.2} µs", ns / 1e3)
        } else {
            format!("{ns:.1} ns")
        }
    };
    for (group, what, goal) in GROUPS {
        let (Ok(ours), Ok(base)) = (
            mean_ns(target, group, "resilient"),
            mean_ns(target, group, "baseline"),
        ) else {
            out.push_str(&not_run(what));
            continue;
        };
        let (ratio, goal_text, met) = match goal {
            Goal::AtMost(limit) => (ours / base, format!("≤ {limit}x"), ours / base <= *limit),
            Goal::ThroughputAtLeast(limit) => (
                base / ours,
                format!("throughput ≥ {limit}x"),
                base / ours >= *limit,
            ),
            Goal::Interleaved(read) => {
                let ratio = match read {
                    Read::Lower => ours / base,
                    Read::Higher => base / ours,
                };
                out.push_str(&format!(
                    "| {what} | {} | {} | {ratio:.3}x | on the interleaved row | |\n",
                    time(ours),
                    time(base),
                ));
                continue;
            }
        };
        out.push_str(&format!(
            "| {what} | {} | {} | {ratio:.3}x | {goal_text} | {} |\n",
            time(ours),
            time(base),
            if met { "yes" } else { "**no**" }
        ));
    }
    for &(name, what, limit) in INTERLEAVED {
        let Ok(figures) = custom(target, &format!("interleaved_{name}")) else {
            out.push_str(&not_run(what));
            continue;
        };
        let get = |k: &str| figures[k].as_f64().unwrap_or(f64::NAN);
        let count = |k: &str| {
            figures[k]
                .as_u64()
                .map_or("?".to_owned(), |n| n.to_string())
        };
        let ratio = get("median_ratio");
        out.push_str(&format!(
            "| {what} (interleaved A/B, median of {} rounds of {} calls) | {} | {} | {ratio:.3}x | ≤ {limit}x | {} |\n",
            count("rounds"),
            count("per_round"),
            time(get("resilient_us") * 1e3),
            time(get("baseline_us") * 1e3),
            if ratio <= limit { "yes" } else { "**no**" }
        ));
    }
    match custom(target, "replay_after_an_outage") {
        Ok(replay) => {
            let get = |k: &str| replay[k].as_f64().unwrap_or(f64::NAN);
            let rate = get("records_per_second");
            let ratio = get("takeback_ratio");
            out.push_str(&format!(
                "| replay to a recovered Redis, {:.0} records (fault proxy) | {rate:.0} records/s | {:.0} ms | | ≥ 50,000/s | {} |\n",
                get("records"),
                get("replay_ms"),
                if rate >= 50_000.0 { "yes" } else { "**no**" }
            ));
            out.push_str(&format!(
                "| Redis takes traffic back under a {:.0} writes/s stream, from the replay's start, vs the replay alone | {:.0} ms | {:.0} ms | {ratio:.3}x | ≤ 2x | {} |\n",
                get("stream_writes_per_second"),
                get("takeback_ms"),
                get("replay_ms"),
                if ratio <= 2.0 { "yes" } else { "**no**" }
            ));
        }
        Err(_) => out.push_str(&not_run("replay to a recovered Redis")),
    }
    let Ok(latency) = custom(target, "latency_aware_vs_failover") else {
        out.push_str(&not_run("p99 of LatencyAware vs Failover"));
        return Ok(out);
    };
    let p99 = |s: &str| {
        latency["strategies"][s]["p99_us"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let ratio = latency["p99_ratio"].as_f64().unwrap_or(f64::NAN);
    out.push_str(&format!(
        "| p99 of LatencyAware vs Failover, primary +5 ms (fault proxy) | {:.0} µs | {:.0} µs | {ratio:.3}x | ≤ 0.3x | {} |\n",
        p99("latency_aware"),
        p99("failover"),
        if ratio <= 0.3 { "yes" } else { "**no**" }
    ));
    for config in ["defaults", "fast_failback"] {
        let Ok(times) = custom(target, &format!("failover_times_{config}")) else {
            out.push_str(&not_run(&format!("failover and failback times ({config})")));
            continue;
        };
        let get = |k: &str| times[k].as_f64().unwrap_or(f64::NAN);
        let rows = [
            (
                "Redis SIGKILL to first call served by the fallback",
                get("failover_ms"),
                get("failover_baseline_ms"),
                "attempt timeout",
            ),
            (
                "Redis restart to first call served by Redis",
                get("failback_ms"),
                get("failback_baseline_ms"),
                "failback delay + health interval",
            ),
        ];
        for (what, ours, base, baseline_name) in rows {
            out.push_str(&format!(
                "| {what} ({config}) | {ours:.1} ms | {base:.0} ms ({baseline_name}) | {:.3}x | ≤ 1x | {} |\n",
                ours / base,
                if ours <= base { "yes" } else { "**no**" }
            ));
        }
    }
    out.push_str(
        "\n`defaults`: Failover strategy, health rise 2 / fall 3 every 1 s, failback delay 2 s. \
         `fast_failback`: Priority strategy, rise 1, no failback delay.\n",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_target_directory_follows_cargo_target_dir() {
        let dir = scratch("target-dir");
        let mut command = cargo();
        command.env("CARGO_TARGET_DIR", &dir);
        assert_eq!(metadata_target_dir(command).unwrap(), dir);
    }

    #[test]
    fn the_summary_reads_results_under_a_custom_target_directory() {
        let target = scratch("summary");
        let write = |path: PathBuf, json: serde_json::Value| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, json.to_string()).unwrap();
        };
        for (group, _, _) in GROUPS {
            for (function, ns) in [("resilient", 110.0), ("baseline", 100.0)] {
                write(
                    target.join(format!("criterion/{group}/{function}/new/estimates.json")),
                    serde_json::json!({"mean": {"point_estimate": ns}}),
                );
            }
        }
        let custom = |name: &str| target.join(format!("criterion/resilient-custom/{name}.json"));
        for (name, ..) in INTERLEAVED {
            write(
                custom(&format!("interleaved_{name}")),
                serde_json::json!({"median_ratio": 1.01, "resilient_us": 50.5, "baseline_us": 50.0,
                    "rounds": 30, "per_round": 200}),
            );
        }
        write(
            custom("latency_aware_vs_failover"),
            serde_json::json!({"p99_ratio": 0.2, "strategies": {
                "latency_aware": {"p99_us": 100.0}, "failover": {"p99_us": 500.0}}}),
        );
        for config in ["defaults", "fast_failback"] {
            write(
                custom(&format!("failover_times_{config}")),
                serde_json::json!({"failover_ms": 5.0, "failover_baseline_ms": 500.0,
                    "failback_ms": 900.0, "failback_baseline_ms": 1000.0}),
            );
        }
        write(
            custom("replay_after_an_outage"),
            serde_json::json!({"records": 80000, "replay_ms": 800.0, "records_per_second": 100000.0,
                "stream_writes_per_second": 20000.0, "takeback_ms": 700.0, "takeback_ratio": 0.875}),
        );
        let machine = Machine {
            cores: 2,
            load_before: Some(0.1),
            load_after: Some(0.3),
            pinned: None,
        };
        let summary = summary(&target, &machine).unwrap();
        assert!(summary.contains("Machine: 2 cores; one-minute load average 0.10 before the run and 0.30 after (quiet)."), "{summary}");
        assert!(
            summary.contains("median of 30 rounds of 200 calls"),
            "{summary}"
        );
        assert!(
            summary.contains("| 100000 records/s | 800 ms | | ≥ 50,000/s | yes |"),
            "{summary}"
        );
        assert!(
            summary.contains("| set under the default write-behind policy"),
            "{summary}"
        );
        // A criterion row judged by its own goal (routing), and one judged on its interleaved row.
        assert!(
            summary.contains("| 110.0 ns | 100.0 ns | 1.100x | ≤ 1.1x | yes |"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "Redis-only storage | 110.0 ns | 100.0 ns | 1.100x | on the interleaved row |"
            ),
            "{summary}"
        );
    }

    #[test]
    fn groups_without_results_say_not_run() {
        let target = scratch("not-run");
        let machine = Machine {
            cores: 2,
            load_before: None,
            load_after: None,
            pinned: Some(Pinning::of(&[0, 1]).unwrap()),
        };
        let summary = summary(&target, &machine).unwrap();
        assert!(
            summary.contains(
                "| memory get (hit), through ResilientStorage vs moka's sync cache get | not run |"
            ),
            "{summary}"
        );
        assert!(summary.contains("load unknown"), "{summary}");
        assert!(
            summary.contains("Pinned (`--pin`): benchmarks on CPUs 0, servers on CPU 1."),
            "{summary}"
        );
    }

    #[test]
    fn pinning_needs_two_cpus_and_keeps_the_last_allowed_for_the_servers() {
        assert!(Pinning::of(&[3]).unwrap_err().contains("at least 2 CPUs"));
        assert!(Pinning::of(&[]).is_err());
        let allowed = Pinning::of(&cpus("2-3,6\n").unwrap()).unwrap();
        assert_eq!(
            (allowed.bench.as_str(), allowed.servers.as_str()),
            ("2,3", "6")
        );
        assert_eq!(cpus("0").unwrap(), [0]);
        assert!(cpus("3-1").is_err());
        assert!(cpus("x").is_err());
    }
}
