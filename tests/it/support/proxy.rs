//! A loopback TCP proxy with pass / reset / stall modes.
//!
//! Tests put it between the relay and RabbitMQ to simulate network faults without touching the
//! broker itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How the proxy treats traffic right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Reset every open connection (both sides) and reset new ones right after accepting them.
    Reset,
    /// Keep sockets open but forward nothing. A stalled connection stays stalled until it is
    /// closed (by `Reset`, by a peer, or by dropping the proxy); going back to `Pass` only
    /// affects new connections.
    Stall,
    /// `Stall` for the connections whose client bytes contained the proxy's marker (see
    /// [`ChaosProxy::start_marking`]), `Pass` for the others: one link of a client with several.
    StallMarked,
}

/// A chaos proxy listening on `127.0.0.1:<ephemeral>` and forwarding to one upstream address.
pub struct ChaosProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept_task: JoinHandle<()>,
}

/// How far into a connection the client's bytes are searched for the marker (an AMQP client names
/// its connection in the first frames).
const MARKER_WINDOW: usize = 8192;

impl ChaosProxy {
    /// Starts a proxy in [`Mode::Pass`] in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> ChaosProxy {
        Self::start_marking(upstream, Vec::new()).await
    }

    /// Like [`Self::start`]; connections whose first client bytes contain `marker` (e.g. an AMQP
    /// connection name) are the ones [`Mode::StallMarked`] stalls.
    pub async fn start_marking(upstream: SocketAddr, marker: Vec<u8>) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("chaos proxy: bind 127.0.0.1:0: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("chaos proxy: local_addr: {err}"));
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let marker: Arc<[u8]> = marker.into();
        let accept_task = tokio::spawn(accept_loop(listener, upstream, mode_rx, marker));
        ChaosProxy {
            addr,
            mode,
            accept_task,
        }
    }

    /// The address clients should connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the mode; connection tasks watch it and react immediately.
    pub fn set_mode(&self, mode: Mode) {
        // `send_replace` stores the value even when no connection task is subscribed.
        self.mode.send_replace(mode);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        // The accept task owns the `JoinSet` of connection tasks, so aborting it aborts them
        // too, which drops (closes) every proxied socket.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    marker: Arc<[u8]>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let current = *mode.borrow();
                match current {
                    Mode::Reset => reset(client),
                    Mode::Stall => {
                        connections.spawn(hold_stalled(vec![client], mode.clone()));
                    }
                    Mode::Pass | Mode::StallMarked => {
                        connections.spawn(relay(client, upstream, mode.clone(), marker.clone()));
                    }
                }
            }
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards bytes between `client` and `upstream` until either side closes, the mode becomes
/// `Reset`, or the connection is to be stalled (`Stall`, or `StallMarked` once the client sent the
/// marker): then it stops forwarding for good and holds the sockets until `Reset`.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    marker: Arc<[u8]>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        // Upstream unreachable: behave like it, by closing the client.
        reset(client);
        return;
    };
    // Zero linger on both: whenever the proxy drops a socket, the peer sees an RST at once.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let marked = Arc::new(AtomicBool::new(false));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(
        client_read,
        server_write,
        mode.clone(),
        marked.clone(),
        Some(marker),
    );
    let down = pump(server_read, client_write, mode.clone(), marked, None);
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = wait_for_mode(&mut mode, |m| m == Mode::Reset) => {}
    }
}

