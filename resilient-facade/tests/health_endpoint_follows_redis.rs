//! The `health_server` example, run as a process and asked over HTTP: 200 and the report's JSON
//! shape while Redis is up, 503 once Redis is killed, 200 again after it recovers; `/visits`
//! writes through the outage (to the memory store) but counts only on Redis, continuing after
//! an empty restart; `/metrics` shows the failover in its counters.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use resilient_test_support::RedisServer;

/// The example's process, killed when the test ends however it ends.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example_binary() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/health_server
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("health_server"))
        .unwrap();
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p resilient-storage --all-features \
         --example health_server` (`cargo test --all-features` builds it)",
        path.display()
    );
    path
}

fn start_server(redis_url: &str) -> Server {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/storage.toml");
    let mut child = Command::new(example_binary())
        .arg(config)
        .env("LISTEN", "127.0.0.1:0")
        // The example file names Redis and PostgreSQL; this test runs Redis alone.
        .env("RESILIENT_STORAGE_BACKENDS__0__URL", redis_url)
        .env("RESILIENT_STORAGE_BACKENDS__1__ENABLED", "false")
        .env("RESILIENT_STORAGE_HEALTH__INTERVAL", "100ms")
        .env("RESILIENT_STORAGE_FAILBACK_DELAY", "200ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the example: {line:?}"))
        .to_owned();
    Server { child, base }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// The sum of a metric's samples whose labels include every `label=value` given.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_for_status(agent: &ureq::Agent, url: &str, want: u16, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = get(agent, url);
        if status == want {
            return body;
        }
        assert!(
            start.elapsed() < within,
            "{url} still answers {status} after {within:?}, not {want}: {body}"
        );
        // Real time on purpose: the server is another process.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_endpoint_answers_200_then_503_while_redis_is_down_then_200_again_and_readiness_stays_200()
{
    let mut redis = RedisServer::start().unwrap();
    let server = start_server(&redis.url());
    let agent = agent();
    let health = format!("{}/health/storage", server.base);
    let visits = format!("{}/visits", server.base);
    let metrics = format!("{}/metrics", server.base);

    let body = wait_for_status(&agent, &health, 200, Duration::from_secs(10));
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "healthy", "{report}");
    assert_eq!(report["activeBackend"], "redis", "{report}");
    assert_eq!(report["strategy"], "failover", "{report}");
    let backends = report["backends"].as_object().unwrap();
    // (serde_json's map sorts keys; the report itself lists backends by priority.)
    assert_eq!(backends.keys().collect::<Vec<_>>(), ["memory", "redis"]);
    assert!(
        body.find("\"redis\":{") < body.find("\"memory\":{"),
        "{body}"
    );
    assert_eq!(backends["redis"]["priority"], 1);
    for field in [
        "scheme",
        "priority",
        "health",
        "circuitOpen",
        "circuitState",
        "consecutiveFailures",
        "latencyMs",
        "capabilities",
        "pendingReplay",
        "replayLost",
    ] {
        assert!(
            backends["redis"].get(field).is_some(),
            "no {field}: {report}"
        );
    }
    assert!(!body.contains(&redis.url()), "the report shows the URL");

    for expected in 1..=5 {
        assert_eq!(get(&agent, &visits), (200, expected.to_string()));
    }
    let before = get(&agent, &metrics).1;
    let redis_calls = metric(
        &before,
        "resilient_storage_calls_total",
        &["backend=\"redis\""],
    );
    assert!(
        redis_calls >= 10.0,
        "calls to redis: {redis_calls}\n{before}"
    );
    assert_eq!(
        metric(&before, "resilient_storage_failovers_total", &[]),
        0.0
    );

    redis.kill().unwrap();
    // Reads and writes fail over to the memory store; the count does not (it would start
    // again in this process's memory): 503 until Redis is back.
    for _ in 0..5 {
        assert_eq!(get(&agent, &visits).0, 503);
    }
    let body = wait_for_status(&agent, &health, 503, Duration::from_secs(10));
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(report["status"], "healthy", "{report}");
    let ready = format!("{}/health/storage/ready", server.base);
    assert_eq!(
        get(&agent, &ready).0,
        200,
        "readiness holds while the memory fallback serves"
    );
    assert_eq!(report["lastServedBackend"], "memory", "{report}");
    assert!(!body.contains(&redis.url()), "the report shows the URL");

    let during = get(&agent, &metrics).1;
    let failovers = metric(
        &during,
        "resilient_storage_failovers_total",
        &["from=\"redis\""],
    );
    let failures = metric(
        &during,
        "resilient_storage_failures_total",
        &["backend=\"redis\""],
    );
    let memory_calls = metric(
        &during,
        "resilient_storage_calls_total",
        &["backend=\"memory\""],
    );
    assert!(failovers >= 1.0, "failovers {failovers}\n{during}");
    assert!(failures >= 1.0, "failures {failures}\n{during}");
    assert!(memory_calls >= 1.0, "memory calls {memory_calls}\n{during}");
    assert!(
        metric(
            &during,
            "resilient_storage_circuit_state",
            &["backend=\"redis\""]
        ) > 0.0
            || metric(
                &during,
                "resilient_storage_replay_backlog",
                &["backend=\"redis\""]
            ) > 0.0,
        "neither an open circuit nor a backlog for redis\n{during}"
    );
    assert!(
        !during.contains("visits"),
        "a key appears in a metric label"
    );

    redis.restart().unwrap();
    wait_for_status(&agent, &health, 200, Duration::from_secs(15));
    // An outage too short to open the breaker leaves Redis in traffic while its records are
    // replayed (reads consult them): the backlog drains just after the 200.
    let start = Instant::now();
    loop {
        let report: serde_json::Value = serde_json::from_str(&get(&agent, &health).1).unwrap();
        if report["backends"]["redis"]["pendingReplay"] == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the replay never drained: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Redis restarted empty: the count goes on from the write-through copy in memory.
    let (status, count) = get(&agent, &visits);
    assert_eq!(status, 200);
    assert_eq!(count, "6");
    let after = get(&agent, &metrics).1;
    assert!(
        metric(
            &after,
            "resilient_storage_replayed_total",
            &["backend=\"redis\""]
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &after,
            "resilient_storage_circuit_state",
            &["backend=\"redis\""]
        ),
        0.0
    );
}
