//! Kill, freeze, thaw and restart keep a server's port and data directory; a restarted
//! PostgreSQL still has its committed rows.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use resilient_test_support::{PostgresServer, RedisCluster, RedisOptions, RedisServer};

async fn connect(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_millis(300)))
        .set_connection_timeout(Some(Duration::from_millis(300)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to redis")
}

#[tokio::test]
async fn redis_kill_freeze_thaw_restart_keep_port_and_data_dir() {
    let mut server = RedisServer::start_with(RedisOptions::default().appendonly(true)).unwrap();
    let (port, dir) = (server.port(), server.dir().to_owned());
    let mut conn = connect(&server.url()).await;
    let () = conn.set("k", "v").await.unwrap();

    server.freeze().unwrap();
    let frozen: redis::RedisResult<Option<String>> = conn.get("k").await;
    assert!(frozen.is_err(), "a frozen server does not answer");
    server.thaw().unwrap();
    let mut conn = connect(&server.url()).await;
    let thawed: Option<String> = conn.get("k").await.unwrap();
    assert_eq!(thawed.as_deref(), Some("v"));

    for cycle in 0..3 {
        let old_pid = server.pid();
        server.kill().unwrap();
        assert!(
            std::net::TcpStream::connect(server.addr()).is_err(),
            "cycle {cycle}: the port is closed while the server is down"
        );
        server.restart().unwrap();
        assert_ne!(server.pid(), old_pid);
        assert_eq!((server.port(), server.dir()), (port, dir.as_path()));
        let mut conn = connect(&server.url()).await;
        let value: Option<String> = conn.get("k").await.unwrap();
        assert_eq!(
            value.as_deref(),
            Some("v"),
            "cycle {cycle}: the append-only file came back"
        );
    }
}

#[tokio::test]
async fn a_restart_without_persistence_comes_back_empty() {
    let mut server = RedisServer::start().unwrap();
    let mut conn = connect(&server.url()).await;
    let () = conn.set("k", "v").await.unwrap();
    server.restart().unwrap();
    let mut conn = connect(&server.url()).await;
    let value: Option<String> = conn.get("k").await.unwrap();
    assert_eq!(value, None);
}

#[tokio::test]
async fn a_password_protected_server_starts_and_refuses_anonymous_clients() {
    let server = RedisServer::start_with(RedisOptions::default().password("s3cret")).unwrap();
    assert!(server.url().contains(":s3cret@"));
    let mut conn = connect(&server.url()).await;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).unwrap();
    let mut conn = anonymous.get_multiplexed_async_connection().await.unwrap();
    let refused: redis::RedisResult<String> =
        redis::cmd("GET").arg("k").query_async(&mut conn).await;
    assert!(refused.is_err());
}

#[test]
fn a_three_master_cluster_serves_every_slot() {
    let cluster = RedisCluster::start(3).unwrap();
    assert_eq!(cluster.nodes().len(), 3);
    for node in cluster.nodes() {
        let info = node.command(&["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
}

#[test]
fn postgres_keeps_committed_rows_across_kill_immediate_stop_and_freeze() {
    let mut server = PostgresServer::start().unwrap();
    let (port, data) = (server.port(), server.data_dir());
    server
        .psql("CREATE TABLE t (id int primary key); INSERT INTO t SELECT generate_series(1, 1000)")
        .unwrap();

    server.kill().unwrap();
    assert!(server.psql("SELECT 1").is_err(), "down after kill");
    server.restart().unwrap();
    assert_eq!(server.psql("SELECT count(*) FROM t").unwrap(), "1000");

    server.psql("INSERT INTO t VALUES (1001)").unwrap();
    server.stop_immediate().unwrap();
    server.restart().unwrap();
    assert_eq!(server.psql("SELECT count(*) FROM t").unwrap(), "1001");
    assert_eq!((server.port(), server.data_dir()), (port, data));

    server.freeze().unwrap();
    let started = Instant::now();
    assert!(
        !server.accepts_connections(),
        "a frozen postmaster accepts no connection"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the check waited for its timeout"
    );
    server.thaw().unwrap();
    assert_eq!(server.psql("SELECT count(*) FROM t").unwrap(), "1001");
}