/// Copies `from` → `to`. Before each write it checks whether the connection is to be stalled; if
/// so it keeps both halves open, forwarding nothing, until `Reset`. Returns when `from` ends.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    marked: Arc<AtomicBool>,
    marker: Option<Arc<[u8]>>,
) {
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some(marker) = marker.as_deref()
            && !marker.is_empty()
            && seen.len() < MARKER_WINDOW
        {
            seen.extend_from_slice(chunk);
            if seen.windows(marker.len()).any(|w| w == marker) {
                marked.store(true, Ordering::SeqCst);
            }
        }
        let stall = match *mode.borrow() {
            Mode::Stall => true,
            Mode::StallMarked => marked.load(Ordering::SeqCst),
            Mode::Pass | Mode::Reset => false,
        };
        if stall {
            wait_for_mode(&mut mode, |m| m == Mode::Reset).await;
            return;
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

/// Keeps `sockets` open without reading or writing until the mode becomes `Reset`.
async fn hold_stalled(sockets: Vec<TcpStream>, mut mode: watch::Receiver<Mode>) {
    wait_for_mode(&mut mode, |m| m == Mode::Reset).await;
    sockets.into_iter().for_each(reset);
}

/// Waits until the mode satisfies `wanted`; a dropped proxy counts as `Reset`.
async fn wait_for_mode(mode: &mut watch::Receiver<Mode>, wanted: impl Fn(Mode) -> bool) -> Mode {
    mode.wait_for(|m| wanted(*m))
        .await
        .map(|m| *m)
        .unwrap_or(Mode::Reset)
}

/// Closes `socket` with an RST so the peer sees the failure at once instead of a graceful EOF
/// that could be mistaken for a clean shutdown.
fn reset(socket: TcpStream) {
    // Best effort: if setting SO_LINGER fails the drop still closes the socket (with a FIN).
    let _ = socket.set_zero_linger();
    drop(socket);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that echoes every byte back on each accepted connection.
    async fn start_echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = socket.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        addr
    }

    async fn assert_echoes(client: &mut TcpStream, payload: &[u8]) {
        client.write_all(payload).await.unwrap();
        let mut echoed = vec![0; payload.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut echoed))
            .await
            .expect("echo did not arrive within 5 s")
            .unwrap();
        assert_eq!(echoed, payload);
    }

    /// Asserts that the proxy closed `client`: a read returns EOF or an error within 1 s.
    async fn assert_closed(client: &mut TcpStream) {
        let mut buf = [0; 16];
        match tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => panic!("expected a closed connection, read {n} bytes"),
            Err(_) => panic!("connection still open 1 s after the proxy should have closed it"),
        }
    }

    /// Asserts that nothing arrives on `client` for a while and the connection is not closed.
    async fn assert_stalled(client: &mut TcpStream) {
        let mut buf = [0; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), client.read(&mut buf)).await;
        assert!(read.is_err(), "expected a stalled read, got {read:?}");
    }

    #[tokio::test]
    async fn pass_forwards_bytes_both_ways() {
        let proxy = ChaosProxy::start(start_echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_echoes(&mut client, b"hello").await;
        assert_echoes(&mut client, b"again").await;
    }

    #[tokio::test]
    async fn reset_closes_open_connections_and_refuses_new_ones() {
        let proxy = ChaosProxy::start(start_echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_echoes(&mut client, b"before").await;

        proxy.set_mode(Mode::Reset);
        assert_closed(&mut client).await;

        // The OS completes the handshake, but the proxy closes the socket right away.
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_closed(&mut refused).await;

        proxy.set_mode(Mode::Pass);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_echoes(&mut fresh, b"after").await;
    }

    #[tokio::test]
    async fn stall_stops_forwarding_but_keeps_connections_open() {
        let proxy = ChaosProxy::start(start_echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_echoes(&mut client, b"before").await;

        proxy.set_mode(Mode::Stall);
        // Let the connection task observe the mode before sending, so the bytes are not relayed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"lost").await.unwrap();
        assert_stalled(&mut client).await;

        let mut stalled_new = TcpStream::connect(proxy.addr()).await.unwrap();
        stalled_new.write_all(b"lost").await.unwrap();
        assert_stalled(&mut stalled_new).await;

        // New connections forward again in Pass; the stalled ones stay stalled.
        proxy.set_mode(Mode::Pass);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_echoes(&mut fresh, b"after").await;
        assert_stalled(&mut client).await;

        // Stalled connections were open all along: Reset still closes them.
        proxy.set_mode(Mode::Reset);
        assert_closed(&mut client).await;
        assert_closed(&mut stalled_new).await;
    }

    #[tokio::test]
    async fn stall_marked_stalls_only_the_connections_that_sent_the_marker() {
        let proxy = ChaosProxy::start_marking(start_echo_server().await, b"records".to_vec()).await;
        let mut plain = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut marked = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_echoes(&mut plain, b"hello").await;
        assert_echoes(&mut marked, b"name: records link").await;

        proxy.set_mode(Mode::StallMarked);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_echoes(&mut plain, b"still passing").await;
        marked.write_all(b"lost").await.unwrap();
        assert_stalled(&mut marked).await;

        proxy.set_mode(Mode::Reset);
        assert_closed(&mut marked).await;
        assert_closed(&mut plain).await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_connections() {
        let proxy = ChaosProxy::start(start_echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_echoes(&mut client, b"hello").await;

        drop(proxy);
        assert_closed(&mut client).await;
    }
}
