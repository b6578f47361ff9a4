//! Starts a Redis and a PostgreSQL server, prints their pids, then ends as told: `exit`
//! (`process::exit`, no destructors), `panic` (unwinding), or `abort`. The test
//! `no_server_outlives_its_test_binary` checks that none of the printed processes survive.

use std::io::Write;

use resilient_test_support::{PostgresServer, RedisServer};

fn main() {
    let how = std::env::args().nth(1).unwrap_or_default();
    let redis = RedisServer::start().expect("start redis");
    let postgres = PostgresServer::start().expect("start postgres");
    let mut pids = vec![redis.pid().unwrap(), postgres.pid().unwrap()];
    pids.extend(postgres.child_pids());
    let line: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("{}", line.join(" "));
    std::io::stdout().flush().unwrap();
    match how.as_str() {
        "exit" => std::process::exit(0),
        "abort" => std::process::abort(),
        _ => panic!("the probe panics with its servers running"),
    }
}
