//! A loopback TCP proxy with pass / reset / stall modes.
//!
//! Tests put it between the relay and RabbitMQ to simulate network faults without touching the
//! broker itself.

use std::net::SocketAddr;

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
}

/// A chaos proxy listening on `127.0.0.1:<ephemeral>` and forwarding to one upstream address.
pub struct ChaosProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept_task: JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts a proxy in [`Mode::Pass`] in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("chaos proxy: bind 127.0.0.1:0: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("chaos proxy: local_addr: {err}"));
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let accept_task = tokio::spawn(accept_loop(listener, upstream, mode_rx));
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

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
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
                    Mode::Pass => {
                        connections.spawn(relay(client, upstream, mode.clone()));
                    }
                }
            }
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards bytes between `client` and `upstream` until either side closes or the mode leaves
/// `Pass`.
async fn relay(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // Upstream unreachable: behave like it, by closing the client.
        reset(client);
        return;
    };
    let fault = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        fault = wait_for_mode(&mut mode, |m| m != Mode::Pass) => fault,
    };
    match fault {
        Mode::Stall => hold_stalled(vec![client, server], mode).await,
        Mode::Reset | Mode::Pass => {
            reset(client);
            reset(server);
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
    async fn dropping_the_proxy_closes_connections() {
        let proxy = ChaosProxy::start(start_echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_echoes(&mut client, b"hello").await;

        drop(proxy);
        assert_closed(&mut client).await;
    }
}
