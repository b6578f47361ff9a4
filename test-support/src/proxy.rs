//! A TCP proxy that injects faults between a client and a server while traffic flows.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Result;

/// What the proxy does to traffic. Switch with [`FaultProxy::set_mode`] at any time; the new
/// mode applies to every connection, established or new.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyMode {
    /// Forward everything.
    Pass,
    /// Hold each chunk, in each direction, for `fixed` plus a random share of `jitter`.
    Latency {
        /// Added to every chunk.
        fixed: Duration,
        /// Up to this much more, uniformly at random.
        jitter: Duration,
    },
    /// Accept connections and forward nothing, as a network partition does: nothing is
    /// answered. What is sent meanwhile is held (then the sender's buffers fill) and delivered
    /// in order once the mode changes, as TCP delivers it once a partition heals; nothing is
    /// lost from a connection, so no reply can go to the wrong request. `reset_all` drops it.
    Blackhole,
    /// Close the listening socket: new connections are refused. Established ones keep flowing.
    Refuse,
    /// Forward requests, but cut each reply short and close the connection.
    Truncate,
}

#[derive(Debug)]
struct Shared {
    mode: watch::Sender<ProxyMode>,
    // Bumped by `reset_all`: every connection alive at that moment is reset.
    resets: watch::Sender<u64>,
    connections: Mutex<u64>,
}

/// A fault-injecting TCP proxy on a free loopback port, in front of `upstream`. Stops when
/// dropped. Needs a tokio runtime.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` in [`ProxyMode::Pass`].
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: watch::channel(ProxyMode::Pass).0,
            resets: watch::channel(0).0,
            connections: Mutex::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, addr, upstream, shared.clone()));
        Ok(Self {
            addr,
            upstream,
            shared,
            task,
        })
    }

    /// The proxy's address: point the client here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server behind the proxy.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the fault mode.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode.borrow().clone()
    }

    /// Resets (TCP RST) every established connection; new ones are accepted as the mode says.
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        *self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Ends every connection task too.
        self.shared.resets.send_modify(|n| *n += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut mode = shared.mode.subscribe();
    let mut listener = Some(listener);
    loop {
        let refusing = *mode.borrow_and_update() == ProxyMode::Refuse;
        if refusing {
            // Closing the socket makes the kernel refuse new connections.
            listener = None;
        } else if listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(active) = &listener else {
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            // A mode change wins over a pending accept, so no connection is taken after
            // `set_mode(Refuse)` returned.
            biased;
            changed = mode.changed() => if changed.is_err() { return },
            accepted = active.accept() => {
                if let Ok((client, _)) = accepted {
                    *shared.connections.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    tokio::spawn(connection(client, upstream, shared.clone()));
                }
            }
        }
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut resets = shared.resets.subscribe();
    resets.borrow_and_update();
    if *shared.mode.borrow() == ProxyMode::Refuse {
        // Accepted just before the listener closed: refuse it like the kernel would.
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(
        client_read,
        server_write,
        shared.mode.subscribe(),
        resets.clone(),
        false,
    );
    let down = pump(
        server_read,
        client_write,
        shared.mode.subscribe(),
        resets,
        true,
    );
    tokio::join!(up, down);
}

/// Copies one direction, applying the mode to each chunk, until either side closes or a reset
/// is ordered. Added latency holds each chunk until its arrival time plus the delay, in order,
/// so it delays traffic without capping throughput.
async fn pump(
    mut from: OwnedReadHalf,
    to: OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
    mut resets: watch::Receiver<u64>,
    reply_direction: bool,
) {
    let (chunks, delayed) = tokio::sync::mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_delayed(to, delayed));
    let mut buffer = vec![0_u8; 16 * 1024];
    let linger_zero = |from: &OwnedReadHalf| {
        // Linger 0 makes the close send RST instead of FIN.
        let _ = from.as_ref().set_zero_linger();
    };
    loop {
        let n = tokio::select! {
            // A reset ordered before these bytes arrived wins over forwarding them: once
            // `reset_all` has returned, nothing more passes on a connection it cut.
            biased;
            _ = resets.changed() => {
                linger_zero(&from);
                writer.abort();
                return;
            }
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = &mut writer => return,
        };
        let mut current = mode.borrow_and_update().clone();
        while matches!(current, ProxyMode::Blackhole) {
            tokio::select! {
                changed = mode.changed() => match changed {
                    Ok(()) => current = mode.borrow_and_update().clone(),
                    Err(_) => return,
                },
                _ = resets.changed() => {
                    linger_zero(&from);
                    writer.abort();
                    return;
                }
            }
        }
        let (release_at, chunk, last) = match current {
            // (A blackhole was waited out above.)
            ProxyMode::Pass | ProxyMode::Refuse | ProxyMode::Blackhole => {
                (None, &buffer[..n], false)
            }
            ProxyMode::Latency { fixed, jitter } => {
                let delay = fixed + jitter.mul_f64(fastrand::f64());
                (
                    Some(tokio::time::Instant::now() + delay),
                    &buffer[..n],
                    false,
                )
            }
            ProxyMode::Truncate if reply_direction => (None, &buffer[..n / 2], true),
            ProxyMode::Truncate => (None, &buffer[..n], false),
        };
        if chunks.send((release_at, chunk.to_vec())).is_err() || last {
            break;
        }
    }
    drop(chunks);
    tokio::select! {
        _ = &mut writer => {}
        _ = resets.changed() => {
            linger_zero(&from);
            writer.abort();
        }
    }
}

async fn write_delayed(
    mut to: OwnedWriteHalf,
    mut chunks: tokio::sync::mpsc::UnboundedReceiver<(Option<tokio::time::Instant>, Vec<u8>)>,
) {
    while let Some((release_at, chunk)) = chunks.recv().await {
        if let Some(at) = release_at {
            tokio::time::sleep_until(at).await;
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
