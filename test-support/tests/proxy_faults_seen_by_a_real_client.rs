//! Each fault of the proxy, observed through the redis crate against a real server.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use resilient_test_support::{FaultProxy, ProxyMode, RedisServer};

const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);

async fn connect(proxy: &FaultProxy) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{}", proxy.addr()))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(CLIENT_TIMEOUT))
        .set_connection_timeout(Some(CLIENT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn ping(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn added_latency_is_measured_by_the_client() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut conn = connect(&proxy).await.unwrap();
    let start = Instant::now();
    ping(&mut conn).await.unwrap();
    let direct = start.elapsed();
    assert!(direct < Duration::from_millis(50), "{direct:?}");

    proxy.set_mode(ProxyMode::Latency {
        fixed: Duration::from_millis(40),
        jitter: Duration::from_millis(20),
    });
    let mut delays = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        ping(&mut conn).await.unwrap();
        delays.push(start.elapsed());
    }
    for d in &delays {
        // 40-60 ms each way.
        assert!(
            *d >= Duration::from_millis(80) && *d < CLIENT_TIMEOUT,
            "{delays:?}"
        );
    }
}

#[tokio::test]
async fn a_blackhole_ends_in_the_clients_timeout() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut conn = connect(&proxy).await.unwrap();
    proxy.set_mode(ProxyMode::Blackhole);
    let start = Instant::now();
    let err = ping(&mut conn).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(start.elapsed() >= CLIENT_TIMEOUT);
    let Err(err) = connect(&proxy).await else {
        panic!("a new connection gets no answer either");
    };
    assert!(err.is_timeout() || err.is_io_error(), "{err}");
    proxy.set_mode(ProxyMode::Pass);
    // The held request is delivered: its late reply goes to the timed-out call, and the next
    // call on the same connection gets its own reply.
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    let mut conn = connect(&proxy).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
}

#[tokio::test]
async fn a_reset_ends_in_an_error() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut conn = connect(&proxy).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = ping(&mut conn).await.unwrap_err();
    assert!(
        !err.is_timeout(),
        "a reset is seen at once, not as a timeout: {err}"
    );
    let mut conn = connect(&proxy).await.unwrap();
    assert_eq!(
        ping(&mut conn).await.unwrap(),
        "PONG",
        "new connections still work"
    );
}

#[tokio::test]
async fn a_truncated_reply_never_yields_a_value() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut conn = connect(&proxy).await.unwrap();
    let value = "x".repeat(100_000);
    let () = conn.set("big", &value).await.unwrap();
    proxy.set_mode(ProxyMode::Truncate);
    let read: redis::RedisResult<Option<String>> = conn.get("big").await;
    assert!(
        read.is_err(),
        "a cut reply must be an error, got a value of {:?} bytes",
        read.ok().flatten().map(|v| v.len())
    );
}

#[tokio::test]
async fn refusing_closes_the_port_and_passing_opens_it_again() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut established = connect(&proxy).await.unwrap();
    proxy.set_mode(ProxyMode::Refuse);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(
        ping(&mut established).await.unwrap(),
        "PONG",
        "established connections flow"
    );
    proxy.set_mode(ProxyMode::Pass);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut conn = connect(&proxy).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
}
