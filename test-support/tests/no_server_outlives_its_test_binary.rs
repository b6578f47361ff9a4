//! A test binary that ends in any way (exit without destructors, panic, abort) leaves none of
//! the servers it started running.

use std::process::Command;
use std::time::{Duration, Instant};

use resilient_test_support::pid_alive;

fn probe(how: &str) -> Vec<u32> {
    let output = Command::new(env!("CARGO_BIN_EXE_harness-probe"))
        .arg(how)
        .output()
        .expect("run the probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pids: Vec<u32> = stdout
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert!(
        pids.len() >= 3,
        "the probe should print redis, postmaster and backend pids; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    pids
}

fn assert_all_gone(how: &str, pids: &[u32]) {
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let alive: Vec<_> = pids.iter().filter(|&&p| pid_alive(p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "after `{how}`, server processes {alive:?} are still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn servers_die_when_the_binary_exits_without_running_destructors() {
    let pids = probe("exit");
    assert_all_gone("exit", &pids);
}

#[test]
fn servers_die_when_the_binary_panics() {
    let pids = probe("panic");
    assert_all_gone("panic", &pids);
}

#[test]
fn servers_die_when_the_binary_aborts() {
    let pids = probe("abort");
    assert_all_gone("abort", &pids);
}
